#ifndef QUANTD_WORKER_PUBLISHED_ARTIFACTS_CHECK_H_
#define QUANTD_WORKER_PUBLISHED_ARTIFACTS_CHECK_H_

// Published versions whose artifact the store does not hold, or holds with
// another size than it was stored with: a volume not mounted, a wrong
// --data_dir, files deleted or cut short by hand or by a disk. Found at
// start-up, so an operator reads it in the log before a client's inference
// fails on it. Only presence and size are checked (one lookup per artifact,
// cheap on any store); other damage is found when a version is loaded or
// downloaded (its sha256).

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/artifact_store.h"
#include "worker/job_store.h"

namespace quantd::worker {

struct MissingArtifact {
  std::string artifact_id;
  std::vector<std::string> versions;  // "name:version", each published on it
  // -1: not in the store. Otherwise its size there, which differs from
  // `recorded_bytes`, the size the job stored (a file cut short, say).
  int64_t found_bytes = -1;
  int64_t recorded_bytes = 0;
};

// By artifact, in the order of the versions' listing (name, then version).
absl::StatusOr<std::vector<MissingArtifact>> FindMissingPublishedArtifacts(JobStore& jobs, ArtifactStore& artifacts);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_PUBLISHED_ARTIFACTS_CHECK_H_
