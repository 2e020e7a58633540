// Weights files: round trip, refusal of mismatched, foreign, truncated and non-HDF5 files with errors
// that name the tensor and the file, and the torchvision conversion tools in both directions
// (a .pth made by torchvision -> our file -> load/save in C++ -> .pth, compared in PyTorch), including
// their answers to bad inputs, a directory as output and a full disk.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "ddp/core/check.h"
#include "ddp/core/h5.h"
#include "ddp/core/rng.h"
#include "ddp/nn/weights_io.h"

#ifndef DDP_TOOLS_DIR
#error "DDP_TOOLS_DIR must name the project's tools/ directory"
#endif

namespace fs = std::filesystem;
using namespace ddp::nn;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "ddp_weights_XXXXXX").string();
    DDP_CHECK(mkdtemp(tmpl.data()) != nullptr, "mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

struct Weights {
  ResNet18Spec spec;
  std::vector<float> params, buffers;
  explicit Weights(int k) : spec(make_resnet18_spec(k)), params(spec.param_count), buffers(spec.buffer_count) {}
};

Weights random_weights(int k, uint64_t seed) {
  Weights w(k);
  ddp::Rng rng(seed, ddp::rng_stream::kTest);
  for (auto& v : w.params) v = rng.normal();
  for (auto& v : w.buffers) v = rng.uniform(0.1f, 2.0f);
  return w;
}

// Expects load_weights to fail with a message that contains every needle.
void expect_load_error(const std::string& path, int k, std::vector<std::string> needles) {
  Weights w(k);
  try {
    load_weights(path, w.spec, w.params.data(), w.buffers.data(), nullptr);
    ADD_FAILURE() << "no error loading " << path;
  } catch (const ddp::Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(WeightsIo, RoundTrip) {
  TempDir tmp;
  const std::string path = tmp.file("w.h5");
  Weights a = random_weights(10, 1);
  save_weights(path, a.spec, a.params.data(), a.buffers.data(), 1234);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  Weights b(10);
  int64_t nbt = 0;
  load_weights(path, b.spec, b.params.data(), b.buffers.data(), &nbt);
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(a.buffers, b.buffers);
  EXPECT_EQ(nbt, 1234);
  // The layout is the documented one: PyTorch shape, state_dict name, attributes.
  auto f = ddp::h5::open_file(path);
  EXPECT_EQ(ddp::h5::get_attr_str(f, "format"), "resnet18-ddp-weights");
  EXPECT_EQ(ddp::h5::get_attr_i64(f, "format_version"), 1);
  EXPECT_EQ(ddp::h5::get_attr_i64(f, "num_classes"), 10);
  EXPECT_EQ(ddp::h5::dataset_shape(f, "layer2.0.downsample.0.weight"), (std::vector<hsize_t>{128, 64, 1, 1}));
  EXPECT_EQ(ddp::h5::dataset_shape(f, "fc.weight"), (std::vector<hsize_t>{10, 512}));
  EXPECT_TRUE(ddp::h5::dataset_shape(f, "layer4.1.bn2.num_batches_tracked").empty());
  // Overwriting an existing file works (temporary name, then rename).
  save_weights(path, b.spec, b.params.data(), b.buffers.data(), 7);
  load_weights(path, b.spec, b.params.data(), b.buffers.data(), &nbt);
  EXPECT_EQ(nbt, 7);
}

TEST(WeightsIo, MissingTensorIsNamed) {
  TempDir tmp;
  const std::string path = tmp.file("w.h5");
  Weights a = random_weights(10, 2);
  save_weights(path, a.spec, a.params.data(), a.buffers.data(), 0);
  {
    auto f = ddp::h5::open_file(path, true);
    H5_CHECK(H5Ldelete(f, "layer3.1.bn1.running_var", H5P_DEFAULT));
  }
  expect_load_error(path, 10, {"layer3.1.bn1.running_var", path});
}

TEST(WeightsIo, WrongShapeIsNamedAndNothingIsWritten) {
  TempDir tmp;
  const std::string path = tmp.file("w.h5");
  Weights a = random_weights(10, 3);
  save_weights(path, a.spec, a.params.data(), a.buffers.data(), 0);
  {
    auto f = ddp::h5::open_file(path, true);
    H5_CHECK(H5Ldelete(f, "layer2.1.conv2.weight", H5P_DEFAULT));
    std::vector<float> wrong(128 * 128 * 9);
    ddp::h5::write_f32(f, "layer2.1.conv2.weight", wrong.data(), {128, 128, 9});
  }
  expect_load_error(path, 10, {"layer2.1.conv2.weight", path, "[128, 128, 9]", "[128, 128, 3, 3]"});
  // A failed load leaves the caller's weights as they were.
  Weights b = random_weights(10, 4);
  const auto before = b.params;
  EXPECT_THROW(load_weights(path, b.spec, b.params.data(), b.buffers.data(), nullptr), ddp::Error);
  EXPECT_EQ(b.params, before);
}

TEST(WeightsIo, WrongClassCountIsRefused) {
  TempDir tmp;
  const std::string path = tmp.file("w.h5");
  Weights a = random_weights(10, 5);
  save_weights(path, a.spec, a.params.data(), a.buffers.data(), 0);
  expect_load_error(path, 7, {"fc.weight", path, "10", "7"});
}

// A NaN or inf weight would evaluate to NaN logits and train to NaN gradients; refused at load,
// naming the file, the tensor and the element, with the caller's weights untouched.
TEST(WeightsIo, NonFiniteValuesAreRefusedNamingTheTensor) {
  TempDir tmp;
  const std::string path = tmp.file("w.h5");
  struct Case {
    const char* tensor;
    bool param;
    float value;
  };
  const float inf = std::numeric_limits<float>::infinity();
  for (const Case c : {Case{"layer3.0.bn1.weight", true, std::numeric_limits<float>::quiet_NaN()},
                       Case{"fc.bias", true, -inf}, Case{"layer1.1.bn2.running_var", false, inf}}) {
    SCOPED_TRACE(c.tensor);
    Weights a = random_weights(10, 6);
    if (c.param) a.params[a.spec.param(c.tensor).offset + 5] = c.value;
    else {
      const auto& bs = a.spec.buffers;
      auto it = std::find_if(bs.begin(), bs.end(), [&](const BufferInfo& b) { return b.name == c.tensor; });
      ASSERT_NE(it, bs.end());
      a.buffers[it->offset + 5] = c.value;
    }
    save_weights(path, a.spec, a.params.data(), a.buffers.data(), 0);
    expect_load_error(path, 10, {path, std::string("'") + c.tensor + "'", "element 5", "inf or NaN"});
    Weights b = random_weights(10, 7);
    const auto before = b.params;
    EXPECT_THROW(load_weights(path, b.spec, b.params.data(), b.buffers.data(), nullptr), ddp::Error);
    EXPECT_EQ(b.params, before);
  }
}

TEST(WeightsIo, ForeignTruncatedAndNonHdf5FilesAreRefused) {
  TempDir tmp;
  // Not HDF5 at all.
  const std::string text = tmp.file("notes.h5");
  std::ofstream(text) << "these are not weights\n";
  expect_load_error(text, 10, {text, "not an HDF5 file"});
  // Missing.
  expect_load_error(tmp.file("absent.h5"), 10, {"absent.h5"});
  // HDF5, but not a weights file.
  const std::string foreign = tmp.file("foreign.h5");
  {
    auto f = ddp::h5::create_file(foreign);
    float x = 1;
    ddp::h5::write_f32(f, "x", &x, {1});
  }
  expect_load_error(foreign, 10, {foreign, "not a ResNet18 weights file"});
  // Truncated: a real weights file cut in half.
  const std::string good = tmp.file("good.h5");
  Weights a = random_weights(10, 6);
  save_weights(good, a.spec, a.params.data(), a.buffers.data(), 0);
  const std::string cut = tmp.file("cut.h5");
  fs::copy_file(good, cut);
  fs::resize_file(cut, fs::file_size(good) / 2);
  expect_load_error(cut, 10, {cut});
}

TEST(WeightsIo, UnwritableDestinationIsAnError) {
  Weights a(10);
  EXPECT_THROW(save_weights("/nonexistent-dir/w.h5", a.spec, a.params.data(), a.buffers.data(), 0), ddp::Error);
}

TEST(WeightsIo, TorchvisionConversionRoundTrip) {
  TempDir tmp;
  const std::string pth = tmp.file("tv.pth"), h5 = tmp.file("tv.h5"), h5b = tmp.file("ours.h5"),
                    pth2 = tmp.file("back.pth");
  const std::string py = "/usr/bin/python3";
  // A torchvision model with non-trivial BN buffers and a counter, saved as people do.
  std::string make = py + " -c \"import torch, torchvision; torch.manual_seed(0); "
                          "m = torchvision.models.resnet18(num_classes=5); m.train(); "
                          "[m(torch.randn(4, 3, 64, 64)) for _ in range(3)]; torch.save(m.state_dict(), '" +
                     pth + "')\"";
  ASSERT_EQ(std::system(make.c_str()), 0) << make;
  std::string to_h5 = py + " " + DDP_TOOLS_DIR + "/torchvision_to_h5.py " + pth + " " + h5 + " > /dev/null";
  ASSERT_EQ(std::system(to_h5.c_str()), 0) << to_h5;
  Weights w(5);
  int64_t nbt = 0;
  load_weights(h5, w.spec, w.params.data(), w.buffers.data(), &nbt);
  EXPECT_EQ(nbt, 3);
  save_weights(h5b, w.spec, w.params.data(), w.buffers.data(), nbt);
  std::string to_pth = py + " " + DDP_TOOLS_DIR + "/h5_to_torchvision.py " + h5b + " " + pth2 + " > /dev/null";
  ASSERT_EQ(std::system(to_pth.c_str()), 0) << to_pth;
  std::string cmp = py + " -c \"import torch, sys; a = torch.load('" + pth + "'); b = torch.load('" + pth2 +
                    "'); sys.exit(0 if list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a) else 1)\"";
  EXPECT_EQ(std::system(cmp.c_str()), 0) << "torchvision -> h5 -> C++ -> h5 -> torchvision changed the weights";
  // The tools refuse a file that is not ResNet18.
  std::string bad = py + " -c \"import torch; torch.save({'w': torch.zeros(3)}, '" + tmp.file("bad.pth") + "')\"";
  ASSERT_EQ(std::system(bad.c_str()), 0);
  std::string refuse = py + " " + DDP_TOOLS_DIR + "/torchvision_to_h5.py " + tmp.file("bad.pth") + " " +
                       tmp.file("bad.h5") + " 2> /dev/null";
  EXPECT_NE(std::system(refuse.c_str()), 0);
}

struct Run {
  int rc = -1;
  std::string out;  // stdout + stderr
};
Run run(const std::string& cmd) {
  Run r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

bool have_torch_h5py() {
  return std::system("/usr/bin/python3 -c 'import torch, torchvision, h5py' >/dev/null 2>&1") == 0;
}

Run to_h5(const std::string& args) { return run("/usr/bin/python3 " DDP_TOOLS_DIR "/torchvision_to_h5.py " + args); }
Run to_pth(const std::string& args) { return run("/usr/bin/python3 " DDP_TOOLS_DIR "/h5_to_torchvision.py " + args); }

// What the tools must do on bad input: exit 1 with exactly one line that names `file` and contains
// `cause` (no traceback, no HDF5 error stack), and leave no `.tmp` file in `dir`.
void expect_one_line_error(const Run& r, const std::string& file, const std::string& cause, const fs::path& dir) {
  EXPECT_EQ(r.rc, 1) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(file), std::string::npos) << "the message should name " << file << ": " << r.out;
  EXPECT_NE(r.out.find(cause), std::string::npos) << "the message should say '" << cause << "': " << r.out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    EXPECT_NE(e.path().extension(), ".tmp") << e.path() << " left behind";
}

TEST(WeightsIo, ConversionToolsRefuseBadInputsInOneLine) {
  if (!have_torch_h5py()) GTEST_SKIP() << "Debian python3 with torch/torchvision/h5py not installed (tools/setup installs them)";
  TempDir tmp;
  const auto f = [&](const std::string& n) { return tmp.file(n); };
  // Damaged .pth files: empty, not a pickle, a zip-format save cut in half.
  ASSERT_EQ(run("/usr/bin/python3 -c \"import torch, sys; torch.save({'w': torch.zeros(1000)}, sys.argv[1]); "
                "d = open(sys.argv[1], 'rb').read(); open(sys.argv[2], 'wb').write(d[:len(d) // 2]); "
                "open(sys.argv[3], 'wb').write(b'garbage' * 9); open(sys.argv[4], 'wb')\" " +
                f("ok.pth") + " " + f("cut.pth") + " " + f("junk.pth") + " " + f("empty.pth"))
                .rc,
            0);
  fs::create_directories(tmp.path / "outdir");
  expect_one_line_error(to_h5(f("missing.pth") + " " + f("o.h5")), "missing.pth", "no such file", tmp.path);
  expect_one_line_error(to_h5(f("empty.pth") + " " + f("o.h5")), "empty.pth", "empty file", tmp.path);
  expect_one_line_error(to_h5(f("junk.pth") + " " + f("o.h5")), "junk.pth", "not a readable PyTorch file", tmp.path);
  expect_one_line_error(to_h5(f("cut.pth") + " " + f("o.h5")), "cut.pth", "not a readable PyTorch file", tmp.path);
  expect_one_line_error(to_h5(f("ok.pth") + " " + f("outdir")), "outdir", "is a directory", tmp.path);
  EXPECT_FALSE(fs::exists(f("o.h5")));
  // A ResNet18 state_dict holding a NaN (a diverged run's): refused here, naming the tensor, rather
  // than converted for train_resnet18 --init-weights to refuse later.
  ASSERT_EQ(run("/usr/bin/python3 -c \"import torch, torchvision, sys; sd = torchvision.models.resnet18(num_classes=3)"
                ".state_dict(); sd['layer2.0.bn1.weight'][5] = float('nan'); torch.save(sd, sys.argv[1])\" " +
                f("nan.pth"))
                .rc,
            0);
  expect_one_line_error(to_h5(f("nan.pth") + " " + f("o.h5")), "nan.pth",
                        "tensor 'layer2.0.bn1.weight' holds inf or NaN (flat element 5 of 128 is nan)", tmp.path);
  EXPECT_FALSE(fs::exists(f("o.h5")));

  // Our weights file, then damaged versions: cut in half, an empty counter, a string where a tensor is.
  Weights w = random_weights(5, 3);
  save_weights(f("w.h5"), w.spec, w.params.data(), w.buffers.data(), 7);
  fs::copy_file(f("w.h5"), f("cut.h5"));
  fs::resize_file(f("cut.h5"), fs::file_size(f("cut.h5")) / 2);
  ASSERT_EQ(run("/usr/bin/python3 -c \"import h5py, numpy, shutil, sys\n"
                "for out, name, data in ((sys.argv[2], 'bn1.num_batches_tracked', numpy.zeros(0, 'int64')),\n"
                "                        (sys.argv[3], 'layer1.0.bn1.weight', 'text')):\n"
                "    shutil.copy(sys.argv[1], out)\n"
                "    with h5py.File(out, 'a') as h: del h[name]; h.create_dataset(name, data=data)\n"
                "shutil.copy(sys.argv[1], sys.argv[4])\n"
                "with h5py.File(sys.argv[4], 'a') as h: h.attrs['format'] = 'resnet18-ddp-checkpoint'; h.attrs['complete'] = 0\n"
                "\" " + f("w.h5") + " " + f("nbt.h5") + " " + f("str.h5") + " " + f("incomplete.h5"))
                .rc,
            0);
  expect_one_line_error(to_pth(f("incomplete.h5") + " " + f("o.pth")), "incomplete.h5", "an incomplete checkpoint",
                        tmp.path);
  expect_one_line_error(to_pth(f("missing.h5") + " " + f("o.pth")), "missing.h5", "no such file", tmp.path);
  expect_one_line_error(to_pth(f("junk.pth") + " " + f("o.pth")), "junk.pth", "not a readable HDF5 file", tmp.path);
  expect_one_line_error(to_pth(f("cut.h5") + " " + f("o.pth")), "cut.h5", "not a readable HDF5 file", tmp.path);
  expect_one_line_error(to_pth(f("w.h5") + " " + f("o.pth") + " --group /model"), "w.h5", "no group '/model'",
                        tmp.path);
  expect_one_line_error(to_pth(f("nbt.h5") + " " + f("o.pth")), "nbt.h5", "'bn1.num_batches_tracked' holds 0 values",
                        tmp.path);
  expect_one_line_error(to_pth(f("str.h5") + " " + f("o.pth")), "str.h5", "'layer1.0.bn1.weight' holds", tmp.path);
  expect_one_line_error(to_pth(f("w.h5") + " " + f("outdir")), "outdir", "is a directory", tmp.path);
  EXPECT_FALSE(fs::exists(f("o.pth")));
  EXPECT_TRUE(fs::is_empty(tmp.path / "outdir"));
}

// Old model-zoo files (saved before PyTorch 0.4.1) have no *.num_batches_tracked counters, and
// PyTorch's load_state_dict accepts them: converted with the counters at 0 and one line saying so,
// the rest unchanged.
TEST(WeightsIo, StateDictWithoutBatchCountersConverts) {
  if (!have_torch_h5py()) GTEST_SKIP() << "Debian python3 with torch/torchvision/h5py not installed (tools/setup installs them)";
  TempDir tmp;
  ASSERT_EQ(run("/usr/bin/python3 -c \"import torch, torchvision, sys; torch.manual_seed(1); "
                "sd = torchvision.models.resnet18(num_classes=4).state_dict(); "
                "torch.save({k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}, sys.argv[1])\" " +
                tmp.file("old.pth"))
                .rc,
            0);
  const auto r = to_h5(tmp.file("old.pth") + " " + tmp.file("old.h5"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("no num_batches_tracked counters"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("set to 0"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << r.out;  // the note and "wrote ..."
  Weights w(4);
  int64_t nbt = -1;
  load_weights(tmp.file("old.h5"), w.spec, w.params.data(), w.buffers.data(), &nbt);
  EXPECT_EQ(nbt, 0);
  // Everything else as in the file: back to .pth and compared in PyTorch.
  ASSERT_EQ(to_pth(tmp.file("old.h5") + " " + tmp.file("back.pth")).rc, 0);
  EXPECT_EQ(run("/usr/bin/python3 -c \"import torch, sys; a = torch.load(sys.argv[1]); b = torch.load(sys.argv[2]); "
                "sys.exit(0 if all(torch.equal(a[k], b[k]) for k in a) and "
                "all(int(b[k]) == 0 for k in b if k.endswith('num_batches_tracked')) else 1)\" " +
                tmp.file("old.pth") + " " + tmp.file("back.pth"))
                .rc,
            0);
}

// A full volume: a 1 MiB tmpfs (needs root and mount rights, else skipped). Both files are ~45 MB.
TEST(WeightsIo, ConversionToolsOnAFullDiskFailCleanly) {
  if (!have_torch_h5py()) GTEST_SKIP() << "Debian python3 with torch/torchvision/h5py not installed (tools/setup installs them)";
  TempDir tmp;
  const fs::path mnt = tmp.path / "tiny";
  fs::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) GTEST_SKIP() << "cannot mount a tmpfs here";
  struct Unmount {
    fs::path p;
    ~Unmount() { umount(p.c_str()); }
  } unmount{mnt};
  ASSERT_EQ(run("/usr/bin/python3 -c \"import torch, torchvision, sys; "
                "torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), sys.argv[1])\" " +
                tmp.file("tv.pth"))
                .rc,
            0);
  Weights w = random_weights(5, 4);
  save_weights(tmp.file("w.h5"), w.spec, w.params.data(), w.buffers.data(), 0);
  const std::string h5 = (mnt / "w.h5").string(), pth = (mnt / "x.pth").string();
  expect_one_line_error(to_h5(tmp.file("tv.pth") + " " + h5), h5, "No space left on device", mnt);
  expect_one_line_error(to_pth(tmp.file("w.h5") + " " + pth), pth, "No space left on device", mnt);
  EXPECT_TRUE(fs::is_empty(mnt)) << "a full disk should leave neither the output nor its .tmp";
}

}  // namespace
