// Checkpoint files: exact round trip, refusal of truncated / incomplete / foreign files with a
// message naming the file, keep-last-K, --resume auto's choice, and conversion to torchvision by
// tools/h5_to_torchvision.py (Debian's python3 with torch).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

#include "ddp/core/check.h"
#include "ddp/core/h5.h"
#include "ddp/core/rng.h"
#include "ddp/nn/resnet18.h"
#include "ddp/nn/weights_io.h"
#include "ddp/train/checkpoint.h"

namespace fs = std::filesystem;
using namespace ddp::train;

namespace {

CheckpointState random_state(const ddp::nn::ResNet18Spec& spec, uint64_t seed) {
  CheckpointState s;
  ddp::Rng r(seed, ddp::rng_stream::kTest);
  s.num_classes = spec.num_classes;
  s.params.resize(spec.param_count);
  s.momentum.resize(spec.param_count);
  s.buffers.resize(spec.buffer_count);
  for (auto& v : s.params) v = r.normal();
  for (auto& v : s.momentum) v = r.normal();
  for (auto& v : s.buffers) v = r.uniform(0.5f, 2.0f);
  s.rank_buffers.resize(4 * s.buffers.size());  // world_size 4, below
  for (auto& v : s.rank_buffers) v = r.uniform(0.5f, 2.0f);
  s.num_batches_tracked = 1234;
  s.momentum_initialised = true;
  s.epoch = 3;
  s.step_in_epoch = 17;
  s.global_step = 317;
  s.steps_per_epoch = 100;
  s.seed = 42;
  s.world_size = 4;
  s.batch_size = 32;
  s.train_images = 12800;
  s.scaler = {8192.0, 55, 3, true};
  s.config = "data = synthetic\nepochs = 9\n";
  s.rng = {{"shuffle_epoch", 3}, {"batches_done", 17}};
  for (int k = 0; k < spec.num_classes; ++k) s.classes.push_back("n0" + std::to_string(k) + "_\xc3\xa9t\xc3\xa9");
  return s;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("ckpt_test_" + std::to_string(::getpid()) + "_" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& n) const { return (dir_ / n).string(); }
  fs::path dir_;
  ddp::nn::ResNet18Spec spec_ = ddp::nn::make_resnet18_spec(10);
};

std::string load_error(const std::string& p, const ddp::nn::ResNet18Spec& spec) {
  try {
    load_checkpoint(p, spec);
  } catch (const ddp::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_F(CheckpointTest, RoundTripIsExact) {
  CheckpointState a = random_state(spec_, 1);
  std::string p = path(checkpoint_file_name(a.global_step));
  save_checkpoint(p, spec_, a);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  CheckpointState b = load_checkpoint(p, spec_);
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(a.momentum, b.momentum);
  EXPECT_EQ(a.buffers, b.buffers);
  EXPECT_EQ(a.rank_buffers, b.rank_buffers);
  EXPECT_EQ(a.num_batches_tracked, b.num_batches_tracked);
  EXPECT_EQ(a.momentum_initialised, b.momentum_initialised);
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.step_in_epoch, b.step_in_epoch);
  EXPECT_EQ(a.global_step, b.global_step);
  EXPECT_EQ(a.steps_per_epoch, b.steps_per_epoch);
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(a.world_size, b.world_size);
  EXPECT_EQ(a.batch_size, b.batch_size);
  EXPECT_EQ(a.train_images, b.train_images);
  EXPECT_EQ(a.scaler.scale, b.scaler.scale);
  EXPECT_EQ(a.scaler.good_steps, b.scaler.good_steps);
  EXPECT_EQ(a.scaler.skipped_steps, b.scaler.skipped_steps);
  EXPECT_EQ(a.scaler.dynamic, b.scaler.dynamic);
  EXPECT_EQ(a.config, b.config);
  EXPECT_EQ(a.rng.size(), b.rng.size());
  EXPECT_EQ(a.classes, b.classes);
  EXPECT_EQ(a.eval_pending, b.eval_pending);
  EXPECT_EQ(checkpoint_num_classes(p), 10);
  EXPECT_EQ(checkpoint_problem(p), "");
}

// eval_pending (an evaluation cut short by a stop: the resumed run evaluates first) round-trips;
// a file written before the attribute existed reads as false.
TEST_F(CheckpointTest, EvalPendingRoundTripsAndIsFalseInOlderFiles) {
  CheckpointState a = random_state(spec_, 2);
  a.eval_pending = true;
  const std::string p = path(checkpoint_file_name(a.global_step));
  save_checkpoint(p, spec_, a);
  EXPECT_TRUE(load_checkpoint(p, spec_).eval_pending);
  {
    ddp::h5::Handle f = ddp::h5::open_file(p, true);
    ASSERT_GE(H5Adelete(f, "eval_pending"), 0);
  }
  EXPECT_FALSE(load_checkpoint(p, spec_).eval_pending);
  EXPECT_EQ(checkpoint_problem(p), "");
}

TEST_F(CheckpointTest, ModelTensorsReadAsAWeightsFileWould) {
  // The model part uses the weights file layout: torchvision names at the root, PyTorch shapes.
  CheckpointState a = random_state(spec_, 2);
  std::string p = path("c.h5");
  save_checkpoint(p, spec_, a);
  ddp::h5::Handle f = ddp::h5::open_file(p);
  const auto& w = spec_.param("layer3.0.downsample.0.weight");
  std::vector<float> got(w.numel);
  ddp::h5::read_f32(f, w.name, got.data(), {256, 128, 1, 1});
  EXPECT_TRUE(std::equal(got.begin(), got.end(), a.params.begin() + w.offset));
}

TEST_F(CheckpointTest, LossScalingModeRoundTripsAndIsInferredForOlderFiles) {
  struct Case {
    LossScalerState saved;
    bool inferred;  // what a file without the loss_scale_dynamic attribute reads as
  };
  const Case cases[] = {{{1.0, 0, 0, false}, false},     // bf16 / fp32: a constant 1
                        {{32768.0, 12, 1, true}, true},  // fp16, moved off 2^16
                        {{1.0, 7, 0, true}, true}};      // fp16 at scale 1: its step count gives it away
  for (const auto& c : cases) {
    CheckpointState a = random_state(spec_, 3);
    a.scaler = c.saved;
    const std::string p = path("s.h5");
    save_checkpoint(p, spec_, a);
    EXPECT_EQ(load_checkpoint(p, spec_).scaler.dynamic, c.saved.dynamic) << "scale " << c.saved.scale;
    {
      ddp::h5::Handle f = ddp::h5::open_file(p, true);
      ASSERT_GE(H5Adelete(f, "loss_scale_dynamic"), 0);
    }
    EXPECT_EQ(load_checkpoint(p, spec_).scaler.dynamic, c.inferred) << "scale " << c.saved.scale << " (older file)";
  }
}

TEST_F(CheckpointTest, TruncatedFileIsRefusedNamingIt) {
  CheckpointState a = random_state(spec_, 3);
  std::string p = path("full.h5");
  save_checkpoint(p, spec_, a);
  std::string t = path("ckpt-0000000999.h5");
  {
    std::ifstream in(p, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(t, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  std::string e = load_error(t, spec_);
  EXPECT_NE(e.find(t), std::string::npos) << e;
  EXPECT_NE(checkpoint_problem(t), "");
}

TEST_F(CheckpointTest, ForeignFilesAreRefused) {
  // A weights file is not a checkpoint.
  std::string w = path("weights.h5");
  CheckpointState a = random_state(spec_, 4);
  ddp::nn::save_weights(w, spec_, a.params.data(), a.buffers.data(), 0);
  std::string e = load_error(w, spec_);
  EXPECT_NE(e.find("not a resnet18-ddp checkpoint"), std::string::npos) << e;
  // Not HDF5 at all.
  std::string txt = path("notes.h5");
  std::ofstream(txt) << "hello";
  e = load_error(txt, spec_);
  EXPECT_NE(e.find(txt), std::string::npos) << e;
  // Another class count.
  std::string p = path("c10.h5");
  save_checkpoint(p, spec_, a);
  e = load_error(p, ddp::nn::make_resnet18_spec(1000));
  EXPECT_NE(e.find("10 classes"), std::string::npos) << e;
}

TEST_F(CheckpointTest, IncompleteFileIsRefused) {
  CheckpointState a = random_state(spec_, 5);
  std::string p = path("ckpt-0000000005.h5");
  save_checkpoint(p, spec_, a);
  {
    ddp::h5::Handle f = ddp::h5::open_file(p, true);
    ddp::h5::set_attr(f, "complete", int64_t{0});
  }
  std::string e = load_error(p, spec_);
  EXPECT_NE(e.find("incomplete"), std::string::npos) << e;
}

TEST_F(CheckpointTest, KeepLastKAndResumeAutoPicksNewestComplete) {
  CheckpointState a = random_state(spec_, 6);
  for (int64_t step : {100, 200, 300, 400, 500}) {
    a.global_step = step;
    save_checkpoint(path(checkpoint_file_name(step)), spec_, a);
    prune_checkpoints(dir_.string(), 3, step);
  }
  auto all = list_checkpoints(dir_.string());
  ASSERT_EQ(all.size(), 3u);
  EXPECT_NE(all[0].find("0000000300"), std::string::npos);
  EXPECT_NE(all[2].find("0000000500"), std::string::npos);
  // The newest is damaged (e.g. a copy cut short): auto falls back to the one before it.
  { std::ofstream(path(checkpoint_file_name(600))) << "garbage"; }
  auto latest = find_latest_checkpoint(dir_.string());
  ASSERT_TRUE(latest);
  EXPECT_NE(latest->find("0000000500"), std::string::npos);
  EXPECT_FALSE(find_latest_checkpoint((dir_ / "empty").string()));
}

// The name decides which checkpoint --resume auto takes and which ones retention deletes: a file whose
// name disagrees with the global step it holds (renamed, or copied over another) was taken as the
// newest, and the run then refused the directory for holding a checkpoint newer than the one it
// resumed. It is skipped as a damaged one is, with a message naming it and both steps.
TEST_F(CheckpointTest, ACheckpointWhoseNameDisagreesWithItsStepIsSkipped) {
  CheckpointState a = random_state(spec_, 8);
  a.global_step = 32;
  save_checkpoint(path(checkpoint_file_name(32)), spec_, a);
  a.global_step = 11;
  save_checkpoint(path(checkpoint_file_name(99)), spec_, a);
  const std::string renamed = path(checkpoint_file_name(99));
  const std::string why = checkpoint_problem(renamed);
  EXPECT_NE(why.find(renamed), std::string::npos) << why;
  EXPECT_NE(why.find("holds global step 11 but its name says 99"), std::string::npos) << why;
  EXPECT_EQ(checkpoint_problem(path(checkpoint_file_name(32))), "");
  auto latest = find_latest_checkpoint(dir_.string());
  ASSERT_TRUE(latest);
  EXPECT_EQ(*latest, path(checkpoint_file_name(32)));
  // Under a name of another form the step is not checked (no name to disagree with).
  fs::rename(renamed, path("best.h5"));
  EXPECT_EQ(checkpoint_problem(path("best.h5")), "");
}

// A damaged or hand-edited file: NaN weights would surface steps later as "gradients are inf/NaN";
// a position no trainer writes would resume somewhere undefined.
TEST_F(CheckpointTest, NonFiniteValuesAndImpossiblePositionsAreRefused) {
  const auto& conv = spec_.param("layer2.0.conv1.weight");
  CheckpointState a = random_state(spec_, 9);
  a.params[conv.offset + 3] = std::numeric_limits<float>::quiet_NaN();
  save_checkpoint(path("nan.h5"), spec_, a);
  std::string e = load_error(path("nan.h5"), spec_);
  EXPECT_NE(e.find("'layer2.0.conv1.weight' holds inf or NaN"), std::string::npos) << e;
  CheckpointState b = random_state(spec_, 9);
  b.momentum[spec_.param("fc.bias").offset] = std::numeric_limits<float>::infinity();
  save_checkpoint(path("inf.h5"), spec_, b);
  e = load_error(path("inf.h5"), spec_);
  EXPECT_NE(e.find("the momentum of 'fc.bias' holds inf or NaN"), std::string::npos) << e;
  CheckpointState c = random_state(spec_, 9);
  for (const auto& [attr, value] : std::vector<std::pair<std::string, int64_t>>{
           {"step_in_epoch", 101}, {"steps_per_epoch", 0}, {"world_size", 0}, {"epoch", -1}}) {
    save_checkpoint(path("pos.h5"), spec_, c);
    {
      ddp::h5::Handle f = ddp::h5::open_file(path("pos.h5"), true);
      ddp::h5::set_attr(f, attr, value);
    }
    e = load_error(path("pos.h5"), spec_);
    EXPECT_NE(e.find("invalid training position"), std::string::npos) << attr << ": " << e;
  }
}

// A bit flipped on disk inside a tensor (storage, a copy) is caught by the tensor's Fletcher-32 checksum
// and named; without it the checkpoint would load other weights without a word.
TEST_F(CheckpointTest, AFlippedBitInATensorIsCaughtAndNamed) {
  CheckpointState a = random_state(spec_, 10);
  const std::string p = path("flip.h5");
  save_checkpoint(p, spec_, a);
  haddr_t at = 0;
  {
    ddp::h5::Handle f = ddp::h5::open_file(p);
    ddp::h5::Handle ds(H5Dopen2(f, "layer3.1.conv2.weight", H5P_DEFAULT));
    ASSERT_TRUE(ds.valid());
    hsize_t offset[4] = {0, 0, 0, 0};
    unsigned mask = 0;
    hsize_t size = 0;
    ASSERT_GE(H5Dget_chunk_info_by_coord(ds, offset, &mask, &at, &size), 0);
    ASSERT_GT(size, 1000u);
  }
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at + 1000));
    char c = 0;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(static_cast<std::streamoff>(at + 1000));
    f.write(&c, 1);
  }
  const std::string e = load_error(p, spec_);
  EXPECT_NE(e.find("layer3.1.conv2.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("damaged"), std::string::npos) << e;
}

// Files written before batch_size / train_images existed read them as 0 (unknown: not checked).
TEST_F(CheckpointTest, OlderFilesReadBatchAndImageCountAsUnknown) {
  CheckpointState a = random_state(spec_, 8);
  const std::string p = path("old.h5");
  save_checkpoint(p, spec_, a);
  {
    ddp::h5::Handle f = ddp::h5::open_file(p, true);
    ASSERT_GE(H5Adelete(f, "batch_size"), 0);
    ASSERT_GE(H5Adelete(f, "train_images"), 0);
  }
  CheckpointState b = load_checkpoint(p, spec_);
  EXPECT_EQ(b.batch_size, 0);
  EXPECT_EQ(b.train_images, 0);
  EXPECT_EQ(b.world_size, a.world_size);
}

// The class list: /classes as in the shards (h5py/h5dump read it); absent in files written before it
// (and from synthetic data): read as empty, not checked. A list of another length is a damaged file.
TEST_F(CheckpointTest, ClassListIsStoredAndOlderFilesHaveNone) {
  CheckpointState a = random_state(spec_, 9);
  const std::string p = path("c.h5");
  save_checkpoint(p, spec_, a);
  {
    ddp::h5::Handle f = ddp::h5::open_file(p);
    EXPECT_EQ(ddp::h5::read_strings(f, "classes"), a.classes);
  }
  {
    ddp::h5::Handle f = ddp::h5::open_file(p, true);
    ASSERT_GE(H5Ldelete(f, "classes", H5P_DEFAULT), 0);
    ddp::h5::write_strings(f, "classes", {"x", "y"});
  }
  const std::string e = load_error(p, spec_);
  EXPECT_NE(e.find("2 class names for 10 classes"), std::string::npos) << e;
  {
    ddp::h5::Handle f = ddp::h5::open_file(p, true);
    ASSERT_GE(H5Ldelete(f, "classes", H5P_DEFAULT), 0);
  }
  EXPECT_TRUE(load_checkpoint(p, spec_).classes.empty());
  a.classes.clear();  // synthetic data: no names, no dataset
  save_checkpoint(p, spec_, a);
  ddp::h5::Handle f = ddp::h5::open_file(p);
  EXPECT_FALSE(ddp::h5::exists(f, "classes"));
}

// Retention deletes only what is older than the checkpoint just written: files of later steps (another
// run's, or damaged ones) counted as "newest" made it delete the run's own checkpoints.
TEST_F(CheckpointTest, RetentionNeverDeletesTheCheckpointJustWritten) {
  CheckpointState a = random_state(spec_, 7);
  for (int64_t step : {40, 80}) {
    a.global_step = step;
    save_checkpoint(path(checkpoint_file_name(step)), spec_, a);
  }
  { std::ofstream(path(checkpoint_file_name(99))) << "junk"; }
  for (int64_t step : {1, 2, 3}) {
    a.global_step = step;
    save_checkpoint(path(checkpoint_file_name(step)), spec_, a);
    prune_checkpoints(dir_.string(), 2, step);
    EXPECT_TRUE(fs::exists(path(checkpoint_file_name(step)))) << "step " << step;
  }
  EXPECT_FALSE(fs::exists(path(checkpoint_file_name(1))));
  EXPECT_TRUE(fs::exists(path(checkpoint_file_name(2))));
  for (int64_t later : {40, 80, 99}) EXPECT_TRUE(fs::exists(path(checkpoint_file_name(later)))) << later;
  EXPECT_EQ(checkpoint_step("d/ckpt-0000000042.h5"), 42);
  EXPECT_EQ(checkpoint_step("ckpt-abc.h5"), -1);
  EXPECT_EQ(checkpoint_step("ckpt-0000000042.h5.tmp"), -1);
}

TEST_F(CheckpointTest, ConvertsToTorchvision) {
  if (std::system("/usr/bin/python3 -c 'import torch, torchvision, h5py' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "Debian python3 with torch/torchvision/h5py not installed (tools/setup installs them)";
  CheckpointState a = random_state(spec_, 7);
  std::string p = path("ckpt.h5"), pth = path("model.pth");
  save_checkpoint(p, spec_, a);
  std::string cmd = std::string("/usr/bin/python3 ") + DDP_SOURCE_DIR + "/tools/h5_to_torchvision.py " + p + " " + pth +
                    " >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  // Compare one tensor as torch sees it.
  std::string check = std::string("/usr/bin/python3 -c \"import torch; sd = torch.load('") + pth +
                      "'); import sys; sys.exit(0 if abs(float(sd['conv1.weight'][1,2,3,4]) - (" +
                      std::to_string(a.params[spec_.param("conv1.weight").offset + 1 * 147 + 2 * 49 + 3 * 7 + 4]) +
                      ")) < 1e-5 else 1)\"";
  EXPECT_EQ(std::system(check.c_str()), 0);
}
