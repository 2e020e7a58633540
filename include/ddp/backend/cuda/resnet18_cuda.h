// ResNet18 on the GPU: NHWC activations in fp16/bf16 (fp32 for Amp::Off), convs through cuDNN's
// graph API (ddp/backend/cuda/conv.h), BN + residual add + ReLU, pools, CE and the fused SGD as
// CUDA kernels (ops.h), the classifier in fp32 through cuBLAS.
//
// Flat buffers (device memory, torchvision state_dict order, offsets from spec().params):
//   params()   fp32 master weights; conv weights are KRSC (k x r x s x c) inside their slot, every
//              other tensor as in PyTorch. get/set_*_torch convert KRSC <-> OIHW.
//   grads()    fp32, same layout; = loss_scale * d(mean loss)/d(params) after backward.
//   momentum() fp32, same layout.
//   buffers()  BN running mean / var, as PyTorch.
// A low-precision copy of params() (same offsets) feeds the convs; sgd_step writes it in the same
// pass as the fp32 masters. conv1's input channels are padded 3 -> 8 (zeros) for tensor cores.
#pragma once

#include <memory>
#include <vector>

#include "ddp/nn/model.h"

namespace ddp::cuda {

class CudaResNet18 final : public nn::Model {
 public:
  // Initialises parameters with nn::init_resnet18(cfg.init); throws when no GPU is visible.
  explicit CudaResNet18(const nn::ModelConfig& cfg);
  ~CudaResNet18() override;

  nn::Backend backend() const override { return nn::Backend::CUDA; }
  const nn::ResNet18Spec& spec() const override;
  const nn::ModelConfig& config() const override;

  float* params() override;
  float* grads() override;
  float* momentum() override;
  float* buffers() override;
  int64_t num_batches_tracked() const override;
  void set_num_batches_tracked(int64_t n) override;
  bool momentum_initialised() const override;
  void set_momentum_initialised(bool v) override;

  void get_params_torch(float* host) const override;
  void set_params_torch(const float* host) override;
  void get_grads_torch(float* host) const override;
  void get_momentum_torch(float* host) const override;
  void set_momentum_torch(const float* host) override;
  void get_buffers(float* host) const override;
  void set_buffers(const float* host) override;
  void params_changed() override;

  void set_input_u8(const uint8_t* images_nhwc, const int32_t* labels, int n, int h, int w) override;
  void set_input_f32(const float* images_nchw_host, const int32_t* labels_host, int n, int h, int w) override;

  float forward(nn::Mode mode) override;
  void forward_async(nn::Mode mode) override;
  float last_loss() override;
  std::vector<float> logits_host() const override;
  nn::EvalCounts eval_counts() const override;
  void backward(float loss_scale, const nn::GradReadyFn& on_ready) override;
  bool grads_finite() override;
  void sgd_step(const nn::SgdConfig& cfg, float lr, float grad_scale) override;
  double param_checksum() override;
  void synchronize() override;
  void prepare(int n, int h, int w) override;
  size_t conv_workspace_bytes() const;
  size_t peak_memory_bytes() const override;

  // The compute stream (cudaStream_t) every op of this model runs on; a communicator's stream
  // waits on GradReady::event recorded here.
  void* stream() const;
  // Enqueues forward (train mode, no host sync) + backward + SGD: the benchmark's step. Returns
  // nothing; the loss stays on the device.
  void train_step_async(const nn::SgdConfig& cfg, float lr, float loss_scale);
  // Its forward and backward alone (no host sync): the benchmark's fp16 step checks grads_finite()
  // before its sgd_step, as a dynamic loss scaler must.
  void forward_backward_async(float loss_scale);
  // The same step as one CUDA graph, to measure what kernel launches cost (bench_cuda_train
  // --cuda-graph). capture_train_step runs one step eagerly on the current input (it builds any
  // missing conv plans and grows workspaces, neither of which may happen inside a capture), then
  // captures the next one without running it. cfg, lr and loss_scale are fixed in the graph; the
  // trainer, whose lr and loss scale change every step, does not use it. replay_train_step runs the
  // captured step on the input set by set_input_u8 since (same batch and size as at capture); it
  // refuses to run after the conv workspace was regrown (another input size ran): capture again.
  void capture_train_step(const nn::SgdConfig& cfg, float lr, float loss_scale);
  void replay_train_step();
  bool has_captured_step() const;
  // Timed cuDNN engine search for conv plans built from now on (also: DDP_CUDNN_AUTOTUNE=1 in the
  // environment when the model is constructed). Off by default: heuristics mode A.
  void set_conv_autotune(bool on);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ddp::cuda
