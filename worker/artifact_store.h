#ifndef QUANTD_WORKER_ARTIFACT_STORE_H_
#define QUANTD_WORKER_ARTIFACT_STORE_H_

// Content-addressed storage of int8 artifacts (keyed by sha256), each with
// its manifest. Writes are all-or-nothing: a reader never sees half a file.
// A local folder implements it here; an S3-compatible bucket could too.

#include <cstdint>
#include <string>

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
  // Stores `bytes` (and its manifest) under their sha256; storing the same
  // bytes again is a no-op.
  virtual absl::StatusOr<StoredArtifact> Put(const std::string& bytes,
                                             const std::string& manifest_json) = 0;
  // The whole artifact. NOT_FOUND if absent.
  virtual absl::StatusOr<std::string> Read(const std::string& sha256) = 0;
  virtual absl::Status Remove(const std::string& sha256) = 0;
  virtual bool Contains(const std::string& sha256) = 0;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_ARTIFACT_STORE_H_
