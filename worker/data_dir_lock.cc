#include "worker/data_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "worker/data_dir_layout.h"

namespace quantd::worker {
namespace {

std::string ReadOwner(int fd) {
  char buffer[256];
  const ssize_t n = ::pread(fd, buffer, sizeof(buffer) - 1, 0);
  if (n <= 0) return "unknown";
  return std::string(absl::StripAsciiWhitespace(absl::string_view(buffer, static_cast<size_t>(n))));
}

}  // namespace

absl::StatusOr<std::unique_ptr<DataDirLock>> DataDirLock::Acquire(const std::string& data_dir) {
  const std::string path = (std::filesystem::path(data_dir) / kDataDirLockFile).string();
  auto in_use = [&](const std::string& owner) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data dir ", data_dir, " is in use by another quantd (", owner, "; lock ", path,
        "). One server owns a data dir; stop it first, or give this one its own --data_dir"));
  };
  const int dir_fd = ::open(data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open the data dir ", data_dir, ": ",
                                                      std::strerror(errno)));
  }
  int locked_dir = dir_fd;
  if (::flock(dir_fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(dir_fd);
    if (error == EWOULDBLOCK) {
      const int file = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
      const std::string owner = file >= 0 ? ReadOwner(file) : "its LOCK file was deleted, so its pid is not known";
      if (file >= 0) ::close(file);
      return in_use(owner);
    }
    locked_dir = -1;  // a file system that cannot lock a directory: LOCK alone
  }
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) {
    const int error = errno;
    if (locked_dir >= 0) ::close(locked_dir);
    return absl::FailedPreconditionError(absl::StrCat("cannot open the data dir lock ", path, ": ",
                                                      std::strerror(error)));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    const std::string owner = ReadOwner(fd);
    ::close(fd);
    if (locked_dir >= 0) ::close(locked_dir);
    if (error == EWOULDBLOCK) return in_use(owner);
    return absl::FailedPreconditionError(absl::StrCat("cannot lock ", path, ": ", std::strerror(error)));
  }
  char host[256] = "unknown";
  ::gethostname(host, sizeof(host) - 1);
  const std::string owner = absl::StrCat("pid ", ::getpid(), " on ", host, "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, owner.data(), owner.size(), 0) != static_cast<ssize_t>(owner.size())) {
    // The lock holds regardless; the text only helps whoever is refused.
  }
  return std::unique_ptr<DataDirLock>(new DataDirLock(locked_dir, fd));
}

DataDirLock::~DataDirLock() {
  ::flock(file_fd_, LOCK_UN);
  ::close(file_fd_);
  if (dir_fd_ >= 0) {
    ::flock(dir_fd_, LOCK_UN);
    ::close(dir_fd_);
  }
}

}  // namespace quantd::worker
