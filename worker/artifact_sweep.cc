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
    const std::string& file = sha256;  // a structured binding cannot be captured in C++17
    const std::vector<std::string>& manifest_jobs = manifests;
    // What a removal would take; nothing for most artifacts. Read without
    // the lock (which stalls every store call while held), then decided
    // again under it.
    auto has_garbage = [&](const std::vector<std::string>& holding) {
      if (holding.empty()) return true;
      const std::set<std::string> holders(holding.begin(), holding.end());
      for (const std::string& job_id : manifest_jobs) {
        if (holders.count(job_id) == 0) return true;
      }
      return false;
    };
    absl::StatusOr<std::vector<std::string>> holding = jobs.ArtifactHolders(ArtifactIdFor(file));
    if (holding.ok() && !has_garbage(*holding)) continue;
    // Decided while pinning is locked out: a job that pins the artifact
    // (an identical job, or an earlier holder run again) stores its bytes
    // and manifest after the decision, never between it and the removal.
    const absl::Status decided =
        jobs.WithArtifactLocked(ArtifactIdFor(file), [&](const std::vector<std::string>& holding) -> absl::Status {
          if (holding.empty()) {
            QUANTD_RETURN_IF_ERROR(artifacts.Remove(file));
            ++swept.artifacts;
            return absl::OkStatus();
          }
          const std::set<std::string> holders(holding.begin(), holding.end());
          for (const std::string& job_id : manifest_jobs) {
            if (holders.count(job_id) > 0) continue;
            QUANTD_RETURN_IF_ERROR(artifacts.RemoveManifest(file, job_id));
            ++swept.manifests;
          }
          return absl::OkStatus();
        });
    // One file that cannot go does not keep the others.
    if (!decided.ok() && swept.first_error.ok()) swept.first_error = decided;
  }
  return swept;
}

}  // namespace quantd::worker
