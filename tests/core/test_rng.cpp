#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "ddp/core/rng.h"

using ddp::Philox4x32;
using ddp::Rng;

// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors), which
// cuRAND and PyTorch also implement. Mapping: counter words (c0, c1) = our counter, (c2, c3) = our
// stream, key (k0, k1) = our seed.
TEST(Philox, KnownAnswerZero) {
  uint32_t out[4];
  Philox4x32::generate(0, 0, 0, out);
  EXPECT_EQ(out[0], 0x6627e8d5u);
  EXPECT_EQ(out[1], 0xe169c58du);
  EXPECT_EQ(out[2], 0xbc57ac4cu);
  EXPECT_EQ(out[3], 0x9b00dbd8u);
}

TEST(Philox, KnownAnswerOnes) {
  uint32_t out[4];
  Philox4x32::generate(~0ull, ~0ull, ~0ull, out);
  EXPECT_EQ(out[0], 0x408f276du);
  EXPECT_EQ(out[1], 0x41c83b0eu);
  EXPECT_EQ(out[2], 0xa20bc7c6u);
  EXPECT_EQ(out[3], 0x6d5451fdu);
}

TEST(Philox, KnownAnswerPi) {
  uint32_t out[4];
  Philox4x32::generate(0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull, out);
  EXPECT_EQ(out[0], 0xd16cfe09u);
  EXPECT_EQ(out[1], 0x94fdccebu);
  EXPECT_EQ(out[2], 0x5001e420u);
  EXPECT_EQ(out[3], 0x24126ea1u);
}

TEST(Rng, PureFunctionOfSeedStreamCounter) {
  Rng a(42, 7), b(42, 7), c(42, 8), d(43, 7);
  for (int i = 0; i < 100; ++i) {
    uint32_t x = a.next_u32();
    EXPECT_EQ(x, b.next_u32());
    (void)c;
  }
  Rng a2(42, 7), c2(42, 8), d2(43, 7);
  int same_stream = 0, same_seed = 0;
  for (int i = 0; i < 100; ++i) {
    uint32_t x = a2.next_u32();
    same_stream += x == c2.next_u32();
    same_seed += x == d2.next_u32();
  }
  EXPECT_LT(same_stream, 2);
  EXPECT_LT(same_seed, 2);
  (void)d;
}

TEST(Rng, PositionRestoresExactly) {
  Rng a(5, 3);
  for (int i = 0; i < 13; ++i) a.next_u32();  // not a multiple of 4: mid-block
  uint64_t pos = a.position();
  EXPECT_EQ(pos, 13u);
  std::vector<uint32_t> expect;
  for (int i = 0; i < 10; ++i) expect.push_back(a.next_u32());
  Rng b(5, 3);
  b.set_position(pos);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(b.next_u32(), expect[i]) << i;
}

TEST(Rng, UniformAndNormalMoments) {
  Rng r(1, ddp::rng_stream::kTest);
  const int n = 200000;
  double s = 0, s2 = 0, ns = 0, ns2 = 0;
  float lo = 1, hi = 0;
  for (int i = 0; i < n; ++i) {
    float u = r.uniform();
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    s += u;
    s2 += u * u;
    float z = r.normal();
    ASSERT_TRUE(std::isfinite(z));
    ns += z;
    ns2 += z * z;
  }
  EXPECT_GE(lo, 0.0f);
  EXPECT_LT(hi, 1.0f);
  // Standard errors: uniform mean 1/sqrt(12 n) = 6.5e-4; normal mean 1/sqrt(n) = 2.2e-3.
  EXPECT_NEAR(s / n, 0.5, 4e-3);
  EXPECT_NEAR(s2 / n - (s / n) * (s / n), 1.0 / 12, 2e-3);
  EXPECT_NEAR(ns / n, 0.0, 1e-2);
  EXPECT_NEAR(ns2 / n, 1.0, 1.5e-2);
}

TEST(Rng, BelowIsUnbiasedAndInRange) {
  Rng r(9, 1);
  std::vector<int> hist(7, 0);
  const int n = 70000;
  for (int i = 0; i < n; ++i) {
    uint32_t v = r.below(7);
    ASSERT_LT(v, 7u);
    hist[v]++;
  }
  for (int h : hist) EXPECT_NEAR(h, n / 7, 5 * std::sqrt(n / 7.0));  // 5 sigma
}
