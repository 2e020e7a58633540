// The NCCL communicator on one GPU (one rank: NCCL cannot put two ranks on one GPU, so multi-rank
// NCCL needs a multi-GPU host). Checks non-blocking initialisation, the event-ordered allreduce on
// the communication stream, wait_all ordering a compute stream, broadcast, and the bucketer over
// device memory. Skips without a GPU. Expected values: the average over one rank is the input.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ddp/comm/bucketer.h"
#include "ddp/comm/communicator.h"
#include "ddp/comm/dist.h"
#include "ddp/comm/replica_guard.h"
#include "ddp/core/check.h"
#include "ddp/core/tensor.h"

#if DDP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

ddp::comm::DistEnv& env() {
  static ddp::comm::DistEnv e = ddp::comm::init_distributed(nullptr, nullptr);
  return e;
}

class FinalizeMpi : public ::testing::Environment {
 public:
  void TearDown() override { ddp::comm::finalize_distributed(); }
};
const auto* const kFinalize = ::testing::AddGlobalTestEnvironment(new FinalizeMpi);

TEST(CommNccl, NonCudaBuildRefusesClearly) {
#if DDP_HAVE_CUDA
  GTEST_SKIP() << "CUDA build";
#else
  ddp::comm::CommOptions opt;
  try {
    ddp::comm::make_nccl_communicator(env(), opt);
    FAIL() << "no error";
  } catch (const ddp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA build"), std::string::npos) << e.what();
  }
#endif
}

TEST(CommNccl, OneRankAllreduceBroadcastAndBuckets) {
  if (!ddp::cuda_available()) GTEST_SKIP() << "no GPU visible: " << ddp::cuda_unavailable_reason();
#if DDP_HAVE_CUDA
  ddp::comm::CommOptions opt;
  opt.timeout_s = 30;
  auto c = ddp::comm::make_nccl_communicator(env(), opt);
  EXPECT_STREQ(c->name(), "nccl");
  ASSERT_EQ(c->size(), 1);

  const size_t n = 1 << 20;
  std::vector<float> host(n), back(n);
  for (size_t i = 0; i < n; ++i) host[i] = std::sin(0.001f * static_cast<float>(i));
  float* dev = nullptr;
  CUDA_CHECK(cudaMalloc(&dev, n * sizeof(float)));
  cudaStream_t compute;
  CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  cudaEvent_t ready;
  CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));

  // The copy is on the compute stream; the allreduce must wait for it through the event.
  CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, compute));
  CUDA_CHECK(cudaEventRecord(ready, compute));
  c->allreduce_avg_async(dev, n, ready);
  c->wait_all(compute);
  CUDA_CHECK(cudaMemcpyAsync(back.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost, compute));
  CUDA_CHECK(cudaStreamSynchronize(compute));
  EXPECT_EQ(back, host);

  c->broadcast(dev, n * sizeof(float), 0);
  CUDA_CHECK(cudaMemcpy(back.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);

  ddp::comm::GradBucketer b(*c, dev, static_cast<int64_t>(n), 1 << 20);
  EXPECT_EQ(b.num_buckets(), 4);
  for (int step = 0; step < 3; ++step) {
    b.begin_step();
    CUDA_CHECK(cudaEventRecord(ready, compute));
    b.on_ready({static_cast<int64_t>(n / 2), ready});
    CUDA_CHECK(cudaEventRecord(ready, compute));
    b.on_ready({0, ready});
    b.finish(compute);
  }
  CUDA_CHECK(cudaStreamSynchronize(compute));
  CUDA_CHECK(cudaMemcpy(back.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);

  // No event: the communicator waits for the device first (the copy below is on another stream).
  CUDA_CHECK(cudaMemsetAsync(dev, 0, n * sizeof(float), compute));
  CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, compute));
  ddp::comm::average_buffers(*c, dev, static_cast<int64_t>(n));
  CUDA_CHECK(cudaMemcpy(back.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);

  double v[2] = {1.5, -2};
  c->allreduce_sum(v, 2);
  EXPECT_EQ(v[0], 1.5);
  c->barrier();
  CUDA_CHECK(cudaEventDestroy(ready));
  CUDA_CHECK(cudaStreamDestroy(compute));
  CUDA_CHECK(cudaFree(dev));
#endif
}

}  // namespace
