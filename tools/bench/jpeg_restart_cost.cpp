// What restart markers cost a full JPEG decode: libjpeg-turbo (2.1) switches its fast Huffman path
// off in files with a restart interval, and pack_imagenet writes one restart marker per MCU (so that
// crops decode only the intervals they cover, docs/perf/data.md). This times full decodes of the same
// images without and with markers (jpeg_add_restarts: the same DCT coefficients), alternating rounds,
// to bound what a marker-free crop path (keeping the fast path) could gain.
//
//   jpeg_restart_cost DIR [ROUNDS [REPEATS]]    DIR: JPEG files (searched recursively)
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "ddp/data/image.h"

int main(int argc, char** argv) {
  const char* usage = "usage: jpeg_restart_cost DIR [ROUNDS [REPEATS]]   (JPEGs under DIR; defaults 6 rounds, 10 repeats)\n";
  if (argc >= 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
    std::fputs(usage, stdout);
    return 0;
  }
  if (argc < 2 || argc > 4) {
    std::fputs(usage, stderr);
    return 2;
  }
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 6, repeats = argc > 3 ? std::atoi(argv[3]) : 10;
  if (rounds < 1 || repeats < 1) {
    std::fprintf(stderr, "jpeg_restart_cost: ROUNDS and REPEATS must be positive integers\n");
    return 2;
  }
  std::vector<std::vector<uint8_t>> plain, marked;
  try {
    for (const auto& e : std::filesystem::recursive_directory_iterator(argv[1])) {
      if (!e.is_regular_file()) continue;
      std::ifstream f(e.path(), std::ios::binary);
      std::vector<uint8_t> b((std::istreambuf_iterator<char>(f)), {});
      if (ddp::data::sniff_format(b.data(), b.size()) != ddp::data::ImageFormat::Jpeg) continue;
      marked.push_back(ddp::data::jpeg_add_restarts(b.data(), b.size(), e.path().string()));
      plain.push_back(std::move(b));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "jpeg_restart_cost: %s\n", e.what());
    return 1;
  }
  if (plain.empty()) {
    std::fprintf(stderr, "jpeg_restart_cost: no JPEG files under '%s'\n", argv[1]);
    return 1;
  }
  ddp::data::Decoded d;
  // This thread's CPU time, not the wall clock: on a shared machine other processes' time would
  // otherwise land on whichever side ran beside them.
  auto cpu_ms = [] {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) * 1e-6;
  };
  auto time_set = [&](const std::vector<std::vector<uint8_t>>& set) {
    const double t0 = cpu_ms();
    for (int r = 0; r < repeats; ++r)
      for (const auto& b : set) ddp::data::decode_jpeg(b.data(), b.size(), "bench", {}, 0, 0, 0, false, d);
    return (cpu_ms() - t0) / (static_cast<double>(repeats) * static_cast<double>(set.size()));
  };
  time_set(plain);  // warm-up: page cache, decompressor, allocator
  std::vector<double> ratios;
  for (int r = 0; r < rounds; ++r) {
    // alternate which goes first, so a drift in machine load does not favour one side
    double a, b;
    if (r % 2 == 0) a = time_set(plain), b = time_set(marked);
    else b = time_set(marked), a = time_set(plain);
    ratios.push_back(b / a);
    std::printf("round %d: plain %.3f ms/img, restart markers %.3f ms/img (CPU time), ratio %.3f\n", r + 1, a, b, b / a);
  }
  std::sort(ratios.begin(), ratios.end());
  std::printf("%zu images; median ratio (markers / plain) %.3f\n", plain.size(), ratios[ratios.size() / 2]);
  return 0;
}
