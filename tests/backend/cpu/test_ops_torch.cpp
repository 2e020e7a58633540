// CPU ops against PyTorch (Debian's /usr/bin/python3 with torch): the reference is computed at test time
// by tests/backend/cpu/torch_ops_ref.py in float64 from the same fp32 inputs, exchanged as raw files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <tuple>
#include <string>
#include <vector>

#include "ddp/backend/cpu/ops.h"
#include "test_ops_util.h"

#ifndef DDP_TORCH_OPS_REF
#error "DDP_TORCH_OPS_REF must name tests/backend/cpu/torch_ops_ref.py"
#endif

namespace ddp::cpu::test {
namespace {

namespace fs = std::filesystem;

std::string run_script(const std::string& args) {
  return "/usr/bin/python3 " + std::string(DDP_TORCH_OPS_REF) + " " + args + " 2>&1";
}

class TorchRef {
 public:
  explicit TorchRef(int index = 0) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("ddp_cpu_ops_" + std::to_string(getpid()) + "_" + info->name() + "_" +
                                        std::to_string(index));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  const fs::path& dir() const { return dir_; }
  ~TorchRef() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  template <class T>
  void put(const std::string& name, const std::vector<T>& v) {
    std::ofstream f(dir_ / (name + ".bin"), std::ios::binary);
    f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
    ASSERT_TRUE(f.good()) << "writing " << name;
  }
  // Runs the script; returns false (with a test failure) when it fails.
  bool run(const std::string& op, const std::string& args) {
    const std::string cmd = run_script(op + " " + dir_.string() + " " + args);
    const int rc = std::system(cmd.c_str());
    EXPECT_EQ(rc, 0) << "PyTorch reference failed: " << cmd
                     << " (needs Debian's python3-torch in /usr/bin/python3; tools/setup installs it)";
    return rc == 0;
  }
  std::vector<double> get(const std::string& name) {
    std::ifstream f(dir_ / (name + ".out.bin"), std::ios::binary | std::ios::ate);
    EXPECT_TRUE(f.good()) << "missing reference output " << name;
    const auto bytes = static_cast<size_t>(f.tellg());
    std::vector<double> v(bytes / sizeof(double));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(bytes));
    return v;
  }

 private:
  fs::path dir_;
};

// Runs several (reference, op, args) jobs in one Python process (importing torch dominates the time).
bool run_jobs(const std::vector<std::tuple<TorchRef*, std::string, std::string>>& jobs) {
  const fs::path list = std::get<0>(jobs.front())->dir() / "jobs.txt";
  {
    std::ofstream f(list);
    for (const auto& [ref, op, args] : jobs) f << op << " " << ref->dir().string() << " " << args << "\n";
  }
  const std::string cmd = run_script("--jobs " + list.string());
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << "PyTorch reference failed: " << cmd
                   << " (needs Debian's python3-torch in /usr/bin/python3; tools/setup installs it)";
  return rc == 0;
}

std::string conv_args(const Conv2dShape& p) {
  return "n=" + std::to_string(p.n) + " c=" + std::to_string(p.c) + " h=" + std::to_string(p.h) +
         " w=" + std::to_string(p.w) + " k=" + std::to_string(p.k) + " r=" + std::to_string(p.r) +
         " s=" + std::to_string(p.s) + " stride=" + std::to_string(p.stride) + " pad=" + std::to_string(p.pad);
}

// Forward, data and weight gradients of each shape against torch.nn.functional.conv2d in float64.
void expect_convs_match_torch(const std::vector<Conv2dShape>& shapes) {
  std::vector<std::unique_ptr<TorchRef>> refs;
  std::vector<std::tuple<TorchRef*, std::string, std::string>> jobs;
  for (const auto& p : shapes) {
    refs.push_back(std::make_unique<TorchRef>(static_cast<int>(refs.size())));
    TorchRef& t = *refs.back();
    const size_t xs = static_cast<size_t>(p.n) * p.c * p.h * p.w, ws = static_cast<size_t>(p.k) * p.c * p.r * p.s;
    const size_t ys = static_cast<size_t>(p.n) * p.k * p.out_h() * p.out_w();
    t.put("x", randn(xs, 1));
    t.put("w", randn(ws, 2, 1.f / std::sqrt(static_cast<float>(p.c * p.r * p.s))));
    t.put("dy", randn(ys, 3));
    jobs.emplace_back(&t, "conv", conv_args(p));
  }
  ASSERT_TRUE(run_jobs(jobs));
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto& p = shapes[i];
    SCOPED_TRACE(conv_args(p));
    TorchRef& t = *refs[i];
    const size_t xs = static_cast<size_t>(p.n) * p.c * p.h * p.w, ws = static_cast<size_t>(p.k) * p.c * p.r * p.s;
    const size_t ys = static_cast<size_t>(p.n) * p.k * p.out_h() * p.out_w();
    auto x = randn(xs, 1), w = randn(ws, 2, 1.f / std::sqrt(static_cast<float>(p.c * p.r * p.s))),
         dy = randn(ys, 3);
    std::vector<float> y(ys), dx(xs), dw(ws);
    conv2d_forward(p, x.data(), w.data(), y.data());
    conv2d_backward_data(p, dy.data(), w.data(), dx.data());
    conv2d_backward_weight(p, x.data(), dy.data(), dw.data());
    // fp32 sums of up to 1e3 (y, dx) and 6e3 (dw) O(1) products against a float64 reference.
    expect_close("y", y, t.get("y"), 1e-4, 1e-4);
    expect_close("dx", dx, t.get("dx"), 1e-4, 1e-4);
    expect_close("dw", dw, t.get("dw"), 1e-3, 1e-4);
  }
}

TEST(TorchRef, ConvForwardAndBackwardOnResNet18Shapes) {
  // ResNet18's conv kinds at reduced batch/width, non-square where it matters.
  expect_convs_match_torch({
      {2, 3, 40, 36, 16, 7, 7, 2, 3},   // conv1
      {2, 16, 10, 9, 16, 3, 3, 1, 1},   // layerX.convY
      {4, 16, 10, 9, 32, 3, 3, 2, 1},   // first conv of layer2-4
      {4, 16, 10, 9, 32, 1, 1, 2, 0},   // downsample
      {8, 64, 1, 1, 64, 3, 3, 1, 1},    // layer4 at 32 px input
      {2, 64, 56, 56, 64, 3, 3, 1, 1},  // layer1 at 224 px: pixel tiles
  });
}

TEST(TorchRef, ConvWithDeadTapsOnTinyImages) {
  // Kernel taps that see only padding for every output are skipped (the weight gradient there is 0).
  expect_convs_match_torch({
      {8, 64, 2, 2, 64, 3, 3, 2, 1},    // layer4's first conv at 32 px input: 4 of 9 taps live
      {16, 96, 1, 1, 48, 3, 3, 1, 1},   // layer4's other convs at 32 px: 1 of 9 live
      {3, 16, 1, 1, 8, 3, 3, 2, 1},     // stride 2 on 1x1
      {4, 16, 1, 3, 8, 3, 3, 1, 1},     // non-square: 3 of 9 live
      {4, 16, 2, 5, 8, 3, 3, 2, 1},     // non-square, stride 2: 6 of 9 live
      {64, 128, 2, 2, 32, 3, 3, 2, 1},  // enough work for several threads and image groups
      {16, 64, 2, 2, 64, 3, 3, 1, 1},   // layer3 at 32 px: all taps live, 4 pixels (dense map per image)
      {4, 16, 2, 3, 8, 3, 3, 1, 1},     // non-square dense map
  });
}

TEST(TorchRef, BatchNormTrainForwardBackwardAndRunningStats) {
  // A 7x5 plane, and the 1x1 and 2x2 planes of ResNet18's last stages at 32 px input.
  const std::vector<std::array<int, 4>> shapes = {{4, 6, 7, 5}, {8, 6, 1, 1}, {4, 6, 2, 2}};
  const float eps = 1e-5f, mom = 0.1f;
  std::vector<std::unique_ptr<TorchRef>> refs;
  std::vector<std::tuple<TorchRef*, std::string, std::string>> jobs;
  auto inputs = [](int n, int c, int hw) {  // x, gamma, beta, dy, rm, rv
    const size_t sz = static_cast<size_t>(n) * c * hw;
    std::array<std::vector<float>, 6> in = {randn(sz, 11, 1.5f), randn(c, 12), randn(c, 13), randn(sz, 14),
                                            randn(c, 15), std::vector<float>(c)};
    for (auto& v : in[0]) v += 0.7f;
    for (int i = 0; i < c; ++i) in[5][i] = 0.5f + 0.25f * i;
    return in;
  };
  for (const auto& [n, c, h, w] : shapes) {
    refs.push_back(std::make_unique<TorchRef>(static_cast<int>(refs.size())));
    const auto in = inputs(n, c, h * w);
    const char* names[6] = {"x", "gamma", "beta", "dy", "rm", "rv"};
    for (int i = 0; i < 6; ++i) refs.back()->put(names[i], in[i]);
    jobs.emplace_back(refs.back().get(), "bn",
                      "n=" + std::to_string(n) + " c=" + std::to_string(c) + " h=" + std::to_string(h) +
                          " w=" + std::to_string(w) + " eps=1e-05 momentum=0.1");
  }
  ASSERT_TRUE(run_jobs(jobs));
  for (size_t s = 0; s < shapes.size(); ++s) {
    const auto [n, c, h, w] = shapes[s];
    const int hw = h * w;
    SCOPED_TRACE(std::get<2>(jobs[s]));
    TorchRef& t = *refs[s];
    auto [x, gamma, beta, dy, rm, rv] = inputs(n, c, hw);
    const size_t sz = x.size();
    std::vector<float> sm(c), si(c), y(sz), dx(sz), dg(c), db(c);
    batchnorm_forward_train(n, c, hw, x.data(), gamma.data(), beta.data(), eps, mom, rm.data(), rv.data(),
                            sm.data(), si.data(), y.data());
    batchnorm_backward(n, c, hw, x.data(), dy.data(), gamma.data(), sm.data(), si.data(), dx.data(), dg.data(),
                       db.data());
    expect_close("y", y, t.get("y"), 1e-5, 1e-5);
    expect_close("running_mean", rm, t.get("rm"), 1e-6, 1e-6);
    expect_close("running_var (unbiased)", rv, t.get("rv"), 1e-6, 1e-6);
    expect_close("save_mean", sm, t.get("mean"), 1e-6, 1e-6);
    expect_close("save_invstd", si, t.get("invstd"), 1e-6, 1e-5);
    expect_close("dx", dx, t.get("dx"), 1e-5, 1e-4);
    expect_close("dgamma", dg, t.get("dgamma"), 1e-4, 1e-5);
    expect_close("dbeta", db, t.get("dbeta"), 1e-4, 1e-5);
  }
}

TEST(TorchRef, CrossEntropyWithLabelSmoothing) {
  const int n = 9, classes = 13;
  const std::vector<float> smoothing = {0.f, 0.1f, 0.3f};
  const auto z = randn(static_cast<size_t>(n) * classes, 21, 4.f);
  const std::vector<int32_t> labels = {0, 12, 5, 5, 1, 7, 11, 3, 9};
  std::vector<std::unique_ptr<TorchRef>> refs;
  std::vector<std::tuple<TorchRef*, std::string, std::string>> jobs;
  for (float e : smoothing) {
    refs.push_back(std::make_unique<TorchRef>(static_cast<int>(refs.size())));
    refs.back()->put("z", z);
    refs.back()->put("labels", labels);
    char args[128];
    std::snprintf(args, sizeof args, "n=%d classes=%d smoothing=%.9f scale=2.5", n, classes, e);
    jobs.emplace_back(refs.back().get(), "ce", args);
  }
  ASSERT_TRUE(run_jobs(jobs));
  for (size_t i = 0; i < smoothing.size(); ++i) {
    const float e = smoothing[i];
    SCOPED_TRACE("smoothing " + std::to_string(e));
    TorchRef& t = *refs[i];
    auto zz = z;
    auto ll = labels;
    std::vector<float> probs(z.size()), dz(z.size());
    const float loss = softmax_cross_entropy_forward(n, classes, zz.data(), ll.data(), e, probs.data());
    softmax_cross_entropy_backward(n, classes, probs.data(), ll.data(), e, 2.5f, dz.data());
    expect_close("loss", {loss}, t.get("loss"), 1e-6, 1e-6);
    expect_close("dlogits", dz, t.get("dz"), 1e-7, 1e-5);
  }
}

TEST(TorchRef, MaxPool3x3Stride2) {
  const int n = 2, c = 3, h = 11, w = 8;
  TorchRef t;
  auto x = randn(static_cast<size_t>(n) * c * h * w, 31);
  const int oh = (h + 2 - 3) / 2 + 1, ow = (w + 2 - 3) / 2 + 1;
  auto dy = randn(static_cast<size_t>(n) * c * oh * ow, 32);
  t.put("x", x);
  t.put("dy", dy);
  ASSERT_TRUE(t.run("maxpool", "n=2 c=3 h=11 w=8 kernel=3 stride=2 pad=1"));
  std::vector<float> y(dy.size()), dx(x.size());
  std::vector<int32_t> am(dy.size());
  maxpool2d_forward(n, c, h, w, 3, 2, 1, x.data(), y.data(), am.data());
  maxpool2d_backward(n, c, h, w, 3, 2, 1, dy.data(), am.data(), dx.data());
  expect_close("y", y, t.get("y"), 0, 0);
  expect_close("argmax", std::vector<float>(am.begin(), am.end()), t.get("argmax"), 0, 0);
  expect_close("dx", dx, t.get("dx"), 1e-6, 1e-6);
}

TEST(TorchRef, Linear) {
  const int n = 16, in = 64, out = 10;
  TorchRef t;
  auto x = randn(static_cast<size_t>(n) * in, 41), w = randn(static_cast<size_t>(out) * in, 42, 0.125f),
       b = randn(out, 43), dy = randn(static_cast<size_t>(n) * out, 44);
  t.put("x", x);
  t.put("w", w);
  t.put("b", b);
  t.put("dy", dy);
  ASSERT_TRUE(t.run("linear", "n=16 in=64 out=10"));
  std::vector<float> y(dy.size()), dx(x.size()), dw(w.size()), db(out);
  linear_forward(n, in, out, x.data(), w.data(), b.data(), y.data());
  linear_backward(n, in, out, x.data(), w.data(), dy.data(), dx.data(), dw.data(), db.data());
  expect_close("y", y, t.get("y"), 1e-5, 1e-5);
  expect_close("dx", dx, t.get("dx"), 1e-5, 1e-5);
  expect_close("dw", dw, t.get("dw"), 1e-5, 1e-5);
  expect_close("db", db, t.get("db"), 1e-5, 1e-5);
}

}  // namespace
}  // namespace ddp::cpu::test
