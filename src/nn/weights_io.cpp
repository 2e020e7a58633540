#include "ddp/nn/weights_io.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "ddp/core/check.h"
#include "ddp/core/h5.h"

namespace ddp::nn {

namespace {

std::vector<hsize_t> h5_shape(const std::vector<int64_t>& s) { return {s.begin(), s.end()}; }

std::string dims(const std::vector<hsize_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

}  // namespace

void save_weights(const std::string& path, const ResNet18Spec& spec, const float* params, const float* buffers,
                  int64_t num_batches_tracked) {
  const std::string tmp = path + ".tmp";
  try {
    h5::Handle f = h5::create_file(tmp);
    h5::set_attr(f, "format", std::string(kWeightsFormat));
    h5::set_attr(f, "format_version", kWeightsFormatVersion);
    h5::set_attr(f, "num_classes", static_cast<int64_t>(spec.num_classes));
    for (const ParamInfo& p : spec.params) h5::write_f32(f, p.name, params + p.offset, h5_shape(p.shape));
    for (const BufferInfo& b : spec.buffers)
      h5::write_f32(f, b.name, buffers + b.offset, {static_cast<hsize_t>(b.numel)});
    for (const std::string& bn : spec.bn_names())
      h5::write_i64(f, bn + ".num_batches_tracked", &num_batches_tracked, {});  // 0-d, as in PyTorch
    DDP_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0, "cannot flush weights file '", tmp, "' (disk full?)");
    f.close();
  } catch (...) {
    std::remove(tmp.c_str());  // never leave a half-written file behind
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::remove(tmp.c_str());
    DDP_FAIL("cannot rename '", tmp, "' to '", path, "': ", std::strerror(e));
  }
}

void load_weights(const std::string& path, const ResNet18Spec& spec, float* params, float* buffers,
                  int64_t* num_batches_tracked) {
  h5::Handle f = h5::open_file(path);
  DDP_CHECK(h5::has_attr(f, "format") && h5::get_attr_str(f, "format") == kWeightsFormat, "'", path,
            "' is not a ResNet18 weights file (attribute format != \"", kWeightsFormat,
            "\"; convert a torchvision .pth with tools/torchvision_to_h5.py)");
  const int64_t version = h5::has_attr(f, "format_version") ? h5::get_attr_i64(f, "format_version") : -1;
  DDP_CHECK(version == kWeightsFormatVersion, "weights file '", path, "' has format_version ", version,
            ", this program reads version ", kWeightsFormatVersion);
  if (h5::has_attr(f, "num_classes")) {
    const int64_t k = h5::get_attr_i64(f, "num_classes");
    DDP_CHECK(k == spec.num_classes, "weights file '", path, "' is for ", k,
              " classes (tensor fc.weight), but the model has ", spec.num_classes);
  }
  // Read into staging buffers so a bad file leaves the caller's weights untouched.
  std::vector<float> p(static_cast<size_t>(spec.param_count)), b(static_cast<size_t>(spec.buffer_count));
  auto check_tensor = [&](const std::string& name, const std::vector<hsize_t>& expect) {
    DDP_CHECK(h5::exists(f, name), "weights file '", path, "' has no tensor '", name, "'");
    auto got = h5::dataset_shape(f, name);
    DDP_CHECK(got == expect, "weights file '", path, "': tensor '", name, "' has shape ", dims(got), ", the model needs ",
              dims(expect));
  };
  // A NaN or inf weight evaluates to NaN logits (which used to score as correct) and trains to NaN
  // gradients that would blame the lr: refused here, as load_checkpoint refuses one.
  auto check_finite = [&](const std::string& name, const float* v, int64_t n) {
    const float* bad = std::find_if(v, v + n, [](float x) { return !std::isfinite(x); });
    DDP_CHECK(bad == v + n, "weights file '", path, "': tensor '", name, "' holds inf or NaN (element ", bad - v, " of ",
              n, " is ", *bad, ")");
  };
  for (const ParamInfo& pi : spec.params) {
    check_tensor(pi.name, h5_shape(pi.shape));
    h5::read_f32(f, pi.name, p.data() + pi.offset, h5_shape(pi.shape));
    check_finite(pi.name, p.data() + pi.offset, pi.numel);
  }
  for (const BufferInfo& bi : spec.buffers) {
    check_tensor(bi.name, {static_cast<hsize_t>(bi.numel)});
    h5::read_f32(f, bi.name, b.data() + bi.offset, {static_cast<hsize_t>(bi.numel)});
    check_finite(bi.name, b.data() + bi.offset, bi.numel);
  }
  int64_t nbt = 0;
  for (const std::string& bn : spec.bn_names()) {
    const std::string name = bn + ".num_batches_tracked";
    DDP_CHECK(h5::exists(f, name), "weights file '", path, "' has no tensor '", name, "'");
    auto shape = h5::dataset_shape(f, name);
    DDP_CHECK(shape.empty() || shape == std::vector<hsize_t>{1}, "weights file '", path, "': tensor '", name,
              "' has shape ", dims(shape), ", expected a scalar");
    int64_t v = 0;
    h5::read_i64(f, name, &v, shape);
    nbt = std::max(nbt, v);
  }
  std::copy(p.begin(), p.end(), params);
  std::copy(b.begin(), b.end(), buffers);
  if (num_batches_tracked) *num_batches_tracked = nbt;
}

}  // namespace ddp::nn
