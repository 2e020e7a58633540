// The SGD update of PyTorch's torch.optim.SGD on one flat fp32 tensor (see ddp::nn::SgdConfig).
#pragma once

#include <cstdint>

namespace ddp::cpu {

// g = grad * grad_scale + weight_decay * p
// buf = first_step ? g : momentum * buf + (1 - dampening) * g      (skipped when momentum == 0)
// g = nesterov ? g + momentum * buf : buf                           (g itself when momentum == 0)
// p -= lr * g
// momentum_buf may be nullptr only when momentum == 0.
void sgd_update(int64_t n, float* param, const float* grad, float* momentum_buf, float lr, float grad_scale,
                float weight_decay, float momentum, float dampening, bool nesterov, bool first_step);

}  // namespace ddp::cpu
