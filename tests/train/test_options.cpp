// The command line: defaults, the config file, and bad values refused with the flag named.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "ddp/core/check.h"
#include "ddp/train/options.h"

using ddp::train::parse_options;
using ddp::train::TrainOptions;

namespace {
std::optional<TrainOptions> parse(std::vector<std::string> args) {
  args.insert(args.begin(), "train_resnet18");
  std::vector<const char*> argv;
  for (auto& a : args) argv.push_back(a.c_str());
  return parse_options(static_cast<int>(argv.size()), argv.data());
}
std::string error_of(std::vector<std::string> args) {
  try {
    parse(std::move(args));
  } catch (const ddp::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Options, DefaultsAndLrRule) {
  auto o = parse({"--data", "synthetic", "--batch-size", "64"});
  ASSERT_TRUE(o);
  EXPECT_TRUE(o->synthetic);
  EXPECT_EQ(o->batch_size, 64);
  auto notes = ddp::train::resolve_defaults(*o, 8, 4, false);
  EXPECT_EQ(o->backend, ddp::nn::Backend::CPU);
  EXPECT_DOUBLE_EQ(o->lr, 0.1 * 64 * 8 / 256);
  EXPECT_FALSE(notes.empty());  // the choices are printed, not silent
  auto g = parse({"--data", "synthetic"});
  ddp::train::resolve_defaults(*g, 1, 1, true);
  EXPECT_EQ(g->backend, ddp::nn::Backend::CUDA);
  EXPECT_EQ(g->comm, ddp::train::CommKind::Nccl);
  EXPECT_EQ(g->amp, ddp::nn::Amp::F16);
}

TEST(Options, HelpReturnsNothing) { EXPECT_FALSE(parse({"--help"})); }

TEST(Options, BadValuesNameTheFlag) {
  struct Case { std::vector<std::string> args; std::string flag; };
  std::vector<Case> cases = {
      {{"--data", "synthetic", "--backend", "tpu"}, "--backend"},
      {{"--data", "synthetic", "--amp", "fp8"}, "--amp"},
      {{"--data", "synthetic", "--epochs", "0"}, "--epochs"},
      {{"--data", "synthetic", "--epochs", "abc"}, "--epochs"},
      {{"--data", "synthetic", "--batch-size", "-3"}, "--batch-size"},
      {{"--data", "synthetic", "--lr-schedule", "linear"}, "--lr-schedule"},
      {{"--data", "synthetic", "--label-smoothing", "1.5"}, "--label-smoothing"},
      {{"--data", "synthetic", "--image-size", "16"}, "--image-size"},
      {{"--data", "synthetic", "--momentum", "1"}, "--momentum"},
      {{"--data", "synthetic", "--resume", "auto"}, "--resume"},
      {{"--data", "synthetic", "--checkpoint-every", "sometimes", "--checkpoint-dir", "x"}, "--checkpoint-every"},
      {{"--data", "synthetic", "--checkpoint-every", "99999999999999999999", "--checkpoint-dir", "x"}, "--checkpoint-every"},
      {{"--data", "synthetic", "--checkpoint-every", " 4", "--checkpoint-dir", "x"}, "--checkpoint-every"},
      {{"--data", "synthetic", "--tf32", "maybe"}, "--tf32"},
      {{"--data", "synthetic", "--comm", "gloo"}, "--comm"},
      {{"--data", "synthetic", "--warmup-epochs", "100", "--epochs", "10"}, "--warmup-epochs"},
      {{"--data", "synthetic", "--no-such-flag"}, "--no-such-flag"},
      {{"--data", "synthetic", "--bat", "8"}, "--bat"},  // no abbreviations
      {{"--epochs", "3"}, "--data"},
      // Values that parse but would fail later, inside the program, without naming the flag.
      {{"--data", "synthetic", "--timeout", "inf"}, "--timeout"},
      {{"--data", "synthetic", "--timeout", "1e-9"}, "--timeout"},
      {{"--data", "synthetic", "--bucket-mb", "inf"}, "--bucket-mb"},
      {{"--data", "synthetic", "--bucket-mb", "1e-9"}, "--bucket-mb"},
      {{"--data", "synthetic", "--workers", "0"}, "--workers"},
      {{"--data", "synthetic", "--workers", "100000"}, "--workers"},
      {{"--data", "synthetic", "--threads", "100000"}, "--threads"},
      {{"--data", "synthetic", "--image-size", "100000"}, "--image-size"},
      {{"--data", "synthetic", "--val-size", "100000"}, "--val-size"},
      {{"--data", "synthetic", "--synthetic-size", "1e12"}, "--synthetic-size"},
      {{"--data", "synthetic", "--synthetic-size", "99999999999"}, "--synthetic-size"},
      {{"--data", "synthetic", "--image-size", "32", "--batch-size", "1"}, "--batch-size"},
      // Boost reads "-1" into a uint64_t as 2^64 - 1.
      {{"--data", "synthetic", "--seed", "-1"}, "--seed"},
      {{"--data", "synthetic", "--seed", "abc"}, "--seed"},
  };
  for (const auto& c : cases) {
    std::string e = error_of(c.args);
    EXPECT_NE(e.find(c.flag), std::string::npos) << "args for " << c.flag << " gave: '" << e << "'";
  }
}

TEST(Options, CpuBackendRefusesGpuOnlySettings) {
  auto o = parse({"--data", "synthetic", "--backend", "cpu", "--amp", "fp16"});
  ASSERT_TRUE(o);
  try {
    ddp::train::resolve_defaults(*o, 1, 1, false);
    FAIL() << "fp16 on the CPU backend was accepted";
  } catch (const ddp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--amp"), std::string::npos);
  }
  auto n = parse({"--data", "synthetic", "--backend", "cpu", "--comm", "nccl"});
  EXPECT_THROW(ddp::train::resolve_defaults(*n, 1, 1, false), ddp::Error);
  auto m = parse({"--data", "synthetic", "--backend", "cuda", "--comm", "mpi"});
  EXPECT_THROW(ddp::train::resolve_defaults(*m, 1, 1, true), ddp::Error);
}

// --deterministic reaches the options and the config text that checkpoints record and ranks compare,
// where it appears only when on (checkpoints from before the flag must not read as another recipe).
TEST(Options, DeterministicIsRecordedOnlyWhenOn) {
  auto on = parse({"--data", "synthetic", "--deterministic"});
  ASSERT_TRUE(on);
  EXPECT_TRUE(on->deterministic);
  EXPECT_NE(ddp::train::describe(*on).find("\ndeterministic = 1\n"), std::string::npos) << ddp::train::describe(*on);
  auto off = parse({"--data", "synthetic"});
  ASSERT_TRUE(off);
  EXPECT_FALSE(off->deterministic);
  EXPECT_EQ(ddp::train::describe(*off).find("deterministic"), std::string::npos) << ddp::train::describe(*off);
  std::string path = ::testing::TempDir() + "/train_options_det.ini";
  {
    std::ofstream f(path);
    f << "data = synthetic\ndeterministic = true\n";
  }
  auto file = parse({"--config", path});
  std::remove(path.c_str());
  ASSERT_TRUE(file);
  EXPECT_TRUE(file->deterministic);
}

TEST(Options, ConfigFileWithCommandLineWinning) {
  std::string path = ::testing::TempDir() + "/train_options_test.ini";
  {
    std::ofstream f(path);
    f << "data = synthetic\nepochs = 7\nbatch-size = 32\nlr-schedule = cosine\nnesterov = true\n";
  }
  auto o = parse({"--config", path, "--epochs", "3"});
  ASSERT_TRUE(o);
  EXPECT_EQ(o->epochs, 3);  // command line wins
  EXPECT_EQ(o->batch_size, 32);
  EXPECT_EQ(o->lr_schedule, ddp::train::LrScheduleKind::Cosine);
  EXPECT_TRUE(o->nesterov);
  std::remove(path.c_str());
  EXPECT_NE(error_of({"--config", "/nonexistent/x.ini"}).find("--config"), std::string::npos);
}

// Words that belong to no flag were dropped: "--nesterov false" ran with Nesterov on.
TEST(Options, StrayArgumentsAreRefused) {
  EXPECT_NE(error_of({"--data", "synthetic", "--nesterov", "false"}).find("unexpected argument 'false'"),
            std::string::npos);
  EXPECT_NE(error_of({"--data", "synthetic", "--epochs", "5", "10"}).find("unexpected argument '10'"), std::string::npos);
  EXPECT_NE(error_of({"stray", "--data", "synthetic"}).find("'stray'"), std::string::npos);
  EXPECT_TRUE(parse({"--data", "synthetic", "--nesterov", "--epochs", "5"}));
  // Batch 1 is fine where layer4 keeps more than one value per channel.
  EXPECT_TRUE(parse({"--data", "synthetic", "--batch-size", "1", "--image-size", "64"}));
}

TEST(Options, ConfigFileErrorsNameTheFile) {
  const std::string path = ::testing::TempDir() + "/train_options_bad.ini";
  {
    std::ofstream f(path);
    f << "data = synthetic\nno-such-key = 3\n";
  }
  std::string e = error_of({"--config", path});
  EXPECT_NE(e.find(path), std::string::npos) << e;
  EXPECT_NE(e.find("no-such-key"), std::string::npos) << e;
  std::remove(path.c_str());
  e = error_of({"--config", ::testing::TempDir()});
  EXPECT_NE(e.find("is a directory"), std::string::npos) << e;
}

// Flags given that the run does not use are reported (the trainer warns), so a mistaken recipe shows.
TEST(Options, FlagsWithoutEffectAreListed) {
  auto o = parse({"--data", "/shards", "--synthetic-size", "64", "--no-eval", "--eval-flip", "on"});
  ASSERT_TRUE(o);
  ASSERT_EQ(o->ignored.size(), 2u);
  EXPECT_NE(o->ignored[0].find("--synthetic-size"), std::string::npos) << o->ignored[0];
  EXPECT_NE(o->ignored[1].find("--eval-flip (--no-eval)"), std::string::npos) << o->ignored[1];
  auto used = parse({"--data", "synthetic", "--synthetic-size", "64", "--eval-flip", "on"});
  ASSERT_TRUE(used);
  EXPECT_TRUE(used->ignored.empty());
  auto defaults = parse({"--data", "/shards", "--no-eval"});
  ASSERT_TRUE(defaults);
  EXPECT_TRUE(defaults->ignored.empty());  // defaults are not "given"
}
