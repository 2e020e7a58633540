// Training checkpoints: one HDF5 file per checkpoint, readable with h5py/h5dump.
//
//   /<torchvision state_dict name>        params and BN buffers, fp32, PyTorch layout (OIHW), and
//                                         "<bn>.num_batches_tracked" (int64 scalar): the same layout
//                                         as a weights file, so tools/h5_to_torchvision.py converts a
//                                         checkpoint to a torchvision .pth as it is
//   /optimizer/momentum/<param name>      SGD momentum buffers, PyTorch layout
//   /classes                              vlen UTF-8 strings [num_classes]: the class names in label
//                                         order, as in the shards trained on (absent for synthetic
//                                         data, and in files written before it was added)
//   root attributes                       format = "resnet18-ddp-checkpoint", format_version,
//                                         complete = 1 (written last), epoch, step_in_epoch,
//                                         global_step, steps_per_epoch, seed, world_size,
//                                         batch_size (per rank), train_images (0 = unknown:
//                                         written before these two), num_classes,
//                                         momentum_initialised, loss_scale,
//                                         loss_scale_good_steps, loss_scale_skipped_steps, config,
//                                         eval_pending (1: the evaluation of these weights was cut
//                                         short by a stop; a resumed run runs it first; absent: 0)
//   /rng                                  attributes: positions of the host RNG streams in use
//   /ranks/buffers                        [world_size, buffer_count] fp32: each rank's own BN running
//                                         statistics (the root datasets hold their average), so that
//                                         a resume with the same ranks continues bit for bit
//
// Every fp32 tensor is one chunk with HDF5's Fletcher-32 checksum (verified on every read, also by
// h5py), so a bit flipped on disk is refused, naming the tensor, instead of loading other weights.
// Written to "<name>.tmp", flushed, fsync'd, renamed (and the directory fsync'd), so a file under a
// final name is always whole. A truncated, incomplete or foreign file is refused with a message
// that names it; nothing is half-loaded (the state is read completely before it is used).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ddp/nn/resnet18.h"
#include "ddp/train/loss_scaler.h"

namespace ddp::train {

constexpr const char* kCheckpointFormat = "resnet18-ddp-checkpoint";
constexpr int64_t kCheckpointVersion = 1;

struct CheckpointState {
  int num_classes = 0;
  std::vector<float> params;    // spec.param_count, PyTorch layout
  std::vector<float> momentum;  // spec.param_count, PyTorch layout
  std::vector<float> buffers;   // spec.buffer_count (the ranks' average)
  // world_size x spec.buffer_count: each rank's own statistics; empty when not recorded (one rank, or
  // a checkpoint written before they were).
  std::vector<float> rank_buffers;
  int64_t num_batches_tracked = 0;
  bool momentum_initialised = false;
  int64_t epoch = 0;          // the epoch to continue in (0-based)
  int64_t step_in_epoch = 0;  // steps of that epoch already done
  int64_t global_step = 0;    // optimizer steps taken in all (skipped fp16 steps included)
  int64_t steps_per_epoch = 0;
  uint64_t seed = 0;
  int world_size = 1;
  // A mid-epoch resume must see the same per-rank slices of the epoch's order: same ranks, batch and
  // data set size. 0 = not recorded (checkpoints written before these were added).
  int64_t batch_size = 0;
  int64_t train_images = 0;
  LossScalerState scaler;
  std::string config;
  std::vector<std::pair<std::string, uint64_t>> rng;  // name -> position
  // Class names in label order (/classes); empty: not recorded (synthetic data, older files).
  std::vector<std::string> classes;
  // The evaluation due at this position was interrupted by a stop request (its figures are missing):
  // a run resumed from here evaluates first. Older files have no attribute: false.
  bool eval_pending = false;
};

// How two class lists differ ("4 vs 5 classes; first difference at index 4: nothing (a_name) vs 'n4'
// (b_name)"), or "" when they are equal.
std::string class_list_difference(const std::vector<std::string>& a, const std::vector<std::string>& b,
                                  const char* a_name, const char* b_name);

// "ckpt-<global step, 10 digits>.h5"
std::string checkpoint_file_name(int64_t global_step);
void save_checkpoint(const std::string& path, const nn::ResNet18Spec& spec, const CheckpointState& s);
// Throws ddp::Error naming the file if it is unreadable, truncated, incomplete, foreign or does not
// match the spec (class count, a tensor's name or shape).
CheckpointState load_checkpoint(const std::string& path, const nn::ResNet18Spec& spec);
// Reads only the class count (to build the model before loading); same checks as load_checkpoint.
int checkpoint_num_classes(const std::string& path);
// The run's settings as recorded (TrainOptions::config_text); same checks as load_checkpoint's opening.
std::string checkpoint_config(const std::string& path);
// Empty string when the file is a complete checkpoint of ours whose name (if it is a ckpt-N.h5 name)
// agrees with its global step; otherwise the reason it is not.
std::string checkpoint_problem(const std::string& path);
// Why a file named ckpt-N.h5 that holds `global_step` is not where its name puts it, or "" (also for
// names of another form).
std::string checkpoint_name_problem(const std::string& path, int64_t global_step);
// ckpt-*.h5 files in dir (complete or not), oldest first.
std::vector<std::string> list_checkpoints(const std::string& dir);
// Newest complete checkpoint in dir; incomplete ones are skipped with a warning.
std::optional<std::string> find_latest_checkpoint(const std::string& dir);
// Keeps the `keep` newest checkpoints up to global step `newest` (the one just written) and deletes
// the older ones, and any stale *.tmp files. Files of later steps are not this run's to delete (the
// trainer refuses a directory holding complete ones; a damaged one is replaced when the run reaches
// its step).
void prune_checkpoints(const std::string& dir, int keep, int64_t newest);
// Global step in a checkpoint file name ("ckpt-0000000042.h5" -> 42); -1 for other names.
int64_t checkpoint_step(const std::string& path);

}  // namespace ddp::train
