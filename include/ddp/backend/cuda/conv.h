// NHWC convolutions through cuDNN's graph API (cudnn-frontend). Each (op, shape, dtype, numerics,
// build policy) gets its graph and execution plan built once per process and device (heuristics
// mode A, then the fallback list) and shared by every ConvEngine on that device, so a second model
// of the same shape (the tests build ~20) builds nothing. Each engine keeps its own workspace,
// grown to the largest need of the plans it ran. With autotune, every candidate plan is built and
// the fastest is chosen by timing them on the first call (like cudnn.benchmark); plans whose
// candidates need more than 1 GiB of workspace keep the heuristic choice. The frontend headers stay
// in conv.cpp (they compile slowly).
//
// Deterministic engines only (`deterministic`, the trainer's --deterministic): cuDNN marks engines
// whose result may change from run to run (e.g. weight gradients that add split partial sums with
// atomics) and those are barred, so the same inputs give the same bits every time. Training amplifies
// such last-bit differences: two fp32 runs of 4 steps at lr 0.2 were seen to end 10-30% apart in
// their weight updates on an H200 (2026-11-29).
//
// All engines of a device share one cuDNN handle; building and executing take that device's lock
// and bind the handle to the calling engine's stream (a handle serves one thread at a time, and
// cuDNN's backend plans are not safe to execute concurrently). Executing only enqueues work.
//
// Tensors: x is n x h x w x c, y is n x oh x ow x k, weights are KRSC (k x r x s x c), all dense in
// the activation dtype; compute is fp32 (TF32 tensor cores for fp32 only when allow_tf32).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>

#include "ddp/core/tensor.h"

namespace ddp::cuda {

struct ConvShape {
  int n = 0, c = 0, h = 0, w = 0;  // input
  int k = 0, r = 0, s = 0;         // output channels, kernel
  int stride = 1, pad = 0;
  DType dtype = DType::F16;
  int out_h() const { return (h + 2 * pad - r) / stride + 1; }
  int out_w() const { return (w + 2 * pad - s) / stride + 1; }
};

class ConvEngine {
 public:
  // The convs run on `stream`, on the device current when the engine is made.
  ConvEngine(cudaStream_t stream, bool allow_tf32, bool autotune = false, bool deterministic = false);
  // Applies to convs run from now on (timed plans are cache entries of their own).
  void set_autotune(bool on);
  ~ConvEngine();
  ConvEngine(const ConvEngine&) = delete;
  ConvEngine& operator=(const ConvEngine&) = delete;

  void forward(const ConvShape& p, const void* x, const void* w, void* y);
  void backward_data(const ConvShape& p, const void* dy, const void* w, void* dx);
  void backward_weight(const ConvShape& p, const void* x, const void* dy, void* dw);
  // Builds the three plans for p now (so the first timed step does not pay for it).
  void prepare(const ConvShape& p, bool need_dgrad);

  size_t workspace_bytes() const;
  size_t plan_count() const;  // distinct plans this engine has used

  // Process-wide: plans built so far (all engines, all devices) and the seconds spent building them.
  static size_t plans_built();
  static double plan_build_seconds();
  // cudnnGetVersion() of the library loaded at run time, and CUDNN_VERSION of the headers built
  // against: a host's cuDNN (from its PyTorch wheel) may be older than ours, which cuDNN does not
  // promise to support, so the benchmark records both.
  static size_t cudnn_runtime_version();
  static size_t cudnn_built_version();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ddp::cuda
