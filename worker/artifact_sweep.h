#ifndef QUANTD_WORKER_ARTIFACT_SWEEP_H_
#define QUANTD_WORKER_ARTIFACT_SWEEP_H_

// Removes what no job record holds from the artifact store: an artifact
// stored by a job that then crashed and failed, or was rerun with other
// bytes; a manifest of a job that no longer holds the artifact; a manifest
// left without its bytes. Without it those files would count against the
// data quota forever.
//
// Run at start-up, after interrupted jobs were requeued and before any
// worker runs: a job between storing its artifact and recording it would
// otherwise lose it. The local stores are owned by one process (the data
// dir lock); stores shared by several replicas need the sweep to spare
// recent files instead.

#include "absl/status/statusor.h"
#include "worker/artifact_store.h"
#include "worker/job_store.h"

namespace quantd::worker {

struct SweptArtifacts {
  int artifacts = 0;  // removed with all their manifests
  int manifests = 0;  // removed alone (their artifact is held by other jobs)
};

absl::StatusOr<SweptArtifacts> RemoveUnheldArtifacts(ArtifactStore& artifacts, JobStore& jobs);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_ARTIFACT_SWEEP_H_
