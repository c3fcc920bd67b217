#ifndef QUANTD_WORKER_BLOB_STORE_H_
#define QUANTD_WORKER_BLOB_STORE_H_

// Uploaded models and datasets, content-addressed: <dir>/<sha256>. An upload
// streams into a temporary file while it is hashed; it becomes visible only
// after the size limit and the expected sha256 are checked, fsynced and
// renamed into place.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/data_quota.h"
#include "worker/engine/base/sha256.h"

namespace quantd::worker {

struct BlobInfo {
  std::string sha256;  // also the blob id
  int64_t size_bytes = 0;
  bool already_existed = false;
};

class BlobStore;

// One upload in progress. Destroying it without Commit() discards it.
class BlobUpload {
 public:
  ~BlobUpload();
  BlobUpload(const BlobUpload&) = delete;
  BlobUpload& operator=(const BlobUpload&) = delete;

  // RESOURCE_EXHAUSTED once the upload exceeds the store's limit.
  absl::Status Append(const std::string& chunk);
  // DATA_LOSS if `expected_sha256` (non-empty) does not match, or fewer or
  // more bytes arrived than declared (a cut-off or padded upload).
  absl::StatusOr<BlobInfo> Commit();

 private:
  friend class BlobStore;
  BlobUpload(const BlobStore* store, std::string tmp_path, int fd, std::string expected_sha256,
             int64_t declared_size, DataQuota::Reservation reservation);
  void Discard();

  const BlobStore* store_;
  std::string tmp_path_;
  int fd_;
  std::string expected_sha256_;
  int64_t declared_size_;  // 0 = not declared
  int64_t size_ = 0;
  int64_t unchecked_bytes_ = 0;  // received since the quota was last checked
  // The declared size's share of the quota not yet in the temporary file.
  DataQuota::Reservation reservation_;
  engine::Sha256 hash_;
};

// A stored blob as the file system knows it.
struct StoredBlob {
  std::string id;  // = sha256
  int64_t size_bytes = 0;
  // Upload time, or the last time a job was submitted with it (Touch):
  // garbage collection counts idle time from here.
  absl::Time last_used;
};

class BlobStore {
 public:
  // `quota` (optional, outlives the store) bounds what uploads may add.
  static absl::StatusOr<std::unique_ptr<BlobStore>> Open(const std::string& dir, int64_t max_bytes,
                                                         const DataQuota* quota = nullptr);

  // Every stored blob, by id.
  absl::StatusOr<std::vector<StoredBlob>> List() const;
  // One blob; errors as PathOf.
  absl::StatusOr<StoredBlob> Stat(const std::string& blob_id, const std::string& field) const;
  // NOT_FOUND if it is not stored. Jobs already running keep their open file.
  absl::Status Remove(const std::string& blob_id) const;

  // Held (shared) by a submit from resolving its blobs until its job is
  // recorded, so that RemoveIf cannot delete a blob between a job's check
  // and the job's record.
  class Use {
   public:
    explicit Use(const BlobStore& store) : mu_(&store.use_mu_) { mu_->ReaderLock(); }
    ~Use() { mu_->ReaderUnlock(); }
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

   private:
    absl::Mutex* mu_;
  };
  // Removes the blob if `removable` (run with no Use held, e.g. "no queued
  // or running job uses it") says so; true if removed. Errors of either.
  absl::StatusOr<bool> RemoveIf(const std::string& blob_id,
                                absl::FunctionRef<absl::StatusOr<bool>()> removable) const;
  // Records a use (a job submitted with it) at `now`.
  absl::Status Touch(const std::string& blob_id, absl::Time now) const;

  // `expected_sha256` may be empty; `declared_size` 0 = unknown (otherwise
  // checked against the limit at once and against what arrives).
  absl::StatusOr<std::unique_ptr<BlobUpload>> BeginUpload(const std::string& expected_sha256,
                                                          int64_t declared_size) const;
  // Local path of a stored blob; INVALID_ARGUMENT for a malformed id,
  // NOT_FOUND for an unknown one. `field` names the request field in errors.
  absl::StatusOr<std::string> PathOf(const std::string& blob_id, const std::string& field) const;

  int64_t max_bytes() const { return max_bytes_; }
  const std::string& dir() const { return dir_; }
  const DataQuota* quota() const { return quota_; }

 private:
  BlobStore(std::string dir, int64_t max_bytes, const DataQuota* quota)
      : dir_(std::move(dir)), max_bytes_(max_bytes), quota_(quota) {}
  const std::string dir_;
  const int64_t max_bytes_;
  const DataQuota* const quota_;
  mutable absl::Mutex use_mu_;  // see Use
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_BLOB_STORE_H_
