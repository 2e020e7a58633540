// Help for CUDA graph capture (CudaResNet18::capture_train_step).
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace ddp::cuda {

// True when a capture running on `stream` has been invalidated. Checked after each cuDNN and cuBLAS
// call, whose internals we do not control: a library call that breaks a capture (a synchronisation,
// an allocation, a query inside the library) may still return success, and the first sign would
// then be the next kernel launch or cudaStreamEndCapture failing, naming the wrong op. Outside a
// capture it costs one query.
bool capture_invalidated(cudaStream_t stream);
// The error for it, naming the call after which the capture was found invalidated.
[[noreturn]] void fail_capture_invalidated(const std::string& after);

}  // namespace ddp::cuda
