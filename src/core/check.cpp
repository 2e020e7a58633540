#include "ddp/core/check.h"

#include "ddp/core/log.h"

#if DDP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace ddp::detail {

[[noreturn]] void fail(const char* file, int line, const std::string& what) {
  std::string where = str(file, ":", line);
  if (log_world_size() > 1) where += str(" [rank ", log_rank(), "]");
  throw Error(str(what, " (", where, ")"));
}

[[noreturn]] void fail_cuda(const char* file, int line, const char* expr, int code) {
#if DDP_HAVE_CUDA
  fail(file, line, str("CUDA error ", code, " (", cudaGetErrorName(static_cast<cudaError_t>(code)), ": ",
                       cudaGetErrorString(static_cast<cudaError_t>(code)), ") in ", expr));
#else
  fail(file, line, str("CUDA error ", code, " in ", expr));
#endif
}

}  // namespace ddp::detail
