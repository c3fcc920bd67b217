#ifndef QUANTD_WORKER_ENGINE_BASE_LOG_H_
#define QUANTD_WORKER_ENGINE_BASE_LOG_H_

// One line per event on stderr: "<RFC3339 time> <LEVEL> quantd: <message>".
// Here, below the worker and the server, so that every line either writes at
// run time has that one format.

#include <sstream>

#include "absl/strings/string_view.h"

namespace quantd {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Debug lines are dropped unless enabled (quantd --log_rpcs).
void SetDebugLogging(bool enabled);
bool DebugLoggingEnabled();

// Writes `message` as one line (a single write(2), so lines from several
// threads do not interleave).
void LogLine(LogLevel level, absl::string_view message);

// LogLine of `parts` streamed one after another (an absl::Status among them
// prints as its code and message).
template <typename... Parts>
void Log(LogLevel level, const Parts&... parts) {
  std::ostringstream line;
  (line << ... << parts);
  LogLine(level, line.str());
}

}  // namespace quantd

#endif  // QUANTD_WORKER_ENGINE_BASE_LOG_H_
