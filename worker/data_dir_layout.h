#ifndef QUANTD_WORKER_DATA_DIR_LAYOUT_H_
#define QUANTD_WORKER_DATA_DIR_LAYOUT_H_

// What quantd keeps at the top of its --data_dir. Request paths are relative
// to the same folder, so they must not name these: a job could otherwise
// read the job store, another user's upload by path, or the lock.

#include <filesystem>
#include <string_view>

namespace quantd::worker {

inline constexpr std::string_view kJobStoreFile = "jobs.db";  // SQLite adds -wal, -shm, -journal
inline constexpr std::string_view kArtifactsDir = "artifacts";
inline constexpr std::string_view kBlobsDir = "blobs";
inline constexpr std::string_view kDataDirLockFile = "LOCK";

// Whether `top` (the first component of a path under the data dir) is one of
// quantd's own entries above.
inline bool IsQuantdStateEntry(std::string_view top) {
  return top.substr(0, kJobStoreFile.size()) == kJobStoreFile || top == kArtifactsDir || top == kBlobsDir ||
         top == kDataDirLockFile;
}

// Whether `relative` names something under the folder it is relative to: not
// empty, not absolute, no "..". (Links are the caller's to resolve.)
inline bool StaysUnderItsRoot(const std::filesystem::path& relative) {
  if (relative.empty() || relative.is_absolute()) return false;
  for (const std::filesystem::path& part : relative) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_DATA_DIR_LAYOUT_H_
