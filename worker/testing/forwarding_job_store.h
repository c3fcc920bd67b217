#ifndef QUANTD_WORKER_TESTING_FORWARDING_JOB_STORE_H_
#define QUANTD_WORKER_TESTING_FORWARDING_JOB_STORE_H_

// For tests: a JobStore that passes every call to a real one. A test store
// derives from it and overrides the calls it makes fail or watches.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "worker/job_store.h"

namespace quantd::worker::testing {

class ForwardingJobStore : public JobStore {
 public:
  explicit ForwardingJobStore(JobStore* real) : real_(real) {}

  absl::StatusOr<Job> Create(const Job& job, int64_t max_queued) override { return real_->Create(job, max_queued); }
  absl::StatusOr<std::optional<Job>> FindByIdempotencyKey(const std::string& owner, const std::string& key) override {
    return real_->FindByIdempotencyKey(owner, key);
  }
  absl::StatusOr<Job> Get(const std::string& id) override { return real_->Get(id); }
  absl::StatusOr<JobPage> List(const std::vector<JobState>& states, int page_size,
                               const std::string& page_token) override {
    return real_->List(states, page_size, page_token);
  }
  absl::StatusOr<std::optional<Job>> ClaimNext(absl::Time now, const std::string& holder,
                                               absl::Duration lease) override {
    return real_->ClaimNext(now, holder, lease);
  }
  absl::Status RenewLease(const std::string& id, uint32_t attempt, absl::Time expires) override {
    return real_->RenewLease(id, attempt, expires);
  }
  absl::Status SetPhase(const std::string& id, uint32_t attempt, JobPhase phase) override {
    return real_->SetPhase(id, attempt, phase);
  }
  absl::Status Finish(const std::string& id, uint32_t attempt, JobState state, const JobResult& result,
                      absl::Time now) override {
    return real_->Finish(id, attempt, state, result, now);
  }
  absl::StatusOr<std::optional<std::string>> Release(const std::string& id, uint32_t attempt) override {
    return real_->Release(id, attempt);
  }
  absl::StatusOr<Job> CancelQueued(const std::string& id, const std::string& reason, absl::Time now) override {
    return real_->CancelQueued(id, reason, now);
  }
  absl::Status RequestCancel(const std::string& id, const std::string& reason) override {
    return real_->RequestCancel(id, reason);
  }
  absl::StatusOr<std::optional<std::string>> CancelRequest(const std::string& id) override {
    return real_->CancelRequest(id);
  }
  absl::Status RequestEvaluationCancel(const std::string& id, const std::string& reason) override {
    return real_->RequestEvaluationCancel(id, reason);
  }
  absl::StatusOr<uint64_t> NextGeneration() override { return real_->NextGeneration(); }
  absl::Status PinArtifact(const std::string& id, uint32_t attempt, const std::string& artifact_id) override {
    return real_->PinArtifact(id, attempt, artifact_id);
  }
  absl::Status Delete(const std::string& id, const ReleaseArtifact& release) override {
    return real_->Delete(id, release);
  }
  absl::Status WithArtifactLocked(const std::string& artifact_id, const ArtifactHoldersUse& use) override {
    return real_->WithArtifactLocked(artifact_id, use);
  }
  absl::StatusOr<std::vector<std::string>> ActiveJobsUsing(const std::string& needle) override {
    return real_->ActiveJobsUsing(needle);
  }
  absl::StatusOr<std::vector<Job>> JobsWithArtifact(const std::string& artifact_id) override {
    return real_->JobsWithArtifact(artifact_id);
  }
  absl::StatusOr<bool> WasDeleted(const std::string& id) override { return real_->WasDeleted(id); }
  absl::StatusOr<std::vector<std::string>> ArtifactHolders(const std::string& artifact_id) override {
    return real_->ArtifactHolders(artifact_id);
  }
  absl::StatusOr<JobPage> ListArtifactJobs(const std::string& job_id, int page_size,
                                           const std::string& page_token) override {
    return real_->ListArtifactJobs(job_id, page_size, page_token);
  }
  absl::StatusOr<RecoveryCounts> RecoverInterrupted(uint32_t max_attempts, absl::Time now,
                                                    const std::string& restarted_holder) override {
    return real_->RecoverInterrupted(max_attempts, now, restarted_holder);
  }
  absl::StatusOr<std::vector<ModelVersion>> ListModelVersions(const std::string& name) override {
    return real_->ListModelVersions(name);
  }
  absl::StatusOr<std::map<JobState, int64_t>> CountByState() override { return real_->CountByState(); }
  absl::Status PutEvaluation(const std::string& id, const std::string& record, const EvaluationIndex& index) override {
    return real_->PutEvaluation(id, record, index);
  }
  absl::StatusOr<std::vector<std::string>> LatestEvaluations() override { return real_->LatestEvaluations(); }
  absl::StatusOr<std::string> GetEvaluation(const std::string& id) override { return real_->GetEvaluation(id); }
  absl::StatusOr<ModelVersion> GetModelVersion(const std::string& name, int64_t version) override {
    return real_->GetModelVersion(name, version);
  }
  absl::Status DeleteModelVersion(const std::string& name, int64_t version) override {
    return real_->DeleteModelVersion(name, version);
  }

 protected:
  JobStore* const real_;
};

}  // namespace quantd::worker::testing

#endif  // QUANTD_WORKER_TESTING_FORWARDING_JOB_STORE_H_
