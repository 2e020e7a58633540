#include "ddp/backend/cuda/linear.h"

#include "ddp/backend/cuda/capture.h"
#include "ddp/backend/cuda/ops.h"
#include "ddp/core/check.h"

namespace ddp::cuda {
namespace {
cudaStream_t stream_of(cublasHandle_t h) {
  cudaStream_t s = nullptr;
  CUBLAS_CHECK(cublasGetStream(h, &s));
  return s;
}
}  // namespace

// cuBLAS is column-major: a row-major [r, c] matrix is a column-major c x r one, so every product
// below is written for the transposes.
void linear_forward(cublasHandle_t h, int n, int in, int out, const float* x, const float* w, const float* b,
                    float* y) {
  const float one = 1.0f, zero = 0.0f;
  // y^T (out x n) = w (as in x out)^T * x^T (in x n)
  CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, w, in, x, in, &zero, y, out));
  if (capture_invalidated(stream_of(h))) fail_capture_invalidated("cuBLAS SGEMM (classifier forward)");
  if (b) add_bias_rows(y, b, n, out, stream_of(h));
}

void linear_backward(cublasHandle_t h, int n, int in, int out, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, float* db) {
  const float one = 1.0f, zero = 0.0f;
  // dw (row-major out x in = col-major in x out) = x^T (in x n) * dy (n x out)
  CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, &one, x, in, dy, out, &zero, dw, in));
  if (capture_invalidated(stream_of(h))) fail_capture_invalidated("cuBLAS SGEMM (classifier weight gradient)");
  // dx (col-major in x n) = w^T-as-stored (in x out) * dy^T (out x n)
  if (dx) {
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, &one, w, in, dy, out, &zero, dx, in));
    if (capture_invalidated(stream_of(h))) fail_capture_invalidated("cuBLAS SGEMM (classifier data gradient)");
  }
  if (db) column_sums(dy, n, out, db, stream_of(h));
}

}  // namespace ddp::cuda
