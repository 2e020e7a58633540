#include "ddp/data/loader.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "ddp/core/check.h"
#include "ddp/core/log.h"
#include "ddp/core/rng.h"
#include "ddp/core/tensor.h"
#include "ddp/data/image.h"
#include "ddp/data/sampler.h"
#include "ddp/data/shard.h"

namespace ddp::data {

namespace {
// Raw shard sets up to this size are read into memory once: the per-image work is then a memcpy
// and a resample, and HDF5 is not touched again.
constexpr int64_t kRawCacheBytes = int64_t{2} << 30;
}  // namespace

struct Loader::Impl {
  LoaderConfig cfg;
  std::vector<std::unique_ptr<ShardReader>> shards;
  std::vector<int64_t> offsets;  // global index of each shard's first image; back() = total
  std::vector<int32_t> labels;   // global
  std::vector<std::string> classes;
  bool raw = false;
  int raw_h = 0, raw_w = 0;
  std::string set_fingerprint;  // every shard's; "" when some shard has none
  std::vector<uint8_t> raw_cache;
  int64_t n = 0;

  struct Slot {
    Tensor images;
    std::vector<int32_t> labels;
    std::vector<int64_t> idx;
    std::vector<std::vector<uint8_t>> jpeg;
    std::vector<uint8_t> staging;  // raw images read from HDF5 (no cache)
    int count = 0;
    int64_t batch = -1;  // -1: free
    int remaining = 0;
    bool ready = false;
  };
  std::vector<Slot> slots;

  struct Task {
    int slot, i;
  };
  std::mutex mu;
  std::condition_variable cv_task, cv_ready, cv_free, cv_idle;
  std::deque<Task> tasks;
  int inflight = 0;
  bool stopping = false, cancel = false;
  std::exception_ptr error;
  // The image whose decode set `error` (shard, index in it); -1: the error is not an image's.
  int bad_shard = -1;
  int64_t bad_image = -1;
  std::vector<std::thread> workers;
  std::thread reader;

  int epoch = 0;
  int64_t num_batches = 0, next_batch = 0;
  int held = -1;
  std::vector<int64_t> order;
  int64_t order_size = 0;

  void open();
  void reader_main(int64_t first, int64_t batches);
  void worker_main();
  void process(int slot, int i);
  void stop_epoch();
  [[noreturn]] void fail_batch(std::unique_lock<std::mutex>& lk);
  int shard_of(int64_t g) const {
    return static_cast<int>(std::upper_bound(offsets.begin(), offsets.end(), g) - offsets.begin()) - 1;
  }
};

void Loader::Impl::open() {
  DDP_CHECK(!cfg.shards.empty(), "data loader: no shard files given");
  DDP_CHECK(cfg.batch_size >= 1, "batch size must be >= 1, got ", cfg.batch_size);
  DDP_CHECK(cfg.height >= 1 && cfg.width >= 1, "image size must be positive, got ", cfg.height, "x", cfg.width);
  DDP_CHECK(cfg.world >= 1 && cfg.rank >= 0 && cfg.rank < cfg.world, "data loader: rank ", cfg.rank,
            " is not in 0..", cfg.world - 1);
  DDP_CHECK(cfg.prefetch >= 1, "prefetch must be >= 1, got ", cfg.prefetch);
  DDP_CHECK(cfg.min_scale > 0 && cfg.min_scale <= cfg.max_scale && cfg.max_scale <= 1, "crop scale range (",
            cfg.min_scale, ", ", cfg.max_scale, ") must satisfy 0 < min <= max <= 1");
  DDP_CHECK(cfg.eval_crop_ratio > 0 && cfg.eval_crop_ratio <= 1, "eval crop ratio must be in (0, 1], got ",
            cfg.eval_crop_ratio);
  std::set<std::string> seen;
  std::string fingerprint_from;  // the first shard with a set_fingerprint
  bool all_fingerprinted = true;
  offsets.push_back(0);
  for (const auto& path : cfg.shards) {
    DDP_CHECK(seen.insert(std::filesystem::weakly_canonical(path).string()).second, "shard '", path,
              "' is listed twice");
    auto r = std::make_unique<ShardReader>(path);
    const auto& m = r->meta();
    check_shard_name_matches(path, m);
    for (const auto& o : shards) {
      // The same shard twice (a copy under another name) would train on its images twice.
      DDP_CHECK(o->meta().shard_index != m.shard_index || o->meta().num_shards != m.num_shards ||
                    o->meta().split != m.split,
                "'", path, "' and '", o->path(), "' are both shard ", m.shard_index, " of ", m.num_shards,
                " of split '", m.split, "' (the same shard under two names?)");
      DDP_CHECK(o->meta().num_shards == m.num_shards, "'", path, "' is from a set of ", m.num_shards,
                " shards, '", o->path(), "' from a set of ", o->meta().num_shards, " (mixed shard sets)");
    }
    if (shards.empty()) {
      classes = m.classes;
      raw = r->raw();
      raw_h = m.height;
      raw_w = m.width;
    } else {
      const auto& first = shards.front()->meta();
      if (m.classes != classes) {
        size_t k = 0;
        while (k < std::min(m.classes.size(), classes.size()) && m.classes[k] == classes[k]) ++k;
        DDP_FAIL("shard '", path, "' has a different class list from '", shards.front()->path(), "' (",
                 m.classes.size(), " vs ", classes.size(), " classes; first difference at index ", k,
                 ": '", k < m.classes.size() ? m.classes[k] : "", "' vs '", k < classes.size() ? classes[k] : "",
                 "')");
      }
      DDP_CHECK(r->raw() == raw && m.height == raw_h && m.width == raw_w, "shard '", path, "' has encoding ",
                m.encoding, " ", m.width, "x", m.height, ", but '", shards.front()->path(), "' has ", first.encoding,
                " ", raw_w, "x", raw_h, " (mixed shard sets)");
      DDP_CHECK(m.split == first.split, "shard '", path, "' is from split '", m.split, "', '",
                shards.front()->path(), "' from '", first.split, "'");
    }
    // Shards of one packing share it: two packings of other input files (or settings) would, mixed,
    // repeat some images and leave out others without any other attribute telling. Every earlier shard
    // that has one agrees with the first that had it, so that one stands for them all.
    if (m.set_fingerprint.empty()) {
      all_fingerprinted = false;
    } else if (fingerprint_from.empty()) {
      set_fingerprint = m.set_fingerprint;
      fingerprint_from = path;
    } else {
      DDP_CHECK(m.set_fingerprint == set_fingerprint, "shard '", path, "' and '", fingerprint_from,
                "' come from different packings (set_fingerprint ", m.set_fingerprint, " vs ", set_fingerprint,
                ": pack_imagenet listed other input files of split '", m.split,
                "', or used other settings); every shard of a set must come from one packing: pack the set again ",
                "(one pack_imagenet run, or one run per --node-index over the same input with the same flags)");
    }
    labels.insert(labels.end(), r->labels().begin(), r->labels().end());
    offsets.push_back(offsets.back() + r->size());
    shards.push_back(std::move(r));
  }
  n = offsets.back();
  DDP_CHECK(n > 0, "the shard set (", cfg.shards.front(), ", ...) holds no images");
  if (!all_fingerprinted) set_fingerprint.clear();
  if (raw && n * raw_h * raw_w * 3 <= kRawCacheBytes) {
    const size_t per = static_cast<size_t>(raw_h) * raw_w * 3;
    raw_cache.resize(static_cast<size_t>(n) * per);
    for (size_t s = 0; s < shards.size(); ++s)
      shards[s]->read_raw_all(raw_cache.data() + static_cast<size_t>(offsets[s]) * per);
  }
  const bool pinned = cfg.pinned && cuda_available();
  slots.resize(static_cast<size_t>(cfg.prefetch) + 1);
  for (auto& s : slots) {
    s.images = Tensor::empty({cfg.batch_size, cfg.height, cfg.width, 3}, DType::U8, Device::CPU, Layout::Contiguous, pinned);
    s.labels.resize(static_cast<size_t>(cfg.batch_size));
  }
  // Default: the node's cores shared among the ranks that share these shards (= the node's ranks).
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int nw = cfg.workers > 0 ? cfg.workers : std::max(1, hw / cfg.world);
  for (int i = 0; i < nw; ++i) workers.emplace_back([this] { worker_main(); });
}

void Loader::Impl::worker_main() {
  for (;;) {
    Task t;
    {
      std::unique_lock<std::mutex> lk(mu);
      cv_task.wait(lk, [&] { return stopping || !tasks.empty(); });
      if (stopping && tasks.empty()) return;
      t = tasks.front();
      tasks.pop_front();
      ++inflight;
    }
    try {
      process(t.slot, t.i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu);
      if (!error) error = std::current_exception();
      cv_ready.notify_all();
    }
    std::lock_guard<std::mutex> lk(mu);
    --inflight;
    Slot& s = slots[static_cast<size_t>(t.slot)];
    if (--s.remaining == 0) {
      s.ready = true;
      cv_ready.notify_all();
    }
    if (inflight == 0 && tasks.empty()) cv_idle.notify_all();
  }
}

void Loader::Impl::process(int si, int i) {
  Slot& s = slots[static_cast<size_t>(si)];
  const int64_t g = s.idx[static_cast<size_t>(i)];
  const int H = cfg.height, W = cfg.width;
  uint8_t* dst = s.images.data<uint8_t>() + static_cast<size_t>(i) * H * W * 3;
  s.labels[static_cast<size_t>(i)] = labels[static_cast<size_t>(g)];
  Rng rng(cfg.seed, rng_stream::kAugment + static_cast<uint64_t>(cfg.aug_stream), augment_counter(epoch, g));
  auto pick_box = [&](int sw, int sh) {
    if (cfg.train && cfg.random_crop) return random_resized_crop(rng, sw, sh, cfg.min_scale, cfg.max_scale);
    return center_crop_box(sw, sh, W, H, cfg.eval_crop_ratio);
  };
  auto pick_flip = [&] { return cfg.train && cfg.flip && rng.uniform() < 0.5f; };
  if (raw) {
    const size_t per = static_cast<size_t>(raw_h) * raw_w * 3;
    const uint8_t* src = raw_cache.empty() ? s.staging.data() + static_cast<size_t>(i) * per
                                           : raw_cache.data() + static_cast<size_t>(g) * per;
    Box box = pick_box(raw_w, raw_h);
    bool flip = pick_flip();
    resample(src, raw_w, raw_h, box, dst, W, H, flip);
    return;
  }
  const auto& bytes = s.jpeg[static_cast<size_t>(i)];
  const int sh_i = shard_of(g);
  auto name = [&] { return str(shards[static_cast<size_t>(sh_i)]->path(), " image ", g - offsets[static_cast<size_t>(sh_i)]); };
  thread_local Decoded d;  // reused: no allocation or zero-filling per image
  bool flip = false;
  try {
    JpegHeader hd = read_jpeg_header(bytes.data(), bytes.size(), name());
    Box box = pick_box(hd.w, hd.h);
    flip = pick_flip();
    decode_jpeg(bytes.data(), bytes.size(), name(), box, W, H, 0, false, d);
  } catch (const Error&) {
    // Remember which image, so that next() can name its source file (HDF5 is the reader thread's).
    std::lock_guard<std::mutex> lk(mu);
    if (!error) {
      error = std::current_exception();
      bad_shard = sh_i;
      bad_image = g - offsets[static_cast<size_t>(sh_i)];
    }
    throw;
  }
  resample(d.img.px.data(), d.img.w, d.img.h, d.box, dst, W, H, flip);
}

void Loader::Impl::reader_main(int64_t first, int64_t batches) {
  try {
    const int B = cfg.batch_size;
    const size_t per_raw = static_cast<size_t>(raw_h) * raw_w * 3;
    for (int64_t b = first; b < batches; ++b) {
      const int si = static_cast<int>(b % static_cast<int64_t>(slots.size()));
      Slot& s = slots[static_cast<size_t>(si)];
      {
        std::unique_lock<std::mutex> lk(mu);
        cv_free.wait(lk, [&] { return cancel || s.batch == -1; });
        if (cancel) return;
      }
      const int64_t begin = b * B;
      const int count = static_cast<int>(std::min<int64_t>(B, order_size - begin));
      s.idx.assign(order.begin() + begin, order.begin() + begin + count);
      if (!raw) {
        s.jpeg.resize(static_cast<size_t>(count));
        // One HDF5 read per shard touched by this batch.
        std::vector<std::vector<int64_t>> local(shards.size());
        std::vector<std::vector<int>> where(shards.size());
        for (int k = 0; k < count; ++k) {
          const int sh = shard_of(s.idx[static_cast<size_t>(k)]);
          local[static_cast<size_t>(sh)].push_back(s.idx[static_cast<size_t>(k)] - offsets[static_cast<size_t>(sh)]);
          where[static_cast<size_t>(sh)].push_back(k);
        }
        std::vector<std::vector<uint8_t>> got;
        for (size_t sh = 0; sh < shards.size(); ++sh) {
          if (local[sh].empty()) continue;
          shards[sh]->read_jpeg(local[sh], got);
          for (size_t k = 0; k < got.size(); ++k) s.jpeg[static_cast<size_t>(where[sh][k])] = std::move(got[k]);
        }
      } else if (raw_cache.empty()) {
        s.staging.resize(static_cast<size_t>(count) * per_raw);
        for (int k = 0; k < count; ++k) {
          const int64_t g = s.idx[static_cast<size_t>(k)];
          const int sh = shard_of(g);
          shards[static_cast<size_t>(sh)]->read_raw(g - offsets[static_cast<size_t>(sh)],
                                                    s.staging.data() + static_cast<size_t>(k) * per_raw);
        }
      }
      std::lock_guard<std::mutex> lk(mu);
      if (cancel) return;
      s.batch = b;
      s.count = count;
      s.remaining = count;
      s.ready = false;
      for (int k = 0; k < count; ++k) tasks.push_back(Task{si, k});
      cv_task.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu);
    if (!error) error = std::current_exception();
    cv_ready.notify_all();
  }
}

void Loader::Impl::stop_epoch() {
  {
    std::lock_guard<std::mutex> lk(mu);
    cancel = true;
    cv_free.notify_all();
  }
  if (reader.joinable()) reader.join();
  std::unique_lock<std::mutex> lk(mu);
  tasks.clear();
  cv_idle.wait(lk, [&] { return inflight == 0; });
  for (auto& s : slots) {
    s.batch = -1;
    s.ready = false;
    s.remaining = 0;
  }
  held = -1;
  cancel = false;
  error = nullptr;
  bad_shard = -1;
  bad_image = -1;
}

// A worker or the reader failed: stop the epoch, then (HDF5 being free once the reader has joined)
// add the damaged image's source file name and class to the message. Later calls fail the same way
// until the next start_epoch.
void Loader::Impl::fail_batch(std::unique_lock<std::mutex>& lk) {
  std::exception_ptr err = error;
  const int bs = bad_shard;
  const int64_t bi = bad_image;
  lk.unlock();
  stop_epoch();
  if (bs >= 0) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(err);
    } catch (const std::exception& e) {
      what = e.what();
    }
    const auto& sh = *shards[static_cast<size_t>(bs)];
    std::string src;
    try {
      src = sh.filenames().at(static_cast<size_t>(bi));
    } catch (const std::exception& e) {
      src = str("(its name cannot be read either: ", e.what(), ")");  // the decode error stays the one reported
    }
    const int32_t label = sh.labels()[static_cast<size_t>(bi)];
    err = std::make_exception_ptr(
        Error(str(what, "; source file '", src, "', class '", classes[static_cast<size_t>(label)],
                  "'. The shard is damaged: delete it and rerun pack_imagenet, which redoes only missing shards "
                  "(inspect_shards decodes every image)")));
  }
  lk.lock();
  error = err;
  next_batch = num_batches;  // nothing is in flight any more: wait for no slot
  std::rethrow_exception(err);
}

Loader::Loader(const LoaderConfig& cfg) : impl_(std::make_unique<Impl>()) {
  impl_->cfg = cfg;
  try {
    impl_->open();
  } catch (...) {
    {
      std::lock_guard<std::mutex> lk(impl_->mu);
      impl_->stopping = true;
      impl_->cv_task.notify_all();
    }
    for (auto& w : impl_->workers) w.join();
    throw;
  }
}

Loader::~Loader() {
  impl_->stop_epoch();
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stopping = true;
    impl_->cv_task.notify_all();
  }
  for (auto& w : impl_->workers) w.join();
}

int64_t Loader::num_images() const { return impl_->n; }
int Loader::num_classes() const { return static_cast<int>(impl_->classes.size()); }
const std::vector<std::string>& Loader::classes() const { return impl_->classes; }
const std::string& Loader::first_shard() const { return impl_->shards.front()->path(); }
const ShardMeta& Loader::first_meta() const { return impl_->shards.front()->meta(); }
const std::string& Loader::set_fingerprint() const { return impl_->set_fingerprint; }

std::string Loader::set_identity() const {
  std::string id;
  for (const auto& r : impl_->shards) {
    const auto& m = r->meta();
    // The file size catches what the fingerprint (input names, sizes, labels) cannot: the same input
    // packed with other settings, re-encoded images, shards written before fingerprints existed.
    std::error_code ec;
    const auto bytes = std::filesystem::file_size(r->path(), ec);
    id += str(std::filesystem::path(r->path()).filename().string(), ": ", m.num_images, " images, ",
              ec ? std::string("size unknown") : str(bytes, " bytes"), ", input fingerprint ",
              m.input_fingerprint.empty() ? "none (packed before fingerprints)" : m.input_fingerprint, '\n');
  }
  for (size_t k = 0; k < impl_->classes.size(); ++k) id += str("class ", k, ": ", impl_->classes[k], '\n');
  return id;
}

int64_t Loader::local_batches() const {
  const auto& c = impl_->cfg;
  if (c.train) return train_share(impl_->n, c.rank, c.world).size() / c.batch_size;
  const int64_t share = eval_share(impl_->n, c.rank, c.world).size();
  return (share + c.batch_size - 1) / c.batch_size;
}

void Loader::start_epoch(int epoch, int64_t num_batches, int64_t first_batch) {
  Impl& m = *impl_;
  DDP_CHECK(epoch >= 0, "epoch must be >= 0, got ", epoch);
  DDP_CHECK(num_batches >= 0 && num_batches <= local_batches(), "start_epoch: ", num_batches,
            " batches asked, this rank has ", local_batches(), " (", m.cfg.train ? "train" : "eval", ", ", m.n,
            " images, rank ", m.cfg.rank, " of ", m.cfg.world, ", batch ", m.cfg.batch_size, ")");
  DDP_CHECK(first_batch >= 0 && first_batch <= num_batches, "start_epoch: first batch ", first_batch,
            " outside 0..", num_batches);
  m.stop_epoch();
  m.epoch = epoch;
  m.num_batches = num_batches;
  m.next_batch = first_batch;
  const int64_t B = m.cfg.batch_size;
  if (m.cfg.train) {
    const Share sh = train_share(m.n, m.cfg.rank, m.cfg.world);
    auto perm = epoch_permutation(m.n, m.cfg.seed, epoch);
    m.order_size = num_batches * B;
    m.order.assign(perm.begin() + sh.begin, perm.begin() + sh.begin + m.order_size);
  } else {
    const Share sh = eval_share(m.n, m.cfg.rank, m.cfg.world);
    m.order_size = std::min<int64_t>(sh.size(), num_batches * B);
    m.order.resize(static_cast<size_t>(m.order_size));
    for (int64_t k = 0; k < m.order_size; ++k) m.order[static_cast<size_t>(k)] = sh.begin + k;
  }
  m.reader = std::thread([&m, first_batch, num_batches] { m.reader_main(first_batch, num_batches); });
}

bool Loader::next(Batch& out) {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> lk(m.mu);
  if (m.held >= 0) {
    auto& h = m.slots[static_cast<size_t>(m.held)];
    h.batch = -1;
    h.ready = false;
    m.held = -1;
    m.cv_free.notify_all();
  }
  if (m.error) m.fail_batch(lk);
  if (m.next_batch >= m.num_batches) return false;
  const int si = static_cast<int>(m.next_batch % static_cast<int64_t>(m.slots.size()));
  auto& s = m.slots[static_cast<size_t>(si)];
  m.cv_ready.wait(lk, [&] { return m.error || (s.batch == m.next_batch && s.ready); });
  if (m.error) m.fail_batch(lk);
  out.images = s.images.data<uint8_t>();
  out.labels = s.labels.data();
  out.n = s.count;
  out.h = m.cfg.height;
  out.w = m.cfg.width;
  m.held = si;
  ++m.next_batch;
  return true;
}

namespace {
// count -> (index -> path) of the directory's <split>-NNNNN-of-MMMMM.h5 files; error naming the
// directory if it holds none, or holds two sets (different MMMMM) of the split, or an index
// outside its set.
std::map<int, std::string> list_shard_set(const std::string& dir, const std::string& split, int& count) {
  namespace fs = std::filesystem;
  std::error_code ec;
  DDP_CHECK(fs::is_directory(dir, ec), "shard directory '", dir, "' does not exist or is not a directory");
  std::map<int, std::map<int, std::string>> sets;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto n = parse_shard_file_name(e.path().filename().string());
    if (n && n->split == split) sets[n->count][n->index] = e.path().string();
  }
  DDP_CHECK(!sets.empty(), "no '", split, "' shards (", split, "-NNNNN-of-MMMMM.h5) in '", dir,
            "' (run pack_imagenet first?)");
  if (sets.size() > 1) {
    std::string what;
    for (const auto& [c, files] : sets) {
      what += str(what.empty() ? "" : "; ", "a set of ", c, ": ");
      int k = 0;
      for (const auto& [i, p] : files) what += str(k++ ? ", " : "", fs::path(p).filename().string());
    }
    DDP_FAIL("'", dir, "' holds more than one set of '", split, "' shards (", what,
             "); training on both would repeat images: delete the stale set or move it away");
  }
  count = sets.begin()->first;
  auto& files = sets.begin()->second;
  DDP_CHECK(files.rbegin()->first < count, "'", files.rbegin()->second, "' has shard index ", files.rbegin()->first,
            ", outside its set of ", count, " (not written by pack_imagenet?)");
  return std::move(files);
}
}  // namespace

std::optional<NodeShare> node_share_of(const std::vector<int>& present, int count) {
  if (present.empty()) return std::nullopt;
  const std::set<int> have(present.begin(), present.end());
  const int r = *have.begin();
  // The smallest node count whose share r matches: shards {1, 3} of 4 are node 1's of 2, not of 4.
  for (int nodes = 2; nodes <= count; ++nodes) {
    if (count % nodes != 0 || r >= nodes) continue;
    std::set<int> share;
    for (int i = r; i < count; i += nodes) share.insert(i);
    if (share == have) return NodeShare{r, nodes};
  }
  return std::nullopt;
}

std::vector<std::string> find_shards(const std::string& dir, const std::string& split,
                                     const std::string& if_node_share) {
  int count = 0;
  const auto files = list_shard_set(dir, split, count);
  std::vector<std::string> missing;
  for (int i = 0; i < count; ++i)
    if (!files.count(i)) missing.push_back(shard_file_name(split, i, count));
  if (!missing.empty()) {
    std::string names;
    for (size_t k = 0; k < std::min<size_t>(missing.size(), 5); ++k) names += (k ? ", " : "") + missing[k];
    std::vector<int> present;
    for (const auto& [i, p] : files) present.push_back(i);
    // A node's own volume (pack_imagenet --node-index, or shard i copied to node i) holds exactly its
    // share: say so, since the way out is then another way of reading it, not more packing.
    std::string share;
    if (const auto ns = node_share_of(present, count)) {
      std::string have;
      for (size_t k = 0; k < std::min<size_t>(present.size(), 3); ++k)
        have += (k ? ", " : "") + shard_file_name(split, present[k], count);
      share = str(". The shards present (", have, present.size() > 3 ? ", ..." : "", ") are exactly node ",
                  ns->node, "'s share of a set packed for ", ns->nodes, " nodes (the shards whose index mod ",
                  ns->nodes, " is ", ns->node, ", as pack_imagenet --nodes ", ns->nodes, " --node-index ", ns->node,
                  " writes)", if_node_share.empty() ? "" : "; ", if_node_share);
    }
    DDP_FAIL("the set of ", count, " '", split, "' shards in '", dir, "' is incomplete: ", missing.size(),
             " missing (", names, missing.size() > 5 ? ", ..." : "", ")", share,
             share.empty() || if_node_share.empty() ? "; finish packing (rerun pack_imagenet) or copy them there" : "");
  }
  std::vector<std::string> out;
  for (const auto& [i, p] : files) out.push_back(p);
  return out;
}

std::vector<std::string> find_node_shards(const std::string& dir, const std::string& split, int node, int nodes) {
  DDP_CHECK(nodes >= 1 && node >= 0 && node < nodes, "node ", node, " is not in 0..", nodes - 1);
  int count = 0;
  const auto all = list_shard_set(dir, split, count);
  DDP_CHECK(count % nodes == 0, "'", dir, "' holds a set of ", count, " '", split, "' shards, which ", nodes,
            " nodes cannot share evenly (repack with --shards ", nodes, ", or with one shared set use --shard-scope global)");
  std::vector<std::string> out;
  for (int i = node; i < count; i += nodes) {
    DDP_CHECK(all.count(i), "node ", node, " of ", nodes, " needs '", shard_file_name(split, i, count), "' in '",
              dir, "', which is missing (node ", node, " of ", nodes, " reads the shards whose index mod ", nodes, " is ", node,
              ": pack each there with pack_imagenet --shards ", count, " --node-index <index>, or copy it there)");
    out.push_back(all.at(i));
  }
  return out;
}

}  // namespace ddp::data
