#ifndef QUANTD_SERVER_JOB_CONVERSION_H_
#define QUANTD_SERVER_JOB_CONVERSION_H_

// quantd.v1 messages <-> worker structs, and the validation of a
// QuantizeJobRequest that needs no model loading (missing fields, enums,
// fusion spec shape, blob ids, paths under the data root, dataset sizes).

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quantd/v1/quantd.pb.h"
#include "worker/blob_store.h"
#include "worker/clock.h"
#include "worker/evaluation.h"
#include "worker/job.h"
#include "worker/job_events.h"
#include "worker/job_store.h"

namespace quantd {

// A request's model or dataset reference, checked on this server.
struct ResolvedInput {
  std::string local_path;  // this server's file, to check or open now
  std::string reference;   // what a stored job keeps (worker/input_locator.h)
};

// Resolves model and dataset references to local files.
class ReferenceResolver {
 public:
  // Paths are relative to `data_dir`; after symlinks they must lie under it
  // or under one of `read_roots` (folders of inputs shared read-only).
  ReferenceResolver(std::string data_dir, const worker::BlobStore* blobs, std::vector<std::string> read_roots = {},
                    worker::Clock* clock = worker::Clock::Real());

  // `field` names the request field in error messages ("model.path", ...).
  // INVALID_ARGUMENT for an absolute path, one with "..", one that links out
  // of the allowed roots, or one that is (or links to) quantd's own state in
  // the data dir (worker/data_dir_layout.h); NOT_FOUND for a missing file or
  // blob. The local path is the file after symlinks; the reference is
  // relative to the data dir, or that path when it lies under a read root.
  absl::StatusOr<ResolvedInput> ResolvePath(const std::string& path, const std::string& field) const;
  // A blob's path; marks the blob used now (see BlobStore::Touch).
  absl::StatusOr<ResolvedInput> ResolveBlob(const std::string& blob_id, const std::string& field) const;
  absl::StatusOr<ResolvedInput> ResolveModel(const v1::ModelRef& model, const std::string& field) const;
  // The time requests are checked against (a deadline must be after it).
  absl::Time Now() const { return clock_->Now(); }

 private:
  std::string data_dir_;
  const worker::BlobStore* blobs_;
  worker::Clock* clock_;
  std::vector<std::filesystem::path> roots_;  // canonical
};

// Validates `request` and builds the job to submit (no id yet).
absl::StatusOr<worker::Job> JobFromRequest(const v1::QuantizeJobRequest& request,
                                           const ReferenceResolver& resolver);

// What an idempotency key is checked against: the request's bytes without its
// deadline (a retry computes its own), hashed.
std::string RequestFingerprint(const v1::QuantizeJobRequest& request);

// The job a retry of `request` by `owner` refers to (its idempotency key
// already used): that job, ALREADY_EXISTS if it was made by another request,
// nullopt if the key is new or none is given.
absl::StatusOr<std::optional<worker::Job>> JobOfRetry(const v1::QuantizeJobRequest& request, const std::string& owner,
                                                      worker::JobStore& store);

void ToProto(const worker::Job& job, v1::Job* out);
void ToProto(const worker::StoredBlob& blob, const std::vector<std::string>& active_job_ids, v1::BlobInfo* out);
void ToProto(const worker::JobResult& result, v1::JobResult* out);
void ToProto(const worker::JobEvent& event, v1::JobEvent* out);
void ToProto(const engine::Trial& trial, v1::TuningTrial* out);
void ToProto(const engine::CpuInt8Report& cpu, v1::CpuInfo* out);
void ToProto(const engine::ArtifactRequirements& requirements, v1::ArtifactRequirements* out);
// A published version; `job` (the one that published it) adds its artifact
// and accuracies when known, `last_evaluation` (NewestSucceededEvaluations)
// the newest Evaluate's top-1 when there is one.
void ToProto(const worker::ModelVersion& version, const worker::Job* job, bool loaded,
             const worker::Evaluation* last_evaluation, v1::ModelVersionInfo* out);
// The artifact made by `job` (a SUCCEEDED job), with the kernel engine this
// server runs it on (engine::KernelEngineForArtifact).
void ArtifactToProto(const worker::Job& job, v1::Artifact* out);

absl::StatusOr<worker::JobState> FromProto(v1::JobState state);

// EvaluateRequest -> what the evaluator runs (INVALID_ARGUMENT naming the
// field), and an evaluation record -> its message.
absl::StatusOr<worker::EvaluationSpec> EvaluationSpecFromRequest(const v1::EvaluateRequest& request,
                                                                 const ReferenceResolver& resolver);
void ToProto(const worker::Evaluation& evaluation, v1::Evaluation* out);

}  // namespace quantd

#endif  // QUANTD_SERVER_JOB_CONVERSION_H_
