// Rank-aware logging. Every line carries the rank when the job has more than one; info0/warn0
// print on rank 0 only (progress, summaries), the others on every rank (errors name their rank).
#pragma once

#include <string>

#include "ddp/core/str.h"

namespace ddp {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3 };

void set_log_rank(int rank, int world_size);
int log_rank();        // 0 before set_log_rank is called
int log_world_size();  // 1 before set_log_rank is called
void set_log_level(LogLevel level);
LogLevel log_level();
// DDP_LOG_LEVEL=debug|info|warn|error in the environment overrides the default (info).
void init_log_level_from_env();

void log_line(LogLevel level, const std::string& msg);

template <class... A> void debug(const A&... a) { if (log_level() <= LogLevel::Debug) log_line(LogLevel::Debug, str(a...)); }
template <class... A> void info(const A&... a) { if (log_level() <= LogLevel::Info) log_line(LogLevel::Info, str(a...)); }
template <class... A> void warn(const A&... a) { log_line(LogLevel::Warn, str(a...)); }
template <class... A> void error(const A&... a) { log_line(LogLevel::Error, str(a...)); }
template <class... A> void info0(const A&... a) { if (log_rank() == 0) info(a...); }
template <class... A> void warn0(const A&... a) { if (log_rank() == 0) warn(a...); }

}  // namespace ddp
