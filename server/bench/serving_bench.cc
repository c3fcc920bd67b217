// quantd-serving-bench: what serving costs, in one run, as ratios against the
// same int8 artifact run in-process (scripts/bench_serving.sh starts the
// servers and prints the table).
//
//   quantd-serving-bench --server=HOST:PORT --server_unbatched=HOST:PORT --http=HOST:PORT
//       --artifact=FILE.pt --kernel_engine=E --images=CIFAR.bin [--http_unbatched=HOST:PORT]
//       [--seconds=S] [--threads=N] [--only=TEXT] [--rounds=R] [--round_seconds=T]
//
// --server runs with dynamic batching, --server_unbatched with
// --dynamic_batching=false (same artifact, same --inference_threads N). Rows:
// in-process batch 1 (1 thread), 16 (1 thread) and 256 (N threads at once),
// each on one LibTorch intra-op thread as the server's passes are; ModelInfer
// over gRPC with batch-1 requests from 1, 4 and 16 clients, with and without
// dynamic batching, from a thread per client and (4 and 16) from callback-API
// clients; the same over REST (JSON) from 1 client. Each row runs for S
// seconds and reports images/s, p50 and p99, and the CPU time per image that
// it cost this process (the clients, or the in-process passes) and the
// server (its process_cpu_seconds_total, from --http / --http_unbatched).
// Then R paired rounds (default 5) of the rows the targets compare, T
// seconds each (default 1), back to back in every round: in-process batch
// 256, gRPC from 16 clients with and without batching (and 16 callback-API
// clients with batching), and the latency pair, in-process batch 1 and gRPC
// from 1 client, taking turns every 25 requests.
// On a VM whose speed drifts by 30% within a minute, each round's ratios
// compare rows measured seconds apart, not a minute apart.
// Prints JSON.

#include <httplib.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/servable_model.h"

namespace {

using Clock = std::chrono::steady_clock;

// What failed requests said, by message, for the row being measured: a
// failed smoke run must say why, not just how many.
class ErrorTally {
 public:
  void Note(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counts_[what.substr(0, 300)];
  }
  // The messages noted since the last Take.
  std::map<std::string, int64_t> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(counts_, {});
  }

 private:
  std::mutex mu_;
  std::map<std::string, int64_t> counts_;
};
ErrorTally error_tally;

bool Ok(const grpc::Status& status) {
  if (!status.ok()) error_tally.Note(absl::StrCat("gRPC code ", status.error_code(), ": ", status.error_message()));
  return status.ok();
}
template <typename T>
bool Ok(const absl::StatusOr<T>& result) {
  const absl::Status& status = result.status();
  if (!status.ok()) error_tally.Note(status.ToString());
  return status.ok();
}

struct Row {
  std::string path;
  int concurrency = 1;
  int64_t images = 0;
  double seconds = 0;
  std::vector<double> latencies_ms;
  int64_t errors = 0;
  std::map<std::string, int64_t> error_kinds;  // message -> count
  double client_cpu_s = -1;  // this process (the clients, or the in-process passes)
  double server_cpu_s = -1;  // the server's process_cpu_seconds_total; -1: not measured
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
            {"errors", errors},       {"error_kinds", error_kinds},
            {"client_cpu_us_per_image", PerImageUs(client_cpu_s)},
            {"server_cpu_us_per_image", PerImageUs(server_cpu_s)}};
  }
  nlohmann::json PerImageUs(double cpu_s) const {
    if (cpu_s < 0 || images == 0) return nullptr;
    return cpu_s * 1e6 / static_cast<double>(images);
  }
};

// CPU seconds used so far by this process, all threads.
double OwnCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// The server the current rows talk to, for its process_cpu_seconds_total
// (null: in-process rows).
httplib::Client* metered_server = nullptr;
double ServerCpuSeconds() {
  if (metered_server == nullptr) return -1;
  auto response = metered_server->Get("/metrics");
  if (!response || response->status != 200) return -1;
  const std::string name = "\nprocess_cpu_seconds_total ";
  const size_t at = response->body.find(name);
  double seconds = -1;
  if (at == std::string::npos ||
      !absl::SimpleAtod(response->body.substr(at + name.size(), response->body.find('\n', at + 1) - at - name.size()),
                        &seconds)) {
    return -1;
  }
  return seconds;
}

// Records the CPU that `row`'s interval cost this process and the server.
class CpuMeter {
 public:
  CpuMeter() : own_(OwnCpuSeconds()), server_(ServerCpuSeconds()) {}
  void Finish(Row& row) const {
    for (const auto& [what, count] : error_tally.Take()) row.error_kinds[what] += count;
    row.client_cpu_s = OwnCpuSeconds() - own_;
    const double server = ServerCpuSeconds();
    if (server_ >= 0 && server >= 0) row.server_cpu_s = server - server_;
  }

 private:
  double own_;
  double server_;
};

// Runs `call` (one request of `batch` images; false = error) from
// `concurrency` threads for `seconds`.
// --only=TEXT: run just the rows whose "PATH, N clients" contains TEXT (for
// A/B runs of one row; the table then has no ratios for what is missing).
std::string only_rows;
bool Wanted(const std::string& path, int concurrency) {
  return absl::StrContains(absl::StrCat(path, ", ", concurrency, " clients"), only_rows);
}

// A row for `path` from `concurrency` clients, skipped unless --only wants it.
Row NewRow(const std::string& path, int concurrency) {
  Row row;
  row.path = path;
  row.concurrency = concurrency;
  if (!Wanted(path, concurrency)) row.seconds = -1;
  return row;
}

void UseOneIntraOpThread();

template <typename Call>
Row Measure(const std::string& path, int concurrency, int64_t batch, double seconds, Call call) {
  Row row = NewRow(path, concurrency);
  if (row.skipped()) return row;
  std::vector<std::vector<double>> latencies(concurrency);
  std::vector<int64_t> errors(concurrency, 0), images(concurrency, 0);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  const CpuMeter meter;
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
  meter.Finish(row);
  for (int t = 0; t < concurrency; ++t) {
    row.latencies_ms.insert(row.latencies_ms.end(), latencies[t].begin(), latencies[t].end());
    row.errors += errors[t];
    row.images += images[t];
  }
  return row;
}

// Two single-client rows measured in turns on one thread, `slice` calls of
// `call_a`, then `slice` of `call_b`, and so on for `seconds` of each: their
// latencies then see the same moments of a VM whose speed drifts.
template <typename CallA, typename CallB>
std::pair<Row, Row> MeasureInterleaved(const std::string& path_a, CallA call_a, const std::string& path_b,
                                       CallB call_b, double seconds, int slice = 25) {
  std::pair<Row, Row> rows{NewRow(path_a, 1), NewRow(path_b, 1)};
  if (rows.first.skipped() || rows.second.skipped()) return rows;
  std::thread runner([&] {
    UseOneIntraOpThread();
    double spent_a = 0, spent_b = 0;
    int64_t i = 0;
    auto run_slice = [&](Row& row, auto& call, double& spent) {
      const auto begin = Clock::now();
      for (int k = 0; k < slice; ++k, ++i) {
        const auto t0 = Clock::now();
        const bool ok = call(0, i);
        const auto t1 = Clock::now();
        if (!ok) {
          ++row.errors;
          continue;
        }
        ++row.images;
        row.latencies_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
      spent += std::chrono::duration<double>(Clock::now() - begin).count();
      for (const auto& [what, count] : error_tally.Take()) row.error_kinds[what] += count;
    };
    while (spent_a < seconds || spent_b < seconds) {
      run_slice(rows.first, call_a, spent_a);
      run_slice(rows.second, call_b, spent_b);
    }
    rows.first.seconds = spent_a;
    rows.second.seconds = spent_b;
  });
  runner.join();
  return rows;
}

// Like Measure, but the `concurrency` clients are request loops on gRPC's
// callback API in this one process (as Triton's perf_analyzer drives a
// server): each has its own channel and always one request in flight, and
// sends its next request from the callback of the last one. No thread per
// client, so the clients take less of the CPU that they share with a server
// on the same machine. `start(c, i, context, done)` starts client c's i-th
// call; `done` gets its status.
using AsyncDone = std::function<void(const grpc::Status&)>;
using AsyncStart = std::function<void(int, int64_t, grpc::ClientContext*, AsyncDone)>;
Row MeasureAsync(const std::string& path, int concurrency, double seconds, const AsyncStart& start) {
  Row row = NewRow(path, concurrency);
  if (row.skipped()) return row;
  struct Client {
    int64_t sent = 0;
    std::unique_ptr<grpc::ClientContext> context;
    Clock::time_point t0;
    std::vector<double> latencies;
    int64_t errors = 0;
  };
  std::vector<Client> clients(concurrency);
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable all_stopped;
  int running = concurrency;
  std::function<void(int)> send = [&](int c) {
    Client& client = clients[c];
    client.context = std::make_unique<grpc::ClientContext>();
    client.context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    client.t0 = Clock::now();
    start(c, client.sent++, client.context.get(), [&, c](const grpc::Status& status) {
      Client& client = clients[c];
      if (status.ok()) {
        client.latencies.push_back(std::chrono::duration<double, std::milli>(Clock::now() - client.t0).count());
      } else {
        Ok(status);
        ++client.errors;
      }
      if (!stop.load()) return send(c);
      std::lock_guard<std::mutex> lock(mu);
      if (--running == 0) all_stopped.notify_one();
    });
  };
  const CpuMeter meter;
  const auto begin = Clock::now();
  for (int c = 0; c < concurrency; ++c) send(c);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));  // the measured interval
  stop = true;
  {
    std::unique_lock<std::mutex> lock(mu);
    all_stopped.wait(lock, [&] { return running == 0; });
  }
  row.seconds = std::chrono::duration<double>(Clock::now() - begin).count();
  meter.Finish(row);
  for (Client& client : clients) {
    row.latencies_ms.insert(row.latencies_ms.end(), client.latencies.begin(), client.latencies.end());
    row.errors += client.errors;
    row.images += static_cast<int64_t>(client.latencies.size());
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
  const std::string http_unbatched = Flag(argc, argv, "http_unbatched");
  const std::string artifact = Flag(argc, argv, "artifact");
  const std::string kernel_engine = Flag(argc, argv, "kernel_engine");
  const std::string images_path = Flag(argc, argv, "images");
  double seconds = 3;
  double round_seconds = 1;
  int threads = 2;
  int rounds = 5;
  int copies = quantd::engine::kDefaultBatchSizeCopies;
  if (server.empty() || unbatched.empty() || http.empty() || artifact.empty() || kernel_engine.empty() ||
      images_path.empty() || !absl::SimpleAtod(Flag(argc, argv, "seconds", "3"), &seconds) ||
      !absl::SimpleAtoi(Flag(argc, argv, "threads", "2"), &threads) ||
      !absl::SimpleAtoi(Flag(argc, argv, "rounds", "5"), &rounds) || rounds < 0 ||
      !absl::SimpleAtoi(Flag(argc, argv, "batch_size_copies", std::to_string(copies)), &copies) || copies < 0 ||
      !absl::SimpleAtod(Flag(argc, argv, "round_seconds", "1"), &round_seconds) || round_seconds <= 0) {
    std::cerr << "usage: quantd-serving-bench --server=HOST:PORT --server_unbatched=HOST:PORT --http=HOST:PORT "
                 "--artifact=FILE.pt --kernel_engine=E --images=CIFAR.bin [--http_unbatched=HOST:PORT] [--seconds=S] "
                 "[--threads=N] [--only=TEXT] [--rounds=R] [--round_seconds=T] [--batch_size_copies=N (as quantd's)]\n";
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
  report["batch_size_copies"] = copies;
  report["kernel_engine"] = kernel_engine;
  report["cpu"] = quantd::engine::CpuInt8Info().model_name;
  std::vector<nlohmann::json> rows;

  // In-process: the artifact on the same kernels, no server.
  std::ifstream artifact_in(artifact, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(artifact_in)), std::istreambuf_iterator<char>());
  auto model = quantd::engine::ServableModel::LoadInt8Artifact(bytes, kernel_engine, artifact, copies);
  if (!model.ok()) {
    std::cerr << "--artifact: " << model.status() << "\n";
    return 1;
  }
  const std::vector<float> one = floats(0, 1), many = floats(0, 256);
  std::vector<std::vector<float>> singles;  // batch-1 inputs, in turn, as the gRPC clients send theirs
  for (int64_t i = 0; i < 256; ++i) singles.push_back(floats(i, 1));
  UseOneIntraOpThread();
  (void)(*model)->Run(one, {1, 3, 32, 32});  // warm-up
  Add(rows, Measure("in-process batch 1", 1, 1, seconds, [&](int, int64_t) {
                   UseOneIntraOpThread();
                   return Ok((*model)->Run(one, {1, 3, 32, 32}));
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
        if (!Ok((*model)->Run(one, {1, 3, 32, 32}))) ++idle.errors;
        idle.latencies_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        ++idle.images;
      }
    });
    runner.join();
    idle.seconds = seconds;
    idle.error_kinds = error_tally.Take();
    Add(rows, idle);
  }
  // The largest pass 16 batch-1 clients can form, on one thread.
  const std::vector<float> sixteen = floats(0, 16);
  Add(rows, Measure("in-process batch 16", 1, 16, seconds, [&](int, int64_t) {
                   UseOneIntraOpThread();
                   return Ok((*model)->Run(sixteen, {16, 3, 32, 32}));
                 }));
  Add(rows, Measure("in-process batch 256", threads, 256, seconds, [&](int, int64_t) {
                   UseOneIntraOpThread();
                   return Ok((*model)->Run(many, {256, 3, 32, 32}));
                 }));

  // The servers' /metrics, for the CPU each row costs them.
  auto http_client = [](const std::string& host_port) -> std::unique_ptr<httplib::Client> {
    const size_t colon = host_port.rfind(':');
    if (host_port.empty() || colon == std::string::npos) return nullptr;
    auto client = std::make_unique<httplib::Client>(host_port.substr(0, colon), std::stoi(host_port.substr(colon + 1)));
    client->set_read_timeout(30, 0);
    return client;
  };
  const std::unique_ptr<httplib::Client> batched_http = http_client(http);
  const std::unique_ptr<httplib::Client> unbatched_http = http_client(http_unbatched);
  metered_server = batched_http.get();

  // The floor: a gRPC call that does nothing (ServerLive), from 1 and 16
  // clients: what requests/s the RPC alone allows on this machine.
  // A connection per client, as separate processes would have.
  // Each connection is made before its row starts: the rows measure calls on
  // open connections. A connection whose first attempt fails is retried
  // here (gRPC fails calls at once while it backs off) and is listed in
  // connect_retries, which the table prints; none within 20 s ends the run.
  std::vector<std::string> connect_retries;
  auto stubs_to = [&](const std::string& target, int clients) {
    std::vector<std::unique_ptr<inference::GRPCInferenceService::Stub>> stubs;
    const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(20);  // for them all
    for (int c = 0; c < clients; ++c) {
      grpc::ChannelArguments args;
      args.SetInt("quantd.bench.client", c);
      const auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
      bool failed_once = false;
      grpc_connectivity_state state = channel->GetState(/*try_to_connect=*/true);
      for (; state != GRPC_CHANNEL_READY && std::chrono::system_clock::now() < deadline;
           state = channel->GetState(/*try_to_connect=*/true)) {
        if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) failed_once = true;
        channel->WaitForStateChange(state, deadline);
      }
      if (state != GRPC_CHANNEL_READY) {
        std::cerr << "quantd-serving-bench: no connection to " << target << " after 20 s (client " << c << ")\n";
        std::exit(1);
      }
      if (failed_once) connect_retries.push_back(absl::StrCat("connection ", c, " to ", target));
      stubs.push_back(inference::GRPCInferenceService::NewStub(channel));
    }
    return stubs;
  };
  for (int clients : {1, 16}) {
    auto stubs = stubs_to(server, clients);
    Add(rows, Measure("gRPC ServerLive (no work: the floor)", clients, 1, seconds, [&](int c, int64_t) {
                     inference::ServerLiveResponse response;
                     grpc::ClientContext context;
                     return Ok(stubs[c]->ServerLive(&context, inference::ServerLiveRequest(), &response));
                   }));
  }
  // gRPC ModelInfer, batch-1 requests.
  auto infer_request = [&](int c, int64_t i) {
    inference::ModelInferRequest request;
    request.set_model_name("resnet8");
    auto* input = request.add_inputs();
    input->set_name("input");
    input->set_datatype("UINT8");
    for (int64_t d : {1, 3, 32, 32}) input->add_shape(d);
    const int64_t image = (c * 997 + i) % count;
    request.add_raw_input_contents(pixels.substr(image * 3072, 3072));
    return request;
  };
  // One blocking ModelInfer from client c of `stubs` (which must outlive it).
  auto infer_from = [&infer_request](std::vector<std::unique_ptr<inference::GRPCInferenceService::Stub>>& stubs) {
    auto* clients = &stubs;
    return [&infer_request, clients](int c, int64_t i) {
      const inference::ModelInferRequest request = infer_request(c, i);
      inference::ModelInferResponse response;
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      return Ok((*clients)[c]->ModelInfer(&context, request, &response));
    };
  };
  auto grpc_rows = [&](const std::string& target, const std::string& label) {
    for (int clients : {1, 4, 16}) {
      auto stubs = stubs_to(target, clients);
      Add(rows, Measure(absl::StrCat("gRPC ModelInfer batch 1, ", label), clients, 1, seconds, infer_from(stubs)));
      if (clients == 1) continue;
      // The same load from callback-API clients (a connection each).
      std::vector<inference::ModelInferRequest> requests(clients);
      std::vector<inference::ModelInferResponse> responses(clients);
      Add(rows, MeasureAsync(absl::StrCat("gRPC ModelInfer batch 1, ", label, ", async clients"), clients, seconds,
                             [&](int c, int64_t i, grpc::ClientContext* context, AsyncDone done) {
                               requests[c] = infer_request(c, i);
                               responses[c].Clear();
                               stubs[c]->async()->ModelInfer(context, &requests[c], &responses[c], std::move(done));
                             }));
    }
  };
  grpc_rows(server, "dynamic batching");
  metered_server = unbatched_http.get();
  grpc_rows(unbatched, "no batching");
  metered_server = batched_http.get();

  // REST (JSON), one client.
  const size_t colon = http.rfind(':');
  httplib::Client client(http.substr(0, colon), std::stoi(http.substr(colon + 1)));
  client.set_read_timeout(30, 0);
  // One connection for every request, as HTTP client libraries pool them: a
  // new connection per request (httplib's default) hid a 40 ms stall of
  // reused ones until 2026-12-06.
  client.set_keep_alive(true);
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
                   if (!response) {
                     error_tally.Note(absl::StrCat("HTTP: ", httplib::to_string(response.error())));
                     return false;
                   }
                   if (response->status != 200) {
                     error_tally.Note(absl::StrCat("HTTP ", response->status, ": ", response->body));
                   }
                   return response->status == 200;
                 }));
  report["rows"] = rows;

  // Paired rounds: the rows the targets compare, back to back.
  auto batched16 = stubs_to(server, 16);
  auto unbatched16 = stubs_to(unbatched, 16);
  auto batched1 = stubs_to(server, 1);
  std::vector<nlohmann::json> paired;
  // Each paired row over all rounds as one row (all its requests, all its
  // seconds): the run's own figure, less swayed by one slow round than any
  // single round is.
  std::map<std::string, Row> pooled;
  for (int round = 0; round < rounds; ++round) {
    nlohmann::json r;
    auto measure = [&](const char* key, Row row) {
      if (row.skipped()) return;
      Row& all = pooled[key];
      all.path = row.path;
      all.concurrency = row.concurrency;
      all.images += row.images;
      all.seconds += row.seconds;
      all.errors += row.errors;
      all.latencies_ms.insert(all.latencies_ms.end(), row.latencies_ms.begin(), row.latencies_ms.end());
      r[key] = row.Json();
    };
    metered_server = nullptr;
    measure("in_process_batch256", Measure("round: in-process batch 256", threads, 256, round_seconds,
                                           [&](int, int64_t) {
                                             UseOneIntraOpThread();
                                             return Ok((*model)->Run(many, {256, 3, 32, 32}));
                                           }));
    metered_server = batched_http.get();
    measure("grpc_batched_16", Measure("round: gRPC ModelInfer batch 1, dynamic batching", 16, 1, round_seconds,
                                       infer_from(batched16)));
    {
      std::vector<inference::ModelInferRequest> requests(16);
      std::vector<inference::ModelInferResponse> responses(16);
      measure("grpc_batched_16_async",
              MeasureAsync("round: gRPC ModelInfer batch 1, dynamic batching, async clients", 16, round_seconds,
                           [&](int c, int64_t i, grpc::ClientContext* context, AsyncDone done) {
                             requests[c] = infer_request(c, i);
                             responses[c].Clear();
                             batched16[c]->async()->ModelInfer(context, &requests[c], &responses[c], std::move(done));
                           }));
    }
    {
      // The latency pair in turns, so that both see the same moments.
      auto [in_process, grpc_one] = MeasureInterleaved(
          "round: in-process batch 1",
          [&](int, int64_t i) { return Ok((*model)->Run(singles[i % singles.size()], {1, 3, 32, 32})); },
          "round: gRPC ModelInfer batch 1, dynamic batching", infer_from(batched1), round_seconds);
      measure("in_process_batch1", std::move(in_process));
      measure("grpc_batched_1", std::move(grpc_one));
    }
    metered_server = unbatched_http.get();
    measure("grpc_unbatched_16", Measure("round: gRPC ModelInfer batch 1, no batching", 16, 1, round_seconds,
                                         infer_from(unbatched16)));
    if (!r.empty()) paired.push_back(r);
  }
  report["rounds"] = paired;
  report["connect_retries"] = connect_retries;
  nlohmann::json pooled_json = nlohmann::json::object();
  for (auto& [key, row] : pooled) pooled_json[key] = row.Json();
  report["pooled_rounds"] = pooled_json;
  std::cout << report.dump() << "\n";
  return 0;
}
