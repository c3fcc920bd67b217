// Load: 200 concurrent gRPC clients (one channel each) mix submit, get,
// list, watch and download against the real quantd for a bounded time.
// Every answer must be OK or RESOURCE_EXHAUSTED (a full queue); the server's
// resident memory is sampled and must stay bounded; p50/p99 per call are
// printed (figures, not pass/fail thresholds).

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "quantd/v1/quantd.grpc.pb.h"
#include "tests/integration/test_util/subprocess.h"

namespace quantd {
namespace {

namespace fs = std::filesystem;
using ::quantd::test_util::MakeTempDir;
using ::quantd::test_util::ReadFileOrEmpty;
using ::quantd::test_util::Subprocess;

constexpr int kClients = 200;
constexpr absl::Duration kRunFor = absl::Seconds(20);

int64_t ResidentKb(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return 0;
}

v1::QuantizeJobRequest SmallJob() {
  v1::QuantizeJobRequest request;
  request.mutable_model()->set_path("fixtures/models/resnet8_fp32.torchscript.pt");
  auto* calibration = request.mutable_calibration();
  calibration->mutable_dataset()->set_path("fixtures/cifar10/calib_batch.bin");
  calibration->mutable_dataset()->set_format(v1::DATASET_FORMAT_CIFAR10_BINARY);
  calibration->set_samples_per_class(1);
  calibration->set_batch_size(10);
  request.mutable_qconfig()->set_preset(v1::QCONFIG_PRESET_QNNPACK);
  request.mutable_fusion()->set_auto_(true);
  return request;
}

struct Sample {
  std::string op;
  grpc::StatusCode code;
  double ms;
};

TEST(LoadTest, TwoHundredClientsGetOnlyOkOrResourceExhausted) {
  const std::string dir = MakeTempDir("quantd_load");
  fs::create_directories(dir + "/data");
  fs::create_directory_symlink(fs::absolute(FIXTURES_DIR), dir + "/data/fixtures");
  Subprocess::Options options;
  options.stderr_path = dir + "/quantd.log";
  auto child = Subprocess::Start({QUANTD_BIN, "--bind_address=127.0.0.1", "--grpc_port=0", "--metrics_port=-1",
                                  "--data_dir=" + dir + "/data", "--port_file=" + dir + "/ports.json",
                                  "--queue_capacity=10", "--read_roots=" + fs::canonical(FIXTURES_DIR).string()},
                                 options);
  ASSERT_TRUE(child.ok()) << child.status();
  const absl::Time started = absl::Now();
  while (!fs::exists(dir + "/ports.json") && absl::Now() - started < absl::Seconds(30)) {
    ASSERT_FALSE((*child)->Poll().has_value()) << ReadFileOrEmpty(dir + "/quantd.log");
    (*child)->WaitFor(absl::Milliseconds(20));
  }
  const int port = nlohmann::json::parse(ReadFileOrEmpty(dir + "/ports.json"))["grpc_port"].get<int>();
  const std::string target = absl::StrCat("127.0.0.1:", port);

  // One finished job to read, watch and download.
  auto seed_stub = v1::QuantizationService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  v1::Job seed;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(seed_stub->QuantizeJob(&context, SmallJob(), &seed).ok());
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (seed.state() != v1::JOB_STATE_SUCCEEDED && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));  // poll interval
    grpc::ClientContext context;
    v1::GetJobRequest get;
    get.set_id(seed.id());
    ASSERT_TRUE(seed_stub->GetJob(&context, get, &seed).ok());
    ASSERT_NE(seed.state(), v1::JOB_STATE_FAILED) << seed.DebugString();
  }
  ASSERT_EQ(seed.state(), v1::JOB_STATE_SUCCEEDED);
  const std::string artifact = seed.result().artifact_id();

  absl::Mutex mu;
  std::vector<Sample> samples;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> peak_kb{ResidentKb((*child)->pid())};
  std::thread sampler([&] {
    while (!stop.load()) {
      peak_kb.store(std::max(peak_kb.load(), ResidentKb((*child)->pid())));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  const absl::Time end = absl::Now() + kRunFor;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::QuantizationService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
      std::mt19937 rng(static_cast<uint32_t>(c));
      std::vector<Sample> mine;
      while (absl::Now() < end) {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        const int pick = static_cast<int>(rng() % 100);
        const auto t0 = std::chrono::steady_clock::now();
        grpc::Status status;
        std::string op;
        if (pick < 10) {
          op = "QuantizeJob";
          v1::Job job;
          status = stub->QuantizeJob(&context, SmallJob(), &job);
        } else if (pick < 40) {
          op = "GetJob";
          v1::GetJobRequest request;
          request.set_id(seed.id());
          v1::Job job;
          status = stub->GetJob(&context, request, &job);
        } else if (pick < 65) {
          op = "ListJobs";
          v1::ListJobsRequest request;
          request.set_page_size(50);
          v1::ListJobsResponse response;
          status = stub->ListJobs(&context, request, &response);
        } else if (pick < 80) {
          op = "WatchJob";
          v1::WatchJobRequest request;
          request.set_id(seed.id());
          auto reader = stub->WatchJob(&context, request);
          v1::JobEvent event;
          while (reader->Read(&event)) {
          }
          status = reader->Finish();
        } else {
          op = "DownloadArtifact";
          v1::DownloadArtifactRequest request;
          request.set_id(artifact);
          auto reader = stub->DownloadArtifact(&context, request);
          v1::DownloadArtifactResponse chunk;
          while (reader->Read(&chunk)) {
          }
          status = reader->Finish();
        }
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        mine.push_back({op, status.error_code(), ms});
        if (status.error_code() != grpc::StatusCode::OK &&
            status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
          ADD_FAILURE() << op << ": " << status.error_code() << " " << status.error_message();
        }
      }
      absl::MutexLock lock(&mu);
      samples.insert(samples.end(), mine.begin(), mine.end());
    });
  }
  for (std::thread& t : clients) t.join();
  stop.store(true);
  sampler.join();

  std::map<std::string, std::vector<double>> by_op;
  std::map<grpc::StatusCode, int> codes;
  for (const Sample& s : samples) {
    by_op[s.op].push_back(s.ms);
    ++codes[s.code];
  }
  std::cout << "load: " << kClients << " clients, " << absl::ToDoubleSeconds(kRunFor) << " s, " << samples.size()
            << " calls (" << samples.size() / absl::ToDoubleSeconds(kRunFor) << "/s); OK " << codes[grpc::StatusCode::OK]
            << ", RESOURCE_EXHAUSTED " << codes[grpc::StatusCode::RESOURCE_EXHAUSTED] << "; quantd peak RSS "
            << peak_kb.load() / 1024 << " MiB\n";
  for (auto& [op, ms] : by_op) {
    std::sort(ms.begin(), ms.end());
    std::cout << "  " << op << ": " << ms.size() << " calls, p50 " << ms[ms.size() / 2] << " ms, p99 "
              << ms[std::min(ms.size() - 1, ms.size() * 99 / 100)] << " ms\n";
  }
  EXPECT_GT(codes[grpc::StatusCode::OK], 1000);
  EXPECT_EQ(by_op.size(), 5u);
  // Bounded: LibTorch and one job's working set, not a function of the load.
  EXPECT_LT(peak_kb.load(), 2 * 1024 * 1024) << "quantd grew past 2 GiB under load";
  EXPECT_FALSE((*child)->Poll().has_value()) << "quantd died: " << ReadFileOrEmpty(dir + "/quantd.log");
}

}  // namespace
}  // namespace quantd
