#ifndef QUANTD_SERVER_QUANTIZATION_SERVICE_H_
#define QUANTD_SERVER_QUANTIZATION_SERVICE_H_

// quantd.v1.QuantizationService on the gRPC callback API. Handlers only
// validate, enqueue and reply: quantization itself runs in worker/. Whatever
// may block (the job store, blob and artifact files) runs on the
// BlockingExecutor, never on gRPC's callback threads.
//
// Jobs, uploads, artifacts, model versions and evaluations (run by
// worker::Evaluator); inference itself is inference.GRPCInferenceService
// (server/inference_service.h).

#include <string>

#include "absl/time/time.h"
#include "quantd/v1/quantd.grpc.pb.h"
#include "server/auth.h"
#include "server/blocking_executor.h"
#include "server/job_conversion.h"
#include "server/upload_slots.h"
#include "worker/artifact_store.h"
#include "worker/blob_store.h"
#include "worker/data_quota.h"
#include "worker/clock.h"
#include "worker/evaluation.h"
#include "worker/model_repository.h"
#include "worker/worker_pool.h"

namespace quantd {

class QuantizationServiceImpl final
    : public quantd::v1::QuantizationService::CallbackService {
 public:
  struct Deps {
    std::string data_dir;
    worker::WorkerPool* pool = nullptr;
    worker::BlobStore* blobs = nullptr;
    worker::ArtifactStore* artifacts = nullptr;
    // What GetServerInfo answers (fixed for the server's lifetime).
    v1::ServerInfo server_info;
    // Who may call what; never null (Authenticator::Disabled() admits all).
    Authenticator* auth = nullptr;
    // Folders outside data_dir that request paths may link into.
    std::vector<std::string> read_roots;
    // Runs the handlers' blocking work; never null.
    BlockingExecutor* executor = nullptr;
    // Published model versions as served (ListModels says which are loaded).
    worker::ModelRepository* models = nullptr;
    // Runs evaluations; never null.
    worker::Evaluator* evaluator = nullptr;
    // An upload stream that sends no message for this long is dropped
    // (DEADLINE_EXCEEDED); zero: never.
    absl::Duration upload_idle_timeout = absl::ZeroDuration();
    // Past its first upload_idle_timeout (a minute when that is zero), an
    // upload averaging fewer bytes per second since it began is dropped
    // (DEADLINE_EXCEEDED); zero: no minimum.
    int64_t upload_min_bytes_per_second = 0;
    // Uploads in progress at once, both methods together; never null.
    UploadSlots* upload_slots = nullptr;
    // The data dir's byte budget, which the job store's records count
    // against too: a submit that finds it full is refused. Null: none.
    const worker::DataQuota* quota = nullptr;
    // Times uploads (intervals: a system clock set forward once dropped
    // every upload in progress as too slow); never null.
    worker::Clock* clock = worker::Clock::Monotonic();
  };
  explicit QuantizationServiceImpl(const Deps& deps)
      : deps_(deps), resolver_(deps.data_dir, deps.blobs, deps.read_roots) {}

  grpc::ServerUnaryReactor* QuantizeJob(grpc::CallbackServerContext* context,
                                        const v1::QuantizeJobRequest* request,
                                        v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request,
                                   v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* context,
      const v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request,
                                      v1::Job* response) override;
  grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* context,
                                      const v1::DeleteJobRequest* request,
                                      v1::DeleteJobResponse* response) override;
  grpc::ServerReadReactor<v1::UploadModelRequest>* UploadModel(
      grpc::CallbackServerContext* context, v1::BlobInfo* response) override;
  grpc::ServerReadReactor<v1::UploadDatasetRequest>* UploadDataset(
      grpc::CallbackServerContext* context, v1::BlobInfo* response) override;
  grpc::ServerUnaryReactor* ListBlobs(grpc::CallbackServerContext* context, const v1::ListBlobsRequest* request,
                                      v1::ListBlobsResponse* response) override;
  grpc::ServerUnaryReactor* GetBlob(grpc::CallbackServerContext* context, const v1::GetBlobRequest* request,
                                    v1::BlobInfo* response) override;
  grpc::ServerUnaryReactor* DeleteBlob(grpc::CallbackServerContext* context, const v1::DeleteBlobRequest* request,
                                       v1::DeleteBlobResponse* response) override;
  grpc::ServerUnaryReactor* GetArtifact(grpc::CallbackServerContext* context,
                                        const v1::GetArtifactRequest* request,
                                        v1::Artifact* response) override;
  grpc::ServerUnaryReactor* ListArtifacts(
      grpc::CallbackServerContext* context,
      const v1::ListArtifactsRequest* request,
      v1::ListArtifactsResponse* response) override;
  grpc::ServerWriteReactor<v1::DownloadArtifactResponse>* DownloadArtifact(
      grpc::CallbackServerContext* context,
      const v1::DownloadArtifactRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteModelVersion(grpc::CallbackServerContext* context,
                                               const v1::DeleteModelVersionRequest* request,
                                               v1::DeleteModelVersionResponse* response) override;
  grpc::ServerUnaryReactor* Evaluate(grpc::CallbackServerContext* context, const v1::EvaluateRequest* request,
                                     v1::Evaluation* response) override;
  grpc::ServerUnaryReactor* GetEvaluation(grpc::CallbackServerContext* context,
                                          const v1::GetEvaluationRequest* request, v1::Evaluation* response) override;
  grpc::ServerUnaryReactor* CancelEvaluation(grpc::CallbackServerContext* context,
                                             const v1::CancelEvaluationRequest* request,
                                             v1::Evaluation* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;

 private:
  // The caller, if its token allows `required`; else the status to answer
  // (the refusal is audited).
  absl::StatusOr<Principal> Admit(grpc::CallbackServerContext* context, Role required, absl::string_view method,
                                  absl::string_view target = "") const;
  // Admits the caller for `required`, then runs `work` on the executor and
  // finishes the call with what it returns; RESOURCE_EXHAUSTED at once when
  // the executor's queue is full. `target` names what the call acts on in
  // the audit line of a refusal.
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* context, absl::string_view method, Role required,
                                    absl::AnyInvocable<absl::Status(Principal caller) &&> work,
                                    absl::string_view target = "");

  const Deps deps_;
  const ReferenceResolver resolver_;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_QUANTIZATION_SERVICE_H_
