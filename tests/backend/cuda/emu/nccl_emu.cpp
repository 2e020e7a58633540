// NCCL for the CUDA emulation (emu.h): the calls src/comm/nccl_communicator.cpp makes, carried by MPI
// between the ranks' processes (each rank emulates its own GPU), so train_resnet18 with --backend cuda
// runs here with one rank or several under mpirun. A collective is stream work (it runs when
// something waits for its stream) and its buffers must lie inside emulated device memory. What
// it cannot show: NCCL's own transports, its asynchronous errors, and overlap with compute.
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>

#include "emu.h"

namespace {

struct Comm {
  MPI_Comm mpi = MPI_COMM_NULL;
  int rank = 0, size = 1;
};

thread_local std::string g_last;

ncclResult_t fail(ncclResult_t r, const std::string& why) {
  g_last = why;
  std::fprintf(stderr, "[cuda emulation] NCCL: %s\n", why.c_str());
  return r;
}

// A collective that fails while it runs as stream work has no caller to return to.
[[noreturn]] void die(const char* why) {
  std::fprintf(stderr, "[cuda emulation] NCCL: %s\n", why);
  std::abort();
}

bool device_ok(const void* p, size_t bytes) { return bytes == 0 || ddp::cuda_emu::device_range_ok(p, bytes); }

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* v) {
  *v = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument (emulated NCCL)";
    case ncclInvalidUsage: return "invalid usage (emulated NCCL)";
    case ncclSystemError: return "system error (emulated NCCL)";
    default: return "NCCL error (emulated)";
  }
}

const char* ncclGetLastError(ncclComm_t) { return g_last.c_str(); }

// The id names the communicator: the process that made it and a counter.
ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  static std::atomic<int> counter{0};
  std::memset(id, 0, sizeof *id);
  std::snprintf(id->internal, sizeof id->internal, "emu-nccl %d %d", static_cast<int>(getpid()), counter++);
  return ncclSuccess;
}

// Collective over MPI_COMM_WORLD: the ranks holding the same id form the communicator.
ncclResult_t ncclCommInitRankConfig(ncclComm_t* out, int nranks, ncclUniqueId id, int rank, ncclConfig_t*) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) return fail(ncclInvalidUsage, "the emulated NCCL runs over MPI, which is not initialised");
  unsigned color = 2166136261u;  // FNV-1a of the id
  for (char c : id.internal) color = (color ^ static_cast<unsigned char>(c)) * 16777619u;
  auto* c = new Comm;
  if (MPI_Comm_split(MPI_COMM_WORLD, static_cast<int>(color & 0x7fffffff), rank, &c->mpi) != MPI_SUCCESS) {
    delete c;
    return fail(ncclSystemError, "MPI_Comm_split failed");
  }
  MPI_Comm_rank(c->mpi, &c->rank);
  MPI_Comm_size(c->mpi, &c->size);
  if (c->size != nranks || c->rank != rank) {
    const std::string why = "ranks with this id: " + std::to_string(c->size) + " (expected " + std::to_string(nranks) +
                            "), this one is " + std::to_string(c->rank) + " (expected " + std::to_string(rank) + ")";
    MPI_Comm_free(&c->mpi);
    delete c;
    return fail(ncclInvalidArgument, why);
  }
  *out = reinterpret_cast<ncclComm_t>(c);
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* st) {
  *st = ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  auto* c = reinterpret_cast<Comm*>(comm);
  if (!c) return ncclSuccess;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && c->mpi != MPI_COMM_NULL) MPI_Comm_free(&c->mpi);
  delete c;
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) { return ncclCommAbort(comm); }

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  auto* c = reinterpret_cast<Comm*>(comm);
  if (!c) return fail(ncclInvalidArgument, "ncclAllReduce on a null communicator");
  if (type != ncclFloat || (op != ncclAvg && op != ncclSum))
    return fail(ncclInvalidArgument, "the emulated ncclAllReduce supports fp32 sum and average only");
  if (!device_ok(send, count * 4) || !device_ok(recv, count * 4))
    return fail(ncclInvalidArgument, "ncclAllReduce: a buffer is not inside emulated device memory");
  if (!ddp::cuda_emu::stream_ok(stream)) return fail(ncclInvalidArgument, "ncclAllReduce: unknown stream");
  // Stream work, as NCCL's: it runs when something waits for the stream (emu.h), in the order each
  // rank enqueued its collectives.
  ddp::cuda_emu::enqueue(stream, [=] {
    auto* out = static_cast<float*>(recv);
    // MPI counts are int: large buffers go in pieces.
    const size_t piece = size_t{1} << 28;
    for (size_t off = 0; off < count; off += piece) {
      const int n = static_cast<int>(std::min(piece, count - off));
      const void* src = send == recv ? MPI_IN_PLACE : static_cast<const float*>(send) + off;
      if (MPI_Allreduce(src, out + off, n, MPI_FLOAT, MPI_SUM, c->mpi) != MPI_SUCCESS) die("MPI_Allreduce failed");
    }
    if (op == ncclAvg)
      for (size_t i = 0; i < count; ++i) out[i] /= static_cast<float>(c->size);
  });
  return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  auto* c = reinterpret_cast<Comm*>(comm);
  if (!c) return fail(ncclInvalidArgument, "ncclBroadcast on a null communicator");
  if (type != ncclChar && type != ncclUint8) return fail(ncclInvalidArgument, "the emulated ncclBroadcast moves bytes only");
  if (root < 0 || root >= c->size) return fail(ncclInvalidArgument, "ncclBroadcast: root out of range");
  if (!device_ok(recv, count) || (c->rank == root && !device_ok(send, count)))
    return fail(ncclInvalidArgument, "ncclBroadcast: a buffer is not inside emulated device memory");
  if (!ddp::cuda_emu::stream_ok(stream)) return fail(ncclInvalidArgument, "ncclBroadcast: unknown stream");
  ddp::cuda_emu::enqueue(stream, [=] {
    if (c->rank == root && send != recv) std::memmove(recv, send, count);
    const size_t piece = size_t{1} << 30;
    for (size_t off = 0; off < count; off += piece) {
      const int n = static_cast<int>(std::min(piece, count - off));
      if (MPI_Bcast(static_cast<char*>(recv) + off, n, MPI_BYTE, root, c->mpi) != MPI_SUCCESS) die("MPI_Bcast failed");
    }
  });
  return ncclSuccess;
}

}  // extern "C"
