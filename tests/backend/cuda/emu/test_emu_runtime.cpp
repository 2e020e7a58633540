// The CUDA emulation's own claims (emu.h): deferred stream work (a host read without the needed
// synchronisation sees stale data), event ordering between streams, barriers and their OR, divergent
// barriers refused, launch-configuration, __launch_bounds__ and pointer checks as a GPU makes them,
// the order DDP_CUDA_EMU_REVERSE=1 runs threads and streams' work in; accesses past a buffer's end,
// before its start and misaligned for their type stopping the run; stream capture and graph replay,
// and the calls CUDA refuses during a capture.
#include "emu_kernel.h"  // first: CUDA kernel syntax for the kernels below
#include "emu_test_kernels.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

// Sum of 256 values through shared memory and barriers (as ops.cu's reductions).
__global__ void k_block_sum(const int* x, int* out) {
  __shared__ int sh[256];
  sh[threadIdx.x] = x[blockIdx.x * 256 + threadIdx.x];
  __syncthreads();
  for (int o = 128; o > 0; o >>= 1) {
    if (threadIdx.x < static_cast<unsigned>(o)) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

__global__ void k_any_negative(const int* x, int* out) {
  const int any = __syncthreads_or(x[threadIdx.x] < 0);
  if (threadIdx.x == 0) out[0] = any;
}

// Reads the shared word thread 0 should have written, which it does only when told to.
__global__ void k_shared_read(int write_first, int* out) {
  __shared__ int word;
  if (write_first && threadIdx.x == 0) word = 42;
  __syncthreads();
  if (threadIdx.x == 1) out[blockIdx.x] = word;
}

__global__ void k_fill(int* p, int v) { p[blockIdx.x * blockDim.x + threadIdx.x] = v; }

// A race: every thread writes the same word; which one wins is the run order.
__global__ void k_race(int* p) { p[0] = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); }

// Undefined on a GPU: thread 0 waits at one barrier, the others at another.
__global__ void k_divergent_barrier(int* p) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  p[threadIdx.x] = 1;
}

std::vector<int> read_back(const int* dev, size_t n) {
  std::vector<int> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), dev, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  return host;
}

struct Stream {
  cudaStream_t s = nullptr;
  explicit Stream(unsigned flags = cudaStreamNonBlocking) { EXPECT_EQ(cudaStreamCreateWithFlags(&s, flags), cudaSuccess); }
  ~Stream() { cudaStreamDestroy(s); }
};

// A death test of one launch: the emulation must stop the run (at the launch or at the synchronisation
// that runs the queued kernel) with a message matching `regex`.
#define EXPECT_KERNEL_DEATH(launch, regex) \
  EXPECT_DEATH(                            \
      {                                    \
        launch;                            \
        cudaDeviceSynchronize();           \
      },                                   \
      regex)

TEST(CudaEmulation, HostReadWithoutSynchronisationSeesStaleData) {
  Stream st;
  int *dev = nullptr, *pinned = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 256 * 4), cudaSuccess);
  ASSERT_EQ(cudaMallocHost(&pinned, 256 * 4), cudaSuccess);
  std::memset(pinned, 0, 256 * 4);
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, st.s)(k_fill, dev, 7);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(pinned, dev, 256 * 4, cudaMemcpyDeviceToHost, st.s), cudaSuccess);
  EXPECT_EQ(pinned[5], 0) << "the copy into pinned memory ran before anything waited for the stream";
  ASSERT_EQ(cudaStreamSynchronize(st.s), cudaSuccess);
  EXPECT_EQ(pinned[5], 7);
  // A copy into pageable memory returns once done (as CUDA's), after the stream's earlier work.
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, st.s)(k_fill, dev, 9);
  std::vector<int> host(256, 0);
  ASSERT_EQ(cudaMemcpyAsync(host.data(), dev, 256 * 4, cudaMemcpyDeviceToHost, st.s), cudaSuccess);
  EXPECT_EQ(host[5], 9);
  cudaFreeHost(pinned);
  cudaFree(dev);
}

TEST(CudaEmulation, BlockingCopyDoesNotWaitForNonBlockingStreams) {
  Stream nonblocking, blocking(cudaStreamDefault);
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 256 * 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(dev, 0, 256 * 4), cudaSuccess);
  std::vector<int> host(256, -1);
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, nonblocking.s)(k_fill, dev, 3);
  ASSERT_EQ(cudaMemcpy(host.data(), dev, 256 * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(host[0], 0) << "a blocking copy waited for a non-blocking stream";
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, blocking.s)(k_fill, dev, 4);
  ASSERT_EQ(cudaMemcpy(host.data(), dev, 256 * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(host[0], 4) << "a blocking copy must wait for a blocking stream (and the earlier 3 was overwritten)";
  cudaFree(dev);
}

bool reversed() {
  const char* rev = std::getenv("DDP_CUDA_EMU_REVERSE");
  return rev && std::string(rev) == "1";
}

TEST(CudaEmulation, StreamWaitEventOrdersWork) {
  Stream a, b;
  cudaEvent_t ev = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
  int *src = nullptr, *dst = nullptr;
  ASSERT_EQ(cudaMalloc(&src, 256 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dst, 256 * 4), cudaSuccess);
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, a.s)(k_fill, src, 11);
  ASSERT_EQ(cudaEventRecord(ev, a.s), cudaSuccess);
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, a.s)(k_fill, src, 12);  // after the record: not waited for
  ASSERT_EQ(cudaStreamWaitEvent(b.s, ev, 0), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(dst, src, 256 * 4, cudaMemcpyDeviceToDevice, b.s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(b.s), cudaSuccess);
  std::vector<int> host(256);
  ASSERT_EQ(cudaMemcpy(host.data(), dst, 256 * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  // The second fill is not ordered with the copy: either value is a GPU's. The emulation runs only
  // what the wait needs, or with DDP_CUDA_EMU_REVERSE=1 every other stream's work before b's.
  EXPECT_EQ(host[7], reversed() ? 12 : 11);
  cudaEventDestroy(ev);
  cudaFree(src);
  cudaFree(dst);
}

// Stream b copies what stream a writes with no event between them: a race, which the order the
// emulation runs streams in decides. By default the order the host waits in (a before b: the
// race does not show), with DDP_CUDA_EMU_REVERSE=1 the other way (b's copy first: it copies what
// was there before), so the race shows in one of the two runs. Likewise for a device
// synchronisation (creation order, or the reverse).
TEST(CudaEmulation, ARaceBetweenStreamsShowsInOneOfTheTwoOrders) {
  Stream a, b;
  int *src = nullptr, *dst = nullptr;
  ASSERT_EQ(cudaMalloc(&src, 256 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dst, 256 * 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(src, 0, 256 * 4), cudaSuccess);
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, a.s)(k_fill, src, 5);
  ASSERT_EQ(cudaMemcpyAsync(dst, src, 256 * 4, cudaMemcpyDeviceToDevice, b.s), cudaSuccess);  // no wait on a
  ASSERT_EQ(cudaStreamSynchronize(a.s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(b.s), cudaSuccess);
  EXPECT_EQ(read_back(dst, 256)[3], reversed() ? 0 : 5);
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, a.s)(k_fill, src, 6);
  ASSERT_EQ(cudaMemcpyAsync(dst, src, 256 * 4, cudaMemcpyDeviceToDevice, b.s), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(read_back(dst, 256)[3], reversed() ? 5 : 6);
  // An event wait orders them: the copy sees the fill in both runs.
  cudaEvent_t ev = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
  ddp::cuda_emu::Launch("k_fill", 1, 256, 0, a.s)(k_fill, src, 7);
  ASSERT_EQ(cudaEventRecord(ev, a.s), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(b.s, ev, 0), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(dst, src, 256 * 4, cudaMemcpyDeviceToDevice, b.s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(a.s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(b.s), cudaSuccess);
  EXPECT_EQ(read_back(dst, 256)[3], 7);
  cudaEventDestroy(ev);
  cudaFree(src);
  cudaFree(dst);
}

TEST(CudaEmulation, BarriersAndTheirOr) {
  Stream st;
  std::vector<int> x(3 * 256);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<int>(i % 97) - (i == 300 ? 1000 : 0);
  int *dx = nullptr, *dout = nullptr;
  ASSERT_EQ(cudaMalloc(&dx, x.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, 3 * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ddp::cuda_emu::Launch("k_block_sum", 3, 256, 0, st.s)(k_block_sum, dx, dout);
  std::vector<int> out(3);
  ASSERT_EQ(cudaStreamSynchronize(st.s), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(out.data(), dout, 3 * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int b = 0; b < 3; ++b) {
    int want = 0;
    for (int i = 0; i < 256; ++i) want += x[b * 256 + i];
    EXPECT_EQ(out[b], want) << "block " << b;
  }
  for (int offset : {0, 256}) {  // block 0 has no negative value, the one starting at 256 has one
    ddp::cuda_emu::Launch("k_any_negative", 1, 256, 0, st.s)(k_any_negative, dx + offset, dout);
    ASSERT_EQ(cudaStreamSynchronize(st.s), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(out.data(), dout, 4, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(out[0], offset ? 1 : 0);
  }
  cudaFree(dx);
  cudaFree(dout);
}

// Shared memory starts each block as all-ones bytes (garbage on a GPU): a read of a word no
// thread wrote sees -1 (NaN for floats), not the previous block's or launch's value.
TEST(CudaEmulation, SharedMemoryStartsEachBlockUnwritten) {
  int* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, 2 * 4), cudaSuccess);
  std::vector<int> host(2);
  ddp::cuda_emu::Launch("k_shared_read", 2, 32)(k_shared_read, 1, out);
  ASSERT_EQ(cudaMemcpy(host.data(), out, 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(host[0], 42);
  EXPECT_EQ(host[1], 42);
  ddp::cuda_emu::Launch("k_shared_read", 2, 32)(k_shared_read, 0, out);
  ASSERT_EQ(cudaMemcpy(host.data(), out, 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(host[0], -1) << "the last launch's shared memory leaked into this one";
  EXPECT_EQ(host[1], -1);
  cudaFree(out);
}

TEST(CudaEmulation, BadLaunchesAndCopiesFailAsOnAGpu) {
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 64 * 4), cudaSuccess);
  ddp::cuda_emu::Launch("k_fill", 1, 2048)(k_fill, dev, 1);  // more than 1024 threads per block
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  std::vector<int> host(64);
  ddp::cuda_emu::Launch("k_fill", 1, 64)(k_fill, host.data(), 1);  // a host pointer
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  EXPECT_EQ(host[0], 0) << "the kernel ran on host memory";
  EXPECT_EQ(cudaMemcpy(dev, host.data(), 65 * 4, cudaMemcpyHostToDevice), cudaErrorInvalidValue)
      << "a copy past the allocation's end";
  (void)cudaGetLastError();
  EXPECT_EQ(cudaMemcpy(host.data(), host.data() + 1, 4, cudaMemcpyHostToDevice), cudaErrorInvalidValue)
      << "a host-to-device copy into host memory";
  (void)cudaGetLastError();
  cudaFree(dev);
}

// A kernel declared __launch_bounds__(N) (emu_test_kernels.cu, rewritten as ops.cu is) refuses a
// launch with more than N threads per block, as a GPU does; the kernel does not run.
TEST(CudaEmulation, LaunchBoundsAreEnforced) {
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 256 * 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(dev, 0, 256 * 4), cudaSuccess);
  ddp::emu_test::launch_bounded_fill(128, dev, 1);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  ddp::emu_test::launch_bounded_fill(256, dev, 2);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchOutOfResources);
  ddp::emu_test::launch_bounded_fill_negated(129, dev, 3);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchOutOfResources);
  auto host = read_back(dev, 256);
  EXPECT_EQ(host[0], 1);
  EXPECT_EQ(host[128], 0) << "a refused launch ran";
  ddp::emu_test::launch_bounded_fill_negated(128, dev, 3);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  ddp::emu_test::launch_unbounded_fill(256, dev, 4);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  host = read_back(dev, 256);
  EXPECT_EQ(host[255], 4);
  cudaFree(dev);
}

TEST(CudaEmulation, ReverseOrderRunsTheLastThreadFirst) {
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 4), cudaSuccess);
  ddp::cuda_emu::Launch("k_race", 2, 64)(k_race, dev);
  int winner = -1;
  ASSERT_EQ(cudaMemcpy(&winner, dev, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(winner, reversed() ? 0 : 127) << "the last thread to run writes last";
  cudaFree(dev);
}

// Adds v to every element (so a replay that ran twice, or not at all, shows in the sum).
__global__ void k_add(int* p, int v) { p[blockIdx.x * blockDim.x + threadIdx.x] += v; }

TEST(CudaEmulationGraphs, CaptureRecordsWithoutRunningAndEachLaunchReplaysOnce) {
  Stream main, side;
  cudaEvent_t fork = nullptr, join = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&join, cudaEventDisableTiming), cudaSuccess);
  int *a = nullptr, *b = nullptr;
  ASSERT_EQ(cudaMalloc(&a, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&b, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(a, 0, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(b, 0, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(main.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  cudaStreamCaptureStatus status{};
  ASSERT_EQ(cudaStreamIsCapturing(main.s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  ddp::cuda_emu::Launch("k_add", 1, 64, 0, main.s)(k_add, a, 1);
  // A fork onto another stream and the join back, as the model's copy stream would.
  ASSERT_EQ(cudaEventRecord(fork, main.s), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(side.s, fork, 0), cudaSuccess);
  ddp::cuda_emu::Launch("k_add", 1, 64, 0, side.s)(k_add, b, 10);
  ASSERT_EQ(cudaEventRecord(join, side.s), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(main.s, join, 0), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(a + 1, b, 4, cudaMemcpyDeviceToDevice, main.s), cudaSuccess);  // a[1] = b[0]
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(main.s, &graph), cudaSuccess);
  ASSERT_NE(graph, nullptr);
  ASSERT_EQ(cudaStreamIsCapturing(side.s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusNone) << "the forked stream left the capture with it";
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(read_back(a, 64)[0], 0) << "captured work ran at capture time";
  EXPECT_EQ(read_back(b, 64)[0], 0) << "captured work ran at capture time";
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiateWithFlags(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphDestroy(graph), cudaSuccess);  // the exec keeps what it needs
  for (int k = 0; k < 3; ++k) ASSERT_EQ(cudaGraphLaunch(exec, main.s), cudaSuccess);
  EXPECT_EQ(read_back(a, 64)[0], 0) << "a graph launch is stream work: it waits for a synchronisation";
  ASSERT_EQ(cudaStreamSynchronize(main.s), cudaSuccess);
  const auto ha = read_back(a, 64), hb = read_back(b, 64);
  EXPECT_EQ(ha[0], 3);
  EXPECT_EQ(hb[0], 30);
  EXPECT_EQ(ha[1], 30) << "the copy after the join saw the side stream's work of the same replay";
  EXPECT_EQ(ha[2], 3);
  // The fork event was last recorded in the capture: it stands for no work the host could wait for.
  EXPECT_EQ(cudaEventQuery(fork), cudaErrorCapturedEvent);
  EXPECT_EQ(cudaStreamWaitEvent(side.s, fork, 0), cudaErrorStreamCaptureIsolation);
  ASSERT_EQ(cudaEventRecord(fork, main.s), cudaSuccess);  // recorded again outside: usable
  EXPECT_EQ(cudaEventSynchronize(fork), cudaSuccess);
  (void)cudaGetLastError();
  ASSERT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  cudaEventDestroy(fork);
  cudaEventDestroy(join);
  cudaFree(a);
  cudaFree(b);
}

// Each call that CUDA refuses during a capture: an error now, and the capture invalidated (the end
// of the capture then fails and gives no graph), so a captured step that would go wrong on a GPU
// fails here too.
TEST(CudaEmulationGraphs, CallsCudaRefusesDuringACaptureInvalidateIt) {
  Stream main, other;
  Stream blocking(cudaStreamDefault);
  cudaEvent_t outside = nullptr, inside = nullptr;
  ASSERT_EQ(cudaEventCreate(&outside), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&inside), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(outside, other.s), cudaSuccess);
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 64 * 4), cudaSuccess);
  std::vector<int> host(64, 0);
  int* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, 64 * 4), cudaSuccess);
  struct Case {
    const char* what;
    cudaStream_t capture_on;
    std::function<cudaError_t()> call;
    cudaError_t want;
  };
  const std::vector<Case> cases = {
      {"cudaStreamSynchronize of the capturing stream", main.s, [&] { return cudaStreamSynchronize(main.s); },
       cudaErrorStreamCaptureUnsupported},
      {"cudaStreamQuery of the capturing stream", main.s, [&] { return cudaStreamQuery(main.s); },
       cudaErrorStreamCaptureUnsupported},
      {"cudaMalloc (a potentially unsafe call)", main.s,
       [&] {
         void* p = nullptr;
         return cudaMalloc(&p, 16);
       },
       cudaErrorStreamCaptureUnsupported},
      {"cudaFree", main.s, [&] { return cudaFree(nullptr); }, cudaErrorStreamCaptureUnsupported},
      {"a blocking cudaMemcpy", main.s, [&] { return cudaMemcpy(host.data(), dev, 4, cudaMemcpyDeviceToHost); },
       cudaErrorStreamCaptureUnsupported},
      {"cudaDeviceSynchronize", main.s, [&] { return cudaDeviceSynchronize(); }, cudaErrorStreamCaptureUnsupported},
      {"a wait on an event recorded outside the capture", main.s, [&] { return cudaStreamWaitEvent(main.s, outside, 0); },
       cudaErrorStreamCaptureIsolation},
      {"a copy from pageable host memory", main.s,
       [&] { return cudaMemcpyAsync(dev, host.data(), 4, cudaMemcpyHostToDevice, main.s); },
       cudaErrorStreamCaptureUnsupported},
      {"a query of an event recorded in the capture", main.s,
       [&] {
         EXPECT_EQ(cudaEventRecord(inside, main.s), cudaSuccess);
         return cudaEventQuery(inside);
       },
       cudaErrorCapturedEvent},
      {"the legacy stream while a blocking stream captures", blocking.s,
       [&] { return cudaMemsetAsync(dev, 0, 4, nullptr); }, cudaErrorStreamCaptureImplicit},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ASSERT_EQ(cudaStreamBeginCapture(c.capture_on, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    ddp::cuda_emu::Launch("k_add", 1, 64, 0, c.capture_on)(k_add, dev, 1);
    EXPECT_EQ(c.call(), c.want);
    // Later work on the invalidated capture is refused too; the end gives no graph.
    EXPECT_EQ(cudaMemsetAsync(dev, 0, 4, c.capture_on), cudaErrorStreamCaptureInvalidated);
    cudaGraph_t g = reinterpret_cast<cudaGraph_t>(&host);
    EXPECT_EQ(cudaStreamEndCapture(c.capture_on, &g), cudaErrorStreamCaptureInvalidated);
    EXPECT_EQ(g, nullptr);
    (void)cudaGetLastError();
  }
  // Pinned memory and device memory are fine in a capture; a relaxed capture allows cudaMalloc.
  ASSERT_EQ(cudaStreamBeginCapture(main.s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(dev, pinned, 4, cudaMemcpyHostToDevice, main.s), cudaSuccess);
  void* extra = nullptr;
  EXPECT_EQ(cudaMalloc(&extra, 16), cudaSuccess);
  cudaGraph_t g = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(main.s, &g), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(g), cudaSuccess);
  // ... but not a device synchronisation, in any mode.
  ASSERT_EQ(cudaStreamBeginCapture(main.s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(main.s, &g), cudaErrorStreamCaptureInvalidated);
  (void)cudaGetLastError();
  cudaFree(extra);
  cudaFreeHost(pinned);
  cudaFree(dev);
  cudaEventDestroy(outside);
  cudaEventDestroy(inside);
}

TEST(CudaEmulationGraphs, AForkNotJoinedBackFailsTheCapture) {
  Stream main, side;
  cudaEvent_t fork = nullptr;
  ASSERT_EQ(cudaEventCreate(&fork), cudaSuccess);
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(main.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(fork, main.s), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(side.s, fork, 0), cudaSuccess);
  ddp::cuda_emu::Launch("k_add", 1, 64, 0, side.s)(k_add, dev, 1);  // never joined back
  ddp::cuda_emu::Launch("k_add", 1, 64, 0, main.s)(k_add, dev, 1);
  cudaGraph_t g = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(main.s, &g), cudaErrorStreamCaptureUnjoined);
  EXPECT_EQ(g, nullptr);
  (void)cudaGetLastError();
  cudaStreamCaptureStatus status{};
  ASSERT_EQ(cudaStreamIsCapturing(side.s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusNone);
  cudaEventDestroy(fork);
  cudaFree(dev);
}

TEST(CudaEmulationDeathTest, AWritePastABuffersEndStopsTheRun) {
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 60 * 4), cudaSuccess);  // 60 ints; the kernel writes 64
  EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_fill", 1, 64)(k_fill, dev, 5),
                      // The first thread out of bounds to run: +240 in order, +252 in reverse. Caught
                      // by the guard page, or with DDP_CUDA_EMU_GUARD_FRONT=1 by the canary bytes after it.
                      "k_fill (read or )?wrote past the end of a buffer: byte \\+2[45][0-9] of a 240-byte "
                      "device allocation");
  ddp::cuda_emu::Launch("k_fill", 1, 60)(k_fill, dev, 5);  // exactly the buffer: fine
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(dev);
  // Not a multiple of 16 bytes: a write into the padding before the guard page is caught by its
  // canary bytes.
  ASSERT_EQ(cudaMalloc(&dev, 61 * 4), cudaSuccess);
  EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_fill", 1, 62)(k_fill, dev, 5),
                      "k_fill wrote past the end of a buffer: byte \\+244 of a 244-byte device allocation");
  cudaFree(dev);
}

// y[i] = x[i + 1]: one element too far for the grid's last thread.
__global__ void k_shift_left_grid(const int* x, int* y) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  y[i] = x[i + 1];
}

// Two one-page int buffers (x zeroed) for the guard-page tests, freed at the end of the scope. A
// buffer of whole pages has no slack on either side in either layout (emu.h).
struct OnePageBuffers {
  int *x = nullptr, *y = nullptr;
  OnePageBuffers() {
    EXPECT_EQ(cudaMalloc(&x, 1024 * 4), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&y, 1024 * 4), cudaSuccess);
    EXPECT_EQ(cudaMemset(x, 0, 1024 * 4), cudaSuccess);
  }
  ~OnePageBuffers() {
    cudaFree(x);
    cudaFree(y);
  }
};

// The guard page after a whole-page buffer is its last byte's neighbour.
TEST(CudaEmulationDeathTest, AReadPastABuffersEndStopsTheRun) {
  OnePageBuffers b;
  ASSERT_FALSE(::testing::Test::HasFailure());
  int *x = b.x, *y = b.y;
  EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_shift_left", 4, 256)(k_shift_left_grid, x, y),
                      "k_shift_left read or wrote past the end of a buffer: byte \\+4096 of a 4096-byte "
                      "device allocation");
  ddp::cuda_emu::Launch("k_shift_left", 3, 256)(k_shift_left_grid, x, y);  // in bounds
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// y[i] = x[i - 1]: one element too early for thread 0.
__global__ void k_shift_right(const int* x, int* y) { y[threadIdx.x] = x[static_cast<int>(threadIdx.x) - 1]; }

// p[i - back] = v: thread i writes `back` elements before its own.
__global__ void k_fill_back(int* p, int back, int v) { p[static_cast<int>(threadIdx.x) - back] = v; }

// The guard page in front of a whole-page buffer is its first byte's neighbour.
TEST(CudaEmulationDeathTest, AReadBeforeABuffersStartStopsTheRun) {
  OnePageBuffers b;
  ASSERT_FALSE(::testing::Test::HasFailure());
  int *x = b.x, *y = b.y;
  EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_shift_right", 1, 64)(k_shift_right, x, y),
                      "k_shift_right read or wrote before the start of a buffer: byte -4 \\(4 before its "
                      "start\\) of a 4096-byte device allocation");
  ddp::cuda_emu::Launch("k_shift_right", 1, 64)(k_shift_right, x + 1, y);  // in bounds
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// A write before a buffer's start lands on the guard page, or on the canary bytes of the slack
// between it and the buffer (checked after every kernel): either stops the run, naming the byte.
TEST(CudaEmulationDeathTest, AWriteBeforeABuffersStartStopsTheRun) {
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 60 * 4), cudaSuccess);
  EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_fill_back", 1, 60)(k_fill_back, dev, 1, 5),
                      "k_fill_back (read or )?wrote before the start of a buffer: byte -4 \\(4 before its "
                      "start\\) of a 240-byte device allocation");
  if (!ddp::cuda_emu::guard_front()) {  // far into the slack before it (3,856 bytes of the default layout)
    EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_fill_back", 1, 1)(k_fill_back, dev, 900, 5),
                        "k_fill_back wrote before the start of a buffer: byte -3600 \\(3600 before its "
                        "start\\) of a 240-byte");
  }
  ddp::cuda_emu::Launch("k_fill_back", 1, 60)(k_fill_back, dev + 1, 1, 5);  // exactly the buffer: fine
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(dev);
}

// 16-byte vector accesses at x + offset (elements): aligned only when offset is a multiple of 4.
__global__ void k_load_uint4(const int* x, int offset, int* y) {
  const uint4 v = *reinterpret_cast<const uint4*>(x + offset);
  y[threadIdx.x] = static_cast<int>(v.x + v.y + v.z + v.w);
}
__global__ void k_store_float4(float* y, int offset) {
  reinterpret_cast<float4*>(y + offset)[threadIdx.x] = make_float4(1.0f, 2.0f, 3.0f, 4.0f);
}

// On a GPU a vector access at an address not aligned to its size faults ("misaligned address"); on
// x86 it works. The emulation stops the run at it, naming the type, the source line and the kernel.
TEST(CudaEmulationDeathTest, AMisalignedVectorAccessStopsTheRun) {
  int* x = nullptr;
  float* y = nullptr;
  ASSERT_EQ(cudaMalloc(&x, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&y, 64 * 4), cudaSuccess);
  ASSERT_EQ(cudaMemset(x, 0, 64 * 4), cudaSuccess);
  ddp::cuda_emu::Launch("k_load_uint4", 1, 8)(k_load_uint4, x, 4, x + 32);  // 16-byte aligned: fine
  ddp::cuda_emu::Launch("k_store_float4", 1, 8)(k_store_float4, y, 4);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_load_uint4", 1, 8)(k_load_uint4, x, 1, x + 32),
                      "misaligned address 0x[0-9a-f]+ for type 'const struct uint4', which requires 16 byte "
                      "alignment(.|\n)*"
                      "kernel k_load_uint4: the access reported above is misaligned");
  EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_store_float4", 1, 8)(k_store_float4, y, 2),  // 8-byte aligned only
                      "store to misaligned address 0x[0-9a-f]+ for type 'struct float4'(.|\n)*kernel k_store_float4");
  cudaFree(x);
  cudaFree(y);
}

TEST(CudaEmulationDeathTest, DivergentBarriersStopTheRun) {
  int* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 64 * 4), cudaSuccess);
  EXPECT_KERNEL_DEATH(ddp::cuda_emu::Launch("k_divergent_barrier", 1, 64)(k_divergent_barrier, dev),
                      "wait at different barriers");
  cudaFree(dev);
}

}  // namespace
