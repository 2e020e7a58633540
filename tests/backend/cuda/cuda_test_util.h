// Helpers for the CUDA backend tests: device buffers filled from host floats in any activation
// dtype, read back as floats, poisoned (NaN) before each op so unwritten outputs fail, and one
// closeness check with the tolerance rule `|got - ref| <= atol + rtol * |ref|` stated per test.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ddp/backend/cuda/conv.h"
#include "ddp/backend/cuda/memory.h"
#include "ddp/core/check.h"
#include "ddp/core/half.h"
#include "ddp/core/rng.h"
#include "ddp/core/tensor.h"

namespace ddp::cuda::test {

#define DDP_REQUIRE_GPU() \
  do {                    \
    if (!::ddp::cuda_available()) GTEST_SKIP() << "no CUDA device visible: " << ::ddp::cuda_unavailable_reason(); \
  } while (0)

inline float round_to(DType dt, float v) {
  switch (dt) {
    case DType::F16: return half_to_float(float_to_half(v));
    case DType::BF16: return bf16_to_float(float_to_bf16(v));
    default: return v;
  }
}

// Random values (never zeros by construction: uniform/normal draws), rounded to dt so the CPU
// reference sees exactly what the GPU sees.
inline std::vector<float> random_vec(size_t n, uint64_t seed, DType dt, float lo = -1.0f, float hi = 1.0f) {
  Rng r(seed, rng_stream::kTest);
  std::vector<float> v(n);
  for (auto& x : v) x = round_to(dt, r.uniform(lo, hi));
  return v;
}
inline std::vector<float> normal_vec(size_t n, uint64_t seed, DType dt, float scale = 1.0f) {
  Rng r(seed, rng_stream::kTest);
  std::vector<float> v(n);
  for (auto& x : v) x = round_to(dt, scale * r.normal());
  return v;
}

// A device array of `count` elements of dtype dt.
class Dev {
 public:
  Dev(size_t count, DType dt) : count_(count), dt_(dt), buf_(count * dtype_size(dt), "test buffer") { poison(); }
  explicit Dev(const std::vector<float>& host, DType dt = DType::F32) : Dev(host.size(), dt) { upload(host); }
  void* get() const { return buf_.get(); }
  template <class T> T* as() const { return buf_.as<T>(); }
  size_t count() const { return count_; }

  void upload(const std::vector<float>& host) {
    EXPECT_EQ(host.size(), count_);
    std::vector<uint8_t> raw(count_ * dtype_size(dt_));
    for (size_t i = 0; i < count_; ++i) {
      if (dt_ == DType::F32) std::memcpy(&raw[i * 4], &host[i], 4);
      else {
        uint16_t h = dt_ == DType::F16 ? float_to_half(host[i]) : float_to_bf16(host[i]);
        std::memcpy(&raw[i * 2], &h, 2);
      }
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(buf_.get(), raw.data(), raw.size(), cudaMemcpyHostToDevice));
  }
  std::vector<float> download() const {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<uint8_t> raw(count_ * dtype_size(dt_));
    CUDA_CHECK(cudaMemcpy(raw.data(), buf_.get(), raw.size(), cudaMemcpyDeviceToHost));
    std::vector<float> out(count_);
    for (size_t i = 0; i < count_; ++i) {
      if (dt_ == DType::F32) std::memcpy(&out[i], &raw[i * 4], 4);
      else {
        uint16_t h;
        std::memcpy(&h, &raw[i * 2], 2);
        out[i] = dt_ == DType::F16 ? half_to_float(h) : bf16_to_float(h);
      }
    }
    return out;
  }
  // All bytes 0xFF: NaN in f32, f16 and bf16 (and -1 in int32), so an unwritten output fails.
  void poison() {
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemset(buf_.get(), 0xFF, count_ * dtype_size(dt_)));
  }

 private:
  size_t count_;
  DType dt_;
  DeviceBuffer buf_;
};

inline double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return v.empty() ? 0.0 : std::sqrt(s / v.size());
}

// Element-wise: |got - ref| <= atol + rtol * |ref| with atol = atol_rms * rms(ref) (the scale of the
// tensor, so results that cancel to near zero are judged against the magnitudes that produced them).
inline void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref,
                         double rtol, double atol_rms) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const double atol = atol_rms * rms(ref);
  size_t bad = 0, first = 0;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const double lim = atol + rtol * std::fabs(ref[i]);
    if (!(d <= lim)) {
      if (bad++ == 0) first = i;
      worst = std::max(worst, std::isfinite(d) ? d / (lim > 0 ? lim : 1) : INFINITY);
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << ref.size() << " elements off (first at " << first
                     << ": got " << got[first] << ", ref " << ref[first] << "; worst " << worst
                     << "x the tolerance; rtol " << rtol << ", atol " << atol << " = " << atol_rms << " * rms "
                     << rms(ref) << ")";
}

// Bit-for-bit equality (what deterministic engines promise); on a mismatch, how far apart: the count,
// the first, the largest absolute difference and ||got - ref|| / ||ref||.
inline void expect_same_bits(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t bad = 0, first = 0;
  double worst = 0, dn = 0, rn = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    rn += static_cast<double>(ref[i]) * ref[i];
    if (std::memcmp(&got[i], &ref[i], sizeof(float)) == 0) continue;
    if (bad++ == 0) first = i;
    worst = std::max(worst, std::isfinite(d) ? std::fabs(d) : INFINITY);
    dn += d * d;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << ref.size() << " elements differ in their bits (first at "
                     << first << ": got " << got[first] << ", ref " << ref[first] << "; largest difference " << worst
                     << ", relative L2 difference " << (rn > 0 ? std::sqrt(dn / rn) : INFINITY) << ")";
}

// ||got - ref|| / ||ref|| (L2, accumulated in double); sizes must match.
inline double rel_l2_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double dn = 0, rn = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    dn += d * d;
    rn += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(dn) / std::max(std::sqrt(rn), 1e-30);
}

// Norm-wise: ||got - ref|| <= tol * ||ref|| (whole-model low-precision comparisons).
inline void expect_rel_norm(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref,
                            double tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  bool finite = true;
  for (float v : got) finite = finite && std::isfinite(v);
  EXPECT_TRUE(finite) << what << ": non-finite values";
  double rn = 0;
  for (float v : ref) rn += static_cast<double>(v) * v;
  const double rel = rel_l2_error(got, ref);
  EXPECT_LE(rel, tol) << what << ": relative L2 error " << rel << " > " << tol << " (||ref|| " << std::sqrt(rn) << ")";
}

// NHWC <-> NCHW on the host.
inline std::vector<float> nhwc_to_nchw(const std::vector<float>& x, int n, int h, int w, int c) {
  std::vector<float> y(x.size());
  for (int b = 0; b < n; ++b)
    for (int i = 0; i < h * w; ++i)
      for (int ch = 0; ch < c; ++ch) y[(static_cast<size_t>(b) * c + ch) * h * w + i] = x[(static_cast<size_t>(b) * h * w + i) * c + ch];
  return y;
}
inline std::vector<float> nchw_to_nhwc(const std::vector<float>& x, int n, int h, int w, int c) {
  std::vector<float> y(x.size());
  for (int b = 0; b < n; ++b)
    for (int i = 0; i < h * w; ++i)
      for (int ch = 0; ch < c; ++ch) y[(static_cast<size_t>(b) * h * w + i) * c + ch] = x[(static_cast<size_t>(b) * c + ch) * h * w + i];
  return y;
}

// Each binary reports, at its end, the cuDNN plans it built and the time that took: where a GPU run's
// minutes go (plans are shared by every engine of the process, see conv.h).
class CudnnPlanReport : public ::testing::Environment {
 public:
  void TearDown() override {
    std::printf("[ cuDNN    ] %zu plan(s) built in %.1f s\n", ConvEngine::plans_built(), ConvEngine::plan_build_seconds());
  }
};
inline ::testing::Environment* const kCudnnPlanReport = ::testing::AddGlobalTestEnvironment(new CudnnPlanReport);

// ... and after each test that built any, the running count: a binary killed by its time limit never
// reaches the report above, and its log must still say which tests spent the time building plans.
class CudnnPlanProgress : public ::testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const ::testing::TestInfo&) override {
    const size_t n = ConvEngine::plans_built();
    if (n == last_) return;
    last_ = n;
    std::printf("[ cuDNN    ] %zu plan(s) built so far, %.1f s\n", n, ConvEngine::plan_build_seconds());
    std::fflush(stdout);
  }

 private:
  size_t last_ = 0;
};
inline const bool kCudnnPlanProgress = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new CudnnPlanProgress);
  return true;
}();

}  // namespace ddp::cuda::test
