// Host-memory collectives over the whole job (MPI_COMM_WORLD), for the work around training rather
// than inside a step: rank 0 reads or writes files for everyone (initial weights, checkpoints) and
// shares the outcome, and ranks agree on settings. They go through MPI whichever communicator
// averages the gradients (the NCCL communicator's broadcast takes device memory).
//
// Each one is bounded like the communicators' collectives (DESIGN §4 rule 2): past `timeout_s`
// (--timeout) the waiting rank ends the job through abort_job with
//   no answer from the other ranks within T s in WHAT; a rank died or is stuck, ...
// where WHAT is the caller's `what` ("the broadcast of the checkpoint's parameters from rank 0"). The
// bound counts from entering the call, per piece of at most `chunk_bytes` for the large transfers.
// An MPI error also ends the job, naming `what`. Every rank must make the same calls in the same
// order with the same root and sizes, as with any collective. Needs init_distributed first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace ddp::comm {

// MPI counts are int: transfers larger than this go out in pieces (tests pass smaller values).
inline constexpr size_t kHostChunkBytes = size_t(1) << 30;

// `bytes` bytes at `data` from rank `root` to every rank (the same `bytes` on every rank).
void broadcast_bytes(void* data, size_t bytes, int root, double timeout_s, std::string_view what,
                     size_t chunk_bytes = kHostChunkBytes);
// Root's string to every rank, whatever their `s` held (its length goes first).
void broadcast_string(std::string& s, int root, double timeout_s, std::string_view what);
// Root's vector (length, then elements) to every rank; the others are resized to match.
template <class T>
void broadcast_vector(std::vector<T>& v, int root, double timeout_s, std::string_view what) {
  static_assert(std::is_trivially_copyable_v<T>, "broadcast_vector sends raw bytes");
  int64_t n = static_cast<int64_t>(v.size());
  broadcast_bytes(&n, sizeof n, root, timeout_s, what);
  v.resize(static_cast<size_t>(n));
  if (n > 0) broadcast_bytes(v.data(), v.size() * sizeof(T), root, timeout_s, what);
}

// In-place element-wise reduction of `count` values over all ranks; every rank gets the result.
enum class ReduceOp { Min, Max, Sum };
void allreduce(int* values, int count, ReduceOp op, double timeout_s, std::string_view what);
void allreduce(int64_t* values, int count, ReduceOp op, double timeout_s, std::string_view what);
void allreduce(double* values, int count, ReduceOp op, double timeout_s, std::string_view what);

// Rank r's `block_bytes` at `block` land at all + r * block_bytes on rank 0 (`all` holds
// world * block_bytes there; it is not used on the other ranks and may be null).
void gather_bytes_to_root(const void* block, size_t block_bytes, void* all, double timeout_s, std::string_view what,
                          size_t chunk_bytes = kHostChunkBytes);
// The converse: rank 0's all + r * block_bytes lands at rank r's `block` (rank 0 keeps its own).
void scatter_bytes_from_root(const void* all, void* block, size_t block_bytes, double timeout_s,
                             std::string_view what, size_t chunk_bytes = kHostChunkBytes);

// The same for `count` elements of T per rank (float: BN statistics of every rank).
template <class T>
void gather_to_root(const T* block, size_t count, T* all, double timeout_s, std::string_view what) {
  static_assert(std::is_trivially_copyable_v<T>, "gather_to_root sends raw bytes");
  gather_bytes_to_root(block, count * sizeof(T), all, timeout_s, what);
}
template <class T>
void scatter_from_root(const T* all, T* block, size_t count, double timeout_s, std::string_view what) {
  static_assert(std::is_trivially_copyable_v<T>, "scatter_from_root sends raw bytes");
  scatter_bytes_from_root(all, block, count * sizeof(T), timeout_s, what);
}

}  // namespace ddp::comm
