// LR schedules against torch.optim.lr_scheduler (values printed by PyTorch 1.13, /usr/bin/python3:
// OneCycleLR(max_lr=0.4, total_steps=50, cycle_momentum=False[, pct_start=0.2]) and
// CosineAnnealingLR(T_max=50)), and the step/warm-up rules computed by hand.
#include <gtest/gtest.h>

#include <cmath>

#include "ddp/core/check.h"
#include "ddp/train/lr_schedule.h"

using ddp::train::LrSchedule;
using ddp::train::LrScheduleKind;

namespace {
// tolerance: atol 1e-12 + rtol 1e-12 * |ref| (both are double computations of the same formula)
void expect_lr(double got, double ref) { EXPECT_NEAR(got, ref, 1e-12 + 1e-12 * std::fabs(ref)); }
}  // namespace

TEST(LrSchedule, OneCycleMatchesPyTorchDefaultPct) {
  LrSchedule s(LrScheduleKind::OneCycle, 0.4, 5, 10, 0.0);
  expect_lr(s.lr_at(0), 0.016000000000000014);
  expect_lr(s.lr_at(1), 0.020813840861089894);
  expect_lr(s.lr_at(7), 0.20800000000000002);
  expect_lr(s.lr_at(14), 0.4);
  expect_lr(s.lr_at(15), 0.3991948620196127);
  expect_lr(s.lr_at(16), 0.3967859305760551);
  expect_lr(s.lr_at(30), 0.22684734577691845);
  expect_lr(s.lr_at(49), 1.6e-06);
}

TEST(LrSchedule, OneCycleMatchesPyTorchWarmupEpochsAsPct) {
  LrSchedule s(LrScheduleKind::OneCycle, 0.4, 5, 10, 1.0);  // pct_start = 1/5
  expect_lr(s.lr_at(0), 0.016000000000000014);
  expect_lr(s.lr_at(5), 0.24134045011205063);
  expect_lr(s.lr_at(9), 0.4);
  expect_lr(s.lr_at(10), 0.39938346921275863);
  expect_lr(s.lr_at(25), 0.261803951661394);
  expect_lr(s.lr_at(49), 1.6e-06);
}

TEST(LrSchedule, CosineMatchesPyTorch) {
  LrSchedule s(LrScheduleKind::Cosine, 0.4, 5, 10, 0.0);
  expect_lr(s.lr_at(0), 0.4);
  expect_lr(s.lr_at(10), 0.36180339887498947);
  expect_lr(s.lr_at(25), 0.19999999999999998);
  expect_lr(s.lr_at(49), 0.0003946543143456882);
}

TEST(LrSchedule, StepDecaysEveryStepEpochs) {
  LrSchedule s(LrScheduleKind::Step, 0.1, 90, 100, 0.0, 30.0, 0.1);
  expect_lr(s.lr_at(0), 0.1);
  expect_lr(s.lr_at(2999), 0.1);
  expect_lr(s.lr_at(3000), 0.01);
  expect_lr(s.lr_at(6000), 0.001);
  expect_lr(s.lr_at(8999), 0.001);
}

TEST(LrSchedule, LinearWarmupThenSchedule) {
  LrSchedule s(LrScheduleKind::Cosine, 1.0, 10, 10, 2.0);  // 20 warm-up steps of 100
  expect_lr(s.lr_at(0), 1.0 / 20);
  expect_lr(s.lr_at(9), 10.0 / 20);
  expect_lr(s.lr_at(19), 1.0);
  expect_lr(s.lr_at(20), 1.0);  // cosine restarts at t = 0 after warm-up
  expect_lr(s.lr_at(60), 0.5);  // half-way through the 80 cosine steps
  LrSchedule st(LrScheduleKind::Step, 0.8, 10, 10, 1.0, 5.0, 0.5);
  expect_lr(st.lr_at(4), 0.8 * 5 / 10);
  expect_lr(st.lr_at(10), 0.8);
  expect_lr(st.lr_at(50), 0.4);
}

TEST(LrSchedule, RejectsEmptyEpoch) { EXPECT_THROW(LrSchedule(LrScheduleKind::Step, 0.1, 1, 0, 0.0), ddp::Error); }
