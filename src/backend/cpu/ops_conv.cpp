// Convolution as GEMM over column tiles. A tile is either a pixel range of one image (large images) or
// a group of whole images (small images, so a GEMM is never a thin matrix-vector product). Each OpenMP
// thread builds its own tile's im2col matrix in thread-local scratch (it stays in the core's cache),
// runs single-threaded BLAS on it and writes its share of the output: one parallel region per call,
// no barriers between im2col and GEMM. Weight gradients accumulate per thread, then reduce in a fixed
// order, so results do not depend on scheduling.
//
// im2col itself: on AVX-512 CPUs every ResNet18 convolution (stride 1 with 'same' padding, stride 2 on
// even sizes) uses the "flat" layout below, where each im2col row is one masked, shifted copy; other
// shapes use row-wise copies (AVX-512 for strides 1-2 on whole images, portable loops otherwise).
// docs/perf/cpuops.md has the measurements behind these choices.
//
// Tiny maps (ResNet18's last stages at 32 px input) take two other routes, chosen per call from the
// shape: kernel taps that see only padding for every output are left out of the GEMMs ("live taps";
// layer4's 1x1 and 2x2 inputs), and where the input plane has fewer pixels than there are live taps
// (layer3's 2x2 maps) forward and data gradient run as one dense per-image linear map. At 224 px neither
// applies and the paths above run unchanged. docs/perf/cpumodel.md has the figures.
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ddp/backend/cpu/ops.h"
#include "ddp/backend/cpu/ops_conv.h"
#include "ddp/core/check.h"

namespace ddp::cpu {

namespace {

// Per-thread scratch that grows and is kept: fresh large allocations would page-fault on every call.
struct Scratch {
  std::unique_ptr<float[]> p;
  size_t cap = 0;
  float* get(size_t n) {
    if (n > cap) {
      p.reset(new float[n]);
      cap = n;
    }
    return p.get();
  }
};
thread_local Scratch t_col, t_mat, t_acc;

// Target im2col tile: about this many bytes (fits a core's L2), and column counts within bounds.
constexpr int64_t kTileBytes = 1 << 21;
constexpr int kMinCols = 128, kMaxCols = 2048;

void check_shape(const char* op, const Conv2dShape& p) {
  DDP_CHECK(p.n > 0 && p.c > 0 && p.h > 0 && p.w > 0 && p.k > 0 && p.r > 0 && p.s > 0 && p.stride > 0 &&
                p.pad >= 0,
            op, ": bad shape n=", p.n, " c=", p.c, " h=", p.h, " w=", p.w, " k=", p.k, " r=", p.r, " s=", p.s,
            " stride=", p.stride, " pad=", p.pad);
  DDP_CHECK(p.out_h() > 0 && p.out_w() > 0, op, ": input ", p.h, "x", p.w, " is too small for a ", p.r, "x",
            p.s, " kernel with pad ", p.pad);
}

struct Tiling {
  int ohw = 0;
  int group = 1;   // images per tile (> 1 only when pieces == 1)
  int pieces = 1;  // pixel ranges per image
  int tiles = 0;
  // Tile t covers images [n0, n1) and, when group == 1, pixels [p0, p1) of image n0.
  void tile(int t, int& n0, int& n1, int& p0, int& p1) const {
    if (pieces > 1) {
      n0 = t / pieces;
      n1 = n0 + 1;
      const int piece = t % pieces;
      p0 = static_cast<int>(static_cast<int64_t>(ohw) * piece / pieces);
      p1 = static_cast<int>(static_cast<int64_t>(ohw) * (piece + 1) / pieces);
    } else {
      n0 = t * group;
      n1 = n0 + group;
      p0 = 0;
      p1 = ohw;
    }
  }
};

// whole_images: tiles never split an image (col2im needs every column of an image in one tile).
// rows: rows of the column matrix (c * r * s, or c * live taps).
Tiling make_tiling(const Conv2dShape& p, int nt, bool whole_images, int64_t rows) {
  Tiling t;
  t.ohw = p.out_h() * p.out_w();
  const int target =
      static_cast<int>(std::clamp<int64_t>(kTileBytes / (rows * 4), kMinCols, kMaxCols));
  if (t.ohw >= target) {
    t.pieces = whole_images ? 1 : (t.ohw + target - 1) / target;
    t.group = 1;
  } else {
    // Enough images per tile for a wide GEMM, but at least one tile per thread.
    const int per_thread = (p.n + nt - 1) / nt;
    t.group = std::max(1, std::min(target / t.ohw, per_thread));
  }
  t.tiles = t.pieces > 1 ? p.n * t.pieces : (p.n + t.group - 1) / t.group;  // the last group may be short
  return t;
}

inline int ceil_div_nonneg(int a, int b) { return a <= 0 ? 0 : (a + b - 1) / b; }

// The kernel taps r * s_count + s (ascending) that read the image for at least one output position.
// On tiny images most taps see only zero padding (ResNet18's layer4 at 32 px input: 3x3 pad 1 on a 1x1
// map uses 1 of 9 taps, the stride-2 conv from 2x2 uses 4): the convolution then runs over the live
// taps only. On larger images every tap is live and the usual path runs unchanged.
std::vector<int> live_taps(const Conv2dShape& p) {
  auto live_1d = [&](int in, int out, int k) {
    std::vector<int> v;
    for (int r = 0; r < k; ++r)
      for (int o = 0; o < out; ++o)
        if (const int i = o * p.stride - p.pad + r; i >= 0 && i < in) {
          v.push_back(r);
          break;
        }
    return v;
  };
  const std::vector<int> rows = live_1d(p.h, p.out_h(), p.r), cols = live_1d(p.w, p.out_w(), p.s);
  std::vector<int> taps;
  for (int r : rows)
    for (int s : cols) taps.push_back(r * p.s + s);
  return taps;
}

// The gathered-weight entry points (ops_conv.h) take exactly the live taps: a superset would send large
// images down the small-image path, a subset would drop terms.
void check_taps(const char* op, const Conv2dShape& p, const std::vector<int>& taps) {
  check_shape(op, p);
  DDP_CHECK(taps == live_taps(p), op, ": the tap list (", taps.size(), " taps) is not conv2d_live_taps of the ", p.h,
            "x", p.w, " input with a ", p.r, "x", p.s, " kernel, stride ", p.stride, ", pad ", p.pad);
}

std::vector<int> all_taps(const Conv2dShape& p) {
  std::vector<int> taps(static_cast<size_t>(p.r) * p.s);
  for (size_t i = 0; i < taps.size(); ++i) taps[i] = static_cast<int>(i);
  return taps;
}

// Visits the rows (c, r, s) for channels [c0, c1) and output pixels [p0, p1) of one image; for each
// output row segment calls f(c, row, base, ih, ow0, ow1, owlo, owhi, s): the segment covers output
// columns [ow0, ow1) of input row ih (which may be outside the image), written at dst column base + ow,
// and [owlo, owhi) are the columns whose input column is inside the image.
template <class F>
inline void for_each_segment(const Conv2dShape& p, int c0, int c1, int p0, int p1, F&& f) {
  const int ow_n = p.out_w();
  for (int c = c0; c < c1; ++c)
    for (int r = 0; r < p.r; ++r)
      for (int s = 0; s < p.s; ++s) {
        const int row = ((c - c0) * p.r + r) * p.s + s;
        // input column iw = ow * stride - pad + s lies in [0, w) for ow in [lo, hi)
        const int lo = ceil_div_nonneg(p.pad - s, p.stride);
        const int hi_num = p.w - 1 + p.pad - s;
        const int hi = hi_num < 0 ? 0 : hi_num / p.stride + 1;
        int pix = p0;
        while (pix < p1) {
          const int oh = pix / ow_n, ow0 = pix % ow_n;
          const int ow1 = std::min(ow_n, ow0 + (p1 - pix));
          const int ih = oh * p.stride - p.pad + r;
          const int owlo = std::clamp(lo, ow0, ow1), owhi = std::clamp(hi, owlo, ow1);
          f(c, row, pix - p0 - ow0, ih, ow0, ow1, owlo, owhi, s);
          pix += ow1 - ow0;
        }
      }
}

// dst[row * ld + j] = x(c, ih, iw) or 0 for image x_n.
void im2col(const Conv2dShape& p, const float* x_n, int c0, int c1, int p0, int p1, float* dst, int64_t ld) {
  const int64_t hw = static_cast<int64_t>(p.h) * p.w;
  const int stride = p.stride, pad = p.pad, w = p.w, h = p.h;
  for_each_segment(p, c0, c1, p0, p1,
                   [&](int c, int row, int base, int ih, int ow0, int ow1, int owlo, int owhi, int s) {
                     float* d = dst + row * ld + base;  // d[ow]
                     if (ih < 0 || ih >= h) {
                       std::memset(d + ow0, 0, sizeof(float) * (ow1 - ow0));
                       return;
                     }
                     for (int ow = ow0; ow < owlo; ++ow) d[ow] = 0.f;
                     const float* xr = x_n + c * hw + static_cast<int64_t>(ih) * w - pad + s;  // xr[ow*stride]
                     if (stride == 1) {
                       if (owhi > owlo) std::memcpy(d + owlo, xr + owlo, sizeof(float) * (owhi - owlo));
                     } else {
                       for (int ow = owlo; ow < owhi; ++ow) d[ow] = xr[ow * stride];
                     }
                     for (int ow = owhi; ow < ow1; ++ow) d[ow] = 0.f;
                   });
}

// Whole images [0, g) of x (image stride chw) into dst (row stride ld, image i at column i * ohw; row
// c * taps + t for tap taps[t]): the small-image path, where rows are short and per-segment bookkeeping
// would cost more than the copy.
void im2col_images(const Conv2dShape& p, const std::vector<int>& taps, const float* x, int g, int64_t chw,
                   float* dst, int64_t ld) {
  const int oh_n = p.out_h(), ow_n = p.out_w(), ohw = oh_n * ow_n;
  const int64_t hw = static_cast<int64_t>(p.h) * p.w;
  const int stride = p.stride, pad = p.pad, w = p.w, h = p.h, ntaps = static_cast<int>(taps.size());
  for (int c = 0; c < p.c; ++c)
    for (int t = 0; t < ntaps; ++t) {
      const int r = taps[t] / p.s, s = taps[t] % p.s;
      const int lo = std::min(ow_n, ceil_div_nonneg(pad - s, stride));
      const int hi_num = w - 1 + pad - s;
      const int hi = std::max(lo, std::min(ow_n, hi_num < 0 ? 0 : hi_num / stride + 1));
      float* drow = dst + static_cast<int64_t>(c * ntaps + t) * ld;
      for (int i = 0; i < g; ++i) {
        const float* xc = x + i * chw + c * hw - pad + s;
        float* d = drow + i * ohw;
        for (int oh = 0; oh < oh_n; ++oh, d += ow_n) {
          const int ih = oh * stride - pad + r;
          if (ih < 0 || ih >= h) {
            for (int ow = 0; ow < ow_n; ++ow) d[ow] = 0.f;
            continue;
          }
          const float* xr = xc + static_cast<int64_t>(ih) * w;
          for (int ow = 0; ow < lo; ++ow) d[ow] = 0.f;
          if (stride == 1) {
            for (int ow = lo; ow < hi; ++ow) d[ow] = xr[ow];
          } else {
            for (int ow = lo; ow < hi; ++ow) d[ow] = xr[ow * stride];
          }
          for (int ow = hi; ow < ow_n; ++ow) d[ow] = 0.f;
        }
      }
    }
}

// dx(c, ih, iw) += src for whole images [0, g) and channels [c0, c1); src rows (c - c0) * taps + t for
// tap taps[t].
void col2im_images(const Conv2dShape& p, const std::vector<int>& taps, const float* src, int64_t ld, int g,
                   int c0, int c1, int64_t chw, float* dx) {
  const int oh_n = p.out_h(), ow_n = p.out_w(), ohw = oh_n * ow_n;
  const int64_t hw = static_cast<int64_t>(p.h) * p.w;
  const int stride = p.stride, pad = p.pad, w = p.w, h = p.h, ntaps = static_cast<int>(taps.size());
  for (int c = c0; c < c1; ++c)
    for (int t = 0; t < ntaps; ++t) {
      const int r = taps[t] / p.s, s = taps[t] % p.s;
      const int lo = std::min(ow_n, ceil_div_nonneg(pad - s, stride));
      const int hi_num = w - 1 + pad - s;
      const int hi = std::max(lo, std::min(ow_n, hi_num < 0 ? 0 : hi_num / stride + 1));
      const float* srow = src + static_cast<int64_t>((c - c0) * ntaps + t) * ld;
      for (int i = 0; i < g; ++i) {
        float* xc = dx + i * chw + c * hw - pad + s;
        const float* sp = srow + i * ohw;
        for (int oh = 0; oh < oh_n; ++oh, sp += ow_n) {
          const int ih = oh * stride - pad + r;
          if (ih < 0 || ih >= h) continue;
          float* xr = xc + static_cast<int64_t>(ih) * w;
          if (stride == 1) {
            for (int ow = lo; ow < hi; ++ow) xr[ow] += sp[ow];
          } else {
            for (int ow = lo; ow < hi; ++ow) xr[ow * stride] += sp[ow];
          }
        }
      }
    }
}

// AVX-512 versions of the two whole-image kernels: rows of small images are a few floats long, so one
// masked load/store per 16 outputs (masked-off lanes are never read) replaces the scalar loops. Stride
// 2 deinterleaves with a permute. Chosen at run time; other CPUs use the portable loops above.
#define DDP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,bmi2")))

DDP_AVX512 inline __mmask16 lanes(int a, int b) {  // bits [a, b) of 16, clipped
  a = std::clamp(a, 0, 16);
  b = std::clamp(b, 0, 16);
  if (b <= a) return 0;
  return static_cast<__mmask16>(((1u << b) - 1u) & ~((1u << a) - 1u));
}

DDP_AVX512 void im2col_images_avx512(const Conv2dShape& p, const float* x, int g, int64_t chw, float* dst,
                                     int64_t ld) {
  const int oh_n = p.out_h(), ow_n = p.out_w(), ohw = oh_n * ow_n;
  const int64_t hw = static_cast<int64_t>(p.h) * p.w;
  const int stride = p.stride, pad = p.pad, w = p.w, h = p.h;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512 zero = _mm512_setzero_ps();
  for (int c = 0; c < p.c; ++c)
    for (int r = 0; r < p.r; ++r)
      for (int s = 0; s < p.s; ++s) {
        // xr[t] = x(c, ih, t - pad + s) is inside the row for t in [tlo, thi).
        const int tlo = pad - s, thi = w + pad - s;
        float* drow = dst + static_cast<int64_t>((c * p.r + r) * p.s + s) * ld;
        for (int i = 0; i < g; ++i) {
          const float* xc = x + i * chw + c * hw - pad + s;
          float* d = drow + i * ohw;
          for (int oh = 0; oh < oh_n; ++oh, d += ow_n) {
            const int ih = oh * stride - pad + r;
            const bool row_ok = ih >= 0 && ih < h;
            const float* xr = xc + static_cast<int64_t>(ih) * w;
            for (int ow0 = 0; ow0 < ow_n; ow0 += 16) {
              const __mmask16 st = lanes(0, ow_n - ow0);
              __m512 v = zero;
              if (row_ok) {
                if (stride == 1) {
                  v = _mm512_maskz_loadu_ps(lanes(tlo - ow0, thi - ow0), xr + ow0);
                } else {
                  const int t0 = 2 * ow0;
                  const __m512 a = _mm512_maskz_loadu_ps(lanes(tlo - t0, thi - t0), xr + t0);
                  const __m512 b = _mm512_maskz_loadu_ps(lanes(tlo - t0 - 16, thi - t0 - 16), xr + t0 + 16);
                  v = _mm512_permutex2var_ps(a, even, b);
                }
              }
              _mm512_mask_storeu_ps(d + ow0, st, v);
            }
          }
        }
      }
}

DDP_AVX512 void col2im_images_avx512(const Conv2dShape& p, const float* src, int64_t ld, int g, int c0, int c1,
                                     int64_t chw, float* dx) {
  const int oh_n = p.out_h(), ow_n = p.out_w(), ohw = oh_n * ow_n;
  const int64_t hw = static_cast<int64_t>(p.h) * p.w;
  const int stride = p.stride, pad = p.pad, w = p.w, h = p.h;
  const __m512i dup_lo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i dup_hi = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  for (int c = c0; c < c1; ++c)
    for (int r = 0; r < p.r; ++r)
      for (int s = 0; s < p.s; ++s) {
        const int lo = std::min(ow_n, ceil_div_nonneg(pad - s, stride));
        const int hi_num = w - 1 + pad - s;
        const int hi = std::max(lo, std::min(ow_n, hi_num < 0 ? 0 : hi_num / stride + 1));
        const float* srow = src + static_cast<int64_t>(((c - c0) * p.r + r) * p.s + s) * ld;
        for (int i = 0; i < g; ++i) {
          float* xc = dx + i * chw + c * hw - pad + s;
          const float* sp = srow + i * ohw;
          for (int oh = 0; oh < oh_n; ++oh, sp += ow_n) {
            const int ih = oh * stride - pad + r;
            if (ih < 0 || ih >= h) continue;
            float* xr = xc + static_cast<int64_t>(ih) * w;
            for (int ow0 = 0; ow0 < ow_n; ow0 += 16) {
              const __mmask16 m = lanes(lo - ow0, hi - ow0);
              if (m == 0) continue;
              const __m512 v = _mm512_maskz_loadu_ps(m, sp + ow0);
              if (stride == 1) {
                const __m512 a = _mm512_maskz_loadu_ps(m, xr + ow0);
                _mm512_mask_storeu_ps(xr + ow0, m, _mm512_add_ps(a, v));
              } else {
                const __mmask16 ma = static_cast<__mmask16>(_pdep_u32(m & 0xffu, 0x5555u));
                const __mmask16 mb = static_cast<__mmask16>(_pdep_u32(m >> 8, 0x5555u));
                float* x0 = xr + 2 * ow0;
                if (ma) {
                  const __m512 a = _mm512_maskz_loadu_ps(ma, x0);
                  _mm512_mask_storeu_ps(x0, ma, _mm512_add_ps(a, _mm512_maskz_permutexvar_ps(0xffff, dup_lo, v)));
                }
                if (mb) {
                  const __m512 b = _mm512_maskz_loadu_ps(mb, x0 + 16);
                  _mm512_mask_storeu_ps(x0 + 16, mb, _mm512_add_ps(b, _mm512_maskz_permutexvar_ps(0xffff, dup_hi, v)));
                }
              }
            }
          }
        }
      }
}

// DDP_CPU_NO_AVX512=1 forces the portable loops (the tests run both ways).
bool cpu_init() {
  __builtin_cpu_init();  // needed before __builtin_cpu_supports during static initialisation
  const char* off = std::getenv("DDP_CPU_NO_AVX512");
  return off == nullptr || *off == '\0' || std::string(off) == "0";
}
const bool g_avx512 = cpu_init() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("bmi2");

// The "flat" layout: channel c of all g images side by side, split for stride 2 into the four phase
// planes (even/odd rows x even/odd columns), each exactly out_h x out_w. Then every im2col row is one
// channel-phase run shifted by a constant, with the lanes whose tap falls outside its image masked to
// zero: one masked load and store per 16 values whatever the image size (down to 1x1). Covers stride 1
// with 'same' padding (3x3 p1, 1x1 p0) and stride 2 on even sizes (7x7 p3, 3x3 p1, 1x1 p0).
bool is_flat(const Conv2dShape& p) {
  if (p.stride == 1) return 2 * p.pad == p.r - 1 && 2 * p.pad == p.s - 1;
  return p.stride == 2 && p.h % 2 == 0 && p.w % 2 == 0 && p.out_h() * 2 == p.h && p.out_w() * 2 == p.w;
}

// Tap (r, s) reads phase plane `phase` at offset (dh, dw) from the output position.
struct Tap {
  int phase, dh, dw;
};
inline Tap tap(const Conv2dShape& p, int r, int s) {
  const int a = r - p.pad, b = s - p.pad, st = p.stride;
  const int pa = ((a % st) + st) % st, pb = ((b % st) + st) % st;
  return {pa * st + pb, (a - pa) / st, (b - pb) / st};
}

thread_local Scratch t_xt;

struct MaskKey {
  int h, w, r, s, stride, pad;
  int64_t cols, p0;
  bool operator==(const MaskKey&) const = default;
};
// Per-thread cache: the masks depend only on the shape and the tile width, and a model has few of each.
thread_local std::vector<std::pair<MaskKey, std::vector<uint16_t>>> t_mask_cache;

// masks[rs * chunks + k]: lanes of columns [16k, 16k + 16) whose tap (r, s) lies inside the image;
// column j is output pixel (p0 + j) mod out_h * out_w.
const uint16_t* flat_masks(const Conv2dShape& p, int64_t cols, int& chunks, int p0 = 0) {
  chunks = static_cast<int>((cols + 15) / 16);
  const MaskKey key{p.h, p.w, p.r, p.s, p.stride, p.pad, cols, p0};
  for (const auto& [k, v] : t_mask_cache)
    if (k == key) return v.data();
  if (t_mask_cache.size() >= 64) t_mask_cache.clear();
  const int ph = p.out_h(), pw = p.out_w(), ohw = ph * pw;
  std::vector<uint16_t> m(static_cast<size_t>(p.r) * p.s * chunks, 0);
  std::vector<uint8_t> valid(ohw);
  for (int r = 0; r < p.r; ++r)
    for (int s = 0; s < p.s; ++s) {
      const Tap t = tap(p, r, s);
      for (int y = 0; y < ph; ++y)
        for (int x = 0; x < pw; ++x)
          valid[y * pw + x] = y + t.dh >= 0 && y + t.dh < ph && x + t.dw >= 0 && x + t.dw < pw;
      uint16_t* mt = m.data() + static_cast<size_t>(r * p.s + s) * chunks;
      int q = p0 % ohw;
      for (int64_t j = 0; j < cols; ++j) {
        if (valid[q]) mt[j >> 4] |= static_cast<uint16_t>(1u << (j & 15));
        if (++q == ohw) q = 0;
      }
    }
  t_mask_cache.emplace_back(key, std::move(m));
  return t_mask_cache.back().second.data();
}

// xt[(c * 4 + phase) * cols + i * ohw + y * pw + x] = x_i(c, 2y + phase / 2, 2x + phase % 2) for the phases
// some tap uses.
DDP_AVX512 void split_phases_avx512(const Conv2dShape& p, const float* x, int g, int64_t chw, float* xt,
                                    int64_t cols) {
  const int pw = p.out_w(), ohw = p.out_h() * pw, w = p.w;
  const int64_t hw = static_cast<int64_t>(p.h) * w;
  bool used[4] = {false, false, false, false};
  for (int r = 0; r < p.r; ++r)
    for (int s = 0; s < p.s; ++s) used[tap(p, r, s).phase] = true;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int c = 0; c < p.c; ++c)
    for (int i = 0; i < g; ++i)
      for (int y = 0; y < p.h; ++y) {
        const int py = y & 1;
        if (!used[py * 2] && !used[py * 2 + 1]) continue;
        const float* row = x + i * chw + c * hw + static_cast<int64_t>(y) * w;
        float* d0 = xt + (c * 4 + py * 2) * cols + i * ohw + (y >> 1) * pw;
        float* d1 = d0 + cols;
        for (int x0 = 0; x0 < pw; x0 += 16) {
          const __mmask16 st = lanes(0, pw - x0);
          const __m512 lo = _mm512_maskz_loadu_ps(lanes(0, w - 2 * x0), row + 2 * x0);
          const __m512 hi = _mm512_maskz_loadu_ps(lanes(0, w - 2 * x0 - 16), row + 2 * x0 + 16);
          if (used[py * 2]) _mm512_mask_storeu_ps(d0 + x0, st, _mm512_permutex2var_ps(lo, even, hi));
          if (used[py * 2 + 1]) _mm512_mask_storeu_ps(d1 + x0, st, _mm512_permutex2var_ps(lo, odd, hi));
        }
      }
}

// The flat layout of g whole images: channel c, phase f at result + (c * phases + f) * g * out_h * out_w
// (in scratch, or x itself for one image at stride 1). row = the stride between channels.
DDP_AVX512 const float* flat_layout(const Conv2dShape& p, const float* x, int g, int64_t chw, int64_t& row) {
  const int64_t hw = static_cast<int64_t>(p.h) * p.w;
  const int phases = p.stride * p.stride;
  const int64_t cols = static_cast<int64_t>(g) * p.out_h() * p.out_w();
  row = phases * cols;
  if (p.stride == 2) {
    float* t = t_xt.get(static_cast<size_t>(p.c) * phases * cols);
    split_phases_avx512(p, x, g, chw, t, cols);
    return t;
  }
  if (g == 1) return x;
  float* t = t_xt.get(static_cast<size_t>(p.c) * cols);
  for (int c = 0; c < p.c; ++c)
    for (int i = 0; i < g; ++i) std::memcpy(t + c * cols + i * hw, x + i * chw + c * hw, sizeof(float) * hw);
  return t;
}

// Columns [p0, p1) of one image (stride 1 only: its flat layout is the image itself), or all columns of
// g images (p1 < 0).
DDP_AVX512 void im2col_flat_avx512(const Conv2dShape& p, const float* x, int g, int64_t chw, float* dst,
                                   int64_t ld, int p0 = 0, int p1 = -1) {
  const int pw = p.out_w(), phases = p.stride * p.stride;
  const int64_t cols = static_cast<int64_t>(g) * p.out_h() * pw;  // run length of one channel-phase
  const int64_t ncols = p1 >= 0 ? p1 - p0 : cols;                 // columns written
  int64_t row = 0;
  const float* xt = p1 >= 0 ? x : flat_layout(p, x, g, chw, row);  // a piece: the image itself
  int chunks = 0;
  const uint16_t* masks = flat_masks(p, ncols, chunks, p0);
  const __mmask16 tail = lanes(0, static_cast<int>(ncols - 16 * (chunks - 1)));
  for (int c = 0; c < p.c; ++c)
    for (int r = 0; r < p.r; ++r)
      for (int s = 0; s < p.s; ++s) {
        const int rs = r * p.s + s;
        const Tap tp = tap(p, r, s);
        const float* src = xt + (c * phases + tp.phase) * cols + p0 + tp.dh * pw + tp.dw;
        float* d = dst + static_cast<int64_t>(c * p.r * p.s + rs) * ld;
        const uint16_t* m = masks + static_cast<size_t>(rs) * chunks;
        for (int k = 0; k < chunks - 1; ++k)
          _mm512_storeu_ps(d + 16 * k, _mm512_maskz_loadu_ps(m[k], src + 16 * k));
        const int k = chunks - 1;
        _mm512_mask_storeu_ps(d + 16 * k, tail, _mm512_maskz_loadu_ps(m[k] & tail, src + 16 * k));
      }
}

// dx (channels [c0, c1) of g images) = the im2col adjoint of src; when it accumulates in place (stride 1,
// one image) the caller has zeroed those channels.
DDP_AVX512 void col2im_flat_avx512(const Conv2dShape& p, const float* src, int64_t ld, int g, int c0, int c1,
                                   int64_t chw, float* dx) {
  const int64_t hw = static_cast<int64_t>(p.h) * p.w;
  const int pw = p.out_w(), ohw = p.out_h() * pw, phases = p.stride * p.stride, w = p.w;
  const int64_t cols = static_cast<int64_t>(g) * ohw;
  int chunks = 0;
  const uint16_t* masks = flat_masks(p, cols, chunks);
  const __mmask16 tail = lanes(0, static_cast<int>(cols - 16 * (chunks - 1)));
  const bool direct = p.stride == 1 && g == 1;  // accumulate straight into dx
  float* t = direct ? nullptr : t_xt.get(static_cast<size_t>(phases) * cols);
  const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int c = c0; c < c1; ++c) {
    float* acc = direct ? dx + c * hw : t;
    if (!direct) std::memset(acc, 0, sizeof(float) * phases * cols);
    for (int r = 0; r < p.r; ++r)
      for (int s = 0; s < p.s; ++s) {
        const int rs = r * p.s + s;
        const Tap tp = tap(p, r, s);
        float* a = acc + tp.phase * cols + tp.dh * pw + tp.dw;
        const float* sp = src + static_cast<int64_t>((c - c0) * p.r * p.s + rs) * ld;
        const uint16_t* m = masks + static_cast<size_t>(rs) * chunks;
        for (int k = 0; k < chunks; ++k) {
          const __mmask16 mk = k == chunks - 1 ? static_cast<__mmask16>(m[k] & tail) : m[k];
          if (mk == 0) continue;
          const __m512 v = _mm512_maskz_loadu_ps(mk, sp + 16 * k);
          const __m512 o = _mm512_maskz_loadu_ps(mk, a + 16 * k);
          _mm512_mask_storeu_ps(a + 16 * k, mk, _mm512_add_ps(o, v));
        }
      }
    if (direct) continue;
    if (p.stride == 1) {
      for (int i = 0; i < g; ++i) std::memcpy(dx + i * chw + c * hw, acc + i * hw, sizeof(float) * hw);
      continue;
    }
    // Interleave the phases back into the image rows.
    for (int i = 0; i < g; ++i)
      for (int y = 0; y < p.h; ++y) {
        const int py = y & 1;
        float* row = dx + i * chw + c * hw + static_cast<int64_t>(y) * w;
        const float* s0 = acc + (py * 2) * cols + i * ohw + (y >> 1) * pw;
        const float* s1 = s0 + cols;
        for (int x0 = 0; x0 < pw; x0 += 16) {
          const __mmask16 ld_m = lanes(0, pw - x0);
          const __m512 e = _mm512_maskz_loadu_ps(ld_m, s0 + x0);
          const __m512 o = _mm512_maskz_loadu_ps(ld_m, s1 + x0);
          _mm512_mask_storeu_ps(row + 2 * x0, lanes(0, w - 2 * x0), _mm512_permutex2var_ps(e, ilo, o));
          _mm512_mask_storeu_ps(row + 2 * x0 + 16, lanes(0, w - 2 * x0 - 16), _mm512_permutex2var_ps(e, ihi, o));
        }
      }
  }
}

// For a 1x1 flat convolution the flat layout (phase 0) is the im2col matrix itself, rows `ld` apart:
// returns it, or nullptr where an im2col copy is needed.
const float* pointwise_cols(const Conv2dShape& p, const float* x, int g, int64_t chw, int& ld) {
  if (!(g_avx512 && is_flat(p) && p.r == 1 && p.s == 1)) return nullptr;
  int64_t row = 0;
  const float* b = flat_layout(p, x, g, chw, row);
  ld = static_cast<int>(row);
  return b;
}

// Flat stride-2 convolutions need whole images per tile (the phase split is per image).
bool whole_image_tiles(const Conv2dShape& p) { return g_avx512 && is_flat(p) && p.stride == 2; }

// Columns [p0, p1) of one image.
void im2col_piece_any(const Conv2dShape& p, const float* x_n, int p0, int p1, float* dst, int64_t ld) {
  if (g_avx512 && is_flat(p) && p.stride == 1)
    im2col_flat_avx512(p, x_n, 1, 0, dst, ld, p0, p1);
  else
    im2col(p, x_n, 0, p.c, p0, p1, dst, ld);
}

void im2col_images_any(const Conv2dShape& p, const float* x, int g, int64_t chw, float* dst, int64_t ld) {
  if (g_avx512 && is_flat(p))
    im2col_flat_avx512(p, x, g, chw, dst, ld);
  else if (g_avx512 && p.stride <= 2)
    im2col_images_avx512(p, x, g, chw, dst, ld);
  else
    im2col_images(p, all_taps(p), x, g, chw, dst, ld);
}

void col2im_images_any(const Conv2dShape& p, const float* src, int64_t ld, int g, int c0, int c1, int64_t chw,
                       float* dx) {
  if (g_avx512 && is_flat(p))
    col2im_flat_avx512(p, src, ld, g, c0, c1, chw, dx);
  else if (g_avx512 && p.stride <= 2)
    col2im_images_avx512(p, src, ld, g, c0, c1, chw, dx);
  else
    col2im_images(p, all_taps(p), src, ld, g, c0, c1, chw, dx);
}

// dst (k rows of g * ohw) = the k x ohw matrices of images [0, g) side by side.
void gather_images(const float* src, int g, int k, int ohw, float* dst) {
  const int64_t cols = static_cast<int64_t>(g) * ohw;
  for (int i = 0; i < g; ++i)
    for (int kk = 0; kk < k; ++kk) {
      const float* sp = src + (static_cast<int64_t>(i) * k + kk) * ohw;
      float* dp = dst + kk * cols + static_cast<int64_t>(i) * ohw;
      for (int j = 0; j < ohw; ++j) dp[j] = sp[j];
    }
}

bool is_pointwise(const Conv2dShape& p) { return p.r == 1 && p.s == 1 && p.stride == 1 && p.pad == 0; }

// Threads for a convolution over `taps` kernel taps: waking the team costs more than a tiny convolution.
int conv_threads(const Conv2dShape& p, int taps) {
  const double flops = 2.0 * p.n * p.k * p.out_h() * p.out_w() * p.c * taps;
  return flops < 2e6 ? 1 : num_threads();
}

// dst images [0, g) (k x ohw each) = the k rows of g * ohw columns of src: the inverse of gather_images.
void scatter_images(const float* src, int g, int k, int ohw, float* dst) {
  const int64_t cols = static_cast<int64_t>(g) * ohw;
  for (int i = 0; i < g; ++i)
    for (int kk = 0; kk < k; ++kk) {
      const float* sp = src + kk * cols + static_cast<int64_t>(i) * ohw;
      float* dp = dst + (static_cast<int64_t>(i) * k + kk) * ohw;
      for (int j = 0; j < ohw; ++j) dp[j] = sp[j];
    }
}

// ---- convolutions with dead taps (some kernel taps see only padding: tiny images) ----------------------
// The column matrix has c * L rows (L live taps) and the GEMMs run over K = c * L. Images here are a few
// pixels, so whole-image tiles and the portable im2col/col2im loops (over the live taps) suffice: their
// cost is 1/k of the GEMM's.

// wl (k x c * L) = the live-tap columns of w (KCRS). Reading w is the cost (every line of it, 9.4 MB for
// a layer4 conv): a model can gather once per step for forward and data gradient (ops_conv.h).
void gather_live_weights(const Conv2dShape& p, const std::vector<int>& taps, const float* w, float* wl) {
  const int ntaps = static_cast<int>(taps.size()), rs = p.r * p.s;
  const int64_t kc = static_cast<int64_t>(p.k) * p.c;
  for (int64_t i = 0; i < kc; ++i)
    for (int t = 0; t < ntaps; ++t) wl[i * ntaps + t] = w[i * rs + taps[t]];
}

// Gathered by the calling thread for all tiles.
thread_local Scratch t_wl;
const float* gather_live_weights(const Conv2dShape& p, const std::vector<int>& taps, const float* w) {
  float* wl = t_wl.get(static_cast<size_t>(p.k) * p.c * taps.size());
  gather_live_weights(p, taps, w, wl);
  return wl;
}

// Sizes shared by the three live-tap passes: whole-image tiles of a c * L-row column matrix. An empty tap
// list (every output sees only padding: possible with pad >= kernel and stride > 1) zeroes the output.
struct LivePlan {
  int cl, nt;
  Tiling tl;
  int64_t chw, kohw;
  LivePlan(const Conv2dShape& p, const std::vector<int>& taps)
      : cl(p.c * static_cast<int>(taps.size())),
        nt(conv_threads(p, static_cast<int>(taps.size()))),
        tl(make_tiling(p, nt, true, std::max(cl, 1))),
        chw(static_cast<int64_t>(p.c) * p.h * p.w),
        kohw(static_cast<int64_t>(p.k) * tl.ohw) {}
  // Tile t covers images [n0, n0 + g).
  void images(const Conv2dShape& p, int t, int& n0, int& g) const {
    int n1, p0, p1;
    tl.tile(t, n0, n1, p0, p1);
    g = std::min(n1, p.n) - n0;
  }
  // dy of images [n0, n0 + g) as one k x (g * ohw) matrix: dy itself for one image, else gathered.
  const float* dy_matrix(const Conv2dShape& p, const float* dy, int n0, int g) const {
    if (g == 1) return dy + n0 * kohw;
    float* gathered = t_mat.get(static_cast<size_t>(p.k) * g * tl.ohw);
    gather_images(dy + n0 * kohw, g, p.k, tl.ohw, gathered);
    return gathered;
  }
};

void conv_live_forward(const Conv2dShape& p, const std::vector<int>& taps, const float* x, const float* wl,
                       float* y) {
  const LivePlan lp(p, taps);
  if (taps.empty()) {  // every output sees only padding
    std::memset(y, 0, sizeof(float) * p.n * lp.kohw);
    return;
  }
#pragma omp parallel for num_threads(lp.nt) schedule(static)
  for (int t = 0; t < lp.tl.tiles; ++t) {
    int n0, g;
    lp.images(p, t, n0, g);
    const int cols = g * lp.tl.ohw;
    float* col = t_col.get(static_cast<size_t>(lp.cl) * cols);
    im2col_images(p, taps, x + n0 * lp.chw, g, lp.chw, col, cols);
    float* out = g == 1 ? y + n0 * lp.kohw : t_mat.get(static_cast<size_t>(p.k) * cols);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p.k, cols, lp.cl, 1.f, wl, lp.cl, col, cols, 0.f, out,
                cols);
    if (g > 1) scatter_images(out, g, p.k, lp.tl.ohw, y + n0 * lp.kohw);
  }
}

void conv_live_backward_data(const Conv2dShape& p, const std::vector<int>& taps, const float* dy,
                             const float* wl, float* dx) {
  const LivePlan lp(p, taps);
  if (taps.empty()) {
    std::memset(dx, 0, sizeof(float) * p.n * lp.chw);
    return;
  }
#pragma omp parallel for num_threads(lp.nt) schedule(static)
  for (int t = 0; t < lp.tl.tiles; ++t) {
    int n0, g;
    lp.images(p, t, n0, g);
    const int cols = g * lp.tl.ohw;
    float* dcol = t_col.get(static_cast<size_t>(lp.cl) * cols);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, lp.cl, cols, p.k, 1.f, wl, lp.cl,
                lp.dy_matrix(p, dy, n0, g), cols, 0.f, dcol, cols);
    std::memset(dx + n0 * lp.chw, 0, sizeof(float) * g * lp.chw);
    col2im_images(p, taps, dcol, cols, g, 0, p.c, lp.chw, dx + n0 * lp.chw);
  }
}

// The weight gradient of a dead tap is exactly zero.
void conv_live_backward_weight(const Conv2dShape& p, const std::vector<int>& taps, const float* x,
                               const float* dy, float* dw) {
  const int ntaps = static_cast<int>(taps.size()), rs = p.r * p.s;
  const LivePlan lp(p, taps);
  const int cl = lp.cl;
  const Tiling& tl = lp.tl;
  const int64_t kcl = static_cast<int64_t>(p.k) * cl, chw = lp.chw;
  if (taps.empty()) {
    std::memset(dw, 0, sizeof(float) * p.k * p.c * rs);
    return;
  }
  const int used = std::max(1, std::min(lp.nt, tl.tiles));
  std::vector<float*> acc(used, nullptr);
#pragma omp parallel num_threads(used)
  {
    const int me = omp_get_thread_num();
    const int team = omp_get_num_threads();
    float* mine = t_acc.get(static_cast<size_t>(kcl));
    std::memset(mine, 0, sizeof(float) * kcl);
    acc[me] = mine;
#pragma omp for schedule(static)
    for (int t = 0; t < tl.tiles; ++t) {
      int n0, g;
      lp.images(p, t, n0, g);
      const int cols = g * tl.ohw;
      const float* a = lp.dy_matrix(p, dy, n0, g);
      float* col = t_col.get(static_cast<size_t>(cl) * cols);
      im2col_images(p, taps, x + n0 * chw, g, chw, col, cols);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p.k, cl, cols, 1.f, a, cols, col, cols, 1.f, mine, cl);
    }
    // The implicit barrier above means every accumulator is complete; sum them in thread order into this
    // thread's share of dw, zeroed in one go first (its rows are r * s floats, mostly dead taps). Measured
    // in training at 32 px, this beats writing each row whole and beats streaming stores (dw is in cache).
    const int64_t kc_n = static_cast<int64_t>(p.k) * p.c;
    const int64_t k0 = kc_n * me / team, k1 = kc_n * (me + 1) / team;
    const int* tp = taps.data();
    float* const* ap = acc.data();
    std::memset(dw + k0 * rs, 0, sizeof(float) * (k1 - k0) * rs);
    for (int64_t kc = k0; kc < k1; ++kc) {
      float* d = dw + kc * rs;
      const float* a0 = ap[0] + kc * ntaps;
      for (int t = 0; t < ntaps; ++t) {
        float v = a0[t];
        for (int u = 1; u < team; ++u) v += ap[u][kc * ntaps + t];
        d[tp[t]] = v;
      }
    }
  }
}

// ---- tiny images as one dense map per image --------------------------------------------------------------
// When the input plane has fewer pixels than the conv has live taps (ResNet18's layer3 at 32 px input: 3x3
// pad 1 on 2x2 maps, 9 taps, 4 pixels), most im2col entries are padding zeros even though every tap is
// live somewhere. Forward and data gradient are then cheaper as one dense linear map per image, M
// (k*ohw x c*hw) with M[k*ohw + o][c*hw + q] = w[k][c][the tap joining output o and input pixel q] (0 where
// none): 16 instead of 36 multiply-adds per (k, c) pair at 2x2. In NCHW the whole batch is one GEMM, with
// no im2col or col2im: y (n x k*ohw) = x (n x c*hw) M^T, dx = dy M. (The weight gradient stays on im2col:
// dM = dy^T x is a k*ohw x c*hw GEMM over only n, and folding it back onto the taps cost more than it saved;
// measured on layer3's 256-channel 2x2 conv, batch 64: forward 3.9 -> 2.6 ms, data gradient 3.9 -> 2.5 ms,
// weight gradient 3.7 -> 4.3 ms.)
constexpr int64_t kDenseMaxBytes = int64_t{1} << 26;

bool use_dense(const Conv2dShape& p, size_t live) {
  const int64_t m = static_cast<int64_t>(p.k) * p.out_h() * p.out_w() * p.c * p.h * p.w;
  return static_cast<int64_t>(p.h) * p.w < static_cast<int64_t>(live) && m * 4 <= kDenseMaxBytes;
}

// slot[o * hw + q]: the tap r * s_count + s joining output pixel o and input pixel q, or r * s_count (a zero
// slot) where none does. At most one tap joins a pair: r and s follow from the two positions.
std::vector<int> dense_slots(const Conv2dShape& p) {
  const int ow_n = p.out_w(), ohw = p.out_h() * ow_n, hw = p.h * p.w;
  std::vector<int> slot(static_cast<size_t>(ohw) * hw, p.r * p.s);
  for (int o = 0; o < ohw; ++o)
    for (int r = 0; r < p.r; ++r)
      for (int s = 0; s < p.s; ++s) {
        const int ih = (o / ow_n) * p.stride - p.pad + r, iw = (o % ow_n) * p.stride - p.pad + s;
        if (ih >= 0 && ih < p.h && iw >= 0 && iw < p.w)
          slot[static_cast<size_t>(o) * hw + ih * p.w + iw] = r * p.s + s;
      }
  return slot;
}

thread_local Scratch t_dense;

// M (above) from w into m. Per (k, c) the r * s weights plus a zero slot are spread over the ohw rows, hw
// contiguous values each: no branches, no separate zeroing pass. HW > 0 fixes hw at compile time (the 2x2
// maps of ResNet18's layer3 at 32 px), so the short inner loop unrolls.
template <int HW>
void fill_dense_map(const Conv2dShape& p, const std::vector<int>& slot, const float* w, float* m) {
  const int ohw = p.out_h() * p.out_w(), hw = HW > 0 ? HW : p.h * p.w, rs = p.r * p.s;
  const int64_t chw = static_cast<int64_t>(p.c) * hw;
  std::vector<float> wc(static_cast<size_t>(rs) + 1, 0.f);
  for (int k = 0; k < p.k; ++k)
    for (int c = 0; c < p.c; ++c) {
      std::copy_n(w + (static_cast<int64_t>(k) * p.c + c) * rs, rs, wc.begin());
      for (int o = 0; o < ohw; ++o) {
        float* dst = m + (static_cast<int64_t>(k) * ohw + o) * chw + c * hw;
        const int* so = slot.data() + static_cast<size_t>(o) * hw;
        for (int q = 0; q < hw; ++q) dst[q] = wc[so[q]];
      }
    }
}

// M in the calling thread's scratch.
const float* dense_map(const Conv2dShape& p, const float* w) {
  const std::vector<int> slot = dense_slots(p);
  float* m = t_dense.get(static_cast<size_t>(p.k) * p.out_h() * p.out_w() * p.c * p.h * p.w);
  if (p.h * p.w == 4)
    fill_dense_map<4>(p, slot, w, m);
  else
    fill_dense_map<0>(p, slot, w, m);
  return m;
}

void conv_dense_forward(const Conv2dShape& p, const float* x, const float* w, float* y) {
  const int kohw = p.k * p.out_h() * p.out_w(), chw = p.c * p.h * p.w;
  sgemm(false, true, p.n, kohw, chw, 1.f, x, chw, dense_map(p, w), chw, 0.f, y, kohw);
}

void conv_dense_backward_data(const Conv2dShape& p, const float* dy, const float* w, float* dx) {
  const int kohw = p.k * p.out_h() * p.out_w(), chw = p.c * p.h * p.w;
  sgemm(false, false, p.n, chw, kohw, 1.f, dy, kohw, dense_map(p, w), chw, 0.f, dx, chw);
}

}  // namespace

void conv2d_forward(const Conv2dShape& p, const float* x, const float* w, float* y) {
  check_shape("conv2d_forward", p);
  const int crs = p.c * p.r * p.s;
  const auto taps = live_taps(p);
  if (use_dense(p, taps.size())) return conv_dense_forward(p, x, w, y);
  if (static_cast<int>(taps.size()) < p.r * p.s)
    return conv_live_forward(p, taps, x, gather_live_weights(p, taps, w), y);
  const int nt = conv_threads(p, p.r * p.s);
  const Tiling tl = make_tiling(p, nt, whole_image_tiles(p), crs);
  const int64_t chw = static_cast<int64_t>(p.c) * p.h * p.w;
  const int64_t kohw = static_cast<int64_t>(p.k) * tl.ohw;
  const bool pointwise = is_pointwise(p);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < tl.tiles; ++t) {
    int n0, n1, p0, p1;
    tl.tile(t, n0, n1, p0, p1);
    n1 = std::min(n1, p.n);
    const int g = n1 - n0;
    const int cols = g == 1 ? p1 - p0 : g * tl.ohw;
    const float* b;
    int ldb;
    if (pointwise && g == 1) {
      b = x + n0 * chw + p0;
      ldb = tl.ohw;
    } else if (p1 - p0 == tl.ohw && (b = pointwise_cols(p, x + n0 * chw, g, chw, ldb)) != nullptr) {
      // 1x1 on whole images: the flat layout is the column matrix
    } else {
      float* col = t_col.get(static_cast<size_t>(crs) * cols);
      if (p1 - p0 == tl.ohw)
        im2col_images_any(p, x + n0 * chw, g, chw, col, cols);
      else
        im2col_piece_any(p, x + n0 * chw, p0, p1, col, cols);
      b = col;
      ldb = cols;
    }
    if (g == 1) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p.k, cols, crs, 1.f, w, crs, b, ldb, 0.f,
                  y + n0 * kohw + p0, tl.ohw);
    } else {
      float* out = t_mat.get(static_cast<size_t>(p.k) * cols);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p.k, cols, crs, 1.f, w, crs, b, ldb, 0.f, out, cols);
      scatter_images(out, g, p.k, tl.ohw, y + n0 * kohw);
    }
  }
}

void conv2d_backward_data(const Conv2dShape& p, const float* dy, const float* w, float* dx) {
  check_shape("conv2d_backward_data", p);
  const int crs = p.c * p.r * p.s;
  const auto taps = live_taps(p);
  if (use_dense(p, taps.size())) return conv_dense_backward_data(p, dy, w, dx);
  if (static_cast<int>(taps.size()) < p.r * p.s)
    return conv_live_backward_data(p, taps, dy, gather_live_weights(p, taps, w), dx);
  const int nt = conv_threads(p, p.r * p.s);
  const Tiling tl = make_tiling(p, nt, true, crs);
  const int rs = p.r * p.s;
  const int64_t hw = static_cast<int64_t>(p.h) * p.w;
  const int64_t chw = p.c * hw;
  const int64_t kohw = static_cast<int64_t>(p.k) * tl.ohw;
  const bool pointwise = is_pointwise(p);
  // Channel chunks keep the column-gradient block near the cache size.
  const int64_t tile_cols = static_cast<int64_t>(tl.group) * tl.ohw;
  const int cc = static_cast<int>(std::clamp<int64_t>(kTileBytes / (rs * tile_cols * 4), 1, p.c));
  const int chunks = (p.c + cc - 1) / cc;
  const int work = tl.tiles * chunks;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < work; ++t) {
    int n0, n1, p0, p1;
    tl.tile(t / chunks, n0, n1, p0, p1);
    n1 = std::min(n1, p.n);
    const int g = n1 - n0;
    const int cols = g * tl.ohw;
    const int c0 = (t % chunks) * cc, c1 = std::min(p.c, c0 + cc);
    const float* a = w + c0 * rs;  // op(A) = W^T rows for channels [c0, c1)
    const float* b;
    int ldb;
    if (g == 1) {
      b = dy + n0 * kohw;
      ldb = tl.ohw;
    } else {
      float* gathered = t_mat.get(static_cast<size_t>(p.k) * cols);
      gather_images(dy + n0 * kohw, g, p.k, tl.ohw, gathered);
      b = gathered;
      ldb = cols;
    }
    const int m = (c1 - c0) * rs;
    if (pointwise && g == 1) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, cols, p.k, 1.f, a, crs, b, ldb, 0.f,
                  dx + n0 * chw + c0 * hw, static_cast<int>(hw));
      continue;
    }
    float* dcol = t_col.get(static_cast<size_t>(m) * cols);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, cols, p.k, 1.f, a, crs, b, ldb, 0.f, dcol, cols);
    // The flat path overwrites dx itself unless it accumulates in place (stride 1, one image).
    if (!(g_avx512 && is_flat(p)) || (p.stride == 1 && g == 1))
      for (int i = 0; i < g; ++i) std::memset(dx + (n0 + i) * chw + c0 * hw, 0, sizeof(float) * (c1 - c0) * hw);
    col2im_images_any(p, dcol, cols, g, c0, c1, chw, dx + n0 * chw);
  }
}

void conv2d_backward_weight(const Conv2dShape& p, const float* x, const float* dy, float* dw) {
  check_shape("conv2d_backward_weight", p);
  const int crs = p.c * p.r * p.s;
  if (const auto taps = live_taps(p); static_cast<int>(taps.size()) < p.r * p.s)
    return conv_live_backward_weight(p, taps, x, dy, dw);
  const int nt = conv_threads(p, p.r * p.s);
  const Tiling tl = make_tiling(p, nt, whole_image_tiles(p), crs);
  const int64_t kcrs = static_cast<int64_t>(p.k) * crs;
  const int64_t chw = static_cast<int64_t>(p.c) * p.h * p.w;
  const int64_t kohw = static_cast<int64_t>(p.k) * tl.ohw;
  const bool pointwise = is_pointwise(p);
  const int used = std::max(1, std::min(nt, tl.tiles));
  std::vector<float*> acc(used, nullptr);
#pragma omp parallel num_threads(used)
  {
    const int me = omp_get_thread_num();
    const int team = omp_get_num_threads();
    // Thread 0 accumulates straight into dw; the others into scratch, summed below in thread order.
    float* mine = me == 0 ? dw : t_acc.get(static_cast<size_t>(kcrs));
    std::memset(mine, 0, sizeof(float) * kcrs);
    acc[me] = mine;
#pragma omp for schedule(static)
    for (int t = 0; t < tl.tiles; ++t) {
      int n0, n1, p0, p1;
      tl.tile(t, n0, n1, p0, p1);
      n1 = std::min(n1, p.n);
      const int g = n1 - n0;
      const int cols = g == 1 ? p1 - p0 : g * tl.ohw;
      const float* a;
      int lda;
      const float* b;
      int ldb;
      if (g == 1) {
        a = dy + n0 * kohw + p0;
        lda = tl.ohw;
      } else {
        float* gathered = t_mat.get(static_cast<size_t>(p.k) * cols);
        gather_images(dy + n0 * kohw, g, p.k, tl.ohw, gathered);
        a = gathered;
        lda = cols;
      }
      if (pointwise && g == 1) {
        b = x + n0 * chw + p0;
        ldb = tl.ohw;
      } else if (p1 - p0 == tl.ohw && (b = pointwise_cols(p, x + n0 * chw, g, chw, ldb)) != nullptr) {
        // 1x1 on whole images: the flat layout is the column matrix
      } else {
        float* col = t_col.get(static_cast<size_t>(crs) * cols);
        if (p1 - p0 == tl.ohw)
          im2col_images_any(p, x + n0 * chw, g, chw, col, cols);
        else
          im2col_piece_any(p, x + n0 * chw, p0, p1, col, cols);
        b = col;
        ldb = cols;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p.k, crs, cols, 1.f, a, lda, b, ldb, 1.f, mine, crs);
    }
    // The implicit barrier above means every accumulator is complete.
    if (team > 1) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < kcrs; ++i) {
        float s = acc[0][i];
        for (int j = 1; j < team; ++j) s += acc[j][i];
        acc[0][i] = s;
      }
    }
  }
}

std::vector<int> conv2d_live_taps(const Conv2dShape& p) {
  check_shape("conv2d_live_taps", p);
  return live_taps(p);
}

void conv2d_gather_taps(const Conv2dShape& p, const std::vector<int>& taps, const float* w, float* wl) {
  check_taps("conv2d_gather_taps", p, taps);
  gather_live_weights(p, taps, w, wl);
}

void conv2d_forward_gathered(const Conv2dShape& p, const std::vector<int>& taps, const float* x, const float* wl,
                             float* y) {
  check_taps("conv2d_forward_gathered", p, taps);
  conv_live_forward(p, taps, x, wl, y);
}

void conv2d_backward_data_gathered(const Conv2dShape& p, const std::vector<int>& taps, const float* dy,
                                   const float* wl, float* dx) {
  check_taps("conv2d_backward_data_gathered", p, taps);
  conv_live_backward_data(p, taps, dy, wl, dx);
}

}  // namespace ddp::cpu
