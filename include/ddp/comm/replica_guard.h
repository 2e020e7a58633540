// The rules that keep replicas identical and ranks in lock-step (DESIGN §4 rules 1, 3, 7): start
// from rank 0's parameters, compare checksums, agree on step counts, sum evaluation counts, and make
// BN running statistics consistent.
#pragma once

#include <cstdint>

#include "ddp/comm/communicator.h"
#include "ddp/nn/model.h"

namespace ddp::comm {

// Compares every rank's parameter checksum (exact equality: replicas that averaged the same
// gradients from the same start are bit-identical). A mismatch throws ddp::Error on every rank,
// naming the step and the ranks whose checksum differs from rank 0's.
void check_replicas(Communicator& comm, double checksum, int64_t step);

// Broadcasts params() and buffers() from rank 0 (then model.params_changed()), so replicas start
// identical whatever each rank initialised.
void broadcast_model(Communicator& comm, ddp::nn::Model& model);

// BN statistics before evaluation and checkpointing: every rank's running mean and running var are
// replaced by their arithmetic mean over ranks (as torch.distributed users do with all_reduce/AVG;
// the mean of per-rank running variances, not the variance of the pooled data). `buffers` is the
// model's flat buffer (device memory for NCCL), final on entry (call model.synchronize() first).
void average_buffers(Communicator& comm, float* buffers, int64_t count);
// The same on a model's buffers(), after model.synchronize() (so the GPU's last BN update is in).
void average_buffers(Communicator& comm, ddp::nn::Model& model);

// Steps per epoch every rank runs: the minimum of the ranks' local counts, agreed before the epoch
// (rule 1: uneven shards never make one rank wait in a collective the others skip).
int64_t agree_steps(Communicator& comm, int64_t local_steps);

// Sums evaluation counts over ranks (rule 7: each validation image is counted once, by one rank).
ddp::nn::EvalCounts sum_eval_counts(Communicator& comm, const ddp::nn::EvalCounts& local);

}  // namespace ddp::comm
