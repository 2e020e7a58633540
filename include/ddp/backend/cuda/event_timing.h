// CUDA-event timing of work enqueued on one stream, for the benchmark drivers (bench_cuda_train,
// bench_cuda_conv): the mean device time per call of `op` over `iters` calls enqueued back to back.
// The caller warms up first (plans, autotune, allocation) and the host must not block inside `op`,
// or the figure includes the host's time too.
#pragma once

#include <cuda_runtime.h>

#include "ddp/core/check.h"

namespace ddp::cuda {

template <class Op>
double event_ms_per_call(cudaStream_t s, int iters, Op&& op) {
  cudaEvent_t t0, t1;
  CUDA_CHECK(cudaEventCreate(&t0));
  CUDA_CHECK(cudaEventCreate(&t1));
  CUDA_CHECK(cudaEventRecord(t0, s));
  for (int i = 0; i < iters; ++i) op();
  CUDA_CHECK(cudaEventRecord(t1, s));
  CUDA_CHECK(cudaEventSynchronize(t1));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
  CUDA_CHECK(cudaEventDestroy(t0));
  CUDA_CHECK(cudaEventDestroy(t1));
  return ms / iters;
}

}  // namespace ddp::cuda
