// The MPI communicator (CPU backend). Gradient allreduces run on their own duplicated communicator,
// driven by a progress thread: Open MPI advances a non-blocking collective only inside MPI calls, so
// without a thread polling MPI_Test the "asynchronous" allreduce would make no progress while
// backward computes. Small host reductions use a second duplicate from the calling thread, so the
// two streams of collectives never interleave on one communicator. Every wait polls with a
// deadline: a dead or stopped peer becomes a message and MPI_Abort, never a hang.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "comm_internal.h"
#include "mpi_wait.h"
#include "ddp/core/check.h"
#include "ddp/core/log.h"

namespace ddp::comm {

namespace detail {

std::vector<std::string> allgather_strings(const std::string& s) {
  int world = 1;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  constexpr int kLen = 256;
  char mine[kLen] = {0};
  std::strncpy(mine, s.c_str(), kLen - 1);
  std::vector<char> all(static_cast<size_t>(world) * kLen);
  MPI_CHECK(MPI_Allgather(mine, kLen, MPI_CHAR, all.data(), kLen, MPI_CHAR, MPI_COMM_WORLD));
  std::vector<std::string> out(world);
  for (int r = 0; r < world; ++r) out[r] = std::string(&all[static_cast<size_t>(r) * kLen]);
  return out;
}

std::string describe_layout(const DistEnv& env) {
  std::vector<int> node_of(env.world);
  MPI_CHECK(MPI_Allgather(&env.node_index, 1, MPI_INT, node_of.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::string out;
  for (int n = 0; n < env.num_nodes; ++n) {
    std::string ranks;
    int cnt = 0;
    for (int r = 0; r < env.world; ++r) {
      if (node_of[r] != n) continue;
      ranks += (cnt ? "," : "") + std::to_string(r);
      ++cnt;
    }
    out += str(n ? "; " : "", "node ", n, " ", env.hosts[n], ": ", cnt, " rank", cnt == 1 ? "" : "s", " (", ranks, ")");
  }
  return out;
}

std::string timeout_message(const std::string& op, double timeout_s, int64_t step) {
  std::string at = step >= 0 ? str(" at step ", step) : std::string(" (before training steps)");
  return str("no answer from the other ranks within ", timeout_s, " s in ", op, at,
             "; a rank died or is stuck (bound set by --timeout)");
}

}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;

using detail::Backoff;
using detail::mpi_error_text;

constexpr size_t kMaxCount = size_t(1) << 30;  // MPI counts are int

// Gradient buckets go out as collectives of at most 16 MiB: a finished piece is the only sign of
// progress the poll loop gets. After a wait on a late peer has backed off to sleeping, the first
// piece that completes puts the loop back to full-speed polling, so the rest of the bucket flows
// at full bandwidth (a 128 MB collective polled at 1 ms took 2.3 s, in 16 MiB pieces 0.44 s). Smaller
// pieces cost more than they save: 4 MiB ones made the 2-rank 32 px CPU step ~7% slower.
constexpr size_t kJobFloats = size_t(1) << 22;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const DistEnv& env, const CommOptions& opt) : env_(env), timeout_s_(opt.timeout_s) {
    DDP_CHECK(opt.timeout_s > 0, "communication timeout must be > 0 s, got ", opt.timeout_s);
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &grad_comm_));
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &ctl_comm_));
    MPI_CHECK(MPI_Comm_set_errhandler(grad_comm_, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_set_errhandler(ctl_comm_, MPI_ERRORS_RETURN));
    // DDP_MPI_PROGRESS_THREAD=0 forces inline progress (what runs when MPI_THREAD_MULTIPLE is not
    // granted), so that path is testable everywhere.
    const char* pt = std::getenv("DDP_MPI_PROGRESS_THREAD");
    const bool thread_allowed = !(pt && std::string(pt) == "0");
    threaded_ = env.thread_multiple && env.world > 1 && thread_allowed;
    if (threaded_) worker_ = std::thread([this] { progress_loop(); });
  }

  ~MpiCommunicator() override {
    if (worker_.joinable()) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
      }
      cv_.notify_all();
      worker_.join();
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
      MPI_Comm_free(&grad_comm_);
      MPI_Comm_free(&ctl_comm_);
    }
  }

  const char* name() const override { return "mpi"; }
  int rank() const override { return env_.rank; }
  int size() const override { return env_.world; }

  void allreduce_avg_async(float* data, size_t count, void* ready) override {
    DDP_CHECK(ready == nullptr, "the MPI communicator works on host memory; got a CUDA event");
    if (count == 0) return;
    if (env_.world == 1) return;  // the average over one rank is the value itself
    for (size_t off = 0; off < count; off += kJobFloats) {
      Job j{data + off, std::min(kJobFloats, count - off), step_};
      if (threaded_) {
        {
          std::lock_guard<std::mutex> lk(mu_);
          queue_.push_back(j);
          ++enqueued_;
        }
        cv_.notify_one();
      } else {
        start(j);
        active_.push_back(j);
        ++enqueued_;
        test_active(false);  // lets Open MPI advance earlier buckets while backward runs
      }
    }
  }

  void wait_all(void*) override {
    if (threaded_) {
      std::unique_lock<std::mutex> lk(mu_);
      main_waiting_ = true;
      cv_.notify_one();  // the worker's Backoff restarts (see Backoff)
      // The worker enforces each collective's deadline; this outer bound only guards the worker.
      const auto started = Clock::now();
      while (done_ < enqueued_ && error_.empty()) {
        cv_done_.wait_for(lk, std::chrono::milliseconds(200));
        if (done_ < enqueued_ && error_.empty() && detail::past_deadline(started, timeout_s_ * 2 + 5)) {
          error_ = detail::timeout_message("the gradient allreduce", timeout_s_, step_);
        }
      }
      if (!error_.empty()) {
        std::string e = error_;
        lk.unlock();
        abort_job(e);  // [[noreturn]]
      }
      main_waiting_ = false;
    } else {
      while (!active_.empty()) test_active(true);
      done_ = enqueued_;
    }
  }

  void broadcast(void* data, size_t bytes, int root) override {
    DDP_CHECK(root >= 0 && root < env_.world, "broadcast root ", root, " out of range (", env_.world, " ranks)");
    auto* p = static_cast<char*>(data);
    for (size_t off = 0; off < bytes; off += kMaxCount) {
      MPI_Request req;
      int n = static_cast<int>(std::min(kMaxCount, bytes - off));
      check(MPI_Ibcast(p + off, n, MPI_BYTE, root, ctl_comm_, &req), "broadcast");
      complete(req, "broadcast");
    }
  }

  void barrier() override {
    MPI_Request req;
    check(MPI_Ibarrier(ctl_comm_, &req), "barrier");
    complete(req, "barrier");
  }

  void allreduce_sum(double* values, int count) override { small(values, count, MPI_DOUBLE, MPI_SUM, "sum-allreduce"); }
  void allreduce_max(double* values, int count) override { small(values, count, MPI_DOUBLE, MPI_MAX, "max-allreduce"); }
  void allreduce_min(int64_t* values, int count) override { small(values, count, MPI_INT64_T, MPI_MIN, "min-allreduce"); }

  std::vector<double> allgather(double value) override {
    std::vector<double> out(env_.world);
    MPI_Request req;
    check(MPI_Iallgather(&value, 1, MPI_DOUBLE, out.data(), 1, MPI_DOUBLE, ctl_comm_, &req), "allgather");
    complete(req, "allgather");
    return out;
  }

 private:
  struct Job {
    float* data;
    size_t count;
    int64_t step;
    MPI_Request req = MPI_REQUEST_NULL;
    Clock::time_point started{};  // its deadline: detail::past_deadline(started, timeout_s_)
  };

  std::string mpi_error(const char* op, int rc) const {
    return str("MPI error in ", op, step_ >= 0 ? str(" at step ", step_) : std::string(), ": ", mpi_error_text(rc),
               " (a peer process or its host probably went away)");
  }
  void check(int rc, const char* op) {
    if (rc != MPI_SUCCESS) abort_job(mpi_error(op, rc));
  }

  void complete(MPI_Request& req, const char* op) {
    detail::wait_or_abort(
        req, timeout_s_, Backoff::kDefaultSpin, [&] { return detail::timeout_message(op, timeout_s_, step_); },
        [&](int rc) { return mpi_error(op, rc); });
  }

  template <class T>
  void small(T* values, int count, MPI_Datatype type, MPI_Op op, const char* what) {
    if (count <= 0) return;
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, values, count, type, op, ctl_comm_, &req), what);
    complete(req, what);
  }

  // Returns an error message or "".
  std::string start(Job& j) {
    j.started = Clock::now();
    int rc = MPI_Iallreduce(MPI_IN_PLACE, j.data, static_cast<int>(j.count), MPI_FLOAT, MPI_SUM, grad_comm_, &j.req);
    if (rc != MPI_SUCCESS) return job_error(j, rc);
    return {};
  }

  std::string job_error(const Job& j, int rc) {
    return str("MPI error in the gradient allreduce (", j.count, " floats)",
               j.step >= 0 ? str(" at step ", j.step) : std::string(), ": ", mpi_error_text(rc),
               " (a peer process or its host probably went away)");
  }

  void finish_job(Job& j) {
    const float inv = 1.0f / static_cast<float>(env_.world);
    for (size_t i = 0; i < j.count; ++i) j.data[i] *= inv;
  }

  // Tests the active jobs in issue order. Returns an error message or "". Non-threaded mode only
  // (threaded mode: progress_loop).
  void test_active(bool blocking) {
    Backoff b;
    do {
      while (!active_.empty()) {
        int flag = 0;
        int rc = MPI_Test(&active_.front().req, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) abort_job(job_error(active_.front(), rc));
        if (!flag) break;
        finish_job(active_.front());
        active_.pop_front();
        b = Backoff{};  // data is flowing: poll at full speed again (see kJobFloats)
      }
      if (active_.empty() || !blocking) return;
      if (detail::past_deadline(active_.front().started, timeout_s_)) {
        abort_job(detail::timeout_message(str("the gradient allreduce (", active_.front().count, " floats)"), timeout_s_,
                                          active_.front().step));
      }
      b.pause();
    } while (true);
  }

  void progress_loop() {
    std::deque<Job> active;
    Backoff b;
    bool waiting = false;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        if (active.empty()) {
          cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
          b = Backoff{};
        }
        if (main_waiting_ && !waiting) b = Backoff{};  // this rank's wait starts now (see Backoff)
        waiting = main_waiting_;
        if (stop_ && queue_.empty() && active.empty()) return;
        while (!queue_.empty()) {
          active.push_back(queue_.front());
          queue_.pop_front();
        }
      }
      std::string err;
      // Start every queued bucket (issue order is the same on every rank, so the collectives
      // match), then test them in order.
      for (auto& j : active) {
        if (j.req == MPI_REQUEST_NULL && err.empty()) err = start(j);
      }
      size_t finished = 0;
      while (err.empty() && !active.empty()) {
        int flag = 0;
        int rc = MPI_Test(&active.front().req, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
          err = job_error(active.front(), rc);
          break;
        }
        if (!flag) {
          if (detail::past_deadline(active.front().started, timeout_s_)) {
            err = detail::timeout_message(str("the gradient allreduce (", active.front().count, " floats)"),
                                          timeout_s_, active.front().step);
          }
          break;
        }
        finish_job(active.front());
        active.pop_front();
        ++finished;
        b = Backoff{};
      }
      if (!err.empty()) {
        {
          std::lock_guard<std::mutex> lk(mu_);
          error_ = err;
        }
        cv_done_.notify_all();
        return;  // the main thread aborts the job in wait_all
      }
      if (finished) {
        {
          std::lock_guard<std::mutex> lk(mu_);
          done_ += finished;
        }
        cv_done_.notify_all();
      }
      if (!active.empty()) b.pause();
    }
  }

  DistEnv env_;
  double timeout_s_;
  MPI_Comm grad_comm_ = MPI_COMM_NULL, ctl_comm_ = MPI_COMM_NULL;
  bool threaded_ = false;
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_, cv_done_;
  std::deque<Job> queue_;
  std::deque<Job> active_;  // non-threaded mode
  size_t enqueued_ = 0, done_ = 0;
  std::string error_;
  bool stop_ = false;
  bool main_waiting_ = false;  // the caller is blocked in wait_all (guarded by mu_)
};

}  // namespace

namespace {
// What Open MPI was told to use (mpirun --mca ... reaches the ranks as OMPI_MCA_* variables).
std::string mpi_network() {
  std::string out;
  for (const char* k : {"btl", "btl_tcp_if_include", "btl_tcp_if_exclude", "pml"}) {
    const char* v = std::getenv((std::string("OMPI_MCA_") + k).c_str());
    if (v) out += str(out.empty() ? "" : ", ", k, "=", v);
  }
  return out.empty() ? std::string("Open MPI's choice (set --mca btl_tcp_if_include to pin it)") : out;
}
}  // namespace

namespace detail {
std::unique_ptr<Communicator> make_mpi_communicator_quiet(const DistEnv& env, const CommOptions& opt) {
  return std::make_unique<MpiCommunicator>(env, opt);
}
}  // namespace detail

std::unique_ptr<Communicator> make_mpi_communicator(const DistEnv& env, const CommOptions& opt) {
  auto c = detail::make_mpi_communicator_quiet(env, opt);
  const char* pt = std::getenv("DDP_MPI_PROGRESS_THREAD");
  const bool thread_allowed = !(pt && std::string(pt) == "0");
  std::string layout = detail::describe_layout(env);
  info0("distributed: ", env.world, " rank", env.world == 1 ? "" : "s", " on ", env.num_nodes, " node",
        env.num_nodes == 1 ? "" : "s", " [", layout, "]; devices: CPU; backend: mpi (",
        env.world == 1                       ? "no communication"
        : !env.thread_multiple             ? "inline progress, MPI_THREAD_MULTIPLE not granted"
        : thread_allowed                   ? "progress thread"
                                           : "inline progress, DDP_MPI_PROGRESS_THREAD=0",
        "); network: ", mpi_network(), "; timeout ", opt.timeout_s, " s");
  return c;
}

std::unique_ptr<Communicator> make_communicator(const std::string& backend, const DistEnv& env,
                                                const CommOptions& opt) {
  if (backend == "mpi") return make_mpi_communicator(env, opt);
  if (backend == "nccl") return make_nccl_communicator(env, opt);
  DDP_FAIL("unknown communicator backend '", backend, "' (--comm expects mpi or nccl)");
}

}  // namespace ddp::comm
