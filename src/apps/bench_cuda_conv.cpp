// Every convolution of one ResNet18 training step, one at a time, with the engine cuDNN's heuristics
// pick (what the model runs by default) against the fastest engine a timed search finds
// (ConvEngine's autotune, like PyTorch's cudnn.benchmark, which the PyTorch peer uses): where the
// heuristics lose, and how much of the step that is. The stem conv (3 input channels, padded) can be
// timed at several paddings (--stem-cpad), since the model's choice of 8 is a guess the heuristics
// may not like. The first ncu profile on an H200 (2026-11-29) put the stem's fprop and wgrad at
// 2.6 ms of a 14.4 ms bf16 step.
//
// Each (conv, op) is run once to build its plan (and, for the searched engine, to search), then
// --iters times between CUDA events; the figure is the mean. Inputs are random, never zeros.
// The last line is machine-readable:
//   RESULT {"amp":"bf16","batch":256,"size":224,"heuristic_ms":N,"autotuned_ms":N,"convs":N,...}
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench_cli.h"
#include "ddp/backend/cuda/conv.h"
#include "ddp/backend/cuda/event_timing.h"
#include "ddp/backend/cuda/memory.h"
#include "ddp/backend/cuda/ops.h"
#include "ddp/core/check.h"
#include "ddp/core/rng.h"
#include "ddp/core/str.h"
#include "ddp/core/tensor.h"
#include "ddp/nn/resnet18.h"

namespace {

using ddp::DType;
using ddp::cuda::ConvEngine;
using ddp::cuda::ConvShape;

struct Args {
  std::string amp = "bf16";
  int batch = 256, size = 224, iters = 20;
  bool tf32 = true;
  std::vector<int> stem_cpad = {8};
};

using ddp::bench::bad_args;
using ddp::bench::to_int;

void usage() {
  std::printf(
      "usage: bench_cuda_conv [--amp fp16|bf16|off] [--batch N] [--size PX] [--iters N] [--tf32 on|off]\n"
      "                       [--stem-cpad LIST]\n"
      "  times every conv of a ResNet18 training step (fprop, dgrad, wgrad) with the heuristics' engine and\n"
      "  with the fastest engine a timed search finds\n"
      "  --stem-cpad LIST: the stem's padded input channels to time, comma-separated (default 8, the model's)\n"
      "exit status: 0 done, 1 a failure (no GPU, ...), 2 a bad argument\n");
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) bad_args(f, " needs a value");
      return argv[++i];
    };
    if (f == "--amp") a.amp = val();
    else if (f == "--batch") a.batch = to_int(f, val(), 1, 4096);
    else if (f == "--size") a.size = to_int(f, val(), 32, 1024);
    else if (f == "--iters") a.iters = to_int(f, val(), 1, 10000);
    else if (f == "--tf32") {
      const std::string v = val();
      if (v != "on" && v != "off") bad_args("--tf32 wants on|off, got '", v, "'");
      a.tf32 = v == "on";
    } else if (f == "--stem-cpad") {
      a.stem_cpad.clear();
      std::string v = val(), item;
      for (size_t p = 0; p <= v.size(); ++p) {
        if (p == v.size() || v[p] == ',') {
          a.stem_cpad.push_back(to_int("--stem-cpad", item, 3, 64));
          item.clear();
        } else {
          item += v[p];
        }
      }
    } else if (f == "--help" || f == "-h") {
      usage();
      std::exit(0);
    } else {
      bad_args("unknown argument '", f, "'");
    }
  }
  if (a.amp != "fp16" && a.amp != "bf16" && a.amp != "off") bad_args("--amp wants fp16|bf16|off, got '", a.amp, "'");
  return a;
}

// One conv of the step at the size it runs at: the stem sees the image, a block's first conv and its
// downsample the block's input, its second conv the first one's output.
struct ConvAt {
  std::string name;
  ConvShape shape;
  bool dgrad = true;  // the stem's input needs no gradient
};

std::vector<ConvAt> step_convs(const Args& a, DType dt) {
  const auto spec = ddp::nn::make_resnet18_spec(1000);
  const auto at = [&](const ddp::nn::ConvSpec& cs, int hw) {
    return ConvShape{a.batch, cs.in_channels, hw, hw, cs.out_channels, cs.kernel, cs.kernel, cs.stride, cs.pad, dt};
  };
  std::vector<ConvAt> out;
  for (int c : a.stem_cpad) {
    ConvAt s{ddp::str("conv1 (", c, " ch)"), at(spec.conv1, a.size), false};
    s.shape.c = c;
    out.push_back(s);
  }
  int hw = ddp::nn::resnet18_stage_sizes(a.size, a.size).pool_h;  // a block's input
  for (const auto& b : spec.blocks) {
    const ConvShape c1 = at(b.conv1, hw);
    out.push_back({b.conv1.name, c1, true});
    out.push_back({b.conv2.name, at(b.conv2, c1.out_h()), true});
    if (b.down_conv) out.push_back({b.down_conv->name, at(*b.down_conv, hw), true});
    hw = c1.out_h();
  }
  return out;
}

// Random values in [-1, 1) in the dtype: made on the host in fp32, cast on the GPU (the backend's
// convert_from_f32).
ddp::cuda::DeviceBuffer random_buffer(size_t count, DType dt, uint64_t seed) {
  ddp::Rng rng(seed, ddp::rng_stream::kTest);
  std::vector<float> host(count);
  for (auto& v : host) v = rng.uniform(-1.0f, 1.0f);
  ddp::cuda::DeviceBuffer f32(count * 4, "bench_cuda_conv fp32 operand");
  CUDA_CHECK(cudaMemcpy(f32.get(), host.data(), count * 4, cudaMemcpyHostToDevice));
  ddp::cuda::DeviceBuffer b(count * ddp::dtype_size(dt), "bench_cuda_conv operand");
  ddp::cuda::convert_from_f32(f32.as<float>(), static_cast<int64_t>(count), dt, b.get(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());  // before f32 is freed, and before the convs' non-blocking stream reads b
  return b;
}

double time_ms(cudaStream_t s, int iters, const std::function<void()>& op) {
  op();  // builds the plan (and searches, for the autotuned engine)
  CUDA_CHECK(cudaStreamSynchronize(s));
  return ddp::cuda::event_ms_per_call(s, iters, op);
}

int bench(const Args& a) {
  const DType dt = a.amp == "fp16" ? DType::F16 : a.amp == "bf16" ? DType::BF16 : DType::F32;
  const auto convs = step_convs(a, dt);
  size_t max_x = 0, max_w = 0, max_y = 0;
  for (const auto& c : convs) {
    const ConvShape& p = c.shape;
    max_x = std::max(max_x, size_t(p.n) * p.h * p.w * p.c);
    max_w = std::max(max_w, size_t(p.k) * p.r * p.s * p.c);
    max_y = std::max(max_y, size_t(p.n) * p.out_h() * p.out_w() * p.k);
  }
  auto x = random_buffer(max_x, dt, 1), w = random_buffer(max_w, dt, 2), dy = random_buffer(max_y, dt, 3);
  ddp::cuda::DeviceBuffer y(max_y * ddp::dtype_size(dt), "y"), dx(max_x * ddp::dtype_size(dt), "dx"),
      dw(max_w * ddp::dtype_size(dt), "dw");
  cudaStream_t s;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  ConvEngine heuristic(s, a.tf32, /*autotune=*/false), searched(s, a.tf32, /*autotune=*/true);

  std::printf("%-26s %-24s %-6s %10s %10s %7s\n", "conv", "n c h w -> k rxs /stride", "op", "heur. ms", "tuned ms",
              "heur/x");
  double total_h = 0, total_t = 0, stem_h = 0, stem_t = 0;
  int rows = 0;
  const char* ops[] = {"fprop", "dgrad", "wgrad"};
  for (const auto& c : convs) {
    const ConvShape& p = c.shape;
    const bool model_stem = c.name == "conv1 (8 ch)";
    for (int op = 0; op < 3; ++op) {
      if (op == 1 && !c.dgrad) continue;
      auto run = [&](ConvEngine& e) {
        if (op == 0) e.forward(p, x.get(), w.get(), y.get());
        else if (op == 1) e.backward_data(p, dy.get(), w.get(), dx.get());
        else e.backward_weight(p, x.get(), dy.get(), dw.get());
      };
      double h = -1, t = -1;
      std::string err;
      try {
        h = time_ms(s, a.iters, [&] { run(heuristic); });
        t = time_ms(s, a.iters, [&] { run(searched); });
      } catch (const std::exception& e) {
        err = e.what();  // e.g. no engine for a stem padding: said, and the rest still timed
        CUDA_CHECK(cudaStreamSynchronize(s));
      }
      const std::string shape = ddp::str(p.n, " ", p.c, " ", p.h, " ", p.w, " -> ", p.k, " ", p.r, "x", p.s, " /", p.stride);
      if (!err.empty()) {
        std::printf("%-26s %-24s %-6s  not run: %.120s\n", c.name.c_str(), shape.c_str(), ops[op], err.c_str());
        continue;
      }
      std::printf("%-26s %-24s %-6s %10.3f %10.3f %7.2f\n", c.name.c_str(), shape.c_str(), ops[op], h, t, h / t);
      // Totals: the step as the model runs it (the stem at the model's padding only).
      const bool stem = !c.dgrad;
      if (stem && !model_stem) continue;
      total_h += h;
      total_t += t;
      if (stem) {
        stem_h += h;
        stem_t += t;
      }
      ++rows;
    }
  }
  CUDA_CHECK(cudaStreamDestroy(s));
  std::printf("all convs of one step (stem at 8 channels): heuristics %.3f ms, searched %.3f ms (%.2fx); stem %.3f / %.3f ms\n",
              total_h, total_t, total_t > 0 ? total_h / total_t : 0.0, stem_h, stem_t);
  std::printf("RESULT {\"amp\":\"%s\",\"batch\":%d,\"size\":%d,\"convs\":%d,\"heuristic_ms\":%.3f,\"autotuned_ms\":%.3f,"
              "\"stem_heuristic_ms\":%.3f,\"stem_autotuned_ms\":%.3f}\n",
              a.amp.c_str(), a.batch, a.size, rows, total_h, total_t, stem_h, stem_t);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return ddp::bench::run_main("bench_cuda_conv", [&] {
    const Args a = parse(argc, argv);
    DDP_CHECK(ddp::cuda_available(), "bench_cuda_conv: no CUDA device visible (", ddp::cuda_unavailable_reason(), ")");
    return bench(a);
  });
}
