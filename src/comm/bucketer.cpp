#include "ddp/comm/bucketer.h"

#include <chrono>

#include "ddp/core/check.h"

namespace ddp::comm {

GradBucketer::GradBucketer(Communicator& comm, float* grads, int64_t count, size_t bucket_bytes)
    : comm_(comm), grads_(grads), count_(count) {
  DDP_CHECK(count > 0, "gradient buffer is empty");
  DDP_CHECK(grads != nullptr, "gradient buffer is null");
  DDP_CHECK(bucket_bytes >= sizeof(float), "bucket size must be at least ", sizeof(float), " bytes, got ", bucket_bytes);
  const int64_t per = static_cast<int64_t>(bucket_bytes / sizeof(float));
  // Cut from the tail: the tail (fc, layer4) is what backward finishes first. Starts are rounded up
  // to a multiple of kAlign elements (buckets of at most `per`), so each bucket is as aligned as the
  // buffer: cut at count - k * per, a parameter count that is not a multiple of 4 (10 classes:
  // 11,181,642) leaves every bucket 8-byte aligned, and NCCL then takes its slower unaligned path.
  const int64_t align = per >= kAlign ? kAlign : 1;
  for (int64_t end = count; end > 0;) {
    const int64_t start = end > per ? (end - per + align - 1) / align * align : 0;
    starts_.push_back(start);
    end = start;
  }
}

void GradBucketer::begin_step() {
  next_ = 0;
  issued_in_backward_ = 0;
  last_event_ = nullptr;
  last_wait_s_ = 0.0;
}

void GradBucketer::issue_upto(int64_t first_ready, void* event) {
  while (next_ < num_buckets() && starts_[next_] >= first_ready) {
    comm_.allreduce_avg_async(grads_ + starts_[next_], static_cast<size_t>(bucket_end(next_) - starts_[next_]), event);
    ++next_;
  }
}

void GradBucketer::on_ready(const ddp::nn::GradReady& r) {
  if (!enabled) return;
  DDP_CHECK(r.first_ready >= 0 && r.first_ready <= count_, "gradient ready offset ", r.first_ready,
            " outside the buffer of ", count_);
  if (r.event) last_event_ = r.event;
  int before = next_;
  issue_upto(r.first_ready, r.event);
  issued_in_backward_ += next_ - before;
}

void GradBucketer::finish(void* compute_stream) {
  if (!enabled) return;
  // Normally backward reported first_ready = 0 and nothing is left; otherwise the rest is ordered
  // after the last event backward recorded (a model that reports no event runs on the host).
  issue_upto(0, last_event_);
  auto t0 = std::chrono::steady_clock::now();
  comm_.wait_all(compute_stream);
  last_wait_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace ddp::comm
