#include "ddp/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "ddp/core/h5.h"
#include "ddp/core/log.h"

namespace fs = std::filesystem;

namespace ddp::train {

namespace {

void fsync_path(const std::string& path, bool dir) {
  int fd = ::open(path.c_str(), dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  DDP_CHECK(fd >= 0, "cannot open '", path, "' to flush it: ", std::strerror(errno));
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  DDP_CHECK(r == 0, "cannot flush '", path, "' to disk: ", std::strerror(err));
}

std::vector<hsize_t> hshape(const std::vector<int64_t>& s) { return {s.begin(), s.end()}; }

void write_scalar_i64(hid_t loc, const std::string& name, int64_t v) {
  // A scalar dataspace, as torch stores num_batches_tracked (shape []).
  h5::Handle space(H5_CHECK(H5Screate(H5S_SCALAR)));
  h5::Handle ds(H5_CHECK(H5Dcreate2(loc, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)));
  DDP_CHECK(H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0, "cannot write '", name,
            "' in ", h5::file_name(loc), " (disk full?)");
}

void write_checkpoint_file(const std::string& tmp, const nn::ResNet18Spec& spec, const CheckpointState& s) {
  h5::Handle f = h5::create_file(tmp);
  h5::set_attr(f, "format", std::string(kCheckpointFormat));
  h5::set_attr(f, "format_version", kCheckpointVersion);
  for (const auto& pi : spec.params)
    h5::write_f32_checksummed(f, pi.name, s.params.data() + pi.offset, hshape(pi.shape));
  for (const auto& b : spec.buffers)
    h5::write_f32_checksummed(f, b.name, s.buffers.data() + b.offset, {static_cast<hsize_t>(b.numel)});
  for (const auto& bn : spec.bn_names()) write_scalar_i64(f, bn + ".num_batches_tracked", s.num_batches_tracked);
  for (const auto& pi : spec.params)
    h5::write_f32_checksummed(f, "optimizer/momentum/" + pi.name, s.momentum.data() + pi.offset,
                              hshape(pi.shape));
  h5::set_attr(f, "num_classes", static_cast<int64_t>(s.num_classes));
  h5::set_attr(f, "momentum_initialised", static_cast<int64_t>(s.momentum_initialised));
  h5::set_attr(f, "epoch", s.epoch);
  h5::set_attr(f, "step_in_epoch", s.step_in_epoch);
  h5::set_attr(f, "global_step", s.global_step);
  h5::set_attr(f, "steps_per_epoch", s.steps_per_epoch);
  h5::set_attr(f, "seed", static_cast<int64_t>(s.seed));
  h5::set_attr(f, "world_size", static_cast<int64_t>(s.world_size));
  h5::set_attr(f, "batch_size", s.batch_size);
  h5::set_attr(f, "train_images", s.train_images);
  h5::set_attr(f, "loss_scale", s.scaler.scale);
  h5::set_attr(f, "loss_scale_good_steps", s.scaler.good_steps);
  h5::set_attr(f, "loss_scale_skipped_steps", s.scaler.skipped_steps);
  h5::set_attr(f, "loss_scale_dynamic", static_cast<int64_t>(s.scaler.dynamic));
  h5::set_attr(f, "config", s.config);
  h5::set_attr(f, "eval_pending", static_cast<int64_t>(s.eval_pending));
  if (!s.classes.empty()) h5::write_strings(f, "classes", s.classes);
  if (!s.rank_buffers.empty()) {
    h5::Handle ranks = h5::create_group(f, "ranks");
    h5::write_f32_checksummed(ranks, "buffers", s.rank_buffers.data(),
                              {static_cast<hsize_t>(s.world_size), static_cast<hsize_t>(spec.buffer_count)});
  }
  h5::Handle rng = h5::create_group(f, "rng");
  for (const auto& [name, pos] : s.rng) h5::set_attr(rng, name, static_cast<int64_t>(pos));
  rng.close();
  H5_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL));
  // Last: a reader that sees complete = 1 knows every dataset above was written.
  h5::set_attr(f, "complete", static_cast<int64_t>(1));
  DDP_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0, "cannot flush checkpoint '", tmp, "' (disk full?)");
}

int64_t read_scalar_i64(hid_t loc, const std::string& name) {
  DDP_CHECK(h5::exists(loc, name), "dataset '", name, "' missing in ", h5::file_name(loc));
  h5::Handle ds(H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)));
  h5::Handle space(H5_CHECK(H5Dget_space(ds)));
  DDP_CHECK(H5Sget_simple_extent_npoints(space) == 1, "dataset '", name, "' in ", h5::file_name(loc),
            " is not a scalar");
  int64_t v = 0;
  DDP_CHECK(H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0, "cannot read '", name, "' in ",
            h5::file_name(loc));
  return v;
}

// Opens and validates the identity of a checkpoint; throws with the reason.
h5::Handle open_checked(const std::string& path) {
  std::error_code ec;
  DDP_CHECK(fs::is_regular_file(path, ec), "checkpoint '", path, "' does not exist (or is not a file)");
  h5::Handle f;
  try {
    f = h5::open_file(path);
  } catch (const Error& e) {
    throw Error(str("checkpoint '", path, "' cannot be read (truncated or corrupt?): ", e.what()));
  }
  if (!h5::has_attr(f, "format") || h5::get_attr_str(f, "format") != kCheckpointFormat)
    DDP_FAIL("'", path, "' is not a resnet18-ddp checkpoint (no format = \"", kCheckpointFormat,
             "\" attribute; a weights file goes to --init-weights)");
  int64_t v = h5::get_attr_i64(f, "format_version");
  DDP_CHECK(v == kCheckpointVersion, "checkpoint '", path, "' has format version ", v, "; this program reads version ",
            kCheckpointVersion);
  DDP_CHECK(h5::has_attr(f, "complete") && h5::get_attr_i64(f, "complete") == 1, "checkpoint '", path,
            "' is incomplete (its writer stopped before finishing it); refusing to load it");
  return f;
}

}  // namespace

std::string checkpoint_file_name(int64_t global_step) {
  char b[64];
  std::snprintf(b, sizeof b, "ckpt-%010lld.h5", static_cast<long long>(global_step));
  return b;
}

void save_checkpoint(const std::string& path, const nn::ResNet18Spec& spec, const CheckpointState& s) {
  DDP_CHECK(static_cast<int64_t>(s.params.size()) == spec.param_count &&
                static_cast<int64_t>(s.momentum.size()) == spec.param_count &&
                static_cast<int64_t>(s.buffers.size()) == spec.buffer_count,
            "checkpoint state does not match the model (", s.params.size(), " params for ", spec.param_count, ")");
  fs::path p(path);
  if (p.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    DDP_CHECK(!ec, "cannot create checkpoint directory '", p.parent_path().string(), "': ", ec.message());
  }
  std::string tmp = path + ".tmp";
  // A write that fails (a full disk, most often) removes its partial file: left behind, it would keep
  // the volume full for the run that resumes from the previous checkpoint.
  try {
    write_checkpoint_file(tmp, spec, s);
    fsync_path(tmp, false);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  DDP_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path, "': ",
            std::strerror(errno));
  fsync_path(p.has_parent_path() ? p.parent_path().string() : ".", true);
}

std::string checkpoint_problem(const std::string& path) {
  try {
    h5::Handle f = open_checked(path);
    return checkpoint_name_problem(path, h5::get_attr_i64(f, "global_step"));
  } catch (const Error& e) {
    return e.what();
  }
}

std::string checkpoint_name_problem(const std::string& path, int64_t global_step) {
  const int64_t named = checkpoint_step(path);
  if (named < 0 || named == global_step) return "";
  return str("checkpoint '", path, "' holds global step ", global_step, " but its name says ", named,
             " (renamed, or copied over another?): the name decides which checkpoint is the newest and which ones ",
             "retention deletes; rename it ", checkpoint_file_name(global_step), " or move it out of the directory");
}

std::string checkpoint_config(const std::string& path) {
  h5::Handle f = open_checked(path);
  return h5::get_attr_str(f, "config");
}

int checkpoint_num_classes(const std::string& path) {
  h5::Handle f = open_checked(path);
  return static_cast<int>(h5::get_attr_i64(f, "num_classes"));
}

CheckpointState load_checkpoint(const std::string& path, const nn::ResNet18Spec& spec) {
  h5::Handle f = open_checked(path);
  CheckpointState s;
  s.num_classes = static_cast<int>(h5::get_attr_i64(f, "num_classes"));
  DDP_CHECK(s.num_classes == spec.num_classes, "checkpoint '", path, "' has ", s.num_classes,
            " classes but the data has ", spec.num_classes);
  s.params.resize(static_cast<size_t>(spec.param_count));
  s.momentum.resize(static_cast<size_t>(spec.param_count));
  s.buffers.resize(static_cast<size_t>(spec.buffer_count));
  try {
    for (const auto& pi : spec.params) h5::read_f32(f, pi.name, s.params.data() + pi.offset, hshape(pi.shape));
    for (const auto& b : spec.buffers)
      h5::read_f32(f, b.name, s.buffers.data() + b.offset, {static_cast<hsize_t>(b.numel)});
    s.num_batches_tracked = read_scalar_i64(f, spec.bn_names().front() + ".num_batches_tracked");
    for (const auto& pi : spec.params)
      h5::read_f32(f, "optimizer/momentum/" + pi.name, s.momentum.data() + pi.offset, hshape(pi.shape));
    s.momentum_initialised = h5::get_attr_i64(f, "momentum_initialised") != 0;
    s.epoch = h5::get_attr_i64(f, "epoch");
    s.step_in_epoch = h5::get_attr_i64(f, "step_in_epoch");
    s.global_step = h5::get_attr_i64(f, "global_step");
    s.steps_per_epoch = h5::get_attr_i64(f, "steps_per_epoch");
    s.seed = static_cast<uint64_t>(h5::get_attr_i64(f, "seed"));
    s.world_size = static_cast<int>(h5::get_attr_i64(f, "world_size"));
    s.batch_size = h5::has_attr(f, "batch_size") ? h5::get_attr_i64(f, "batch_size") : 0;
    s.train_images = h5::has_attr(f, "train_images") ? h5::get_attr_i64(f, "train_images") : 0;
    s.scaler.scale = h5::get_attr_f64(f, "loss_scale");
    s.scaler.good_steps = h5::get_attr_i64(f, "loss_scale_good_steps");
    s.scaler.skipped_steps = h5::get_attr_i64(f, "loss_scale_skipped_steps");
    // Checkpoints written before this attribute: a dynamic scaler moves off 1 at once (it starts at
    // 2^16) and counts its steps; a constant one stays at 1 with no steps counted.
    s.scaler.dynamic = h5::has_attr(f, "loss_scale_dynamic")
                           ? h5::get_attr_i64(f, "loss_scale_dynamic") != 0
                           : (s.scaler.scale != 1.0 || s.scaler.good_steps != 0 || s.scaler.skipped_steps != 0);
    s.config = h5::get_attr_str(f, "config");
    s.eval_pending = h5::has_attr(f, "eval_pending") && h5::get_attr_i64(f, "eval_pending") != 0;
    if (h5::exists(f, "classes")) {
      s.classes = h5::read_strings(f, "classes");
      DDP_CHECK(static_cast<int>(s.classes.size()) == s.num_classes, "/classes holds ", s.classes.size(),
                " class names for ", s.num_classes, " classes");
    }
    if (h5::exists(f, "ranks/buffers") && s.world_size >= 1 && s.world_size <= (1 << 20)) {
      s.rank_buffers.resize(static_cast<size_t>(s.world_size) * static_cast<size_t>(spec.buffer_count));
      h5::read_f32(f, "ranks/buffers", s.rank_buffers.data(),
                   {static_cast<hsize_t>(s.world_size), static_cast<hsize_t>(spec.buffer_count)});
    }
    if (h5::exists(f, "rng")) {
      h5::Handle g(H5_CHECK(H5Gopen2(f, "rng", H5P_DEFAULT)));
      std::vector<std::string> names;
      hsize_t idx = 0;
      H5_CHECK(H5Aiterate2(
          g, H5_INDEX_NAME, H5_ITER_INC, &idx,
          [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
            static_cast<std::vector<std::string>*>(data)->emplace_back(name);
            return 0;
          },
          &names));
      for (const auto& n : names) s.rng.emplace_back(n, static_cast<uint64_t>(h5::get_attr_i64(g, n)));
    }
  } catch (const Error& e) {
    throw Error(str("checkpoint '", path, "' is damaged or does not match this model: ", e.what()));
  }
  // A position no trainer writes (a damaged or hand-edited file) would resume somewhere undefined.
  DDP_CHECK(s.epoch >= 0 && s.global_step >= 0 && s.steps_per_epoch >= 1 && s.step_in_epoch >= 0 &&
                s.step_in_epoch <= s.steps_per_epoch && s.world_size >= 1 && s.batch_size >= 0 &&
                s.train_images >= 0 && std::isfinite(s.scaler.scale) && s.scaler.scale > 0,
            "checkpoint '", path, "' holds an invalid training position (epoch ", s.epoch, ", step ", s.step_in_epoch,
            " of ", s.steps_per_epoch, ", global step ", s.global_step, ", world_size ", s.world_size, ", loss scale ",
            s.scaler.scale, ")");
  // Non-finite weights would surface only as "gradients are inf/NaN" steps later, blaming the lr.
  auto finite = [&](const std::vector<float>& v, int64_t off, int64_t n) {
    return std::all_of(v.begin() + off, v.begin() + off + n, [](float x) { return std::isfinite(x); });
  };
  for (const auto& pi : spec.params) {
    DDP_CHECK(finite(s.params, pi.offset, pi.numel), "checkpoint '", path, "': '", pi.name, "' holds inf or NaN");
    DDP_CHECK(finite(s.momentum, pi.offset, pi.numel), "checkpoint '", path, "': the momentum of '", pi.name,
              "' holds inf or NaN");
  }
  for (const auto& b : spec.buffers)
    DDP_CHECK(finite(s.buffers, b.offset, b.numel), "checkpoint '", path, "': '", b.name, "' holds inf or NaN");
  DDP_CHECK(finite(s.rank_buffers, 0, static_cast<int64_t>(s.rank_buffers.size())), "checkpoint '", path,
            "': 'ranks/buffers' holds inf or NaN");
  return s;
}

std::string class_list_difference(const std::vector<std::string>& a, const std::vector<std::string>& b,
                                  const char* a_name, const char* b_name) {
  if (a == b) return "";
  size_t k = 0;
  while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
  auto at = [k](const std::vector<std::string>& v) { return k < v.size() ? str("'", v[k], "'") : std::string("nothing"); };
  return str(a.size(), " vs ", b.size(), " classes; first difference at index ", k, ": ", at(a), " (", a_name, ") vs ",
             at(b), " (", b_name, ")");
}

int64_t checkpoint_step(const std::string& path) {
  const std::string n = fs::path(path).filename().string();
  if (n.size() <= 8 || n.rfind("ckpt-", 0) != 0 || n.substr(n.size() - 3) != ".h5") return -1;
  const std::string digits = n.substr(5, n.size() - 8);
  if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    if (checkpoint_step(n) >= 0) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) { return checkpoint_step(a) < checkpoint_step(b); });
  return out;
}

std::optional<std::string> find_latest_checkpoint(const std::string& dir) {
  auto all = list_checkpoints(dir);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    std::string why = checkpoint_problem(*it);
    if (why.empty()) return *it;
    warn("skipping checkpoint ", *it, ": ", why);
  }
  return std::nullopt;
}

void prune_checkpoints(const std::string& dir, int keep, int64_t newest) {
  auto all = list_checkpoints(dir);
  while (!all.empty() && checkpoint_step(all.back()) > newest) all.pop_back();
  std::error_code ec;
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove(all[i], ec);
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind("ckpt-", 0) == 0 && n.size() > 7 && n.substr(n.size() - 7) == ".h5.tmp") fs::remove(e.path(), ec);
  }
}

}  // namespace ddp::train
