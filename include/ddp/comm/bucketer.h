// Gradient buckets over the one flat gradient buffer. Parameters are stored in state_dict order, so
// backward finishes the buffer from its end towards its start, and the model reports each time a
// further tail is final (nn::GradReady). The bucketer issues what is final and not yet issued
// (allreduce_avg_async) at the first report that makes it at least min_bytes, as collectives of at
// most max_bytes; finish() issues the rest and waits. So the buckets follow the model's layers:
// communication of fc and layer4 starts while layer3..1 are still in backward, and what is left for
// after backward is only what the last reports made final (conv1, layer1), not a fixed-size bucket
// that happens to straddle layer4.0 (before: 20 MB of ResNet18's 46.8 MB went out only after
// backward with 25 MB buckets cut by size from the tail). Every rank sees the same reports, so all
// issue the same collectives in the same order (DESIGN §4 rule 1).
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
  // max_bytes >= 4 caps one collective; min_bytes (clamped to max_bytes) is what a report must make
  // ready before it is sent (smaller ready ranges wait for the next report or finish()).
  // max_bytes and min_bytes >= the buffer size: one collective at the last report (no overlap).
  GradBucketer(Communicator& comm, float* grads, int64_t count, size_t max_bytes = size_t{25} << 20,
               size_t min_bytes = size_t{1} << 20);

  void begin_step();
  // Pass as the Model::backward callback: [&](const ddp::nn::GradReady& r) { b.on_ready(r); }
  void on_ready(const ddp::nn::GradReady& r);
  // Issues what is not yet issued (ordered after the last event seen), then comm.wait_all.
  void finish(void* compute_stream = nullptr);

  bool enabled = true;  // false: no communication at all (benchmarks: overlap on/off)

  size_t max_bytes() const { return max_bytes_; }
  size_t min_bytes() const { return min_bytes_; }
  // The last step's collectives in issue order: [offset, offset + count) each, from the buffer's tail.
  struct Issued {
    int64_t offset, count;
  };
  const std::vector<Issued>& issued() const { return issued_; }
  int issued_during_backward() const { return issued_in_backward_; }  // last step, before finish()
  double last_wait_s() const { return last_wait_s_; }  // time finish() spent waiting, last step

 private:
  void issue_down_to(int64_t first, void* event);
  Communicator& comm_;
  float* grads_;
  int64_t count_;
  size_t max_bytes_, min_bytes_;
  int64_t unissued_end_ = 0;  // [unissued_end_, count_) is issued this step
  std::vector<Issued> issued_;
  int issued_in_backward_ = 0;
  void* last_event_ = nullptr;
  double last_wait_s_ = 0.0;
};

}  // namespace ddp::comm
