#ifndef QUANTD_WORKER_PUBLISHED_ARTIFACTS_CHECK_H_
#define QUANTD_WORKER_PUBLISHED_ARTIFACTS_CHECK_H_

// Published versions whose artifact the store does not hold: a volume not
// mounted, a wrong --data_dir, files deleted by hand. Found at start-up, so
// an operator reads it in the log before a client's inference fails on it.
// Only presence is checked (one lookup per artifact, cheap on any store);
// damaged bytes are found when a version is loaded or downloaded.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/artifact_store.h"
#include "worker/job_store.h"

namespace quantd::worker {

struct MissingArtifact {
  std::string artifact_id;
  std::vector<std::string> versions;  // "name:version", each published on it
};

// By artifact, in the order of the versions' listing (name, then version).
absl::StatusOr<std::vector<MissingArtifact>> FindMissingPublishedArtifacts(JobStore& jobs, ArtifactStore& artifacts);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_PUBLISHED_ARTIFACTS_CHECK_H_
