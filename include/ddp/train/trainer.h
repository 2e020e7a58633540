// The training driver behind train_resnet18: data, model, communicator, schedule, loss scaling,
// evaluation, checkpoints, signals and metrics, following DESIGN §4:
//   1. steps per epoch agreed up front (min over ranks); every collective is unconditional;
//   3. parameters and BN buffers broadcast from rank 0 at start; a parameter checksum compared
//      every --replica-check-every steps and at each epoch end;
//   4. the fp16 found-inf flag summed across ranks every step, so all ranks skip together;
//   5. checkpoints hold epoch, step, sampler seed, optimizer and loss-scaler state; resume is exact;
//   7. evaluation sums exact per-rank counts;
//   9. SIGTERM/SIGUSR1 checkpoint at the next step boundary (the flag rides on the per-step
//      reduction) and exit 0; an evaluation agrees on the flag every few batches and stops there,
//      recording nothing, and a run resumed from its checkpoint evaluates first.
// BN running statistics are averaged across ranks before each evaluation and checkpoint.
#pragma once

#include <cstdint>
#include <vector>

#include "ddp/comm/dist.h"
#include "ddp/train/options.h"

namespace ddp::train {

struct TrainResult {
  int64_t global_steps = 0;
  int epochs_done = 0;
  bool stopped_by_signal = false;
  bool finished = false;  // nothing left to train (all epochs, --max-steps, --eval-only)
  bool evaluated = false;
  // Last evaluation (fractions); top5 is reported only with more than 5 classes (else every label is in it).
  double top1 = 0, top5 = 0, eval_loss = 0;
  double train_images_per_s = 0;
  // Seconds of each whole epoch trained by this run; an epoch resumed mid-way is left out and counted
  // in partial_epochs (its remaining steps are not an epoch's time).
  std::vector<double> epoch_seconds;
  int partial_epochs = 0;
  std::string last_checkpoint;
};

// Runs the whole job on this rank. Throws ddp::Error on failure (the caller aborts the job).
TrainResult run_training(TrainOptions& opts, const comm::DistEnv& env);

}  // namespace ddp::train
