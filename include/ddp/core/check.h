// The one error-check header. Every failure becomes a ddp::Error whose message names the file, line,
// rank and the failing expression, so a multi-node log says where and on which rank it broke.
//
// The macros need none of the libraries' headers: each library's success code is 0 (cudaSuccess,
// CUDNN_STATUS_SUCCESS, CUBLAS_STATUS_SUCCESS, ncclSuccess, MPI_SUCCESS) and HDF5 signals failure
// with a negative return. The functions that turn a code into text live in the library that links
// the dependency (core: CUDA runtime; backend/cuda: cuDNN, cuBLAS; comm: NCCL, MPI; nn: HDF5).
#pragma once

#include <stdexcept>
#include <string>

namespace ddp {

// The error type for everything the program reports to the user: bad input, library failures.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] void fail(const char* file, int line, const std::string& what);
[[noreturn]] void fail_cuda(const char* file, int line, const char* expr, int code);
[[noreturn]] void fail_cudnn(const char* file, int line, const char* expr, int code);
[[noreturn]] void fail_cublas(const char* file, int line, const char* expr, int code);
[[noreturn]] void fail_nccl(const char* file, int line, const char* expr, int code);
[[noreturn]] void fail_mpi(const char* file, int line, const char* expr, int code);
[[noreturn]] void fail_h5(const char* file, int line, const char* expr);

template <class T>
inline T h5_check(T r, const char* file, int line, const char* expr) {
  if (r < 0) fail_h5(file, line, expr);
  return r;
}
}  // namespace detail

// Builds "a" "b" 3 ... into one string with operator<<.
template <class... A>
std::string str(const A&... a);

}  // namespace ddp

#include "ddp/core/str.h"

// DDP_CHECK(cond, parts...): validation of input and invariants (not assert: stays on in release).
#define DDP_CHECK(cond, ...)                                                 \
  do {                                                                       \
    if (!(cond)) ::ddp::detail::fail(__FILE__, __LINE__, ::ddp::str(__VA_ARGS__)); \
  } while (0)
#define DDP_FAIL(...) ::ddp::detail::fail(__FILE__, __LINE__, ::ddp::str(__VA_ARGS__))

#define CUDA_CHECK(call)                                                          \
  do {                                                                            \
    int ddp_e_ = static_cast<int>(call);                                          \
    if (ddp_e_ != 0) ::ddp::detail::fail_cuda(__FILE__, __LINE__, #call, ddp_e_); \
  } while (0)
// After a kernel launch: catches bad launch configurations at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
#define CUDNN_CHECK(call)                                                          \
  do {                                                                             \
    int ddp_e_ = static_cast<int>(call);                                           \
    if (ddp_e_ != 0) ::ddp::detail::fail_cudnn(__FILE__, __LINE__, #call, ddp_e_); \
  } while (0)
#define CUBLAS_CHECK(call)                                                          \
  do {                                                                              \
    int ddp_e_ = static_cast<int>(call);                                            \
    if (ddp_e_ != 0) ::ddp::detail::fail_cublas(__FILE__, __LINE__, #call, ddp_e_); \
  } while (0)
#define NCCL_CHECK(call)                                                          \
  do {                                                                            \
    int ddp_e_ = static_cast<int>(call);                                          \
    if (ddp_e_ != 0) ::ddp::detail::fail_nccl(__FILE__, __LINE__, #call, ddp_e_); \
  } while (0)
#define MPI_CHECK(call)                                                          \
  do {                                                                           \
    int ddp_e_ = (call);                                                         \
    if (ddp_e_ != 0) ::ddp::detail::fail_mpi(__FILE__, __LINE__, #call, ddp_e_); \
  } while (0)
// H5_CHECK is an expression: hid_t f = H5_CHECK(H5Fopen(...));
#define H5_CHECK(call) ::ddp::detail::h5_check((call), __FILE__, __LINE__, #call)
