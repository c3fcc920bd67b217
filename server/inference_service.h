#ifndef QUANTD_SERVER_INFERENCE_SERVICE_H_
#define QUANTD_SERVER_INFERENCE_SERVICE_H_

// inference.GRPCInferenceService (the Open Inference Protocol) on quantd's
// gRPC port: authenticates each call and runs it through InferenceCore on the
// inference executor (--inference_threads), never behind quantization jobs or
// the job store's RPCs. A ModelInfer for a loaded model (nothing to read from
// the store or the disk) is checked and queued on gRPC's callback thread
// itself; forward passes run on the dynamic batcher's threads.

#include <string>

#include "inference/grpc_predict_v2.grpc.pb.h"
#include "server/auth.h"
#include "server/blocking_executor.h"
#include "server/inference_core.h"

namespace quantd {

class InferenceServiceImpl final : public inference::GRPCInferenceService::CallbackService {
 public:
  struct Deps {
    InferenceCore* core = nullptr;
    Authenticator* auth = nullptr;
    BlockingExecutor* executor = nullptr;
  };
  explicit InferenceServiceImpl(const Deps& deps) : deps_(deps) {}

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context, const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context, const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context, const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* context,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* context,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override;

 private:
  // Runs `work` on the executor once the caller may read, and finishes the
  // call with what it returns.
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* context, const char* method,
                                    absl::AnyInvocable<absl::Status() &&> work);
  // RESOURCE_EXHAUSTED: the inference threads' queue is full.
  absl::Status Busy(const char* method) const;

  const Deps deps_;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_INFERENCE_SERVICE_H_
