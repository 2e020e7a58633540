// pack_imagenet / inspect_shards / fashion_mnist_to_jpeg, run as programs on inputs made by PIL
// (make_fixture.py). Expected pixels come from PIL; expected labels from the fixture's own truth file.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "data_test_util.h"
#include "ddp/core/check.h"
#include "ddp/core/h5.h"
#include "ddp/core/rng.h"
#include "ddp/data/image.h"
#include "ddp/data/loader.h"
#include "ddp/data/shard.h"

using namespace ddp;
using namespace ddp::data;
using namespace ddp::test;

namespace {

const std::string kPack = DDP_PACK_BIN;
const std::string kInspect = DDP_INSPECT_BIN;

class PackTest : public ::testing::Test {
 protected:
  static fs::path fx_;  // fixture inputs, shared by all tests of the suite
  static bool ok_;
  fs::path out_;

  static void SetUpTestSuite() {
    ok_ = have_pil();
    if (!ok_) return;
    fx_ = make_temp_dir("pack_fx");
    auto r = run("/usr/bin/python3 " + std::string(DDP_DATA_FIXTURE_PY) + " " + q(fx_ / "in"));
    ok_ = r.rc == 0;
    if (!ok_) std::fprintf(stderr, "fixture failed: %s\n", r.out.c_str());
  }
  static void TearDownTestSuite() {
    if (!fx_.empty()) fs::remove_all(fx_);
  }
  void SetUp() override {
    if (!ok_) GTEST_SKIP() << "/usr/bin/python3 with PIL + numpy is needed to make the test images";
    out_ = make_temp_dir("pack_out");
  }
  void TearDown() override {
    if (!out_.empty()) fs::remove_all(out_);
  }
  fs::path in(const std::string& root) const { return fx_ / "in" / root; }
  fs::path ref(const std::string& rel, const std::string& ext) const { return fx_ / "in" / "refs" / (rel + ext); }
  RunResult pack(const std::string& args) { return run(kPack + " --no-progress " + args); }

  // filename -> (label, decoded-or-raw pixels) for every image of the given shards.
  struct Img {
    int label = 0, w = 0, h = 0;
    std::vector<uint8_t> px;
    bool restarts = false;  // the stored JPEG has a DRI segment (restart markers) before its scan
  };
  // Walks the marker segments from SOI to SOS (an independent reading of the JPEG syntax).
  static bool has_dri(const std::vector<uint8_t>& b) {
    size_t i = 2;
    while (i + 4 <= b.size() && b[i] == 0xFF) {
      const uint8_t m = b[i + 1];
      if (m == 0xDD) return true;
      if (m == 0xDA) return false;
      i += 2 + ((static_cast<size_t>(b[i + 2]) << 8) | b[i + 3]);
    }
    return false;
  }
  static std::map<std::string, Img> read_all(const std::vector<std::string>& files) {
    std::map<std::string, Img> out;
    for (const auto& f : files) {
      ShardReader r(f);
      auto names = r.filenames();
      for (int64_t i = 0; i < r.size(); ++i) {
        Img im;
        im.label = r.labels()[static_cast<size_t>(i)];
        if (r.raw()) {
          im.w = r.meta().width;
          im.h = r.meta().height;
          im.px.resize(static_cast<size_t>(im.w) * im.h * 3);
          r.read_raw(i, im.px.data());
        } else {
          std::vector<std::vector<uint8_t>> b;
          r.read_jpeg({i}, b);
          Decoded d = decode_jpeg(b[0].data(), b[0].size(), names[static_cast<size_t>(i)], {}, 0, 0, 0, true);
          im.restarts = has_dri(b[0]);
          im.w = d.img.w;
          im.h = d.img.h;
          im.px = std::move(d.img.px);
        }
        EXPECT_TRUE(out.emplace(names[static_cast<size_t>(i)], std::move(im)).second)
            << "file " << names[static_cast<size_t>(i)] << " appears twice";
      }
    }
    return out;
  }
  std::vector<std::string> shards(const std::string& sub, const std::string& split) {
    return find_shards((out_ / sub).string(), split);
  }
  // Packs in(input) into OUT/s with `args`, which must succeed, and reads its train split's images into
  // `imgs`: there must be n (call under ASSERT_NO_FATAL_FAILURE).
  void pack_and_read_train(const std::string& input, const std::string& args, size_t n,
                           std::map<std::string, Img>& imgs) {
    auto r = pack("-i " + q(in(input)) + " -o " + q(out_ / "s") + args);
    ASSERT_EQ(r.rc, 0) << r.out;
    imgs = read_all(shards("s", "train"));
    ASSERT_EQ(imgs.size(), n);
  }
  fs::path good_jpeg() const { return in("bad") / "train" / "alpha" / "ok_0.JPEG"; }
  // OUT/name/train/{a,b}/x.JPEG (good_jpeg()): a tree that packs, to add one odd entry to.
  fs::path two_class_tree(const std::string& name) const {
    const fs::path root = out_ / name;
    for (std::string c : {"a", "b"}) {
      fs::create_directories(root / "train" / c);
      fs::copy(good_jpeg(), root / "train" / c / "x.JPEG");
    }
    return root;
  }
  // The image named on the first line of OUT/sub/bad_images.txt (the part before the tab).
  std::string first_bad_image(const std::string& sub) const {
    std::ifstream rep(out_ / sub / "bad_images.txt");
    std::string line;
    std::getline(rep, line);
    return line.substr(0, line.find('\t'));
  }
};
fs::path PackTest::fx_;
bool PackTest::ok_ = false;

const std::vector<std::string> kClasses = {"apple", "cat_a", "dog_b", "n0123", "zebra"};  // sorted
const std::map<std::string, int> kCounts = {{"zebra", 7}, {"cat_a", 8}, {"n0123", 9}, {"dog_b", 10}, {"apple", 11}};

// JPEGs already at the right size keep their DCT coefficients (re-entropy-coded with restart
// markers, which crops use): they decode exactly as PIL decodes the source (both are libjpeg-turbo;
// tolerance: atol 1 for a different build's rounding).
TEST_F(PackTest, JpegRoundTripKeepsOriginals) {
  std::map<std::string, Img> imgs;
  ASSERT_NO_FATAL_FAILURE(pack_and_read_train("good", " --shards 2 --resize 0", 45u, imgs));
  for (const auto& [name, im] : imgs) {
    auto rf = read_ref(ref("good/train/" + name, ".ref"));
    ASSERT_EQ(rf.w, im.w) << name;
    ASSERT_EQ(rf.h, im.h) << name;
    Diff d = diff(rf.px.data(), im.px.data(), rf.px.size());
    EXPECT_LE(d.max, 1) << name;
    EXPECT_TRUE(im.restarts) << name;
    const std::string cls = name.substr(0, name.find('/'));
    EXPECT_EQ(kClasses[static_cast<size_t>(im.label)], cls) << name;
  }
  ShardReader s0(shards("s", "train")[0]);
  EXPECT_EQ(s0.meta().classes, kClasses);
  EXPECT_EQ(s0.meta().num_shards, 2);
  EXPECT_EQ(s0.meta().encoding, "jpeg");
}

// Resized + re-encoded: against PIL's bilinear resize of PIL's decode, then a quality-95 4:2:0 JPEG
// round trip through PIL's encoder (mean |diff| <= 1.5, max <= 16: our resize differs from PIL's
// fixed-point one by at most 1 in about 1 pixel in 6 (checked below), and such a difference can
// move a DCT coefficient across a quantisation step, which spreads over its 8x8 block). The plain resize is checked more loosely (the
// JPEG loss itself: mean <= 3).
TEST_F(PackTest, JpegResizeMatchesPil) {
  std::map<std::string, Img> imgs;
  ASSERT_NO_FATAL_FAILURE(
      pack_and_read_train("good", " --splits train --resize 48 --allow-upscale --quality 95", 45u, imgs));
  for (const auto& [name, im] : imgs) {
    auto rf = read_ref(ref("good/train/" + name, ".r48q95"));
    ASSERT_EQ(rf.w, im.w) << name;
    ASSERT_EQ(rf.h, im.h) << name;
    Diff d = diff(rf.px.data(), im.px.data(), rf.px.size());
    EXPECT_LE(d.mean, 1.5) << name;
    EXPECT_LE(d.max, 16) << name;
    auto plain = read_ref(ref("good/train/" + name, ".r48"));
    EXPECT_LE(diff(plain.px.data(), im.px.data(), plain.px.size()).mean, 3.0) << name;
    EXPECT_TRUE(im.restarts) << name;
  }
}

// Raw: centre square resized to 32x32 as PIL does (no JPEG loss on our side, and sources under 128 px
// are decoded at full size: only PIL's fixed-point rounding differs, atol 1).
TEST_F(PackTest, RawResizeMatchesPil) {
  std::map<std::string, Img> imgs;
  ASSERT_NO_FATAL_FAILURE(pack_and_read_train("good", " --splits train --encoding raw --resize 32", 45u, imgs));
  for (const auto& [name, im] : imgs) {
    auto rf = read_ref(ref("good/train/" + name, ".raw32"));
    ASSERT_EQ(im.w, 32);
    Diff d = diff(rf.px.data(), im.px.data(), rf.px.size());
    EXPECT_LE(d.max, 1) << name;
  }
}

// Raw from large odd-sized JPEGs, which the packer decodes with DCT scaling (1001x701 at 1/4 is
// 251x176, rounded up from 250.25x175.25): the centre square is the source's own, as PIL takes it
// (resize(box=centre square)). Against PIL's resize of libjpeg's decode at the same DCT scale, with
// the square scaled alike: atol 1 (PIL's fixed-point rounding). Against PIL's full-size decode:
// mean <= 2, max <= 16 (DCT-domain downscaling drops detail PIL's filter keeps, on an image with
// detail at 8 pixels). Taking the square of the rounded-up decode instead gave mean 3.5-7.8, max
// 19-45 against the full-size decode.
TEST_F(PackTest, RawFromOddSizedJpegsMatchesPil) {
  std::map<std::string, Img> imgs;
  ASSERT_NO_FATAL_FAILURE(pack_and_read_train("odd", " --encoding raw --resize 64", 5u, imgs));
  for (const auto& [name, im] : imgs) {
    ASSERT_EQ(im.w, 64);
    auto dct = read_ref(ref("odd/train/" + name, ".raw64dct"));
    ASSERT_EQ(dct.w, 64);
    EXPECT_LE(diff(dct.px.data(), im.px.data(), dct.px.size()).max, 1) << name;
    auto full = read_ref(ref("odd/train/" + name, ".raw64"));
    Diff d = diff(full.px.data(), im.px.data(), full.px.size());
    EXPECT_LE(d.mean, 2.0) << name;
    EXPECT_LE(d.max, 16) << name;
  }
}

// Raw at the source's own size is lossless: exact equality, through the loader too.
TEST_F(PackTest, RawRoundTripIsExact) {
  auto r = pack("-i " + q(in("exact")) + " -o " + q(out_ / "s") + " --encoding raw --resize 32");
  ASSERT_EQ(r.rc, 0) << r.out;
  auto files = shards("s", "train");
  auto imgs = read_all(files);
  ASSERT_EQ(imgs.size(), 9u);
  for (const auto& [name, im] : imgs) {
    auto rf = read_ref(ref("exact/train/" + name, ".ref"));
    EXPECT_EQ(rf.px, im.px) << name;
  }
  Loader ld(eval_loader_config(files, 4, 32, 1.0f));
  ShardReader sr(files[0]);
  auto names = sr.filenames();
  ld.start_epoch(0, ld.local_batches());
  Batch b;
  int64_t k = 0;
  while (ld.next(b)) {
    for (int i = 0; i < b.n; ++i, ++k) {
      auto rf = read_ref(ref("exact/train/" + names[static_cast<size_t>(k)], ".ref"));
      EXPECT_TRUE(std::equal(rf.px.begin(), rf.px.end(), b.images + static_cast<size_t>(i) * 32 * 32 * 3))
          << names[static_cast<size_t>(k)];
    }
  }
  EXPECT_EQ(k, 9);
}

std::map<std::string, std::string> val_truth(const fs::path& p) {
  std::map<std::string, std::string> t;
  std::ifstream f(p);
  std::string a, b;
  while (f >> a >> b) t[a] = b;
  return t;
}

// Both val layouts (class folders; flat + Kaggle CSV) give every image its true class.
TEST_F(PackTest, ValLayoutsGiveTrueLabels) {
  auto truth = val_truth(fx_ / "in" / "val_truth.txt");
  ASSERT_EQ(truth.size(), 12u);
  // Kaggle's own tree: ROOT/ILSVRC/Data/CLS-LOC/{train,val} with ROOT/LOC_val_solution.csv.
  const fs::path kt = out_ / "kaggle_tree";
  fs::create_directories(kt / "ILSVRC" / "Data" / "CLS-LOC");
  fs::copy(in("kaggle") / "train", kt / "ILSVRC" / "Data" / "CLS-LOC" / "train", fs::copy_options::recursive);
  fs::copy(in("kaggle") / "val", kt / "ILSVRC" / "Data" / "CLS-LOC" / "val", fs::copy_options::recursive);
  fs::copy(in("kaggle") / "LOC_val_solution.csv", kt / "LOC_val_solution.csv");
  for (std::string root : {"good", "kaggle", "kaggle_tree"}) {
    const fs::path src = root == "kaggle_tree" ? kt : in(root);
    auto r = pack("-i " + q(src) + " -o " + q(out_ / ("s_" + root)) + " --shards 2 --resize 0");
    ASSERT_EQ(r.rc, 0) << r.out;
    auto imgs = read_all(shards("s_" + root, "val"));
    ASSERT_EQ(imgs.size(), 12u) << root;
    for (const auto& [name, im] : imgs) {
      const std::string base = name.substr(name.find('/') == std::string::npos ? 0 : name.find('/') + 1);
      ASSERT_TRUE(truth.count(base)) << root << ": " << name;
      EXPECT_EQ(kClasses[static_cast<size_t>(im.label)], truth[base]) << root << ": " << name;
    }
  }
}

// Every shard gets every class, within one image of the others; the split is exact and
// --node-index writes the same shard the full run does.
TEST_F(PackTest, ClassBalancedDeterministicShards) {
  auto r = pack("-i " + q(in("good")) + " -o " + q(out_ / "all") + " --splits train --shards 3 --resize 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  auto files = shards("all", "train");
  ASSERT_EQ(files.size(), 3u);
  std::map<int, std::vector<int>> per_class;  // class -> count per shard
  std::set<std::string> names;
  int64_t total = 0;
  for (const auto& f : files) {
    ShardReader s(f);
    std::vector<int> h(5, 0);
    for (int32_t l : s.labels()) ++h[static_cast<size_t>(l)];
    for (int c = 0; c < 5; ++c) per_class[c].push_back(h[static_cast<size_t>(c)]);
    for (auto& n : s.filenames()) EXPECT_TRUE(names.insert(n).second) << n << " in two shards";
    total += s.size();
  }
  EXPECT_EQ(total, 45);
  // File k (sorted by name) of class c is in shard (k + c) mod 3, as every earlier pack_imagenet put
  // it: a rerun must find the shards they packed matching.
  std::map<std::string, int> shard_of;
  for (size_t i = 0; i < files.size(); ++i)
    for (auto& n : ShardReader(files[i]).filenames()) shard_of[n] = static_cast<int>(i);
  for (int c = 0; c < 5; ++c) {
    std::vector<std::string> in_class;
    for (const auto& [n, s] : shard_of)
      if (n.substr(0, n.find('/')) == kClasses[static_cast<size_t>(c)]) in_class.push_back(n);
    ASSERT_EQ(static_cast<int>(in_class.size()), kCounts.at(kClasses[static_cast<size_t>(c)]));
    for (size_t k = 0; k < in_class.size(); ++k)
      EXPECT_EQ(shard_of[in_class[k]], static_cast<int>((k + static_cast<size_t>(c)) % 3)) << in_class[k];
  }
  for (auto& [c, v] : per_class) {
    auto [mn, mx] = std::minmax_element(v.begin(), v.end());
    EXPECT_LE(*mx - *mn, 1) << "class " << kClasses[static_cast<size_t>(c)];
    EXPECT_GE(*mn, 1);
    EXPECT_EQ(v[0] + v[1] + v[2], kCounts.at(kClasses[static_cast<size_t>(c)]));
  }
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "node1") + " --splits train --nodes 3 --node-index 1 --resize 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  auto node = find_node_shards((out_ / "node1").string(), "train", 1, 3);  // a node volume: its share only
  ASSERT_EQ(node.size(), 1u);
  EXPECT_EQ(fs::path(node[0]).filename(), fs::path(files[1]).filename());
  EXPECT_EQ(ShardReader(node[0]).filenames(), ShardReader(files[1]).filenames());
  EXPECT_EQ(ShardReader(node[0]).labels(), ShardReader(files[1]).labels());
}

// The (k + c) mod N rule leaves shards empty when classes are few and small (2 classes of 3 images
// into 5 shards: class 0 fills shards 0-2, class 1 shards 1-3, shard 4 gets nothing). With at least
// as many images as shards, every shard still gets images, each image goes to exactly one shard and a
// class's counts across shards differ by at most one; --node-index writes the full run's shard.
// (It used to pass the up-front count check, write shards 0-3 and then fail at shard 4.)
TEST_F(PackTest, FewImagesStillFillEveryShard) {
  struct Case {
    int classes, per_class, shards;
  };
  for (const Case& c : {Case{2, 3, 5}, Case{3, 3, 9}, Case{2, 5, 9}, Case{4, 1, 3}}) {
    const std::string tag = std::to_string(c.classes) + "x" + std::to_string(c.per_class) + "_" +
                            std::to_string(c.shards);
    const fs::path root = out_ / ("in_" + tag);
    for (int k = 0; k < c.classes; ++k) {
      const fs::path d = root / "train" / ("c" + std::to_string(k));
      fs::create_directories(d);
      for (int i = 0; i < c.per_class; ++i)
        fs::copy(in("bad") / "train" / "alpha" / ("ok_" + std::to_string(i % 3) + ".JPEG"),
                 d / ("img_" + std::to_string(i) + ".JPEG"));
    }
    const fs::path o = out_ / ("out_" + tag);
    auto r = pack("-i " + q(root) + " -o " + q(o) + " --resize 0 --shards " + std::to_string(c.shards));
    ASSERT_EQ(r.rc, 0) << tag << ": " << r.out;
    auto files = find_shards(o.string(), "train");
    ASSERT_EQ(files.size(), static_cast<size_t>(c.shards)) << tag;
    std::set<std::string> names;
    std::vector<std::vector<int>> per_class(static_cast<size_t>(c.classes), std::vector<int>(files.size(), 0));
    for (size_t s = 0; s < files.size(); ++s) {
      ShardReader sr(files[s]);
      EXPECT_GE(sr.size(), 1) << tag << ": " << files[s] << " is empty";
      for (const auto& n : sr.filenames()) EXPECT_TRUE(names.insert(n).second) << tag << ": " << n << " twice";
      for (int32_t l : sr.labels()) ++per_class[static_cast<size_t>(l)][s];
    }
    EXPECT_EQ(names.size(), static_cast<size_t>(c.classes * c.per_class)) << tag;
    for (const auto& v : per_class) {
      auto [mn, mx] = std::minmax_element(v.begin(), v.end());
      EXPECT_LE(*mx - *mn, 1) << tag;
    }
    const int last = c.shards - 1;
    r = pack("-i " + q(root) + " -o " + q(out_ / ("node_" + tag)) + " --resize 0 --nodes " + std::to_string(c.shards) +
             " --node-index " + std::to_string(last));
    ASSERT_EQ(r.rc, 0) << tag << ": " << r.out;
    const std::string mine = (out_ / ("node_" + tag) / shard_file_name("train", last, c.shards)).string();
    EXPECT_EQ(ShardReader(mine).filenames(), ShardReader(files[static_cast<size_t>(last)]).filenames()) << tag;
  }
}

bool has_shard_or_partial(const fs::path& dir) {
  if (!fs::exists(dir)) return false;
  for (auto& e : fs::directory_iterator(dir)) {
    auto n = e.path().filename().string();
    if (n.find(".h5") != std::string::npos) return true;
  }
  return false;
}

// Each unreadable input stops the run with its name, and leaves no shard (final or partial).
TEST_F(PackTest, BadInputStopsNamingTheFile) {
  std::ifstream bf(fx_ / "in" / "bad_files.txt");
  std::vector<std::string> bad;
  for (std::string l; std::getline(bf, l);)
    if (!l.empty()) bad.push_back(l);
  ASSERT_EQ(bad.size(), 4u);
  for (const auto& b : bad) {
    fs::path root = out_ / ("in_" + fs::path(b).stem().string());
    fs::create_directories(root / "train" / "alpha");
    fs::copy(in("bad") / "train" / "alpha" / "ok_0.JPEG", root / "train" / "alpha" / "ok_0.JPEG");
    fs::copy(b, root / "train" / "alpha" / fs::path(b).filename());
    fs::path o = out_ / ("out_" + fs::path(b).stem().string());
    auto r = pack("-i " + q(root) + " -o " + q(o) + " --max-pixels 4000000");
    EXPECT_NE(r.rc, 0) << b;
    EXPECT_NE(r.out.find(fs::path(b).filename().string()), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("--skip-bad"), std::string::npos) << r.out;
    EXPECT_FALSE(has_shard_or_partial(o)) << b;
  }
}

// --skip-bad: the four bad files are listed in the report; CMYK, PNG-named-.JPEG, grayscale and
// progressive files are converted to RGB and match PIL's RGB decode after the same quality-95
// 4:2:0 JPEG round trip by PIL (mean |diff| <= 0.5; the progressive file is kept as it was and is
// compared with PIL's decode of it, atol 1).
TEST_F(PackTest, SkipBadReportsAndConvertsTheRest) {
  auto r = pack("-i " + q(in("bad")) + " -o " + q(out_ / "s") + " --skip-bad --max-pixels 4000000 --resize 0 --quality 95");
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream rep(out_ / "s" / "bad_images.txt");
  std::set<std::string> listed;
  for (std::string l; std::getline(rep, l);) listed.insert(l.substr(0, l.find('\t')));
  std::ifstream bf(fx_ / "in" / "bad_files.txt");
  std::set<std::string> bad;
  for (std::string l; std::getline(bf, l);)
    if (!l.empty()) bad.insert(l);
  EXPECT_EQ(listed, bad);
  EXPECT_NE(r.out.find("rejected 4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4 bad image(s) left out (1 too large (--max-pixels), 3 unreadable or not an image)"),
            std::string::npos) << r.out;
  auto imgs = read_all(shards("s", "train"));
  EXPECT_EQ(imgs.size(), 10u);
  for (std::string n : {"cmyk.JPEG", "png_named.JPEG", "gray.JPEG", "progressive.JPEG"}) {
    ASSERT_TRUE(imgs.count("alpha/" + n)) << n;
    const auto& im = imgs["alpha/" + n];
    const bool kept = n == "progressive.JPEG";
    auto rf = read_ref(ref("bad/train/alpha/" + n, kept ? ".ref" : ".q95"));
    ASSERT_EQ(rf.w, im.w);
    Diff d = diff(rf.px.data(), im.px.data(), rf.px.size());
    EXPECT_LE(d.mean, 0.5) << n;
    if (kept) {
      EXPECT_LE(d.max, 1) << n;
    }
  }
}

// OUTPUT/bad_images.txt lists the images left out of the shards in OUTPUT, once each, across reruns:
// a rerun keeps the lines of the shards it reuses and replaces those of the shards it packs again
// (the report used to be appended to, collecting duplicates and keeping lines of images since fixed).
TEST_F(PackTest, BadReportDescribesTheShardsThere) {
  const fs::path root = out_ / "in", o = out_ / "s";
  const fs::path ok = in("bad") / "train" / "alpha" / "ok_0.JPEG";
  fs::create_directories(root / "train" / "a");
  fs::create_directories(root / "train" / "b");
  // Sorted, shard (k + c) mod 2: shard 0 gets a/bad1, a/ok2, b/ok; shard 1 gets a/ok0, b/bad2.
  for (std::string n : {"a/ok0.JPEG", "a/ok2.JPEG", "b/ok.JPEG"}) fs::copy(ok, root / "train" / n);
  for (std::string n : {"a/bad1.JPEG", "b/bad2.JPEG"}) std::ofstream(root / "train" / n) << "not an image";
  const std::string base = "-i " + q(root) + " -o " + q(o) + " --resize 0 --shards 2";
  auto lines = [&] {
    std::vector<std::string> v;
    std::ifstream f(o / "bad_images.txt");
    for (std::string l; std::getline(f, l);) v.push_back(l.substr(0, l.find('\t')));
    std::sort(v.begin(), v.end());
    return v;
  };
  const std::string bad1 = (root / "train" / "a" / "bad1.JPEG").string(), bad2 = (root / "train" / "b" / "bad2.JPEG").string();
  auto r = pack(base + " --skip-bad");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(lines(), (std::vector<std::string>{bad1, bad2}));
  EXPECT_NE(r.out.find("2 bad image(s) left out"), std::string::npos) << r.out;
  r = pack(base + " --skip-bad");  // both shards reused
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(lines(), (std::vector<std::string>{bad1, bad2}));
  fs::remove(o / shard_file_name("train", 1, 2));  // shard 1 packed again: its line replaced, not doubled
  r = pack(base + " --skip-bad");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(lines(), (std::vector<std::string>{bad1, bad2}));
  fs::copy(ok, root / "train" / "b" / "bad2.JPEG", fs::copy_options::overwrite_existing);  // fixed
  fs::remove(o / shard_file_name("train", 1, 2));
  r = pack(base + " --skip-bad");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(lines(), (std::vector<std::string>{bad1}));
  EXPECT_EQ(ShardReader((o / shard_file_name("train", 1, 2)).string()).size(), 2);
  // The last bad image fixed and its shard packed again, without --skip-bad: nothing is left out of
  // the shards there, and the report goes.
  fs::copy(ok, root / "train" / "a" / "bad1.JPEG", fs::copy_options::overwrite_existing);
  fs::remove(o / shard_file_name("train", 0, 2));
  r = pack(base);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_FALSE(fs::exists(o / "bad_images.txt")) << "lines: " << lines().size();
  // Node runs into one directory share the report: each keeps the other's lines.
  for (std::string n : {"a/bad1.JPEG", "b/bad2.JPEG"}) std::ofstream(root / "train" / n) << "not an image";
  fs::remove_all(o);
  for (std::string i : {"0", "1"}) {
    r = pack(base + " --skip-bad --node-index " + i);
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  EXPECT_EQ(lines(), (std::vector<std::string>{bad1, bad2}));
  // Another spelling of the same --input: still one line per image (lines name absolute, normal paths).
  fs::remove(o / shard_file_name("train", 1, 2));
  r = pack("-i " + q(root / "train" / "..") + " -o " + q(o) + " --resize 0 --shards 2 --skip-bad");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(lines(), (std::vector<std::string>{bad1, bad2}));
}

// Writes n synthetic 256x192 JPEGs into root/train/<class>/ (for runs long enough to interrupt).
void make_big_tree(const fs::path& root, int classes, int per_class) {
  Rng rng(7, rng_stream::kTest);
  std::vector<uint8_t> px(256 * 192 * 3);
  for (int c = 0; c < classes; ++c) {
    fs::path d = root / "train" / ("c" + std::to_string(c));
    fs::create_directories(d);
    for (int k = 0; k < per_class; ++k) {
      for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>((i * (c + 3) / 97 + k * 5 + (rng.next_u32() & 15)) & 255);
      auto j = encode_jpeg(px.data(), 256, 192, 90);
      std::ofstream(d / ("img_" + std::to_string(k) + ".JPEG"), std::ios::binary)
          .write(reinterpret_cast<const char*>(j.data()), static_cast<std::streamsize>(j.size()));
    }
  }
}

// A stale .partial is replaced, complete shards are kept, only missing shards are redone, and a
// run killed mid-shard leaves nothing under a final name that is not complete.
TEST_F(PackTest, InterruptedPackRecovers) {
  const fs::path o = out_ / "s";
  fs::create_directories(o);
  std::ofstream(o / (shard_file_name("train", 0, 2) + kPartialSuffix)) << "garbage from a killed run";
  auto r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits train --shards 2 --resize 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_FALSE(fs::exists(o / (shard_file_name("train", 0, 2) + kPartialSuffix)));
  auto files = shards("s", "train");
  ASSERT_EQ(files.size(), 2u);
  auto names1 = ShardReader(files[1]).filenames();
  auto t0 = fs::last_write_time(files[0]);
  fs::remove(files[1]);
  r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits train --shards 2 --resize 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("already complete"), std::string::npos) << r.out;
  EXPECT_EQ(fs::last_write_time(files[0]), t0);
  EXPECT_EQ(ShardReader(files[1]).filenames(), names1);

  // Kill a run in the middle.
  const fs::path big = out_ / "big";
  make_big_tree(big, 4, 150);
  const fs::path ko = out_ / "killed";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    freopen("/dev/null", "w", stdout);
    execl(kPack.c_str(), kPack.c_str(), "--no-progress", "-i", big.c_str(), "-o", ko.c_str(), "--shards", "2",
          "--threads", "1", "--resize", "128", static_cast<char*>(nullptr));
    _exit(127);
  }
  const fs::path part1 = ko / (shard_file_name("train", 1, 2) + kPartialSuffix);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(part1) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(fs::exists(part1)) << "the run ended before the second shard was started";
  EXPECT_FALSE(fs::exists(ko / shard_file_name("train", 1, 2)));
  r = pack("-i " + q(big) + " -o " + q(ko) + " --shards 2 --resize 128");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_FALSE(fs::exists(part1));
  r = pack("-i " + q(big) + " -o " + q(out_ / "clean") + " --shards 2 --resize 128");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (int i = 0; i < 2; ++i) {
    ShardReader a((ko / shard_file_name("train", i, 2)).string());
    ShardReader b((out_ / "clean" / shard_file_name("train", i, 2)).string());
    EXPECT_EQ(a.size(), 300);
    EXPECT_EQ(a.filenames(), b.filenames());
    EXPECT_EQ(a.labels(), b.labels());
  }
}

// A second run on the same --output is refused while the first holds the lock on the shards it
// writes (here the test holds shard 0's, as a run stopped while writing it would); a run for
// another node's shard into the same directory may go ahead; once the lock is gone, packing works.
TEST_F(PackTest, ConcurrentRunOnTheSameOutputIsRefused) {
  const fs::path o = out_ / "s";
  fs::create_directories(o);
  const int fd = ::open((o / ".pack_imagenet.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 1;
  ASSERT_EQ(::fcntl(fd, F_OFD_SETLK, &fl), 0);
  std::ofstream(o / (shard_file_name("train", 0, 2) + kPartialSuffix)) << "the first run's partial shard";
  auto r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits train --shards 2 --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("another pack_imagenet"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(o.string()), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(o / (shard_file_name("train", 0, 2) + kPartialSuffix)));  // left alone
  r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits train --nodes 2 --node-index 1 --resize 0");
  EXPECT_EQ(r.rc, 0) << r.out;
  ::close(fd);
  r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits train --shards 2 --resize 0");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(shards("s", "train").size(), 2u);
}

// A complete shard is reused by a rerun only when it was packed with the same settings from the same
// input; otherwise the rerun stops, naming the shard and what differs.
TEST_F(PackTest, ExistingShardWithOtherSettingsIsRefused) {
  const fs::path root = out_ / "in";
  fs::create_directories(root);
  fs::copy(in("good") / "train", root / "train", fs::copy_options::recursive);
  const std::string base = "-i " + q(root) + " -o " + q(out_ / "s") + " --splits train --resize 64";
  auto r = pack(base);
  ASSERT_EQ(r.rc, 0) << r.out;
  const std::string shard = (out_ / "s" / shard_file_name("train", 0, 1)).string();
  struct Case {
    std::string args, says;
  };
  for (const Case& c : {Case{" --encoding raw", "--encoding jpeg (this run: raw)"},
                        Case{" --allow-upscale", "--allow-upscale off (this run: on)"},
                        Case{" --quality 80", "--quality 90 (this run: 80)"}}) {
    r = pack(base + c.args);
    EXPECT_EQ(r.rc, 1) << c.args << ": " << r.out;
    EXPECT_NE(r.out.find("other settings: " + c.says), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(shard), std::string::npos) << r.out;
  }
  // The input changed: one more image, then one renamed.
  fs::copy(root / "train" / "apple" / fs::directory_iterator(root / "train" / "apple")->path().filename(),
           root / "train" / "apple" / "zz_new.JPEG");
  r = pack(base);
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("other input files"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(shard), std::string::npos) << r.out;
  fs::remove(root / "train" / "apple" / "zz_new.JPEG");
  r = pack(base);
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("already complete"), std::string::npos) << r.out;
  const fs::path first = fs::directory_iterator(root / "train" / "cat_a")->path();
  fs::rename(first, first.parent_path() / ("renamed_" + first.filename().string()));
  r = pack(base);
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("other input files"), std::string::npos) << r.out;
  // A shard of an older pack_imagenet (no fingerprint, no allow_upscale): reused with a warning, since
  // refusing it would mean repacking everything to add a split; the settings it did record still count.
  {
    ddp::h5::Handle f = ddp::h5::open_file(shard, true);
    ASSERT_GE(H5Adelete(f, "input_fingerprint"), 0);
    ASSERT_GE(H5Adelete(f, "allow_upscale"), 0);
  }
  r = pack(base);
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("packed by an older pack_imagenet"), std::string::npos) << r.out;
  r = pack(base + " --quality 80");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("other settings: --quality 90 (this run: 80)"), std::string::npos) << r.out;
}

std::string set_fingerprint_of(const std::string& shard) {
  ddp::h5::Handle f = ddp::h5::open_file(shard);
  return ddp::h5::get_attr_str(f, "set_fingerprint");
}

// Every shard of one packing carries one set_fingerprint per split: the same whether one run wrote the
// set or one run per --node-index did (each lists the whole split first), and another one for other
// input files, other settings or another shard count. The loader and inspect_shards refuse shards of
// two packings in one set; a rerun that reuses a shard whose own input is unchanged while the split's
// listing changed elsewhere rewrites its set_fingerprint, so that the set agrees again.
TEST_F(PackTest, SetFingerprintIsOneForTheWholePacking) {
  const std::string good = "-i " + q(in("good")) + " --resize 0 -o ";
  auto r = pack(good + q(out_ / "full") + " --shards 3");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (int i = 0; i < 3; ++i) {
    r = pack(good + q(out_ / ("n" + std::to_string(i))) + " --nodes 3 --node-index " + std::to_string(i));
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  std::map<std::string, std::string> fp;  // split -> the full run's
  for (const std::string split : {"train", "val"}) {
    const auto full = shards("full", split);
    ASSERT_EQ(full.size(), 3u);
    fp[split] = set_fingerprint_of(full[0]);
    EXPECT_EQ(fp[split].rfind("fnv1a64:", 0), 0u) << fp[split];
    for (const auto& f : full) EXPECT_EQ(set_fingerprint_of(f), fp[split]) << f;
    for (int i = 0; i < 3; ++i) {
      const auto own = find_node_shards((out_ / ("n" + std::to_string(i))).string(), split, i, 3);
      ASSERT_EQ(own.size(), 1u);
      EXPECT_EQ(set_fingerprint_of(own[0]), fp[split]) << "the --node-index " << i << " run's " << own[0];
    }
  }
  EXPECT_NE(fp["train"], fp["val"]);
  // Other settings, another shard count, other input files: another packing.
  r = pack(good + q(out_ / "two") + " --splits train --shards 2");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(set_fingerprint_of(shards("two", "train")[0]), fp["train"]);
  r = pack("-i " + q(in("good")) + " --resize 64 -o " + q(out_ / "resized") + " --splits train --shards 3");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(set_fingerprint_of(shards("resized", "train")[0]), fp["train"]);
  const fs::path root = out_ / "in";
  fs::create_directories(root);
  fs::copy(in("good") / "train", root / "train", fs::copy_options::recursive);
  fs::copy(root / "train" / "apple" / fs::directory_iterator(root / "train" / "apple")->path().filename(),
           root / "train" / "apple" / "zz_new.JPEG");
  const std::string other = "-i " + q(root) + " --resize 0 --splits train --shards 3 -o ";
  r = pack(other + q(out_ / "other"));
  ASSERT_EQ(r.rc, 0) << r.out;
  const auto other_files = shards("other", "train");
  const std::string other_fp = set_fingerprint_of(other_files[0]);
  EXPECT_NE(other_fp, fp["train"]);

  // Shard 0 of the first packing beside shards 1 and 2 of the other: a whole set by name and
  // settings, two packings by content.
  const fs::path mixed = out_ / "mixed";
  fs::create_directories(mixed);
  fs::copy(shards("full", "train")[0], mixed);
  for (int i : {1, 2}) fs::copy(other_files[static_cast<size_t>(i)], mixed);
  LoaderConfig c;
  c.shards = find_shards(mixed.string(), "train");
  c.batch_size = 2;
  c.height = c.width = 32;
  c.train = false;
  c.workers = 1;
  try {
    Loader l(c);
    ADD_FAILURE() << "shards of two packings loaded as one set";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("come from different packings"), std::string::npos) << what;
    EXPECT_NE(what.find((mixed / shard_file_name("train", 0, 3)).string()), std::string::npos) << what;
    EXPECT_NE(what.find(fp["train"]), std::string::npos) << what;
    EXPECT_NE(what.find(other_fp), std::string::npos) << what;
  }
  r = run(kInspect + " --no-decode " + q(mixed));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("ERROR: split 'train' mixes shards of 2 packings"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("set fingerprint " + other_fp), std::string::npos) << r.out;

  // A file of shard 2 replaced by one of another size (a bad image fixed, say): shards 0 and 1, whose
  // own files did not change, are reused with the new listing's set_fingerprint; shard 2 is repacked.
  const auto names2 = ShardReader(other_files[2]).filenames();
  const fs::path changed = root / "train" / names2.at(0);
  const fs::path donor = root / "train" / names2.at(1);
  ASSERT_NE(fs::file_size(changed), fs::file_size(donor));
  fs::copy_file(donor, changed, fs::copy_options::overwrite_existing);
  fs::remove(other_files[2]);
  r = pack(other + q(out_ / "other"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("its own input is unchanged, but its set_fingerprint " + other_fp), std::string::npos) << r.out;
  const auto redone = shards("other", "train");
  const std::string new_fp = set_fingerprint_of(redone[2]);
  EXPECT_NE(new_fp, other_fp);
  for (const auto& f : redone) EXPECT_EQ(set_fingerprint_of(f), new_fp) << f;
  EXPECT_EQ(ShardReader(redone[0]).filenames(), ShardReader(shards("full", "train")[0]).filenames());
  for (const auto& e : fs::directory_iterator(out_ / "other"))
    EXPECT_EQ(e.path().string().find(kPartialSuffix), std::string::npos) << e.path();
  c.shards = redone;
  Loader whole(c);
  EXPECT_EQ(whole.num_images(), 46);
  r = run(kInspect + " --no-decode " + q(out_ / "other"));
  EXPECT_EQ(r.rc, 0) << r.out;
}

// The shard count must fit the names (5 digits), not exceed the images of a split, and a directory
// already holding a set of another count is refused naming its files.
TEST_F(PackTest, ShardCountIsChecked) {
  auto r = pack("-i " + q(in("good")) + " -o " + q(out_ / "a") + " --splits train --shards 100000");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("--shards/--nodes must be in 1..99999"), std::string::npos) << r.out;
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "b") + " --splits val --shards 13");  // val: 12 images
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("split 'val' has 12 images, fewer than the 13 shards"), std::string::npos) << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "b"));
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "c") + " --splits train --shards 2 --resize 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "c") + " --splits train --shards 3 --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("train-00000-of-00002.h5, train-00001-of-00002.h5"), std::string::npos) << r.out;
  EXPECT_EQ(shards("c", "train").size(), 2u);
}

// Flags that used to crash or write in the wrong place: errors naming the flag, nothing written.
TEST_F(PackTest, FlagsAreBounded) {
  const std::string base = "-i " + q(in("good")) + " -o " + q(out_ / "o" / "s") + " --resize 0";
  struct Case {
    std::string args, says;
  };
  for (const Case& c : {Case{" --threads 100000", "--threads must be in 0..1024"},
                        Case{" --threads -3", "--threads must be in 0..1024"},
                        Case{" --splits ../x", "'../x' is not a plain name"},
                        Case{" --splits train,train", "names 'train' twice"},
                        Case{" --nodes 2 --node-index -2", "--node-index must be in 0..1"},
                        Case{" --max-pixels -1", "--max-pixels must be 0 (no limit) or more, got -1"}}) {
    auto r = pack(base + c.args);
    EXPECT_EQ(r.rc, 1) << c.args << ": " << r.out;
    EXPECT_NE(r.out.find(c.says), std::string::npos) << c.args << ": " << r.out;
  }
  EXPECT_FALSE(has_shard_or_partial(out_ / "o" / "s"));
  EXPECT_FALSE(has_shard_or_partial(out_ / "o"));
  // Thread creation failing (1024 stacks of 8 MiB do not fit in 1.5 GB of address space): a clean
  // error, not std::terminate, and no partial file.
  auto r = run("ulimit -v 1500000; " + kPack + " --no-progress --threads 1024 " + base);
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("cannot start worker thread"), std::string::npos) << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "o" / "s"));
}

// A word that belongs to no flag is refused, not ignored: "--splits train val" used to pack train
// only and exit 0. Nothing is written.
TEST_F(PackTest, StrayArgumentsAreRefused) {
  for (const std::string& args : {std::string(" --splits train val"), std::string(" extra"),
                                  std::string(" --resize 0 64")}) {
    auto r = pack("-i " + q(in("good")) + " -o " + q(out_ / "s") + args);
    EXPECT_EQ(r.rc, 2) << args << ": " << r.out;
    const std::string word = args.substr(args.rfind(' ') + 1);
    EXPECT_NE(r.out.find("unexpected argument '" + word + "'"), std::string::npos) << args << ": " << r.out;
    EXPECT_FALSE(fs::exists(out_ / "s")) << args;
  }
}

// Dangling links are never skipped unseen: an image link is a bad image (an error, or with
// --skip-bad a report line), a class folder link is always an error (leaving the class out would
// shift every later label). Names that are not UTF-8 are refused (escaped in the message); a class
// folder holding only subfolders says so; names with a newline stay one report line.
TEST_F(PackTest, LinksAndNamesAreChecked) {
  const fs::path ok = good_jpeg();
  fs::path root = two_class_tree("link_file");
  fs::create_symlink("/nonexistent/img.JPEG", root / "train" / "a" / "gone.JPEG");
  auto r = pack("-i " + q(root) + " -o " + q(out_ / "s1") + " --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("train/a/gone.JPEG' is a dangling symbolic link"), std::string::npos) << r.out;
  r = pack("-i " + q(root) + " -o " + q(out_ / "s2") + " --resize 0 --skip-bad");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("rejected 1"), std::string::npos) << r.out;
  EXPECT_EQ(first_bad_image("s2"), (root / "train" / "a" / "gone.JPEG").string());

  root = two_class_tree("link_class");
  fs::create_symlink("/nonexistent/class", root / "train" / "aa_gone");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s3") + " --resize 0 --skip-bad");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("train/aa_gone' is a dangling symbolic link"), std::string::npos) << r.out;

  root = two_class_tree("latin1");
  fs::copy(ok, root / "train" / "a" / "caf\xe9.JPEG");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s4") + " --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("caf\\xE9.JPEG' has a name that is not valid UTF-8"), std::string::npos) << r.out;
  fs::path utf8 = two_class_tree("utf8");
  fs::copy(ok, utf8 / "train" / "a" / "caf\xc3\xa9.JPEG");
  r = pack("-i " + q(utf8) + " -o " + q(out_ / "s5") + " --resize 0");
  EXPECT_EQ(r.rc, 0) << r.out;

  root = two_class_tree("nested");
  fs::create_directories(root / "train" / "c" / "sub");
  fs::copy(ok, root / "train" / "c" / "sub" / "y.JPEG");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s6") + " --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("train/c' holds only subfolders ('sub'"), std::string::npos) << r.out;
  fs::copy(ok, root / "train" / "c" / "z.JPEG");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s7") + " --resize 0");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("1 subfolder(s) inside the class folders"), std::string::npos) << r.out;

  root = two_class_tree("newline");
  std::ofstream(root / "train" / "a" / "two\nlines.JPEG").close();  // 0 bytes: bad
  r = pack("-i " + q(root) + " -o " + q(out_ / "s8") + " --resize 0 --skip-bad");
  EXPECT_EQ(r.rc, 0) << r.out;
  std::ifstream rep8(out_ / "s8" / "bad_images.txt");
  std::vector<std::string> lines;
  for (std::string l; std::getline(rep8, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].substr(0, lines[0].find('\t')), (root / "train" / "a").string() + "/two\\nlines.JPEG");
}

// Nothing in the input vanishes without a word. A FIFO, a link to /dev/null (a character device) or
// a socket in a class folder is not an image file and is never opened (a FIFO would block the run):
// it is a bad image, named with what it is (an error, or with --skip-bad a report line). A symbolic
// link loop is called a loop, not a link whose target is missing. A tree whose validation folder is
// not named val/ packs train with a note saying that no val split was found, where it looked and
// what it found there; --splits val then is an error naming the folder.
TEST_F(PackTest, SpecialFilesLoopsAndMissingValAreNamed) {
  const fs::path ok = good_jpeg();
  fs::path root = two_class_tree("fifo");
  ASSERT_EQ(::mkfifo((root / "train" / "a" / "pipe.JPEG").c_str(), 0644), 0);
  auto r = pack("-i " + q(root) + " -o " + q(out_ / "s1") + " --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("train/a/pipe.JPEG' is a FIFO (named pipe), not an image file"), std::string::npos) << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "s1"));
  r = pack("-i " + q(root) + " -o " + q(out_ / "s2") + " --resize 0 --skip-bad");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("rejected 1"), std::string::npos) << r.out;
  EXPECT_EQ(first_bad_image("s2"), (root / "train" / "a" / "pipe.JPEG").string());

  root = two_class_tree("devnull");
  fs::create_symlink("/dev/null", root / "train" / "b" / "null.JPEG");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s3") + " --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("train/b/null.JPEG' (a symbolic link to '/dev/null') is a character device, not an image file"),
            std::string::npos) << r.out;

  root = two_class_tree("loop");
  fs::create_symlink("loop.JPEG", root / "train" / "a" / "loop.JPEG");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s4") + " --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("train/a/loop.JPEG' is a symbolic link loop"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("dangling"), std::string::npos) << r.out;
  fs::remove(root / "train" / "a" / "loop.JPEG");
  fs::create_symlink("c2", root / "train" / "c1");
  fs::create_symlink("c1", root / "train" / "c2");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s5") + " --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("train/c1' is a symbolic link loop"), std::string::npos) << r.out;

  root = two_class_tree("validation");
  fs::create_directories(root / "validation" / "a");
  fs::copy(ok, root / "validation" / "a" / "v.JPEG");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s6") + " --resize 0");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("no val split: '" + (root / "val").string() + "' does not exist"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'validation'"), std::string::npos) << r.out;
  EXPECT_EQ(shards("s6", "train").size(), 1u);
  r = pack("-i " + q(root) + " -o " + q(out_ / "s7") + " --resize 0 --splits val");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find((root / "val").string()), std::string::npos) << r.out;
}

// Kaggle's CSV: two rows giving one image different labels, and rows whose image file is missing,
// stop the run naming them (with --skip-bad the missing ones are reported as bad images).
TEST_F(PackTest, KaggleCsvIsChecked) {
  const fs::path k = out_ / "k";
  fs::create_directories(k);
  fs::copy(in("kaggle"), k, fs::copy_options::recursive);
  const fs::path csv = k / "LOC_val_solution.csv";
  std::string text;
  {
    std::ifstream f(csv);
    text.assign(std::istreambuf_iterator<char>(f), {});
  }
  std::ofstream(csv) << text << "ILSVRC2012_val_00000001,zebra 1 2 3 4\nILSVRC2012_val_00000001,apple 1 2 3 4\n";
  auto r = pack("-i " + q(k) + " -o " + q(out_ / "s1") + " --splits val --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("image 'ILSVRC2012_val_00000001' is labelled '"), std::string::npos) << r.out;
  std::ofstream(csv) << text;
  fs::remove(k / "val" / "ILSVRC2012_val_00000003.JPEG");
  fs::remove(k / "val" / "ILSVRC2012_val_00000007.JPEG");
  r = pack("-i " + q(k) + " -o " + q(out_ / "s2") + " --splits val --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("lists 2 image(s) with no file"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ILSVRC2012_val_00000003, ILSVRC2012_val_00000007"), std::string::npos) << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "s2"));
  r = pack("-i " + q(k) + " -o " + q(out_ / "s3") + " --splits val --resize 0 --skip-bad");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("rejected 2"), std::string::npos) << r.out;
  EXPECT_EQ(ShardReader(shards("s3", "val")[0]).size(), 10);
}

// --skip-bad with every image of a split bad: no empty shard (which inspect_shards and the trainer
// would take for a data set), but an error naming the split; the report still lists the images.
TEST_F(PackTest, SkipBadWithNothingLeftIsAnError) {
  const fs::path root = out_ / "in";
  fs::create_directories(root / "train" / "a");
  for (std::string n : {"x.JPEG", "y.JPEG"}) std::ofstream(root / "train" / "a" / n).close();
  auto r = pack("-i " + q(root) + " -o " + q(out_ / "s") + " --resize 0 --skip-bad");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("all 2 images of 'train-00000-of-00001.h5' (split 'train') are bad (unreadable"), std::string::npos)
      << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "s"));
  std::ifstream rep(out_ / "s" / "bad_images.txt");
  int lines = 0;
  for (std::string l; std::getline(rep, l);) ++lines;
  EXPECT_EQ(lines, 2);
  // A shard holding only images known bad before decoding (here a dangling link, shard 1's only
  // image) stops the run before any shard is written, not after shard 0.
  const fs::path root2 = out_ / "in2";
  fs::create_directories(root2 / "train" / "a");
  fs::copy(in("bad") / "train" / "alpha" / "ok_0.JPEG", root2 / "train" / "a" / "x.JPEG");
  fs::create_symlink("/nonexistent/img.JPEG", root2 / "train" / "a" / "z_gone.JPEG");
  r = pack("-i " + q(root2) + " -o " + q(out_ / "s2") + " --resize 0 --skip-bad --shards 2");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("all 1 images of 'train-00001-of-00002.h5' (split 'train') are unreadable"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("z_gone.JPEG' is a dangling symbolic link"), std::string::npos) << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "s2"));
}

// An unwritable --bad-report stops the run before any shard exists (it used to fail after the shard
// was renamed, and a rerun then skipped the shard and never reported its bad images).
TEST_F(PackTest, UnwritableBadReportFailsBeforeAnyWork) {
  const fs::path rp = out_ / "no_such_dir" / "bad.txt";
  auto r = pack("-i " + q(in("bad")) + " -o " + q(out_ / "s") + " --skip-bad --max-pixels 4000000 --bad-report " + q(rp));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find(rp.string()), std::string::npos) << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "s"));
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "s2") + " --bad-report " + q(out_ / "b.txt"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("only written with --skip-bad"), std::string::npos) << r.out;
}

TEST_F(PackTest, BadLayoutsAndOptionsGiveClearErrors) {
  auto r = pack("-i " + q(out_ / "nope") + " -o " + q(out_ / "s"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("nope"), std::string::npos) << r.out;
  // Empty class folder.
  fs::path root = out_ / "empty_class";
  fs::create_directories(root / "train" / "a");
  fs::create_directories(root / "train" / "b");
  fs::copy(in("bad") / "train" / "alpha" / "ok_0.JPEG", root / "train" / "a" / "x.JPEG");
  r = pack("-i " + q(root) + " -o " + q(out_ / "s"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("train/b' is empty"), std::string::npos) << r.out;
  // Only hidden files (a macOS .DS_Store): not "empty" to the user who sees a file there.
  std::ofstream(root / "train" / "b" / ".DS_Store") << "x";
  r = pack("-i " + q(root) + " -o " + q(out_ / "s"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("train/b' has no visible files (only 1 hidden one(s)"), std::string::npos) << r.out;
  // Flat val/ without its CSV.
  fs::path flat = out_ / "flat";
  fs::create_directories(flat / "train" / "a");
  fs::create_directories(flat / "val");
  fs::copy(in("bad") / "train" / "alpha" / "ok_0.JPEG", flat / "train" / "a" / "x.JPEG");
  fs::copy(in("bad") / "train" / "alpha" / "ok_1.JPEG", flat / "val" / "v.JPEG");
  r = pack("-i " + q(flat) + " -o " + q(out_ / "s2"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("--val-csv"), std::string::npos) << r.out;
  // Output under a regular file.
  std::ofstream(out_ / "afile") << "x";
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "afile" / "sub"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("afile"), std::string::npos) << r.out;
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "s3") + " --encoding png");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("--encoding"), std::string::npos) << r.out;
  r = run(kPack + " --help");
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("--skip-bad"), std::string::npos);
}

// A full volume (needs root and mount rights, else skipped). 80 images on 256 KiB: they fit in the
// writer's buffer and the disk fills when the shard is committed (the flush); 300 images on 512 KiB:
// it fills when the first 256 are written. Either way: the write error, exit status 1 (not a crash
// in HDF5's clean-up on the way out), and no shard or partial file left.
TEST_F(PackTest, FullDiskFailsCleanly) {
  struct Case {
    int per_class;
    std::string size, where;
  };
  for (const Case& c : {Case{40, "256k", "cannot flush"}, Case{150, "512k", "cannot write images"}}) {
    const fs::path big = out_ / ("big_" + c.size);
    make_big_tree(big, 2, c.per_class);
    fs::path mnt = out_ / ("tiny_" + c.size);
    fs::create_directories(mnt);
    if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, ("size=" + c.size).c_str()) != 0)
      GTEST_SKIP() << "cannot mount a tmpfs here";
    auto r = pack("-i " + q(big) + " -o " + q(mnt / "s") + " --resize 0");
    std::vector<std::string> left;
    for (auto& e : fs::directory_iterator(mnt / "s")) left.push_back(e.path().filename().string());
    umount(mnt.c_str());
    EXPECT_EQ(r.rc, 1) << c.size << ": " << r.out;
    EXPECT_NE(r.out.find(c.where), std::string::npos) << c.size << ": " << r.out;
    EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << c.size << ": " << r.out;
    for (const auto& n : left) EXPECT_EQ(n.find(".h5"), std::string::npos) << c.size << ": " << n << " left behind";
  }
}

TEST_F(PackTest, InspectShardsChecksEveryImage) {
  auto r = pack("-i " + q(in("good")) + " -o " + q(out_ / "s") + " --shards 2 --verify");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("OK"), std::string::npos);
  r = run(kInspect + " " + q(out_ / "s"));
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("total train: 45 images, 5 classes, 7..11 per class"), std::string::npos) << r.out;
  auto files = shards("s", "train");
  // Standard tools read the shards: h5py + PIL decode an image and find its class; h5dump lists them.
  const std::string py =
      "import h5py,io,sys\nfrom PIL import Image\nf=h5py.File(sys.argv[1],'r')\n"
      "assert f.attrs['format']=='resnet18-ddp-shard' and f.attrs['format_version']==1\n"
      "assert f['images'].shape[0]==f.attrs['num_images']==f['labels'].shape[0]\n"
      "im=Image.open(io.BytesIO(f['images'][0].tobytes())); im.load()\n"
      "print('H5PY', f['filenames'][0].decode().split('/')[0], f['classes'][f['labels'][0]].decode(), im.size[0] > 0)\n";
  std::ofstream(out_ / "read.py") << py;
  r = run("/usr/bin/python3 " + q(out_ / "read.py") + " " + q(files[0]));
  if (run("/usr/bin/python3 -c 'import h5py'").rc == 0) {
    EXPECT_EQ(r.rc, 0) << r.out;
    std::istringstream ls(r.out.substr(r.out.find("H5PY")));
    std::string tag, folder, cls, ok;
    ls >> tag >> folder >> cls >> ok;
    EXPECT_EQ(folder, cls);
    EXPECT_EQ(ok, "True");
  }
  if (run("command -v h5dump").rc == 0) {
    r = run("h5dump -A " + q(files[0]));
    EXPECT_EQ(r.rc, 0) << r.out;
    EXPECT_NE(r.out.find("resnet18-ddp-shard"), std::string::npos);
  }
  // A damaged copy (truncated) is reported with its name.
  fs::copy(files[0], out_ / "cut.h5");
  fs::resize_file(out_ / "cut.h5", fs::file_size(out_ / "cut.h5") / 2);
  r = run(kInspect + " " + q(out_ / "cut.h5"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("cut.h5"), std::string::npos) << r.out;
}

// A bad image in shard 1 stops the run; shard 0, completed before, stays (a rerun skips it).
// inspect_shards then reports the set as incomplete (unless --allow-incomplete), and it also fails
// a directory mixing two sets, a shard under another shard's name, and counts a file listed twice
// once.
TEST_F(PackTest, InspectShardsChecksTheSet) {
  const fs::path root = out_ / "in";
  fs::create_directories(root / "train" / "alpha");
  // Sorted, file k of the class goes to shard k mod 2: the empty file is shard 1's first.
  fs::copy(in("bad") / "train" / "alpha" / "ok_0.JPEG", root / "train" / "alpha" / "a.JPEG");
  std::ofstream(root / "train" / "alpha" / "b.JPEG").close();
  fs::copy(in("bad") / "train" / "alpha" / "ok_1.JPEG", root / "train" / "alpha" / "c.JPEG");
  const fs::path o = out_ / "half";
  auto r = pack("-i " + q(root) + " -o " + q(o) + " --shards 2 --resize 0");
  ASSERT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("b.JPEG"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(o / shard_file_name("train", 0, 2)));
  EXPECT_FALSE(fs::exists(o / (shard_file_name("train", 1, 2) + kPartialSuffix)));
  r = run(kInspect + " " + q(o));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("1 of 2 shards missing: train-00001-of-00002.h5"), std::string::npos) << r.out;
  r = run(kInspect + " --allow-incomplete " + q(o));
  EXPECT_EQ(r.rc, 0) << r.out;
  // One shard file named on its own is checked as it is: its set's other shard is a note, not an error.
  r = run(kInspect + " " + q(o / shard_file_name("train", 0, 2)));
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("note: split 'train': 1 of 2 shards missing"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("--allow-incomplete:"), std::string::npos) << "credits a flag not given:\n" << r.out;
  // An unfinished shard (pack_imagenet's NAME.h5.partial, as an interrupted run leaves it): named on
  // its own it is refused; a directory holding only such files says so.
  const fs::path unfinished = out_ / "unfinished";
  fs::create_directories(unfinished);
  fs::copy_file(o / shard_file_name("train", 0, 2), unfinished / (shard_file_name("train", 0, 2) + kPartialSuffix));
  r = run(kInspect + " " + q(unfinished / (shard_file_name("train", 0, 2) + kPartialSuffix)));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("a shard pack_imagenet has not finished"), std::string::npos) << r.out;
  r = run(kInspect + " " + q(unfinished));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("1 unfinished *.partial shard(s)"), std::string::npos) << r.out;

  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "two") + " --splits train --shards 2 --resize 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "one") + " --splits train --resize 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  const fs::path s0 = out_ / "two" / shard_file_name("train", 0, 2);
  r = run(kInspect + " --no-decode " + q(out_ / "two") + " " + q(s0));
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("total train: 45 images"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("listed twice"), std::string::npos) << r.out;
  // Two sets in one directory.
  fs::copy(out_ / "one" / shard_file_name("train", 0, 1), out_ / "two");
  r = run(kInspect + " --no-decode " + q(out_ / "two"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("mixes shard sets"), std::string::npos) << r.out;
  fs::remove(out_ / "two" / shard_file_name("train", 0, 1));
  // Shard 0 copied over shard 1's name: the name disagrees with the attributes, and shard 0 is
  // there twice while shard 1 is not there at all.
  fs::copy(s0, out_ / "two" / shard_file_name("train", 1, 2), fs::copy_options::overwrite_existing);
  r = run(kInspect + " --no-decode " + q(out_ / "two"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("attributes say shard 0 of 2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("in more than one file"), std::string::npos) << r.out;
}

// Every shard in one --output shares one class list, label for label. A split packed with another
// list next to shards of another split (here: the same classes in reverse order, then one class
// more) is refused before anything is written, naming the shard, the first class that differs and
// what to do.
TEST_F(PackTest, ClassListMustMatchOtherSplits) {
  const fs::path o = out_ / "m";
  auto r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits train --resize 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  const std::string train0 = (o / shard_file_name("train", 0, 1)).string();
  {
    std::ofstream f(out_ / "rev.txt");
    for (auto c = kClasses.rbegin(); c != kClasses.rend(); ++c) f << *c << "\n";
    std::ofstream g(out_ / "more.txt");
    for (const auto& c : kClasses) g << c << "\n";
    g << "zz_extra\n";
  }
  r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits val --resize 0 --class-index " + q(out_ / "rev.txt"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find(train0), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("class 0 is 'apple' there but 'zebra' in this run"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--class-index"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("another --output"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(o / shard_file_name("val", 0, 1)));
  EXPECT_FALSE(fs::exists(o / (shard_file_name("val", 0, 1) + kPartialSuffix)));
  r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits val --resize 0 --class-index " + q(out_ / "more.txt"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("this run has class 5 'zz_extra', which it lacks"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(o / shard_file_name("val", 0, 1)));
  // The same list (from val's own folders, or from a --class-index in that order) is fine.
  r = pack("-i " + q(in("good")) + " -o " + q(o) + " --splits val --resize 0");
  EXPECT_EQ(r.rc, 0) << r.out;
  r = run(kInspect + " --no-decode " + q(o));
  EXPECT_EQ(r.rc, 0) << r.out;
}

// A per-image failure names its file, whatever part of the work failed: a 5000x1 strip resized to
// a shorter side of 32 would be 160000x32, past JPEG's 65500-pixel limit. Such an image is bad
// input: it stops the run (naming it), and --skip-bad leaves it out and reports it.
TEST_F(PackTest, ImageFailuresNameTheFile) {
  const fs::path root = out_ / "in";
  fs::create_directories(root / "train" / "a");
  fs::copy(in("bad") / "train" / "alpha" / "ok_0.JPEG", root / "train" / "a" / "ok.JPEG");
  std::vector<uint8_t> px(5000 * 3, 128);
  auto j = encode_jpeg(px.data(), 5000, 1, 90);
  std::ofstream(root / "train" / "a" / "strip.JPEG", std::ios::binary)
      .write(reinterpret_cast<const char*>(j.data()), static_cast<std::streamsize>(j.size()));
  const std::string strip = (root / "train" / "a" / "strip.JPEG").string();
  auto r = pack("-i " + q(root) + " -o " + q(out_ / "s") + " --resize 32 --allow-upscale");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("'" + strip + "'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("65500"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--skip-bad"), std::string::npos) << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "s"));
  r = pack("-i " + q(root) + " -o " + q(out_ / "s2") + " --resize 32 --allow-upscale --skip-bad");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("rejected 1"), std::string::npos) << r.out;
  // The summary names the reason: the strip is not unreadable.
  EXPECT_NE(r.out.find("1 bad image(s) left out (1 too elongated for a JPEG)"), std::string::npos) << r.out;
  std::ifstream rep(out_ / "s2" / "bad_images.txt");
  std::string line;
  std::getline(rep, line);
  EXPECT_EQ(line.substr(0, line.find('\t')), strip);
  EXPECT_NE(line.find("65500"), std::string::npos) << line;
}

// A class whose every image is rejected (--skip-bad) would be a class with no training images:
// in the train split that is an error unless --allow-empty-classes (the shards are kept, so the
// opt-in rerun packs nothing again); inspect_shards flags such a class too. In val it is a warning.
TEST_F(PackTest, ClassEmptiedBySkipBadIsAnError) {
  const fs::path root = out_ / "in";
  fs::create_directories(root);
  fs::copy(in("good") / "train", root / "train", fs::copy_options::recursive);
  fs::create_directories(root / "train" / "badcls");
  for (std::string n : {"a.JPEG", "b.JPEG"}) std::ofstream(root / "train" / "badcls" / n) << "not an image";
  const std::string base = "-i " + q(root) + " -o " + q(out_ / "s") + " --splits train --shards 2 --resize 0 --skip-bad";
  auto r = pack(base);
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("class 'badcls' (label 1): all 2 of its images were rejected"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--allow-empty-classes"), std::string::npos) << r.out;
  r = run(kInspect + " --no-decode " + q(out_ / "s"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("ERROR: split 'train': 1 class(es) with no images: badcls (label 1)"), std::string::npos)
      << r.out;
  r = run(kInspect + " --no-decode --allow-empty-classes " + q(out_ / "s"));
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("note: split 'train': 1 class(es) with no images: badcls"), std::string::npos) << r.out;
  r = pack(base + " --allow-empty-classes --verify");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("already complete"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("warning"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'badcls'"), std::string::npos) << r.out;
  // val: a warning naming the class.
  const fs::path vroot = out_ / "vin";
  fs::create_directories(vroot);
  fs::copy(in("good") / "train", vroot / "train", fs::copy_options::recursive);
  fs::copy(in("good") / "val", vroot / "val", fs::copy_options::recursive);
  for (const auto& e : fs::directory_iterator(vroot / "val" / "zebra")) std::ofstream(e.path()) << "junk";
  r = pack("-i " + q(vroot) + " -o " + q(out_ / "v") + " --splits val --resize 0 --skip-bad");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("warning: split 'val': class 'zebra' (label 4): all"), std::string::npos) << r.out;
}

// --encoding raw stores pixels: the summary says so (not "re-encoded"), and --quality is refused.
TEST_F(PackTest, RawSaysWhatItStores) {
  auto r = pack("-i " + q(in("good")) + " -o " + q(out_ / "s") + " --splits train --encoding raw --resize 32");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("written 45 (raw 32x32 pixels)"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("re-encoded"), std::string::npos) << r.out;
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "s2") + " --splits train --encoding raw --resize 32 --quality 50");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("--quality"), std::string::npos) << r.out;
  EXPECT_FALSE(has_shard_or_partial(out_ / "s2"));
  r = pack("-i " + q(in("good")) + " -o " + q(out_ / "s3") + " --splits train --resize 0 --quality 50");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("re-encoded"), std::string::npos) << r.out;
}

// Files saved with a UTF-8 byte order mark (Excel, Notepad): the mark is not part of the first
// line, so Kaggle's CSV header is still a header and the first class name still a class name.
TEST_F(PackTest, ByteOrderMarkIsIgnored) {
  const fs::path k = out_ / "k";
  fs::create_directories(k);
  fs::copy(in("kaggle"), k, fs::copy_options::recursive);
  const fs::path csv = k / "LOC_val_solution.csv";
  std::string text;
  {
    std::ifstream f(csv);
    text.assign(std::istreambuf_iterator<char>(f), {});
  }
  ASSERT_EQ(text.rfind("ImageId", 0), 0u);
  std::ofstream(csv) << "\xEF\xBB\xBF" << text;
  {
    std::ofstream f(out_ / "classes.txt");
    f << "\xEF\xBB\xBF";
    for (const auto& c : kClasses) f << c << "\n";
  }
  auto r = pack("-i " + q(k) + " -o " + q(out_ / "s") + " --resize 0 --class-index " + q(out_ / "classes.txt"));
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(ShardReader(shards("s", "val")[0]).size(), 12);
  EXPECT_EQ(ShardReader(shards("s", "train")[0]).meta().classes, kClasses);
}

// Messages that used to mislead: a val folder not in the class list says where the list came from
// (train/'s folders or the --class-index file); an output folder inside a split folder of the input
// (where it would become a class folder) is refused up front, naming both, before anything exists.
TEST_F(PackTest, ClassListSourceAndOutputInsideInput) {
  const fs::path root = out_ / "in";
  const fs::path ok = in("bad") / "train" / "alpha" / "ok_0.JPEG";
  for (std::string d : {"train/a", "train/b", "val/a", "val/b", "val/c"}) {
    fs::create_directories(root / d);
    fs::copy(ok, root / d / "x.JPEG");
  }
  auto r = pack("-i " + q(root) + " -o " + q(out_ / "s") + " --resize 0");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("val/c' is not in the class list (2 classes, from the class folders of '" +
                       (root / "train").string() + "')"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("check --class-index"), std::string::npos) << r.out;
  std::ofstream(out_ / "ci.txt") << "a\nb\n";
  r = pack("-i " + q(root) + " -o " + q(out_ / "s") + " --resize 0 --class-index " + q(out_ / "ci.txt"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("(2 classes, from --class-index '" + (out_ / "ci.txt").string() + "')"), std::string::npos)
      << r.out;
  fs::remove_all(root / "val" / "c");
  for (std::string sub : {"train/shards", "train/", "val/b/x"}) {
    const fs::path o = root / sub;
    r = pack("-i " + q(root) + " -o " + q(o) + " --resize 0");
    EXPECT_EQ(r.rc, 1) << sub << ": " << r.out;
    EXPECT_NE(r.out.find("is inside the input"), std::string::npos) << sub << ": " << r.out;
    EXPECT_NE(r.out.find(o.string()), std::string::npos) << sub << ": " << r.out;
    EXPECT_NE(r.out.find(root.string()), std::string::npos) << sub << ": " << r.out;
  }
  EXPECT_FALSE(fs::exists(root / "train" / "shards"));
  EXPECT_FALSE(fs::exists(root / "val" / "b" / "x"));
  // Beside the split folders is fine: nothing there is read as input.
  r = pack("-i " + q(root) + " -o " + q(root / "shards") + " --resize 0");
  EXPECT_EQ(r.rc, 0) << r.out;
  r = pack("-i " + q(root) + " -o " + q(root / "shards") + " --resize 0");
  EXPECT_EQ(r.rc, 0) << r.out;
}

// Fashion-MNIST -> JPEG tree -> pack with --class-index keeps the IDX labels.
TEST_F(PackTest, FashionMnistTreePacks) {
  const fs::path src = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(src / "train-labels-idx1-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto r = run(std::string(DDP_FMNIST_BIN) + " -o " + q(out_ / "fm") + " --limit-train 200 --limit-val 50");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(fs::exists(out_ / "fm" / "LOC_val_solution.csv"));
  r = run(std::string(DDP_FMNIST_BIN) + " -o " + q(out_ / "fm") + " --limit-val 50 --limit-train 200");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("already complete"), std::string::npos) << r.out;
  r = pack("-i " + q(out_ / "fm") + " -o " + q(out_ / "s") + " --shards 2 --encoding raw --resize 32 --allow-upscale "
           "--class-index " + q(out_ / "fm" / "classes.txt"));
  ASSERT_EQ(r.rc, 0) << r.out;
  // Truth from the IDX files, read by Python's gzip.
  auto t = run("/usr/bin/python3 -c \"import gzip,sys; d=gzip.open('" + (src / "train-labels-idx1-ubyte.gz").string() +
               "').read()[8:208]; e=gzip.open('" + (src / "t10k-labels-idx1-ubyte.gz").string() +
               "').read()[8:58]; print(' '.join(map(str,d))); print(' '.join(map(str,e)))\"");
  ASSERT_EQ(t.rc, 0) << t.out;
  std::istringstream ts(t.out);
  std::vector<int> tr(200), va(50);
  for (auto& x : tr) ts >> x;
  for (auto& x : va) ts >> x;
  auto check = [&](const std::string& split, const std::vector<int>& truth) {
    int64_t n = 0;
    for (const auto& f : shards("s", split)) {
      ShardReader s(f);
      EXPECT_EQ(s.meta().height, 32);
      auto names = s.filenames();
      for (size_t i = 0; i < names.size(); ++i, ++n) {
        const std::string& nm = names[i];
        const int idx = std::stoi(nm.substr(nm.size() - 10, 5));
        EXPECT_EQ(s.labels()[i], truth[static_cast<size_t>(idx)]) << nm;
      }
    }
    EXPECT_EQ(n, static_cast<int64_t>(truth.size()));
  };
  check("train", tr);
  check("val", va);
}

// fashion_mnist_to_jpeg on a small IDX set written by Python's gzip (12 random 28x28 images per split):
// damaged input, bad limits and reruns, without dataset-fashion-mnist.
class FashionMnistTool : public ::testing::Test {
 protected:
  fs::path dir_;
  void SetUp() override {
    dir_ = make_temp_dir("fmnist");
    fs::create_directories(dir_ / "in");
    auto r = run("/usr/bin/python3 -c \"import gzip, random, struct, sys\n"
                 "n = 12; g = random.Random(1); d = sys.argv[1]\n"
                 "img = bytes(g.randrange(256) for _ in range(n * 784)); lab = bytes(g.randrange(10) for _ in range(n))\n"
                 "for p in ('train', 't10k'):\n"
                 "    with gzip.open(d + '/' + p + '-images-idx3-ubyte.gz', 'wb') as f: f.write(struct.pack('>IIII', 0x803, n, 28, 28) + img)\n"
                 "    with gzip.open(d + '/' + p + '-labels-idx1-ubyte.gz', 'wb') as f: f.write(struct.pack('>II', 0x801, n) + lab)\n"
                 "\" " + q(dir_ / "in"));
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  RunResult convert(const std::string& args) {
    return run(std::string(DDP_FMNIST_BIN) + " -i " + q(dir_ / "in") + " -o " + q(dir_ / "out") + " " + args);
  }
  size_t train_files() const {
    size_t n = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir_ / "out" / "train")) n += e.is_regular_file();
    return n;
  }
};

// zlib's own words for the damage (not freed memory: gzerror's text used after gzclose printed random
// bytes), the file named, and no OUT.partial left behind.
TEST_F(FashionMnistTool, TruncatedGzipIsNamedAndLeavesNothing) {
  const fs::path gz = dir_ / "in" / "train-images-idx3-ubyte.gz";
  fs::resize_file(gz, fs::file_size(gz) / 2);
  auto r = convert("");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("cannot decompress '" + gz.string() + "': unexpected end of file"), std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "out.partial"));
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(FashionMnistTool, StrayArgumentsAreRefused) {
  auto r = convert("--limit-train 5 6");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("unexpected argument '6'"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "out"));
  EXPECT_FALSE(fs::exists(dir_ / "out.partial"));
}

TEST_F(FashionMnistTool, NegativeLimitsAreRefused) {
  auto r = convert("--limit-train -1");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("--limit-train must be >= 0"), std::string::npos) << r.out;
  r = convert("--limit-val -5");
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("--limit-val must be >= 0"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "out"));
  EXPECT_FALSE(fs::exists(dir_ / "out.partial"));
}

// A complete OUT is reused only for the same settings; other limits or quality are refused, naming
// both, and the existing tree is left as it was.
TEST_F(FashionMnistTool, RerunWithOtherSettingsIsRefused) {
  auto r = convert("--limit-train 5 --limit-val 3");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(train_files(), 5u);
  r = convert("--limit-val 3 --limit-train 5");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("already complete"), std::string::npos) << r.out;
  for (const std::string other : {"--limit-train 7 --limit-val 3", "", "--limit-train 5 --limit-val 3 --quality 90"}) {
    r = convert(other);
    EXPECT_EQ(r.rc, 1) << other << ": " << r.out;
    EXPECT_NE(r.out.find("made with --limit-train 5 --limit-val 3 --quality 95, not"), std::string::npos)
        << other << ": " << r.out;
  }
  EXPECT_EQ(train_files(), 5u);
}

}  // namespace
