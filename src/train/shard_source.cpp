// DataSource over HDF5 shards: a thin adapter on ddp::data::Loader.
#include <algorithm>
#include <filesystem>
#include <sstream>

#include "ddp/core/check.h"
#include "ddp/data/loader.h"
#include "ddp/data/shard.h"
#include "ddp/train/data_source.h"

namespace ddp::train {

namespace {

class ShardSource final : public DataSource {
 public:
  explicit ShardSource(const ShardSourceConfig& c) : dir_(c.dir), split_(c.split), node_(c.node), nodes_(c.nodes) {
    data::LoaderConfig lc;
    lc.shards = c.nodes > 0 ? data::find_node_shards(c.dir, c.split, c.node, c.nodes)
                          : data::find_shards(c.dir, c.split, c.if_node_share);
    lc.rank = c.rank;
    lc.world = c.world;
    lc.batch_size = c.batch_size;
    lc.height = c.height;
    lc.width = c.width;
    lc.train = c.train;
    lc.seed = c.seed;
    lc.aug_stream = c.aug_stream;
    lc.workers = c.workers;
    lc.pinned = c.pinned;
    lc.min_scale = c.min_scale;
    lc.random_crop = c.random_crop;
    lc.flip = c.flip;
    lc.eval_crop_ratio = c.eval_crop_ratio;
    nshards_ = lc.shards.size();
    loader_ = std::make_unique<data::Loader>(lc);
  }
  int num_classes() const override { return loader_->num_classes(); }
  int64_t num_images() const override { return loader_->num_images(); }
  int64_t local_batches() const override { return loader_->local_batches(); }
  void start_epoch(int epoch, int64_t num_batches, int64_t first_batch) override {
    loader_->start_epoch(epoch, num_batches, first_batch);
  }
  bool next(BatchView& out) override {
    data::Batch b;
    if (!loader_->next(b)) return false;
    out.images = b.images;
    out.labels = b.labels;
    out.n = b.n;
    out.h = b.h;
    out.w = b.w;
    return true;
  }
  std::string describe() const override {
    const auto& m = loader_->first_meta();
    const std::string share = nodes_ > 1 ? str(" (node ", node_, "'s share of ", m.num_shards, ")") : std::string();
    return str(split_, ": ", loader_->num_images(), " images in ", nshards_, " shard(s)", share, " of ", dir_, ", ",
               loader_->num_classes(), " classes");
  }
  std::string packing(bool with_set_fingerprint) const override {
    const auto& m = loader_->first_meta();
    return str(split_, " set: ", m.num_shards, " shard(s), ", m.encoding,
               m.encoding == "raw" ? str(" ", m.width, "x", m.height)
                                   : str(", shorter side ", m.resize_shorter, ", quality ", m.jpeg_quality),
               m.allow_upscale ? ", upscaled" : "", '\n',
               with_set_fingerprint ? str(split_, " set fingerprint ", loader_->set_fingerprint(), '\n') : "");
  }
  std::string set_fingerprint() const override { return loader_->set_fingerprint(); }
  std::string identity() const override {
    std::string id, line;
    std::istringstream in(loader_->set_identity());
    while (std::getline(in, line)) id += str(split_, " shards, ", line, '\n');  // each line names its split
    return id;
  }

  std::vector<std::string> class_names() const override { return loader_->classes(); }
  std::string class_file() const override { return loader_->first_shard(); }
  int stored_size() const override {
    const auto& m = loader_->first_meta();
    return m.encoding == "raw" ? std::min(m.height, m.width) : m.resize_shorter;
  }
  std::string stored_text() const override {
    const auto& m = loader_->first_meta();
    if (m.encoding == "raw") return str("raw ", m.width, "x", m.height);
    return str("JPEG, shorter side at most ", m.resize_shorter);
  }

 private:
  std::string dir_, split_;
  int node_ = 0, nodes_ = 0;
  size_t nshards_ = 0;
  std::unique_ptr<data::Loader> loader_;
};

}  // namespace

std::unique_ptr<DataSource> make_shard_source(const ShardSourceConfig& cfg) { return std::make_unique<ShardSource>(cfg); }

bool shards_exist(const std::string& dir, const std::string& split) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(split + "-", 0) == 0 && n.size() > 3 && n.substr(n.size() - 3) == ".h5") return true;
  }
  return false;
}

}  // namespace ddp::train
