// Weights files: round trip, refusal of mismatched, foreign, truncated and non-HDF5 files with errors
// that name the tensor and the file, and the torchvision conversion tools in both directions
// (a .pth made by torchvision -> our file -> load/save in C++ -> .pth, compared in PyTorch).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
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

}  // namespace
