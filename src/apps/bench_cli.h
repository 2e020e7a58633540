// Command-line plumbing shared by the benchmark drivers (bench_cuda_train, bench_cuda_conv): a bad
// argument is one line on stderr and exit 2 ("error: PROGRAM: ... (see --help)", found before any GPU
// work), any other failure one line and exit 1, as train_resnet18 and gpu_check.sh do.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "ddp/core/str.h"

namespace ddp::bench {

struct BadArgs : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... T>
[[noreturn]] void bad_args(const T&... parts) {
  throw BadArgs(str(parts...));
}

// `v` as a whole number in [min, max], or BadArgs naming `flag`, the range and `v`.
inline int to_int(const std::string& flag, const std::string& v, long min, long max) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < min || x > max)
    bad_args(flag, " wants a whole number from ", min, " to ", max, ", got '", v, "'");
  return static_cast<int>(x);
}

// body()'s exit status; its BadArgs exit 2, any other exception 1, each said in one "error: " line.
template <class Body>
int run_main(const char* program, Body&& body) {
  try {
    return body();
  } catch (const BadArgs& e) {
    std::fprintf(stderr, "error: %s: %s (see --help)\n", program, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

}  // namespace ddp::bench
