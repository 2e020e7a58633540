#include "ddp/core/log.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace ddp {
namespace {
int g_rank = 0;
int g_world = 1;
LogLevel g_level = LogLevel::Info;
std::mutex g_mutex;
}  // namespace

void set_log_rank(int rank, int world_size) {
  g_rank = rank;
  g_world = world_size;
}
int log_rank() { return g_rank; }
int log_world_size() { return g_world; }
void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

void init_log_level_from_env() {
  const char* v = std::getenv("DDP_LOG_LEVEL");
  if (!v) return;
  if (!std::strcmp(v, "debug")) g_level = LogLevel::Debug;
  else if (!std::strcmp(v, "info")) g_level = LogLevel::Info;
  else if (!std::strcmp(v, "warn")) g_level = LogLevel::Warn;
  else if (!std::strcmp(v, "error")) g_level = LogLevel::Error;
  else if (*v) log_line(LogLevel::Warn, str("DDP_LOG_LEVEL='", v, "' is not one of debug, info, warn, error: ignored"));
}

void log_line(LogLevel level, const std::string& msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  localtime_r(&t, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%H:%M:%S", &tm);
  std::lock_guard<std::mutex> lock(g_mutex);
  // Errors and warnings go to stderr so they survive `> log` redirections of progress output.
  FILE* out = level >= LogLevel::Warn ? stderr : stdout;
  if (g_world > 1)
    std::fprintf(out, "[%s rank %d/%d %s] %s\n", ts, g_rank, g_world, names[static_cast<int>(level)], msg.c_str());
  else
    std::fprintf(out, "[%s %s] %s\n", ts, names[static_cast<int>(level)], msg.c_str());
  std::fflush(out);
}

}  // namespace ddp
