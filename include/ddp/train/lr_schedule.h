// Learning-rate schedules, evaluated per step (so warm-up and cosine are smooth within an epoch).
//   step:     lr * gamma^floor(epoch / step_epochs)           after a linear warm-up
//   cosine:   lr * 0.5 * (1 + cos(pi * t)), t in [0, 1] over the steps after warm-up
//   onecycle: torch.optim.lr_scheduler.OneCycleLR (cos annealing, two phases): from lr/25 up to lr
//             over the first pct (warm-up epochs, or 30%), then down to lr/25/1e4
// The linear warm-up (step, cosine) goes from lr/steps_warmup to lr: step s (0-based) uses
// lr * (s + 1) / warmup_steps, as Goyal et al. and most reference recipes do.
#pragma once

#include <cstdint>

#include "ddp/train/options.h"

namespace ddp::train {

class LrSchedule {
 public:
  LrSchedule(LrScheduleKind kind, double base_lr, int epochs, int64_t steps_per_epoch, double warmup_epochs,
             double step_epochs = 30.0, double gamma = 0.1);
  double lr_at(int64_t global_step) const;  // global_step counts from 0
  int64_t total_steps() const { return total_; }

  // OneCycleLR's defaults (div_factor, final_div_factor).
  static constexpr double kOneCycleDiv = 25.0;
  static constexpr double kOneCycleFinalDiv = 1e4;

 private:
  LrScheduleKind kind_;
  double base_;
  int64_t spe_, total_, warmup_;
  double step_epochs_, gamma_;
  double onecycle_warm_ = 0;  // OneCycleLR's pct_start * total_steps (a real number there too)
};

}  // namespace ddp::train
