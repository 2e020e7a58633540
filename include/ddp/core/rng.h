// Counter-based RNG (Philox4x32-10, Salmon et al. 2011, as in cuRAND and PyTorch). Any random
// value is a pure function of (seed, stream, counter): data order, augmentation and init are
// reproducible across runs, ranks and resumes, and the same code runs on the host and the device.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DDP_HD __host__ __device__ __forceinline__
#else
#define DDP_HD inline
#endif

namespace ddp {

// Stream ids: one per use, so that e.g. changing the augmentation never shifts the data order.
namespace rng_stream {
constexpr uint64_t kInit = 1;        // parameter initialisation
constexpr uint64_t kShuffle = 2;     // per-epoch permutation (stream = kShuffle, counter by epoch)
constexpr uint64_t kSynthetic = 3;   // synthetic data set
constexpr uint64_t kAugment = 1000;  // + rank: per-rank augmentation randomness
constexpr uint64_t kTest = 99;       // tests
}  // namespace rng_stream

struct Philox4x32 {
  // Returns 4 independent 32-bit words for (key = seed, counter = (counter, stream)).
  static DDP_HD void generate(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]) {
    uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
    uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
      uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
      uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
      uint32_t n1 = static_cast<uint32_t>(p1);
      uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
      uint32_t n3 = static_cast<uint32_t>(p0);
      c0 = n0; c1 = n1; c2 = n2; c3 = n3;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
  }
};

// Uniform float in [0, 1) from 24 random bits.
DDP_HD float u32_to_unit_float(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }

// Sequential generator over one (seed, stream). Its whole state is (seed, stream, counter, index),
// which a checkpoint stores to resume exactly.
class Rng {
 public:
  DDP_HD Rng(uint64_t seed = 0, uint64_t stream = 0, uint64_t counter = 0)
      : seed_(seed), stream_(stream), counter_(counter) {}
  DDP_HD uint32_t next_u32() {
    if (idx_ == 4) {
      Philox4x32::generate(seed_, stream_, counter_++, buf_);
      idx_ = 0;
    }
    return buf_[idx_++];
  }
  DDP_HD uint64_t next_u64() {
    uint64_t hi = next_u32();
    return (hi << 32) | next_u32();
  }
  DDP_HD float uniform() { return u32_to_unit_float(next_u32()); }                // [0, 1)
  DDP_HD float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }  // [lo, hi)
  // Unbiased integer in [0, n) by rejection (Lemire's method without the division fast path).
  DDP_HD uint32_t below(uint32_t n) {
    uint32_t threshold = (0u - n) % n;
    for (;;) {
      uint64_t m = static_cast<uint64_t>(next_u32()) * n;
      if (static_cast<uint32_t>(m) >= threshold) return static_cast<uint32_t>(m >> 32);
    }
  }
  // Standard normal by Box-Muller (both values used would couple streams; we use one, simply).
  DDP_HD float normal() {
    float u1 = (static_cast<float>(next_u32() >> 8) + 1.0f) * (1.0f / 16777217.0f);  // (0, 1]
    float u2 = uniform();
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
  }
  DDP_HD uint64_t seed() const { return seed_; }
  DDP_HD uint64_t stream() const { return stream_; }
  // Position for checkpoints: the generator is restored by Rng(seed, stream) + set_position.
  DDP_HD uint64_t position() const { return counter_ * 4 - (4 - idx_); }
  DDP_HD void set_position(uint64_t pos) {
    counter_ = pos / 4;
    idx_ = 4;
    uint32_t skip = static_cast<uint32_t>(pos % 4);
    for (uint32_t i = 0; i < skip; ++i) next_u32();
  }

 private:
  uint64_t seed_, stream_, counter_;
  uint32_t buf_[4] = {0, 0, 0, 0};
  uint32_t idx_ = 4;
};

}  // namespace ddp
