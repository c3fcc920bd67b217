#ifndef QUANTD_WORKER_LOCAL_BLOB_STORE_H_
#define QUANTD_WORKER_LOCAL_BLOB_STORE_H_

// The blob store in a local folder: <dir>/<sha256>. An upload streams into a
// temporary file while it is hashed; it becomes visible only after the size
// limit and the expected sha256 are checked, fsynced and renamed into place.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/blob_store.h"
#include "worker/data_quota.h"
#include "worker/engine/base/sha256.h"

namespace quantd::worker {

class LocalBlobStore;

class LocalBlobUpload final : public BlobUpload {
 public:
  ~LocalBlobUpload() override;
  LocalBlobUpload(const LocalBlobUpload&) = delete;
  LocalBlobUpload& operator=(const LocalBlobUpload&) = delete;

  absl::Status Append(const std::string& chunk) override;
  absl::StatusOr<BlobInfo> Commit() override;

 private:
  friend class LocalBlobStore;
  LocalBlobUpload(const LocalBlobStore* store, std::string tmp_path, int fd, std::string expected_sha256,
                  int64_t declared_size, DataQuota::Reservation reservation);
  void Discard();

  const LocalBlobStore* store_;
  std::string tmp_path_;
  int fd_;
  std::string expected_sha256_;
  int64_t declared_size_;  // 0 = not declared
  int64_t size_ = 0;
  // The declared size's share of the quota not yet in the temporary file.
  DataQuota::Reservation reservation_;
  engine::Sha256 hash_;
};

class LocalBlobStore final : public BlobStore {
 public:
  // `quota` (optional, outlives the store) bounds what uploads may add.
  static absl::StatusOr<std::unique_ptr<LocalBlobStore>> Open(const std::string& dir, int64_t max_bytes,
                                                              const DataQuota* quota = nullptr);

  absl::StatusOr<std::vector<StoredBlob>> List() const override;
  absl::StatusOr<StoredBlob> Stat(const std::string& blob_id, const std::string& field) const override;
  absl::Status Remove(const std::string& blob_id) const override;
  absl::Status Touch(const std::string& blob_id, absl::Time now) const override;
  absl::StatusOr<std::unique_ptr<BlobUpload>> BeginUpload(const std::string& expected_sha256,
                                                          int64_t declared_size) const override;
  // The blob's own file in the folder.
  absl::StatusOr<std::string> PathOf(const std::string& blob_id, const std::string& field) const override;
  absl::StatusOr<std::string> VerifiedPathOf(const std::string& blob_id, const std::string& field) const override;
  int64_t max_bytes() const override { return max_bytes_; }

  const std::string& dir() const { return dir_; }
  const DataQuota* quota() const { return quota_; }

 private:
  LocalBlobStore(std::string dir, int64_t max_bytes, const DataQuota* quota)
      : dir_(std::move(dir)), max_bytes_(max_bytes), quota_(quota) {}
  const std::string dir_;
  const int64_t max_bytes_;
  const DataQuota* const quota_;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_LOCAL_BLOB_STORE_H_
