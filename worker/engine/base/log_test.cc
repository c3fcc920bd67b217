#include "worker/engine/base/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quantd {
namespace {

// What the calls in `write` put on stderr (fd 2, as LogLine writes it).
template <typename Write>
std::string CaptureStderr(Write write) {
  char path[] = "/tmp/quantd_log_testXXXXXX";
  const int file = mkstemp(path);
  EXPECT_GE(file, 0);
  const int saved = dup(STDERR_FILENO);
  dup2(file, STDERR_FILENO);
  write();
  dup2(saved, STDERR_FILENO);
  close(saved);
  std::string text;
  char buffer[4096];
  lseek(file, 0, SEEK_SET);
  for (ssize_t n; (n = read(file, buffer, sizeof(buffer))) > 0;) text.append(buffer, static_cast<size_t>(n));
  close(file);
  unlink(path);
  return text;
}

// Every runtime line, the worker's included, has the time and the level: a
// log pipeline that parses them once dropped the worker's bare lines.
TEST(LogTest, ALineHasTheTimeTheLevelAndStreamedPartsStatusesIncluded) {
  const std::string text = CaptureStderr([] {
    Log(LogLevel::kWarning, "quantd: cannot renew the lease of job ", "job-1", " (attempt ", 2, "): ",
        absl::UnavailableError("store busy"));
    Log(LogLevel::kDebug, "dropped unless debug logging is on");
  });
  EXPECT_THAT(text, ::testing::MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                                            "WARNING quantd: cannot renew the lease of job job-1 \\(attempt 2\\): "
                                            "UNAVAILABLE: store busy\n"));
}

}  // namespace
}  // namespace quantd
