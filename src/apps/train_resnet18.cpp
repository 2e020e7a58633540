// train_resnet18: data-parallel ResNet18 training. Launch with mpirun / srun --mpi=pmix, or run
// as a single process. See --help and README.md.
#include <cstdio>
#include <exception>

#include "ddp/comm/dist.h"
#include "ddp/core/check.h"
#include "ddp/core/h5.h"
#include "ddp/core/log.h"
#include "ddp/train/options.h"
#include "ddp/train/signals.h"
#include "ddp/train/trainer.h"

int main(int argc, char** argv) {
  ddp::h5::skip_teardown_at_exit();  // a checkpoint failing on a full disk must exit 1, not crash
  ddp::init_log_level_from_env();
  // Options first: --help and bad flags need no MPI, and every rank parses the same argv.
  std::optional<ddp::train::TrainOptions> opts;
  try {
    opts = ddp::train::parse_options(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_resnet18: %s\n", e.what());
    return 2;
  }
  if (!opts) return 0;
  // Before MPI and data start-up (seconds): a SIGTERM/SIGUSR1 then still ends in a checkpoint at the
  // first step boundary and exit 0, not in the default action (death by signal, nothing saved).
  ddp::train::install_stop_handlers();
  ddp::comm::DistEnv env;
  try {
    {
      // A rank that died or stopped before or inside MPI_Init must not hang the others there.
      ddp::comm::StartupGuard guard(opts->timeout_s, "MPI start-up (MPI_Init and the node layout)");
      env = ddp::comm::init_distributed(&argc, &argv);
    }
    ddp::train::TrainResult r = ddp::train::run_training(*opts, env);
    ddp::comm::finalize_distributed();
    (void)r;
    return 0;
  } catch (const std::exception& e) {
    // One rank's failure ends the job on every rank (DESIGN §4 rule 2), with the cause printed. Flags
    // found bad only once the machine is known (--amp fp16 on the CPU backend) exit 2 as at parsing.
    const int code = dynamic_cast<const ddp::train::UsageError*>(&e) ? 2 : 1;
    if (ddp::comm::distributed_initialized() && env.world > 1) ddp::comm::abort_job(e.what(), code);
    ddp::error(e.what());
    ddp::comm::finalize_distributed();
    return code;
  }
}
