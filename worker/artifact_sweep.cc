#include "worker/artifact_sweep.h"

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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

// The creation time (ms since the epoch) a time-ordered job id carries
// (NewTimeOrderedId in job.h), if `id` is one.
std::optional<uint64_t> MillisOfJobId(const std::string& id) {
  constexpr absl::string_view kPrefix = "job-";
  uint64_t ms = 0;
  if (id.size() != kPrefix.size() + 20 || !absl::StartsWith(id, kPrefix) ||
      !absl::SimpleHexAtoi(absl::string_view(id).substr(kPrefix.size(), 12), &ms)) {
    return std::nullopt;
  }
  return ms;
}

// `newer_than_the_store`: a job the store cannot know yet, made after its
// newest job. Its files are kept: the store is older than the artifacts (a
// jobs.db restored from a backup, or replaced), and they are the only record
// of that job.
Unheld UnheldFiles(const std::vector<std::string>& holding, const std::vector<std::string>& manifest_jobs,
                   const std::function<bool(const std::string&)>& newer_than_the_store, int* kept) {
  Unheld unheld;
  if (holding.empty()) {
    if (std::any_of(manifest_jobs.begin(), manifest_jobs.end(), newer_than_the_store)) {
      ++*kept;
      return unheld;
    }
    unheld.artifact = true;
    return unheld;
  }
  const std::set<std::string> holders(holding.begin(), holding.end());
  for (const std::string& job_id : manifest_jobs) {
    if (holders.count(job_id) > 0) continue;
    if (newer_than_the_store(job_id)) {
      ++*kept;
    } else {
      unheld.manifests.push_back(job_id);
    }
  }
  return unheld;
}

}  // namespace

absl::StatusOr<SweptArtifacts> RemoveUnheldArtifacts(ArtifactStore& artifacts, JobStore& jobs) {
  SweptArtifacts swept;
  // Files first, holders second: a job pins its artifact before storing it,
  // so any file listed here already has its holder recorded, whichever
  // process is storing it.
  // The newest job first, then the files: a job made meanwhile is newer
  // than it, but it pins its artifact before storing, so it holds it.
  QUANTD_ASSIGN_OR_RETURN(JobPage newest, jobs.List({}, 1, ""));
  const std::optional<uint64_t> newest_ms =
      newest.jobs.empty() ? std::optional<uint64_t>(0) : MillisOfJobId(newest.jobs[0].id);
  auto newer_than_the_store = [&](const std::string& job_id) {
    const std::optional<uint64_t> ms = MillisOfJobId(job_id);
    return newest_ms.has_value() && ms.has_value() && *ms > *newest_ms;
  };
  QUANTD_ASSIGN_OR_RETURN(const auto listed, artifacts.List());
  for (const auto& [sha256, manifests] : listed) {
    const std::string& file = sha256;  // a structured binding cannot be captured in C++17
    const std::vector<std::string>& manifest_jobs = manifests;
    // Nothing to remove for most artifacts: read without the lock (which
    // stalls every store call while held), then decided again under it.
    absl::StatusOr<std::vector<std::string>> holding = jobs.ArtifactHolders(ArtifactIdFor(file));
    int kept = 0;
    if (holding.ok() && UnheldFiles(*holding, manifest_jobs, newer_than_the_store, &kept).empty()) {
      swept.kept_newer += kept;
      continue;
    }
    kept = 0;  // counted again under the lock
    // Decided while pinning is locked out: a job that pins the artifact
    // (an identical job, or an earlier holder run again) stores its bytes
    // and manifest after the decision, never between it and the removal.
    const absl::Status decided =
        jobs.WithArtifactLocked(ArtifactIdFor(file), [&](const std::vector<std::string>& holding) -> absl::Status {
          const Unheld unheld = UnheldFiles(holding, manifest_jobs, newer_than_the_store, &kept);
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
    swept.kept_newer += kept;
    // One file that cannot go does not keep the others.
    if (!decided.ok() && swept.first_error.ok()) swept.first_error = decided;
  }
  return swept;
}

}  // namespace quantd::worker
