// Allreduce bandwidth of the MPI communicator, reported as nccl-tests does:
//   algbw = bytes / time, busbw = algbw * 2 (n - 1) / n  (what each link carries in a ring).
// Run under mpirun (tools/bench/allreduce.sh):
//   ddp_allreduce_bench [--min-bytes 1024] [--max-bytes 67108864] [--iters 20] [--warmup 3] [--timeout 60]
// Prints two lines per size on rank 0, ours ("ddp_comm": allreduce_avg_async + wait_all) and the
// peer measured in the same job, interleaved ("mpi_allreduce": a plain blocking MPI_Allreduce):
// "size_bytes=... time_us=... algbw_GBps=... busbw_GBps=...".
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <mpi.h>

#include "ddp/comm/communicator.h"
#include "ddp/comm/dist.h"
#include "ddp/core/check.h"
#include "ddp/core/log.h"

int main(int argc, char** argv) {
  size_t min_bytes = 1024, max_bytes = size_t(64) << 20;
  int iters = 20, warmup = 3;
  double timeout = 60;
  bool raw_only = false;  // --raw 1: only the peer (plain blocking MPI_Allreduce)
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--min-bytes") min_bytes = std::stoull(argv[i + 1]);
    else if (k == "--max-bytes") max_bytes = std::stoull(argv[i + 1]);
    else if (k == "--iters") iters = std::stoi(argv[i + 1]);
    else if (k == "--warmup") warmup = std::stoi(argv[i + 1]);
    else if (k == "--timeout") timeout = std::stod(argv[i + 1]);
    else if (k == "--raw") raw_only = std::stoi(argv[i + 1]) != 0;
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  auto env = ddp::comm::init_distributed(&argc, &argv);
  try {
    ddp::comm::CommOptions opt;
    opt.timeout_s = timeout;
    auto c = ddp::comm::make_mpi_communicator(env, opt);
    const int n = c->size();
    std::vector<float> buf(max_bytes / sizeof(float) + 1, 1.0f);
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
      size_t count = bytes / sizeof(float);
      // Ours and the peer alternate iteration by iteration, so load drift hits both alike.
      std::vector<double> t[2];
      for (int it = 0; it < warmup + iters; ++it) {
        for (int peer = 0; peer < 2; ++peer) {
          if (peer == 0 && raw_only) continue;
          c->barrier();
          auto t0 = std::chrono::steady_clock::now();
          if (peer) {
            MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
          } else {
            c->allreduce_avg_async(buf.data(), count, nullptr);
            c->wait_all();
          }
          double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (it >= warmup) t[peer].push_back(dt);
        }
      }
      for (int peer = 0; peer < 2; ++peer) {
        if (t[peer].empty()) continue;
        std::sort(t[peer].begin(), t[peer].end());
        double med = t[peer][t[peer].size() / 2];
        c->allreduce_max(&med, 1);  // the slowest rank's median
        double algbw = bytes / med / 1e9;
        double busbw = algbw * 2.0 * (n - 1) / n;
        if (env.rank == 0)
          std::printf("%s ranks=%d size_bytes=%zu time_us=%.1f algbw_GBps=%.3f busbw_GBps=%.3f busbw_Gbit=%.2f\n",
                      peer ? "mpi_allreduce" : "ddp_comm", n, bytes, med * 1e6, algbw, busbw, busbw * 8);
      }
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    ddp::comm::abort_job(e.what());
  }
  ddp::comm::finalize_distributed();
  return 0;
}
