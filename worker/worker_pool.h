#ifndef QUANTD_WORKER_WORKER_POOL_H_
#define QUANTD_WORKER_WORKER_POOL_H_

// N worker threads take jobs from the job store's queue (oldest first),
// bounded by a queue capacity, and run them with JobRunner. Each running job
// is leased to this pool's holder name; a maintenance thread renews the
// leases, re-queues jobs whose lease ran out (another process sharing the
// store died or froze), and keeps watchers of jobs run elsewhere informed.
// On creation, jobs interrupted by a crash of this holder are re-queued at
// once (or failed after too many attempts); if the store cannot write then
// (a full disk), the workers do it before their first claim. Cancel and
// delete go through here too.

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/artifact_store.h"
#include "worker/artifact_sweep.h"
#include "worker/clock.h"
#include "worker/job.h"
#include "worker/job_events.h"
#include "worker/job_runner.h"
#include "worker/job_store.h"

namespace quantd::worker {

class WorkerPool {
 public:
  struct Options {
    int workers = 1;
    // QUEUED jobs allowed at once; Submit beyond it is RESOURCE_EXHAUSTED.
    int64_t queue_capacity = 64;
    // Longest one start of a job may run (a job claimed again after its
    // server stopped gets it anew); InfiniteDuration = no limit.
    absl::Duration job_deadline = absl::InfiniteDuration();
    // What job_deadline and phase timings are measured on: a clock that
    // never jumps (Clock::Monotonic()) in a server; null: the pool's clock
    // (tests that move a fake one).
    Clock* interval_clock = nullptr;
    // A job found RUNNING after this many starts is failed, not retried.
    uint32_t max_attempts = 2;
    // Per-batch memory bound passed to the engine (0 = none).
    int64_t max_batch_bytes = 0;
    // How often idle workers look at the store without being woken (another
    // process may have queued something).
    absl::Duration idle_poll = absl::Seconds(1);
    // First wait before recording a job's outcome again when the store
    // cannot write (a full disk); doubles up to 5 s.
    absl::Duration finish_retry_backoff = absl::Milliseconds(100);
    // Names this process to the store: the same across its restarts, unique
    // among the processes that share the store (the server uses its host and
    // data dir).
    std::string holder = "local";
    // How long a claimed job stays this process's without a renewal. Leases
    // are renewed, and expired ones recovered, every lease / 3.
    absl::Duration lease = absl::Seconds(30);
    // How often watched jobs that this process does not run are read from
    // the store, to tell their watchers here what changed.
    absl::Duration watch_sync = absl::Seconds(1);
    // Resolves jobs' input references to this process's files; null: specs
    // name absolute paths (tests).
    const InputLocator* inputs = nullptr;
    // How often artifact files that no job holds are removed while the
    // server runs (they are at start-up too): what a job left after losing
    // its lease, or a replica that crashed after storing; InfiniteDuration =
    // only at start-up.
    absl::Duration artifact_sweep = absl::Hours(1);
  };

  // Recovers interrupted jobs; the threads start with Start(). A store that
  // cannot write for now (RESOURCE_EXHAUSTED, UNAVAILABLE) does not fail it.
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Create(
      const Options& options, JobStore* store, ArtifactStore* artifacts,
      QuantizationEngine* engine, Clock* clock);
  // Stops the workers; running jobs are interrupted at their next batch and
  // go back to the queue.
  ~WorkerPool();

  // Starts the workers and the maintenance thread (leases, watch sync).
  void Start();
  void Stop();

  // Renews the lease of every job this pool runs (a job recovered by another
  // process meanwhile is stopped here without recording anything) and
  // re-queues jobs whose lease ran out. The maintenance thread calls it
  // every lease / 3; so may tests, on a fake clock.
  JobStore::RecoveryCounts MaintainLeases();
  // Tells watchers here of the jobs this pool does not run (another process
  // sharing the store runs them, or cancels them) what the store says
  // changed: state, phase and result. The maintenance thread calls it every
  // `watch_sync`; so may tests.
  void SyncFollowedJobs();
  // Removes artifact files no job holds (RemoveUnheldArtifacts) and adds
  // what it removed to swept(). A thread of its own calls it every
  // `artifact_sweep`; so may tests.
  absl::StatusOr<SweptArtifacts> SweepArtifacts();

  // Queues a new job (id, create time and attempt are filled in here) or
  // returns the job already submitted with the same idempotency key.
  absl::StatusOr<Job> Submit(Job job);
  // Queued: CANCELLED at once. Running: stops at the next batch boundary
  // (the returned job may still say RUNNING). Finished: FAILED_PRECONDITION.
  absl::StatusOr<Job> Cancel(const std::string& id, const std::string& reason);
  // Removes a finished job and its artifact if no other job uses it.
  absl::Status Delete(const std::string& id);

  JobStore& store() { return *store_; }
  JobEventHub& events() { return events_; }
  // Interrupted jobs this pool recovered so far: its own at start-up, then
  // any whose lease ran out (MaintainLeases).
  JobStore::RecoveryCounts recovered() const;
  // What was removed from the artifact store since Create (at start-up,
  // then by SweepArtifacts): files no job holds.
  SweptArtifacts swept() const;

 private:
  WorkerPool(const Options& options, JobStore* store, ArtifactStore* artifacts,
             QuantizationEngine* engine, Clock* clock);
  void WorkerLoop();
  void MaintenanceLoop();
  void SweepLoop();
  // Recovers this holder's interrupted jobs if the store could not at
  // Create (a full disk); OK once done. Workers claim nothing before.
  absl::Status FinishStartupRecovery() ABSL_EXCLUSIVE_LOCKS_REQUIRED(claim_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  void ReportClaimErrorLocked(const absl::Status& error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseUnstarted(const Job& job) ABSL_LOCKS_EXCLUDED(mu_, claim_mu_);
  std::string NewJobId();

  const Options options_;
  JobStore* const store_;
  ArtifactStore* const artifacts_;
  Clock* const clock_;
  JobEventHub events_;
  JobRunner runner_;
  SweptArtifacts swept_ ABSL_GUARDED_BY(mu_);

  // Held from a claim until the job is in running_, and by
  // SyncFollowedJobs: so a job claimed here is never taken for one that runs
  // elsewhere. Taken before mu_.
  absl::Mutex claim_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t wakeups_ ABSL_GUARDED_BY(mu_) = 0;
  JobStore::RecoveryCounts recovered_ ABSL_GUARDED_BY(mu_);
  bool startup_recovery_pending_ ABSL_GUARDED_BY(mu_) = false;  // see FinishStartupRecovery
  std::string last_claim_error_ ABSL_GUARDED_BY(mu_);
  absl::Time last_claim_error_time_ ABSL_GUARDED_BY(mu_);
  struct RunningJob {
    uint32_t attempt;
    StopSignals* stop;
  };
  absl::flat_hash_map<std::string, RunningJob> running_ ABSL_GUARDED_BY(mu_);
  // Set only once the workers have stopped: leases are renewed while jobs drain.
  bool maintenance_stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
  std::thread maintenance_;
  std::thread sweeper_;  // SweepLoop, every options_.artifact_sweep
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_WORKER_POOL_H_
