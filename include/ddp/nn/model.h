// The one model interface both backends implement (backend/cpu: CpuResNet18, backend/cuda:
// CudaResNet18). The trainer, the communicator's bucketing and the tests talk only to this.
//
// A training step is:
//   model.set_input_u8(...)            // or set_input_f32 in tests
//   loss = model.forward(Mode::Train)  // or forward_async(Mode::Train), and last_loss() after backward
//   model.backward(loss_scale, on_grad_ready)   // grads() = loss_scale * d(mean loss)/d(params)
//   ... communicator averages grads() (in buckets, as on_grad_ready reports them) ...
//   if (model.grads_finite()) model.sgd_step(...)   // all ranks agree on finiteness first
//
// The next step's set_input_u8 may come right after backward, before the communicator's wait,
// grads_finite and sgd_step (the trainer does that, so the batch's copy to the GPU overlaps the
// backward): neither of those reads the input, and a backend must keep the backward in flight
// reading the batch it was given (on CUDA, stream order does that).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ddp/core/tensor.h"
#include "ddp/nn/resnet18.h"

namespace ddp::nn {

enum class Backend { CPU, CUDA };
enum class Amp { Off, F16, BF16 };  // Off: fp32 (TF32 per ModelConfig::tf32 on the GPU)
enum class Mode { Train, Eval };

const char* backend_name(Backend b);
const char* amp_name(Amp a);

struct ModelConfig {
  int num_classes = 1000;
  int max_batch = 256;  // largest batch set_input will see (workspace sizing)
  int height = 224, width = 224;  // input size; set_input may use the same or smaller
  Amp amp = Amp::Off;
  bool tf32 = true;
  // CUDA backend: only cuDNN engines that give the same bits on every run (no atomics); the same
  // seed then gives the same run. The CPU backend is deterministic for a given thread count anyway.
  bool deterministic = false;
  InitOptions init;
  float label_smoothing = 0.0f;
  int threads = 0;  // CPU backend: 0 = all cores (OMP_NUM_THREADS if set)
  int device = 0;   // CUDA backend: device ordinal (after CUDA_VISIBLE_DEVICES)
};

// PyTorch's SGD (torch.optim.SGD) formulation:
//   g = grad + wd * p                     (wd skipped for BN and bias when !decay_bn_and_bias)
//   buf = momentum * buf + (1 - dampening) * g   (buf = g on the first step)
//   g = nesterov ? g + momentum * buf : buf
//   p = p - lr * g
struct SgdConfig {
  float momentum = 0.9f;
  float dampening = 0.0f;
  bool nesterov = false;
  float weight_decay = 0.0f;
  bool decay_bn_and_bias = true;  // false: no weight decay on BN gamma/beta and fc bias
};

// Called during backward each time a further tail of the flat gradient buffer is final: all
// gradient elements in [first_ready, param_count) are computed. On the GPU `event` is a
// cudaEvent_t recorded on the compute stream after those gradients were written (nullptr on CPU),
// so a communication stream can wait on it without blocking the host.
struct GradReady {
  int64_t first_ready = 0;
  void* event = nullptr;
};
using GradReadyFn = std::function<void(const GradReady&)>;

struct EvalCounts {
  int64_t top1 = 0, top5 = 0, count = 0;
  double loss_sum = 0.0;  // sum over images (not mean), so ranks can add them up
};

class Model {
 public:
  virtual ~Model() = default;
  virtual Backend backend() const = 0;
  virtual const ResNet18Spec& spec() const = 0;
  virtual const ModelConfig& config() const = 0;

  // Flat fp32 buffers in the backend's memory (device pointers on CUDA), ordered as spec().params /
  // spec().buffers. The layout inside each tensor is the backend's own (see get_params_torch).
  virtual float* params() = 0;
  virtual float* grads() = 0;
  virtual float* momentum() = 0;  // SGD momentum buffers, same layout as params
  virtual float* buffers() = 0;   // BN running mean / var
  virtual int64_t num_batches_tracked() const = 0;
  virtual void set_num_batches_tracked(int64_t n) = 0;
  // Whether momentum buffers hold a value yet (PyTorch initialises them on the first step).
  virtual bool momentum_initialised() const = 0;
  virtual void set_momentum_initialised(bool v) = 0;

  // Host copies in PyTorch layout (OIHW convs), for weights files, checkpoints and comparisons.
  virtual void get_params_torch(float* host) const = 0;
  virtual void set_params_torch(const float* host) = 0;
  virtual void get_grads_torch(float* host) const = 0;
  virtual void get_momentum_torch(float* host) const = 0;
  virtual void set_momentum_torch(const float* host) = 0;
  virtual void get_buffers(float* host) const = 0;
  virtual void set_buffers(const float* host) = 0;
  // After params() was overwritten in place (broadcast from rank 0): refresh low-precision copies.
  virtual void params_changed() = 0;

  // Input: uint8 images, NHWC, RGB, in the backend's memory (device memory on CUDA; pinned host
  // memory is accepted too and copied on the model's copy stream). Normalised inside with the
  // ImageNet mean/std. Labels int32 in host memory. n <= max_batch. CUDA device memory must hold
  // the images when this is called: the model's streams wait on no other stream (a cudaMemcpy from
  // pageable memory may return before its data has landed; synchronise after it).
  virtual void set_input_u8(const uint8_t* images_nhwc, const int32_t* labels, int n, int h, int w) = 0;
  // Tests: already-normalised fp32 input, NCHW, host memory.
  virtual void set_input_f32(const float* images_nchw_host, const int32_t* labels_host, int n, int h, int w) = 0;

  // Returns the mean loss over the batch (softmax cross-entropy with label smoothing). Train mode
  // uses batch statistics and updates running stats (and num_batches_tracked); Eval mode uses
  // running stats.
  virtual float forward(Mode mode) = 0;
  // forward() without waiting for its loss, and that loss later: on the GPU forward() copies the loss
  // back, so the device sat idle while the host then enqueued the backward (~0.85 ms of a 14.8 ms fp16
  // step on an H200, the trainer's gap to bench_cuda_train). The trainer enqueues backward right after
  // forward_async and reads last_loss() once the step's gradients are in. last_loss() is the mean loss
  // of the last forward, also after a later set_input_u8 (the next batch may go in during backward);
  // it waits for the device work queued so far.
  virtual void forward_async(Mode mode) = 0;
  virtual float last_loss() = 0;
  virtual std::vector<float> logits_host() const = 0;  // n x num_classes, row-major
  virtual EvalCounts eval_counts() const = 0;          // top-1/top-5/loss of the last forward
  virtual void backward(float loss_scale, const GradReadyFn& on_ready) = 0;
  // Local check of grads() for inf/NaN (the trainer reduces the result across ranks).
  virtual bool grads_finite() = 0;
  // One optimizer step on params() with grads() * grad_scale (1/loss_scale, and 1/world for sums).
  virtual void sgd_step(const SgdConfig& cfg, float lr, float grad_scale) = 0;
  // A cheap checksum of params() and buffers() (identical replicas give identical values).
  virtual double param_checksum() = 0;
  virtual void synchronize() = 0;  // waits for all queued device work
  // Does now what the first training step at batch n and size h x w would otherwise do on the way:
  // on the GPU, build the cuDNN plans and grow the conv workspace. Growing frees the old workspace,
  // and cudaFree waits for the whole device, including an allreduce already in flight during that
  // first backward: with a dead peer that wait would have no timeout (DESIGN §4 rule 2). The CPU
  // backend has nothing to prepare.
  virtual void prepare(int n, int h, int w) {
    (void)n;
    (void)h;
    (void)w;
  }
  virtual size_t peak_memory_bytes() const = 0;
};

// Creates a model on the backend; CUDA throws a clear error on a build without CUDA or a machine
// without a GPU (never falls back to the CPU). Defined in src/train/model_factory.cpp.
std::unique_ptr<Model> make_model(Backend backend, const ModelConfig& cfg);

}  // namespace ddp::nn
