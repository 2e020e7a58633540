// CPU reference ops: fp32, NCHW, contiguous host memory, threaded with OpenMP, GEMMs through BLAS.
// They are the numerical reference for the CUDA backend and the path for machines without a GPU.
// Every output buffer is overwritten (never accumulated into) unless the comment says otherwise.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace ddp::cpu {

void set_num_threads(int threads);  // 0 = OMP_NUM_THREADS or all cores; also sets BLAS threads
int num_threads();
// The OpenBLAS kernel set in use (e.g. "SkylakeX"). Where OpenBLAS does not recognise the CPU and falls
// back to an older set, the ops library selects the best one the CPU supports at start-up, unless
// OPENBLAS_CORETYPE is set.
const char* blas_core();

// C (m x n, row-major, leading dimension ldc) = alpha * op(A) op(B) + beta * C, op = transpose when the
// flag is set (A is m x k after op, B is k x n after op). Split over the op threads, each calling
// single-threaded BLAS (so it must not be called from inside an OpenMP parallel region).
void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
           int ldb, float beta, float* c, int ldc);

struct Conv2dShape {
  int n = 0, c = 0, h = 0, w = 0;  // input
  int k = 0, r = 0, s = 0;         // output channels, kernel height, kernel width
  int stride = 1, pad = 0;
  int out_h() const { return (h + 2 * pad - r) / stride + 1; }
  int out_w() const { return (w + 2 * pad - s) / stride + 1; }
};

// w is KCRS (PyTorch OIHW).
void conv2d_forward(const Conv2dShape& p, const float* x, const float* w, float* y);
void conv2d_backward_data(const Conv2dShape& p, const float* dy, const float* w, float* dx);
void conv2d_backward_weight(const Conv2dShape& p, const float* x, const float* dy, float* dw);

// Batch norm over (N, H, W) per channel, PyTorch semantics: normalise with the biased batch
// variance; running_var is updated with the unbiased one; new = (1 - momentum) * old + momentum * b.
// save_mean / save_invstd (length c) are what backward needs.
void batchnorm_forward_train(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                             float eps, float momentum, float* running_mean, float* running_var,
                             float* save_mean, float* save_invstd, float* y);
void batchnorm_forward_eval(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, float eps, float* y);
void batchnorm_backward(int n, int c, int hw, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta);

void relu_forward(int64_t count, const float* x, float* y);  // y may alias x
// dx = dy where y > 0 else 0 (y is the ReLU output); dx may alias dy.
void relu_backward(int64_t count, const float* y, const float* dy, float* dx);
void add(int64_t count, const float* a, const float* b, float* y);  // y may alias a or b

// Max pool with implicit -inf padding (PyTorch). argmax holds the flat input index h*w-plane offset
// of each output's maximum (first one on ties, as PyTorch); backward scatters into a zeroed dx.
void maxpool2d_forward(int n, int c, int h, int w, int kernel, int stride, int pad, const float* x, float* y,
                       int32_t* argmax);
void maxpool2d_backward(int n, int c, int h, int w, int kernel, int stride, int pad, const float* dy,
                        const int32_t* argmax, float* dx);

void global_avgpool_forward(int n, int c, int hw, const float* x, float* y);  // y: n x c
void global_avgpool_backward(int n, int c, int hw, const float* dy, float* dx);

// y = x W^T + b with W: out x in (PyTorch nn.Linear). dx may be nullptr (not needed).
void linear_forward(int n, int in, int out, const float* x, const float* w, const float* b, float* y);
void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db);

// Mean softmax cross-entropy with label smoothing (PyTorch's CrossEntropyLoss(label_smoothing=e)):
//   loss_i = (1 - e) * (-log p_i[y_i]) + e * mean_k(-log p_i[k]).
// probs (n x classes) is saved for backward. Labels must lie in [0, classes): checked, error names
// the offending index.
float softmax_cross_entropy_forward(int n, int classes, const float* logits, const int32_t* labels,
                                    float smoothing, float* probs);
// dlogits = scale * d(mean loss)/d(logits) = scale * (p - ((1 - e) onehot + e / classes)) / n
void softmax_cross_entropy_backward(int n, int classes, const float* probs, const int32_t* labels,
                                    float smoothing, float scale, float* dlogits);

// The rank of a row's label for top-1 (rank 0) and top-5 (rank < 5): the label's position when the
// row is sorted in descending order by a sort stable by class index. So a tie goes against the label
// unless it has the lowest index among the tied classes (a zero fc, all logits equal, scores chance:
// the share of class 0), and the rank is a count (greater, or equal at a lower index), no sort.
// PyTorch: argmax/max return the first maximal index, so top-1 here is (argmax == label); topk leaves
// the order of ties unspecified (PyTorch 1.13's CPU topk returned 8, 6, 7, 5, 9 for ten equal
// values), so top-5 with ties depends on its backend: the stable order is the one both our backends
// can give bit for bit. A row whose softmax is undefined, a NaN or a +inf anywhere in it (inf - inf),
// is kUnranked: wrong for top-1 and top-5, whatever its label (its loss is NaN as well). PyTorch orders
// NaN above every number, so its argmax would call an all-NaN row right for label 0 and a NaN model
// would score; here it scores 0. +inf is in the rule so that --eval-flip, which ranks averaged
// probabilities (NaN for such a row), gives the same answer. -inf is an ordered value (p = 0).
// One rule for ddp::cpu, the CUDA kernel (cuda::softmax_ce_forward) and the --eval-flip averaging
// (train::averaged_view_counts).
inline constexpr int32_t kUnranked = std::numeric_limits<int32_t>::max();
template <class T>
int32_t label_rank(const T* row, int classes, int32_t label) {
  const T target = row[label];
  int32_t rank = 0;
  bool undefined = false;
  for (int k = 0; k < classes; ++k) {
    undefined |= std::isnan(row[k]) || row[k] == std::numeric_limits<T>::infinity();
    rank += row[k] > target || (row[k] == target && k < label);
  }
  return undefined ? kUnranked : rank;
}
// label_rank of each of n rows (n x classes logits). Labels must lie in [0, classes): checked.
void label_ranks(int n, int classes, const float* logits, const int32_t* labels, int32_t* ranks);

}  // namespace ddp::cpu
