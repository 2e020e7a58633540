// CUDA kernels of the ResNet18 backend (see ddp/backend/cuda/ops.h for the contracts).
#include "ddp/backend/cuda/ops.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "ddp/core/check.h"

namespace ddp::cuda {
namespace {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Runs BODY with T bound to the device type of dt.
#define DDP_DISPATCH(dt, T, ...)                                              \
  switch (dt) {                                                               \
    case DType::F32: { using T = float; __VA_ARGS__; } break;                 \
    case DType::F16: { using T = __half; __VA_ARGS__; } break;                \
    case DType::BF16: { using T = __nv_bfloat16; __VA_ARGS__; } break;        \
    default: DDP_FAIL("CUDA op: activation dtype must be f32, f16 or bf16, got ", dtype_name(dt)); \
  }

constexpr int kThreads = 256;

unsigned grid_for(int64_t count, int threads = kThreads) {
  int64_t b = (count + threads - 1) / threads;
  // Grid-stride loops cover the rest; 65535*8 blocks keep every GPU busy.
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 8)));
}

#define GRID_LOOP(i, count) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (count); i += (int64_t)gridDim.x * blockDim.x)

// ---- conversions ------------------------------------------------------------------------------
template <class T>
__global__ void k_normalize_u8(const uint8_t* x, int64_t pixels, int cpad, T* y) {
  const float mean[3] = {0.485f, 0.456f, 0.406f};
  const float inv_std[3] = {1.0f / 0.229f, 1.0f / 0.224f, 1.0f / 0.225f};
  GRID_LOOP(i, pixels * cpad) {
    int64_t px = i / cpad;
    int ch = static_cast<int>(i - px * cpad);
    float v = 0.0f;
    if (ch < 3) v = (static_cast<float>(x[px * 3 + ch]) * (1.0f / 255.0f) - mean[ch]) * inv_std[ch];
    y[i] = from_f<T>(v);
  }
}

template <class TI, class TO>
__global__ void k_pad(const TI* x, int64_t rows, int c, int cpad, TO* y) {
  GRID_LOOP(i, rows * cpad) {
    int64_t r = i / cpad;
    int ch = static_cast<int>(i - r * cpad);
    y[i] = from_f<TO>(ch < c ? to_f(x[r * c + ch]) : 0.0f);
  }
}

template <class TI, class TO>
__global__ void k_unpad(const TI* x, int64_t rows, int cpad, int c, TO* y) {
  GRID_LOOP(i, rows * c) {
    int64_t r = i / c;
    int ch = static_cast<int>(i - r * c);
    y[i] = from_f<TO>(to_f(x[r * cpad + ch]));
  }
}

template <class T>
__global__ void k_add_inplace(T* y, const T* x, int64_t count) {
  GRID_LOOP(i, count) y[i] = from_f<T>(to_f(y[i]) + to_f(x[i]));
}

// ---- batch norm -------------------------------------------------------------------------------
// Partial per-channel sums: block (32 channels x 8 row lanes), grid (channel groups, row groups).
constexpr int kBnRowGroupsMax = 1024;
constexpr int kBnLanes = 8;

int bn_row_groups(int64_t rows) {
  int64_t g = (rows + kBnLanes * 32 - 1) / (kBnLanes * 32);  // about 32 rows per thread at least
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(g, kBnRowGroupsMax)));
}

// Adds the kBnLanes row lanes of a (32 channels x kBnLanes) block in a fixed order (deterministic) and
// writes the block's two partial sums for channel ch to part[(row group * 2 + {0,1}) * c + ch].
__device__ __forceinline__ void store_lane_sums(float s0, float s1, int ch, int c, float* part) {
  __shared__ float sh[2][kBnLanes][33];
  sh[0][threadIdx.y][threadIdx.x] = s0;
  sh[1][threadIdx.y][threadIdx.x] = s1;
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    float a = 0.0f, b = 0.0f;
    for (int j = 0; j < kBnLanes; ++j) {
      a += sh[0][j][threadIdx.x];
      b += sh[1][j][threadIdx.x];
    }
    part[(blockIdx.y * 2 + 0) * (int64_t)c + ch] = a;
    part[(blockIdx.y * 2 + 1) * (int64_t)c + ch] = b;
  }
}

// Sums are shifted by the channel's first value (row 0) to avoid cancellation in E[x^2] - E[x]^2.
template <class T>
__global__ void k_bn_partial_stats(const T* x, int64_t rows, int c, float* part) {
  int ch = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f, ss = 0.0f;
  if (ch < c) {
    float shift = to_f(x[ch]);
    for (int64_t r = blockIdx.y * (int64_t)kBnLanes + threadIdx.y; r < rows; r += (int64_t)gridDim.y * kBnLanes) {
      float v = to_f(x[r * c + ch]) - shift;
      s += v;
      ss += v * v;
    }
  }
  store_lane_sums(s, ss, ch, c, part);
}

// Sums the row-group partials of channel blockIdx.x in double (fixed order: deterministic).
__device__ void block_sum2(const float* part, int groups, int c, int ch, double& a_out, double& b_out) {
  double a = 0.0, b = 0.0;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    a += part[(g * 2 + 0) * (int64_t)c + ch];
    b += part[(g * 2 + 1) * (int64_t)c + ch];
  }
  __shared__ double sa[kThreads], sb[kThreads];
  sa[threadIdx.x] = a;
  sb[threadIdx.x] = b;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) {
      sa[threadIdx.x] += sa[threadIdx.x + o];
      sb[threadIdx.x] += sb[threadIdx.x + o];
    }
    __syncthreads();
  }
  a_out = sa[0];
  b_out = sb[0];
}

template <class T>
__global__ void k_bn_finish_stats(const T* x, const float* part, int groups, int64_t rows, int c, float eps,
                                  float momentum, bool update, float* rmean, float* rvar, float* mean, float* invstd) {
  int ch = blockIdx.x;
  double s, ss;
  block_sum2(part, groups, c, ch, s, ss);
  if (threadIdx.x == 0) {
    double m = static_cast<double>(rows);
    double shift = to_f(x[ch]);
    double dm = s / m;
    double var = std::max(ss / m - dm * dm, 0.0);  // biased
    double mu = shift + dm;
    mean[ch] = static_cast<float>(mu);
    invstd[ch] = static_cast<float>(1.0 / sqrt(var + eps));
    if (update) {
      double unbiased = rows > 1 ? var * m / (m - 1.0) : var;
      rmean[ch] = static_cast<float>((1.0 - momentum) * rmean[ch] + momentum * mu);
      rvar[ch] = static_cast<float>((1.0 - momentum) * rvar[ch] + momentum * unbiased);
    }
  }
}

__global__ void k_bn_eval_stats(const float* rmean, const float* rvar, int c, float eps, float* mean, float* invstd) {
  GRID_LOOP(i, c) {
    mean[i] = rmean[i];
    invstd[i] = rsqrtf(rvar[i] + eps);
  }
}

template <class T>
__global__ void k_bn_apply(const T* x, int64_t rows, int c, const float* gamma, const float* beta, const float* mean,
                           const float* invstd, const T* residual, bool relu, T* y) {
  GRID_LOOP(i, rows * c) {
    int ch = static_cast<int>(i % c);
    float v = (to_f(x[i]) - mean[ch]) * invstd[ch] * gamma[ch] + beta[ch];
    if (residual) v += to_f(residual[i]);
    if (relu) v = v < 0.0f ? 0.0f : v;  // NaN passes through, as in PyTorch (an overflow stays visible)
    y[i] = from_f<T>(v);
  }
}

template <class T>
__device__ __forceinline__ float masked_grad(const T* dy, const T* relu_out, int64_t i) {
  float g = to_f(dy[i]);
  if (relu_out && !(to_f(relu_out[i]) > 0.0f)) g = 0.0f;
  return g;
}

template <class T>
__global__ void k_bn_partial_bwd(const T* x, const T* relu_out, const T* dy, int64_t rows, int c, const float* mean,
                                 const float* invstd, float* part) {
  int ch = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f, sx = 0.0f;
  if (ch < c) {
    float mu = mean[ch], is = invstd[ch];
    for (int64_t r = blockIdx.y * (int64_t)kBnLanes + threadIdx.y; r < rows; r += (int64_t)gridDim.y * kBnLanes) {
      int64_t i = r * c + ch;
      float g = masked_grad(dy, relu_out, i);
      s += g;
      sx += g * (to_f(x[i]) - mu) * is;
    }
  }
  store_lane_sums(s, sx, ch, c, part);
}

__global__ void k_bn_finish_bwd(const float* part, int groups, int c, float* dgamma, float* dbeta) {
  int ch = blockIdx.x;
  double s, sx;
  block_sum2(part, groups, c, ch, s, sx);
  if (threadIdx.x == 0) {
    dbeta[ch] = static_cast<float>(s);
    dgamma[ch] = static_cast<float>(sx);
  }
}

template <class T>
__global__ void k_bn_apply_bwd(const T* x, const T* relu_out, const T* dy, int64_t rows, int c, const float* gamma,
                               const float* mean, const float* invstd, const float* dgamma, const float* dbeta, T* dx,
                               T* dres) {
  float inv_m = 1.0f / static_cast<float>(rows);
  GRID_LOOP(i, rows * c) {
    int ch = static_cast<int>(i % c);
    float g = masked_grad(dy, relu_out, i);
    float is = invstd[ch];
    float xhat = (to_f(x[i]) - mean[ch]) * is;
    float v = gamma[ch] * is * (g - dbeta[ch] * inv_m - xhat * dgamma[ch] * inv_m);
    if (dres) dres[i] = from_f<T>(g);
    dx[i] = from_f<T>(v);
  }
}


// ---- 8-wide vector paths (c % 8 == 0: every ResNet18 layer) --------------------------------------
// One thread moves 8 consecutive channels with 16-byte loads (two for fp32); the scalar kernels
// above remain for other channel counts.
template <class T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = to_f(h[k]);
  }
}
template <class T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
  if constexpr (sizeof(T) == 4) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint4 raw;
    T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int k = 0; k < 8; ++k) h[k] = from_f<T>(v[k]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
}
__device__ __forceinline__ void load8f(const float* p, float (&v)[8]) { load8<float>(p, v); }

// Vector partial sums: 256 threads = (c/8 channel vectors) x (256/(c/8) row lanes).
template <class T, bool kBwd>
__global__ void __launch_bounds__(kThreads) k_bn_partial_vec(const T* x, const T* relu_out, const T* dy, int64_t rows,
                                                            int c, const float* mean, const float* invstd, float* part) {
  const int tv = c / 8, lanes = kThreads / tv;
  const int v = threadIdx.x % tv, lane = threadIdx.x / tv;
  const int ch0 = v * 8;
  float a[8], b[8], shift[8], mu[8], is[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) a[k] = b[k] = 0.0f;
  if constexpr (kBwd) {
    load8f(mean + ch0, mu);
    load8f(invstd + ch0, is);
  } else {
    load8(x + ch0, shift);  // row 0: the shift of the shifted sums
  }
  for (int64_t r = blockIdx.x * (int64_t)lanes + lane; r < rows; r += (int64_t)gridDim.x * lanes) {
    const int64_t off = r * c + ch0;
    float xv[8];
    load8(x + off, xv);
    if constexpr (kBwd) {
      float g[8];
      load8(dy + off, g);
      if (relu_out) {
        float y[8];
        load8(relu_out + off, y);
#pragma unroll
        for (int k = 0; k < 8; ++k) g[k] = y[k] > 0.0f ? g[k] : 0.0f;
      }
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        a[k] += g[k];
        b[k] += g[k] * (xv[k] - mu[k]) * is[k];
      }
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float d = xv[k] - shift[k];
        a[k] += d;
        b[k] += d * d;
      }
    }
  }
  __shared__ float sa[kThreads][9], sb[kThreads][9];  // 9: fewer bank conflicts
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    sa[threadIdx.x][k] = a[k];
    sb[threadIdx.x][k] = b[k];
  }
  __syncthreads();
  // Thread t < c reduces channel t over the row lanes.
  for (int t = threadIdx.x; t < c; t += kThreads) {
    const int vv = t / 8, k = t % 8;
    float ra = 0.0f, rb = 0.0f;
    for (int j = 0; j < lanes; ++j) {
      ra += sa[j * tv + vv][k];
      rb += sb[j * tv + vv][k];
    }
    part[(blockIdx.x * 2 + 0) * (int64_t)c + t] = ra;
    part[(blockIdx.x * 2 + 1) * (int64_t)c + t] = rb;
  }
}

// The vector apply kernels give each thread one 8-channel vector (threadIdx.x % (c/8)) and stride it
// over rows, as k_bn_partial_vec does: the per-channel constants are loaded once per thread, not once
// per 8 elements. Loading them (4-5 float8 reads per 16 bytes of bf16 data) held these kernels to
// 50-70% of the memory bandwidth (H200 ncu profile, 2026-11-29).
unsigned bn_apply_blocks(int64_t rows, int c) {
  const int64_t lanes = kThreads / (c / 8);
  // At least ~4 rows per thread, at most 4096 blocks (a few waves on any GPU of ours).
  return static_cast<unsigned>(std::clamp<int64_t>((rows + 4 * lanes - 1) / (4 * lanes), 1, 4096));
}

template <class T>
__global__ void __launch_bounds__(kThreads) k_bn_apply_vec(const T* x, int64_t rows, int c, const float* gamma,
                                                          const float* beta, const float* mean, const float* invstd,
                                                          const T* residual, bool relu, T* y) {
  const int tv = c / 8, lanes = kThreads / tv;
  const int ch0 = (threadIdx.x % tv) * 8, lane = threadIdx.x / tv;
  // The arithmetic is the per-element kernel's, in its order (no folded constants): the same bits as
  // before the rewrite, so the model's comparisons with the CPU keep their margins.
  float g[8], is[8], bt[8], mu[8];
  load8f(gamma + ch0, g);
  load8f(invstd + ch0, is);
  load8f(beta + ch0, bt);
  load8f(mean + ch0, mu);
  for (int64_t r = blockIdx.x * (int64_t)lanes + lane; r < rows; r += (int64_t)gridDim.x * lanes) {
    const int64_t off = r * c + ch0;
    float xv[8];
    load8(x + off, xv);
    float out[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = (xv[k] - mu[k]) * is[k] * g[k] + bt[k];
    if (residual) {
      float rv[8];
      load8(residual + off, rv);
#pragma unroll
      for (int k = 0; k < 8; ++k) out[k] += rv[k];
    }
    if (relu) {
#pragma unroll
      for (int k = 0; k < 8; ++k) out[k] = out[k] < 0.0f ? 0.0f : out[k];  // NaN passes through
    }
    store8(y + off, out);
  }
}

// dx = gamma * invstd * (g - dbeta / m - xhat * dgamma / m), xhat = (x - mean) * invstd, with the
// per-channel constants loaded once per thread (see k_bn_apply_vec); gamma * invstd is formed once,
// as the expression rounded it anyway, the rest in the per-element kernel's order (the same bits).
template <class T>
__global__ void __launch_bounds__(kThreads) k_bn_apply_bwd_vec(const T* x, const T* relu_out, const T* dy, int64_t rows,
                                                              int c, const float* gamma, const float* mean,
                                                              const float* invstd, const float* dgamma,
                                                              const float* dbeta, T* dx, T* dres) {
  const int tv = c / 8, lanes = kThreads / tv;
  const int ch0 = (threadIdx.x % tv) * 8, lane = threadIdx.x / tv;
  const float inv_m = 1.0f / static_cast<float>(rows);
  float mu[8], is[8], gis[8], dg[8], db[8];
  {
    float ga[8];
    load8f(gamma + ch0, ga);
    load8f(invstd + ch0, is);
#pragma unroll
    for (int k = 0; k < 8; ++k) gis[k] = ga[k] * is[k];
  }
  load8f(mean + ch0, mu);
  load8f(dgamma + ch0, dg);
  load8f(dbeta + ch0, db);
  for (int64_t r = blockIdx.x * (int64_t)lanes + lane; r < rows; r += (int64_t)gridDim.x * lanes) {
    const int64_t off = r * c + ch0;
    float xv[8], g[8];
    load8(x + off, xv);
    load8(dy + off, g);
    if (relu_out) {
      float y[8];
      load8(relu_out + off, y);
#pragma unroll
      for (int k = 0; k < 8; ++k) g[k] = y[k] > 0.0f ? g[k] : 0.0f;
    }
    if (dres) store8(dres + off, g);
    float out[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float xhat = (xv[k] - mu[k]) * is[k];
      out[k] = gis[k] * (g[k] - db[k] * inv_m - xhat * dg[k] * inv_m);
    }
    store8(dx + off, out);
  }
}

template <class T>
__global__ void k_add_inplace_vec(T* y, const T* x, int64_t count8) {
  GRID_LOOP(i, count8) {
    float a[8], b[8];
    load8(y + i * 8, a);
    load8(x + i * 8, b);
#pragma unroll
    for (int k = 0; k < 8; ++k) a[k] += b[k];
    store8(y + i * 8, a);
  }
}

template <class T>
__global__ void k_avgpool_bwd_vec(const float* dy, int n, int hw, int c, T* dx) {
  const float inv = 1.0f / static_cast<float>(hw);
  GRID_LOOP(i, (int64_t)n * hw * c / 8) {
    const int64_t off = i * 8;
    const int ch0 = static_cast<int>(off % c);
    const int64_t b = off / ((int64_t)hw * c);
    float v[8];
    load8f(dy + b * c + ch0, v);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] *= inv;
    store8(dx + off, v);
  }
}

bool vec_ok(int c) { return c % 8 == 0 && c / 8 <= kThreads && kThreads % (c / 8) == 0; }

// ---- pools ------------------------------------------------------------------------------------
template <class T>
__global__ void k_maxpool_fwd(const T* x, int n, int h, int w, int c, int kernel, int stride, int pad, int oh, int ow,
                              T* y, int32_t* argmax) {
  GRID_LOOP(i, (int64_t)n * oh * ow * c) {
    int ch = static_cast<int>(i % c);
    int64_t t = i / c;
    int ox = static_cast<int>(t % ow);
    t /= ow;
    int oy = static_cast<int>(t % oh);
    int b = static_cast<int>(t / oh);
    int y0 = oy * stride - pad, x0 = ox * stride - pad;
    float best = -INFINITY;
    int best_idx = max(y0, 0) * w + max(x0, 0);
    for (int ky = 0; ky < kernel; ++ky) {
      int iy = y0 + ky;
      if (iy < 0 || iy >= h) continue;
      for (int kx = 0; kx < kernel; ++kx) {
        int ix = x0 + kx;
        if (ix < 0 || ix >= w) continue;
        float v = to_f(x[(((int64_t)b * h + iy) * w + ix) * c + ch]);
        if (v > best || isnan(v)) {
          best = v;
          best_idx = iy * w + ix;
          if (isnan(v)) break;
        }
      }
      if (isnan(best)) break;
    }
    y[i] = from_f<T>(best);
    argmax[i] = best_idx;
  }
}

template <class T>
__global__ void k_maxpool_bwd(const T* dy, const int32_t* argmax, int n, int h, int w, int c, int kernel, int stride,
                              int pad, int oh, int ow, T* dx) {
  GRID_LOOP(i, (int64_t)n * h * w * c) {
    int ch = static_cast<int>(i % c);
    int64_t t = i / c;
    int ix = static_cast<int>(t % w);
    t /= w;
    int iy = static_cast<int>(t % h);
    int b = static_cast<int>(t / h);
    int lo_y = iy + pad - kernel + 1, lo_x = ix + pad - kernel + 1;
    int oy0 = lo_y <= 0 ? 0 : (lo_y + stride - 1) / stride;
    int ox0 = lo_x <= 0 ? 0 : (lo_x + stride - 1) / stride;
    int oy1 = min(oh - 1, (iy + pad) / stride), ox1 = min(ow - 1, (ix + pad) / stride);
    int me = iy * w + ix;
    float acc = 0.0f;
    for (int oy = oy0; oy <= oy1; ++oy)
      for (int ox = ox0; ox <= ox1; ++ox) {
        int64_t o = (((int64_t)b * oh + oy) * ow + ox) * c + ch;
        if (argmax[o] == me) acc += to_f(dy[o]);
      }
    dx[i] = from_f<T>(acc);
  }
}


template <class T>
__global__ void k_maxpool_fwd_vec(const T* x, int n, int h, int w, int c, int kernel, int stride, int pad, int oh, int ow,
                                  T* y, int32_t* argmax) {
  const int cv = c / 8;
  GRID_LOOP(i, (int64_t)n * oh * ow * cv) {
    const int v = static_cast<int>(i % cv);
    int64_t t = i / cv;
    const int ox = static_cast<int>(t % ow);
    t /= ow;
    const int oy = static_cast<int>(t % oh);
    const int b = static_cast<int>(t / oh);
    const int y0 = oy * stride - pad, x0 = ox * stride - pad;
    float best[8];
    int idx[8];
    const int first = max(y0, 0) * w + max(x0, 0);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      best[k] = -INFINITY;
      idx[k] = first;
    }
    for (int ky = 0; ky < kernel; ++ky) {
      const int iy = y0 + ky;
      if (iy < 0 || iy >= h) continue;
      for (int kx = 0; kx < kernel; ++kx) {
        const int ix = x0 + kx;
        if (ix < 0 || ix >= w) continue;
        float xv[8];
        load8(x + (((int64_t)b * h + iy) * w + ix) * c + v * 8, xv);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          // Once NaN, stays NaN at its first position, as the CPU backend (PyTorch lets a later NaN
          // take over: the output is NaN either way, only which NaN input gets the gradient differs).
          if (!isnan(best[k]) && (xv[k] > best[k] || isnan(xv[k]))) {
            best[k] = xv[k];
            idx[k] = iy * w + ix;
          }
        }
      }
    }
    const int64_t o = i * 8;
    store8(y + o, best);
    reinterpret_cast<int4*>(argmax + o)[0] = make_int4(idx[0], idx[1], idx[2], idx[3]);
    reinterpret_cast<int4*>(argmax + o)[1] = make_int4(idx[4], idx[5], idx[6], idx[7]);
  }
}

template <class T>
__global__ void k_maxpool_bwd_vec(const T* dy, const int32_t* argmax, int n, int h, int w, int c, int kernel, int stride,
                                  int pad, int oh, int ow, T* dx) {
  const int cv = c / 8;
  GRID_LOOP(i, (int64_t)n * h * w * cv) {
    const int v = static_cast<int>(i % cv);
    int64_t t = i / cv;
    const int ix = static_cast<int>(t % w);
    t /= w;
    const int iy = static_cast<int>(t % h);
    const int b = static_cast<int>(t / h);
    const int lo_y = iy + pad - kernel + 1, lo_x = ix + pad - kernel + 1;
    const int oy0 = lo_y <= 0 ? 0 : (lo_y + stride - 1) / stride;
    const int ox0 = lo_x <= 0 ? 0 : (lo_x + stride - 1) / stride;
    const int oy1 = min(oh - 1, (iy + pad) / stride), ox1 = min(ow - 1, (ix + pad) / stride);
    const int me = iy * w + ix;
    float acc[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) acc[k] = 0.0f;
    for (int oy = oy0; oy <= oy1; ++oy)
      for (int ox = ox0; ox <= ox1; ++ox) {
        const int64_t o = (((int64_t)b * oh + oy) * ow + ox) * c + v * 8;
        const int4 a0 = reinterpret_cast<const int4*>(argmax + o)[0], a1 = reinterpret_cast<const int4*>(argmax + o)[1];
        const int am[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        float g[8];
        load8(dy + o, g);
#pragma unroll
        for (int k = 0; k < 8; ++k)
          if (am[k] == me) acc[k] += g[k];
      }
    store8(dx + i * 8, acc);
  }
}

template <class T>
__global__ void k_avgpool_fwd(const T* x, int n, int hw, int c, float* y) {
  GRID_LOOP(i, (int64_t)n * c) {
    int64_t b = i / c;
    int ch = static_cast<int>(i - b * c);
    const T* p = x + b * hw * (int64_t)c + ch;
    float s = 0.0f;
    for (int j = 0; j < hw; ++j) s += to_f(p[(int64_t)j * c]);
    y[i] = s / static_cast<float>(hw);
  }
}

template <class T>
__global__ void k_avgpool_bwd(const float* dy, int n, int hw, int c, T* dx) {
  float inv = 1.0f / static_cast<float>(hw);
  GRID_LOOP(i, (int64_t)n * hw * c) {
    int ch = static_cast<int>(i % c);
    int64_t b = i / ((int64_t)hw * c);
    dx[i] = from_f<T>(dy[b * c + ch] * inv);
  }
}

// ---- classifier helpers -----------------------------------------------------------------------
__global__ void k_add_bias_rows(float* y, const float* b, int n, int cols) {
  GRID_LOOP(i, (int64_t)n * cols) y[i] += b[i % cols];
}

__global__ void k_column_sums(const float* x, int n, int cols, float* out) {
  GRID_LOOP(j, cols) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += x[(int64_t)i * cols + j];
    out[j] = s;
  }
}

__device__ float block_reduce(float v, bool is_max) {
  __shared__ float sh[kThreads];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) sh[threadIdx.x] = is_max ? fmaxf(sh[threadIdx.x], sh[threadIdx.x + o]) : sh[threadIdx.x] + sh[threadIdx.x + o];
    __syncthreads();
  }
  float r = sh[0];
  __syncthreads();
  return r;
}

__global__ void k_softmax_ce_fwd(const float* logits, const int32_t* labels, int classes, float smoothing,
                                 float* probs, float* row_loss, int32_t* label_rank) {
  int row = blockIdx.x;
  const float* l = logits + (int64_t)row * classes;
  float* p = probs + (int64_t)row * classes;
  int label = labels[row];
  float ly = l[label];
  // The label's rank as cpu::label_rank counts it: classes greater, or equal at a lower index (a sort
  // stable by class index); a NaN or +inf anywhere makes the row unranked (INT32_MAX). Counts are
  // exact small integers in float, so the sums do not depend on the reduction order.
  float mx = -INFINITY, sum_l = 0.0f, above = 0.0f, undefined = 0.0f;
  for (int j = threadIdx.x; j < classes; j += blockDim.x) {
    const float lj = l[j];
    mx = fmaxf(mx, lj);
    sum_l += lj;
    above += (lj > ly || (lj == ly && j < label)) ? 1.0f : 0.0f;
    undefined += (isnan(lj) || lj == INFINITY) ? 1.0f : 0.0f;
  }
  mx = block_reduce(mx, true);
  sum_l = block_reduce(sum_l, false);
  above = block_reduce(above, false);
  undefined = block_reduce(undefined, false);
  float se = 0.0f;
  for (int j = threadIdx.x; j < classes; j += blockDim.x) se += expf(l[j] - mx);
  se = block_reduce(se, false);
  float lse = mx + logf(se);
  for (int j = threadIdx.x; j < classes; j += blockDim.x) p[j] = expf(l[j] - lse);
  if (threadIdx.x == 0) {
    row_loss[row] = (1.0f - smoothing) * (lse - ly) + smoothing * (lse - sum_l / static_cast<float>(classes));
    label_rank[row] = undefined > 0.0f ? INT32_MAX : static_cast<int32_t>(above);
  }
}

__global__ void k_softmax_ce_bwd(const float* probs, const int32_t* labels, int n, int classes, float smoothing,
                                 float scale, float* dlogits) {
  float off = smoothing / static_cast<float>(classes);
  float k = scale / static_cast<float>(n);
  GRID_LOOP(i, (int64_t)n * classes) {
    int64_t row = i / classes;
    int j = static_cast<int>(i - row * classes);
    float t = off + (j == labels[row] ? 1.0f - smoothing : 0.0f);
    dlogits[i] = k * (probs[i] - t);
  }
}

// ---- optimizer and checks -----------------------------------------------------------------------
template <class T>
__global__ void k_sgd(float* p, const float* grad, float* mom, const uint8_t* no_decay, int64_t count, SgdArgs a,
                      T* lowp) {
  GRID_LOOP(i, count) {
    float w = p[i];
    float g = grad[i] * a.grad_scale;
    if (a.weight_decay != 0.0f && !(no_decay && no_decay[i])) g += a.weight_decay * w;
    if (a.momentum != 0.0f) {
      float buf = a.first_step ? g : a.momentum * mom[i] + (1.0f - a.dampening) * g;
      mom[i] = buf;
      g = a.nesterov ? g + a.momentum * buf : buf;
    }
    w -= a.lr * g;
    p[i] = w;
    if (lowp) lowp[i] = from_f<T>(w);
  }
}

__global__ void k_nonfinite(const float* x, int64_t count, int32_t* flag) {
  bool bad = false;
  GRID_LOOP(i, count) bad |= !isfinite(x[i]);
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1);
}

__global__ void k_checksum(const float* x, int64_t count, double* partials) {
  double s = 0.0;
  GRID_LOOP(i, count) s += static_cast<double>(x[i]) * (1.0 + static_cast<double>(i & 15) / 16.0);
  __shared__ double sh[kThreads];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = sh[0];
}

// The model's case (stem input padded to 8 channels): one thread per pixel, 3 bytes in, one 16-byte
// (32 for fp32) store out, no division. The element-wise k_normalize_u8 took 0.6 ms of a 14 ms bf16
// step at batch 256 x 224 px on an H200 (2026-11-29, ncu), ~0.35 TB/s of its 4.3.
template <class T>
__global__ void k_normalize_u8_pad8(const uint8_t* x, int64_t pixels, T* y) {
  GRID_LOOP(px, pixels) {
    const uint8_t* p = x + px * 3;
    float v[8] = {(static_cast<float>(p[0]) * (1.0f / 255.0f) - 0.485f) * (1.0f / 0.229f),
                  (static_cast<float>(p[1]) * (1.0f / 255.0f) - 0.456f) * (1.0f / 0.224f),
                  (static_cast<float>(p[2]) * (1.0f / 255.0f) - 0.406f) * (1.0f / 0.225f),
                  0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    store8(y + px * 8, v);
  }
}

}  // namespace

// ---- host wrappers ------------------------------------------------------------------------------
void normalize_u8_nhwc(const uint8_t* x, int64_t pixels, int cpad, DType dt, void* y, cudaStream_t s) {
  DDP_CHECK(cpad >= 3, "normalize_u8_nhwc: padded channel count ", cpad, " < 3");
  if (cpad == 8 && reinterpret_cast<uintptr_t>(y) % 16 == 0) {
    DDP_DISPATCH(dt, T, k_normalize_u8_pad8<T><<<grid_for(pixels), kThreads, 0, s>>>(x, pixels, static_cast<T*>(y)));
  } else {
    DDP_DISPATCH(dt, T, k_normalize_u8<T><<<grid_for(pixels * cpad), kThreads, 0, s>>>(x, pixels, cpad, static_cast<T*>(y)));
  }
  CUDA_CHECK_LAUNCH();
}

void pad_channels(DType dt, const void* x, int64_t rows, int c, int cpad, void* y, cudaStream_t s) {
  DDP_DISPATCH(dt, T, k_pad<T, T><<<grid_for(rows * cpad), kThreads, 0, s>>>(static_cast<const T*>(x), rows, c, cpad, static_cast<T*>(y)));
  CUDA_CHECK_LAUNCH();
}

void f32_to_padded(const float* x, int64_t rows, int c, int cpad, DType dt, void* y, cudaStream_t s) {
  DDP_DISPATCH(dt, T, k_pad<float, T><<<grid_for(rows * cpad), kThreads, 0, s>>>(x, rows, c, cpad, static_cast<T*>(y)));
  CUDA_CHECK_LAUNCH();
}

void padded_to_f32(DType dt, const void* x, int64_t rows, int cpad, int c, float* y, cudaStream_t s) {
  DDP_DISPATCH(dt, T, k_unpad<T, float><<<grid_for(rows * c), kThreads, 0, s>>>(static_cast<const T*>(x), rows, cpad, c, y));
  CUDA_CHECK_LAUNCH();
}

void convert_from_f32(const float* x, int64_t count, DType dt, void* y, cudaStream_t s) {
  f32_to_padded(x, count, 1, 1, dt, y, s);
}
void convert_to_f32(DType dt, const void* x, int64_t count, float* y, cudaStream_t s) {
  padded_to_f32(dt, x, count, 1, 1, y, s);
}

void add_inplace(DType dt, void* y, const void* x, int64_t count, cudaStream_t s) {
  if (count % 8 == 0) {
    DDP_DISPATCH(dt, T, k_add_inplace_vec<T><<<grid_for(count / 8), kThreads, 0, s>>>(static_cast<T*>(y), static_cast<const T*>(x), count / 8));
  } else {
    DDP_DISPATCH(dt, T, k_add_inplace<T><<<grid_for(count), kThreads, 0, s>>>(static_cast<T*>(y), static_cast<const T*>(x), count));
  }
  CUDA_CHECK_LAUNCH();
}

int64_t bn_scratch_floats(int64_t rows, int c) { return static_cast<int64_t>(bn_row_groups(rows)) * 2 * c; }

void bn_batch_stats(DType dt, const void* x, int64_t rows, int c, float eps, float momentum, bool update_running,
                    float* running_mean, float* running_var, float* save_mean, float* save_invstd, float* scratch,
                    cudaStream_t s) {
  DDP_CHECK(rows > 0 && c > 0, "bn_batch_stats: empty input (rows ", rows, ", channels ", c, ")");
  // As the CPU backend and PyTorch: one value per channel has no variance to normalise by (the output
  // would be beta, and the running variance would drift to 0 and blow up evaluation).
  DDP_CHECK(rows > 1, "bn_batch_stats: batch norm in training needs more than one value per channel (rows ", rows,
            ", channels ", c, "): a larger batch or input size");
  int groups = bn_row_groups(rows);
  dim3 grid((c + 31) / 32, groups), block(32, kBnLanes);
  DDP_DISPATCH(dt, T, {
    if (vec_ok(c)) {
      k_bn_partial_vec<T, false><<<groups, kThreads, 0, s>>>(static_cast<const T*>(x), nullptr, nullptr, rows, c, nullptr,
                                                             nullptr, scratch);
    } else {
      k_bn_partial_stats<T><<<grid, block, 0, s>>>(static_cast<const T*>(x), rows, c, scratch);
    }
    CUDA_CHECK_LAUNCH();
    k_bn_finish_stats<T><<<c, kThreads, 0, s>>>(static_cast<const T*>(x), scratch, groups, rows, c, eps, momentum,
                                                update_running, running_mean, running_var, save_mean, save_invstd);
    CUDA_CHECK_LAUNCH();
  });
}

void bn_eval_stats(const float* running_mean, const float* running_var, int c, float eps, float* mean, float* invstd,
                   cudaStream_t s) {
  k_bn_eval_stats<<<grid_for(c), kThreads, 0, s>>>(running_mean, running_var, c, eps, mean, invstd);
  CUDA_CHECK_LAUNCH();
}

void bn_apply(DType dt, const void* x, int64_t rows, int c, const float* gamma, const float* beta, const float* mean,
              const float* invstd, const void* residual, bool relu, void* y, cudaStream_t s) {
  if (vec_ok(c)) {
    DDP_DISPATCH(dt, T, k_bn_apply_vec<T><<<bn_apply_blocks(rows, c), kThreads, 0, s>>>(
        static_cast<const T*>(x), rows, c, gamma, beta, mean, invstd, static_cast<const T*>(residual), relu, static_cast<T*>(y)));
  } else {
    DDP_DISPATCH(dt, T, k_bn_apply<T><<<grid_for(rows * c), kThreads, 0, s>>>(
        static_cast<const T*>(x), rows, c, gamma, beta, mean, invstd, static_cast<const T*>(residual), relu, static_cast<T*>(y)));
  }
  CUDA_CHECK_LAUNCH();
}

void bn_backward(DType dt, const void* x, const void* relu_out, const void* dy, int64_t rows, int c,
                 const float* gamma, const float* mean, const float* invstd, float* dgamma, float* dbeta, void* dx,
                 void* dresidual, float* scratch, cudaStream_t s) {
  int groups = bn_row_groups(rows);
  dim3 grid((c + 31) / 32, groups), block(32, kBnLanes);
  DDP_DISPATCH(dt, T, {
    const T* xt = static_cast<const T*>(x);
    const T* rt = static_cast<const T*>(relu_out);
    const T* dyt = static_cast<const T*>(dy);
    if (vec_ok(c)) {
      k_bn_partial_vec<T, true><<<groups, kThreads, 0, s>>>(xt, rt, dyt, rows, c, mean, invstd, scratch);
    } else {
      k_bn_partial_bwd<T><<<grid, block, 0, s>>>(xt, rt, dyt, rows, c, mean, invstd, scratch);
    }
    CUDA_CHECK_LAUNCH();
    k_bn_finish_bwd<<<c, kThreads, 0, s>>>(scratch, groups, c, dgamma, dbeta);
    CUDA_CHECK_LAUNCH();
    if (vec_ok(c)) {
      k_bn_apply_bwd_vec<T><<<bn_apply_blocks(rows, c), kThreads, 0, s>>>(xt, rt, dyt, rows, c, gamma, mean, invstd, dgamma,
                                                                      dbeta, static_cast<T*>(dx), static_cast<T*>(dresidual));
    } else {
      k_bn_apply_bwd<T><<<grid_for(rows * c), kThreads, 0, s>>>(xt, rt, dyt, rows, c, gamma, mean, invstd, dgamma, dbeta,
                                                              static_cast<T*>(dx), static_cast<T*>(dresidual));
    }
    CUDA_CHECK_LAUNCH();
  });
}

void maxpool_forward(DType dt, const void* x, int n, int h, int w, int c, int kernel, int stride, int pad, void* y,
                     int32_t* argmax, cudaStream_t s) {
  int oh = (h + 2 * pad - kernel) / stride + 1, ow = (w + 2 * pad - kernel) / stride + 1;
  if (c % 8 == 0) {
    DDP_DISPATCH(dt, T, k_maxpool_fwd_vec<T><<<grid_for((int64_t)n * oh * ow * c / 8), kThreads, 0, s>>>(
        static_cast<const T*>(x), n, h, w, c, kernel, stride, pad, oh, ow, static_cast<T*>(y), argmax));
  } else {
    DDP_DISPATCH(dt, T, k_maxpool_fwd<T><<<grid_for((int64_t)n * oh * ow * c), kThreads, 0, s>>>(
        static_cast<const T*>(x), n, h, w, c, kernel, stride, pad, oh, ow, static_cast<T*>(y), argmax));
  }
  CUDA_CHECK_LAUNCH();
}

void maxpool_backward(DType dt, const void* dy, const int32_t* argmax, int n, int h, int w, int c, int kernel,
                      int stride, int pad, void* dx, cudaStream_t s) {
  int oh = (h + 2 * pad - kernel) / stride + 1, ow = (w + 2 * pad - kernel) / stride + 1;
  if (c % 8 == 0) {
    DDP_DISPATCH(dt, T, k_maxpool_bwd_vec<T><<<grid_for((int64_t)n * h * w * c / 8), kThreads, 0, s>>>(
        static_cast<const T*>(dy), argmax, n, h, w, c, kernel, stride, pad, oh, ow, static_cast<T*>(dx)));
  } else {
    DDP_DISPATCH(dt, T, k_maxpool_bwd<T><<<grid_for((int64_t)n * h * w * c), kThreads, 0, s>>>(
        static_cast<const T*>(dy), argmax, n, h, w, c, kernel, stride, pad, oh, ow, static_cast<T*>(dx)));
  }
  CUDA_CHECK_LAUNCH();
}

void avgpool_forward(DType dt, const void* x, int n, int hw, int c, float* y, cudaStream_t s) {
  DDP_DISPATCH(dt, T, k_avgpool_fwd<T><<<grid_for((int64_t)n * c), kThreads, 0, s>>>(static_cast<const T*>(x), n, hw, c, y));
  CUDA_CHECK_LAUNCH();
}

void avgpool_backward(DType dt, const float* dy, int n, int hw, int c, void* dx, cudaStream_t s) {
  if (c % 8 == 0) {
    DDP_DISPATCH(dt, T, k_avgpool_bwd_vec<T><<<grid_for((int64_t)n * hw * c / 8), kThreads, 0, s>>>(dy, n, hw, c, static_cast<T*>(dx)));
  } else {
    DDP_DISPATCH(dt, T, k_avgpool_bwd<T><<<grid_for((int64_t)n * hw * c), kThreads, 0, s>>>(dy, n, hw, c, static_cast<T*>(dx)));
  }
  CUDA_CHECK_LAUNCH();
}

void add_bias_rows(float* y, const float* b, int n, int cols, cudaStream_t s) {
  k_add_bias_rows<<<grid_for((int64_t)n * cols), kThreads, 0, s>>>(y, b, n, cols);
  CUDA_CHECK_LAUNCH();
}

void column_sums(const float* x, int n, int cols, float* out, cudaStream_t s) {
  k_column_sums<<<grid_for(cols), kThreads, 0, s>>>(x, n, cols, out);
  CUDA_CHECK_LAUNCH();
}

void softmax_ce_forward(const float* logits, const int32_t* labels, int n, int classes, float smoothing, float* probs,
                        float* row_loss, int32_t* label_rank, cudaStream_t s) {
  k_softmax_ce_fwd<<<n, kThreads, 0, s>>>(logits, labels, classes, smoothing, probs, row_loss, label_rank);
  CUDA_CHECK_LAUNCH();
}

void softmax_ce_backward(const float* probs, const int32_t* labels, int n, int classes, float smoothing, float scale,
                         float* dlogits, cudaStream_t s) {
  k_softmax_ce_bwd<<<grid_for((int64_t)n * classes), kThreads, 0, s>>>(probs, labels, n, classes, smoothing, scale, dlogits);
  CUDA_CHECK_LAUNCH();
}

void sgd_update(float* p, const float* grad, float* mom, const uint8_t* no_decay, int64_t count, const SgdArgs& a,
                DType lowp_dt, void* lowp, cudaStream_t s) {
  // The CPU backend's checks (ddp::cpu::sgd_update), so that neither backend runs what the other refuses.
  DDP_CHECK(a.momentum == 0.0f || mom != nullptr, "sgd_update: momentum ", a.momentum, " needs a momentum buffer");
  DDP_CHECK(!a.nesterov || (a.momentum > 0.0f && a.dampening == 0.0f),
            "SGD: Nesterov momentum requires a momentum > 0 and zero dampening (as in PyTorch)");
  DDP_DISPATCH(lowp_dt, T, k_sgd<T><<<grid_for(count), kThreads, 0, s>>>(p, grad, mom, no_decay, count, a, static_cast<T*>(lowp)));
  CUDA_CHECK_LAUNCH();
}

void check_nonfinite(const float* x, int64_t count, int32_t* flag, cudaStream_t s) {
  k_nonfinite<<<grid_for(count), kThreads, 0, s>>>(x, count, flag);
  CUDA_CHECK_LAUNCH();
}

void checksum_partials(const float* x, int64_t count, double* partials, cudaStream_t s) {
  k_checksum<<<kChecksumBlocks, kThreads, 0, s>>>(x, count, partials);
  CUDA_CHECK_LAUNCH();
}

}  // namespace ddp::cuda
