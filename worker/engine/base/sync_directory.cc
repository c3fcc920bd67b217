#include "worker/engine/base/sync_directory.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/errno_status.h"

namespace quantd {

absl::Status SyncDirectory(const std::string& dir) {
  int fd;
  do {
    fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot open the folder ", dir, " to sync it"));
  absl::Status status = absl::OkStatus();
  if (::fsync(fd) != 0) status = ErrnoStatus(errno, absl::StrCat("cannot sync the folder ", dir));
  ::close(fd);
  return status;
}

}  // namespace quantd
