#include "ddp/backend/cuda/memory.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>

#include "ddp/core/check.h"

namespace ddp::cuda {
namespace {
std::atomic<size_t> g_current{0}, g_peak{0};
}

void* tracked_malloc(size_t bytes, const char* what) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    size_t free_b = 0, total_b = 0;
    (void)cudaGetLastError();  // clear the sticky-free error of a failed allocation
    (void)cudaMemGetInfo(&free_b, &total_b);
    DDP_FAIL("cudaMalloc of ", bytes, " bytes for ", what, " failed: ", cudaGetErrorString(e), " (free ", free_b,
             " of ", total_b, " bytes; tracked by this process ", g_current.load(), ")");
  }
  size_t cur = g_current.fetch_add(bytes) + bytes;
  size_t peak = g_peak.load();
  while (cur > peak && !g_peak.compare_exchange_weak(peak, cur)) {
  }
  return p;
}

// Called from destructors: reports a failure instead of throwing (a sticky CUDA error from an
// earlier kernel would otherwise turn every unwinding destructor into std::terminate).
void tracked_free(void* p, size_t bytes) {
  if (!p) return;
  const cudaError_t e = cudaFree(p);
  if (e != cudaSuccess) std::fprintf(stderr, "warning: cudaFree failed: %s\n", cudaGetErrorString(e));
  g_current.fetch_sub(bytes);
}

size_t tracked_current_bytes() { return g_current.load(); }
size_t tracked_peak_bytes() { return g_peak.load(); }
void tracked_reset_peak() { g_peak.store(g_current.load()); }

}  // namespace ddp::cuda
