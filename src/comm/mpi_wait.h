// Private to src/comm: how every host-side MPI wait polls (the MPI communicator, host_collectives).
// One poll loop, one back-off, one deadline rule, so a dead or stopped peer ends the job the same way
// whichever collective it left the others in (DESIGN §4 rule 2).
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

#include "comm_internal.h"
#include "ddp/comm/dist.h"

namespace ddp::comm::detail {

using WaitClock = std::chrono::steady_clock;

// Open MPI advances a large non-blocking collective only inside MPI_Test, fragment by fragment,
// so the poll loop must not sleep while data is flowing (a 1 ms sleep per poll cost 30x in
// bandwidth at 64 MB). It yields the core for the first `spin` of a wait (200 ms covers any healthy
// transfer), and only then backs off to sleeps of up to 1 ms: a wait on a dead or stopped peer
// (up to the timeout) must not steal a core from compute or from other ranks on the same host.
// A wait starts when this rank has nothing else to do (wait_all), not when a bucket is issued:
// backward outlasts 200 ms on the CPU, and a Backoff started with the first bucket was already
// sleeping when the transfer began (the 2-rank CPU trainer spent 35% of each step there).
struct Backoff {
  static constexpr std::chrono::milliseconds kDefaultSpin{200};
  explicit Backoff(std::chrono::milliseconds spin_for = kDefaultSpin) : spin(spin_for) {}
  std::chrono::milliseconds spin;
  WaitClock::time_point t0 = WaitClock::now();
  int sleeps = 0;
  void pause() {
    if (WaitClock::now() - t0 < spin) {
      std::this_thread::yield();
      return;
    }
    ++sleeps;
    std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, 20 * sleeps)));
  }
};

// Tests `req` until it completes, pausing with a Backoff(spin) between tests. When `timeout_s` has
// passed since the call, or MPI_Test fails, the job ends through abort_job with timeout_why() or
// error_why(rc): the messages are built only then, so a wait on the hot path allocates nothing.
template <class TimeoutWhy, class ErrorWhy>
void wait_or_abort(MPI_Request& req, double timeout_s, std::chrono::milliseconds spin, TimeoutWhy&& timeout_why,
                   ErrorWhy&& error_why) {
  const auto started = WaitClock::now();
  Backoff b(spin);
  for (;;) {
    int flag = 0;
    const int rc = MPI_Test(&req, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) abort_job(error_why(rc));
    if (flag) return;
    if (past_deadline(started, timeout_s)) abort_job(timeout_why());  // not counting a suspension
    b.pause();
  }
}

// MPI's text for an error code ("code N" when MPI cannot say).
inline std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "code " + std::to_string(code);
  return std::string(text, static_cast<size_t>(len));
}

}  // namespace ddp::comm::detail
