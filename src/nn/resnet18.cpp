#include "ddp/nn/resnet18.h"

#include <cmath>

#include "ddp/core/check.h"
#include "ddp/core/rng.h"

namespace ddp::nn {
namespace {

struct Builder {
  ResNet18Spec& s;
  int add_param(const std::string& name, std::vector<int64_t> shape, ParamKind kind) {
    ParamInfo p;
    p.name = name;
    p.shape = std::move(shape);
    p.numel = 1;
    for (auto d : p.shape) p.numel *= d;
    p.offset = s.param_count;
    p.kind = kind;
    s.param_count += p.numel;
    s.params.push_back(std::move(p));
    return static_cast<int>(s.params.size()) - 1;
  }
  int add_buffer(const std::string& name, int64_t n) {
    s.buffers.push_back({name, s.buffer_count, n});
    s.buffer_count += n;
    return static_cast<int>(s.buffers.size()) - 1;
  }
  ConvSpec conv(const std::string& name, int in, int out, int k, int stride, int pad) {
    ConvSpec c{name, in, out, k, stride, pad, -1};
    c.weight = add_param(name + ".weight", {out, in, k, k}, ParamKind::ConvWeight);
    return c;
  }
  BnSpec bn(const std::string& name, int ch) {
    BnSpec b;
    b.name = name;
    b.channels = ch;
    b.weight = add_param(name + ".weight", {ch}, ParamKind::BnWeight);
    b.bias = add_param(name + ".bias", {ch}, ParamKind::BnBias);
    b.running_mean = add_buffer(name + ".running_mean", ch);
    b.running_var = add_buffer(name + ".running_var", ch);
    return b;
  }
};

}  // namespace

ResNet18Spec make_resnet18_spec(int num_classes) {
  DDP_CHECK(num_classes >= 1, "number of classes must be at least 1, got ", num_classes);
  ResNet18Spec s;
  s.num_classes = num_classes;
  Builder b{s};
  s.conv1 = b.conv("conv1", 3, 64, 7, 2, 3);
  s.bn1 = b.bn("bn1", 64);
  const int widths[4] = {64, 128, 256, 512};
  int in = 64;
  for (int layer = 0; layer < 4; ++layer) {
    for (int i = 0; i < 2; ++i) {
      BlockSpec& blk = s.blocks[layer * 2 + i];
      std::string p = "layer" + std::to_string(layer + 1) + "." + std::to_string(i);
      int out = widths[layer];
      blk.stride = (i == 0 && layer > 0) ? 2 : 1;
      blk.conv1 = b.conv(p + ".conv1", in, out, 3, blk.stride, 1);
      blk.bn1 = b.bn(p + ".bn1", out);
      blk.conv2 = b.conv(p + ".conv2", out, out, 3, 1, 1);
      blk.bn2 = b.bn(p + ".bn2", out);
      if (blk.stride != 1 || in != out) {
        blk.down_conv = b.conv(p + ".downsample.0", in, out, 1, blk.stride, 0);
        blk.down_bn = b.bn(p + ".downsample.1", out);
      }
      in = out;
    }
  }
  s.fc_weight = b.add_param("fc.weight", {num_classes, 512}, ParamKind::FcWeight);
  s.fc_bias = b.add_param("fc.bias", {num_classes}, ParamKind::FcBias);
  return s;
}

std::vector<std::string> ResNet18Spec::bn_names() const {
  std::vector<std::string> out;
  for (size_t i = 0; i < buffers.size(); i += 2) {
    const std::string& n = buffers[i].name;
    out.push_back(n.substr(0, n.size() - std::string(".running_mean").size()));
  }
  return out;
}

const ParamInfo& ResNet18Spec::param(const std::string& name) const {
  for (auto& p : params)
    if (p.name == name) return p;
  DDP_FAIL("ResNet18 has no parameter named '", name, "'");
}

StageSizes resnet18_stage_sizes(int h, int w) {
  DDP_CHECK(h >= 32 && w >= 32, "ResNet18 needs an input of at least 32x32 pixels, got ", h, "x", w);
  StageSizes st;
  st.conv1_h = conv_out(h, 7, 2, 3);
  st.conv1_w = conv_out(w, 7, 2, 3);
  st.pool_h = conv_out(st.conv1_h, 3, 2, 1);
  st.pool_w = conv_out(st.conv1_w, 3, 2, 1);
  return st;
}

void init_resnet18(const ResNet18Spec& spec, const InitOptions& opt, float* params, float* buffers) {
  for (size_t i = 0; i < spec.params.size(); ++i) {
    const ParamInfo& p = spec.params[i];
    float* d = params + p.offset;
    // One Philox sub-stream per tensor (counter space split by tensor index), so adding a class to
    // fc does not change any conv's initial weights.
    Rng rng(opt.seed, rng_stream::kInit, static_cast<uint64_t>(i) << 40);
    switch (p.kind) {
      case ParamKind::ConvWeight: {
        // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out * kh * kw))
        double fan_out = static_cast<double>(p.shape[0]) * p.shape[2] * p.shape[3];
        float std = static_cast<float>(std::sqrt(2.0 / fan_out));
        for (int64_t j = 0; j < p.numel; ++j) d[j] = std * rng.normal();
        break;
      }
      case ParamKind::BnWeight:
        for (int64_t j = 0; j < p.numel; ++j) d[j] = 1.0f;
        break;
      case ParamKind::BnBias:
        for (int64_t j = 0; j < p.numel; ++j) d[j] = 0.0f;
        break;
      case ParamKind::FcWeight:
      case ParamKind::FcBias: {
        // nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) gives bound 1/sqrt(fan_in);
        // the bias uses the same bound.
        float bound = 1.0f / std::sqrt(512.0f);
        for (int64_t j = 0; j < p.numel; ++j) d[j] = rng.uniform(-bound, bound);
        break;
      }
    }
  }
  if (opt.zero_init_residual) {
    for (const BlockSpec& blk : spec.blocks) {
      const ParamInfo& g = spec.params[blk.bn2.weight];
      for (int64_t j = 0; j < g.numel; ++j) params[g.offset + j] = 0.0f;
    }
  }
  for (size_t i = 0; i < spec.buffers.size(); ++i) {
    const BufferInfo& b = spec.buffers[i];
    float v = (i % 2 == 0) ? 0.0f : 1.0f;  // running_mean = 0, running_var = 1
    for (int64_t j = 0; j < b.numel; ++j) buffers[b.offset + j] = v;
  }
}

}  // namespace ddp::nn
