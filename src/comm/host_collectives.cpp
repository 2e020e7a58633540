#include "ddp/comm/host_collectives.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>

#include "ddp/core/check.h"
#include "ddp/core/log.h"
#include "mpi_wait.h"

namespace ddp::comm {

namespace {

// These waits are mostly on rank 0's file work (reading a checkpoint for everyone) and are followed
// by a large transfer (a checkpoint's parameters and momentum) that moves only inside MPI_Test, so
// they poll at full speed for longer than the communicator's 200 ms before backing off. They are
// rare (start-up, checkpoints): the core they hold for 2 s costs no training step.
constexpr std::chrono::milliseconds kHostSpin{2000};

std::string timeout_why(std::string_view what, double timeout_s) {
  return str("no answer from the other ranks within ", timeout_s, " s in ", what,
             "; a rank died or is stuck, or rank 0's file system hangs while it reads or writes for everyone",
             " (bound set by --timeout)");
}

std::string error_why(std::string_view what, int rc) {
  return str("MPI error in ", what, ": ", detail::mpi_error_text(rc), " (a peer process or its host probably went away)");
}

void start_or_abort(int rc, std::string_view what) {
  if (rc != MPI_SUCCESS) abort_job(error_why(what, rc));
}

void wait(MPI_Request& req, double timeout_s, std::string_view what) {
  detail::wait_or_abort(
      req, timeout_s, kHostSpin, [&] { return timeout_why(what, timeout_s); }, [&](int rc) { return error_why(what, rc); });
}

int world_rank() {
  int r = 0;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &r));
  return r;
}

int world_size() {
  int n = 1;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &n));
  return n;
}

void check_args(double timeout_s, size_t chunk_bytes, std::string_view what) {
  DDP_CHECK(timeout_s > 0, "host collective '", what, "': timeout must be > 0 s, got ", timeout_s);
  DDP_CHECK(chunk_bytes > 0 && chunk_bytes <= size_t(INT_MAX), "host collective '", what, "': chunk of ", chunk_bytes,
            " bytes outside 1..", INT_MAX);
}

template <class T>
void allreduce_impl(T* values, int count, ReduceOp op, MPI_Datatype type, double timeout_s, std::string_view what) {
  check_args(timeout_s, 1, what);
  if (count <= 0) return;
  const MPI_Op mop = op == ReduceOp::Min ? MPI_MIN : op == ReduceOp::Max ? MPI_MAX : MPI_SUM;
  MPI_Request req;
  start_or_abort(MPI_Iallreduce(MPI_IN_PLACE, values, count, type, mop, MPI_COMM_WORLD, &req), what);
  wait(req, timeout_s, what);
}

// On rank 0 one piece of every rank's block: `len` bytes, then a stride of the whole block, so a
// single gather or scatter of pieces at offset `off` puts each rank's piece inside its own block.
MPI_Datatype block_piece(size_t len, size_t block_bytes) {
  MPI_Datatype piece, slot;
  MPI_CHECK(MPI_Type_contiguous(static_cast<int>(len), MPI_BYTE, &piece));
  MPI_CHECK(MPI_Type_create_resized(piece, 0, static_cast<MPI_Aint>(block_bytes), &slot));
  MPI_CHECK(MPI_Type_commit(&slot));
  MPI_CHECK(MPI_Type_free(&piece));
  return slot;
}

// One gather or scatter per piece (at most chunk_bytes) of each rank's block: start(off, len, slot, req)
// starts the one for bytes off..off+len, where slot is, on rank 0, the type that places a piece inside
// every rank's block (block_piece) and MPI_BYTE elsewhere.
template <class Start>
void per_block_piece(size_t block_bytes, size_t chunk_bytes, double timeout_s, std::string_view what, Start&& start) {
  const bool root = world_rank() == 0;
  for (size_t off = 0; off < block_bytes; off += chunk_bytes) {
    const size_t len = std::min(chunk_bytes, block_bytes - off);
    MPI_Datatype slot = root ? block_piece(len, block_bytes) : MPI_BYTE;
    MPI_Request req;
    start_or_abort(start(off, static_cast<int>(len), slot, &req), what);
    wait(req, timeout_s, what);
    if (root) MPI_CHECK(MPI_Type_free(&slot));
  }
}

}  // namespace

void broadcast_bytes(void* data, size_t bytes, int root, double timeout_s, std::string_view what, size_t chunk_bytes) {
  check_args(timeout_s, chunk_bytes, what);
  DDP_CHECK(root >= 0 && root < world_size(), "host collective '", what, "': root ", root, " out of range (",
            world_size(), " ranks)");
  auto* p = static_cast<char*>(data);
  for (size_t off = 0; off < bytes; off += chunk_bytes) {
    const int n = static_cast<int>(std::min(chunk_bytes, bytes - off));
    MPI_Request req;
    start_or_abort(MPI_Ibcast(p + off, n, MPI_BYTE, root, MPI_COMM_WORLD, &req), what);
    wait(req, timeout_s, what);
  }
}

void broadcast_string(std::string& s, int root, double timeout_s, std::string_view what) {
  int64_t n = static_cast<int64_t>(s.size());
  broadcast_bytes(&n, sizeof n, root, timeout_s, what);
  s.resize(static_cast<size_t>(n));
  if (n > 0) broadcast_bytes(s.data(), s.size(), root, timeout_s, what);
}

void allreduce(int* values, int count, ReduceOp op, double timeout_s, std::string_view what) {
  allreduce_impl(values, count, op, MPI_INT, timeout_s, what);
}
void allreduce(int64_t* values, int count, ReduceOp op, double timeout_s, std::string_view what) {
  allreduce_impl(values, count, op, MPI_INT64_T, timeout_s, what);
}
void allreduce(double* values, int count, ReduceOp op, double timeout_s, std::string_view what) {
  allreduce_impl(values, count, op, MPI_DOUBLE, timeout_s, what);
}

void gather_bytes_to_root(const void* block, size_t block_bytes, void* all, double timeout_s, std::string_view what,
                          size_t chunk_bytes) {
  check_args(timeout_s, chunk_bytes, what);
  const bool root = world_rank() == 0;
  DDP_CHECK(!root || all != nullptr || block_bytes == 0, "host collective '", what, "': no buffer for the gather on rank 0");
  const auto* src = static_cast<const char*>(block);
  auto* dst = static_cast<char*>(all);
  per_block_piece(block_bytes, chunk_bytes, timeout_s, what, [&](size_t off, int len, MPI_Datatype slot, MPI_Request* req) {
    return MPI_Igather(src + off, len, MPI_BYTE, root ? dst + off : nullptr, 1, slot, 0, MPI_COMM_WORLD, req);
  });
}

void scatter_bytes_from_root(const void* all, void* block, size_t block_bytes, double timeout_s, std::string_view what,
                             size_t chunk_bytes) {
  check_args(timeout_s, chunk_bytes, what);
  const bool root = world_rank() == 0;
  DDP_CHECK(!root || all != nullptr || block_bytes == 0, "host collective '", what,
            "': nothing to scatter on rank 0");
  const auto* src = static_cast<const char*>(all);
  auto* dst = static_cast<char*>(block);
  per_block_piece(block_bytes, chunk_bytes, timeout_s, what, [&](size_t off, int len, MPI_Datatype slot, MPI_Request* req) {
    return MPI_Iscatter(root ? src + off : nullptr, 1, slot, dst + off, len, MPI_BYTE, 0, MPI_COMM_WORLD, req);
  });
}

}  // namespace ddp::comm
