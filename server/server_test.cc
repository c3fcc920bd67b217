#include "server/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include <grpcpp/create_channel.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "quantd/v1/quantd.grpc.pb.h"
#include "server/cpu_budget.h"
#include "worker/engine/quantizer.h"
#include "worker/evaluation.h"

namespace quantd {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;

std::string TempDir(const std::string& name) {
  std::string dir = std::filesystem::temp_directory_path() /
                    ("quantd_server_test_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(dir);
  return dir;
}

// A server on loopback, on an ephemeral gRPC port, over `data_dir`. No
// metrics endpoint: it (civetweb) takes ~2 s to stop, so only the tests that
// need it turn it on.
QuantdServer::Options LoopbackOptions(const std::string& data_dir) {
  QuantdServer::Options options;
  options.bind_address = "127.0.0.1";
  options.grpc_port = 0;
  options.metrics_port = -1;
  options.data_dir = data_dir;
  return options;
}

void SetDeadline(grpc::ClientContext& context) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_dir_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    QuantdServer::Options options = LoopbackOptions(data_dir_ + "/nested/data");
    auto server = QuantdServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = server_->InProcessChannel();
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(5));
    std::filesystem::remove_all(data_dir_);
  }

  grpc::Status Check(const std::string& service, HealthCheckResponse* response) {
    grpc::ClientContext context;
    SetDeadline(context);
    HealthCheckRequest request;
    request.set_service(service);
    return Health::NewStub(channel_)->Check(&context, request, response);
  }

  std::string Scrape() {
    return prometheus::TextSerializer().Serialize(server_->metrics().registry()->Collect());
  }

  // A queued job that no worker takes (the pool is stopped): the test
  // publishes its events itself.
  absl::StatusOr<worker::Job> JobNobodyRuns(const std::string& id) {
    server_->pool().Stop();
    worker::Job job;
    job.id = id;
    job.spec.model_path = "model.pt";
    job.request_fingerprint = id;
    return server_->pool().store().Create(job, 100);
  }
  void PublishProgress(const worker::Job& job, int batches_done, int batches_total) {
    worker::JobEvent progress;
    progress.kind = worker::JobEvent::Kind::kCalibrationProgress;
    progress.batches_done = batches_done;
    progress.batches_total = batches_total;
    server_->pool().events().Publish(job, progress);
  }

  std::string data_dir_;
  std::unique_ptr<QuantdServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServerTest, BindsEphemeralPortAndCreatesDataDir) {
  EXPECT_GT(server_->grpc_port(), 0);
  EXPECT_EQ(server_->metrics_port(), -1);
  EXPECT_TRUE(std::filesystem::is_directory(data_dir_ + "/nested/data"));
}

TEST_F(ServerTest, InferenceThreadsDefaultToOneLessThanTheUsableCpus) {
  EXPECT_EQ(server_->options().inference_threads, DefaultInferenceThreads(UsableCpus()));
  EXPECT_GE(server_->options().inference_threads, 1);
}

TEST(ServerMetricsEndpointTest, BindsEphemeralMetricsPort) {
  QuantdServer::Options options = LoopbackOptions(TempDir("metrics_endpoint"));
  options.metrics_port = 0;
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->metrics_port(), 0);
  EXPECT_NE((*server)->metrics_port(), (*server)->grpc_port());
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
}

// A second server on a busy HTTP port fails to start rather than sharing
// the port (cpp-httplib's default SO_REUSEPORT would let it bind).
TEST(ServerMetricsEndpointTest, ABusyMetricsPortIsRefused) {
  QuantdServer::Options options = LoopbackOptions(TempDir("metrics_busy"));
  options.metrics_port = 0;
  auto first = QuantdServer::Start(options);
  ASSERT_TRUE(first.ok()) << first.status();
  QuantdServer::Options second = LoopbackOptions(TempDir("metrics_busy_second"));
  second.metrics_port = (*first)->metrics_port();
  auto refused = QuantdServer::Start(second);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr(absl::StrCat(":", second.metrics_port, " (address in use")));
  (*first)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
  std::filesystem::remove_all(second.data_dir);
}

TEST_F(ServerTest, HealthServingForServerAndService) {
  for (const std::string service : {"", "quantd.v1.QuantizationService", "inference.GRPCInferenceService"}) {
    HealthCheckResponse response;
    grpc::Status status = Check(service, &response);
    ASSERT_TRUE(status.ok()) << service << ": " << status.error_message();
    EXPECT_EQ(response.status(), HealthCheckResponse::SERVING) << service;
  }
}

TEST_F(ServerTest, HealthUnknownServiceIsNotFound) {
  HealthCheckResponse response;
  EXPECT_EQ(Check("no.such.Service", &response).error_code(), grpc::StatusCode::NOT_FOUND);
  // A name longer than a client's metadata limit is still NOT_FOUND, with a
  // bounded message, not a trailer the client refuses.
  grpc::Status long_name = Check(std::string(20000, 'a'), &response);
  EXPECT_EQ(long_name.error_code(), grpc::StatusCode::NOT_FOUND) << long_name.error_message();
  EXPECT_LT(long_name.error_message().size(), 2000u);
}

// Watches need no token, so what one may hold is bounded: a name no service
// has is refused at once.
TEST_F(ServerTest, HealthWatchOfAnOverlongNameIsRefused) {
  grpc::ClientContext context;
  SetDeadline(context);
  HealthCheckRequest request;
  request.set_service(std::string(100000, 'a'));
  auto reader = Health::NewStub(channel_)->Watch(&context, request);
  HealthCheckResponse response;
  EXPECT_FALSE(reader->Read(&response));
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("service: 100000 bytes"));
}

TEST_F(ServerTest, HealthNotServingOnceShuttingDown) {
  server_->health().Shutdown();
  HealthCheckResponse response;
  ASSERT_TRUE(Check("", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(Check("quantd.v1.QuantizationService", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
}

TEST_F(ServerTest, HealthWatchStreamsChangesAndEndsOnShutdown) {
  grpc::ClientContext context;
  SetDeadline(context);
  HealthCheckRequest request;
  request.set_service("quantd.v1.QuantizationService");
  auto reader = Health::NewStub(channel_)->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  server_->health().SetServingStatus("quantd.v1.QuantizationService",
                                     HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  server_->health().SetServingStatus("quantd.v1.QuantizationService",
                                     HealthCheckResponse::SERVING);
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  server_->health().Shutdown();
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(reader->Read(&response));
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(ServerTest, UnknownJobsAndEvaluationsAreNotFoundAndBadEvaluationsNameTheField) {
  auto stub = v1::QuantizationService::NewStub(channel_);
  grpc::ClientContext context;
  SetDeadline(context);
  v1::GetJobRequest request;
  request.set_id("job-1");
  v1::Job job;
  grpc::Status status = stub->GetJob(&context, request, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("job-1"));
  {
    grpc::ClientContext long_context;
    SetDeadline(long_context);
    request.set_id(std::string(200, 'j'));
    status = stub->GetJob(&long_context, request, &job);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(status.error_message(), "id: 200 characters; an id has at most 128");
  }

  auto evaluate = [&](const v1::EvaluateRequest& request) {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::Evaluation evaluation;
    return stub->Evaluate(&context, request, &evaluation);
  };
  v1::EvaluateRequest bad;
  status = evaluate(bad);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model_name"));
  bad.set_model_name("resnet8.fp32");  // served under that name, evaluated under the published one
  status = evaluate(bad);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model_name: \"resnet8.fp32\" is a version's FP32 source; evaluate "
                                                "the published name \"resnet8\""));
  bad.set_model_name("resnet8");
  bad.set_model_version("newest");
  status = evaluate(bad);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model_version"));
  bad.clear_model_version();
  status = evaluate(bad);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("dataset"));
  bad.mutable_dataset()->set_format(v1::DATASET_FORMAT_CIFAR10_BINARY);
  bad.mutable_dataset()->set_path("nowhere.bin");
  status = evaluate(bad);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("dataset.path"));
  // .npy images without their labels, named as a job's are (it said "no
  // labels" after the version was looked up, naming this server's path).
  std::ofstream(data_dir_ + "/nested/data/images.npy") << "x";
  bad.mutable_dataset()->set_format(v1::DATASET_FORMAT_NPY);
  bad.mutable_dataset()->set_path("images.npy");
  status = evaluate(bad);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(),
              HasSubstr("dataset.labels_path (or .labels_blob_id): required for .npy images to evaluate"));

  grpc::ClientContext get_context;
  SetDeadline(get_context);
  v1::GetEvaluationRequest get;
  get.set_id("eval-1");
  v1::Evaluation evaluation;
  status = stub->GetEvaluation(&get_context, get, &evaluation);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("eval-1"));
}

TEST_F(ServerTest, QuantizeJobValidatesWithoutLoadingTheModel) {
  auto stub = v1::QuantizationService::NewStub(channel_);
  auto submit = [&](const v1::QuantizeJobRequest& request) {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::Job job;
    return stub->QuantizeJob(&context, request, &job);
  };
  v1::QuantizeJobRequest request;
  grpc::Status status = submit(request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model"));

  request.mutable_model()->set_path("../../etc/passwd");
  status = submit(request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model.path"));

  request.mutable_model()->set_blob_id(std::string(64, 'a'));
  status = submit(request);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("model.blob_id"));

  // Found by the job_request fuzzer: a deadline beyond protobuf's Timestamp
  // range overflowed the conversion (and echoing it could abort the server).
  {
    std::ofstream(data_dir_ + "/nested/data/m.pt") << "PK";
    std::ofstream(data_dir_ + "/nested/data/c.bin", std::ios::binary) << std::string(3073, '\x01');
    v1::QuantizeJobRequest timed;
    timed.mutable_model()->set_path("m.pt");
    timed.mutable_calibration()->mutable_dataset()->set_path("c.bin");
    timed.mutable_calibration()->mutable_dataset()->set_format(v1::DATASET_FORMAT_CIFAR10_BINARY);
    timed.mutable_deadline()->set_seconds(999999999999999);
    status = submit(timed);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("deadline"));
    timed.clear_deadline();
    // An engine this LibTorch lacks (Debian's has no fbgemm) is refused at
    // submit, not when a worker gets to the job.
    const std::vector<std::string> available = engine::AvailableKernelEngines();
    for (const char* missing : {"fbgemm", "x86", "onednn", "qnnpack"}) {
      if (std::find(available.begin(), available.end(), missing) != available.end()) continue;
      timed.mutable_qconfig()->set_kernel_engine(missing);
      status = submit(timed);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
      EXPECT_THAT(status.error_message(), HasSubstr("is not compiled into this server's LibTorch"));
    }
    timed.clear_qconfig();
    timed.mutable_preprocessing()->add_mean(std::nanf(""));
    status = submit(timed);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("preprocessing.mean[0]: must be finite"));
  }
}

// A watcher that stops reading must not make the server queue every event of
// a long job for it: past 10000 unsent events its stream ends
// RESOURCE_EXHAUSTED, in order up to there, and a new watch resumes after the
// last event read. Over TCP, so HTTP/2 flow control is what stalls the writes.
TEST_F(ServerTest, AWatchThatFallsTooFarBehindEndsResourceExhaustedAndResumes) {
  absl::StatusOr<worker::Job> stored = JobNobodyRuns("job-stalled-watch");
  ASSERT_TRUE(stored.ok()) << stored.status();
  const worker::Job& job = *stored;
  // The client's receive window stays at 64 KiB (no BDP growth): the
  // server's writes stall after about a thousand unread events.
  grpc::ChannelArguments window;
  window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  window.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 * 1024);
  auto stub = v1::QuantizationService::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("127.0.0.1:", server_->grpc_port()), grpc::InsecureChannelCredentials(), window));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::WatchJobRequest request;
  request.set_id(job.id);
  auto reader = stub->WatchJob(&context, request);
  v1::JobEvent event;
  ASSERT_TRUE(reader->Read(&event));  // the snapshot: subscribed
  ASSERT_TRUE(event.has_snapshot());

  constexpr int kPublished = 30000;  // three times the limit, none read meanwhile
  auto publish = [&](int batches_done) { PublishProgress(job, batches_done, kPublished + 1); };
  for (int i = 1; i <= kPublished; ++i) publish(i);

  int read = 0;
  int64_t last_batches = 0;
  uint64_t last_sequence = event.sequence();
  while (reader->Read(&event)) {
    ASSERT_TRUE(event.has_calibration_progress());
    // No gap and no reordering in what did arrive.
    EXPECT_EQ(event.calibration_progress().batches_done(), last_batches + 1);
    EXPECT_GT(event.sequence(), last_sequence);
    last_batches = event.calibration_progress().batches_done();
    last_sequence = event.sequence();
    ++read;
  }
  const grpc::Status ended = reader->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << ended.error_message();
  EXPECT_THAT(ended.error_message(), HasSubstr("fell 10000 events behind"));
  EXPECT_THAT(ended.error_message(), HasSubstr("after_sequence"));
  EXPECT_LT(read, kPublished);

  // Watching again after the last event read: the snapshot, then what comes next.
  grpc::ClientContext again;
  SetDeadline(again);
  request.set_after_sequence(last_sequence);
  auto resumed = stub->WatchJob(&again, request);
  ASSERT_TRUE(resumed->Read(&event));
  EXPECT_TRUE(event.has_snapshot());
  publish(kPublished + 1);
  ASSERT_TRUE(resumed->Read(&event));
  EXPECT_EQ(event.calibration_progress().batches_done(), kPublished + 1);
  EXPECT_GT(event.sequence(), last_sequence);
  again.TryCancel();
  EXPECT_EQ(resumed->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// A client resumes with the last sequence it read. If the job finished
// meanwhile, the server no longer follows it and replays its snapshot and
// result with low numbers: the result still comes, and ends the stream.
// A sequence from another process (here: a later generation, as a replica
// started after this one numbers its events) skips nothing.
TEST_F(ServerTest, AResumedWatchGetsTheResultOfAJobThatFinishedMeanwhile) {
  absl::StatusOr<worker::Job> stored = JobNobodyRuns("job-resumed-watch");
  ASSERT_TRUE(stored.ok()) << stored.status();
  const worker::Job& job = *stored;
  auto stub = v1::QuantizationService::NewStub(channel_);
  auto publish = [&](int batches_done) { PublishProgress(job, batches_done, 10); };
  v1::WatchJobRequest request;
  request.set_id(job.id);
  v1::JobEvent event;
  uint64_t last_sequence = 0;
  {
    grpc::ClientContext context;
    SetDeadline(context);
    auto reader = stub->WatchJob(&context, request);
    ASSERT_TRUE(reader->Read(&event));
    ASSERT_TRUE(event.has_snapshot());
    for (int i = 1; i <= 3; ++i) publish(i);
    for (int i = 1; i <= 3; ++i) {
      ASSERT_TRUE(reader->Read(&event));
      EXPECT_EQ(event.calibration_progress().batches_done(), i);
    }
    last_sequence = event.sequence();
    context.TryCancel();  // the connection drops
    reader->Finish();
  }

  // Another replica, started later, numbers its events in a higher generation.
  const uint64_t later_generation = ((last_sequence >> 32) + 1) << 32;
  {
    grpc::ClientContext context;
    SetDeadline(context);
    request.set_after_sequence(later_generation + 50);
    auto reader = stub->WatchJob(&context, request);
    ASSERT_TRUE(reader->Read(&event));
    ASSERT_TRUE(event.has_snapshot());
    publish(4);
    ASSERT_TRUE(reader->Read(&event));
    EXPECT_EQ(event.calibration_progress().batches_done(), 4);
    last_sequence = event.sequence();
    context.TryCancel();
    reader->Finish();
  }

  ASSERT_TRUE(server_->pool().Cancel(job.id, "no longer needed").ok());
  grpc::ClientContext context;
  SetDeadline(context);
  request.set_after_sequence(last_sequence);
  auto reader = stub->WatchJob(&context, request);
  std::vector<v1::JobEvent> events;
  while (reader->Read(&event)) events.push_back(event);
  const grpc::Status ended = reader->Finish();
  EXPECT_TRUE(ended.ok()) << ended.error_message();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_TRUE(events[0].has_snapshot());
  EXPECT_EQ(events[0].snapshot().state(), v1::JOB_STATE_CANCELLED);
  ASSERT_TRUE(events[1].has_result());
  EXPECT_THAT(events[1].result().error_message(), HasSubstr("no longer needed"));
}

TEST_F(ServerTest, ListJobsPagesStayUnderGrpcsDefaultMessageLimit) {
  // 80 jobs whose requests echo 60 KiB each (labels): 4.8 MB in one page of
  // 100 would pass the 4 MiB a default client accepts.
  server_->pool().Stop();
  for (int i = 0; i < 80; ++i) {
    v1::QuantizeJobRequest request;
    request.mutable_model()->set_path("model.pt");
    (*request.mutable_labels())["note"] = std::string(60 * 1024, static_cast<char>('a' + i % 26));
    worker::Job job;
    job.id = absl::StrCat("job-", 100 + i);
    job.spec.model_path = "model.pt";
    job.request_fingerprint = job.id;
    job.request_echo = request.SerializeAsString();
    ASSERT_TRUE(server_->pool().store().Create(job, 1000).ok());
  }
  auto stub = v1::QuantizationService::NewStub(channel_);
  std::set<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::ListJobsRequest request;
    request.set_page_size(100);
    request.set_page_token(token);
    v1::ListJobsResponse response;
    const grpc::Status status = stub->ListJobs(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_LT(response.ByteSizeLong(), size_t{4} << 20);
    EXPECT_GT(response.jobs_size(), 0);
    for (const v1::Job& job : response.jobs()) EXPECT_TRUE(seen.insert(job.id()).second) << job.id() << " twice";
    token = response.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(seen.size(), 80u);  // every job once, over more than one page
  EXPECT_GE(pages, 2);
}

TEST_F(ServerTest, StreamingRpcsOnUnknownIdsAreNotFound) {
  auto stub = v1::QuantizationService::NewStub(channel_);
  {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::WatchJobRequest request;
    request.set_id("job-nope");
    auto reader = stub->WatchJob(&context, request);
    v1::JobEvent event;
    EXPECT_FALSE(reader->Read(&event));
    grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_THAT(status.error_message(), HasSubstr("job-nope"));
  }
  {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::DownloadArtifactRequest request;
    request.set_id("art-nope");
    auto reader = stub->DownloadArtifact(&context, request);
    v1::DownloadArtifactResponse chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {  // the artifacts of a job that does not exist: not an empty list
    grpc::ClientContext context;
    SetDeadline(context);
    v1::ListArtifactsRequest request;
    request.set_job_id("job-typo");
    v1::ListArtifactsResponse response;
    grpc::Status status = stub->ListArtifacts(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_THAT(status.error_message(), HasSubstr("job-typo"));
  }
}

TEST_F(ServerTest, UploadModelStoresContentAddressedAndChecksSha) {
  auto stub = v1::QuantizationService::NewStub(channel_);
  auto upload = [&](const std::string& expected, v1::BlobInfo* blob) {
    grpc::ClientContext context;
    SetDeadline(context);
    auto writer = stub->UploadModel(&context, blob);
    v1::UploadModelRequest first;
    first.mutable_metadata()->set_filename("model.pt");
    first.mutable_metadata()->set_expected_sha256(expected);
    writer->Write(first);
    v1::UploadModelRequest chunk;
    chunk.set_chunk_data("hello ");
    writer->Write(chunk);
    chunk.set_chunk_data("world");
    writer->Write(chunk);
    writer->WritesDone();
    return writer->Finish();
  };
  v1::BlobInfo blob;
  grpc::Status status = upload(std::string(64, '0'), &blob);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(status.error_message(), HasSubstr("expected_sha256"));
  const std::string sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
  status = upload(sha, &blob);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(blob.blob_id(), sha);
  EXPECT_EQ(blob.size_bytes(), 11u);
  EXPECT_FALSE(blob.already_existed());
  EXPECT_TRUE(upload("", &blob).ok());
  EXPECT_TRUE(blob.already_existed());

  // Listed; a page token that no page gave is refused as ListJobs refuses
  // one (it once answered an empty page, OK).
  auto list = [&](const std::string& token, v1::ListBlobsResponse* response) {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::ListBlobsRequest request;
    request.set_page_token(token);
    return stub->ListBlobs(&context, request, response);
  };
  v1::ListBlobsResponse listed;
  ASSERT_TRUE(list("", &listed).ok());
  ASSERT_EQ(listed.blobs_size(), 1);
  EXPECT_EQ(listed.blobs(0).blob_id(), sha);
  EXPECT_TRUE(listed.next_page_token().empty());
  for (const std::string& token : {std::string("zzz"), std::string(64, 'Z'), sha + "0"}) {
    status = list(token, &listed);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << token;
    EXPECT_THAT(status.error_message(), HasSubstr("page_token: \"")) << token;
  }
  v1::ListBlobsResponse after_last;
  ASSERT_TRUE(list(sha, &after_last).ok());  // a real id: the blobs after it
  EXPECT_EQ(after_last.blobs_size(), 0);

  // A declared size past int64 once read as negative ("-1 is negative").
  grpc::ClientContext context;
  SetDeadline(context);
  auto writer = stub->UploadModel(&context, &blob);
  v1::UploadModelRequest huge;
  huge.mutable_metadata()->set_size_bytes(std::numeric_limits<uint64_t>::max());
  writer->Write(huge);
  writer->WritesDone();
  status = writer->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("metadata.size_bytes: 18446744073709551615 bytes exceeds the upload"));
}

// A dataset whose bytes contradict its declared format is refused as it
// streams in, naming the field, and nothing is stored: a truncated CIFAR-10
// file was once accepted and refused only by the first job that opened it.
TEST_F(ServerTest, ADatasetUploadWhoseBytesContradictItsFormatIsRefusedAndNotStored) {
  auto stub = v1::QuantizationService::NewStub(channel_);
  auto upload = [&](v1::DatasetFormat format, const std::string& bytes) {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::BlobInfo blob;
    auto writer = stub->UploadDataset(&context, &blob);
    v1::UploadDatasetRequest request;
    request.mutable_metadata()->set_format(format);
    writer->Write(request);
    for (size_t at = 0; at < bytes.size(); at += 1000) {  // records straddle chunks
      request.Clear();
      request.set_chunk_data(bytes.substr(at, 1000));
      if (!writer->Write(request)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  };
  std::string records;
  for (char label : {'\x03', '\x09'}) {
    records.push_back(label);
    records.append(3072, '\x40');
  }
  grpc::Status status = upload(v1::DATASET_FORMAT_CIFAR10_BINARY, records.substr(0, records.size() - 5));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(),
              HasSubstr("metadata.format: the file is not DATASET_FORMAT_CIFAR10_BINARY: the file is truncated"));
  EXPECT_THAT(status.error_message(), HasSubstr("6141 bytes is not a multiple of 3073"));
  std::string relabelled = records;
  relabelled[3073] = 12;
  status = upload(v1::DATASET_FORMAT_CIFAR10_BINARY, relabelled);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("record 1 has label 12"));
  status = upload(v1::DATASET_FORMAT_NPY, records);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("not a .npy file"));
  auto listed = [&] {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::ListBlobsResponse response;
    EXPECT_TRUE(stub->ListBlobs(&context, v1::ListBlobsRequest(), &response).ok());
    return response.blobs_size();
  };
  EXPECT_EQ(listed(), 0);
  // The same bytes, whole and as declared, are stored.
  status = upload(v1::DATASET_FORMAT_CIFAR10_BINARY, records);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(listed(), 1);
}

// A client that opens an upload and then sends nothing loses it: its
// partial file and quota reservation do not stay for as long as it holds the
// stream.
TEST(ServerUploadIdleTest, AnUploadThatSendsNothingIsDropped) {
  QuantdServer::Options options = LoopbackOptions(TempDir("upload_idle"));
  options.max_data_bytes = 4 << 20;  // the job store takes about 140 kB of it
  options.upload_idle_timeout = absl::Milliseconds(300);
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::QuantizationService::NewStub((*server)->InProcessChannel());
  auto temporaries = [&] {
    int count = 0;
    for (const auto& entry : std::filesystem::directory_iterator(options.data_dir + "/blobs")) {
      count += entry.path().filename().string().rfind(".tmp.", 0) == 0;
    }
    return count;
  };
  for (const bool sends_a_chunk : {false, true}) {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::BlobInfo blob;
    auto writer = stub->UploadDataset(&context, &blob);
    v1::UploadDatasetRequest metadata;
    metadata.mutable_metadata()->set_size_bytes(3 << 20);  // holds 3 of the 4 MiB of quota
    ASSERT_TRUE(writer->Write(metadata));
    if (sends_a_chunk) {
      v1::UploadDatasetRequest chunk;
      chunk.set_chunk_data(std::string(100, 'x'));
      ASSERT_TRUE(writer->Write(chunk));
    }
    // Then nothing: no more chunks, no WritesDone. The server ends the call.
    const auto start = std::chrono::steady_clock::now();
    grpc::Status status = writer->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("--upload_idle_timeout_seconds"));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  }
  // Nothing of either is left, and the quota they held is free again, by the
  // time the client hears.
  EXPECT_EQ(temporaries(), 0);
  {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::BlobInfo blob;
    auto writer = stub->UploadDataset(&context, &blob);
    v1::UploadDatasetRequest request;
    request.mutable_metadata()->set_size_bytes(3 << 20);
    ASSERT_TRUE(writer->Write(request));
    request.Clear();
    request.set_chunk_data(std::string(1 << 20, 'y'));
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(writer->Write(request));
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(blob.size_bytes(), 3u << 20);
  }
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
}

// The job store is under the data dir too: a submit that finds the quota
// full is refused (the store once grew past it, one accepted job at a time).
TEST(ServerQuotaTest, ASubmitThatFindsTheDataDirQuotaFullIsResourceExhausted) {
  QuantdServer::Options options = LoopbackOptions(TempDir("quota_jobs"));
  options.max_data_bytes = 4 << 20;  // the job store takes about 140 kB of it
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::QuantizationService::NewStub((*server)->InProcessChannel());
  std::ofstream(options.data_dir + "/m.pt") << "PK";
  std::ofstream(options.data_dir + "/c.bin", std::ios::binary) << std::string(3073, '\x01');
  v1::QuantizeJobRequest request;
  request.mutable_model()->set_path("m.pt");
  request.mutable_calibration()->mutable_dataset()->set_path("c.bin");
  request.mutable_calibration()->mutable_dataset()->set_format(v1::DATASET_FORMAT_CIFAR10_BINARY);
  auto submit = [&] {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::Job job;
    return stub->QuantizeJob(&context, request, &job);
  };
  std::ofstream(options.data_dir + "/filler", std::ios::binary) << std::string((4 << 20) - (64 << 10), 'f');
  grpc::Status full = submit();
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << full.error_message();
  EXPECT_THAT(full.error_message(), HasSubstr("QuantizeJob's job record"));
  EXPECT_THAT(full.error_message(), HasSubstr("--max_data_bytes"));
  std::filesystem::remove(options.data_dir + "/filler");
  grpc::Status room = submit();
  EXPECT_TRUE(room.ok()) << room.error_message();
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
}

// Uploads past --max_concurrent_uploads are refused at their start, both
// methods counting together, and a finished upload frees its place.
TEST(ServerUploadCapTest, AnUploadPastTheCapIsResourceExhaustedUntilOneFinishes) {
  QuantdServer::Options options = LoopbackOptions(TempDir("upload_cap"));
  options.max_concurrent_uploads = 1;
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::QuantizationService::NewStub((*server)->InProcessChannel());
  const std::string bytes = "a dataset's bytes";

  grpc::ClientContext open_context;
  SetDeadline(open_context);
  v1::BlobInfo open_blob;
  auto open = stub->UploadDataset(&open_context, &open_blob);
  v1::UploadDatasetRequest metadata;
  metadata.mutable_metadata()->set_size_bytes(bytes.size());
  ASSERT_TRUE(open->Write(metadata));
  // The call has reached the server once it holds its place.
  for (int waited_ms = 0; (*server)->uploads_in_progress() < 1 && waited_ms < 5000; waited_ms += 5) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ((*server)->uploads_in_progress(), 1);

  grpc::ClientContext refused_context;
  SetDeadline(refused_context);
  v1::BlobInfo refused_blob;
  auto refused = stub->UploadModel(&refused_context, &refused_blob);
  v1::UploadModelRequest model_metadata;
  model_metadata.mutable_metadata()->set_size_bytes(bytes.size());
  refused->Write(model_metadata);  // may fail: the server may have ended the call already
  refused->WritesDone();
  grpc::Status status = refused->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(),
              HasSubstr("UploadModel: 1 uploads are in progress (--max_concurrent_uploads); nothing was stored"));

  v1::UploadDatasetRequest chunk;
  chunk.set_chunk_data(bytes);
  ASSERT_TRUE(open->Write(chunk));
  open->WritesDone();
  status = open->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(open_blob.size_bytes(), bytes.size());

  // Its place was given back before its client heard: the next upload goes in.
  EXPECT_EQ((*server)->uploads_in_progress(), 0);
  grpc::ClientContext context;
  SetDeadline(context);
  v1::BlobInfo blob;
  auto writer = stub->UploadModel(&context, &blob);
  ASSERT_TRUE(writer->Write(model_metadata));
  v1::UploadModelRequest model_chunk;
  model_chunk.set_chunk_data(bytes);
  ASSERT_TRUE(writer->Write(model_chunk));
  writer->WritesDone();
  status = writer->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
}

// A client trickling bytes past its first idle timeout loses the upload,
// on the server's clock (a fake one here): a byte now and then would
// otherwise hold its quota reservation for as long as it keeps sending.
// The first minute is the grace either way: the idle timeout's, or one
// minute when uploads never time out idle.
class ServerUploadRateTest : public ::testing::TestWithParam<absl::Duration> {};

TEST_P(ServerUploadRateTest, AnUploadSlowerThanTheMinimumRateIsDropped) {
  worker::FakeClock clock;
  QuantdServer::Options options = LoopbackOptions(TempDir("upload_rate"));
  options.upload_idle_timeout = GetParam();
  options.upload_min_bytes_per_second = 1000;
  options.clock = &clock;
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::QuantizationService::NewStub((*server)->InProcessChannel());
  auto upload = [&](const std::vector<std::pair<absl::Duration, int>>& chunks, v1::BlobInfo* blob) {
    grpc::ClientContext context;
    SetDeadline(context);
    auto writer = stub->UploadDataset(&context, blob);
    int64_t total = 0;
    for (const auto& [unused, bytes] : chunks) total += bytes;
    v1::UploadDatasetRequest request;
    request.mutable_metadata()->set_size_bytes(static_cast<uint64_t>(total));
    EXPECT_TRUE(writer->Write(request));
    for (const auto& [wait, bytes] : chunks) {
      clock.Advance(wait);
      request.Clear();
      request.set_chunk_data(std::string(bytes, 'z'));
      if (!writer->Write(request)) break;  // dropped
    }
    writer->WritesDone();
    return writer->Finish();
  };
  // The server checks a chunk at the clock's time when it handles it, which
  // may come after a later advance here: each case holds either way. (Its
  // clock starts with the call, before the first advance: on the in-process
  // channel a client write returns only once the server is reading.)
  // 300 bytes in two minutes or more: past the first, far below 1000 bytes/s.
  v1::BlobInfo slow;
  grpc::Status status =
      upload({{absl::Seconds(1), 100}, {absl::Seconds(120), 100}, {absl::Seconds(120), 100}}, &slow);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("UploadDataset: "));
  EXPECT_THAT(status.error_message(), HasSubstr(" bytes/s, below --upload_min_bytes_per_second=1000; the upload was "
                                                "dropped and nothing was stored"));
  // As slow, but within the first minute: kept.
  v1::BlobInfo early;
  status = upload({{absl::Seconds(1), 100}, {absl::Seconds(58), 100}}, &early);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(early.size_bytes(), 200u);
  // A long pause after a fast start, still 1000 bytes/s on average: kept.
  v1::BlobInfo steady;
  status = upload({{absl::ZeroDuration(), 70000}, {absl::Seconds(30), 1}, {absl::Seconds(31), 100}}, &steady);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(steady.size_bytes(), 70101u);
  // Nothing is left of the dropped one.
  for (const auto& entry : std::filesystem::directory_iterator(options.data_dir + "/blobs")) {
    EXPECT_NE(entry.path().filename().string().rfind(".tmp.", 0), 0u) << entry.path();
  }
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
}

INSTANTIATE_TEST_SUITE_P(IdleTimeouts, ServerUploadRateTest,
                         ::testing::Values(absl::Seconds(60), absl::ZeroDuration()),
                         [](const auto& info) { return info.param == absl::ZeroDuration() ? "Never" : "OneMinute"; });

// A TCP relay on loopback to `target_port` that can freeze: it then moves no
// byte either way and keeps both sockets open, as a client behind a cut
// network or in a suspended VM does (no FIN, no RST ever reaches the server).
class FreezableRelay {
 public:
  explicit FreezableRelay(int target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), length) == 0 && ::listen(listen_fd_, 4) == 0 &&
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
      port_ = ntohs(address.sin_port);
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~FreezableRelay() {
    stopping_.store(true);
    thread_.join();
    for (int fd : fds_) {
      if (fd >= 0) ::close(fd);
    }
    ::close(listen_fd_);
  }
  int port() const { return port_; }
  void Freeze() { frozen_.store(true); }

 private:
  int ConnectToTarget() const {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(target_port_);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }
  // fds_ holds pairs: [client, server, client, server, ...].
  void Run() {
    while (!stopping_.load()) {
      std::vector<pollfd> polled{{listen_fd_, POLLIN, 0}};
      if (!frozen_.load()) {
        for (int fd : fds_) polled.push_back({fd, POLLIN, 0});
      }
      if (::poll(polled.data(), polled.size(), 20) <= 0) continue;
      if (polled[0].revents & POLLIN) {
        const int client = ::accept(listen_fd_, nullptr, nullptr);
        const int server = ConnectToTarget();
        if (client >= 0 && server >= 0) {
          fds_.push_back(client);
          fds_.push_back(server);
        }
      }
      char buffer[16384];
      for (size_t i = 1; i < polled.size(); ++i) {
        if (!(polled[i].revents & (POLLIN | POLLHUP))) continue;
        const size_t index = i - 1;
        const int peer = fds_[index ^ 1];
        const ssize_t n = ::read(polled[i].fd, buffer, sizeof(buffer));
        if (n > 0 && ::send(peer, buffer, n, MSG_NOSIGNAL) == n) continue;
        // One side closed (or failed): close the pair; poll skips -1.
        for (size_t end : {index, index ^ 1}) {
          if (fds_[end] >= 0) ::close(fds_[end]);
          fds_[end] = -1;
        }
      }
    }
  }

  const int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> frozen_{false};
  std::atomic<bool> stopping_{false};
  std::vector<int> fds_;  // only the relay's thread touches it until joined
  std::thread thread_;
};

double GaugeValue(const std::string& scrape, const std::string& name) {
  std::istringstream lines(scrape);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return std::nan("");
}

// A client that vanished without closing its connection (here: a relay that
// froze) holds no call for ever: the server's keepalive ping goes
// unanswered and the connection, with its watch stream, is closed. A client
// that answers keeps its quiet stream.
TEST(ServerKeepaliveTest, AWatchOfAVanishedClientEndsAndALiveQuietOneStays) {
  QuantdServer::Options options = LoopbackOptions(TempDir("keepalive"));
  // Pings every 300 ms; an answer may take 2 s (a loaded CI machine) before
  // the peer counts as gone.
  options.keepalive_time = absl::Milliseconds(300);
  options.keepalive_timeout = absl::Seconds(2);
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto in_flight = [&] {
    return GaugeValue(prometheus::TextSerializer().Serialize((*server)->metrics().registry()->Collect()),
                      "quantd_grpc_requests_in_flight");
  };
  FreezableRelay relay((*server)->grpc_port());
  ASSERT_NE(relay.port(), 0);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(relay.port()), grpc::InsecureChannelCredentials());
  grpc::ClientContext context;  // no deadline: a watch lasts as long as the client wants
  HealthCheckRequest request;
  request.set_service("quantd.v1.QuantizationService");
  auto reader = Health::NewStub(channel)->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(in_flight(), 1);

  // Quiet for six keepalive periods, answered by the live client: kept.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(in_flight(), 1);
  (*server)->health().SetServingStatus("quantd.v1.QuantizationService", HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);

  relay.Freeze();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (in_flight() != 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(in_flight(), 0) << "the vanished client's watch is still open";
  context.TryCancel();
  reader->Finish();
  // The server serves on.
  grpc::ClientContext check_context;
  SetDeadline(check_context);
  EXPECT_TRUE(Health::NewStub((*server)->InProcessChannel())->Check(&check_context, request, &response).ok());
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
}

TEST_F(ServerTest, InterceptorRecordsRequests) {
  HealthCheckResponse response;
  ASSERT_TRUE(Check("", &response).ok());
  ASSERT_TRUE(Check("", &response).ok());
  auto stub = v1::QuantizationService::NewStub(channel_);
  grpc::ClientContext context;
  SetDeadline(context);
  v1::Job job;
  stub->GetJob(&context, v1::GetJobRequest(), &job);

  std::string text = Scrape();
  EXPECT_THAT(text, HasSubstr("quantd_grpc_requests_total{code=\"OK\","
                              "method=\"grpc.health.v1.Health/Check\"} 2"));
  EXPECT_THAT(text, HasSubstr("quantd_grpc_requests_total{code=\"INVALID_ARGUMENT\","
                              "method=\"quantd.v1.QuantizationService/GetJob\"} 1"));
  EXPECT_THAT(text, HasSubstr("quantd_grpc_request_duration_seconds_count{"
                              "method=\"grpc.health.v1.Health/Check\"} 2"));
}

TEST_F(ServerTest, ShutdownStopsServingAndIsIdempotent) {
  const std::string target = "127.0.0.1:" + std::to_string(server_->grpc_port());
  auto check_over_tcp = [&]() {
    auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    HealthCheckResponse response;
    return Health::NewStub(channel)->Check(&context, HealthCheckRequest(), &response);
  };
  ASSERT_TRUE(check_over_tcp().ok());
  server_->Shutdown(absl::Seconds(1));
  EXPECT_FALSE(check_over_tcp().ok());  // the port is closed
  EXPECT_EQ(server_->health().GetServingStatus(""), HealthCheckResponse::NOT_SERVING);
  server_->Shutdown(absl::Seconds(1));  // a second call changes nothing and returns
  EXPECT_FALSE(check_over_tcp().ok());
  // The data dir is released with the server: a new one can own it.
  const std::string data_dir = server_->options().data_dir;
  server_.reset();
  QuantdServer::Options options;
  options.grpc_port = 0;
  options.metrics_port = -1;
  options.data_dir = data_dir;
  auto next = QuantdServer::Start(options);
  ASSERT_TRUE(next.ok()) << next.status();
  auto refused = QuantdServer::Start(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("in use by another quantd"));
}

// Runs a task on `executor`'s one thread that holds it until `release`.
// A server on `dir` with one token (`token_line`: "<name> <role> <token>")
// and one RPC thread with room for one queued call.
absl::StatusOr<std::unique_ptr<QuantdServer>> StartWithOneRpcThread(const std::string& dir,
                                                                   const std::string& token_line) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokens") << token_line << "\n";
  QuantdServer::Options options = LoopbackOptions(dir + "/data");
  options.token_file = dir + "/tokens";
  options.rpc_threads = 1;
  options.rpc_queue_capacity = 1;
  return QuantdServer::Start(options);
}

bool OccupyTheOnlyThread(BlockingExecutor& executor, absl::Notification& release) {
  // Shared: the task may still be inside Notify() when the wait returns.
  auto stuck = std::make_shared<absl::Notification>();
  if (!executor.TrySchedule([stuck, &release] {
        stuck->Notify();
        release.WaitForNotification();
      })) {
    return false;
  }
  stuck->WaitForNotification();
  return true;
}

// Handlers hand their store and file work to the RPC executor: while its
// threads are stuck, calls that need them wait (and beyond its queue are
// refused at once), but gRPC's own threads still answer everything else.
TEST(ServerExecutorTest, BlockingWorkWaitsOnTheExecutorAndAFullQueueIsResourceExhausted) {
  QuantdServer::Options options = LoopbackOptions(TempDir("executor"));
  options.rpc_threads = 1;
  options.rpc_queue_capacity = 2;
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = (*server)->InProcessChannel();
  auto stub = v1::QuantizationService::NewStub(channel);
  BlockingExecutor& executor = (*server)->rpc_executor();
  absl::Notification release;
  ASSERT_TRUE(OccupyTheOnlyThread(executor, release));

  // One GetJob and one WatchJob fill the queue.
  grpc::Status waiting_status;
  absl::Notification waiting_done;
  std::thread waiting([&] {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::GetJobRequest request;
    request.set_id("job-1");
    v1::Job job;
    waiting_status = stub->GetJob(&context, request, &job);
    waiting_done.Notify();
  });
  grpc::ClientContext watch_context;
  SetDeadline(watch_context);
  v1::WatchJobRequest watch_request;
  watch_request.set_id("job-1");
  auto watch = stub->WatchJob(&watch_context, watch_request);
  for (int i = 0; i < 1000 && executor.queued() < 2; ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(executor.queued(), 2);

  {  // the queue is full: refused at once, naming the flag
    grpc::ClientContext context;
    SetDeadline(context);
    v1::ListJobsResponse response;
    grpc::Status status = stub->ListJobs(&context, v1::ListJobsRequest(), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(status.error_message(), HasSubstr("--rpc_queue_capacity"));
  }
  {  // calls that need no disk are still answered
    grpc::ClientContext context;
    SetDeadline(context);
    HealthCheckResponse health;
    ASSERT_TRUE(Health::NewStub(channel)->Check(&context, HealthCheckRequest(), &health).ok());
    EXPECT_EQ(health.status(), HealthCheckResponse::SERVING);
    grpc::ClientContext info_context;
    SetDeadline(info_context);
    v1::ServerInfo info;
    EXPECT_TRUE(stub->GetServerInfo(&info_context, v1::GetServerInfoRequest(), &info).ok());
  }
  EXPECT_FALSE(waiting_done.HasBeenNotified());  // its store read has not run yet

  // The watcher gives up while its subscription is still queued.
  watch_context.TryCancel();
  v1::JobEvent event;
  EXPECT_FALSE(watch->Read(&event));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::CANCELLED);

  release.Notify();
  waiting.join();
  EXPECT_EQ(waiting_status.error_code(), grpc::StatusCode::NOT_FOUND) << waiting_status.error_message();
  // The cancelled watch's task ran after the call ended and cleaned up (ASan
  // would see a use after free); the server still serves.
  {
    grpc::ClientContext context;
    SetDeadline(context);
    v1::ListJobsResponse response;
    EXPECT_TRUE(stub->ListJobs(&context, v1::ListJobsRequest(), &response).ok());
  }
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
}

// A call whose caller went away while it waited in the queue (its deadline
// passed) is not run: the client saw DEADLINE_EXCEEDED, so a delete (or a
// submit) done afterwards would be one it believes failed.
TEST(ServerExecutorTest, AQueuedCallWhoseCallerWentAwayIsNotRun) {
  QuantdServer::Options options = LoopbackOptions(TempDir("caller_gone"));
  options.rpc_threads = 1;
  options.rpc_queue_capacity = 4;
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::QuantizationService::NewStub((*server)->InProcessChannel());
  v1::BlobInfo blob;
  {
    grpc::ClientContext context;
    SetDeadline(context);
    auto writer = stub->UploadModel(&context, &blob);
    v1::UploadModelRequest chunk;
    chunk.mutable_metadata()->set_filename("model.pt");
    writer->Write(chunk);
    chunk.Clear();
    chunk.set_chunk_data("hello world");
    writer->Write(chunk);
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
  }
  BlockingExecutor& executor = (*server)->rpc_executor();
  absl::Notification release;
  ASSERT_TRUE(OccupyTheOnlyThread(executor, release));
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    v1::DeleteBlobRequest request;
    request.set_id(blob.blob_id());
    v1::DeleteBlobResponse response;
    EXPECT_EQ(stub->DeleteBlob(&context, request, &response).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  release.Notify();
  // The executor runs in order: the delete's turn came before this.
  grpc::ClientContext context;
  SetDeadline(context);
  v1::GetBlobRequest request;
  request.set_id(blob.blob_id());
  v1::BlobInfo still;
  const grpc::Status status = stub->GetBlob(&context, request, &still);
  EXPECT_TRUE(status.ok()) << "the blob was deleted after its caller gave up: " << status.error_message();
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(options.data_dir);
}

// An evaluation belongs to whoever started it: another submitter may not
// cancel it (an admin may). The cancel goes through the store, for the
// server that runs it (here a record of another server's, still fresh).
TEST(ServerEvaluationTest, OnlyWhoStartedAnEvaluationOrAnAdminMayCancelIt) {
  const std::string dir = TempDir("cancel_evaluation");
  std::filesystem::create_directories(dir);
  const std::string alice = "alice-token-0123456789", bob = "bob-token-0123456789",
                    root = "root-token-0123456789";
  std::ofstream(dir + "/tokens") << "alice submit " << alice << "\nbob submit " << bob << "\nroot admin " << root
                                 << "\n";
  QuantdServer::Options options = LoopbackOptions(dir + "/data");
  options.token_file = dir + "/tokens";
  auto server = QuantdServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  // resnet8 v1, published by a job that nobody ran (the store keeps
  // evaluations only of published versions).
  (*server)->pool().Stop();
  worker::Job job;
  job.id = "job-published";
  job.spec.model_path = "model.pt";
  job.spec.model_name = "resnet8";
  job.request_fingerprint = job.id;
  worker::JobStore& store = (*server)->pool().store();
  ASSERT_TRUE(store.Create(job, 100).ok());
  ASSERT_TRUE(store.ClaimNext(absl::Now(), "test", absl::Hours(1)).ok());
  ASSERT_TRUE(store.Finish(job.id, 1, worker::JobState::kSucceeded, worker::JobResult(), absl::Now()).ok());
  worker::Evaluation running;
  running.id = "eval-alices";
  running.spec.model_name = "resnet8";
  running.spec.model_version = 1;
  running.spec.owner = "alice";
  running.create_time = running.update_time = absl::Now();
  running.samples_total = 10000;
  worker::JobStore::EvaluationIndex index;
  index.model_name = "resnet8";
  index.model_version = 1;
  ASSERT_TRUE(store.PutEvaluation(running.id, worker::EncodeEvaluation(running), index).ok());
  auto stub = v1::QuantizationService::NewStub((*server)->InProcessChannel());
  auto cancel = [&](const std::string& token, const std::string& id, v1::Evaluation* evaluation) {
    grpc::ClientContext context;
    SetDeadline(context);
    context.AddMetadata("authorization", "Bearer " + token);
    v1::CancelEvaluationRequest request;
    request.set_id(id);
    request.set_reason("wrong dataset");
    return stub->CancelEvaluation(&context, request, evaluation);
  };
  v1::Evaluation evaluation;
  grpc::Status refused = cancel(bob, running.id, &evaluation);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(refused.error_message(), HasSubstr("\"alice\""));
  EXPECT_EQ(*(*server)->pool().store().CancelRequest(running.id), std::nullopt);
  EXPECT_EQ(cancel(bob, "eval-nope", &evaluation).error_code(), grpc::StatusCode::NOT_FOUND);
  for (const std::string& token : {alice, root}) {
    grpc::Status ok = cancel(token, running.id, &evaluation);
    ASSERT_TRUE(ok.ok()) << ok.error_message();
    EXPECT_EQ(evaluation.state(), v1::EVALUATION_STATE_RUNNING);  // ends at its next batch, where it runs
    EXPECT_EQ(*(*server)->pool().store().CancelRequest(running.id), std::optional<std::string>("wrong dataset"));
  }
  // Finished: FAILED_PRECONDITION, and no request left behind.
  running.state = worker::EvaluationState::kSucceeded;
  worker::JobStore::EvaluationIndex finished = index;
  finished.finished = true;
  ASSERT_TRUE(store.PutEvaluation(running.id, worker::EncodeEvaluation(running), finished).ok());
  EXPECT_EQ(cancel(alice, running.id, &evaluation).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(*(*server)->pool().store().CancelRequest(running.id), std::nullopt);
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(dir);
}

// Tokens are in memory: a call is admitted before it queues for the RPC
// executor, so callers without a valid token take no place in its queue
// (a flood of them would otherwise crowd out those with one), and get the
// answer that tells them why.
TEST(ServerExecutorTest, CallsWithoutAValidTokenAreRefusedBeforeTheyQueue) {
  const std::string dir = TempDir("admit_first");
  const std::string token = "reader-token-0123456789";
  auto server = StartWithOneRpcThread(dir, "reader read " + token);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::QuantizationService::NewStub((*server)->InProcessChannel());
  BlockingExecutor& executor = (*server)->rpc_executor();
  absl::Notification release;
  ASSERT_TRUE(OccupyTheOnlyThread(executor, release));
  ASSERT_TRUE(executor.TrySchedule([] {}));  // the queue is full

  auto get_job = [&](const std::string& authorization) {
    grpc::ClientContext context;
    SetDeadline(context);
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
    v1::GetJobRequest request;
    request.set_id("job-1");
    v1::Job job;
    return stub->GetJob(&context, request, &job);
  };
  EXPECT_EQ(get_job("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(get_job("Bearer not-a-token-at-all").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(get_job("Bearer " + token).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  {  // a role too low is refused before the queue too
    grpc::ClientContext context;
    SetDeadline(context);
    context.AddMetadata("authorization", "Bearer " + token);
    v1::DeleteJobRequest request;
    request.set_id("job-1");
    v1::DeleteJobResponse response;
    EXPECT_EQ(stub->DeleteJob(&context, request, &response).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  release.Notify();
  for (int i = 0; i < 1000 && executor.queued() > 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(get_job("Bearer " + token).error_code(), grpc::StatusCode::NOT_FOUND);
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(dir);
}

// A call that changes state but never runs (the RPC threads are busy) is
// audited all the same: the audit log said nothing of it.
TEST(ServerExecutorTest, AMutatingCallRefusedAsBusyIsAudited) {
  const std::string dir = TempDir("audit_busy");
  const std::string token = "submit-token-0123456789";
  auto server = StartWithOneRpcThread(dir, "ci submit " + token);
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::QuantizationService::NewStub((*server)->InProcessChannel());
  BlockingExecutor& executor = (*server)->rpc_executor();
  absl::Notification release;
  ASSERT_TRUE(OccupyTheOnlyThread(executor, release));
  ASSERT_TRUE(executor.TrySchedule([] {}));  // the queue is full

  // The log goes to stderr: caught in a file for the call.
  const std::string log_path = dir + "/stderr.log";
  const int saved_stderr = ::dup(2);
  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(log_fd, 0);
  ::dup2(log_fd, 2);
  grpc::Status status;
  {
    grpc::ClientContext context;
    SetDeadline(context);
    context.AddMetadata("authorization", "Bearer " + token);
    v1::CancelJobRequest request;
    request.set_id("job-1");
    v1::Job job;
    status = stub->CancelJob(&context, request, &job);
  }
  ::dup2(saved_stderr, 2);
  ::close(saved_stderr);
  ::close(log_fd);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  std::ifstream in(log_path);
  const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_THAT(log, ::testing::HasSubstr("audit: who=ci peer="));
  EXPECT_THAT(log, ::testing::HasSubstr("method=CancelJob target=- result=RESOURCE_EXHAUSTED"));
  release.Notify();
  (*server)->Shutdown(absl::Seconds(5));
  std::filesystem::remove_all(dir);
}

TEST(ServerOptionsTest, RejectsBadOptions) {
  QuantdServer::Options options;
  options.grpc_port = 0;
  options.metrics_port = -1;
  options.data_dir = TempDir("bad_options");

  QuantdServer::Options bad = options;
  bad.workers = 0;
  EXPECT_EQ(QuantdServer::Start(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = options;
  bad.grpc_port = 70000;
  EXPECT_EQ(QuantdServer::Start(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = options;
  bad.metrics_port = -2;
  EXPECT_EQ(QuantdServer::Start(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = options;
  bad.metrics_tls_client_ca_file = "/etc/ca.pem";  // mTLS without TLS
  absl::Status no_tls = QuantdServer::Start(bad).status();
  EXPECT_EQ(no_tls.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_tls.message(), HasSubstr("--metrics_tls_client_ca"));
  bad = options;
  bad.rpc_threads = 0;
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--rpc_threads"));
  bad = options;
  bad.rpc_queue_capacity = 0;
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--rpc_queue_capacity"));
  bad = options;
  bad.model_vet_seconds = 0;
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--model_vet_seconds"));
  bad = options;
  bad.inference_threads = -1;
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--inference_threads"));
  bad = options;
  bad.batch_size_copies = -1;
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--batch_size_copies must be in 0..65536"));
  bad = options;
  bad.upload_idle_timeout = absl::Seconds(-1);
  EXPECT_THAT(QuantdServer::Start(bad).status().message(),
              HasSubstr("--upload_idle_timeout_seconds must be in 0..86400"));
  bad = options;
  bad.upload_min_bytes_per_second = -1;
  EXPECT_THAT(QuantdServer::Start(bad).status().message(),
              HasSubstr("--upload_min_bytes_per_second must be 0 (no minimum) or more, got -1"));
  bad = options;
  bad.max_concurrent_uploads = -1;
  EXPECT_THAT(QuantdServer::Start(bad).status().message(),
              HasSubstr("--max_concurrent_uploads must be 0 (no cap) or more, got -1"));
  bad = options;
  bad.keepalive_time = absl::Seconds(-1);
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--keepalive_seconds must be in 0..86400"));
  bad = options;
  bad.workers = 0;
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--workers"));  // flags named, not prose
  bad = options;
  bad.read_roots = {"/mnt/datasets", ""};  // "--read_roots=/mnt/datasets,": the empty entry matched every path
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--read_roots: \"\" is not an absolute"));
  bad.read_roots = {"datasets"};
  EXPECT_THAT(QuantdServer::Start(bad).status().message(), HasSubstr("--read_roots"));
  bad.read_roots = {options.data_dir + "/no-such-folder"};  // a typo: every path under it would be refused later
  EXPECT_THAT(QuantdServer::Start(bad).status().message(),
              HasSubstr("--read_roots: \"" + options.data_dir + "/no-such-folder\" is not a folder on this machine"));
}

TEST(ServerOptionsTest, DataDirThatIsAFileFails) {
  std::string file = TempDir("data_is_file");
  std::ofstream(file) << "x";
  QuantdServer::Options options;
  options.grpc_port = 0;
  options.metrics_port = -1;
  options.data_dir = file;
  auto server = QuantdServer::Start(options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr(file));
  std::filesystem::remove(file);
}

TEST(PortFileTest, WritesJson) {
  std::string path = TempDir("ports.json");
  ASSERT_TRUE(WritePortFile(path, 1234, 5678).ok());
  std::ifstream in(path);
  std::stringstream content;
  content << in.rdbuf();
  EXPECT_THAT(content.str(), HasSubstr("\"grpc_port\": 1234"));
  EXPECT_THAT(content.str(), HasSubstr("\"metrics_port\": 5678"));
  std::filesystem::remove(path);
}

TEST(PortFileTest, UnwritableDirectoryFails) {
  EXPECT_FALSE(WritePortFile("/nonexistent-dir/ports.json", 1, 2).ok());
}

}  // namespace
}  // namespace quantd
