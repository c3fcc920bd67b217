#ifndef QUANTD_SERVER_FILE_STAMP_H_
#define QUANTD_SERVER_FILE_STAMP_H_

// What tells a reloadable file (tokens, certificates) changed without
// reading it: its modification time, size and inode. A Kubernetes Secret is
// updated by swapping a link, which changes the inode.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace quantd {

struct FileStamp {
  int64_t mtime_ns = 0;
  int64_t size = -1;
  uint64_t inode = 0;

  bool operator==(const FileStamp& other) const {
    return mtime_ns == other.mtime_ns && size == other.size && inode == other.inode;
  }
  bool operator!=(const FileStamp& other) const { return !(*this == other); }
};

// NOT_FOUND "<what> <path> is missing" if it cannot be stat'ed (links followed).
absl::StatusOr<FileStamp> StampOf(const std::string& path, const std::string& what);

}  // namespace quantd

#endif  // QUANTD_SERVER_FILE_STAMP_H_
