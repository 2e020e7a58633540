// Runs the host collectives (ddp/comm/host_collectives.h) under mpirun for test_comm_host.
//
//   host_coll_worker --check [--chunk BYTES] [--seed S]
//     every collective on pseudo-random payloads; each rank recomputes what every other rank sent
//     (a function of seed, rank and index) and compares byte for byte. Prints
//     "host_coll ok rank=R checks=N", or "MISMATCH ..." and exits 1.
//   host_coll_worker --absent RANK --op bcast|string|vector|allreduce|gather|scatter --timeout T
//     rank RANK never enters the collective (it sleeps T + 60 s, then exits 3); the others must end
//     the job within T through abort_job, naming the collective.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ddp/comm/dist.h"
#include "ddp/comm/host_collectives.h"
#include "ddp/core/check.h"

using namespace ddp;

namespace {

uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// Byte i of what rank r sends in collective `tag`.
uint8_t byte_of(uint64_t seed, int tag, int r, size_t i) {
  return static_cast<uint8_t>(mix(seed ^ (uint64_t(tag) << 56) ^ (uint64_t(r) << 40) ^ i) >> 24);
}
std::vector<uint8_t> payload(uint64_t seed, int tag, int r, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = byte_of(seed, tag, r, i);
  return v;
}
// Exact in double: multiples of 1/1024 below 2^20, so sums over a few ranks do not depend on order.
double value_of(uint64_t seed, int tag, int r, int i) {
  return (static_cast<double>(mix(seed ^ (uint64_t(tag) << 56) ^ (uint64_t(r) << 40) ^ uint64_t(i)) >> 34) - 0x1.0p29) /
         1024.0;
}

int failures = 0, checks = 0;
int g_rank = 0, g_world = 1;

void expect_bytes(const void* got, const std::vector<uint8_t>& want, const std::string& what) {
  ++checks;
  const auto* g = static_cast<const uint8_t*>(got);
  for (size_t i = 0; i < want.size(); ++i) {
    if (g[i] != want[i]) {
      std::printf("MISMATCH rank=%d in %s at byte %zu of %zu: got %d, want %d\n", g_rank, what.c_str(), i,
                  want.size(), g[i], want[i]);
      ++failures;
      return;
    }
  }
}

void check_all(uint64_t seed, size_t chunk) {
  constexpr double T = 60;
  const int last = g_world - 1;
  // Ragged sizes: with a small chunk several pieces and a shorter last one; with the default one piece.
  const size_t nb = std::min(chunk * 3, size_t(3) << 20) + 1 + static_cast<size_t>(seed % 97);

  for (int root : {0, last}) {  // broadcast_bytes from two roots
    auto buf = g_rank == root ? payload(seed, 1, root, nb) : payload(seed, 2, g_rank, nb);
    comm::broadcast_bytes(buf.data(), nb, root, T, "the test's byte broadcast", chunk);
    expect_bytes(buf.data(), payload(seed, 1, root, nb), "broadcast_bytes from rank " + std::to_string(root));
  }
  {  // broadcast_string: binary contents (NUL bytes too), the others start longer and shorter
    auto bytes = payload(seed, 3, last, 1000 + static_cast<size_t>(seed % 13));
    bytes[7] = 0;
    const std::string want(bytes.begin(), bytes.end());
    std::string s = g_rank == last ? want : std::string(g_rank % 2 ? 5000 : 3, 'x');
    comm::broadcast_string(s, last, T, "the test's string broadcast");
    ++checks;
    if (s != want) {
      std::printf("MISMATCH rank=%d in broadcast_string: got %zu bytes, want %zu\n", g_rank, s.size(), want.size());
      ++failures;
    }
  }
  {  // broadcast_vector of floats and of int64
    const auto raw = payload(seed, 4, 0, 4 * 777);
    std::vector<float> want(777);
    for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<float>(value_of(seed, 4, 0, static_cast<int>(i)));
    std::vector<float> v = g_rank == 0 ? want : std::vector<float>(3, -1.0f);
    comm::broadcast_vector(v, 0, T, "the test's vector broadcast");
    ++checks;
    if (v != want) {
      std::printf("MISMATCH rank=%d in broadcast_vector<float>: %zu elements, want %zu\n", g_rank, v.size(), want.size());
      ++failures;
    }
    std::vector<int64_t> wi(31);
    for (size_t i = 0; i < wi.size(); ++i) wi[i] = static_cast<int64_t>(mix(seed + 99 + i));
    std::vector<int64_t> vi = g_rank == 0 ? wi : std::vector<int64_t>{};
    comm::broadcast_vector(vi, 0, T, "the test's vector broadcast");
    ++checks;
    if (vi != wi) {
      std::printf("MISMATCH rank=%d in broadcast_vector<int64_t>\n", g_rank);
      ++failures;
    }
  }
  {  // allreduce min / max / sum of int, int64 and double
    constexpr int n = 5;
    int tag = 10;
    for (auto op : {comm::ReduceOp::Min, comm::ReduceOp::Max, comm::ReduceOp::Sum}) {
      auto reduce = [&](auto f) {  // what the reduction over every rank must give for element i
        using V = decltype(f(0, 0));
        std::vector<V> want(n);
        for (int i = 0; i < n; ++i) {
          want[i] = f(0, i);
          for (int r = 1; r < g_world; ++r) {
            const V x = f(r, i);
            want[i] = op == comm::ReduceOp::Min ? std::min(want[i], x) : op == comm::ReduceOp::Max ? std::max(want[i], x)
                                                                                                   : want[i] + x;
          }
        }
        std::vector<V> got(n);
        for (int i = 0; i < n; ++i) got[i] = f(g_rank, i);
        comm::allreduce(got.data(), n, op, T, "the test's allreduce");
        ++checks;
        if (got != want) {
          std::printf("MISMATCH rank=%d in allreduce (op %d, %zu-byte values)\n", g_rank, static_cast<int>(op), sizeof(V));
          ++failures;
        }
      };
      reduce([&](int r, int i) { return static_cast<int>(mix(seed + tag + r * 131 + i) % 2000001) - 1000000; });
      reduce([&](int r, int i) { return static_cast<int64_t>(mix(seed + tag + r * 131 + i) >> 3) - (int64_t(1) << 59); });
      reduce([&](int r, int i) { return value_of(seed, tag, r, i); });
      ++tag;
    }
  }
  {  // gather of byte blocks and of float blocks to rank 0
    auto mine = payload(seed, 20, g_rank, nb);
    std::vector<uint8_t> all(g_rank == 0 ? nb * g_world : 0);
    std::fill(all.begin(), all.end(), uint8_t{0xA5});
    comm::gather_bytes_to_root(mine.data(), nb, g_rank == 0 ? all.data() : nullptr, T, "the test's gather", chunk);
    if (g_rank == 0) {
      for (int r = 0; r < g_world; ++r) {
        std::vector<uint8_t> block(all.begin() + r * nb, all.begin() + (r + 1) * nb);
        expect_bytes(block.data(), payload(seed, 20, r, nb), "gather_bytes_to_root, block of rank " + std::to_string(r));
      }
    }
    std::vector<float> f(333);
    for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(value_of(seed, 21, g_rank, static_cast<int>(i)));
    std::vector<float> fall(g_rank == 0 ? f.size() * g_world : 0, -7.0f);
    comm::gather_to_root(f.data(), f.size(), fall.data(), T, "the test's float gather");
    if (g_rank == 0) {
      ++checks;
      for (int r = 0; r < g_world; ++r)
        for (size_t i = 0; i < f.size(); ++i)
          if (fall[r * f.size() + i] != static_cast<float>(value_of(seed, 21, r, static_cast<int>(i)))) {
            std::printf("MISMATCH rank=0 in gather_to_root<float>: rank %d element %zu\n", r, i);
            ++failures;
            r = g_world;
            break;
          }
    }
  }
  {  // scatter of byte blocks and of float blocks from rank 0
    std::vector<uint8_t> all;
    if (g_rank == 0)
      for (int r = 0; r < g_world; ++r) {
        auto b = payload(seed, 30, r, nb);
        all.insert(all.end(), b.begin(), b.end());
      }
    std::vector<uint8_t> mine(nb, 0x5A);
    comm::scatter_bytes_from_root(g_rank == 0 ? all.data() : nullptr, mine.data(), nb, T, "the test's scatter", chunk);
    expect_bytes(mine.data(), payload(seed, 30, g_rank, nb), "scatter_bytes_from_root");
    std::vector<float> fall;
    if (g_rank == 0)
      for (int r = 0; r < g_world; ++r)
        for (int i = 0; i < 257; ++i) fall.push_back(static_cast<float>(value_of(seed, 31, r, i)));
    std::vector<float> f(257, -3.0f);
    comm::scatter_from_root(fall.data(), f.data(), f.size(), T, "the test's float scatter");
    ++checks;
    for (int i = 0; i < 257; ++i)
      if (f[i] != static_cast<float>(value_of(seed, 31, g_rank, i))) {
        std::printf("MISMATCH rank=%d in scatter_from_root<float> at element %d\n", g_rank, i);
        ++failures;
        break;
      }
  }
}

// One collective, entered by every rank but `absent`.
void run_op(const std::string& op, double timeout) {
  if (op == "bcast") {
    std::vector<uint8_t> b(4096, 1);
    comm::broadcast_bytes(b.data(), b.size(), 0, timeout, "the test's byte broadcast from rank 0");
  } else if (op == "string") {
    std::string s = "x";
    comm::broadcast_string(s, 0, timeout, "the test's string broadcast from rank 0");
  } else if (op == "vector") {
    std::vector<float> v(10, 1.0f);
    comm::broadcast_vector(v, 0, timeout, "the test's vector broadcast from rank 0");
  } else if (op == "allreduce") {
    double v[3] = {1, 2, 3};
    comm::allreduce(v, 3, comm::ReduceOp::Max, timeout, "the test's allreduce");
  } else if (op == "gather") {
    std::vector<float> mine(100, 1.0f), all(100 * static_cast<size_t>(g_world));
    comm::gather_to_root(mine.data(), mine.size(), all.data(), timeout, "the test's gather to rank 0");
  } else if (op == "scatter") {
    std::vector<float> all(100 * static_cast<size_t>(g_world), 1.0f), mine(100);
    comm::scatter_from_root(all.data(), mine.data(), mine.size(), timeout, "the test's scatter from rank 0");
  } else {
    DDP_FAIL("unknown --op ", op);
  }
}

}  // namespace

int main(int argc, char** argv) {
  auto env = comm::init_distributed(&argc, &argv);
  g_rank = env.rank;
  g_world = env.world;
  bool check = false;
  size_t chunk = comm::kHostChunkBytes;
  uint64_t seed = 20240611;
  int absent = -1;
  double timeout = 60;
  std::string op;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      DDP_CHECK(i + 1 < argc, "flag ", k, " needs a value");
      return argv[++i];
    };
    if (k == "--check") check = true;
    else if (k == "--chunk") chunk = std::stoull(val());
    else if (k == "--seed") seed = std::stoull(val());
    else if (k == "--absent") absent = std::stoi(val());
    else if (k == "--op") op = val();
    else if (k == "--timeout") timeout = std::stod(val());
    else DDP_FAIL("unknown flag ", k);
  }
  if (check) {
    check_all(seed, chunk);
    std::printf("host_coll %s rank=%d checks=%d\n", failures ? "FAILED" : "ok", g_rank, checks);
    std::fflush(stdout);
    comm::finalize_distributed();
    return failures ? 1 : 0;
  }
  if (g_rank == absent) {
    std::this_thread::sleep_for(std::chrono::duration<double>(timeout + 60));
    std::printf("rank %d: still here after %g s: nobody ended the job\n", g_rank, timeout + 60);
    std::fflush(stdout);
    _exit(3);
  }
  run_op(op, timeout);
  std::printf("rank %d: the collective completed without rank %d\n", g_rank, absent);
  std::fflush(stdout);
  comm::finalize_distributed();
  return 0;
}
