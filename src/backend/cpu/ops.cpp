// CPU ops other than convolution: threads, GEMM split, batch norm, pointwise, pooling, linear, loss.
// Reductions accumulate short float runs (vectorisable) into double, in a fixed order, so results are
// accurate and bit-identical from run to run at a given thread count.
#include "ddp/backend/cpu/ops.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <strings.h>
#include <limits>
#include <mutex>
#include <vector>

#include "ddp/core/check.h"

// OpenBLAS internals (exported by its DYNAMIC_ARCH builds, weak so other builds still link): they
// re-run the kernel selection, which reads OPENBLAS_CORETYPE.
extern "C" {
void gotoblas_dynamic_init(void) __attribute__((weak));
void gotoblas_dynamic_quit(void) __attribute__((weak));
}

namespace ddp::cpu {

namespace {
// OpenBLAS 0.3.21 (Debian 12) does not know Sapphire/Emerald Rapids CPUs and falls back to its
// Prescott (SSE3) kernels, about 5x slower than its AVX-512 ones (docs/perf/cpuops.md). When the user
// has not chosen a core with OPENBLAS_CORETYPE, pick the best kernel set the CPU's features allow. This
// runs during static initialisation, before any thread can be inside BLAS.
bool select_blas_core() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || gotoblas_dynamic_init == nullptr ||
      gotoblas_dynamic_quit == nullptr)
    return false;
  const char* want = nullptr;
  __builtin_cpu_init();  // needed before __builtin_cpu_supports during static initialisation
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    want = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    want = "Haswell";
  if (want == nullptr) return false;
  const std::string have = openblas_get_corename();
  static const char* const kOlder[] = {"Prescott", "Core2",  "Penryn", "Dunnington", "Nehalem",
                                       "Sandybridge", "Katmai", "Coppermine", "Northwood", "Banias",
                                       "Atom", "Nano", "Unknown"};
  bool older = std::string(want) == "SkylakeX" && have == "Haswell";
  for (const char* c : kOlder) older = older || strcasecmp(have.c_str(), c) == 0;
  if (!older) return false;
  setenv("OPENBLAS_CORETYPE", want, 0);
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  unsetenv("OPENBLAS_CORETYPE");
  return true;
}
const bool g_core_selected = select_blas_core();

std::atomic<int> g_threads{0};
std::once_flag g_init;

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

int threads() {
  if (g_threads.load(std::memory_order_relaxed) == 0) std::call_once(g_init, [] {
      if (g_threads.load() == 0) set_num_threads(0);
    });
  return g_threads.load(std::memory_order_relaxed);
}
}  // namespace

void set_num_threads(int t) {
  DDP_CHECK(t >= 0, "ddp::cpu::set_num_threads: thread count must be >= 0, got ", t);
  if (t == 0) {
    const char* env = std::getenv("OMP_NUM_THREADS");
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      long v = std::strtol(env, &end, 10);
      DDP_CHECK(v > 0 && end != env, "OMP_NUM_THREADS='", env, "' is not a positive thread count");
      t = static_cast<int>(v);
    } else {
      t = omp_get_num_procs();
    }
  }
  // OpenBLAS runs single-threaded inside our OpenMP workers: a second pool of (spinning) BLAS threads
  // beside the OpenMP pool would fight it for the cores. See docs/perf/cpuops.md for the measurement.
  openblas_set_num_threads(1);
  // Every region names its team (num_threads(...)); the default team follows too, so that a region
  // written without the clause cannot start all-core teams in each of several ranks on one host.
  omp_set_num_threads(t);
  g_threads.store(t);
}

int num_threads() { return threads(); }

const char* blas_core() {
  (void)g_core_selected;
  return openblas_get_corename();
}

void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
           int ldb, float beta, float* c, int ldc) {
  DDP_CHECK(m >= 0 && n >= 0 && k >= 0, "ddp::cpu::sgemm: negative size m=", m, " n=", n, " k=", k);
  if (m == 0 || n == 0) return;
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const int nt = threads();
  const double flops = 2.0 * m * n * k;
  if (nt == 1 || flops < 4e6) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split the larger output dimension into one slab per thread (multiples of 16 for the kernels).
  const bool split_n = n >= m;
  const int dim = split_n ? n : m;
  const int parts = std::min(nt, std::max(1, dim / 16));
#pragma omp parallel num_threads(parts)
  {
    const int t = omp_get_thread_num();
    const int per = ((dim + parts - 1) / parts + 15) / 16 * 16;
    const int lo = std::min(dim, t * per), hi = std::min(dim, lo + per);
    if (hi > lo) {
      if (split_n) {
        const float* bp = trans_b ? b + static_cast<int64_t>(lo) * ldb : b + lo;
        cblas_sgemm(CblasRowMajor, ta, tb, m, hi - lo, k, alpha, a, lda, bp, ldb, beta, c + lo, ldc);
      } else {
        const float* ap = trans_a ? a + lo : a + static_cast<int64_t>(lo) * lda;
        cblas_sgemm(CblasRowMajor, ta, tb, hi - lo, n, k, alpha, ap, lda, b, ldb, beta,
                    c + static_cast<int64_t>(lo) * ldc, ldc);
      }
    }
  }
}

// ---- batch norm -------------------------------------------------------------------------------------

namespace {
// Sum of x[0..len) as double, accumulated in float over vector-friendly runs.
inline double sum_run(const float* x, int64_t len) {
  double s = 0.0;
  constexpr int64_t kRun = 256;
  for (int64_t j0 = 0; j0 < len; j0 += kRun) {
    const int64_t j1 = std::min(len, j0 + kRun);
    float part = 0.f;
#pragma omp simd reduction(+ : part)
    for (int64_t j = j0; j < j1; ++j) part += x[j];
    s += part;
  }
  return s;
}
inline double sq_dev_run(const float* x, int64_t len, float mean) {
  double s = 0.0;
  constexpr int64_t kRun = 256;
  for (int64_t j0 = 0; j0 < len; j0 += kRun) {
    const int64_t j1 = std::min(len, j0 + kRun);
    float part = 0.f;
#pragma omp simd reduction(+ : part)
    for (int64_t j = j0; j < j1; ++j) {
      const float d = x[j] - mean;
      part += d * d;
    }
    s += part;
  }
  return s;
}

// Stores channel ch's batch statistics (save_mean/invstd; running stats as PyTorch, with the unbiased
// variance) and returns the normalisation as y = x * scale + shift.
struct Affine {
  float scale, shift;
};
Affine finish_channel(int ch, double mean, double var, int64_t m, float eps, float momentum, const float* gamma,
                      const float* beta, float* running_mean, float* running_var, float* save_mean,
                      float* save_invstd) {
  const double invstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
  save_mean[ch] = static_cast<float>(mean);
  save_invstd[ch] = static_cast<float>(invstd);
  if (running_mean != nullptr)
    running_mean[ch] = static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * mean);
  if (running_var != nullptr)
    running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] +
                                         momentum * var * static_cast<double>(m) / static_cast<double>(m - 1));
  return {static_cast<float>(gamma[ch] * invstd), static_cast<float>(beta[ch] - mean * gamma[ch] * invstd)};
}

// Small planes (hw <= kSmallPlane: ResNet18's last stages at low resolution, 1x1 to 4x4 at 32 px input):
// per-plane loops would run a handful of iterations each, so these walk each image's contiguous block
// of channels [c0, c1) instead, accumulating per (channel, position) in double over the images in order,
// then over the positions. Threads take disjoint channel ranges, so results do not depend on them.
constexpr int kSmallPlane = 16;

// Calls f(c0, c1) for this thread's share of the c channels, inside a parallel region when worth it.
template <class F>
void for_channel_ranges(int c, int64_t total, F&& f) {
  const int nt = threads();
#pragma omp parallel num_threads(nt) if (total >= kParallelMin)
  {
    const int team = omp_get_num_threads(), me = omp_get_thread_num();
    const int c0 = static_cast<int>(static_cast<int64_t>(c) * me / team);
    const int c1 = static_cast<int>(static_cast<int64_t>(c) * (me + 1) / team);
    if (c1 > c0) f(c0, c1);
  }
}

// acc[j] (j over positions [c0 * hw, c1 * hw)) = sum over images of term(image block, j).
template <class Term>
void accumulate_positions(int n, int c, int hw, int c0, int c1, std::vector<double>& acc, Term&& term) {
  const int64_t lo = static_cast<int64_t>(c0) * hw, len = static_cast<int64_t>(c1 - c0) * hw;
  const int64_t chw = static_cast<int64_t>(c) * hw;
  acc.assign(static_cast<size_t>(len), 0.0);
  for (int i = 0; i < n; ++i) {
    const int64_t off = i * chw + lo;
    for (int64_t j = 0; j < len; ++j) acc[j] += term(off + j, j);
  }
}

double channel_sum(const std::vector<double>& acc, int hw, int ch_rel) {
  double s = 0.0;
  for (int j = 0; j < hw; ++j) s += acc[static_cast<size_t>(ch_rel) * hw + j];
  return s;
}

// y = x * scale_at + shift_at over positions [lo, lo + len) of each of the n image blocks (chw apart).
void affine_positions(int n, int64_t chw, int64_t lo, int64_t len, const std::vector<float>& scale_at,
                      const std::vector<float>& shift_at, const float* x, float* y) {
  for (int i = 0; i < n; ++i) {
    const float* xp = x + i * chw + lo;
    float* yp = y + i * chw + lo;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) yp[j] = xp[j] * scale_at[j] + shift_at[j];
  }
}

void bn_forward_train_small(int n, int c, int hw, const float* x, const float* gamma, const float* beta, float eps,
                            float momentum, float* running_mean, float* running_var, float* save_mean,
                            float* save_invstd, float* y) {
  const int64_t m = static_cast<int64_t>(n) * hw, chw = static_cast<int64_t>(c) * hw;
  for_channel_ranges(c, m * c, [&](int c0, int c1) {
    const int64_t lo = static_cast<int64_t>(c0) * hw, len = static_cast<int64_t>(c1 - c0) * hw;
    std::vector<double> acc, mean_at(static_cast<size_t>(len));
    std::vector<float> scale_at(static_cast<size_t>(len)), shift_at(static_cast<size_t>(len));
    accumulate_positions(n, c, hw, c0, c1, acc, [&](int64_t k, int64_t) { return static_cast<double>(x[k]); });
    for (int ch = c0; ch < c1; ++ch) {
      const double mean = channel_sum(acc, hw, ch - c0) / static_cast<double>(m);
      for (int j = 0; j < hw; ++j) mean_at[static_cast<size_t>(ch - c0) * hw + j] = mean;
    }
    accumulate_positions(n, c, hw, c0, c1, acc, [&](int64_t k, int64_t j) {
      const double d = static_cast<double>(x[k]) - mean_at[j];
      return d * d;
    });
    for (int ch = c0; ch < c1; ++ch) {
      const double mean = mean_at[static_cast<size_t>(ch - c0) * hw];
      const double var = channel_sum(acc, hw, ch - c0) / static_cast<double>(m);
      const Affine a = finish_channel(ch, mean, var, m, eps, momentum, gamma, beta, running_mean, running_var,
                                      save_mean, save_invstd);
      for (int j = 0; j < hw; ++j) {
        scale_at[static_cast<size_t>(ch - c0) * hw + j] = a.scale;
        shift_at[static_cast<size_t>(ch - c0) * hw + j] = a.shift;
      }
    }
    affine_positions(n, chw, lo, len, scale_at, shift_at, x, y);
  });
}

void bn_backward_small(int n, int c, int hw, const float* x, const float* dy, const float* gamma,
                       const float* save_mean, const float* save_invstd, float* dx, float* dgamma, float* dbeta) {
  const int64_t m = static_cast<int64_t>(n) * hw, chw = static_cast<int64_t>(c) * hw;
  for_channel_ranges(c, m * c, [&](int c0, int c1) {
    const int64_t lo = static_cast<int64_t>(c0) * hw, len = static_cast<int64_t>(c1 - c0) * hw;
    std::vector<float> mean_at(static_cast<size_t>(len)), k_at(static_cast<size_t>(len)),
        mdy_at(static_cast<size_t>(len)), cx_at(static_cast<size_t>(len));
    for (int64_t j = 0; j < len; ++j) mean_at[j] = save_mean[c0 + j / hw];
    std::vector<double> sdy, sdyx;  // sum(dy), sum(dy * (x - mean)) per position
    accumulate_positions(n, c, hw, c0, c1, sdy, [&](int64_t k, int64_t) { return static_cast<double>(dy[k]); });
    accumulate_positions(n, c, hw, c0, c1, sdyx, [&](int64_t k, int64_t j) {
      return static_cast<double>(dy[k]) * (static_cast<double>(x[k]) - mean_at[j]);
    });
    for (int ch = c0; ch < c1; ++ch) {
      const double s_dy = channel_sum(sdy, hw, ch - c0), s_dyx = channel_sum(sdyx, hw, ch - c0);
      const double invstd = save_invstd[ch];
      const double dg = s_dyx * invstd;
      dgamma[ch] = static_cast<float>(dg);
      dbeta[ch] = static_cast<float>(s_dy);
      // dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), as in batchnorm_backward
      const float k = static_cast<float>(gamma[ch] * invstd);
      const float mdy = static_cast<float>(s_dy / m);
      const float cx = static_cast<float>(dg / m * invstd);
      for (int j = 0; j < hw; ++j) {
        const size_t at = static_cast<size_t>(ch - c0) * hw + j;
        k_at[at] = k;
        mdy_at[at] = mdy;
        cx_at[at] = cx;
      }
    }
    for (int i = 0; i < n; ++i) {
      const int64_t off = i * chw + lo;
      const float *xp = x + off, *dp = dy + off;
      float* op = dx + off;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) op[j] = k_at[j] * (dp[j] - mdy_at[j] - (xp[j] - mean_at[j]) * cx_at[j]);
    }
  });
}
}  // namespace

void batchnorm_forward_train(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                             float eps, float momentum, float* running_mean, float* running_var,
                             float* save_mean, float* save_invstd, float* y) {
  const int64_t m = static_cast<int64_t>(n) * hw;
  DDP_CHECK(m > 1, "batchnorm_forward_train: need more than one value per channel (n=", n, ", hw=", hw, ")");
  if (hw <= kSmallPlane)
    return bn_forward_train_small(n, c, hw, x, gamma, beta, eps, momentum, running_mean, running_var, save_mean,
                                  save_invstd, y);
  const int nt = threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (m * c >= kParallelMin)
  for (int ch = 0; ch < c; ++ch) {
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += sum_run(x + (static_cast<int64_t>(i) * c + ch) * hw, hw);
    const double mean = s / static_cast<double>(m);
    double v = 0.0;
    for (int i = 0; i < n; ++i)
      v += sq_dev_run(x + (static_cast<int64_t>(i) * c + ch) * hw, hw, static_cast<float>(mean));
    const Affine a = finish_channel(ch, mean, v / static_cast<double>(m), m, eps, momentum, gamma, beta,
                                    running_mean, running_var, save_mean, save_invstd);
    const float scale = a.scale, shift = a.shift;
    for (int i = 0; i < n; ++i) {
      const float* xp = x + (static_cast<int64_t>(i) * c + ch) * hw;
      float* yp = y + (static_cast<int64_t>(i) * c + ch) * hw;
#pragma omp simd
      for (int j = 0; j < hw; ++j) yp[j] = xp[j] * scale + shift;
    }
  }
}

void batchnorm_forward_eval(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, float eps, float* y) {
  std::vector<float> scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
  for (int ch = 0; ch < c; ++ch) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[ch]) + eps);
    scale[ch] = static_cast<float>(gamma[ch] * invstd);
    shift[ch] = static_cast<float>(beta[ch] - running_mean[ch] * gamma[ch] * invstd);
  }
  const int64_t chw = static_cast<int64_t>(c) * hw;
  if (hw <= kSmallPlane) {  // per image, the block of channels (see bn_forward_train_small)
    for_channel_ranges(c, n * chw, [&](int c0, int c1) {
      const int64_t lo = static_cast<int64_t>(c0) * hw, len = static_cast<int64_t>(c1 - c0) * hw;
      std::vector<float> scale_at(static_cast<size_t>(len)), shift_at(static_cast<size_t>(len));
      for (int64_t j = 0; j < len; ++j) {
        scale_at[j] = scale[c0 + j / hw];
        shift_at[j] = shift[c0 + j / hw];
      }
      affine_positions(n, chw, lo, len, scale_at, shift_at, x, y);
    });
    return;
  }
  const int nt = threads();
  const int64_t planes = static_cast<int64_t>(n) * c;
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * hw >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const int ch = static_cast<int>(pl % c);
    const float sc = scale[ch], sh = shift[ch];
    const float* xp = x + pl * hw;
    float* yp = y + pl * hw;
#pragma omp simd
    for (int j = 0; j < hw; ++j) yp[j] = xp[j] * sc + sh;
  }
}

void batchnorm_backward(int n, int c, int hw, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta) {
  if (hw <= kSmallPlane)
    return bn_backward_small(n, c, hw, x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
  const int64_t m = static_cast<int64_t>(n) * hw;
  const int nt = threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (m * c >= kParallelMin)
  for (int ch = 0; ch < c; ++ch) {
    const float mean = save_mean[ch];
    const float invstd = save_invstd[ch];
    double sdy = 0.0, sdyx = 0.0;  // sum(dy), sum(dy * (x - mean))
    for (int i = 0; i < n; ++i) {
      const int64_t off = (static_cast<int64_t>(i) * c + ch) * hw;
      const float* xp = x + off;
      const float* dp = dy + off;
      constexpr int kRun = 256;
      for (int j0 = 0; j0 < hw; j0 += kRun) {
        const int j1 = std::min(hw, j0 + kRun);
        float a = 0.f, b = 0.f;
#pragma omp simd reduction(+ : a, b)
        for (int j = j0; j < j1; ++j) {
          a += dp[j];
          b += dp[j] * (xp[j] - mean);
        }
        sdy += a;
        sdyx += b;
      }
    }
    const double dg = sdyx * invstd;
    dgamma[ch] = static_cast<float>(dg);
    dbeta[ch] = static_cast<float>(sdy);
    // dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
    const float k = static_cast<float>(gamma[ch] * invstd);
    const float mdy = static_cast<float>(sdy / m);
    const float cx = static_cast<float>(dg / m * invstd);  // multiplies (x - mean)
    for (int i = 0; i < n; ++i) {
      const int64_t off = (static_cast<int64_t>(i) * c + ch) * hw;
      const float* xp = x + off;
      const float* dp = dy + off;
      float* op = dx + off;
#pragma omp simd
      for (int j = 0; j < hw; ++j) op[j] = k * (dp[j] - mdy - (xp[j] - mean) * cx);
    }
  }
}

// ---- pointwise ----------------------------------------------------------------------------------------

namespace {
// The pointwise ops are memory-bound; the portable loops below compile to branchy scalar code (the
// aliasing they allow defeats the vectoriser), so AVX-512 CPUs get explicit kernels.
#define DDP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// DDP_CPU_NO_AVX512=1 forces the portable loops (the tests run both ways).
bool cpu_has_avx512() {
  __builtin_cpu_init();
  const char* off = std::getenv("DDP_CPU_NO_AVX512");
  if (off != nullptr && *off != '\0' && std::string(off) != "0") return false;
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
const bool g_avx512 = cpu_has_avx512();

DDP_AVX512 void relu_fwd_avx512(int64_t lo, int64_t hi, const float* x, float* y) {
  const __m512 z = _mm512_setzero_ps();
  int64_t i = lo;
  // max(0, x) returns the second operand when either is NaN, so NaN propagates as in PyTorch.
  for (; i + 16 <= hi; i += 16) _mm512_storeu_ps(y + i, _mm512_maskz_max_ps(0xffff, z, _mm512_loadu_ps(x + i)));
  const __mmask16 m = static_cast<__mmask16>((1u << (hi - i)) - 1u);
  _mm512_mask_storeu_ps(y + i, m, _mm512_maskz_max_ps(0xffff, z, _mm512_maskz_loadu_ps(m, x + i)));
}
DDP_AVX512 void relu_bwd_avx512(int64_t lo, int64_t hi, const float* y, const float* dy, float* dx) {
  const __m512 z = _mm512_setzero_ps();
  int64_t i = lo;
  for (; i + 16 <= hi; i += 16) {
    const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_loadu_ps(y + i), z, _CMP_GT_OQ);
    _mm512_storeu_ps(dx + i, _mm512_maskz_mov_ps(pos, _mm512_loadu_ps(dy + i)));
  }
  const __mmask16 m = static_cast<__mmask16>((1u << (hi - i)) - 1u);
  const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, y + i), z, _CMP_GT_OQ);
  _mm512_mask_storeu_ps(dx + i, m, _mm512_maskz_loadu_ps(static_cast<__mmask16>(m & pos), dy + i));
}
DDP_AVX512 void add_avx512(int64_t lo, int64_t hi, const float* a, const float* b, float* y) {
  int64_t i = lo;
  for (; i + 16 <= hi; i += 16)
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
  const __mmask16 m = static_cast<__mmask16>((1u << (hi - i)) - 1u);
  _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i)));
}

// Runs f(lo, hi) over [0, count) in one contiguous slice per thread (serially when small).
template <class F>
void pointwise(int64_t count, F&& f) {
  const int nt = count >= kParallelMin ? threads() : 1;
  if (nt == 1) {
    f(int64_t{0}, count);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    const int64_t per = (count / team + 15) / 16 * 16;
    const int64_t lo = std::min(count, t * per), hi = t == team - 1 ? count : std::min(count, lo + per);
    if (hi > lo) f(lo, hi);
  }
}
}  // namespace

void relu_forward(int64_t count, const float* x, float* y) {
  pointwise(count, [&](int64_t lo, int64_t hi) {
    if (g_avx512) return relu_fwd_avx512(lo, hi, x, y);
    for (int64_t i = lo; i < hi; ++i) y[i] = x[i] < 0.f ? 0.f : x[i];  // NaN propagates, as in PyTorch
  });
}

void relu_backward(int64_t count, const float* y, const float* dy, float* dx) {
  pointwise(count, [&](int64_t lo, int64_t hi) {
    if (g_avx512) return relu_bwd_avx512(lo, hi, y, dy, dx);
    for (int64_t i = lo; i < hi; ++i) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
  });
}

void add(int64_t count, const float* a, const float* b, float* y) {
  pointwise(count, [&](int64_t lo, int64_t hi) {
    if (g_avx512) return add_avx512(lo, hi, a, b, y);
    for (int64_t i = lo; i < hi; ++i) y[i] = a[i] + b[i];
  });
}

// ---- pooling ------------------------------------------------------------------------------------------

namespace {
// One output row of a stride-2 max pool, 16 outputs at a time: each window column is a deinterleaved
// (even lanes) load, out-of-image lanes read as -inf. Same selection rule as the scalar loop.
DDP_AVX512 void maxpool_row_s2_avx512(const float* xp, int h, int w, int kernel, int pad, int i, int ow, float* yrow,
                                      int32_t* arow) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i lane2 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const int h0 = std::max(0, i * 2 - pad), h1 = std::min(h, i * 2 - pad + kernel);
  for (int j0 = 0; j0 < ow; j0 += 16) {
    const __mmask16 out_m = static_cast<__mmask16>(ow - j0 >= 16 ? 0xffffu : (1u << (ow - j0)) - 1u);
    __m512 best = ninf;
    // Index of the first in-image tap of each window, as the scalar loop starts from.
    const __m512i wcol0 = _mm512_add_epi32(_mm512_set1_epi32(2 * j0 - pad), lane2);
    __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(h0 * w), _mm512_maskz_max_epi32(0xffff, wcol0, _mm512_setzero_si512()));
    for (int a = h0; a < h1; ++a)
      for (int b = 0; b < kernel; ++b) {
        const int t0 = 2 * j0 - pad + b;  // input column of lane 0
        auto in_row = [&](int first) {    // lanes of 16 consecutive columns starting at `first` inside [0, w)
          const int lo = std::clamp(-first, 0, 16), hi = std::clamp(w - first, 0, 16);
          return static_cast<__mmask16>(hi <= lo ? 0u : ((1u << hi) - 1u) & ~((1u << lo) - 1u));
        };
        const float* row = xp + static_cast<int64_t>(a) * w;
        const __m512 lo = _mm512_mask_loadu_ps(ninf, in_row(t0), row + t0);
        const __m512 hi = _mm512_mask_loadu_ps(ninf, in_row(t0 + 16), row + t0 + 16);
        const __m512 v = _mm512_permutex2var_ps(lo, even, hi);
        const __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
        const __mmask16 vnan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        const __mmask16 bnum = _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q);
        const __mmask16 take = static_cast<__mmask16>(gt | (vnan & bnum));
        best = _mm512_mask_mov_ps(best, take, v);
        const __m512i pos = _mm512_add_epi32(_mm512_set1_epi32(a * w + t0), lane2);
        idx = _mm512_mask_mov_epi32(idx, take, pos);
      }
    _mm512_mask_storeu_ps(yrow + j0, out_m, best);
    _mm512_mask_storeu_epi32(arow + j0, out_m, idx);
  }
}
}  // namespace

void maxpool2d_forward(int n, int c, int h, int w, int kernel, int stride, int pad, const float* x, float* y,
                       int32_t* argmax) {
  DDP_CHECK(kernel > 0 && stride > 0 && pad >= 0 && 2 * pad <= kernel, "maxpool2d_forward: bad kernel=", kernel,
            " stride=", stride, " pad=", pad);
  const int oh = (h + 2 * pad - kernel) / stride + 1;
  const int ow = (w + 2 * pad - kernel) / stride + 1;
  DDP_CHECK(oh > 0 && ow > 0, "maxpool2d_forward: input ", h, "x", w, " too small for kernel ", kernel);
  const int64_t planes = static_cast<int64_t>(n) * c;
  const int nt = threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * h * w >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * h * w;
    float* yp = y + pl * oh * ow;
    int32_t* ap = argmax + pl * oh * ow;
    if (g_avx512 && stride == 2) {
      for (int i = 0; i < oh; ++i) maxpool_row_s2_avx512(xp, h, w, kernel, pad, i, ow, yp + i * ow, ap + i * ow);
      continue;
    }
    for (int i = 0; i < oh; ++i) {
      const int h0 = std::max(0, i * stride - pad), h1 = std::min(h, i * stride - pad + kernel);
      for (int j = 0; j < ow; ++j) {
        const int w0 = std::max(0, j * stride - pad), w1 = std::min(w, j * stride - pad + kernel);
        float best = -std::numeric_limits<float>::infinity();
        int idx = h0 * w + w0;
        // Branch-free select (the maximum's position is random, so branches mispredict); the first NaN
        // wins and stays (PyTorch lets a later NaN take over: the output is NaN either way, only which
        // NaN input gets the gradient differs).
        for (int a = h0; a < h1; ++a)
          for (int b = w0; b < w1; ++b) {
            const float v = xp[a * w + b];
            const bool take = (v > best) | ((v != v) & (best == best));
            best = take ? v : best;
            idx = take ? a * w + b : idx;
          }
        yp[i * ow + j] = best;
        ap[i * ow + j] = idx;
      }
    }
  }
}

void maxpool2d_backward(int n, int c, int h, int w, int kernel, int stride, int pad, const float* dy,
                        const int32_t* argmax, float* dx) {
  const int oh = (h + 2 * pad - kernel) / stride + 1;
  const int ow = (w + 2 * pad - kernel) / stride + 1;
  const int64_t planes = static_cast<int64_t>(n) * c;
  const int nt = threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * h * w >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    float* dp = dx + pl * h * w;
    std::memset(dp, 0, sizeof(float) * h * w);
    const float* g = dy + pl * oh * ow;
    const int32_t* ap = argmax + pl * oh * ow;
    for (int i = 0; i < oh * ow; ++i) dp[ap[i]] += g[i];
  }
}

void global_avgpool_forward(int n, int c, int hw, const float* x, float* y) {
  const int64_t planes = static_cast<int64_t>(n) * c;
  const int nt = threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * hw >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) y[pl] = static_cast<float>(sum_run(x + pl * hw, hw) / hw);
}

void global_avgpool_backward(int n, int c, int hw, const float* dy, float* dx) {
  const int64_t planes = static_cast<int64_t>(n) * c;
  const int nt = threads();
  const float inv = 1.f / static_cast<float>(hw);
#pragma omp parallel for num_threads(nt) schedule(static) if (planes * hw >= kParallelMin)
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float g = dy[pl] * inv;
    float* dp = dx + pl * hw;
    for (int j = 0; j < hw; ++j) dp[j] = g;
  }
}

// ---- linear -------------------------------------------------------------------------------------------

void linear_forward(int n, int in, int out, const float* x, const float* w, const float* b, float* y) {
  sgemm(false, true, n, out, in, 1.f, x, in, w, in, 0.f, y, out);
  if (b != nullptr)
    for (int i = 0; i < n; ++i)
      for (int o = 0; o < out; ++o) y[static_cast<int64_t>(i) * out + o] += b[o];
}

void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db) {
  if (dx != nullptr) sgemm(false, false, n, in, out, 1.f, dy, out, w, in, 0.f, dx, in);
  sgemm(true, false, out, in, n, 1.f, dy, out, x, in, 0.f, dw, in);
  if (db != nullptr)
    for (int o = 0; o < out; ++o) {
      double s = 0.0;
      for (int i = 0; i < n; ++i) s += dy[static_cast<int64_t>(i) * out + o];
      db[o] = static_cast<float>(s);
    }
}

// ---- loss ---------------------------------------------------------------------------------------------

namespace {
void check_labels(const char* op, int n, int classes, const int32_t* labels) {
  for (int i = 0; i < n; ++i)
    DDP_CHECK(labels[i] >= 0 && labels[i] < classes, op, ": labels[", i, "] = ", labels[i], " is outside [0, ",
              classes, ")");
}
}  // namespace

float softmax_cross_entropy_forward(int n, int classes, const float* logits, const int32_t* labels,
                                    float smoothing, float* probs) {
  DDP_CHECK(n > 0 && classes > 0, "softmax_cross_entropy_forward: bad size n=", n, " classes=", classes);
  DDP_CHECK(smoothing >= 0.f && smoothing <= 1.f, "softmax_cross_entropy_forward: label smoothing ", smoothing,
            " is outside [0, 1]");
  check_labels("softmax_cross_entropy_forward", n, classes, labels);
  std::vector<double> row_loss(n);
  const int nt = threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (static_cast<int64_t>(n) * classes >= kParallelMin)
  for (int i = 0; i < n; ++i) {
    const float* z = logits + static_cast<int64_t>(i) * classes;
    float* p = probs + static_cast<int64_t>(i) * classes;
    float mx = z[0];
    for (int k = 1; k < classes; ++k) mx = std::max(mx, z[k]);
    double se = 0.0, sz = 0.0;
    for (int k = 0; k < classes; ++k) {
      se += std::exp(static_cast<double>(z[k]) - mx);
      sz += z[k];
    }
    const double lse = mx + std::log(se);
    for (int k = 0; k < classes; ++k) p[k] = static_cast<float>(std::exp(static_cast<double>(z[k]) - lse));
    const double nll = lse - z[labels[i]];
    const double uniform = lse - sz / classes;  // mean_k(-log p_k)
    row_loss[i] = (1.0 - smoothing) * nll + smoothing * uniform;
  }
  double total = 0.0;
  for (int i = 0; i < n; ++i) total += row_loss[i];
  return static_cast<float>(total / n);
}

void softmax_cross_entropy_backward(int n, int classes, const float* probs, const int32_t* labels,
                                    float smoothing, float scale, float* dlogits) {
  check_labels("softmax_cross_entropy_backward", n, classes, labels);
  const float g = scale / static_cast<float>(n);
  const float off = smoothing / static_cast<float>(classes);
  const int nt = threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (static_cast<int64_t>(n) * classes >= kParallelMin)
  for (int i = 0; i < n; ++i) {
    const float* p = probs + static_cast<int64_t>(i) * classes;
    float* d = dlogits + static_cast<int64_t>(i) * classes;
    for (int k = 0; k < classes; ++k) d[k] = g * (p[k] - off);
    d[labels[i]] -= g * (1.f - smoothing);
  }
}

void label_ranks(int n, int classes, const float* logits, const int32_t* labels, int32_t* ranks) {
  DDP_CHECK(n >= 0 && classes > 0, "label_ranks: bad size n=", n, " classes=", classes);
  check_labels("label_ranks", n, classes, labels);
  for (int i = 0; i < n; ++i) ranks[i] = label_rank(logits + static_cast<int64_t>(i) * classes, classes, labels[i]);
}

}  // namespace ddp::cpu
