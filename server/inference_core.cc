#include "server/inference_core.h"

#include <exception>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/inference_conversion.h"
#include "worker/engine/base/status_macros.h"

namespace quantd {
namespace {

constexpr char kPlatform[] = "pytorch_torchscript";

// ModelReady's and ModelMetadata's field is "name" (ModelInfer's is
// "model_name", which the repository's own check names).
absl::Status CheckModelName(const std::string& name) {
  std::string base;
  bool fp32 = false;
  return worker::ModelRepository::ParseName(name, "name", &base, &fp32);
}

}  // namespace

bool InferenceCore::ServerReady() const {
  return deps_.health->GetServingStatus("") == grpc::health::v1::HealthCheckResponse::SERVING;
}

absl::StatusOr<bool> InferenceCore::ModelReady(const std::string& name, const std::string& version,
                                               const std::string& version_field,
                                               const worker::ModelRepository::Gone& gone) {
  QUANTD_RETURN_IF_ERROR(CheckModelName(name));
  QUANTD_ASSIGN_OR_RETURN(int64_t number, ParseModelVersion(version, version_field));
  absl::StatusOr<std::shared_ptr<const worker::LoadedModel>> model = deps_.models->Load(name, number, gone);
  if (deps_.stats != nullptr) deps_.stats->SetCache(deps_.models->cached_models(), deps_.models->cached_bytes());
  // Unknown names are an error, and so is a failure that may pass (the job
  // store unavailable, ...): "not ready" is for a version that cannot run here.
  if (!model.ok()) {
    switch (model.status().code()) {
      case absl::StatusCode::kNotFound:
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kResourceExhausted:
      case absl::StatusCode::kDeadlineExceeded:
      case absl::StatusCode::kAborted:
      case absl::StatusCode::kCancelled:
        return model.status();
      default:
        return false;
    }
  }
  return true;
}

void InferenceCore::ServerMetadata(inference::ServerMetadataResponse* response) const {
  response->set_name("quantd");
  response->set_version(deps_.server_version);
  response->add_extensions("classification");
  response->add_extensions("model_repository");
  response->add_extensions("binary_tensor_data");
  response->add_extensions("statistics");
}

absl::Status InferenceCore::ModelMetadata(const std::string& name, const std::string& version,
                                          const std::string& version_field,
                                          inference::ModelMetadataResponse* response,
                                          const worker::ModelRepository::Gone& gone) {
  QUANTD_RETURN_IF_ERROR(CheckModelName(name));
  QUANTD_ASSIGN_OR_RETURN(int64_t number, ParseModelVersion(version, version_field));
  QUANTD_ASSIGN_OR_RETURN(std::shared_ptr<const worker::LoadedModel> model, deps_.models->Load(name, number, gone));
  if (deps_.stats != nullptr) deps_.stats->SetCache(deps_.models->cached_models(), deps_.models->cached_bytes());
  const worker::ServedModelInfo& info = model->info();
  response->set_name(info.name);
  response->set_platform(kPlatform);
  QUANTD_ASSIGN_OR_RETURN(std::vector<worker::ModelVersion> versions, deps_.jobs->ListModelVersions(info.base_name));
  for (const worker::ModelVersion& v : versions) response->add_versions(std::to_string(v.version));
  auto* input = response->add_inputs();
  input->set_name(InputTensorName());
  input->set_datatype("FP32");  // UINT8 is accepted as well
  input->add_shape(-1);
  for (int64_t d : info.input_shape) input->add_shape(d);
  auto* output = response->add_outputs();
  output->set_name(OutputTensorName());
  output->set_datatype("FP32");
  output->add_shape(-1);
  for (int64_t d : info.output_shape) output->add_shape(d);
  return absl::OkStatus();
}

absl::Status InferenceCore::RepositoryIndex(const inference::RepositoryIndexRequest& request,
                                            inference::RepositoryIndexResponse* response) {
  QUANTD_ASSIGN_OR_RETURN(std::vector<worker::ModelVersion> versions, deps_.jobs->ListModelVersions(""));
  for (const worker::ModelVersion& v : versions) {
    // Every published version can serve: one not loaded yet loads on its
    // first request, as ModelReady does, so it is READY here too (with
    // `ready` set a fresh server would otherwise list nothing it serves).
    for (const bool fp32 : {false, true}) {
      auto* entry = response->add_models();
      entry->set_name(fp32 ? absl::StrCat(v.name, ".fp32") : v.name);
      entry->set_version(std::to_string(v.version));
      entry->set_state("READY");
      if (!deps_.models->IsLoaded(v.name, v.version, fp32)) {
        entry->set_reason("not loaded yet: loads and warms up on its first request");
      }
    }
  }
  return absl::OkStatus();
}

absl::Status InferenceCore::ModelStatistics(const inference::ModelStatisticsRequest& request,
                                            inference::ModelStatisticsResponse* response) {
  QUANTD_ASSIGN_OR_RETURN(int64_t version, ParseModelVersion(request.version(), "version"));
  if (!request.name().empty()) {
    std::string base;
    bool fp32 = false;
    QUANTD_RETURN_IF_ERROR(worker::ModelRepository::ParseName(request.name(), "name", &base, &fp32));
    // An unknown name or version is NOT_FOUND, as for metadata and infer.
    QUANTD_RETURN_IF_ERROR(deps_.jobs->GetModelVersion(base, version).status());
  }
  if (deps_.stats != nullptr) deps_.stats->Fill(request.name(), version, response);
  return absl::OkStatus();
}

std::shared_ptr<const worker::LoadedModel> InferenceCore::FindLoaded(const inference::ModelInferRequest& request) {
  absl::StatusOr<int64_t> number = ParseModelVersion(request.model_version(), "model_version");
  if (!number.ok() || request.model_name().empty()) return nullptr;
  return deps_.models->FindLoaded(request.model_name(), *number);
}

absl::Status InferenceCore::KnownAbsent(const inference::ModelInferRequest& request) {
  absl::StatusOr<int64_t> number = ParseModelVersion(request.model_version(), "model_version");
  if (!number.ok() || request.model_name().empty()) return absl::OkStatus();
  return deps_.models->KnownAbsent(request.model_name(), *number);
}

absl::StatusOr<std::shared_ptr<const worker::LoadedModel>> InferenceCore::LoadForInfer(
    const inference::ModelInferRequest& request, const worker::ModelRepository::Gone& gone) {
  absl::Status failed;
  int64_t resolved_version = 0;
  if (request.model_name().empty()) {
    failed = absl::InvalidArgumentError("model_name: required");
  } else if (absl::StatusOr<int64_t> number = ParseModelVersion(request.model_version(), "model_version");
             !number.ok()) {
    failed = number.status();
  } else {
    absl::StatusOr<std::shared_ptr<const worker::LoadedModel>> loaded =
        deps_.models->FindLoaded(request.model_name(), *number);
    if (*loaded == nullptr) {
      loaded = deps_.models->Load(request.model_name(), *number, gone, &resolved_version);
      if (deps_.stats != nullptr) deps_.stats->SetCache(deps_.models->cached_models(), deps_.models->cached_bytes());
    }
    if (loaded.ok()) return loaded;
    failed = loaded.status();
  }
  // Labels only for published versions: a request for an unknown name is
  // counted under model="" (label values stay bounded). One that failed
  // after its version resolved (an artifact gone or corrupted in the store)
  // counts against that version, where a per-model error alert sees it.
  if (resolved_version > 0 && deps_.stats != nullptr) {
    deps_.stats->RecordRequest(request.model_name(), resolved_version, failed.code(), 0, nullptr);
  } else {
    CountRefused(failed.code());
  }
  return failed;
}

void InferenceCore::CountRefused(absl::StatusCode code, const worker::ServedModelInfo* model) {
  if (deps_.stats == nullptr) return;
  deps_.stats->RecordRequest(model != nullptr ? model->name : "", model != nullptr ? model->version : 0, code, 0,
                             nullptr);
}

void InferenceCore::ModelInfer(const inference::ModelInferRequest& request, inference::ModelInferResponse* response,
                               absl::AnyInvocable<void(absl::Status) &&> done,
                               std::shared_ptr<const worker::LoadedModel> loaded_model,
                               worker::DynamicBatcher::Abandoned abandoned, std::optional<absl::Time> arrived,
                               bool json_outputs) {
  InferenceStats* stats = deps_.stats;
  auto fail_before_queue = [&](absl::Status status, const worker::ServedModelInfo& info) {
    if (stats != nullptr) stats->RecordRequest(info.name, info.version, status.code(), 0, nullptr);
    std::move(done)(std::move(status));
  };
  // The timeout counts from here, a cold model's load included.
  const absl::Time received = arrived.value_or(deps_.clock->Now());
  absl::StatusOr<absl::Duration> timeout = InferQueueTimeout(request);
  if (timeout.ok() && *timeout != absl::InfiniteDuration()) {
    const absl::Time deadline = received + *timeout;
    abandoned = [caller_gone = std::move(abandoned), clock = deps_.clock, deadline, timeout = *timeout] {
      absl::Status gone = caller_gone ? caller_gone() : absl::OkStatus();
      if (!gone.ok() || clock->Now() < deadline) return gone;
      return absl::DeadlineExceededError(absl::StrCat("parameters[timeout]: its ", absl::FormatDuration(timeout),
                                                      " passed while the request waited; it was not run"));
    };
  }
  std::shared_ptr<const worker::LoadedModel> model = std::move(loaded_model);
  if (model == nullptr) {
    absl::StatusOr<std::shared_ptr<const worker::LoadedModel>> loaded = LoadForInfer(request, abandoned);
    if (!loaded.ok()) return std::move(done)(loaded.status());  // counted by LoadForInfer
    model = *std::move(loaded);
  }
  const worker::ServedModelInfo& info = model->info();
  // Everything about the request is checked before it takes a place in the queue.
  absl::Status outputs = CheckInferOutputs(request, info).status();
  if (!outputs.ok()) return fail_before_queue(outputs, info);
  absl::StatusOr<DecodedBatch> batch = DecodeInferInput(request, info, max_batch_size());
  if (!batch.ok()) return fail_before_queue(batch.status(), info);
  if (!timeout.ok()) return fail_before_queue(timeout.status(), info);
  const int64_t samples = batch->batch;
  // `done` moves into the callback only once the request is queued.
  auto shared_done = std::make_shared<absl::AnyInvocable<void(absl::Status) &&>>(std::move(done));
  absl::Status queued = deps_.batcher->Submit(
      model, std::move(batch->pixels), samples,
      [model, &request, response, shared_done, stats, samples, json_outputs](
          absl::StatusOr<engine::ServingOutput> output, const worker::BatchStats& ran) {
        const worker::ServedModelInfo& info = model->info();
        absl::Status status = output.status();
        // Whatever throws here, the caller is answered: a REST thread waits
        // for it, and a gRPC call is finished only by it.
        try {
          if (output.ok()) {
            response->set_model_name(info.name);
            response->set_model_version(std::to_string(info.version));
            response->set_id(request.id());
            auto& parameters = *response->mutable_parameters();
            parameters["kernel_engine"].set_string_param(info.kernel_engine);
            // quantd's own: how many samples the pass this request joined had.
            parameters["executed_batch_size"].set_int64_param(ran.executed_batch_size);
            status = EncodeInferOutputs(request, info, *output, response);
            // Counted as the client is answered: a REST JSON reply cannot
            // carry NaN scores.
            if (status.ok() && json_outputs) status = CheckOutputsFitJson(*response);
          }
        } catch (const std::bad_alloc&) {
          status = absl::ResourceExhaustedError("out of memory encoding the outputs; retry");
        } catch (const std::exception& e) {
          status = absl::InternalError(absl::StrCat("encoding the outputs failed: ", e.what()));
        }
        // A request dropped before its pass (its caller gone) is counted
        // without pass figures.
        if (stats != nullptr) {
          try {
            stats->RecordRequest(info.name, info.version, status.code(), samples,
                                 ran.executed_batch_size > 0 ? &ran : nullptr);
          } catch (const std::exception&) {
            // Uncounted rather than unanswered.
          }
        }
        std::move (*shared_done)(std::move(status));
      },
      std::move(abandoned));
  if (!queued.ok()) {
    if (stats != nullptr) stats->RecordRequest(info.name, info.version, queued.code(), 0, nullptr);
    std::move(*shared_done)(std::move(queued));
  }
}

}  // namespace quantd
