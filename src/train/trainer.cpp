#include "ddp/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "ddp/comm/bucketer.h"
#include "ddp/comm/communicator.h"
#include "ddp/comm/dist.h"
#include "ddp/comm/host_collectives.h"
#include "ddp/comm/replica_guard.h"
#include "ddp/core/check.h"
#include "ddp/core/file_lock.h"
#include "ddp/core/hash.h"
#include "ddp/core/h5.h"
#include "ddp/core/log.h"
#include "ddp/core/tensor.h"
#include "ddp/nn/model.h"
#include "ddp/nn/weights_io.h"
#include "ddp/train/checkpoint.h"
#include "ddp/train/data_source.h"
#include "ddp/train/eval.h"
#include "ddp/train/loss_scaler.h"
#include "ddp/train/lr_schedule.h"
#include "ddp/train/metrics.h"
#include "ddp/train/signals.h"
#include "ddp/train/tensorboard.h"

#if DDP_HAVE_CUDA
#include "ddp/backend/cuda/resnet18_cuda.h"
#endif

namespace ddp::train {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// "key = value" lines of TrainOptions::config_text (also stored in checkpoints) as key -> value,
// without the keys in `skip`.
std::map<std::string, std::string> settings_of(const std::string& text, const std::set<std::string>& skip) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    const auto eq = l.find(" = ");
    if (eq != std::string::npos && !skip.count(l.substr(0, eq))) out[l.substr(0, eq)] = l.substr(eq + 3);
  }
  return out;
}

// "key = a (b)" for each key whose value differs between `mine` and `theirs` ("(none)" where absent).
std::vector<std::string> setting_differences(const std::map<std::string, std::string>& mine,
                                             const std::map<std::string, std::string>& theirs, const char* whose) {
  std::set<std::string> keys;
  for (const auto& [k, v] : mine) keys.insert(k);
  for (const auto& [k, v] : theirs) keys.insert(k);
  std::vector<std::string> out;
  for (const auto& k : keys) {
    const std::string a = mine.count(k) ? mine.at(k) : "(none)", b = theirs.count(k) ? theirs.at(k) : "(none)";
    if (a != b) out.push_back(str(k, " = ", a, " (", whose, ": ", b, ")"));
  }
  return out;
}

// Every rank must train one recipe. mpirun gives all ranks the same argv, but a --config file on
// node-local disks, or an MPMD line (-np 1 A : -np 1 B), can differ, and the job would still run:
// gradients of different recipes averaged. Settings that may differ per host are left out (threads and
// decode workers follow the host's cores; shard directories may be mounted at other paths, and the
// data itself is checked by the class lists and the steps agreed below).
void check_same_settings(const TrainOptions& o, int rank) {
  const double t = o.timeout_s;
  // config_text (what checkpoints record) plus the run's mode, which decides the collectives a rank
  // enters: a rank without evaluation would wait in the wrong one.
  const std::string mine = str(o.config_text, "no-eval = ", o.no_eval, "\neval-only = ", o.eval_only, "\n",
                               "resume = ", o.resume.empty() ? "no" : "yes", "\n");
  std::string theirs = mine;
  comm::broadcast_string(theirs, 0, t, "a broadcast from rank 0 of its settings (start-up)");
  const std::set<std::string> per_host = {"threads", "workers", "data"};
  const auto diffs = setting_differences(settings_of(mine, per_host), settings_of(theirs, per_host), "rank 0");
  std::string diff = diffs.empty() ? std::string() : diffs.front();
  int first = diff.empty() ? std::numeric_limits<int>::max() : rank;
  comm::allreduce(&first, 1, comm::ReduceOp::Min, t, "the start-up comparison of settings");
  if (first == std::numeric_limits<int>::max()) return;
  comm::broadcast_string(diff, first, t, str("a broadcast from rank ", first, " of the setting it differs in"));
  throw UsageError(str("rank ", first, " was started with other settings than rank 0: ", diff,
                       " (every rank must get the same flags and --config contents)"));
}

// The trainer's own collectives (comm/host_collectives.h) wait on rank 0 while it reads or writes
// files for everyone (start-up, checkpoints); each is bounded by --timeout (o.timeout_s), so a rank
// stuck there (a hung file system, a stopped process) ends the job instead of hanging it (rule 2).
// They go through MPI directly because the NCCL communicator's broadcast takes device memory.
//
// Rank 0 runs f (`task`, for the timeout message); its error (if any) is re-thrown on every rank, so
// all ranks fail together instead of the others waiting in the next collective.
template <class F>
void on_rank0_agreed(int rank, double timeout_s, const char* task, F&& f) {
  std::string err;
  if (rank == 0) {
    try {
      f();
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  comm::broadcast_string(err, 0, timeout_s, str("a broadcast from rank 0 of its outcome of ", task));
  if (!err.empty()) throw Error(rank == 0 ? err : str("rank 0 failed: ", err));
}

// Every rank stops with the message of the first rank (the lowest) whose `problem` is not empty, or
// none does. Each rank enters both collectives whatever it found (no collective is conditional), so a
// check that fails on some ranks only (their own data) ends the job on all of them at once.
void agree_on_problem(const std::string& problem, int rank, double timeout_s, const char* what) {
  int first = problem.empty() ? std::numeric_limits<int>::max() : rank;
  comm::allreduce(&first, 1, comm::ReduceOp::Min, timeout_s, str("the start-up comparison of ", what));
  if (first == std::numeric_limits<int>::max()) return;
  std::string msg = problem;
  comm::broadcast_string(msg, first, timeout_s, str("a broadcast from rank ", first, " of how its ", what, " differ"));
  throw Error(first == rank ? msg : str("rank ", first, ": ", msg));
}

// A label is an index into the class list, so the splits and the ranks must share one list: val
// shards packed with another list (another --class-index, other folders) would score every prediction
// against another class, or put labels past the classifier when longer; with --shard-scope node, two
// hosts' sets in other orders would train one output on two classes. The class count agreed by the
// caller catches none of the reorderings. Each rank compares its val shards' list with its train
// shards' and its list with rank 0's; synthetic data has no names and passes.
void check_class_lists(const DataSource* train, const DataSource* val, int rank, double timeout_s) {
  const DataSource& data = train ? *train : *val;
  const std::vector<std::string> mine = data.class_names();
  std::string problem;
  if (train && val) {
    const std::string d = class_list_difference(mine, val->class_names(), "train", "val");
    if (!d.empty())
      problem = str("'", train->class_file(), "' (train) and '", val->class_file(), "' (val) hold different class ",
                    "lists (", d, "): a label would mean one class in training and another in evaluation; pack both ",
                    "splits in one pack_imagenet run, or with the same --class-index");
  }
  // Rank 0's file and names, NUL-separated (a class name may hold any other UTF-8).
  std::string zero;
  if (rank == 0) {
    zero = data.class_file();
    for (const auto& c : mine) zero += '\0' + c;
  }
  comm::broadcast_string(zero, 0, timeout_s, "a broadcast from rank 0 of its class list");
  if (problem.empty() && rank != 0) {
    std::vector<std::string> parts;
    for (size_t a = 0;;) {
      const size_t b = zero.find('\0', a);
      parts.push_back(zero.substr(a, b == std::string::npos ? std::string::npos : b - a));
      if (b == std::string::npos) break;
      a = b + 1;
    }
    const std::vector<std::string> theirs(parts.begin() + 1, parts.end());
    const std::string me = str("rank ", rank);
    const std::string d = class_list_difference(theirs, mine, "rank 0", me.c_str());
    if (!d.empty())
      problem = str("'", data.class_file(), "' (", me, ") and '", parts[0], "' (rank 0) hold different class lists (",
                    d, "): every node's shards must come from one pack_imagenet run, or use the same --class-index");
  }
  agree_on_problem(problem, rank, timeout_s, "class lists");
}

// A classifier's outputs are the classes in its run's order: on data listing them in another order
// each prediction is scored against another label (a top-1 near chance that reads as a result). How
// the class list recorded in `path` (a checkpoint, or a weights file: `recorded`, empty when it has
// none) differs from the data's, or "" (also when either has no list: synthetic data has no names; a
// file without one is said in a line).
std::string recorded_class_problem(const std::string& path, const std::vector<std::string>& recorded,
                                   const DataSource& data) {
  const std::vector<std::string> mine = data.class_names();
  if (mine.empty()) return "";
  if (recorded.empty()) {
    info("note: '", path, "' records no class list (a weights file such as tools/torchvision_to_h5.py writes, or a ",
         "checkpoint written before checkpoints kept one or trained on synthetic data): its class order cannot be "
         "checked against '", data.class_file(), "'");
    return "";
  }
  const std::string d = class_list_difference(recorded, mine, "checkpoint", "data");
  return d.empty() ? "" : str("'", path, "' was trained on another class list than '", data.class_file(), "' holds (", d, ")");
}

// Warns (rank 0, one line) when --image-size or --val-size exceeds what the shards store: every image
// is then upsampled, for no more detail and at a cost that grows with the square of the size (the
// default 224 px on 32 px shards: 49x the compute of 32 px).
void warn_sizes_above_stored(const DataSource* train, const DataSource* val, const TrainOptions& o) {
  std::vector<std::pair<std::string, std::vector<std::string>>> over;  // "--flag size" -> what it exceeds
  auto check = [&](const DataSource* s, const char* split, int size, const std::string& flag) {
    if (!s || s->stored_size() <= 0 || size <= s->stored_size()) return;
    char cost[32];
    std::snprintf(cost, sizeof cost, "%.3g", double(size) * size / (double(s->stored_size()) * s->stored_size()));
    const std::string key = str(flag, " ", size);
    const std::string what = str("the ", split, " images of '", s->class_file(), "' (", s->stored_text(), "; ", cost,
                                 "x the compute of ", s->stored_size(), " px)");
    for (auto& [k, v] : over)
      if (k == key) return v.push_back(what);
    over.push_back({key, {what}});
  };
  check(train, "training", o.image_size, "--image-size");
  // --val-size follows --image-size unless given (or taken from an --eval-only checkpoint).
  check(val, "validation", o.val_size,
        o.val_size == o.image_size && !o.given.count("val-size") ? "--image-size" : "--val-size");
  if (over.empty()) return;
  std::string line;
  for (const auto& [k, v] : over) {
    line += str(line.empty() ? "" : "; ", k, " exceeds ");
    for (size_t i = 0; i < v.size(); ++i) line += str(i ? " and " : "", v[i]);
  }
  warn0(line, ": every image is upsampled, for no more detail; lower the size or pack the shards with a larger "
              "--resize");
}

// Loads an HDF5 weights file, or the weights and BN statistics of one of our checkpoints, into host
// buffers for `spec`; a file for another class count keeps everything but fc (fine-tuning), which
// keeps the model's own initialisation. A checkpoint's optimizer state and training position are
// not used: --init-weights starts a new run (a second phase with other flags); --resume continues one.
void load_init_weights(const std::string& path, const nn::ResNet18Spec& spec, std::vector<float>& params,
                       std::vector<float>& buffers, int64_t& nbt, bool eval_only, const DataSource& data) {
  int file_classes = spec.num_classes;
  bool is_checkpoint = false;
  std::vector<std::string> file_class_names;  // a checkpoint's /classes (load_checkpoint checks its length)
  {
    h5::Handle f = h5::open_file(path);
    is_checkpoint = h5::has_attr(f, "format") && h5::get_attr_str(f, "format") == kCheckpointFormat;
    if (h5::has_attr(f, "num_classes")) file_classes = static_cast<int>(h5::get_attr_i64(f, "num_classes"));
    if (h5::exists(f, "classes")) file_class_names = h5::read_strings(f, "classes");
  }
  // Reads the file's weights for spec `s` (its own class count); a checkpoint is checked whole
  // (complete, version, every tensor) by load_checkpoint before anything is used.
  auto read = [&](const nn::ResNet18Spec& s, std::vector<float>& p, std::vector<float>& b) {
    if (!is_checkpoint) {
      nn::load_weights(path, s, p.data(), b.data(), &nbt);
      return;
    }
    CheckpointState st = load_checkpoint(path, s);
    p = std::move(st.params);
    b = std::move(st.buffers);
    nbt = st.num_batches_tracked;
  };
  const char* what = is_checkpoint ? " (a checkpoint's weights and BN statistics; not its optimizer state or "
                                     "position: a new run)"
                                   : "";
  if (file_classes == spec.num_classes) {
    read(spec, params, buffers);
    info0("initial weights: ", path, what);
    const std::string classes = recorded_class_problem(path, file_class_names, data);
    // Evaluated, it would score against other labels; fine-tuning on other classes retrains the fc.
    DDP_CHECK(!eval_only || classes.empty(), "--eval-only --init-weights ", classes,
              ": its classifier's outputs would be scored against other labels; evaluate on data packed with its ",
              "class order (its /classes dataset, one name per line, is a --class-index for pack_imagenet)");
    if (!classes.empty())
      warn("--init-weights ", classes, ": fine-tuning retrains its classifier for the data's classes");
    return;
  }
  // Evaluated as it is, a re-initialised fc would score chance and look like a result.
  DDP_CHECK(!eval_only, "--eval-only --init-weights '", path, "': the file's classifier has ", file_classes,
            " classes and the data ", spec.num_classes, "; there is no trained fc to evaluate");
  nn::ResNet18Spec fs = nn::make_resnet18_spec(file_classes);
  std::vector<float> p(static_cast<size_t>(fs.param_count)), b(static_cast<size_t>(fs.buffer_count));
  read(fs, p, b);
  for (const auto& pi : spec.params) {
    if (pi.name == "fc.weight" || pi.name == "fc.bias") continue;
    const auto& src = fs.param(pi.name);
    std::copy_n(p.data() + src.offset, pi.numel, params.data() + pi.offset);
  }
  buffers = b;  // BN buffers do not depend on the class count
  info0("initial weights: ", path, what, " (", file_classes, " classes; fc re-initialised for ", spec.num_classes,
        " classes: fine-tuning)");
}

// FNV-1a of s, cut to 52 bits so that it travels exactly as a double (the communicators' allgather).
double identity_hash(const std::string& s) {
  Fnv1a64 h;
  h.bytes(s.data(), s.size());
  return static_cast<double>(h.value() & ((uint64_t{1} << 52) - 1));
}

// The first pair of ranks of one group (group[r]: rank r's group, the same vector on every rank) whose
// `text` differs, and how (its first differing line, on rank r only), or first = -1. Every rank enters
// every collective here and finds the same pair, so every rank fails alike.
struct TextMismatch {
  int first = -1, r = -1;
  std::string how;
};
TextMismatch first_text_mismatch(const std::string& text, const std::vector<double>& group, const comm::DistEnv& env,
                                 comm::Communicator& c, double timeout_s) {
  const std::vector<double> ids = c.allgather(identity_hash(text));
  for (int r = 1; r < env.world; ++r) {
    int first = 0;
    while (group[static_cast<size_t>(first)] != group[static_cast<size_t>(r)]) ++first;
    if (ids[static_cast<size_t>(first)] == ids[static_cast<size_t>(r)]) continue;
    // Rank `first` sends its text, rank r compares (every rank takes part in the broadcast).
    std::string theirs = text;
    comm::broadcast_string(theirs, first, timeout_s, str("a broadcast from rank ", first, " of its shard set"));
    TextMismatch m{first, r, {}};
    if (env.rank == r) {
      std::istringstream a(theirs), b(text);
      std::string la, lb;
      for (;;) {
        const bool ga = static_cast<bool>(std::getline(a, la)), gb = static_cast<bool>(std::getline(b, lb));
        if (!ga && !gb) break;
        if (ga && gb && la == lb) continue;
        m.how = str("; first difference: rank ", first, " has '", ga ? la : "(nothing more)", "', rank ", r, " has '",
                    gb ? lb : "(nothing more)", "'");
        break;
      }
    }
    return m;
  }
  return {};
}

// Ranks that split one shard set (those of a host with --shard-scope node, all of them with global)
// must read the same files: two ranks of a host given different --data directories would each take
// their slice of another set, and some images would be trained twice and others never, without a
// word. Compared by content (Loader::set_identity), not by path: one set may be mounted at other paths.
// With --shard-scope node across hosts, each node reads its own share of one set: the shares differ
// by design, but the set they come from must be one (shard count, encoding, sizes), or images would
// be left out or read by two nodes.
void check_same_shard_set(const DataSource* train, const DataSource* val, const comm::DistEnv& env,
                          comm::Communicator& c, bool node_scope, double timeout_s) {
  const std::string identity = str(train ? train->identity() : std::string(), val ? val->identity() : std::string());
  const std::vector<double> node_of = c.allgather(env.node_index);  // every rank's node
  const auto host = [&](int r) { return env.hosts.at(static_cast<size_t>(node_of.at(static_cast<size_t>(r)))); };
  const TextMismatch m =
      first_text_mismatch(identity, node_scope ? node_of : std::vector<double>(node_of.size(), 0.0), env, c, timeout_s);
  const auto own = [&](int a, int b) {
    return (env.rank == a || env.rank == b) ? str("; this rank reads ", train ? train->describe() : val->describe(),
                                                  train && val ? str(" and ", val->describe()) : std::string())
                                            : std::string();
  };
  if (m.first >= 0) {
    const auto where = node_scope ? str(" on host ", host(m.r)) : std::string();
    DDP_FAIL("ranks ", m.first, " and ", m.r, where, " read different shard sets", own(m.first, m.r), m.how,
             ". Ranks that split one set must ",
             "see the same files: check each rank's --data (",
             node_scope ? "--shard-scope node: the ranks of a host split that host's share of the set"
                        : "--shard-scope global: all ranks split one set; with a set per host use --shard-scope node",
             ")");
  }
  if (!node_scope || env.num_nodes < 2) return;
  // The set fingerprint (pack_imagenet's hash of the whole split's listing, settings and shard count)
  // tells two packings of different inputs apart, which shard count, encoding and sizes cannot. It is
  // compared only when every rank's shards have it: shards of an older pack_imagenet still load.
  const auto fingerprinted = [](const DataSource* d) { return !d || !d->set_fingerprint().empty(); };
  const std::vector<double> has_fp = c.allgather(fingerprinted(train) && fingerprinted(val) ? 1.0 : 0.0);
  std::string without;  // hosts whose shards have none
  for (int h = 0; h < env.num_nodes; ++h) {
    for (int r = 0; r < env.world; ++r) {
      if (node_of.at(static_cast<size_t>(r)) != h || has_fp.at(static_cast<size_t>(r)) != 0.0) continue;
      without += str(without.empty() ? "" : ", ", env.hosts.at(static_cast<size_t>(h)));
      break;
    }
  }
  if (!without.empty())
    warn0("the shards on ", without, " have no set_fingerprint (packed by an older pack_imagenet): the nodes' shares ",
          "are checked to come from one set by shard count, encoding and sizes only, so shares of two packings of ",
          "different input files would pass; to add it, rerun this pack_imagenet over them with the flags they were ",
          "packed with: it keeps complete shards that have an input_fingerprint and rewrites them with it (older ",
          "shards still must be packed again)");
  const bool with_fp = without.empty();
  const auto packing_of = [&](const DataSource* d) { return d ? d->packing(with_fp) : std::string(); };
  const std::string packing = str(packing_of(train), packing_of(val));
  const TextMismatch p = first_text_mismatch(packing, std::vector<double>(node_of.size(), 0.0), env, c, timeout_s);
  if (p.first >= 0) {
    DDP_FAIL("ranks ", p.first, " (host ", host(p.first), ") and ", p.r, " (host ", host(p.r),
             ") read shares of differently packed sets", own(p.first, p.r), p.how,
             ". With --shard-scope node each node reads its share of one set (shard i of M on node i mod the "
             "node count): pack it once (pack_imagenet --nodes N, one run per --node-index, or --shards N) and give "
             "every node its shards, or the whole set. The set fingerprint covers every input file of the split "
             "(names, sizes, labels), the settings and the shard count: runs over other input files or with other "
             "flags differ; after a change to the input, rerun pack_imagenet for every node");
  }
}

// --shard-scope node on nodes running different numbers of ranks: each node's share is split among
// its own ranks, but every rank runs the same steps (the fewest any rank has, DESIGN rule 1), so a
// node with fewer ranks trains only part of its share per epoch, and its images are seen less often
// than the others', without a word. Refused, naming each node's ranks and the fraction of its share an
// epoch would train (docs/DISTRIBUTED.md): equal ranks per node, or --shard-scope global over a set
// every node sees, train every image once per epoch.
void check_equal_ranks_per_node(const DataSource& train, const comm::DistEnv& env, comm::Communicator& c,
                                int batch_size) {
  const std::vector<double> node_of = c.allgather(env.node_index);
  const std::vector<double> batches = c.allgather(static_cast<double>(train.local_batches()));
  const std::vector<double> images = c.allgather(static_cast<double>(train.num_images()));
  std::vector<int> ranks(static_cast<size_t>(env.num_nodes), 0);
  std::vector<int64_t> share(static_cast<size_t>(env.num_nodes), 0);
  for (int r = 0; r < env.world; ++r) {
    const auto n = static_cast<size_t>(node_of.at(static_cast<size_t>(r)));
    ++ranks.at(n);
    share.at(n) = static_cast<int64_t>(images.at(static_cast<size_t>(r)));
  }
  if (std::all_of(ranks.begin(), ranks.end(), [&](int k) { return k == ranks.front(); })) return;
  const auto steps = static_cast<int64_t>(*std::min_element(batches.begin(), batches.end()));
  std::string nodes;
  for (int n = 0; n < env.num_nodes; ++n) {
    const int64_t trained = std::min(share[static_cast<size_t>(n)], steps * batch_size * ranks[static_cast<size_t>(n)]);
    const double pct = share[static_cast<size_t>(n)] > 0 ? 100.0 * static_cast<double>(trained) /
                                                               static_cast<double>(share[static_cast<size_t>(n)])
                                                         : 0.0;
    char p[32];
    std::snprintf(p, sizeof p, "%.0f%%", pct);
    nodes += str(n ? "; " : "", "node ", n, " (host ", env.hosts.at(static_cast<size_t>(n)), "): ",
                 ranks[static_cast<size_t>(n)], " rank(s), a share of ", share[static_cast<size_t>(n)], " images, ",
                 trained, " trained per epoch (", p, ")");
  }
  DDP_FAIL("--shard-scope node (the default) with unequal ranks per node: each node's ranks split that node's share ",
           "of the set, ",
           "and every rank runs the same ", steps, " step(s) of ", batch_size, " per epoch (the fewest any rank ",
           "has), so a node with fewer ranks would train only part of its share each epoch and its images would be ",
           "seen less often than the others', without a word [", nodes, "]. Run the same number of ranks on every ",
           "node (mpirun --map-by ppr:K:node, jobs/mpirun_hostfile.sh with DDP_PER_NODE=K, Slurm ",
           "--ntasks-per-node=K), or put the whole set where every node sees it (a shared file system, or a copy ",
           "on each node) and use --shard-scope global, where all ranks split the whole set");
}

// The way out for a mid-epoch checkpoint this configuration cannot continue: an epoch-end checkpoint,
// naming the newest one in `dir` (the resumed file's) and the newer ones that --resume (auto or a file)
// would not leave in the run's --checkpoint-dir.
std::string epoch_end_way_out(const std::string& dir, const std::string& checkpoint_dir) {
  const std::string base = "; resume with the same configuration, or from an epoch-end checkpoint";
  if (dir.empty()) return base;
  std::string best;
  const auto all = list_checkpoints(dir);  // by global step
  for (const auto& c : all) {
    if (!checkpoint_problem(c).empty()) continue;
    h5::Handle f = h5::open_file(c);
    const int64_t at = h5::get_attr_i64(f, "step_in_epoch"), per = h5::get_attr_i64(f, "steps_per_epoch");
    if (at == 0 || at >= per) best = c;
  }
  namespace fs = std::filesystem;
  if (best.empty()) return str(base, " (there is none in '", dir, "')");
  std::string newer;
  for (const auto& c : all)
    if (checkpoint_step(c) > checkpoint_step(best)) newer += str(newer.empty() ? "" : ", ", fs::path(c).filename().string());
  std::error_code ec;
  const bool is_run_dir = !checkpoint_dir.empty() && fs::equivalent(dir, checkpoint_dir, ec);
  if (newer.empty() || !is_run_dir)
    return str(base, ": the newest in '", dir, "' is ", fs::path(best).filename().string(), " (--resume ", best, ")");
  return str(base, ": the newest in '", dir, "' is ", fs::path(best).filename().string(), "; move ", newer,
             " out of that directory, then resume (--resume auto takes it)");
}

// --eval-only with a checkpoint evaluates as the checkpoint's run did, unless told otherwise: its
// evaluation resolution and crop decide the figure, and the defaults (224 px, crop ratio 0.875) applied
// to weights trained at 32 px would report a fraction of their accuracy without a word (label
// smoothing too: the evaluation loss is the smoothed one; and whether mirrors were averaged). Rank 0 reads
// the settings the checkpoint recorded (before the data and the model are made at that size); a file it
// cannot read is left to the resume below, which names the problem.
void adopt_checkpoint_eval_settings(TrainOptions& o, int rank, double timeout_s) {
  // Rank 0 decides, from its own flags, and every rank takes its result: ranks must evaluate alike even
  // where one was given a flag the others were not (an MPMD line, node-local --config files).
  std::string decided;
  if (rank == 0) {
    std::string cfg;
    try {
      std::string path = o.resume;
      if (o.resume == "auto") {
        path.clear();
        for (const auto& c : list_checkpoints(o.checkpoint_dir))
          if (checkpoint_problem(c).empty()) path = c;  // the newest complete one (list is oldest first)
      }
      if (!path.empty()) cfg = checkpoint_config(path);
    } catch (const std::exception&) {
      cfg.clear();
    }
    const auto theirs = settings_of(cfg, {});
    auto value = [&](const char* k) { return theirs.count(k) ? theirs.at(k) : std::string(); };
    std::string adopted;
    auto adopt_int = [&](const char* k, int& field) {
      const std::string v = value(k);
      if (v.empty() || v == std::to_string(field)) return;
      field = std::stoi(v);
      adopted += str(adopted.empty() ? "" : " ", "--", k, " ", v);
    };
    // --image-size given alone sets the evaluation size too (val-size 0 follows it), so it counts for both.
    if (!o.given.count("image-size")) adopt_int("image-size", o.image_size);
    if (!o.given.count("val-size") && !o.given.count("image-size")) adopt_int("val-size", o.val_size);
    auto adopt_double = [&](const char* k, double& field) {
      const std::string v = value(k);
      if (o.given.count(k) || v.empty() || std::stod(v) == field) return;
      field = std::stod(v);
      adopted += str(adopted.empty() ? "" : " ", "--", k, " ", v);
    };
    adopt_double("eval-crop-ratio", o.eval_crop_ratio);
    adopt_double("label-smoothing", o.label_smoothing);  // the evaluation loss is the smoothed one
    const std::string flip = value("eval-flip");
    if (!o.given.count("eval-flip") && (flip == "on" || flip == "off") && (flip == "on") != o.eval_flip) {
      o.eval_flip = flip == "on";
      adopted += str(adopted.empty() ? "" : " ", "--eval-flip ", flip);
    }
    char nums[128];
    std::snprintf(nums, sizeof nums, "%d %d %.17g %.17g %d", o.image_size, o.val_size, o.eval_crop_ratio,
                  o.label_smoothing, o.eval_flip ? 1 : 0);
    decided = str(nums, '\n', adopted);
  }
  comm::broadcast_string(decided, 0, timeout_s, "a broadcast from rank 0 of the evaluation settings to use");
  std::istringstream in(decided);
  int eval_flip = 0;
  in >> o.image_size >> o.val_size >> o.eval_crop_ratio >> o.label_smoothing >> eval_flip;
  o.eval_flip = eval_flip != 0;
  DDP_CHECK(static_cast<bool>(in), "--eval-only: unreadable evaluation settings from rank 0: '", decided, "'");
  std::string adopted;
  in.ignore(1);
  std::getline(in, adopted);
  if (adopted.empty()) return;
  o.config_text = describe(o);
  info0("--eval-only: evaluating as the checkpoint's run did: ", adopted,
        " (its recorded settings; give these flags to evaluate otherwise)");
}

// A checkpoint directory holds one run at a time too: two jobs started on one directory (a script
// submitted twice: its default directory is the job name) would each resume from and overwrite the
// other's checkpoints, and both report success. Rank 0 holds an exclusive flock on DIR/.lock for the
// whole run (ddp/core/file_lock.h: released when the process ends, however it ends) and writes who
// holds it into the file; a second run is refused, naming the holder. A file system without lock
// support cannot be guarded: said, not refused.
class CheckpointDirLock {
 public:
  explicit CheckpointDirLock(const std::string& dir) {
    const std::string path = dir + "/.lock";
    const FileLock l = lock_file_range(path, 0, 1);
    if (l.busy()) {
      std::ifstream in(path);
      std::string holder;
      std::getline(in, holder);
      DDP_FAIL("--checkpoint-dir '", dir, "' is in use by another run (", holder.empty() ? "another process" : holder,
               "): two runs on one directory would resume from and overwrite each other's checkpoints; give this ",
               "run another --checkpoint-dir, or wait for that run to end");
    }
    if (!l.held()) {
      warn("cannot lock '", path, "' (", std::strerror(l.error), "): this file system does not guard ",
           "--checkpoint-dir against a second run at the same time");
      return;
    }
    fd_ = l.fd;
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    const char* job = std::getenv("SLURM_JOB_ID");
    const std::string who = str("host ", host, ", pid ", ::getpid(), job ? str(", Slurm job ", job) : std::string(), "\n");
    if (::ftruncate(fd_, 0) == 0) {
      const ssize_t w = ::pwrite(fd_, who.data(), who.size(), 0);
      (void)w;  // the holder's name only helps the message above; the lock is what guards
    }
  }
  ~CheckpointDirLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  CheckpointDirLock(const CheckpointDirLock&) = delete;
  CheckpointDirLock& operator=(const CheckpointDirLock&) = delete;

 private:
  int fd_ = -1;
};

// The stop signals the ranks received (rank r's signal number, 0: none), once a stop is agreed.
struct StopOrigin {
  std::string names;  // "SIGUSR1" (each signal once, by first rank: "SIGTERM,SIGUSR1"); "" without any
  std::string ranks;  // the ranks that received one: "1", "0-3,7"
  std::string text;   // for the log: "SIGUSR1" (every rank got it), "SIGUSR1 on rank 1 of 2"
};
StopOrigin describe_stop_origin(const std::vector<int>& per_rank) {
  const auto name = [](int sig) {
    return sig == SIGTERM ? std::string("SIGTERM") : sig == SIGUSR1 ? std::string("SIGUSR1")
           : sig == SIGINT ? std::string("SIGINT") : str("signal ", sig);
  };
  const auto ranges = [](const std::vector<int>& ranks, const char* sep) {
    std::string out;
    for (size_t i = 0; i < ranks.size();) {
      size_t j = i;
      while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
      out += str(out.empty() ? "" : sep, ranks[i], j > i ? str("-", ranks[j]) : std::string());
      i = j + 1;
    }
    return out;
  };
  std::vector<std::pair<int, std::vector<int>>> by_signal;  // in the order of their first rank
  std::vector<int> all;
  for (int r = 0; r < static_cast<int>(per_rank.size()); ++r) {
    const int sig = per_rank[static_cast<size_t>(r)];
    if (sig == 0) continue;
    all.push_back(r);
    auto it = std::find_if(by_signal.begin(), by_signal.end(), [&](const auto& g) { return g.first == sig; });
    if (it == by_signal.end()) by_signal.push_back({sig, {r}});
    else it->second.push_back(r);
  }
  StopOrigin o;
  if (by_signal.empty()) return o;
  for (const auto& [sig, ranks] : by_signal) o.names += str(o.names.empty() ? "" : ",", name(sig));
  o.ranks = ranges(all, ",");
  if (by_signal.size() == 1 && all.size() == per_rank.size()) {  // every rank (or the only one) got it
    const int sig = by_signal.front().first;
    o.text = sig == SIGINT ? std::string("SIGINT, Ctrl-C") : name(sig);
    return o;
  }
  for (const auto& [sig, ranks] : by_signal)
    o.text += str(o.text.empty() ? "" : ", ", name(sig), ranks.size() == 1 ? " on rank " : " on ranks ",
                  ranges(ranks, ", "));
  o.text += str(" of ", per_rank.size());
  return o;
}

}  // namespace

TrainResult run_training(TrainOptions& o, const comm::DistEnv& env) {
  TrainResult result;
  const bool rank0 = env.rank == 0;
  const double tmo = o.timeout_s;
  auto notes = resolve_defaults(o, env.world, env.local_size, cuda_available());
  check_same_settings(o, env.rank);
  if (o.eval_only && !o.resume.empty()) adopt_checkpoint_eval_settings(o, env.rank, tmo);
  for (const auto& n : notes) info0(n);
  for (const auto& i : o.ignored) warn0("ignored: ", i);
  install_stop_handlers();

  int device = -1;
  if (o.backend == nn::Backend::CUDA) device = comm::select_cuda_device(env);
  comm::CommOptions copt;
  copt.timeout_s = o.timeout_s;
  std::unique_ptr<comm::Communicator> comm;
  {
    // MPI_Comm_dup and the start-up allgathers have no bounded form: a rank stopped here would hang them.
    comm::StartupGuard guard(o.timeout_s, "the set-up of the gradient communicator");
    comm = comm::make_communicator(comm_name(o.comm), env, copt);
  }
  const bool pinned = o.backend == nn::Backend::CUDA;

  // ---- data ----------------------------------------------------------------------------------
  std::unique_ptr<DataSource> train, val;
  // --shard-scope node: node i of N reads its share of the set (shard j of M for j = i mod N), from its
  // own volume or from the whole set, and the node's ranks split it; global: all ranks split the whole set.
  const bool node_scope = o.shard_scope == ShardScope::Node;
  const int data_rank = node_scope ? env.local_rank : env.rank;
  const int data_world = node_scope ? env.local_size : env.world;
  // Why there is no evaluation set, when there is none (this rank's directory may well have one).
  std::string no_val_why = str("no val-*.h5 shards in '", o.data, "'");
  if (o.synthetic) {
    auto set = make_synthetic_set(o.synthetic_size, o.synthetic_classes, o.image_size, o.image_size, o.seed);
    SyntheticConfig sc;
    sc.size = o.synthetic_size;
    sc.classes = o.synthetic_classes;
    sc.height = sc.width = o.image_size;
    sc.seed = o.seed;
    sc.rank = env.rank;
    sc.world = env.world;
    sc.batch_size = o.batch_size;
    sc.pinned = pinned;
    // --eval-only trains nothing: as with shards, no training set (nor a full training batch) is needed.
    if (!o.eval_only) train = make_synthetic_source(set, sc);
    if (!o.no_eval) {
      sc.train = false;
      val = make_synthetic_source(set, sc);
    }
  } else {
    ShardSourceConfig sc;
    sc.dir = o.data;
    sc.split = "train";
    sc.node = env.node_index;
    sc.nodes = node_scope && env.num_nodes > 1 ? env.num_nodes : 0;  // one node: the whole set
    sc.if_node_share =
        env.num_nodes > 1
            ? "--shard-scope global needs the whole set on every node; for node-local volumes that hold each "
              "node's share, use --shard-scope node (the default), where node i reads the shards whose index mod "
              "the node count is i"
            : "a run on one node reads the whole set: copy the other shards into --data, or train on as many nodes "
              "as the set was packed for, each holding its share, with --shard-scope node (the default)";
    sc.rank = data_rank;
    sc.world = data_world;
    sc.batch_size = o.batch_size;
    sc.height = sc.width = o.image_size;
    sc.train = true;
    sc.seed = o.seed;
    sc.aug_stream = env.rank;
    sc.workers = o.workers;
    sc.pinned = pinned;
    sc.min_scale = static_cast<float>(o.min_crop_scale);
    sc.random_crop = o.random_crop;
    sc.flip = o.flip;
    sc.eval_crop_ratio = static_cast<float>(o.eval_crop_ratio);
    // --eval-only reads no training data: a directory packed with --splits val is enough.
    if (!o.eval_only) train = make_shard_source(sc);
    const bool mine_val = !o.no_eval && shards_exist(o.data, "val");
    int64_t val_count[2] = {mine_val ? 1 : 0, mine_val ? -1 : 0};  // min, -max over the ranks
    comm->allreduce_min(val_count, 2);  // evaluate only if every node has its val shards
    const bool has_val = val_count[0] == 1, some_val = val_count[1] == -1;
    if (mine_val && !has_val) no_val_why = str("another rank found no val-*.h5 shards in its --data; this rank's '",
                                                o.data, "' has them");
    if (has_val) {
      sc.split = "val";
      sc.train = false;
      sc.height = sc.width = o.val_size;
      val = make_shard_source(sc);
    } else if (!o.no_eval) {
      // No rank has them (a set packed without val): rank 0 says so once. Some have: each rank that
      // lacks them says where it looked, and rank 0 speaks for the others when it has them.
      if (!some_val || mine_val) warn0(no_val_why, ": evaluation is off for every rank");
      else warn(no_val_why, ": evaluation is off for every rank");
    }
  }
  DDP_CHECK(train || val, "--eval-only: there is nothing to evaluate (", no_val_why, ")");
  const DataSource& data_ref = train ? *train : *val;
  int64_t cls[2] = {data_ref.num_classes(), -data_ref.num_classes()};
  comm->allreduce_min(cls, 2);
  DDP_CHECK(cls[0] == -cls[1], "ranks disagree on the number of classes (", cls[0], " vs ", -cls[1],
            "): every node's shards must come from one pack_imagenet run");
  const int num_classes = static_cast<int>(cls[0]);
  if (!o.synthetic) check_same_shard_set(train.get(), val.get(), env, *comm, node_scope, tmo);
  if (!o.synthetic && node_scope && env.num_nodes > 1 && train)
    check_equal_ranks_per_node(*train, env, *comm, o.batch_size);
  check_class_lists(train.get(), val.get(), env.rank, tmo);
  if (train) info0("data: ", train->describe());
  if (val) info0("eval data: ", val->describe());
  if (rank0) warn_sizes_above_stored(train.get(), val.get(), o);

  // ---- model ---------------------------------------------------------------------------------
  nn::ModelConfig mc;
  mc.num_classes = num_classes;
  mc.max_batch = o.batch_size;
  mc.height = mc.width = std::max(o.image_size, val ? o.val_size : o.image_size);
  mc.amp = o.amp;
  mc.tf32 = o.tf32;
  mc.deterministic = o.deterministic;
  mc.init.seed = o.seed;
  mc.init.zero_init_residual = o.zero_init_residual;
  mc.label_smoothing = static_cast<float>(o.label_smoothing);
  mc.threads = o.threads;
  mc.device = std::max(device, 0);
  std::unique_ptr<nn::Model> model = nn::make_model(o.backend, mc);
  const nn::ResNet18Spec& spec = model->spec();
  void* stream = nullptr;
#if DDP_HAVE_CUDA
  if (auto* cm = dynamic_cast<cuda::CudaResNet18*>(model.get())) stream = cm->stream();
#endif
  info0("model: ResNet18, ", num_classes, " classes, ", spec.param_count, " parameters, backend ",
        nn::backend_name(o.backend), ", amp ", nn::amp_name(o.amp),
        o.backend == nn::Backend::CPU
            ? str(", ", o.threads, " threads/rank")
            : str(", tf32 ", o.tf32 ? "on" : "off", o.deterministic ? ", deterministic cuDNN engines" : ""),
        "; ", env.world, " rank(s), global batch ", int64_t(o.batch_size) * env.world, ", comm ", comm->name());

  // Plans and workspaces for the training batch now, not inside the first backward with an allreduce in
  // flight (see Model::prepare).
  model->prepare(o.batch_size, o.image_size, o.image_size);

  LossScaler scaler(o.amp == nn::Amp::F16);
  int start_epoch = 0;
  int64_t start_step = 0, gstep = 0;

  if (!o.init_weights.empty()) {
    std::vector<float> p(static_cast<size_t>(spec.param_count)), b(static_cast<size_t>(spec.buffer_count));
    int64_t nbt = 0;
    on_rank0_agreed(env.rank, tmo, "reading --init-weights", [&] {
      model->get_params_torch(p.data());  // keeps our fc init where the file's class count differs
      load_init_weights(o.init_weights, spec, p, b, nbt, o.eval_only, data_ref);
    });
    comm::broadcast_vector(p, 0, tmo, "a broadcast from rank 0 of the initial weights");
    comm::broadcast_vector(b, 0, tmo, "a broadcast from rank 0 of the initial BN statistics");
    comm::broadcast_bytes(&nbt, sizeof nbt, 0, tmo, "a broadcast from rank 0 of the initial BN statistics");
    model->set_params_torch(p.data());
    model->set_buffers(b.data());
    // The file's BN counters go with its statistics, as PyTorch's load_state_dict takes them (7 in the
    // file and one step: 8, not 1). Both file kinds carry them (load_weights requires them).
    model->set_num_batches_tracked(nbt);
  }

  // An unwritable checkpoint directory must fail now, not after the first epoch of training.
  // --eval-only writes no checkpoint (and no .lock): a read-only directory, a copy on a read-only
  // mount, is fine. It takes no lock either, so it may read a directory a training run is writing:
  // the checkpoint is read whole once opened (a file that retention deletes after that stays readable
  // while open), and one deleted between the choice and the opening is an error naming it.
  std::unique_ptr<CheckpointDirLock> dir_lock;  // rank 0's, held to the end of the run
  if (!o.checkpoint_dir.empty()) {
    on_rank0_agreed(env.rank, tmo, "checking --checkpoint-dir", [&] {
      if (o.eval_only) return;
      std::error_code ec;
      std::filesystem::create_directories(o.checkpoint_dir, ec);
      DDP_CHECK(!ec, "cannot create --checkpoint-dir '", o.checkpoint_dir, "': ", ec.message());
      std::string probe = o.checkpoint_dir + "/.write_test";
      FILE* f = std::fopen(probe.c_str(), "w");
      DDP_CHECK(f != nullptr, "--checkpoint-dir '", o.checkpoint_dir, "' is not writable: ", std::strerror(errno));
      std::fclose(f);
      std::remove(probe.c_str());
      dir_lock = std::make_unique<CheckpointDirLock>(o.checkpoint_dir);
    });
  }

  // ---- resume --------------------------------------------------------------------------------
  std::string resume_path;
  on_rank0_agreed(env.rank, tmo, "finding the checkpoint to resume", [&] {
    if (o.resume == "auto") {
      auto latest = find_latest_checkpoint(o.checkpoint_dir);
      if (latest) resume_path = *latest;
    } else if (!o.resume.empty()) {
      resume_path = o.resume;
    }
    // A checkpoint directory holds one run: a new run, or one resumed from a file kept elsewhere, would
    // overwrite the other's files of the same steps and its retention would delete them.
    if (!o.checkpoint_dir.empty() && !o.eval_only) {
      namespace fs = std::filesystem;
      std::error_code ec;
      const bool from_elsewhere =
          !resume_path.empty() &&
          !fs::equivalent(fs::absolute(resume_path).parent_path(), fs::absolute(o.checkpoint_dir), ec);
      const auto there = list_checkpoints(o.checkpoint_dir);
      DDP_CHECK(there.empty() || (!resume_path.empty() && !from_elsewhere), "--checkpoint-dir '", o.checkpoint_dir,
                "' already holds ", there.size(), " checkpoint(s) (newest ",
                fs::path(there.empty() ? "" : there.back()).filename().string(),
                resume_path.empty() && o.resume == "auto" ? ", none of which loads: see the warnings above" : "", ")",
                from_elsewhere ? str(", and this run resumes from '", resume_path, "' outside it") : "", ": ",
                resume_path.empty() && o.resume == "auto" ? "move them away to start afresh"
                : from_elsewhere ? "give this run an empty --checkpoint-dir, or resume from a checkpoint in that one"
                                 : "add --resume auto to continue that run, or give this one its own --checkpoint-dir",
                " (nothing was deleted)");
      if (resume_path.empty() && o.resume == "auto")
        info0("resume auto: no checkpoint in '", o.checkpoint_dir, "'; starting fresh");
    }
  });
  comm::broadcast_string(resume_path, 0, tmo, "a broadcast from rank 0 of the checkpoint to resume");
  DDP_CHECK(!(o.eval_only && resume_path.empty() && o.init_weights.empty()), "--eval-only --resume auto: no complete ",
            "checkpoint in '", o.checkpoint_dir, "', so there are no weights to evaluate");
  int64_t ckpt_steps_per_epoch = 0, ckpt_world = 0, ckpt_batch = 0, ckpt_images = 0;
  int64_t ckpt_epoch = 0, ckpt_step = 0;  // the resumed checkpoint's position, as recorded
  bool eval_pending = false;  // the resumed checkpoint's evaluation was cut short by a stop
  std::vector<float> own_buffers;  // this rank's BN statistics from the checkpoint, if it has them
  if (!resume_path.empty()) {
    CheckpointState st;
    on_rank0_agreed(env.rank, tmo, "reading the checkpoint to resume", [&] {
      st = load_checkpoint(resume_path, spec);
      // (--resume auto skips such a file with a warning; given by name, it is refused.)
      const std::string misnamed = checkpoint_name_problem(resume_path, st.global_step);
      DDP_CHECK(misnamed.empty(), misnamed);
      const std::string classes = recorded_class_problem(resume_path, st.classes, data_ref);
      DDP_CHECK(classes.empty(), "checkpoint ", classes, ": its classifier's outputs would be scored against other ",
                "labels; ", o.eval_only ? "evaluate" : "resume", " on data packed with its class order (its /classes ",
                "dataset, one name per line, is a --class-index for pack_imagenet)");
      // The seed orders the epochs to come and generates synthetic data. An --eval-only run on shards
      // has neither: evaluation reads every val image once, in shard order, whatever the seed.
      if (o.eval_only && !o.synthetic) {
        if (st.seed != o.seed && rank0)
          info("--seed ", o.seed, " differs from the checkpoint's ", st.seed, ": no matter for --eval-only on shards");
      } else {
        DDP_CHECK(st.seed == o.seed, "checkpoint '", resume_path, "' was trained with --seed ", st.seed, "; ",
                  o.eval_only ? "evaluate with the same seed (the synthetic data depend on it)"
                              : "resume with the same seed (the data order depends on it)");
      }
      // Changing a setting on resume can be meant (more epochs, a lower lr), so it is said, not refused.
      const std::set<std::string> per_run = {"threads", "workers", "data", "max-steps"};
      auto changed = setting_differences(settings_of(o.config_text, per_run), settings_of(st.config, per_run),
                                         "the checkpoint's run");
      if (o.eval_only) {  // only what changes an evaluation is worth a word (not the epochs or the lr)
        const std::set<std::string> eval_keys = {"image-size", "val-size", "eval-crop-ratio", "eval-flip",
                                                 "label-smoothing", "backend", "amp", "tf32"};
        std::erase_if(changed, [&](const std::string& c) { return !eval_keys.count(c.substr(0, c.find(" = "))); });
      }
      if (!changed.empty()) {
        std::string list;
        for (const auto& c : changed) list += (list.empty() ? "" : "; ") + c;
        warn("resuming with settings other than the checkpoint's run: ", list);
      }
      if (!o.checkpoint_dir.empty() && !o.eval_only)
        for (const auto& c : list_checkpoints(o.checkpoint_dir))
          DDP_CHECK(checkpoint_step(c) <= st.global_step || !checkpoint_problem(c).empty(), "--checkpoint-dir '",
                    o.checkpoint_dir, "' holds ", c, ", newer than the resumed global step ", st.global_step,
                    ": a later --resume auto would continue from it, not from this run; move it away or give this "
                    "run another --checkpoint-dir");
    });
    comm::broadcast_vector(st.params, 0, tmo, "a broadcast from rank 0 of the checkpoint's parameters");
    comm::broadcast_vector(st.momentum, 0, tmo, "a broadcast from rank 0 of the checkpoint's momentum");
    comm::broadcast_vector(st.buffers, 0, tmo, "a broadcast from rank 0 of the checkpoint's BN statistics");
    // Each rank continues with its own BN statistics when the checkpoint has them for this rank count
    // (a mid-epoch resume must have it; an epoch-end one may change it and then takes the average).
    int64_t per_rank = (rank0 && st.world_size == env.world && !st.rank_buffers.empty()) ? 1 : 0;
    const char* position = "a broadcast from rank 0 of the checkpoint's training position";
    comm::broadcast_bytes(&per_rank, sizeof per_rank, 0, tmo, position);
    if (per_rank) {
      own_buffers.resize(st.buffers.size());
      comm::scatter_from_root(st.rank_buffers.data(), own_buffers.data(), own_buffers.size(), tmo,
                              "the scattering of the checkpoint's BN statistics");
    }
    int64_t sc[13] = {st.num_batches_tracked, st.momentum_initialised, st.epoch, st.step_in_epoch,
                      st.global_step, st.steps_per_epoch, st.scaler.good_steps, st.scaler.skipped_steps,
                      st.scaler.dynamic, st.world_size, st.batch_size, st.train_images, st.eval_pending};
    comm::broadcast_bytes(sc, sizeof sc, 0, tmo, position);
    comm::broadcast_bytes(&st.scaler.scale, sizeof(double), 0, tmo, position);
    model->set_params_torch(st.params.data());
    model->set_momentum_torch(st.momentum.data());
    model->set_buffers(st.buffers.data());
    model->set_num_batches_tracked(sc[0]);
    model->set_momentum_initialised(sc[1] != 0);
    start_epoch = static_cast<int>(sc[2]);
    start_step = sc[3];
    gstep = sc[4];
    ckpt_steps_per_epoch = sc[5];
    ckpt_world = sc[9];
    ckpt_batch = sc[10];
    ckpt_images = sc[11];
    eval_pending = sc[12] != 0;
    ckpt_epoch = start_epoch;
    ckpt_step = start_step;
    // What --init-weights was to the checkpoint's run (rank 0 read its settings; only rank 0 logs).
    std::string init_weights_note;
    if (!o.init_weights.empty() && rank0) {
      const auto theirs = settings_of(st.config, {});
      const auto it = theirs.find("init-weights");
      init_weights_note =
          it == theirs.end()
              ? str(" (its weights replace --init-weights ", o.init_weights, ", which is not used: the checkpoint's ",
                    "run had no --init-weights)")
          : it->second == o.init_weights
              ? std::string(" (its weights replace --init-weights, which started that run)")
              : str(" (its weights replace --init-weights ", o.init_weights, ", which is not used: the checkpoint's ",
                    "run was given --init-weights ", it->second, ")");
    }
    const bool scale_resumed = scaler.resume({st.scaler.scale, sc[6], sc[7], sc[8] != 0});
    info0("resumed from ", resume_path, ": epoch ", start_epoch + 1, ", step ", start_step, " of the epoch, global step ",
          gstep, scaler.dynamic() ? str(", loss scale ", scaler.scale()) : std::string(),
          scaler.dynamic() && !scale_resumed ? " (the checkpoint's run had no fp16 loss scaling: starting afresh)"
                                             : "",
          init_weights_note);
  }

  // Rule 3: replicas start identical, whatever each rank initialised or loaded.
  comm::broadcast_model(*comm, *model);
  if (!own_buffers.empty()) model->set_buffers(own_buffers.data());  // after the broadcast of rank 0's

  // ---- schedule ------------------------------------------------------------------------------
  // Without training data (--eval-only on val shards) the checkpoint's steps per epoch place it.
  const int64_t steps =
      train ? comm::agree_steps(*comm, train->local_batches()) : std::max<int64_t>(1, ckpt_steps_per_epoch);
  DDP_CHECK(steps >= 1, "some rank has no full batch of ", o.batch_size, " training images (", data_ref.num_images(),
            " images for ", data_world, " rank(s)); lower --batch-size", o.synthetic ? " or raise --synthetic-size" : "");
  if (train && start_step > 0 && start_step < ckpt_steps_per_epoch) {
    // Mid-epoch: each rank continues its own slice of the epoch's order (a function of the rank count,
    // the batch and the data set size), skipping the batches it already trained on. Checked on rank 0
    // against its own data (what it saved) and agreed: a check failing on some ranks only would leave
    // the others in the next collective.
    on_rank0_agreed(env.rank, tmo, "checking the mid-epoch checkpoint against this run", [&] {
      // (read only when a check fails: DDP_CHECK formats its message then)
      const auto how = [&] {
        return epoch_end_way_out(std::filesystem::path(resume_path).parent_path().string(), o.checkpoint_dir);
      };
      DDP_CHECK(ckpt_world == env.world, "checkpoint '", resume_path, "' stopped mid-epoch with ", ckpt_world,
                " rank(s); this run has ", env.world, how());
      DDP_CHECK(ckpt_batch == 0 || ckpt_batch == o.batch_size, "checkpoint '", resume_path, "' stopped mid-epoch with ",
                "--batch-size ", ckpt_batch, "; this run has ", o.batch_size, how());
      DDP_CHECK(ckpt_images == 0 || ckpt_images == train->num_images(), "checkpoint '", resume_path,
                "' stopped mid-epoch training on ", ckpt_images, " images; this run's data has ", train->num_images(),
                how());
    });
  }
  if (ckpt_steps_per_epoch && ckpt_steps_per_epoch != steps) {
    DDP_CHECK(start_step == 0, "the checkpoint stopped mid-epoch with ", ckpt_steps_per_epoch,
              " steps per epoch, but this run has ", steps, " (different ranks or batch size); resume with the same "
              "configuration, or from an epoch-end checkpoint");
    warn0("steps per epoch changed from ", ckpt_steps_per_epoch, " to ", steps, " since the checkpoint");
  }
  if (start_step >= steps) {
    ++start_epoch;
    start_step = 0;
  }
  LrSchedule sched(o.lr_schedule, o.lr, o.epochs, steps, o.warmup_epochs, o.lr_step_epochs, o.lr_gamma);
  nn::SgdConfig sgd;
  sgd.momentum = static_cast<float>(o.momentum);
  sgd.nesterov = o.nesterov;
  sgd.weight_decay = static_cast<float>(o.weight_decay);
  sgd.decay_bn_and_bias = !o.no_wd_bn_bias;
  comm::GradBucketer bucketer(*comm, model->grads(), spec.param_count,
                              static_cast<size_t>(std::max(4.0, o.bucket_mb * 1024 * 1024)));
  // An error thrown while a step's gradient allreduces may be in flight (between begin_step and
  // finish) must not free the gradient buffer under them: the communicator's progress thread (or
  // NCCL) would then touch freed memory and the rank die of a segfault, before main could name the
  // error or end the job. The model is left allocated then; the process is ending anyway.
  bool grads_in_flight = false;
  struct KeepModelWhileGradsInFlight {
    std::unique_ptr<nn::Model>& model;
    const bool& in_flight;
    const int uncaught = std::uncaught_exceptions();
    ~KeepModelWhileGradsInFlight() {
      if (in_flight && std::uncaught_exceptions() > uncaught) (void)model.release();
    }
  } keep_model{model, grads_in_flight};
  const int64_t global_batch = static_cast<int64_t>(o.batch_size) * env.world;
  if (!o.eval_only)  // nothing is trained
    info0("schedule: ", o.epochs, " epochs x ", steps, " steps (global batch ", global_batch, "), lr ", o.lr, " ",
          lr_schedule_name(o.lr_schedule), o.warmup_epochs > 0 ? str(", warm-up ", o.warmup_epochs, " epochs") : "",
          ", momentum ", o.momentum, o.nesterov ? " (nesterov)" : "", ", wd ", o.weight_decay,
          o.no_wd_bn_bias ? " (not on BN/bias)" : "", ", label smoothing ", o.label_smoothing, ", ", comm->name(),
          " buckets: ", bucketer.num_buckets());

  // ---- metrics (rank 0) ------------------------------------------------------------------------
  std::unique_ptr<Progress> progress;
  std::unique_ptr<JsonlWriter> jsonl;
  std::unique_ptr<TensorBoardWriter> tb;
  std::unique_ptr<GpuMonitor> gpu;
  if (rank0) {
    // Open MPI gives each rank a pseudo-terminal even when mpirun's output goes to a file, so a rank
    // cannot tell; under mpirun (more than one rank) 'auto' means lines, which read well in both.
    bool bar = o.progress == "bar" || (o.progress == "auto" && env.world == 1 && isatty(STDOUT_FILENO));
    progress = std::make_unique<Progress>(bar, o.log_every);
    if (!o.jsonl.empty()) jsonl = std::make_unique<JsonlWriter>(o.jsonl);
    if (!o.tensorboard.empty()) {
      tb = std::make_unique<TensorBoardWriter>(o.tensorboard);
      info0("tensorboard: ", tb->path());
    }
    // A resumed run logs again the steps its previous run logged after the checkpoint.
    if (!resume_path.empty() && !o.eval_only) {
      // "epoch" is in epochs done, the scale of the train records' "epoch" (2.25: a quarter into the
      // third); epoch_number and step_in_epoch are the console's "resumed from ...: epoch 3, step 1 of
      // the epoch", so that a reader of both finds the same numbers.
      if (jsonl)
        jsonl->write({{"type", json_string("resume")}, {"step", json_number(double(gstep))},
                      {"epoch", json_number(start_epoch + double(start_step) / double(steps))},
                      {"epoch_number", json_number(start_epoch + 1)}, {"step_in_epoch", json_number(double(start_step))},
                      {"from", json_string(resume_path)}});
      if (tb) tb->add_session_start(gstep + 1);
    }
    gpu = std::make_unique<GpuMonitor>(device);
  }
  // A job script reads how the run ended (docs/USAGE.md "Signals"); "running" until then, so a stale
  // file of an earlier run is never read as this one's. Unwritable: an error now, not after training.
  const int64_t run_start_step = gstep;
  // Entered by every rank whatever its own flags say (no collective is conditional: --status-file is
  // not among the settings ranks must share, and only rank 0's counts).
  on_rank0_agreed(env.rank, tmo, "writing --status-file", [&] {
    if (!o.status_file.empty())
      write_status_file(o.status_file, {{"state", "running"}, {"start_step", std::to_string(run_start_step)}});
  });
  auto gpu_text = [&]() -> std::string {
    auto u = gpu ? gpu->utilization_percent() : std::nullopt;
    return u ? str(*u, "%") : std::string("n/a");
  };

  // ---- evaluation and checkpoints --------------------------------------------------------------
  auto average_bn = [&] {
    model->synchronize();
    comm::average_buffers(*comm, model->buffers(), spec.buffer_count);
  };
  // The model's checksum covers the BN running statistics too, which each rank updates from its own
  // data: they are averaged first (as before evaluation and checkpoints), then every bit must agree.
  // Not training time (as checkpoints and evaluation are not): returns the time it took, which the
  // training loop's clocks skip, and adds it to replica_check_seconds for the summary.
  double replica_check_seconds = 0;
  auto check_replicas = [&]() -> Clock::duration {
    model->synchronize();  // the step's work still queued on a GPU is training time, not the check's
    const auto t0 = Clock::now();
    average_bn();
    comm::check_replicas(*comm, model->param_checksum(), gstep);
    const auto spent = Clock::now() - t0;
    replica_check_seconds += std::chrono::duration<double>(spent).count();
    return spent;
  };
  // Time spent writing checkpoints and evaluating: neither counts as training time (img/s, epoch
  // times); the summary reports both and the wall time.
  double checkpoint_seconds = 0, eval_seconds = 0;
  struct AddElapsed {
    double& to;
    Clock::time_point t0 = Clock::now();
    ~AddElapsed() { to += seconds_since(t0); }
  };
  // With 5 classes or fewer every label is among the top 5: a "top-5 100%" would be no measurement, so
  // none is reported (console, JSONL, TensorBoard), and the log says why once.
  const bool top5_applies = num_classes > 5;
  if (val && !top5_applies)
    info0("evaluation: top-5 accuracy is not reported (", num_classes, " classes: every label is within the top 5)");
  // Which ranks received which stop signal. Every rank learns of a stop through the reductions, not
  // through a signal of its own, and one may reach some ranks only (a spot interruption or a node's
  // own preemption notice: a non-zero rank's host); the log line and the status file name them. Every
  // rank enters the allgather once the stop is agreed, at the same point (no conditional collective).
  StopOrigin stop_origin;
  bool stop_origin_agreed = false;
  auto agree_stop_origin = [&] {
    if (stop_origin_agreed) return;
    stop_origin_agreed = true;
    const auto gather = [&] {
      const std::vector<double> sigs = comm->allgather(static_cast<double>(stop_signal()));
      std::vector<int> per_rank(sigs.size());
      for (size_t r = 0; r < sigs.size(); ++r) per_rank[r] = static_cast<int>(sigs[r]);
      return per_rank;
    };
    std::vector<int> per_rank = gather();
    // A signal that mpirun or srun forwards to every rank reaches them a little apart, and the stop may
    // be agreed in between: where some ranks have none yet, one more look after 100 ms (every rank sees
    // the same allgather, so all take this branch alike), so as not to name a part of them.
    if (std::count(per_rank.begin(), per_rank.end(), 0) % static_cast<std::ptrdiff_t>(per_rank.size()) != 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      per_rank = gather();
    }
    stop_origin = describe_stop_origin(per_rank);
  };
  auto stop_text = [&] {
    return str("stop requested", stop_origin.text.empty() ? std::string() : str(" (", stop_origin.text, ")"));
  };
  // A stop request (preemption, a time limit) during an evaluation must not wait for its end: ImageNet's
  // 50,000 images take minutes, twice that with --eval-flip, and a job's margin before its time limit
  // may be shorter. Every kEvalStopCheckEvery batches the ranks agree on it in one small reduction,
  // which every rank enters at the same batch index, also after its own last batch (ranks may hold one
  // batch fewer than others: every image is evaluated once), so no collective is conditional.
  constexpr int64_t kEvalStopCheckEvery = 4;
  bool eval_interrupted = false;  // an evaluation was cut short by a stop request (no figures recorded)
  // The last complete evaluation's weights (global step) and epochs done: the summary calls its figures
  // final only when they are the weights the run ended with.
  int64_t eval_step = -1;
  double eval_epochs = 0;
  // `epoch`: the data order's epoch; the records name `epochs_done` (default: epoch + 1; a fraction
  // when training stopped inside an epoch). Returns false when a stop request cut it short: then
  // nothing is recorded (no partial figures) and the caller stops the run. keep_own_statistics: each
  // rank goes on with its own BN statistics also after a complete evaluation (a resumed run's pending
  // evaluation, after which training continues as from any checkpoint).
  auto evaluate = [&](int epoch, double epochs_done = -1, bool keep_own_statistics = false) -> bool {
    AddElapsed timed{eval_seconds};
    if (epochs_done < 0) epochs_done = epoch + 1;
    // Evaluation averages the ranks' BN statistics. Cut short, the run stops and its checkpoint is
    // written again: with each rank's own statistics, as before the evaluation (a resume stays exact).
    std::vector<float> own(static_cast<size_t>(spec.buffer_count));
    model->synchronize();
    model->get_buffers(own.data());
    average_bn();
    auto t0 = Clock::now();
    const int64_t mine = val->local_batches();
    val->start_epoch(epoch, mine);
    double most = static_cast<double>(mine);
    comm->allreduce_max(&most, 1);
    const int64_t batches = static_cast<int64_t>(most);
    nn::EvalCounts local;
    BatchView b;
    std::vector<uint8_t> mirrored;
    for (int64_t i = 0; i < batches; ++i) {
      if (i % kEvalStopCheckEvery == 0) {
        double req = stop_requested() ? 1.0 : 0.0;
        comm->allreduce_sum(&req, 1);
        if (req > 0) {
          agree_stop_origin();
          eval_interrupted = true;
          model->set_buffers(own.data());
          if (rank0)
            progress->message(str(stop_text(), " during the evaluation of epoch ", epochs_done,
                                  ": evaluation interrupted after ", i, " of ", batches,
                                  " batches (per rank); no val figures are recorded for it"));
          return false;
        }
      }
      if (i >= mine) continue;
      DDP_CHECK(val->next(b), "the evaluation data ended after ", i, " of ", mine, " batches");
      model->set_input_u8(b.images, b.labels, b.n, b.h, b.w);
      model->forward(nn::Mode::Eval);
      nn::EvalCounts c;
      if (!o.eval_flip) {
        c = model->eval_counts();
      } else {
        std::vector<float> plain = model->logits_host();
        mirrored.resize(static_cast<size_t>(b.n) * b.h * b.w * 3);
        mirror_nhwc(b.images, mirrored.data(), b.n, b.h, b.w, 3);
        model->set_input_u8(mirrored.data(), b.labels, b.n, b.h, b.w);
        model->forward(nn::Mode::Eval);
        c = averaged_view_counts(plain, model->logits_host(), b.labels, b.n, num_classes, o.label_smoothing);
      }
      local.top1 += c.top1;
      local.top5 += c.top5;
      local.count += c.count;
      local.loss_sum += c.loss_sum;
    }
    nn::EvalCounts all = comm::sum_eval_counts(*comm, local);
    DDP_CHECK(all.count > 0, "evaluation saw no images");
    result.evaluated = true;
    result.top1 = static_cast<double>(all.top1) / static_cast<double>(all.count);
    result.top5 = static_cast<double>(all.top5) / static_cast<double>(all.count);
    result.eval_loss = all.loss_sum / static_cast<double>(all.count);
    eval_step = gstep;
    eval_epochs = epochs_done;
    if (rank0) {
      progress->message(str("eval epoch ", epochs_done, ": top-1 ", result.top1 * 100, "%",
                            top5_applies ? str(", top-5 ", result.top5 * 100, "%") : std::string(), ", loss ",
                            result.eval_loss, " (", all.count, " images", o.eval_flip ? " and their mirrors" : "",
                            ", ", seconds_since(t0), " s)"));
      if (jsonl) {
        std::vector<std::pair<std::string, std::string>> f = {
            {"type", json_string("eval")}, {"epoch", json_number(epochs_done)}, {"step", json_number(double(gstep))},
            {"top1", json_number(result.top1)}};
        if (top5_applies) f.push_back({"top5", json_number(result.top5)});
        f.insert(f.end(), {{"loss", json_number(result.eval_loss)}, {"images", json_number(double(all.count))},
                           {"flip", o.eval_flip ? "true" : "false"}});
        jsonl->write(f);
      }
      if (tb) {
        tb->add_scalar("eval/top1", result.top1, gstep);
        if (top5_applies) tb->add_scalar("eval/top5", result.top5, gstep);
        tb->add_scalar("eval/loss", result.eval_loss, gstep);
        tb->flush();
      }
    }
    if (keep_own_statistics) model->set_buffers(own.data());
    return true;
  };
  int64_t saved_epoch = -1, saved_step = 0;  // the position of the last checkpoint written
  // Why a checkpoint is written again after its evaluation was cut short.
  const char* const kEvalCutShort = "stop requested during the evaluation; a resumed run evaluates first";
  // Why a stop's checkpoint says its evaluation is due.
  const char* const kEvalLeftForResume = "stop requested before the evaluation due here; a resumed run evaluates first";
  // eval_pending: the evaluation of these weights was just cut short by a stop; the file says so, and
  // a run resumed from it evaluates first.
  auto save = [&](int64_t epoch_pos, int64_t step_pos, const std::string& why, bool eval_pending = false) {
    if (o.checkpoint_dir.empty()) return;
    AddElapsed timed{checkpoint_seconds};
    // The file holds the ranks' averaged BN statistics (what a torchvision model or an evaluation
    // wants) and each rank's own (rank 0 gathers them), and the run goes on with its own: a checkpoint
    // changes nothing in the run, so a run resumed from it continues exactly as one that was not stopped.
    std::vector<float> own(static_cast<size_t>(spec.buffer_count)), per_rank;
    model->synchronize();
    model->get_buffers(own.data());
    if (env.world > 1) {
      if (rank0) per_rank.resize(own.size() * static_cast<size_t>(env.world));
      comm::gather_to_root(own.data(), own.size(), per_rank.data(), tmo, "the gathering of BN statistics for a checkpoint");
    }
    average_bn();
    std::string path = o.checkpoint_dir + "/" + checkpoint_file_name(gstep);
    on_rank0_agreed(env.rank, tmo, "writing a checkpoint", [&] {
      CheckpointState st;
      st.num_classes = num_classes;
      st.params.resize(static_cast<size_t>(spec.param_count));
      st.momentum.resize(static_cast<size_t>(spec.param_count));
      st.buffers.resize(static_cast<size_t>(spec.buffer_count));
      model->get_params_torch(st.params.data());
      model->get_momentum_torch(st.momentum.data());
      model->get_buffers(st.buffers.data());
      st.rank_buffers = std::move(per_rank);
      st.num_batches_tracked = model->num_batches_tracked();
      st.momentum_initialised = model->momentum_initialised();
      st.epoch = epoch_pos;
      st.step_in_epoch = step_pos;
      st.global_step = gstep;
      st.steps_per_epoch = steps;
      st.seed = o.seed;
      st.world_size = env.world;
      st.batch_size = o.batch_size;
      st.train_images = train ? train->num_images() : 0;
      st.scaler = scaler.state();
      st.config = o.config_text;
      st.classes = data_ref.class_names();  // none for synthetic data
      st.eval_pending = eval_pending;
      st.rng = {{"shuffle_epoch", static_cast<uint64_t>(epoch_pos)}, {"batches_done", static_cast<uint64_t>(step_pos)}};
      auto t0 = Clock::now();
      try {
        save_checkpoint(path, spec, st);
      } catch (const std::exception& e) {
        // The run ends here (a run that trained on without checkpoints would lose more when it stops);
        // say what a restart continues from.
        auto latest = find_latest_checkpoint(o.checkpoint_dir);
        throw Error(str("checkpoint at global step ", gstep, " not written: ", e.what(), "; ",
                        latest ? str("the newest complete checkpoint is ", *latest, " (--resume auto continues from it)")
                               : str("there is no complete checkpoint in ", o.checkpoint_dir, " yet")));
      }
      prune_checkpoints(o.checkpoint_dir, o.keep_checkpoints, gstep);
      progress->message(str("checkpoint ", path, " (", why, ", ", seconds_since(t0), " s",
                            scaler.dynamic() ? str(", loss scale ", scaler.scale()) : std::string(), ")"));
    });
    model->set_buffers(own.data());
    result.last_checkpoint = path;
    saved_epoch = epoch_pos;
    saved_step = step_pos;
  };

  // ---- training --------------------------------------------------------------------------------
  auto run_t0 = Clock::now();
  double train_seconds = 0;
  int64_t train_images = 0;
  bool stop = false, hit_max = false, eval_done_at_end = false;
  // stopped_on_checkpoint: a stop agreed right after an every-N checkpoint, which is where it stops.
  // eval_deferred: a stop agreed at the step after which an evaluation was due skipped it (the
  // checkpoint says it is due); like an interrupted evaluation, the run has not finished.
  bool stopped_on_checkpoint = false, eval_deferred = false;
  // Epochs trained where training stops inside an epoch (--max-steps, a signal), or where a run with
  // nothing left to train starts (the checkpoint's position, for --eval-only too).
  double stopped_at = start_epoch + static_cast<double>(start_step) / static_cast<double>(steps);
  std::string last_gpu = "n/a";
  int epoch = start_epoch;
  // Epochs complete so far: a resumed run's summary counts the checkpoint's (all of them when there
  // is nothing left to train), which is what a script checks to know the run has finished.
  result.epochs_done = start_epoch;
  if (eval_pending && !o.eval_only) {
    // The stopped run's evaluation of these weights was cut short by its stop, or not started (a stop
    // at the step it follows): its figures are missing from the metrics, so this run evaluates them
    // first, at the checkpoint's position.
    const std::string where = str("the evaluation at global step ", gstep, " (epoch ", stopped_at, ")");
    if (!val) {
      warn0(where, " was left undone by the stop of the run that wrote ", resume_path,
            "; evaluation is off in this run, so it stays missing");
    } else {
      info0(where, " was left undone by the stop of the run that wrote ", resume_path, ": evaluating it first");
      // The evaluation averages the ranks' BN statistics; training goes on with each rank's own, as
      // from a checkpoint whose evaluation was not interrupted (so the resume stays exact).
      if (evaluate(std::max(0, start_epoch - (start_step == 0 ? 1 : 0)), stopped_at, true)) {
        eval_done_at_end = true;  // nothing trained since: a run with nothing left to train needs no other
      } else {
        stop = true;  // interrupted again: the checkpoint still says so, and nothing is written
        result.last_checkpoint = resume_path;
        saved_epoch = ckpt_epoch;
        saved_step = ckpt_step;
      }
    }
  }
  if (stop) {
    // Stopped during the evaluation above: no training.
  } else if (o.eval_only) {
    DDP_CHECK(val, "--eval-only: there is nothing to evaluate (", no_val_why, ")");
    hit_max = true;  // skips the training loop (and its checkpoints); the evaluation follows it
    info0("--eval-only: evaluating the weights at global step ", gstep, ", no training");
  } else if (o.max_steps > 0 && gstep >= o.max_steps) {
    hit_max = true;
    info0("--max-steps ", o.max_steps, " already reached at global step ", gstep, ": no training");
  } else if (start_epoch >= o.epochs) {
    info0("all ", o.epochs, " epochs already trained (checkpoint at global step ", gstep, "): nothing to do");
  }
  for (; epoch < o.epochs && !stop && !hit_max; ++epoch) {
    eval_done_at_end = false;
    const int64_t first = (epoch == start_epoch) ? start_step : 0;
    // Mid-epoch resume: the order and the augmentation are pure functions of (seed, epoch, rank), so
    // the source starts at the checkpoint's batch without reading or decoding the ones before it.
    train->start_epoch(epoch, steps, first);
    BatchView b;
    if (rank0) progress->begin_epoch(epoch, o.epochs, steps);
    auto epoch_t0 = Clock::now();
    auto window_t0 = epoch_t0;
    int64_t window_images = 0;
    double window_loss = 0;
    int64_t window_steps = 0;
    int64_t s = first;
    const auto next_input = [&](int64_t at) {
      DDP_CHECK(train->next(b), "the data loader ended after ", at, " of ", steps, " steps in epoch ", epoch + 1);
      model->set_input_u8(b.images, b.labels, b.n, b.h, b.w);
    };
    bool input_set = false;  // step s's batch was set during step s - 1 (below)
    // Rank 0: one train record (JSONL, TensorBoard) for the steps since the previous one, `done` steps
    // into the epoch.
    const auto write_window = [&](int64_t done, double lr) {
      const double el = seconds_since(window_t0);
      const double ips = el > 0 ? static_cast<double>(window_images) / el : 0.0;
      const std::string& g = last_gpu;
      const double mean_loss = window_loss / static_cast<double>(window_steps);
      if (jsonl)
        jsonl->write({{"type", json_string("train")}, {"step", json_number(double(gstep))},
                      {"epoch", json_number(epoch + double(done) / double(steps))},
                      {"loss", json_number(mean_loss)}, {"window_steps", json_number(double(window_steps))},
                      {"window_seconds", json_number(el)}, {"lr", json_number(lr)}, {"img_per_s", json_number(ips)},
                      {"loss_scale", json_number(scaler.scale())},
                      {"gpu_util", g == "n/a" ? std::string("null") : g.substr(0, g.size() - 1)}});
      if (tb) {
        tb->add_scalar("train/loss", mean_loss, gstep);
        tb->add_scalar("train/lr", lr, gstep);
        tb->add_scalar("train/img_per_s", ips, gstep);
        if (scaler.dynamic()) tb->add_scalar("train/loss_scale", scaler.scale(), gstep);
        if (g != "n/a") tb->add_scalar("gpu/util_percent", std::stod(g), gstep);
        tb->flush();
      }
      window_t0 = Clock::now();
      window_images = 0;
      window_loss = 0;
      window_steps = 0;
    };
    for (; s < steps; ++s) {
      comm->set_step(gstep);
      if (o.fault_signal_step == gstep + 1) std::raise(SIGUSR1);  // test only: the handler runs before this returns
      if (!input_set) next_input(s);
      input_set = false;
      // The loss is read below, after the backward is enqueued: waiting for it here would leave the
      // GPU idle while the host enqueues the backward (nn/model.h).
      model->forward_async(nn::Mode::Train);
      const float used_scale = scaler.scale();
      grads_in_flight = true;
      bucketer.begin_step();
      model->backward(used_scale, [&](const nn::GradReady& r) { bucketer.on_ready(r); });
      // The next batch goes in while this step's backward and allreduce run on the GPU: its copy to
      // the device (~40 MB at 256 x 224^2, about a millisecond and a half over PCIe 4) then overlaps
      // them instead of leaving the GPU idle between steps. Its normalisation queues behind the
      // backward, which has read this batch, and the SGD step reads neither (nn/model.h). Not across
      // an epoch's end: the evaluation and the next epoch's start come between. A stop after this
      // step leaves the batch unused; the checkpoint's position (s + 1) does not count it. Its error
      // (a damaged image, a bad label) waits until this step's allreduces are done, as if it had
      // come at the top of the next step.
      std::exception_ptr next_error;
      if (s + 1 < steps) {
        try {
          next_input(s + 1);
          input_set = true;
        } catch (...) {
          next_error = std::current_exception();
        }
      }
      bucketer.finish(stream);
      grads_in_flight = false;
      if (next_error) std::rethrow_exception(next_error);
      const float loss = model->last_loss();
      const bool finite = model->grads_finite();
      // One small reduction per step: global loss, found-inf (rule 4) and the stop request (rule 9).
      double red[3] = {static_cast<double>(loss), finite ? 0.0 : 1.0, stop_requested() ? 1.0 : 0.0};
      comm->allreduce_sum(red, 3);
      const double lr = sched.lr_at(static_cast<int64_t>(epoch) * steps + s);
      if (scaler.update(red[1] == 0.0)) model->sgd_step(sgd, static_cast<float>(lr), 1.0f / used_scale);
      ++gstep;
      if (o.fault_perturb_step == gstep && env.rank == 1) {
        // Test-only fault: one replica drifts, as when gradients are not averaged.
        std::vector<float> p(static_cast<size_t>(spec.param_count));
        model->get_params_torch(p.data());
        p[0] += 1e-3f;
        model->set_params_torch(p.data());
        warn("test fault: perturbed this replica's parameters at step ", gstep);
      }
      const double gloss = red[0] / env.world;
      window_loss += gloss;
      ++window_steps;
      window_images += global_batch;
      train_images += global_batch;
      if (o.replica_check_every > 0 && gstep % o.replica_check_every == 0) {
        // Not training time: the epoch's and the window's clocks skip the check, as they skip a checkpoint.
        const auto spent = check_replicas();
        epoch_t0 += spent;
        window_t0 += spent;
      }
      // Agreed by all ranks: the stop request came through the reduction, gstep is the same everywhere.
      const bool stopping = red[2] > 0 || (o.max_steps > 0 && gstep >= o.max_steps);
      if (rank0) {
        const double el = seconds_since(window_t0);
        // A run that stops here logs its partial window: every trained step's loss is in one record.
        const bool log_now = (s + 1) % o.log_every == 0 || s + 1 == steps || stopping;
        if (log_now) last_gpu = gpu_text();  // NVML is polled only at log steps
        progress->update(s + 1, gloss, lr, el > 0 ? static_cast<double>(window_images) / el : 0.0, scaler.scale(),
                         last_gpu);
        if (log_now) write_window(s + 1, lr);
      }
      if (red[2] > 0) {
        stop = true;
        agree_stop_origin();
        ++s;
        break;
      }
      if (o.max_steps > 0 && gstep >= o.max_steps) {
        hit_max = true;
        ++s;
        break;
      }
      if (o.checkpoint_every_steps > 0 && gstep % o.checkpoint_every_steps == 0 && s + 1 < steps) {
        // Not training time: the epoch's and the window's clocks skip the checkpoint, as they do an
        // epoch-end one (written after the epoch's time is taken).
        auto c0 = Clock::now();
        save(epoch, s + 1, "every " + std::to_string(o.checkpoint_every_steps) + " steps");
        // A stop requested while it was written (seconds on a large model, as preemption notices come)
        // stops here, on that checkpoint, agreed by all ranks in one small reduction, rather than after
        // one more step and one more checkpoint. Every rank writes it at the same step: no conditional
        // collective.
        double req = stop_requested() ? 1.0 : 0.0;
        comm->allreduce_sum(&req, 1);
        const auto spent = Clock::now() - c0;
        epoch_t0 += spent;
        window_t0 += spent;
        if (req > 0) {
          stop = stopped_on_checkpoint = true;
          agree_stop_origin();
          if (rank0 && window_steps > 0) {  // the steps since the last record (logged as a stop's are)
            last_gpu = gpu_text();
            write_window(s + 1, sched.lr_at(static_cast<int64_t>(epoch) * steps + s));
          }
          ++s;
          break;
        }
      }
    }
    model->synchronize();
    double et = seconds_since(epoch_t0);
    train_seconds += et;
    if (rank0) progress->end_epoch();
    const bool reached_max = o.max_steps > 0 && gstep >= o.max_steps;
    const bool last = epoch + 1 == o.epochs;
    // The evaluation due where training ends here: at the epoch's end (the last epoch, --max-steps,
    // --eval-every), or inside it at --max-steps.
    const bool eval_due =
        val && (reached_max || (s == steps && (last || (o.eval_every > 0 && (epoch + 1) % o.eval_every == 0))));
    // A stop agreed at this step skips that evaluation (a stop must be quick: a preemption notice leaves
    // a margin that an ImageNet evaluation may exceed) and leaves it to the resumed run: the checkpoint
    // written here says it is due (eval_pending), as one rewritten after an evaluation cut short does.
    if (stop && eval_due) eval_deferred = true;
    if (stop) {
      const std::string where = s < steps ? str("epoch ", epoch + 1, " step ", s, "/", steps)
                                          : str("the end of epoch ", epoch + 1);
      const std::string skipped =
          !eval_deferred ? std::string()
          : o.checkpoint_dir.empty()
              ? str("; the evaluation due at ", where, " is not run")
              : str("; the evaluation due at ", where, " is not run: the checkpoint says it is due, and a run "
                    "resumed from it (--resume auto) evaluates first");
      info0(stop_text(), stopped_on_checkpoint ? " during the checkpoint at step " : " at step ", gstep,
            o.checkpoint_dir.empty() ? ": exiting (no --checkpoint-dir, nothing saved)"
            : stopped_on_checkpoint  ? ": exiting (checkpointed)"
                                     : ": checkpointing and exiting",
            skipped);
    }
    if (s < steps) {  // stopped inside the epoch
      if (!stopped_on_checkpoint)  // (an every-N checkpoint is never where an evaluation is due)
        save(epoch, s, eval_deferred ? kEvalLeftForResume : stop ? "stop requested" : "--max-steps reached",
             eval_deferred);
      stopped_at = epoch + static_cast<double>(s) / static_cast<double>(steps);
      break;
    }
    // A resumed epoch's remaining steps are not an epoch's time: the summary lists whole epochs only.
    if (first == 0) result.epoch_seconds.push_back(et);
    else ++result.partial_epochs;
    result.epochs_done = epoch + 1;
    check_replicas();
    info0("epoch ", epoch + 1, "/", o.epochs, " done in ", human_duration(et), " (", et, " s",
          first > 0 ? str("; resumed at step ", first, ": ", steps - first, " of its ", steps, " steps") : "", "), ",
          static_cast<int64_t>(static_cast<double>((steps - first) * global_batch) / std::max(et, 1e-9)), " img/s");
    // The checkpoint first: a stop request (preemption) arriving during the evaluation then finds the
    // epoch's work saved.
    const bool saved = last || stop || hit_max || o.checkpoint_every_steps == 0 || gstep % o.checkpoint_every_steps == 0;
    if (saved)
      save(epoch + 1, 0,
           eval_deferred ? kEvalLeftForResume
           : last        ? "end of training"
           : stop        ? "stop requested"
           : hit_max     ? "--max-steps reached"
                         : "end of epoch",
           eval_deferred);
    if (eval_due && !stop) {
      if (evaluate(epoch)) {
        eval_done_at_end = true;
      } else {
        // The epoch's checkpoint (if any) was written before the evaluation; this one replaces or
        // joins it at the same position and says that the evaluation is due, for the resumed run.
        stop = true;
        save(epoch + 1, 0, kEvalCutShort, true);
        if (o.checkpoint_dir.empty()) info0("exiting (no --checkpoint-dir, nothing saved)");
      }
    }
    if (stop || hit_max) break;
    if (last) continue;
    // A request that came during the epoch's end (evaluation, checkpoint) stops here, agreed by all
    // ranks, rather than after one more step and one more checkpoint.
    double req = stop_requested() ? 1.0 : 0.0;
    comm->allreduce_sum(&req, 1);
    if (req > 0) {
      stop = true;
      agree_stop_origin();
      info0(stop_text(), " at the end of epoch ", epoch + 1, o.checkpoint_dir.empty() ? ": exiting (nothing saved)"
                                                            : saved ? ": exiting (checkpointed)" : ": checkpointing and exiting");
      if (!saved) save(epoch + 1, 0, "stop requested");
      break;
    }
  }
  if (o.eval_only && !stop) {
    if (!evaluate(epoch, stopped_at)) stop = true;  // the checkpoint's position; nothing to save: run it again
  } else if (hit_max && val && !stop && !eval_done_at_end && !evaluate(epoch, stopped_at)) {
    stop = true;
    // Trained in this run: its checkpoint at --max-steps is rewritten saying the evaluation is due.
    // (Resumed with nothing to train, a rerun evaluates anyway.)
    if (saved_epoch >= 0 && gstep > run_start_step) {
      save(saved_epoch, saved_step, kEvalCutShort, true);
    } else if (!resume_path.empty() && gstep == run_start_step) {
      // Nothing trained in this run: the resumed checkpoint is still where a rerun starts (and evaluates).
      result.last_checkpoint = resume_path;
      saved_epoch = ckpt_epoch;
      saved_step = ckpt_step;
    }
  }

  result.global_steps = gstep;
  result.stopped_by_signal = stop;
  // Finished: nothing left to train, even where a stop request came during the last step (its
  // checkpoint is the end of training); a job script must not requeue such a run.
  // An evaluation cut short, or skipped by a stop agreed at the step before it, is not finished: a
  // requeued run (the checkpoint says the evaluation is due) or a rerun of --eval-only does it.
  result.finished = !eval_interrupted && !eval_deferred &&
                    (o.eval_only || result.epochs_done >= o.epochs || (o.max_steps > 0 && gstep >= o.max_steps));
  result.train_images_per_s = train_seconds > 0 ? static_cast<double>(train_images) / train_seconds : 0;
  if (rank0) {
    double total = seconds_since(run_t0);
    std::string per_epoch, per_epoch_json;
    for (double t : result.epoch_seconds) {
      per_epoch += str(per_epoch.empty() ? "" : ", ", human_duration(t));
      per_epoch_json += str(per_epoch_json.empty() ? "" : ", ", json_number(t));
    }
    // Training figures only where this run trained: --eval-only and a run with nothing left to train
    // have none (not "0 img/s").
    const bool trained = train_images > 0;
    const std::string not_training =
        str(checkpoint_seconds > 0 ? str(", checkpoints ", human_duration(checkpoint_seconds)) : std::string(),
            eval_seconds > 0 ? str(", evaluation ", human_duration(eval_seconds)) : std::string(),
            replica_check_seconds > 0 ? str(", replica checks ", human_duration(replica_check_seconds)) : std::string());
    // Steps this run trained (a resumed run starts at the checkpoint's global step), and where it ended.
    const int64_t run_steps = gstep - run_start_step;
    const std::string steps_text =
        str(run_steps, " steps", run_start_step > 0 ? str(" in this run (global step ", gstep, ")") : std::string());
    if (trained)
      info0("summary: ", steps_text, ", ", result.epochs_done, " epoch(s) complete, time per epoch [", per_epoch, "]",
            result.partial_epochs ? str(" (whole epochs only: ", result.partial_epochs,
                                        " partial epoch left out, resumed mid-epoch)")
                                  : "",
            ", training ", static_cast<int64_t>(result.train_images_per_s), " img/s (", env.world,
            " rank(s); checkpoint, evaluation and replica-check time not counted), total ", human_duration(total), not_training);
    else
      info0("summary: ", steps_text, ", ", result.epochs_done, " epoch(s) complete, ",
            o.eval_only ? "evaluated only" : "nothing trained", " (no training figures), total ", human_duration(total),
            not_training);
    // Figures are final only when they are of the weights the run ended with. After a stop inside an
    // epoch, or one that cut short or came before the evaluation of the last weights, the last
    // evaluation is of older weights: said so, with its epoch, never as the final accuracy.
    const bool final_evaluated = result.evaluated && eval_step == gstep;
    const std::string figures = str("top-1 ", result.top1 * 100, "%",
                                    top5_applies ? str(", top-5 ", result.top5 * 100, "%") : std::string(),
                                    ", eval loss ", result.eval_loss);
    if (final_evaluated) {
      info0("final accuracy: ", figures);
    } else if (result.evaluated || eval_interrupted || eval_deferred) {
      const char* pending = o.eval_only                ? "; run it again"
                            : o.checkpoint_dir.empty() ? ""
                                                       : "; a run resumed from its checkpoint evaluates first";
      info0("final accuracy: none: the weights at global step ", gstep, " were not evaluated (",
            eval_interrupted ? str("the stop cut their evaluation short", pending)
            : eval_deferred  ? str("the stop came before their evaluation", pending)
                             : std::string("the run stopped before their evaluation was due"),
            ")",
            result.evaluated ? str("; the last evaluation, of epoch ", eval_epochs, " (global step ", eval_step, "): ",
                                   figures)
                             : std::string());
    }
    info0("peak memory: host ", human_bytes(static_cast<double>(peak_host_rss_bytes())),
          o.backend == nn::Backend::CUDA ? str(", GPU ", human_bytes(static_cast<double>(model->peak_memory_bytes())))
                                         : std::string());
    if (scaler.dynamic()) info0("fp16 loss scale ", scaler.scale(), ", ", scaler.state().skipped_steps, " step(s) skipped for overflow");
    if (jsonl) {
      std::vector<std::pair<std::string, std::string>> f = {
          {"type", json_string("summary")}, {"steps", json_number(double(run_steps))},
          {"global_step", json_number(double(gstep))},
          {"epochs_done", json_number(result.epochs_done)}};
      if (trained) {
        f.push_back({"img_per_s", json_number(result.train_images_per_s)});
        f.push_back({"epoch_seconds", "[" + per_epoch_json + "]"});
        f.push_back({"partial_epochs", json_number(result.partial_epochs)});
        f.push_back({"train_seconds", json_number(train_seconds)});
      }
      if (o.eval_only) f.push_back({"eval_only", "true"});
      f.insert(f.end(), {
          {"checkpoint_seconds", json_number(checkpoint_seconds)}, {"eval_seconds", json_number(eval_seconds)},
          {"replica_check_seconds", json_number(replica_check_seconds)},
          {"seconds", json_number(total)}, {"peak_host_bytes", json_number(double(peak_host_rss_bytes()))},
          {"peak_device_bytes", json_number(o.backend == nn::Backend::CUDA ? double(model->peak_memory_bytes()) : 0.0)},
          {"stopped_by_signal", stop ? "true" : "false"}});
      if (eval_interrupted) f.push_back({"eval_interrupted", "true"});
      // The checkpoint the run ended with says its evaluation is due (cut short, or skipped by the stop).
      if ((eval_interrupted || eval_deferred) && !o.eval_only && !o.checkpoint_dir.empty())
        f.push_back({"eval_pending", "true"});
      // Only the final weights' figures; an older evaluation's are in its own eval record.
      if (final_evaluated) {
        f.push_back({"top1", json_number(result.top1)});
        if (top5_applies) f.push_back({"top5", json_number(result.top5)});
      }
      jsonl->write(f);
    }
    if (!o.status_file.empty()) {
      // state: finished (nothing left to train) | stopped (at a signal, with a checkpoint to resume from:
      // a requeued job continues) | stopped-unsaved (at a signal, without --checkpoint-dir).
      const bool resumable = !result.finished && stop && saved_epoch >= 0;
      std::vector<std::pair<std::string, std::string>> f = {
          {"state", result.finished ? "finished" : resumable ? "stopped" : "stopped-unsaved"},
          {"signal", stop ? stop_origin.names : std::string()},
          {"start_step", std::to_string(run_start_step)},
          {"global_step", std::to_string(gstep)}};
      // Which ranks received it ("0-3": all of four; "1": a signal to one node's rank only).
      if (stop && !stop_origin.ranks.empty()) f.insert(f.begin() + 2, {"signal_ranks", stop_origin.ranks});
      if (resumable) {
        f.push_back({"epoch", std::to_string(saved_epoch + 1)});  // as "resumed from FILE: epoch 3, step 1 of the epoch"
        f.push_back({"step_in_epoch", std::to_string(saved_step)});
        f.push_back({"checkpoint", result.last_checkpoint});
      }
      try {
        write_status_file(o.status_file, f);
      } catch (const std::exception& e) {
        // Training is over and its checkpoint written: the exit status stays 0; a job script then
        // finds "running" or no file and does not requeue.
        warn(e.what());
      }
    }
  }
  comm->barrier();
  return result;
}

}  // namespace ddp::train
