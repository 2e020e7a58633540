// make_bench_jpegs: an ImageNet-style tree of natural-looking JPEGs for data-path benchmarks on hosts
// without Python imaging (the GPU host of tools/gpu_check.sh), the C++ twin of
// tools/bench/loader_make_jpegs.py:
//   OUT/train/cNNNN/img_NNNNNNNN.JPEG   (image i in class i % classes)
// Each image is a sum of smooth random fields at 7 octaves (3 .. 192 cells across, amplitude x0.6 per
// octave: 1/f-like, as photographs are), bicubic-upsampled, stretched to [10, 245], plus fine
// Gaussian grain (sigma 12), JPEG quality 90: about 500x375 (+-15% per side) and 70-90 KB, like an
// average ImageNet training image. Image i depends only on (seed, i), not on the thread count.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ddp/core/check.h"
#include "ddp/core/rng.h"
#include "ddp/data/image.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string out;
  int64_t count = 0;
  int classes = 1000, width = 500, height = 375, quality = 90, threads = 0;
  uint64_t seed = 2024;
};

void usage(FILE* f) {
  std::fprintf(f,
               "usage: make_bench_jpegs OUT N [--classes C] [--width W] [--height H] [--quality Q] [--threads T] [--seed S]\n"
               "  writes OUT/train/cNNNN/img_NNNNNNNN.JPEG: N natural-looking JPEGs, image i in class i %% C\n"
               "  defaults: C 1000, about 500x375 (each side +-15%%), quality 90, T all cores, S 2024\n"
               "  OUT must be new or empty: files of an earlier, larger run would otherwise stay beside the new ones\n");
}

int64_t parse_int(const std::string& flag, const char* v, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  DDP_CHECK(end && *end == '\0' && errno == 0 && x >= lo && x <= hi, "make_bench_jpegs: ", flag, " wants a whole number in [",
            lo, ", ", hi, "], got '", v, "'");
  return x;
}

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> const char* {
      DDP_CHECK(i + 1 < argc, "make_bench_jpegs: ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--classes") o.classes = static_cast<int>(parse_int(a, val(), 1, 100000));
    else if (a == "--width") o.width = static_cast<int>(parse_int(a, val(), 16, 8192));
    else if (a == "--height") o.height = static_cast<int>(parse_int(a, val(), 16, 8192));
    else if (a == "--quality") o.quality = static_cast<int>(parse_int(a, val(), 1, 100));
    else if (a == "--threads") o.threads = static_cast<int>(parse_int(a, val(), 0, 1024));
    else if (a == "--seed") o.seed = static_cast<uint64_t>(parse_int(a, val(), 0, INT64_MAX));
    else if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else if (!a.empty() && a[0] == '-') {
      DDP_FAIL("make_bench_jpegs: unknown option '", a, "' (see --help)");
    } else {
      pos.push_back(a);
    }
  }
  DDP_CHECK(pos.size() == 2, "make_bench_jpegs: wants OUT and N (see --help), got ", pos.size(), " positional argument(s)");
  o.out = pos[0];
  o.count = parse_int("N", pos[1].c_str(), 1, 100000000);
  // Never mix with (or delete) what is there: a smaller N into an earlier tree kept the old images.
  std::error_code ec;
  if (fs::exists(o.out, ec)) {
    DDP_CHECK(fs::is_directory(o.out, ec), "make_bench_jpegs: OUT '", o.out, "' exists and is not a directory");
    DDP_CHECK(fs::is_empty(o.out, ec) && !ec, "make_bench_jpegs: OUT '", o.out,
              "' is not empty; give a new or empty folder (remove the old images first)");
  }
  return o;
}

// Keys' cubic convolution kernel with a = -0.5, as PIL's BICUBIC filter.
float cubic(float x) {
  constexpr float a = -0.5f;
  x = std::fabs(x);
  if (x < 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  if (x < 2.0f) return (((x - 5.0f) * x + 8.0f) * x - 4.0f) * a;
  return 0.0f;
}

// For each of `dst` output positions: the 4 source taps and weights of an upsampling from `src`
// samples (pixel centres aligned as PIL's resize does; taps clamped at the edges).
struct Taps {
  std::vector<int> idx;     // dst x 4
  std::vector<float> wt;    // dst x 4
};
Taps make_taps(int src, int dst) {
  Taps t;
  t.idx.resize(static_cast<size_t>(dst) * 4);
  t.wt.resize(static_cast<size_t>(dst) * 4);
  const float scale = static_cast<float>(src) / static_cast<float>(dst);
  for (int x = 0; x < dst; ++x) {
    const float s = (static_cast<float>(x) + 0.5f) * scale - 0.5f;
    const int i0 = static_cast<int>(std::floor(s)) - 1;
    float sum = 0.0f;
    for (int k = 0; k < 4; ++k) {
      const int i = i0 + k;
      const float w = cubic(s - static_cast<float>(i));
      t.idx[x * 4 + k] = std::clamp(i, 0, src - 1);
      t.wt[x * 4 + k] = w;
      sum += w;
    }
    for (int k = 0; k < 4; ++k) t.wt[x * 4 + k] /= sum;
  }
  return t;
}

// Image i: RGB pixels of a random size around (width, height).
std::vector<uint8_t> make_image(const Options& o, int64_t i, int& w, int& h) {
  ddp::Rng rng(o.seed, ddp::rng_stream::kSynthetic, static_cast<uint64_t>(i) << 32);
  w = std::max(16, static_cast<int>(static_cast<float>(o.width) * rng.uniform(0.85f, 1.15f)));
  h = std::max(16, static_cast<int>(static_cast<float>(o.height) * rng.uniform(0.85f, 1.15f)));
  const size_t n = static_cast<size_t>(w) * h * 3;
  std::vector<float> acc(n, 0.0f), rows;
  float amp = 1.0f;
  for (int cells : {3, 6, 12, 24, 48, 96, 192}) {
    const int gw = cells + 2, gh = cells * h / w + 2;
    std::vector<float> grid(static_cast<size_t>(gw) * gh * 3);
    for (auto& v : grid) v = rng.uniform(-1.0f, 1.0f);
    const Taps tx = make_taps(gw, w), ty = make_taps(gh, h);
    // Horizontal pass: every grid row to full width; then vertical into the accumulator.
    rows.assign(static_cast<size_t>(gh) * w * 3, 0.0f);
    for (int gy = 0; gy < gh; ++gy)
      for (int x = 0; x < w; ++x)
        for (int k = 0; k < 4; ++k) {
          const float* g = &grid[(static_cast<size_t>(gy) * gw + tx.idx[x * 4 + k]) * 3];
          float* r = &rows[(static_cast<size_t>(gy) * w + x) * 3];
          const float wt = tx.wt[x * 4 + k];
          r[0] += wt * g[0];
          r[1] += wt * g[1];
          r[2] += wt * g[2];
        }
    for (int y = 0; y < h; ++y)
      for (int k = 0; k < 4; ++k) {
        const float wt = amp * ty.wt[y * 4 + k];
        const float* r = &rows[static_cast<size_t>(ty.idx[y * 4 + k]) * w * 3];
        float* a = &acc[static_cast<size_t>(y) * w * 3];
        for (int j = 0; j < w * 3; ++j) a[j] += wt * r[j];
      }
    amp *= 0.6f;
  }
  const auto [lo, hi] = std::minmax_element(acc.begin(), acc.end());
  const float mn = *lo, scale = 235.0f / (*hi - mn + 1e-6f);
  std::vector<uint8_t> px(n);
  auto put = [&](size_t j, float grain) {
    px[j] = static_cast<uint8_t>(std::clamp(std::lround((acc[j] - mn) * scale + 10.0f + grain), 0L, 255L));
  };
  for (size_t j = 0; j < n; j += 2) {
    // Box-Muller, both values of each pair (half the transcendental calls of Rng::normal).
    const float u1 = (static_cast<float>(rng.next_u32() >> 8) + 1.0f) * (1.0f / 16777217.0f);  // (0, 1]
    const float r = 12.0f * std::sqrt(-2.0f * std::log(u1)), t = 6.2831853f * rng.uniform();
    put(j, r * std::cos(t));
    if (j + 1 < n) put(j + 1, r * std::sin(t));
  }
  return px;
}

std::string class_dir(const Options& o, int64_t i) {
  char name[32];
  std::snprintf(name, sizeof name, "c%04d", static_cast<int>(i % o.classes));
  return (fs::path(o.out) / "train" / name).string();
}

int run(const Options& o) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int c = 0; c < std::min<int64_t>(o.classes, o.count); ++c) {
    std::error_code ec;
    const std::string d = class_dir(o, c);
    fs::create_directories(d, ec);
    DDP_CHECK(!ec, "make_bench_jpegs: cannot create directory '", d, "': ", ec.message());
  }
  int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<int64_t>(threads, o.count));
  std::atomic<int64_t> next{0}, bytes{0}, pixels{0};
  std::atomic<bool> failed{false};
  std::string first_error;
  std::mutex error_mu;
  auto worker = [&] {
    try {
      for (int64_t i; !failed && (i = next++) < o.count;) {
        int w = 0, h = 0;
        const std::vector<uint8_t> px = make_image(o, i, w, h);
        const std::vector<uint8_t> jpg = ddp::data::encode_jpeg(px.data(), w, h, o.quality);
        char name[40];
        std::snprintf(name, sizeof name, "img_%08lld.JPEG", static_cast<long long>(i));
        const std::string path = (fs::path(class_dir(o, i)) / name).string();
        std::ofstream f(path, std::ios::binary | std::ios::trunc);
        f.write(reinterpret_cast<const char*>(jpg.data()), static_cast<std::streamsize>(jpg.size()));
        f.close();
        DDP_CHECK(f.good(), "make_bench_jpegs: cannot write '", path, "' (", std::strerror(errno), ")");
        bytes += static_cast<int64_t>(jpg.size());
        pixels += static_cast<int64_t>(w) * h;
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!failed.exchange(true)) first_error = e.what();
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  DDP_CHECK(!failed, first_error);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double n = static_cast<double>(o.count);
  std::printf("make_bench_jpegs: %lld JPEGs in %d classes under %s/train, mean %.0f KB, mean %.0f kpixels, %.1f s (%d threads)\n",
              static_cast<long long>(o.count), static_cast<int>(std::min<int64_t>(o.classes, o.count)), o.out.c_str(),
              static_cast<double>(bytes) / n / 1024.0, static_cast<double>(pixels) / n / 1000.0, secs, threads);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    usage(stderr);
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_bench_jpegs: error: %s\n", e.what());
    return 1;
  }
}
