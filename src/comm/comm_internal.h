// Private to src/comm: pieces the NCCL communicator reuses from the MPI one.
#pragma once

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
