// Launches ddp_test_worker under mpirun from a test and captures what it printed.
#pragma once

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace ddp_test {

struct RunResult {
  int rc = -1;
  std::string output;
  double seconds = 0;
};

inline RunResult run_cmd(const std::string& cmd) {
  RunResult r;
  auto t0 = std::chrono::steady_clock::now();
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// Oversubscribed on one machine; shared-memory transport without the single-copy (CMA) mechanism,
// which containers often forbid.
inline RunResult mpirun(int np, const std::string& args, const std::string& mpirun_opts = "") {
  std::string cmd = std::string(DDP_MPIEXEC) + " --allow-run-as-root --oversubscribe --bind-to none -np " +
                    std::to_string(np) + " --mca btl_vader_single_copy_mechanism none " + mpirun_opts + DDP_WORKER +
                    " " + args;
  return run_cmd(cmd);
}

inline RunResult single(const std::string& args) { return run_cmd(std::string(DDP_WORKER) + " " + args); }

inline std::vector<float> read_floats(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  std::vector<float> v;
  if (!f) return v;
  auto bytes = static_cast<size_t>(f.tellg());
  f.seekg(0);
  v.resize(bytes / sizeof(float));
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

inline std::map<std::string, std::string> read_report(const std::string& path) {
  std::map<std::string, std::string> m;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) m[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return m;
}

inline std::string temp_dir(const std::string& tag) {
  std::string tmpl = "/tmp/ddp_comm_" + tag + "_XXXXXX";
  std::vector<char> b(tmpl.begin(), tmpl.end());
  b.push_back('\0');
  const char* d = mkdtemp(b.data());
  return d ? std::string(d) : std::string("/tmp");
}

}  // namespace ddp_test
