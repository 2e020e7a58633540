// Data order: permutation determinism, per-rank disjointness, equal train counts, exact eval cover.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "ddp/data/sampler.h"

using namespace ddp::data;

TEST(Sampler, PermutationIsAPermutationAndAPureFunctionOfSeedAndEpoch) {
  for (int64_t n : {0, 1, 2, 17, 1000}) {
    auto p = epoch_permutation(n, 42, 3);
    std::vector<int64_t> s = p;
    std::sort(s.begin(), s.end());
    std::vector<int64_t> id(static_cast<size_t>(n));
    std::iota(id.begin(), id.end(), int64_t{0});
    EXPECT_EQ(s, id) << n;
    EXPECT_EQ(p, epoch_permutation(n, 42, 3)) << n;
  }
  auto a = epoch_permutation(1000, 42, 0);
  EXPECT_NE(a, epoch_permutation(1000, 42, 1));
  EXPECT_NE(a, epoch_permutation(1000, 43, 0));
  // Not the identity, and roughly uniform: position of item 0 over many epochs covers the range.
  std::set<int64_t> pos;
  for (int e = 0; e < 200; ++e) {
    auto p = epoch_permutation(10, 1, e);
    pos.insert(std::find(p.begin(), p.end(), 0) - p.begin());
  }
  EXPECT_EQ(pos.size(), 10u);
}

TEST(Sampler, TrainSharesAreEqualAndDisjoint) {
  for (int64_t n : {10, 11, 1003}) {
    for (int world : {1, 2, 3, 4, 7}) {
      auto p = epoch_permutation(n, 5, 2);
      std::set<int64_t> seen;
      for (int r = 0; r < world; ++r) {
        Share s = train_share(n, r, world);
        EXPECT_EQ(s.size(), n / world);
        for (int64_t k = s.begin; k < s.end; ++k) EXPECT_TRUE(seen.insert(p[static_cast<size_t>(k)]).second);
      }
      EXPECT_EQ(static_cast<int64_t>(seen.size()), n / world * world);
    }
  }
}

TEST(Sampler, EvalSharesCoverEveryImageExactlyOnce) {
  for (int64_t n : {0, 1, 5, 1003, 50000}) {
    for (int world : {1, 2, 3, 4, 6, 8}) {
      std::vector<int> hits(static_cast<size_t>(n), 0);
      int64_t mn = n, mx = 0;
      for (int r = 0; r < world; ++r) {
        Share s = eval_share(n, r, world);
        mn = std::min(mn, s.size());
        mx = std::max(mx, s.size());
        for (int64_t k = s.begin; k < s.end; ++k) ++hits[static_cast<size_t>(k)];
      }
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)], 1) << n << " " << world;
      EXPECT_LE(mx - mn, 1);
    }
  }
}

TEST(Sampler, AugmentCountersNeverOverlap) {
  // 16 counters per (epoch, image): blocks for different images / epochs are disjoint.
  EXPECT_EQ(augment_counter(0, 1) - augment_counter(0, 0), 16u);
  EXPECT_GE(augment_counter(1, 0), augment_counter(0, (int64_t{1} << 32) - 1) + 16);
}
