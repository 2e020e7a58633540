// Test shim, LD_PRELOADed into one rank of a job: through MPI's profiling interface it stops that
// process (SIGSTOP) inside its first MPI_Comm_dup, as a rank stopped by an operator, a debugger or a
// stalled node would be during start-up. The other ranks then wait in their own MPI_Comm_dup, which
// has no bounded form (TrainE2E.RankStoppedDuringStartUpEndsTheJobWithinTheTimeout).
#include <mpi.h>
#include <signal.h>

extern "C" int MPI_Comm_dup(MPI_Comm comm, MPI_Comm* newcomm) {
  raise(SIGSTOP);
  return PMPI_Comm_dup(comm, newcomm);
}
