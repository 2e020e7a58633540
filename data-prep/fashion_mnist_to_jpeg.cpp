// fashion_mnist_to_jpeg: Debian's dataset-fashion-mnist (gzipped IDX) -> an ImageNet-style JPEG tree,
// so the quick start goes through pack_imagenet exactly as ImageNet does:
//   OUT/train/<class>/fmnist_train_NNNNN.JPEG   (class folders)
//   OUT/val/fmnist_val_NNNNN.JPEG + OUT/LOC_val_solution.csv   (Kaggle's flat val layout)
//   OUT/classes.txt   (class folder names in Fashion-MNIST's label order, for --class-index)
// Images stay 28x28 grayscale (quality 95 JPEG). Written under OUT.partial (removed on failure) and
// renamed when complete. OUT/.complete records the settings; a complete OUT made with the same
// settings is left alone, one made with others is refused (never deleted for the user).
#include <turbojpeg.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include <boost/program_options.hpp>

#include "ddp/core/check.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;

namespace {

const char* kClasses[10] = {"T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                            "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle_boot"};

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::vector<uint8_t> gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  DDP_CHECK(f, "cannot open '", path, "': ", std::strerror(errno), " (install dataset-fashion-mnist?)");
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
  int err = 0;
  // gzerror's text belongs to the gzFile: copy it before gzclose frees it.
  std::string msg = gzerror(f, &err);
  gzclose(f);
  if (msg.rfind(path + ": ", 0) == 0) msg.erase(0, path.size() + 2);  // zlib prefixes the path; we name it
  DDP_CHECK(n == 0 && err == Z_OK, "cannot decompress '", path, "': ", msg, " (truncated or damaged?)");
  return out;
}

struct Idx {
  int n = 0, rows = 0, cols = 0;
  std::vector<uint8_t> data;
};

Idx read_images(const std::string& path) {
  auto d = gunzip(path);
  DDP_CHECK(d.size() >= 16 && be32(d.data()) == 0x803, "'", path, "' is not an IDX image file");
  Idx r;
  r.n = static_cast<int>(be32(d.data() + 4));
  r.rows = static_cast<int>(be32(d.data() + 8));
  r.cols = static_cast<int>(be32(d.data() + 12));
  DDP_CHECK(d.size() == 16 + static_cast<size_t>(r.n) * r.rows * r.cols, "'", path, "' is truncated");
  r.data.assign(d.begin() + 16, d.end());
  return r;
}

std::vector<uint8_t> read_labels(const std::string& path) {
  auto d = gunzip(path);
  DDP_CHECK(d.size() >= 8 && be32(d.data()) == 0x801, "'", path, "' is not an IDX label file");
  const size_t n = be32(d.data() + 4);
  DDP_CHECK(d.size() == 8 + n, "'", path, "' is truncated");
  std::vector<uint8_t> l(d.begin() + 8, d.end());
  for (size_t i = 0; i < n; ++i) DDP_CHECK(l[i] < 10, "'", path, "': label ", int(l[i]), " at ", i, " is not 0..9");
  return l;
}

void write_file(const fs::path& p, const uint8_t* d, size_t n) {
  FILE* f = std::fopen(p.c_str(), "wb");
  DDP_CHECK(f, "cannot create '", p.string(), "': ", std::strerror(errno));
  size_t w = std::fwrite(d, 1, n, f);
  int e = errno;
  DDP_CHECK(std::fclose(f) == 0 && w == n, "cannot write '", p.string(), "': ", std::strerror(e ? e : errno),
            " (disk full?)");
}

struct Encoder {
  tjhandle h = tjInitCompress();
  ~Encoder() { tjDestroy(h); }
  std::vector<uint8_t> gray(const uint8_t* px, int w, int hgt, int quality) {
    unsigned char* buf = nullptr;
    unsigned long size = 0;
    DDP_CHECK(tjCompress2(h, px, w, 0, hgt, TJPF_GRAY, &buf, &size, TJSAMP_GRAY, quality, 0) == 0,
              "JPEG encoding failed: ", tjGetErrorStr2(h));
    std::vector<uint8_t> out(buf, buf + size);
    tjFree(buf);
    return out;
  }
};

// What OUT/.complete holds: the options that change what is written.
std::string settings_line(int limit_train, int limit_val, int quality) {
  return "--limit-train " + std::to_string(limit_train) + " --limit-val " + std::to_string(limit_val) +
         " --quality " + std::to_string(quality);
}

// Removes OUT.partial unless the conversion completed (renamed it away): a failed run leaves nothing.
struct PartialGuard {
  fs::path tmp;
  ~PartialGuard() {
    std::error_code ec;
    if (!tmp.empty()) fs::remove_all(tmp, ec);
  }
};

void write_text(const fs::path& p, const std::string& text) {
  write_file(p, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

}  // namespace

int main(int argc, char** argv) {
  std::string input = "/usr/share/datasets/fashion-mnist", output;
  int limit_train = 0, limit_val = 0, quality = 95;
  po::options_description d(
      "fashion_mnist_to_jpeg: write Fashion-MNIST as an ImageNet-style JPEG tree\n"
      "usage: fashion_mnist_to_jpeg --output DIR [options]\noptions");
  d.add_options()("help,h", "show this help")("input,i", po::value(&input)->default_value(input),
                                               "directory with the *-idx?-ubyte.gz files")(
      "output,o", po::value(&output)->required(), "output root (train/, val/, LOC_val_solution.csv, classes.txt)")(
      "limit-train", po::value(&limit_train)->default_value(0), "write only the first N training images (0: all)")(
      "limit-val", po::value(&limit_val)->default_value(0), "write only the first N test images (0: all)")(
      "quality", po::value(&quality)->default_value(95), "JPEG quality");
  try {
    po::variables_map vm;
    const po::parsed_options parsed = po::parse_command_line(argc, argv, d);
    // Boost sets aside words that belong to no flag as positional tokens, which store() drops:
    // "--splits train val" would pack train only and succeed. Refused, as train_resnet18 does.
    const auto stray = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!stray.empty())
      throw po::error("unexpected argument '" + stray.front() + "' (every setting is a --flag with one value)");
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << d << "\n";
      return 0;
    }
    po::notify(vm);
    DDP_CHECK(quality >= 1 && quality <= 100, "--quality must be in 1..100");
    // A negative limit would otherwise mean "all" (only > 0 limits), silently.
    DDP_CHECK(limit_train >= 0, "--limit-train must be >= 0 (0: all), got ", limit_train);
    DDP_CHECK(limit_val >= 0, "--limit-val must be >= 0 (0: all), got ", limit_val);
    const std::string settings = settings_line(limit_train, limit_val, quality);
    const fs::path out(output), marker = fs::path(output) / ".complete";
    if (fs::exists(marker)) {
      std::ifstream m(marker);
      std::string made;
      std::getline(m, made);
      // Markers of older versions hold "ok": their settings are unknown, so they match nothing.
      DDP_CHECK(made == settings, "'", output, "' holds a complete conversion made with ",
                made.rfind("--", 0) == 0 ? made : "unrecorded settings (an older fashion_mnist_to_jpeg)", ", not ",
                settings, "; delete it or choose another --output");
      std::cerr << "fashion_mnist_to_jpeg: " << output << " is already complete (" << settings
                << "), nothing to do\n";
      return 0;
    }
    DDP_CHECK(!fs::exists(out), "'", output, "' exists but is not a complete conversion (no .complete marker); ",
              "delete it and rerun");
    const fs::path tmp = output + ".partial";
    fs::remove_all(tmp);
    PartialGuard guard{tmp};
    fs::create_directories(tmp / "val");
    for (auto c : kClasses) fs::create_directories(tmp / "train" / c);
    Encoder enc;
    std::ofstream csv(tmp / "LOC_val_solution.csv");
    csv << "ImageId,PredictionString\n";
    for (int split = 0; split < 2; ++split) {
      const std::string pre = split == 0 ? "train" : "t10k";
      Idx im = read_images((fs::path(input) / (pre + "-images-idx3-ubyte.gz")).string());
      auto lab = read_labels((fs::path(input) / (pre + "-labels-idx1-ubyte.gz")).string());
      DDP_CHECK(static_cast<size_t>(im.n) == lab.size(), pre, ": ", im.n, " images but ", lab.size(), " labels");
      int n = im.n;
      const int limit = split == 0 ? limit_train : limit_val;
      if (limit > 0) n = std::min(n, limit);
      const size_t per = static_cast<size_t>(im.rows) * im.cols;
      for (int i = 0; i < n; ++i) {
        auto jpg = enc.gray(im.data.data() + i * per, im.cols, im.rows, quality);
        char name[64];
        if (split == 0) {
          std::snprintf(name, sizeof name, "fmnist_train_%05d.JPEG", i);
          write_file(tmp / "train" / kClasses[lab[static_cast<size_t>(i)]] / name, jpg.data(), jpg.size());
        } else {
          std::snprintf(name, sizeof name, "fmnist_val_%05d", i);
          write_file(tmp / "val" / (std::string(name) + ".JPEG"), jpg.data(), jpg.size());
          csv << name << "," << kClasses[lab[static_cast<size_t>(i)]] << " 0 0 " << im.cols - 1 << " " << im.rows - 1
              << "\n";
        }
      }
      std::cerr << "fashion_mnist_to_jpeg: " << (split == 0 ? "train" : "val") << ": " << n << " images\n";
    }
    csv.close();
    DDP_CHECK(csv, "cannot write '", (tmp / "LOC_val_solution.csv").string(), "' (disk full?)");
    std::string classes;
    for (auto c : kClasses) classes += std::string(c) + "\n";
    write_text(tmp / "classes.txt", classes);
    write_text(tmp / ".complete", settings + "\n");
    fs::rename(tmp, out);
    guard.tmp.clear();
    std::cerr << "fashion_mnist_to_jpeg: wrote " << output << "\n";
    return 0;
  } catch (const po::error& e) {
    std::cerr << "fashion_mnist_to_jpeg: " << e.what() << " (see --help)\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "fashion_mnist_to_jpeg: error: " << e.what() << "\n";
    return 1;
  }
}
