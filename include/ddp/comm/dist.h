// Process bootstrap for multi-process runs: MPI start-up, rank discovery, node layout, and the
// one way a rank ends the whole job (abort_job). Every launcher we support (mpirun with a hostfile,
// srun --mpi=pmix, a single process without a launcher) goes through init_distributed.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace ddp::comm {

struct DistEnv {
  int rank = 0, world = 1;
  int local_rank = 0, local_size = 1;  // within the node (ranks sharing memory)
  int node_index = 0, num_nodes = 1;   // nodes numbered by their lowest world rank
  std::string hostname;                // this rank's host
  std::vector<std::string> hosts;      // hostname of every node, by node_index
  bool thread_multiple = false;        // MPI granted MPI_THREAD_MULTIPLE (the MPI communicator's
                                       // progress thread needs it; otherwise it runs inline)
};

// MPI_Init_thread (asking for MPI_THREAD_MULTIPLE), rank/size, local rank from
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED), node index from the node leaders' world ranks (not
// from hostnames: two network namespaces on one machine share a hostname but are two nodes to MPI).
// Sets MPI_ERRORS_RETURN on MPI_COMM_WORLD and ddp::set_log_rank. Safe to call once per process.
DistEnv init_distributed(int* argc, char*** argv);
// MPI_Finalize if init_distributed ran and MPI is not finalized yet.
void finalize_distributed();
bool distributed_initialized();

// Bounds a blocking phase of a job's start-up that MPI has no nonblocking form of (DESIGN §4 rule 2):
// MPI_Init, whose wire-up waits for every rank, and the communicators' set-up (MPI_Comm_split_type,
// MPI_Comm_split, MPI_Comm_dup, the start-up allgathers), which every rank must enter. While a guard
// lives, a thread watches the clock; past timeout_s it prints "no answer from the other ranks within
// T s in WHAT; ..." and ends this process (MPI_Abort where MPI allows a second thread to call it, else
// _Exit), and the launcher then ends the job. So a rank that died, was stopped or never started
// before or during start-up ends the job instead of hanging every other rank in MPI.
class StartupGuard {
 public:
  StartupGuard(double timeout_s, std::string what);
  ~StartupGuard();  // the phase is over: the thread stops watching
  StartupGuard(const StartupGuard&) = delete;
  StartupGuard& operator=(const StartupGuard&) = delete;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Prints "[rank r] FATAL: why" to stderr, then MPI_Abort(MPI_COMM_WORLD, code) so the launcher
// tears down every rank (or exits the process when MPI is not running).
[[noreturn]] void abort_job(const std::string& why, int code = 1);

// GPU builds: picks the device for this rank (local_rank % visible devices, after
// CUDA_VISIBLE_DEVICES) and makes it current. Returns the ordinal; throws if no GPU is visible.
int select_cuda_device(const DistEnv& env);

}  // namespace ddp::comm
