#ifndef QUANTD_SERVER_INFERENCE_CORE_H_
#define QUANTD_SERVER_INFERENCE_CORE_H_

// The Open Inference Protocol, once, on its messages: both edges (gRPC's
// inference.GRPCInferenceService and REST's /v2) authenticate and convert,
// then call here. A request resolves its version in the job store, gets the
// loaded model from the repository, is checked and decoded, and runs on the
// dynamic batcher; there is no other inference path.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/health_service.h"
#include "server/inference_stats.h"
#include "worker/clock.h"
#include "worker/dynamic_batcher.h"
#include "worker/job_store.h"
#include "worker/model_repository.h"

namespace quantd {

class InferenceCore {
 public:
  struct Deps {
    worker::ModelRepository* models = nullptr;
    worker::JobStore* jobs = nullptr;
    worker::DynamicBatcher* batcher = nullptr;
    const HealthService* health = nullptr;
    InferenceStats* stats = nullptr;  // may be null
    std::string server_version;
    // For requests' "timeout" parameters.
    worker::Clock* clock = worker::Clock::Monotonic();
  };
  explicit InferenceCore(const Deps& deps) : deps_(deps) {}

  bool ServerReady() const;
  // Whether the version can serve here; NOT_FOUND for an unknown one.
  // `version` is the protocol's string ("" = newest), `version_field` names
  // it in errors.
  // `gone` (optional): as for LoadForInfer.
  absl::StatusOr<bool> ModelReady(const std::string& name, const std::string& version,
                                  const std::string& version_field, const worker::ModelRepository::Gone& gone = nullptr);
  void ServerMetadata(inference::ServerMetadataResponse* response) const;
  absl::Status ModelMetadata(const std::string& name, const std::string& version, const std::string& version_field,
                             inference::ModelMetadataResponse* response,
                             const worker::ModelRepository::Gone& gone = nullptr);
  absl::Status RepositoryIndex(const inference::RepositoryIndexRequest& request,
                               inference::RepositoryIndexResponse* response);
  // Triton's statistics of this process's requests; INVALID_ARGUMENT for a
  // bad name or version.
  absl::Status ModelStatistics(const inference::ModelStatisticsRequest& request,
                               inference::ModelStatisticsResponse* response);

  // The request's model when it is loaded and its version freshly resolved,
  // else null. Given to ModelInfer, it then touches neither the store nor
  // the disk before queueing, so it may be called on a thread that must not
  // block (though on an idle batcher the pass itself runs on the caller).
  std::shared_ptr<const worker::LoadedModel> FindLoaded(const inference::ModelInferRequest& request);
  // NOT_FOUND when the request's model or version was just found not to
  // exist (ModelRepository::KnownAbsent), else OK; no store access either.
  absl::Status KnownAbsent(const inference::ModelInferRequest& request);

  // Counts a ModelInfer refused before it reached a model (the inference
  // threads' queue full, the caller not admitted), under model="", or under
  // `model`'s labels when it was refused after the model was known (a REST
  // body that does not parse).
  void CountRefused(absl::StatusCode code, const worker::ServedModelInfo* model = nullptr);

  // The request's model (model_name, model_version), loaded if need be on
  // the caller's thread; a failure is counted in the request metrics.
  // `gone` (optional): asked while waiting for another caller's load of the
  // same version, which stops with its error (worker::ModelRepository::Load).
  absl::StatusOr<std::shared_ptr<const worker::LoadedModel>> LoadForInfer(
      const inference::ModelInferRequest& request, const worker::ModelRepository::Gone& gone = nullptr);

  // Loads (unless `loaded_model` is given) and checks on the caller's
  // thread, then queues on the batcher. `done` gets the outcome once
  // `response` is filled: on an inference thread, or on the caller's when
  // the request fails before the queue or runs there. `request` and
  // `response` must stay alive until then. `abandoned` (optional): whether
  // the caller has gone, so that a request still queued then is not run;
  // nor is one whose "timeout" parameter (InferQueueTimeout) has passed by
  // its pass: DEADLINE_EXCEEDED. Both also end a wait for another request's
  // load of the model.
  // `received` (on deps' clock; default: now) is when the request arrived,
  // which the timeout counts from: a caller that loaded the model before
  // calling (REST, to bound its JSON) gives it. `json_outputs`: the answer
  // goes out as JSON (REST), so non-finite scores fail the request
  // (CheckOutputsFitJson), counted as such.
  void ModelInfer(const inference::ModelInferRequest& request, inference::ModelInferResponse* response,
                  absl::AnyInvocable<void(absl::Status) &&> done,
                  std::shared_ptr<const worker::LoadedModel> loaded_model = nullptr,
                  worker::DynamicBatcher::Abandoned abandoned = nullptr,
                  std::optional<absl::Time> received = std::nullopt, bool json_outputs = false);
  absl::Time Now() const { return deps_.clock->Now(); }

  int64_t max_batch_size() const { return deps_.batcher->options().max_batch_size; }

 private:
  const Deps deps_;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_INFERENCE_CORE_H_
