#include "worker/published_artifacts_check.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"
#include "worker/job.h"

namespace quantd::worker {

absl::StatusOr<std::vector<MissingArtifact>> FindMissingPublishedArtifacts(JobStore& jobs, ArtifactStore& artifacts) {
  QUANTD_ASSIGN_OR_RETURN(std::vector<ModelVersion> versions, jobs.ListModelVersions(""));
  std::vector<MissingArtifact> missing;
  std::map<std::string, bool> present;     // by sha256: each looked up once
  std::map<std::string, size_t> reported;  // by sha256: its entry in `missing`
  for (const ModelVersion& version : versions) {
    absl::StatusOr<Job> job = jobs.Get(version.job_id);
    if (!job.ok() || !job->result.has_value() || job->result->artifact_sha256.empty()) continue;
    const std::string& sha256 = job->result->artifact_sha256;
    auto [it, first_time] = present.emplace(sha256, true);
    if (first_time) it->second = artifacts.Contains(sha256);
    if (it->second) continue;
    auto [entry, added] = reported.emplace(sha256, missing.size());
    if (added) missing.push_back({job->result->artifact_id, {}});
    missing[entry->second].versions.push_back(absl::StrCat(version.name, ":", version.version));
  }
  return missing;
}

}  // namespace quantd::worker
