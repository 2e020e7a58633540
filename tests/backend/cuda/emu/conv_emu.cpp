// ConvEngine (ddp/backend/cuda/conv.h) for the CUDA emulation (emu.h), in place of conv.cpp's
// cuDNN graphs: direct loops over NHWC / KRSC in fp32 with the inputs as the activation dtype holds
// them (and rounded to TF32 where TF32 is allowed for fp32), the result rounded to that dtype once,
// as cuDNN's engines do. Plans are bookkeeping only, with the same keys and sharing as conv.cpp, and
// each asks for a workspace (4 bytes per output element, a stand-in for cuDNN's needs) that the
// engine grows as conv.cpp does, so the model's prepare-then-run contract is checked. Every buffer is checked to
// lie inside a device allocation of the size the shape needs: a model that hands the conv a short
// buffer fails here, where on a GPU it would read or write past it.
#include <cudnn_version.h>

#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include "conv_plan.h"  // src/backend/cuda: conv.cpp's plan keys
#include "ddp/backend/cuda/conv.h"
#include "ddp/backend/cuda/memory.h"
#include "ddp/core/check.h"
#include "ddp/core/half.h"
#include "emu.h"

namespace ddp::cuda {
namespace {

using conv_plan::describe;
using conv_plan::Key;
using conv_plan::make_key;
using conv_plan::Op;

std::mutex g_mu;
std::set<Key> g_plans;  // process-wide, as conv.cpp's per-device cache on the one emulated device
size_t g_plans_built = 0;

// fp32 -> TF32 (10 explicit mantissa bits), rounding to nearest with ties away from zero, as the
// tensor cores' conversion (cvt.rna.tf32.f32) does.
float to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

std::vector<float> load(const void* p, size_t count, DType dt, bool tf32) {
  std::vector<float> v(count);
  switch (dt) {
    case DType::F32: std::memcpy(v.data(), p, count * 4); if (tf32) for (auto& x : v) x = to_tf32(x); break;
    case DType::F16: for (size_t i = 0; i < count; ++i) v[i] = half_to_float(static_cast<const uint16_t*>(p)[i]); break;
    case DType::BF16: for (size_t i = 0; i < count; ++i) v[i] = bf16_to_float(static_cast<const uint16_t*>(p)[i]); break;
    default: DDP_FAIL("conv (emulated): unsupported dtype ", dtype_name(dt));
  }
  return v;
}

void store(const std::vector<float>& v, void* p, DType dt) {
  switch (dt) {
    case DType::F32: std::memcpy(p, v.data(), v.size() * 4); break;
    case DType::F16: for (size_t i = 0; i < v.size(); ++i) static_cast<uint16_t*>(p)[i] = float_to_half(v[i]); break;
    case DType::BF16: for (size_t i = 0; i < v.size(); ++i) static_cast<uint16_t*>(p)[i] = float_to_bf16(v[i]); break;
    default: DDP_FAIL("conv (emulated): unsupported dtype ", dtype_name(dt));
  }
}

// Eight partial sums: the compiler may then vectorise without reassociating a single sum itself.
float dot(const float* a, const float* b, int n) {
  float acc[8] = {};
  int c = 0;
  for (; c + 8 <= n; c += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[c + j] * b[c + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; c < n; ++c) s += a[c] * b[c];
  return s;
}

}  // namespace

struct ConvEngine::Impl {
  cudaStream_t stream = nullptr;
  bool allow_tf32 = true, autotune = false, deterministic = false;  // the emulated convs are deterministic anyway
  std::set<Key> used;
  DeviceBuffer workspace;

  // Elements of x (n h w c), w (k r s c) and y (n oh ow k).
  struct Counts {
    size_t x, w, y;
  };
  static Counts counts(const ConvShape& p) {
    return {size_t(p.n) * p.h * p.w * p.c, size_t(p.k) * p.r * p.s * p.c, size_t(p.n) * p.out_h() * p.out_w() * p.k};
  }
  static size_t workspace_need(Op op, const ConvShape& p) {
    const Counts n = counts(p);
    return 4 * (op == Op::Fprop ? n.y : op == Op::Dgrad ? n.x : n.w);  // 4 bytes per output element
  }

  void prepare(Op op, const ConvShape& p) {
    const bool strict = p.dtype == DType::F32 && !allow_tf32;
    const Key key = make_key(op, p, strict, autotune, deterministic);
    if (workspace.bytes() < workspace_need(op, p)) {
      DDP_CHECK(cudaStreamSynchronize(stream) == cudaSuccess, "conv (emulated): stream sync failed");
      workspace = DeviceBuffer();
      workspace = DeviceBuffer(workspace_need(op, p), "cuDNN conv workspace (emulated)");
    }
    if (used.count(key)) return;
    DDP_CHECK(p.n > 0 && p.c > 0 && p.h > 0 && p.w > 0 && p.k > 0 && p.out_h() > 0 && p.out_w() > 0,
              "conv: bad shape ", describe(op, p));
    std::lock_guard<std::mutex> lk(g_mu);
    if (g_plans.insert(key).second) ++g_plans_built;
    used.insert(key);
  }

  void check_buffer(Op op, const ConvShape& p, const char* which, const void* ptr, size_t count) {
    const size_t bytes = count * dtype_size(p.dtype);
    DDP_CHECK(cuda_emu::device_range_ok(ptr, bytes), describe(op, p), ": ", which, " (", bytes,
              " bytes from ", ptr, ") is not inside one device allocation");
  }

  void run(Op op, const ConvShape& p, const void* a, const void* b, void* out) {
    DDP_CHECK(cuda_emu::stream_ok(stream), describe(op, p), ": the engine's stream is not live");
    prepare(op, p);
    const auto [nx, nw, ny] = counts(p);
    const bool tf32 = p.dtype == DType::F32 && allow_tf32;
    // Inputs and output per op, as conv.cpp binds them: fprop (x, w) -> y; dgrad (dy, w) -> dx;
    // wgrad (dy, x) -> dw.
    const void *x = nullptr, *w = nullptr, *dy = nullptr;
    if (op == Op::Fprop) {
      x = a, w = b;
      check_buffer(op, p, "x", x, nx), check_buffer(op, p, "w", w, nw), check_buffer(op, p, "y", out, ny);
    } else if (op == Op::Dgrad) {
      dy = a, w = b;
      check_buffer(op, p, "dy", dy, ny), check_buffer(op, p, "w", w, nw), check_buffer(op, p, "dx", out, nx);
    } else {
      dy = a, x = b;
      check_buffer(op, p, "dy", dy, ny), check_buffer(op, p, "x", x, nx), check_buffer(op, p, "dw", out, nw);
    }
    // The arithmetic is stream work: it runs when something waits for the stream (emu.h).
    cuda_emu::enqueue(stream, [=] { compute(op, p, x, w, dy, out, tf32); });
  }

  static void compute(Op op, const ConvShape& p, const void* x, const void* w, const void* dy, void* out, bool tf32) {
    const int oh = p.out_h(), ow = p.out_w();
    const auto [nx, nw, ny] = counts(p);
    const int C = p.c, K = p.k;
    auto in_at = [&](int n, int iy, int ix) { return (size_t(n) * p.h + iy) * p.w * C + size_t(ix) * C; };
    auto out_at = [&](int n, int oy, int ox) { return (size_t(n) * oh + oy) * ow * K + size_t(ox) * K; };
    auto w_at = [&](int k, int r, int s) { return ((size_t(k) * p.r + r) * p.s + s) * C; };
    // Visits every (output pixel, tap) pair whose input pixel lies inside the image.
    auto for_taps = [&](auto&& f) {
      for (int n = 0; n < p.n; ++n)
        for (int oy = 0; oy < oh; ++oy)
          for (int ox = 0; ox < ow; ++ox)
            for (int r = 0; r < p.r; ++r) {
              const int iy = oy * p.stride - p.pad + r;
              if (iy < 0 || iy >= p.h) continue;
              for (int s = 0; s < p.s; ++s) {
                const int ix = ox * p.stride - p.pad + s;
                if (ix < 0 || ix >= p.w) continue;
                f(in_at(n, iy, ix), out_at(n, oy, ox), r, s);
              }
            }
    };
    if (op == Op::Fprop) {
      const auto X = load(x, nx, p.dtype, tf32), W = load(w, nw, p.dtype, tf32);
      std::vector<float> Y(ny, 0.0f);
      for_taps([&](size_t xi, size_t yi, int r, int s) {
        for (int k = 0; k < K; ++k) {
          const float* wr = &W[w_at(k, r, s)];
          const float* xr = &X[xi];
          Y[yi + k] += dot(xr, wr, C);
        }
      });
      store(Y, out, p.dtype);
    } else if (op == Op::Dgrad) {
      const auto DY = load(dy, ny, p.dtype, tf32), W = load(w, nw, p.dtype, tf32);
      std::vector<float> DX(nx, 0.0f);
      for_taps([&](size_t xi, size_t yi, int r, int s) {
        float* dxr = &DX[xi];
        for (int k = 0; k < K; ++k) {
          const float g = DY[yi + k];
          const float* wr = &W[w_at(k, r, s)];
          for (int c = 0; c < C; ++c) dxr[c] += g * wr[c];
        }
      });
      store(DX, out, p.dtype);
    } else {
      const auto DY = load(dy, ny, p.dtype, tf32), X = load(x, nx, p.dtype, tf32);
      std::vector<float> DW(nw, 0.0f);
      for_taps([&](size_t xi, size_t yi, int r, int s) {
        const float* xr = &X[xi];
        for (int k = 0; k < K; ++k) {
          const float g = DY[yi + k];
          float* dwr = &DW[w_at(k, r, s)];
          for (int c = 0; c < C; ++c) dwr[c] += g * xr[c];
        }
      });
      store(DW, out, p.dtype);
    }
  }
};

ConvEngine::ConvEngine(cudaStream_t stream, bool allow_tf32, bool autotune, bool deterministic)
    : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream;
  impl_->allow_tf32 = allow_tf32;
  impl_->autotune = autotune;
  impl_->deterministic = deterministic;
}
#include "conv_engine_calls.inc"  // conv.cpp's own binding of each op's buffers

size_t ConvEngine::workspace_bytes() const { return impl_->workspace.bytes(); }
size_t ConvEngine::plans_built() {
  std::lock_guard<std::mutex> lk(g_mu);
  return g_plans_built;
}
double ConvEngine::plan_build_seconds() { return 0.0; }
size_t ConvEngine::cudnn_runtime_version() { return CUDNN_VERSION; }
size_t ConvEngine::cudnn_built_version() { return CUDNN_VERSION; }

}  // namespace ddp::cuda
