// NHWC convolutions through cuDNN's graph API (cudnn-frontend). Each (op, shape, dtype) gets its
// graph and execution plan built once (heuristics mode A, then the fallback list) and cached; all
// plans share one workspace that grows to the largest need. With autotune, every candidate plan is
// built and the fastest is chosen by timing them on the first call (like cudnn.benchmark); plans
// whose candidates need more than 1 GiB of workspace keep the heuristic choice. The frontend headers stay in conv.cpp
// (they compile slowly).
//
// Tensors: x is n x h x w x c, y is n x oh x ow x k, weights are KRSC (k x r x s x c), all dense in
// the activation dtype; compute is fp32 (TF32 tensor cores for fp32 only when allow_tf32).
#pragma once

#include <cudnn.h>

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
  // The handle must already be bound to the stream the convs should run on.
  ConvEngine(cudnnHandle_t handle, bool allow_tf32, bool autotune = false);
  // Applies to plans built from now on.
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
  size_t plan_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ddp::cuda
