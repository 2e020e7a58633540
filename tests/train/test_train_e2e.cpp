// train_resnet18 end to end on the CPU backend with synthetic data: exact resume (1 and 2 ranks),
// a 2-rank run under mpirun whose loss falls, SIGUSR1 -> checkpoint + exit 0 -> resume, the replica
// guard firing on a perturbed replica, clear errors for bad flags and for --backend cuda without a GPU,
// a damaged image inside a shard ending a 2-rank job at once with its name, and --init-weights from a
// checkpoint starting a new run with its weights and BN statistics, a checkpoint on a full disk, a
// checkpoint directory of another run refused, mid-epoch resume checks, --eval-only with another class count;
// class lists (train vs val shards, checkpoint vs data), sizes above the shards', the summary's time per
// epoch after a mid-epoch resume, --eval-only on synthetic data; checkpoint time left out of training
// figures, every trained step logged once across a stop and resume, --eval-only's summary; a stop
// during an evaluation (interrupted, nothing partial recorded, evaluated first on resume), the summary's
// steps of this run, top-5 omitted with 5 classes or fewer, replica-check time left out of training time;
// a zero classifier evaluated at chance (ties by class index) and NaN weights refused.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "ddp/core/h5.h"
#include "ddp/core/rng.h"
#include "ddp/core/tensor.h"
#include "ddp/data/image.h"
#include "ddp/data/shard.h"
#include "ddp/nn/resnet18.h"
#include "ddp/nn/weights_io.h"
#include "ddp/train/checkpoint.h"

namespace fs = std::filesystem;
using namespace ddp::train;

namespace {

struct Run {
  int rc = -1;
  std::string out;
};

Run sh(const std::string& cmd) {
  Run r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  return r;
}

std::string mpirun(int np) {
  return std::string(MPIEXEC) + " --allow-run-as-root --oversubscribe --bind-to none -np " + std::to_string(np) +
         " --mca btl_vader_single_copy_mechanism none ";
}

// A small, fast recipe: 64 synthetic 32x32 images, batch 8 per rank.
const std::string kRecipe =
    std::string(TRAIN_RESNET18) +
    " --data synthetic --synthetic-size 64 --synthetic-classes 4 --image-size 32 --backend cpu --threads 1"
    " --batch-size 8 --lr 0.05 --nesterov --wd 5e-4 --no-wd-bn-bias --label-smoothing 0.1"
    " --lr-schedule onecycle --seed 3 --log-every 1 --progress lines --no-eval ";

class TrainE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("train_e2e_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string d(const std::string& n) const { return (dir_ / n).string(); }
  // Run `cmd` uninterrupted to `total` steps (dir a), and stopped at `stop` then resumed with
  // --resume auto to `total` (dir b, the resumed run's log must contain `resumed_msg`); the two final
  // checkpoints must hold the same bits (4-class models).
  void expect_resume_bit_exact(const std::string& cmd, int stop, int total, const std::string& resumed_msg);
  // Writes raw shards into shards/ and trains one epoch (9 steps) on them, evaluated at its end and
  // checkpointed into ckpt/; sets recipe_ (the command line for more runs on the same data),
  // trained_ (that run's eval record) and ckpt_ (its final checkpoint).
  void train_one_epoch_on_shards();
  // Starts `cmd` in the background (its output into log), waits up to 3 minutes until `file` holds
  // `ready`, then runs the bash commands `then` ($pid is the started process). monitor: job control on
  // (set -m), else a background process of a script starts with SIGINT ignored.
  struct Background {
    std::string out, log;  // what `then` printed; what `cmd` printed
  };
  Background run_in_background(const std::string& cmd, const std::string& file, const std::string& ready,
                               const std::string& then, bool monitor = false);
  fs::path dir_;
  std::string recipe_, trained_, ckpt_;
};

void expect_same_state(const std::string& a, const std::string& b, int classes) {
  auto spec = ddp::nn::make_resnet18_spec(classes);
  CheckpointState x = load_checkpoint(a, spec), y = load_checkpoint(b, spec);
  EXPECT_EQ(x.global_step, y.global_step);
  EXPECT_EQ(x.epoch, y.epoch);
  EXPECT_EQ(x.step_in_epoch, y.step_in_epoch);
  // Bit-identical, not close: the CPU backend is deterministic for a fixed thread count.
  EXPECT_TRUE(x.params == y.params) << a << " vs " << b << ": parameters differ";
  EXPECT_TRUE(x.momentum == y.momentum) << "momentum differs";
  EXPECT_TRUE(x.buffers == y.buffers) << "BN buffers differ";
  EXPECT_EQ(x.num_batches_tracked, y.num_batches_tracked);
}

// The metrics file's resume record against the console line of the run that wrote it, "resumed from
// FILE: epoch N, step S of the epoch, global step G": the same N and S (epoch_number, step_in_epoch), G
// and FILE, and "epoch" the same place in epochs done, (N - 1) + S / steps per epoch (the train records'
// scale).
void expect_resume_record_matches_log(const std::string& jsonl_text, const std::string& log, int steps_per_epoch) {
  std::smatch c;
  ASSERT_TRUE(std::regex_search(
      log, c, std::regex(R"re(resumed from (\S+): epoch (\d+), step (\d+) of the epoch, global step (\d+))re")))
      << log;
  const std::string from = c[1], n = c[2], s = c[3], g = c[4];
  std::smatch r;
  ASSERT_TRUE(std::regex_search(jsonl_text, r,
                                std::regex(R"re(\{"type": "resume", "step": )re" + g +
                                           R"re(, "epoch": ([^,]+), "epoch_number": (\d+), "step_in_epoch": (\d+), )re"
                                           R"re("from": "([^"]*)"\})re")))
      << "no resume record for global step " << g << " with epoch_number and step_in_epoch:\n" << jsonl_text;
  EXPECT_EQ(r[2].str(), n) << r[0];
  EXPECT_EQ(r[3].str(), s) << r[0];
  EXPECT_EQ(r[4].str(), from) << r[0];
  EXPECT_NEAR(std::stod(r[1]), std::stoi(n) - 1 + std::stod(s) / steps_per_epoch, 1e-6) << r[0];
}

std::vector<double> train_losses(const std::string& jsonl) {
  std::vector<double> v;
  std::ifstream f(jsonl);
  std::string line;
  std::regex re("\"type\": \"train\".*\"loss\": ([0-9.eE+-]+)");
  std::smatch m;
  while (std::getline(f, line))
    if (std::regex_search(line, m, re)) v.push_back(std::stod(m[1]));
  return v;
}

// One train shard of `train_n` and one val shard of `val_n` random raw 36x36 images, `classes` classes
// (4 unless given); image k has label k % classes.
void write_raw_shards(const std::string& dir, int train_n = 72, int val_n = 20, int classes = 4) {
  fs::create_directories(dir);
  ddp::Rng rng(11, ddp::rng_stream::kTest);
  for (const std::string split : {"train", "val"}) {
    ddp::data::ShardMeta m;
    m.split = split;
    m.encoding = "raw";
    m.height = m.width = 36;
    m.jpeg_quality = 0;
    m.resize_shorter = 0;
    m.classes.clear();
    for (int c = 0; c < classes; ++c) m.classes.push_back(std::string(1, static_cast<char>('a' + c)));
    ddp::data::ShardWriter w(dir + "/" + ddp::data::shard_file_name(split, 0, 1), m);
    std::vector<uint8_t> px(36 * 36 * 3);
    for (int k = 0; k < (split == "train" ? train_n : val_n); ++k) {
      for (auto& v : px) v = static_cast<uint8_t>(rng.next_u32());
      w.append_raw(px.data(), k % classes, "img" + std::to_string(k));
    }
    w.commit();
  }
}

// The last "eval" record of a metrics file, or "" when there is none.
std::string last_eval_record(const std::string& jsonl) {
  std::ifstream f(jsonl);
  std::string line, last;
  while (std::getline(f, line))
    if (line.find("\"type\": \"eval\"") != std::string::npos) last = line;
  return last;
}

// The records of one "type" in a metrics file, in order.
std::vector<std::string> records(const std::string& jsonl, const std::string& type) {
  std::ifstream f(jsonl);
  std::string line;
  std::vector<std::string> v;
  while (std::getline(f, line))
    if (line.find("\"type\": \"" + type + "\"") != std::string::npos) v.push_back(line);
  return v;
}

std::string field(const std::string& record, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\": ([^,}]+)");
  return std::regex_search(record, m, re) ? m[1].str() : std::string();
}

std::string ckpt_name(int step) {
  char b[32];
  std::snprintf(b, sizeof b, "ckpt-%010d.h5", step);
  return b;
}

}  // namespace

void TrainE2E::expect_resume_bit_exact(const std::string& cmd, int stop, int total, const std::string& resumed_msg) {
  const std::string to_total = "--max-steps " + std::to_string(total) + " --checkpoint-dir ";
  auto a = sh(cmd + to_total + d("a"));
  ASSERT_EQ(a.rc, 0) << a.out;
  auto b1 = sh(cmd + "--max-steps " + std::to_string(stop) + " --checkpoint-dir " + d("b"));
  ASSERT_EQ(b1.rc, 0) << b1.out;
  ASSERT_TRUE(fs::exists(d("b/" + ckpt_name(stop)))) << b1.out;
  auto b2 = sh(cmd + to_total + d("b") + " --resume auto");
  ASSERT_EQ(b2.rc, 0) << b2.out;
  EXPECT_NE(b2.out.find(resumed_msg), std::string::npos) << b2.out;
  expect_same_state(d("a/" + ckpt_name(total)), d("b/" + ckpt_name(total)), 4);
}

// A training record in the JSONL file: training is under way.
const std::string kTrainRecord = "\"type\": \"train\"";

TrainE2E::Background TrainE2E::run_in_background(const std::string& cmd, const std::string& file,
                                                 const std::string& ready, const std::string& then, bool monitor) {
  const std::string script = std::string(monitor ? "set -m; " : "") + cmd + " > " + d("log") + " 2>&1 & pid=$!; " +
                             "for i in $(seq 1 1800); do grep -q '" + ready + "' " + file +
                             " 2>/dev/null && break; sleep 0.1; done; " + then;
  Background b;
  b.out = sh("bash -c '" + std::regex_replace(script, std::regex("'"), "'\\''") + "'").out;
  std::ifstream lf(d("log"));
  b.log.assign(std::istreambuf_iterator<char>(lf), std::istreambuf_iterator<char>());
  return b;
}

void TrainE2E::train_one_epoch_on_shards() {
  write_raw_shards(d("shards"));
  recipe_ = std::string(TRAIN_RESNET18) + " --data " + d("shards") +
            " --image-size 32 --backend cpu --threads 1 --batch-size 8 --lr 0.05 --seed 4"
            " --label-smoothing 0.1 --log-every 1 --progress lines --epochs 1 ";
  auto a = sh(recipe_ + "--checkpoint-dir " + d("ckpt") + " --jsonl " + d("train.jsonl"));
  ASSERT_EQ(a.rc, 0) << a.out;
  trained_ = last_eval_record(d("train.jsonl"));
  ASSERT_FALSE(trained_.empty()) << a.out;
  ckpt_ = d("ckpt/" + ckpt_name(9));
  ASSERT_TRUE(fs::exists(ckpt_)) << a.out;
}

TEST_F(TrainE2E, ResumeMidEpochIsBitExactOneRank) {
  // 8 steps per epoch; the interrupted run stops at step 11 (epoch 2, step 3) and resumes to 20.
  expect_resume_bit_exact(kRecipe + "--epochs 3 ", 11, 20, "resumed from");
}

TEST_F(TrainE2E, ResumeMidEpochOnShardsIsBitExact) {
  // The loader path (random crops + flips from shards): the resumed run starts the epoch at the
  // checkpoint's batch without decoding the batches before it, and must land on the same bits.
  // 72 raw 36x36 images, batch 8 -> 9 steps per epoch; stop at step 13 (epoch 2, step 4).
  write_raw_shards(d("shards"));
  const std::string recipe = std::string(TRAIN_RESNET18) + " --data " + d("shards") +
                             " --image-size 32 --backend cpu --threads 1 --batch-size 8 --lr 0.05 --seed 4"
                             " --random-crop on --min-crop-scale 0.3 --flip on --log-every 1 --progress lines"
                             " --no-eval --epochs 3 ";
  expect_resume_bit_exact(recipe, 13, 22, "step 4 of the epoch");
}

TEST_F(TrainE2E, EvalOnlyReproducesTheRunsEvaluationAndFlipAveragesMirrors) {
  // One epoch (9 steps) on shards, evaluated at its end and checkpointed; --eval-only on that
  // checkpoint must give the same record bit for bit (same weights, same BN statistics, every val
  // image once), and --eval-flip another one over the same 20 images.
  ASSERT_NO_FATAL_FAILURE(train_one_epoch_on_shards());
  const std::string &recipe = recipe_, &trained = trained_, &ckpt = ckpt_;

  auto b = sh(recipe + "--eval-only --resume " + ckpt + " --jsonl " + d("eval.jsonl"));
  ASSERT_EQ(b.rc, 0) << b.out;
  EXPECT_NE(b.out.find("--eval-only: evaluating the weights at global step 9"), std::string::npos) << b.out;
  const std::string plain = last_eval_record(d("eval.jsonl"));
  for (const char* k : {"top1", "top5", "loss", "images", "epoch", "step"})
    EXPECT_EQ(field(plain, k), field(trained, k)) << k << "\n" << plain << "\n" << trained;
  EXPECT_EQ(field(plain, "flip"), "false");
  EXPECT_FALSE(fs::exists(d("ckpt/" + ckpt_name(10)))) << "--eval-only must not train or checkpoint";

  auto c = sh(recipe + "--eval-only --eval-flip on --resume " + ckpt + " --jsonl " + d("flip.jsonl"));
  ASSERT_EQ(c.rc, 0) << c.out;
  EXPECT_NE(c.out.find("20 images and their mirrors"), std::string::npos) << c.out;
  const std::string flipped = last_eval_record(d("flip.jsonl"));
  EXPECT_EQ(field(flipped, "flip"), "true");
  EXPECT_EQ(field(flipped, "images"), "20");
  // The averaged views move the loss by far more than the float-vs-double rounding of the same view
  // (~1e-7 relative), which is all an identity "mirror" would leave.
  const double lf = std::stod(field(flipped, "loss")), lp = std::stod(field(plain, "loss"));
  EXPECT_GT(std::abs(lf - lp), 1e-4 * std::abs(lp)) << "the mirrored views changed nothing: " << flipped;

  // Evaluation reads no training data: a directory holding only val shards (pack_imagenet --splits val).
  fs::create_directories(d("valonly"));
  const std::string val_shard = ddp::data::shard_file_name("val", 0, 1);
  fs::copy_file(d("shards/" + val_shard), d("valonly/" + val_shard));
  std::string valonly = std::regex_replace(recipe, std::regex("--data \\S+"), "--data " + d("valonly"));
  auto v = sh(valonly + "--eval-only --resume " + ckpt + " --jsonl " + d("valonly.jsonl"));
  ASSERT_EQ(v.rc, 0) << v.out;
  const std::string vr = last_eval_record(d("valonly.jsonl"));
  for (const char* k : {"top1", "top5", "loss", "images", "epoch", "step"})
    EXPECT_EQ(field(vr, k), field(trained, k)) << k << "\n" << vr << "\n" << trained;

  // The seed orders training, not an evaluation on shards: --eval-only with another one gives the same
  // record (it was refused), while a resume that trains on is still refused.
  const std::string seed9 = std::regex_replace(recipe, std::regex("--seed 4"), "--seed 9");
  ASSERT_NE(seed9, recipe);
  auto e9 = sh(seed9 + "--eval-only --resume " + ckpt + " --jsonl " + d("seed9.jsonl"));
  ASSERT_EQ(e9.rc, 0) << e9.out;
  EXPECT_NE(e9.out.find("--seed 9 differs from the checkpoint's 4: no matter for --eval-only on shards"),
            std::string::npos)
      << e9.out;
  const std::string r9 = last_eval_record(d("seed9.jsonl"));
  for (const char* k : {"top1", "top5", "loss", "images", "epoch", "step"})
    EXPECT_EQ(field(r9, k), field(trained, k)) << k << "\n" << r9 << "\n" << trained;
  auto t9 = sh(std::regex_replace(seed9, std::regex("--epochs 1 "), "--epochs 2 ") + "--resume " + ckpt +
               " --checkpoint-dir " + d("ck9"));
  EXPECT_NE(t9.rc, 0) << t9.out;
  EXPECT_NE(t9.out.find("was trained with --seed 4; resume with the same seed"), std::string::npos) << t9.out;

  // The documented short form, without the run's --image-size: the checkpoint's evaluation settings
  // are taken (not 224 px with crop 0.875, which would report another figure), and said; and the
  // resume warning does not list settings that do not change an evaluation (here: none).
  const std::string bare = std::string(TRAIN_RESNET18) + " --data " + d("shards") +
                           " --backend cpu --threads 1 --batch-size 8 --seed 4 --progress lines ";
  auto g = sh(bare + "--eval-only --resume " + ckpt + " --jsonl " + d("bare.jsonl"));
  ASSERT_EQ(g.rc, 0) << g.out;
  EXPECT_NE(g.out.find("--eval-only: evaluating as the checkpoint's run did: --image-size 32 --val-size 32 "
                       "--label-smoothing 0.1"),
            std::string::npos) << g.out;
  EXPECT_EQ(g.out.find("resuming with settings other than"), std::string::npos) << g.out;
  EXPECT_EQ(g.out.find("schedule:"), std::string::npos) << "--eval-only trains nothing:\n" << g.out;
  const std::string gr = last_eval_record(d("bare.jsonl"));
  for (const char* k : {"top1", "top5", "loss", "images"})
    EXPECT_EQ(field(gr, k), field(trained, k)) << k << "\n" << gr << "\n" << trained;
  // Given explicitly, a setting is the user's: the other size is evaluated (and the change named).
  auto h = sh(bare + "--eval-only --val-size 48 --resume " + ckpt + " --jsonl " + d("val48.jsonl"));
  ASSERT_EQ(h.rc, 0) << h.out;
  EXPECT_NE(h.out.find("val-size = 48 (the checkpoint's run: 32)"), std::string::npos) << h.out;
  EXPECT_NE(field(last_eval_record(d("val48.jsonl")), "loss"), field(trained, "loss"));

  auto e = sh(recipe + "--eval-only");
  EXPECT_NE(e.rc, 0);
  EXPECT_NE(e.out.find("--eval-only: needs --resume FILE|auto or --init-weights FILE"), std::string::npos) << e.out;
  fs::create_directories(d("empty"));
  auto f = sh(recipe + "--eval-only --resume auto --checkpoint-dir " + d("empty"));
  EXPECT_NE(f.rc, 0);
  EXPECT_NE(f.out.find("no weights to evaluate"), std::string::npos) << f.out;
}

TEST_F(TrainE2E, ResumeIsBitExactTwoRanks) {
  // Stopped at step 7, which the uninterrupted run does not checkpoint: the checkpoint holds each
  // rank's own BN statistics and leaves the run's untouched, so the resumed ranks continue exactly.
  std::string common = mpirun(2) + kRecipe + "--epochs 3 --checkpoint-every 3 --keep-checkpoints 10 ";
  auto a = sh(common + "--max-steps 10 --checkpoint-dir " + d("a"));
  ASSERT_EQ(a.rc, 0) << a.out;
  auto b1 = sh(common + "--max-steps 7 --checkpoint-dir " + d("b"));
  ASSERT_EQ(b1.rc, 0) << b1.out;
  auto b2 = sh(common + "--max-steps 10 --checkpoint-dir " + d("b") + " --resume " + d("b/ckpt-0000000007.h5"));
  ASSERT_EQ(b2.rc, 0) << b2.out;
  expect_same_state(d("a/ckpt-0000000009.h5"), d("b/ckpt-0000000009.h5"), 4);
  expect_same_state(d("a/ckpt-0000000010.h5"), d("b/ckpt-0000000010.h5"), 4);
  // The per-rank statistics are recorded, and differ between the ranks (each saw its own data).
  auto st = load_checkpoint(d("b/ckpt-0000000007.h5"), ddp::nn::make_resnet18_spec(4));
  const size_t n = st.buffers.size();
  ASSERT_EQ(st.rank_buffers.size(), 2 * n);
  EXPECT_FALSE(std::equal(st.rank_buffers.begin(), st.rank_buffers.begin() + n, st.rank_buffers.begin() + n));
}

TEST_F(TrainE2E, TwoRanksLossFallsAndMetricsAreWritten) {
  std::string cmd = mpirun(2) + TRAIN_RESNET18 +
                    " --data synthetic --synthetic-size 32 --synthetic-classes 4 --image-size 32 --backend cpu"
                    " --threads 1 --batch-size 8 --epochs 8 --lr 0.05 --lr-schedule cosine --log-every 2"
                    " --progress lines --jsonl " + d("m.jsonl") + " --tensorboard " + d("tb") +
                    " --checkpoint-dir " + d("ck") + " --keep-checkpoints 2";
  auto r = sh(cmd);
  ASSERT_EQ(r.rc, 0) << r.out;
  auto losses = train_losses(d("m.jsonl"));
  ASSERT_GE(losses.size(), 8u) << r.out;
  double first = (losses[0] + losses[1]) / 2, last = (losses[losses.size() - 1] + losses[losses.size() - 2]) / 2;
  EXPECT_LT(last, 0.7 * first) << "loss did not fall on the fixed synthetic set: " << first << " -> " << last;
  EXPECT_NE(r.out.find("final accuracy: top-1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("time per epoch"), std::string::npos);
  EXPECT_EQ(list_checkpoints(d("ck")).size(), 2u);  // keep-last-2
  auto tb = sh(std::string("/usr/bin/python3 ") + DDP_SOURCE_DIR + "/tests/train/read_tfevents.py " + d("tb"));
  EXPECT_EQ(tb.rc, 0) << tb.out;
  EXPECT_NE(tb.out.find("train/loss"), std::string::npos) << tb.out;
  EXPECT_NE(tb.out.find("eval/top1"), std::string::npos) << tb.out;
}

TEST_F(TrainE2E, SigusrCheckpointsExitsZeroAndResumes) {
  std::string run = mpirun(2) + kRecipe + "--epochs 200 --checkpoint-dir " + d("ck") + " --jsonl " + d("m.jsonl");
  // Signal mpirun (it forwards SIGUSR1 to the ranks) once training is under way.
  const auto [out, log] =
      run_in_background(run, d("m.jsonl"), kTrainRecord, "sleep 1; kill -USR1 $pid; wait $pid; echo rc=$?");
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out << log;
  EXPECT_NE(log.find("stop requested"), std::string::npos) << log;
  auto latest = find_latest_checkpoint(d("ck"));
  ASSERT_TRUE(latest) << log;
  auto st = load_checkpoint(*latest, ddp::nn::make_resnet18_spec(4));
  EXPECT_GT(st.global_step, 0);
  auto res = sh(mpirun(2) + kRecipe + "--epochs 200 --checkpoint-dir " + d("ck") + " --resume auto --max-steps " +
                std::to_string(st.global_step + 2) + " --jsonl " + d("m.jsonl"));
  EXPECT_EQ(res.rc, 0) << res.out;
  EXPECT_NE(res.out.find("resumed from"), std::string::npos) << res.out;
  // Once more from 2 steps on: of the two places one is inside an epoch (4 steps per epoch), where the
  // console says "epoch N, step S" and the epochs done are N - 1 + S / 4.
  auto res2 = sh(mpirun(2) + kRecipe + "--epochs 200 --checkpoint-dir " + d("ck") + " --resume auto --max-steps " +
                 std::to_string(st.global_step + 3) + " --jsonl " + d("m.jsonl"));
  EXPECT_EQ(res2.rc, 0) << res2.out;
  // The metrics file says where the resumed run starts (the stopped run logged steps past it), with the
  // console's numbers.
  std::ifstream mf(d("m.jsonl"));
  std::string m((std::istreambuf_iterator<char>(mf)), std::istreambuf_iterator<char>());
  EXPECT_NE(m.find("{\"type\": \"resume\", \"step\": " + std::to_string(st.global_step) + ","), std::string::npos) << m;
  EXPECT_NE(m.find("\"from\": \"" + *latest + "\""), std::string::npos) << m;
  expect_resume_record_matches_log(m, res.out, 4);
  expect_resume_record_matches_log(m, res2.out, 4);
}

// --status-file (what the job scripts decide a requeue on, docs/USAGE.md "Signals"): a stop at a
// signal with training left is "stopped" at the checkpoint's position; the resumed run that reaches
// --max-steps is "finished" from where it started; without --checkpoint-dir "stopped-unsaved"; a
// file that cannot be written is an error before training.
std::map<std::string, std::string> read_status(const std::string& path) {
  std::map<std::string, std::string> m;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (auto eq = line.find('='); eq != std::string::npos) m[line.substr(0, eq)] = line.substr(eq + 1);
  return m;
}
TEST_F(TrainE2E, StatusFileSaysHowTheRunEnded) {
  const std::string run = kRecipe + "--epochs 200 --jsonl " + d("m.jsonl") + " --status-file " + d("st/status");
  const auto [out, log] = run_in_background(run + " --checkpoint-dir " + d("ck"), d("m.jsonl"), kTrainRecord,
                                            "kill -USR1 $pid; wait $pid; echo rc=$?");
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out << log;
  auto latest = find_latest_checkpoint(d("ck"));
  ASSERT_TRUE(latest) << log;
  auto st = load_checkpoint(*latest, ddp::nn::make_resnet18_spec(4));
  auto a = read_status(d("st/status"));
  EXPECT_EQ(a["state"], "stopped") << log;
  EXPECT_EQ(a["signal"], "SIGUSR1");
  EXPECT_EQ(a["start_step"], "0");
  EXPECT_EQ(a["global_step"], std::to_string(st.global_step));
  EXPECT_EQ(a["epoch"], std::to_string(st.epoch + 1));
  EXPECT_EQ(a["step_in_epoch"], std::to_string(st.step_in_epoch));
  EXPECT_EQ(a["checkpoint"], *latest);
  EXPECT_FALSE(fs::exists(d("st/status.tmp")));

  auto res = sh(run + " --checkpoint-dir " + d("ck") + " --resume auto --max-steps " + std::to_string(st.global_step + 2));
  ASSERT_EQ(res.rc, 0) << res.out;
  auto b = read_status(d("st/status"));
  EXPECT_EQ(b["state"], "finished") << res.out;
  EXPECT_EQ(b["signal"], "");
  EXPECT_EQ(b["start_step"], std::to_string(st.global_step));
  EXPECT_EQ(b["global_step"], std::to_string(st.global_step + 2));
  EXPECT_EQ(b.count("checkpoint"), 0u);

  const auto [out2, log2] = run_in_background(kRecipe + "--epochs 200 --jsonl " + d("m2.jsonl") + " --status-file " +
                                                  d("st/status"),
                                              d("m2.jsonl"), kTrainRecord, "kill -TERM $pid; wait $pid; echo rc=$?");
  EXPECT_NE(out2.find("rc=0"), std::string::npos) << out2 << log2;
  auto c = read_status(d("st/status"));
  EXPECT_EQ(c["state"], "stopped-unsaved") << log2;
  EXPECT_EQ(c["signal"], "SIGTERM");

  fs::create_directories(d("st/dir"));
  auto bad = sh(kRecipe + "--epochs 1 --status-file " + d("st/dir"));
  EXPECT_NE(bad.rc, 0) << bad.out;
  EXPECT_NE(bad.out.find("--status-file '" + d("st/dir") + "' is a directory"), std::string::npos) << bad.out;
  EXPECT_EQ(bad.out.find("epoch 1/1 step"), std::string::npos) << "trained before the check:\n" << bad.out;
}

// Ctrl-C on a lone process: the same stop (checkpoint, exit 0), said at once; a second Ctrl-C ends it
// at once (SA_RESETHAND), so an impatient user is never stuck.
TEST_F(TrainE2E, CtrlCOnALoneProcessCheckpointsAndASecondOneStopsAtOnce) {
  const std::string run = kRecipe + "--epochs 200 --checkpoint-dir " + d("ck") + " --jsonl " + d("m.jsonl");
  auto once = [&](const std::string& signals) {
    // monitor: a background job of a script would otherwise start with SIGINT ignored (kept so).
    const auto b = run_in_background(run, d("m.jsonl"), kTrainRecord, signals + " wait $pid; echo rc=$?", true);
    return b.out + b.log;
  };
  const std::string a = once("kill -INT $pid;");
  EXPECT_NE(a.find("rc=0"), std::string::npos) << a;
  EXPECT_NE(a.find("Ctrl-C: stopping after this step"), std::string::npos) << a;
  EXPECT_NE(a.find("stop requested (SIGINT, Ctrl-C)"), std::string::npos) << a;
  ASSERT_TRUE(find_latest_checkpoint(d("ck"))) << a;
  fs::remove_all(d("ck"));
  fs::remove(d("m.jsonl"));
  // After the first, SIGINT is no longer caught (SA_RESETHAND: /proc's SigCgt mask, bit 1, is clear),
  // so a second one takes the default action. (Two kills back to back could merge into one pending
  // signal, so the second waits for the first's message.)
  const std::string b = once("kill -INT $pid; for i in $(seq 1 500); do grep -q Ctrl-C " + d("log") +
                             " && break; sleep 0.01; done; echo \"$(grep SigCgt /proc/$pid/status)\"; "
                             "kill -INT $pid;");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(b, m, std::regex("SigCgt:\\s*([0-9a-f]+)"))) << b;
  EXPECT_EQ(std::stoull(m[1].str(), nullptr, 16) & 2ull, 0ull) << "SIGINT still caught after the first: " << b;
  // Unless the stop was already complete, the second one ended the process (128 + SIGINT).
  EXPECT_TRUE(b.find("rc=130") != std::string::npos || b.find("rc=0") != std::string::npos) << b;
}

// Two runs at once on one checkpoint directory (a job script submitted twice) would resume from and
// overwrite each other's checkpoints: the second is refused while the first runs, naming it.
TEST_F(TrainE2E, SecondRunOnABusyCheckpointDirIsRefused) {
  const std::string run = kRecipe + "--epochs 200 --checkpoint-dir " + d("ck");
  const auto r = run_in_background(run + " --jsonl " + d("m.jsonl"), d("m.jsonl"), kTrainRecord,
                                   "echo first=$pid; " + run + " --resume auto --max-steps 30; "
                                   "echo second_rc=$?; kill -USR1 $pid; wait $pid; echo first_rc=$?");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("first=([0-9]+)"))) << r.out;
  EXPECT_NE(r.out.find("second_rc=1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("is in use by another run (host "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(", pid " + m[1].str()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("first_rc=0"), std::string::npos) << r.out;
  // Once the first has ended, the directory is free again: --resume auto continues it.
  auto again = sh(kRecipe + "--epochs 200 --checkpoint-dir " + d("ck") + " --resume auto --max-steps 40");
  EXPECT_EQ(again.rc, 0) << again.out;
  EXPECT_NE(again.out.find("resumed from"), std::string::npos) << again.out;
}

// A job suspended as a whole (scontrol suspend, gang scheduling: SIGSTOP to all its processes) for
// longer than --timeout carries on when resumed: every rank was stopped alike, none is stuck. (A rank
// stopped alone still ends the job: integration test comm_stuck_rank.)
TEST_F(TrainE2E, JobSuspendedLongerThanTheTimeoutCarriesOnWhenResumed) {
  const std::string run = mpirun(2) + kRecipe + "--epochs 200 --max-steps 40 --timeout 3 --jsonl " + d("m.jsonl");
  const auto [out, log] = run_in_background(
      run, d("m.jsonl"), kTrainRecord,
      "procs=\"$pid $(pgrep -P $pid | tr '\\n' ' ')\"; "
      "kill -STOP $procs; sleep 8; kill -CONT $procs; wait $pid; echo rc=$? stopped=\"$procs\"");
  EXPECT_TRUE(std::regex_search(out, std::regex("stopped=[0-9]+ [0-9]+ [0-9]+"))) << out;  // mpirun + 2 ranks
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out << log;
  EXPECT_EQ(log.find("no answer from the other ranks"), std::string::npos) << log;
  EXPECT_NE(log.find("summary: 40 steps"), std::string::npos) << log;
}

TEST_F(TrainE2E, ReplicaGuardStopsAPerturbedReplica) {
  auto r = sh(mpirun(2) + kRecipe + "--epochs 3 --max-steps 6 --replica-check-every 2 --fault-perturb-step 3 --timeout 20");
  EXPECT_NE(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("replicas diverged at step 4"), std::string::npos) << r.out;
  // The checksums in full: the perturbed replica's agrees with the others' in the first digits.
  EXPECT_TRUE(std::regex_search(r.out, std::regex("checksum of rank 0 is -?[0-9.]{15,} but rank 1 \\(-?[0-9.]{15,}\\)")))
      << r.out;
}

// A shard that opens fine but holds a damaged JPEG: the rank whose batch needs it reports the shard,
// the image's index and source file, and the whole job ends at once (abort, not the peer's timeout).
TEST_F(TrainE2E, DamagedImageInAShardEndsTheJobNamingIt) {
  fs::create_directories(d("shards"));
  const std::string train_shard = d("shards/") + ddp::data::shard_file_name("train", 0, 1);
  for (const std::string split : {"train", "val"}) {
    ddp::data::ShardMeta m;
    m.split = split;
    m.resize_shorter = 0;
    m.classes = {"a", "b", "c", "d"};
    ddp::data::ShardWriter w(d("shards/") + ddp::data::shard_file_name(split, 0, 1), m);
    ddp::Rng rng(5, ddp::rng_stream::kTest);
    std::vector<uint8_t> px(40 * 36 * 3);
    for (int k = 0; k < (split == "train" ? 32 : 8); ++k) {
      for (auto& v : px) v = static_cast<uint8_t>(rng.next_u32());
      auto j = ddp::data::encode_jpeg(px.data(), 40, 36, 90);
      if (split == "train" && k == 9) j.resize(j.size() / 3);
      w.append_jpeg(j, k % 4, "n0" + std::to_string(k % 4) + "/photo_" + std::to_string(k) + ".JPEG");
    }
    w.commit();
  }
  // The seed moves the damaged image: the default seed puts it in a rank's first batch (set at the
  // top of the step), seeds 1 and 2 in a later one (set while the step before is still reducing its
  // gradients: that rank once died of a segfault in the allreduce instead of naming the image).
  for (const std::string seed : {"", " --seed 1", " --seed 2"}) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = sh(mpirun(2) + TRAIN_RESNET18 + " --data " + d("shards") +
                " --image-size 32 --backend cpu --threads 1 --batch-size 4 --epochs 2 --lr 0.05 --log-every 1"
                " --progress lines --timeout 60" + seed);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(r.rc, 0) << seed << "\n" << r.out;
    EXPECT_NE(r.out.find(train_shard + " image 9"), std::string::npos) << seed << "\n" << r.out;
    EXPECT_NE(r.out.find("photo_9.JPEG"), std::string::npos) << seed << "\n" << r.out;
    EXPECT_EQ(r.out.find("Segmentation fault"), std::string::npos) << seed << "\n" << r.out;
    EXPECT_LT(secs, 40.0) << "the job should end by abort, well before the 60 s peer timeout\n" << r.out;
  }
}

TEST_F(TrainE2E, BadFlagsAndMissingGpuAreClearErrors) {
  auto r = sh(std::string(TRAIN_RESNET18) + " --data synthetic --lr-schedule sometimes");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.out.find("--lr-schedule"), std::string::npos) << r.out;
  // A flag the machine cannot honour is found only after MPI starts; it still exits 2, on every rank.
  auto amp = sh(mpirun(2) + kRecipe + "--amp bf16 --max-steps 1");
  EXPECT_EQ(amp.rc, 2) << amp.out;
  EXPECT_NE(amp.out.find("--amp"), std::string::npos) << amp.out;
  // TF32 is a tensor-core format: asked for on the CPU backend it is refused as --amp is (off is what
  // the CPU backend does anyway, and is accepted).
  auto tf32 = sh(kRecipe + "--tf32 on --max-steps 1");
  EXPECT_EQ(tf32.rc, 2) << tf32.out;
  EXPECT_NE(tf32.out.find("--tf32"), std::string::npos) << tf32.out;
  EXPECT_NE(tf32.out.find("the CPU backend computes in full fp32"), std::string::npos) << tf32.out;
  auto tf32_off = sh("DDP_LOG_LEVEL=verbose " + kRecipe + "--tf32 off --max-steps 1");
  EXPECT_EQ(tf32_off.rc, 0) << tf32_off.out;
  // An unknown log level is said, not ignored silently (the run goes on at the default level).
  EXPECT_NE(tf32_off.out.find("DDP_LOG_LEVEL='verbose' is not one of debug, info, warn, error: ignored"),
            std::string::npos) << tf32_off.out;
  if (!ddp::cuda_available()) {  // the backend defaulted to cpu: the refusal says why it is cpu
    auto dflt = sh(std::string(TRAIN_RESNET18) + " --data synthetic --amp fp16 --max-steps 1");
    EXPECT_EQ(dflt.rc, 2) << dflt.out;
    EXPECT_NE(dflt.out.find("the backend is cpu because no GPU is visible"), std::string::npos) << dflt.out;
  }
  auto h = sh(std::string(TRAIN_RESNET18) + " --help");
  EXPECT_EQ(h.rc, 0);
  EXPECT_NE(h.out.find("--checkpoint-dir"), std::string::npos);
  auto m = sh(std::string(TRAIN_RESNET18) + " --data " + d("nowhere") + " --backend cpu");
  EXPECT_NE(m.rc, 0);
  EXPECT_NE(m.out.find(d("nowhere")), std::string::npos) << m.out;
  if (!ddp::cuda_available()) {
    auto c = sh(std::string(TRAIN_RESNET18) + " --data synthetic --backend cuda --image-size 32 --max-steps 1");
    EXPECT_NE(c.rc, 0);
    EXPECT_TRUE(c.out.find("no GPU") != std::string::npos || c.out.find("no CUDA") != std::string::npos) << c.out;
    // The cause as cuda_unavailable_reason words it (without a driver: "no NVIDIA driver is loaded", not
    // the runtime's "driver version is insufficient", which reads as "upgrade your driver").
    EXPECT_NE(c.out.find(ddp::cuda_unavailable_reason()), std::string::npos) << c.out;
  }
}

TEST_F(TrainE2E, InitWeightsWithAnotherClassCountKeepsAllButFc) {
  // A 1000-class weights file (as converted from torchvision) fine-tuned on 4 classes.
  auto spec1000 = ddp::nn::make_resnet18_spec(1000);
  std::vector<float> p(spec1000.param_count), b(spec1000.buffer_count);
  ddp::nn::init_resnet18(spec1000, {123, false}, p.data(), b.data());
  for (size_t i = 0; i < b.size(); i += 2) b[i] = 0.25f;  // recognisable running means
  ddp::nn::save_weights(d("w1000.h5"), spec1000, p.data(), b.data(), 7);
  // lr 1e-20: the one step cannot move a weight of magnitude ~1e-3 or more, so the checkpoint shows
  // what was loaded (BN biases start at 0 and do move, so none is compared).
  auto r = sh(std::string(TRAIN_RESNET18) +
              " --data synthetic --synthetic-size 16 --synthetic-classes 4 --image-size 32 --backend cpu --threads 1"
              " --batch-size 8 --epochs 1 --max-steps 1 --lr 1e-20 --wd 0 --no-eval --progress lines"
              " --init-weights " + d("w1000.h5") + " --checkpoint-dir " + d("ck"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("fc re-initialised for 4 classes"), std::string::npos) << r.out;
  auto spec4 = ddp::nn::make_resnet18_spec(4);
  auto st = load_checkpoint(d("ck/ckpt-0000000001.h5"), spec4);
  // The file's BN counters go on as PyTorch's load_state_dict and one step leave them: 7 + 1.
  EXPECT_EQ(st.num_batches_tracked, 8);
  for (const char* name : {"conv1.weight", "layer4.1.conv2.weight", "layer2.0.downsample.1.weight"}) {
    const auto& a = spec1000.param(name);
    const auto& c = spec4.param(name);
    EXPECT_TRUE(std::equal(p.begin() + a.offset, p.begin() + a.offset + a.numel, st.params.begin() + c.offset)) << name;
  }
  // fc comes from our own init (seed 0), not from the file's first 4 rows.
  const auto& fw = spec4.param("fc.weight");
  EXPECT_FALSE(std::equal(st.params.begin() + fw.offset, st.params.begin() + fw.offset + fw.numel,
                          p.begin() + spec1000.param("fc.weight").offset));
}

TEST_F(TrainE2E, InitWeightsFromACheckpointStartsANewRunWithItsWeightsAndBnStatistics) {
  // A second training phase with other flags (tools/quickstart --long fine-tunes this way): the
  // checkpoint's weights and BN statistics are taken, its optimizer state and position are not.
  ASSERT_NO_FATAL_FAILURE(train_one_epoch_on_shards());
  const std::string &recipe = recipe_, &trained = trained_, &ckpt = ckpt_;

  // Same weights and same BN statistics: the evaluation matches the run's own, bit for bit.
  auto b = sh(recipe + "--eval-only --init-weights " + ckpt + " --jsonl " + d("eval.jsonl"));
  ASSERT_EQ(b.rc, 0) << b.out;
  EXPECT_NE(b.out.find("a checkpoint's weights and BN statistics"), std::string::npos) << b.out;
  const std::string evaluated = last_eval_record(d("eval.jsonl"));
  ASSERT_FALSE(evaluated.empty()) << b.out;
  for (const char* k : {"top1", "top5", "loss", "images"})
    EXPECT_EQ(field(evaluated, k), field(trained, k)) << k << "\n" << evaluated << "\n" << trained;

  // A new run: steps count from 0 (a resume would continue at step 10), and it trains.
  auto c = sh(recipe + "--random-crop off --max-steps 2 --no-eval --init-weights " + ckpt +
              " --checkpoint-dir " + d("phase2"));
  ASSERT_EQ(c.rc, 0) << c.out;
  EXPECT_NE(c.out.find("epoch 1/1 step 1/9"), std::string::npos) << c.out;
  auto spec = ddp::nn::make_resnet18_spec(4);
  const CheckpointState before = load_checkpoint(ckpt, spec);
  const CheckpointState after = load_checkpoint(d("phase2/" + ckpt_name(2)), spec);
  EXPECT_EQ(after.global_step, 2);
  EXPECT_EQ(after.epoch, 0);
  EXPECT_EQ(after.step_in_epoch, 2);
  EXPECT_EQ(after.num_batches_tracked, before.num_batches_tracked + 2) << "the BN counters start from the file's";
  EXPECT_FALSE(after.params == before.params) << "two steps changed nothing";
  // Two small steps from the checkpoint's weights stay near them; from a fresh init they would not.
  double diff = 0, norm = 0;
  for (size_t i = 0; i < before.params.size(); ++i) {
    diff += std::pow(double(after.params[i]) - before.params[i], 2);
    norm += std::pow(double(before.params[i]), 2);
  }
  EXPECT_LT(std::sqrt(diff), 0.05 * std::sqrt(norm));

  // An incomplete checkpoint is refused, named, as --resume refuses it.
  fs::copy_file(ckpt, d("incomplete.h5"));
  {
    ddp::h5::Handle f = ddp::h5::open_file(d("incomplete.h5"), true);
    ddp::h5::set_attr(f, "complete", static_cast<int64_t>(0));
  }
  auto e = sh(recipe + "--max-steps 1 --no-eval --init-weights " + d("incomplete.h5"));
  EXPECT_NE(e.rc, 0);
  EXPECT_NE(e.out.find(d("incomplete.h5") + "' is incomplete"), std::string::npos) << e.out;
}

TEST_F(TrainE2E, RerunningAFinishedRunSaysSoAndCountsItsEpochs) {
  // tools/quickstart --long checks the first phase's summary before fine-tuning from it; a rerun of a
  // finished run must report the epochs it has, not 0.
  const std::string cmd = kRecipe + "--epochs 1 --checkpoint-dir " + d("ck") + " --resume auto --jsonl ";
  auto a = sh(cmd + d("a.jsonl"));
  ASSERT_EQ(a.rc, 0) << a.out;
  auto b = sh(cmd + d("b.jsonl"));
  ASSERT_EQ(b.rc, 0) << b.out;
  EXPECT_NE(b.out.find("all 1 epochs already trained"), std::string::npos) << b.out;
  for (const char* f : {"a.jsonl", "b.jsonl"}) {
    std::ifstream in(d(f));
    std::string line, summary;
    while (std::getline(in, line))
      if (line.find("\"type\": \"summary\"") != std::string::npos) summary = line;
    EXPECT_EQ(field(summary, "epochs_done"), "1") << f << ": " << summary;
    EXPECT_EQ(field(summary, "stopped_by_signal"), "false") << f << ": " << summary;
  }
}

// A checkpoint that does not fit (a 120 MiB tmpfs holds one 89 MB checkpoint of the 4-class model, not
// two): the 2-rank job ends, both ranks, with an error naming the file, the cause and the checkpoint a
// restart continues from; the partial file is gone and the earlier checkpoint still loads. Needs root
// and mount rights (else skipped).
TEST_F(TrainE2E, CheckpointOnAFullDiskEndsTheJobAndKeepsTheLastOne) {
  const fs::path mnt = dir_ / "tiny";
  fs::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=120m") != 0) GTEST_SKIP() << "cannot mount a tmpfs here";
  const std::string ck = (mnt / "ck").string();
  auto r = sh(mpirun(2) + kRecipe + "--epochs 3 --max-steps 8 --checkpoint-every 2 --timeout 30 --checkpoint-dir " + ck);
  const bool partial_left = fs::exists(ck + "/" + ckpt_name(4) + ".tmp");
  const bool second_written = fs::exists(ck + "/" + ckpt_name(4));
  std::string load_err;
  CheckpointState first;
  try {
    first = load_checkpoint(ck + "/" + ckpt_name(2), ddp::nn::make_resnet18_spec(4));
  } catch (const std::exception& e) {
    load_err = e.what();
  }
  // One process alone: the same error, exit 1 (HDF5's exit-time teardown crashed on the file whose
  // close had failed: exit 139).
  fs::remove_all(ck);
  auto one = sh(kRecipe + "--epochs 3 --max-steps 8 --checkpoint-every 2 --checkpoint-dir " + ck);
  umount(mnt.c_str());
  EXPECT_EQ(one.rc, 1) << one.out;
  EXPECT_NE(one.out.find("checkpoint at global step 4 not written"), std::string::npos) << one.out;
  EXPECT_EQ(one.out.find("Segmentation fault"), std::string::npos) << one.out;
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("checkpoint at global step 4 not written"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(ckpt_name(4) + ".tmp"), std::string::npos) << r.out;
  EXPECT_TRUE(r.out.find("disk full") != std::string::npos || r.out.find("No space") != std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the newest complete checkpoint is " + ck + "/" + ckpt_name(2)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rank 0 failed"), std::string::npos) << "rank 1 did not report rank 0's failure:\n" << r.out;
  EXPECT_FALSE(partial_left) << "the partial checkpoint was left on the full volume";
  EXPECT_FALSE(second_written);
  EXPECT_TRUE(load_err.empty()) << load_err;
  EXPECT_EQ(first.global_step, 2);
}

// A checkpoint directory holds one run. A new run into it would overwrite the other's files of the same
// steps, and retention counted the other's later files as newest and deleted this run's own.
TEST_F(TrainE2E, CheckpointDirOfAnotherRunIsRefusedAndNothingDeleted) {
  const std::string cmd = kRecipe + "--epochs 1 --checkpoint-every 1 --keep-checkpoints 2 --checkpoint-dir " + d("ck");
  auto a = sh(cmd + " --max-steps 3");
  ASSERT_EQ(a.rc, 0) << a.out;
  auto bytes = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  const std::string before = bytes(d("ck/" + ckpt_name(3)));
  ASSERT_FALSE(before.empty()) << a.out;
  ASSERT_EQ(list_checkpoints(d("ck")).size(), 2u) << a.out;

  auto fresh = sh(cmd + " --max-steps 3 --momentum 0.8");
  EXPECT_EQ(fresh.rc, 1) << fresh.out;
  EXPECT_NE(fresh.out.find("already holds 2 checkpoint(s)"), std::string::npos) << fresh.out;
  EXPECT_NE(fresh.out.find("--resume auto"), std::string::npos) << fresh.out;

  auto older = sh(cmd + " --max-steps 4 --resume " + d("ck/" + ckpt_name(2)));
  EXPECT_EQ(older.rc, 1) << older.out;
  EXPECT_NE(older.out.find(ckpt_name(3) + ", newer than the resumed global step 2"), std::string::npos) << older.out;

  // Resumed from a copy kept elsewhere: its retention in ck would delete the other run's files.
  fs::create_directories(d("elsewhere"));
  fs::copy_file(d("ck/" + ckpt_name(3)), d("elsewhere/" + ckpt_name(3)));
  auto outside = sh(cmd + " --max-steps 4 --resume " + d("elsewhere/" + ckpt_name(3)));
  EXPECT_EQ(outside.rc, 1) << outside.out;
  EXPECT_NE(outside.out.find("and this run resumes from '" + d("elsewhere/" + ckpt_name(3)) + "' outside it"),
            std::string::npos)
      << outside.out;

  EXPECT_EQ(list_checkpoints(d("ck")).size(), 2u);
  EXPECT_EQ(bytes(d("ck/" + ckpt_name(3))), before) << "a refused run changed the other run's checkpoint";

  auto cont = sh(cmd + " --max-steps 4 --resume auto");
  EXPECT_EQ(cont.rc, 0) << cont.out;
  EXPECT_TRUE(fs::exists(d("ck/" + ckpt_name(4)))) << cont.out;
  EXPECT_EQ(cont.out.find("resuming with settings other"), std::string::npos) << cont.out;  // only --max-steps
  // A setting changed on resume may be meant: said, not refused.
  auto changed = sh(cmd + " --max-steps 5 --resume auto --momentum 0.8");
  EXPECT_EQ(changed.rc, 0) << changed.out;
  EXPECT_NE(changed.out.find("resuming with settings other than the checkpoint's run: momentum = 0.8 (the "
                             "checkpoint's run: 0.9)"),
            std::string::npos)
      << changed.out;

  // Only damaged files: --resume auto has nothing to continue and must not overwrite them either.
  fs::create_directories(d("junk"));
  { std::ofstream(d("junk/" + ckpt_name(99))) << "not a checkpoint"; }
  auto junk = sh(kRecipe + "--epochs 1 --max-steps 1 --checkpoint-dir " + d("junk") + " --resume auto");
  EXPECT_EQ(junk.rc, 1) << junk.out;
  EXPECT_NE(junk.out.find("none of which loads"), std::string::npos) << junk.out;
  EXPECT_EQ(junk.out.find("starting fresh"), std::string::npos) << junk.out;
  EXPECT_TRUE(fs::exists(d("junk/" + ckpt_name(99))));
}

// A mid-epoch checkpoint continues each rank's slice of the epoch's order: another rank count, batch
// or data set size (even with the same steps per epoch) would train on other images than it skips.
TEST_F(TrainE2E, MidEpochResumeNeedsTheSameRanksBatchAndData) {
  const std::string base = std::string(TRAIN_RESNET18) +
                           " --data synthetic --synthetic-classes 4 --image-size 32 --backend cpu --threads 1"
                           " --seed 3 --progress lines --no-eval --epochs 2 --checkpoint-dir " + d("ck");
  auto a = sh(base + " --synthetic-size 64 --batch-size 8 --max-steps 3");
  ASSERT_EQ(a.rc, 0) << a.out;
  // 2 ranks x 4 = the same 8 steps per epoch as 1 rank x 8.
  auto ranks = sh(mpirun(2) + base + " --synthetic-size 64 --batch-size 4 --max-steps 5 --resume auto");
  EXPECT_NE(ranks.rc, 0) << ranks.out;
  EXPECT_NE(ranks.out.find("stopped mid-epoch with 1 rank(s); this run has 2"), std::string::npos) << ranks.out;
  EXPECT_NE(ranks.out.find("or from an epoch-end checkpoint (there is none in '" + d("ck") + "')"), std::string::npos)
      << ranks.out;
  auto batch = sh(base + " --synthetic-size 64 --batch-size 9 --max-steps 5 --resume auto");
  EXPECT_EQ(batch.rc, 1) << batch.out;
  EXPECT_NE(batch.out.find("stopped mid-epoch with --batch-size 8; this run has 9"), std::string::npos) << batch.out;
  auto data = sh(base + " --synthetic-size 70 --batch-size 8 --max-steps 5 --resume auto");
  EXPECT_EQ(data.rc, 1) << data.out;
  EXPECT_NE(data.out.find("training on 64 images; this run's data has 70"), std::string::npos) << data.out;
  auto same = sh(base + " --synthetic-size 64 --batch-size 8 --max-steps 5 --resume auto");
  EXPECT_EQ(same.rc, 0) << same.out;
  // With an epoch-end checkpoint beside the mid-epoch one, the refusal names it and what to move away
  // (--resume would not leave a newer checkpoint in the directory).
  const std::string base2 = std::string(TRAIN_RESNET18) +
                            " --data synthetic --synthetic-classes 4 --synthetic-size 64 --image-size 32 --backend cpu"
                            " --threads 1 --seed 3 --progress lines --no-eval --epochs 2 --checkpoint-dir " + d("ck2");
  auto two = sh(base2 + " --batch-size 8 --max-steps 11");  // epoch end at step 8, stopped at 11
  ASSERT_EQ(two.rc, 0) << two.out;
  auto other = sh(mpirun(2) + base2 + " --batch-size 4 --resume auto");
  EXPECT_NE(other.rc, 0) << other.out;
  EXPECT_NE(other.out.find("or from an epoch-end checkpoint: the newest in '" + d("ck2") + "' is " + ckpt_name(8) +
                           "; move " + ckpt_name(11) + " out of that directory, then resume"),
            std::string::npos)
      << other.out;
}

// A re-initialised fc evaluates to chance: --eval-only refuses weights for another class count.
TEST_F(TrainE2E, EvalOnlyRefusesWeightsForAnotherClassCount) {
  auto a = sh(kRecipe + "--epochs 1 --max-steps 1 --checkpoint-dir " + d("ck"));
  ASSERT_EQ(a.rc, 0) << a.out;
  auto e = sh(std::string(TRAIN_RESNET18) +
              " --data synthetic --synthetic-classes 3 --synthetic-size 16 --image-size 32 --backend cpu --threads 1"
              " --batch-size 8 --eval-only --init-weights " + d("ck/" + ckpt_name(1)));
  EXPECT_EQ(e.rc, 1) << e.out;
  EXPECT_NE(e.out.find("classifier has 4 classes and the data 3"), std::string::npos) << e.out;
}

// Ranks started with different recipes (an MPMD line here; node-local --config files in practice)
// would average the gradients of different runs: the job stops before training, naming the setting.
TEST_F(TrainE2E, RanksWithDifferentSettingsAreRefused) {
  const std::string one = kRecipe + "--epochs 1 --max-steps 2";
  auto r = sh(std::string(MPIEXEC) + " --allow-run-as-root --oversubscribe --bind-to none"
              " --mca btl_vader_single_copy_mechanism none -np 1 " + one + " --momentum 0.9 : -np 1 " + one +
              " --momentum 0.8");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("rank 1 was started with other settings than rank 0: momentum = 0.8 (rank 0: 0.9)"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("epoch 1/1 step"), std::string::npos) << "trained before refusing:\n" << r.out;
  // The run's mode too: a rank without evaluation would wait in another collective than the others.
  const std::string evals = std::string(TRAIN_RESNET18) +
                            " --data synthetic --synthetic-size 64 --synthetic-classes 4 --image-size 32 --backend cpu"
                            " --threads 1 --batch-size 8 --epochs 1 --max-steps 2 --timeout 20";
  auto e = sh(std::string(MPIEXEC) + " --allow-run-as-root --oversubscribe --bind-to none"
              " --mca btl_vader_single_copy_mechanism none -np 1 " + evals + " : -np 1 " + evals + " --no-eval");
  EXPECT_EQ(e.rc, 2) << e.out;
  EXPECT_NE(e.out.find("other settings than rank 0: no-eval = 1 (rank 0: 0)"), std::string::npos) << e.out;
}

// Two ranks of one host given different --data directories (an MPMD line here; node-local configs or
// wrapper scripts in practice) would each train on their slice of another set: refused before training.
// The same files under another path are the same set and train.
TEST_F(TrainE2E, RanksOfAHostReadingDifferentShardSetsAreRefused) {
  write_raw_shards(d("a"));
  write_raw_shards(d("b"), 80);
  fs::copy(d("a"), d("a_copy"));
  const std::string run = std::string(TRAIN_RESNET18) +
                          " --image-size 32 --backend cpu --threads 1 --workers 1 --batch-size 8 --epochs 1"
                          " --max-steps 2 --no-eval --log-every 1 --progress lines --timeout 30 --data ";
  const std::string mpmd = std::string(MPIEXEC) + " --allow-run-as-root --oversubscribe --bind-to none"
                           " --mca btl_vader_single_copy_mechanism none -np 1 ";
  auto r = sh(mpmd + run + d("a") + " : -np 1 " + run + d("b"));
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_NE(r.out.find("ranks 0 and 1 on host "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("read different shard sets; this rank reads train: 80 images"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("check each rank's --data (--shard-scope node"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("first difference: rank 0 has 'train shards, train-00000-of-00001.h5: 72 images, "),
            std::string::npos) << r.out;
  EXPECT_NE(r.out.find("', rank 1 has 'train shards, train-00000-of-00001.h5: 80 images, "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("epoch 1/1 step"), std::string::npos) << "trained before refusing:\n" << r.out;
  // --shard-scope global: every rank splits one set, the same check.
  auto g = sh(mpmd + run + d("a") + " --shard-scope global : -np 1 " + run + d("b") + " --shard-scope global");
  EXPECT_EQ(g.rc, 1) << g.out;
  EXPECT_NE(g.out.find("ranks 0 and 1 read different shard sets"), std::string::npos) << g.out;
  auto same = sh(mpmd + run + d("a") + " : -np 1 " + run + d("a_copy"));
  EXPECT_EQ(same.rc, 0) << same.out;
  EXPECT_NE(same.out.find("epoch 1/1 step 2"), std::string::npos) << same.out;
  // Only the evaluation set differs: the message says so.
  write_raw_shards(d("c"), 72, 24);
  const std::string evals = std::string(run).replace(run.find(" --no-eval"), 10, "");
  auto v = sh(mpmd + evals + d("a") + " : -np 1 " + evals + d("c"));
  EXPECT_EQ(v.rc, 1) << v.out;
  EXPECT_NE(v.out.find("first difference: rank 0 has 'val shards, val-00000-of-00001.h5: 20 images, "),
            std::string::npos) << v.out;
  // One rank without val shards: evaluation is off, and neither rank says the other's directory lacks them.
  fs::create_directories(d("a_noval"));
  fs::copy(d("a") + "/train-00000-of-00001.h5", d("a_noval"));
  auto nv = sh(mpmd + evals + d("a") + " : -np 1 " + evals + d("a_noval"));
  EXPECT_EQ(nv.rc, 0) << nv.out;
  EXPECT_NE(nv.out.find("another rank found no val-*.h5 shards in its --data; this rank's '" + d("a") +
                        "' has them: evaluation is off for every rank"),
            std::string::npos) << nv.out;
  EXPECT_NE(nv.out.find("no val-*.h5 shards in '" + d("a_noval") + "': evaluation is off"), std::string::npos) << nv.out;
}

// A rank stopped before MPI_Init (its launch wrapper stops itself) or inside the communicators' set-up
// (a PMPI shim stops it in MPI_Comm_dup) leaves the others in MPI calls that have no bounded form: the
// start-up guard must end the job within --timeout, naming the phase, instead of a hang.
TEST_F(TrainE2E, RankStoppedDuringStartUpEndsTheJobWithinTheTimeout) {
  const std::string run = kRecipe + "--epochs 1 --max-steps 2 --timeout 3";
  const std::string mpmd = std::string("timeout -s KILL 90 ") + MPIEXEC +
                           " --allow-run-as-root --oversubscribe --bind-to none"
                           " --mca btl_vader_single_copy_mechanism none -np 1 ";
  struct Case {
    const char* phase;
    std::string second_rank;
  };
  const Case cases[] = {
      {"in MPI start-up (MPI_Init and the node layout)", "bash -c 'kill -STOP $$; exec \"$@\"' _ " + run},
      {"in the set-up of the gradient communicator", std::string("env LD_PRELOAD=") + PMPI_STOP_SHIM + " " + run},
  };
  for (const auto& c : cases) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = sh(mpmd + run + " : -np 1 " + c.second_rank);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(r.rc, 0) << r.out;
    EXPECT_NE(r.rc, 128 + SIGKILL) << "hung until the test's own limit:\n" << r.out;
    EXPECT_NE(r.out.find(std::string("no answer from the other ranks within 3 s ") + c.phase), std::string::npos)
        << r.out;
    EXPECT_LT(s, 30) << r.out;
  }
}

// --max-steps 3 of 8 steps per epoch: the evaluation after it says 0.375 epochs, not "epoch 1".
TEST_F(TrainE2E, EvaluationAfterAStopInsideAnEpochNamesTheFraction) {
  auto r = sh(std::string(TRAIN_RESNET18) +
              " --data synthetic --synthetic-size 64 --synthetic-classes 4 --image-size 32 --backend cpu --threads 1"
              " --batch-size 8 --epochs 2 --max-steps 3 --jsonl " + d("m.jsonl"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("eval epoch 0.375:"), std::string::npos) << r.out;
  const std::string e = last_eval_record(d("m.jsonl"));
  EXPECT_EQ(field(e, "epoch"), "0.375") << e;
  EXPECT_EQ(field(e, "step"), "3") << e;
}

// Rank 0 reads and writes files for everyone (weights, checkpoints) while the others wait for its
// broadcast. A FIFO as --init-weights blocks rank 0's open() forever, as a hung file system would: rank
// 1 must end the job within --timeout, not wait with it (the outer `timeout 60` turns a hang into 124).
TEST_F(TrainE2E, RankZeroStuckInItsFileSystemEndsTheJobWithinTheTimeout) {
  const std::string fifo = d("weights.h5");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = sh("timeout 60 " + mpirun(2) + kRecipe + "--epochs 1 --max-steps 2 --timeout 5 --init-weights " + fifo);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.rc, 0) << r.out;
  EXPECT_NE(r.rc, 124) << "the job hung until the outer timeout:\n" << r.out;
  EXPECT_NE(r.out.find("no answer from the other ranks within 5 s in a broadcast from rank 0"), std::string::npos)
      << r.out;
  EXPECT_LT(s, 40) << r.out;
}

namespace {

// What a SIGUSR1 stop at the end of epoch `epoch`, before that epoch's evaluation, leaves: checkpoint
// `ckpt` (at the epoch's end) says the evaluation is due, and the status file says "stopped" by
// SIGUSR1. Returns the status file's fields for the caller's further checks.
std::map<std::string, std::string> expect_stopped_with_evaluation_due(const std::string& ckpt, int64_t epoch,
                                                                      const std::string& status_file,
                                                                      const std::string& log) {
  SCOPED_TRACE("checkpoint " + ckpt);
  const auto st = load_checkpoint(ckpt, ddp::nn::make_resnet18_spec(4));
  EXPECT_TRUE(st.eval_pending) << log;
  EXPECT_EQ(st.epoch, epoch);
  EXPECT_EQ(st.step_in_epoch, 0);
  auto status = read_status(status_file);
  EXPECT_EQ(status["state"], "stopped") << log;
  EXPECT_EQ(status["signal"], "SIGUSR1");
  return status;
}

// Each {key, value}: the metrics record's `key` field is `value`.
void expect_fields(const std::string& record, const std::vector<std::pair<std::string, std::string>>& want) {
  for (const auto& [key, value] : want) EXPECT_EQ(field(record, key), value) << key << ": " << record;
}

}  // namespace

// Preemption during an evaluation: the epoch's checkpoint is written before it, and a stop request
// that arrives during it interrupts it within a few batches, agreed by both ranks, rather than after
// its last batch (ImageNet's takes minutes: longer than a job's margin before its time limit). It used
// to run to its end. Nothing partial is recorded (no eval record, no TensorBoard point); one line says
// how far it got; the checkpoint is rewritten saying the evaluation is due, the status file says
// "stopped" and no step of the next epoch is trained. The resumed run evaluates first. The evaluation
// is made long (3000 images, with mirrors) and the signal sent once the epoch's checkpoint is logged.
TEST_F(TrainE2E, StopDuringAnEvaluationInterruptsItAndTheResumedRunEvaluatesFirst) {
  write_raw_shards(d("shards"), 32, 3000);
  const std::string common = mpirun(2) + TRAIN_RESNET18 + " --data " + d("shards") +
                             " --image-size 32 --backend cpu --threads 1 --workers 1 --batch-size 8 --eval-flip on"
                             " --progress lines --checkpoint-dir " + d("ck") + " --jsonl " + d("m.jsonl") +
                             " --tensorboard " + d("tb") + " --status-file " + d("status");
  const auto [out, log] =
      run_in_background(common + " --epochs 3", d("log"), "(end of epoch", "kill -USR1 $pid; wait $pid; echo rc=$?");
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out << log;
  // 1500 val images per rank, batches of 8.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m,
                                std::regex("stop requested \\(SIGUSR1\\) during the evaluation of epoch 1: evaluation "
                                           "interrupted after ([0-9]+) of 188 batches \\(per rank\\); no val figures "
                                           "are recorded for it")))
      << log;
  EXPECT_LT(std::stoi(m[1]), 188) << log;
  EXPECT_EQ(log.find("eval epoch 1:"), std::string::npos) << log;
  EXPECT_EQ(last_eval_record(d("m.jsonl")), "") << "an interrupted evaluation was recorded:\n" << log;
  const auto summary = records(d("m.jsonl"), "summary");
  ASSERT_EQ(summary.size(), 1u) << log;
  expect_fields(summary[0], {{"eval_interrupted", "true"}, {"top1", ""}});
  auto tb = sh(std::string("/usr/bin/python3 ") + DDP_SOURCE_DIR + "/tests/train/read_tfevents.py " + d("tb"));
  EXPECT_EQ(tb.rc, 0) << tb.out;
  EXPECT_NE(tb.out.find("train/loss"), std::string::npos) << tb.out;
  EXPECT_EQ(tb.out.find("eval/"), std::string::npos) << tb.out;
  auto all = list_checkpoints(d("ck"));
  ASSERT_EQ(all.size(), 1u) << log;
  EXPECT_EQ(checkpoint_step(all[0]), 2) << "one more step was trained after the epoch:\n" << log;  // 32 / (2 x 8)
  EXPECT_EQ(log.find("epoch 2/3 step"), std::string::npos) << log;
  auto status = expect_stopped_with_evaluation_due(all[0], 1, d("status"), log);
  EXPECT_EQ(status["checkpoint"], all[0]);

  // Resumed (here with nothing left to train: --epochs 1), the missed evaluation is run first, and
  // recorded at the checkpoint's position.
  auto r = sh(common + " --epochs 1 --resume auto");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("the evaluation at global step 2 (epoch 1) was left undone by the stop of the run that wrote " +
                       all[0] + ": evaluating it first"),
            std::string::npos)
      << r.out;
  const auto evals = records(d("m.jsonl"), "eval");
  ASSERT_EQ(evals.size(), 1u) << r.out;
  expect_fields(evals[0], {{"epoch", "1"}, {"step", "2"}, {"images", "3000"}});
  EXPECT_EQ(read_status(d("status"))["state"], "finished") << r.out;
}

// The final evaluation at a mid-epoch --max-steps, cut short: the checkpoint is written again saying
// the evaluation is due, with each rank's own BN statistics (the evaluation had averaged them; a
// resume must continue from what each rank had). And a run resumed with nothing left to train from a
// checkpoint whose evaluation was done evaluates again; cut short, its status still names that
// checkpoint ("stopped", not "stopped-unsaved": nothing was lost).
TEST_F(TrainE2E, AnInterruptedFinalEvaluationKeepsEachRanksStatisticsAndItsCheckpoint) {
  write_raw_shards(d("shards"), 32, 3000);
  const std::string common = mpirun(2) + TRAIN_RESNET18 + " --data " + d("shards") +
                             " --image-size 32 --backend cpu --threads 1 --workers 1 --batch-size 8 --eval-flip on"
                             " --progress lines --epochs 3 --max-steps 1 --checkpoint-dir " + d("ck") +
                             " --status-file " + d("status");
  const auto [out, log] =
      run_in_background(common, d("log"), "max-steps reached", "kill -USR1 $pid; wait $pid; echo rc=$?");
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out << log;
  ASSERT_NE(log.find("during the evaluation of epoch"), std::string::npos) << log;
  auto all = list_checkpoints(d("ck"));
  ASSERT_EQ(all.size(), 1u) << log;
  const auto spec = ddp::nn::make_resnet18_spec(4);
  const auto st = load_checkpoint(all[0], spec);
  EXPECT_TRUE(st.eval_pending) << log;
  EXPECT_EQ(st.step_in_epoch, 1);  // mid-epoch: 2 steps per epoch
  ASSERT_EQ(st.rank_buffers.size(), 2 * st.buffers.size()) << log;
  const auto half = static_cast<std::ptrdiff_t>(st.buffers.size());
  EXPECT_FALSE(std::equal(st.rank_buffers.begin(), st.rank_buffers.begin() + half, st.rank_buffers.begin() + half))
      << "both ranks' BN statistics are the same (the evaluation's average):\n" << log;
  // Resumed with nothing left to train: the pending evaluation runs.
  auto r = sh(common + " --resume auto");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(read_status(d("status"))["state"], "finished") << r.out;

  // A checkpoint whose evaluation was done, resumed with nothing to train: evaluated again, cut short.
  const std::string again = std::regex_replace(common, std::regex(d("ck")), d("ck2"));
  auto done = sh(again);
  ASSERT_EQ(done.rc, 0) << done.out;
  fs::remove(d("log"));  // run_in_background writes it again: the wait must not see the first run's lines
  const auto [out2, log2] = run_in_background(again + " --resume auto", d("log"), "resumed from",
                                              "kill -USR1 $pid; wait $pid; echo rc=$?");
  EXPECT_NE(out2.find("rc=0"), std::string::npos) << out2 << log2;
  ASSERT_NE(log2.find("during the evaluation of epoch"), std::string::npos) << log2;
  ASSERT_EQ(log2.find("was left undone by the stop of the run"), std::string::npos) << log2;  // not pending
  auto status = read_status(d("status"));
  EXPECT_EQ(status["state"], "stopped") << log2;
  EXPECT_EQ(status["checkpoint"], d("ck2/" + ckpt_name(1))) << log2;
}

// A stop agreed at the step after which an evaluation is due (the last step of an epoch that
// evaluates, or the --max-steps step) skipped that evaluation and said nothing of it: the checkpoint
// had eval_pending = 0, the status file said "finished", the console's "final accuracy" was the
// previous epoch's, and a resumed run never evaluated those weights. Now the stop leaves it to the
// resumed run (a stop must be quick), as an interrupted evaluation does. The SIGUSR1 comes from the
// ranks themselves as the step starts (--fault-signal-step): a signal sent from outside when the step
// before was logged had to land within one step, about a second, which a loaded machine can miss.
const std::string kEvalRecipe =
    std::string(TRAIN_RESNET18) +
    " --data synthetic --synthetic-size 32 --synthetic-classes 4 --image-size 32 --backend cpu --threads 1"
    " --batch-size 8 --lr 0.05 --seed 3 --log-every 1 --progress lines ";  // 4 steps per epoch (1 rank)

TEST_F(TrainE2E, StopAtTheStepBeforeAnEvaluationLeavesItToTheResumedRun) {
  const std::string run = kEvalRecipe + "--epochs 2 --checkpoint-dir " + d("ck") + " --jsonl " + d("m.jsonl") +
                          " --status-file " + d("status");
  const auto stopped = sh(run + " --fault-signal-step 8");
  const std::string& log = stopped.out;
  ASSERT_EQ(stopped.rc, 0) << log;
  ASSERT_NE(log.find("epoch 2/2 step 4/4"), std::string::npos) << log;
  EXPECT_NE(log.find("stop requested (SIGUSR1) at step 8: checkpointing and exiting; the evaluation due at the end "
                     "of epoch 2 is not run: the checkpoint says it is due, and a run resumed from it (--resume auto) "
                     "evaluates first"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("eval epoch 2:"), std::string::npos) << log;
  EXPECT_EQ(log.find("final accuracy: top-1"), std::string::npos) << "an older evaluation presented as final:\n" << log;
  EXPECT_NE(log.find("final accuracy: none: the weights at global step 8 were not evaluated (the stop came before "
                     "their evaluation; a run resumed from its checkpoint evaluates first); the last evaluation, of "
                     "epoch 1 (global step 4): top-1 "),
            std::string::npos)
      << log;
  auto status = expect_stopped_with_evaluation_due(d("ck/" + ckpt_name(8)), 2, d("status"), log);
  EXPECT_EQ(status["checkpoint"], d("ck/" + ckpt_name(8)));
  auto summary = records(d("m.jsonl"), "summary");
  ASSERT_EQ(summary.size(), 1u) << log;
  expect_fields(summary[0], {{"eval_pending", "true"}, {"top1", ""}});
  ASSERT_EQ(records(d("m.jsonl"), "eval").size(), 1u) << log;  // epoch 1's

  auto r = sh(run + " --resume auto");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("the evaluation at global step 8 (epoch 2) was left undone by the stop of the run that wrote " +
                       d("ck/" + ckpt_name(8)) + ": evaluating it first"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("final accuracy: top-1"), std::string::npos) << r.out;
  auto evals = records(d("m.jsonl"), "eval");
  ASSERT_EQ(evals.size(), 2u) << r.out;
  expect_fields(evals[1], {{"epoch", "2"}, {"step", "8"}});
  EXPECT_EQ(read_status(d("status"))["state"], "finished") << r.out;

  // --max-steps 3, the stop agreed at step 3: the evaluation a --max-steps end makes is left likewise.
  const std::string max3 = kEvalRecipe + "--epochs 2 --max-steps 3 --checkpoint-dir " + d("ck3") +
                           " --status-file " + d("status3");
  const auto stopped3 = sh(max3 + " --fault-signal-step 3");
  const std::string& log3 = stopped3.out;
  ASSERT_EQ(stopped3.rc, 0) << log3;
  ASSERT_NE(log3.find("epoch 1/2 step 3/4"), std::string::npos) << log3;
  EXPECT_NE(log3.find("stop requested (SIGUSR1) at step 3: checkpointing and exiting; the evaluation due at epoch 1 "
                      "step 3/4 is not run"),
            std::string::npos)
      << log3;
  EXPECT_EQ(log3.find("eval epoch"), std::string::npos) << log3;
  const auto st3 = load_checkpoint(d("ck3/" + ckpt_name(3)), ddp::nn::make_resnet18_spec(4));
  EXPECT_TRUE(st3.eval_pending) << log3;
  EXPECT_EQ(st3.step_in_epoch, 3);
  EXPECT_EQ(read_status(d("status3"))["state"], "stopped") << log3;
  auto r3 = sh(max3 + " --resume auto");
  ASSERT_EQ(r3.rc, 0) << r3.out;
  EXPECT_NE(r3.out.find("the evaluation at global step 3 (epoch 0.75) was left undone by the stop"), std::string::npos)
      << r3.out;
  EXPECT_NE(r3.out.find("eval epoch 0.75:"), std::string::npos) << r3.out;
  EXPECT_EQ(read_status(d("status3"))["state"], "finished") << r3.out;
}

// The same at the end of a first epoch, under mpirun (SIGUSR1 to mpirun reaches both ranks): no step of
// epoch 2 is trained, the status is "stopped", and the resumed run evaluates epoch 1, then trains and
// evaluates epoch 2.
TEST_F(TrainE2E, StopAtAnEpochsLastStepUnderMpirunLeavesItsEvaluationToTheResumedRun) {
  const std::string run = mpirun(2) + std::regex_replace(kEvalRecipe, std::regex("--synthetic-size 32"),
                                                         "--synthetic-size 64") +
                          "--epochs 2 --checkpoint-dir " + d("ck") + " --jsonl " + d("m.jsonl") + " --status-file " +
                          d("status");
  const auto stopped = sh(run + " --fault-signal-step 4");
  const std::string& log = stopped.out;
  ASSERT_EQ(stopped.rc, 0) << log;
  ASSERT_NE(log.find("epoch 1/2 step 4/4"), std::string::npos) << log;
  EXPECT_NE(log.find("the evaluation due at the end of epoch 1 is not run"), std::string::npos) << log;
  EXPECT_EQ(log.find("epoch 2/2 step"), std::string::npos) << log;
  EXPECT_EQ(records(d("m.jsonl"), "eval").size(), 0u) << log;
  expect_stopped_with_evaluation_due(d("ck/" + ckpt_name(4)), 1, d("status"), log);
  auto r = sh(run + " --resume auto");
  ASSERT_EQ(r.rc, 0) << r.out;
  const auto evals = records(d("m.jsonl"), "eval");
  ASSERT_EQ(evals.size(), 2u) << r.out;
  expect_fields(evals[0], {{"epoch", "1"}, {"step", "4"}});
  expect_fields(evals[1], {{"epoch", "2"}});
  EXPECT_EQ(read_status(d("status"))["state"], "finished") << r.out;
}

// A signal that reaches one rank only (a spot interruption of a non-zero rank's node) stops the job, and
// the log line and the status file name the signal and that rank; they said "stop requested" with no
// signal, and signal= empty.
TEST_F(TrainE2E, ASignalToOneRankOnlyIsNamedWithItsRank) {
  const std::string run = mpirun(2) + kRecipe + "--epochs 200 --checkpoint-dir " + d("ck") + " --jsonl " +
                          d("m.jsonl") + " --status-file " + d("status");
  const auto [out, log] = run_in_background(
      run, d("m.jsonl"), kTrainRecord,
      "for c in $(pgrep -P $pid); do tr '\\0' '\\n' < /proc/$c/environ | grep -qx OMPI_COMM_WORLD_RANK=1 && "
      "kill -USR1 $c && echo signalled=$c; done; wait $pid; echo rc=$?");
  ASSERT_NE(out.find("signalled="), std::string::npos) << out << log;
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out << log;
  EXPECT_TRUE(std::regex_search(log, std::regex("stop requested \\(SIGUSR1 on rank 1 of 2\\) at step [0-9]+: "
                                                "checkpointing and exiting")))
      << log;
  auto status = read_status(d("status"));
  EXPECT_EQ(status["state"], "stopped") << log;
  EXPECT_EQ(status["signal"], "SIGUSR1") << log;
  EXPECT_EQ(status["signal_ranks"], "1") << log;
}

// A stop requested while an every-N checkpoint is written stops on it (agreed after the write), as the
// epoch-end path does: it trained one more step and wrote one more checkpoint. The signal goes as
// ckpt-5's temporary file is created, i.e. during its write. The steps since the last train record (4 and
// 5, with --log-every 3) are logged as a stop's are.
TEST_F(TrainE2E, StopDuringAnEveryNCheckpointStopsOnIt) {
  const std::string every3 = std::regex_replace(kRecipe, std::regex("--log-every 1 "), "--log-every 3 ");
  // The SIGTERM comes from inside the process as it creates ckpt-5's .tmp (a shim around H5Fcreate):
  // within the checkpoint's write every time, not within a window a loaded machine may miss.
  const auto [out, log] = run_in_background(
      std::string("env LD_PRELOAD=") + SIGNAL_AT_H5_CREATE + " DDP_TEST_SIGNAL_AT_CREATE=/" + ckpt_name(5) + ".tmp " +
          every3 + "--epochs 2 --checkpoint-every 5 --keep-checkpoints 10 --checkpoint-dir " + d("ck") +
          " --jsonl " + d("m.jsonl") + " --status-file " + d("status"),
      d("log"), "schedule:", "wait $pid; echo rc=$?");
  ASSERT_NE(out.find("rc=0"), std::string::npos) << out << log;
  const auto all = list_checkpoints(d("ck"));
  ASSERT_EQ(all.size(), 1u) << log;
  EXPECT_EQ(checkpoint_step(all[0]), 5) << "trained on after the checkpoint:\n" << log;
  EXPECT_EQ(log.find("epoch 1/2 step 6/8"), std::string::npos) << log;
  EXPECT_NE(log.find("stop requested (SIGTERM) during the checkpoint at step 5: exiting (checkpointed)"),
            std::string::npos)
      << log;
  auto status = read_status(d("status"));
  EXPECT_EQ(status["state"], "stopped") << log;
  EXPECT_EQ(status["step_in_epoch"], "5");
  EXPECT_EQ(status["checkpoint"], all[0]);
  std::vector<std::string> steps;
  for (const auto& t : records(d("m.jsonl"), "train")) steps.push_back(field(t, "step"));
  EXPECT_EQ(steps, (std::vector<std::string>{"3", "5"})) << log;
}

// A checkpoint renamed (here a step-1 file as ckpt-99 next to ckpt-2): --resume auto took it by name,
// then refused the directory for ckpt-2 being "newer than the resumed global step 1". It is skipped
// with a warning naming it; given by name, it is refused.
TEST_F(TrainE2E, ACheckpointNamedForAnotherStepIsSkippedNamingIt) {
  const std::string cmd = kRecipe + "--epochs 1 --checkpoint-every 1 --keep-checkpoints 5 --checkpoint-dir " + d("ck");
  auto a = sh(cmd + " --max-steps 2");
  ASSERT_EQ(a.rc, 0) << a.out;
  fs::rename(d("ck/" + ckpt_name(1)), d("ck/" + ckpt_name(99)));
  auto r = sh(cmd + " --max-steps 3 --resume auto");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("skipping checkpoint " + d("ck/" + ckpt_name(99)) + ": checkpoint '" + d("ck/" + ckpt_name(99)) +
                       "' holds global step 1 but its name says 99"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("resumed from " + d("ck/" + ckpt_name(2))), std::string::npos) << r.out;
  auto f = sh(cmd + " --max-steps 3 --resume " + d("ck/" + ckpt_name(99)));
  EXPECT_EQ(f.rc, 1) << f.out;
  EXPECT_NE(f.out.find("holds global step 1 but its name says 99"), std::string::npos) << f.out;
}

// --eval-only writes nothing, so a read-only --checkpoint-dir (here a read-only bind mount: root writes
// through permissions) is fine; it was refused as "not writable". Needs mount rights (else skipped).
TEST_F(TrainE2E, EvalOnlyReadsAReadOnlyCheckpointDir) {
  const std::string recipe = std::regex_replace(kRecipe, std::regex("--no-eval "), "");
  auto a = sh(recipe + "--epochs 1 --max-steps 2 --checkpoint-dir " + d("ck"));
  ASSERT_EQ(a.rc, 0) << a.out;
  const fs::path ro = dir_ / "ro";
  fs::create_directories(ro);
  if (mount(d("ck").c_str(), ro.c_str(), nullptr, MS_BIND, nullptr) != 0) GTEST_SKIP() << "cannot bind-mount here";
  if (mount(nullptr, ro.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) != 0) {
    umount(ro.c_str());
    GTEST_SKIP() << "cannot remount read-only here";
  }
  auto r = sh(recipe + "--checkpoint-dir " + ro.string() + " --resume auto --eval-only");
  auto f = sh(recipe + "--checkpoint-dir " + ro.string() + " --resume " + (ro / ckpt_name(2)).string() + " --eval-only");
  auto t = sh(recipe + "--epochs 2 --checkpoint-dir " + ro.string() + " --resume auto");  // training: refused
  umount(ro.c_str());
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("eval epoch 0.25:"), std::string::npos) << r.out;
  EXPECT_EQ(f.rc, 0) << f.out;
  EXPECT_NE(f.out.find("eval epoch 0.25:"), std::string::npos) << f.out;
  EXPECT_NE(t.rc, 0) << t.out;
  EXPECT_NE(t.out.find("is not writable"), std::string::npos) << t.out;
}

// --resume with --init-weights: the log said "(its weights replace --init-weights, which started that
// run)" also where that run had no --init-weights (the settings warning said "init-weights = (none)").
TEST_F(TrainE2E, ResumeSaysWhatInitWeightsWasToTheCheckpointsRun) {
  auto a = sh(kRecipe + "--epochs 1 --max-steps 1 --checkpoint-dir " + d("a"));
  ASSERT_EQ(a.rc, 0) << a.out;
  const std::string w = d("a/" + ckpt_name(1));
  auto none = sh(kRecipe + "--epochs 1 --max-steps 2 --checkpoint-dir " + d("a") + " --resume auto --init-weights " + w);
  ASSERT_EQ(none.rc, 0) << none.out;
  EXPECT_EQ(none.out.find("which started that run"), std::string::npos) << none.out;
  EXPECT_NE(none.out.find("(its weights replace --init-weights " + w +
                          ", which is not used: the checkpoint's run had no --init-weights)"),
            std::string::npos)
      << none.out;
  auto b = sh(kRecipe + "--epochs 1 --max-steps 2 --checkpoint-dir " + d("b") + " --init-weights " + w);
  ASSERT_EQ(b.rc, 0) << b.out;
  auto same = sh(kRecipe + "--epochs 1 --max-steps 3 --checkpoint-dir " + d("b") + " --resume auto --init-weights " + w);
  ASSERT_EQ(same.rc, 0) << same.out;
  EXPECT_NE(same.out.find("(its weights replace --init-weights, which started that run)"), std::string::npos)
      << same.out;
}

// Metrics on a volume that fills up mid-run: a warning, and training goes on to its end and its
// checkpoints (metrics are not worth the run). One free 4 KiB page holds about half of the 48 records.
TEST_F(TrainE2E, MetricsOnAFullDiskWarnAndTrainingContinues) {
  const fs::path mnt = dir_ / "tiny";
  fs::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0) GTEST_SKIP() << "cannot mount a tmpfs here";
  sh("head -c 1M /dev/zero > " + (mnt / "filler").string() + "; truncate -s -4096 " + (mnt / "filler").string());
  auto r = sh(kRecipe + "--epochs 6 --checkpoint-dir " + d("ck") + " --jsonl " + (mnt / "m.jsonl").string());
  std::string m;
  {
    std::ifstream mf(mnt / "m.jsonl");
    m.assign((std::istreambuf_iterator<char>(mf)), std::istreambuf_iterator<char>());
  }
  umount(mnt.c_str());
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("cannot write --jsonl file"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("training continues"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(d("ck/" + ckpt_name(48)))) << r.out;
  EXPECT_GT(m.size(), 1000u);  // it did write until the volume was full
}

// Open MPI gives ranks a pseudo-terminal even when mpirun's output is a pipe or a file: --progress auto
// must still give log lines there, not a bar redrawn with carriage returns.
TEST_F(TrainE2E, AutoProgressUnderMpirunGivesLines) {
  auto r = sh(mpirun(2) + TRAIN_RESNET18 +
              " --data synthetic --synthetic-size 64 --synthetic-classes 4 --image-size 32 --backend cpu --threads 1"
              " --batch-size 8 --max-steps 3 --no-eval --log-every 1");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(r.out.find('\r'), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("step 3/4 loss"), std::string::npos) << r.out;
}

// A classifier of zeros gives every class the same logit: chance, not 100% (ties used to count in the
// label's favour). Ties go to the lowest class index, so top-1 is the share of val images of class 0
// and top-5 that of classes 0..4, with loss log 8; the same with --eval-flip. A weights file holding a
// NaN is refused, naming the file and the tensor (it evaluated to "top-1 100%, loss nan").
TEST_F(TrainE2E, EvalOnlyOfAZeroClassifierScoresChanceAndNonFiniteWeightsAreRefused) {
  const int classes = 8, val_n = 20;
  write_raw_shards(d("shards"), 16, val_n, classes);
  auto spec = ddp::nn::make_resnet18_spec(classes);
  std::vector<float> p(spec.param_count), b(spec.buffer_count);
  ddp::nn::init_resnet18(spec, {5, false}, p.data(), b.data());
  for (const char* name : {"fc.weight", "fc.bias"}) {
    const auto& t = spec.param(name);
    std::fill_n(p.begin() + t.offset, t.numel, 0.0f);
  }
  ddp::nn::save_weights(d("zerofc.h5"), spec, p.data(), b.data(), 7);
  int first = 0, five = 0;  // val images of class 0, of classes 0..4 (image k has label k % classes)
  for (int k = 0; k < val_n; ++k) {
    first += k % classes == 0;
    five += k % classes < 5;
  }
  const std::string run = std::string(TRAIN_RESNET18) + " --data " + d("shards") +
                          " --image-size 32 --backend cpu --threads 1 --batch-size 8 --progress lines --eval-only ";
  for (const std::string flip : {"off", "on"}) {
    SCOPED_TRACE("--eval-flip " + flip);
    const std::string jsonl = d("eval-" + flip + ".jsonl");
    auto r = sh(run + "--eval-flip " + flip + " --init-weights " + d("zerofc.h5") + " --jsonl " + jsonl);
    ASSERT_EQ(r.rc, 0) << r.out;
    const std::string e = last_eval_record(jsonl);
    ASSERT_FALSE(e.empty()) << r.out;
    EXPECT_EQ(field(e, "images"), std::to_string(val_n)) << e;
    EXPECT_NEAR(std::stod(field(e, "top1")), double(first) / val_n, 1e-9) << e;  // 0.15
    EXPECT_NEAR(std::stod(field(e, "top5")), double(five) / val_n, 1e-9) << e;   // 0.7
    EXPECT_NEAR(std::stod(field(e, "loss")), std::log(double(classes)), 1e-5) << e;
  }
  // One NaN in a BN weight: every logit would be NaN.
  p[spec.param("layer2.1.bn1.weight").offset + 3] = std::numeric_limits<float>::quiet_NaN();
  ddp::nn::save_weights(d("nanw.h5"), spec, p.data(), b.data(), 7);
  for (const std::string how : {"--eval-only ", "--max-steps 1 --no-eval "}) {
    auto r = sh(std::string(TRAIN_RESNET18) + " --data " + d("shards") + " --image-size 32 --backend cpu --threads 1" +
                " --batch-size 8 --progress lines " + how + "--init-weights " + d("nanw.h5") + " --jsonl " +
                d("nan.jsonl"));
    EXPECT_NE(r.rc, 0) << how << "\n" << r.out;
    EXPECT_NE(r.out.find(d("nanw.h5")), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("'layer2.1.bn1.weight'"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("inf or NaN"), std::string::npos) << r.out;
    EXPECT_TRUE(last_eval_record(d("nan.jsonl")).empty()) << "nothing evaluated";
  }
}

// ---- class lists, sizes, partial epochs, synthetic --eval-only ----------------------------------
// On real shards: pack_imagenet run as a user runs it, on small generated JPEG trees.
#ifdef PACK_IMAGENET
namespace {

// An ImageFolder tree ROOT/<split>/<class>/<k>.jpg of random size x size JPEGs, n per class (val: n_val).
void write_jpeg_tree(const std::string& root, const std::vector<std::string>& train_classes,
                     const std::vector<std::string>& val_classes, int n_train, int n_val, int size) {
  ddp::Rng rng(5, ddp::rng_stream::kTest);
  std::vector<uint8_t> px(static_cast<size_t>(size) * size * 3);
  for (const std::string split : {"train", "val"})
    for (const auto& c : split == "train" ? train_classes : val_classes) {
      fs::create_directories(root + "/" + split + "/" + c);
      for (int k = 0; k < (split == "train" ? n_train : n_val); ++k) {
        for (auto& v : px) v = static_cast<uint8_t>(rng.next_u32());
        const auto j = ddp::data::encode_jpeg(px.data(), size, size, 90);
        std::ofstream(root + "/" + split + "/" + c + "/" + std::to_string(k) + ".jpg", std::ios::binary)
            .write(reinterpret_cast<const char*>(j.data()), static_cast<std::streamsize>(j.size()));
      }
    }
}

Run pack(const std::string& args) { return sh(std::string(PACK_IMAGENET) + " --no-progress " + args); }

const std::vector<std::string> kFour = {"n0", "n1", "n2", "n3"};

}  // namespace

// Train and val shards packed with other class lists: the labels of one mean other classes in the
// other. The trainer refuses before any step, naming a train shard, the val shard and the first
// difference (it used to train and report a meaningless top-1, or die inside the loss function).
TEST_F(TrainE2E, TrainAndValShardsWithOtherClassListsAreRefusedAtStartUp) {
  write_jpeg_tree(d("base"), kFour, kFour, 6, 3, 40);
  { std::ofstream(d("rev.txt")) << "n3\nn2\nn1\nn0\n"; }
  // pack_imagenet refuses to put them in one folder itself: packed apart, then brought together (as
  // a copy by hand, or shards from two runs on one mount, would).
  ASSERT_EQ(pack("-i " + d("base") + " -o " + d("M") + " --splits train --resize 32").rc, 0);
  auto p = pack("-i " + d("base") + " -o " + d("Mv") + " --splits val --resize 32 --class-index " + d("rev.txt"));
  ASSERT_EQ(p.rc, 0) << p.out;
  fs::copy_file(d("Mv/val-00000-of-00001.h5"), d("M/val-00000-of-00001.h5"));
  const std::string args = std::string(TRAIN_RESNET18) +
                           " --backend cpu --threads 1 --workers 1 --image-size 32 --max-steps 2"
                           " --progress lines --log-every 1 --data ";
  const std::string tr = d("M/train-00000-of-00001.h5"), va = d("M/val-00000-of-00001.h5");
  auto r = sh(args + d("M") + " --batch-size 8 --jsonl " + d("m.jsonl"));
  EXPECT_NE(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find(tr), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(va), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("first difference at index 0: 'n0' (train) vs 'n3' (val)"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("schedule:"), std::string::npos) << "refused after set-up, not at start-up:\n" << r.out;
  EXPECT_FALSE(fs::exists(d("m.jsonl")) && last_eval_record(d("m.jsonl")) != "") << r.out;
  // Every rank refuses (two ranks splitting one set), none waits for the others.
  auto m = sh("timeout 120 " + mpirun(2) + args + d("M") + " --shard-scope global --batch-size 4");
  EXPECT_NE(m.rc, 0) << m.out;
  EXPECT_NE(m.rc, 124) << "hung:\n" << m.out;
  EXPECT_NE(m.out.find("first difference at index 0"), std::string::npos) << m.out;

  // A val split with one class more (its labels reach past the model's classifier).
  write_jpeg_tree(d("base5"), {"n0", "n1", "n2", "n3", "n4"}, {"n0", "n1", "n2", "n3", "n4"}, 1, 3, 40);
  fs::create_directories(d("M5"));
  fs::copy_file(tr, d("M5/train-00000-of-00001.h5"));
  ASSERT_EQ(pack("-i " + d("base5") + " -o " + d("M5v") + " --splits val --resize 32").rc, 0);
  fs::copy_file(d("M5v/val-00000-of-00001.h5"), d("M5/val-00000-of-00001.h5"));
  auto f = sh(args + d("M5") + " --batch-size 8");
  EXPECT_NE(f.rc, 0) << f.out;
  EXPECT_NE(f.out.find(d("M5/train-00000-of-00001.h5")), std::string::npos) << f.out;
  EXPECT_NE(f.out.find(d("M5/val-00000-of-00001.h5")), std::string::npos) << f.out;
  EXPECT_NE(f.out.find("4 vs 5 classes"), std::string::npos) << f.out;
  EXPECT_EQ(f.out.find("softmax_cross_entropy"), std::string::npos) << f.out;
  EXPECT_EQ(f.out.find("schedule:"), std::string::npos) << f.out;
}

// A checkpoint records its class list (/classes, as the shards do); resuming or evaluating it on data
// whose classes are in another order is refused, naming both files and the first differing index.
// Files without the list (older checkpoints, weights files) load with a one-line note.
TEST_F(TrainE2E, CheckpointRecordsItsClassListAndOtherClassOrdersAreRefused) {
  write_jpeg_tree(d("base"), kFour, kFour, 6, 3, 40);
  { std::ofstream(d("rev.txt")) << "n3\nn2\nn1\nn0\n"; }
  ASSERT_EQ(pack("-i " + d("base") + " -o " + d("A") + " --resize 32").rc, 0);
  ASSERT_EQ(pack("-i " + d("base") + " -o " + d("R") + " --resize 32 --class-index " + d("rev.txt")).rc, 0);
  const std::string run = std::string(TRAIN_RESNET18) +
                          " --backend cpu --threads 1 --workers 1 --image-size 32 --batch-size 8 --seed 2"
                          " --progress lines --data ";
  auto t = sh(run + d("A") + " --max-steps 2 --no-eval --checkpoint-dir " + d("ck"));
  ASSERT_EQ(t.rc, 0) << t.out;
  const std::string ck = d("ck/" + ckpt_name(2));
  {
    ddp::h5::Handle f = ddp::h5::open_file(ck);
    ASSERT_TRUE(ddp::h5::exists(f, "classes"));
    EXPECT_EQ(ddp::h5::read_strings(f, "classes"), kFour);
  }
  auto ok = sh(run + d("A") + " --eval-only --resume " + ck);
  ASSERT_EQ(ok.rc, 0) << ok.out;
  EXPECT_EQ(ok.out.find("class list"), std::string::npos) << ok.out;

  for (const std::string how : {"--eval-only --resume ", "--max-steps 4 --resume ", "--eval-only --init-weights "}) {
    auto r = sh(run + d("R") + " " + how + ck);
    EXPECT_NE(r.rc, 0) << how << ":\n" << r.out;
    EXPECT_NE(r.out.find(ck), std::string::npos) << how << ":\n" << r.out;
    EXPECT_NE(r.out.find(d(how[2] == 'e' ? "R/val-00000-of-00001.h5" : "R/train-00000-of-00001.h5")),
              std::string::npos) << how << ":\n" << r.out;
    EXPECT_NE(r.out.find("first difference at index 0: 'n0' (checkpoint) vs 'n3'"), std::string::npos)
        << how << ":\n" << r.out;
  }
  // Fine-tuning from it on other classes is meant to retrain: a warning, not a refusal.
  auto ft = sh(run + d("R") + " --max-steps 1 --no-eval --init-weights " + ck);
  EXPECT_EQ(ft.rc, 0) << ft.out;
  EXPECT_NE(ft.out.find("first difference at index 0"), std::string::npos) << ft.out;

  // A checkpoint written before the list was recorded: evaluated, with one line saying so.
  const std::string old = d("old.h5");
  fs::copy_file(ck, old);
  {
    ddp::h5::Handle f = ddp::h5::open_file(old, true);
    ASSERT_GE(H5Ldelete(f, "classes", H5P_DEFAULT), 0);
  }
  auto o = sh(run + d("R") + " --eval-only --resume " + old);
  EXPECT_EQ(o.rc, 0) << o.out;
  EXPECT_NE(o.out.find("records no class list"), std::string::npos) << o.out;
  // A weights file (as tools/torchvision_to_h5.py writes: no class list) likewise.
  {
    auto spec = ddp::nn::make_resnet18_spec(4);
    CheckpointState s = load_checkpoint(ck, spec);
    ddp::nn::save_weights(d("w.h5"), spec, s.params.data(), s.buffers.data(), s.num_batches_tracked);
  }
  auto w = sh(run + d("R") + " --eval-only --init-weights " + d("w.h5"));
  EXPECT_EQ(w.rc, 0) << w.out;
  EXPECT_NE(w.out.find("records no class list"), std::string::npos) << w.out;
}

// Sizes beyond what the shards hold: every image is upsampled, at a cost and for no detail. One line.
TEST_F(TrainE2E, ImageSizeAboveTheShardsImagesIsWarnedAbout) {
  write_jpeg_tree(d("base"), kFour, kFour, 4, 2, 40);
  ASSERT_EQ(pack("-i " + d("base") + " -o " + d("raw") + " --encoding raw --resize 40").rc, 0);
  ASSERT_EQ(pack("-i " + d("base") + " -o " + d("jpg") + " --resize 32").rc, 0);
  const std::string run = std::string(TRAIN_RESNET18) +
                          " --backend cpu --threads 1 --workers 1 --batch-size 8 --max-steps 1 --progress lines --data ";
  auto r = sh(run + d("raw") + " --image-size 64 --no-eval");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("--image-size 64 exceeds"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("raw 40x40"), std::string::npos) << r.out;
  auto v = sh(run + d("jpg") + " --image-size 32 --val-size 64");
  ASSERT_EQ(v.rc, 0) << v.out;
  EXPECT_NE(v.out.find("--val-size 64 exceeds"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("shorter side at most 32"), std::string::npos) << v.out;
  EXPECT_EQ(v.out.find("--image-size 32 exceeds"), std::string::npos) << v.out;
  auto n = sh(run + d("raw") + " --image-size 40");
  ASSERT_EQ(n.rc, 0) << n.out;
  EXPECT_EQ(n.out.find("exceeds"), std::string::npos) << n.out;
}

#endif  // PACK_IMAGENET

// The summary's time per epoch lists whole epochs: a resumed epoch's 2 remaining steps are not one.
TEST_F(TrainE2E, TimePerEpochLeavesAResumedPartialEpochOut) {
  const std::string run = kRecipe + "--epochs 2 --checkpoint-dir " + d("ck") + " --jsonl " + d("m.jsonl") + " ";
  ASSERT_EQ(sh(run + "--max-steps 6").rc, 0);  // 8 steps per epoch
  auto r = sh(run + "--resume auto");
  ASSERT_EQ(r.rc, 0) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(time per epoch \[([^\]]*)\])"))) << r.out;
  EXPECT_EQ(m[1].str().find(','), std::string::npos) << "one whole epoch was trained:\n" << r.out;
  EXPECT_NE(r.out.find("1 partial epoch left out"), std::string::npos) << r.out;
  std::ifstream jf(d("m.jsonl"));
  std::string line, summary;
  while (std::getline(jf, line))
    if (line.find("\"type\": \"summary\"") != std::string::npos) summary = line;
  EXPECT_EQ(field(summary, "partial_epochs"), "1") << summary;
}

// Evaluation needs no training batch: synthetic data behaves as shards do under --eval-only.
TEST_F(TrainE2E, EvalOnlyOnSyntheticDataNeedsNoTrainingBatch) {
  const std::string syn = std::string(TRAIN_RESNET18) +
                          " --data synthetic --synthetic-size 64 --synthetic-classes 4 --image-size 32 --backend cpu"
                          " --threads 1 --seed 3 --progress lines ";
  ASSERT_EQ(sh(syn + "--batch-size 8 --max-steps 1 --no-eval --checkpoint-dir " + d("ck")).rc, 0);
  auto r = sh(syn + "--batch-size 100 --eval-only --resume " + d("ck/" + ckpt_name(1)));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("(64 images"), std::string::npos) << r.out;
}

// Checkpoint time is not training time, for step-count checkpoints as for epoch-end ones. Checked by
// accounting, not by timing: the summary's wall time ("seconds") runs from the first step, so the
// epoch's time, or its windows' times, plus the checkpoints' times (as the console reports them) fit
// in it only where the checkpoints are not counted twice; 7 checkpoints of 89 MB inside the epoch
// would be.
TEST_F(TrainE2E, CheckpointTimeIsLeftOutOfEpochTimeAndImagesPerSecond) {
  auto r = sh(kRecipe + "--epochs 1 --checkpoint-every 1 --keep-checkpoints 1 --checkpoint-dir " +
              d("ck") + " --jsonl " + d("m.jsonl"));  // 8 steps
  ASSERT_EQ(r.rc, 0) << r.out;
  double ckpt = 0;
  int n = 0;
  std::regex re(R"(checkpoint \S+ \((every 1 steps|end of training), ([0-9.eE+-]+) s)");
  for (auto it = std::sregex_iterator(r.out.begin(), r.out.end(), re); it != std::sregex_iterator(); ++it, ++n)
    ckpt += std::stod((*it)[2]);
  ASSERT_EQ(n, 8) << r.out;
  auto summary = records(d("m.jsonl"), "summary");
  ASSERT_EQ(summary.size(), 1u);
  const double wall = std::stod(field(summary[0], "seconds"));
  std::smatch m;
  ASSERT_TRUE(std::regex_search(summary[0], m, std::regex(R"("epoch_seconds": \[([0-9.eE+-]+)\])"))) << summary[0];
  const double epoch = std::stod(m[1]);
  EXPECT_LE(epoch + ckpt, wall) << r.out << summary[0];
  double windows = 0;
  for (const auto& t : records(d("m.jsonl"), "train")) {
    ASSERT_NE(field(t, "window_seconds"), "") << t;
    const double w = std::stod(field(t, "window_seconds"));
    windows += w;
    EXPECT_NEAR(std::stod(field(t, "img_per_s")) * w, 8 * std::stod(field(t, "window_steps")), 1e-3) << t;
  }
  EXPECT_LE(windows, epoch) << r.out;
  EXPECT_LE(windows + ckpt, wall) << r.out;
  ASSERT_NE(field(summary[0], "checkpoint_seconds"), "") << summary[0];
  EXPECT_GE(std::stod(field(summary[0], "checkpoint_seconds")), ckpt - 1e-3) << summary[0];
  EXPECT_NEAR(std::stod(field(summary[0], "img_per_s")), 64 / std::stod(field(summary[0], "train_seconds")), 1e-3)
      << summary[0];
}

// A run stopped inside a logging window (--max-steps 5, --log-every 3) logs the partial window; the
// resumed run's first record covers the steps since the resume: every step is in exactly one record,
// with the mean loss of its steps (as a --log-every 1 run gives them).
TEST_F(TrainE2E, EveryTrainedStepIsLoggedOnceAcrossAStopAndResume) {
  const std::string every3 = std::regex_replace(kRecipe, std::regex("--log-every 1 "), "--log-every 3 ");
  const std::string run = every3 + "--epochs 2 --checkpoint-dir " + d("ck") + " --jsonl " + d("m.jsonl") + " ";
  auto a = sh(run + "--max-steps 5");  // 8 steps per epoch
  ASSERT_EQ(a.rc, 0) << a.out;
  auto b = sh(run + "--resume auto");
  ASSERT_EQ(b.rc, 0) << b.out;
  auto one = sh(kRecipe + "--epochs 2 --jsonl " + d("one.jsonl"));
  ASSERT_EQ(one.rc, 0) << one.out;
  const std::vector<double> per_step = train_losses(d("one.jsonl"));
  ASSERT_EQ(per_step.size(), 16u);
  std::vector<int> steps, covered(17, 0);
  for (const auto& t : records(d("m.jsonl"), "train")) {
    const int step = std::stoi(field(t, "step"));
    steps.push_back(step);
    ASSERT_NE(field(t, "window_steps"), "") << t;
    const int n = std::stoi(field(t, "window_steps"));
    double mean = 0;
    for (int k = step - n + 1; k <= step; ++k) {
      ASSERT_GE(k, 1) << t;
      ++covered[k];
      mean += per_step[k - 1] / n;
    }
    EXPECT_NEAR(std::stod(field(t, "loss")), mean, 1e-5 * std::max(1.0, std::abs(mean))) << t;
  }
  EXPECT_EQ(steps, (std::vector<int>{3, 5, 6, 8, 11, 14, 16}));
  for (int k = 1; k <= 16; ++k) EXPECT_EQ(covered[k], 1) << "step " << k;
}

// --eval-only trains nothing: its summary says so and gives no training figures (not "0 img/s").
TEST_F(TrainE2E, EvalOnlySummaryGivesNoTrainingFigures) {
  const std::string syn = std::string(TRAIN_RESNET18) +
                          " --data synthetic --synthetic-size 64 --synthetic-classes 4 --image-size 32 --backend cpu"
                          " --threads 1 --seed 3 --progress lines --batch-size 8 ";
  ASSERT_EQ(sh(syn + "--max-steps 1 --no-eval --checkpoint-dir " + d("ck")).rc, 0);
  auto r = sh(syn + "--eval-only --resume " + d("ck/" + ckpt_name(1)) + " --jsonl " + d("m.jsonl"));
  ASSERT_EQ(r.rc, 0) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("summary: [^\n]*"))) << r.out;
  EXPECT_NE(m[0].str().find("evaluated only (no training figures)"), std::string::npos) << m[0];
  EXPECT_EQ(m[0].str().find("img/s"), std::string::npos) << m[0];
  EXPECT_EQ(m[0].str().find("time per epoch"), std::string::npos) << m[0];
  auto summary = records(d("m.jsonl"), "summary");
  ASSERT_EQ(summary.size(), 1u);
  EXPECT_EQ(field(summary[0], "img_per_s"), "") << summary[0];
  EXPECT_EQ(field(summary[0], "epoch_seconds"), "") << summary[0];
  EXPECT_EQ(field(summary[0], "eval_only"), "true") << summary[0];
  EXPECT_NE(field(summary[0], "eval_seconds"), "") << summary[0];
}

// The summary's "steps" are the steps this run trained and "global_step" where it ended: after a
// resume they differ (the record used to give the global step as "steps"), and a run with nothing left
// to train trained none.
TEST_F(TrainE2E, SummaryCountsTheStepsOfThisRunAndItsGlobalStep) {
  const std::string run = kRecipe + "--epochs 2 --checkpoint-dir " + d("ck") + " --jsonl " + d("m.jsonl") + " ";
  auto a = sh(run + "--max-steps 3");
  ASSERT_EQ(a.rc, 0) << a.out;
  auto b = sh(run + "--resume auto --max-steps 5");
  ASSERT_EQ(b.rc, 0) << b.out;
  auto c = sh(run + "--resume auto --max-steps 5");
  ASSERT_EQ(c.rc, 0) << c.out;
  const auto s = records(d("m.jsonl"), "summary");
  ASSERT_EQ(s.size(), 3u);
  const int want[3][2] = {{3, 3}, {2, 5}, {0, 5}};  // steps, global_step
  for (int k = 0; k < 3; ++k) {
    ASSERT_NE(field(s[k], "steps"), "") << s[k];
    ASSERT_NE(field(s[k], "global_step"), "") << s[k];
    EXPECT_EQ(std::stoi(field(s[k], "steps")), want[k][0]) << s[k];
    EXPECT_EQ(std::stoi(field(s[k], "global_step")), want[k][1]) << s[k];
  }
  EXPECT_NE(a.out.find("summary: 3 steps, "), std::string::npos) << a.out;
  EXPECT_NE(b.out.find("summary: 2 steps in this run (global step 5), "), std::string::npos) << b.out;
  EXPECT_NE(c.out.find("summary: 0 steps in this run (global step 5), "), std::string::npos) << c.out;
}

// With 5 classes or fewer every label is within the top 5: top-5 would read 100% whatever the model
// does. It is not reported (console, eval and summary records, TensorBoard), and the log says why;
// with more classes it is.
TEST_F(TrainE2E, TopFiveIsNotReportedWithFiveClassesOrFewer) {
  const std::string syn = std::string(TRAIN_RESNET18) +
                          " --data synthetic --synthetic-size 64 --image-size 32 --backend cpu --threads 1 --seed 3"
                          " --batch-size 8 --max-steps 2 --progress lines ";
  for (const int classes : {4, 5, 10}) {
    const std::string k = std::to_string(classes), j = d("m" + k + ".jsonl"), tb = d("tb" + k);
    auto r = sh(syn + "--synthetic-classes " + k + " --jsonl " + j + " --tensorboard " + tb);
    ASSERT_EQ(r.rc, 0) << r.out;
    const bool top5 = classes > 5;
    const std::string eval = last_eval_record(j), summary = records(j, "summary").at(0);
    ASSERT_NE(field(eval, "top1"), "") << eval;
    EXPECT_EQ(field(eval, "top5") != "", top5) << eval;
    ASSERT_NE(field(summary, "top1"), "") << summary;
    EXPECT_EQ(field(summary, "top5") != "", top5) << summary;
    EXPECT_EQ(std::regex_search(r.out, std::regex("top-5 [0-9]")), top5) << r.out;  // "top-5 100%"
    EXPECT_EQ(r.out.find("top-5 accuracy is not reported (" + k + " classes: every label is within the top 5)") !=
                  std::string::npos,
              !top5) << r.out;
    auto t = sh(std::string("/usr/bin/python3 ") + DDP_SOURCE_DIR + "/tests/train/read_tfevents.py " + tb);
    EXPECT_EQ(t.rc, 0) << t.out;
    EXPECT_NE(t.out.find("eval/top1 2 "), std::string::npos) << t.out;
    EXPECT_EQ(t.out.find("eval/top5") != std::string::npos, top5) << t.out;
  }
}

// Replica checks inside an epoch (--replica-check-every) are not training time either, as checkpoints
// are not: left out of the epoch's time, the train records' windows and img/s, and reported on their
// own (replica_check_seconds). A PMPI shim makes each check's checksum exchange 0.5 s longer (9 checks:
// one after each of the 8 steps, one at the epoch's end); by accounting as in the checkpoint test, the
// epoch's time plus the checks' fits in the wall time only where the checks are not counted twice.
TEST_F(TrainE2E, ReplicaCheckTimeIsLeftOutOfEpochTimeAndImagesPerSecond) {
  auto r = sh(std::string("env LD_PRELOAD=") + PMPI_SLOW_ALLGATHER + " " + kRecipe +
              "--epochs 1 --replica-check-every 1 --jsonl " + d("m.jsonl"));
  ASSERT_EQ(r.rc, 0) << r.out;
  auto summary = records(d("m.jsonl"), "summary");
  ASSERT_EQ(summary.size(), 1u);
  ASSERT_NE(field(summary[0], "replica_check_seconds"), "") << summary[0];
  const double checks = std::stod(field(summary[0], "replica_check_seconds"));
  EXPECT_GE(checks, 9 * 0.5) << summary[0];
  const double wall = std::stod(field(summary[0], "seconds"));
  std::smatch m;
  ASSERT_TRUE(std::regex_search(summary[0], m, std::regex(R"("epoch_seconds": \[([0-9.eE+-]+)\])"))) << summary[0];
  const double epoch = std::stod(m[1]);
  EXPECT_LE(epoch + checks, wall) << r.out << summary[0];
  EXPECT_LE(std::stod(field(summary[0], "train_seconds")) + checks, wall) << summary[0];
  double windows = 0;
  for (const auto& t : records(d("m.jsonl"), "train")) windows += std::stod(field(t, "window_seconds"));
  EXPECT_LE(windows + checks, wall) << r.out;
  EXPECT_NE(r.out.find("checkpoint, evaluation and replica-check time not counted"), std::string::npos) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("summary: [^\n]*, replica checks [0-9]"))) << r.out;
}
