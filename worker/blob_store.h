#ifndef QUANTD_WORKER_BLOB_STORE_H_
#define QUANTD_WORKER_BLOB_STORE_H_

// Uploaded models and datasets, content-addressed by sha256 (the blob id).
// An upload becomes visible only once it is complete and its size and
// sha256 are checked. A local folder implements it (local_blob_store.h); a
// store shared by several replicas (an S3-compatible bucket) would too, so
// nothing above this interface may assume that the blobs live in this process
// or on this machine.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace quantd::worker {

struct BlobInfo {
  std::string sha256;  // also the blob id
  int64_t size_bytes = 0;
  bool already_existed = false;
};

// A stored blob.
struct StoredBlob {
  std::string id;  // = sha256
  int64_t size_bytes = 0;
  // Upload time, or the last time a job was submitted with it (Touch):
  // garbage collection counts idle time from here.
  absl::Time last_used;
};

// One upload in progress. Destroying it without Commit() discards it.
class BlobUpload {
 public:
  virtual ~BlobUpload() = default;
  // RESOURCE_EXHAUSTED once the upload exceeds the store's limit.
  virtual absl::Status Append(const std::string& chunk) = 0;
  // DATA_LOSS if the expected sha256 (when given) does not match, or fewer or
  // more bytes arrived than declared (a cut-off or padded upload); nothing is
  // stored then.
  virtual absl::StatusOr<BlobInfo> Commit() = 0;
};

class BlobStore {
 public:
  virtual ~BlobStore() = default;

  // Every stored blob, by id.
  virtual absl::StatusOr<std::vector<StoredBlob>> List() const = 0;
  // One blob; INVALID_ARGUMENT for a malformed id, NOT_FOUND for an unknown
  // one. `field` names the request field in errors.
  virtual absl::StatusOr<StoredBlob> Stat(const std::string& blob_id, const std::string& field) const = 0;
  // NOT_FOUND if it is not stored. Jobs already running keep their open file.
  virtual absl::Status Remove(const std::string& blob_id) const = 0;
  // Records a use (a job submitted with it) at `now`.
  virtual absl::Status Touch(const std::string& blob_id, absl::Time now) const = 0;
  // `expected_sha256` may be empty; `declared_size` 0 = unknown (otherwise
  // checked against the limit at once and against what arrives).
  virtual absl::StatusOr<std::unique_ptr<BlobUpload>> BeginUpload(const std::string& expected_sha256,
                                                                  int64_t declared_size) const = 0;
  // A file on this machine with the blob's bytes, for LibTorch and the
  // dataset readers (a remote store would fetch it into a local cache).
  // Errors as Stat.
  virtual absl::StatusOr<std::string> PathOf(const std::string& blob_id, const std::string& field) const = 0;
  // PathOf, with the file's bytes checked against the blob id first: what a
  // job or an evaluation reads. DATA_LOSS, naming `field`, when they no
  // longer hash to it (damage in the store: the upload is the only copy).
  virtual absl::StatusOr<std::string> VerifiedPathOf(const std::string& blob_id, const std::string& field) const = 0;
  // The largest upload accepted, in bytes.
  virtual int64_t max_bytes() const = 0;

  // Held (shared) by a submit from resolving its blobs until its job is
  // recorded, and by a commit while it makes its blob visible, so that
  // RemoveIf in this process cannot delete a blob between a job's check and
  // the job's record. Across processes the collector's second look at the
  // blob's last use (Touch, then Stat) is what protects a fresh submit.
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

 private:
  mutable absl::Mutex use_mu_;  // see Use
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_BLOB_STORE_H_
