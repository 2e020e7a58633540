// Command line and config file of train_resnet18 (Boost.Program_options). Every flag can also be
// given in an ini-style file (--config FILE, the same keys without the dashes); the command line
// wins. Bad values are refused with a message that names the flag.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ddp/core/check.h"
#include "ddp/nn/model.h"

namespace ddp::train {

enum class LrScheduleKind { Step, Cosine, OneCycle };
enum class CommKind { Mpi, Nccl };
enum class ShardScope { Node, Global };

struct TrainOptions {
  // data
  std::string data;                 // shard directory, or "synthetic"
  bool synthetic = false;
  int64_t synthetic_size = 1024;    // images in the synthetic set (all ranks together)
  int synthetic_classes = 10;
  ShardScope shard_scope = ShardScope::Node;
  int image_size = 224;             // training resolution
  int val_size = 0;                 // evaluation resolution; 0: same as image_size
  int workers = -1;                 // decode threads per rank; -1: auto
  // augmentation (shards only): RandomResizedCrop(min_crop_scale..1) + flip, eval resize/crop ratio
  double min_crop_scale = 0.08;
  bool random_crop = true;          // off: the eval resize + centre crop, then the flip
  bool flip = true;
  double eval_crop_ratio = 0.875;   // eval: shorter side to size / ratio, centre crop (1: no border cut)
  // model / numerics
  nn::Backend backend = nn::Backend::CPU;
  bool backend_given = false;
  nn::Amp amp = nn::Amp::Off;
  bool amp_given = false;
  bool tf32 = true;
  bool deterministic = false;  // --deterministic (ModelConfig::deterministic)
  bool zero_init_residual = false;
  std::string init_weights;
  int threads = 0;                  // CPU backend threads per rank; 0: cores / ranks on the host
  // optimisation
  int epochs = 90;
  int batch_size = 256;             // per rank
  double lr = 0.0;                  // 0: 0.1 * global batch / 256
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 1e-4;
  bool no_wd_bn_bias = false;
  double label_smoothing = 0.0;
  LrScheduleKind lr_schedule = LrScheduleKind::Step;
  double warmup_epochs = 0.0;
  double lr_step_epochs = 30.0;     // step schedule: multiply by lr_gamma every this many epochs
  double lr_gamma = 0.1;
  uint64_t seed = 0;
  int64_t max_steps = 0;            // stop after this many steps in total (tests, benchmarks); 0: off
  // distributed
  CommKind comm = CommKind::Mpi;
  bool comm_given = false;
  double bucket_mb = 25.0;
  double timeout_s = 60.0;
  int replica_check_every = 100;
  // checkpoints
  std::string checkpoint_dir;
  std::string checkpoint_every = "epoch";  // "epoch", or a number of steps
  int64_t checkpoint_every_steps = 0;      // parsed from checkpoint_every (0: once per epoch)
  int keep_checkpoints = 3;
  std::string resume;                      // "", "auto" or a file
  // evaluation and metrics
  int eval_every = 1;                      // epochs; 0: only at the end
  bool no_eval = false;
  bool eval_flip = false;                  // average each image's and its mirror's probabilities
  bool eval_only = false;                  // evaluate the resumed / initial weights, no training
  int log_every = 50;
  std::string jsonl;
  std::string status_file;                 // rank 0 writes how the run ended (job scripts read it)
  std::string tensorboard;
  std::string progress = "auto";           // auto | bar | lines
  // test-only: perturb one replica's parameters at this step (proves the replica check fires)
  int64_t fault_perturb_step = -1;
  // test-only: each rank raises SIGUSR1 as it starts this global step (1-based): the stop then agreed
  // after it, at a step a test chooses, without a signal sent from outside within a time window
  int64_t fault_signal_step = -1;

  std::string config_text;  // every effective setting as "key = value" lines (stored in checkpoints)
  std::set<std::string> given;  // the settings given on the command line or in --config (not defaulted)
  std::vector<std::string> ignored;  // flags given that this run does not use, with why (warned)
};

// A bad flag or flag combination (train_resnet18 exits with status 2 for these, 1 for failures at run
// time).
class UsageError : public Error {
 public:
  using Error::Error;
};

// Parses argv. Returns std::nullopt after printing --help. Throws UsageError naming the flag on a
// bad value. Settings that depend on the machine (default backend, comm, lr) are resolved by
// resolve_defaults once the number of ranks is known.
std::optional<TrainOptions> parse_options(int argc, const char* const* argv);
// Fills defaults that depend on the run: backend (cuda when a GPU is visible), comm, lr, threads.
// Returns human-readable notes of what was chosen (printed by rank 0). Throws UsageError for flags
// this machine or backend cannot honour (--amp fp16 on the CPU backend).
std::vector<std::string> resolve_defaults(TrainOptions& o, int world_size, int local_size, bool gpu_visible);
std::string describe(const TrainOptions& o);  // the config text ("key = value" lines)

const char* lr_schedule_name(LrScheduleKind k);
const char* comm_name(CommKind k);

}  // namespace ddp::train
