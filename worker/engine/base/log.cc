#include "worker/engine/base/log.h"

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace quantd {
namespace {

std::atomic<bool> debug_logging{false};

absl::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
  }
  return "INFO";
}

}  // namespace

void SetDebugLogging(bool enabled) { debug_logging.store(enabled); }

bool DebugLoggingEnabled() { return debug_logging.load(); }

void LogLine(LogLevel level, absl::string_view message) {
  if (level == LogLevel::kDebug && !DebugLoggingEnabled()) return;
  std::string line = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
      " ", LevelName(level), " ", message, "\n");
  const char* data = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, data, left);
    if (n <= 0) return;  // Nowhere else to report a broken stderr.
    data += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace quantd
