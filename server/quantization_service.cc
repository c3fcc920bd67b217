#include "server/quantization_service.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/status_conversion.h"

namespace quantd {
namespace {

// Which planned feature implements each RPC.
constexpr absl::string_view kJobs = "the job manager (queue, worker pool, job store)";
constexpr absl::string_view kBlobs = "the blob store (content-addressed uploads)";
constexpr absl::string_view kArtifacts = "the artifact store";
constexpr absl::string_view kServing = "int8 serving (Infer/Evaluate on artifacts)";

absl::Status NotYet(absl::string_view method, absl::string_view feature) {
  return absl::UnimplementedError(absl::StrCat(
      "quantd.v1.QuantizationService/", method,
      " is not implemented yet: it lands with ", feature,
      ". This build (issue #2, foundation) serves health checks and reflection only."));
}

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A server-streaming reactor that ends the call at once with `status`.
template <typename Response>
class RejectedWriteReactor final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit RejectedWriteReactor(const absl::Status& status) {
    this->Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};

// A client-streaming reactor that ends the call at once with `status`,
// without reading the request stream.
template <typename Request>
class RejectedReadReactor final : public grpc::ServerReadReactor<Request> {
 public:
  explicit RejectedReadReactor(const absl::Status& status) {
    this->Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerUnaryReactor* QuantizationServiceImpl::QuantizeJob(
    grpc::CallbackServerContext* context, const v1::QuantizeJobRequest*,
    v1::Job*) {
  return FinishUnary(context, NotYet("QuantizeJob", kJobs));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::GetJob(
    grpc::CallbackServerContext* context, const v1::GetJobRequest*, v1::Job*) {
  return FinishUnary(context, NotYet("GetJob", kJobs));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::ListJobs(
    grpc::CallbackServerContext* context, const v1::ListJobsRequest*,
    v1::ListJobsResponse*) {
  return FinishUnary(context, NotYet("ListJobs", kJobs));
}

grpc::ServerWriteReactor<v1::JobEvent>* QuantizationServiceImpl::WatchJob(
    grpc::CallbackServerContext*, const v1::WatchJobRequest*) {
  return new RejectedWriteReactor<v1::JobEvent>(NotYet("WatchJob", kJobs));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::CancelJob(
    grpc::CallbackServerContext* context, const v1::CancelJobRequest*,
    v1::Job*) {
  return FinishUnary(context, NotYet("CancelJob", kJobs));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::DeleteJob(
    grpc::CallbackServerContext* context, const v1::DeleteJobRequest*,
    v1::DeleteJobResponse*) {
  return FinishUnary(context, NotYet("DeleteJob", kJobs));
}

grpc::ServerReadReactor<v1::UploadModelRequest>*
QuantizationServiceImpl::UploadModel(grpc::CallbackServerContext*,
                                     v1::BlobInfo*) {
  return new RejectedReadReactor<v1::UploadModelRequest>(
      NotYet("UploadModel", kBlobs));
}

grpc::ServerReadReactor<v1::UploadDatasetRequest>*
QuantizationServiceImpl::UploadDataset(grpc::CallbackServerContext*,
                                       v1::BlobInfo*) {
  return new RejectedReadReactor<v1::UploadDatasetRequest>(
      NotYet("UploadDataset", kBlobs));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::GetArtifact(
    grpc::CallbackServerContext* context, const v1::GetArtifactRequest*,
    v1::Artifact*) {
  return FinishUnary(context, NotYet("GetArtifact", kArtifacts));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::ListArtifacts(
    grpc::CallbackServerContext* context, const v1::ListArtifactsRequest*,
    v1::ListArtifactsResponse*) {
  return FinishUnary(context, NotYet("ListArtifacts", kArtifacts));
}

grpc::ServerWriteReactor<v1::DownloadArtifactResponse>*
QuantizationServiceImpl::DownloadArtifact(grpc::CallbackServerContext*,
                                          const v1::DownloadArtifactRequest*) {
  return new RejectedWriteReactor<v1::DownloadArtifactResponse>(
      NotYet("DownloadArtifact", kArtifacts));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::Infer(
    grpc::CallbackServerContext* context, const v1::InferRequest*,
    v1::InferResponse*) {
  return FinishUnary(context, NotYet("Infer", kServing));
}

grpc::ServerUnaryReactor* QuantizationServiceImpl::Evaluate(
    grpc::CallbackServerContext* context, const v1::EvaluateRequest*,
    v1::EvaluateResponse*) {
  return FinishUnary(context, NotYet("Evaluate", kServing));
}

}  // namespace quantd
