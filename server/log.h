#ifndef QUANTD_SERVER_LOG_H_
#define QUANTD_SERVER_LOG_H_

// One line per event on stderr: "<RFC3339 time> <LEVEL> quantd: <message>".

#include "absl/strings/string_view.h"

namespace quantd {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Debug lines are dropped unless enabled (quantd --log_rpcs).
void SetDebugLogging(bool enabled);
bool DebugLoggingEnabled();

// Writes `message` as one line (a single write(2), so lines from several
// threads do not interleave).
void LogLine(LogLevel level, absl::string_view message);

}  // namespace quantd

#endif  // QUANTD_SERVER_LOG_H_
