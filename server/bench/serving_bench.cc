// quantd-serving-bench: what serving costs, in one run, as ratios against the
// same int8 artifact run in-process (scripts/bench_serving.sh starts the
// servers and prints the table).
//
//   quantd-serving-bench --server=HOST:PORT --server_unbatched=HOST:PORT --http=HOST:PORT
//       --artifact=FILE.pt --kernel_engine=E --images=CIFAR.bin [--seconds=S] [--threads=N] [--only=TEXT]
//
// --server runs with dynamic batching, --server_unbatched with
// --dynamic_batching=false (same artifact, same --inference_threads N). Rows:
// in-process batch 1 (1 thread) and batch 256 (N threads at once), each on
// one LibTorch intra-op thread as the server's passes are; ModelInfer
// over gRPC with batch-1 requests from 1, 4 and 16 clients, with and without
// dynamic batching; the same over REST (JSON) from 1 client. Each row runs
// for S seconds and reports images/s, p50 and p99. Prints JSON.

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/servable_model.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  std::string path;
  int concurrency = 1;
  int64_t images = 0;
  double seconds = 0;
  std::vector<double> latencies_ms;
  int64_t errors = 0;
  bool skipped() const { return seconds < 0; }
  nlohmann::json Json() {
    std::sort(latencies_ms.begin(), latencies_ms.end());
    auto pct = [&](double p) {
      return latencies_ms.empty() ? 0.0 : latencies_ms[std::min(latencies_ms.size() - 1,
                                                               static_cast<size_t>(p * latencies_ms.size()))];
    };
    return {{"path", path},           {"concurrency", concurrency},
            {"images", images},       {"images_per_s", seconds > 0 ? images / seconds : 0.0},
            {"p50_ms", pct(0.50)},    {"p99_ms", pct(0.99)},
            {"errors", errors}};
  }
};

// Runs `call` (one request of `batch` images; false = error) from
// `concurrency` threads for `seconds`.
// --only=TEXT: run just the rows whose "PATH, N clients" contains TEXT (for
// A/B runs of one row; the table then has no ratios for what is missing).
std::string only_rows;
bool Wanted(const std::string& path, int concurrency) {
  return absl::StrContains(absl::StrCat(path, ", ", concurrency, " clients"), only_rows);
}

template <typename Call>
Row Measure(const std::string& path, int concurrency, int64_t batch, double seconds, Call call) {
  Row row;
  row.path = path;
  row.concurrency = concurrency;
  if (!Wanted(path, concurrency)) {
    row.seconds = -1;  // skipped
    return row;
  }
  std::vector<std::vector<double>> latencies(concurrency);
  std::vector<int64_t> errors(concurrency, 0), images(concurrency, 0);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      for (int64_t i = 0; !stop.load(); ++i) {
        const auto t0 = Clock::now();
        const bool ok = call(t, i);
        const auto t1 = Clock::now();
        if (!ok) {
          ++errors[t];
          continue;
        }
        images[t] += batch;
        latencies[t].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));  // the measured interval
  stop = true;
  for (std::thread& thread : threads) thread.join();
  row.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (int t = 0; t < concurrency; ++t) {
    row.latencies_ms.insert(row.latencies_ms.end(), latencies[t].begin(), latencies[t].end());
    row.errors += errors[t];
    row.images += images[t];
  }
  return row;
}

// The server runs each pass on one LibTorch intra-op thread (OpenMP keeps the
// count per thread): the in-process rows do the same on each of theirs.
void UseOneIntraOpThread() {
  thread_local bool set = false;
  if (set) return;
  quantd::engine::SetIntraOpThreads(1);
  set = true;
}

void Add(std::vector<nlohmann::json>& rows, Row row) {
  if (!row.skipped()) rows.push_back(row.Json());
}

std::string Flag(int argc, char** argv, const std::string& name, const std::string& fallback = "") {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (absl::StartsWith(argv[i], prefix)) return std::string(argv[i]).substr(prefix.size());
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string server = Flag(argc, argv, "server");
  const std::string unbatched = Flag(argc, argv, "server_unbatched");
  const std::string http = Flag(argc, argv, "http");
  const std::string artifact = Flag(argc, argv, "artifact");
  const std::string kernel_engine = Flag(argc, argv, "kernel_engine");
  const std::string images_path = Flag(argc, argv, "images");
  double seconds = 3;
  int threads = 2;
  if (server.empty() || unbatched.empty() || http.empty() || artifact.empty() || kernel_engine.empty() ||
      images_path.empty() || !absl::SimpleAtod(Flag(argc, argv, "seconds", "3"), &seconds) ||
      !absl::SimpleAtoi(Flag(argc, argv, "threads", "2"), &threads)) {
    std::cerr << "usage: quantd-serving-bench --server=HOST:PORT --server_unbatched=HOST:PORT --http=HOST:PORT "
                 "--artifact=FILE.pt --kernel_engine=E --images=CIFAR.bin [--seconds=S] [--threads=N] [--only=TEXT]\n";
    return 2;
  }
  only_rows = Flag(argc, argv, "only");
  quantd::engine::InitializeRuntime(1);  // as quantd's main does
  std::ifstream in(images_path, std::ios::binary);
  std::string cifar((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const int64_t count = static_cast<int64_t>(cifar.size() / 3073);
  if (count < 256) {
    std::cerr << "--images: " << images_path << " holds " << count << " CIFAR-10 records, fewer than 256\n";
    return 2;
  }
  std::string pixels(static_cast<size_t>(count) * 3072, '\0');
  for (int64_t i = 0; i < count; ++i) cifar.copy(&pixels[i * 3072], 3072, i * 3073 + 1);
  auto floats = [&](int64_t first, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n) * 3072);
    for (size_t j = 0; j < out.size(); ++j) out[j] = static_cast<uint8_t>(pixels[first * 3072 + j]);
    return out;
  };

  nlohmann::json report;
  report["threads"] = threads;
  report["kernel_engine"] = kernel_engine;
  report["cpu"] = quantd::engine::CpuInt8Info().model_name;
  std::vector<nlohmann::json> rows;

  // In-process: the artifact on the same kernels, no server.
  std::ifstream artifact_in(artifact, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(artifact_in)), std::istreambuf_iterator<char>());
  auto model = quantd::engine::ServableModel::LoadInt8Artifact(bytes, kernel_engine, artifact);
  if (!model.ok()) {
    std::cerr << "--artifact: " << model.status() << "\n";
    return 1;
  }
  const std::vector<float> one = floats(0, 1), many = floats(0, 256);
  UseOneIntraOpThread();
  (void)(*model)->Run(one, {1, 3, 32, 32});  // warm-up
  Add(rows, Measure("in-process batch 1", 1, 1, seconds, [&](int, int64_t) {
                   UseOneIntraOpThread();
                   return (*model)->Run(one, {1, 3, 32, 32}).ok();
                 }));
  if (Wanted("in-process batch 1, 1 ms idle before each", 1)) {
    // The same pass after 1 ms idle each time, as a server thread woken per
    // request runs it (only the pass is timed).
    Row idle;
    idle.path = "in-process batch 1, 1 ms idle before each";
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    std::thread runner([&] {
      UseOneIntraOpThread();
      while (Clock::now() < end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the idle gap being measured
        const auto t0 = Clock::now();
        if (!(*model)->Run(one, {1, 3, 32, 32}).ok()) ++idle.errors;
        idle.latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        ++idle.images;
      }
    });
    runner.join();
    idle.seconds = seconds;
    Add(rows, idle);
  }
  Add(rows, Measure("in-process batch 256", threads, 256, seconds, [&](int, int64_t) {
                   UseOneIntraOpThread();
                   return (*model)->Run(many, {256, 3, 32, 32}).ok();
                 }));

  // The floor: a gRPC call that does nothing (ServerLive), from 1 and 16
  // clients: what requests/s the RPC alone allows on this machine.
  for (int clients : {1, 16}) {
    std::vector<std::unique_ptr<inference::GRPCInferenceService::Stub>> stubs;
    for (int c = 0; c < clients; ++c) {
      grpc::ChannelArguments args;
      args.SetInt("quantd.bench.client", c);
      stubs.push_back(inference::GRPCInferenceService::NewStub(
          grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args)));
    }
    Add(rows, Measure("gRPC ServerLive (no work: the floor)", clients, 1, seconds, [&](int c, int64_t) {
                     inference::ServerLiveResponse response;
                     grpc::ClientContext context;
                     return stubs[c]->ServerLive(&context, inference::ServerLiveRequest(), &response).ok();
                   }));
  }
  // gRPC ModelInfer, batch-1 requests.
  auto grpc_rows = [&](const std::string& target, const std::string& label) {
    for (int clients : {1, 4, 16}) {
      std::vector<std::unique_ptr<inference::GRPCInferenceService::Stub>> stubs;
      for (int c = 0; c < clients; ++c) {
        grpc::ChannelArguments args;
        args.SetInt("quantd.bench.client", c);  // a connection per client, as separate processes would have
        stubs.push_back(inference::GRPCInferenceService::NewStub(
            grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
      }
      Add(rows, Measure(absl::StrCat("gRPC ModelInfer batch 1, ", label), clients, 1, seconds,
                             [&](int c, int64_t i) {
                               inference::ModelInferRequest request;
                               request.set_model_name("resnet8");
                               auto* input = request.add_inputs();
                               input->set_name("input");
                               input->set_datatype("UINT8");
                               for (int64_t d : {1, 3, 32, 32}) input->add_shape(d);
                               const int64_t image = (c * 997 + i) % count;
                               request.add_raw_input_contents(pixels.substr(image * 3072, 3072));
                               inference::ModelInferResponse response;
                               grpc::ClientContext context;
                               context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
                               return stubs[c]->ModelInfer(&context, request, &response).ok();
                             })
                         );
    }
  };
  grpc_rows(server, "dynamic batching");
  grpc_rows(unbatched, "no batching");

  // REST (JSON), one client.
  const size_t colon = http.rfind(':');
  httplib::Client client(http.substr(0, colon), std::stoi(http.substr(colon + 1)));
  client.set_read_timeout(30, 0);
  std::vector<std::string> bodies;
  for (int64_t i = 0; i < 64; ++i) {
    std::vector<int> values(pixels.begin() + i * 3072, pixels.begin() + (i + 1) * 3072);
    for (int& v : values) v &= 0xff;
    bodies.push_back(nlohmann::json{{"inputs", {{{"name", "input"}, {"datatype", "UINT8"},
                                                 {"shape", {1, 3, 32, 32}}, {"data", values}}}}}
                         .dump());
  }
  Add(rows, Measure("REST JSON infer batch 1, dynamic batching", 1, 1, seconds, [&](int, int64_t i) {
                   auto response = client.Post("/v2/models/resnet8/infer", bodies[i % 64], "application/json");
                   return response && response->status == 200;
                 }));
  report["rows"] = rows;
  std::cout << report.dump() << "\n";
  return 0;
}
