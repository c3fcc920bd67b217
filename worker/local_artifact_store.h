#ifndef QUANTD_WORKER_LOCAL_ARTIFACT_STORE_H_
#define QUANTD_WORKER_LOCAL_ARTIFACT_STORE_H_

// ArtifactStore in a local folder: <dir>/<sha256>.pt and one
// <dir>/<sha256>.<job id>.manifest.json per job, each written to a temporary
// file, fsynced and renamed into place. Temporary files left by a crash are removed when
// the store is opened.

#include <memory>
#include <string>

#include "worker/artifact_store.h"
#include "worker/engine/base/sha256.h"
#include "worker/data_quota.h"

namespace quantd::worker {

class LocalArtifactStore final : public ArtifactStore {
 public:
  // `quota` (optional, outlives the store): Put is RESOURCE_EXHAUSTED when
  // the artifact would not fit.
  static absl::StatusOr<std::unique_ptr<LocalArtifactStore>> Open(const std::string& dir,
                                                                  const DataQuota* quota = nullptr);

  absl::StatusOr<StoredArtifact> Put(const std::string& job_id, const std::string& bytes,
                                     const std::string& manifest_json) override;
  absl::StatusOr<std::string> Read(const std::string& sha256) override;
  absl::StatusOr<std::string> ReadRange(const std::string& sha256, uint64_t offset, uint64_t max_bytes) override;
  absl::Status RemoveManifest(const std::string& sha256, const std::string& job_id) override;
  absl::Status Remove(const std::string& sha256) override;
  bool Contains(const std::string& sha256) override;
  absl::StatusOr<int64_t> SizeOf(const std::string& sha256) override;
  absl::StatusOr<std::map<std::string, std::vector<std::string>>> List() override;

  std::string ArtifactPath(const std::string& sha256) const;
  std::string ManifestPath(const std::string& sha256, const std::string& job_id) const;

 private:
  LocalArtifactStore(std::string dir, const DataQuota* quota) : dir_(std::move(dir)), quota_(quota) {}
  const std::string dir_;
  const DataQuota* const quota_;
};

// Removes files named ".tmp.*" directly in `dir` (left by a crash during an
// atomic write). Returns how many.
int RemoveTemporaryFiles(const std::string& dir);
using engine::IsSha256Hex;

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_LOCAL_ARTIFACT_STORE_H_
