// The classifier (nn.Linear) in fp32 through cuBLAS: tiny next to the convs (512 -> classes), so it
// stays in fp32 in every AMP mode, which keeps logits and the fc gradients exact to fp32 rounding.
// Row-major like PyTorch: x n x in, w out x in, y n x out.
#pragma once

#include <cublas_v2.h>

namespace ddp::cuda {

// The handle's stream and math mode (TF32 or not) are the caller's.
void linear_forward(cublasHandle_t h, int n, int in, int out, const float* x, const float* w, const float* b, float* y);
// dx may be nullptr. dw, db, dx are overwritten.
void linear_backward(cublasHandle_t h, int n, int in, int out, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, float* db);

}  // namespace ddp::cuda
