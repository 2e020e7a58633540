// The cuDNN and cuBLAS halves of ddp/core/check.h: they live here because only this library links them.
#include <cublas_v2.h>
#include <cudnn.h>

#include "ddp/core/check.h"

namespace ddp::detail {

[[noreturn]] void fail_cudnn(const char* file, int line, const char* expr, int code) {
  fail(file, line, str("cuDNN error ", code, " (", cudnnGetErrorString(static_cast<cudnnStatus_t>(code)), ") in ", expr));
}

[[noreturn]] void fail_cublas(const char* file, int line, const char* expr, int code) {
  fail(file, line,
       str("cuBLAS error ", code, " (", cublasGetStatusString(static_cast<cublasStatus_t>(code)), ") in ", expr));
}

}  // namespace ddp::detail
