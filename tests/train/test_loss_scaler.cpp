// Dynamic loss scaling as torch.cuda.amp.GradScaler defines it (init 2^16, growth x2 every 2000
// clean steps, backoff x0.5 and skip on inf/NaN); expected values computed by hand from those rules.
#include <gtest/gtest.h>

#include "ddp/core/check.h"
#include "ddp/train/loss_scaler.h"

using ddp::train::LossScaler;

TEST(LossScaler, StartsAt2To16) {
  LossScaler s(true);
  EXPECT_EQ(s.scale(), 65536.0f);
  EXPECT_TRUE(s.dynamic());
}

TEST(LossScaler, OverflowHalvesAndSkips) {
  LossScaler s(true);
  EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 32768.0f);
  EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 16384.0f);
  EXPECT_EQ(s.state().skipped_steps, 2);
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 16384.0f);
}

TEST(LossScaler, GrowsAfter2000CleanSteps) {
  LossScaler s(true);
  for (int i = 0; i < 1999; ++i) ASSERT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 65536.0f);
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 131072.0f);
  EXPECT_EQ(s.state().good_steps, 0);
}

TEST(LossScaler, OverflowResetsGrowthCounter) {
  LossScaler s(true);
  for (int i = 0; i < 1500; ++i) s.update(true);
  s.update(false);  // 32768, counter reset
  for (int i = 0; i < 1999; ++i) s.update(true);
  EXPECT_EQ(s.scale(), 32768.0f);
  s.update(true);
  EXPECT_EQ(s.scale(), 65536.0f);
}

TEST(LossScaler, StateRoundTrip) {
  LossScaler a(true);
  for (int i = 0; i < 77; ++i) a.update(true);
  a.update(false);
  LossScaler b(true);
  b.set_state(a.state());
  for (int i = 0; i < 3000; ++i) {
    bool f = (i % 997) != 5;
    ASSERT_EQ(a.update(f), b.update(f));
    ASSERT_EQ(a.scale(), b.scale());
  }
}

TEST(LossScaler, ResumeTakesOnlyAStateThatWasScaledDynamically) {
  LossScaler fp16(true);
  EXPECT_TRUE(fp16.state().dynamic);
  // An fp16 run resumed from a bf16/fp32 checkpoint (constant scale 1): a fresh 2^16, not 1.
  EXPECT_FALSE(fp16.resume({1.0, 0, 0, false}));
  EXPECT_EQ(fp16.scale(), 65536.0f);
  // From an fp16 checkpoint: its scale and counters continue.
  EXPECT_TRUE(fp16.resume({1024.0, 1999, 4, true}));
  EXPECT_EQ(fp16.scale(), 1024.0f);
  EXPECT_EQ(fp16.state().skipped_steps, 4);
  fp16.update(true);
  EXPECT_EQ(fp16.scale(), 2048.0f);  // the 2000th clean step
  // A bf16/fp32 run keeps its constant 1 whatever the checkpoint had.
  LossScaler bf16(false);
  EXPECT_FALSE(bf16.state().dynamic);
  EXPECT_FALSE(bf16.resume({1024.0, 5, 0, true}));
  EXPECT_EQ(bf16.scale(), 1.0f);
}

TEST(LossScaler, StaticScaleIsOneAndNonFiniteIsDivergence) {
  LossScaler s(false);
  EXPECT_EQ(s.scale(), 1.0f);
  EXPECT_TRUE(s.update(true));
  EXPECT_THROW(s.update(false), ddp::Error);
}

TEST(LossScaler, GivesUpWhenScaleCollapses) {
  LossScaler s(true);
  EXPECT_THROW(
      {
        for (int i = 0; i < 100; ++i) s.update(false);
      },
      ddp::Error);
}
