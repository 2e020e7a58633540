// ResNet18 exactly as torchvision defines it: names, shapes, order and initialisation.
//
// Every backend stores parameters in one flat fp32 buffer, in torchvision's state_dict order (so the
// gradient buffer has the same order, and buckets taken from its end follow reverse layer order),
// and BN running statistics in a second flat fp32 buffer. ParamInfo::offset indexes those buffers.
// Within the flat buffer each tensor is in PyTorch's layout (OIHW for convs, [out, in] for fc) on
// the CPU backend; a backend may keep another layout internally (the CUDA backend keeps conv
// weights KRSC for NHWC) but converts at the Model boundary (see Model::get_params_torch).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ddp::nn {

enum class ParamKind { ConvWeight, BnWeight, BnBias, FcWeight, FcBias };

struct ParamInfo {
  std::string name;            // torchvision state_dict name, e.g. "layer2.0.downsample.0.weight"
  std::vector<int64_t> shape;  // PyTorch shape
  int64_t offset = 0;          // into the flat parameter (and gradient) buffer, in elements
  int64_t numel = 0;
  ParamKind kind = ParamKind::ConvWeight;
  bool is_bn_or_bias() const { return kind != ParamKind::ConvWeight && kind != ParamKind::FcWeight; }
};

struct BufferInfo {
  std::string name;  // "bn1.running_mean", "layer1.0.bn2.running_var", ...
  int64_t offset = 0;
  int64_t numel = 0;
};

struct ConvSpec {
  std::string name;  // "conv1", "layer1.0.conv1", "layer2.0.downsample.0"
  int in_channels = 0, out_channels = 0, kernel = 0, stride = 1, pad = 0;
  int weight = -1;  // index into ResNet18Spec::params
};

struct BnSpec {
  std::string name;  // "bn1", "layer1.0.bn1", "layer2.0.downsample.1"
  int channels = 0;
  int weight = -1, bias = -1;                // indices into params
  int running_mean = -1, running_var = -1;  // indices into buffers
  float eps = 1e-5f;
  float momentum = 0.1f;  // PyTorch convention: new = (1 - m) * old + m * batch
};

struct BlockSpec {  // torchvision BasicBlock
  ConvSpec conv1, conv2;
  BnSpec bn1, bn2;
  std::optional<ConvSpec> down_conv;  // 1x1 stride-2 projection when shape changes
  std::optional<BnSpec> down_bn;
  int stride = 1;
};

struct ResNet18Spec {
  int num_classes = 1000;
  ConvSpec conv1;  // 7x7/2, pad 3, 3 -> 64
  BnSpec bn1;      // then ReLU, maxpool 3x3/2 pad 1
  std::array<BlockSpec, 8> blocks;  // layer1.0, layer1.1, layer2.0, ..., layer4.1
  int fc_weight = -1, fc_bias = -1;  // fc: 512 -> num_classes
  std::vector<ParamInfo> params;     // state_dict order
  std::vector<BufferInfo> buffers;   // running_mean / running_var in state_dict order
  int64_t param_count = 0;           // total elements in the flat parameter buffer
  int64_t buffer_count = 0;          // total elements in the flat buffer buffer
  std::vector<std::string> bn_names() const;  // for "<bn>.num_batches_tracked" entries

  const ParamInfo& param(const std::string& name) const;  // throws naming the tensor if absent
};

ResNet18Spec make_resnet18_spec(int num_classes);

// Output spatial size of the network's stages for an input of h x w (checks h, w >= 32).
struct StageSizes { int conv1_h, conv1_w, pool_h, pool_w; };
StageSizes resnet18_stage_sizes(int h, int w);
inline int conv_out(int in, int k, int s, int p) { return (in + 2 * p - k) / s + 1; }

struct InitOptions {
  uint64_t seed = 0;
  bool zero_init_residual = false;  // torchvision's zero_init_residual: last BN gamma of each block = 0
};

// torchvision's init into flat buffers in PyTorch layout: Kaiming normal (fan_out, ReLU) for convs,
// BN gamma=1 beta=0, running mean 0 / var 1, and nn.Linear's default for fc
// (weight and bias ~ U(-1/sqrt(512), 1/sqrt(512))). Random draws come from Philox stream kInit.
void init_resnet18(const ResNet18Spec& spec, const InitOptions& opt, float* params, float* buffers);

}  // namespace ddp::nn
