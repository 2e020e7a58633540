// Times ddp::cpu convolutions (forward, data gradient, weight gradient) on ResNet18's conv shapes.
// usage: ddp_cpu_ops_bench SIZE BATCH [THREADS [REPS]]
// Prints one line per distinct shape: name count fwd_ms dgrad_ms wgrad_ms (median of REPS), then the
// whole-network conv total (each shape times its count). tools/bench/cpu_ops.py compares with PyTorch.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <ctime>
#include <vector>

#include "ddp/backend/cpu/ops.h"

namespace {
struct Entry {
  std::string name;
  int count;
  ddp::cpu::Conv2dShape p;
};

double clock_ms(clockid_t c) {
  timespec t;
  clock_gettime(c, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

// BENCH_CLOCK=cpu measures process CPU time instead of wall time: on a shared, loaded machine that is
// the cleaner measure of single-threaded work (it excludes time spent descheduled).
template <class F>
double median_ms(int reps, F&& f) {
  static const clockid_t clk =
      std::getenv("BENCH_CLOCK") && std::string(std::getenv("BENCH_CLOCK")) == "cpu" ? CLOCK_PROCESS_CPUTIME_ID
                                                                                     : CLOCK_MONOTONIC;
  f();  // warm-up (scratch allocation, page faults)
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double a = clock_ms(clk);
    f();
    t.push_back(clock_ms(clk) - a);
  }
  std::sort(t.begin(), t.end());
  return t.front();  // minimum: the machine is shared, so the fastest run is the least disturbed
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SIZE BATCH [THREADS [REPS]]\n", argv[0]);
    return 2;
  }
  const int size = std::atoi(argv[1]), batch = std::atoi(argv[2]);
  const int threads = argc > 3 ? std::atoi(argv[3]) : 0;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 5;
  ddp::cpu::set_num_threads(threads);
  auto out = [](int s, int r, int st, int pd) { return (s + 2 * pd - r) / st + 1; };
  const int s1 = out(size, 7, 2, 3), s2 = out(s1, 3, 2, 1);  // after conv1, after maxpool
  const int s3 = out(s2, 3, 2, 1), s4 = out(s3, 3, 2, 1), s5 = out(s4, 3, 2, 1);
  std::vector<Entry> e = {
      {"conv1", 1, {batch, 3, size, size, 64, 7, 7, 2, 3}},
      {"l1.3x3", 4, {batch, 64, s2, s2, 64, 3, 3, 1, 1}},
      {"l2.0.3x3s2", 1, {batch, 64, s2, s2, 128, 3, 3, 2, 1}},
      {"l2.3x3", 3, {batch, 128, s3, s3, 128, 3, 3, 1, 1}},
      {"l2.ds", 1, {batch, 64, s2, s2, 128, 1, 1, 2, 0}},
      {"l3.0.3x3s2", 1, {batch, 128, s3, s3, 256, 3, 3, 2, 1}},
      {"l3.3x3", 3, {batch, 256, s4, s4, 256, 3, 3, 1, 1}},
      {"l3.ds", 1, {batch, 128, s3, s3, 256, 1, 1, 2, 0}},
      {"l4.0.3x3s2", 1, {batch, 256, s4, s4, 512, 3, 3, 2, 1}},
      {"l4.3x3", 3, {batch, 512, s5, s5, 512, 3, 3, 1, 1}},
      {"l4.ds", 1, {batch, 256, s4, s4, 512, 1, 1, 2, 0}},
  };
  std::mt19937 g(1);
  std::normal_distribution<float> d;
  double tf = 0, td = 0, tw = 0;
  std::printf("# size %d batch %d threads %d reps %d blas %s\n", size, batch, ddp::cpu::num_threads(), reps,
              ddp::cpu::blas_core());
  std::printf("%-12s %5s %10s %10s %10s\n", "shape", "count", "fwd_ms", "dgrad_ms", "wgrad_ms");
  // BENCH_ONLY=name times one shape (tools/bench/cpu_ops.py interleaves shapes with PyTorch).
  const char* only = std::getenv("BENCH_ONLY");
  for (const auto& en : e) {
    if (only != nullptr && en.name != only) continue;
    const auto& p = en.p;
    std::vector<float> x(static_cast<size_t>(p.n) * p.c * p.h * p.w), w(static_cast<size_t>(p.k) * p.c * p.r * p.s),
        y(static_cast<size_t>(p.n) * p.k * p.out_h() * p.out_w()), dx(x.size()), dw(w.size());
    for (auto& v : x) v = d(g);
    for (auto& v : w) v = d(g) * 0.05f;
    for (auto& v : y) v = d(g);
    const double f = median_ms(reps, [&] { ddp::cpu::conv2d_forward(p, x.data(), w.data(), y.data()); });
    const double dd = median_ms(reps, [&] { ddp::cpu::conv2d_backward_data(p, y.data(), w.data(), dx.data()); });
    const double ww = median_ms(reps, [&] { ddp::cpu::conv2d_backward_weight(p, x.data(), y.data(), dw.data()); });
    std::printf("%-12s %5d %10.3f %10.3f %10.3f\n", en.name.c_str(), en.count, f, dd, ww);
    tf += f * en.count;
    td += dd * en.count;
    tw += ww * en.count;
  }
  std::printf("%-12s %5s %10.3f %10.3f %10.3f\n", "total", "", tf, td, tw);
  return 0;
}
