#ifndef QUANTD_TESTS_INTEGRATION_TEST_UTIL_SUBPROCESS_H_
#define QUANTD_TESTS_INTEGRATION_TEST_UTIL_SUBPROCESS_H_

// Child processes for integration tests: posix_spawn with stdout/stderr sent
// to files, bounded waits that poll (no fixed sleeps), kill on destruction.

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quantd::test_util {

class Subprocess {
 public:
  struct Options {
    // Files that receive the child's output (created/truncated).
    std::string stdout_path = "/dev/null";
    std::string stderr_path = "/dev/null";
    // File fed to the child's stdin.
    std::string stdin_path = "/dev/null";
  };

  // argv[0] must be a path (no PATH lookup).
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(
      const std::vector<std::string>& argv, const Options& options);

  // Kills (SIGKILL) and reaps the child if it is still running.
  ~Subprocess();

  pid_t pid() const { return pid_; }

  // Waits up to `timeout` for the child to exit. Returns its exit code, or
  // 128 + signal number if a signal ended it; nullopt on timeout.
  std::optional<int> WaitFor(absl::Duration timeout);
  // Non-blocking WaitFor.
  std::optional<int> Poll() { return WaitFor(absl::ZeroDuration()); }

  bool Signal(int signal_number);

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}

  pid_t pid_;
  std::optional<int> exit_code_;
};

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs a command to completion within `timeout` (killed and reported as an
// error otherwise), capturing stdout and stderr.
absl::StatusOr<RunResult> RunCommand(const std::vector<std::string>& argv, absl::Duration timeout,
                              const std::string& stdin_path = "/dev/null");

// The whole file, or "" if it cannot be read.
std::string ReadFileOrEmpty(const std::string& path);

// A fresh, empty temporary directory for this test process.
std::string MakeTempDir(const std::string& prefix);

}  // namespace quantd::test_util

#endif  // QUANTD_TESTS_INTEGRATION_TEST_UTIL_SUBPROCESS_H_
