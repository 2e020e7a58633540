// The emulated CUDA runtime and cuBLAS (see emu.h for what is and is not emulated). These
// definitions are linked into each emulation test executable itself, so they take the place of
// libcudart's and libcublas's for every caller in the process.
#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iterator>
#include <deque>
#include <string>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "emu.h"

namespace ddp::cuda_emu {

ThreadState* g_cur = nullptr;

namespace {

// ---- memory -------------------------------------------------------------------------------------
// A mapping per allocation: [guard page][canary bytes][the buffer][canary bytes][guard page].
struct Alloc {
  size_t bytes;
  MemKind kind;
  char* map;      // the mapping it lies in (starts and ends with a guard page)
  size_t span;    // the mapping's size
  size_t before;  // canary bytes between the front guard page and the buffer
  size_t after;   // canary bytes between the buffer's end and the back guard page
};
std::mutex g_mem_mu;
std::map<uintptr_t, Alloc> g_allocs;  // by base address
size_t g_device_bytes = 0;
constexpr size_t kTotalBytes = size_t{80} << 30;  // what cudaMemGetInfo reports as the device's size

// The allocation holding [p, p + bytes), or nullptr.
const Alloc* find_alloc(const void* p, size_t bytes, uintptr_t* base_out = nullptr) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  if (a < it->first || a + bytes > it->first + it->second.bytes || (bytes == 0 && a >= it->first + it->second.bytes))
    return nullptr;
  if (base_out) *base_out = it->first;
  return &it->second;
}

// Every allocation lies between two inaccessible guard pages, so a kernel reading or writing just
// past a buffer's end or just before its start faults at once (the handler below names the kernel
// and the byte). Pages are 4 KiB and buffers start 16-byte aligned (the alignment a kernel's vector
// accesses need; cudaMalloc gives 256), so each buffer ends against one guard page and is separated
// from the other by slack: by default the buffer ends at the next 16-byte boundary before the back
// guard page (the up to 15 bytes of slack after it) and the up to 4080 bytes before it are slack;
// with DDP_CUDA_EMU_GUARD_FRONT=1 it starts at the front guard page (page-aligned, so 256-byte aligned
// as cudaMalloc's) and the slack is after its end, up to the back guard page. Slack holds canary
// bytes that every kernel run checks are intact, so a write there stops the run too; only a read
// inside the slack goes unseen. (A GPU may corrupt a neighbour silently, read garbage, or fault.)
constexpr unsigned char kCanary = 0xA5;
const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));
size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

void install_fault_handler();

void* emu_alloc(size_t bytes, MemKind kind) {
  install_fault_handler();
  const size_t used = round_up(bytes, 16), inner = round_up(used, kPage), span = inner + 2 * kPage;
  void* m = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  char* map = static_cast<char*>(m);
  if (mprotect(map, kPage, PROT_NONE) != 0 || mprotect(map + span - kPage, kPage, PROT_NONE) != 0) {
    munmap(m, span);
    return nullptr;
  }
  const size_t before = guard_front() ? 0 : inner - used, after = inner - before - bytes;
  char* p = map + kPage + before;
  std::memset(map + kPage, kCanary, before);
  // A GPU does not clear what it allocates: all-ones bytes are NaN in fp32, fp16 and bf16, so code
  // that reads memory it never wrote shows it.
  std::memset(p, 0xFF, bytes);
  std::memset(p + bytes, kCanary, after);
  std::lock_guard<std::mutex> lk(g_mem_mu);
  g_allocs[reinterpret_cast<uintptr_t>(p)] = Alloc{bytes, kind, map, span, before, after};
  if (kind == MemKind::Device) g_device_bytes += bytes;
  return p;
}

// Byte `offset` from the buffer's start (negative: before it), outside the buffer, described.
std::string describe_outside(uintptr_t base, const Alloc& a, ptrdiff_t offset) {
  char buf[240];
  const char* kind = a.kind == MemKind::Device ? "device" : "pinned";
  if (offset < 0)
    std::snprintf(buf, sizeof buf, "byte %td (%td before its start) of a %zu-byte %s allocation at %p", offset, -offset,
                  a.bytes, kind, reinterpret_cast<void*>(base));
  else
    std::snprintf(buf, sizeof buf, "byte +%td of a %zu-byte %s allocation at %p (the first past its end is +%zu)",
                  offset, a.bytes, kind, reinterpret_cast<void*>(base), a.bytes);
  return buf;
}

// The first index in [p, p + n) not holding the canary, or n.
size_t first_damaged(const unsigned char* p, size_t n) {
  static const std::vector<unsigned char> ref(65536, kCanary);
  for (size_t at = 0; at < n; at += ref.size()) {
    const size_t k = std::min(ref.size(), n - at);
    if (std::memcmp(p + at, ref.data(), k) == 0) continue;
    for (size_t i = 0; i < k; ++i)
      if (p[at + i] != kCanary) return at + i;
  }
  return n;
}

// The first allocation whose canary a kernel overwrote, described ("before the start of a buffer:
// ..." or "past the end of a buffer: ..."), or "" when all are intact.
std::string damaged_canary() {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  for (const auto& [base, a] : g_allocs) {
    const auto* start = reinterpret_cast<const unsigned char*>(base);
    if (const size_t i = first_damaged(start - a.before, a.before); i < a.before)
      return "before the start of a buffer: " + describe_outside(base, a, -static_cast<ptrdiff_t>(a.before - i));
    if (const size_t i = first_damaged(start + a.bytes, a.after); i < a.after)
      return "past the end of a buffer: " + describe_outside(base, a, static_cast<ptrdiff_t>(a.bytes + i));
  }
  return "";
}

bool emu_free(void* p, MemKind kind) {
  if (!p) return true;
  std::lock_guard<std::mutex> lk(g_mem_mu);
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocs.end() || it->second.kind != kind) return false;
  if (kind == MemKind::Device) g_device_bytes -= it->second.bytes;
  munmap(it->second.map, it->second.span);
  g_allocs.erase(it);
  return true;
}

// ---- errors -------------------------------------------------------------------------------------
thread_local cudaError_t g_last_error = cudaSuccess;

cudaError_t fail(cudaError_t e, const char* fn, const char* why) {
  std::fprintf(stderr, "[cuda emulation] %s: %s\n", fn, why);
  g_last_error = e;
  return e;
}


// ---- streams, events ----------------------------------------------------------------------------
// Work on a stream is deferred: it runs when something waits for it (a synchronisation, an event
// query, another stream waiting on an event, an implicitly synchronising call), as a GPU may run
// it that late. So a host read of device or pinned memory without the synchronisation a GPU needs
// sees stale data (NaN bytes, or the last value) instead of the result. Work on the legacy default
// stream (nullptr) waits for the blocking streams' work and runs at once. DDP_CUDA_EMU_IMMEDIATE=1
// runs everything at once instead (to tell a synchronisation bug from another).
// Between streams, the order work runs in is the order the host waits: a stream waited for runs
// its work then, streams flushed together (a device synchronisation) run in the order they were
// created. With DDP_CUDA_EMU_REVERSE=1 the other way round: a host wait for a stream or an event
// first runs every other stream's queued work (a GPU may have run it already), and streams flushed
// together run last-created first. So work on one stream that reads or overwrites what another's
// work writes, with no event wait ordering them (a race between streams), runs in one order in one
// run and in the other order in the other; a result that depends on it differs between the two.
bool reverse_order();
std::mutex g_obj_mu;
std::set<const void*> g_streams;
struct Capture;
// How many of each capturing stream's operations a stream's next operation depends on (a vector
// clock): EndCapture checks with it that every stream forked into a capture was joined back.
using Clock = std::map<const void*, uint64_t>;
std::atomic<uint64_t> g_streams_created{0};
struct Stream {
  uint64_t serial = ++g_streams_created;  // creation order
  bool blocking = true;  // orders with the legacy default stream (not cudaStreamNonBlocking)
  std::deque<std::function<void()>> pending;
  uint64_t enqueued = 0, done = 0;
  Capture* cap = nullptr;  // the capture this stream's work goes into, if any
  Clock knows;             // while capturing
};
struct Event {
  std::chrono::steady_clock::time_point at{};
  bool recorded = false;
  Stream* stream = nullptr;  // where it was last recorded (nullptr: already complete)
  uint64_t seq = 0;          // complete once stream->done reaches this
  uint64_t cap_id = 0;       // nonzero: last recorded in that capture (live or ended)
  Clock clock;               // what its record depends on, when recorded in a capture
};

// ---- stream capture (CUDA graphs) ---------------------------------------------------------------
// Work enqueued on a capturing stream is recorded, not run; the graph replays it. The records keep
// the order the host enqueued them in, which respects every dependency (an operation is enqueued
// after what it waits for), so a replay runs them one after another in that order. The rules CUDA
// enforces during a capture are enforced here as CUDA states them (cudaStreamBeginCapture,
// cudaThreadExchangeStreamCaptureMode, the programming guide's "prohibited and unhandled
// operations"): an error, and the capture invalidated, for a synchronisation or query of a capturing
// stream or of an event recorded in a capture, a potentially unsafe call (cudaMalloc, cudaFree, a
// blocking copy, a device synchronisation) from a thread the capture's mode prohibits, the legacy
// stream used while a blocking stream captures, a wait on an event recorded outside the capture,
// and a forked stream not joined back at cudaStreamEndCapture.
struct Capture {
  uint64_t id = 0;
  Stream* origin = nullptr;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;
  std::string invalid;                                   // why it was invalidated ("" while valid)
  std::vector<std::function<void()>> ops;                // in enqueue order
  std::map<const void*, uint64_t> count;                 // operations captured per stream
};
std::map<uint64_t, Capture*> g_captures;  // live ones, by id
uint64_t g_next_capture = 1;
using Ops = std::shared_ptr<const std::vector<std::function<void()>>>;
struct Graph {
  Ops ops;
};
struct GraphExec {
  Ops ops;
};
std::set<const void*> g_graphs, g_graph_execs;
std::set<const void*> g_events;
std::recursive_mutex g_queue_mu;  // deferred work may wait on (run) other streams' work

bool immediate_mode() {
  static const bool on = [] {
    const char* e = std::getenv("DDP_CUDA_EMU_IMMEDIATE");
    return e && std::string(e) == "1";
  }();
  return on;
}

// Runs s's deferred work up to its upto-th operation.
void flush(Stream* s, uint64_t upto = UINT64_MAX) {
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  while (s->done < upto && !s->pending.empty()) {
    auto op = std::move(s->pending.front());
    s->pending.pop_front();
    op();
    ++s->done;
  }
}
// In creation order (last-created first with DDP_CUDA_EMU_REVERSE=1).
std::vector<Stream*> live_streams() {
  std::lock_guard<std::mutex> lk(g_obj_mu);
  std::vector<Stream*> v;
  for (const void* p : g_streams) v.push_back(static_cast<Stream*>(const_cast<void*>(p)));
  std::sort(v.begin(), v.end(), [](const Stream* a, const Stream* b) { return a->serial < b->serial; });
  if (reverse_order()) std::reverse(v.begin(), v.end());
  return v;
}
void flush_all() {
  for (Stream* s : live_streams()) flush(s);
}
void flush_blocking() {
  for (Stream* s : live_streams())
    if (s->blocking) flush(s);
}
// The host waits for s's work up to its upto-th operation: with DDP_CUDA_EMU_REVERSE=1, every other
// stream's queued work runs first (see above). Only a host wait does this: work run by a flush
// (a stream's wait on an event) must not start other streams' work in the middle of its own.
void host_wait(Stream* s, uint64_t upto = UINT64_MAX) {
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  if (reverse_order())
    for (Stream* o : live_streams())
      if (o != s) flush(o);
  flush(s, upto);
}
void invalidate(Capture* c, const std::string& why) {
  if (c->invalid.empty()) c->invalid = why;
}
// The live capture of a blocking stream, if any: the legacy stream may not be used meanwhile.
Capture* blocking_capture() {
  for (const auto& [id, c] : g_captures)
    for (Stream* st : live_streams())
      if (st->cap == c && st->blocking) return c;
  return nullptr;
}
// Whether the calling thread may make a potentially unsafe call now (its mode is Global, the
// default: prohibited during its own non-relaxed captures and any thread's global-mode ones).
// every_mode: a call illegal during any capture, whatever its mode and thread (a device
// synchronisation: the programming guide forbids syncing a broader handle than the capturing stream).
cudaError_t unsafe_call(const char* fn, bool every_mode = false) {
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  bool hit = false;
  for (const auto& [id, c] : g_captures) {
    const bool mine = c->thread == std::this_thread::get_id();
    if (every_mode || (mine && c->mode != cudaStreamCaptureModeRelaxed) ||
        (!mine && c->mode == cudaStreamCaptureModeGlobal)) {
      invalidate(c, std::string(fn) + " was called during the capture");
      hit = true;
    }
  }
  if (!hit) return cudaSuccess;
  return fail(cudaErrorStreamCaptureUnsupported, fn,
              "not permitted while a stream is being captured (a potentially unsafe call, which a graph would not "
              "record); the capture is invalidated");
}

// Enqueues op on stream s (the legacy stream: runs it now, after the blocking streams' work); on a
// capturing stream, records it into the capture instead.
cudaError_t submit(cudaStream_t s, std::function<void()> op, const char* fn = "stream work") {
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  if (s == nullptr) {
    if (Capture* c = blocking_capture()) {
      invalidate(c, std::string(fn) + " used the legacy default stream");
      return fail(cudaErrorStreamCaptureImplicit, fn,
                  "the legacy default stream was used while a blocking stream is being captured");
    }
  } else if (Capture* c = reinterpret_cast<Stream*>(s)->cap) {
    if (!c->invalid.empty())
      return fail(cudaErrorStreamCaptureInvalidated, fn, ("the stream's capture was invalidated: " + c->invalid).c_str());
    c->ops.push_back(std::move(op));
    reinterpret_cast<Stream*>(s)->knows[s] = ++c->count[s];
    return cudaSuccess;
  }
  if (s == nullptr || immediate_mode()) {
    if (s == nullptr) flush_blocking();
    else flush(reinterpret_cast<Stream*>(s));
    op();
    return cudaSuccess;
  }
  auto* st = reinterpret_cast<Stream*>(s);
  st->pending.push_back(std::move(op));
  ++st->enqueued;
  return cudaSuccess;
}

// Streams and events are live objects of these types, their handles the objects' addresses.
template <class T, class H>
cudaError_t make_handle(H* out, std::set<const void*>& live) {
  auto* obj = new T;
  *out = reinterpret_cast<H>(obj);
  std::lock_guard<std::mutex> lk(g_obj_mu);
  live.insert(obj);
  return cudaSuccess;
}
template <class T, class H>
cudaError_t drop_handle(H h, std::set<const void*>& live, const char* fn) {
  std::lock_guard<std::mutex> lk(g_obj_mu);
  if (!live.erase(h)) return fail(cudaErrorInvalidResourceHandle, fn, "unknown handle");
  delete reinterpret_cast<T*>(h);
  return cudaSuccess;
}


// ---- kernels ------------------------------------------------------------------------------------
// Fibers for kernels with barriers: a minimal x86-64 stack switch (the callee-saved registers and the
// stack pointer). ucontext's swapcontext also saves the signal mask with a system call per switch,
// which made a reduction over ResNet18's 11.7 M gradients take a minute.
extern "C" void ddp_emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl ddp_emu_switch
.type ddp_emu_switch,@function
ddp_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size ddp_emu_switch,.-ddp_emu_switch
)");

constexpr size_t kFiberStack = 256 * 1024;

struct Fiber {
  void* sp = nullptr;
  ThreadState st;
  bool done = false, waiting = false;
  int pred = 0;
  int site = 0;  // the source line of the barrier it waits at
};

struct Engine {
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  size_t stack_count = 0;
  void* sched_sp = nullptr;
  Fiber* running = nullptr;
  bool fiber_mode = false, barrier_seen = false;
  int barrier_or = 0;
  const std::function<void()>* body = nullptr;
  const char* name = "";
  std::unordered_map<const void*, bool> uses_barrier;  // learnt at each kernel's first launch
  bool active = false;
};
Engine g_engine;

// A fault inside a kernel on a guard page before or after an allocation: say which kernel and which byte,
// then let the fault take its course (a death test, or a core dump, sees it). Any other fault is
// passed on unchanged.
struct sigaction g_prev_segv;
void on_fault(int sig, siginfo_t* info, void* ctx) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  if (g_engine.active && g_mem_mu.try_lock()) {
    // The allocation whose mapping (guard pages included) holds addr: the first one at or after it
    // (addr in its front guard page), or the last one before it (addr in its back guard page).
    auto it = g_allocs.upper_bound(addr);
    const std::map<uintptr_t, Alloc>::iterator candidates[] = {it, it == g_allocs.begin() ? g_allocs.end() : std::prev(it)};
    for (auto c : candidates) {
      if (c == g_allocs.end()) continue;
      const Alloc& a = c->second;
      const auto map = reinterpret_cast<uintptr_t>(a.map);
      const bool front = addr >= map && addr < map + kPage, back = addr >= map + a.span - kPage && addr < map + a.span;
      if (!front && !back) continue;
      const std::string what = describe_outside(c->first, a, static_cast<ptrdiff_t>(addr - c->first));
      std::fprintf(stderr, "[cuda emulation] kernel %s read or wrote %s of a buffer: %s\n", g_engine.name,
                   front ? "before the start" : "past the end", what.c_str());
      break;
    }
    g_mem_mu.unlock();
  }
  (void)ctx;
  sigaction(sig, &g_prev_segv, nullptr);  // returning re-runs the access under the previous handler
}

// A kernel's misaligned access (the kernels are built with -fsanitize=alignment and
// -fno-sanitize-recover: CMakeLists.txt): UBSan prints the source line and type, then calls this
// before it exits; it names the kernel and aborts, as the emulator's other stops do. Weak: an
// executable without UBSan's runtime has neither.
extern "C" void __sanitizer_set_death_callback(void (*)(void)) __attribute__((weak));
void on_sanitizer_death() {
  if (!g_engine.active) return;
  std::fprintf(stderr,
               "[cuda emulation] kernel %s: the access reported above is misaligned (a GPU stops there with "
               "\"misaligned address\")\n",
               g_engine.name);
  std::abort();
}
const bool g_sanitizer_hooked = [] {
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(on_sanitizer_death);
  return true;
}();

void install_fault_handler() {
  static const bool done = [] {
    // Kernels with barriers run on fiber stacks: the handler gets a stack of its own.
    static char alt[64 * 1024];
    stack_t st{};
    st.ss_sp = alt;
    st.ss_size = sizeof alt;
    sigaltstack(&st, nullptr);
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    return true;
  }();
  (void)done;
}

[[noreturn]] void fiber_entry() {
  (*g_engine.body)();
  g_engine.running->done = true;
  ddp_emu_switch(&g_engine.running->sp, g_engine.sched_sp);  // never resumed
  __builtin_unreachable();
}

// A fresh fiber's stack: six zero registers for ddp_emu_switch to pop, then fiber_entry as the
// address it returns to, then a fake return address for fiber_entry (16-byte aligned as after a call).
void* fresh_stack(char* base) {
  auto* top = reinterpret_cast<uintptr_t*>(reinterpret_cast<uintptr_t>(base + kFiberStack) & ~uintptr_t{15});
  *--top = 0;
  *--top = reinterpret_cast<uintptr_t>(&fiber_entry);
  for (int i = 0; i < 6; ++i) *--top = 0;
  return top;
}

void ensure_stacks(size_t n) {
  if (n <= g_engine.stack_count) return;
  if (g_engine.stacks) munmap(g_engine.stacks, g_engine.stack_count * kFiberStack);
  void* p = mmap(nullptr, n * kFiberStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "[cuda emulation] cannot map %zu fiber stacks\n", n);
    std::abort();
  }
  g_engine.stacks = static_cast<char*>(p);
  g_engine.stack_count = n;
}

uint3 index3(unsigned i, dim3 d) { return uint3{i % d.x, (i / d.x) % d.y, i / (d.x * d.y)}; }

// DDP_CUDA_EMU_REVERSE=1: blocks, and the threads of each block, run from the last to the first, so
// a result that depends on the order (a race, or a read of what another thread writes without a
// barrier) differs from the default run's.
bool reverse_order() {
  static const bool on = [] {
    const char* e = std::getenv("DDP_CUDA_EMU_REVERSE");
    return e && std::string(e) == "1";
  }();
  return on;
}
unsigned long long nth(unsigned long long i, unsigned long long n) { return reverse_order() ? n - 1 - i : i; }

void run_block_direct(ThreadState& st, unsigned threads) {
  for (unsigned i = 0; i < threads; ++i) {
    const auto t = static_cast<unsigned>(nth(i, threads));
    st.tid = index3(t, st.bdim);
    g_cur = &st;
    (*g_engine.body)();
  }
}

// The linker's bounds of the __shared__ statics' section (emu_kernel.h); weak: a program without
// such kernels has none.
extern "C" char __start_ddp_emu_shared[] __attribute__((weak));
extern "C" char __stop_ddp_emu_shared[] __attribute__((weak));

void run_block_fibers(const ThreadState& proto, unsigned threads) {
  Engine& e = g_engine;
  if (__start_ddp_emu_shared && __stop_ddp_emu_shared)
    std::memset(__start_ddp_emu_shared, 0xFF, static_cast<size_t>(__stop_ddp_emu_shared - __start_ddp_emu_shared));
  ensure_stacks(threads);
  e.fibers.resize(threads);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = e.fibers[t];
    f.st = proto;
    f.st.tid = index3(t, proto.bdim);
    f.done = f.waiting = false;
    f.pred = 0;
    f.sp = fresh_stack(e.stacks + t * kFiberStack);
  }
  for (;;) {
    for (unsigned i = 0; i < threads; ++i) {
      Fiber& f = e.fibers[nth(i, threads)];
      if (f.done) continue;
      f.waiting = false;
      e.running = &f;
      g_cur = &f.st;
      ddp_emu_switch(&e.sched_sp, f.sp);
    }
    int waiting = 0, any = 0, site = -1;
    for (unsigned t = 0; t < threads; ++t) {
      const Fiber& f = e.fibers[t];
      if (!f.done && f.waiting) {
        ++waiting;
        any |= f.pred != 0;
        // Threads of a block waiting at different __syncthreads: undefined on a GPU (it may hang).
        if (site >= 0 && f.site != site) {
          std::fprintf(stderr, "[cuda emulation] kernel %s: threads of one block wait at different barriers (lines %d and %d)\n",
                       e.name, site, f.site);
          std::abort();
        }
        site = f.site;
      }
    }
    if (waiting == 0) break;
    e.barrier_or = any;
  }
}

}  // namespace

void enqueue(cudaStream_t s, std::function<void()> op) { submit(s, std::move(op)); }

bool guard_front() {
  static const bool on = [] {
    const char* e = std::getenv("DDP_CUDA_EMU_GUARD_FRONT");
    return e && std::string(e) == "1";
  }();
  return on;
}

bool device_range_ok(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  return find_alloc(p, bytes) != nullptr;
}

bool stream_ok(cudaStream_t s) {
  if (s == nullptr) return true;
  std::lock_guard<std::mutex> lk(g_obj_mu);
  return g_streams.count(s) != 0;
}

MemKind mem_kind(const void* p) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  const Alloc* a = find_alloc(p, 0);
  return a ? a->kind : MemKind::Unknown;
}

void set_launch_error(cudaError_t e, const char* name, const char* why) {
  char fn[200];
  std::snprintf(fn, sizeof fn, "launch of %s", name);
  fail(e, fn, why);
}

void syncthreads(int site) { (void)syncthreads_or(0, site); }

int syncthreads_or(int pred, int site) {
  Engine& e = g_engine;
  if (!e.fiber_mode) {
    // Every kernel's first launch runs as fibers and records whether it reached a barrier; one that
    // did not then, but does now, cannot be suspended: say so instead of computing garbage.
    std::fprintf(stderr,
                 "[cuda emulation] kernel %s reached __syncthreads although its first launch did not; "
                 "the emulator cannot run it (make its barriers unconditional)\n",
                 e.name);
    std::abort();
  }
  e.barrier_seen = true;
  e.running->pred = pred;
  e.running->site = site;
  e.running->waiting = true;
  ddp_emu_switch(&e.running->sp, e.sched_sp);
  return e.barrier_or;
}

namespace {
void execute_grid(dim3 grid, dim3 block, const void* kernel, const char* name, const std::function<void()>& body);
}  // namespace

void run_grid(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const void* kernel, const char* name,
              unsigned max_threads, std::function<void()> body) {
  // The limits every GPU of compute capability 7.0 and later enforces.
  const unsigned long long threads = 1ULL * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || block.x > 1024 ||
      block.y > 1024 || block.z > 64 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    char why[200];
    std::snprintf(why, sizeof why, "invalid configuration: grid (%u, %u, %u), block (%u, %u, %u)", grid.x, grid.y,
                  grid.z, block.x, block.y, block.z);
    set_launch_error(cudaErrorInvalidConfiguration, name, why);
    return;
  }
  if (max_threads != 0 && threads > max_threads) {
    // The kernel was compiled for at most max_threads per block (its registers sized for them): a
    // GPU refuses the launch ("too many resources requested for launch").
    char why[200];
    std::snprintf(why, sizeof why, "%llu threads per block, more than the kernel's __launch_bounds__(%u)", threads,
                  max_threads);
    set_launch_error(cudaErrorLaunchOutOfResources, name, why);
    return;
  }
  if (smem != 0) {
    set_launch_error(cudaErrorNotSupported, name, "dynamic shared memory is not emulated");
    return;
  }
  if (!stream_ok(stream)) {
    set_launch_error(cudaErrorInvalidResourceHandle, name, "the stream was not created (or was destroyed)");
    return;
  }
  submit(stream, [grid, block, kernel, name, body = std::move(body)] { execute_grid(grid, block, kernel, name, body); });
}

namespace {
void execute_grid(dim3 grid, dim3 block, const void* kernel, const char* name, const std::function<void()>& body) {
  const unsigned long long threads = 1ULL * block.x * block.y * block.z;
  Engine& e = g_engine;
  if (e.active) {
    std::fprintf(stderr, "[cuda emulation] kernel %s launched from inside a kernel\n", name);
    std::abort();
  }
  e.active = true;
  e.body = &body;
  e.name = name;
  auto known = e.uses_barrier.find(kernel);
  const unsigned long long blocks = 1ULL * grid.x * grid.y * grid.z;
  ThreadState st;
  st.bdim = block;
  st.gdim = grid;
  for (unsigned long long i = 0; i < blocks; ++i) {
    const unsigned long long b = nth(i, blocks);
    st.bid = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                   static_cast<unsigned>(b / (1ULL * grid.x * grid.y))};
    if (known == e.uses_barrier.end()) {  // first block of the first launch: learn
      e.fiber_mode = true;
      e.barrier_seen = false;
      run_block_fibers(st, static_cast<unsigned>(threads));
      known = e.uses_barrier.emplace(kernel, e.barrier_seen).first;
    } else if (known->second) {
      e.fiber_mode = true;
      run_block_fibers(st, static_cast<unsigned>(threads));
    } else {
      e.fiber_mode = false;
      run_block_direct(st, static_cast<unsigned>(threads));
    }
  }
  g_cur = nullptr;
  e.active = false;
  const std::string damaged = damaged_canary();
  if (!damaged.empty()) {
    std::fprintf(stderr, "[cuda emulation] kernel %s wrote %s\n", name, damaged.c_str());
    std::abort();
  }
}
}  // namespace

}  // namespace ddp::cuda_emu

// ---- the CUDA runtime API -----------------------------------------------------------------------
using namespace ddp::cuda_emu;

extern "C" {

cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }
// No profiler attaches to the emulation: the range markers (bench_cuda_train --profile-step) do nothing.
cudaError_t cudaProfilerStart() { return cudaSuccess; }
cudaError_t cudaProfilerStop() { return cudaSuccess; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
    case cudaErrorStreamCaptureIsolation: return "cudaErrorStreamCaptureIsolation";
    case cudaErrorStreamCaptureUnjoined: return "cudaErrorStreamCaptureUnjoined";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorCapturedEvent: return "cudaErrorCapturedEvent";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    // What the real libcudart answers on a machine with no driver: a function this file does not
    // define was called (add it here).
    case cudaErrorInsufficientDriver:
      return "cudaErrorInsufficientDriver (a CUDA runtime function the emulation does not define reached the real "
             "libcudart)";
    default: return "cudaError (other)";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered (emulated)";
    default: return cudaGetErrorName(e);
  }
}

// One device, or DDP_CUDA_EMU_DEVICES of them (so ranks sharing a host each find their own, as on a
// GPU node); all share this process's memory.
static int emu_device_count() {
  static const int n = [] {
    const char* e = std::getenv("DDP_CUDA_EMU_DEVICES");
    const int v = e ? std::atoi(e) : 1;
    return v >= 1 && v <= 64 ? v : 1;
  }();
  return n;
}
static thread_local int g_device = 0;
cudaError_t cudaGetDeviceCount(int* n) {
  *n = emu_device_count();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = g_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= emu_device_count())
    return fail(cudaErrorInvalidDevice, "cudaSetDevice", "no such device (DDP_CUDA_EMU_DEVICES sets the count)");
  g_device = d;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetPCIBusId(char* bus, int len, int d) {
  if (d < 0 || d >= emu_device_count()) return fail(cudaErrorInvalidDevice, "cudaDeviceGetPCIBusId", "no such device");
  std::snprintf(bus, static_cast<size_t>(len), "0000:e0:%02x.0", d);  // "e0": not a real bus
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d < 0 || d >= emu_device_count()) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties", "no such device");
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "CUDA emulation on the CPU (tests/backend/cuda/emu)");
  p->major = 9;
  p->minor = 0;
  p->totalGlobalMem = kTotalBytes;
  p->multiProcessorCount = 132;
  p->maxThreadsPerBlock = 1024;
  p->warpSize = 32;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  if (const cudaError_t e = unsafe_call("cudaDeviceSynchronize", true); e != cudaSuccess) return e;
  flush_all();
  return g_last_error;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  if (const cudaError_t e = unsafe_call("cudaMalloc"); e != cudaSuccess) return e;
  if (bytes == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lk(g_mem_mu);
    if (g_device_bytes + bytes > kTotalBytes) return g_last_error = cudaErrorMemoryAllocation;
  }
  *p = emu_alloc(bytes, MemKind::Device);
  return *p ? cudaSuccess : (g_last_error = cudaErrorMemoryAllocation);
}
// cudaFree and cudaFreeHost synchronise the device first, as CUDA's do.
cudaError_t cudaFree(void* p) {
  if (const cudaError_t e = unsafe_call("cudaFree"); e != cudaSuccess) return e;
  flush_all();
  return emu_free(p, MemKind::Device) ? cudaSuccess
                                      : fail(cudaErrorInvalidValue, "cudaFree", "not a live cudaMalloc pointer");
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = nullptr;
  if (const cudaError_t e = unsafe_call("cudaMallocHost"); e != cudaSuccess) return e;
  *p = bytes ? emu_alloc(bytes, MemKind::PinnedHost) : nullptr;
  return (*p || !bytes) ? cudaSuccess : (g_last_error = cudaErrorMemoryAllocation);
}
// cuda_runtime.h's inline cudaMallocHost(ptr, size, flags), which typed pointers reach, calls this.
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) { return cudaMallocHost(p, bytes); }
cudaError_t cudaFreeHost(void* p) {
  if (const cudaError_t e = unsafe_call("cudaFreeHost"); e != cudaSuccess) return e;
  flush_all();
  return emu_free(p, MemKind::PinnedHost) ? cudaSuccess
                                          : fail(cudaErrorInvalidValue, "cudaFreeHost", "not a live cudaMallocHost pointer");
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  std::lock_guard<std::mutex> lk(g_mem_mu);
  *total_b = kTotalBytes;
  *free_b = kTotalBytes - g_device_bytes;
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  std::memset(a, 0, sizeof *a);
  switch (mem_kind(p)) {
    case MemKind::Device: a->type = cudaMemoryTypeDevice; a->devicePointer = const_cast<void*>(p); break;
    case MemKind::PinnedHost: a->type = cudaMemoryTypeHost; a->hostPointer = const_cast<void*>(p); break;
    default: a->type = cudaMemoryTypeUnregistered; a->hostPointer = const_cast<void*>(p); break;
  }
  return cudaSuccess;
}

static cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const bool dst_dev = device_range_ok(dst, bytes), src_dev = device_range_ok(src, bytes);
  const bool ok = kind == cudaMemcpyDefault ||
                  (kind == cudaMemcpyHostToDevice && dst_dev) || (kind == cudaMemcpyDeviceToHost && src_dev) ||
                  (kind == cudaMemcpyDeviceToDevice && dst_dev && src_dev) || kind == cudaMemcpyHostToHost;
  if (!ok) {
    char why[200];
    std::snprintf(why, sizeof why, "kind %d from %p (%s) to %p (%s), %zu bytes", static_cast<int>(kind), src,
                  src_dev ? "device" : "not inside a device allocation", dst,
                  dst_dev ? "device" : "not inside a device allocation", bytes);
    return fail(cudaErrorInvalidValue, "cudaMemcpy", why);
  }
  return cudaSuccess;
}
// On the legacy default stream: after the blocking streams' work, at once (not after work queued
// on non-blocking streams, which a GPU may not have done yet either).
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (const cudaError_t e = unsafe_call("cudaMemcpy"); e != cudaSuccess) return e;
  if (bytes == 0) return cudaSuccess;
  if (const cudaError_t e = check_copy(dst, src, bytes, kind); e != cudaSuccess) return e;
  return submit(nullptr, [=] { std::memmove(dst, src, bytes); }, "cudaMemcpy");
}
// As CUDA's: from pageable host memory the source is taken at the call (staged), so the caller may
// reuse it at once; into pageable host memory the call returns once the copy (after the stream's
// earlier work) is done; between device and pinned memory it is stream work like any other.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
  if (!stream_ok(s)) return fail(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync", "unknown stream");
  if (bytes == 0) return cudaSuccess;
  if (const cudaError_t e = check_copy(dst, src, bytes, kind); e != cudaSuccess) return e;
  const bool from_pageable = mem_kind(src) == MemKind::Unknown, to_pageable = mem_kind(dst) == MemKind::Unknown;
  if ((from_pageable || to_pageable) && s && reinterpret_cast<Stream*>(s)->cap) {
    // Eagerly such a copy is staged or waited for; replayed from a graph it would read or write the
    // host buffer whenever the graph runs. The emulation refuses it rather than guess.
    std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
    invalidate(reinterpret_cast<Stream*>(s)->cap, "cudaMemcpyAsync to or from pageable host memory");
    return fail(cudaErrorStreamCaptureUnsupported, "cudaMemcpyAsync",
                "a copy to or from pageable host memory on a capturing stream (the emulation refuses it: use pinned "
                "or device memory in a captured step)");
  }
  if (from_pageable) {
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + bytes);
    return submit(s, [=] { std::memcpy(dst, staged->data(), bytes); }, "cudaMemcpyAsync");
  }
  if (const cudaError_t e = submit(s, [=] { std::memmove(dst, src, bytes); }, "cudaMemcpyAsync"); e != cudaSuccess)
    return e;
  if (to_pageable && s) host_wait(reinterpret_cast<Stream*>(s));
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t s) {
  if (!stream_ok(s)) return fail(cudaErrorInvalidResourceHandle, "cudaMemsetAsync", "unknown stream");
  if (bytes == 0) return cudaSuccess;
  if (!device_range_ok(p, bytes)) return fail(cudaErrorInvalidValue, "cudaMemset", "range not inside a device allocation");
  return submit(s, [=] { std::memset(p, v, bytes); }, "cudaMemsetAsync");
}
cudaError_t cudaMemset(void* p, int v, size_t bytes) { return cudaMemsetAsync(p, v, bytes, nullptr); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
  const cudaError_t e = make_handle<Stream>(s, g_streams);
  if (e == cudaSuccess) reinterpret_cast<Stream*>(*s)->blocking = (flags & cudaStreamNonBlocking) == 0;
  return e;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }
// Work queued on a destroyed stream still completes (as CUDA's).
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (stream_ok(s) && s) flush(reinterpret_cast<Stream*>(s));
  return drop_handle<Stream>(s, g_streams, "cudaStreamDestroy");
}
static cudaError_t stream_wait_host(cudaStream_t s, const char* fn) {
  if (!stream_ok(s)) return fail(cudaErrorInvalidResourceHandle, fn, "unknown stream");
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  Capture* c = s ? reinterpret_cast<Stream*>(s)->cap : blocking_capture();
  if (c) {
    invalidate(c, std::string(fn) + " of a capturing stream");
    return fail(s ? cudaErrorStreamCaptureUnsupported : cudaErrorStreamCaptureImplicit, fn,
                "a capturing stream's work is recorded, not run: it cannot be waited for or queried");
  }
  if (s) host_wait(reinterpret_cast<Stream*>(s));
  else flush_blocking();
  return g_last_error;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) { return stream_wait_host(s, "cudaStreamSynchronize"); }
// Looking makes progress: the queued work runs (a poll loop must end).
cudaError_t cudaStreamQuery(cudaStream_t s) { return stream_wait_host(s, "cudaStreamQuery"); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return make_handle<Event>(e, g_events); }
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) { return drop_handle<Event>(e, g_events, "cudaEventDestroy"); }
static Event* event_of(cudaEvent_t e) {
  std::lock_guard<std::mutex> lk(g_obj_mu);
  return g_events.count(e) ? reinterpret_cast<Event*>(e) : nullptr;
}
// An event completes when its stream's work queued before the record has run; its time is taken then.
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  Event* ev = event_of(e);
  if (!ev || !stream_ok(s)) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord", "unknown event or stream");
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  if (s && reinterpret_cast<Stream*>(s)->cap) {
    // Recorded in a capture: a point other streams may fork from or join at; it stands for no work
    // the host can wait for (in the graph it is only an edge).
    Stream* st = reinterpret_cast<Stream*>(s);
    if (!st->cap->invalid.empty())
      return fail(cudaErrorStreamCaptureInvalidated, "cudaEventRecord", ("the capture was invalidated: " + st->cap->invalid).c_str());
    ev->recorded = true;
    ev->cap_id = st->cap->id;
    ev->clock = st->knows;
    ev->stream = nullptr;
    return cudaSuccess;
  }
  if (const cudaError_t e = submit(s, [ev] { ev->at = std::chrono::steady_clock::now(); }, "cudaEventRecord");
      e != cudaSuccess)
    return e;
  ev->recorded = true;
  ev->cap_id = 0;
  ev->clock.clear();
  if (s && !immediate_mode()) {
    ev->stream = reinterpret_cast<Stream*>(s);
    ev->seq = ev->stream->enqueued;
  } else {
    ev->stream = nullptr;
  }
  return cudaSuccess;
}
static void complete(Event* ev) {
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  if (ev->stream && stream_ok(reinterpret_cast<cudaStream_t>(ev->stream))) host_wait(ev->stream, ev->seq);
}
static cudaError_t event_wait_host(cudaEvent_t e, const char* fn) {
  Event* ev = event_of(e);
  if (!ev) return fail(cudaErrorInvalidResourceHandle, fn, "unknown event");
  if (ev->cap_id) {
    std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
    if (auto it = g_captures.find(ev->cap_id); it != g_captures.end())
      invalidate(it->second, std::string(fn) + " of an event recorded in the capture");
    return fail(cudaErrorCapturedEvent, fn, "the event was last recorded in a stream capture: it stands for no work");
  }
  complete(ev);
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return event_wait_host(e, "cudaEventSynchronize"); }
// Looking makes progress, as for cudaStreamQuery.
cudaError_t cudaEventQuery(cudaEvent_t e) { return event_wait_host(e, "cudaEventQuery"); }
// Stream s's later work waits for the event's stream's work up to the record made before this call.
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
  Event* ev = event_of(e);
  if (!ev || !stream_ok(s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent", "unknown event or stream");
  if (flags != 0) return fail(cudaErrorNotSupported, "cudaStreamWaitEvent", "flags (cudaEventWaitExternal) are not emulated");
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  Stream* st = reinterpret_cast<Stream*>(s);
  if (ev->cap_id) {
    auto it = g_captures.find(ev->cap_id);
    if (it == g_captures.end())
      return fail(cudaErrorStreamCaptureIsolation, "cudaStreamWaitEvent",
                  "the event was last recorded in a capture that has ended (record it again outside the capture)");
    Capture* c = it->second;
    if (!st) {
      invalidate(c, "the legacy stream waited on a captured event");
      return fail(cudaErrorStreamCaptureImplicit, "cudaStreamWaitEvent", "the legacy stream cannot join a capture");
    }
    if (st->cap && st->cap != c) {
      invalidate(c, "a stream of another capture waited on one of its events");
      invalidate(st->cap, "it waited on an event of another capture");
      return fail(cudaErrorStreamCaptureIsolation, "cudaStreamWaitEvent", "the event belongs to another capture");
    }
    st->cap = c;  // a stream not capturing joins the capture (a fork)
    for (const auto& [k, v] : ev->clock) st->knows[k] = std::max(st->knows[k], v);
    return cudaSuccess;
  }
  if (st && st->cap && ev->recorded) {
    invalidate(st->cap, "it waited on an event recorded outside the capture");
    return fail(cudaErrorStreamCaptureIsolation, "cudaStreamWaitEvent",
                "a capturing stream waited on an event recorded outside the capture (a dependency across its boundary)");
  }
  if (!ev->stream) return cudaSuccess;
  Stream* on = ev->stream;
  const uint64_t seq = ev->seq;
  return submit(s, [on, seq] {
    if (stream_ok(reinterpret_cast<cudaStream_t>(on))) flush(on, seq);
  }, "cudaStreamWaitEvent");
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  Event *ea = event_of(a), *eb = event_of(b);
  if (!ea || !eb || !ea->recorded || !eb->recorded)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime", "unknown or unrecorded event");
  if (ea->cap_id || eb->cap_id)
    return fail(cudaErrorCapturedEvent, "cudaEventElapsedTime", "an event last recorded in a stream capture");
  *ms = std::chrono::duration<float, std::milli>(eb->at - ea->at).count();
  return cudaSuccess;
}

// Stream capture and graphs: see "stream capture" above.
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  if (s == nullptr) return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture", "the legacy stream cannot be captured");
  if (!stream_ok(s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture", "unknown stream");
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  Stream* st = reinterpret_cast<Stream*>(s);
  if (st->cap) return fail(cudaErrorIllegalState, "cudaStreamBeginCapture", "the stream is already capturing");
  auto* c = new Capture;
  c->id = g_next_capture++;
  c->origin = st;
  c->mode = mode;
  c->thread = std::this_thread::get_id();
  g_captures[c->id] = c;
  st->cap = c;
  st->knows.clear();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  *g = nullptr;
  if (!stream_ok(s) || s == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaStreamEndCapture", "unknown stream");
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  Stream* st = reinterpret_cast<Stream*>(s);
  Capture* c = st->cap;
  if (!c) return fail(cudaErrorIllegalState, "cudaStreamEndCapture", "the stream is not capturing");
  if (c->origin != st)
    return fail(cudaErrorStreamCaptureUnmatched, "cudaStreamEndCapture", "the capture began on another stream");
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return fail(cudaErrorStreamCaptureWrongThread, "cudaStreamEndCapture", "the capture began on another thread");
  // Every stream leaves the capture, whatever its outcome.
  bool unjoined = false;
  for (const auto& [x, n] : c->count)
    if (x != st && st->knows[x] < n) unjoined = true;
  for (Stream* x : live_streams()) {
    if (x->cap != c) continue;
    x->cap = nullptr;
    x->knows.clear();
  }
  g_captures.erase(c->id);
  std::unique_ptr<Capture> done(c);
  if (!c->invalid.empty())
    return fail(cudaErrorStreamCaptureInvalidated, "cudaStreamEndCapture", ("the capture was invalidated: " + c->invalid).c_str());
  if (unjoined)
    return fail(cudaErrorStreamCaptureUnjoined, "cudaStreamEndCapture",
                "work captured on another stream was not joined back into the capturing stream (record an event "
                "after it and make the origin stream wait on it)");
  auto* graph = new Graph{std::make_shared<const std::vector<std::function<void()>>>(std::move(c->ops))};
  std::lock_guard<std::mutex> lk2(g_obj_mu);
  g_graphs.insert(graph);
  *g = reinterpret_cast<cudaGraph_t>(graph);
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  if (!stream_ok(s)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamIsCapturing", "unknown stream");
  std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
  const Capture* c = s ? reinterpret_cast<Stream*>(s)->cap : nullptr;
  *status = !c ? cudaStreamCaptureStatusNone
               : c->invalid.empty() ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusInvalidated;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long) {
  *exec = nullptr;
  std::lock_guard<std::mutex> lk(g_obj_mu);
  if (!g_graphs.count(g)) return fail(cudaErrorInvalidValue, "cudaGraphInstantiateWithFlags", "unknown graph");
  auto* x = new GraphExec{reinterpret_cast<Graph*>(g)->ops};
  g_graph_execs.insert(x);
  *exec = reinterpret_cast<cudaGraphExec_t>(x);
  return cudaSuccess;
}
// The graph's operations, in their captured order, as one piece of work on the stream.
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  Ops ops;
  {
    std::lock_guard<std::mutex> lk(g_obj_mu);
    if (!g_graph_execs.count(exec)) return fail(cudaErrorInvalidResourceHandle, "cudaGraphLaunch", "unknown graph exec");
    ops = reinterpret_cast<GraphExec*>(exec)->ops;
  }
  if (!stream_ok(s)) return fail(cudaErrorInvalidResourceHandle, "cudaGraphLaunch", "unknown stream");
  return submit(s, [ops] {
    for (const auto& op : *ops) op();
  }, "cudaGraphLaunch");
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) { return drop_handle<Graph>(g, g_graphs, "cudaGraphDestroy"); }
// A launch still queued keeps the operations alive (shared), as CUDA lets queued launches complete.
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x) { return drop_handle<GraphExec>(x, g_graph_execs, "cudaGraphExecDestroy"); }

}  // extern "C"

// ---- cuBLAS: the handle and SGEMM ---------------------------------------------------------------
namespace {
struct BlasHandle {
  cudaStream_t stream = nullptr;
};
std::atomic<bool> g_break_capture_at_gemm{false};
}  // namespace

void ddp::cuda_emu::break_capture_at_next_gemm() { g_break_capture_at_gemm = true; }

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(new BlasHandle);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete reinterpret_cast<BlasHandle*>(h);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  if (!stream_ok(s)) return CUBLAS_STATUS_INVALID_VALUE;
  reinterpret_cast<BlasHandle*>(h)->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream_v2(cublasHandle_t h, cudaStream_t* s) {
  *s = reinterpret_cast<BlasHandle*>(h)->stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t, void* ws, size_t bytes) {
  return bytes == 0 || device_range_ok(ws, bytes) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
const char* cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS (emulated failure)";
}

// Column-major C (m x n) = alpha op(A) op(B) + beta C, in fp32 (the classifier's GEMMs).
cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                              float* C, int ldc) {
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  const int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
  if (lda < std::max(1, arows) || ldb < std::max(1, brows) || ldc < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
  const size_t a_bytes = size_t(lda) * (ta == CUBLAS_OP_N ? k : m) * 4, b_bytes = size_t(ldb) * (tb == CUBLAS_OP_N ? n : k) * 4;
  if ((m && k && !device_range_ok(A, a_bytes - size_t(lda - arows) * 4)) ||
      (n && k && !device_range_ok(B, b_bytes - size_t(ldb - brows) * 4)) ||
      (m && n && !device_range_ok(C, size_t(ldc) * (n - 1) * 4 + size_t(m) * 4))) {
    std::fprintf(stderr, "[cuda emulation] cublasSgemm: an operand is not inside a device allocation\n");
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (g_break_capture_at_gemm) {
    std::lock_guard<std::recursive_mutex> lk(g_queue_mu);
    cudaStream_t s = reinterpret_cast<BlasHandle*>(h)->stream;
    if (Capture* c = s ? reinterpret_cast<Stream*>(s)->cap : nullptr) {
      g_break_capture_at_gemm = false;
      invalidate(c, "cublasSgemm made a call the capture does not allow (test hook break_capture_at_next_gemm)");
      return CUBLAS_STATUS_SUCCESS;
    }
  }
  // alpha and beta are host values (the default pointer mode): read now, the product runs as stream work.
  const float al = *alpha, be = *beta;
  ddp::cuda_emu::enqueue(reinterpret_cast<BlasHandle*>(h)->stream, [=] {
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        double s = 0.0;
        for (int l = 0; l < k; ++l) {
          const float a = ta == CUBLAS_OP_N ? A[i + size_t(l) * lda] : A[l + size_t(i) * lda];
          const float b = tb == CUBLAS_OP_N ? B[l + size_t(j) * ldb] : B[j + size_t(l) * ldb];
          s += double(a) * b;
        }
        float& c = C[i + size_t(j) * ldc];
        c = al * static_cast<float>(s) + (be == 0.0f ? 0.0f : be * c);  // beta 0: C is not read
      }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
