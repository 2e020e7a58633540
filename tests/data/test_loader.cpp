// The Loader over shards written in the test: exact eval coverage, equal train batch counts,
// per-rank disjointness, deterministic order and augmentation, bad-shard errors naming the file,
// and the JPEG eval transform against torchvision.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "data_test_util.h"
#include "ddp/core/tensor.h"
#if DDP_HAVE_CUDA
#include <cuda_runtime.h>
#endif
#include "ddp/core/check.h"
#include "ddp/core/h5.h"
#include "ddp/core/rng.h"
#include "ddp/data/image.h"
#include "ddp/data/loader.h"
#include "ddp/data/sampler.h"
#include "ddp/data/shard.h"

using namespace ddp;
using namespace ddp::data;
using namespace ddp::test;

namespace {

const std::vector<std::string> kCls = {"a", "b", "c"};

// Raw shards whose image i (global) carries i in its first pixel; label i % 3.
std::vector<std::string> make_indexed_shards(const fs::path& dir, const std::vector<int>& sizes, int hw,
                                             std::vector<std::string> classes = kCls) {
  std::vector<std::string> files;
  int64_t g = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    ShardMeta m;
    m.split = "train";
    m.shard_index = static_cast<int>(s);
    m.num_shards = static_cast<int>(sizes.size());
    m.encoding = "raw";
    m.height = m.width = hw;
    m.resize_shorter = hw;
    m.jpeg_quality = 0;
    m.classes = classes;
    const std::string path = (dir / shard_file_name("train", static_cast<int>(s), static_cast<int>(sizes.size()))).string();
    ShardWriter w(path, m);
    std::vector<uint8_t> px(static_cast<size_t>(hw) * hw * 3);
    for (int k = 0; k < sizes[s]; ++k, ++g) {
      for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>((g * 7 + i) % 251);
      px[0] = static_cast<uint8_t>(g & 255);
      px[1] = static_cast<uint8_t>((g >> 8) & 255);
      px[2] = static_cast<uint8_t>((g >> 16) & 255);
      w.append_raw(px.data(), static_cast<int32_t>(g % 3), "img_" + std::to_string(g));
    }
    w.commit();
    files.push_back(path);
  }
  return files;
}

int64_t index_of(const Batch& b, int i) {
  const uint8_t* p = b.images + static_cast<size_t>(i) * b.h * b.w * 3;
  return p[0] | (p[1] << 8) | (p[2] << 16);
}

LoaderConfig identity_cfg(const std::vector<std::string>& files, int hw, bool train, int rank, int world, int batch) {
  LoaderConfig c;
  c.shards = files;
  c.rank = rank;
  c.world = world;
  c.batch_size = batch;
  c.height = c.width = hw;
  c.train = train;
  c.random_crop = false;
  c.flip = false;
  c.eval_crop_ratio = 1.0f;
  c.workers = 2;
  c.prefetch = 2;
  c.seed = 99;
  return c;
}

class LoaderTest : public ::testing::Test {
 protected:
  fs::path dir_;
  void SetUp() override { dir_ = make_temp_dir("loader"); }
  void TearDown() override { fs::remove_all(dir_); }
};

TEST_F(LoaderTest, EvalReadsEveryImageExactlyOnceAcrossRanks) {
  auto files = make_indexed_shards(dir_, {50, 53}, 8);  // 103 images: not divisible by 4
  std::vector<int> hits(103, 0);
  for (int r = 0; r < 4; ++r) {
    Loader ld(identity_cfg(files, 8, false, r, 4, 7));
    EXPECT_EQ(ld.num_images(), 103);
    EXPECT_EQ(ld.classes(), kCls);
    const int64_t share = eval_share(103, r, 4).size();
    EXPECT_EQ(ld.local_batches(), (share + 6) / 7);
    ld.start_epoch(0, ld.local_batches());
    Batch b;
    int64_t seen = 0, nb = 0;
    while (ld.next(b)) {
      ++nb;
      EXPECT_TRUE(b.n == 7 || nb == ld.local_batches()) << "only the last batch may be partial";
      for (int i = 0; i < b.n; ++i) {
        const int64_t g = index_of(b, i);
        ASSERT_LT(g, 103);
        ++hits[static_cast<size_t>(g)];
        EXPECT_EQ(b.labels[i], g % 3);
      }
      seen += b.n;
    }
    EXPECT_EQ(seen, share);
    EXPECT_EQ(nb, ld.local_batches());
  }
  for (int g = 0; g < 103; ++g) EXPECT_EQ(hits[static_cast<size_t>(g)], 1) << "image " << g;
}

TEST_F(LoaderTest, TrainRanksGetEqualDisjointDeterministicShares) {
  auto files = make_indexed_shards(dir_, {40, 31, 32}, 8);  // 103
  const int world = 3, B = 5;
  std::set<int64_t> all;
  std::vector<int64_t> epoch0_rank0;
  for (int r = 0; r < world; ++r) {
    Loader ld(identity_cfg(files, 8, true, r, world, B));
    EXPECT_EQ(ld.local_batches(), 103 / 3 / 5);
    ld.start_epoch(0, ld.local_batches());
    Batch b;
    std::vector<int64_t> got;
    int nb = 0;
    while (ld.next(b)) {
      ++nb;
      EXPECT_EQ(b.n, B);
      for (int i = 0; i < b.n; ++i) {
        got.push_back(index_of(b, i));
        EXPECT_EQ(b.labels[i], got.back() % 3);
      }
    }
    EXPECT_EQ(nb, 6);
    // The order is the (seed, epoch) permutation's slice for this rank.
    auto p = epoch_permutation(103, 99, 0);
    Share s = train_share(103, r, world);
    std::vector<int64_t> want(p.begin() + s.begin, p.begin() + s.begin + 30);
    EXPECT_EQ(got, want);
    for (auto g : got) EXPECT_TRUE(all.insert(g).second) << "image " << g << " on two ranks";
    if (r == 0) epoch0_rank0 = got;
  }
  // Same config, new Loader: same order; another epoch: another order; an agreed smaller count.
  Loader ld(identity_cfg(files, 8, true, 0, world, B));
  ld.start_epoch(1, 4);
  Batch b;
  std::vector<int64_t> e1;
  while (ld.next(b))
    for (int i = 0; i < b.n; ++i) e1.push_back(index_of(b, i));
  EXPECT_EQ(e1.size(), 20u);
  EXPECT_NE(std::vector<int64_t>(epoch0_rank0.begin(), epoch0_rank0.begin() + 20), e1);
  ld.start_epoch(0, 6);
  std::vector<int64_t> e0;
  while (ld.next(b))
    for (int i = 0; i < b.n; ++i) e0.push_back(index_of(b, i));
  EXPECT_EQ(e0, epoch0_rank0);
  EXPECT_THROW(ld.start_epoch(0, 7), Error);  // more than this rank has
}

std::vector<uint8_t> epoch_bytes(Loader& ld, int epoch, int64_t batches, int stop_after = -1) {
  ld.start_epoch(epoch, batches);
  Batch b;
  std::vector<uint8_t> out;
  int k = 0;
  while ((stop_after < 0 || k < stop_after) && ld.next(b)) {
    out.insert(out.end(), b.images, b.images + static_cast<size_t>(b.n) * b.h * b.w * 3);
    ++k;
  }
  return out;
}

TEST_F(LoaderTest, AugmentationIsReproduciblePerRankAndResumable) {
  // 40x40 random content, RandomResizedCrop + flip to 24x24.
  ShardMeta m;
  m.split = "train";
  m.encoding = "raw";
  m.height = m.width = 40;
  m.classes = kCls;
  const std::string path = (dir_ / "train-00000-of-00001.h5").string();
  {
    ShardWriter w(path, m);
    Rng rng(1, rng_stream::kTest);
    std::vector<uint8_t> px(40 * 40 * 3);
    for (int k = 0; k < 64; ++k) {
      for (auto& v : px) v = static_cast<uint8_t>(rng.next_u32());
      w.append_raw(px.data(), k % 3, "x");
    }
    w.commit();
  }
  LoaderConfig c;
  c.shards = {path};
  c.batch_size = 8;
  c.height = c.width = 24;
  c.workers = 3;
  c.seed = 5;
  c.aug_stream = 0;
  Loader a(c), b(c);
  auto a0 = epoch_bytes(a, 2, 8);
  EXPECT_EQ(a0, epoch_bytes(b, 2, 8));       // same config, other instance (thread timing differs)
  auto partial = epoch_bytes(a, 2, 8, 3);    // abandon an epoch midway...
  EXPECT_EQ(a0, epoch_bytes(a, 2, 8));       // ...and restart it: identical
  EXPECT_EQ(std::vector<uint8_t>(a0.begin(), a0.begin() + static_cast<long>(partial.size())), partial);
  // Resume mid-epoch (checkpoint at batch 5): the rest is byte-identical to the uninterrupted epoch.
  a.start_epoch(2, 8, 5);
  std::vector<uint8_t> tail;
  Batch bt;
  while (a.next(bt)) tail.insert(tail.end(), bt.images, bt.images + static_cast<size_t>(bt.n) * bt.h * bt.w * 3);
  EXPECT_EQ(std::vector<uint8_t>(a0.end() - static_cast<long>(tail.size()), a0.end()), tail);
  EXPECT_EQ(tail.size(), a0.size() * 3 / 8);
  c.aug_stream = 1;
  Loader r1(c);
  EXPECT_NE(a0, epoch_bytes(r1, 2, 8));      // another rank's stream: other crops
  EXPECT_NE(a0, epoch_bytes(a, 3, 8));
}

template <class F>
void expect_error_naming(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST_F(LoaderTest, BadShardsAreErrorsNamingTheFile) {
  auto files = make_indexed_shards(dir_, {20, 20}, 8);
  auto cfg = [&](std::vector<std::string> f) {
    LoaderConfig c = identity_cfg(f, 8, true, 0, 1, 4);
    return c;
  };
  const std::string missing = (dir_ / "train-00007-of-00009.h5").string();
  expect_error_naming([&] { Loader l(cfg({files[0], missing})); }, missing);
  // Truncated copy.
  const std::string cut = (dir_ / "cut.h5").string();
  fs::copy(files[1], cut);
  fs::resize_file(cut, fs::file_size(cut) * 2 / 3);
  expect_error_naming([&] { Loader l(cfg({files[0], cut})); }, cut);
  // Not HDF5 at all.
  const std::string text = (dir_ / "text.h5").string();
  std::ofstream(text) << "hello";
  expect_error_naming([&] { Loader l(cfg({text})); }, text);
  // HDF5, but not a shard (e.g. a checkpoint).
  const std::string foreign = (dir_ / "foreign.h5").string();
  {
    auto f = h5::create_file(foreign);
    float x = 1;
    h5::write_f32(f, "conv1.weight", &x, {1});
  }
  expect_error_naming([&] { Loader l(cfg({files[0], foreign})); }, foreign);
  // A shard from another data set (other class list).
  fs::create_directories(dir_ / "other");
  auto other = make_indexed_shards(dir_ / "other", {5}, 8, {"a", "b", "x"});
  expect_error_naming([&] { Loader l(cfg({files[0], other[0]})); }, other[0]);
  expect_error_naming([&] { Loader l(cfg({files[0], files[0]})); }, files[0]);
  expect_error_naming([&] { find_shards((dir_ / "nowhere").string(), "train"); }, "nowhere");
  expect_error_naming([&] { find_shards(dir_.string(), "val"); }, dir_.string());
  EXPECT_EQ(find_shards(dir_.string(), "train"), files);
}

// A shard that opens fine but holds a damaged JPEG (a bit flip on the volume, a bad copy) fails at
// the batch that needs the image, naming the shard, the image's index in it, its source file and
// class; later calls fail the same way instead of hanging, and the loader still shuts down.
TEST_F(LoaderTest, DamagedImageInAShardIsAnErrorNamingIt) {
  ShardMeta m;
  m.split = "train";
  m.classes = kCls;
  m.resize_shorter = 0;
  const std::string path = (dir_ / shard_file_name("train", 0, 1)).string();
  const int kBad = 5;
  {
    ShardWriter w(path, m);
    std::vector<uint8_t> px(40 * 30 * 3);
    for (int k = 0; k < 8; ++k) {
      for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>((i * (k + 3)) % 253);
      auto j = encode_jpeg(px.data(), 40, 30, 90);
      if (k == kBad) j.resize(j.size() / 2);  // cut short: the entropy data ends early
      w.append_jpeg(j, k % 3, "cls_" + kCls[static_cast<size_t>(k % 3)] + "/photo_" + std::to_string(k) + ".JPEG");
    }
    w.commit();
  }
  for (bool train : {false, true}) {
    Loader ld(identity_cfg({path}, 16, train, 0, 1, 2));
    ld.start_epoch(0, ld.local_batches());
    Batch b;
    std::string msg;
    int good = 0;
    try {
      while (ld.next(b)) good += b.n;
    } catch (const Error& e) {
      msg = e.what();
    }
    SCOPED_TRACE(train ? "train" : "eval");
    ASSERT_FALSE(msg.empty()) << "no error after " << good << " images";
    EXPECT_LT(good, 8);
    for (const std::string& needle : {path + " image " + std::to_string(kBad), std::string("photo_5.JPEG"),
                                      std::string("class 'c'")})
      EXPECT_NE(msg.find(needle), std::string::npos) << needle << " not in: " << msg;
    // Again: the same error, not a hang or a stale batch.
    try {
      ld.next(b);
      ADD_FAILURE() << "next() after the error returned normally";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), msg);
    }
    // A new epoch over the same data fails the same way (the error does not stick to one order).
    ld.start_epoch(1, ld.local_batches());
    EXPECT_THROW(
        {
          while (ld.next(b)) {
          }
        },
        Error);
  }
}

// GPU hosts: cfg.pinned gives page-locked batches (what cudaMemcpyAsync needs to overlap).
TEST_F(LoaderTest, PinnedBatchesOnGpuHosts) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU: pinned memory is a CUDA-build, GPU-host feature";
  auto files = make_indexed_shards(dir_, {10}, 8);
  LoaderConfig c = identity_cfg(files, 8, false, 0, 1, 4);
  c.pinned = true;
  Loader ld(c);
  ld.start_epoch(0, ld.local_batches());
  Batch b;
  ASSERT_TRUE(ld.next(b));
  EXPECT_EQ(index_of(b, 0), 0);
#if DDP_HAVE_CUDA
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, b.images), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);
#endif
}

TEST_F(LoaderTest, NodeShardsAreItsShareOfTheSet) {
  auto files = make_indexed_shards(dir_, {3, 3, 3, 3}, 4);  // train-0000i-of-00004
  EXPECT_EQ(find_node_shards(dir_.string(), "train", 0, 1), files);
  EXPECT_EQ(find_node_shards(dir_.string(), "train", 1, 2), (std::vector<std::string>{files[1], files[3]}));
  EXPECT_EQ(find_node_shards(dir_.string(), "train", 2, 4), (std::vector<std::string>{files[2]}));
  expect_error_naming([&] { find_node_shards(dir_.string(), "train", 0, 3); }, "--shards 3");
  fs::remove(files[3]);  // a node's volume missing its shard
  expect_error_naming([&] { find_node_shards(dir_.string(), "train", 1, 2); }, "train-00003-of-00004.h5");
  // A node's own volume with only its shard (pack_imagenet --node-index 2 --nodes 4).
  fs::path own = dir_ / "own";
  fs::create_directories(own);
  fs::copy(files[2], own / fs::path(files[2]).filename());
  EXPECT_EQ(find_node_shards(own.string(), "train", 2, 4).size(), 1u);
}

// find_shards (the whole set, as --shard-scope global and one-node runs read it) on a node's own
// volume: the error says that the shards present are exactly one node's share, and of how many nodes,
// rather than only that the set is incomplete; a gap that is no node's share says nothing of the kind.
TEST_F(LoaderTest, IncompleteSetThatIsOneNodesShareSaysSo) {
  auto files = make_indexed_shards(dir_, {3, 3, 3, 3}, 4);  // train-0000i-of-00004
  const fs::path node1 = dir_ / "node1", node2 = dir_ / "node2", gap = dir_ / "gap";
  for (const auto& d : {node1, node2, gap}) fs::create_directories(d);
  for (int i : {1, 3}) fs::copy(files[static_cast<size_t>(i)], node1 / fs::path(files[static_cast<size_t>(i)]).filename());
  fs::copy(files[2], node2 / fs::path(files[2]).filename());
  for (int i : {0, 1}) fs::copy(files[static_cast<size_t>(i)], gap / fs::path(files[static_cast<size_t>(i)]).filename());
  expect_error_naming([&] { find_shards(node1.string(), "train"); }, "is incomplete: 2 missing");
  expect_error_naming([&] { find_shards(node1.string(), "train"); },
                      "are exactly node 1's share of a set packed for 2 nodes (the shards whose index mod 2 is 1, "
                      "as pack_imagenet --nodes 2 --node-index 1 writes)");
  expect_error_naming([&] { find_shards(node2.string(), "train"); },
                      "are exactly node 2's share of a set packed for 4 nodes");
  try {
    find_shards(gap.string(), "train");
    ADD_FAILURE() << "shards 0 and 1 of 4 taken for a whole set";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is incomplete: 2 missing"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("share"), std::string::npos) << "0 and 1 of 4 are no node's share: " << e.what();
  }
}

// A directory whose shards are not one whole set is refused by find_shards (naming the directory
// and the stray or missing file), and a shard whose attributes disagree with its name, or the same
// shard twice, by the Loader: each would train on repeated or missing data.
TEST_F(LoaderTest, ShardSetMustBeWholeAndNamesMustMatch) {
  const fs::path mixed = dir_ / "mixed", gap = dir_ / "gap", renamed = dir_ / "renamed";
  for (const auto& d : {mixed, gap, renamed}) fs::create_directories(d);
  auto ecfg = [](std::vector<std::string> f) { return identity_cfg(f, 4, false, 0, 1, 2); };
  // train-00000-of-00001 beside train-0000{0,1}-of-00002.
  auto two = make_indexed_shards(mixed, {3, 3}, 4);
  fs::create_directories(dir_ / "one");
  auto one = make_indexed_shards(dir_ / "one", {6}, 4);
  fs::copy(one[0], mixed / fs::path(one[0]).filename());
  expect_error_naming([&] { find_shards(mixed.string(), "train"); }, "train-00000-of-00001.h5");
  expect_error_naming([&] { find_shards(mixed.string(), "train"); }, mixed.string());
  expect_error_naming([&] { find_node_shards(mixed.string(), "train", 0, 1); }, "more than one set");
  // train-00000-of-00003 + train-00002-of-00003: shard 1 missing.
  auto three = make_indexed_shards(gap, {2, 2, 2}, 4);
  fs::remove(three[1]);
  expect_error_naming([&] { find_shards(gap.string(), "train"); }, "train-00001-of-00003.h5");
  expect_error_naming([&] { find_shards(gap.string(), "train"); }, gap.string());
  // Shard 0 of 2 copied over the name of shard 1: a whole set by name, not by content.
  auto pair = make_indexed_shards(renamed, {3, 3}, 4);
  fs::copy(pair[0], pair[1], fs::copy_options::overwrite_existing);
  auto found = find_shards(renamed.string(), "train");
  expect_error_naming([&] { Loader l(ecfg(found)); }, pair[1]);
  expect_error_naming([&] { Loader l(ecfg(found)); }, "attributes say shard 0 of 2");
  // The same shard under a name that is not a shard name, and shards of two sets, listed by hand.
  fs::copy(pair[0], dir_ / "backup.h5");
  expect_error_naming([&] { Loader l(ecfg({pair[0], (dir_ / "backup.h5").string()})); }, "backup.h5");
  expect_error_naming([&] { Loader l(ecfg({two[0], one[0]})); }, "mixed shard sets");
  // The good cases still pass.
  EXPECT_EQ(find_shards((dir_ / "one").string(), "train"), one);
  Loader ok(ecfg({two[0], two[1]}));
  EXPECT_EQ(ok.num_images(), 6);
}

// Attributes that cannot be right are refused naming the file and the attribute: a negative
// num_images (once printed as 18446744073709551615), an index outside its set, and an attribute of
// the wrong type (a failed read used to name only the HDF5 call).
TEST_F(LoaderTest, ImpossibleShardAttributesAreNamed) {
  struct Case {
    std::string attr;
    int64_t value;
    std::string says;
  };
  for (const Case& c : {Case{"num_images", -1, "attribute num_images is -1"},
                        Case{"shard_index", 2, "shard_index 2 and num_shards 1"},
                        Case{"num_classes", 7, "num_classes is 7"}}) {
    fs::create_directories(dir_ / c.attr);
    auto f = make_indexed_shards(dir_ / c.attr, {3}, 4);
    {
      auto h = h5::open_file(f[0], true);
      h5::set_attr(h, c.attr, c.value);
    }
    expect_error_naming([&] { ShardReader r(f[0]); }, c.says);
    expect_error_naming([&] { ShardReader r(f[0]); }, f[0]);
  }
  fs::create_directories(dir_ / "typed");
  auto f = make_indexed_shards(dir_ / "typed", {3}, 4);
  {
    auto h = h5::open_file(f[0], true);
    h5::set_attr(h, "num_shards", std::string("two"));
  }
  expect_error_naming([&] { ShardReader r(f[0]); }, "cannot read attribute 'num_shards'");
}

// The writer commits only the file it created: when another process has put its own file under the
// partial name meanwhile, commit fails naming it and neither renames nor removes that file.
TEST_F(LoaderTest, WriterRenamesOnlyItsOwnPartialFile) {
  ShardMeta m;
  m.split = "train";
  m.classes = kCls;
  const std::string path = (dir_ / shard_file_name("train", 0, 1)).string();
  const std::string partial = path + kPartialSuffix;
  {
    ShardWriter w(path, m);
    std::vector<uint8_t> px(16 * 16 * 3, 128);
    w.append_jpeg(encode_jpeg(px.data(), 16, 16, 90), 0, "a/x.JPEG");
    fs::remove(partial);  // what a second run on the same --output does when it starts
    std::ofstream(partial) << "the other run's shard";
    expect_error_naming([&] { w.commit(); }, partial);
  }
  EXPECT_FALSE(fs::exists(path));
  std::ifstream f(partial);
  std::string text;
  std::getline(f, text);
  EXPECT_EQ(text, "the other run's shard");
}

bool have_torchvision() { return std::system("/usr/bin/python3 -c 'import torchvision' >/dev/null 2>&1") == 0; }

// A val shard dir/val-00000-of-00001.h5 of JPEGs (quality `quality`), one per entry {W, H} of `sizes`:
// image k's pixel (x, y, channel c) is value(x, y, c, k) cast to uint8_t, its label k % 3, its name
// srcK.jpg, and its bytes are also written to dir/srcK.jpg for a reference script. Returns the path.
template <class Value>
std::string write_val_jpeg_shard(const fs::path& dir, const std::vector<std::array<int, 2>>& sizes, int quality,
                                 Value value) {
  ShardMeta m;
  m.split = "val";
  m.classes = kCls;
  const std::string path = (dir / "val-00000-of-00001.h5").string();
  ShardWriter w(path, m);
  for (int k = 0; k < static_cast<int>(sizes.size()); ++k) {
    const int W = sizes[static_cast<size_t>(k)][0], H = sizes[static_cast<size_t>(k)][1];
    std::vector<uint8_t> px(static_cast<size_t>(W) * H * 3);
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x)
        for (int c = 0; c < 3; ++c)
          px[(static_cast<size_t>(y) * W + x) * 3 + c] = static_cast<uint8_t>(value(x, y, c, k));
    auto j = encode_jpeg(px.data(), W, H, quality);
    std::ofstream(dir / ("src" + std::to_string(k) + ".jpg"), std::ios::binary)
        .write(reinterpret_cast<const char*>(j.data()), static_cast<std::streamsize>(j.size()));
    w.append_jpeg(j, k % 3, "src" + std::to_string(k) + ".jpg");
  }
  w.commit();
  return path;
}

// torchvision's T.Compose([transform]) on PIL's RGB decode of dir/srcK.jpg, k < n, written as
// dir/refK.bin (read_ref's format: width, height, pixels).
RunResult run_torchvision_reference(const fs::path& dir, const std::string& transform, int n) {
  const std::string py =
      "import sys,struct,numpy as np; from PIL import Image; import torchvision.transforms as T\n"
      "t=T.Compose([" + transform + "])\n"
      "for k in range(" + std::to_string(n) + "):\n"
      "  a=np.asarray(t(Image.open(sys.argv[1]+'/src%d.jpg'%k).convert('RGB')))\n"
      "  open(sys.argv[1]+'/ref%d.bin'%k,'wb').write(struct.pack('<ii',a.shape[1],a.shape[0])+a.tobytes())\n";
  std::ofstream(dir / "ref.py") << py;
  return run("/usr/bin/python3 " + q(dir / "ref.py") + " " + q(dir));
}

// JPEG shards, eval transform: torchvision Resize(int(32/0.875)) + CenterCrop(32) on PIL, within
// mean |diff| <= 3.0 (one-step resample from the source vs torchvision's two steps, DCT scaling).
TEST_F(LoaderTest, JpegEvalMatchesTorchvision) {
  if (!have_torchvision()) GTEST_SKIP() << "/usr/bin/python3 with torchvision needed";
  const std::string path =
      write_val_jpeg_shard(dir_, {{120, 90}, {97, 131}, {300, 200}, {64, 64}}, 92, [](int x, int y, int c, int k) {
        return 128 + 100 * std::sin(0.05 * x * (c + 1) + k) * std::cos(0.07 * y + c);
      });
  auto r = run_torchvision_reference(dir_, "T.Resize(int(32/0.875)),T.CenterCrop(32)", 4);
  ASSERT_EQ(r.rc, 0) << r.out;
  LoaderConfig c = eval_loader_config({path}, 3, 32, 0.875f);
  Loader ld(c);
  ASSERT_EQ(ld.local_batches(), 2);
  ld.start_epoch(0, 2);
  Batch b;
  int k = 0;
  while (ld.next(b)) {
    for (int i = 0; i < b.n; ++i, ++k) {
      auto rf = read_ref(dir_ / ("ref" + std::to_string(k) + ".bin"));
      Diff d = diff(rf.px.data(), b.images + static_cast<size_t>(i) * 32 * 32 * 3, rf.px.size());
      EXPECT_LE(d.mean, 3.0) << "image " << k << " max " << d.max;
      EXPECT_EQ(b.labels[i], k % 3);
    }
  }
  EXPECT_EQ(k, 4);
  // Training on JPEG shards: batches come out, deterministic across instances.
  c.train = true;
  c.batch_size = 2;
  Loader t1(c), t2(c);
  EXPECT_EQ(epoch_bytes(t1, 0, 2), epoch_bytes(t2, 0, 2));
}

// The eval crop is torchvision's whole-pixel crop: CenterCrop(224) of a 341x256 image starts at
// column int(round(58.5)) = 58 (Python rounds halves to even; 59.5 -> 60), so a shard image whose
// shorter side is already 256 (pack_imagenet --resize 256) comes out as a plain copy of pixels, not
// interpolated half a pixel off. Reference: torchvision Resize(256) + CenterCrop(224) on PIL's
// decode of the same shard bytes. Images 341x256, 256x343, 340x256: no resampling at all, atol 1
// (libjpeg-turbo builds' IDCT rounding). 500x375 (resized to 341x256, then cropped; one resampling
// step here, two with uint8 rounding between in PIL): atol 2, mean <= 0.5. The half-pixel offset
// gave mean |diff| 15-30 on these images.
TEST_F(LoaderTest, JpegEvalCropIsTorchvisionsWholePixel) {
  if (!have_torchvision()) GTEST_SKIP() << "/usr/bin/python3 with torchvision needed";
  const std::vector<std::array<int, 2>> sizes = {{341, 256}, {256, 343}, {340, 256}, {500, 375}};
  // Detail down to 2-3 pixels: a sub-pixel shift shows.
  const std::string path = write_val_jpeg_shard(dir_, sizes, 95, [](int x, int y, int c, int k) {
    return 128 + 60 * std::sin(1.3 * x + 0.4 * c) * std::cos(0.9 * y + k) + 50 * std::sin(0.11 * (x + y) * (c + 1));
  });
  auto r = run_torchvision_reference(dir_, "T.Resize(256),T.CenterCrop(224)", 4);
  ASSERT_EQ(r.rc, 0) << r.out;
  Loader ld(eval_loader_config({path}, 4, 224, 0.875f));
  ld.start_epoch(0, ld.local_batches());
  Batch b;
  int k = 0;
  while (ld.next(b)) {
    for (int i = 0; i < b.n; ++i, ++k) {
      auto rf = read_ref(dir_ / ("ref" + std::to_string(k) + ".bin"));
      ASSERT_EQ(rf.w, 224);
      ASSERT_EQ(rf.h, 224);
      Diff d = diff(rf.px.data(), b.images + static_cast<size_t>(i) * 224 * 224 * 3, rf.px.size());
      EXPECT_LE(d.max, k < 3 ? 1 : 2) << sizes[k][0] << "x" << sizes[k][1] << " mean " << d.mean;
      EXPECT_LE(d.mean, 0.5) << sizes[k][0] << "x" << sizes[k][1];
    }
  }
  EXPECT_EQ(k, 4);
}

}  // namespace
