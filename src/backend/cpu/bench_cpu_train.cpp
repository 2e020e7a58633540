// CPU training throughput of CpuResNet18 (forward + backward + SGD) on synthetic data.
//   bench_cpu_train --batch 128 --size 32 [--width W] [--iters 10] [--warmup 2] [--threads T] [--classes 1000]
// Prints one line: "ours img_per_s=<x> batch=... size=HxW threads=... iters=... step_ms=...".
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ddp/backend/cpu/ops.h"
#include "ddp/backend/cpu/resnet18_cpu.h"
#include "ddp/core/check.h"
#include "ddp/core/rng.h"

namespace {
int arg_int(int argc, char** argv, const char* name, int def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) {
      char* end = nullptr;
      long v = std::strtol(argv[i + 1], &end, 10);
      DDP_CHECK(end && *end == '\0' && v >= 0, "bad value '", argv[i + 1], "' for ", name);
      return static_cast<int>(v);
    }
  return def;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    for (int i = 1; i < argc; ++i)
      if (std::strcmp(argv[i], "--help") == 0) {
        std::printf("bench_cpu_train --batch N --size H [--width W] [--iters I] [--warmup W] [--threads T] "
                    "[--classes K]\n");
        return 0;
      }
    const int batch = arg_int(argc, argv, "--batch", 128);
    const int h = arg_int(argc, argv, "--size", 32);
    const int w = arg_int(argc, argv, "--width", h);
    const int iters = arg_int(argc, argv, "--iters", 10);
    const int warmup = arg_int(argc, argv, "--warmup", 2);
    const int threads = arg_int(argc, argv, "--threads", 0);
    const int classes = arg_int(argc, argv, "--classes", 1000);
    DDP_CHECK(iters >= 1, "--iters must be at least 1");

    ddp::nn::ModelConfig cfg;
    cfg.num_classes = classes;
    cfg.max_batch = batch;
    cfg.height = h;
    cfg.width = w;
    cfg.threads = threads;
    ddp::cpu::CpuResNet18 model(cfg);

    std::vector<uint8_t> img(static_cast<size_t>(batch) * h * w * 3);
    std::vector<int32_t> labels(static_cast<size_t>(batch));
    ddp::Rng rng(1, ddp::rng_stream::kSynthetic);
    for (auto& v : img) v = static_cast<uint8_t>(rng.next_u32());
    for (auto& l : labels) l = static_cast<int32_t>(rng.below(static_cast<uint32_t>(classes)));

    ddp::nn::SgdConfig sgd;
    sgd.momentum = 0.9f;
    sgd.weight_decay = 1e-4f;
    auto step = [&] {
      model.set_input_u8(img.data(), labels.data(), batch, h, w);
      float loss = model.forward(ddp::nn::Mode::Train);
      model.backward(1.0f, nullptr);
      model.sgd_step(sgd, 0.01f, 1.0f);
      return loss;
    };
    for (int i = 0; i < warmup; ++i) step();
    auto t0 = std::chrono::steady_clock::now();
    float loss = 0;
    for (int i = 0; i < iters; ++i) loss = step();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("ours img_per_s=%.2f batch=%d size=%dx%d threads=%d iters=%d step_ms=%.1f loss=%.4f\n",
                batch * iters / s, batch, h, w, ddp::cpu::num_threads(), iters, 1000.0 * s / iters, loss);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cpu_train: %s\n", e.what());
    return 1;
  }
}
