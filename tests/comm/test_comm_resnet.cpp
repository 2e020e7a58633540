// DDP with the CPU ResNet18 under mpirun. With BN in train mode each rank normalises with the
// statistics of its own micro-batch (as PyTorch DDP without SyncBatchNorm does), so N ranks on a
// global batch are NOT the same computation as 1 rank on that whole batch. What they are equal to is
// one process that runs the same N micro-batches one after another and averages their gradients
// (ddp_test_worker --emulate N, which uses no communicator). That is the equivalence checked here;
// the exact global-batch equivalence is checked with the BN-free MLP in test_comm_ddp.
// Tolerance |a - b| <= 1e-5 + 1e-4 |b| after 2 SGD steps. Only the summation order of the average
// differs (4 ranks: MPI adds pairwise in float, the reference in double): 1.5e-8 after one step,
// 2e-6 after two. BN over 4 samples per rank (1x1 maps in layer4 at 32 px) amplifies such rounding
// roughly 100x per step, so the test stops at 2 steps rather than loosening the tolerance.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "mpi_run.h"

using namespace ddp_test;

namespace {

TEST(CommResNet, DdpEqualsAccumulatedMicroBatches) {
  if (!DDP_TEST_HAVE_CPU_RESNET) GTEST_SKIP() << "ddp_cpu (CPU ResNet18) not in this build";
  std::string dir = temp_dir("resnet");
  const std::string common = "--model resnet18 --size 32 --threads 1 --steps 2 --global-batch 16 --lr 0.01 ";
  for (int np : {2, 4}) {
    std::string ref = dir + "/emu" + std::to_string(np) + ".bin", out = dir + "/ddp" + std::to_string(np) + ".bin";
    auto e = single(common + "--emulate " + std::to_string(np) + " --out " + ref);
    ASSERT_EQ(e.rc, 0) << e.output;
    auto r = mpirun(np, common + "--bucket-bytes 4000000 --check-every 1 --out " + out);
    ASSERT_EQ(r.rc, 0) << r.output;
    auto a = read_floats(out), b = read_floats(ref);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_GT(a.size(), 11000000u);
    size_t bad = 0;
    double worst = 0, moved = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      double d = std::fabs(double(a[i]) - double(b[i]));
      worst = std::max(worst, d);
      if (!(d <= 1e-5 + 1e-4 * std::fabs(double(b[i])))) ++bad;
    }
    EXPECT_EQ(bad, 0u) << "np=" << np << " max |diff| " << worst;
    // The comparison must be able to fail: 1 rank on only its own micro-batches ends elsewhere.
    auto solo = single(common + "--emulate 1 --global-batch " + std::to_string(16 / np) + " --out " + dir + "/solo.bin");
    ASSERT_EQ(solo.rc, 0) << solo.output;
    auto s = read_floats(dir + "/solo.bin");
    for (size_t i = 0; i < a.size(); ++i) moved = std::max(moved, std::fabs(double(s[i]) - double(b[i])));
    EXPECT_GT(moved, 100 * worst + 1e-4) << "the reference does not depend on the other ranks' data";
  }
  std::filesystem::remove_all(dir);  // 45 MB per parameter file
}

}  // namespace
