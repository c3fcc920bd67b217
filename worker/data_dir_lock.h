#ifndef QUANTD_WORKER_DATA_DIR_LOCK_H_
#define QUANTD_WORKER_DATA_DIR_LOCK_H_

// One owner per data dir. The embedded stores (SQLite jobs, local artifacts
// and blobs) assume a single process: a second quantd on the same volume
// would re-queue the first one's running jobs as "interrupted" and run them
// twice. Several replicas need the shared (PostgreSQL) job store instead.

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace quantd::worker {

class DataDirLock {
 public:
  // Exclusive, non-blocking flocks on the data dir itself and on
  // <data_dir>/LOCK, which also records the owner's pid and host.
  // FAILED_PRECONDITION naming the owner when either is held. The kernel
  // drops them when the process dies, however it dies, so LOCK keeps a dead
  // pid after a crash: it is not a pidfile to clean up. The directory's lock
  // holds even if LOCK is deleted (that let a second quantd start and take
  // the first one's running jobs); where a file system cannot lock a
  // directory (NFS emulates flock with locks that need write access), LOCK's
  // alone guards.
  static absl::StatusOr<std::unique_ptr<DataDirLock>> Acquire(const std::string& data_dir);
  ~DataDirLock();
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;

 private:
  DataDirLock(int dir_fd, int file_fd) : dir_fd_(dir_fd), file_fd_(file_fd) {}
  const int dir_fd_;  // -1 where the directory cannot be locked
  const int file_fd_;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_DATA_DIR_LOCK_H_
