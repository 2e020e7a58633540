// The synthetic data set (see data_source.h).
#include <algorithm>
#include <cstring>
#include <new>

#include "ddp/core/check.h"
#include "ddp/core/rng.h"
#include "ddp/core/tensor.h"
#include "ddp/train/data_source.h"

namespace ddp::train {

class SyntheticSet {
 public:
  int64_t size;
  int classes, h, w;
  uint64_t seed;
  std::vector<uint8_t> images;  // size x h x w x 3
  std::vector<int32_t> labels;
};

std::shared_ptr<const SyntheticSet> make_synthetic_set(int64_t size, int classes, int h, int w, uint64_t seed) {
  DDP_CHECK(size >= 1 && classes >= 1 && h >= 1 && w >= 1, "bad synthetic data set shape");
  auto s = std::make_shared<SyntheticSet>();
  s->size = size;
  s->classes = classes;
  s->h = h;
  s->w = w;
  s->seed = seed;
  const int64_t per = static_cast<int64_t>(h) * w * 3;
  try {
    s->images.resize(static_cast<size_t>(size * per));
    s->labels.resize(static_cast<size_t>(size));
  } catch (const std::bad_alloc&) {
    DDP_FAIL("cannot hold the synthetic data set in memory: --synthetic-size ", size, " images of ", h, "x", w,
             "x3 bytes = ", static_cast<double>(size * per) / 1e9, " GB");
  }
  // One counter range per image (image i starts at counter i << 32), so the set does not depend on
  // how it is generated and the size can change without changing the first images.
  for (int64_t i = 0; i < size; ++i) {
    Rng r(seed, rng_stream::kSynthetic, static_cast<uint64_t>(i) << 32);
    s->labels[static_cast<size_t>(i)] = static_cast<int32_t>(r.below(static_cast<uint32_t>(classes)));
    uint8_t* img = s->images.data() + i * per;
    for (int64_t j = 0; j < per; j += 4) {
      uint32_t v = r.next_u32();
      for (int k = 0; k < 4 && j + k < per; ++k) img[j + k] = static_cast<uint8_t>(v >> (8 * k));
    }
  }
  return s;
}

namespace {

class SyntheticSource final : public DataSource {
 public:
  SyntheticSource(std::shared_ptr<const SyntheticSet> set, const SyntheticConfig& c) : set_(std::move(set)), c_(c) {
    DDP_CHECK(c.world >= 1 && c.rank >= 0 && c.rank < c.world, "bad rank ", c.rank, " of ", c.world);
    DDP_CHECK(c.batch_size >= 1, "batch size must be at least 1");
    const int64_t per = static_cast<int64_t>(set_->h) * set_->w * 3;
    images_ = Tensor::empty({c.batch_size, per}, DType::U8, Device::CPU, Layout::Contiguous, c.pinned);
    labels_.resize(static_cast<size_t>(c.batch_size));
    if (c.train) {
      per_rank_ = set_->size / c.world;
      DDP_CHECK(per_rank_ >= 1, "--synthetic-size ", set_->size, " is smaller than the number of ranks ", c.world);
      // Full batches only, as from shards: a smaller batch than asked for would train another recipe
      // (and another lr per image) without a word. No full batch: the trainer says so.
      batch_n_ = c.batch_size;
      local_batches_ = per_rank_ / batch_n_;
    } else {
      // Exact evaluation: rank r takes images [r*N/world, (r+1)*N/world), the last batch partial.
      first_ = set_->size * c.rank / c.world;
      last_ = set_->size * (c.rank + 1) / c.world;
      local_batches_ = (last_ - first_ + c.batch_size - 1) / c.batch_size;
    }
  }

  int num_classes() const override { return set_->classes; }
  int64_t num_images() const override { return set_->size; }
  int64_t local_batches() const override { return local_batches_; }
  std::string describe() const override {
    return str("synthetic: ", set_->size, " images ", set_->h, "x", set_->w, ", ", set_->classes,
               " classes (seed ", set_->seed, ")");
  }
  std::string identity() const override { return describe(); }  // a pure function of the settings

  void start_epoch(int epoch, int64_t num_batches, int64_t first_batch) override {
    DDP_CHECK(num_batches <= local_batches_, "asked for ", num_batches, " batches of ", local_batches_);
    DDP_CHECK(first_batch >= 0 && first_batch <= num_batches, "start_epoch: first batch ", first_batch,
              " outside 0..", num_batches);
    remaining_ = num_batches - first_batch;
    cursor_ = first_batch;
    if (!c_.train) return;
    // Permutation = f(seed, epoch): Fisher-Yates driven by stream kShuffle at counter epoch << 40.
    order_.resize(static_cast<size_t>(set_->size));
    for (int64_t i = 0; i < set_->size; ++i) order_[static_cast<size_t>(i)] = i;
    Rng r(c_.seed, rng_stream::kShuffle, static_cast<uint64_t>(epoch) << 40);
    for (int64_t i = set_->size - 1; i > 0; --i)
      std::swap(order_[static_cast<size_t>(i)], order_[r.below(static_cast<uint32_t>(i + 1))]);
  }

  bool next(BatchView& out) override {
    if (remaining_ <= 0) return false;
    --remaining_;
    const int64_t per = static_cast<int64_t>(set_->h) * set_->w * 3;
    int n = 0;
    auto* dst = images_.data<uint8_t>();
    if (c_.train) {
      int64_t base = c_.rank * per_rank_ + cursor_ * batch_n_;
      for (; n < batch_n_; ++n) copy_one(order_[static_cast<size_t>(base + n)], dst + n * per, n);
    } else {
      int64_t base = first_ + cursor_ * c_.batch_size;
      int64_t end = std::min<int64_t>(base + c_.batch_size, last_);
      for (int64_t i = base; i < end; ++i, ++n) copy_one(i, dst + n * per, n);
    }
    ++cursor_;
    out.images = dst;
    out.labels = labels_.data();
    out.n = n;
    out.h = set_->h;
    out.w = set_->w;
    return true;
  }

 private:
  void copy_one(int64_t idx, uint8_t* dst, int n) {
    const int64_t per = static_cast<int64_t>(set_->h) * set_->w * 3;
    std::memcpy(dst, set_->images.data() + idx * per, static_cast<size_t>(per));
    labels_[static_cast<size_t>(n)] = set_->labels[static_cast<size_t>(idx)];
  }

  std::shared_ptr<const SyntheticSet> set_;
  SyntheticConfig c_;
  Tensor images_;
  std::vector<int32_t> labels_;
  std::vector<int64_t> order_;
  int64_t per_rank_ = 0, local_batches_ = 0, first_ = 0, last_ = 0, remaining_ = 0, cursor_ = 0;
  int batch_n_ = 0;
};

}  // namespace

std::unique_ptr<DataSource> make_synthetic_source(std::shared_ptr<const SyntheticSet> set, const SyntheticConfig& cfg) {
  return std::make_unique<SyntheticSource>(std::move(set), cfg);
}

}  // namespace ddp::train
