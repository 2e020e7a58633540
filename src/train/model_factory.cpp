// nn::make_model: the one place that maps --backend to a Model. Never falls back: asking for CUDA
// on a build without it, or on a machine without a visible GPU, is an error that says which.
#include "ddp/backend/cpu/resnet18_cpu.h"
#include "ddp/core/check.h"
#include "ddp/core/tensor.h"
#include "ddp/nn/model.h"

#if DDP_HAVE_CUDA
#include "ddp/backend/cuda/resnet18_cuda.h"
#endif

namespace ddp::nn {

std::unique_ptr<Model> make_model(Backend backend, const ModelConfig& cfg) {
  if (backend == Backend::CPU) return std::make_unique<cpu::CpuResNet18>(cfg);
#if DDP_HAVE_CUDA
  DDP_CHECK(cuda_available(), "--backend cuda: no GPU is visible to this process (", cuda_unavailable_reason(),
            "; check nvidia-smi and CUDA_VISIBLE_DEVICES), and the CUDA backend never falls back to the CPU; "
            "use --backend cpu to train on the CPU");
  return std::make_unique<cuda::CudaResNet18>(cfg);
#else
  DDP_FAIL("--backend cuda: this build has no CUDA backend (CUDA toolkit, cuDNN or NCCL were not found at "
           "configure time; see tools/setup); use --backend cpu");
#endif
}

}  // namespace ddp::nn
