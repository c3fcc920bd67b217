#include "worker/engine/serialization/artifact_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/errno_status.h"
#include "worker/engine/base/sync_directory.h"

namespace quantd::engine {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  return ErrnoStatus(errno, absl::StrCat(what, " ", path));
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes) {
  const std::filesystem::path target(path);
  const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  std::string tmp = (dir / (".tmp." + target.filename().string() + ".XXXXXX")).string();
  // Close-on-exec: the server spawns children (model vetting) while an
  // artifact is written; they must not hold it open.
  const int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return Errno("cannot create a temporary file in", dir.string());
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status status = Errno("cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return status;
    }
    written += static_cast<size_t>(n);
  }
  if (::fchmod(fd, 0644) != 0 || ::fsync(fd) != 0) {
    absl::Status status = Errno("cannot sync", tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return status;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status status = Errno("cannot rename into", path);
    ::unlink(tmp.c_str());
    return status;
  }
  // The rename is durable only once the folder is synced: a caller told OK
  // may record the file (a job's artifact) that a power loss would take.
  return SyncDirectory(dir.string());
}

}  // namespace quantd::engine
