// Device memory owned by the CUDA backend. Every allocation goes through tracked_malloc so the
// backend can report its own peak (Model::peak_memory_bytes) without asking the driver, whose
// figure also counts other processes and the CUDA context.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace ddp::cuda {

void* tracked_malloc(size_t bytes, const char* what);  // cudaMalloc; error names `what`
void tracked_free(void* p, size_t bytes);
size_t tracked_current_bytes();
size_t tracked_peak_bytes();  // process-wide high-water mark of tracked_malloc
void tracked_reset_peak();

// An owning device allocation (move-only).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const char* what) : bytes_(bytes) {
    if (bytes) ptr_ = tracked_malloc(bytes, what);
  }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  void* get() const { return ptr_; }
  template <class T> T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  void release() {
    if (ptr_) tracked_free(ptr_, bytes_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace ddp::cuda
