#include "worker/artifact_sweep.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

// `unknown_to_the_store`: a job the job store has no record of, not even as
// deleted. Its files are kept: the store is then older than the artifacts
// (a jobs.db restored from a backup, or replaced), and they are that job's
// only record.
Unheld UnheldFiles(const std::vector<std::string>& holding, const std::vector<std::string>& manifest_jobs,
                   const std::set<std::string>& unknown_to_the_store, int* kept) {
  Unheld unheld;
  if (holding.empty()) {
    if (std::any_of(manifest_jobs.begin(), manifest_jobs.end(),
                    [&](const std::string& job_id) { return unknown_to_the_store.count(job_id) > 0; })) {
      ++*kept;
      return unheld;
    }
    unheld.artifact = true;
    return unheld;
  }
  const std::set<std::string> holders(holding.begin(), holding.end());
  for (const std::string& job_id : manifest_jobs) {
    if (holders.count(job_id) > 0) continue;
    if (unknown_to_the_store.count(job_id) > 0) {
      ++*kept;
    } else {
      unheld.manifests.push_back(job_id);
    }
  }
  return unheld;
}

// The jobs of `job_ids` the store has no record of, not even as deleted
// (in doubt, a failed lookup, unknown: their files are kept).
std::set<std::string> UnknownJobs(JobStore& jobs, const std::vector<std::string>& job_ids) {
  std::set<std::string> unknown;
  for (const std::string& job_id : job_ids) {
    if (!absl::IsNotFound(jobs.Get(job_id).status())) continue;
    absl::StatusOr<bool> deleted = jobs.WasDeleted(job_id);
    if (!deleted.ok() || !*deleted) unknown.insert(job_id);
  }
  return unknown;
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
    if (holding.ok() && !holding->empty() &&
        std::all_of(manifest_jobs.begin(), manifest_jobs.end(), [&](const std::string& job_id) {
          return std::find(holding->begin(), holding->end(), job_id) != holding->end();
        })) {
      continue;
    }
    // Asked outside the lock below (the store's own lock, which Get takes
    // too), and only of files some job does not hold (few). A job known now
    // stays known, or becomes deleted: neither is unknown.
    const std::set<std::string> unknown = UnknownJobs(jobs, manifest_jobs);
    swept.unknown_jobs.insert(unknown.begin(), unknown.end());
    int kept = 0;
    if (holding.ok() && UnheldFiles(*holding, manifest_jobs, unknown, &kept).empty()) {
      swept.kept_unknown += kept;
      continue;
    }
    kept = 0;  // counted again under the lock
    // Decided while pinning is locked out: a job that pins the artifact
    // (an identical job, or an earlier holder run again) stores its bytes
    // and manifest after the decision, never between it and the removal.
    const absl::Status decided =
        jobs.WithArtifactLocked(ArtifactIdFor(file), [&](const std::vector<std::string>& holding) -> absl::Status {
          const Unheld unheld = UnheldFiles(holding, manifest_jobs, unknown, &kept);
          if (unheld.artifact) {
            QUANTD_RETURN_IF_ERROR(artifacts.Remove(file));
            ++swept.artifacts;
            swept.removed_ids.insert(ArtifactIdFor(file));
          }
          for (const std::string& job_id : unheld.manifests) {
            QUANTD_RETURN_IF_ERROR(artifacts.RemoveManifest(file, job_id));
            ++swept.manifests;
          }
          return absl::OkStatus();
        });
    swept.kept_unknown += kept;
    // One file that cannot go does not keep the others.
    if (!decided.ok() && swept.first_error.ok()) swept.first_error = decided;
  }
  return swept;
}

std::string FirstNames(const std::set<std::string>& names, size_t total, size_t most) {
  const size_t shown = std::min(most, names.size());
  std::vector<std::string> first(names.begin(), std::next(names.begin(), static_cast<std::ptrdiff_t>(shown)));
  const size_t left = std::max(total, names.size()) - shown;
  return left == 0 ? absl::StrJoin(first, ", ") : absl::StrCat(absl::StrJoin(first, ", "), " and ", left, " more");
}

}  // namespace quantd::worker
