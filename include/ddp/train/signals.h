// SIGTERM / SIGUSR1 (Slurm preemption, spot interruption, `scancel --signal=USR1`): the handler
// only records the signal; the trainer folds the flag into its per-step reduction so all ranks
// see it at the same step boundary, checkpoint there and exit 0 (requeue-friendly).
#pragma once

namespace ddp::train {

void install_stop_handlers();  // SIGTERM, SIGUSR1
bool stop_requested();
int stop_signal();             // the signal number received (0: none)
void request_stop_for_test();  // as if a signal arrived

}  // namespace ddp::train
