#ifndef QUANTD_WORKER_ARTIFACT_SWEEP_H_
#define QUANTD_WORKER_ARTIFACT_SWEEP_H_

// Removes what no job holds from the artifact store (a job holds its
// artifact once SUCCEEDED with it, or while RUNNING with it pinned): an
// artifact stored by a job that then crashed and failed, or was rerun with
// other bytes; a manifest of a job that no longer holds the artifact; a
// manifest left without its bytes. Without it those files would count
// against the data quota forever. Files of jobs the store never knew
// (neither a record nor a deletion) are kept: the store is then older than
// them (a jobs.db restored from a backup), and they are those jobs' only
// record.
//
// Run at start-up, after this server's interrupted jobs were requeued (their
// stale pins no longer hold anything), and then periodically while workers
// run. Jobs running meanwhile, in this process or another sharing the
// stores, keep what they store: they pin it first, and each artifact's
// files are decided on while pinning is locked out.

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "worker/artifact_store.h"
#include "worker/job_store.h"

namespace quantd::worker {

struct SweptArtifacts {
  int artifacts = 0;  // removed with all their manifests
  int manifests = 0;  // removed alone (their artifact is held by other jobs)
  // Files kept because a job they name is unknown to the job store (an
  // older jobs.db restored): an artifact with its manifests, or a manifest,
  // each counted once per sweep.
  int kept_unknown = 0;
  // What the log names: the artifacts removed ("art-…") and the jobs unknown
  // to the store whose files were kept. Sets: a periodic sweep adds to them
  // only what it has not named before.
  std::set<std::string> removed_ids;
  std::set<std::string> unknown_jobs;
  // The first file that could not be removed (the sweep goes on past it);
  // OK when none.
  absl::Status first_error;
};

absl::StatusOr<SweptArtifacts> RemoveUnheldArtifacts(ArtifactStore& artifacts, JobStore& jobs);

// "a, b, c and 4 more": at most `most` of `names`, for a log line, of
// `total` in all (names may hold only the first of them).
std::string FirstNames(const std::set<std::string>& names, size_t total, size_t most = 10);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_ARTIFACT_SWEEP_H_
