#include "ddp/core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "ddp/core/check.h"

#if DDP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace ddp {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::U8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::U8: return "u8";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
  }
  return "?";
}

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous: return "contiguous";
    case Layout::NCHW: return "NCHW";
    case Layout::NHWC: return "NHWC";
  }
  return "?";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

static int64_t count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    DDP_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
    n *= d;
  }
  return n;
}

Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype, Device device, Layout layout, bool pinned) {
  if (layout == Layout::NCHW || layout == Layout::NHWC)
    DDP_CHECK(shape.size() == 4, layout_name(layout), " tensor needs 4 dimensions, got ", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.layout_ = layout;
  size_t bytes = std::max<size_t>(t.nbytes(), 1);
  if (device == Device::CPU) {
    void* p = nullptr;
#if DDP_HAVE_CUDA
    if (pinned) {
      CUDA_CHECK(cudaMallocHost(&p, bytes));
      t.storage_ = std::shared_ptr<void>(p, [](void* q) { cudaFreeHost(q); });
      t.ptr_ = p;
      return t;
    }
#else
    (void)pinned;
#endif
    size_t aligned = (bytes + 63) / 64 * 64;
    p = std::aligned_alloc(64, aligned);
    DDP_CHECK(p != nullptr, "out of host memory allocating ", aligned, " bytes for ", t.describe());
    t.storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
    t.ptr_ = p;
  } else {
#if DDP_HAVE_CUDA
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      DDP_FAIL("cudaMalloc of ", bytes, " bytes for ", t.describe(), " failed: ", cudaGetErrorString(e));
    }
    t.storage_ = std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
    t.ptr_ = p;
#else
    DDP_FAIL("CUDA tensor requested but this build has no CUDA backend (configure with -DDDP_CUDA=ON)");
#endif
  }
  return t;
}

Tensor Tensor::zeros(std::vector<int64_t> shape, DType dtype, Device device, Layout layout) {
  Tensor t = empty(std::move(shape), dtype, device, layout);
  t.fill_zero();
  return t;
}

Tensor Tensor::wrap(void* data, std::vector<int64_t> shape, DType dtype, Device device, Layout layout) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.layout_ = layout;
  t.ptr_ = data;
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  DDP_CHECK(i >= 0 && i < n, "dimension ", i, " out of range for ", describe());
  return shape_[i];
}

int64_t Tensor::numel() const { return count(shape_); }

std::string Tensor::describe() const {
  return str(dtype_name(dtype_), shape_str(shape_), " ", layout_name(layout_), " ",
             device_ == Device::CPU ? "cpu" : "cuda");
}

template <class T>
static bool dtype_matches(DType d) {
  if constexpr (std::is_same_v<T, float>) return d == DType::F32;
  else if constexpr (std::is_same_v<T, uint16_t>) return d == DType::F16 || d == DType::BF16;
  else if constexpr (std::is_same_v<T, uint8_t>) return d == DType::U8;
  else if constexpr (std::is_same_v<T, int32_t>) return d == DType::I32;
  else if constexpr (std::is_same_v<T, int64_t>) return d == DType::I64;
  else return false;
}

template <class T>
T* Tensor::data() {
  DDP_CHECK(dtype_matches<T>(dtype_), "typed access does not match tensor ", describe());
  return static_cast<T*>(ptr_);
}
template <class T>
const T* Tensor::data() const {
  DDP_CHECK(dtype_matches<T>(dtype_), "typed access does not match tensor ", describe());
  return static_cast<const T*>(ptr_);
}
template float* Tensor::data<float>();
template const float* Tensor::data<float>() const;
template uint16_t* Tensor::data<uint16_t>();
template const uint16_t* Tensor::data<uint16_t>() const;
template uint8_t* Tensor::data<uint8_t>();
template const uint8_t* Tensor::data<uint8_t>() const;
template int32_t* Tensor::data<int32_t>();
template const int32_t* Tensor::data<int32_t>() const;
template int64_t* Tensor::data<int64_t>();
template const int64_t* Tensor::data<int64_t>() const;

Tensor Tensor::reshape(std::vector<int64_t> shape, Layout layout) const {
  DDP_CHECK(count(shape) == numel(), "cannot reshape ", describe(), " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.layout_ = layout;
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  DDP_CHECK(src.numel() == numel() && src.dtype() == dtype(), "copy between mismatched tensors ",
            src.describe(), " -> ", describe());
  if (device_ == Device::CPU && src.device_ == Device::CPU) {
    std::memcpy(ptr_, src.ptr_, nbytes());
    return;
  }
#if DDP_HAVE_CUDA
  CUDA_CHECK(cudaMemcpy(ptr_, src.ptr_, nbytes(), cudaMemcpyDefault));
#else
  DDP_FAIL("CUDA copy in a build without CUDA");
#endif
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device, layout_);
  t.copy_from(*this);
  return t;
}

void Tensor::fill_zero() {
  if (device_ == Device::CPU) {
    std::memset(ptr_, 0, nbytes());
    return;
  }
#if DDP_HAVE_CUDA
  CUDA_CHECK(cudaMemset(ptr_, 0, nbytes()));
#endif
}

bool cuda_available() { return cuda_unavailable_reason().empty(); }

std::string cuda_unavailable_reason() {
#if DDP_HAVE_CUDA
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: later CUDA calls must not report this one
    // Without a driver the runtime also says "driver version is insufficient": tell the two apart.
    int driver = 0, runtime = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) return "no NVIDIA driver is loaded";
    cudaRuntimeGetVersion(&runtime);
    return str("cudaGetDeviceCount failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), "; the driver supports CUDA ",
               driver / 1000, ".", driver % 1000 / 10, ", this build's runtime is ", runtime / 1000, ".", runtime % 1000 / 10,
               ")");
  }
  return n > 0 ? std::string() : std::string("cudaGetDeviceCount found no device");
#else
  return "this build has no CUDA backend";
#endif
}

}  // namespace ddp
