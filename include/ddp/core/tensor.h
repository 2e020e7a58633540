// Tensor: an owning (or viewing) buffer with a shape, element type, device and memory layout.
//
// Shapes are always given in logical order — (N, C, H, W) for activations, (O, I, kH, kW) for
// conv weights — as PyTorch does; Layout says how that is laid out in memory (NHWC on the GPU for
// tensor cores, NCHW on the CPU backend). Ops are free functions that take tensors or raw pointers
// explicitly; a Tensor carries no autograd state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ddp {

enum class DType : uint8_t { F32, F16, BF16, U8, I32, I64 };
enum class Device : uint8_t { CPU, CUDA };
enum class Layout : uint8_t { Contiguous, NCHW, NHWC };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* layout_name(Layout l);
std::string shape_str(const std::vector<int64_t>& shape);

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised storage. CPU memory is 64-byte aligned; pinned=true gives page-locked host memory
  // (CUDA builds only) for fast asynchronous copies. CUDA memory comes from cudaMalloc.
  static Tensor empty(std::vector<int64_t> shape, DType dtype, Device device = Device::CPU,
                      Layout layout = Layout::Contiguous, bool pinned = false);
  static Tensor zeros(std::vector<int64_t> shape, DType dtype, Device device = Device::CPU,
                      Layout layout = Layout::Contiguous);
  // A non-owning view of memory someone else keeps alive.
  static Tensor wrap(void* data, std::vector<int64_t> shape, DType dtype, Device device = Device::CPU,
                     Layout layout = Layout::Contiguous);

  bool defined() const { return ptr_ != nullptr; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  Layout layout() const { return layout_; }
  std::string describe() const;  // "f32[2, 3, 32, 32] NCHW cpu"

  void* raw() { return ptr_; }
  const void* raw() const { return ptr_; }
  // Typed access; checks that T matches dtype (uint16_t for F16/BF16).
  template <class T> T* data();
  template <class T> const T* data() const;

  // Same storage, new shape of the same element count.
  Tensor reshape(std::vector<int64_t> shape, Layout layout = Layout::Contiguous) const;
  // Copies (host<->host, host<->device, device<->device); shapes and dtypes must match.
  void copy_from(const Tensor& src);
  Tensor to(Device device) const;
  void fill_zero();

 private:
  std::shared_ptr<void> storage_;
  void* ptr_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  Layout layout_ = Layout::Contiguous;
};

bool cuda_available();  // true when built with CUDA and at least one device is visible
// Why cuda_available() is false ("" when it is true): no CUDA in this build, no device, or the CUDA
// runtime's own error (a driver too old for the runtime, a broken installation), which must not pass
// for "this machine has no GPU".
std::string cuda_unavailable_reason();

}  // namespace ddp
