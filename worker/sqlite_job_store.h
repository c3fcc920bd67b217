#ifndef QUANTD_WORKER_SQLITE_JOB_STORE_H_
#define QUANTD_WORKER_SQLITE_JOB_STORE_H_

// JobStore on one SQLite file (WAL journal, synchronous=FULL), e.g.
// <data_dir>/jobs.db. State changes are conditional UPDATEs, as a shared
// PostgreSQL store would do them.

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "worker/job_store.h"

struct sqlite3;

namespace quantd::worker {

class SqliteJobStore final : public JobStore {
 public:
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path);
  ~SqliteJobStore() override;

  absl::StatusOr<Job> Create(const Job& job, int64_t max_queued) override;
  absl::StatusOr<std::optional<Job>> FindByIdempotencyKey(const std::string& owner,
                                                          const std::string& idempotency_key) override;
  absl::StatusOr<Job> Get(const std::string& id) override;
  absl::StatusOr<JobPage> List(const std::vector<JobState>& states, int page_size,
                               const std::string& page_token) override;
  absl::StatusOr<std::optional<Job>> ClaimNext(absl::Time now, const std::string& holder,
                                               absl::Duration lease) override;
  absl::Status RenewLease(const std::string& id, uint32_t attempt, absl::Time expires) override;
  absl::Status SetPhase(const std::string& id, uint32_t attempt, JobPhase phase) override;
  absl::Status Finish(const std::string& id, uint32_t attempt, JobState state,
                      const JobResult& result, absl::Time now) override;
  absl::StatusOr<std::optional<std::string>> Release(const std::string& id, uint32_t attempt) override;
  absl::Status RequestCancel(const std::string& id, const std::string& reason) override;
  absl::StatusOr<std::optional<std::string>> CancelRequest(const std::string& id) override;
  absl::Status RequestEvaluationCancel(const std::string& id, const std::string& reason) override;
  absl::StatusOr<Job> CancelQueued(const std::string& id, const std::string& reason,
                                   absl::Time now) override;
  absl::StatusOr<uint64_t> NextGeneration() override;
  absl::Status PinArtifact(const std::string& id, uint32_t attempt, const std::string& artifact_id) override;
  absl::Status Delete(const std::string& id, const ReleaseArtifact& release) override;
  absl::Status WithArtifactLocked(const std::string& artifact_id, const ArtifactHoldersUse& use) override;
  absl::StatusOr<std::vector<Job>> JobsWithArtifact(const std::string& artifact_id) override;
  absl::StatusOr<std::vector<std::string>> ArtifactHolders(const std::string& artifact_id) override;
  absl::StatusOr<bool> WasDeleted(const std::string& id) override;
  absl::StatusOr<std::vector<std::string>> ActiveJobsUsing(const std::string& needle) override;
  absl::StatusOr<JobPage> ListArtifactJobs(const std::string& job_id, int page_size,
                                           const std::string& page_token) override;
  absl::StatusOr<RecoveryCounts> RecoverInterrupted(uint32_t max_attempts, absl::Time now,
                                                    const std::string& restarted_holder) override;
  absl::StatusOr<std::vector<ModelVersion>> ListModelVersions(const std::string& name) override;
  absl::StatusOr<std::map<JobState, int64_t>> CountByState() override;
  absl::Status PutEvaluation(const std::string& id, const std::string& record, const EvaluationIndex& index) override;
  absl::StatusOr<std::string> GetEvaluation(const std::string& id) override;
  absl::StatusOr<std::vector<std::string>> LatestEvaluations() override;
  absl::StatusOr<ModelVersion> GetModelVersion(const std::string& name, int64_t version) override;
  absl::Status DeleteModelVersion(const std::string& name, int64_t version) override;

 private:
  explicit SqliteJobStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // COMMIT when `body` is OK, else ROLLBACK; a failed COMMIT is rolled back.
  absl::Status EndTransaction(const absl::Status& body) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<RecoveryCounts> RecoverInterruptedLocked(uint32_t max_attempts, absl::Time now,
                                                          const std::string& restarted_holder)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Job> GetLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ClearCancelRequestLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records `reason` for `id` if the query `running` (reading ?1) finds a
  // row; whether it did.
  absl::StatusOr<bool> InsertCancelRequestLocked(const std::string& id, const std::string& reason,
                                                 const char* running) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WithArtifactLockedLocked(const std::string& artifact_id, const ArtifactHoldersUse& use)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<std::string>> ArtifactHoldersLocked(const std::string& artifact_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FinishLocked(const std::string& id, uint32_t attempt, JobState state, JobResult result,
                            absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_SQLITE_JOB_STORE_H_
