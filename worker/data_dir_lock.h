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
  // An exclusive, non-blocking flock on <data_dir>/LOCK, which also records
  // the owner's pid and host. FAILED_PRECONDITION naming the owner when it is
  // held. The kernel drops the lock when the process dies, however it dies.
  static absl::StatusOr<std::unique_ptr<DataDirLock>> Acquire(const std::string& data_dir);
  ~DataDirLock();
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;

 private:
  explicit DataDirLock(int fd) : fd_(fd) {}
  const int fd_;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_DATA_DIR_LOCK_H_
