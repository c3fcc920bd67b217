#ifndef QUANTD_WORKER_TESTING_FORWARDING_ARTIFACT_STORE_H_
#define QUANTD_WORKER_TESTING_FORWARDING_ARTIFACT_STORE_H_

// For tests: an ArtifactStore that passes every call to a real one. A test
// store derives from it and overrides the calls it makes fail, hold or count.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "worker/artifact_store.h"

namespace quantd::worker::testing {

class ForwardingArtifactStore : public ArtifactStore {
 public:
  explicit ForwardingArtifactStore(ArtifactStore* real) : real_(real) {}
  absl::StatusOr<StoredArtifact> Put(const std::string& job_id, const std::string& bytes,
                                     const std::string& manifest_json) override {
    return real_->Put(job_id, bytes, manifest_json);
  }
  absl::StatusOr<std::string> Read(const std::string& sha256) override { return real_->Read(sha256); }
  absl::StatusOr<std::string> ReadRange(const std::string& sha256, uint64_t offset, uint64_t max_bytes) override {
    return real_->ReadRange(sha256, offset, max_bytes);
  }
  absl::Status RemoveManifest(const std::string& sha256, const std::string& job_id) override {
    return real_->RemoveManifest(sha256, job_id);
  }
  absl::Status Remove(const std::string& sha256) override { return real_->Remove(sha256); }
  bool Contains(const std::string& sha256) override { return real_->Contains(sha256); }
  absl::StatusOr<int64_t> SizeOf(const std::string& sha256) override { return real_->SizeOf(sha256); }
  absl::StatusOr<std::map<std::string, std::vector<std::string>>> List() override { return real_->List(); }

 protected:
  ArtifactStore* const real_;
};

}  // namespace quantd::worker::testing

#endif  // QUANTD_WORKER_TESTING_FORWARDING_ARTIFACT_STORE_H_
