#include "ddp/comm/replica_guard.h"

#include <cstdio>
#include <cstring>
#include <string>

#include "ddp/core/check.h"
#include "ddp/core/log.h"

namespace ddp::comm {

namespace {
// All 17 significant digits: the checksums of diverged replicas often agree in the first six, which
// is all the default formatting shows ("27573.3 but rank 1 (27573.3) differ").
std::string exact(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}
}  // namespace

void check_replicas(Communicator& comm, double checksum, int64_t step) {
  std::vector<double> all = comm.allgather(checksum);
  std::string differ;
  for (int r = 1; r < static_cast<int>(all.size()); ++r) {
    // Bitwise: identical replicas give identical bits; a NaN checksum must not compare equal.
    if (std::memcmp(&all[r], &all[0], sizeof(double)) != 0) {
      differ += str(differ.empty() ? "" : ", ", "rank ", r, " (", exact(all[r]), ")");
    }
  }
  if (!differ.empty()) {
    DDP_FAIL("replicas diverged at step ", step, ": parameter checksum of rank 0 is ", exact(all[0]), " but ", differ,
             " differ; gradients were not averaged identically on every rank, so the run is not data-parallel");
  }
}

void broadcast_model(Communicator& comm, ddp::nn::Model& model) {
  const auto& spec = model.spec();
  model.synchronize();
  comm.broadcast(model.params(), static_cast<size_t>(spec.param_count) * sizeof(float), 0);
  comm.broadcast(model.buffers(), static_cast<size_t>(spec.buffer_count) * sizeof(float), 0);
  double nbt = static_cast<double>(model.num_batches_tracked());
  comm.allreduce_max(&nbt, 1);  // rank 0's value on a fresh start; equal values after a resume
  model.set_num_batches_tracked(static_cast<int64_t>(nbt));
  model.params_changed();
}

void average_buffers(Communicator& comm, float* buffers, int64_t count) {
  if (count <= 0) return;
  comm.allreduce_avg_async(buffers, static_cast<size_t>(count), nullptr);
  comm.wait_all(nullptr);
}

void average_buffers(Communicator& comm, ddp::nn::Model& model) {
  model.synchronize();
  average_buffers(comm, model.buffers(), model.spec().buffer_count);
}

int64_t agree_steps(Communicator& comm, int64_t local_steps) {
  DDP_CHECK(local_steps >= 0, "negative step count ", local_steps);
  int64_t v = local_steps;
  comm.allreduce_min(&v, 1);
  return v;
}

ddp::nn::EvalCounts sum_eval_counts(Communicator& comm, const ddp::nn::EvalCounts& local) {
  // Doubles add integers exactly up to 2^53, far above any validation set.
  double v[4] = {static_cast<double>(local.top1), static_cast<double>(local.top5), static_cast<double>(local.count),
                 local.loss_sum};
  comm.allreduce_sum(v, 4);
  ddp::nn::EvalCounts out;
  out.top1 = static_cast<int64_t>(v[0]);
  out.top5 = static_cast<int64_t>(v[1]);
  out.count = static_cast<int64_t>(v[2]);
  out.loss_sum = v[3];
  return out;
}

}  // namespace ddp::comm
