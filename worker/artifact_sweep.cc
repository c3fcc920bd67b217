#include "worker/artifact_sweep.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "worker/engine/base/status_macros.h"
#include "worker/job.h"

namespace quantd::worker {

absl::StatusOr<SweptArtifacts> RemoveUnheldArtifacts(ArtifactStore& artifacts, JobStore& jobs) {
  SweptArtifacts swept;
  QUANTD_ASSIGN_OR_RETURN(const auto listed, artifacts.List());
  for (const auto& [sha256, manifests] : listed) {
    // The holders: succeeded jobs whose result names these bytes.
    QUANTD_ASSIGN_OR_RETURN(std::vector<Job> holding, jobs.JobsWithArtifact(ArtifactIdFor(sha256)));
    std::set<std::string> holders;
    for (const Job& job : holding) {
      if (job.result.has_value() && job.result->artifact_sha256 == sha256) holders.insert(job.id);
    }
    if (holders.empty()) {
      QUANTD_RETURN_IF_ERROR(artifacts.Remove(sha256));
      ++swept.artifacts;
      continue;
    }
    for (const std::string& job_id : manifests) {
      if (holders.count(job_id) > 0) continue;
      QUANTD_RETURN_IF_ERROR(artifacts.RemoveManifest(sha256, job_id));
      ++swept.manifests;
    }
  }
  return swept;
}

}  // namespace quantd::worker
