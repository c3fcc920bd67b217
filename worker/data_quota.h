#ifndef QUANTD_WORKER_DATA_QUOTA_H_
#define QUANTD_WORKER_DATA_QUOTA_H_

// A byte budget for everything quantd stores under its data dir (blobs,
// artifacts, the job database). Writers ask before they write; a write that
// would go over it is RESOURCE_EXHAUSTED, so a full volume becomes a clear
// refusal instead of a half-written file.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace quantd::worker {

class DataQuota {
 public:
  // `max_bytes` 0 = no limit (the file system's own space still applies).
  DataQuota(std::string root, int64_t max_bytes) : root_(std::move(root)), max_bytes_(max_bytes) {}

  int64_t max_bytes() const { return max_bytes_; }
  // Bytes in regular files under the root (symlinks are not followed).
  absl::StatusOr<int64_t> UsedBytes() const;
  // OK if `more_bytes` fit; else RESOURCE_EXHAUSTED naming `what`, the use
  // and the limit.
  absl::Status Check(int64_t more_bytes, const std::string& what) const;

 private:
  const std::string root_;
  const int64_t max_bytes_;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_DATA_QUOTA_H_
