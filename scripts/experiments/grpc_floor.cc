// What a ModelInfer-shaped call costs in gRPC alone (README, "Serving speed":
// the latency target against gRPC's floor). A server answers ModelInfer with
// 40 bytes and does no work, in one of gRPC's three server APIs: sync,
// callback (quantd's), or async with the request handled inline on the thread
// that polls the completion queue. One sync client sends requests of BYTES of
// raw input (12288: one CIFAR image as float32) and prints the p50 of 3000
// calls, twice; then 16 clients in the same process for 3 s, twice (calls/s,
// clients and server sharing the CPUs).
//
//   g++ -O2 -std=c++17 scripts/experiments/grpc_floor.cc \
//     build/proto/gen/inference/grpc_predict_v2.grpc.pb.cc build/proto/gen/inference/grpc_predict_v2.pb.cc \
//     -Ibuild/proto/gen $(pkg-config --cflags --libs grpc++ protobuf) -o /tmp/grpc_floor
//   BYTES=12288 /tmp/grpc_floor sync|callback|async
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "inference/grpc_predict_v2.grpc.pb.h"

namespace {

using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

void Answer(ModelInferResponse* response) {
  response->set_model_name("m");
  response->add_raw_output_contents(std::string(40, 'x'));
}

class SyncService final : public GRPCInferenceService::Service {
  grpc::Status ModelInfer(grpc::ServerContext*, const ModelInferRequest*, ModelInferResponse* response) override {
    Answer(response);
    return grpc::Status::OK;
  }
};

class CallbackService final : public GRPCInferenceService::CallbackService {
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context, const ModelInferRequest*,
                                       ModelInferResponse* response) override {
    Answer(response);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

// The async API, each call handled on the thread that took it off the queue.
void ServeAsync(GRPCInferenceService::AsyncService* service, grpc::ServerCompletionQueue* queue) {
  struct Call {
    grpc::ServerContext context;
    ModelInferRequest request;
    ModelInferResponse response;
    grpc::ServerAsyncResponseWriter<ModelInferResponse> writer{&context};
    bool answered = false;
  };
  auto expect = [&] {
    auto* call = new Call;
    service->RequestModelInfer(&call->context, &call->request, &call->writer, queue, queue, call);
  };
  expect();
  void* tag = nullptr;
  bool ok = false;
  while (queue->Next(&tag, &ok)) {
    auto* call = static_cast<Call*>(tag);
    if (!ok || call->answered) {
      delete call;
      continue;
    }
    expect();
    Answer(&call->response);
    call->answered = true;
    call->writer.Finish(call->response, grpc::Status::OK, call);
  }
}

ModelInferRequest Request() {
  ModelInferRequest request;
  request.set_model_name("m");
  const char* bytes = std::getenv("BYTES");
  request.add_raw_input_contents(std::string(bytes != nullptr ? std::atoi(bytes) : 12288, 'a'));
  return request;
}

double P50Micros(const std::string& address, int calls) {
  auto stub = GRPCInferenceService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  const ModelInferRequest request = Request();
  std::vector<double> micros;
  for (int i = 0; i < calls; ++i) {
    grpc::ClientContext context;
    ModelInferResponse response;
    const auto start = std::chrono::steady_clock::now();
    if (!stub->ModelInfer(&context, request, &response).ok()) return -1;
    micros.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(micros.begin(), micros.end());
  return micros[micros.size() / 2];
}

double CallsPerSecond(const std::string& address, int clients, double seconds) {
  std::atomic<long> calls{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      grpc::ChannelArguments args;
      args.SetInt("grpc_floor.client", i);  // a connection per client
      auto stub = GRPCInferenceService::NewStub(
          grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      const ModelInferRequest request = Request();
      while (!stop) {
        grpc::ClientContext context;
        ModelInferResponse response;
        if (stub->ModelInfer(&context, request, &response).ok()) ++calls;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (std::thread& thread : threads) thread.join();
  return calls / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string api = argc > 1 ? argv[1] : "";
  if (api != "sync" && api != "callback" && api != "async") {
    std::cerr << "usage: grpc_floor sync|callback|async (BYTES=N in the environment: request size)\n";
    return 2;
  }
  SyncService sync;
  CallbackService callback;
  GRPCInferenceService::AsyncService async;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  std::unique_ptr<grpc::ServerCompletionQueue> queue;
  if (api == "sync") builder.RegisterService(&sync);
  if (api == "callback") builder.RegisterService(&callback);
  if (api == "async") {
    builder.RegisterService(&async);
    queue = builder.AddCompletionQueue();
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  std::thread poller;
  if (queue) poller = std::thread(ServeAsync, &async, queue.get());
  const std::string address = "127.0.0.1:" + std::to_string(port);
  P50Micros(address, 500);  // warm-up
  for (int i = 0; i < 2; ++i) std::cout << api << ": 1 client, p50 " << P50Micros(address, 3000) << " us\n";
  for (int i = 0; i < 2; ++i) std::cout << api << ": 16 clients, " << CallsPerSecond(address, 16, 3) << " calls/s\n";
  server->Shutdown();
  if (queue) queue->Shutdown();
  if (poller.joinable()) poller.join();
  return 0;
}
