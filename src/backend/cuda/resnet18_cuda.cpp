// CudaResNet18: the forward/backward schedule over the ops of ops.h, conv.h and linear.h.
#include "ddp/backend/cuda/resnet18_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "ddp/backend/cuda/capture.h"
#include "ddp/backend/cuda/conv.h"
#include "ddp/backend/cuda/linear.h"
#include "ddp/backend/cuda/memory.h"
#include "ddp/backend/cuda/ops.h"
#include "ddp/core/check.h"
#include "ddp/core/tensor.h"

namespace ddp::cuda {

namespace {
constexpr int kStemCinPad = 8;  // conv1's 3 input channels padded for tensor cores
constexpr int kGradEvents = 10;  // fc, 8 blocks, stem

DType act_dtype(nn::Amp a) {
  switch (a) {
    case nn::Amp::Off: return DType::F32;
    case nn::Amp::F16: return DType::F16;
    case nn::Amp::BF16: return DType::BF16;
  }
  DDP_FAIL("unknown amp mode");
}

// OIHW (PyTorch) <-> KRSC (ours) for one conv weight.
void oihw_to_krsc(const float* src, int k, int c, int r, int s, float* dst) {
  for (int ki = 0; ki < k; ++ki)
    for (int ci = 0; ci < c; ++ci)
      for (int ri = 0; ri < r; ++ri)
        for (int si = 0; si < s; ++si)
          dst[((static_cast<int64_t>(ki) * r + ri) * s + si) * c + ci] = src[((static_cast<int64_t>(ki) * c + ci) * r + ri) * s + si];
}
void krsc_to_oihw(const float* src, int k, int c, int r, int s, float* dst) {
  for (int ki = 0; ki < k; ++ki)
    for (int ci = 0; ci < c; ++ci)
      for (int ri = 0; ri < r; ++ri)
        for (int si = 0; si < s; ++si)
          dst[((static_cast<int64_t>(ki) * c + ci) * r + ri) * s + si] = src[((static_cast<int64_t>(ki) * r + ri) * s + si) * c + ci];
}
}  // namespace

struct ConvLayer {
  const nn::ConvSpec* spec = nullptr;
  int64_t w_off = 0, w_numel = 0;
  int cin = 0, cin_pad = 0;  // cin_pad > cin only for the stem
  ConvShape shape;           // for the current input
};

struct BnLayer {
  const nn::BnSpec* spec = nullptr;
  int64_t gamma_off = 0, beta_off = 0, rmean_off = 0, rvar_off = 0;
  float* mean = nullptr;  // saved batch (train) or running (eval) statistics, c floats each
  float* invstd = nullptr;
};

struct BlockBufs {
  DeviceBuffer c1, a1, c2, out, cd;  // conv1 out, relu(bn1), conv2 out, block out, downsample conv out
};

struct CudaResNet18::Impl {
  nn::ModelConfig cfg;
  nn::ResNet18Spec spec;
  DType dt = DType::F16;
  size_t esz = 2;
  int64_t nbt = 0;
  bool mom_init = false;

  cudaStream_t stream = nullptr, copy_stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::unique_ptr<ConvEngine> convs;
  cudaEvent_t input_copied = nullptr, input_consumed = nullptr;
  cudaEvent_t grad_events[kGradEvents] = {};

  // Parameters and optimizer state.
  DeviceBuffer params, grads, mom, bufs, wlp, w1pad, no_decay, dw_scratch;
  // Activations at max_batch x height x width.
  DeviceBuffer u8_stage, f32_stage, x_in, stem_c, stem_a, pool, argmax;
  std::array<BlockBufs, 8> blk;
  DeviceBuffer gA, gB, gC, bn_scratch, bn_stats;
  DeviceBuffer pooled, logits, probs, dlogits, dpooled, row_loss, label_rank, labels, flag, checksum;

  std::vector<ConvLayer> conv;  // 0: stem; then per block conv1, conv2, [down]
  std::vector<BnLayer> bn;      // 0: stem; then per block bn1, bn2, [down]
  struct BlockIdx { int c1, c2, cd, b1, b2, bd; };
  std::array<BlockIdx, 8> bidx{};

  // Current input geometry.
  int n = 0, h = 0, w = 0, h1 = 0, w1 = 0, h2 = 0, w2 = 0;
  std::array<int, 8> bh{}, bw{}, bc{};  // block output size and channels
  bool have_input = false, have_forward = false, last_train = false;
  // row_loss holds the last forward's losses for its loss_n images (0: no forward yet), kept across
  // set_input, which may change n.
  int loss_n = 0;
  std::vector<int32_t> labels_host;
  int32_t* labels_pinned = nullptr;  // page-locked, so the label copy is truly asynchronous
  cudaEvent_t labels_copied = nullptr;

  // cuBLAS's own workspace, fixed, so that a captured step allocates nothing.
  DeviceBuffer cublas_ws;
  // The captured training step (capture_train_step) and what it was captured for.
  cudaGraphExec_t step_graph = nullptr;
  int graph_n = 0, graph_h = 0, graph_w = 0;
  size_t graph_conv_ws = 0;

  float* P() { return params.as<float>(); }
  // Copies on the compute stream (never the legacy default stream, which does not order against
  // our non-blocking streams). Pageable sources are staged before the call returns.
  void h2d(void* dst, const void* src, size_t bytes) const {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  }
  void d2h(void* dst, const void* src, size_t bytes) const {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  float* G() { return grads.as<float>(); }

  void* act_ptr(const DeviceBuffer& b) const { return b.get(); }

  const void* conv_weight(int i) {
    if (i == 0) return w1pad.get();
    if (dt == DType::F32) return P() + conv[i].w_off;
    return static_cast<char*>(wlp.get()) + conv[i].w_off * esz;
  }

  void init() {
    DDP_CHECK(cuda_available(), "CudaResNet18: no CUDA device is visible (", cuda_unavailable_reason(), ")");
    DDP_CHECK(cfg.max_batch > 0, "CudaResNet18: max_batch must be positive, got ", cfg.max_batch);
    DDP_CHECK(cfg.num_classes > 0, "CudaResNet18: num_classes must be positive, got ", cfg.num_classes);
    CUDA_CHECK(cudaSetDevice(cfg.device));
    dt = act_dtype(cfg.amp);
    esz = dtype_size(dt);
    spec = nn::make_resnet18_spec(cfg.num_classes);
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&input_copied, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&input_consumed, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&labels_copied, cudaEventDisableTiming));
    CUDA_CHECK(cudaMallocHost(&labels_pinned, static_cast<size_t>(cfg.max_batch) * 4));
    for (auto& e : grad_events) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    CUBLAS_CHECK(cublasCreate(&cublas));
    CUBLAS_CHECK(cublasSetStream(cublas, stream));
    CUBLAS_CHECK(cublasSetMathMode(cublas, cfg.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH));
    // 32 MiB: cuBLAS's recommendation for Hopper (4 MiB before it). Without one cuBLAS allocates its
    // workspace itself, which inside a stream capture becomes allocation nodes of the graph.
    cublas_ws = DeviceBuffer(size_t{32} << 20, "cuBLAS workspace");
    CUBLAS_CHECK(cublasSetWorkspace(cublas, cublas_ws.get(), cublas_ws.bytes()));
    // DDP_CUDNN_AUTOTUNE=1: timed engine search per conv shape (ModelConfig has no field for it). Any
    // other value than 1, 0 or empty is refused: "true" quietly meaning "off" would mislead a benchmark.
    const char* at = std::getenv("DDP_CUDNN_AUTOTUNE");
    const std::string autotune = at ? at : "";
    DDP_CHECK(autotune.empty() || autotune == "0" || autotune == "1", "DDP_CUDNN_AUTOTUNE='", autotune,
              "' is not 1 (timed cuDNN engine search) or 0 (the heuristics' choice)");
    convs = std::make_unique<ConvEngine>(stream, cfg.tf32, autotune == "1", cfg.deterministic);

    // Layer tables.
    auto add_conv = [&](const nn::ConvSpec& cs) {
      ConvLayer L;
      L.spec = &cs;
      const auto& pi = spec.params[cs.weight];
      L.w_off = pi.offset;
      L.w_numel = pi.numel;
      L.cin = cs.in_channels;
      L.cin_pad = conv.empty() ? kStemCinPad : cs.in_channels;
      conv.push_back(L);
      return static_cast<int>(conv.size()) - 1;
    };
    auto add_bn = [&](const nn::BnSpec& bs) {
      BnLayer L;
      L.spec = &bs;
      L.gamma_off = spec.params[bs.weight].offset;
      L.beta_off = spec.params[bs.bias].offset;
      L.rmean_off = spec.buffers[bs.running_mean].offset;
      L.rvar_off = spec.buffers[bs.running_var].offset;
      // ops.cu's 8-channel paths read gamma and beta (and write their gradients) with 16-byte vector
      // accesses; the flat buffers are cudaMalloc'd (256-byte aligned), so each offset must be a
      // multiple of 4 floats. It is, for every ResNet18 (every count before fc's is a multiple of 64);
      // a layout change that broke it would fault with "misaligned address" on the GPU.
      DDP_CHECK(L.gamma_off % 4 == 0 && L.beta_off % 4 == 0, "CudaResNet18: BN parameters of ", bs.name,
                " at offsets ", L.gamma_off, "/", L.beta_off, " are not 16-byte aligned");
      bn.push_back(L);
      return static_cast<int>(bn.size()) - 1;
    };
    add_conv(spec.conv1);
    add_bn(spec.bn1);
    for (int b = 0; b < 8; ++b) {
      const auto& B = spec.blocks[b];
      BlockIdx& I = bidx[b];
      I.c1 = add_conv(B.conv1);
      I.b1 = add_bn(B.bn1);
      I.c2 = add_conv(B.conv2);
      I.b2 = add_bn(B.bn2);
      I.cd = B.down_conv ? add_conv(*B.down_conv) : -1;
      I.bd = B.down_bn ? add_bn(*B.down_bn) : -1;
    }

    // Parameters.
    const int64_t pc = spec.param_count;
    params = DeviceBuffer(pc * 4, "params (fp32 masters)");
    grads = DeviceBuffer(pc * 4, "grads (fp32)");
    mom = DeviceBuffer(pc * 4, "SGD momentum");
    bufs = DeviceBuffer(std::max<int64_t>(spec.buffer_count, 1) * 4, "BN running stats");
    if (dt != DType::F32) wlp = DeviceBuffer(pc * esz, "low-precision weight copy");
    const ConvLayer& stem = conv[0];
    w1pad = DeviceBuffer(stem.spec->out_channels * stem.spec->kernel * stem.spec->kernel * kStemCinPad * esz,
                         "conv1 padded weights");
    int64_t max_w = stem.spec->out_channels * stem.spec->kernel * stem.spec->kernel * kStemCinPad;
    for (const auto& L : conv) max_w = std::max(max_w, L.w_numel);
    dw_scratch = DeviceBuffer(max_w * esz, "conv weight-gradient scratch");
    {
      std::vector<uint8_t> nd(pc, 0);
      for (const auto& p : spec.params)
        if (p.is_bn_or_bias()) std::fill(nd.begin() + p.offset, nd.begin() + p.offset + p.numel, uint8_t{1});
      no_decay = DeviceBuffer(pc, "no-weight-decay mask");
      h2d(no_decay.get(), nd.data(), pc);
    }
    CUDA_CHECK(cudaMemsetAsync(grads.get(), 0, pc * 4, stream));
    CUDA_CHECK(cudaMemsetAsync(mom.get(), 0, pc * 4, stream));

    // Activations at the largest input.
    set_geometry(cfg.max_batch, cfg.height, cfg.width);
    const int64_t N = cfg.max_batch;
    u8_stage = DeviceBuffer(N * h * w * 3, "uint8 input staging");
    x_in = DeviceBuffer(N * h * w * kStemCinPad * esz, "normalised input");
    const int64_t stem_elems = N * h1 * w1 * 64;
    stem_c = DeviceBuffer(stem_elems * esz, "conv1 output");
    stem_a = DeviceBuffer(stem_elems * esz, "bn1+relu output");
    pool = DeviceBuffer(N * h2 * w2 * 64 * esz, "maxpool output");
    argmax = DeviceBuffer(N * h2 * w2 * 64 * 4, "maxpool argmax");
    int64_t max_act = stem_elems;
    int64_t max_scratch = bn_scratch_floats(N * h1 * w1, 64);
    for (int b = 0; b < 8; ++b) {
      const int64_t e = N * bh[b] * bw[b] * bc[b];
      const std::string nm = spec.blocks[b].conv1.name;
      blk[b].c1 = DeviceBuffer(e * esz, nm.c_str());
      blk[b].a1 = DeviceBuffer(e * esz, nm.c_str());
      blk[b].c2 = DeviceBuffer(e * esz, nm.c_str());
      blk[b].out = DeviceBuffer(e * esz, nm.c_str());
      if (bidx[b].cd >= 0) blk[b].cd = DeviceBuffer(e * esz, nm.c_str());
      max_act = std::max(max_act, e);
      max_scratch = std::max(max_scratch, bn_scratch_floats(N * bh[b] * bw[b], bc[b]));
    }
    gA = DeviceBuffer(max_act * esz, "gradient scratch A");
    gB = DeviceBuffer(max_act * esz, "gradient scratch B");
    gC = DeviceBuffer(max_act * esz, "gradient scratch C");
    bn_scratch = DeviceBuffer(max_scratch * 4, "BN reduction scratch");
    int64_t stat_floats = 0;
    for (const auto& L : bn) stat_floats += 2 * L.spec->channels;
    bn_stats = DeviceBuffer(stat_floats * 4, "BN saved statistics");
    {
      float* p = bn_stats.as<float>();
      for (auto& L : bn) {
        L.mean = p;
        L.invstd = p + L.spec->channels;
        p += 2 * L.spec->channels;
      }
    }
    const int C = cfg.num_classes;
    pooled = DeviceBuffer(N * 512 * 4, "pooled features");
    dpooled = DeviceBuffer(N * 512 * 4, "pooled gradient");
    logits = DeviceBuffer(N * C * 4, "logits");
    probs = DeviceBuffer(N * C * 4, "softmax probabilities");
    dlogits = DeviceBuffer(N * C * 4, "logit gradient");
    row_loss = DeviceBuffer(N * 4, "per-image loss");
    label_rank = DeviceBuffer(N * 4, "label rank");
    labels = DeviceBuffer(N * 4, "labels");
    flag = DeviceBuffer(4, "non-finite flag");
    checksum = DeviceBuffer(2 * kChecksumBlocks * 8, "checksum partials");

    // torchvision's init, in PyTorch layout, converted at the boundary like any weights file.
    std::vector<float> hp(pc), hb(std::max<int64_t>(spec.buffer_count, 1));
    nn::init_resnet18(spec, cfg.init, hp.data(), hb.data());
    set_params_torch(hp.data());
    h2d(bufs.get(), hb.data(), spec.buffer_count * 4);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  void destroy() {
    if (stream) (void)cudaStreamSynchronize(stream);
    if (copy_stream) (void)cudaStreamSynchronize(copy_stream);
    if (step_graph) (void)cudaGraphExecDestroy(step_graph);
    convs.reset();
    if (cublas) (void)cublasDestroy(cublas);
    for (auto& e : grad_events)
      if (e) (void)cudaEventDestroy(e);
    if (input_copied) (void)cudaEventDestroy(input_copied);
    if (input_consumed) (void)cudaEventDestroy(input_consumed);
    if (labels_copied) (void)cudaEventDestroy(labels_copied);
    if (labels_pinned) (void)cudaFreeHost(labels_pinned);
    if (copy_stream) (void)cudaStreamDestroy(copy_stream);
    if (stream) (void)cudaStreamDestroy(stream);
  }

  void set_geometry(int n_, int h_, int w_) {
    DDP_CHECK(n_ > 0 && n_ <= cfg.max_batch, "CudaResNet18: batch ", n_, " outside [1, max_batch=", cfg.max_batch, "]");
    DDP_CHECK(h_ >= 32 && w_ >= 32, "CudaResNet18: input ", h_, "x", w_, " is smaller than 32x32");
    DDP_CHECK(h_ <= cfg.height && w_ <= cfg.width, "CudaResNet18: input ", h_, "x", w_, " exceeds the configured ",
              cfg.height, "x", cfg.width, " (ModelConfig::height/width)");
    n = n_;
    h = h_;
    w = w_;
    auto st = nn::resnet18_stage_sizes(h, w);
    h1 = st.conv1_h;
    w1 = st.conv1_w;
    h2 = st.pool_h;
    w2 = st.pool_w;
    conv[0].shape = ConvShape{n, kStemCinPad, h, w, 64, 7, 7, 2, 3, dt};
    int ch = h2, cw = w2, cc = 64;
    for (int b = 0; b < 8; ++b) {
      const auto& B = spec.blocks[b];
      const int s = B.stride, k = B.conv1.out_channels;
      const int oh = nn::conv_out(ch, 3, s, 1), ow = nn::conv_out(cw, 3, s, 1);
      conv[bidx[b].c1].shape = ConvShape{n, cc, ch, cw, k, 3, 3, s, 1, dt};
      conv[bidx[b].c2].shape = ConvShape{n, k, oh, ow, k, 3, 3, 1, 1, dt};
      if (bidx[b].cd >= 0) conv[bidx[b].cd].shape = ConvShape{n, cc, ch, cw, k, 1, 1, s, 0, dt};
      bh[b] = oh;
      bw[b] = ow;
      bc[b] = k;
      ch = oh;
      cw = ow;
      cc = k;
    }
  }

  void refresh_lowp() {
    const ConvLayer& s = conv[0];
    const int64_t rows = static_cast<int64_t>(s.spec->out_channels) * s.spec->kernel * s.spec->kernel;
    if (dt != DType::F32) convert_from_f32(P(), spec.param_count, dt, wlp.get(), stream);
    f32_to_padded(P() + s.w_off, rows, s.cin, kStemCinPad, dt, w1pad.get(), stream);
  }

  // Host copies between PyTorch layout and ours (KRSC convs).
  void to_torch(const float* dev, float* host) const {
    std::vector<float> tmp(spec.param_count);
    d2h(tmp.data(), dev, spec.param_count * 4);
    std::memcpy(host, tmp.data(), spec.param_count * 4);
    for (const auto& L : conv)
      krsc_to_oihw(tmp.data() + L.w_off, L.spec->out_channels, L.cin, L.spec->kernel, L.spec->kernel, host + L.w_off);
  }
  void from_torch(const float* host, float* dev) {
    std::vector<float> tmp(host, host + spec.param_count);
    for (const auto& L : conv)
      oihw_to_krsc(host + L.w_off, L.spec->out_channels, L.cin, L.spec->kernel, L.spec->kernel, tmp.data() + L.w_off);
    h2d(dev, tmp.data(), spec.param_count * 4);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  void set_params_torch(const float* host) {
    from_torch(host, P());
    refresh_lowp();
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  void set_labels(const int32_t* lab, int n_) {
    labels_host.assign(lab, lab + n_);
    for (int i = 0; i < n_; ++i)
      DDP_CHECK(lab[i] >= 0 && lab[i] < cfg.num_classes, "CudaResNet18: label ", lab[i], " of image ", i,
                " is outside [0, ", cfg.num_classes, ")");
    // The previous batch's labels must have left the pinned buffer before it is refilled.
    CUDA_CHECK(cudaEventSynchronize(labels_copied));
    std::memcpy(labels_pinned, lab, static_cast<size_t>(n_) * 4);
    CUDA_CHECK(cudaMemcpyAsync(labels.get(), labels_pinned, n_ * 4, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(labels_copied, stream));
  }

  // ---- forward ------------------------------------------------------------------------------
  void bn_forward(int i, const void* x, int64_t rows, const void* residual, bool relu, void* y, bool train) {
    BnLayer& L = bn[i];
    const int c = L.spec->channels;
    float* B = bufs.as<float>();
    if (train) {
      bn_batch_stats(dt, x, rows, c, L.spec->eps, L.spec->momentum, true, B + L.rmean_off, B + L.rvar_off, L.mean,
                     L.invstd, bn_scratch.as<float>(), stream);
    } else {
      bn_eval_stats(B + L.rmean_off, B + L.rvar_off, c, L.spec->eps, L.mean, L.invstd, stream);
    }
    bn_apply(dt, x, rows, c, P() + L.gamma_off, P() + L.beta_off, L.mean, L.invstd, residual, relu, y, stream);
  }

  void forward_async(bool train) {
    DDP_CHECK(have_input, "CudaResNet18::forward before set_input_u8/set_input_f32");
    convs->forward(conv[0].shape, x_in.get(), conv_weight(0), stem_c.get());
    // The input buffer may be refilled once conv1 has read it.
    CUDA_CHECK(cudaEventRecord(input_consumed, stream));
    bn_forward(0, stem_c.get(), static_cast<int64_t>(n) * h1 * w1, nullptr, true, stem_a.get(), train);
    maxpool_forward(dt, stem_a.get(), n, h1, w1, 64, 3, 2, 1, pool.get(), argmax.as<int32_t>(), stream);
    const void* x = pool.get();
    for (int b = 0; b < 8; ++b) {
      const BlockIdx& I = bidx[b];
      BlockBufs& Bf = blk[b];
      const int64_t rows = static_cast<int64_t>(n) * bh[b] * bw[b];
      convs->forward(conv[I.c1].shape, x, conv_weight(I.c1), Bf.c1.get());
      bn_forward(I.b1, Bf.c1.get(), rows, nullptr, true, Bf.a1.get(), train);
      convs->forward(conv[I.c2].shape, Bf.a1.get(), conv_weight(I.c2), Bf.c2.get());
      const void* residual = x;
      if (I.cd >= 0) {
        convs->forward(conv[I.cd].shape, x, conv_weight(I.cd), Bf.cd.get());
        bn_forward(I.bd, Bf.cd.get(), rows, nullptr, false, gA.get(), train);  // gA is free during forward
        residual = gA.get();
      }
      bn_forward(I.b2, Bf.c2.get(), rows, residual, true, Bf.out.get(), train);
      x = Bf.out.get();
    }
    avgpool_forward(dt, x, n, bh[7] * bw[7], 512, pooled.as<float>(), stream);
    const auto& fw = spec.params[spec.fc_weight];
    const auto& fb = spec.params[spec.fc_bias];
    linear_forward(cublas, n, 512, cfg.num_classes, pooled.as<float>(), P() + fw.offset, P() + fb.offset,
                   logits.as<float>());
    softmax_ce_forward(logits.as<float>(), labels.as<int32_t>(), n, cfg.num_classes, cfg.label_smoothing,
                       probs.as<float>(), row_loss.as<float>(), label_rank.as<int32_t>(), stream);
    if (train) ++nbt;
    have_forward = true;
    loss_n = n;
    last_train = train;
  }

  // The mean over the last forward's batch.
  float mean_loss() {
    std::vector<float> l(loss_n);
    CUDA_CHECK(cudaMemcpyAsync(l.data(), row_loss.get(), loss_n * 4, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    double s = 0;
    for (float v : l) s += v;
    return static_cast<float>(s / loss_n);
  }

  // ---- backward -----------------------------------------------------------------------------
  // Weight gradient of conv i from its input x and output gradient dy, into grads() as fp32 KRSC.
  void conv_wgrad(int i, const void* x, const void* dy) {
    const ConvLayer& L = conv[i];
    if (i == 0) {
      convs->backward_weight(L.shape, x, dy, dw_scratch.get());
      padded_to_f32(dt, dw_scratch.get(), static_cast<int64_t>(L.spec->out_channels) * L.spec->kernel * L.spec->kernel,
                    kStemCinPad, L.cin, G() + L.w_off, stream);
    } else if (dt == DType::F32) {
      convs->backward_weight(L.shape, x, dy, G() + L.w_off);
    } else {
      convs->backward_weight(L.shape, x, dy, dw_scratch.get());
      convert_to_f32(dt, dw_scratch.get(), L.w_numel, G() + L.w_off, stream);
    }
  }

  void bn_bwd(int i, const void* x, const void* relu_out, const void* dy, int64_t rows, void* dx, void* dres) {
    const BnLayer& L = bn[i];
    bn_backward(dt, x, relu_out, dy, rows, L.spec->channels, P() + L.gamma_off, L.mean, L.invstd, G() + L.gamma_off,
                G() + L.beta_off, dx, dres, bn_scratch.as<float>(), stream);
  }

  void report(int ev, int64_t first_ready, const nn::GradReadyFn& on_ready) {
    if (!on_ready) return;
    CUDA_CHECK(cudaEventRecord(grad_events[ev], stream));
    on_ready(nn::GradReady{first_ready, grad_events[ev]});
  }

  void backward(float loss_scale, const nn::GradReadyFn& on_ready) {
    DDP_CHECK(have_forward && last_train, "CudaResNet18::backward needs a forward(Mode::Train) on the current input");
    const int C = cfg.num_classes;
    softmax_ce_backward(probs.as<float>(), labels.as<int32_t>(), n, C, cfg.label_smoothing, loss_scale,
                        dlogits.as<float>(), stream);
    const auto& fw = spec.params[spec.fc_weight];
    const auto& fb = spec.params[spec.fc_bias];
    linear_backward(cublas, n, 512, C, pooled.as<float>(), P() + fw.offset, dlogits.as<float>(), dpooled.as<float>(),
                    G() + fw.offset, G() + fb.offset);
    report(0, std::min(fw.offset, fb.offset), on_ready);
    void* ga = gA.get();
    void* gb = gB.get();
    void* gc = gC.get();
    avgpool_backward(dt, dpooled.as<float>(), n, bh[7] * bw[7], 512, ga, stream);
    for (int b = 7; b >= 0; --b) {
      const BlockIdx& I = bidx[b];
      BlockBufs& Bf = blk[b];
      const int64_t rows = static_cast<int64_t>(n) * bh[b] * bw[b];
      const void* xin = b == 0 ? pool.get() : blk[b - 1].out.get();
      // ga: d(block out). bn2 + add + relu: dx -> gb, the masked gradient (the residual's) back into ga.
      bn_bwd(I.b2, Bf.c2.get(), Bf.out.get(), ga, rows, gb, ga);
      conv_wgrad(I.c2, Bf.a1.get(), gb);
      convs->backward_data(conv[I.c2].shape, gb, conv_weight(I.c2), gc);
      bn_bwd(I.b1, Bf.c1.get(), Bf.a1.get(), gc, rows, gb, nullptr);
      conv_wgrad(I.c1, xin, gb);
      convs->backward_data(conv[I.c1].shape, gb, conv_weight(I.c1), gc);
      const ConvShape& in_shape = conv[I.c1].shape;
      const int64_t in_elems = static_cast<int64_t>(in_shape.n) * in_shape.h * in_shape.w * in_shape.c;
      if (I.cd >= 0) {
        bn_bwd(I.bd, Bf.cd.get(), nullptr, ga, rows, gb, nullptr);
        conv_wgrad(I.cd, xin, gb);
        convs->backward_data(conv[I.cd].shape, gb, conv_weight(I.cd), ga);
      }
      add_inplace(dt, gc, ga, in_elems, stream);
      report(8 - b, spec.params[spec.blocks[b].conv1.weight].offset, on_ready);
      std::swap(ga, gc);  // ga: d(block input) = d(previous block out)
    }
    maxpool_backward(dt, ga, argmax.as<int32_t>(), n, h1, w1, 64, 3, 2, 1, gb, stream);
    bn_bwd(0, stem_c.get(), stem_a.get(), gb, static_cast<int64_t>(n) * h1 * w1, gc, nullptr);
    conv_wgrad(0, x_in.get(), gc);
    report(9, 0, on_ready);
  }
};

CudaResNet18::CudaResNet18(const nn::ModelConfig& cfg) : impl_(std::make_unique<Impl>()) {
  impl_->cfg = cfg;
  try {
    impl_->init();
  } catch (...) {
    impl_->destroy();
    throw;
  }
}
CudaResNet18::~CudaResNet18() { impl_->destroy(); }

const nn::ResNet18Spec& CudaResNet18::spec() const { return impl_->spec; }
const nn::ModelConfig& CudaResNet18::config() const { return impl_->cfg; }
float* CudaResNet18::params() { return impl_->P(); }
float* CudaResNet18::grads() { return impl_->G(); }
float* CudaResNet18::momentum() { return impl_->mom.as<float>(); }
float* CudaResNet18::buffers() { return impl_->bufs.as<float>(); }
int64_t CudaResNet18::num_batches_tracked() const { return impl_->nbt; }
void CudaResNet18::set_num_batches_tracked(int64_t n) { impl_->nbt = n; }
bool CudaResNet18::momentum_initialised() const { return impl_->mom_init; }
void CudaResNet18::set_momentum_initialised(bool v) { impl_->mom_init = v; }
void* CudaResNet18::stream() const { return impl_->stream; }
void CudaResNet18::set_conv_autotune(bool on) { impl_->convs->set_autotune(on); }

void CudaResNet18::get_params_torch(float* host) const { impl_->to_torch(impl_->params.as<float>(), host); }
void CudaResNet18::set_params_torch(const float* host) { impl_->set_params_torch(host); }
void CudaResNet18::get_grads_torch(float* host) const { impl_->to_torch(impl_->grads.as<float>(), host); }
void CudaResNet18::get_momentum_torch(float* host) const { impl_->to_torch(impl_->mom.as<float>(), host); }
void CudaResNet18::set_momentum_torch(const float* host) { impl_->from_torch(host, impl_->mom.as<float>()); }
void CudaResNet18::get_buffers(float* host) const {
  impl_->d2h(host, impl_->bufs.get(), impl_->spec.buffer_count * 4);
}
void CudaResNet18::set_buffers(const float* host) {
  impl_->h2d(impl_->bufs.get(), host, impl_->spec.buffer_count * 4);
  CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}
void CudaResNet18::params_changed() {
  impl_->refresh_lowp();
  CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

void CudaResNet18::set_input_u8(const uint8_t* images, const int32_t* labels, int n, int h, int w) {
  Impl& m = *impl_;
  DDP_CHECK(images != nullptr && labels != nullptr, "CudaResNet18::set_input_u8: null images or labels");
  // A refused input (bad label, size) must not leave the previous forward usable under the new geometry.
  m.have_input = m.have_forward = false;
  m.set_geometry(n, h, w);
  m.set_labels(labels, n);
  const int64_t pixels = static_cast<int64_t>(n) * h * w;
  cudaPointerAttributes attr{};
  CUDA_CHECK(cudaPointerGetAttributes(&attr, images));
  const uint8_t* src = images;
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    // Host memory: copy on the copy stream once the previous batch's staging data was consumed,
    // then make the compute stream wait for it. The host waits for the copy so the caller may
    // reuse its buffer as soon as this returns (the GPU keeps computing meanwhile).
    CUDA_CHECK(cudaStreamWaitEvent(m.copy_stream, m.input_consumed, 0));
    CUDA_CHECK(cudaMemcpyAsync(m.u8_stage.get(), images, pixels * 3, cudaMemcpyHostToDevice, m.copy_stream));
    CUDA_CHECK(cudaEventRecord(m.input_copied, m.copy_stream));
    CUDA_CHECK(cudaStreamWaitEvent(m.stream, m.input_copied, 0));
    CUDA_CHECK(cudaEventSynchronize(m.input_copied));
    src = m.u8_stage.as<uint8_t>();
  }
  normalize_u8_nhwc(src, pixels, kStemCinPad, m.dt, m.x_in.get(), m.stream);
  m.have_input = true;
  m.have_forward = false;
}

void CudaResNet18::set_input_f32(const float* images_nchw, const int32_t* labels, int n, int h, int w) {
  Impl& m = *impl_;
  DDP_CHECK(images_nchw != nullptr && labels != nullptr, "CudaResNet18::set_input_f32: null images or labels");
  m.have_input = m.have_forward = false;  // as in set_input_u8
  m.set_geometry(n, h, w);
  m.set_labels(labels, n);
  const int64_t hw = static_cast<int64_t>(h) * w;
  std::vector<float> nhwc(static_cast<size_t>(n) * hw * 3);
  for (int b = 0; b < n; ++b)
    for (int c = 0; c < 3; ++c)
      for (int64_t i = 0; i < hw; ++i) nhwc[(b * hw + i) * 3 + c] = images_nchw[(static_cast<int64_t>(b) * 3 + c) * hw + i];
  // Tests' path only: allocated on first use (at the largest size, so never regrown), so that training
  // and the benchmark's peak memory do not count it (147 MiB at 256 x 224 x 224).
  if (!m.f32_stage.get()) {
    m.f32_stage = DeviceBuffer(static_cast<size_t>(m.cfg.max_batch) * m.cfg.height * m.cfg.width * 3 * 4,
                               "fp32 input staging");
  }
  m.h2d(m.f32_stage.get(), nhwc.data(), nhwc.size() * 4);
  f32_to_padded(m.f32_stage.as<float>(), n * hw, 3, kStemCinPad, m.dt, m.x_in.get(), m.stream);
  m.have_input = true;
  m.have_forward = false;
}

float CudaResNet18::forward(nn::Mode mode) {
  forward_async(mode);
  return last_loss();
}

void CudaResNet18::forward_async(nn::Mode mode) { impl_->forward_async(mode == nn::Mode::Train); }

float CudaResNet18::last_loss() {
  DDP_CHECK(impl_->loss_n > 0, "CudaResNet18::last_loss before any forward");
  return impl_->mean_loss();
}

std::vector<float> CudaResNet18::logits_host() const {
  const Impl& m = *impl_;
  DDP_CHECK(m.have_forward, "CudaResNet18::logits_host before forward");
  std::vector<float> out(static_cast<size_t>(m.n) * m.cfg.num_classes);
  m.d2h(out.data(), m.logits.get(), out.size() * 4);
  return out;
}

nn::EvalCounts CudaResNet18::eval_counts() const {
  const Impl& m = *impl_;
  DDP_CHECK(m.have_forward, "CudaResNet18::eval_counts before forward");
  std::vector<float> loss(m.n);
  std::vector<int32_t> rank(m.n);
  m.d2h(loss.data(), m.row_loss.get(), m.n * 4);
  m.d2h(rank.data(), m.label_rank.get(), m.n * 4);
  nn::EvalCounts c;
  c.count = m.n;
  for (int i = 0; i < m.n; ++i) {
    c.loss_sum += loss[i];
    c.top1 += rank[i] == 0;
    c.top5 += rank[i] < 5;
  }
  return c;
}

void CudaResNet18::backward(float loss_scale, const nn::GradReadyFn& on_ready) { impl_->backward(loss_scale, on_ready); }

bool CudaResNet18::grads_finite() {
  Impl& m = *impl_;
  int32_t bad = 0;
  CUDA_CHECK(cudaMemsetAsync(m.flag.get(), 0, 4, m.stream));
  check_nonfinite(m.G(), m.spec.param_count, m.flag.as<int32_t>(), m.stream);
  CUDA_CHECK(cudaMemcpyAsync(&bad, m.flag.get(), 4, cudaMemcpyDeviceToHost, m.stream));
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  return bad == 0;
}

void CudaResNet18::sgd_step(const nn::SgdConfig& cfg, float lr, float grad_scale) {
  Impl& m = *impl_;
  SgdArgs a;
  a.lr = lr;
  a.momentum = cfg.momentum;
  a.dampening = cfg.dampening;
  a.weight_decay = cfg.weight_decay;
  a.grad_scale = grad_scale;
  a.nesterov = cfg.nesterov;
  a.first_step = !m.mom_init;
  sgd_update(m.P(), m.G(), m.mom.as<float>(), cfg.decay_bn_and_bias ? nullptr : m.no_decay.as<uint8_t>(),
             m.spec.param_count, a, m.dt, m.dt == DType::F32 ? nullptr : m.wlp.get(), m.stream);
  // conv1's padded copy is rebuilt from the new masters (a 9k-element kernel).
  const ConvLayer& s = m.conv[0];
  f32_to_padded(m.P() + s.w_off, static_cast<int64_t>(s.spec->out_channels) * s.spec->kernel * s.spec->kernel, s.cin,
                kStemCinPad, m.dt, m.w1pad.get(), m.stream);
  if (cfg.momentum != 0.0f) m.mom_init = true;
}

void CudaResNet18::forward_backward_async(float loss_scale) {
  impl_->forward_async(true);
  impl_->backward(loss_scale, nullptr);
}

void CudaResNet18::train_step_async(const nn::SgdConfig& cfg, float lr, float loss_scale) {
  forward_backward_async(loss_scale);
  sgd_step(cfg, lr, 1.0f / loss_scale);
}

void CudaResNet18::capture_train_step(const nn::SgdConfig& cfg, float lr, float loss_scale) {
  Impl& m = *impl_;
  DDP_CHECK(m.have_input, "CudaResNet18::capture_train_step before set_input_u8/set_input_f32");
  if (m.step_graph) {
    CUDA_CHECK(cudaGraphExecDestroy(m.step_graph));
    m.step_graph = nullptr;
  }
  // The eager step: plans, workspaces and the momentum buffers' first-step initialisation happen here.
  train_step_async(cfg, lr, loss_scale);
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  // The capture runs the host side of a step (counters, flags) without its device work: undone below.
  const int64_t nbt_before = m.nbt;
  // Thread-local mode: another thread's CUDA calls (the NVML poller, a communicator) are not
  // affected, while an unsafe call of ours inside the capture (a synchronisation, an allocation)
  // fails loudly instead of being recorded wrongly.
  CUDA_CHECK(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
  std::exception_ptr step_error;
  try {
    train_step_async(cfg, lr, loss_scale);
  } catch (...) {
    step_error = std::current_exception();
  }
  // Every way out ends the capture (so the stream is usable again), undoes the captured step's host
  // side, and records input_consumed for real: it was last recorded inside the capture, where it
  // recorded nothing a later cudaStreamWaitEvent (the next host batch's copy) could use.
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(m.stream, &graph);
  cudaError_t inst = cudaSuccess;
  if (!step_error && end == cudaSuccess) inst = cudaGraphInstantiateWithFlags(&m.step_graph, graph, 0);
  if (graph) (void)cudaGraphDestroy(graph);
  (void)cudaGetLastError();  // the failed calls' errors are reported below, not left for the next launch
  if (inst != cudaSuccess) m.step_graph = nullptr;
  m.nbt = nbt_before;
  m.have_forward = false;
  CUDA_CHECK(cudaEventRecord(m.input_consumed, m.stream));
  if (step_error) std::rethrow_exception(step_error);
  if (end != cudaSuccess) {
    DDP_FAIL("CudaResNet18::capture_train_step: cudaStreamEndCapture failed: ", cudaGetErrorString(end),
             " (a call made during the step broke the capture)");
  }
  if (inst != cudaSuccess) DDP_FAIL("CudaResNet18::capture_train_step: cudaGraphInstantiate failed: ", cudaGetErrorString(inst));
  m.graph_n = m.n;
  m.graph_h = m.h;
  m.graph_w = m.w;
  m.graph_conv_ws = m.convs->workspace_bytes();
}

void CudaResNet18::replay_train_step() {
  Impl& m = *impl_;
  DDP_CHECK(m.step_graph, "CudaResNet18::replay_train_step before capture_train_step");
  DDP_CHECK(m.have_input, "CudaResNet18::replay_train_step before set_input_u8/set_input_f32");
  DDP_CHECK(m.n == m.graph_n && m.h == m.graph_h && m.w == m.graph_w, "CudaResNet18::replay_train_step: input ", m.n,
            " x ", m.h, " x ", m.w, " differs from the captured step's ", m.graph_n, " x ", m.graph_h, " x ", m.graph_w);
  DDP_CHECK(m.convs->workspace_bytes() == m.graph_conv_ws,
            "CudaResNet18::replay_train_step: the conv workspace was regrown since the capture (another input size "
            "ran); capture again");
  CUDA_CHECK(cudaGraphLaunch(m.step_graph, m.stream));
  // As forward_async does after conv1 (here after the whole step, which is later, so still safe).
  CUDA_CHECK(cudaEventRecord(m.input_consumed, m.stream));
  ++m.nbt;
  m.have_forward = true;
  m.loss_n = m.n;
  m.last_train = true;
}

bool CudaResNet18::has_captured_step() const { return impl_->step_graph != nullptr; }

double CudaResNet18::param_checksum() {
  Impl& m = *impl_;
  double* part = m.checksum.as<double>();
  checksum_partials(m.P(), m.spec.param_count, part, m.stream);
  checksum_partials(m.bufs.as<float>(), m.spec.buffer_count, part + kChecksumBlocks, m.stream);
  std::vector<double> h(2 * kChecksumBlocks);
  CUDA_CHECK(cudaMemcpyAsync(h.data(), part, h.size() * 8, cudaMemcpyDeviceToHost, m.stream));
  CUDA_CHECK(cudaStreamSynchronize(m.stream));
  double s = 0;
  for (double v : h) s += v;
  return s;
}

void CudaResNet18::synchronize() { CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

void CudaResNet18::prepare(int n, int h, int w) {
  Impl& m = *impl_;
  const int cur_n = m.n, cur_h = m.h, cur_w = m.w;
  m.set_geometry(n, h, w);
  // The stem's data gradient is never computed (the input needs none).
  for (size_t i = 0; i < m.conv.size(); ++i) m.convs->prepare(m.conv[i].shape, i != 0);
  if (cur_n > 0) m.set_geometry(cur_n, cur_h, cur_w);  // the current input's shapes again
}

size_t CudaResNet18::conv_workspace_bytes() const { return impl_->convs->workspace_bytes(); }
size_t CudaResNet18::peak_memory_bytes() const { return tracked_peak_bytes(); }

}  // namespace ddp::cuda
