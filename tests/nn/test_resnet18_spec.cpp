// The ResNet18 spec and init against torchvision: names, shapes and order come from
// torchvision.models.resnet18(num_classes=K).state_dict() printed at test time by /usr/bin/python3;
// init statistics against torchvision's formulas (Kaiming normal fan_out for convs, nn.Linear's
// uniform bound 1/sqrt(512) for fc).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "ddp/core/check.h"
#include "ddp/nn/resnet18.h"

#ifndef DDP_TORCHVISION_NAMES_PY
#error "DDP_TORCHVISION_NAMES_PY must name tests/nn/torchvision_names.py"
#endif

using namespace ddp::nn;

namespace {

struct Entry {
  std::string name;
  std::vector<int64_t> shape;
};

std::vector<Entry> torchvision_state_dict(int k) {
  std::string cmd = std::string("/usr/bin/python3 ") + DDP_TORCHVISION_NAMES_PY + " " + std::to_string(k);
  FILE* p = popen(cmd.c_str(), "r");
  DDP_CHECK(p != nullptr, "cannot run ", cmd);
  std::string text;
  char buf[4096];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, got);
  DDP_CHECK(pclose(p) == 0, "'", cmd, "' failed (needs Debian's python3-torchvision)");
  std::vector<Entry> out;
  std::istringstream is(text);
  std::string name, dims;
  while (is >> name >> dims) {
    Entry e{name, {}};
    if (dims != "-") {
      std::istringstream ds(dims);
      std::string d;
      while (std::getline(ds, d, ',')) e.shape.push_back(std::stoll(d));
    }
    out.push_back(e);
  }
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class SpecVsTorchvision : public ::testing::TestWithParam<int> {};

TEST_P(SpecVsTorchvision, NamesShapesAndOrder) {
  const int k = GetParam();
  const ResNet18Spec spec = make_resnet18_spec(k);
  const auto tv = torchvision_state_dict(k);
  std::vector<Entry> tv_params, tv_buffers;
  std::vector<std::string> tv_bns;
  for (const auto& e : tv) {
    if (ends_with(e.name, ".num_batches_tracked"))
      tv_bns.push_back(e.name.substr(0, e.name.size() - std::string(".num_batches_tracked").size()));
    else if (ends_with(e.name, ".running_mean") || ends_with(e.name, ".running_var"))
      tv_buffers.push_back(e);
    else
      tv_params.push_back(e);
  }
  ASSERT_EQ(spec.params.size(), tv_params.size());
  int64_t offset = 0;
  for (size_t i = 0; i < tv_params.size(); ++i) {
    EXPECT_EQ(spec.params[i].name, tv_params[i].name) << "parameter " << i;
    EXPECT_EQ(spec.params[i].shape, tv_params[i].shape) << tv_params[i].name;
    EXPECT_EQ(spec.params[i].offset, offset) << tv_params[i].name;
    offset += spec.params[i].numel;
  }
  EXPECT_EQ(spec.param_count, offset);
  ASSERT_EQ(spec.buffers.size(), tv_buffers.size());
  int64_t boff = 0;
  for (size_t i = 0; i < tv_buffers.size(); ++i) {
    EXPECT_EQ(spec.buffers[i].name, tv_buffers[i].name);
    ASSERT_EQ(tv_buffers[i].shape.size(), 1u);
    EXPECT_EQ(spec.buffers[i].numel, tv_buffers[i].shape[0]);
    EXPECT_EQ(spec.buffers[i].offset, boff);
    boff += spec.buffers[i].numel;
  }
  EXPECT_EQ(spec.buffer_count, boff);
  EXPECT_EQ(spec.bn_names(), tv_bns);
}

INSTANTIATE_TEST_SUITE_P(Classes, SpecVsTorchvision, ::testing::Values(1000, 10, 7));

TEST(Spec, ParameterCountOfImageNetResNet18) {
  EXPECT_EQ(make_resnet18_spec(1000).param_count, 11689512);  // torchvision's documented count
  EXPECT_EQ(make_resnet18_spec(10).param_count, 11689512 - 990 * 513);
}

TEST(Spec, StructureMatchesParams) {
  const ResNet18Spec s = make_resnet18_spec(10);
  EXPECT_EQ(s.params[s.conv1.weight].name, "conv1.weight");
  EXPECT_EQ(s.params[s.fc_weight].name, "fc.weight");
  EXPECT_EQ(s.params[s.fc_bias].name, "fc.bias");
  int downsamples = 0;
  for (int i = 0; i < 8; ++i) {
    const BlockSpec& b = s.blocks[i];
    EXPECT_EQ(b.stride, (i % 2 == 0 && i > 0) ? 2 : 1);
    EXPECT_EQ(b.conv1.stride, b.stride);
    EXPECT_EQ(b.conv2.stride, 1);
    downsamples += b.down_conv.has_value();
    if (b.down_conv) {
      EXPECT_EQ(b.down_conv->kernel, 1);
      EXPECT_EQ(b.down_conv->stride, 2);
      EXPECT_EQ(b.down_conv->pad, 0);
    }
    EXPECT_FLOAT_EQ(b.bn1.eps, 1e-5f);
    EXPECT_FLOAT_EQ(b.bn1.momentum, 0.1f);
  }
  EXPECT_EQ(downsamples, 3);
  EXPECT_THROW(s.param("layer5.0.conv1.weight"), ddp::Error);
  EXPECT_THROW(make_resnet18_spec(0), ddp::Error);
}

TEST(Spec, StageSizes) {
  auto st = resnet18_stage_sizes(224, 224);
  EXPECT_EQ(st.conv1_h, 112);
  EXPECT_EQ(st.pool_h, 56);
  st = resnet18_stage_sizes(48, 40);
  EXPECT_EQ(st.conv1_h, 24);
  EXPECT_EQ(st.conv1_w, 20);
  EXPECT_EQ(st.pool_h, 12);
  EXPECT_EQ(st.pool_w, 10);
  EXPECT_THROW(resnet18_stage_sizes(31, 224), ddp::Error);
  EXPECT_THROW(resnet18_stage_sizes(224, 16), ddp::Error);
}

TEST(Init, StatisticsFollowTorchvision) {
  const ResNet18Spec s = make_resnet18_spec(1000);
  std::vector<float> p(s.param_count), b(s.buffer_count);
  InitOptions opt;
  opt.seed = 42;
  init_resnet18(s, opt, p.data(), b.data());
  for (const ParamInfo& pi : s.params) {
    double sum = 0, sq = 0, mx = 0;
    for (int64_t j = 0; j < pi.numel; ++j) {
      double v = p[pi.offset + j];
      sum += v;
      sq += v * v;
      mx = std::max(mx, std::abs(v));
    }
    const double n = static_cast<double>(pi.numel), mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
    switch (pi.kind) {
      case ParamKind::ConvWeight: {
        // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out * kh * kw)).
        const double want = std::sqrt(2.0 / static_cast<double>(pi.shape[0] * pi.shape[2] * pi.shape[3]));
        // Standard error of a sample std is sd / sqrt(2n); 5 of them, and at least 2%.
        EXPECT_NEAR(sd, want, std::max(5 * want / std::sqrt(2 * n), 0.02 * want)) << pi.name;
        EXPECT_NEAR(mean, 0.0, 5 * want / std::sqrt(n)) << pi.name;
        break;
      }
      case ParamKind::BnWeight:
        EXPECT_EQ(mean, 1.0) << pi.name;
        EXPECT_EQ(sd, 0.0) << pi.name;
        break;
      case ParamKind::BnBias:
        EXPECT_EQ(mx, 0.0) << pi.name;
        break;
      case ParamKind::FcWeight:
      case ParamKind::FcBias: {
        // nn.Linear: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias; std = bound / sqrt(3).
        const double bound = 1.0 / std::sqrt(512.0);
        EXPECT_LE(mx, bound) << pi.name;
        EXPECT_GT(mx, 0.9 * bound) << pi.name;
        EXPECT_NEAR(sd, bound / std::sqrt(3.0), 0.05 * bound) << pi.name;
        EXPECT_NEAR(mean, 0.0, 5 * bound / std::sqrt(3 * n)) << pi.name;
        break;
      }
    }
  }
  for (size_t i = 0; i < s.buffers.size(); ++i)
    for (int64_t j = 0; j < s.buffers[i].numel; ++j) ASSERT_EQ(b[s.buffers[i].offset + j], i % 2 == 0 ? 0.0f : 1.0f);
}

TEST(Init, SeedsAndZeroInitResidual) {
  const ResNet18Spec s = make_resnet18_spec(10);
  std::vector<float> a(s.param_count), b(s.param_count), c(s.param_count), z(s.param_count), buf(s.buffer_count);
  InitOptions o1;
  o1.seed = 1;
  InitOptions o2;
  o2.seed = 2;
  init_resnet18(s, o1, a.data(), buf.data());
  init_resnet18(s, o1, b.data(), buf.data());
  init_resnet18(s, o2, c.data(), buf.data());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  InitOptions oz = o1;
  oz.zero_init_residual = true;
  init_resnet18(s, oz, z.data(), buf.data());
  for (const BlockSpec& blk : s.blocks) {
    const ParamInfo& g = s.params[blk.bn2.weight];
    for (int64_t j = 0; j < g.numel; ++j) ASSERT_EQ(z[g.offset + j], 0.0f) << g.name;
    const ParamInfo& g1 = s.params[blk.bn1.weight];
    EXPECT_EQ(z[g1.offset], 1.0f) << g1.name;
  }
  // The class count changes fc only: conv weights do not depend on it.
  const ResNet18Spec s7 = make_resnet18_spec(7);
  std::vector<float> d(s7.param_count), buf7(s7.buffer_count);
  init_resnet18(s7, o1, d.data(), buf7.data());
  const int64_t convs_end = s.params[s.fc_weight].offset;
  EXPECT_TRUE(std::equal(a.begin(), a.begin() + convs_end, d.begin()));
}

}  // namespace
