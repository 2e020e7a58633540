#include "ddp/backend/cpu/sgd.h"

#include "ddp/core/check.h"

namespace ddp::cpu {

void sgd_update(int64_t n, float* p, const float* grad, float* buf, float lr, float grad_scale, float wd,
                float momentum, float dampening, bool nesterov, bool first_step) {
  DDP_CHECK(momentum == 0.0f || buf != nullptr, "sgd_update: momentum ", momentum, " needs a momentum buffer");
  DDP_CHECK(!nesterov || (momentum > 0.0f && dampening == 0.0f),
            "SGD: Nesterov momentum requires a momentum > 0 and zero dampening (as in PyTorch)");
  if (momentum == 0.0f) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      float g = grad[i] * grad_scale + wd * p[i];
      p[i] -= lr * g;
    }
    return;
  }
  const float keep = 1.0f - dampening;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i] * grad_scale + wd * p[i];
    float b = first_step ? g : momentum * buf[i] + keep * g;
    buf[i] = b;
    float d = nesterov ? g + momentum * b : b;
    p[i] -= lr * d;
  }
}

}  // namespace ddp::cpu
