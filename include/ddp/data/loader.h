// Training / evaluation data loader over one node's HDF5 shards (docs/DATA_FORMAT.md).
//
// One reader thread per Loader owns every HDF5 call (its own file handles); JPEG decode and
// augmentation run in a worker pool outside any HDF5 lock; finished batches (uint8 NHWC RGB, page-locked
// on CUDA builds when asked) wait in a prefetch queue. Which images a rank sees, and how each is
// augmented, is a pure function of (seed, epoch, rank), so a run resumes exactly.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ddp::data {

struct ShardMeta;  // ddp/data/shard.h

struct LoaderConfig {
  std::vector<std::string> shards;  // shard files this rank's group reads (one node's shards)
  int rank = 0, world = 1;          // position among the ranks that share exactly these shards
  int batch_size = 256;
  int height = 224, width = 224;    // output resolution
  bool train = true;  // train: RandomResizedCrop(scale, 3/4-4/3)+flip; eval: resize res/eval_crop_ratio + centre crop
  uint64_t seed = 0;
  int aug_stream = 0;  // per-rank augmentation stream (the trainer passes the global rank)
  int workers = 0;     // decode threads; 0 = hardware threads / world (the node's cores, shared)
  int prefetch = 4;    // batches queued ahead
  bool pinned = false; // page-locked batch memory (CUDA builds)
  // Extensions (defaults reproduce torchvision's ImageNet recipe).
  float min_scale = 0.08f, max_scale = 1.0f;  // RandomResizedCrop area range
  bool random_crop = true;  // train without RandomResizedCrop: the eval resize + centre crop, then flip
  bool flip = true;         // train: random horizontal flip, p = 0.5
  float eval_crop_ratio = 0.875f;  // eval: shorter side resized to res / ratio (1.0: no border cut)
};

struct Batch {
  const uint8_t* images = nullptr;  // n x h x w x 3, RGB, uint8 (pinned when cfg.pinned)
  const int32_t* labels = nullptr;  // n
  int n = 0, h = 0, w = 0;          // n < batch_size only for the last eval batch
};

class Loader {
 public:
  // Opens and validates every shard (missing, truncated, foreign, class lists differing -> ddp::Error
  // naming the file) before returning.
  explicit Loader(const LoaderConfig& cfg);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t num_images() const;  // in this shard set
  int num_classes() const;
  const std::vector<std::string>& classes() const;
  // The first shard's path and attributes (the others agree on classes, encoding and raw size).
  const std::string& first_shard() const;
  const ShardMeta& first_meta() const;
  // The shards' set_fingerprint (one packing of the whole set; shards of two packings are refused
  // when opened), or "" when some shard has none (written by an older pack_imagenet).
  const std::string& set_fingerprint() const;
  // What makes this shard set this set, independent of where it is mounted: one line per shard (in
  // order) with its file name without the directory, image count, file size and input fingerprint,
  // then one per class. Ranks that split one set compare it (two ranks on one host given different
  // --data directories would each read a slice of another set); the first differing line says how.
  std::string set_identity() const;
  // train: floor(this rank's share / batch); eval: ceil(this rank's exact share / batch)
  int64_t local_batches() const;
  // train: num_batches = the count agreed across all ranks (min), must be <= local_batches();
  // eval: pass local_batches(). Abandons whatever is left of the previous epoch.
  // first_batch > 0 resumes mid-epoch (from a checkpoint): batches first_batch..num_batches-1 come
  // out exactly as they would have in the uninterrupted epoch, without decoding the skipped ones.
  void start_epoch(int epoch, int64_t num_batches, int64_t first_batch = 0);
  // false when the epoch's batches are done; out stays valid until the next call.
  bool next(Batch& out);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Lists the shard files of a split in a directory: <dir>/<split>-NNNNN-of-MMMMM.h5 (sorted). The set
// must be whole: an error names the directory and the files if there are none, if two sets (other
// MMMMM) are mixed, or if a shard of the set is missing. (Loader then checks each file's attributes
// against its name.) When the files present are exactly one node's share of the set (node_share_of),
// the error says so and adds `if_node_share` (the caller's way out, e.g. the trainer's flag).
std::vector<std::string> find_shards(const std::string& dir, const std::string& split,
                                     const std::string& if_node_share = {});

// Whether the shard indices present in a set of `count` are exactly the share of one node of several:
// the indices i with i mod nodes == node, for the smallest such nodes > 1; nullopt otherwise.
struct NodeShare {
  int node = 0, nodes = 0;
};
std::optional<NodeShare> node_share_of(const std::vector<int>& present, int count);

// The shards node `node` of `nodes` reads: shard i of an M-shard set belongs to node i mod nodes
// (M must be a multiple of nodes). Works on a full set in a shared directory and on a node's own
// volume holding only its shards (pack_imagenet --node-index). Error naming the directory if a
// shard of this node is missing or the set mixes shard counts.
std::vector<std::string> find_node_shards(const std::string& dir, const std::string& split, int node, int nodes);

}  // namespace ddp::data
