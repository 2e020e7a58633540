// CUDA emulation on the CPU, for testing the CUDA backend where no GPU exists (this project's
// development machines; GPU hosts are lent rarely). The real sources run: ops.cu's kernels (made
// compilable by g++ by gen_kernels.cmake, which only rewrites `k<<<cfg>>>(args)` launches, adding
// a kernel's __launch_bounds__ to them),
// memory.cpp, linear.cpp and resnet18_cuda.cpp as they are. What is emulated:
//   - the CUDA runtime API the backend and its tests call (runtime.cpp): "device" memory is host
//     memory (tracked, so a host pointer handed to a kernel or a device copy is an error, as it is an
//     illegal address on a GPU; pinned host memory passes where device memory is expected; each
//     buffer lies between two guard pages, so a kernel reading or writing just past its end or just
//     before its start stops the run, naming the kernel and the byte offset; pages are 4 KiB and a
//     buffer starts 16-byte aligned (what 16-byte vector accesses need; cudaMalloc gives 256), so it
//     touches only one guard page and the slack to the other holds canary bytes, checked after every
//     kernel: a write there stops the run too, only a read there goes unseen. By default a buffer
//     ends at the last 16-byte boundary before its back guard page: unseen are reads up to 15 bytes
//     past the end (the padding to 16) and up to 4080 bytes before the start (0 for a buffer of
//     whole pages). With DDP_CUDA_EMU_GUARD_FRONT=1 (the reverse_order runs) it starts at its front
//     guard page, page-aligned (so 256-byte aligned, as cudaMalloc's): unseen are reads up to 4095
//     bytes past the end (0 for whole pages), none before the start; so between the two, only a read
//     within the padding of a buffer whose size is not a multiple of 16 is unseen in both. An
//     access farther away than the slack and a page lands in another mapping, or none: not
//     reliably caught);
//     work enqueued on a stream (kernels, async copies and memsets, convs, GEMMs, collectives) is
//     deferred until something waits for it (a stream, event or device synchronisation, an event
//     query, a stream waiting on an event, a cudaFree, a blocking copy for the blocking streams), so
//     a host read of a result without the synchronisation a GPU needs sees stale data; between
//     streams, work runs in the order the host waits for it (streams flushed together in creation
//     order), or with DDP_CUDA_EMU_REVERSE=1 the other way (a host wait for a stream or event
//     first runs every other stream's queued work; last-created first), so work on two streams
//     with no event wait ordering them (a race between streams) runs in one order in one run and
//     in the other in the other: a result that depends on it differs between the two; not seen: a
//     race whose two sides are ordered the same way by both rules (e.g. one side enqueued after a
//     host wait that ran the other), and any overlap in time (each operation runs whole);
//   - kernel launches: each block's threads run one after another on one OS thread, in ascending
//     order, or descending with DDP_CUDA_EMU_REVERSE=1 (a race between threads, or a read of what
//     another thread writes without a barrier, shows only as a difference between the two); a
//     kernel that calls __syncthreads runs each thread as a fiber, switched at every barrier (the
//     first block of each kernel's first launch runs as fibers and finds out; threads of a block
//     waiting at different barriers stop the run, undefined on a GPU); grid and block limits are
//     checked as a GPU would, and a kernel's __launch_bounds__(N) too (gen_kernels.cmake hands N
//     to the launch: more than N threads per block is cudaErrorLaunchOutOfResources, the kernel
//     not run; N must be visible at the launch, so a bound that is a template parameter of the
//     kernel fails to compile here; minBlocksPerMultiprocessor is ignored); an access not aligned
//     to its type (a uint4, int4 or float4 load or store at an address not 16-byte aligned
//     included, as a reinterpret_cast of a lane pointer makes) stops the run, where a GPU stops
//     with "misaligned address" and x86 would carry on: the kernels' sources are built with
//     -fsanitize=alignment (UBSan names the source line and the type, runtime.cpp the kernel; the
//     vector types keep CUDA's alignas(16) on the host); not seen: a misaligned access the C++
//     type does not show (a memcpy into a vector, or a type whose host alignment is below the
//     GPU's); shared memory is a static, filled with all-ones bytes (NaN) before each block of a
//     kernel with barriers, so a read of a word no thread of the block wrote shows;
//   - cuBLAS's SGEMM (a plain loop summing in double; the TF32 math mode is ignored) and cuDNN's
//     convolutions (conv_emu.cpp replaces conv.cpp's Impl, sharing its forwarding members in
//     conv_engine_calls.inc: direct loops in fp32 over inputs rounded to the activation dtype,
//     TF32-rounded when allowed);
//   - NCCL (nccl_emu.cpp): the calls the communicator makes, carried by MPI between the ranks'
//     processes, each emulating its own GPU (DDP_CUDA_EMU_DEVICES sets how many a process sees);
//   - stream capture and CUDA graphs: work on a capturing stream (and on streams forked into its
//     capture through events) is recorded, not run, and each cudaGraphLaunch replays it in the
//     order it was enqueued; what CUDA's documentation says it refuses during a capture is refused,
//     with the capture invalidated (a synchronisation or query of a capturing stream or of an event
//     recorded in a capture, a device synchronisation, a potentially unsafe call such as cudaMalloc
//     from a thread the capture's mode prohibits, the legacy stream while a blocking stream
//     captures, a wait on an event recorded outside the capture, a fork not joined back); stricter
//     than documented: a wait on an event last recorded in a capture that has ended, and a copy to
//     or from pageable memory on a capturing stream, are refused too.
// What this cannot tell: anything about cuDNN's plans and engines (whether an engine is capturable
// included), cuBLAS, NCCL's transports, graph instantiation limits, real concurrency, memory ordering
// between threads, timing, and the device compiler. A pass here is not a GPU result.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>

namespace ddp::cuda_emu {

// The thread a kernel body is running as (threadIdx & co. read it).
struct ThreadState {
  uint3 tid{0, 0, 0};
  uint3 bid{0, 0, 0};
  dim3 bdim, gdim;
};
extern ThreadState* g_cur;

// Barriers: every thread of the block arrives, then all continue; _or returns the OR of the
// threads' predicates (as __syncthreads_or).
// site: the barrier's source line; threads of a block waiting at different barriers abort the run.
void syncthreads(int site);
int syncthreads_or(int pred, int site);

// Where a pointer lives, as far as the emulated device can tell.
enum class MemKind { Unknown, Device, PinnedHost };
MemKind mem_kind(const void* p);
// Whether buffers start at their front guard page (DDP_CUDA_EMU_GUARD_FRONT=1) rather than end at
// their back one (runtime.cpp, "memory").
bool guard_front();
// Whether [p, p + bytes) lies inside one live device (or pinned host) allocation.
bool device_range_ok(const void* p, size_t bytes);
// Whether s is the default stream or a live one; an error as cudaGetLastError reports it.
bool stream_ok(cudaStream_t s);
// Stream work (a conv, a GEMM, a collective): runs when something waits for s (runtime.cpp), on the
// legacy default stream (nullptr) at once.
void enqueue(cudaStream_t s, std::function<void()> op);
// Test hook: the next cublasSgemm on a capturing stream invalidates that capture and still returns
// success, as a library whose internals make a call a capture does not allow may (the model must
// name the call and leave itself usable).
void break_capture_at_next_gemm();

// Runs body once per thread of the grid (after checking the configuration); `kernel` identifies
// the kernel (whether it uses barriers is learnt at its first launch); `name` is for messages.
// Checks the configuration now (an error is cudaGetLastError's at once, as on a GPU) and enqueues
// the grid on the stream (runtime.cpp: work runs when something waits for it).
// max_threads: the kernel's __launch_bounds__ (0: none); a launch with more threads per block fails.
void run_grid(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const void* kernel, const char* name,
              unsigned max_threads, std::function<void()> body);
// A launch-time error (bad configuration, bad pointer argument): becomes cudaGetLastError()'s
// answer, as on a GPU, and is printed with the kernel's name.
void set_launch_error(cudaError_t e, const char* name, const char* why);

template <class T>
bool check_pointer_arg(const T& a, int index, const char* name) {
  if constexpr (std::is_pointer_v<T>) {
    if (a != nullptr && mem_kind(static_cast<const void*>(a)) == MemKind::Unknown) {
      char why[160];
      std::snprintf(why, sizeof why, "argument %d is a host pointer %p that no cudaMalloc/cudaMallocHost returned",
                    index, static_cast<const void*>(a));
      set_launch_error(cudaErrorIllegalAddress, name, why);
      return false;
    }
  }
  return true;
}

// `k<<<grid, block, smem, stream>>>(args)` becomes `Launch("k", grid, block, smem, stream)(k, args)`,
// and `Launch(...).max_threads(N)(k, args)` for a kernel declared with __launch_bounds__(N)
// (gen_kernels.cmake).
class Launch {
 public:
  Launch(const char* name, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr)
      : grid_(grid), block_(block), smem_(smem), stream_(stream), name_(name) {}

  // The kernel's __launch_bounds__(n): a GPU refuses a launch with more than n threads per block.
  Launch max_threads(unsigned n) const {
    Launch l = *this;
    l.max_threads_ = n;
    return l;
  }

  template <class... P, class... A>
  void operator()(void (*k)(P...), A&&... a) const {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    // Arguments are converted to the parameter types once, as a launch copies them to the device.
    auto args = std::make_shared<std::tuple<std::decay_t<P>...>>(static_cast<std::decay_t<P>>(std::forward<A>(a))...);
    if (!check_args(*args, std::index_sequence_for<P...>{})) return;  // a GPU would fault: not run
    run_grid(grid_, block_, smem_, stream_, reinterpret_cast<const void*>(k), name_, max_threads_, [k, args] {
      auto copy = *args;  // each thread gets its own copy of the parameters
      std::apply(k, copy);
    });
  }

 private:
  template <class Tup, size_t... I>
  bool check_args(const Tup& t, std::index_sequence<I...>) const {
    return (check_pointer_arg(std::get<I>(t), static_cast<int>(I), name_) & ... & true);
  }
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
  const char* name_;
  unsigned max_threads_ = 0;
};

}  // namespace ddp::cuda_emu
