#ifndef QUANTD_WORKER_DATA_QUOTA_H_
#define QUANTD_WORKER_DATA_QUOTA_H_

// A byte budget for everything quantd stores under its data dir (blobs,
// artifacts, the job database). Writers ask before they write; a write that
// would go over it is RESOURCE_EXHAUSTED, so a full volume becomes a clear
// refusal instead of a half-written file. Uploads reserve their declared size
// when they begin, so that uploads running at once cannot each fit alone and
// together overrun the budget.

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace quantd::worker {

class DataQuota {
 public:
  // Bytes promised to a writer and not yet in a file; handed back when
  // destroyed. Move-only; the quota must outlive it.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept { *this = std::move(other); }
    Reservation& operator=(Reservation&& other) noexcept;
    ~Reservation() { Release(); }

    // `bytes` of it are now in a file under the root, which UsedBytes counts.
    void Consume(int64_t bytes);
    // Hands back what is left.
    void Release();
    int64_t bytes() const { return bytes_; }

   private:
    friend class DataQuota;
    Reservation(const DataQuota* quota, int64_t bytes) : quota_(quota), bytes_(bytes) {}
    const DataQuota* quota_ = nullptr;
    int64_t bytes_ = 0;
  };

  // `max_bytes` 0 = no limit (the file system's own space still applies).
  DataQuota(std::string root, int64_t max_bytes) : root_(std::move(root)), max_bytes_(max_bytes) {}

  int64_t max_bytes() const { return max_bytes_; }
  // Bytes in regular files under the root (symlinks are not followed).
  absl::StatusOr<int64_t> UsedBytes() const;
  // Bytes reserved and not yet written.
  int64_t ReservedBytes() const;
  // OK if `more_bytes` fit beside what is used and reserved; else
  // RESOURCE_EXHAUSTED naming `what`, the use and the limit.
  absl::Status Check(int64_t more_bytes, const std::string& what) const;
  // Check, and holds `bytes` for the caller until the reservation goes.
  absl::StatusOr<Reservation> Reserve(int64_t bytes, const std::string& what) const;

 private:
  // Walks the data dir without mu_ (held, it would stall every upload
  // chunk's Consume for the walk) but under check_mu_, so that no
  // reservation is made meanwhile: the reserved bytes read before the walk
  // are then at least those still reserved after it, and a file written
  // during the walk is counted as reserved, written, or both.
  absl::Status CheckRoom(int64_t more_bytes, const std::string& what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(check_mu_);
  void Return(int64_t bytes) const;

  const std::string root_;
  const int64_t max_bytes_;
  // Held across the walk in Check and Reserve, so that two writers cannot
  // both see room for the same bytes.
  mutable absl::Mutex check_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;  // never held across a walk
  mutable int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_DATA_QUOTA_H_
