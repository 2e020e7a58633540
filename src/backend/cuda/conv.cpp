// cudnn-frontend graphs for NHWC conv fprop / dgrad / wgrad, one per (op, shape, dtype, numerics,
// policy) and device, built once per process and shared by every ConvEngine (see conv.h).
#include "ddp/backend/cuda/conv.h"

#include <cudnn_frontend.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <tuple>

#include "conv_plan.h"
#include "ddp/backend/cuda/capture.h"
#include "ddp/backend/cuda/memory.h"
#include "ddp/core/check.h"

namespace ddp::cuda {
namespace fe = cudnn_frontend;

namespace {

using conv_plan::describe;
using conv_plan::Key;
using conv_plan::make_key;
using conv_plan::Op;

// Tensor uids in every graph: two inputs and the output.
constexpr int64_t kUidA = 1, kUidB = 2, kUidOut = 3;

fe::DataType_t fe_type(DType t) {
  switch (t) {
    case DType::F32: return fe::DataType_t::FLOAT;
    case DType::F16: return fe::DataType_t::HALF;
    case DType::BF16: return fe::DataType_t::BFLOAT16;
    default: DDP_FAIL("conv: unsupported dtype ", dtype_name(t));
  }
}

// NHWC strides for logical (n, c, h, w) dims (also KRSC for (k, c, r, s)).
std::vector<int64_t> nhwc_strides(int64_t n, int64_t c, int64_t h, int64_t w) {
  (void)n;
  return {c * h * w, 1, w * c, c};
}

void fe_check(fe::error_t e, const char* step, Op op, const ConvShape& p) {
  if (e.is_bad()) DDP_FAIL("cuDNN frontend ", step, " failed for ", describe(op, p), ": ", e.get_message());
}

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  bool tuned = false;  // autotune ran (or was declined) for this plan
};

// Engines needing more workspace than this are never chosen (some ask for GBs; the heuristics do
// not weigh memory). Autotune also declines plans whose candidates would need more than it.
constexpr int64_t kWorkspaceCap = int64_t{1} << 30;

// One per device: the handle every engine of the device uses, its plans, and the lock that
// serialises building and executing them.
struct DeviceContext {
  std::mutex mu;
  cudnnHandle_t handle = nullptr;
  std::map<Key, std::shared_ptr<Plan>> plans;
};

std::atomic<size_t> g_plans_built{0};
std::atomic<int64_t> g_build_us{0};

DeviceContext& device_context(int device) {
  static std::mutex mu;
  // Never destroyed: handles and plans must not be torn down by static destructors after the CUDA
  // context is gone at exit.
  static auto* contexts = new std::map<int, std::unique_ptr<DeviceContext>>();
  std::lock_guard<std::mutex> lock(mu);
  auto& c = (*contexts)[device];
  if (!c) {
    auto fresh = std::make_unique<DeviceContext>();
    CUDNN_CHECK(cudnnCreate(&fresh->handle));  // on the current device, which is `device`
    c = std::move(fresh);
  }
  return *c;
}

Plan build(cudnnHandle_t handle, Op op, const ConvShape& p, bool strict_fp32, bool autotune, bool deterministic) {
  DDP_CHECK(p.n > 0 && p.c > 0 && p.h > 0 && p.w > 0 && p.k > 0 && p.out_h() > 0 && p.out_w() > 0,
            "conv: bad shape ", describe(op, p));
  auto g = std::make_shared<fe::graph::Graph>();
  fe::DataType_t io = fe_type(p.dtype);
  g->set_io_data_type(io).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(fe::DataType_t::FLOAT);
  const int64_t oh = p.out_h(), ow = p.out_w();
  auto x_attr = fe::graph::Tensor_attributes().set_name("x").set_dim({p.n, p.c, p.h, p.w})
                    .set_stride(nhwc_strides(p.n, p.c, p.h, p.w)).set_data_type(io);
  auto w_attr = fe::graph::Tensor_attributes().set_name("w").set_dim({p.k, p.c, p.r, p.s})
                    .set_stride(nhwc_strides(p.k, p.c, p.r, p.s)).set_data_type(io);
  auto y_attr = fe::graph::Tensor_attributes().set_name("y").set_dim({p.n, p.k, oh, ow})
                    .set_stride(nhwc_strides(p.n, p.k, oh, ow)).set_data_type(io);
  const std::vector<int64_t> pad{p.pad, p.pad}, stride{p.stride, p.stride}, dil{1, 1};
  std::shared_ptr<fe::graph::Tensor_attributes> out;
  if (op == Op::Fprop) {
    auto x = g->tensor(x_attr.set_uid(kUidA));
    auto w = g->tensor(w_attr.set_uid(kUidB));
    out = g->conv_fprop(x, w, fe::graph::Conv_fprop_attributes().set_name("fprop").set_padding(pad).set_stride(stride).set_dilation(dil));
    out->set_dim({p.n, p.k, oh, ow}).set_stride(nhwc_strides(p.n, p.k, oh, ow));
  } else if (op == Op::Dgrad) {
    auto dy = g->tensor(y_attr.set_name("dy").set_uid(kUidA));
    auto w = g->tensor(w_attr.set_uid(kUidB));
    out = g->conv_dgrad(dy, w, fe::graph::Conv_dgrad_attributes().set_name("dgrad").set_padding(pad).set_stride(stride).set_dilation(dil));
    out->set_dim({p.n, p.c, p.h, p.w}).set_stride(nhwc_strides(p.n, p.c, p.h, p.w));
  } else {
    auto dy = g->tensor(y_attr.set_name("dy").set_uid(kUidA));
    auto x = g->tensor(x_attr.set_uid(kUidB));
    out = g->conv_wgrad(dy, x, fe::graph::Conv_wgrad_attributes().set_name("wgrad").set_padding(pad).set_stride(stride).set_dilation(dil));
    out->set_dim({p.k, p.c, p.r, p.s}).set_stride(nhwc_strides(p.k, p.c, p.r, p.s));
  }
  out->set_output(true).set_data_type(io).set_uid(kUidOut);

  fe_check(g->validate(), "validate", op, p);
  fe_check(g->build_operation_graph(handle), "build_operation_graph", op, p);
  fe_check(g->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}), "create_execution_plans", op, p);
  // Engines that down-convert their inputs (e.g. fp32 -> fp16 on tensor cores: fp16 range, not
  // TF32's) are never wanted, TF32 or not: PyTorch's cuDNN path drops them in every mode too.
  g->deselect_numeric_notes({fe::NumericalNote_t::DOWN_CONVERT_INPUTS});
  if (strict_fp32) {
    // Strict fp32 (--tf32 off, and the fp32 tests): no TF32 tensor-core engines either.
    g->deselect_numeric_notes({fe::NumericalNote_t::TENSOR_CORE});
  }
  if (deterministic) g->deselect_numeric_notes({fe::NumericalNote_t::NONDETERMINISTIC});
  g->deselect_workspace_greater_than(kWorkspaceCap);
  fe_check(g->check_support(),
           deterministic ? "check_support (no deterministic engine supports this conv within 1 GiB of workspace)"
                         : "check_support (no engine supports this conv within 1 GiB of workspace)",
           op, p);
  fe_check(g->build_plans(autotune ? fe::BuildPlanPolicy_t::ALL : fe::BuildPlanPolicy_t::HEURISTICS_CHOICE),
           "build_plans", op, p);
  Plan plan;
  fe_check(g->get_workspace_size(plan.workspace), "get_workspace_size", op, p);
  plan.graph = std::move(g);
  return plan;
}

}  // namespace

struct ConvEngine::Impl {
  cudaStream_t stream = nullptr;
  DeviceContext* ctx = nullptr;
  bool allow_tf32 = true;
  bool autotune = false;
  bool deterministic = false;
  std::map<Key, std::shared_ptr<Plan>> used;  // this engine's view of ctx->plans
  DeviceBuffer workspace;

  ~Impl() {
    if (!ctx) return;
    // The shared handle may still be bound to this engine's stream, which its owner destroys next:
    // unbind it (every use binds its own stream first anyway; this keeps no dangling stream around).
    std::lock_guard<std::mutex> l(ctx->mu);
    cudaStream_t bound = nullptr;
    if (cudnnGetStream(ctx->handle, &bound) == CUDNN_STATUS_SUCCESS && bound == stream)
      (void)cudnnSetStream(ctx->handle, nullptr);
  }

  // Caller holds ctx->mu.
  Plan& get_locked(Op op, const ConvShape& p) {
    const bool strict = p.dtype == DType::F32 && !allow_tf32;
    const Key key = make_key(op, p, strict, autotune, deterministic);
    auto mine = used.find(key);
    if (mine != used.end()) return *mine->second;
    auto& shared = ctx->plans[key];
    if (!shared) {
      const auto t0 = std::chrono::steady_clock::now();
      shared = std::make_shared<Plan>(build(ctx->handle, op, p, strict, autotune, deterministic));
      g_build_us += std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
      ++g_plans_built;
    }
    used.emplace(key, shared);
    return *shared;
  }

  void grow_workspace(int64_t bytes) {
    if (bytes <= static_cast<int64_t>(workspace.bytes())) return;
    // The old workspace may still be in use by queued convs: drain the stream before freeing.
    CUDA_CHECK(cudaStreamSynchronize(stream));
    workspace = DeviceBuffer();
    workspace = DeviceBuffer(static_cast<size_t>(bytes), "cuDNN conv workspace");
  }

  std::unique_lock<std::mutex> lock() {
    std::unique_lock<std::mutex> l(ctx->mu);
    // The shared handle last served whichever engine ran before: bind it to ours.
    CUDNN_CHECK(cudnnSetStream(ctx->handle, stream));
    return l;
  }

  void prepare(Op op, const ConvShape& p) {
    auto l = lock();
    grow_workspace(get_locked(op, p).workspace);
  }

  void run(Op op, const ConvShape& p, const void* a, const void* b, void* out) {
    auto l = lock();
    Plan& plan = get_locked(op, p);
    std::unordered_map<int64_t, void*> pack{
        {kUidA, const_cast<void*>(a)}, {kUidB, const_cast<void*>(b)}, {kUidOut, out}};
    if (autotune && !plan.tuned) {
      // Timed search over every built plan on the real buffers (their outputs are rewritten below).
      const int64_t need = plan.graph->get_autotune_workspace_size();
      if (need <= kWorkspaceCap) {
        grow_workspace(need);
        fe_check(plan.graph->autotune(ctx->handle, pack, workspace.get()), "autotune", op, p);
        fe_check(plan.graph->get_workspace_size(plan.workspace), "get_workspace_size", op, p);
      }
      plan.tuned = true;
    }
    // Another engine may have built (or tuned) the plan with a larger need than this one's workspace.
    grow_workspace(plan.workspace);
    fe_check(plan.graph->execute(ctx->handle, pack, workspace.get()), "execute", op, p);
    if (capture_invalidated(stream)) fail_capture_invalidated(str("cuDNN ", describe(op, p)));
  }
};

ConvEngine::ConvEngine(cudaStream_t stream, bool allow_tf32, bool autotune, bool deterministic)
    : impl_(std::make_unique<Impl>()) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  impl_->stream = stream;
  impl_->ctx = &device_context(device);
  impl_->allow_tf32 = allow_tf32;
  impl_->autotune = autotune;
  impl_->deterministic = deterministic;
}
#include "conv_engine_calls.inc"

size_t ConvEngine::workspace_bytes() const { return impl_->workspace.bytes(); }
size_t ConvEngine::plans_built() { return g_plans_built.load(); }
double ConvEngine::plan_build_seconds() { return static_cast<double>(g_build_us.load()) * 1e-6; }
size_t ConvEngine::cudnn_runtime_version() { return cudnnGetVersion(); }
size_t ConvEngine::cudnn_built_version() { return CUDNN_VERSION; }

}  // namespace ddp::cuda
