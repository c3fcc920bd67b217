#ifndef QUANTD_WORKER_BLOB_COLLECTOR_H_
#define QUANTD_WORKER_BLOB_COLLECTOR_H_

// Garbage collection of uploaded blobs: a blob that no QUEUED or RUNNING job
// uses and that nobody has uploaded or submitted with for `ttl` is deleted.
// Without it a data volume only grows.

#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/blob_store.h"
#include "worker/clock.h"
#include "worker/job_store.h"

namespace quantd::worker {

// One pass; returns the ids deleted.
absl::StatusOr<std::vector<std::string>> CollectUnusedBlobs(const BlobStore& blobs, JobStore& jobs, absl::Time now,
                                                            absl::Duration ttl);

// Runs CollectUnusedBlobs every `interval` on its own thread until destroyed.
class BlobCollector {
 public:
  BlobCollector(const BlobStore* blobs, JobStore* jobs, Clock* clock, absl::Duration ttl, absl::Duration interval);
  ~BlobCollector();

 private:
  void Loop();

  const BlobStore* const blobs_;
  JobStore* const jobs_;
  Clock* const clock_;
  const absl::Duration ttl_;
  const absl::Duration interval_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_BLOB_COLLECTOR_H_
