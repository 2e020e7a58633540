// CpuResNet18 against torchvision's ResNet18 (PyTorch, fp64) with the same weights and inputs:
// eval and train logits, loss, every parameter gradient, BN running stats, and parameters, momentum
// and running stats after 3 SGD steps (momentum 0.9, Nesterov, weight decay 1e-4 on all parameters
// and with BN/bias excluded, label smoothing 0.1). The reference is computed at test time by
// tests/reference/torch_reference.py under Debian's /usr/bin/python3.
//
// Tolerances (our fp32 against PyTorch fp64), per tensor, elementwise |ours - ref| <= atol + rtol*|ref|
// with atol scaled by the tensor's largest magnitude:
//   logits            rtol 1e-4, atol 1e-4 * max|ref|   (the brief's relative error 1e-4)
//   loss              rtol 1e-5
//   gradients         rtol 1e-3, atol 2e-4 * max|ref| (fp32 sums over the batch and BN's
//                     mean-subtracted backward lose a few digits on small entries)
//   running stats     rtol 1e-4, atol 1e-5 * max|ref|
//   optimizer alone   3 SGD steps with given gradients: params rtol 1e-6, momentum rtol 1e-5,
//                     atol 1e-6 * max|ref|
//   whole loop        after 3 forward/backward/SGD steps, per tensor in L2 norm (see close_norm)
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "ddp/backend/cpu/resnet18_cpu.h"
#include "ddp/core/check.h"
#include "ddp/core/h5.h"
#include "ddp/core/rng.h"
#include "ddp/nn/weights_io.h"

#ifndef DDP_TORCH_REFERENCE_PY
#error "DDP_TORCH_REFERENCE_PY must name tests/reference/torch_reference.py"
#endif

namespace fs = std::filesystem;
using ddp::cpu::CpuResNet18;
using ddp::nn::ModelConfig;

namespace {

constexpr float kLabelSmoothing = 0.1f;
constexpr float kLr = 0.01f;  // larger rates make 3 steps on 6-8 images chaotic (fp32 vs fp64 diverge)
constexpr int kSteps = 3;
// The optimizer-only check uses a large rate and weight decay so every term of the update shows.
constexpr float kSgdLr = 0.5f;
constexpr float kSgdWeightDecay = 0.05f;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "ddp_ref_XXXXXX").string();
    DDP_CHECK(mkdtemp(tmpl.data()) != nullptr, "mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() {
    if (std::getenv("DDP_REF_KEEP")) return;  // keep the files for debugging
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::vector<double> read_f64(hid_t f, const std::string& name) {
  auto shape = ddp::h5::dataset_shape(f, name);
  size_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<double> v(n);
  ddp::h5::Handle ds(H5_CHECK(H5Dopen2(f, name.c_str(), H5P_DEFAULT)));
  H5_CHECK(H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()));
  return v;
}

// Elementwise |a - ref| <= atol_rel * max|ref| + rtol * |ref|; reports the worst element.
::testing::AssertionResult close(const std::string& what, const float* a, const std::vector<double>& ref,
                                 double rtol, double atol_rel) {
  double maxref = 0;
  for (double r : ref) maxref = std::max(maxref, std::abs(r));
  const double atol = atol_rel * maxref + 1e-30;
  double worst = -1;
  size_t wi = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double err = std::abs(static_cast<double>(a[i]) - ref[i]);
    double ratio = err / (atol + rtol * std::abs(ref[i]));
    if (!(ratio <= worst) || std::isnan(ratio)) {
      worst = std::isnan(ratio) ? 1e30 : ratio;
      wi = i;
    }
  }
  if (std::getenv("DDP_REF_VERBOSE"))
    std::fprintf(stderr, "%-60s worst error %.3g of the tolerance\n", what.c_str(), worst);
  if (worst <= 1.0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": element " << wi << " ours " << a[wi] << " ref " << ref[wi]
                                       << " (error " << worst << "x the tolerance; max|ref| " << maxref << ")";
}

// Per tensor: ||a - ref|| <= 5 ||ref32 - ref|| + 1e-3 ||ref - base|| (base: the value before the
// steps; nullptr: compare against ||ref||).
::testing::AssertionResult close_norm(const std::string& what, const float* a, const float* base,
                                      const std::vector<double>& ref, const std::vector<double>& ref32) {
  double e = 0, e32 = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    e += (a[i] - ref[i]) * (a[i] - ref[i]);
    e32 += (ref32[i] - ref[i]) * (ref32[i] - ref[i]);
    double d = base ? ref[i] - base[i] : ref[i];
    scale += d * d;
  }
  e = std::sqrt(e);
  e32 = std::sqrt(e32);
  scale = std::sqrt(scale);
  const double tol = 5 * e32 + 1e-3 * scale + 1e-30;
  if (std::getenv("DDP_REF_VERBOSE"))
    std::fprintf(stderr, "%-60s error %.3g of the tolerance (torch fp32 drift %.3g, scale %.3g)\n", what.c_str(),
                 e / tol, e32, scale);
  if (std::isfinite(e) && e <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": ||ours - fp64|| = " << e << " > 5 ||torch fp32 - fp64|| ("
                                       << e32 << ") + 1e-3 * " << scale;
}

ddp::nn::SgdConfig sgd_config(const std::string& variant) {
  ddp::nn::SgdConfig sgd;
  sgd.momentum = 0.9f;
  sgd.nesterov = true;
  sgd.weight_decay = 1e-4f;
  sgd.decay_bn_and_bias = variant == "decay_all";
  return sgd;
}

struct Case {
  int num_classes, n, h, w;
  int cfg_h, cfg_w;  // model built for this size (>= h, w): checks buffer reuse at a smaller input
};

class VsPyTorch : public ::testing::TestWithParam<Case> {};

TEST_P(VsPyTorch, LogitsLossGradsStatsAndSgdSteps) {
  const Case tc = GetParam();
  TempDir tmp;
  const std::string weights = (tmp.path / "weights.h5").string();
  const std::string inputs = (tmp.path / "inputs.h5").string();
  const std::string out = (tmp.path / "ref.h5").string();
  const std::string out32 = (tmp.path / "ref32.h5").string();

  ModelConfig cfg;
  cfg.num_classes = tc.num_classes;
  cfg.max_batch = tc.n + 2;
  cfg.height = tc.cfg_h;
  cfg.width = tc.cfg_w;
  cfg.label_smoothing = kLabelSmoothing;
  cfg.init.seed = 1234;
  const auto spec = ddp::nn::make_resnet18_spec(tc.num_classes);

  // Weights: torchvision's init, with BN affine parameters and running stats perturbed so that
  // they are not the trivial 1/0 (a swapped gamma/beta or mean/var would otherwise pass).
  std::vector<float> params(spec.param_count), buffers(spec.buffer_count);
  ddp::nn::init_resnet18(spec, cfg.init, params.data(), buffers.data());
  ddp::Rng rng(7, ddp::rng_stream::kTest);
  for (const auto& p : spec.params) {
    if (p.kind == ddp::nn::ParamKind::BnWeight)
      for (int64_t j = 0; j < p.numel; ++j) params[p.offset + j] = rng.uniform(0.5f, 1.5f);
    if (p.kind == ddp::nn::ParamKind::BnBias)
      for (int64_t j = 0; j < p.numel; ++j) params[p.offset + j] = rng.uniform(-0.2f, 0.2f);
  }
  for (size_t i = 0; i < spec.buffers.size(); ++i) {
    const auto& b = spec.buffers[i];
    for (int64_t j = 0; j < b.numel; ++j)
      buffers[b.offset + j] = (i % 2 == 0) ? rng.uniform(-0.5f, 0.5f) : rng.uniform(0.5f, 2.0f);
  }
  ddp::nn::save_weights(weights, spec, params.data(), buffers.data(), 5);

  std::vector<float> images(static_cast<size_t>(tc.n) * 3 * tc.h * tc.w);
  for (auto& v : images) v = rng.normal();
  std::vector<int32_t> labels(tc.n);
  for (auto& l : labels) l = static_cast<int32_t>(rng.below(static_cast<uint32_t>(tc.num_classes)));
  // Gradients for the optimizer-only check: about the size of real ones.
  std::vector<float> sgd_grads(static_cast<size_t>(kSteps) * spec.param_count);
  for (auto& g : sgd_grads) g = 0.01f * rng.normal();
  {
    auto f = ddp::h5::create_file(inputs);
    ddp::h5::write_f32(f, "sgd_grads", sgd_grads.data(), {hsize_t(kSteps), hsize_t(spec.param_count)});
    ddp::h5::write_f32(f, "images", images.data(),
                       {hsize_t(tc.n), 3, hsize_t(tc.h), hsize_t(tc.w)});
    ddp::h5::write_i32(f, "labels", labels.data(), {hsize_t(tc.n)});
    ddp::h5::set_attr(f, "label_smoothing", double(kLabelSmoothing));
    ddp::h5::set_attr(f, "lr", double(kLr));
    ddp::h5::set_attr(f, "momentum", 0.9);
    ddp::h5::set_attr(f, "weight_decay", 1e-4);
    ddp::h5::set_attr(f, "nesterov", int64_t{1});
    ddp::h5::set_attr(f, "steps", int64_t{kSteps});
    ddp::h5::set_attr(f, "sgd_lr", double(kSgdLr));
    ddp::h5::set_attr(f, "sgd_weight_decay", double(kSgdWeightDecay));
  }
  const std::string cmd = std::string("/usr/bin/python3 ") + DDP_TORCH_REFERENCE_PY + " --weights " + weights +
                          " --inputs " + inputs + " --out " + out + " --dtype float64";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "PyTorch reference failed: " << cmd
                                         << " (needs Debian's python3-torch, python3-torchvision, python3-h5py)";
  const std::string cmd32 = std::string("/usr/bin/python3 ") + DDP_TORCH_REFERENCE_PY + " --weights " + weights +
                            " --inputs " + inputs + " --out " + out32 + " --dtype float32 --loop-only";
  ASSERT_EQ(std::system(cmd32.c_str()), 0) << "PyTorch reference failed: " << cmd32;
  auto ref = ddp::h5::open_file(out);

  // Our model takes its weights through the weights file, as a user's would.
  auto load = [&](CpuResNet18& m) {
    std::vector<float> p(spec.param_count), b(spec.buffer_count);
    int64_t nbt = -1;
    ddp::nn::load_weights(weights, m.spec(), p.data(), b.data(), &nbt);
    EXPECT_EQ(nbt, 5);
    m.set_params_torch(p.data());
    m.set_buffers(b.data());
    m.set_num_batches_tracked(nbt);
    m.set_momentum_initialised(false);
  };

  CpuResNet18 model(cfg);
  load(model);
  model.set_input_f32(images.data(), labels.data(), tc.n, tc.h, tc.w);
  model.forward(ddp::nn::Mode::Eval);
  EXPECT_TRUE(close("eval logits", model.logits_host().data(), read_f64(ref, "eval_logits"), 1e-4, 1e-4));
  EXPECT_EQ(model.num_batches_tracked(), 5) << "an eval forward must not count as a tracked batch";

  const float loss = model.forward(ddp::nn::Mode::Train);
  EXPECT_TRUE(close("train logits", model.logits_host().data(), read_f64(ref, "logits"), 1e-4, 1e-4));
  const double ref_loss = read_f64(ref, "loss")[0];
  EXPECT_NEAR(loss, ref_loss, 1e-5 * std::abs(ref_loss));
  EXPECT_EQ(model.num_batches_tracked(), 6);

  std::vector<int64_t> ready;
  model.backward(1.0f, [&](const ddp::nn::GradReady& r) { ready.push_back(r.first_ready); });
  // Each layer's gradients are reported final once, layer by layer from the end of the buffer down
  // (a BN layer's weight and bias, and fc's weight and bias, together).
  std::vector<int64_t> expect_ready;
  for (auto it = spec.params.rbegin(); it != spec.params.rend(); ++it)
    if (it->kind != ddp::nn::ParamKind::BnBias && it->kind != ddp::nn::ParamKind::FcBias)
      expect_ready.push_back(it->offset);
  EXPECT_EQ(ready, expect_ready);

  std::vector<float> grads(spec.param_count), stats(spec.buffer_count);
  model.get_grads_torch(grads.data());
  for (const auto& p : spec.params)
    EXPECT_TRUE(close("grad " + p.name, grads.data() + p.offset, read_f64(ref, "grad/" + p.name), 1e-3, 2e-4));
  model.get_buffers(stats.data());
  for (const auto& b : spec.buffers)
    EXPECT_TRUE(close("running stat " + b.name, stats.data() + b.offset, read_f64(ref, "stats/" + b.name), 1e-4, 1e-5));

  // The optimizer alone, from the same weights with given gradients: elementwise, tight.
  for (const char* variant : {"decay_all", "decay_conv"}) {
    SCOPED_TRACE(std::string("sgd only, ") + variant);
    CpuResNet18 m(cfg);
    load(m);
    for (int s = 0; s < kSteps; ++s) {
      std::copy(sgd_grads.begin() + static_cast<int64_t>(s) * spec.param_count,
                sgd_grads.begin() + static_cast<int64_t>(s + 1) * spec.param_count, m.grads());
      auto sc = sgd_config(variant);
      sc.weight_decay = kSgdWeightDecay;
      m.sgd_step(sc, kSgdLr, 1.0f);
    }
    std::vector<float> p(spec.param_count), mom(spec.param_count);
    m.get_params_torch(p.data());
    m.get_momentum_torch(mom.data());
    const std::string v = variant;
    for (const auto& pi : spec.params) {
      EXPECT_TRUE(close("sgd-only param " + pi.name, p.data() + pi.offset,
                        read_f64(ref, v + "/sgd_only/params/" + pi.name), 1e-6, 1e-6));
      EXPECT_TRUE(close("sgd-only momentum " + pi.name, mom.data() + pi.offset,
                        read_f64(ref, v + "/sgd_only/momentum/" + pi.name), 1e-5, 1e-6));
    }
  }

  // The whole loop: forward, backward, step, 3 times. Tiny differences in the first steps move
  // ReLU and max-pool decisions and BN statistics of near-constant channels, so after 3 steps even
  // PyTorch's own fp32 run drifts from its fp64 run (by up to 1e-2 of the update on such small batches).
  // Per tensor we require ||ours - fp64|| <= 5 ||torch fp32 - fp64|| + floor, with the floor 1e-3 of
  // the update (params), of the buffer (momentum) or of the statistics.
  auto ref32 = ddp::h5::open_file(out32);
  for (const char* variant : {"decay_all", "decay_conv"}) {
    SCOPED_TRACE(std::string("training loop, ") + variant);
    CpuResNet18 m(cfg);
    load(m);
    const std::string v = variant;
    auto losses = read_f64(ref, v + "/losses");
    auto losses32 = read_f64(ref32, v + "/losses");
    for (int s = 0; s < kSteps; ++s) {
      m.set_input_f32(images.data(), labels.data(), tc.n, tc.h, tc.w);
      float l = m.forward(ddp::nn::Mode::Train);
      EXPECT_NEAR(l, losses[s], 1e-4 * std::abs(losses[s]) + 4 * std::abs(losses32[s] - losses[s])) << "step " << s;
      m.backward(1.0f, nullptr);
      ASSERT_TRUE(m.grads_finite());
      m.sgd_step(sgd_config(variant), kLr, 1.0f);
    }
    std::vector<float> p(spec.param_count), mom(spec.param_count), b(spec.buffer_count);
    m.get_params_torch(p.data());
    m.get_momentum_torch(mom.data());
    m.get_buffers(b.data());
    for (const auto& pi : spec.params) {
      EXPECT_TRUE(close_norm("param after steps " + pi.name, p.data() + pi.offset, params.data() + pi.offset,
                             read_f64(ref, v + "/params/" + pi.name), read_f64(ref32, v + "/params/" + pi.name)));
      EXPECT_TRUE(close_norm("momentum after steps " + pi.name, mom.data() + pi.offset, nullptr,
                             read_f64(ref, v + "/momentum/" + pi.name), read_f64(ref32, v + "/momentum/" + pi.name)));
    }
    for (const auto& bi : spec.buffers)
      EXPECT_TRUE(close_norm("running stat after steps " + bi.name, b.data() + bi.offset, nullptr,
                             read_f64(ref, v + "/stats/" + bi.name), read_f64(ref32, v + "/stats/" + bi.name)));
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, VsPyTorch,
                         ::testing::Values(Case{10, 16, 32, 32, 32, 32},  // square, smallest size
                                           Case{7, 6, 48, 40, 64, 56}),   // not square, below the built size
                         [](const auto& info) {
                           const Case& c = info.param;
                           return "k" + std::to_string(c.num_classes) + "_" + std::to_string(c.h) + "x" + std::to_string(c.w) + "_cfg" + std::to_string(c.cfg_h) + "x" +
                                  std::to_string(c.cfg_w);
                         });

ModelConfig small_cfg() {
  ModelConfig cfg;
  cfg.num_classes = 10;
  cfg.max_batch = 4;
  cfg.height = 64;
  cfg.width = 48;
  return cfg;
}

TEST(VsPyTorchBadInput, WrongInputSizeIsAnError) {
  CpuResNet18 m(small_cfg());
  std::vector<float> x(4 * 3 * 80 * 80, 0.0f);
  std::vector<int32_t> y(5, 0);
  auto expect_error = [&](int n, int h, int w, const char* needle) {
    try {
      m.set_input_f32(x.data(), y.data(), n, h, w);
      ADD_FAILURE() << "no error for n=" << n << " " << h << "x" << w;
    } catch (const ddp::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(2, 31, 48, "at least 32x32");
  expect_error(2, 64, 16, "at least 32x32");
  expect_error(2, 80, 48, "exceed");
  expect_error(2, 64, 49, "exceed");
  expect_error(5, 64, 48, "max_batch");
  expect_error(0, 64, 48, "max_batch");
  std::vector<uint8_t> img(4 * 80 * 80 * 3, 0);
  EXPECT_THROW(m.set_input_u8(img.data(), y.data(), 2, 16, 16), ddp::Error);
  // No input yet: forward is refused rather than run on garbage.
  CpuResNet18 fresh(small_cfg());
  EXPECT_THROW(fresh.forward(ddp::nn::Mode::Train), ddp::Error);
  // Backward needs a train-mode forward.
  m.set_input_f32(x.data(), y.data(), 2, 32, 32);
  m.forward(ddp::nn::Mode::Eval);
  EXPECT_THROW(m.backward(1.0f, nullptr), ddp::Error);
}

TEST(VsPyTorchBadInput, LabelOutOfRangeIsAnError) {
  CpuResNet18 m(small_cfg());
  std::vector<float> x(2 * 3 * 32 * 32, 0.1f);
  std::vector<int32_t> y = {3, 10};
  m.set_input_f32(x.data(), y.data(), 2, 32, 32);
  EXPECT_THROW(m.forward(ddp::nn::Mode::Train), ddp::Error);
}

}  // namespace
