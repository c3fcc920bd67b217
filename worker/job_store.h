#ifndef QUANTD_WORKER_JOB_STORE_H_
#define QUANTD_WORKER_JOB_STORE_H_

// Durable job records. Every state change is a conditional update on the
// current state (and attempt), so several worker processes could share one
// store (e.g. a PostgreSQL implementation): the row is the source of truth,
// not any process's memory. A RUNNING job is leased to the process that
// claimed it (its holder), which renews the lease while it runs; a job whose
// lease ran out is taken to be interrupted (its process died or froze).

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/job.h"

namespace quantd::worker {

struct JobPage {
  std::vector<Job> jobs;
  std::string next_page_token;  // "" on the last page
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Inserts a new QUEUED job. If `job.idempotency_key` is already used, the
  // existing job is returned instead (ALREADY_EXISTS if its fingerprint
  // differs). RESOURCE_EXHAUSTED if `max_queued` jobs are already QUEUED.
  virtual absl::StatusOr<Job> Create(const Job& job, int64_t max_queued) = 0;
  // The job `owner` submitted with `idempotency_key`, if any. Asked before
  // a request's references are resolved: a retry finds its job even after
  // the blobs or files the first submission named are gone.
  virtual absl::StatusOr<std::optional<Job>> FindByIdempotencyKey(const std::string& owner,
                                                                  const std::string& idempotency_key) = 0;
  virtual absl::StatusOr<Job> Get(const std::string& id) = 0;
  // Newest first. `states` empty = all.
  virtual absl::StatusOr<JobPage> List(const std::vector<JobState>& states, int page_size,
                                       const std::string& page_token) = 0;
  // Atomically moves the oldest QUEUED job to RUNNING, increments its
  // attempt count, leases it to `holder` until `now + lease` and returns it;
  // nullopt if none is queued. `holder` names a process, the same across its
  // restarts and unique among the processes sharing the store.
  virtual absl::StatusOr<std::optional<Job>> ClaimNext(absl::Time now, const std::string& holder,
                                                       absl::Duration lease) = 0;
  // Extends the lease of a RUNNING job (this attempt) to `expires`.
  // FAILED_PRECONDITION if it is no longer running this attempt: it was
  // recovered after its lease ran out, and may run elsewhere now.
  virtual absl::Status RenewLease(const std::string& id, uint32_t attempt, absl::Time expires) = 0;
  // Records the phase of a RUNNING job (attempt must match).
  virtual absl::Status SetPhase(const std::string& id, uint32_t attempt, JobPhase phase) = 0;
  // RUNNING (this attempt) -> terminal state with result. A SUCCEEDED job
  // whose spec names a model is published, in the same transaction, as that
  // name's next version (recorded in the stored result). SUCCEEDED is
  // refused ABORTED, nothing changed, when a cancel was requested for the job
  // (acknowledged to a client, who must not then find the job's model
  // published): the caller records CANCELLED instead.
  virtual absl::Status Finish(const std::string& id, uint32_t attempt, JobState state,
                              const JobResult& result, absl::Time now) = 0;
  // RUNNING (this attempt) -> QUEUED again, not counting the attempt (a
  // graceful shutdown interrupted it). Unless a cancel was requested for it
  // (acknowledged to a client, so it must not run again): then the job stays
  // RUNNING and the request's reason is returned, for the caller to Finish
  // it as CANCELLED. Checked and changed in one step, so a cancel cannot
  // slip in between.
  virtual absl::StatusOr<std::optional<std::string>> Release(const std::string& id, uint32_t attempt) = 0;
  // QUEUED -> CANCELLED. FAILED_PRECONDITION if the job is not QUEUED.
  virtual absl::StatusOr<Job> CancelQueued(const std::string& id, const std::string& reason,
                                           absl::Time now) = 0;
  // Records a request to cancel a RUNNING job, for whichever process runs it:
  // its runner polls CancelRequest between batches. FAILED_PRECONDITION if
  // the job is not RUNNING.
  virtual absl::Status RequestCancel(const std::string& id, const std::string& reason) = 0;
  // The reason given with a pending cancel request; nullopt if there is none.
  // Also for evaluations (RequestEvaluationCancel).
  virtual absl::StatusOr<std::optional<std::string>> CancelRequest(const std::string& id) = 0;
  // Records a request to cancel a stored evaluation, for whichever process
  // runs it (it polls CancelRequest); cleared when a finished record of it is
  // put. NOT_FOUND if there is no such evaluation, FAILED_PRECONDITION if its
  // record is not RUNNING.
  virtual absl::Status RequestEvaluationCancel(const std::string& id, const std::string& reason) = 0;
  // 1 the first time, then one more on each call, durably: numbers each
  // start of a server on this store (WatchJob sequences build on it).
  virtual absl::StatusOr<uint64_t> NextGeneration() = 0;
  // Records, before the artifact is stored, which artifact a RUNNING job
  // (this attempt) is about to hold, so that deleting an identical job does
  // not remove it in between. Finish replaces it with the result's.
  virtual absl::Status PinArtifact(const std::string& id, uint32_t attempt, const std::string& artifact_id) = 0;
  // Deletes a finished job (and the model version it published, with its
  // evaluations).
  // FAILED_PRECONDITION if it has not finished.
  // Then, if it held an artifact, calls `release` with the job and whether
  // no other job holds that artifact, as WithArtifactLocked does. OK once the
  // job is deleted, even if `release` then fails (logged: the artifact is
  // left for the start-up sweep, RemoveUnheldArtifacts).
  using ReleaseArtifact = std::function<absl::Status(const Job& deleted, bool last_holder)>;
  virtual absl::Status Delete(const std::string& id, const ReleaseArtifact& release) = 0;
  // Calls `use` with the jobs that hold `artifact_id` (ArtifactHolders),
  // while no PinArtifact can run, in this process or in any other sharing
  // the store: so `use` may remove an unheld artifact, or the manifests of
  // jobs that do not hold it, without racing a job that is about to store it.
  using ArtifactHoldersUse = std::function<absl::Status(const std::vector<std::string>& holders)>;
  virtual absl::Status WithArtifactLocked(const std::string& artifact_id, const ArtifactHoldersUse& use) = 0;
  // QUEUED or RUNNING jobs whose spec mentions `needle` (a blob id, in the
  // path of a model or dataset), and SUCCEEDED jobs that published a model
  // version whose source model's path mentions it (the FP32 source is served
  // beside the int8 one; their datasets are free to go), oldest first.
  virtual absl::StatusOr<std::vector<std::string>> ActiveJobsUsing(const std::string& needle) = 0;
  // Succeeded jobs that produced this artifact, oldest first.
  virtual absl::StatusOr<std::vector<Job>> JobsWithArtifact(const std::string& artifact_id) = 0;
  // Ids of the jobs that hold this artifact: SUCCEEDED with it, or RUNNING
  // with it pinned (about to store it, in whichever process).
  virtual absl::StatusOr<std::vector<std::string>> ArtifactHolders(const std::string& artifact_id) = 0;
  // Whether Delete removed job `id` from this store. A job neither here nor
  // deleted is one this store never knew (it is older than the job: a
  // restored backup), whose files the artifact sweep keeps.
  virtual absl::StatusOr<bool> WasDeleted(const std::string& id) = 0;
  // Distinct artifacts of succeeded jobs, newest first: the oldest job of
  // each. `job_id` non-empty = only that job's artifact.
  virtual absl::StatusOr<JobPage> ListArtifactJobs(const std::string& job_id, int page_size,
                                                   const std::string& page_token) = 0;
  // Published versions of `name` ("" = every name), by name then version.
  virtual absl::StatusOr<std::vector<ModelVersion>> ListModelVersions(const std::string& name) = 0;
  // One version; `version` 0 = the newest. NOT_FOUND naming what is missing.
  virtual absl::StatusOr<ModelVersion> GetModelVersion(const std::string& name, int64_t version) = 0;
  // Unpublishes a version (its job and artifact stay) and deletes its
  // evaluations. NOT_FOUND if absent.
  virtual absl::Status DeleteModelVersion(const std::string& name, int64_t version) = 0;
  // Evaluation records (worker/evaluation.h encodes them), by id: insert or
  // replace, and read (NOT_FOUND naming the id). `index` is what
  // LatestEvaluations selects by; the store never parses records. A put for
  // a version that is not published (deleted while it ran) stores nothing
  // and is NOT_FOUND. A finished put keeps the newest
  // kEvaluationsKeptPerVersion records of its version and deletes older
  // finished ones, but not those LatestEvaluations returns.
  static constexpr int64_t kEvaluationsKeptPerVersion = 100;
  struct EvaluationIndex {
    std::string model_name;
    int64_t model_version = 0;
    std::optional<absl::Time> succeeded;  // set once the evaluation has succeeded
    bool has_fp32 = false;                // its report has an FP32 column
    bool finished = false;                // no longer running (its cancel request goes)
  };
  virtual absl::Status PutEvaluation(const std::string& id, const std::string& record,
                                     const EvaluationIndex& index) = 0;
  virtual absl::StatusOr<std::string> GetEvaluation(const std::string& id) = 0;
  // For each model version: the record of its newest succeeded evaluation,
  // and of its newest succeeded one with an FP32 column where that is
  // another (for metrics; every process's), for versions still published.
  // Records stored before indexes existed are not among them.
  virtual absl::StatusOr<std::vector<std::string>> LatestEvaluations() = 0;
  // How many jobs are in each state (every process's: for metrics).
  virtual absl::StatusOr<std::map<JobState, int64_t>> CountByState() = 0;
  // Interrupted RUNNING jobs go back to QUEUED, or to FAILED once they have
  // been started `max_attempts` times, or to CANCELLED when a cancel was
  // requested (RequestCancel) before the interruption; returns how many of
  // each. Interrupted means: the lease ran out before `now`, or the holder is
  // `restarted_holder` (a process that has just started holds nothing yet;
  // "" = none).
  struct RecoveryCounts {
    int requeued = 0;
    int failed = 0;
    int cancelled = 0;
  };
  virtual absl::StatusOr<RecoveryCounts> RecoverInterrupted(uint32_t max_attempts, absl::Time now,
                                                            const std::string& restarted_holder) = 0;
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_JOB_STORE_H_
