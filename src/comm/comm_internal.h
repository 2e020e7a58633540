// Private to src/comm: pieces the NCCL communicator reuses from the MPI one.
#pragma once

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "ddp/comm/communicator.h"

namespace ddp::comm::detail {

// The MPI communicator without the start-up summary (the NCCL one uses it for host reductions).
std::unique_ptr<Communicator> make_mpi_communicator_quiet(const DistEnv& env, const CommOptions& opt);
// Every rank's string, by rank (blocking; start-up only).
std::vector<std::string> allgather_strings(const std::string& s);
// "host-a: 2 ranks (0,1); host-b: 2 ranks (2,3)"
std::string describe_layout(const DistEnv& env);
std::string timeout_message(const std::string& op, double timeout_s, int64_t step);

}  // namespace ddp::comm::detail

namespace ddp::comm::detail {

// Deadlines that do not count time this process spent stopped. A job suspended as a whole (scontrol
// suspend, gang scheduling, SIGSTOP to every rank) and resumed after more than --timeout must carry
// on, not end with "no answer from the other ranks": every rank was stopped alike. A rank stopped on
// its own is still noticed, since only it receives the SIGCONT; its peers' deadlines run on.
// init_distributed installs the SIGCONT handler (idempotent) that records when the process continued.
void install_continue_handler();
// When this process last continued after a stop (steady_clock; its epoch when never).
std::chrono::steady_clock::time_point last_continued();
// start + timeout_s has passed, counting from the last continue when that came after start.
inline bool past_deadline(std::chrono::steady_clock::time_point start, double timeout_s) {
  const auto from = std::max(start, last_continued());
  return std::chrono::steady_clock::now() - from > std::chrono::duration<double>(timeout_s);
}

}  // namespace ddp::comm::detail
