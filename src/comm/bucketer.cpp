#include "ddp/comm/bucketer.h"

#include <algorithm>
#include <chrono>

#include "ddp/core/check.h"

namespace ddp::comm {

GradBucketer::GradBucketer(Communicator& comm, float* grads, int64_t count, size_t max_bytes, size_t min_bytes)
    : comm_(comm), grads_(grads), count_(count), max_bytes_(max_bytes), min_bytes_(std::min(min_bytes, max_bytes)) {
  DDP_CHECK(count > 0, "gradient buffer is empty");
  DDP_CHECK(grads != nullptr, "gradient buffer is null");
  DDP_CHECK(max_bytes >= sizeof(float), "bucket size must be at least ", sizeof(float), " bytes, got ", max_bytes);
  begin_step();
}

void GradBucketer::begin_step() {
  unissued_end_ = count_;
  issued_.clear();
  issued_in_backward_ = 0;
  last_event_ = nullptr;
  last_wait_s_ = 0.0;
}

// Issues [first, unissued_end_) as ceil(len / max) collectives of near-equal size, tail first (no
// small remainder collective).
void GradBucketer::issue_down_to(int64_t first, void* event) {
  const int64_t len = unissued_end_ - first;
  if (len <= 0) return;
  const int64_t max_elems = static_cast<int64_t>(max_bytes_ / sizeof(float));
  const int64_t pieces = (len + max_elems - 1) / max_elems;
  int64_t end = unissued_end_;
  for (int64_t i = 0; i < pieces; ++i) {
    const int64_t remaining = end - first, left = pieces - i;
    const int64_t take = (remaining + left - 1) / left;
    comm_.allreduce_avg_async(grads_ + (end - take), static_cast<size_t>(take), event);
    issued_.push_back({end - take, take});
    end -= take;
  }
  unissued_end_ = first;
}

void GradBucketer::on_ready(const ddp::nn::GradReady& r) {
  if (!enabled) return;
  DDP_CHECK(r.first_ready >= 0 && r.first_ready <= count_, "gradient ready offset ", r.first_ready,
            " outside the buffer of ", count_);
  if (r.event) last_event_ = r.event;
  const int64_t ready = unissued_end_ - r.first_ready;  // final and not yet issued
  if (ready <= 0) return;
  // Too small to send alone: it joins what the next reports make final. The last report (offset 0,
  // backward done) sends whatever is left.
  if (r.first_ready > 0 && static_cast<size_t>(ready) * sizeof(float) < min_bytes_) return;
  const size_t before = issued_.size();
  issue_down_to(r.first_ready, r.event);
  issued_in_backward_ += static_cast<int>(issued_.size() - before);
}

void GradBucketer::finish(void* compute_stream) {
  if (!enabled) return;
  // Normally backward reported first_ready = 0 and nothing is left; otherwise the rest is ordered
  // after the last event backward recorded (a model that reports no event runs on the host).
  issue_down_to(0, last_event_);
  auto t0 = std::chrono::steady_clock::now();
  comm_.wait_all(compute_stream);
  last_wait_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace ddp::comm
