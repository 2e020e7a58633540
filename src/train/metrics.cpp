#include "ddp/train/metrics.h"

#include <dlfcn.h>
#include <sys/resource.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "ddp/core/check.h"
#include "ddp/core/log.h"

#if DDP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace ddp::train {

// ---- status file -------------------------------------------------------------------------------

void write_status_file(const std::string& path, const std::vector<std::pair<std::string, std::string>>& fields) {
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
  }
  std::error_code ec;
  DDP_CHECK(!std::filesystem::is_directory(path, ec), "--status-file '", path, "' is a directory, not a file");
  std::string text;
  for (const auto& [k, v] : fields) text += k + "=" + v + "\n";
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  DDP_CHECK(f != nullptr, "cannot write --status-file '", path, "' (", tmp, "): ", std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0;
  const int err = errno;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = ok ? errno : err;
    std::remove(tmp.c_str());
    throw Error(str("cannot write --status-file '", path, "': ", std::strerror(e)));
  }
}

// ---- JSON lines --------------------------------------------------------------------------------

JsonlWriter::JsonlWriter(const std::string& path) : path_(path) {
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
  }
  // Appending is for metrics files (a resumed run continues its own); anything else given by mistake
  // (a checkpoint, a log) is refused rather than written into.
  {
    std::ifstream in(path, std::ios::binary);
    char c = 0;
    DDP_CHECK(!in || !in.get(c) || c == '{', "--jsonl file '", path,
              "' exists and is not a JSON-lines metrics file (it does not start with '{'); refusing to append to it");
    // A record cut short (a full disk, a kill) stays a broken line of its own; ours start on the next.
    if (in && in.seekg(-1, std::ios::end) && in.get(c)) newline_first_ = c != '\n';
  }
  f_ = std::fopen(path.c_str(), "a");
  DDP_CHECK(f_ != nullptr, "cannot open --jsonl file '", path, "': ", std::strerror(errno));
}
JsonlWriter::~JsonlWriter() {
  if (f_) std::fclose(f_);
}
void JsonlWriter::write(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string line = "{";
  for (size_t i = 0; i < fields.size(); ++i)
    line += (i ? ", " : "") + json_string(fields[i].first) + ": " + fields[i].second;
  line += "}\n";
  if (failed_) return;
  if (newline_first_) line = "\n" + line;
  if (std::fwrite(line.data(), 1, line.size(), f_) == line.size() && std::fflush(f_) == 0) {
    newline_first_ = false;
    return;
  }
  failed_ = true;
  warn("cannot write --jsonl file '", path_, "' (", std::strerror(errno),
       "): no more records go to it; training continues (checkpoints are written on their own)");
}

// ---- NVML ----------------------------------------------------------------------------------------

namespace {
struct NvmlUtil { unsigned int gpu, memory; };
struct NvmlMemory { unsigned long long total, free, used; };
using nvmlInit_t = int (*)();
using nvmlShutdown_t = int (*)();
using nvmlGetByIndex_t = int (*)(unsigned int, void**);
using nvmlGetByPci_t = int (*)(const char*, void**);
using nvmlGetUtil_t = int (*)(void*, NvmlUtil*);
using nvmlGetMem_t = int (*)(void*, NvmlMemory*);
}  // namespace

GpuMonitor::GpuMonitor(int cuda_device) {
  if (cuda_device < 0) {
    why_ = "no GPU in use";
    return;
  }
  lib_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib_) {
    why_ = "libnvidia-ml.so.1 not found";
    return;
  }
  auto init = reinterpret_cast<nvmlInit_t>(dlsym(lib_, "nvmlInit_v2"));
  if (!init || init() != 0) {
    why_ = "nvmlInit failed";
    return;
  }
  // NVML numbers devices without CUDA_VISIBLE_DEVICES; the PCI bus id names the same device in both.
  void* dev = nullptr;
#if DDP_HAVE_CUDA
  char bus[32] = {0};
  auto by_pci = reinterpret_cast<nvmlGetByPci_t>(dlsym(lib_, "nvmlDeviceGetHandleByPciBusId_v2"));
  if (by_pci && cudaDeviceGetPCIBusId(bus, sizeof bus, cuda_device) == cudaSuccess && by_pci(bus, &dev) == 0) {
    dev_ = dev;
    return;
  }
#endif
  auto by_index = reinterpret_cast<nvmlGetByIndex_t>(dlsym(lib_, "nvmlDeviceGetHandleByIndex_v2"));
  if (by_index && by_index(static_cast<unsigned>(cuda_device), &dev) == 0) dev_ = dev;
  else why_ = "NVML has no handle for the device";
}

GpuMonitor::~GpuMonitor() {
  if (lib_) {
    if (dev_) {
      auto shutdown = reinterpret_cast<nvmlShutdown_t>(dlsym(lib_, "nvmlShutdown"));
      if (shutdown) shutdown();
    }
    dlclose(lib_);
  }
}

std::optional<int> GpuMonitor::utilization_percent() {
  if (!dev_) return std::nullopt;
  auto f = reinterpret_cast<nvmlGetUtil_t>(dlsym(lib_, "nvmlDeviceGetUtilizationRates"));
  NvmlUtil u{};
  if (!f || f(dev_, &u) != 0) return std::nullopt;
  return static_cast<int>(u.gpu);
}

std::optional<int64_t> GpuMonitor::memory_used_bytes() {
  if (!dev_) return std::nullopt;
  auto f = reinterpret_cast<nvmlGetMem_t>(dlsym(lib_, "nvmlDeviceGetMemoryInfo"));
  NvmlMemory m{};
  if (!f || f(dev_, &m) != 0) return std::nullopt;
  return static_cast<int64_t>(m.used);
}

// ---- misc ----------------------------------------------------------------------------------------

size_t peak_host_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char s[32];
  std::snprintf(s, sizeof s, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return s;
}

std::string human_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(std::llround(s));
  char b[32];
  if (t >= 3600) std::snprintf(b, sizeof b, "%lld:%02lld:%02lld", (long long)(t / 3600), (long long)(t / 60 % 60), (long long)(t % 60));
  else std::snprintf(b, sizeof b, "%lld:%02lld", (long long)(t / 60), (long long)(t % 60));
  return b;
}

// ---- progress -----------------------------------------------------------------------------------

Progress::Progress(bool bar, int log_every) : bar_(bar), log_every_(log_every) {}

void Progress::begin_epoch(int epoch, int epochs, int64_t steps) {
  epoch_ = epoch;
  epochs_ = epochs;
  steps_ = steps;
  t0_ = std::chrono::steady_clock::now();
}

void Progress::update(int64_t step, double loss, double lr, double ips, double scale, const std::string& gpu) {
  double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  double eta = step > 0 ? el / static_cast<double>(step) * static_cast<double>(steps_ - step) : NAN;
  char extra[64] = "";
  if (scale != 1.0) std::snprintf(extra, sizeof extra, " scale %g", scale);
  if (bar_) {
    int width = 28;
    int fill = steps_ > 0 ? static_cast<int>(width * step / steps_) : width;
    std::string b(static_cast<size_t>(fill), '#');
    b.resize(static_cast<size_t>(width), '.');
    std::printf("\r\033[Kepoch %d/%d [%s] %lld/%lld loss %.4f lr %.4g %.0f img/s gpu %s%s epoch ETA %s", epoch_ + 1, epochs_,
                b.c_str(), (long long)step, (long long)steps_, loss, lr, ips, gpu.c_str(), extra,
                human_duration(eta).c_str());
    std::fflush(stdout);
    drawn_ = true;
  } else if (step % log_every_ == 0 || step == steps_) {
    info(str("epoch ", epoch_ + 1, "/", epochs_, " step ", step, "/", steps_, " loss ", loss, " lr ", lr, " ",
             static_cast<int64_t>(ips), " img/s gpu ", gpu, extra, " epoch ETA ", human_duration(eta)));
  }
}

void Progress::end_epoch() {
  if (bar_ && drawn_) {
    std::printf("\n");
    std::fflush(stdout);
    drawn_ = false;
  }
}

void Progress::message(const std::string& m) {
  if (bar_ && drawn_) {
    std::printf("\r\033[K");
    drawn_ = false;
  }
  info(m);
}

}  // namespace ddp::train
