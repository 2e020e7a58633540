// SIGTERM / SIGUSR1 (Slurm preemption, spot interruption, `scancel --signal=USR1`): the handler
// only records the signal; the trainer folds the flag into its per-step reduction so all ranks
// see it at the same step boundary, checkpoint there and exit 0 (requeue-friendly). SIGINT (Ctrl-C
// on a lone process) does the same once; a second SIGINT ends the process at once. (mpirun ends
// its job on Ctrl-C by itself: there, stop with SIGUSR1 to mpirun.)
#pragma once

namespace ddp::train {

void install_stop_handlers();  // SIGTERM, SIGUSR1, SIGINT
bool stop_requested();
int stop_signal();             // the signal number received (0: none)
void request_stop_for_test();  // as if a signal arrived

}  // namespace ddp::train
