#include "worker/model_vetter.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "worker/clock.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/quantizer.h"

extern char** environ;

namespace quantd::worker {
namespace {

// The child's report: "status <code>\n<message>" on stdout, then exit code
// kRejected. Anything else on an exit is a crash or a foreign failure.
constexpr int kRejected = 2;
constexpr char kStatusPrefix[] = "status ";
// Enough for the child's message; the rest (a sanitizer's report) is dropped.
constexpr size_t kMaxOutput = 64 << 10;

std::string SignalName(int signal_number) {
  const char* abbrev = ::sigabbrev_np(signal_number);
  return abbrev != nullptr ? absl::StrCat("SIG", abbrev) : absl::StrCat("signal ", signal_number);
}

std::string LastLine(absl::string_view text) {
  text = absl::StripTrailingAsciiWhitespace(text);
  const size_t newline = text.rfind('\n');
  if (newline != absl::string_view::npos) text = text.substr(newline + 1);
  return std::string(text.substr(0, 500));
}

// Reads the child's output until EOF or `deadline`; false on timeout.
bool ReadUntilEof(int fd, absl::Time deadline, std::string* output) {
  char buffer[4096];
  while (true) {
    const absl::Duration left = deadline - Clock::Monotonic()->Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd poll_fd{fd, POLLIN, 0};
    const int ready = ::poll(&poll_fd, 1, static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1000)));
    if (ready < 0 && errno != EINTR) return true;  // treat as closed; waitpid tells the rest
    if (ready <= 0) continue;
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return true;
    if (output->size() < kMaxOutput) output->append(buffer, std::min<size_t>(n, kMaxOutput - output->size()));
  }
}

enum class Waited { kExited, kTimedOut, kLost };

// Waits for `pid` until `deadline`. kLost: waitpid failed (the child was
// reaped elsewhere, e.g. SIGCHLD ignored): how it ended is unknown.
Waited WaitUntil(pid_t pid, absl::Time deadline, int* wait_status) {
  while (true) {
    const pid_t done = ::waitpid(pid, wait_status, WNOHANG);
    if (done == pid) return Waited::kExited;
    if (done < 0 && errno != EINTR) return Waited::kLost;
    if (Clock::Monotonic()->Now() >= deadline) return Waited::kTimedOut;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

absl::Status Verdict(int wait_status, const std::string& output, const std::string& model_path) {
  if (WIFSIGNALED(wait_status)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", model_path, ": LibTorch's TorchScript loader crashed on this file (",
        SignalName(WTERMSIG(wait_status)),
        ") in a child process: the archive is damaged or crafted; quantd itself was not affected"));
  }
  const int exit_code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
  if (exit_code == 0) return absl::OkStatus();
  if (exit_code == kRejected && absl::StartsWith(output, kStatusPrefix)) {
    const std::pair<absl::string_view, absl::string_view> parts =
        absl::StrSplit(absl::string_view(output).substr(sizeof(kStatusPrefix) - 1), absl::MaxSplits('\n', 1));
    int code = 0;
    if (absl::SimpleAtoi(parts.first, &code) && code > 0 && code <= 16) {
      return absl::Status(static_cast<absl::StatusCode>(code), absl::StripTrailingAsciiWhitespace(parts.second));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("model ", model_path,
                                                 ": the child process loading it failed (exit code ", exit_code,
                                                 "): ", LastLine(output)));
}

}  // namespace

absl::Status VetModelInChildProcess(const ModelVetterOptions& options, const std::string& model_path) {
  if (options.command.empty()) return absl::InternalError("model vetter: no command to run");
  std::vector<std::string> args = options.command;
  args.push_back(model_path);
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);

  // O_CLOEXEC: a child another worker spawns at the same time must not
  // inherit this write end, or this read would wait for that child too.
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("model vetter: pipe: ", std::strerror(errno)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  // Nothing else of the server's: the child reads an untrusted model, and
  // an upload or artifact being written (a temporary file), the job store or
  // a client's socket held open by it would outlive their use here.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t no_signals;
  sigemptyset(&no_signals);
  posix_spawnattr_setsigmask(&attributes, &no_signals);
  sigset_t default_signals;
  sigemptyset(&default_signals);
  sigaddset(&default_signals, SIGPIPE);
  sigaddset(&default_signals, SIGTERM);
  sigaddset(&default_signals, SIGINT);
  posix_spawnattr_setsigdefault(&attributes, &default_signals);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  pid_t pid = -1;
  const int spawned = ::posix_spawn(&pid, argv[0], &actions, &attributes, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  ::close(pipe_fds[1]);
  if (spawned != 0) {
    ::close(pipe_fds[0]);
    return absl::InternalError(
        absl::StrCat("model vetter: cannot start ", args[0], ": ", std::strerror(spawned)));
  }

  const absl::Time deadline = Clock::Monotonic()->Now() + options.timeout;
  std::string output;
  int wait_status = 0;
  const Waited waited =
      ReadUntilEof(pipe_fds[0], deadline, &output) ? WaitUntil(pid, deadline, &wait_status) : Waited::kTimedOut;
  const int wait_errno = errno;
  ::close(pipe_fds[0]);
  if (waited == Waited::kLost) {
    // Never taken for a clean exit: that would pass a model that crashed it.
    return absl::InternalError(absl::StrCat("model vetter: lost the exit status of the child process loading ",
                                            model_path, " (waitpid: ", std::strerror(wait_errno),
                                            "; is SIGCHLD ignored?)"));
  }
  if (waited == Waited::kTimedOut) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
    }
    return absl::DeadlineExceededError(absl::StrCat(
        "model ", model_path, ": loading it took longer than ", options.timeout_flag, "=",
        absl::ToDoubleSeconds(options.timeout), " s in a child process, which was stopped"));
  }
  return Verdict(wait_status, output, model_path);
}

absl::Status CachingModelVetter::Vet(const std::string& model_path) {
  absl::StatusOr<std::string> sha256 = engine::Sha256File(model_path);
  if (!sha256.ok()) return sha256.status();
  {
    absl::MutexLock lock(&mu_);
    if (loaded_.contains(*sha256)) return absl::OkStatus();
  }
  absl::Status vetted = VetModelInChildProcess(options_, model_path);
  if (vetted.ok()) {
    absl::MutexLock lock(&mu_);
    if (loaded_.size() >= capacity_) loaded_.clear();  // rare; costs only re-vetting
    loaded_.insert(*std::move(sha256));
  }
  return vetted;
}

namespace {

// What this machine (or this cgroup, if less) can hold: memory plus swap.
uint64_t MachineMemoryBytes() {
  uint64_t bytes = 0;
  struct sysinfo info;
  if (::sysinfo(&info) == 0) {
    bytes = (static_cast<uint64_t>(info.totalram) + info.totalswap) * info.mem_unit;
  }
  std::ifstream cgroup("/sys/fs/cgroup/memory.max");  // cgroup v2; "max" = none
  std::string line;
  uint64_t limit = 0;
  if (std::getline(cgroup, line) && absl::SimpleAtoi(line, &limit) && limit > 0) {
    bytes = bytes == 0 ? limit : std::min(bytes, limit);
  }
  return bytes;
}

// This process's address space now (/proc/self/statm's first field).
uint64_t MappedBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t pages = 0;
  statm >> pages;
  return pages * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace

int RunModelVetterChild(const std::string& model_path, int64_t memory_bytes) {
  // Descriptors other server threads had open without O_CLOEXEC when this
  // process was spawned are not ours to hold.
  ::close_range(3, ~0U, 0);
  // A server killed with -9 takes its child along (a hung load would linger).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  // quantd runs on jemalloc, which maps memory with MAP_NORESERVE: the
  // kernel no longer refuses one allocation larger than the machine, as it
  // did glibc's. A crafted archive that asks for 26 GiB
  // (tests/fuzz/crashers/torchscript/allocates_26_gib) was given it and
  // filled memory until the OOM killer came. The child's address space is
  // capped at what the machine holds, so such a request fails at once.
  // On top of what is mapped already (under ASan, terabytes of shadow).
  // In a container the cgroup's limit is shared with the server, so its
  // operator may cap the child lower (--model_vet_memory_bytes).
  const uint64_t room = memory_bytes > 0 ? static_cast<uint64_t>(memory_bytes) : MachineMemoryBytes();
  if (room > 0) {
    struct rlimit cap;
    cap.rlim_cur = cap.rlim_max = MappedBytes() + room;
    ::setrlimit(RLIMIT_AS, &cap);
  }
  absl::Status loaded = engine::CheckModelLoads(model_path);
  if (loaded.ok()) return 0;
  // The loader reports an allocation it could not make as out of memory,
  // as INVALID_ARGUMENT when a bad archive asked for it: either way, say
  // which cap it met.
  if (memory_bytes > 0 && absl::StrContains(loaded.message(), "out of memory")) {
    loaded = absl::ResourceExhaustedError(absl::StrCat(loaded.message(), " (the model-vetting child may use ",
                                                       memory_bytes, " more bytes, --model_vet_memory_bytes)"));
  }
  std::printf("%s%d\n%s\n", kStatusPrefix, static_cast<int>(loaded.code()), std::string(loaded.message()).c_str());
  std::fflush(stdout);
  return kRejected;
}

}  // namespace quantd::worker
