// The NCCL communicator (GPU backend). Gradients are averaged with ncclAvg on a communication
// stream of its own, ordered after backward with the events the model records, so allreduce
// overlaps the rest of backward; the compute stream then waits on one event before the optimizer.
//
// The communicator is non-blocking (ncclConfig_t::blocking = 0): every NCCL call returns at once,
// and every wait polls ncclCommGetAsyncError and the CUDA event against a deadline. A dead peer
// thus becomes ncclCommAbort plus a message naming the step, never a GPU spinning forever in a
// collective kernel. Host-side reductions (metrics, found-inf, checksums) go through MPI.
#include <cstdlib>
#include <memory>

#include "comm_internal.h"
#include "ddp/comm/communicator.h"
#include "ddp/core/check.h"
#include "ddp/core/log.h"

#if DDP_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>
#endif

namespace ddp::detail {

[[noreturn]] void fail_nccl(const char* file, int line, const char* expr, int code) {
#if DDP_HAVE_CUDA
  const char* last = ncclGetLastError(nullptr);
  fail(file, line, str("NCCL error ", code, " (", ncclGetErrorString(static_cast<ncclResult_t>(code)), ")",
                       last && *last ? str(": ", last) : std::string(), " in ", expr));
#else
  fail(file, line, str("NCCL error ", code, " in ", expr));
#endif
}

}  // namespace ddp::detail

namespace ddp::comm {

#if DDP_HAVE_CUDA
namespace {

using Clock = std::chrono::steady_clock;

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const DistEnv& env, const CommOptions& opt) : env_(env), timeout_s_(opt.timeout_s) {
    host_ = detail::make_mpi_communicator_quiet(env, opt);
    device_ = select_cuda_device(env);
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));

    ncclUniqueId id;
    if (env.rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    host_->broadcast(&id, sizeof(id), 0);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, env.world, id, env.rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) NCCL_CHECK(r);
    settle("NCCL communicator initialisation");
  }

  ~NcclCommunicator() override {
    if (comm_) {
      // Local teardown; a collective finalize could hang if a peer is gone.
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    if (done_) cudaEventDestroy(done_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  const char* name() const override { return "nccl"; }
  int rank() const override { return env_.rank; }
  int size() const override { return env_.world; }

  void allreduce_avg_async(float* data, size_t count, void* ready) override {
    if (count == 0) return;
    if (ready) {
      CUDA_CHECK(cudaStreamWaitEvent(stream_, static_cast<cudaEvent_t>(ready), 0));
    } else {
      // No event: the caller promises nothing about which stream wrote `data` (average_buffers,
      // tools), so wait for all work queued on the device. Never taken per bucket in training,
      // where the model records an event for every readiness report.
      CUDA_CHECK(cudaDeviceSynchronize());
    }
    ncclResult_t r = ncclAllReduce(data, data, count, ncclFloat, ncclAvg, comm_, stream_);
    after_call(r, "the gradient allreduce");
  }

  void wait_all(void* compute_stream) override {
    CUDA_CHECK(cudaEventRecord(done_, stream_));
    CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(compute_stream), done_, 0));
    // The host waits too: that is where a dead peer is noticed (the GPU alone would spin forever).
    wait_event("the gradient allreduce");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    DDP_CHECK(root >= 0 && root < env_.world, "broadcast root ", root, " out of range (", env_.world, " ranks)");
    // Whatever stream wrote `data` must be done before the communication stream reads it.
    CUDA_CHECK(cudaDeviceSynchronize());
    ncclResult_t r = ncclBroadcast(data, data, bytes, ncclChar, root, comm_, stream_);
    after_call(r, "broadcast");
    CUDA_CHECK(cudaEventRecord(done_, stream_));
    wait_event("broadcast");
  }

  void barrier() override { host_->barrier(); }
  void allreduce_sum(double* values, int count) override { host_->set_step(step_); host_->allreduce_sum(values, count); }
  void allreduce_max(double* values, int count) override { host_->set_step(step_); host_->allreduce_max(values, count); }
  void allreduce_min(int64_t* values, int count) override { host_->set_step(step_); host_->allreduce_min(values, count); }
  std::vector<double> allgather(double value) override { host_->set_step(step_); return host_->allgather(value); }

  int device() const { return device_; }

 private:
  [[noreturn]] void die(const std::string& why) {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    abort_job(why);
  }

  std::string at() const { return step_ >= 0 ? str(" at step ", step_) : std::string(); }

  void after_call(ncclResult_t r, const char* op) {
    if (r == ncclInProgress) {
      settle(op);
    } else if (r != ncclSuccess) {
      const char* last = ncclGetLastError(comm_);
      die(str("NCCL error in ", op, at(), ": ", ncclGetErrorString(r), last && *last ? str(" (", last, ")") : ""));
    }
  }

  // Non-blocking mode: a call that returned ncclInProgress must reach ncclSuccess before the next.
  void settle(const std::string& op) {
    const auto started = Clock::now();
    for (;;) {
      ncclResult_t st = ncclInProgress;
      ncclResult_t r = ncclCommGetAsyncError(comm_, &st);
      if (r != ncclSuccess) st = r;
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) {
        const char* last = ncclGetLastError(comm_);
        die(str("NCCL error in ", op, at(), ": ", ncclGetErrorString(st), last && *last ? str(" (", last, ")") : ""));
      }
      if (detail::past_deadline(started, timeout_s_)) die(detail::timeout_message(op, timeout_s_, step_));
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void wait_event(const std::string& op) {
    const auto started = Clock::now();
    int polls = 0;
    for (;;) {
      cudaError_t e = cudaEventQuery(done_);
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) CUDA_CHECK(e);
      ncclResult_t st = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm_, &st);
      if (r != ncclSuccess) st = r;
      if (st != ncclSuccess && st != ncclInProgress) {
        const char* last = ncclGetLastError(comm_);
        die(str("NCCL error in ", op, at(), ": ", ncclGetErrorString(st), last && *last ? str(" (", last, ")") : "",
                "; a peer rank probably died"));
      }
      if (detail::past_deadline(started, timeout_s_)) die(detail::timeout_message(op, timeout_s_, step_));
      if (++polls > 100) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  DistEnv env_;
  double timeout_s_;
  std::unique_ptr<Communicator> host_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, const CommOptions& opt) {
  auto c = std::make_unique<NcclCommunicator>(env, opt);
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, c->device()));
  char bus[32] = {0};
  CUDA_CHECK(cudaDeviceGetPCIBusId(bus, sizeof(bus), c->device()));
  auto devices = detail::allgather_strings(str("rank ", env.rank, ": GPU ", c->device(), " ", prop.name, " ", bus));
  std::string layout = detail::describe_layout(env);
  int v = 0;
  NCCL_CHECK(ncclGetVersion(&v));
  int major = v / 10000, minor = (v % 10000) / 100, patch = v % 100;
  if (v < 10000) major = v / 1000, minor = (v % 1000) / 100, patch = v % 100;
  const char* ifname = std::getenv("NCCL_SOCKET_IFNAME");
  const char* ib = std::getenv("NCCL_IB_DISABLE");
  std::string dev_list;
  for (size_t i = 0; i < devices.size(); ++i) dev_list += (i ? "; " : "") + devices[i];
  info0("distributed: ", env.world, " rank", env.world == 1 ? "" : "s", " on ", env.num_nodes, " node",
        env.num_nodes == 1 ? "" : "s", " [", layout, "]; devices: [", dev_list, "]; backend: nccl ", major, ".", minor,
        ".", patch, "; network interface: ",
        ifname ? str("NCCL_SOCKET_IFNAME=", ifname) : std::string("NCCL's choice (set NCCL_SOCKET_IFNAME to pin it; NCCL_DEBUG=INFO logs it)"),
        ib ? str(", NCCL_IB_DISABLE=", ib) : std::string(), "; timeout ", opt.timeout_s, " s");
  return c;
}

#else

std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv&, const CommOptions&) {
  DDP_FAIL("--comm nccl needs a CUDA build; this one was configured without CUDA (use --comm mpi with --backend cpu)");
}

#endif

}  // namespace ddp::comm
