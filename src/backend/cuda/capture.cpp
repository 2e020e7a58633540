#include "ddp/backend/cuda/capture.h"

#include "ddp/core/check.h"

namespace ddp::cuda {

bool capture_invalidated(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status == cudaStreamCaptureStatusInvalidated;
}

void fail_capture_invalidated(const std::string& after) {
  DDP_FAIL("CUDA graph capture invalidated by ", after, ": the library made a call a capture does not allow, so the "
           "step cannot run as a CUDA graph with this GPU, driver and library version (the eager step is "
           "unaffected)");
}

}  // namespace ddp::cuda
