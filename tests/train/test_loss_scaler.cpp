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
