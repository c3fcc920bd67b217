#include "server/inference_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/call_auth.h"
#include "server/inference_conversion.h"
#include "server/status_conversion.h"
#include "worker/engine/base/status_macros.h"

namespace quantd {
namespace {

constexpr char kPlatform[] = "pytorch_torchscript";

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

template <typename Work>
grpc::ServerUnaryReactor* InferenceServiceImpl::Offload(grpc::CallbackServerContext* context, const char* method,
                                                        Work work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto run = [this, reactor, context, method, work = std::move(work)]() mutable {
    absl::StatusOr<Principal> caller = AdmitCall(*deps_.auth, context, Role::kRead, method);
    reactor->Finish(ToGrpcStatus(caller.ok() ? work() : caller.status()));
  };
  if (!deps_.executor->TrySchedule(std::move(run))) {
    reactor->Finish(ToGrpcStatus(absl::ResourceExhaustedError(
        absl::StrCat(method, ": ", deps_.executor->queue_capacity(),
                     " requests already wait for the inference threads (--inference_queue_capacity); retry "
                     "with backoff"))));
  }
  return reactor;
}

// Liveness and readiness are open, like the health service.
grpc::ServerUnaryReactor* InferenceServiceImpl::ServerLive(grpc::CallbackServerContext* context,
                                                           const inference::ServerLiveRequest*,
                                                           inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ServerReady(grpc::CallbackServerContext* context,
                                                            const inference::ServerReadyRequest*,
                                                            inference::ServerReadyResponse* response) {
  response->set_ready(deps_.health->GetServingStatus("") == grpc::health::v1::HealthCheckResponse::SERVING);
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelReady(grpc::CallbackServerContext* context,
                                                           const inference::ModelReadyRequest* request,
                                                           inference::ModelReadyResponse* response) {
  return Offload(context, "ModelReady", [this, request, response]() -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(int64_t version, ParseModelVersion(request->version(), "version"));
    absl::StatusOr<std::shared_ptr<const worker::LoadedModel>> model = deps_.models->Load(request->name(), version);
    // Unknown names are an error; a version that cannot run here is "not ready".
    if (!model.ok() && (model.status().code() == absl::StatusCode::kNotFound ||
                        model.status().code() == absl::StatusCode::kInvalidArgument)) {
      return model.status();
    }
    response->set_ready(model.ok());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ServerMetadata(grpc::CallbackServerContext* context,
                                                               const inference::ServerMetadataRequest*,
                                                               inference::ServerMetadataResponse* response) {
  return Offload(context, "ServerMetadata", [this, response]() -> absl::Status {
    response->set_name("quantd");
    response->set_version(deps_.server_version);
    response->add_extensions("classification");
    response->add_extensions("model_repository");
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelMetadata(grpc::CallbackServerContext* context,
                                                              const inference::ModelMetadataRequest* request,
                                                              inference::ModelMetadataResponse* response) {
  return Offload(context, "ModelMetadata", [this, request, response]() -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(int64_t version, ParseModelVersion(request->version(), "version"));
    QUANTD_ASSIGN_OR_RETURN(std::shared_ptr<const worker::LoadedModel> model,
                            deps_.models->Load(request->name(), version));
    const worker::ServedModelInfo& info = model->info();
    response->set_name(info.name);
    response->set_platform(kPlatform);
    QUANTD_ASSIGN_OR_RETURN(std::vector<worker::ModelVersion> versions, deps_.jobs->ListModelVersions(info.base_name));
    for (const worker::ModelVersion& v : versions) response->add_versions(std::to_string(v.version));
    auto* input = response->add_inputs();
    input->set_name("input");
    input->set_datatype("FP32");  // UINT8 is accepted as well
    input->add_shape(-1);
    for (int64_t d : info.input_shape) input->add_shape(d);
    auto* output = response->add_outputs();
    output->set_name(OutputTensorName());
    output->set_datatype("FP32");
    output->add_shape(-1);
    for (int64_t d : info.output_shape) output->add_shape(d);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelInfer(grpc::CallbackServerContext* context,
                                                           const inference::ModelInferRequest* request,
                                                           inference::ModelInferResponse* response) {
  return Offload(context, "ModelInfer", [this, request, response]() -> absl::Status {
    if (request->model_name().empty()) return absl::InvalidArgumentError("model_name: required");
    QUANTD_ASSIGN_OR_RETURN(int64_t version, ParseModelVersion(request->model_version(), "model_version"));
    QUANTD_ASSIGN_OR_RETURN(std::shared_ptr<const worker::LoadedModel> model,
                            deps_.models->Load(request->model_name(), version));
    QUANTD_ASSIGN_OR_RETURN(DecodedBatch batch, DecodeInferInput(*request, model->info(), deps_.max_batch_size));
    QUANTD_ASSIGN_OR_RETURN(engine::ServingOutput output, model->Run(std::move(batch.pixels), batch.batch));
    response->set_model_name(model->info().name);
    response->set_model_version(std::to_string(model->info().version));
    response->set_id(request->id());
    (*response->mutable_parameters())["kernel_engine"].set_string_param(model->info().kernel_engine);
    return EncodeInferOutputs(*request, model->info(), output, response);
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::RepositoryIndex(grpc::CallbackServerContext* context,
                                                                const inference::RepositoryIndexRequest* request,
                                                                inference::RepositoryIndexResponse* response) {
  return Offload(context, "RepositoryIndex", [this, request, response]() -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(std::vector<worker::ModelVersion> versions, deps_.jobs->ListModelVersions(""));
    for (const worker::ModelVersion& v : versions) {
      for (const bool fp32 : {false, true}) {
        const bool loaded = deps_.models->IsLoaded(v.name, v.version, fp32);
        if (request->ready() && !loaded) continue;
        auto* entry = response->add_models();
        entry->set_name(fp32 ? absl::StrCat(v.name, ".fp32") : v.name);
        entry->set_version(std::to_string(v.version));
        entry->set_state(loaded ? "READY" : "UNAVAILABLE");
        if (!loaded) entry->set_reason("not loaded; loads on its first request");
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace quantd
