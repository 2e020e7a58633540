// Included first by the generated ops_emu.cpp (gen_kernels.cmake): makes CUDA kernel source plain C++
// running on the emulator of emu.h. The CUDA headers come first, so their own uses of the keywords
// redefined below keep the meanings they had.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "emu.h"

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One block runs at a time on one OS thread, so a function-local static is exactly one block's
// shared memory. All of it lies in one section, which the runtime fills with all-ones bytes (NaN)
// before each block of a kernel with barriers: a read of shared memory no thread of the block wrote
// shows, as it reads garbage on a GPU.
#define __shared__ static __attribute__((section("ddp_emu_shared")))
#define __launch_bounds__(...)

#define threadIdx (::ddp::cuda_emu::g_cur->tid)
#define blockIdx (::ddp::cuda_emu::g_cur->bid)
#define blockDim (::ddp::cuda_emu::g_cur->bdim)
#define gridDim (::ddp::cuda_emu::g_cur->gdim)
#define __syncthreads() ::ddp::cuda_emu::syncthreads(__LINE__)
#define __syncthreads_or(p) ::ddp::cuda_emu::syncthreads_or(p, __LINE__)

// Device built-ins with no host twin of the same name.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// One OS thread runs every emulated thread: plain read-modify-write is atomic here.
inline int atomicOr(int* p, int v) { const int old = *p; *p = old | v; return old; }
inline int atomicAdd(int* p, int v) { const int old = *p; *p = old + v; return old; }
inline float atomicAdd(float* p, float v) { const float old = *p; *p = old + v; return old; }
using std::isfinite;
using std::isnan;

// The 16-byte vector types keep CUDA's 16-byte alignment on the host (vector_types.h gives g++
// __attribute__((aligned(16)))), which the alignment check of the kernels' sources (CMakeLists.txt:
// -fsanitize=alignment) holds every access through them to, as a GPU does.
static_assert(alignof(uint4) == 16 && alignof(int4) == 16 && alignof(float4) == 16,
              "the emulated vector types lost CUDA's alignment: misaligned vector accesses would go unseen");
