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
  // Files first, holders second: a job pins its artifact before storing it,
  // so any file listed here already has its holder recorded, whichever
  // process is storing it.
  QUANTD_ASSIGN_OR_RETURN(const auto listed, artifacts.List());
  for (const auto& [sha256, manifests] : listed) {
    QUANTD_ASSIGN_OR_RETURN(const std::vector<std::string> holding, jobs.ArtifactHolders(ArtifactIdFor(sha256)));
    const std::set<std::string> holders(holding.begin(), holding.end());
    if (holders.empty()) {
      // Removed only if still unheld once pinning is locked out: an identical
      // job elsewhere may have pinned it since.
      const std::string& file = sha256;  // a structured binding cannot be captured in C++17
      QUANTD_RETURN_IF_ERROR(jobs.WithArtifactLocked(ArtifactIdFor(file), [&](bool unheld) {
        if (!unheld) return absl::OkStatus();  // the next sweep looks again
        ++swept.artifacts;
        return artifacts.Remove(file);
      }));
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
