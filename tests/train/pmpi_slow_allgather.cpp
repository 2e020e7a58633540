// Test shim, LD_PRELOADed into a run: through MPI's profiling interface every MPI_Iallgather (in
// training, only the replica check's exchange of parameter checksums) starts 0.5 s late, so that the
// checks take a time large enough to see where it is counted
// (TrainE2E.ReplicaCheckTimeIsLeftOutOfEpochTimeAndImagesPerSecond).
#include <mpi.h>
#include <unistd.h>

extern "C" int MPI_Iallgather(const void* sendbuf, int sendcount, MPI_Datatype sendtype, void* recvbuf, int recvcount,
                              MPI_Datatype recvtype, MPI_Comm comm, MPI_Request* request) {
  usleep(500000);
  return PMPI_Iallgather(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, comm, request);
}
