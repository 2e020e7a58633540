#include "ddp/comm/dist.h"

#include <mpi.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "comm_internal.h"
#include "ddp/core/check.h"
#include "ddp/core/log.h"
#include "ddp/core/tensor.h"  // cuda_unavailable_reason

#if DDP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace ddp::detail {

[[noreturn]] void fail_mpi(const char* file, int line, const char* expr, int code) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized && MPI_Error_string(code, text, &len) == MPI_SUCCESS) {
    fail(file, line, str("MPI error ", code, " (", std::string(text, len), ") in ", expr));
  }
  fail(file, line, str("MPI error ", code, " in ", expr));
}

}  // namespace ddp::detail

namespace ddp::comm {

namespace {
std::atomic<bool> g_initialized{false};  // read by the start-up guard's thread
// MPI_THREAD_MULTIPLE granted: only then may the start-up guard's thread call MPI_Abort while the
// main thread is inside MPI.
std::atomic<bool> g_thread_multiple{false};
// This rank once MPI_Comm_rank answered (-1 before): what the start-up guard's thread may read.
std::atomic<int> g_known_rank{-1};
// steady_clock nanoseconds of the last SIGCONT (comm_internal.h, past_deadline); 0: never stopped.
std::atomic<int64_t> g_continued_ns{0};
static_assert(std::atomic<int64_t>::is_always_lock_free, "written from a signal handler");
extern "C" void on_continue(int) {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);  // async-signal-safe; steady_clock is CLOCK_MONOTONIC here
  g_continued_ns = static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}
// local rank and size, node index and count, host names (collectives on MPI_COMM_WORLD)
void find_node_layout(DistEnv& env);
}

struct StartupGuard::State {
  std::mutex mu;
  std::condition_variable cv;
  bool over = false;
  std::thread watcher;
};

StartupGuard::StartupGuard(double timeout_s, std::string what) : state_(std::make_shared<State>()) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout_s));
  // The launcher's rank variable, read here (MPI_Init may setenv while the watcher would read).
  const char* env_rank = std::getenv("OMPI_COMM_WORLD_RANK");
  if (!env_rank) env_rank = std::getenv("PMIX_RANK");
  if (!env_rank) env_rank = std::getenv("SLURM_PROCID");
  state_->watcher = std::thread([s = state_, deadline, timeout_s, what = std::move(what),
                                 launcher_rank = std::string(env_rank ? env_rank : "?")] {
    std::unique_lock<std::mutex> lk(s->mu);
    if (s->cv.wait_until(lk, deadline, [&] { return s->over; })) return;
    // The rank as MPI numbers it once known; before that, the launcher's variable.
    const int known = g_known_rank.load();
    const std::string who = known >= 0 ? std::to_string(known) : launcher_rank;
    std::fprintf(stderr,
                 "[rank %s] FATAL: no answer from the other ranks within %g s in %s; a rank died, is stopped or "
                 "never started (bound set by --timeout)\n",
                 who.c_str(), timeout_s, what.c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    int initialized = 0, finalized = 0;
    if (g_thread_multiple.load()) {
      MPI_Initialized(&initialized);
      MPI_Finalized(&finalized);
    }
    if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
    // Before MPI_Init returned, or without MPI_THREAD_MULTIPLE: a process that ends without
    // MPI_Finalize makes mpirun / srun end the job.
    std::_Exit(1);
  });
}

StartupGuard::~StartupGuard() {
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    state_->over = true;
  }
  state_->cv.notify_all();
  state_->watcher.join();
}

bool distributed_initialized() { return g_initialized; }

namespace detail {
void install_continue_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = on_continue;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    DDP_CHECK(sigaction(SIGCONT, &sa, nullptr) == 0, "cannot install the SIGCONT handler");
  });
}
std::chrono::steady_clock::time_point last_continued() {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(g_continued_ns.load()));
}
}  // namespace detail

DistEnv init_distributed(int* argc, char*** argv) {
  DDP_CHECK(!g_initialized, "init_distributed called twice");
  detail::install_continue_handler();
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  g_initialized = true;
  // Errors come back as codes so they become messages naming the operation, never a silent
  // MPI_ERRORS_ARE_FATAL exit without context.
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));

  DistEnv env;
  env.thread_multiple = provided >= MPI_THREAD_MULTIPLE;
  g_thread_multiple = env.thread_multiple;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &env.rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &env.world));
  set_log_rank(env.rank, env.world);
  g_known_rank = env.rank;
  try {
    find_node_layout(env);
  } catch (const std::exception& e) {
    // MPI runs and the other ranks are inside the layout's collectives: a local return would leave them
    // waiting (until their start-up guards fire, with a message that hides this cause).
    abort_job(e.what());
  }
  return env;
}

namespace {
void find_node_layout(DistEnv& env) {
  MPI_Comm node_comm = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, env.rank, MPI_INFO_NULL, &node_comm));
  MPI_CHECK(MPI_Comm_rank(node_comm, &env.local_rank));
  MPI_CHECK(MPI_Comm_size(node_comm, &env.local_size));

  // Node index = order of the nodes' lowest world ranks. Hostnames are not used to group ranks:
  // network namespaces (our two-host test) and some containers share one hostname across nodes.
  MPI_Comm leader_comm = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, env.local_rank == 0 ? 0 : MPI_UNDEFINED, env.rank, &leader_comm));
  int node_info[2] = {0, 0};
  if (leader_comm != MPI_COMM_NULL) {
    MPI_CHECK(MPI_Comm_rank(leader_comm, &node_info[0]));
    MPI_CHECK(MPI_Comm_size(leader_comm, &node_info[1]));
    MPI_CHECK(MPI_Comm_free(&leader_comm));
  }
  MPI_CHECK(MPI_Bcast(node_info, 2, MPI_INT, 0, node_comm));
  MPI_CHECK(MPI_Comm_free(&node_comm));
  env.node_index = node_info[0];
  env.num_nodes = node_info[1];

  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  env.hostname = name;
  std::vector<char> all(static_cast<size_t>(env.world) * sizeof(name));
  std::vector<int> node_of(env.world);
  MPI_CHECK(MPI_Allgather(name, sizeof(name), MPI_CHAR, all.data(), sizeof(name), MPI_CHAR, MPI_COMM_WORLD));
  MPI_CHECK(MPI_Allgather(&env.node_index, 1, MPI_INT, node_of.data(), 1, MPI_INT, MPI_COMM_WORLD));
  env.hosts.assign(env.num_nodes, std::string());
  for (int r = env.world - 1; r >= 0; --r) env.hosts[node_of[r]] = std::string(&all[r * sizeof(name)]);
}
}  // namespace

void finalize_distributed() {
  if (!g_initialized) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
  g_initialized = false;
}

[[noreturn]] void abort_job(const std::string& why, int code) {
  std::fprintf(stderr, "[rank %d] FATAL: %s\n", log_rank(), why.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

int select_cuda_device(const DistEnv& env) {
#if DDP_HAVE_CUDA
  // cuda_unavailable_reason tells a missing driver from an old one: without a driver the runtime's own
  // answer is "driver version is insufficient", which reads as "upgrade your driver".
  const std::string why = cuda_unavailable_reason();
  DDP_CHECK(why.empty(), "no CUDA device visible on host ", env.hostname, " (rank ", env.rank, ", CUDA_VISIBLE_DEVICES=",
            std::getenv("CUDA_VISIBLE_DEVICES") ? std::getenv("CUDA_VISIBLE_DEVICES") : "unset", "): ", why);
  int n = 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  if (env.local_size > n) {
    warn("host ", env.hostname, " runs ", env.local_size, " ranks on ", n,
         " visible GPU(s); NCCL cannot put two ranks on one GPU");
  }
  int dev = env.local_rank % n;
  CUDA_CHECK(cudaSetDevice(dev));
  return dev;
#else
  (void)env;
  DDP_FAIL("this build has no CUDA support (configured with DDP_CUDA=OFF or without the CUDA toolkit)");
#endif
}

}  // namespace ddp::comm
