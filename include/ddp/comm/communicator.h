// The communicator interface every distributed rule (DESIGN §4) is written against, with two
// implementations: NCCL (GPU memory, its own CUDA stream) and MPI (host memory, CPU backend).
//
// Every collective has a deadline (CommOptions::timeout_s). When it passes — a rank died, hangs, or
// its host vanished — the rank calls abort_job with a message naming the operation and step, so no
// rank ever hangs silently. Collectives are never conditional: every rank calls the same sequence.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ddp/comm/dist.h"

namespace ddp::comm {

struct CommOptions {
  double timeout_s = 60.0;  // dead/stuck rank detection bound for every collective
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* name() const = 0;  // "mpi" | "nccl"
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Enqueues an average-allreduce of `count` fp32 values in place (device pointer for NCCL).
  // `ready` is a cudaEvent_t the communication stream waits on before reading `data`. nullptr: on
  // the CPU the data must be final when this is called; on the GPU (NCCL) the call first waits for
  // all work queued on the device (a host synchronisation; fine for BN buffers, not per bucket).
  // Returns at once otherwise.
  virtual void allreduce_avg_async(float* data, size_t count, void* ready) = 0;
  // Completes every enqueued allreduce. NCCL: makes `compute_stream` (cudaStream_t, nullptr = the
  // legacy default stream) wait on them and returns once the host may launch the optimizer. MPI:
  // returns when the averaged values are in place. Enforces the timeout.
  virtual void wait_all(void* compute_stream = nullptr) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;  // device memory for NCCL
  virtual void barrier() = 0;

  // Small host-side reductions (always through MPI, also in the NCCL implementation).
  virtual void allreduce_sum(double* values, int count) = 0;
  virtual void allreduce_max(double* values, int count) = 0;
  virtual void allreduce_min(int64_t* values, int count) = 0;
  virtual std::vector<double> allgather(double value) = 0;

  // The training step the caller is in, only for the timeout message ("... at step N").
  void set_step(int64_t step) { step_ = step; }
  int64_t step() const { return step_; }

 protected:
  int64_t step_ = -1;
};

// Both print (rank 0) one summary of the job: hosts, ranks per host, devices, backend, and for
// NCCL its version and network interface. Collective over MPI_COMM_WORLD.
std::unique_ptr<Communicator> make_mpi_communicator(const DistEnv& env, const CommOptions& opt);
// Throws a clear ddp::Error on builds without CUDA or when no GPU is visible.
std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, const CommOptions& opt);
// "mpi" or "nccl"; anything else is an error naming the flag value.
std::unique_ptr<Communicator> make_communicator(const std::string& backend, const DistEnv& env,
                                                const CommOptions& opt);

}  // namespace ddp::comm
