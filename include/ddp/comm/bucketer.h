// Gradient buckets over the one flat gradient buffer. Parameters are stored in state_dict order, so
// backward finishes the buffer from its end towards its start; buckets are cut from the end and
// issued (allreduce_avg_async) as soon as backward reports their range final, so communication
// overlaps the rest of backward. The optimizer waits only in finish().
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ddp/comm/communicator.h"
#include "ddp/nn/model.h"

namespace ddp::comm {

class GradBucketer {
 public:
  // `grads` is the model's flat gradient buffer (device memory for NCCL), `count` its elements.
  // bucket_bytes >= 4; a value >= the buffer size gives one bucket. Buckets hold at most
  // bucket_bytes; each starts at a multiple of kAlign elements (256 bytes) when bucket_bytes allows.
  static constexpr int64_t kAlign = 64;
  GradBucketer(Communicator& comm, float* grads, int64_t count, size_t bucket_bytes = 25u << 20);

  void begin_step();
  // Pass as the Model::backward callback: [&](const ddp::nn::GradReady& r) { b.on_ready(r); }
  void on_ready(const ddp::nn::GradReady& r);
  // Issues the buckets not yet issued (ordered after the last event seen), then comm.wait_all.
  void finish(void* compute_stream = nullptr);

  bool enabled = true;  // false: no communication at all (benchmarks: overlap on/off)

  int num_buckets() const { return static_cast<int>(starts_.size()); }
  // Bucket i (in issue order, i = 0 is the buffer's tail) covers [start(i), end(i)).
  int64_t bucket_start(int i) const { return starts_[i]; }
  int64_t bucket_end(int i) const { return i == 0 ? count_ : starts_[i - 1]; }
  int issued_during_backward() const { return issued_in_backward_; }  // last step
  double last_wait_s() const { return last_wait_s_; }  // time finish() spent waiting, last step

 private:
  void issue_upto(int64_t first_ready, void* event);
  Communicator& comm_;
  float* grads_;
  int64_t count_;
  std::vector<int64_t> starts_;  // descending
  int next_ = 0;
  int issued_in_backward_ = 0;
  void* last_event_ = nullptr;
  double last_wait_s_ = 0.0;
};

}  // namespace ddp::comm
