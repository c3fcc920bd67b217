#include "worker/published_artifacts_check.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"
#include "worker/job.h"

namespace quantd::worker {

absl::StatusOr<std::vector<MissingArtifact>> FindMissingPublishedArtifacts(JobStore& jobs, ArtifactStore& artifacts) {
  QUANTD_ASSIGN_OR_RETURN(std::vector<ModelVersion> versions, jobs.ListModelVersions(""));
  std::vector<MissingArtifact> missing;
  std::map<std::string, int64_t> sizes;    // by sha256, -1 = absent: each looked up once
  std::map<std::string, size_t> reported;  // by sha256: its entry in `missing`
  for (const ModelVersion& version : versions) {
    absl::StatusOr<Job> job = jobs.Get(version.job_id);
    if (!job.ok() || !job->result.has_value() || job->result->artifact_sha256.empty()) continue;
    const JobResult& result = *job->result;
    auto [it, first_time] = sizes.emplace(result.artifact_sha256, -1);
    if (first_time) it->second = artifacts.SizeOf(result.artifact_sha256).value_or(-1);
    // A result from before sizes were recorded (0) is checked for presence.
    const bool intact = it->second >= 0 && (result.artifact_size_bytes <= 0 || it->second == result.artifact_size_bytes);
    if (intact) continue;
    auto [entry, added] = reported.emplace(result.artifact_sha256, missing.size());
    if (added) missing.push_back({result.artifact_id, {}, it->second, result.artifact_size_bytes});
    missing[entry->second].versions.push_back(absl::StrCat(version.name, ":", version.version));
  }
  return missing;
}

}  // namespace quantd::worker
