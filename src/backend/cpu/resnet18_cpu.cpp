#include "ddp/backend/cpu/resnet18_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "ddp/backend/cpu/ops.h"
#include "ddp/backend/cpu/ops_conv.h"
#include "ddp/backend/cpu/sgd.h"
#include "ddp/core/check.h"

namespace ddp::cpu {

namespace {

// A conv followed by its BN: what the pair keeps from forward for backward.
struct ConvBn {
  const nn::ConvSpec* conv = nullptr;
  const nn::BnSpec* bn = nullptr;
  Tensor conv_out;                // BN input
  Tensor save_mean, save_invstd;  // per channel
  Conv2dShape shape;              // of the last forward
  // On tiny maps (layer4 at 32 px input) some kernel taps see only padding: the live-tap weights are
  // gathered once in forward and reused by backward's data gradient (ddp/backend/cpu/ops_conv.h). The
  // buffer is sized for the configured input size, which has the most live taps of any allowed size
  // (smaller maps only lose taps); empty when every tap is live there.
  std::vector<int> taps;  // live taps of `shape`
  Tensor live_w;          // k x c x taps.size() when gathered() (see below)
  int64_t live_cap = 0;   // floats in live_w (0: not allocated)
  bool gathered() const {
    return live_cap > 0 && static_cast<int>(taps.size()) < shape.r * shape.s &&
           static_cast<int64_t>(shape.k) * shape.c * static_cast<int64_t>(taps.size()) <= live_cap;
  }
};

struct Block {
  const nn::BlockSpec* spec = nullptr;
  ConvBn c1, c2;
  std::optional<ConvBn> ds;
  Tensor mid;  // relu(bn1(conv1(x))): conv2's input
  Tensor out;  // relu(bn2(conv2(mid)) + identity): the block output
  const float* in = nullptr;  // block input of the last forward (previous block's out, or the pool)
  int in_c = 0, in_h = 0, in_w = 0;
};

int64_t numel_of(int n, int c, int h, int w) { return static_cast<int64_t>(n) * c * h * w; }

}  // namespace

struct CpuResNet18::Impl {
  Tensor input;  // n x 3 x H x W, normalised
  std::vector<int32_t> labels;
  int n = 0, h = 0, w = 0;
  bool have_input = false;
  bool have_train_forward = false;  // backward needs the batch statistics of a train forward
  bool have_forward = false;
  bool have_loss = false;  // m.loss holds the last forward's loss (kept across set_input)

  ConvBn stem;
  Tensor stem_act;  // relu(bn1(conv1)): maxpool input
  Tensor pool;
  Tensor argmax;
  int c1_h = 0, c1_w = 0, pool_h = 0, pool_w = 0;
  Block blocks[8];
  Tensor pooled;  // n x 512
  Tensor logits, probs;
  float loss = 0.0f;

  // Gradient scratch: g[0..3] hold block-sized activation gradients (at most the pool output's
  // size), g_stem the stem's (conv1 output size). The forward pass also borrows g[0] for the
  // downsample branch's BN output, which is not needed for backward.
  Tensor g[4];
  Tensor g_stem;
  Tensor d_pooled, d_logits;
};

namespace {

Tensor alloc(int64_t count, size_t& total, DType t = DType::F32) {
  Tensor x = Tensor::zeros({std::max<int64_t>(count, 1)}, t);
  total += x.nbytes();
  return x;
}

// in_h x in_w: the conv's input size at the configured image size.
void alloc_conv_bn(ConvBn& L, const nn::ConvSpec& c, const nn::BnSpec& b, int64_t out_count, int n, int in_h,
                   int in_w, size_t& total) {
  L.conv = &c;
  L.bn = &b;
  L.conv_out = alloc(out_count, total);
  L.save_mean = alloc(b.channels, total);
  L.save_invstd = alloc(b.channels, total);
  const Conv2dShape s{n, c.in_channels, in_h, in_w, c.out_channels, c.kernel, c.kernel, c.stride, c.pad};
  const size_t live = conv2d_live_taps(s).size();
  if (static_cast<int>(live) < c.kernel * c.kernel && live > 0) {
    L.live_cap = static_cast<int64_t>(c.out_channels) * c.in_channels * static_cast<int64_t>(live);
    L.live_w = alloc(L.live_cap, total);
  }
}

}  // namespace

CpuResNet18::CpuResNet18(const nn::ModelConfig& cfg) : cfg_(cfg), spec_(nn::make_resnet18_spec(cfg.num_classes)) {
  DDP_CHECK(cfg.max_batch >= 1, "model: max_batch must be at least 1, got ", cfg.max_batch);
  DDP_CHECK(cfg.height >= 32 && cfg.width >= 32, "model: input size must be at least 32x32, got ", cfg.height, "x",
            cfg.width);
  DDP_CHECK(cfg.amp == nn::Amp::Off, "the CPU backend computes in fp32 only; mixed precision (--amp ",
            nn::amp_name(cfg.amp), ") needs the CUDA backend");
  DDP_CHECK(cfg.label_smoothing >= 0.0f && cfg.label_smoothing <= 1.0f, "label smoothing must lie in [0, 1], got ",
            cfg.label_smoothing);
  set_num_threads(cfg.threads);

  size_t& total = allocated_bytes_;
  params_ = Tensor::zeros({spec_.param_count}, DType::F32);
  grads_ = Tensor::zeros({spec_.param_count}, DType::F32);
  momentum_ = Tensor::zeros({spec_.param_count}, DType::F32);
  buffers_ = Tensor::zeros({spec_.buffer_count}, DType::F32);
  total += params_.nbytes() * 3 + buffers_.nbytes();
  nn::init_resnet18(spec_, cfg.init, params_.data<float>(), buffers_.data<float>());

  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  const int N = cfg.max_batch;
  const auto st = nn::resnet18_stage_sizes(cfg.height, cfg.width);
  m.input = alloc(numel_of(N, 3, cfg.height, cfg.width), total);
  m.labels.resize(static_cast<size_t>(N));
  alloc_conv_bn(m.stem, spec_.conv1, spec_.bn1, numel_of(N, 64, st.conv1_h, st.conv1_w), N, cfg.height, cfg.width,
                total);
  m.stem_act = alloc(numel_of(N, 64, st.conv1_h, st.conv1_w), total);
  m.pool = alloc(numel_of(N, 64, st.pool_h, st.pool_w), total);
  m.argmax = alloc(numel_of(N, 64, st.pool_h, st.pool_w), total, DType::I32);
  int h = st.pool_h, w = st.pool_w;
  int64_t largest_block = numel_of(N, 64, h, w);
  for (int i = 0; i < 8; ++i) {
    Block& b = m.blocks[i];
    const nn::BlockSpec& bs = spec_.blocks[i];
    b.spec = &bs;
    int oh = nn::conv_out(h, 3, bs.stride, 1), ow = nn::conv_out(w, 3, bs.stride, 1);
    int64_t cnt = numel_of(N, bs.conv1.out_channels, oh, ow);
    largest_block = std::max(largest_block, cnt);
    alloc_conv_bn(b.c1, bs.conv1, bs.bn1, cnt, N, h, w, total);
    alloc_conv_bn(b.c2, bs.conv2, bs.bn2, cnt, N, oh, ow, total);
    if (bs.down_conv) {
      b.ds.emplace();
      alloc_conv_bn(*b.ds, *bs.down_conv, *bs.down_bn, cnt, N, h, w, total);
    }
    b.mid = alloc(cnt, total);
    b.out = alloc(cnt, total);
    h = oh;
    w = ow;
  }
  m.pooled = alloc(static_cast<int64_t>(N) * 512, total);
  m.logits = alloc(static_cast<int64_t>(N) * cfg.num_classes, total);
  m.probs = alloc(static_cast<int64_t>(N) * cfg.num_classes, total);
  for (auto& t : m.g) t = alloc(largest_block, total);
  m.g_stem = alloc(numel_of(N, 64, st.conv1_h, st.conv1_w), total);
  m.d_pooled = alloc(static_cast<int64_t>(N) * 512, total);
  m.d_logits = alloc(static_cast<int64_t>(N) * cfg.num_classes, total);
}

CpuResNet18::~CpuResNet18() = default;

float* CpuResNet18::params() { return params_.data<float>(); }
float* CpuResNet18::grads() { return grads_.data<float>(); }
float* CpuResNet18::momentum() { return momentum_.data<float>(); }
float* CpuResNet18::buffers() { return buffers_.data<float>(); }

void CpuResNet18::get_params_torch(float* host) const {
  std::memcpy(host, params_.data<float>(), params_.nbytes());
}
void CpuResNet18::set_params_torch(const float* host) { std::memcpy(params_.data<float>(), host, params_.nbytes()); }
void CpuResNet18::get_grads_torch(float* host) const { std::memcpy(host, grads_.data<float>(), grads_.nbytes()); }
void CpuResNet18::get_momentum_torch(float* host) const {
  std::memcpy(host, momentum_.data<float>(), momentum_.nbytes());
}
void CpuResNet18::set_momentum_torch(const float* host) {
  std::memcpy(momentum_.data<float>(), host, momentum_.nbytes());
}
void CpuResNet18::get_buffers(float* host) const { std::memcpy(host, buffers_.data<float>(), buffers_.nbytes()); }
void CpuResNet18::set_buffers(const float* host) { std::memcpy(buffers_.data<float>(), host, buffers_.nbytes()); }

void CpuResNet18::check_input(int n, int h, int w) const {
  DDP_CHECK(n >= 1 && n <= cfg_.max_batch, "model input: batch of ", n, " images, but the model was built for 1..",
            cfg_.max_batch, " (ModelConfig::max_batch)");
  DDP_CHECK(h >= 32 && w >= 32, "model input: ResNet18 needs images of at least 32x32 pixels, got ", h, "x", w);
  DDP_CHECK(h <= cfg_.height && w <= cfg_.width, "model input: images of ", h, "x", w,
            " exceed the size the model was built for (", cfg_.height, "x", cfg_.width, ")");
}

void CpuResNet18::set_input_u8(const uint8_t* img, const int32_t* labels, int n, int h, int w) {
  check_input(n, h, w);
  DDP_CHECK(img != nullptr && labels != nullptr, "model input: null image or label pointer");
  Impl& m = *impl_;
  // torchvision's ToTensor (x / 255) then Normalize ((x - mean) / std), with the same float ops.
  static const float kMean[3] = {0.485f, 0.456f, 0.406f};
  static const float kStd[3] = {0.229f, 0.224f, 0.225f};
  float* x = m.input.data<float>();
  const int64_t plane = static_cast<int64_t>(h) * w;
#pragma omp parallel for collapse(2) schedule(static) num_threads(num_threads())
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < 3; ++c) {
      const uint8_t* src = img + static_cast<int64_t>(i) * plane * 3 + c;
      float* dst = x + (static_cast<int64_t>(i) * 3 + c) * plane;
      for (int64_t p = 0; p < plane; ++p) dst[p] = (static_cast<float>(src[p * 3]) / 255.0f - kMean[c]) / kStd[c];
    }
  std::copy(labels, labels + n, m.labels.begin());
  m.n = n;
  m.h = h;
  m.w = w;
  m.have_input = true;
  m.have_forward = m.have_train_forward = false;
}

void CpuResNet18::set_input_f32(const float* x, const int32_t* labels, int n, int h, int w) {
  check_input(n, h, w);
  DDP_CHECK(x != nullptr && labels != nullptr, "model input: null image or label pointer");
  Impl& m = *impl_;
  std::memcpy(m.input.data<float>(), x, sizeof(float) * static_cast<size_t>(numel_of(n, 3, h, w)));
  std::copy(labels, labels + n, m.labels.begin());
  m.n = n;
  m.h = h;
  m.w = w;
  m.have_input = true;
  m.have_forward = m.have_train_forward = false;
}

namespace {

struct Ctx {
  const nn::ResNet18Spec& spec;
  float* params;
  float* grads;
  float* buffers;
  bool train;
  float* p(int idx) const { return params + spec.params[idx].offset; }
  float* g(int idx) const { return grads + spec.params[idx].offset; }
  float* b(int idx) const { return buffers + spec.buffers[idx].offset; }
};

// conv -> BN (-> ReLU) into y.
void conv_bn_forward(const Ctx& c, ConvBn& L, const Conv2dShape& s, const float* x, float* y, bool relu) {
  L.shape = s;
  L.taps = conv2d_live_taps(s);
  if (L.gathered()) {
    conv2d_gather_taps(s, L.taps, c.p(L.conv->weight), L.live_w.data<float>());
    conv2d_forward_gathered(s, L.taps, x, L.live_w.data<float>(), L.conv_out.data<float>());
  } else {
    conv2d_forward(s, x, c.p(L.conv->weight), L.conv_out.data<float>());
  }
  const nn::BnSpec& bn = *L.bn;
  const int hw = s.out_h() * s.out_w();
  if (c.train) {
    batchnorm_forward_train(s.n, s.k, hw, L.conv_out.data<float>(), c.p(bn.weight), c.p(bn.bias), bn.eps,
                            bn.momentum, c.b(bn.running_mean), c.b(bn.running_var), L.save_mean.data<float>(),
                            L.save_invstd.data<float>(), y);
  } else {
    batchnorm_forward_eval(s.n, s.k, hw, L.conv_out.data<float>(), c.p(bn.weight), c.p(bn.bias),
                           c.b(bn.running_mean), c.b(bn.running_var), bn.eps, y);
  }
  if (relu) relu_forward(static_cast<int64_t>(s.n) * s.k * hw, y, y);
}

// Backward through BN then conv, given dy = d(loss)/d(BN output). d_conv_out is scratch; dx (the
// conv input's gradient) may be nullptr. Reports each layer's finished gradients.
void conv_bn_backward(const Ctx& c, ConvBn& L, const float* x, const float* dy, float* d_conv_out, float* dx,
                      const nn::GradReadyFn& ready) {
  const Conv2dShape& s = L.shape;
  const nn::BnSpec& bn = *L.bn;
  batchnorm_backward(s.n, s.k, s.out_h() * s.out_w(), L.conv_out.data<float>(), dy, c.p(bn.weight),
                     L.save_mean.data<float>(), L.save_invstd.data<float>(), d_conv_out, c.g(bn.weight),
                     c.g(bn.bias));
  if (ready) ready({c.spec.params[bn.weight].offset, nullptr});
  conv2d_backward_weight(s, x, d_conv_out, c.g(L.conv->weight));
  if (ready) ready({c.spec.params[L.conv->weight].offset, nullptr});
  if (dx && L.gathered())
    conv2d_backward_data_gathered(s, L.taps, d_conv_out, L.live_w.data<float>(), dx);  // forward's weights
  else if (dx)
    conv2d_backward_data(s, d_conv_out, c.p(L.conv->weight), dx);
}

Conv2dShape conv_shape(int n, int c, int h, int w, const nn::ConvSpec& cs) {
  Conv2dShape s;
  s.n = n;
  s.c = c;
  s.h = h;
  s.w = w;
  s.k = cs.out_channels;
  s.r = cs.kernel;
  s.s = cs.kernel;
  s.stride = cs.stride;
  s.pad = cs.pad;
  return s;
}

}  // namespace

float CpuResNet18::forward(nn::Mode mode) {
  Impl& m = *impl_;
  DDP_CHECK(m.have_input, "model forward: no input (call set_input_u8 or set_input_f32 first)");
  const bool train = mode == nn::Mode::Train;
  Ctx c{spec_, params_.data<float>(), grads_.data<float>(), buffers_.data<float>(), train};
  const int n = m.n;
  const auto st = nn::resnet18_stage_sizes(m.h, m.w);
  m.c1_h = st.conv1_h;
  m.c1_w = st.conv1_w;
  m.pool_h = st.pool_h;
  m.pool_w = st.pool_w;

  conv_bn_forward(c, m.stem, conv_shape(n, 3, m.h, m.w, spec_.conv1), m.input.data<float>(),
                  m.stem_act.data<float>(), true);
  maxpool2d_forward(n, 64, st.conv1_h, st.conv1_w, 3, 2, 1, m.stem_act.data<float>(), m.pool.data<float>(),
                    m.argmax.data<int32_t>());

  const float* x = m.pool.data<float>();
  int ch = 64, h = st.pool_h, w = st.pool_w;
  for (Block& b : m.blocks) {
    const nn::BlockSpec& bs = *b.spec;
    b.in = x;
    b.in_c = ch;
    b.in_h = h;
    b.in_w = w;
    Conv2dShape s1 = conv_shape(n, ch, h, w, bs.conv1);
    conv_bn_forward(c, b.c1, s1, x, b.mid.data<float>(), true);
    const int oc = bs.conv1.out_channels, oh = s1.out_h(), ow = s1.out_w();
    conv_bn_forward(c, b.c2, conv_shape(n, oc, oh, ow, bs.conv2), b.mid.data<float>(), b.out.data<float>(), false);
    const float* identity = x;
    if (b.ds) {
      float* tmp = m.g[0].data<float>();
      conv_bn_forward(c, *b.ds, conv_shape(n, ch, h, w, *bs.down_conv), x, tmp, false);
      identity = tmp;
    }
    const int64_t cnt = numel_of(n, oc, oh, ow);
    add(cnt, b.out.data<float>(), identity, b.out.data<float>());
    relu_forward(cnt, b.out.data<float>(), b.out.data<float>());
    x = b.out.data<float>();
    ch = oc;
    h = oh;
    w = ow;
  }
  global_avgpool_forward(n, 512, h * w, x, m.pooled.data<float>());
  const int K = cfg_.num_classes;
  linear_forward(n, 512, K, m.pooled.data<float>(), c.p(spec_.fc_weight), c.p(spec_.fc_bias), m.logits.data<float>());
  m.loss = softmax_cross_entropy_forward(n, K, m.logits.data<float>(), m.labels.data(), cfg_.label_smoothing,
                                         m.probs.data<float>());
  if (train) ++num_batches_tracked_;
  m.have_forward = true;
  m.have_train_forward = train;
  m.have_loss = true;
  return m.loss;
}

// The CPU computes synchronously: nothing to overlap.
void CpuResNet18::forward_async(nn::Mode mode) { forward(mode); }

float CpuResNet18::last_loss() {
  DDP_CHECK(impl_->have_loss, "last_loss: no forward pass yet");
  return impl_->loss;
}

std::vector<float> CpuResNet18::logits_host() const {
  const Impl& m = *impl_;
  DDP_CHECK(m.have_forward, "logits_host: no forward pass since the last input");
  const float* l = m.logits.data<float>();
  return std::vector<float>(l, l + static_cast<int64_t>(m.n) * cfg_.num_classes);
}

nn::EvalCounts CpuResNet18::eval_counts() const {
  const Impl& m = *impl_;
  DDP_CHECK(m.have_forward, "eval_counts: no forward pass since the last input");
  nn::EvalCounts e;
  const int K = cfg_.num_classes;
  std::vector<int32_t> rank(static_cast<size_t>(m.n));
  label_ranks(m.n, K, m.logits.data<float>(), m.labels.data(), rank.data());  // ties and NaN: see label_rank
  for (const int32_t r : rank) {
    e.top1 += r == 0;
    e.top5 += r < 5;
  }
  e.count = m.n;
  e.loss_sum = static_cast<double>(m.loss) * m.n;
  return e;
}

void CpuResNet18::backward(float loss_scale, const nn::GradReadyFn& on_ready) {
  Impl& m = *impl_;
  DDP_CHECK(m.have_train_forward, "model backward: needs a forward(Mode::Train) on the current input first");
  Ctx c{spec_, params_.data<float>(), grads_.data<float>(), buffers_.data<float>(), true};
  const int n = m.n, K = cfg_.num_classes;

  softmax_cross_entropy_backward(n, K, m.probs.data<float>(), m.labels.data(), cfg_.label_smoothing, loss_scale,
                                 m.d_logits.data<float>());
  linear_backward(n, 512, K, m.pooled.data<float>(), c.p(spec_.fc_weight), m.d_logits.data<float>(),
                  m.d_pooled.data<float>(), c.g(spec_.fc_weight), c.g(spec_.fc_bias));
  if (on_ready) on_ready({spec_.params[spec_.fc_weight].offset, nullptr});

  // Rotating scratch: a holds d(block output) on entry to each block.
  float* g[4] = {m.g[0].data<float>(), m.g[1].data<float>(), m.g[2].data<float>(), m.g[3].data<float>()};
  {
    const Block& last = m.blocks[7];
    const int hw = last.c2.shape.out_h() * last.c2.shape.out_w();
    global_avgpool_backward(n, 512, hw, m.d_pooled.data<float>(), g[0]);
  }
  for (int bi = 7; bi >= 0; --bi) {
    Block& b = m.blocks[bi];
    const Conv2dShape& s2 = b.c2.shape;
    const int64_t cnt = numel_of(n, s2.k, s2.out_h(), s2.out_w());
    float *d_sum = g[0], *d_tmp = g[1], *d_in = g[2], *d_ds = g[3];
    relu_backward(cnt, b.out.data<float>(), d_sum, d_sum);
    // Reverse state_dict order inside the block (downsample, bn2, conv2, bn1, conv1), so each
    // on_ready call finishes a contiguous tail of the gradient buffer.
    if (b.ds) conv_bn_backward(c, *b.ds, b.in, d_sum, d_tmp, d_ds, on_ready);
    conv_bn_backward(c, b.c2, b.mid.data<float>(), d_sum, d_tmp, d_in, on_ready);
    relu_backward(cnt, b.mid.data<float>(), d_in, d_in);
    conv_bn_backward(c, b.c1, b.in, d_in, d_tmp, d_in, on_ready);
    const int64_t in_cnt = numel_of(n, b.in_c, b.in_h, b.in_w);
    add(in_cnt, d_in, b.ds ? d_ds : d_sum, d_in);
    std::swap(g[0], g[2]);  // d_in becomes the previous block's d(output)
  }
  // Stem: maxpool -> ReLU -> BN -> conv1 (no gradient for the image itself).
  float* d_act = m.g_stem.data<float>();
  const int64_t stem_cnt = numel_of(n, 64, m.c1_h, m.c1_w);
  // maxpool2d_backward overwrites all of d_act (ops.h: outputs are overwritten, never accumulated).
  maxpool2d_backward(n, 64, m.c1_h, m.c1_w, 3, 2, 1, g[0], m.argmax.data<int32_t>(), d_act);
  relu_backward(stem_cnt, m.stem_act.data<float>(), d_act, d_act);
  // The ReLU output is dead now: its buffer takes d(conv1 output).
  conv_bn_backward(c, m.stem, m.input.data<float>(), d_act, m.stem_act.data<float>(), nullptr, on_ready);
  m.have_train_forward = false;  // stem_act was overwritten
}

namespace {
// The largest bit pattern of |g[i]| over [lo, hi): inf and NaN are exactly those >= 0x7f800000 (exponent
// all ones). An integer max vectorises (isfinite did not, beyond SSE2 compares); the AVX-512 clone makes
// this 11.7 M-value pass about twice as fast (docs/perf/cpumodel.md).
__attribute__((target_clones("avx512f", "default"))) uint32_t max_abs_bits(const float* g, int64_t lo,
                                                                           int64_t hi) {
  uint32_t m = 0;
  for (int64_t i = lo; i < hi; ++i) {
    uint32_t b;
    std::memcpy(&b, g + i, sizeof b);
    m = std::max(m, b & 0x7fffffffu);
  }
  return m;
}
}  // namespace

bool CpuResNet18::grads_finite() {
  const float* g = grads_.data<float>();
  const int64_t n = spec_.param_count;
  uint32_t m = 0;
#pragma omp parallel reduction(max : m) num_threads(num_threads())
  {
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
    m = std::max(m, max_abs_bits(g, n * me / team, n * (me + 1) / team));
  }
  return m < 0x7f800000u;
}

void CpuResNet18::sgd_step(const nn::SgdConfig& sc, float lr, float grad_scale) {
  DDP_CHECK(sc.momentum >= 0.0f, "SGD momentum must be >= 0, got ", sc.momentum);
  DDP_CHECK(sc.weight_decay >= 0.0f, "SGD weight decay must be >= 0, got ", sc.weight_decay);
  float* p = params_.data<float>();
  const float* g = grads_.data<float>();
  float* buf = momentum_.data<float>();
  const bool first = !momentum_initialised_;
  // One call per run of tensors that share a weight decay, so the threads see long loops.
  const auto& ps = spec_.params;
  size_t i = 0;
  while (i < ps.size()) {
    auto wd_of = [&](size_t k) {
      return (sc.decay_bn_and_bias || !ps[k].is_bn_or_bias()) ? sc.weight_decay : 0.0f;
    };
    const float wd = wd_of(i);
    size_t j = i + 1;
    while (j < ps.size() && wd_of(j) == wd) ++j;
    const int64_t off = ps[i].offset;
    const int64_t cnt = ps[j - 1].offset + ps[j - 1].numel - off;
    sgd_update(cnt, p + off, g + off, buf + off, lr, grad_scale, wd, sc.momentum, sc.dampening, sc.nesterov, first);
    i = j;
  }
  if (sc.momentum != 0.0f) momentum_initialised_ = true;
}

double CpuResNet18::param_checksum() {
  // Fixed chunks summed in order: the same value for any thread count.
  const float* p = params_.data<float>();
  const int64_t n = spec_.param_count;
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t ci = 0; ci < chunks; ++ci) {
    double s = 0.0;
    const int64_t end = std::min(n, (ci + 1) * kChunk);
    for (int64_t i = ci * kChunk; i < end; ++i) s += static_cast<double>(p[i]) * static_cast<double>(1 + i % 7);
    part[static_cast<size_t>(ci)] = s;
  }
  double sum = 0.0;
  for (double v : part) sum += v;
  const float* b = buffers_.data<float>();
  for (int64_t i = 0; i < spec_.buffer_count; ++i) sum += static_cast<double>(b[i]) * static_cast<double>(1 + i % 3);
  return sum + static_cast<double>(num_batches_tracked_);
}

}  // namespace ddp::cpu
