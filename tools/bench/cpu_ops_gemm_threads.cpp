// Which way to use two cores for a GEMM: OpenBLAS's own threads (called from serial code), or our
// OpenMP threads each calling single-threaded OpenBLAS on half of the columns (what ddp::cpu does).
// usage: ddp_cpu_ops_gemm_threads M N K [REPS]   (prints the minimum wall time of each way)
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ddp/backend/cpu/ops.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s M N K [REPS]\n", argv[0]);
    return 2;
  }
  const int m = std::atoi(argv[1]), n = std::atoi(argv[2]), k = std::atoi(argv[3]);
  const int reps = argc > 4 ? std::atoi(argv[4]) : 15;
  std::vector<float> a(static_cast<size_t>(m) * k), b(static_cast<size_t>(k) * n), c(static_cast<size_t>(m) * n);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 1e-3f * static_cast<float>(i % 7);
  for (size_t i = 0; i < b.size(); ++i) b[i] = 1e-3f * static_cast<float>(i % 5);
  double best[3] = {1e30, 1e30, 1e30};
  for (int rep = 0; rep < reps; ++rep)
    for (int mode = 0; mode < 3; ++mode) {  // interleaved, so load bursts hit every mode
      const auto t0 = std::chrono::steady_clock::now();
      if (mode == 0) {
        openblas_set_num_threads(2);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.f, a.data(), k, b.data(), n, 0.f,
                    c.data(), n);
      } else if (mode == 1) {
        openblas_set_num_threads(1);
#pragma omp parallel num_threads(2)
        {
          const int t = omp_get_thread_num(), half = n / 2, lo = t * half, hi = t ? n : half;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hi - lo, k, 1.f, a.data(), k, b.data() + lo, n,
                      0.f, c.data() + lo, n);
        }
      } else {
        openblas_set_num_threads(1);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.f, a.data(), k, b.data(), n, 0.f,
                    c.data(), n);
      }
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      best[mode] = std::min(best[mode], ms);
    }
  std::printf("%dx%dx%d (blas %s): openblas 2 threads %.2f ms, omp split 2 x 1 thread %.2f ms, 1 thread %.2f ms\n",
              m, n, k, ddp::cpu::blas_core(), best[0], best[1], best[2]);
  return 0;
}
