// What the trainer reads batches from: HDF5 shards through ddp::data::Loader, or the synthetic set.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ddp::train {

struct BatchView {  // uint8 NHWC RGB images (host; pinned on GPU builds) and int32 labels
  const uint8_t* images = nullptr;
  const int32_t* labels = nullptr;
  int n = 0, h = 0, w = 0;
};

class DataSource {
 public:
  virtual ~DataSource() = default;
  virtual int num_classes() const = 0;
  virtual int64_t num_images() const = 0;    // images this source covers (all of its ranks together)
  virtual int64_t local_batches() const = 0;  // batches this rank has in one pass
  // Begins a pass; the order is a pure function of (seed, epoch). num_batches: the pass's length (the
  // agreed equal count when training; local_batches() when evaluating). first_batch > 0 resumes a pass
  // mid-way (from a checkpoint): next() then yields batches first_batch..num_batches-1, exactly as the
  // uninterrupted pass would have, without producing the skipped ones.
  virtual void start_epoch(int epoch, int64_t num_batches, int64_t first_batch = 0) = 0;
  virtual bool next(BatchView& out) = 0;
  virtual std::string describe() const = 0;
  // Equal on two ranks iff they read the same images (wherever the files are mounted): ranks that
  // split one set compare it at start-up (Loader::set_identity).
  virtual std::string identity() const = 0;
  // How the whole set was packed (split, shard count, encoding and sizes; with_set_fingerprint: and a
  // line with set_fingerprint()): equal on every node that reads its share of one set (--shard-scope
  // node), whose files, and so identity(), differ. "" for synthetic data.
  virtual std::string packing(bool with_set_fingerprint) const {
    (void)with_set_fingerprint;
    return {};
  }
  // The shards' set_fingerprint (a hash of the whole split's input listing, settings and shard count,
  // written by pack_imagenet into every shard of one packing): equal on every node that reads its share
  // of one set. "" when unknown (shards of an older pack_imagenet; synthetic data).
  virtual std::string set_fingerprint() const { return {}; }
  // The class names in label order and the file they were read from (the first shard); none for
  // synthetic data, whose classes have no names (then nothing is checked against them).
  virtual std::vector<std::string> class_names() const { return {}; }
  virtual std::string class_file() const { return {}; }
  // The largest image size that is not an upsampling of what is stored (raw shards: their side; JPEG
  // shards: the shorter side they were resized to), and that in words ("raw 40x40"); 0 when unknown
  // (images kept at their size, synthetic data made at the size asked for).
  virtual int stored_size() const { return 0; }
  virtual std::string stored_text() const { return {}; }
};

// Random uint8 images and labels drawn once from Philox stream kSynthetic (a pure function of the
// seed) and held in memory: a fixed set the network can fit, so the loss visibly falls; benchmarks
// use it to measure compute without the data path. Training: a per-epoch permutation of the set,
// split into equal rank slices. Evaluation (train = false): every image exactly once across ranks,
// in order (the reported accuracy is then accuracy on the training set).
struct SyntheticConfig {
  int64_t size = 1024;
  int classes = 10;
  int height = 224, width = 224;
  uint64_t seed = 0;
  int rank = 0, world = 1;
  int batch_size = 256;
  bool train = true;
  bool pinned = false;  // batches in page-locked memory (CUDA builds)
};
class SyntheticSet;  // the images, shared by a train and an eval source
std::shared_ptr<const SyntheticSet> make_synthetic_set(int64_t size, int classes, int h, int w, uint64_t seed);
std::unique_ptr<DataSource> make_synthetic_source(std::shared_ptr<const SyntheticSet> set, const SyntheticConfig& cfg);

// Shards in dir (<dir>/<split>-NNNNN-of-MMMMM.h5) through ddp::data::Loader.
struct ShardSourceConfig {
  std::string dir, split;  // split: "train" or "val"
  // nodes > 0 (--shard-scope node): this node's share of the set, shard i of M belonging to node
  // i mod nodes (data::find_node_shards), whether dir holds only those or the whole set; nodes = 0:
  // the whole set, which must be complete.
  int node = 0, nodes = 0;
  // nodes = 0: added to the error when dir holds only one node's share of the set (what to do).
  std::string if_node_share;
  int rank = 0, world = 1;  // over the ranks that share these shard files
  int batch_size = 256;
  int height = 224, width = 224;
  bool train = true;
  uint64_t seed = 0;
  int aug_stream = 0;
  int workers = 1;
  bool pinned = false;
  float min_scale = 0.08f;
  bool random_crop = true, flip = true;
  float eval_crop_ratio = 0.875f;
};
std::unique_ptr<DataSource> make_shard_source(const ShardSourceConfig& cfg);
bool shards_exist(const std::string& dir, const std::string& split);

}  // namespace ddp::train
