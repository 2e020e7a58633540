#include "ddp/data/sampler.h"

#include <numeric>
#include <utility>

#include "ddp/core/check.h"
#include "ddp/core/rng.h"

namespace ddp::data {

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int epoch) {
  DDP_CHECK(n >= 0 && n < (int64_t{1} << 32), "data set size ", n, " out of range");
  DDP_CHECK(epoch >= 0, "epoch must be >= 0, got ", epoch);
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  // 2^40 counters (2^42 words) per epoch: more than Fisher-Yates over 2^32 items can consume.
  Rng rng(seed, rng_stream::kShuffle, static_cast<uint64_t>(epoch) << 40);
  for (int64_t i = n - 1; i > 0; --i) {
    int64_t j = rng.below(static_cast<uint32_t>(i + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

Share train_share(int64_t n, int rank, int world) {
  DDP_CHECK(world >= 1 && rank >= 0 && rank < world, "bad rank ", rank, " of ", world);
  const int64_t per = n / world;
  return Share{per * rank, per * (rank + 1)};
}

Share eval_share(int64_t n, int rank, int world) {
  DDP_CHECK(world >= 1 && rank >= 0 && rank < world, "bad rank ", rank, " of ", world);
  return Share{n * rank / world, n * (rank + 1) / world};
}

uint64_t augment_counter(int epoch, int64_t index) {
  return ((static_cast<uint64_t>(epoch) << 32) + static_cast<uint64_t>(index)) << 4;
}

}  // namespace ddp::data
