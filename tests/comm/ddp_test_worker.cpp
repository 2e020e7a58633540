// A small DDP trainer for the distributed tests and the overlap benchmark, run under mpirun. It uses
// the communicator exactly as the real trainer does: broadcast from rank 0, bucketed overlapped
// gradient averaging, agreed step counts, replica checksums, BN buffer averaging, summed evaluation.
//
// Models: "mlp" (a 2-layer perceptron without BN; its N-rank result equals the 1-rank result on the
// same global batch, up to summation order) and "resnet18" (the CPU ResNet18; with BN in train mode
// each rank normalises with its own micro-batch statistics, so the N-rank run equals a 1-rank run
// that accumulates the same N micro-batches: --emulate N).
//
//   ddp_test_worker --model mlp|resnet18 --steps S --global-batch G [--lr 0.05] [--bucket-bytes B]
//     [--timeout 60] [--check-every K] [--emulate R] [--uneven] [--eval V] [--no-comm]
//     [--fault perturb:RANK:STEP] [--out params.bin] [--report report.txt] [--pid-dir DIR]
//     [--sleep-ms MS] [--size 32] [--threads T] [--bench-overlap ITERS]
//   ddp_test_worker --late-peer MS [--floats N]   one N-float average, the last rank joining MS late
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ddp/comm/bucketer.h"
#include "ddp/comm/communicator.h"
#include "ddp/comm/dist.h"
#include "ddp/comm/replica_guard.h"
#include "ddp/core/check.h"
#include "ddp/core/log.h"
#if DDP_TEST_HAVE_CPU_RESNET
#include "ddp/backend/cpu/resnet18_cpu.h"
#endif

using namespace ddp;

namespace {

struct Args {
  std::string model = "mlp";
  int steps = 4, global_batch = 12, emulate = 0, check_every = 0, eval = 0, sleep_ms = 0, size = 32, threads = 0;
  int bench_overlap = 0, late_peer_ms = 0;
  size_t floats = size_t(16) << 20;
  double lr = 0.05, timeout = 60;
  size_t bucket_bytes = 1024;
  bool uneven = false, no_comm = false;
  int fault_rank = -1, fault_step = -1;
  std::string out, report, pid_dir;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      DDP_CHECK(i + 1 < argc, "flag ", k, " needs a value");
      return argv[++i];
    };
    if (k == "--model") a.model = val();
    else if (k == "--steps") a.steps = std::stoi(val());
    else if (k == "--global-batch") a.global_batch = std::stoi(val());
    else if (k == "--emulate") a.emulate = std::stoi(val());
    else if (k == "--check-every") a.check_every = std::stoi(val());
    else if (k == "--eval") a.eval = std::stoi(val());
    else if (k == "--sleep-ms") a.sleep_ms = std::stoi(val());
    else if (k == "--size") a.size = std::stoi(val());
    else if (k == "--threads") a.threads = std::stoi(val());
    else if (k == "--bench-overlap") a.bench_overlap = std::stoi(val());
    else if (k == "--late-peer") a.late_peer_ms = std::stoi(val());
    else if (k == "--floats") a.floats = std::stoull(val());
    else if (k == "--lr") a.lr = std::stod(val());
    else if (k == "--timeout") a.timeout = std::stod(val());
    else if (k == "--bucket-bytes") a.bucket_bytes = std::stoull(val());
    else if (k == "--uneven") a.uneven = true;
    else if (k == "--no-comm") a.no_comm = true;
    else if (k == "--out") a.out = val();
    else if (k == "--report") a.report = val();
    else if (k == "--pid-dir") a.pid_dir = val();
    else if (k == "--fault") {
      std::string f = val();
      DDP_CHECK(std::sscanf(f.c_str(), "perturb:%d:%d", &a.fault_rank, &a.fault_step) == 2,
                "--fault expects perturb:RANK:STEP, got '", f, "'");
    } else DDP_FAIL("unknown flag ", k);
  }
  return a;
}

// Deterministic synthetic data: sample i is the same on every rank and in every run.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
float unit(uint64_t i, uint64_t j) {  // roughly N(0,1): sum of 4 uniforms, centred and scaled
  float s = 0;
  for (int k = 0; k < 4; ++k) s += static_cast<float>(mix(i * 1315423911ull + j * 4 + k) >> 40) / float(1 << 24);
  return (s - 2.0f) * 1.732f;
}

// The interface the loop needs from a model; both models implement it.
struct TrainModel {
  virtual ~TrainModel() = default;
  virtual int64_t param_count() = 0;
  virtual int64_t buffer_count() = 0;
  virtual float* params() = 0;
  virtual float* grads() = 0;
  virtual float* buffers() = 0;
  virtual void set_batch(const std::vector<int64_t>& samples) = 0;
  virtual float forward_train() = 0;
  virtual void backward(const nn::GradReadyFn& cb) = 0;
  virtual void sgd(float lr) = 0;  // momentum 0.9, on grads() as they are
  virtual nn::EvalCounts eval(const std::vector<int64_t>& samples) = 0;
  virtual void broadcast_from_0(comm::Communicator& c) = 0;
  // Parameters only during training: BN-like buffers follow each rank's own batches and are made
  // equal only by average_buffers (before evaluation / checkpoints).
  double checksum(bool with_buffers = false) {
    double s = 0;
    const float* p = params();
    for (int64_t i = 0; i < param_count(); ++i) s += static_cast<double>(p[i]) * static_cast<double>(1 + (i % 7));
    if (!with_buffers) return s;
    const float* b = buffers();
    for (int64_t i = 0; i < buffer_count(); ++i) s += static_cast<double>(b[i]) * 0.5;
    return s;
  }
};

constexpr int kClasses = 10;

// y = W2 relu(W1 x + b1) + b2, softmax cross-entropy. Parameter order [W1, b1, W2, b2] so backward
// finishes the buffer's tail first, like ResNet18's state_dict order. One "BN-like" buffer: a
// running mean of the input features from the local batch (differs per rank until averaged).
class Mlp final : public TrainModel {
 public:
  static constexpr int D = 32, H = 64, C = kClasses;
  explicit Mlp(uint64_t seed) : p_(count()), g_(count()), m_(count()), buf_(D, 0.0f) {
    for (int64_t i = 0; i < count(); ++i) p_[i] = 0.2f * unit(seed + 77, i) / 1.732f;
  }
  static int64_t count() { return int64_t(H) * D + H + int64_t(C) * H + C; }
  int64_t param_count() override { return count(); }
  int64_t buffer_count() override { return D; }
  float* params() override { return p_.data(); }
  float* grads() override { return g_.data(); }
  float* buffers() override { return buf_.data(); }
  float* W1() { return p_.data(); }
  float* b1() { return p_.data() + H * D; }
  float* W2() { return b1() + H; }
  float* b2() { return W2() + C * H; }

  void set_batch(const std::vector<int64_t>& s) override {
    n_ = static_cast<int>(s.size());
    x_.assign(size_t(n_) * D, 0);
    y_.assign(n_, 0);
    for (int i = 0; i < n_; ++i) {
      for (int d = 0; d < D; ++d) x_[i * D + d] = unit(s[i], d) + 1.5f * ((s[i] % C) == d % C ? 1.0f : 0.0f);
      y_[i] = static_cast<int>(s[i] % C);
    }
  }
  float forward_train() override {
    for (int d = 0; d < D; ++d) {
      float mean = 0;
      for (int i = 0; i < n_; ++i) mean += x_[i * D + d];
      buf_[d] = 0.9f * buf_[d] + 0.1f * mean / n_;
    }
    return forward();
  }
  float forward() {
    h_.assign(size_t(n_) * H, 0);
    pr_.assign(size_t(n_) * C, 0);
    float loss = 0;
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < H; ++j) {
        float a = b1()[j];
        for (int d = 0; d < D; ++d) a += W1()[j * D + d] * x_[i * D + d];
        h_[i * H + j] = a > 0 ? a : 0;
      }
      float z[C], mx = -1e30f;
      for (int c = 0; c < C; ++c) {
        float a = b2()[c];
        for (int j = 0; j < H; ++j) a += W2()[c * H + j] * h_[i * H + j];
        z[c] = a;
        mx = std::max(mx, a);
      }
      float se = 0;
      for (int c = 0; c < C; ++c) se += std::exp(z[c] - mx);
      for (int c = 0; c < C; ++c) pr_[i * C + c] = std::exp(z[c] - mx) / se;
      loss += -(z[y_[i]] - mx - std::log(se));
      lossi_.resize(n_);
      lossi_[i] = -(z[y_[i]] - mx - std::log(se));
    }
    return loss / n_;
  }
  void backward(const nn::GradReadyFn& cb) override {
    std::fill(g_.begin(), g_.end(), 0.0f);
    float* gW1 = g_.data();
    float* gb1 = gW1 + H * D;
    float* gW2 = gb1 + H;
    float* gb2 = gW2 + C * H;
    std::vector<float> dz(size_t(n_) * C), dh(size_t(n_) * H, 0);
    for (int i = 0; i < n_; ++i)
      for (int c = 0; c < C; ++c) dz[i * C + c] = (pr_[i * C + c] - (c == y_[i] ? 1.0f : 0.0f)) / n_;
    for (int i = 0; i < n_; ++i)
      for (int c = 0; c < C; ++c) gb2[c] += dz[i * C + c];
    if (cb) cb({count() - C, nullptr});
    for (int i = 0; i < n_; ++i)
      for (int c = 0; c < C; ++c)
        for (int j = 0; j < H; ++j) gW2[c * H + j] += dz[i * C + c] * h_[i * H + j];
    if (cb) cb({count() - C - int64_t(C) * H, nullptr});
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < H; ++j) {
        if (h_[i * H + j] <= 0) continue;
        float a = 0;
        for (int c = 0; c < C; ++c) a += W2()[c * H + j] * dz[i * C + c];
        dh[i * H + j] = a;
      }
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < H; ++j) gb1[j] += dh[i * H + j];
    if (cb) cb({int64_t(H) * D, nullptr});
    for (int i = 0; i < n_; ++i)
      for (int j = 0; j < H; ++j)
        for (int d = 0; d < D; ++d) gW1[j * D + d] += dh[i * H + j] * x_[i * D + d];
    if (cb) cb({0, nullptr});
  }
  void sgd(float lr) override {
    for (int64_t i = 0; i < count(); ++i) {
      m_[i] = first_ ? g_[i] : 0.9f * m_[i] + g_[i];
      p_[i] -= lr * m_[i];
    }
    first_ = false;
  }
  nn::EvalCounts eval(const std::vector<int64_t>& s) override {
    nn::EvalCounts e;
    if (s.empty()) return e;
    set_batch(s);
    forward();
    for (int i = 0; i < n_; ++i) {
      int better = 0;
      for (int c = 0; c < C; ++c) better += pr_[i * C + c] > pr_[i * C + y_[i]];
      e.top1 += better == 0;
      e.top5 += better < 5;
      e.loss_sum += lossi_[i];
    }
    e.count = n_;
    return e;
  }
  void broadcast_from_0(comm::Communicator& c) override {
    c.broadcast(p_.data(), p_.size() * sizeof(float), 0);
    c.broadcast(buf_.data(), buf_.size() * sizeof(float), 0);
  }

 private:
  std::vector<float> p_, g_, m_, buf_, x_, h_, pr_, lossi_;
  std::vector<int> y_;
  int n_ = 0;
  bool first_ = true;
};

#if DDP_TEST_HAVE_CPU_RESNET
class ResNet final : public TrainModel {
 public:
  ResNet(uint64_t seed, int max_batch, int size, int threads) : size_(size) {
    nn::ModelConfig cfg;
    cfg.num_classes = kClasses;
    cfg.max_batch = std::max(1, max_batch);
    cfg.height = cfg.width = size;
    cfg.threads = threads;
    cfg.init.seed = seed;
    m_ = std::make_unique<cpu::CpuResNet18>(cfg);
  }
  int64_t param_count() override { return m_->spec().param_count; }
  int64_t buffer_count() override { return m_->spec().buffer_count; }
  float* params() override { return m_->params(); }
  float* grads() override { return m_->grads(); }
  float* buffers() override { return m_->buffers(); }
  void set_batch(const std::vector<int64_t>& s) override {
    const int n = static_cast<int>(s.size()), hw = size_ * size_;
    std::vector<float> x(size_t(n) * 3 * hw);
    std::vector<int32_t> y(n);
    for (int i = 0; i < n; ++i) {
      y[i] = static_cast<int32_t>(s[i] % kClasses);
      for (int k = 0; k < 3 * hw; ++k) x[size_t(i) * 3 * hw + k] = unit(s[i], k) + 0.3f * y[i] / kClasses;
    }
    m_->set_input_f32(x.data(), y.data(), n, size_, size_);
  }
  float forward_train() override { return m_->forward(nn::Mode::Train); }
  void backward(const nn::GradReadyFn& cb) override { m_->backward(1.0f, cb); }
  void sgd(float lr) override {
    nn::SgdConfig c;
    c.momentum = 0.9f;
    m_->sgd_step(c, lr, 1.0f);
  }
  nn::EvalCounts eval(const std::vector<int64_t>& s) override {
    nn::EvalCounts total;
    const int mb = m_->config().max_batch;
    for (size_t i = 0; i < s.size(); i += mb) {
      std::vector<int64_t> part(s.begin() + i, s.begin() + std::min(s.size(), i + mb));
      set_batch(part);
      m_->forward(nn::Mode::Eval);
      auto e = m_->eval_counts();
      total.top1 += e.top1;
      total.top5 += e.top5;
      total.count += e.count;
      total.loss_sum += e.loss_sum;
    }
    return total;
  }
  void broadcast_from_0(comm::Communicator& c) override { comm::broadcast_model(c, *m_); }

 private:
  int size_;
  std::unique_ptr<cpu::CpuResNet18> m_;
};
#endif

std::unique_ptr<TrainModel> make(const Args& a, uint64_t seed, int max_batch) {
  if (a.model == "mlp") return std::make_unique<Mlp>(seed);
#if DDP_TEST_HAVE_CPU_RESNET
  if (a.model == "resnet18") return std::make_unique<ResNet>(seed, max_batch, a.size, a.threads);
#else
  (void)max_batch;
  if (a.model == "resnet18") DDP_FAIL("this build has no CPU ResNet18 (ddp_cpu)");
#endif
  DDP_FAIL("unknown --model ", a.model);
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path + ".tmp");
  f << text;
  f.close();
  std::rename((path + ".tmp").c_str(), path.c_str());
}

std::vector<int64_t> batch_samples(int64_t step, int global_batch, int world, int rank) {
  const int per = global_batch / world;
  std::vector<int64_t> s(per);
  for (int i = 0; i < per; ++i) s[i] = step * global_batch + int64_t(rank) * per + i;
  return s;
}

// --emulate R: one process, R micro-batches per step, gradients averaged by hand (no communicator).
int run_emulated(const Args& a) {
  DDP_CHECK(a.global_batch % a.emulate == 0, "--global-batch must be divisible by --emulate");
  auto m = make(a, 1000, a.global_batch / a.emulate);
  const int64_t n = m->param_count();
  std::vector<double> acc(n);
  for (int s = 0; s < a.steps; ++s) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int r = 0; r < a.emulate; ++r) {
      m->set_batch(batch_samples(s, a.global_batch, a.emulate, r));
      m->forward_train();
      m->backward(nullptr);
      for (int64_t i = 0; i < n; ++i) acc[i] += m->grads()[i];
    }
    for (int64_t i = 0; i < n; ++i) m->grads()[i] = static_cast<float>(acc[i] / a.emulate);
    m->sgd(static_cast<float>(a.lr));
  }
  if (!a.out.empty()) {
    std::ofstream f(a.out, std::ios::binary);
    f.write(reinterpret_cast<const char*>(m->params()), n * sizeof(float));
  }
  return 0;
}

// --late-peer MS: every rank but the last issues one large average at once and waits in wait_all
// (its poll loop backs off to sleeping after 200 ms); the last rank joins MS later. Prints each
// rank's time from its own issue to the end of wait_all: the late rank's is the transfer itself.
int run_late_peer(const Args& a, const comm::DistEnv& env, comm::Communicator& c) {
  std::vector<float> v(a.floats, static_cast<float>(env.rank + 1));
  c.barrier();
  if (env.rank == env.world - 1) std::this_thread::sleep_for(std::chrono::milliseconds(a.late_peer_ms));
  auto t0 = std::chrono::steady_clock::now();
  c.allreduce_avg_async(v.data(), v.size(), nullptr);
  c.wait_all();
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const float want = static_cast<float>(env.world + 1) / 2.0f;  // mean of 1..world
  for (size_t i = 0; i < v.size(); ++i) {
    DDP_CHECK(std::fabs(v[i] - want) <= 1e-6f * want, "element ", i, " is ", v[i], ", want ", want);
  }
  std::printf("late_peer rank=%d seconds=%.4f\n", env.rank, t);
  std::fflush(stdout);
  c.barrier();
  return 0;
}

int run(const Args& a, const comm::DistEnv& env) {
  comm::CommOptions opt;
  opt.timeout_s = a.timeout;
  auto c = comm::make_mpi_communicator(env, opt);
  if (a.late_peer_ms > 0) return run_late_peer(a, env, *c);
  const int R = env.world, me = env.rank;
  DDP_CHECK(a.global_batch % R == 0, "--global-batch ", a.global_batch, " is not divisible by ", R, " ranks");
  if (!a.pid_dir.empty()) write_file(str(a.pid_dir, "/rank", me, ".pid"), str(getpid(), "\n"));

  // Each rank initialises differently on purpose: the broadcast must make them equal.
  auto m = make(a, 1000 + uint64_t(me) * 17, a.global_batch / R);
  m->broadcast_from_0(*c);

  // Uneven shards: rank r holds `steps + r` batches' worth of samples; all run the agreed minimum.
  int64_t local_steps = a.steps + (a.uneven ? me : 0);
  int64_t steps = comm::agree_steps(*c, local_steps);

  comm::GradBucketer bucketer(*c, m->grads(), m->param_count(), a.bucket_bytes);
  bucketer.enabled = !a.no_comm;
  auto cb = [&](const nn::GradReady& r) { bucketer.on_ready(r); };

  if (a.bench_overlap > 0) {
    // Step time with communication off, overlapped, and as one bucket after backward, plus the
    // whole-gradient allreduce alone. The four are interleaved iteration by iteration so that load
    // drifting on a shared machine hits them alike; medians of the slowest rank.
    comm::GradBucketer b_off(*c, m->grads(), m->param_count(), a.bucket_bytes);
    comm::GradBucketer b_on(*c, m->grads(), m->param_count(), a.bucket_bytes);
    comm::GradBucketer b_end(*c, m->grads(), m->param_count(), size_t(m->param_count()) * 4);
    b_off.enabled = false;
    auto step_time = [&](comm::GradBucketer& b, int it) {
      auto bcb = [&](const nn::GradReady& r) { b.on_ready(r); };
      c->barrier();
      auto t0 = std::chrono::steady_clock::now();
      m->set_batch(batch_samples(it, a.global_batch, R, me));
      m->forward_train();
      b.begin_step();
      m->backward(bcb);
      b.finish();
      m->sgd(0.0f);
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    auto allreduce_time = [&]() {
      c->barrier();
      auto t0 = std::chrono::steady_clock::now();
      c->allreduce_avg_async(m->grads(), m->param_count(), nullptr);
      c->wait_all();
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    std::vector<double> t_off, t_on, t_end, t_ar;
    for (int it = 0; it <= a.bench_overlap; ++it) {
      double x0 = step_time(b_off, it), x1 = step_time(b_on, it), x2 = step_time(b_end, it), x3 = allreduce_time();
      if (it == 0) continue;  // warm-up
      t_off.push_back(x0);
      t_on.push_back(x1);
      t_end.push_back(x2);
      t_ar.push_back(x3);
    }
    auto med = [&](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      double x = v[v.size() / 2];
      c->allreduce_max(&x, 1);
      return x;
    };
    const double off = med(t_off), on = med(t_on), end1 = med(t_end), ar = med(t_ar);
    const double hidden = ar > 0 ? std::clamp(1.0 - (on - off) / ar, 0.0, 1.0) : 0.0;
    info0("overlap ranks=", R, " model=", a.model, " params=", m->param_count(), " bucket_bytes=", a.bucket_bytes,
          " buckets=", b_on.num_buckets(), " iters=", a.bench_overlap, " step_ms_comm_off=", off * 1e3,
          " step_ms_overlapped=", on * 1e3, " step_ms_one_bucket_after_backward=", end1 * 1e3,
          " allreduce_ms=", ar * 1e3, " hidden_share=", hidden);
    return 0;
  }

  for (int64_t s = 0; s < steps; ++s) {
    c->set_step(s);
    m->set_batch(batch_samples(s, a.global_batch, R, me));
    m->forward_train();
    bucketer.begin_step();
    m->backward(cb);
    bucketer.finish();
    m->sgd(static_cast<float>(a.lr));
    if (me == a.fault_rank && s == a.fault_step) m->params()[0] += 1e-3f;  // test-only fault
    if (a.check_every > 0 && (s + 1) % a.check_every == 0) comm::check_replicas(*c, m->checksum(), s);
    if (!a.pid_dir.empty()) write_file(str(a.pid_dir, "/rank", me, ".step"), str(s, "\n"));
    if (a.sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(a.sleep_ms));
  }
  c->set_step(steps);
  comm::average_buffers(*c, m->buffers(), m->buffer_count());
  comm::check_replicas(*c, m->checksum(true), steps);

  nn::EvalCounts total;
  if (a.eval > 0) {
    // Strided split: sample i is evaluated by rank i % R only, no padding.
    std::vector<int64_t> mine;
    for (int64_t i = me; i < a.eval; i += R) mine.push_back(1000000 + i);
    total = comm::sum_eval_counts(*c, m->eval(mine));
  }
  std::vector<double> all_steps = c->allgather(static_cast<double>(steps));
  if (me == 0) {
    if (!a.out.empty()) {
      std::ofstream f(a.out, std::ios::binary);
      f.write(reinterpret_cast<const char*>(m->params()), m->param_count() * sizeof(float));
    }
    if (!a.report.empty()) {
      std::string steps_list;
      for (double v : all_steps) steps_list += str(steps_list.empty() ? "" : ",", static_cast<int64_t>(v));
      char loss[64];
      std::snprintf(loss, sizeof loss, "%.9g", total.loss_sum);
      write_file(a.report, str("ranks=", R, "\nsteps=", steps_list, "\neval_count=", total.count, "\neval_top1=",
                               total.top1, "\neval_top5=", total.top5, "\neval_loss_sum=", loss, "\n"));
    }
  }
  c->barrier();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  try {
    a = parse(argc, argv);
    if (a.emulate > 0) return run_emulated(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  comm::DistEnv env = comm::init_distributed(&argc, &argv);
  int rc = 0;
  try {
    rc = run(a, env);
  } catch (const std::exception& e) {
    comm::abort_job(e.what(), 3);
  }
  comm::finalize_distributed();
  return rc;
}
