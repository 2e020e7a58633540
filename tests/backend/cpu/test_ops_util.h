// Shared helpers for the CPU op tests: random data, tolerance checks, finite differences.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace ddp::cpu::test {

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Every |got - ref| <= atol + rtol * |ref|; reports the first few failures by index.
inline void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<double>& ref,
                         double atol, double rtol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  int bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const double tol = atol + rtol * std::fabs(ref[i]);
    worst = std::max(worst, err / tol);
    if (!(err <= tol) && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << ref[i] << " (tol " << tol << ")";
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " outside tolerance; worst err/tol "
                    << worst;
}

inline void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref,
                         double atol, double rtol) {
  expect_close(what, got, std::vector<double>(ref.begin(), ref.end()), atol, rtol);
}

// sum(y * r) accumulated in double.
inline double dot(const std::vector<float>& y, const std::vector<float>& r) {
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) s += static_cast<double>(y[i]) * r[i];
  return s;
}

// Central difference of objective() with respect to `samples` random entries of param (all entries when
// samples >= size), compared with the analytic gradient: |fd - g| <= atol + rtol * |fd|.
inline void check_fd(const std::string& what, std::vector<float>& param, const std::vector<float>& grad,
                     const std::function<double()>& objective, float eps, double atol, double rtol,
                     int samples = 48, uint32_t seed = 7) {
  ASSERT_EQ(param.size(), grad.size()) << what;
  std::vector<size_t> idx;
  if (static_cast<size_t>(samples) >= param.size()) {
    for (size_t i = 0; i < param.size(); ++i) idx.push_back(i);
  } else {
    std::mt19937 g(seed);
    std::uniform_int_distribution<size_t> d(0, param.size() - 1);
    for (int i = 0; i < samples; ++i) idx.push_back(d(g));
  }
  int bad = 0;
  for (size_t i : idx) {
    const float v = param[i];
    param[i] = v + eps;
    const double jp = objective();
    param[i] = v - eps;
    const double jm = objective();
    param[i] = v;
    const double fd = (jp - jm) / (2.0 * static_cast<double>(eps));
    const double tol = atol + rtol * std::fabs(fd);
    if (!(std::fabs(fd - grad[i]) <= tol) && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << grad[i] << " finite difference " << fd << " (tol "
                    << tol << ")";
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << idx.size() << " sampled gradients disagree";
}

}  // namespace ddp::cpu::test
