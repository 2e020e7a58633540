// ResNet18 on the CPU backend: fp32, NCHW, the ops of ddp/backend/cpu/ops.h. It is the numerical
// reference for the CUDA backend and the path for machines without a GPU.
//
// Parameters, gradients and momentum live in flat buffers in torchvision's state_dict order and
// PyTorch layout (so the *_torch accessors are plain copies). Activations are allocated once, for
// ModelConfig::max_batch at ModelConfig::height x width, and reused for any smaller batch or size.
#pragma once

#include <memory>
#include <vector>

#include "ddp/core/tensor.h"
#include "ddp/nn/model.h"

namespace ddp::cpu {

class CpuResNet18 final : public nn::Model {
 public:
  // Initialises the parameters with nn::init_resnet18(cfg.init) and sets the thread count
  // (cfg.threads; 0 = OMP_NUM_THREADS or all cores).
  explicit CpuResNet18(const nn::ModelConfig& cfg);
  ~CpuResNet18() override;

  nn::Backend backend() const override { return nn::Backend::CPU; }
  const nn::ResNet18Spec& spec() const override { return spec_; }
  const nn::ModelConfig& config() const override { return cfg_; }

  float* params() override;
  float* grads() override;
  float* momentum() override;
  float* buffers() override;
  int64_t num_batches_tracked() const override { return num_batches_tracked_; }
  void set_num_batches_tracked(int64_t n) override { num_batches_tracked_ = n; }
  bool momentum_initialised() const override { return momentum_initialised_; }
  void set_momentum_initialised(bool v) override { momentum_initialised_ = v; }

  void get_params_torch(float* host) const override;
  void set_params_torch(const float* host) override;
  void get_grads_torch(float* host) const override;
  void get_momentum_torch(float* host) const override;
  void set_momentum_torch(const float* host) override;
  void get_buffers(float* host) const override;
  void set_buffers(const float* host) override;
  void params_changed() override {}

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
  void synchronize() override {}
  size_t peak_memory_bytes() const override { return allocated_bytes_; }

  struct Impl;  // activation plan and buffers (resnet18_cpu.cpp)

 private:
  void check_input(int n, int h, int w) const;

  nn::ModelConfig cfg_;
  nn::ResNet18Spec spec_;
  Tensor params_, grads_, momentum_, buffers_;
  int64_t num_batches_tracked_ = 0;
  bool momentum_initialised_ = false;
  size_t allocated_bytes_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ddp::cpu
