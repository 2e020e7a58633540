// Which images a rank reads in an epoch: pure functions of (n, seed, epoch, rank, world), so every
// rank computes the same global order without talking to the others, and a resume reproduces it.
#pragma once

#include <cstdint>
#include <vector>

namespace ddp::data {

// A permutation of 0..n-1 drawn by Fisher-Yates from Philox (stream rng_stream::kShuffle, counter
// block chosen by epoch): the same on every rank, different each epoch.
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int epoch);

// [begin, end) positions of rank's slice.
struct Share {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
// Training: floor(n / world) consecutive positions of the permutation each, the same count on every
// rank (the n mod world left over are skipped this epoch; the permutation changes each epoch).
Share train_share(int64_t n, int rank, int world);
// Evaluation: an exact partition of 0..n-1 (sizes differ by at most one), no padding duplicates.
Share eval_share(int64_t n, int rank, int world);

// Philox counter of image `index` in `epoch` on an augmentation stream: 16 counters (64 words) each.
uint64_t augment_counter(int epoch, int64_t index);

}  // namespace ddp::data
