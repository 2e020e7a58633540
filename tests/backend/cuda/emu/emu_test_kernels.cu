// Kernels of test_emu_runtime.cpp that must go through what ops.cu goes through under the emulation:
// gen_kernels.cmake's rewrite of their declarations and launches, and ops.cu's compile options
// (CMakeLists.txt). Plain CUDA: nvcc would compile it as it is.
#include <cuda_runtime.h>

#include "emu_test_kernels.h"

namespace ddp::emu_test {
namespace {

constexpr int kBound = 128;

__global__ void __launch_bounds__(kBound) k_bounded_fill(int* p, int v) { p[blockIdx.x * blockDim.x + threadIdx.x] = v; }

// Template arguments with a comma at the launch, as ops.cu's k_bn_partial_vec<T, kBwd>.
template <class T, bool kNegate>
__global__ void __launch_bounds__(kBound, 2) k_bounded_fill_t(T* p, T v) {
  p[blockIdx.x * blockDim.x + threadIdx.x] = kNegate ? -v : v;
}

__global__ void k_unbounded_fill(int* p, int v) { p[blockIdx.x * blockDim.x + threadIdx.x] = v; }

}  // namespace

void launch_bounded_fill(int threads, int* p, int v) { k_bounded_fill<<<1, threads>>>(p, v); }
void launch_bounded_fill_negated(int threads, int* p, int v) { k_bounded_fill_t<int, true><<<1, threads>>>(p, v); }
void launch_unbounded_fill(int threads, int* p, int v) { k_unbounded_fill<<<1, threads>>>(p, v); }

}  // namespace ddp::emu_test
