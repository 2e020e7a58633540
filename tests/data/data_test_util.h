// Helpers for the data tests: temp dirs, running the data-prep tools, reading PIL reference files.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ddp/data/loader.h"

namespace ddp::test {

namespace fs = std::filesystem;

inline bool have_pil() { return std::system("/usr/bin/python3 -c 'import PIL, numpy' >/dev/null 2>&1") == 0; }

inline fs::path make_temp_dir(const std::string& tag) {
  std::string tmpl = (fs::temp_directory_path() / ("ddp_" + tag + "_XXXXXX")).string();
  char* p = mkdtemp(tmpl.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  return fs::path(p);
}

struct RunResult {
  int rc = -1;
  std::string out;  // stdout + stderr
};

inline RunResult run(const std::string& cmd) {
  RunResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

struct RefImage {
  int w = 0, h = 0;
  std::vector<uint8_t> px;
};

inline RefImage read_ref(const fs::path& p) {
  RefImage r;
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("missing reference " + p.string());
  int32_t wh[2];
  f.read(reinterpret_cast<char*>(wh), sizeof wh);
  r.w = wh[0];
  r.h = wh[1];
  r.px.resize(static_cast<size_t>(r.w) * r.h * 3);
  f.read(reinterpret_cast<char*>(r.px.data()), static_cast<std::streamsize>(r.px.size()));
  if (!f) throw std::runtime_error("short reference " + p.string());
  return r;
}

struct Diff {
  double mean = 0;
  int max = 0;
};
inline Diff diff(const uint8_t* a, const uint8_t* b, size_t n) {
  Diff d;
  double s = 0;
  for (size_t i = 0; i < n; ++i) {
    int e = std::abs(int(a[i]) - int(b[i]));
    s += e;
    d.max = std::max(d.max, e);
  }
  d.mean = n ? s / static_cast<double>(n) : 0;
  return d;
}

// An evaluation loader's settings (one rank, 2 workers): batches of `batch_size` side x side images,
// each resized to side / crop_ratio on its shorter side and centre-cropped.
inline data::LoaderConfig eval_loader_config(const std::vector<std::string>& shards, int batch_size, int side,
                                             float crop_ratio) {
  data::LoaderConfig c;
  c.shards = shards;
  c.train = false;
  c.batch_size = batch_size;
  c.height = c.width = side;
  c.eval_crop_ratio = crop_ratio;
  c.workers = 2;
  return c;
}

inline std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

}  // namespace ddp::test
