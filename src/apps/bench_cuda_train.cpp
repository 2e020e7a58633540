// Training throughput of CudaResNet18 on synthetic, GPU-resident uint8 data (no data loader in the
// loop): forward + backward + SGD per step, timed with CUDA events after a warm-up that also builds
// every cuDNN plan. The last line is machine-readable:
//   RESULT {"amp":"fp16","batch":256,"size":224,"img_per_s":N,"ms_per_step":N,"peak_mem_mb":N,"warmup_s":N,...}
//
// fp16 steps use dynamic loss scaling as the trainer and PyTorch's GradScaler do: after each
// backward the host reads the found-inf flag (a synchronisation, as GradScaler's step() makes) and
// skips the update on overflow; the scale starts at 2^16 and halves on each overflow. So the fp16
// figure is the same work as the PyTorch peer's. fixed_scale_img_per_s is the step without that
// check (a fixed scale, no host wait), the kind of step a CUDA graph can hold.
//
// host_ms_per_step is what enqueueing one step costs the host (median of single steps started on an
// idle GPU): near ms_per_step means the step is launch-bound. --cuda-graph also times the same step
// captured as one CUDA graph, in the same process after the eager timing (graph_* fields): what
// launch overhead costs at this batch and size.
//
// --selftest: a few steps on one small fixed batch per AMP mode; fails unless the loss is finite
// and falls (cheap insurance before a long run on a GPU host).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_cli.h"
#include "ddp/backend/cuda/conv.h"
#include "ddp/backend/cuda/event_timing.h"
#include "ddp/backend/cuda/memory.h"
#include "ddp/backend/cuda/resnet18_cuda.h"
#include "ddp/core/check.h"
#include "ddp/core/json.h"
#include "ddp/core/rng.h"
#include "ddp/core/tensor.h"
#include "ddp/train/loss_scaler.h"

namespace {

struct Args {
  std::string amp = "fp16";
  int batch = 256, size = 224, warmup = 15, iters = 50, classes = 1000;
  bool selftest = false;
  bool tf32 = true;
  bool autotune = false;
  bool deterministic = false;
  bool profile_step = false;
  bool cuda_graph = false;
};

using ddp::bench::bad_args;

void usage(FILE* to) {
  std::fprintf(to,
               "usage: bench_cuda_train [--amp fp16|bf16|off] [--batch N] [--size PX] [--warmup N] [--iters N]\n"
               "                        [--classes N] [--tf32 on|off] [--autotune] [--deterministic] [--cuda-graph]\n"
               "                        [--profile-step] [--selftest]\n"
               "  --autotune: time every cuDNN engine per conv shape during warm-up (default: heuristics)\n"
               "  --deterministic: only cuDNN engines that give the same bits every run (train_resnet18's flag)\n"
               "  --profile-step: after the warm-up, one step between cudaProfilerStart/Stop (for ncu\n"
               "    --profile-from-start off: tools/gpu_profile.sh), then exit without timing\n"
               "  --cuda-graph: also time the step captured as one CUDA graph (after the eager timing)\n"
               "exit status: 0 done, 1 a failure (no GPU, a non-finite loss, ...), 2 a bad argument\n");
}

// The count flags: 1 (0 for --warmup) up to 2^30 - 1.
int to_int(const char* flag, const char* v, long min = 1) {
  return ddp::bench::to_int(flag, v, min, (1L << 30) - 1);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) bad_args(f, " needs a value");
      return argv[++i];
    };
    if (f == "--amp") a.amp = val();
    else if (f == "--batch") a.batch = to_int("--batch", val());
    else if (f == "--size") a.size = to_int("--size", val());
    else if (f == "--warmup") a.warmup = to_int("--warmup", val(), 0);
    else if (f == "--iters") a.iters = to_int("--iters", val());
    else if (f == "--classes") a.classes = to_int("--classes", val());
    else if (f == "--tf32") {
      std::string v = val();
      if (v != "on" && v != "off") bad_args("--tf32 wants on|off, got '", v, "'");
      a.tf32 = v == "on";
    } else if (f == "--selftest") a.selftest = true;
    else if (f == "--autotune") a.autotune = true;
    else if (f == "--deterministic") a.deterministic = true;
    else if (f == "--profile-step") a.profile_step = true;
    else if (f == "--cuda-graph") a.cuda_graph = true;
    else if (f == "--help" || f == "-h") {
      usage(stdout);
      std::exit(0);
    } else {
      bad_args("unknown argument '", f, "'");
    }
  }
  if (a.amp != "fp16" && a.amp != "bf16" && a.amp != "off") bad_args("--amp wants fp16|bf16|off, got '", a.amp, "'");
  if (a.size < 32) bad_args("--size ", a.size, " is below ResNet18's smallest input, 32");  // before any GPU work
  return a;
}

ddp::nn::Amp amp_of(const std::string& s) {
  return s == "fp16" ? ddp::nn::Amp::F16 : s == "bf16" ? ddp::nn::Amp::BF16 : ddp::nn::Amp::Off;
}

// Synthetic images and labels from Philox (stream kSynthetic), images copied to the GPU once.
struct SyntheticBatch {
  uint8_t* dev = nullptr;
  std::vector<int32_t> labels;
  SyntheticBatch(int n, int size, int classes) {
    const size_t bytes = static_cast<size_t>(n) * size * size * 3;
    std::vector<uint8_t> host(bytes);
    ddp::Rng rng(1234, ddp::rng_stream::kSynthetic);
    for (auto& v : host) v = static_cast<uint8_t>(rng.next_u32() >> 24);
    labels.resize(n);
    for (auto& l : labels) l = static_cast<int32_t>(rng.below(static_cast<uint32_t>(classes)));
    dev = static_cast<uint8_t*>(ddp::cuda::tracked_malloc(bytes, "synthetic images"));
    CUDA_CHECK(cudaMemcpy(dev, host.data(), bytes, cudaMemcpyHostToDevice));
    // From pageable memory cudaMemcpy may return before the DMA has landed, and the model's
    // non-blocking streams do not wait on the default stream.
    CUDA_CHECK(cudaDeviceSynchronize());
    bytes_ = bytes;
  }
  ~SyntheticBatch() { ddp::cuda::tracked_free(dev, bytes_); }
  size_t bytes_ = 0;
};

ddp::nn::ModelConfig model_config(const Args& a, ddp::nn::Amp amp, int batch, int size) {
  ddp::nn::ModelConfig cfg;
  cfg.num_classes = a.classes;
  cfg.max_batch = batch;
  cfg.height = cfg.width = size;
  cfg.amp = amp;
  cfg.tf32 = a.tf32;
  cfg.deterministic = a.deterministic;
  cfg.init.seed = 7;
  return cfg;
}

int selftest(const Args& a) {
  const int n = 16, size = 64;
  bool ok = true;
  for (const char* mode : {"fp16", "bf16", "off"}) {
    ddp::nn::Amp amp = amp_of(mode);
    ddp::cuda::CudaResNet18 model(model_config(a, amp, n, size));
    SyntheticBatch data(n, size, a.classes);
    ddp::nn::SgdConfig sgd;
    sgd.weight_decay = 1e-4f;
    const float loss_scale = amp == ddp::nn::Amp::F16 ? 1024.0f : 1.0f;
    std::vector<float> losses;
    bool finite_grads = true;
    for (int step = 0; step < 6; ++step) {
      model.set_input_u8(data.dev, data.labels.data(), n, size, size);
      losses.push_back(model.forward(ddp::nn::Mode::Train));
      model.backward(loss_scale, nullptr);
      finite_grads = finite_grads && model.grads_finite();
      model.sgd_step(sgd, 0.05f, 1.0f / loss_scale);
    }
    model.set_input_u8(data.dev, data.labels.data(), n, size, size);
    // Printed, not judged: after 7 updates the running statistics are still far from the batch's.
    const float eval_loss = model.forward(ddp::nn::Mode::Eval);
    bool finite = finite_grads;
    for (float l : losses) finite = finite && std::isfinite(l);
    const bool falls = losses.back() < losses.front();
    std::printf("selftest %-4s losses:", mode);
    for (float l : losses) std::printf(" %.4f", l);
    std::printf("  eval %.4f  grads finite %d  -> %s\n", eval_loss, finite_grads ? 1 : 0,
                finite && falls ? "ok" : "FAILED");
    ok = ok && finite && falls;
  }
  std::printf("cuDNN plans: %zu built in %.1f s\n", ddp::cuda::ConvEngine::plans_built(),
              ddp::cuda::ConvEngine::plan_build_seconds());
  std::printf("SELFTEST %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}

// Host time to enqueue one step, the GPU idle before each (so a full launch queue never blocks the
// host): the median of 7.
template <class Step>
double host_ms_per_step(ddp::cuda::CudaResNet18& model, Step&& step) {
  std::vector<double> t;
  for (int i = 0; i < 7; ++i) {
    model.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    step();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  model.synchronize();
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct GraphFigures {
  double ms_step = 0, host_ms = 0;
  std::string error;
};

int bench(const Args& a) {
  const ddp::nn::Amp amp = amp_of(a.amp);
  ddp::cuda::tracked_reset_peak();
  ddp::cuda::CudaResNet18 model(model_config(a, amp, a.batch, a.size));
  if (a.autotune) model.set_conv_autotune(true);
  SyntheticBatch data(a.batch, a.size, a.classes);
  ddp::nn::SgdConfig sgd;
  sgd.weight_decay = 5e-5f;
  const bool fp16 = amp == ddp::nn::Amp::F16;
  // fp16: the trainer's dynamic scaler (the same rule as GradScaler). The fixed-scale step and the
  // CUDA graph use 1024, far below where this model's fp16 gradients overflow at 224 x 224.
  ddp::train::LossScaler scaler(fp16);
  const float fixed_scale = fp16 ? 1024.0f : 1.0f;
  auto fixed_step = [&] {
    model.set_input_u8(data.dev, data.labels.data(), a.batch, a.size, a.size);
    model.train_step_async(sgd, 0.01f, fixed_scale);
  };
  auto step = [&] {
    if (!fp16) return fixed_step();
    model.set_input_u8(data.dev, data.labels.data(), a.batch, a.size, a.size);
    const float used = scaler.scale();
    model.forward_backward_async(used);
    if (scaler.update(model.grads_finite())) model.sgd_step(sgd, 0.01f, 1.0f / used);
  };
  const auto w0 = std::chrono::steady_clock::now();
  for (int i = 0; i < a.warmup; ++i) step();
  model.synchronize();
  const double warmup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  auto* s = static_cast<cudaStream_t>(model.stream());
  if (a.profile_step) {
    CUDA_CHECK(cudaProfilerStart());
    step();
    model.synchronize();
    CUDA_CHECK(cudaProfilerStop());
    std::printf("profiled one %s step (batch %d, %dx%d)\n", a.amp.c_str(), a.batch, a.size, a.size);
    return 0;
  }
  const int64_t skipped_before = scaler.state().skipped_steps;
  const double ms_step = ddp::cuda::event_ms_per_call(s, a.iters, step);
  const int64_t skipped_timed = scaler.state().skipped_steps - skipped_before;
  const double fixed_ms_step = fp16 ? ddp::cuda::event_ms_per_call(s, a.iters, fixed_step) : ms_step;
  // The enqueue alone (fixed scale: the checked step waits for the GPU by design).
  const double host_ms = host_ms_per_step(model, fixed_step);
  // One checked step after timing: the numbers mean nothing if training produced NaNs.
  model.set_input_u8(data.dev, data.labels.data(), a.batch, a.size, a.size);
  const float loss = model.forward(ddp::nn::Mode::Train);
  model.backward(scaler.scale(), nullptr);
  const bool finite = model.grads_finite();
  const double img_s = a.batch * 1000.0 / ms_step;
  const double peak_mb = static_cast<double>(model.peak_memory_bytes()) / (1024.0 * 1024.0);
  cudaDeviceProp prop{};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  // The graph comes last, after everything the eager figure needs: a capture that fails is reported
  // beside that figure and cannot spoil it.
  GraphFigures g;
  if (a.cuda_graph) {
    model.set_input_u8(data.dev, data.labels.data(), a.batch, a.size, a.size);
    try {
      model.capture_train_step(sgd, 0.01f, fixed_scale);
      auto replay = [&] {
        model.set_input_u8(data.dev, data.labels.data(), a.batch, a.size, a.size);
        model.replay_train_step();
      };
      for (int i = 0; i < 3; ++i) replay();
      model.synchronize();
      g.ms_step = ddp::cuda::event_ms_per_call(s, a.iters, replay);
      g.host_ms = host_ms_per_step(model, replay);
    } catch (const std::exception& e) {
      g.error = e.what();
      std::fprintf(stderr, "bench_cuda_train: --cuda-graph: %s\n", e.what());
    }
  }
  std::printf("device %s, amp %s, tf32 %s, conv engines %s%s, batch %d, %dx%d, %d warm-up + %d timed steps\n",
              prop.name, a.amp.c_str(), a.tf32 ? "on" : "off", a.autotune ? "autotuned" : "heuristic",
              a.deterministic ? " (deterministic only)" : "", a.batch, a.size,
              a.size, a.warmup, a.iters);
  std::printf("loss after timing %.4f, grads finite %d; warm-up %.1f s, of which building %zu cuDNN plans %.1f s\n", loss,
              finite ? 1 : 0, warmup_s, ddp::cuda::ConvEngine::plans_built(), ddp::cuda::ConvEngine::plan_build_seconds());
  if (!std::isfinite(loss) || !finite) {
    std::fprintf(stderr, "bench_cuda_train: non-finite loss or gradients after the timed steps\n");
    return 1;
  }
  if (fp16)
    std::printf("fp16 dynamic loss scale: %.0f at the end, %lld of %d timed steps skipped for overflow; "
                "fixed scale, no per-step check: %.3f ms per step (%.1f img/s)\n",
                static_cast<double>(scaler.scale()), static_cast<long long>(skipped_timed), a.iters, fixed_ms_step,
                a.batch * 1000.0 / fixed_ms_step);
  std::printf("host: %.3f ms to enqueue one step (GPU %.3f ms per step)\n", host_ms, fixed_ms_step);
  std::string graph_json;
  if (a.cuda_graph) {
    if (g.error.empty()) {
      // Against the eager step of the same work (fixed scale: a graph cannot skip on the host's word).
      std::printf("CUDA graph: %.3f ms per step (%.1f img/s, %.3fx the eager fixed-scale step), %.3f ms to launch\n",
                  g.ms_step, a.batch * 1000.0 / g.ms_step, fixed_ms_step / g.ms_step, g.host_ms);
      char buf[200];
      std::snprintf(buf, sizeof buf, ",\"graph_img_per_s\":%.1f,\"graph_ms_per_step\":%.3f,\"graph_over_eager\":%.3f,"
                    "\"graph_host_ms_per_step\":%.4f", a.batch * 1000.0 / g.ms_step, g.ms_step, fixed_ms_step / g.ms_step, g.host_ms);
      graph_json = buf;
    } else {
      graph_json = ",\"graph_error\":" + ddp::json_string(g.error.substr(0, 200));
    }
  }
  std::string scale_json;
  if (fp16) {
    char buf[200];
    std::snprintf(buf, sizeof buf, ",\"loss_scale\":%.0f,\"skipped_steps\":%lld,\"fixed_scale_img_per_s\":%.1f",
                  static_cast<double>(scaler.scale()), static_cast<long long>(skipped_timed), a.batch * 1000.0 / fixed_ms_step);
    scale_json = buf;
  }
  std::printf("RESULT {\"amp\":\"%s\",\"batch\":%d,\"size\":%d,\"img_per_s\":%.1f,\"ms_per_step\":%.3f,\"peak_mem_mb\":%.1f,"
              "\"warmup_s\":%.2f,\"plans_built\":%zu,\"plan_build_s\":%.2f,\"host_ms_per_step\":%.4f,"
              "\"cudnn_runtime\":%zu,\"cudnn_built\":%zu,\"deterministic\":%s%s%s}\n",
              a.amp.c_str(), a.batch, a.size, img_s, ms_step, peak_mb, warmup_s, ddp::cuda::ConvEngine::plans_built(),
              ddp::cuda::ConvEngine::plan_build_seconds(), host_ms, ddp::cuda::ConvEngine::cudnn_runtime_version(),
              ddp::cuda::ConvEngine::cudnn_built_version(), a.deterministic ? "true" : "false", scale_json.c_str(), graph_json.c_str());
  // A step that cannot be captured is reported (graph_error) but does not fail the benchmark: the
  // product does not use the graph, the eager figure stands.
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return ddp::bench::run_main("bench_cuda_train", [&] {
    Args a = parse(argc, argv);
    DDP_CHECK(ddp::cuda_available(), "bench_cuda_train: no CUDA device visible (", ddp::cuda_unavailable_reason(), ")");
    return a.selftest ? selftest(a) : bench(a);
  });
}
