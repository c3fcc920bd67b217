#ifndef QUANTD_WORKER_ARTIFACT_STORE_H_
#define QUANTD_WORKER_ARTIFACT_STORE_H_

// Content-addressed storage of int8 artifacts (keyed by sha256), each with
// the manifests of the jobs that produced it. Writes are all-or-nothing: a reader never sees half a file.
// A local folder implements it here; an S3-compatible bucket could too.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace quantd::worker {

struct StoredArtifact {
  std::string sha256;
  int64_t size_bytes = 0;
};

class ArtifactStore {
 public:
  virtual ~ArtifactStore() = default;
  // Stores `bytes` under their sha256 (the same bytes again write nothing)
  // and `manifest_json` as job `job_id`'s manifest of them: identical jobs
  // share the bytes, each keeps its own manifest.
  virtual absl::StatusOr<StoredArtifact> Put(const std::string& job_id, const std::string& bytes,
                                             const std::string& manifest_json) = 0;
  // The whole artifact. NOT_FOUND if absent.
  virtual absl::StatusOr<std::string> Read(const std::string& sha256) = 0;
  // Up to `max_bytes` of the artifact from byte `offset` (fewer at its end,
  // none past it), so that a large one is streamed without being held
  // whole. NOT_FOUND if absent.
  virtual absl::StatusOr<std::string> ReadRange(const std::string& sha256, uint64_t offset, uint64_t max_bytes) = 0;
  // Removes job `job_id`'s manifest of the artifact; the bytes stay.
  virtual absl::Status RemoveManifest(const std::string& sha256, const std::string& job_id) = 0;
  // Removes the artifact and every manifest of it.
  virtual absl::Status Remove(const std::string& sha256) = 0;
  virtual bool Contains(const std::string& sha256) = 0;
  // The stored artifact's size in bytes. NOT_FOUND if absent.
  virtual absl::StatusOr<int64_t> SizeOf(const std::string& sha256) = 0;
  // Every stored artifact (by sha256) with the job ids of its manifests; an
  // artifact whose bytes are missing but whose manifests are not is listed
  // too.
  virtual absl::StatusOr<std::map<std::string, std::vector<std::string>>> List() = 0;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_ARTIFACT_STORE_H_
