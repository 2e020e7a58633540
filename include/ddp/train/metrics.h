// Rank 0's view of a run: a progress bar (terminal) or periodic lines, JSON lines, GPU utilisation
// from NVML (loaded at run time with dlopen; absent -> "n/a", never an error), peak memory.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ddp/core/json.h"  // json_number, json_string for JsonlWriter::write's values

namespace ddp::train {

// One JSON object per line, flushed after each, so a crash loses at most the line being written.
class JsonlWriter {
 public:
  explicit JsonlWriter(const std::string& path);  // appends
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;
  // values: (key, already-formatted JSON value) pairs. A failed write (a full disk) warns once and
  // turns the writer off: metrics are not worth the run (training continues, checkpoints decide).
  void write(const std::vector<std::pair<std::string, std::string>>& fields);
  bool failed() const { return failed_; }

 private:
  std::string path_;
  FILE* f_ = nullptr;
  bool newline_first_ = false;  // the file ends inside a record (a run stopped mid-write)
  bool failed_ = false;
};

// Replaces FILE with "key=value" lines (written under FILE.tmp, then renamed, so a reader never sees
// half of it); creates FILE's directory. Throws ddp::Error naming FILE when it cannot.
void write_status_file(const std::string& path, const std::vector<std::pair<std::string, std::string>>& fields);

// GPU utilisation through NVML, resolved with dlopen("libnvidia-ml.so.1") at run time, so the
// binary runs where the library is absent.
class GpuMonitor {
 public:
  explicit GpuMonitor(int cuda_device);  // -1: no GPU in use
  ~GpuMonitor();
  GpuMonitor(const GpuMonitor&) = delete;
  GpuMonitor& operator=(const GpuMonitor&) = delete;
  bool available() const { return dev_ != nullptr; }
  std::optional<int> utilization_percent();  // nullopt when unavailable
  std::optional<int64_t> memory_used_bytes();
  const std::string& why_unavailable() const { return why_; }

 private:
  void* lib_ = nullptr;
  void* dev_ = nullptr;
  std::string why_;
};

size_t peak_host_rss_bytes();
std::string human_bytes(double b);
std::string human_duration(double seconds);

// Progress display: a one-line bar redrawn in place on a terminal, or a line every log_every steps.
class Progress {
 public:
  Progress(bool bar, int log_every);
  void begin_epoch(int epoch, int epochs, int64_t steps);
  // step: 1-based within the epoch
  void update(int64_t step, double loss, double lr, double img_per_s, double loss_scale, const std::string& gpu);
  void end_epoch();
  void message(const std::string& m);  // a full line that does not break the bar

 private:
  bool bar_;
  int log_every_;
  int epoch_ = 0, epochs_ = 0;
  int64_t steps_ = 0;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace ddp::train
