#include "ddp/train/signals.h"

#include <csignal>

#include "ddp/core/check.h"

namespace ddp::train {

namespace {
volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_stop_signal(int sig) { g_signal = sig; }
}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking reads and MPI progress continue; we act at the step boundary
  DDP_CHECK(sigaction(SIGTERM, &sa, nullptr) == 0 && sigaction(SIGUSR1, &sa, nullptr) == 0,
            "cannot install SIGTERM/SIGUSR1 handlers");
}

bool stop_requested() { return g_signal != 0; }
int stop_signal() { return g_signal; }
void request_stop_for_test() { g_signal = SIGUSR1; }

}  // namespace ddp::train
