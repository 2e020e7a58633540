#include "ddp/train/options.h"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "ddp/core/check.h"

namespace po = boost::program_options;

namespace ddp::train {

const char* lr_schedule_name(LrScheduleKind k) {
  switch (k) {
    case LrScheduleKind::Step: return "step";
    case LrScheduleKind::Cosine: return "cosine";
    case LrScheduleKind::OneCycle: return "onecycle";
  }
  return "?";
}
const char* comm_name(CommKind k) { return k == CommKind::Mpi ? "mpi" : "nccl"; }

namespace {

constexpr int kMaxImageSize = 4096;

[[noreturn]] void bad(const std::string& flag, const std::string& why) {
  throw UsageError(str("bad value for --", flag, ": ", why, " (see --help)"));
}

template <class T>
void require(bool ok, const std::string& flag, const T& value, const std::string& rule) {
  if (!ok) bad(flag, str("'", value, "' ", rule));
}

po::options_description make_description(TrainOptions& o, std::string& backend, std::string& amp,
                                         std::string& tf32, std::string& sched, std::string& comm,
                                         std::string& scope, std::string& rcrop, std::string& flip,
                                         std::string& eval_flip, std::string& seed) {
  po::options_description general("General");
  general.add_options()
      ("help,h", "print this help and exit")
      ("config", po::value<std::string>(), "ini-style file with any of these settings (key = value); "
                                            "the command line wins");
  po::options_description data("Data");
  data.add_options()
      ("data", po::value<std::string>(&o.data), "shard directory (<dir>/train-NNNNN-of-MMMMM.h5, "
                                                "<dir>/val-...), or 'synthetic'")
      ("synthetic-size", po::value<int64_t>(&o.synthetic_size)->default_value(o.synthetic_size),
       "images in the synthetic data set (all ranks together; drawn once, held in memory)")
      ("synthetic-classes", po::value<int>(&o.synthetic_classes)->default_value(o.synthetic_classes),
       "classes in the synthetic data set")
      ("shard-scope", po::value<std::string>(&scope)->default_value("node"),
       "node: node i of N reads the shards whose index mod N is i (from its own volume or a shared set) "
       "and its ranks split them; global: all ranks split the whole set")
      ("image-size", po::value<int>(&o.image_size)->default_value(o.image_size), "training resolution (>= 32)")
      ("val-size", po::value<int>(&o.val_size)->default_value(0), "evaluation resolution (0: same as --image-size)")
      ("workers", po::value<int>(&o.workers)->default_value(-1), "decode threads per rank (-1: auto)")
      ("random-crop", po::value<std::string>(&rcrop)->default_value("on"),
       "on | off: RandomResizedCrop when training (off: the evaluation resize + centre crop)")
      ("min-crop-scale", po::value<double>(&o.min_crop_scale)->default_value(o.min_crop_scale),
       "smallest area fraction of RandomResizedCrop")
      ("flip", po::value<std::string>(&flip)->default_value("on"), "on | off: random horizontal flip when training")
      ("eval-crop-ratio", po::value<double>(&o.eval_crop_ratio)->default_value(o.eval_crop_ratio),
       "evaluation: resize the shorter side to size / ratio, then centre crop (1: keep the whole image)");
  po::options_description model("Model and numerics");
  model.add_options()
      ("backend", po::value<std::string>(&backend), "cpu | cuda (or gpu; default: cuda when a GPU is visible, else cpu)")
      ("amp", po::value<std::string>(&amp), "off | fp16 | bf16 (default: fp16 on cuda, off on cpu)")
      ("tf32", po::value<std::string>(&tf32)->default_value("on"), "on | off: TF32 tensor cores for --amp off")
      ("deterministic", po::bool_switch(&o.deterministic),
       "cuda: only cuDNN engines that give the same bits on every run, so a seed repeats its run exactly "
       "(some convs may be slower; the cpu backend is deterministic anyway)")
      ("zero-init-residual", po::bool_switch(&o.zero_init_residual), "zero-init the last BN gamma of each block")
      ("init-weights", po::value<std::string>(&o.init_weights),
       "start from an HDF5 weights file (tools/torchvision_to_h5.py) or from the weights of a "
       "checkpoint (a new run: its optimizer state and position are not used); fc is re-initialised "
       "when the class count differs")
      ("threads", po::value<int>(&o.threads)->default_value(0), "CPU backend threads per rank (0: cores / ranks on the host)");
  po::options_description opt("Optimisation");
  opt.add_options()
      ("epochs", po::value<int>(&o.epochs)->default_value(o.epochs), "epochs to train")
      ("batch-size", po::value<int>(&o.batch_size)->default_value(o.batch_size), "images per rank per step")
      ("lr", po::value<double>(&o.lr)->default_value(0.0), "peak learning rate (0: 0.1 x global batch / 256)")
      ("momentum", po::value<double>(&o.momentum)->default_value(o.momentum), "SGD momentum")
      ("nesterov", po::bool_switch(&o.nesterov), "Nesterov momentum")
      ("wd", po::value<double>(&o.weight_decay)->default_value(o.weight_decay), "weight decay")
      ("no-wd-bn-bias", po::bool_switch(&o.no_wd_bn_bias), "no weight decay on BN parameters and biases")
      ("label-smoothing", po::value<double>(&o.label_smoothing)->default_value(0.0), "label smoothing in [0, 1)")
      ("lr-schedule", po::value<std::string>(&sched)->default_value("step"), "step | cosine | onecycle")
      ("warmup-epochs", po::value<double>(&o.warmup_epochs)->default_value(0.0),
       "linear warm-up (step, cosine); the rising phase of onecycle (0: 30% of the run)")
      ("lr-step-epochs", po::value<double>(&o.lr_step_epochs)->default_value(o.lr_step_epochs),
       "step schedule: multiply the lr by --lr-gamma every this many epochs")
      ("lr-gamma", po::value<double>(&o.lr_gamma)->default_value(o.lr_gamma), "step schedule factor")
      // As text: Boost reads "-1" into a uint64_t as 2^64 - 1 without a word.
      ("seed", po::value<std::string>(&seed)->default_value("0"), "seed of init, data order and augmentation")
      ("max-steps", po::value<int64_t>(&o.max_steps)->default_value(0), "stop after this many steps in all (0: no limit)");
  po::options_description dist("Distributed");
  dist.add_options()
      ("comm", po::value<std::string>(&comm), "mpi | nccl (default: nccl on cuda, mpi on cpu)")
      ("bucket-mb", po::value<double>(&o.bucket_mb)->default_value(o.bucket_mb), "gradient bucket size in MB")
      ("timeout", po::value<double>(&o.timeout_s)->default_value(o.timeout_s),
       "seconds after which a dead or stuck rank ends the job")
      ("replica-check-every", po::value<int>(&o.replica_check_every)->default_value(o.replica_check_every),
       "compare a parameter checksum across ranks every K steps (and at each epoch end; 0: epoch end only); "
       "BN running statistics are averaged across ranks first")
      ("fault-perturb-step", po::value<int64_t>(&o.fault_perturb_step)->default_value(-1),
       "test only: perturb rank 1's parameters at this step so the replica check must fire")
      ("fault-signal-step", po::value<int64_t>(&o.fault_signal_step)->default_value(-1),
       "test only: every rank sends itself SIGUSR1 as it starts this global step (a stop at a known step)");
  po::options_description ck("Checkpoints");
  ck.add_options()
      ("checkpoint-dir", po::value<std::string>(&o.checkpoint_dir), "directory for checkpoints (rank 0 writes)")
      ("checkpoint-every", po::value<std::string>(&o.checkpoint_every)->default_value("epoch"),
       "'epoch', or a number of steps")
      ("keep-checkpoints", po::value<int>(&o.keep_checkpoints)->default_value(o.keep_checkpoints),
       "keep the newest K checkpoints")
      ("resume", po::value<std::string>(&o.resume), "auto (newest complete checkpoint in --checkpoint-dir, "
                                                     "if any) or a checkpoint file");
  po::options_description met("Evaluation and metrics");
  met.add_options()
      ("eval-every", po::value<int>(&o.eval_every)->default_value(o.eval_every), "evaluate every N epochs (0: at the end only)")
      ("no-eval", po::bool_switch(&o.no_eval), "never evaluate")
      ("eval-flip", po::value<std::string>(&eval_flip)->default_value("off"),
       "on | off: evaluation averages the softmax of each image and of its horizontal mirror (test-time "
       "augmentation; twice the evaluation work)")
      ("eval-only", po::bool_switch(&o.eval_only),
       "evaluate the weights of --resume or --init-weights once and exit, without training")
      ("log-every", po::value<int>(&o.log_every)->default_value(o.log_every), "steps between log lines / JSONL records")
      ("jsonl", po::value<std::string>(&o.jsonl), "append metrics as JSON lines to this file")
      ("status-file", po::value<std::string>(&o.status_file),
       "write how the run ended to this file (key=value lines; state=finished | stopped | stopped-unsaved), "
       "for job scripts that requeue a run stopped at a signal")
      ("tensorboard", po::value<std::string>(&o.tensorboard), "write TensorBoard event files into this directory")
      ("progress", po::value<std::string>(&o.progress)->default_value("auto"),
       "auto | bar | lines: a progress bar (one process on a terminal) or periodic lines (also under mpirun "
       "with several ranks, where a rank cannot tell a terminal from a log file)");
  po::options_description all("train_resnet18: data-parallel ResNet18 training (mpirun / srun launch)");
  all.add(general).add(data).add(model).add(opt).add(dist).add(ck).add(met);
  return all;
}

// A whole number written in digits only, or nullopt (also past 2^64 - 1): strtoull alone takes
// " 4" and "+4", reads "-1" as 2^64 - 1, and saturates what does not fit.
std::optional<uint64_t> parse_digits(const std::string& s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  if (errno == ERANGE) return std::nullopt;
  return v;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

}  // namespace

std::optional<TrainOptions> parse_options(int argc, const char* const* argv) {
  TrainOptions o;
  std::string backend, amp, tf32, sched, comm, scope, rcrop, flip, eval_flip, seed;
  po::options_description desc =
      make_description(o, backend, amp, tf32, sched, comm, scope, rcrop, flip, eval_flip, seed);
  po::variables_map vm;
  try {
    // No abbreviations (Boost guesses "--bat" as --batch-size by default): config files do not take
    // them, and a prefix that is unique today can silently mean another flag once one is added.
    po::parsed_options parsed =
        po::command_line_parser(argc, argv)
            .options(desc)
            .style(po::command_line_style::default_style & ~po::command_line_style::allow_guessing)
            .run();
    // Boost keeps words that belong to no flag ("--nesterov false", "--epochs 5 10") aside as
    // positional tokens; ignoring them would run something else than what was typed.
    const auto stray = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!stray.empty())
      throw UsageError(str("unexpected argument '", stray.front(), "' (every setting is a --flag; switches such as "
                      "--nesterov take no value) (see --help)"));
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << desc << "\nExamples:\n"
                   "  train_resnet18 --data synthetic --synthetic-size 256 --backend cpu --image-size 32 \\\n"
                   "      --batch-size 32 --lr 0.02 --lr-schedule cosine --epochs 12   # fits the set: top-1 -> 100%\n"
                   "  mpirun -np 8 --hostfile hosts train_resnet18 --data /data/shards --amp bf16 \\\n"
                   "      --checkpoint-dir ckpt --resume auto --tensorboard tb\n";
      return std::nullopt;
    }
    if (vm.count("config")) {
      std::string path = vm["config"].as<std::string>();
      std::error_code ec;
      if (std::filesystem::is_directory(path, ec))
        throw UsageError(str("--config '", path, "' is a directory, not a file"));
      std::ifstream in(path);
      if (!in) throw UsageError(str("cannot read --config file '", path, "'"));
      try {
        po::store(po::parse_config_file(in, desc), vm);
      } catch (const po::error& e) {
        throw UsageError(str("--config file '", path, "': ", e.what(), " (see --help)"));
      }
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(str(e.what(), " (see --help)"));
  }

  if (o.data.empty()) bad("data", "missing: give a shard directory or 'synthetic'");
  o.synthetic = (o.data == "synthetic");
  if (vm.count("backend")) {
    o.backend_given = true;
    std::string b = lower(backend);
    if (b == "cpu") o.backend = nn::Backend::CPU;
    else if (b == "cuda" || b == "gpu") o.backend = nn::Backend::CUDA;
    else bad("backend", str("'", backend, "' is not one of cpu, cuda (or gpu)"));
  }
  if (vm.count("amp")) {
    o.amp_given = true;
    std::string a = lower(amp);
    if (a == "off" || a == "fp32" || a == "none") o.amp = nn::Amp::Off;
    else if (a == "fp16" || a == "f16") o.amp = nn::Amp::F16;
    else if (a == "bf16") o.amp = nn::Amp::BF16;
    else bad("amp", str("'", amp, "' is not one of off, fp16, bf16"));
  }
  {
    std::string t = lower(tf32);
    if (t == "on" || t == "true" || t == "1") o.tf32 = true;
    else if (t == "off" || t == "false" || t == "0") o.tf32 = false;
    else bad("tf32", str("'", tf32, "' is not one of on, off"));
  }
  auto on_off = [](const std::string& flag, const std::string& v) {
    std::string t = lower(v);
    if (t == "on" || t == "true" || t == "1") return true;
    if (t == "off" || t == "false" || t == "0") return false;
    bad(flag, str("'", v, "' is not one of on, off"));
  };
  {
    const auto v = parse_digits(seed);
    require(v.has_value(), "seed", seed, "must be a whole number in 0 .. 18446744073709551615");
    o.seed = *v;
  }
  o.random_crop = on_off("random-crop", rcrop);
  o.flip = on_off("flip", flip);
  o.eval_flip = on_off("eval-flip", eval_flip);
  require(o.min_crop_scale > 0 && o.min_crop_scale <= 1, "min-crop-scale", o.min_crop_scale, "must be in (0, 1]");
  require(o.eval_crop_ratio > 0 && o.eval_crop_ratio <= 1, "eval-crop-ratio", o.eval_crop_ratio, "must be in (0, 1]");
  {
    std::string s = lower(sched);
    if (s == "step") o.lr_schedule = LrScheduleKind::Step;
    else if (s == "cosine") o.lr_schedule = LrScheduleKind::Cosine;
    else if (s == "onecycle") o.lr_schedule = LrScheduleKind::OneCycle;
    else bad("lr-schedule", str("'", sched, "' is not one of step, cosine, onecycle"));
  }
  if (vm.count("comm")) {
    o.comm_given = true;
    std::string c = lower(comm);
    if (c == "mpi") o.comm = CommKind::Mpi;
    else if (c == "nccl") o.comm = CommKind::Nccl;
    else bad("comm", str("'", comm, "' is not one of mpi, nccl"));
  }
  {
    std::string s = lower(scope);
    if (s == "node") o.shard_scope = ShardScope::Node;
    else if (s == "global") o.shard_scope = ShardScope::Global;
    else bad("shard-scope", str("'", scope, "' is not one of node, global"));
  }
  {
    std::string p = lower(o.progress);
    require(p == "auto" || p == "bar" || p == "lines", "progress", o.progress, "is not one of auto, bar, lines");
    o.progress = p;
  }
  if (o.checkpoint_every == "epoch") {
    o.checkpoint_every_steps = 0;
  } else {
    const auto v = parse_digits(o.checkpoint_every);
    require(v && *v > 0 && *v <= static_cast<uint64_t>(INT64_MAX), "checkpoint-every", o.checkpoint_every,
            "is neither 'epoch' nor a positive number of steps");
    o.checkpoint_every_steps = static_cast<int64_t>(*v);
  }
  require(o.synthetic_size >= 1 && o.synthetic_size < (int64_t{1} << 32), "synthetic-size", o.synthetic_size,
          "must be in 1 .. 2^32 - 1");
  require(o.synthetic_classes >= 2, "synthetic-classes", o.synthetic_classes, "must be at least 2");
  // The upper bound only turns a nonsense value into a flag error instead of a failed allocation.
  require(o.image_size >= 32 && o.image_size <= kMaxImageSize, "image-size", o.image_size,
          str("must be in 32 (ResNet18's smallest input) .. ", kMaxImageSize));
  require(o.val_size == 0 || (o.val_size >= 32 && o.val_size <= kMaxImageSize), "val-size", o.val_size,
          str("must be 0 or in 32 .. ", kMaxImageSize));
  if (o.val_size == 0) o.val_size = o.image_size;
  require(o.workers == -1 || (o.workers >= 1 && o.workers <= 256), "workers", o.workers,
          "must be -1 (auto) or 1 .. 256");
  require(o.threads >= 0 && o.threads <= 1024, "threads", o.threads, "must be in 0 (auto) .. 1024");
  require(o.epochs >= 1, "epochs", o.epochs, "must be at least 1");
  require(o.batch_size >= 1, "batch-size", o.batch_size, "must be at least 1");
  // layer4's output is ceil(size / 32) square: at 32 px and batch 1 its batch norm sees one value per
  // channel and has no variance (PyTorch refuses that batch too).
  require(o.batch_size >= 2 || o.image_size > 32, "batch-size", o.batch_size,
          "is too small at --image-size 32: layer4's batch norm would see one value per channel (use 2 or more)");
  require(o.lr >= 0 && std::isfinite(o.lr), "lr", o.lr, "must be a finite number >= 0");
  require(o.momentum >= 0 && o.momentum < 1, "momentum", o.momentum, "must be in [0, 1)");
  require(!o.nesterov || o.momentum > 0, "nesterov", "on", "needs --momentum > 0");
  require(o.weight_decay >= 0 && std::isfinite(o.weight_decay), "wd", o.weight_decay, "must be >= 0");
  require(o.label_smoothing >= 0 && o.label_smoothing < 1, "label-smoothing", o.label_smoothing, "must be in [0, 1)");
  require(o.warmup_epochs >= 0 && o.warmup_epochs < o.epochs, "warmup-epochs", o.warmup_epochs,
          "must be >= 0 and less than --epochs");
  require(o.lr_step_epochs > 0, "lr-step-epochs", o.lr_step_epochs, "must be > 0");
  require(o.lr_gamma > 0 && o.lr_gamma <= 1, "lr-gamma", o.lr_gamma, "must be in (0, 1]");
  require(o.max_steps >= 0, "max-steps", o.max_steps, "must be >= 0");
  // A ResNet18 gradient is 46.8 MB: below 0.01 MB a step would issue thousands of collectives; above
  // 65536 MB the byte count no longer fits the bucketer's arithmetic.
  require(o.bucket_mb >= 0.01 && o.bucket_mb <= 65536, "bucket-mb", o.bucket_mb, "must be in 0.01 .. 65536");
  // Below 1 s a busy rank would count as dead; a week is longer than any step needs.
  require(o.timeout_s >= 1 && o.timeout_s <= 604800, "timeout", o.timeout_s, "must be in 1 .. 604800 seconds");
  require(o.replica_check_every >= 0, "replica-check-every", o.replica_check_every, "must be >= 0");
  require(o.keep_checkpoints >= 1, "keep-checkpoints", o.keep_checkpoints, "must be at least 1");
  require(o.eval_every >= 0, "eval-every", o.eval_every, "must be >= 0");
  require(o.log_every >= 1, "log-every", o.log_every, "must be at least 1");
  if (!o.resume.empty() && o.resume == "auto")
    require(!o.checkpoint_dir.empty(), "resume", o.resume, "needs --checkpoint-dir");
  if (o.checkpoint_every_steps > 0)
    require(!o.checkpoint_dir.empty(), "checkpoint-every", o.checkpoint_every, "needs --checkpoint-dir");
  // Given but without effect in this run: said, so that a typo'd recipe is not mistaken for a used one.
  auto given = [&](const char* k) { return vm.count(k) && !vm[k].defaulted(); };
  for (const auto& [k, v] : vm)
    if (!v.defaulted()) o.given.insert(k);
  if (!o.synthetic)
    for (const char* k : {"synthetic-size", "synthetic-classes"})
      if (given(k)) o.ignored.push_back(str("--", k, " (the data is shards, not 'synthetic')"));
  if (o.no_eval)
    for (const char* k : {"eval-flip", "eval-every", "val-size", "eval-crop-ratio"})
      if (given(k)) o.ignored.push_back(str("--", k, " (--no-eval)"));
  if (o.checkpoint_dir.empty() && given("keep-checkpoints"))
    o.ignored.push_back("--keep-checkpoints (no --checkpoint-dir)");
  if (o.eval_only) {
    // Evaluating a fresh random initialisation is never what was meant.
    if (o.resume.empty() && o.init_weights.empty()) bad("eval-only", "needs --resume FILE|auto or --init-weights FILE");
    if (o.no_eval) bad("eval-only", "contradicts --no-eval");
  }
  return o;
}

std::vector<std::string> resolve_defaults(TrainOptions& o, int world_size, int local_size, bool gpu_visible) {
  std::vector<std::string> notes;
  if (!o.backend_given) {
    o.backend = gpu_visible ? nn::Backend::CUDA : nn::Backend::CPU;
    notes.push_back(str("backend: ", nn::backend_name(o.backend), " (default: ",
                        gpu_visible ? "a GPU is visible" : "no GPU visible", "; set --backend)"));
  }
  if (o.backend == nn::Backend::CPU) {
    // A GPU flag on a machine whose backend defaulted to cpu: say why the backend is cpu.
    const std::string why_cpu = o.backend_given ? "" : "the backend is cpu because no GPU is visible";
    const std::string also = why_cpu.empty() ? "" : "; " + why_cpu;
    if (o.amp_given && o.amp != nn::Amp::Off)
      bad("amp", str("'", nn::amp_name(o.amp), "' needs --backend cuda (the CPU backend is fp32", also, ")"));
    o.amp = nn::Amp::Off;
    if (o.comm_given && o.comm == CommKind::Nccl)
      bad("comm", str("'nccl' needs --backend cuda", why_cpu.empty() ? "" : " (" + why_cpu + ")"));
    // TF32 is a tensor-core format: the CPU backend always computes in full fp32 (what --tf32 off asks).
    if (o.given.count("tf32") && o.tf32)
      bad("tf32", str("'on' needs --backend cuda (the CPU backend computes in full fp32", also, ")"));
    o.comm = CommKind::Mpi;
    if (o.threads == 0) {
      int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
      o.threads = std::max(1, cores / std::max(1, local_size));
      notes.push_back(str("threads: ", o.threads, " per rank (", cores, " cores, ", local_size, " ranks on this host)"));
    }
  } else {
    if (!o.amp_given) {
      o.amp = nn::Amp::F16;
      notes.push_back("amp: fp16 (default on cuda; set --amp)");
    }
    if (!o.comm_given) o.comm = CommKind::Nccl;
    // The MPI communicator averages host memory; the CUDA model's gradients live on the GPU.
    if (o.comm == CommKind::Mpi) bad("comm", "'mpi' works with --backend cpu only; the GPU backend uses nccl");
  }
  if (o.workers < 0) {
    int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    // On the CPU backend the cores train; decoding shares them. On a GPU node they feed the GPU.
    o.workers = o.backend == nn::Backend::CPU ? 1 : std::clamp(cores / std::max(1, local_size) - 1, 1, 16);
  }
  if (o.lr == 0.0) {
    o.lr = 0.1 * static_cast<double>(o.batch_size) * world_size / 256.0;
    notes.push_back(str("lr: ", o.lr, " (0.1 x global batch ", int64_t(o.batch_size) * world_size, " / 256)"));
  }
  o.config_text = describe(o);
  return notes;
}

std::string describe(const TrainOptions& o) {
  std::ostringstream s;
  s << "data = " << o.data << "\n";
  if (o.synthetic) s << "synthetic-size = " << o.synthetic_size << "\nsynthetic-classes = " << o.synthetic_classes << "\n";
  s << "shard-scope = " << (o.shard_scope == ShardScope::Node ? "node" : "global") << "\n"
    << "random-crop = " << (o.random_crop ? "on" : "off") << "\nmin-crop-scale = " << o.min_crop_scale << "\n"
    << "flip = " << (o.flip ? "on" : "off") << "\neval-crop-ratio = " << o.eval_crop_ratio << "\n"
    << "eval-flip = " << (o.eval_flip ? "on" : "off") << "\n"
    << "image-size = " << o.image_size << "\nval-size = " << o.val_size << "\nworkers = " << o.workers << "\n"
    << "backend = " << nn::backend_name(o.backend) << "\namp = " << nn::amp_name(o.amp) << "\n"
    << "tf32 = " << (o.tf32 ? "on" : "off") << "\nzero-init-residual = " << o.zero_init_residual << "\n";
  // Only when on, like init-weights: checkpoints written before the flag existed then compare equal.
  if (o.deterministic) s << "deterministic = 1\n";
  if (!o.init_weights.empty()) s << "init-weights = " << o.init_weights << "\n";
  s << "threads = " << o.threads << "\nepochs = " << o.epochs << "\nbatch-size = " << o.batch_size << "\n"
    << "lr = " << o.lr << "\nmomentum = " << o.momentum << "\nnesterov = " << o.nesterov << "\n"
    << "wd = " << o.weight_decay << "\nno-wd-bn-bias = " << o.no_wd_bn_bias << "\n"
    << "label-smoothing = " << o.label_smoothing << "\nlr-schedule = " << lr_schedule_name(o.lr_schedule) << "\n"
    << "warmup-epochs = " << o.warmup_epochs << "\nlr-step-epochs = " << o.lr_step_epochs << "\n"
    << "lr-gamma = " << o.lr_gamma << "\nseed = " << o.seed << "\n";
  if (o.max_steps) s << "max-steps = " << o.max_steps << "\n";
  s << "comm = " << comm_name(o.comm) << "\nbucket-mb = " << o.bucket_mb << "\ntimeout = " << o.timeout_s << "\n"
    << "replica-check-every = " << o.replica_check_every << "\n";
  if (!o.checkpoint_dir.empty())
    s << "checkpoint-dir = " << o.checkpoint_dir << "\ncheckpoint-every = " << o.checkpoint_every << "\n"
      << "keep-checkpoints = " << o.keep_checkpoints << "\n";
  s << "eval-every = " << o.eval_every << "\nlog-every = " << o.log_every << "\n";
  return s.str();
}

}  // namespace ddp::train
