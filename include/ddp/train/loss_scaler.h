// Dynamic loss scaling for fp16 (as torch.cuda.amp.GradScaler): start at 2^16; after 2000
// consecutive clean steps double the scale; on inf/NaN gradients halve it and skip the step.
// The found-inf flag must already be reduced across ranks (allreduce_max) so every rank skips the
// same steps and the scales stay identical. bf16 and fp32 use a constant scale of 1.
#pragma once

#include <cstdint>

namespace ddp::train {

struct LossScalerState {
  double scale = 1.0;
  int64_t good_steps = 0;     // clean steps since the last change
  int64_t skipped_steps = 0;  // total steps skipped for overflow
  bool dynamic = false;       // written by a run with fp16 dynamic scaling (else the scale is a constant 1)
};

class LossScaler {
 public:
  static constexpr double kInitScale = 65536.0;
  static constexpr double kGrowth = 2.0;
  static constexpr double kBackoff = 0.5;
  static constexpr int64_t kGrowthInterval = 2000;
  static constexpr double kMinScale = 1.0 / 65536.0;  // below this the run has diverged

  explicit LossScaler(bool dynamic);
  bool dynamic() const { return dynamic_; }
  float scale() const { return static_cast<float>(s_.scale); }
  // Feeds the globally reduced finiteness of this step's gradients. Returns true when the optimizer
  // step should run (grads finite); false when it must be skipped.
  bool update(bool grads_finite);
  const LossScalerState& state() const { return s_; }
  void set_state(const LossScalerState& s) {
    s_ = s;
    s_.dynamic = dynamic_;
  }
  // On resume: continues a saved dynamic scale; keeps the fresh state (2^16, or the constant 1) when
  // this run does not scale or the saved run did not (a bf16/fp32 checkpoint's constant 1 would start
  // fp16 at a scale that underflows small gradients, and take 16 x 2000 steps to grow back).
  // Returns whether the saved state was taken.
  bool resume(const LossScalerState& saved) {
    if (!dynamic_ || !saved.dynamic) return false;
    set_state(saved);
    return true;
  }

 private:
  bool dynamic_;
  LossScalerState s_;
};

}  // namespace ddp::train
