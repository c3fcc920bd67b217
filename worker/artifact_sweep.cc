#include "worker/artifact_sweep.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "worker/engine/base/status_macros.h"
#include "worker/job.h"

namespace quantd::worker {

namespace {

// What of an artifact's files no job holds: all of them (no holder), or the
// manifests of the jobs that do not hold it.
struct Unheld {
  bool artifact = false;
  std::vector<std::string> manifests;
  bool empty() const { return !artifact && manifests.empty(); }
};

Unheld UnheldFiles(const std::vector<std::string>& holding, const std::vector<std::string>& manifest_jobs) {
  Unheld unheld;
  if (holding.empty()) {
    unheld.artifact = true;
    return unheld;
  }
  const std::set<std::string> holders(holding.begin(), holding.end());
  for (const std::string& job_id : manifest_jobs) {
    if (holders.count(job_id) == 0) unheld.manifests.push_back(job_id);
  }
  return unheld;
}

}  // namespace

absl::StatusOr<SweptArtifacts> RemoveUnheldArtifacts(ArtifactStore& artifacts, JobStore& jobs) {
  SweptArtifacts swept;
  // Files first, holders second: a job pins its artifact before storing it,
  // so any file listed here already has its holder recorded, whichever
  // process is storing it.
  QUANTD_ASSIGN_OR_RETURN(const auto listed, artifacts.List());
  for (const auto& [sha256, manifests] : listed) {
    const std::string& file = sha256;  // a structured binding cannot be captured in C++17
    const std::vector<std::string>& manifest_jobs = manifests;
    // Nothing to remove for most artifacts: read without the lock (which
    // stalls every store call while held), then decided again under it.
    absl::StatusOr<std::vector<std::string>> holding = jobs.ArtifactHolders(ArtifactIdFor(file));
    if (holding.ok() && UnheldFiles(*holding, manifest_jobs).empty()) continue;
    // Decided while pinning is locked out: a job that pins the artifact
    // (an identical job, or an earlier holder run again) stores its bytes
    // and manifest after the decision, never between it and the removal.
    const absl::Status decided =
        jobs.WithArtifactLocked(ArtifactIdFor(file), [&](const std::vector<std::string>& holding) -> absl::Status {
          const Unheld unheld = UnheldFiles(holding, manifest_jobs);
          if (unheld.artifact) {
            QUANTD_RETURN_IF_ERROR(artifacts.Remove(file));
            ++swept.artifacts;
          }
          for (const std::string& job_id : unheld.manifests) {
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
