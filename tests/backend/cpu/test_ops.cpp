// CPU ops against independent naive loops (double accumulation) and finite differences.
// Finite differences: objective J = sum(y * r) with random r, accumulated in double from the fp32
// forward; central difference with step eps; analytic gradient from the op's backward with dy = r.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "ddp/backend/cpu/ops.h"
#include "ddp/backend/cpu/ops_conv.h"
#include "ddp/core/check.h"
#include "ddp/core/rng.h"
#include "test_ops_util.h"

namespace ddp::cpu::test {
namespace {

std::string name(const Conv2dShape& p) {
  return "conv n" + std::to_string(p.n) + " c" + std::to_string(p.c) + " " + std::to_string(p.h) + "x" +
         std::to_string(p.w) + " k" + std::to_string(p.k) + " " + std::to_string(p.r) + "x" + std::to_string(p.s) +
         "/" + std::to_string(p.stride) + " p" + std::to_string(p.pad);
}

// Naive direct convolution loops in double: forward, and the two gradients as scatters.
void ref_conv(const Conv2dShape& p, const std::vector<float>& x, const std::vector<float>& w,
              const std::vector<float>& dy, std::vector<double>& y, std::vector<double>& dx,
              std::vector<double>& dw) {
  const int oh = p.out_h(), ow = p.out_w();
  y.assign(static_cast<size_t>(p.n) * p.k * oh * ow, 0.0);
  dx.assign(x.size(), 0.0);
  dw.assign(w.size(), 0.0);
  for (int n = 0; n < p.n; ++n)
    for (int k = 0; k < p.k; ++k)
      for (int i = 0; i < oh; ++i)
        for (int j = 0; j < ow; ++j) {
          const size_t yi = ((static_cast<size_t>(n) * p.k + k) * oh + i) * ow + j;
          double acc = 0.0;
          for (int c = 0; c < p.c; ++c)
            for (int r = 0; r < p.r; ++r)
              for (int s = 0; s < p.s; ++s) {
                const int ih = i * p.stride - p.pad + r, iw = j * p.stride - p.pad + s;
                if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) continue;
                const size_t xi = ((static_cast<size_t>(n) * p.c + c) * p.h + ih) * p.w + iw;
                const size_t wi = ((static_cast<size_t>(k) * p.c + c) * p.r + r) * p.s + s;
                acc += static_cast<double>(x[xi]) * w[wi];
                dx[xi] += static_cast<double>(dy[yi]) * w[wi];
                dw[wi] += static_cast<double>(dy[yi]) * x[xi];
              }
          y[yi] = acc;
        }
}

// The ResNet18 combinations (7x7/2 p3, 3x3/1 p1, 3x3/2 p1, 1x1/2 p0), a 1x1/1 (no im2col path),
// non-square inputs, batch sizes that leave a short last image group, images large enough to be
// split into pixel tiles, and channel counts large enough to split the data-gradient into chunks.
const std::vector<Conv2dShape> kConvShapes = {
    {2, 3, 19, 23, 4, 7, 7, 2, 3},  {2, 5, 9, 7, 6, 3, 3, 1, 1},     {3, 4, 9, 10, 5, 3, 3, 2, 1},
    {2, 6, 8, 7, 4, 1, 1, 2, 0},    {3, 4, 6, 5, 3, 1, 1, 1, 0},     {5, 8, 4, 4, 8, 3, 3, 1, 1},
    {5, 16, 2, 3, 8, 3, 3, 2, 1},   {2, 3, 48, 50, 4, 3, 3, 1, 1},   {2, 16, 48, 40, 3, 7, 7, 1, 3},
    {7, 32, 1, 1, 16, 3, 3, 1, 1},  {3, 8, 70, 66, 4, 1, 1, 1, 0},
    // Even sizes with stride 2 take the phase-plane path.
    {3, 5, 10, 8, 6, 3, 3, 2, 1},   {3, 6, 8, 12, 4, 1, 1, 2, 0},    {2, 3, 20, 18, 4, 7, 7, 2, 3},
    {5, 16, 2, 2, 8, 3, 3, 2, 1},   {4, 8, 2, 4, 5, 1, 1, 2, 0},     {2, 4, 40, 36, 3, 3, 3, 2, 1},
    {1, 64, 80, 72, 4, 3, 3, 2, 1},  // stride 2, one whole large image per tile
    // Tiny images where some kernel taps see only padding (the live-tap path; kDeadTapShapes below).
    {3, 16, 1, 1, 8, 3, 3, 2, 1},   {4, 8, 2, 5, 6, 3, 3, 2, 1},     {3, 8, 1, 3, 5, 3, 3, 1, 1},
    {2, 4, 1, 2, 3, 5, 5, 1, 2},    {2, 3, 1, 1, 4, 1, 1, 2, 1},     {64, 256, 2, 2, 64, 3, 3, 2, 1},
    {4, 512, 1, 1, 128, 3, 3, 1, 1},  // layer4-like: 1 of 9 taps, a 2.4 MB weight gradient
    // Fewer input pixels than live taps: one dense map per image (layer3 at 32 px; non-square; threads).
    {6, 16, 2, 2, 12, 3, 3, 1, 1},  {4, 8, 2, 3, 5, 3, 3, 1, 1},     {64, 64, 2, 2, 32, 3, 3, 1, 1},
};

class ConvTest : public ::testing::TestWithParam<Conv2dShape> {};

TEST_P(ConvTest, MatchesNaiveLoops) {
  const Conv2dShape p = GetParam();
  const size_t xs = static_cast<size_t>(p.n) * p.c * p.h * p.w, ws = static_cast<size_t>(p.k) * p.c * p.r * p.s;
  const size_t ys = static_cast<size_t>(p.n) * p.k * p.out_h() * p.out_w();
  auto x = randn(xs, 1), w = randn(ws, 2, 1.f / std::sqrt(static_cast<float>(p.c * p.r * p.s))), dy = randn(ys, 3);
  std::vector<double> ry, rdx, rdw;
  ref_conv(p, x, w, dy, ry, rdx, rdw);
  std::vector<float> y(ys), dx(xs), dw(ws);
  conv2d_forward(p, x.data(), w.data(), y.data());
  conv2d_backward_data(p, dy.data(), w.data(), dx.data());
  conv2d_backward_weight(p, x.data(), dy.data(), dw.data());
  // fp32 GEMM over up to ~800 (forward), ~100 (data) and ~10^4 (weight) products of O(1) terms.
  expect_close(name(p) + " y", y, ry, 1e-4, 1e-4);
  expect_close(name(p) + " dx", dx, rdx, 1e-4, 1e-4);
  expect_close(name(p) + " dw", dw, rdw, 5e-4, 1e-4);
}

TEST_P(ConvTest, GradientsMatchFiniteDifferences) {
  const Conv2dShape p = GetParam();
  const size_t xs = static_cast<size_t>(p.n) * p.c * p.h * p.w, ws = static_cast<size_t>(p.k) * p.c * p.r * p.s;
  const size_t ys = static_cast<size_t>(p.n) * p.k * p.out_h() * p.out_w();
  auto x = randn(xs, 11), w = randn(ws, 12, 0.5f), r = randn(ys, 13);
  std::vector<float> y(ys), dx(xs), dw(ws);
  conv2d_backward_data(p, r.data(), w.data(), dx.data());
  conv2d_backward_weight(p, x.data(), r.data(), dw.data());
  auto objective = [&] {
    conv2d_forward(p, x.data(), w.data(), y.data());
    return dot(y, r);
  };
  // The objective is linear in x and in w, so the central difference is exact up to fp32 rounding of y
  // (~1e-7 * sqrt(ys) * |y r| / eps).
  check_fd(name(p) + " dx", x, dx, objective, 1e-2f, 2e-3, 2e-3);
  check_fd(name(p) + " dw", w, dw, objective, 1e-2f, 2e-3, 2e-3);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvTest, ::testing::ValuesIn(kConvShapes));

TEST(ConvTest, DeterministicAndThreadCountIndependent) {
  const Conv2dShape p{6, 16, 12, 10, 8, 3, 3, 1, 1};
  const size_t xs = static_cast<size_t>(p.n) * p.c * p.h * p.w, ws = static_cast<size_t>(p.k) * p.c * p.r * p.s;
  const size_t ys = static_cast<size_t>(p.n) * p.k * p.out_h() * p.out_w();
  auto x = randn(xs, 21), dy = randn(ys, 22);
  std::vector<float> a(ws), b(ws), c(ws);
  const int saved = num_threads();
  conv2d_backward_weight(p, x.data(), dy.data(), a.data());
  conv2d_backward_weight(p, x.data(), dy.data(), b.data());
  EXPECT_EQ(a, b) << "weight gradient differs between two identical calls";
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  conv2d_backward_weight(p, x.data(), dy.data(), c.data());
  set_num_threads(saved);
  expect_close("dw 1 thread vs many", c, a, 1e-4, 1e-5);
}

// Taps (r, s) whose input position is padding for every output position, by the definition.
std::vector<bool> dead_taps(const Conv2dShape& p) {
  std::vector<bool> dead(static_cast<size_t>(p.r) * p.s, true);
  for (int r = 0; r < p.r; ++r)
    for (int s = 0; s < p.s; ++s)
      for (int i = 0; i < p.out_h(); ++i)
        for (int j = 0; j < p.out_w(); ++j) {
          const int ih = i * p.stride - p.pad + r, iw = j * p.stride - p.pad + s;
          if (ih >= 0 && ih < p.h && iw >= 0 && iw < p.w) dead[static_cast<size_t>(r) * p.s + s] = false;
        }
  return dead;
}

// ResNet18's layer4 at 32 px input (3x3 pad 1 on 1x1; the stride-2 conv from 2x2) and other tiny maps,
// square and not, stride 1 and 2, including one where every tap is dead (pad 1 > a 1x1 kernel, stride 2).
const std::vector<Conv2dShape> kDeadTapShapes = {
    {7, 32, 1, 1, 16, 3, 3, 1, 1}, {3, 16, 1, 1, 8, 3, 3, 2, 1}, {5, 16, 2, 2, 8, 3, 3, 2, 1},
    {5, 16, 2, 3, 8, 3, 3, 2, 1},  {4, 8, 2, 5, 6, 3, 3, 2, 1},  {3, 8, 1, 3, 5, 3, 3, 1, 1},
    {2, 4, 1, 2, 3, 5, 5, 1, 2},   {2, 3, 1, 1, 4, 1, 1, 2, 1},  {64, 256, 2, 2, 64, 3, 3, 2, 1},
    {4, 512, 1, 1, 128, 3, 3, 1, 1},
};

// Every output is overwritten (buffers start as NaN) and a dead tap's weight gradient is exactly 0;
// the values themselves are checked against the naive loops by ConvTest (these shapes are in kConvShapes).
TEST(ConvDeadTaps, OutputsOverwrittenAndDeadTapGradientExactlyZero) {
  for (const Conv2dShape& p : kDeadTapShapes) {
    SCOPED_TRACE(name(p));
    const std::vector<bool> dead = dead_taps(p);
    ASSERT_GT(std::count(dead.begin(), dead.end(), true), 0) << "shape has no dead tap: not a test of it";
    ASSERT_TRUE(std::any_of(kConvShapes.begin(), kConvShapes.end(), [&](const Conv2dShape& q) {
      return name(q) == name(p);
    })) << "add the shape to kConvShapes so its values are checked";
    const size_t xs = static_cast<size_t>(p.n) * p.c * p.h * p.w, ws = static_cast<size_t>(p.k) * p.c * p.r * p.s;
    const size_t ys = static_cast<size_t>(p.n) * p.k * p.out_h() * p.out_w();
    auto x = randn(xs, 51), w = randn(ws, 52), dy = randn(ys, 53);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> y(ys, nan), dx(xs, nan), dw(ws, nan);
    conv2d_forward(p, x.data(), w.data(), y.data());
    conv2d_backward_data(p, dy.data(), w.data(), dx.data());
    conv2d_backward_weight(p, x.data(), dy.data(), dw.data());
    EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return std::isfinite(v); })) << "y not written";
    EXPECT_TRUE(std::all_of(dx.begin(), dx.end(), [](float v) { return std::isfinite(v); })) << "dx not written";
    int nonzero_dead = 0, zero_live = 0;
    for (size_t i = 0; i < ws; ++i) {
      const bool is_dead = dead[i % dead.size()];
      if (is_dead && dw[i] != 0.f) ++nonzero_dead;  // NaN counts too
      if (!is_dead && !(std::isfinite(dw[i]) && dw[i] != 0.f)) ++zero_live;
    }
    EXPECT_EQ(nonzero_dead, 0) << "dead taps must get an exactly zero weight gradient";
    EXPECT_EQ(zero_live, 0) << "live taps must get a finite, generally nonzero weight gradient";
  }
}

// ops_conv.h: the live taps are the complement of the dead ones, the gathered weights are w at those taps,
// and forward / data gradient from gathered weights equal the ops.h results bit for bit (same kernels).
TEST(ConvDeadTaps, GatheredWeightEntryPoints) {
  std::vector<Conv2dShape> shapes = kDeadTapShapes;
  shapes.push_back({2, 4, 6, 5, 3, 3, 3, 1, 1});  // every tap live
  for (const Conv2dShape& p : shapes) {
    SCOPED_TRACE(name(p));
    const std::vector<bool> dead = dead_taps(p);
    std::vector<int> want;
    for (int t = 0; t < p.r * p.s; ++t)
      if (!dead[t]) want.push_back(t);
    const std::vector<int> taps = conv2d_live_taps(p);
    ASSERT_EQ(taps, want);
    const size_t xs = static_cast<size_t>(p.n) * p.c * p.h * p.w, ws = static_cast<size_t>(p.k) * p.c * p.r * p.s;
    const size_t ys = static_cast<size_t>(p.n) * p.k * p.out_h() * p.out_w();
    auto x = randn(xs, 61), w = randn(ws, 62), dy = randn(ys, 63);
    std::vector<float> wl(static_cast<size_t>(p.k) * p.c * taps.size());
    conv2d_gather_taps(p, taps, w.data(), wl.data());
    for (size_t kc = 0; kc < static_cast<size_t>(p.k) * p.c; ++kc)
      for (size_t t = 0; t < taps.size(); ++t)
        ASSERT_EQ(wl[kc * taps.size() + t], w[kc * p.r * p.s + taps[t]]) << "kc " << kc << " tap " << taps[t];
    if (taps.size() == static_cast<size_t>(p.r * p.s)) continue;  // ops.h's own path then
    std::vector<float> y(ys), y2(ys), dx(xs), dx2(xs);
    conv2d_forward(p, x.data(), w.data(), y.data());
    conv2d_forward_gathered(p, taps, x.data(), wl.data(), y2.data());
    conv2d_backward_data(p, dy.data(), w.data(), dx.data());
    conv2d_backward_data_gathered(p, taps, dy.data(), wl.data(), dx2.data());
    if (p.h * p.w >= static_cast<int>(taps.size())) {  // the same kernels as ops.h: bit for bit
      EXPECT_EQ(y, y2);
      EXPECT_EQ(dx, dx2);
    } else {  // ops.h takes the dense-map path there: another summation order
      expect_close("y", y2, y, 1e-5, 1e-5);
      expect_close("dx", dx2, dx, 1e-5, 1e-5);
    }
    std::vector<int> all(static_cast<size_t>(p.r) * p.s);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_THROW(conv2d_forward_gathered(p, all, x.data(), wl.data(), y2.data()), ddp::Error);
  }
}

TEST(ConvTest, RejectsBadShape) {
  const Conv2dShape p{1, 1, 2, 2, 1, 3, 3, 1, 0};
  float buf[16] = {};
  EXPECT_THROW(conv2d_forward(p, buf, buf, buf), ddp::Error);
}

// ---- batch norm -----------------------------------------------------------------------------------------

// (n, c, hw): a plane of 42 values, and the small planes (hw <= 16) that take the position-wise path,
// 1x1 with enough values for several threads.
struct BnShape {
  int n, c, hw;
};
const std::vector<BnShape> kBnShapes = {{3, 5, 7 * 6}, {16, 6, 1}, {5, 7, 4}, {3, 9, 16}, {64, 512, 1}, {9, 70, 4}};

class BatchNormShapes : public ::testing::TestWithParam<BnShape> {};

TEST_P(BatchNormShapes, TrainForwardMatchesNaive) {
  const int n = GetParam().n, c = GetParam().c, hw = GetParam().hw;
  const size_t sz = static_cast<size_t>(n) * c * hw;
  auto x = randn(sz, 31, 2.f), gamma = randn(c, 32), beta = randn(c, 33);
  for (auto& v : x) v += 3.f;  // a mean far from zero exercises the two-pass variance
  std::vector<float> rm(c, 0.5f), rv(c, 2.f), sm(c), si(c), y(sz);
  const float eps = 1e-5f, mom = 0.1f;
  batchnorm_forward_train(n, c, hw, x.data(), gamma.data(), beta.data(), eps, mom, rm.data(), rv.data(), sm.data(),
                          si.data(), y.data());
  std::vector<double> ry(sz), rrm(c), rrv(c), rsm(c), rsi(c);
  const double m = static_cast<double>(n) * hw;
  for (int ch = 0; ch < c; ++ch) {
    double s = 0, s2 = 0;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < hw; ++j) s += x[(static_cast<size_t>(i) * c + ch) * hw + j];
    const double mean = s / m;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < hw; ++j) {
        const double d = x[(static_cast<size_t>(i) * c + ch) * hw + j] - mean;
        s2 += d * d;
      }
    const double var = s2 / m, invstd = 1.0 / std::sqrt(var + eps);
    rsm[ch] = mean;
    rsi[ch] = invstd;
    rrm[ch] = 0.9 * 0.5 + 0.1 * mean;
    rrv[ch] = 0.9 * 2.0 + 0.1 * var * m / (m - 1);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < hw; ++j) {
        const size_t k = (static_cast<size_t>(i) * c + ch) * hw + j;
        ry[k] = (x[k] - mean) * invstd * gamma[ch] + beta[ch];
      }
  }
  expect_close("bn y", y, ry, 1e-5, 1e-5);
  expect_close("bn save_mean", sm, rsm, 1e-6, 1e-6);
  expect_close("bn save_invstd", si, rsi, 1e-6, 1e-6);
  expect_close("bn running_mean", rm, rrm, 1e-6, 1e-6);
  expect_close("bn running_var", rv, rrv, 1e-6, 1e-6);

  std::vector<float> ye(sz);
  batchnorm_forward_eval(n, c, hw, x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), eps, ye.data());
  std::vector<double> rye(sz);
  for (size_t k = 0; k < sz; ++k) {
    const int ch = static_cast<int>((k / hw) % c);
    rye[k] = (x[k] - static_cast<double>(rm[ch])) / std::sqrt(static_cast<double>(rv[ch]) + eps) * gamma[ch] +
             beta[ch];
  }
  expect_close("bn eval y", ye, rye, 1e-5, 1e-5);
}

// The backward formulas written out in double from the definition (independent of the op's code).
TEST_P(BatchNormShapes, TrainBackwardMatchesNaive) {
  const int n = GetParam().n, c = GetParam().c, hw = GetParam().hw;
  const size_t sz = static_cast<size_t>(n) * c * hw;
  auto x = randn(sz, 35, 1.5f), gamma = randn(c, 36), beta = randn(c, 37), dy = randn(sz, 38);
  std::vector<float> rm(c), rv(c), sm(c), si(c), y(sz), dx(sz), dg(c), db(c);
  batchnorm_forward_train(n, c, hw, x.data(), gamma.data(), beta.data(), 1e-5f, 0.1f, rm.data(), rv.data(),
                          sm.data(), si.data(), y.data());
  batchnorm_backward(n, c, hw, x.data(), dy.data(), gamma.data(), sm.data(), si.data(), dx.data(), dg.data(),
                     db.data());
  std::vector<double> rdx(sz), rdg(c), rdb(c);
  const double m = static_cast<double>(n) * hw;
  auto at = [&](int i, int ch, int j) { return (static_cast<size_t>(i) * c + ch) * hw + j; };
  for (int ch = 0; ch < c; ++ch) {
    double mean = 0, var = 0, sdy = 0, sdyxh = 0;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < hw; ++j) mean += x[at(i, ch, j)] / m;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < hw; ++j) var += (x[at(i, ch, j)] - mean) * (x[at(i, ch, j)] - mean) / m;
    const double invstd = 1.0 / std::sqrt(var + 1e-5);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < hw; ++j) {
        sdy += dy[at(i, ch, j)];
        sdyxh += dy[at(i, ch, j)] * (x[at(i, ch, j)] - mean) * invstd;
      }
    rdg[ch] = sdyxh;
    rdb[ch] = sdy;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < hw; ++j) {
        const double xh = (x[at(i, ch, j)] - mean) * invstd;
        rdx[at(i, ch, j)] = gamma[ch] * invstd * (dy[at(i, ch, j)] - sdy / m - xh * sdyxh / m);
      }
  }
  expect_close("bn dx", dx, rdx, 1e-5, 1e-4);
  expect_close("bn dgamma", dg, rdg, 1e-4, 1e-5);
  expect_close("bn dbeta", db, rdb, 1e-4, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, BatchNormShapes, ::testing::ValuesIn(kBnShapes));

TEST(BatchNorm, TrainBackwardMatchesFiniteDifferences) {
  for (const BnShape& shape : std::vector<BnShape>{{2, 3, 5 * 4}, {6, 4, 1}, {3, 5, 4}}) {
    const int n = shape.n, c = shape.c, hw = shape.hw;
    SCOPED_TRACE("n" + std::to_string(n) + " c" + std::to_string(c) + " hw" + std::to_string(hw));
    const size_t sz = static_cast<size_t>(n) * c * hw;
    auto x = randn(sz, 41), gamma = randn(c, 42), beta = randn(c, 43), r = randn(sz, 44);
    std::vector<float> rm(c), rv(c), sm(c), si(c), y(sz), dx(sz), dg(c), db(c);
    const float eps = 1e-5f;
    batchnorm_forward_train(n, c, hw, x.data(), gamma.data(), beta.data(), eps, 0.1f, rm.data(), rv.data(), sm.data(),
                            si.data(), y.data());
    batchnorm_backward(n, c, hw, x.data(), r.data(), gamma.data(), sm.data(), si.data(), dx.data(), dg.data(),
                       db.data());
    auto objective = [&] {
      batchnorm_forward_train(n, c, hw, x.data(), gamma.data(), beta.data(), eps, 0.1f, rm.data(), rv.data(),
                              sm.data(), si.data(), y.data());
      return dot(y, r);
    };
    // Nonlinear in x: central difference error O(eps^2); fp32 rounding ~1e-7 * |J| / eps.
    check_fd("bn dx", x, dx, objective, 1e-2f, 5e-3, 1e-2, 120);
    check_fd("bn dgamma", gamma, dg, objective, 1e-2f, 2e-3, 1e-3);
    check_fd("bn dbeta", beta, db, objective, 1e-2f, 2e-3, 1e-3);
  }
}

TEST(BatchNorm, RejectsSingleValuePerChannel) {
  float x[2] = {1, 2}, g[2] = {1, 1}, b[2] = {0, 0}, s[2], t[2], y[2], rm[2], rv[2];
  EXPECT_THROW(batchnorm_forward_train(1, 2, 1, x, g, b, 1e-5f, 0.1f, rm, rv, s, t, y), ddp::Error);
}

// ---- pointwise ---------------------------------------------------------------------------------------------

TEST(Pointwise, ReluForwardBackwardAndFiniteDifferences) {
  const size_t sz = 1000;
  auto x = randn(sz, 51), r = randn(sz, 52);
  for (auto& v : x)
    if (std::fabs(v) < 0.05f) v = v < 0 ? -0.05f : 0.05f;  // keep the kink farther than eps away
  std::vector<float> y(sz), dx(sz);
  relu_forward(static_cast<int64_t>(sz), x.data(), y.data());
  for (size_t i = 0; i < sz; ++i) ASSERT_EQ(y[i], x[i] > 0 ? x[i] : 0.f) << i;
  relu_backward(static_cast<int64_t>(sz), y.data(), r.data(), dx.data());
  auto objective = [&] {
    relu_forward(static_cast<int64_t>(sz), x.data(), y.data());
    return dot(y, r);
  };
  check_fd("relu dx", x, dx, objective, 1e-2f, 1e-3, 1e-3, 200);
  // In place, and large enough to run threaded.
  auto big = randn(1 << 18, 53), copy = big;
  relu_forward(static_cast<int64_t>(big.size()), big.data(), big.data());
  for (size_t i = 0; i < big.size(); ++i) ASSERT_EQ(big[i], std::max(copy[i], 0.f)) << i;
  auto g = randn(big.size(), 54), gcopy = g;
  relu_backward(static_cast<int64_t>(big.size()), big.data(), g.data(), g.data());
  for (size_t i = 0; i < big.size(); ++i) ASSERT_EQ(g[i], copy[i] > 0 ? gcopy[i] : 0.f) << i;
}

TEST(Pointwise, AddAndFiniteDifferences) {
  const size_t sz = 777;
  auto a = randn(sz, 61), b = randn(sz, 62), r = randn(sz, 63);
  std::vector<float> y(sz);
  add(static_cast<int64_t>(sz), a.data(), b.data(), y.data());
  for (size_t i = 0; i < sz; ++i) ASSERT_EQ(y[i], a[i] + b[i]);
  // d(sum((a + b) r))/da = d/db = r
  auto objective = [&] {
    add(static_cast<int64_t>(sz), a.data(), b.data(), y.data());
    return dot(y, r);
  };
  check_fd("add da", a, r, objective, 1e-2f, 1e-3, 1e-3);
  check_fd("add db", b, r, objective, 1e-2f, 1e-3, 1e-3);
  add(static_cast<int64_t>(sz), a.data(), b.data(), y.data());
  add(static_cast<int64_t>(sz), a.data(), b.data(), a.data());
  for (size_t i = 0; i < sz; ++i) ASSERT_EQ(a[i], y[i]);
}

// ---- pooling -----------------------------------------------------------------------------------------------

TEST(Pooling, MaxPoolMatchesNaiveAndFiniteDifferences) {
  for (auto [h, w] : {std::pair{9, 7}, std::pair{8, 8}, std::pair{5, 6}}) {
    const int n = 2, c = 3, kernel = 3, stride = 2, pad = 1;
    const int oh = (h + 2 * pad - kernel) / stride + 1, ow = (w + 2 * pad - kernel) / stride + 1;
    const size_t xs = static_cast<size_t>(n) * c * h * w, ys = static_cast<size_t>(n) * c * oh * ow;
    // Distinct values 0.01 apart so a step of eps never reorders a window.
    std::vector<float> x(xs);
    std::iota(x.begin(), x.end(), 0.f);
    std::shuffle(x.begin(), x.end(), std::mt19937(71));
    for (auto& v : x) v = v * 0.01f - 1.f;
    auto r = randn(ys, 72);
    std::vector<float> y(ys), dx(xs);
    std::vector<int32_t> am(ys);
    maxpool2d_forward(n, c, h, w, kernel, stride, pad, x.data(), y.data(), am.data());
    for (int pl = 0; pl < n * c; ++pl)
      for (int i = 0; i < oh; ++i)
        for (int j = 0; j < ow; ++j) {
          float best = -std::numeric_limits<float>::infinity();
          int arg = -1;
          for (int a = i * stride - pad; a < i * stride - pad + kernel; ++a)
            for (int b = j * stride - pad; b < j * stride - pad + kernel; ++b)
              if (a >= 0 && a < h && b >= 0 && b < w && x[static_cast<size_t>(pl) * h * w + a * w + b] > best) {
                best = x[static_cast<size_t>(pl) * h * w + a * w + b];
                arg = a * w + b;
              }
          const size_t k = (static_cast<size_t>(pl) * oh + i) * ow + j;
          ASSERT_EQ(y[k], best) << h << "x" << w << " output " << k;
          ASSERT_EQ(am[k], arg) << h << "x" << w << " output " << k;
        }
    maxpool2d_backward(n, c, h, w, kernel, stride, pad, r.data(), am.data(), dx.data());
    auto objective = [&] {
      maxpool2d_forward(n, c, h, w, kernel, stride, pad, x.data(), y.data(), am.data());
      return dot(y, r);
    };
    check_fd("maxpool dx " + std::to_string(h) + "x" + std::to_string(w), x, dx, objective, 1e-3f, 1e-3, 1e-3,
             100000);
  }
}

TEST(Pooling, MaxPoolNaNWinsAndFirstNaNIsKept) {
  // Wide enough rows for the vector path's full and partial 16-lane chunks.
  const int n = 1, c = 2, h = 7, w = 41, kernel = 3, stride = 2, pad = 1;
  const int oh = (h + 2 * pad - kernel) / stride + 1, ow = (w + 2 * pad - kernel) / stride + 1;
  auto x = randn(static_cast<size_t>(n) * c * h * w, 75);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t k : {size_t{3}, size_t{44}, size_t{45}, size_t{100}, size_t{290}, size_t{300}}) x[k] = nan;
  std::vector<float> y(static_cast<size_t>(n) * c * oh * ow);
  std::vector<int32_t> am(y.size());
  maxpool2d_forward(n, c, h, w, kernel, stride, pad, x.data(), y.data(), am.data());
  for (int pl = 0; pl < n * c; ++pl)
    for (int i = 0; i < oh; ++i)
      for (int j = 0; j < ow; ++j) {
        float best = -std::numeric_limits<float>::infinity();
        int arg = std::max(0, i * stride - pad) * w + std::max(0, j * stride - pad);
        bool found_nan = false;
        for (int a = std::max(0, i * stride - pad); a < std::min(h, i * stride - pad + kernel) && !found_nan; ++a)
          for (int b = std::max(0, j * stride - pad); b < std::min(w, j * stride - pad + kernel); ++b) {
            const float v = x[static_cast<size_t>(pl) * h * w + a * w + b];
            if (std::isnan(v)) {
              best = v;
              arg = a * w + b;
              found_nan = true;
              break;
            }
            if (v > best) {
              best = v;
              arg = a * w + b;
            }
          }
        const size_t k = (static_cast<size_t>(pl) * oh + i) * ow + j;
        if (found_nan)
          ASSERT_TRUE(std::isnan(y[k])) << "output " << k;
        else
          ASSERT_EQ(y[k], best) << "output " << k;
        ASSERT_EQ(am[k], arg) << "output " << k;
      }
  std::vector<float> r = {-1.f, nan, 2.f, -0.f};
  relu_forward(4, r.data(), r.data());
  EXPECT_EQ(r[0], 0.f);
  EXPECT_TRUE(std::isnan(r[1])) << "ReLU must propagate NaN";
  EXPECT_EQ(r[2], 2.f);
}

TEST(Pooling, MaxPoolTiesPickFirstIndex) {
  std::vector<float> x(16, 1.f), y(4);
  std::vector<int32_t> am(4);
  maxpool2d_forward(1, 1, 4, 4, 3, 2, 1, x.data(), y.data(), am.data());
  // Window origins clipped at the top-left corner: (0,0), (0,1), (1,0), (1,1).
  EXPECT_EQ(am, (std::vector<int32_t>{0, 1, 4, 5}));
}

TEST(Pooling, GlobalAvgPoolMatchesNaiveAndFiniteDifferences) {
  const int n = 3, c = 4, hw = 7 * 5;
  const size_t xs = static_cast<size_t>(n) * c * hw;
  auto x = randn(xs, 81), r = randn(static_cast<size_t>(n) * c, 82);
  std::vector<float> y(static_cast<size_t>(n) * c), dx(xs);
  global_avgpool_forward(n, c, hw, x.data(), y.data());
  std::vector<double> ry(y.size());
  for (size_t pl = 0; pl < y.size(); ++pl) {
    double s = 0;
    for (int j = 0; j < hw; ++j) s += x[pl * hw + j];
    ry[pl] = s / hw;
  }
  expect_close("avgpool y", y, ry, 1e-6, 1e-6);
  global_avgpool_backward(n, c, hw, r.data(), dx.data());
  auto objective = [&] {
    global_avgpool_forward(n, c, hw, x.data(), y.data());
    return dot(y, r);
  };
  check_fd("avgpool dx", x, dx, objective, 1e-2f, 1e-3, 1e-3);
}

// ---- linear ------------------------------------------------------------------------------------------------

TEST(Linear, MatchesNaiveAndFiniteDifferences) {
  // The larger two run ddp::cpu::sgemm split over threads, by columns and (out > in) by rows.
  for (auto [n, in, out] : {std::tuple{5, 7, 3}, std::tuple{64, 512, 100}, std::tuple{32, 64, 1000}}) {
    auto x = randn(static_cast<size_t>(n) * in, 91), w = randn(static_cast<size_t>(out) * in, 92, 0.1f),
         b = randn(out, 93), r = randn(static_cast<size_t>(n) * out, 94);
    std::vector<float> y(static_cast<size_t>(n) * out), dx(x.size()), dw(w.size()), db(out);
    linear_forward(n, in, out, x.data(), w.data(), b.data(), y.data());
    std::vector<double> ry(y.size());
    for (int i = 0; i < n; ++i)
      for (int o = 0; o < out; ++o) {
        double s = b[o];
        for (int j = 0; j < in; ++j) s += static_cast<double>(x[static_cast<size_t>(i) * in + j]) * w[static_cast<size_t>(o) * in + j];
        ry[static_cast<size_t>(i) * out + o] = s;
      }
    expect_close("linear y", y, ry, 1e-4, 1e-4);
    linear_backward(n, in, out, x.data(), w.data(), r.data(), dx.data(), dw.data(), db.data());
    auto objective = [&] {
      linear_forward(n, in, out, x.data(), w.data(), b.data(), y.data());
      return dot(y, r);
    };
    check_fd("linear dx", x, dx, objective, 1e-2f, 2e-3, 2e-3);
    check_fd("linear dw", w, dw, objective, 1e-2f, 2e-3, 2e-3);
    check_fd("linear db", b, db, objective, 1e-2f, 2e-3, 2e-3);
    std::vector<float> dw2(w.size());
    linear_backward(n, in, out, x.data(), w.data(), r.data(), nullptr, dw2.data(), db.data());
    EXPECT_EQ(dw2, dw) << "dx = nullptr changed dw";
  }
}

// ---- loss --------------------------------------------------------------------------------------------------

class CrossEntropy : public ::testing::TestWithParam<float> {};

TEST_P(CrossEntropy, MatchesNaiveAndFiniteDifferences) {
  const float e = GetParam();
  const int n = 6, classes = 11;
  auto z = randn(static_cast<size_t>(n) * classes, 101, 3.f);
  std::vector<int32_t> labels = {0, 10, 3, 3, 7, 1};
  std::vector<float> probs(z.size()), dz(z.size());
  const float loss = softmax_cross_entropy_forward(n, classes, z.data(), labels.data(), e, probs.data());
  double ref = 0.0;
  for (int i = 0; i < n; ++i) {
    double mx = -1e30, se = 0.0;
    for (int k = 0; k < classes; ++k) mx = std::max(mx, static_cast<double>(z[i * classes + k]));
    for (int k = 0; k < classes; ++k) se += std::exp(z[i * classes + k] - mx);
    for (int k = 0; k < classes; ++k) {
      const double nlp = -(z[i * classes + k] - mx - std::log(se));
      ref += (e / classes) * nlp + (k == labels[i] ? (1.0 - e) * nlp : 0.0);
    }
  }
  ref /= n;
  EXPECT_NEAR(loss, ref, 1e-6 + 1e-6 * std::fabs(ref));
  const float scale = 3.f;
  softmax_cross_entropy_backward(n, classes, probs.data(), labels.data(), e, scale, dz.data());
  std::vector<float> scratch(z.size());
  auto objective = [&] {
    return scale * static_cast<double>(
                       softmax_cross_entropy_forward(n, classes, z.data(), labels.data(), e, scratch.data()));
  };
  check_fd("ce dlogits", z, dz, objective, 1e-2f, 1e-4, 1e-2, 100000);
}

INSTANTIATE_TEST_SUITE_P(Smoothing, CrossEntropy, ::testing::Values(0.f, 0.1f));

TEST(CrossEntropyInput, LabelOutOfRangeNamesIndex) {
  std::vector<float> z(4 * 5, 0.f), probs(z.size());
  std::vector<int32_t> labels = {0, 4, 2, 5};
  try {
    softmax_cross_entropy_forward(4, 5, z.data(), labels.data(), 0.f, probs.data());
    FAIL() << "label 5 of 5 classes was accepted";
  } catch (const ddp::Error& err) {
    const std::string msg = err.what();
    EXPECT_NE(msg.find("labels[3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("5"), std::string::npos) << msg;
  }
  labels[3] = -1;
  EXPECT_THROW(softmax_cross_entropy_forward(4, 5, z.data(), labels.data(), 0.f, probs.data()), ddp::Error);
}

// ---- the label's rank for top-1/top-5 -----------------------------------------------------------
// Reference: the label's position in the row sorted descending by a sort stable by class index
// (std::stable_sort), kUnranked where the row holds a NaN or a +inf (its softmax is undefined).
template <class T>
int32_t sorted_position(const std::vector<T>& row, int32_t label) {
  if (std::any_of(row.begin(), row.end(), [](T v) { return std::isnan(v) || v == std::numeric_limits<T>::infinity(); }))
    return kUnranked;
  std::vector<int> idx(row.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return row[a] > row[b]; });
  return static_cast<int32_t>(std::find(idx.begin(), idx.end(), label) - idx.begin());
}

TEST(LabelRank, TiesGoToTheLowestClassIndex) {
  const std::vector<float> equal(10, 0.25f);  // a zero fc: every logit the bias, here all equal
  for (int32_t y = 0; y < 10; ++y) EXPECT_EQ(label_rank(equal.data(), 10, y), y);
  // Sorted: 1 2 4 5 6 (the 3s) | 7 | 0 | 3.
  const std::vector<float> row = {1, 3, 3, 0, 3, 3, 3, 2};
  const int32_t want[8] = {6, 0, 1, 7, 2, 3, 4, 5};
  for (int32_t y = 0; y < 8; ++y) EXPECT_EQ(label_rank(row.data(), 8, y), want[y]) << "label " << y;
  // -inf is an ordered value (p = 0), tied as any; -0 ties +0. Sorted: 1 3 2 4 0 5.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> infs = {-inf, 2, -0.0f, 2, 0.0f, -inf};
  const int32_t want_inf[6] = {4, 0, 2, 1, 3, 5};
  for (int32_t y = 0; y < 6; ++y) EXPECT_EQ(label_rank(infs.data(), 6, y), want_inf[y]) << "label " << y;
}

TEST(LabelRank, ARowWithANanOrAPlusInfIsUnranked) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<float> row = {5, 1, 2, 3, 4, 0, 0};
  EXPECT_EQ(label_rank(row.data(), 7, 0), 0);
  for (const float bad : {nan, inf}) {
    row[6] = bad;  // another class's logit: the label's is still the largest number, yet unranked
    for (int32_t y = 0; y < 7; ++y) EXPECT_EQ(label_rank(row.data(), 7, y), kUnranked) << "label " << y << ", " << bad;
    row[6] = 0;
    row[0] = bad;  // the label's own
    EXPECT_EQ(label_rank(row.data(), 7, 0), kUnranked) << bad;
    row[0] = 5;
  }
  const std::vector<double> all(7, std::numeric_limits<double>::quiet_NaN());
  for (int32_t y = 0; y < 7; ++y) EXPECT_EQ(label_rank(all.data(), 7, y), kUnranked) << "label " << y;
  EXPECT_GE(kUnranked, 5) << "counted in neither top-1 nor top-5";
}

TEST(LabelRank, MatchesAStableDescendingSortOnRowsWithManyTies) {
  // Logits from a few values only (ties everywhere; -inf among them), some rows with a NaN or a +inf,
  // float and double.
  ddp::Rng rng(31, ddp::rng_stream::kTest);
  const int n = 400, classes = 23;
  std::vector<float> logits(n * classes);
  std::vector<int32_t> labels(n), ranks(n);
  for (int i = 0; i < n; ++i) {
    for (int k = 0; k < classes; ++k) {
      const uint32_t v = rng.below(6);
      logits[i * classes + k] = v == 5 ? -std::numeric_limits<float>::infinity() : static_cast<float>(v) - 2.0f;
    }
    if (i % 10 == 3) logits[i * classes + rng.below(classes)] = std::numeric_limits<float>::quiet_NaN();
    if (i % 10 == 7) logits[i * classes + rng.below(classes)] = std::numeric_limits<float>::infinity();
    labels[i] = static_cast<int32_t>(rng.below(classes));
  }
  label_ranks(n, classes, logits.data(), labels.data(), ranks.data());
  int unranked = 0, tied_first = 0;
  for (int i = 0; i < n; ++i) {
    const std::vector<float> row(logits.begin() + i * classes, logits.begin() + (i + 1) * classes);
    const std::vector<double> row_d(row.begin(), row.end());
    const int32_t want = sorted_position(row, labels[i]);
    EXPECT_EQ(ranks[i], want) << "row " << i;
    EXPECT_EQ(label_rank(row_d.data(), classes, labels[i]), want) << "row " << i << " (double)";
    unranked += want == kUnranked;
    tied_first += want > 0 && want != kUnranked && row[labels[i]] == *std::max_element(row.begin(), row.end());
  }
  EXPECT_EQ(unranked, 2 * n / 10);
  EXPECT_GT(tied_first, 20) << "too few labels tied with the maximum to test the rule";
  labels[7] = classes;
  EXPECT_THROW(label_ranks(n, classes, logits.data(), labels.data(), ranks.data()), ddp::Error);
}

}  // namespace
}  // namespace ddp::cpu::test
