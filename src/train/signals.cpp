#include "ddp/train/signals.h"

#include <unistd.h>

#include <cerrno>
#include <csignal>

#include "ddp/core/check.h"

namespace ddp::train {

namespace {
volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_stop_signal(int sig) { g_signal = sig; }
// Ctrl-C at a terminal: the same graceful stop, said at once (write is async-signal-safe); the
// handler is reset by SA_RESETHAND, so a second Ctrl-C ends the process at once, unsaved.
extern "C" void on_interrupt(int sig) {
  const int saved_errno = errno;  // write may set it; the interrupted code may be reading it
  g_signal = sig;
  static const char msg[] =
      "\ntrain_resnet18: Ctrl-C: stopping after this step, with a checkpoint where --checkpoint-dir is set "
      "(Ctrl-C again: stop now, unsaved)\n";
  ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
  errno = saved_errno;
}
}  // namespace

void install_stop_handlers() {
  // Once per process (main installs them before MPI start-up, run_training again for embedders): a
  // second install after a first Ctrl-C reset SIGINT would put the handler back, and the promised
  // "Ctrl-C again: stop now" would only request the stop again.
  static bool installed = false;
  if (installed) return;
  installed = true;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking reads and MPI progress continue; we act at the step boundary
  struct sigaction si = sa;
  si.sa_handler = on_interrupt;
  si.sa_flags = SA_RESTART | SA_RESETHAND;
  // A SIGINT ignored by whoever started us (nohup-style, a background job of a script) stays ignored.
  struct sigaction old_int {};
  DDP_CHECK(sigaction(SIGINT, nullptr, &old_int) == 0, "cannot read the SIGINT disposition");
  DDP_CHECK(sigaction(SIGTERM, &sa, nullptr) == 0 && sigaction(SIGUSR1, &sa, nullptr) == 0 &&
                (old_int.sa_handler == SIG_IGN || sigaction(SIGINT, &si, nullptr) == 0),
            "cannot install SIGTERM/SIGUSR1/SIGINT handlers");
}

bool stop_requested() { return g_signal != 0; }
int stop_signal() { return g_signal; }
void request_stop_for_test() { g_signal = SIGUSR1; }

}  // namespace ddp::train
