#include "ddp/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "ddp/core/check.h"

namespace ddp::train {

LrSchedule::LrSchedule(LrScheduleKind kind, double base_lr, int epochs, int64_t steps_per_epoch,
                       double warmup_epochs, double step_epochs, double gamma)
    : kind_(kind), base_(base_lr), spe_(steps_per_epoch), step_epochs_(step_epochs), gamma_(gamma) {
  DDP_CHECK(steps_per_epoch >= 1, "steps per epoch must be at least 1, got ", steps_per_epoch);
  DDP_CHECK(epochs >= 1, "epochs must be at least 1");
  total_ = static_cast<int64_t>(epochs) * steps_per_epoch;
  warmup_ = static_cast<int64_t>(std::llround(warmup_epochs * static_cast<double>(steps_per_epoch)));
  if (kind == LrScheduleKind::OneCycle)
    onecycle_warm_ = warmup_epochs > 0 ? warmup_epochs * static_cast<double>(steps_per_epoch)
                                       : 0.3 * static_cast<double>(total_);  // OneCycleLR's pct_start
  warmup_ = std::clamp<int64_t>(warmup_, 0, total_ - 1);
}

double LrSchedule::lr_at(int64_t s) const {
  constexpr double pi = 3.14159265358979323846;
  s = std::clamp<int64_t>(s, 0, total_ - 1);
  if (kind_ == LrScheduleKind::OneCycle) {
    // OneCycleLR with anneal_strategy='cos': phase ends at step pct*total - 1 and total - 1.
    double initial = base_ / kOneCycleDiv, final_lr = initial / kOneCycleFinalDiv;
    double end1 = onecycle_warm_ - 1.0;
    double end2 = static_cast<double>(total_) - 1.0;
    auto cos_anneal = [&](double start, double end, double pct) {
      return end + (start - end) / 2.0 * (std::cos(pi * pct) + 1.0);
    };
    double x = static_cast<double>(s);
    if (x <= end1) return end1 <= 0 ? base_ : cos_anneal(initial, base_, x / end1);
    return cos_anneal(base_, final_lr, (x - end1) / std::max(1.0, end2 - end1));
  }
  if (s < warmup_) return base_ * static_cast<double>(s + 1) / static_cast<double>(warmup_);
  if (kind_ == LrScheduleKind::Step) {
    double epoch = static_cast<double>(s) / static_cast<double>(spe_);
    // A tiny epsilon keeps exact multiples (epoch 30.0 from 30*spe/spe) on the right side.
    return base_ * std::pow(gamma_, std::floor(epoch / step_epochs_ + 1e-9));
  }
  double t = static_cast<double>(s - warmup_) / static_cast<double>(std::max<int64_t>(1, total_ - warmup_));
  return base_ * 0.5 * (1.0 + std::cos(pi * t));
}

}  // namespace ddp::train
