#include "server/inference_service.h"

#include <chrono>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/call_auth.h"
#include "server/status_conversion.h"

namespace quantd {
namespace {

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Whether the caller has gone (cancelled, or past its deadline), so that its
// request, if still queued, is not run.
worker::DynamicBatcher::Abandoned CallerGone(grpc::CallbackServerContext* context) {
  return [context] {
    // The deadline compared too: gRPC may mark the call cancelled only
    // after a pass has taken it.
    if (!context->IsCancelled() && context->deadline() > std::chrono::system_clock::now()) return absl::OkStatus();
    return absl::CancelledError(
        "the caller went away (cancelled, or past its deadline) while the request waited; it was not run");
  };
}

}  // namespace

absl::Status InferenceServiceImpl::Busy(const char* method) const {
  return absl::ResourceExhaustedError(
      absl::StrCat(method, ": ", deps_.executor->queue_capacity(),
                   " requests already wait for the inference threads (--inference_queue_capacity); retry "
                   "with backoff"));
}

grpc::ServerUnaryReactor* InferenceServiceImpl::Offload(grpc::CallbackServerContext* context, const char* method,
                                                        absl::AnyInvocable<absl::Status() &&> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Admitted here, before the queue (the tokens are in memory, as for
  // ModelInfer): callers without a token take no place in it.
  if (absl::StatusOr<Principal> caller = AdmitCall(*deps_.auth, context, Role::kRead, method); !caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  auto run = [reactor, context, method, work = std::move(work)]() mutable {
    // A caller that left while this waited for a thread (a probe's short
    // deadline) starts no load.
    if (absl::Status gone = CallerGone(context)(); !gone.ok()) {
      reactor->Finish(ToGrpcStatus(gone));
      return;
    }
    reactor->Finish(ToGrpcStatus(StatusOfTask(method, std::move(work))));
  };
  if (!deps_.executor->TrySchedule(std::move(run))) reactor->Finish(ToGrpcStatus(Busy(method)));
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
  response->set_ready(deps_.core->ServerReady());
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelReady(grpc::CallbackServerContext* context,
                                                           const inference::ModelReadyRequest* request,
                                                           inference::ModelReadyResponse* response) {
  return Offload(context, "ModelReady", [this, context, request, response]() -> absl::Status {
    absl::StatusOr<bool> ready =
        deps_.core->ModelReady(request->name(), request->version(), "version", CallerGone(context));
    if (ready.ok()) response->set_ready(*ready);
    return ready.status();
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ServerMetadata(grpc::CallbackServerContext* context,
                                                               const inference::ServerMetadataRequest*,
                                                               inference::ServerMetadataResponse* response) {
  return Offload(context, "ServerMetadata", [this, response]() -> absl::Status {
    deps_.core->ServerMetadata(response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelMetadata(grpc::CallbackServerContext* context,
                                                              const inference::ModelMetadataRequest* request,
                                                              inference::ModelMetadataResponse* response) {
  return Offload(context, "ModelMetadata", [this, context, request, response]() -> absl::Status {
    return deps_.core->ModelMetadata(request->name(), request->version(), "version", response, CallerGone(context));
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelInfer(grpc::CallbackServerContext* context,
                                                           const inference::ModelInferRequest* request,
                                                           inference::ModelInferResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto refuse = [this, reactor](const absl::Status& status) {
    deps_.core->CountRefused(status.code());  // counted with ModelInfer's other outcomes
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  };
  // Admitted here (the tokens are in memory), before anything else: a caller
  // without the read role can neither reorder the model cache nor learn from
  // the timing whether a model is loaded.
  if (absl::StatusOr<Principal> caller = AdmitCall(*deps_.auth, context, Role::kRead, "ModelInfer"); !caller.ok()) {
    return refuse(caller.status());
  }
  auto done = [reactor](absl::Status status) { reactor->Finish(ToGrpcStatus(status)); };
  // A loaded model needs no disk or store access before its queue: checked
  // and queued right here, one thread hop less (and on an idle batcher, run
  // right here too; see worker/dynamic_batcher.h).
  if (std::shared_ptr<const worker::LoadedModel> loaded = deps_.core->FindLoaded(*request)) {
    deps_.core->ModelInfer(*request, response, std::move(done), std::move(loaded), CallerGone(context));
    return reactor;
  }
  // A name or version just found not to exist is told so at once, not
  // queued for a load thread (where a full queue answered "retry").
  if (absl::Status absent = deps_.core->KnownAbsent(*request); !absent.ok()) return refuse(absent);
  // Its "timeout" counts from now: the wait for a load thread is part of it.
  auto load_and_run = [this, context, request, response, done = std::move(done),
                       received = deps_.core->Now()]() mutable {
    deps_.core->ModelInfer(*request, response, std::move(done), nullptr, CallerGone(context), received);
  };
  if (!deps_.executor->TrySchedule(std::move(load_and_run))) return refuse(Busy("ModelInfer"));
  return reactor;
}

grpc::ServerUnaryReactor* InferenceServiceImpl::RepositoryIndex(grpc::CallbackServerContext* context,
                                                                const inference::RepositoryIndexRequest* request,
                                                                inference::RepositoryIndexResponse* response) {
  return Offload(context, "RepositoryIndex", [this, request, response]() -> absl::Status {
    return deps_.core->RepositoryIndex(*request, response);
  });
}

grpc::ServerUnaryReactor* InferenceServiceImpl::ModelStatistics(grpc::CallbackServerContext* context,
                                                                const inference::ModelStatisticsRequest* request,
                                                                inference::ModelStatisticsResponse* response) {
  return Offload(context, "ModelStatistics", [this, request, response]() -> absl::Status {
    return deps_.core->ModelStatistics(*request, response);
  });
}

}  // namespace quantd
