// Every CUDA op of the backend against the CPU reference ops (ddp/backend/cpu/ops.h) on fresh
// random inputs, outputs poisoned with NaN first. Inputs are rounded to the dtype under test before
// the CPU sees them, so only the GPU's arithmetic and output rounding are judged.
//
// Tolerances (|got - ref| <= atol + rtol*|ref|, atol = a * rms(ref)):
//   fp32, TF32 off: rtol 1e-5, a 1e-5 (BN backward dx: a 1e-4, its terms cancel)
//   TF32 convs:     rtol 2e-3, a 5e-3 (10-bit mantissa inputs, possibly truncated: a systematic
//                   ~1e-3 relative shrink plus a random ~8e-4 * rms per output, 4.5 sigma over 50k outputs)
//   fp16:           rtol 1e-2, a 1e-2 (output rounding 2^-11 on fp32 accumulation; reduced-precision
//                   split-K reductions, which cuDNN may pick as PyTorch allows, stay well inside)
//   bf16:           rtol 2e-2, a 2e-2 (8-bit mantissa: output rounding 2^-9, plus split-K partials)
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cuda_test_util.h"
#include "ddp/backend/cpu/ops.h"
#include "ddp/backend/cuda/conv.h"
#include "ddp/backend/cuda/linear.h"
#include "ddp/backend/cuda/ops.h"

namespace ddp::cuda::test {
namespace {

struct Tol {
  double rtol, a;
};
Tol tol_for(DType dt) {
  return dt == DType::F32 ? Tol{1e-5, 1e-5} : dt == DType::F16 ? Tol{1e-2, 1e-2} : Tol{2e-2, 2e-2};
}

// Every CUDA op test: skip without a GPU, one stream per test, drained before it is destroyed.
class CudaStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DDP_REQUIRE_GPU();
    CUDA_CHECK(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    if (stream_) {
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      CUDA_CHECK(cudaStreamDestroy(stream_));
    }
  }
  cudaStream_t stream_ = nullptr;
};

class CudaOps : public CudaStreamTest, public ::testing::WithParamInterface<DType> {};

// ---- convolutions: one case per ResNet18 conv shape class --------------------------------------
struct ConvCase {
  const char* name;
  int n, c, h, w, k, r, s, stride, pad;
};
const ConvCase kConvCases[] = {
    {"stem_7x7_s2_c8", 2, 8, 32, 32, 64, 7, 7, 2, 3},   // conv1 (3 channels padded to 8)
    {"3x3_s1_64", 2, 64, 14, 14, 64, 3, 3, 1, 1},        // layer1
    {"3x3_s2_64_128", 2, 64, 14, 14, 128, 3, 3, 2, 1},   // layerN.0.conv1
    {"1x1_s2_64_128", 2, 64, 14, 14, 128, 1, 1, 2, 0},   // downsample
    {"3x3_s2_256_512_odd", 2, 256, 7, 7, 512, 3, 3, 2, 1},
    {"3x3_s1_512", 2, 512, 7, 7, 512, 3, 3, 1, 1},       // layer4
};

void run_conv_case(const ConvCase& cc, DType dt, bool tf32, Tol tol, cudaStream_t stream) {
  SCOPED_TRACE(std::string(cc.name) + " " + dtype_name(dt) + (tf32 ? " tf32" : ""));
  {
    ConvEngine eng(stream, tf32);
    ConvShape p{cc.n, cc.c, cc.h, cc.w, cc.k, cc.r, cc.s, cc.stride, cc.pad, dt};
    cpu::Conv2dShape q;
    q.n = cc.n; q.c = cc.c; q.h = cc.h; q.w = cc.w; q.k = cc.k; q.r = cc.r; q.s = cc.s; q.stride = cc.stride; q.pad = cc.pad;
    const int oh = p.out_h(), ow = p.out_w();
    const size_t nx = static_cast<size_t>(cc.n) * cc.h * cc.w * cc.c, nw = static_cast<size_t>(cc.k) * cc.r * cc.s * cc.c,
                 ny = static_cast<size_t>(cc.n) * oh * ow * cc.k;
    auto x = random_vec(nx, 11, dt);
    auto wt = random_vec(nw, 12, dt, -0.2f, 0.2f);
    auto dy = random_vec(ny, 13, dt);
    Dev dx_(x, dt), dw_(wt, dt), ddy(dy, dt), dy_out(ny, dt), ddx(nx, dt), ddw(nw, dt);

    const auto x_c = nhwc_to_nchw(x, cc.n, cc.h, cc.w, cc.c);
    const auto w_c = nhwc_to_nchw(wt, cc.k, cc.r, cc.s, cc.c);
    const auto dy_c = nhwc_to_nchw(dy, cc.n, oh, ow, cc.k);

    eng.forward(p, dx_.get(), dw_.get(), dy_out.get());
    std::vector<float> y_ref(ny);
    cpu::conv2d_forward(q, x_c.data(), w_c.data(), y_ref.data());
    expect_close("conv fprop y", dy_out.download(), nchw_to_nhwc(y_ref, cc.n, oh, ow, cc.k), tol.rtol, tol.a);

    eng.backward_data(p, ddy.get(), dw_.get(), ddx.get());
    std::vector<float> dx_ref(nx);
    cpu::conv2d_backward_data(q, dy_c.data(), w_c.data(), dx_ref.data());
    expect_close("conv dgrad dx", ddx.download(), nchw_to_nhwc(dx_ref, cc.n, cc.h, cc.w, cc.c), tol.rtol, tol.a);

    eng.backward_weight(p, dx_.get(), ddy.get(), ddw.get());
    std::vector<float> dw_ref(nw);
    cpu::conv2d_backward_weight(q, x_c.data(), dy_c.data(), dw_ref.data());
    expect_close("conv wgrad dw", ddw.download(), nchw_to_nhwc(dw_ref, cc.k, cc.r, cc.s, cc.c), tol.rtol, tol.a);
    EXPECT_EQ(eng.plan_count(), 3u);
    // Second run reuses the cached plans (and must give the same answer).
    ddw.poison();
    eng.backward_weight(p, dx_.get(), ddy.get(), ddw.get());
    expect_close("conv wgrad dw (cached plan)", ddw.download(), nchw_to_nhwc(dw_ref, cc.k, cc.r, cc.s, cc.c), tol.rtol, tol.a);
    EXPECT_EQ(eng.plan_count(), 3u);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
}

TEST_P(CudaOps, ConvAllShapeClasses) {
  Tol tol = tol_for(GetParam());
  // Strict fp32 may still pick Winograd or FFT engines (PyTorch allows them too): their transforms
  // cost a few 1e-6 of the output scale, hence atol 3e-5 * rms for fp32 convs.
  if (GetParam() == DType::F32) tol.a = 3e-5;
  for (const auto& cc : kConvCases) run_conv_case(cc, GetParam(), false, tol, stream_);
}

TEST_F(CudaOps, ConvTf32) {
  for (const auto& cc : kConvCases) run_conv_case(cc, DType::F32, true, Tol{2e-3, 5e-3}, stream_);
}

// Plans are built once per process and device and shared by every engine (each model has one):
// a second engine running the same conv builds nothing and gets the same result; a different
// numerics setting (strict fp32) is a plan of its own.
TEST_F(CudaOps, ConvPlansSharedAcrossEngines) {
  ConvShape p{2, 64, 9, 11, 64, 3, 3, 1, 1, DType::F16};  // a shape no other test uses
  const size_t nx = size_t{2} * 9 * 11 * 64, nw = size_t{64} * 3 * 3 * 64;
  Dev x(random_vec(nx, 21, DType::F16), DType::F16), w(random_vec(nw, 22, DType::F16, -0.2f, 0.2f), DType::F16);
  Dev y1(nx, DType::F16), y2(nx, DType::F16);
  const size_t before = ConvEngine::plans_built();
  {
    ConvEngine a(stream_, true);
    a.forward(p, x.get(), w.get(), y1.get());
    EXPECT_EQ(a.plan_count(), 1u);
    EXPECT_EQ(ConvEngine::plans_built(), before + 1);
  }
  ConvEngine b(stream_, false);  // tf32 off does not matter for fp16 convs: same plan
  b.forward(p, x.get(), w.get(), y2.get());
  EXPECT_EQ(b.plan_count(), 1u);
  EXPECT_EQ(ConvEngine::plans_built(), before + 1) << "the second engine rebuilt a plan the first one built";
  // The same plan on the same inputs (fp16 tolerance, in case the engine reduces split-K partials in any order).
  expect_close("conv fprop y (shared plan)", y2.download(), y1.download(), 1e-2, 1e-2);

  ConvShape q = p;
  q.dtype = DType::F32;
  Dev xf(random_vec(nx, 23, DType::F32)), wf(random_vec(nw, 24, DType::F32, -0.2f, 0.2f)), yf(nx, DType::F32);
  ConvEngine strict(stream_, false), tf32(stream_, true);
  strict.forward(q, xf.get(), wf.get(), yf.get());
  tf32.forward(q, xf.get(), wf.get(), yf.get());
  EXPECT_EQ(ConvEngine::plans_built(), before + 3) << "strict fp32 and TF32 need plans of their own";
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// Deterministic engines (ModelConfig::deterministic, --deterministic): each op run five times on the
// same inputs gives the same bits every time, for the backward shapes of the ResNet18 the model tests
// train at batch 4 and 64 px (where the default engines for strict fp32 were seen to differ from run
// to run on an H200, 2026-11-29), in every dtype. Whether the default engines differ is printed, not
// judged: cuDNN promises nothing either way. A deterministic plan is a plan of its own.
TEST_F(CudaOps, ConvDeterministicEnginesRepeatBitwise) {
  const ConvCase cases[] = {{"stem_64px", 4, 8, 64, 64, 64, 7, 7, 2, 3},
                            {"layer1_64px", 4, 64, 16, 16, 64, 3, 3, 1, 1},
                            {"layer3_64px", 4, 256, 4, 4, 256, 3, 3, 1, 1},
                            {"layer4_64px", 4, 512, 2, 2, 512, 3, 3, 1, 1},
                            {"layer4_down_64px", 4, 256, 4, 4, 512, 1, 1, 2, 0}};
  int default_differed = 0;
  for (const DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (const auto& cc : cases) {
      SCOPED_TRACE(std::string(cc.name) + " " + dtype_name(dt));
      const ConvShape p{cc.n, cc.c, cc.h, cc.w, cc.k, cc.r, cc.s, cc.stride, cc.pad, dt};
      const size_t nx = size_t(cc.n) * cc.h * cc.w * cc.c, nw = size_t(cc.k) * cc.r * cc.s * cc.c,
                   ny = size_t(cc.n) * p.out_h() * p.out_w() * cc.k;
      Dev x(random_vec(nx, 31, dt), dt), w(random_vec(nw, 32, dt, -0.2f, 0.2f), dt), dy(random_vec(ny, 33, dt), dt);
      Dev dw(nw, dt), dx(nx, dt);
      for (const bool deterministic : {true, false}) {
        ConvEngine eng(stream_, /*allow_tf32=*/false, /*autotune=*/false, deterministic);
        std::vector<float> dw0, dx0;
        bool same = true;
        for (int rep = 0; rep < 5; ++rep) {
          dw.poison();
          dx.poison();
          eng.backward_weight(p, x.get(), dy.get(), dw.get());
          eng.backward_data(p, dy.get(), w.get(), dx.get());
          auto a = dw.download(), b = dx.download();
          for (float v : a) ASSERT_TRUE(std::isfinite(v)) << "an unwritten (NaN-poisoned) weight gradient";
          for (float v : b) ASSERT_TRUE(std::isfinite(v)) << "an unwritten (NaN-poisoned) data gradient";
          if (rep == 0) {
            dw0 = std::move(a);
            dx0 = std::move(b);
            continue;
          }
          // Bitwise: memcmp would also do, but a count says how far apart two runs were.
          size_t diff = 0;
          for (size_t i = 0; i < a.size(); ++i) diff += a[i] != dw0[i];
          for (size_t i = 0; i < b.size(); ++i) diff += b[i] != dx0[i];
          if (deterministic) {
            EXPECT_EQ(diff, 0u) << "run " << rep << " differs from run 0 in " << diff << " elements";
          }
          same = same && diff == 0;
        }
        if (!deterministic && !same) {
          ++default_differed;
          std::printf("[ info     ] %s %s: the default engines gave other bits on a rerun\n", cc.name, dtype_name(dt));
        }
      }
    }
  }
  std::printf("[ info     ] default (non-deterministic-allowed) engines differed on a rerun in %d of 15 cases\n",
              default_differed);
  const size_t before = ConvEngine::plans_built();
  ConvShape q{4, 64, 10, 10, 64, 3, 3, 1, 1, DType::F16};  // a shape no other test uses
  Dev x(random_vec(size_t(4) * 10 * 10 * 64, 34, DType::F16), DType::F16), w(size_t(64) * 9 * 64, DType::F16);
  Dev y(random_vec(size_t(4) * 10 * 10 * 64, 35, DType::F16), DType::F16);
  ConvEngine plain(stream_, true), det(stream_, true, false, true);
  plain.backward_weight(q, x.get(), y.get(), w.get());
  det.backward_weight(q, x.get(), y.get(), w.get());
  EXPECT_EQ(ConvEngine::plans_built(), before + 2) << "a deterministic plan must not be shared with the default one";
}

// ---- batch norm ---------------------------------------------------------------------------------
struct BnCase {
  int n, h, w, c;
};
// 256 rows and less (one row group), 8-channel and scalar paths; 1024 rows (4 row groups, the partial
// sums of several blocks combined); 270,400 rows (over the 1024-group cap: each group loops further).
const BnCase kBnCases[] = {{4, 8, 8, 64}, {3, 5, 5, 80}, {2, 7, 7, 512}, {4, 16, 16, 64}, {1, 520, 520, 8}};

TEST_P(CudaOps, BatchNormTrainForwardAddRelu) {
  const DType dt = GetParam();
  const Tol tol = tol_for(dt);
  for (const auto& bc : kBnCases) {
    const int hw = bc.h * bc.w, c = bc.c;
    const int64_t rows = static_cast<int64_t>(bc.n) * hw;
    const size_t cnt = rows * c;
    auto x = random_vec(cnt, 21, dt, 1.0f, 3.0f);  // offset mean: exercises the shifted sums
    auto res = random_vec(cnt, 22, dt);
    auto gamma = random_vec(c, 23, DType::F32, 0.5f, 1.5f);
    auto beta = random_vec(c, 24, DType::F32);
    auto rm = random_vec(c, 25, DType::F32), rv = random_vec(c, 26, DType::F32, 0.5f, 2.0f);
    Dev d_x(x, dt), d_res(res, dt), d_g(gamma), d_b(beta), d_rm(rm), d_rv(rv), d_mean(c, DType::F32),
        d_inv(c, DType::F32), d_y(cnt, dt), scratch(bn_scratch_floats(rows, c), DType::F32);
    bn_batch_stats(dt, d_x.get(), rows, c, 1e-5f, 0.1f, true, d_rm.as<float>(), d_rv.as<float>(), d_mean.as<float>(),
                   d_inv.as<float>(), scratch.as<float>(), stream_);
    bn_apply(dt, d_x.get(), rows, c, d_g.as<float>(), d_b.as<float>(), d_mean.as<float>(), d_inv.as<float>(),
             d_res.get(), true, d_y.get(), stream_);

    auto xc = nhwc_to_nchw(x, bc.n, bc.h, bc.w, c);
    std::vector<float> y(cnt), sm(c), si(c);
    cpu::batchnorm_forward_train(bc.n, c, hw, xc.data(), gamma.data(), beta.data(), 1e-5f, 0.1f, rm.data(), rv.data(),
                                 sm.data(), si.data(), y.data());
    auto rc = nhwc_to_nchw(res, bc.n, bc.h, bc.w, c);
    cpu::add(cnt, y.data(), rc.data(), y.data());
    cpu::relu_forward(cnt, y.data(), y.data());
    // Statistics are fp32 sums of the same (rounded) inputs in every dtype.
    expect_close("bn mean", d_mean.download(), sm, 1e-5, 1e-5);
    expect_close("bn invstd", d_inv.download(), si, 1e-4, 1e-5);
    expect_close("bn running_mean", d_rm.download(), rm, 1e-5, 1e-5);
    expect_close("bn running_var", d_rv.download(), rv, 1e-4, 1e-5);
    expect_close("bn+add+relu y", d_y.download(), nchw_to_nhwc(y, bc.n, bc.h, bc.w, c), tol.rtol, tol.a);
  }
}

// ReLU keeps NaN, as PyTorch's and the CPU backend's do: an fp16 overflow in the forward pass (inf,
// then NaN after batch norm) must reach the loss and the gradients, where the loss scaler sees it,
// instead of being turned into zeros. c = 64 takes the 8-wide path, c = 12 the scalar one.
TEST_P(CudaOps, BatchNormApplyReluKeepsNaN) {
  const DType dt = GetParam();
  for (int c : {64, 12}) {
    SCOPED_TRACE(str("c=", c));
    const int64_t rows = 10;
    const size_t cnt = rows * c;
    auto x = random_vec(cnt, 31, dt);
    auto res = random_vec(cnt, 32, dt);
    const std::vector<size_t> nan_at = {3, cnt / 2 + 1, cnt - 1};
    for (size_t i : nan_at) res[i] = NAN;
    auto gamma = random_vec(c, 33, DType::F32, 0.5f, 1.5f), beta = random_vec(c, 34, DType::F32);
    auto mean = random_vec(c, 35, DType::F32), inv = random_vec(c, 36, DType::F32, 0.5f, 2.0f);
    Dev d_x(x, dt), d_res(res, dt), d_g(gamma), d_b(beta), d_m(mean), d_i(inv), d_y(cnt, dt);
    bn_apply(dt, d_x.get(), rows, c, d_g.as<float>(), d_b.as<float>(), d_m.as<float>(), d_i.as<float>(), d_res.get(),
             true, d_y.get(), stream_);
    const auto y = d_y.download();
    for (size_t i = 0; i < cnt; ++i) {
      const bool want_nan = std::find(nan_at.begin(), nan_at.end(), i) != nan_at.end();
      ASSERT_EQ(std::isnan(y[i]), want_nan) << "element " << i << " = " << y[i];
      if (!want_nan) {
        ASSERT_GE(y[i], 0.0f) << "element " << i;
      }
    }
  }
}

TEST_P(CudaOps, BatchNormTrainRefusesOneValuePerChannel) {
  // As the CPU backend and PyTorch: a batch of 1 at a 1x1 map (layer4 of a 32-63 px input).
  const DType dt = GetParam();
  const int c = 512;
  Dev d_x(random_vec(c, 27, dt), dt), d_rm(c, DType::F32), d_rv(c, DType::F32), d_mean(c, DType::F32),
      d_inv(c, DType::F32), scratch(bn_scratch_floats(1, c), DType::F32);
  EXPECT_THROW(bn_batch_stats(dt, d_x.get(), 1, c, 1e-5f, 0.1f, true, d_rm.as<float>(), d_rv.as<float>(),
                              d_mean.as<float>(), d_inv.as<float>(), scratch.as<float>(), stream_),
               Error);
}

TEST_P(CudaOps, BatchNormEvalForward) {
  const DType dt = GetParam();
  const Tol tol = tol_for(dt);
  const BnCase bc{3, 6, 6, 96};
  const int hw = bc.h * bc.w, c = bc.c;
  const int64_t rows = static_cast<int64_t>(bc.n) * hw;
  const size_t cnt = rows * c;
  auto x = random_vec(cnt, 31, dt, -2.0f, 2.0f);
  auto gamma = random_vec(c, 32, DType::F32, 0.5f, 1.5f), beta = random_vec(c, 33, DType::F32);
  auto rm = random_vec(c, 34, DType::F32), rv = random_vec(c, 35, DType::F32, 0.5f, 2.0f);
  Dev d_x(x, dt), d_g(gamma), d_b(beta), d_rm(rm), d_rv(rv), d_mean(c, DType::F32), d_inv(c, DType::F32), d_y(cnt, dt);
  bn_eval_stats(d_rm.as<float>(), d_rv.as<float>(), c, 1e-5f, d_mean.as<float>(), d_inv.as<float>(), stream_);
  bn_apply(dt, d_x.get(), rows, c, d_g.as<float>(), d_b.as<float>(), d_mean.as<float>(), d_inv.as<float>(), nullptr,
           false, d_y.get(), stream_);
  auto xc = nhwc_to_nchw(x, bc.n, bc.h, bc.w, c);
  std::vector<float> y(cnt);
  cpu::batchnorm_forward_eval(bc.n, c, hw, xc.data(), gamma.data(), beta.data(), rm.data(), rv.data(), 1e-5f, y.data());
  expect_close("bn eval y", d_y.download(), nchw_to_nhwc(y, bc.n, bc.h, bc.w, c), tol.rtol, std::max(tol.a, 1e-5));
}

TEST_P(CudaOps, BatchNormBackwardReluResidual) {
  const DType dt = GetParam();
  const Tol tol = tol_for(dt);
  for (const auto& bc : kBnCases) {
    const int hw = bc.h * bc.w, c = bc.c;
    const int64_t rows = static_cast<int64_t>(bc.n) * hw;
    const size_t cnt = rows * c;
    auto x = random_vec(cnt, 41, dt, -1.0f, 2.0f);
    auto dy = random_vec(cnt, 42, dt);
    auto yout = random_vec(cnt, 43, dt);
    for (auto& v : yout) v = v > 0 ? v : 0.0f;  // a ReLU output: about half zeros
    auto gamma = random_vec(c, 44, DType::F32, 0.5f, 1.5f);
    // Saved statistics from the CPU forward on the same x.
    auto xc = nhwc_to_nchw(x, bc.n, bc.h, bc.w, c);
    std::vector<float> beta(c, 0.0f), rm(c, 0.0f), rv(c, 1.0f), sm(c), si(c), ytmp(cnt);
    cpu::batchnorm_forward_train(bc.n, c, hw, xc.data(), gamma.data(), beta.data(), 1e-5f, 0.1f, rm.data(), rv.data(),
                                 sm.data(), si.data(), ytmp.data());
    std::vector<float> g(cnt);
    for (size_t i = 0; i < cnt; ++i) g[i] = yout[i] > 0 ? dy[i] : 0.0f;
    auto gc = nhwc_to_nchw(g, bc.n, bc.h, bc.w, c);
    std::vector<float> dx(cnt), dgamma(c), dbeta(c);
    cpu::batchnorm_backward(bc.n, c, hw, xc.data(), gc.data(), gamma.data(), sm.data(), si.data(), dx.data(),
                            dgamma.data(), dbeta.data());

    Dev d_x(x, dt), d_dy(dy, dt), d_yout(yout, dt), d_g(gamma), d_sm(sm), d_si(si), d_dg(c, DType::F32),
        d_db(c, DType::F32), d_dx(cnt, dt), d_dres(cnt, dt), scratch(bn_scratch_floats(rows, c), DType::F32);
    bn_backward(dt, d_x.get(), d_yout.get(), d_dy.get(), rows, c, d_g.as<float>(), d_sm.as<float>(), d_si.as<float>(),
                d_dg.as<float>(), d_db.as<float>(), d_dx.get(), d_dres.get(), scratch.as<float>(), stream_);
    expect_close("bn bwd dgamma", d_dg.download(), dgamma, 1e-4, 1e-4);
    expect_close("bn bwd dbeta", d_db.download(), dbeta, 1e-4, 1e-4);
    expect_close("bn bwd dx", d_dx.download(), nchw_to_nhwc(dx, bc.n, bc.h, bc.w, c), std::max(tol.rtol, 2e-5),
                 std::max(tol.a, 1e-4));
    expect_close("bn bwd masked residual grad", d_dres.download(), g, 0.0, 0.0);  // exact: a masked copy

    // In place (dres aliasing dy), no ReLU: dres must equal dy and dx the unmasked BN gradient.
    auto dyc = nhwc_to_nchw(dy, bc.n, bc.h, bc.w, c);
    cpu::batchnorm_backward(bc.n, c, hw, xc.data(), dyc.data(), gamma.data(), sm.data(), si.data(), dx.data(),
                            dgamma.data(), dbeta.data());
    d_dx.poison();
    bn_backward(dt, d_x.get(), nullptr, d_dy.get(), rows, c, d_g.as<float>(), d_sm.as<float>(), d_si.as<float>(),
                d_dg.as<float>(), d_db.as<float>(), d_dx.get(), d_dy.get(), scratch.as<float>(), stream_);
    expect_close("bn bwd (no relu) dx", d_dx.download(), nchw_to_nhwc(dx, bc.n, bc.h, bc.w, c),
                 std::max(tol.rtol, 2e-5), std::max(tol.a, 1e-4));
    expect_close("bn bwd (no relu) dgamma", d_dg.download(), dgamma, 1e-4, 1e-4);
    expect_close("bn bwd in-place residual grad", d_dy.download(), dy, 0.0, 0.0);
  }
}

// ---- pools ----------------------------------------------------------------------------------------
TEST_P(CudaOps, MaxPoolForwardBackward) {
  const DType dt = GetParam();
  const Tol tol = tol_for(dt);
  // c = 40: the 8-channel vector kernels; c = 20: the scalar ones.
  for (const int c : {40, 20}) {
  SCOPED_TRACE(str("channels ", c));
  const int n = 2, h = 15, w = 14, k = 3, s = 2, p = 1;
  const int oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  const size_t nx = static_cast<size_t>(n) * h * w * c, ny = static_cast<size_t>(n) * oh * ow * c;
  auto x = random_vec(nx, 51, dt, -3.0f, 3.0f);
  auto dy = random_vec(ny, 52, dt);
  Dev d_x(x, dt), d_y(ny, dt), d_dy(dy, dt), d_dx(nx, dt), d_arg(ny, DType::F32 /* 4-byte slots */);
  maxpool_forward(dt, d_x.get(), n, h, w, c, k, s, p, d_y.get(), d_arg.as<int32_t>(), stream_);
  maxpool_backward(dt, d_dy.get(), d_arg.as<int32_t>(), n, h, w, c, k, s, p, d_dx.get(), stream_);

  auto xc = nhwc_to_nchw(x, n, h, w, c);
  std::vector<float> y(ny), dx(nx);
  std::vector<int32_t> arg(ny);
  cpu::maxpool2d_forward(n, c, h, w, k, s, p, xc.data(), y.data(), arg.data());
  auto dyc = nhwc_to_nchw(dy, n, oh, ow, c);
  cpu::maxpool2d_backward(n, c, h, w, k, s, p, dyc.data(), arg.data(), dx.data());
  expect_close("maxpool y (a selection: exact)", d_y.download(), nchw_to_nhwc(y, n, oh, ow, c), 0.0, 0.0);
  std::vector<int32_t> garg(ny);
  CUDA_CHECK(cudaMemcpy(garg.data(), d_arg.get(), ny * 4, cudaMemcpyDeviceToHost));
  std::vector<float> argf(ny), gargf(ny);
  for (size_t i = 0; i < ny; ++i) argf[i] = static_cast<float>(arg[i]), gargf[i] = static_cast<float>(garg[i]);
  expect_close("maxpool argmax", gargf, nchw_to_nhwc(argf, n, oh, ow, c), 0.0, 0.0);
  expect_close("maxpool dx", d_dx.download(), nchw_to_nhwc(dx, n, h, w, c), tol.rtol, std::min(tol.a, 1e-6));
  }
}

TEST_P(CudaOps, AvgPoolForwardBackward) {
  const DType dt = GetParam();
  const Tol tol = tol_for(dt);
  for (const int c : {72, 20}) {  // 8-channel vector path, scalar path
    SCOPED_TRACE(str("c=", c));
    const int n = 3, h = 7, w = 7, hw = h * w;
    const size_t nx = static_cast<size_t>(n) * hw * c;
    auto x = random_vec(nx, 61, dt);
    auto dy = random_vec(static_cast<size_t>(n) * c, 62, DType::F32);
    Dev d_x(x, dt), d_y(n * c, DType::F32), d_dy(dy), d_dx(nx, dt);
    avgpool_forward(dt, d_x.get(), n, hw, c, d_y.as<float>(), stream_);
    avgpool_backward(dt, d_dy.as<float>(), n, hw, c, d_dx.get(), stream_);
    auto xc = nhwc_to_nchw(x, n, h, w, c);
    std::vector<float> y(n * c), dx(nx);
    cpu::global_avgpool_forward(n, c, hw, xc.data(), y.data());
    cpu::global_avgpool_backward(n, c, hw, dy.data(), dx.data());
    expect_close("avgpool y (fp32 out)", d_y.download(), y, 1e-5, 1e-5);
    expect_close("avgpool dx", d_dx.download(), nchw_to_nhwc(dx, n, h, w, c), tol.rtol, std::min(tol.a, 1e-6));
  }
}

TEST_P(CudaOps, AddInPlace) {
  // The stem's residual-free gradient sum in backward; vector (count % 8 == 0) and scalar paths.
  const DType dt = GetParam();
  const Tol tol = tol_for(dt);
  for (const int64_t count : {int64_t{8 * 1001}, int64_t{8 * 1001 + 5}}) {
    auto y = random_vec(count, 65, dt), x = random_vec(count, 66, dt);
    Dev d_y(y, dt), d_x(x, dt);
    add_inplace(dt, d_y.get(), d_x.get(), count, stream_);
    std::vector<float> ref(count);
    cpu::add(count, y.data(), x.data(), ref.data());
    expect_close(str("add_inplace, count ", count), d_y.download(), ref, tol.rtol, std::min(tol.a, 1e-6));
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaOps, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// ---- fp32 ops (classifier, loss, optimizer, checks) ------------------------------------------------
class CudaOpsF32 : public CudaStreamTest {};

TEST_F(CudaOpsF32, LinearForwardBackward) {
  const int n = 5, in = 512, out = 37;
  auto x = random_vec(n * in, 71, DType::F32), w = random_vec(out * in, 72, DType::F32, -0.05f, 0.05f);
  auto b = random_vec(out, 73, DType::F32), dy = random_vec(n * out, 74, DType::F32);
  Dev d_x(x), d_w(w), d_b(b), d_dy(dy), d_y(n * out, DType::F32), d_dx(n * in, DType::F32), d_dw(out * in, DType::F32),
      d_db(out, DType::F32);
  cublasHandle_t h;
  CUBLAS_CHECK(cublasCreate(&h));
  CUBLAS_CHECK(cublasSetStream(h, stream_));
  CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH));  // strict fp32 (no TF32)
  linear_forward(h, n, in, out, d_x.as<float>(), d_w.as<float>(), d_b.as<float>(), d_y.as<float>());
  linear_backward(h, n, in, out, d_x.as<float>(), d_w.as<float>(), d_dy.as<float>(), d_dx.as<float>(), d_dw.as<float>(),
                  d_db.as<float>());
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  CUBLAS_CHECK(cublasDestroy(h));
  std::vector<float> y(n * out), dx(n * in), dw(out * in), db(out);
  cpu::linear_forward(n, in, out, x.data(), w.data(), b.data(), y.data());
  cpu::linear_backward(n, in, out, x.data(), w.data(), dy.data(), dx.data(), dw.data(), db.data());
  expect_close("fc y", d_y.download(), y, 1e-5, 1e-5);
  expect_close("fc dx", d_dx.download(), dx, 1e-5, 1e-5);
  expect_close("fc dw", d_dw.download(), dw, 1e-5, 1e-5);
  expect_close("fc db", d_db.download(), db, 1e-5, 1e-5);
}

TEST_F(CudaOpsF32, SoftmaxCrossEntropyWithSmoothing) {
  const int n = 6;
  // 17 classes: fewer than a block's threads; 1000 (ImageNet): each thread loops over several.
  for (const int classes : {17, 1000})
  for (float smoothing : {0.0f, 0.1f}) {
    SCOPED_TRACE(str(classes, " classes, smoothing ", smoothing));
    auto logits = random_vec(n * classes, 81, DType::F32, -4.0f, 4.0f);
    std::vector<int32_t> labels{0, classes - 1, 3, 8, 8, 11};
    Dev d_l(logits), d_p(n * classes, DType::F32), d_loss(n, DType::F32), d_rank(n, DType::F32),
        d_dl(n * classes, DType::F32);
    DeviceBuffer d_lab(n * 4, "labels");
    CUDA_CHECK(cudaMemcpy(d_lab.get(), labels.data(), n * 4, cudaMemcpyHostToDevice));
    softmax_ce_forward(d_l.as<float>(), d_lab.as<int32_t>(), n, classes, smoothing, d_p.as<float>(),
                       d_loss.as<float>(), d_rank.as<int32_t>(), stream_);
    softmax_ce_backward(d_p.as<float>(), d_lab.as<int32_t>(), n, classes, smoothing, 8.0f, d_dl.as<float>(), stream_);
    std::vector<float> probs(n * classes), dl(n * classes);
    const float loss = cpu::softmax_cross_entropy_forward(n, classes, logits.data(), labels.data(), smoothing, probs.data());
    cpu::softmax_cross_entropy_backward(n, classes, probs.data(), labels.data(), smoothing, 8.0f, dl.data());
    auto rows = d_loss.download();
    double mean = 0;
    for (float r : rows) mean += r;
    mean /= n;
    EXPECT_NEAR(mean, loss, 1e-5 * std::fabs(loss) + 1e-6) << "smoothing " << smoothing;
    expect_close("softmax probs", d_p.download(), probs, 1e-5, 1e-6);
    expect_close("dlogits", d_dl.download(), dl, 1e-5, 1e-5);
    std::vector<int32_t> rank(n);
    CUDA_CHECK(cudaMemcpy(rank.data(), d_rank.get(), n * 4, cudaMemcpyDeviceToHost));
    std::vector<int32_t> want(n);
    cpu::label_ranks(n, classes, logits.data(), labels.data(), want.data());
    for (int i = 0; i < n; ++i) EXPECT_EQ(rank[i], want[i]) << "row " << i;
  }
}

// The label's position in its row sorted descending, stable by class index (ties go to the lowest
// index); INT32_MAX for a row holding a NaN or a +inf (wrong for top-1 and top-5). Written as the sort
// itself, independently of the counting rule of the kernel and of cpu::label_rank.
int32_t stable_sort_position(const float* row, int classes, int label) {
  if (std::any_of(row, row + classes, [](float v) { return std::isnan(v) || v == std::numeric_limits<float>::infinity(); }))
    return std::numeric_limits<int32_t>::max();
  std::vector<int> idx(classes);
  for (int j = 0; j < classes; ++j) idx[j] = j;
  std::stable_sort(idx.begin(), idx.end(), [row](int a, int b) { return row[a] > row[b]; });
  return static_cast<int32_t>(std::find(idx.begin(), idx.end(), label) - idx.begin());
}

// Ties, NaN and inf in the label's rank: 1000 classes, so each thread of the row's block sees several
// classes and tied classes fall to different threads. Before, ties counted in the label's favour (a
// zero fc scored 100% top-1) and a NaN row ranked its label first.
TEST_F(CudaOpsF32, SoftmaxCrossEntropyRankBreaksTiesByClassIndexAndNanOrInfRowsAreUnranked) {
  const int classes = 1000;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> rows;
  std::vector<int32_t> labels;
  auto add = [&](std::vector<float> r, int32_t y) {
    rows.push_back(std::move(r));
    labels.push_back(y);
  };
  const std::vector<float> zeros(classes, 0.0f);
  for (int32_t y : {0, 1, 4, 5, 517, 999}) add(zeros, y);  // a zero fc: rank = class index
  std::vector<float> steps(classes);
  for (int j = 0; j < classes; ++j) steps[j] = static_cast<float>(j % 7);  // 143 classes at 6, ...
  for (int32_t y : {6, 13, 995, 3, 0}) add(steps, y);
  std::vector<float> minf = zeros;  // -inf: an ordered value, tied as any
  minf[10] = minf[300] = minf[700] = -inf;
  for (int32_t y : {300, 700, 0, 10, 11}) add(minf, y);
  std::vector<float> pinf = zeros;  // +inf: softmax inf - inf, unranked
  pinf[500] = inf;
  for (int32_t y : {500, 0}) add(pinf, y);
  std::vector<float> one_nan = steps;
  one_nan[777] = nan;
  for (int32_t y : {6, 777}) add(one_nan, y);
  add(std::vector<float>(classes, nan), 0);
  const int n = static_cast<int>(rows.size());
  std::vector<float> logits;
  for (const auto& r : rows) logits.insert(logits.end(), r.begin(), r.end());
  Dev d_l(logits), d_p(n * classes, DType::F32), d_loss(n, DType::F32), d_rank(n, DType::F32);
  DeviceBuffer d_lab(n * 4, "labels");
  CUDA_CHECK(cudaMemcpy(d_lab.get(), labels.data(), n * 4, cudaMemcpyHostToDevice));
  softmax_ce_forward(d_l.as<float>(), d_lab.as<int32_t>(), n, classes, 0.0f, d_p.as<float>(), d_loss.as<float>(),
                     d_rank.as<int32_t>(), stream_);
  std::vector<int32_t> rank(n);
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  CUDA_CHECK(cudaMemcpy(rank.data(), d_rank.get(), n * 4, cudaMemcpyDeviceToHost));
  // By hand for the first rows: a zero fc ranks the label at its class index.
  EXPECT_EQ(rank[0], 0);
  EXPECT_EQ(rank[3], 5);
  EXPECT_EQ(rank[5], 999);
  std::vector<int32_t> cpu_rank(n);
  cpu::label_ranks(n, classes, logits.data(), labels.data(), cpu_rank.data());
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(rank[i], stable_sort_position(rows[i].data(), classes, labels[i])) << "row " << i << ", label " << labels[i];
    EXPECT_EQ(rank[i], cpu_rank[i]) << "row " << i;
  }
  EXPECT_EQ(rank[n - 1], std::numeric_limits<int32_t>::max()) << "an all-NaN row";
}

// PyTorch's SGD written out independently of the kernel (see ddp::nn::SgdConfig).
void sgd_ref(std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m, const std::vector<uint8_t>* nd,
             const SgdArgs& a) {
  for (size_t i = 0; i < p.size(); ++i) {
    float d = g[i] * a.grad_scale;
    if (!(nd && (*nd)[i])) d += a.weight_decay * p[i];
    if (a.momentum != 0.0f) {
      m[i] = a.first_step ? d : a.momentum * m[i] + (1.0f - a.dampening) * d;
      d = a.nesterov ? d + a.momentum * m[i] : m[i];
    }
    p[i] -= a.lr * d;
  }
}

TEST_F(CudaOpsF32, FusedSgdMatchesPytorchFormula) {
  const int64_t count = 10007;
  std::vector<uint8_t> nd(count);
  for (int64_t i = 0; i < count; ++i) nd[i] = (i % 3) == 0;
  DeviceBuffer d_nd(count, "mask");
  CUDA_CHECK(cudaMemcpy(d_nd.get(), nd.data(), count, cudaMemcpyHostToDevice));
  struct Case { float mom, damp, wd; bool nesterov, use_mask; DType lowp; };
  const Case cases[] = {{0.9f, 0.0f, 1e-4f, false, false, DType::F16}, {0.9f, 0.0f, 5e-4f, true, true, DType::BF16},
                        {0.8f, 0.1f, 1e-3f, false, true, DType::F32}, {0.0f, 0.0f, 1e-4f, false, false, DType::F16}};
  for (const auto& c : cases) {
    auto p = random_vec(count, 91, DType::F32), g = random_vec(count, 92, DType::F32, -100.0f, 100.0f);
    std::vector<float> m(count, 0.0f);
    Dev d_p(p), d_g(g), d_m(m), d_low(count, c.lowp);
    for (int step = 0; step < 3; ++step) {
      SgdArgs a;
      a.lr = 0.1f; a.momentum = c.mom; a.dampening = c.damp; a.weight_decay = c.wd; a.grad_scale = 1.0f / 128.0f;
      a.nesterov = c.nesterov; a.first_step = step == 0;
      sgd_update(d_p.as<float>(), d_g.as<float>(), d_m.as<float>(), c.use_mask ? d_nd.as<uint8_t>() : nullptr, count, a,
                 c.lowp, c.lowp == DType::F32 ? nullptr : d_low.get(), stream_);
      sgd_ref(p, g, m, c.use_mask ? &nd : nullptr, a);
    }
    // Same formula, but the GPU contracts to FMAs: a few ulps after 3 steps.
    expect_close("sgd params", d_p.download(), p, 1e-5, 1e-6);
    if (c.mom != 0.0f) expect_close("sgd momentum", d_m.download(), m, 1e-5, 1e-6);
    if (c.lowp != DType::F32) {
      std::vector<float> pl(count);
      for (int64_t i = 0; i < count; ++i) pl[i] = round_to(c.lowp, p[i]);
      // One rounding of (almost) the same value; atol covers fp16 subnormals near zero.
      expect_close("sgd low-precision copy", d_low.download(), pl, c.lowp == DType::F16 ? 1e-3 : 8e-3, 1e-5);
    }
  }
}

TEST_F(CudaOpsF32, NonFiniteCheck) {
  auto v = random_vec(100003, 101, DType::F32, -1e30f, 1e30f);
  Dev d(v), flag(1, DType::F32);
  auto run = [&] {
    CUDA_CHECK(cudaMemset(flag.get(), 0, 4));
    check_nonfinite(d.as<float>(), v.size(), flag.as<int32_t>(), stream_);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    int32_t f = -1;
    CUDA_CHECK(cudaMemcpy(&f, flag.get(), 4, cudaMemcpyDeviceToHost));
    return f;
  };
  EXPECT_EQ(run(), 0);
  for (float bad : {INFINITY, -INFINITY, NAN}) {
    auto w = v;
    w[77777] = bad;
    d.upload(w);
    EXPECT_EQ(run(), 1) << bad;
  }
}

TEST_F(CudaOpsF32, ChecksumDeterministicAndCorrect) {
  auto v = random_vec(300001, 111, DType::F32);
  Dev d(v);
  DeviceBuffer part(kChecksumBlocks * 8, "partials");
  auto run = [&] {
    checksum_partials(d.as<float>(), v.size(), part.as<double>(), stream_);
    std::vector<double> h(kChecksumBlocks);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    CUDA_CHECK(cudaMemcpy(h.data(), part.get(), h.size() * 8, cudaMemcpyDeviceToHost));
    double s = 0;
    for (double x : h) s += x;
    return s;
  };
  double ref = 0;
  for (size_t i = 0; i < v.size(); ++i) ref += static_cast<double>(v[i]) * (1.0 + static_cast<double>(i & 15) / 16.0);
  const double a = run(), b = run();
  EXPECT_EQ(a, b);
  EXPECT_NEAR(a, ref, 1e-9 * std::fabs(ref) + 1e-9);
}

TEST_P(CudaOps, NormalizeU8AndPadding) {
  const DType dt = GetParam();
  const int64_t pixels = 2 * 9 * 11;
  Rng r(121, rng_stream::kTest);
  std::vector<uint8_t> img(pixels * 3);
  for (auto& b : img) b = static_cast<uint8_t>(r.next_u32() & 0xff);
  DeviceBuffer d_img(img.size(), "img");
  CUDA_CHECK(cudaMemcpy(d_img.get(), img.data(), img.size(), cudaMemcpyHostToDevice));
  const float mean[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
  // fp32: the kernel multiplies by 1/255 and 1/std where the reference divides (a few ulps).
  const double rt = dt == DType::F32 ? 1e-5 : dt == DType::F16 ? 1e-3 : 8e-3;
  // 8 padded channels (the model's; one vector store per pixel) and 4 (the element-wise kernel).
  for (const int cpad : {4, 8}) {
    Dev d_y4(pixels * cpad, dt);  // poisoned: the padding must be written as zeros
    normalize_u8_nhwc(d_img.as<uint8_t>(), pixels, cpad, dt, d_y4.get(), stream_);
    std::vector<float> ref(pixels * cpad, 0.0f);
    for (int64_t p = 0; p < pixels; ++p)
      for (int c = 0; c < 3; ++c) ref[p * cpad + c] = (img[p * 3 + c] / 255.0f - mean[c]) / sd[c];
    expect_close("normalised input, " + std::to_string(cpad) + " channels", d_y4.download(), ref, rt, 1e-5);
  }
  Dev d_y(pixels * 8, dt);
  normalize_u8_nhwc(d_img.as<uint8_t>(), pixels, 8, dt, d_y.get(), stream_);

  // padded_to_f32 drops the padding again.
  Dev d_back(pixels * 3, DType::F32);
  padded_to_f32(dt, d_y.get(), pixels, 8, 3, d_back.as<float>(), stream_);
  auto y = d_y.download();
  std::vector<float> unp(pixels * 3);
  for (int64_t p = 0; p < pixels; ++p)
    for (int c = 0; c < 3; ++c) unp[p * 3 + c] = y[p * 8 + c];
  expect_close("unpadded", d_back.download(), unp, 0.0, 0.0);
}

}  // namespace
}  // namespace ddp::cuda::test
