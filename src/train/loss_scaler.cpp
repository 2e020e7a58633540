#include "ddp/train/loss_scaler.h"

#include "ddp/core/check.h"

namespace ddp::train {

LossScaler::LossScaler(bool dynamic) : dynamic_(dynamic) {
  s_.scale = dynamic ? kInitScale : 1.0;
  s_.dynamic = dynamic;
}

bool LossScaler::update(bool grads_finite) {
  if (!dynamic_) {
    // Without scaling a non-finite gradient is divergence, not overflow: say so instead of
    // silently skipping forever.
    DDP_CHECK(grads_finite, "gradients are inf/NaN without loss scaling (the run diverged: lower --lr, "
                            "or use --amp fp16 with dynamic loss scaling only for fp16 overflow)");
    return true;
  }
  if (!grads_finite) {
    s_.scale *= kBackoff;
    s_.good_steps = 0;
    ++s_.skipped_steps;
    DDP_CHECK(s_.scale >= kMinScale, "fp16 loss scale fell below ", kMinScale,
              ": gradients are inf/NaN at every scale (the run diverged; lower --lr)");
    return false;
  }
  if (++s_.good_steps >= kGrowthInterval) {
    s_.scale *= kGrowth;
    s_.good_steps = 0;
  }
  return true;
}

}  // namespace ddp::train
