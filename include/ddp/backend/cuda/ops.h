// CUDA kernels of the ResNet18 backend. Activations are NHWC ("rows x channels" with rows = N*H*W)
// in the activation dtype (F32, F16 or BF16); per-channel statistics, BN parameters, logits and
// everything the optimizer touches are fp32. All functions enqueue on `stream` and return at once;
// every launch is checked (CUDA_CHECK_LAUNCH). Each op has a CPU twin in ddp/backend/cpu/ops.h and
// is tested against it (tests/backend/cuda/test_cuda_ops.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ddp/core/tensor.h"

namespace ddp::cuda {

// ---- conversions ----------------------------------------------------------------------------
// uint8 NHWC RGB (c = 3) -> (x/255 - mean) / std (ImageNet), written with channel padding: the
// output has cpad >= 3 channels, the extra ones zero (tensor-core convs want C % 8 == 0).
void normalize_u8_nhwc(const uint8_t* x, int64_t pixels, int cpad, DType dt, void* y, cudaStream_t s);
// Row-wise channel padding: x is rows x c (dtype dt), y is rows x cpad with zeros beyond c.
void pad_channels(DType dt, const void* x, int64_t rows, int c, int cpad, void* y, cudaStream_t s);
// fp32 rows x c -> dt rows x cpad (zeros beyond c).
void f32_to_padded(const float* x, int64_t rows, int c, int cpad, DType dt, void* y, cudaStream_t s);
// dt rows x cpad -> fp32 rows x c (drops the padding).
void padded_to_f32(DType dt, const void* x, int64_t rows, int cpad, int c, float* y, cudaStream_t s);
void convert_from_f32(const float* x, int64_t count, DType dt, void* y, cudaStream_t s);
void convert_to_f32(DType dt, const void* x, int64_t count, float* y, cudaStream_t s);
void add_inplace(DType dt, void* y, const void* x, int64_t count, cudaStream_t s);  // y += x

// ---- batch norm (+ residual add + ReLU) -------------------------------------------------------
// Scratch size (floats) bn_batch_stats / bn_backward need for rows x c.
int64_t bn_scratch_floats(int64_t rows, int c);
// Batch mean and 1/sqrt(biased var + eps) per channel (fp32 partial sums, double final sums);
// with update_running, running stats move PyTorch's way (unbiased variance).
void bn_batch_stats(DType dt, const void* x, int64_t rows, int c, float eps, float momentum, bool update_running,
                    float* running_mean, float* running_var, float* save_mean, float* save_invstd, float* scratch,
                    cudaStream_t s);
// mean := running_mean, invstd := 1/sqrt(running_var + eps) (eval mode).
void bn_eval_stats(const float* running_mean, const float* running_var, int c, float eps, float* mean, float* invstd,
                   cudaStream_t s);
// y = [relu]((x - mean) * invstd * gamma + beta [+ residual]); residual may be nullptr.
void bn_apply(DType dt, const void* x, int64_t rows, int c, const float* gamma, const float* beta, const float* mean,
              const float* invstd, const void* residual, bool relu, void* y, cudaStream_t s);
// Backward of bn_apply. relu_out (the forward output y) may be nullptr (no ReLU); then g = dy, else
// g = dy * (relu_out > 0). Writes dgamma, dbeta (fp32, overwritten), dx (dt) and, when
// dresidual != nullptr, g itself (the residual branch's gradient; may alias dy).
void bn_backward(DType dt, const void* x, const void* relu_out, const void* dy, int64_t rows, int c,
                 const float* gamma, const float* mean, const float* invstd, float* dgamma, float* dbeta, void* dx,
                 void* dresidual, float* scratch, cudaStream_t s);

// ---- pools ------------------------------------------------------------------------------------
// Max pool, implicit -inf padding; argmax = h*w + w of the window maximum (first on ties, as PyTorch).
void maxpool_forward(DType dt, const void* x, int n, int h, int w, int c, int kernel, int stride, int pad, void* y,
                     int32_t* argmax, cudaStream_t s);
// dx (n x h x w x c) is overwritten: each input gathers the gradients of the outputs that chose it.
void maxpool_backward(DType dt, const void* dy, const int32_t* argmax, int n, int h, int w, int c, int kernel,
                      int stride, int pad, void* dx, cudaStream_t s);
void avgpool_forward(DType dt, const void* x, int n, int hw, int c, float* y, cudaStream_t s);  // y: n x c fp32
void avgpool_backward(DType dt, const float* dy, int n, int hw, int c, void* dx, cudaStream_t s);

// ---- classifier helpers -----------------------------------------------------------------------
void add_bias_rows(float* y, const float* b, int n, int cols, cudaStream_t s);  // y[i, j] += b[j]
void column_sums(const float* x, int n, int cols, float* out, cudaStream_t s);   // out[j] = sum_i x[i, j]
// Softmax cross-entropy with label smoothing, per row: probs, loss (fp32) and the label's rank as
// cpu::label_rank gives it (top-1 iff 0, top-5 iff < 5): logits greater than the label's, plus those
// equal at a lower class index; INT32_MAX (cpu::kUnranked) for a row holding a NaN or a +inf.
void softmax_ce_forward(const float* logits, const int32_t* labels, int n, int classes, float smoothing, float* probs,
                        float* row_loss, int32_t* label_rank, cudaStream_t s);
// dlogits = scale * (probs - ((1 - e) onehot + e / classes)) / n
void softmax_ce_backward(const float* probs, const int32_t* labels, int n, int classes, float smoothing, float scale,
                         float* dlogits, cudaStream_t s);

// ---- optimizer and checks -----------------------------------------------------------------------
struct SgdArgs {
  float lr = 0, momentum = 0, dampening = 0, weight_decay = 0, grad_scale = 1;
  bool nesterov = false;
  bool first_step = false;  // momentum buffer := g (PyTorch's lazy initialisation)
};
// PyTorch SGD over a flat buffer: g = grad*grad_scale (+ wd*p unless no_decay[i]); momentum; p -= lr*g.
// no_decay may be nullptr (decay everything). lowp (dtype lowp_dt) receives the new p rounded, when not null.
void sgd_update(float* p, const float* grad, float* mom, const uint8_t* no_decay, int64_t count, const SgdArgs& a,
                DType lowp_dt, void* lowp, cudaStream_t s);
// flag[0] |= 1 when any element is inf or NaN (flag must be zeroed by the caller).
void check_nonfinite(const float* x, int64_t count, int32_t* flag, cudaStream_t s);
// Deterministic weighted sum: partials[kChecksumBlocks] doubles, summed on the host in order.
constexpr int kChecksumBlocks = 256;
void checksum_partials(const float* x, int64_t count, double* partials, cudaStream_t s);

}  // namespace ddp::cuda
