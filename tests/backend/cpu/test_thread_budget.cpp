// The CPU backend's thread budget: with ModelConfig::threads = 1 a training step must run on the
// calling thread alone. Several ranks share a host (2 ranks on 2 cores in the quick start, each given
// cores / ranks threads); one OpenMP region with the default all-core team gives each rank an extra
// worker that spins between regions against the other rank's compute (the quick start's 2-rank
// throughput swung between ~250 and ~600 img/s before every region took the backend's count).
//
// libgomp starts a team's worker threads the first time a region asks for them and keeps them, so a
// region that ignored the budget shows up as new entries in /proc/self/task. This binary holds this
// one test so that no earlier test has already started a pool.
#include <gtest/gtest.h>
#include <omp.h>

#include <filesystem>
#include <vector>

#include "ddp/backend/cpu/resnet18_cpu.h"
#include "ddp/nn/model.h"

namespace {

int thread_count() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

}  // namespace

TEST(CpuThreadBudget, OneThreadStepStartsNoWorkers) {
  if (omp_get_num_procs() < 2) GTEST_SKIP() << "needs >= 2 cores: with one core the default team is 1 thread too";
  ddp::nn::ModelConfig cfg;
  cfg.num_classes = 10;
  cfg.max_batch = 8;
  cfg.height = 32;
  cfg.width = 32;
  cfg.threads = 1;
  ddp::cpu::CpuResNet18 m(cfg);
  std::vector<uint8_t> img(8 * 32 * 32 * 3);
  for (size_t i = 0; i < img.size(); ++i) img[i] = static_cast<uint8_t>((i * 37 + 11) % 251);
  std::vector<int32_t> lab = {0, 1, 2, 3, 4, 5, 6, 7};
  const int before = thread_count();
  ddp::nn::SgdConfig sc;
  sc.momentum = 0.9f;
  sc.nesterov = true;
  sc.weight_decay = 5e-4f;
  for (int step = 0; step < 2; ++step) {
    m.set_input_u8(img.data(), lab.data(), 8, 32, 32);
    m.forward(ddp::nn::Mode::Train);
    m.backward(1.0f, nullptr);
    ASSERT_TRUE(m.grads_finite());
    m.sgd_step(sc, 0.1f, 1.0f);
  }
  (void)m.param_checksum();
  m.set_input_u8(img.data(), lab.data(), 8, 32, 32);
  m.forward(ddp::nn::Mode::Eval);
  EXPECT_EQ(thread_count(), before) << "an OpenMP region ran with more threads than ModelConfig::threads = 1";
}
