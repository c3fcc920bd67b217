// Issue #4 end to end: the real quantd and quantctl, the real ResNet8 and
// CIFAR-10 fixtures (linked into the server's data dir), a third-party JSON
// reflection client, PyTorch loading the artifact, kill -9 and restart.

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <regex>
#include <set>
#include <thread>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
#include "quantd/v1/quantd.grpc.pb.h"
#include "tests/integration/test_util/subprocess.h"

namespace quantd {
namespace {

namespace fs = std::filesystem;
using ::quantd::test_util::MakeTempDir;
using ::quantd::test_util::ReadFileOrEmpty;
using ::quantd::test_util::RunCommand;
using ::quantd::test_util::RunResult;
using ::quantd::test_util::Subprocess;
using ::testing::AllOf;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr absl::Duration kStartTimeout = absl::Seconds(30);
// A bound, not a wait: the full ResNet8 job with evaluation takes about 10 s
// here and about 100 s under ASan (the ctest timeout is 300 s).
constexpr absl::Duration kJobTimeout = absl::Seconds(240);
constexpr char kFusion[] =
    "conv1,bn1,relu1;layer1.conv1,layer1.bn1,layer1.relu1;layer1.conv2,layer1.bn2;"
    "layer2.conv1,layer2.bn1,layer2.relu1;layer2.conv2,layer2.bn2;"
    "layer3.conv1,layer3.bn1,layer3.relu1;layer3.conv2,layer3.bn2";
constexpr char kModel[] = "fixtures/models/resnet8_fp32.torchscript.pt";
constexpr char kCalib[] = "fixtures/cifar10/calib_batch.bin";
constexpr char kTest[] = "fixtures/cifar10/test_batch.bin";
constexpr char kVal[] = "fixtures/cifar10/val_batch.bin";

// One quantd on ephemeral ports over a data dir that survives restarts.
class Quantd {
 public:
  explicit Quantd(std::vector<std::string> flags = {}) : flags_(std::move(flags)) {
    dir_ = MakeTempDir("quantd_jobs");
    fs::create_directories(dir_ + "/data");
    fs::create_directory_symlink(fs::absolute(FIXTURES_DIR), dir_ + "/data/fixtures");
  }
  ~Quantd() {
    child_.reset();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // `same_port`: on the gRPC port of the previous start, as a restarted
  // server behind a fixed address is (clients reconnect to it).
  ::testing::AssertionResult Start(bool same_port = false) {
    fs::remove(dir_ + "/ports.json");
    std::vector<std::string> argv = {QUANTD_BIN, "--bind_address=127.0.0.1",
                                     absl::StrCat("--grpc_port=", same_port ? port_ : 0),
                                     "--metrics_port=-1", "--data_dir=" + dir_ + "/data",
                                     "--port_file=" + dir_ + "/ports.json",
                                     "--shutdown_grace_seconds=2",
                                     // data/fixtures links to the shared fixtures
                                     "--read_roots=" + fs::canonical(FIXTURES_DIR).string()};
    argv.insert(argv.end(), flags_.begin(), flags_.end());
    argv.insert(argv.begin(), launcher_.begin(), launcher_.end());
    Subprocess::Options options;
    options.stderr_path = dir_ + "/quantd.log." + std::to_string(++starts_);
    auto child = Subprocess::Start(argv, options);
    if (!child.ok()) return ::testing::AssertionFailure() << child.status();
    child_ = std::move(*child);
    const absl::Time deadline = absl::Now() + kStartTimeout;
    while (absl::Now() < deadline) {
      if (auto code = child_->Poll(); code.has_value()) {
        return ::testing::AssertionFailure() << "quantd exited " << *code << ": " << log();
      }
      if (fs::exists(dir_ + "/ports.json")) {
        const nlohmann::json ports = nlohmann::json::parse(ReadFileOrEmpty(dir_ + "/ports.json"));
        port_ = ports["grpc_port"].get<int>();
        http_port_ = ports["metrics_port"].get<int>();
        return ::testing::AssertionSuccess();
      }
      child_->WaitFor(absl::Milliseconds(20));
    }
    return ::testing::AssertionFailure() << "quantd did not start: " << log();
  }

  RunResult Ctl(std::vector<std::string> args, absl::Duration timeout = kJobTimeout) {
    std::vector<std::string> argv = {QUANTCTL_BIN, absl::StrCat("--server=127.0.0.1:", port_)};
    argv.insert(argv.end(), args.begin(), args.end());
    auto result = RunCommand(argv, timeout);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : RunResult{};
  }

  nlohmann::json Job(const std::string& id) {
    RunResult r = Ctl({"--json", "job", id});
    auto json = nlohmann::json::parse(r.out, nullptr, false);
    return json.is_discarded() ? nlohmann::json::object() : json;
  }

  // Polls GetJob until the job is in a terminal state.
  nlohmann::json WaitDone(const std::string& id) {
    const absl::Time deadline = absl::Now() + kJobTimeout;
    nlohmann::json job;
    while (absl::Now() < deadline) {
      job = Job(id);
      std::string state = job.value("state", "");
      if (state == "JOB_STATE_SUCCEEDED" || state == "JOB_STATE_FAILED" || state == "JOB_STATE_CANCELLED") {
        return job;
      }
      absl::SleepFor(absl::Milliseconds(50));  // poll interval
    }
    ADD_FAILURE() << "job " << id << " did not finish: " << job.dump();
    return job;
  }

  // A command line quantd's own is appended to (and exec'd by), from the next Start.
  void set_launcher(std::vector<std::string> launcher) { launcher_ = std::move(launcher); }
  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }
  // The HTTP port (/metrics, /v2) when started with --metrics_port=0.
  std::string http_url() const { return absl::StrCat("http://127.0.0.1:", http_port_); }
  std::string log() const { return ReadFileOrEmpty(dir_ + "/quantd.log." + std::to_string(starts_)); }
  std::string dir() const { return dir_; }
  Subprocess& child() { return *child_; }

 private:
  std::vector<std::string> flags_;
  std::vector<std::string> launcher_;
  std::string dir_;
  std::unique_ptr<Subprocess> child_;
  int port_ = 0;
  int http_port_ = -1;
  int starts_ = 0;
};

// "job-... QUEUED" -> "job-...".
std::string JobIdFrom(const std::string& submit_out) { return submit_out.substr(0, submit_out.find(' ')); }

std::vector<std::string> SubmitArgs(std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"submit", absl::StrCat("--model=", kModel),
                                   absl::StrCat("--calib=", kCalib), "--preset=fbgemm",
                                   absl::StrCat("--fusion=", kFusion)};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::vector<std::string> TemporaryFiles(const std::string& root) {
  std::vector<std::string> found;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    std::string name = entry.path().filename().string();
    if (name.rfind(".tmp.", 0) == 0 || name.find(".part") != std::string::npos) found.push_back(name);
  }
  return found;
}

// The test images the evaluating tests use: all of them, or under the
// sanitizers (about 30 times slower) the first 1000.
#ifdef QUANTD_SANITIZED
constexpr int kServedImages = 1000;
#else
constexpr int kServedImages = 10000;
#endif

TEST(JobsIntegrationTest, SubmitWaitEvaluateDownloadAndLoadInPyTorch) {
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  RunResult submit = quantd.Ctl(
      SubmitArgs({absl::StrCat("--eval=", kTest), absl::StrCat("--eval_max_samples=", kServedImages), "--wait"}));
  ASSERT_EQ(submit.exit_code, 0) << submit.out << submit.err << quantd.log();
  EXPECT_THAT(submit.out, HasSubstr("state SUCCEEDED"));
  EXPECT_THAT(submit.out, HasSubstr("phase CALIBRATING"));
  EXPECT_THAT(submit.out, HasSubstr("calibration 10/10"));
  EXPECT_THAT(submit.out, HasSubstr("phase EVALUATING"));
  nlohmann::json job = quantd.Job(JobIdFrom(submit.out));
  const nlohmann::json& result = job["result"];
  EXPECT_EQ(result["fusedGroups"].size(), 7u);
  EXPECT_GT(result["layers"].size(), 5u);
  EXPECT_EQ(result["int8Accuracy"]["total"], std::to_string(kServedImages));
  if (kServedImages == 10000) {
    EXPECT_EQ(result["fp32Accuracy"]["correct"], "8719");  // the fixture's FP32 figure
  }
  EXPECT_EQ(result["phaseTimings"].size(), 6u);
  // The kernel engine, why, the CPU it was chosen for, what the artifact
  // needs, and the int8-versus-FP32 check.
  const std::string engine = result["kernelEngine"];
  EXPECT_EQ(result["kernelChoice"]["engine"], engine);
  EXPECT_FALSE(result["kernelChoice"]["reason"].get<std::string>().empty());
  EXPECT_FALSE(result["cpu"]["kernelIsa"].get<std::string>().empty());
  EXPECT_EQ(result["requirements"]["kernelEngine"], engine);
  EXPECT_EQ(result["requirements"]["activationQuantMax"], "127");  // fbgemm: 7-bit activations, exact anywhere
  EXPECT_EQ(result["quality"]["passed"], true);
  EXPECT_GE(result["quality"]["top1Agreement"].get<double>(), 0.85);
  EXPECT_FALSE(result.contains("warnings") && !result["warnings"].empty());
  EXPECT_THAT(submit.out, HasSubstr("kernel_choice: "));
  EXPECT_THAT(submit.out, HasSubstr("quality: passed on 100 calibration images"));
  const std::string sha = result["artifactSha256"];
  const std::string artifact = result["artifactId"];
  nlohmann::json artifact_json = nlohmann::json::parse(quantd.Ctl({"--json", "artifacts", artifact}).out, nullptr, false);
  ASSERT_FALSE(artifact_json.is_discarded());
  EXPECT_EQ(artifact_json["runtimeKernelEngine"], engine) << artifact_json.dump();

  const std::string file = quantd.dir() + "/int8.pt";
  RunResult download = quantd.Ctl({"download", artifact, "-o", file});
  ASSERT_EQ(download.exit_code, 0) << download.err;
  auto sum = RunCommand({"/usr/bin/sha256sum", file}, absl::Seconds(30));
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ(sum->out.substr(0, 64), sha);

  auto python = RunCommand(
      {"/usr/bin/python3", "-c",
       "import sys, torch\n"
       "torch.backends.quantized.engine = sys.argv[2]\n"
       "m = torch.jit.load(sys.argv[1])\n"
       "y = m(torch.rand(4, 3, 32, 32) * 255)\n"
       "print(tuple(y.shape))\n",
       file, engine},
      absl::Seconds(120));
  ASSERT_TRUE(python.ok());
  EXPECT_EQ(python->exit_code, 0) << python->err;
  EXPECT_THAT(python->out, HasSubstr("(4, 10)"));

  // Streamed in small chunks (many windows read from the store), the same
  // bytes; an artifact damaged in the store ends the stream DATA_LOSS and
  // leaves no file.
  const std::string small_chunks = quantd.dir() + "/int8-small-chunks.pt";
  RunResult chunked = quantd.Ctl({"download", artifact, "-o", small_chunks, "--chunk_size=1000"});
  ASSERT_EQ(chunked.exit_code, 0) << chunked.err;
  EXPECT_EQ(ReadFileOrEmpty(small_chunks), ReadFileOrEmpty(file));
  {  // Below 4 KiB chunks are sent 4 KiB big: 1-byte ones cost a store read each.
    auto stub = v1::QuantizationService::NewStub(
        grpc::CreateChannel(quantd.target(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::DownloadArtifactRequest request;
    request.set_id(artifact);
    request.set_chunk_size(1);
    auto reader = stub->DownloadArtifact(&context, request);
    v1::DownloadArtifactResponse response;
    size_t largest = 0, chunks = 0;
    while (reader->Read(&response)) {
      if (response.payload_case() != v1::DownloadArtifactResponse::kChunkData) continue;
      largest = std::max(largest, response.chunk_data().size());
      ++chunks;
    }
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(largest, std::min<size_t>(4096, ReadFileOrEmpty(file).size()));
    EXPECT_EQ(chunks, (ReadFileOrEmpty(file).size() + 4095) / 4096);
  }
  const std::string stored = quantd.dir() + "/data/artifacts/" + sha + ".pt";
  std::string damaged = ReadFileOrEmpty(stored);
  ASSERT_FALSE(damaged.empty());
  damaged[damaged.size() / 2] ^= 0x5a;
  std::ofstream(stored, std::ios::binary | std::ios::trunc) << damaged;
  const std::string refused_file = quantd.dir() + "/int8-damaged.pt";
  RunResult refused = quantd.Ctl({"download", artifact, "-o", refused_file, "--chunk_size=4096"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, HasSubstr("code 15"));  // DATA_LOSS
  EXPECT_THAT(refused.err, HasSubstr("is corrupted in the store"));
  EXPECT_FALSE(std::filesystem::exists(refused_file));

  RunResult artifacts = quantd.Ctl({"artifacts"});
  EXPECT_THAT(artifacts.out, HasSubstr(artifact));
  // Its file gone (a volume not mounted, a file deleted): the artifact is
  // still listed, so not NOT_FOUND, but what serving its version says.
  ASSERT_TRUE(std::filesystem::remove(stored));
  RunResult missing = quantd.Ctl({"download", artifact, "-o", refused_file});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("code 9"));  // FAILED_PRECONDITION
  EXPECT_THAT(missing.err, HasSubstr(absl::StrCat("artifact ", artifact, " is gone from the artifact store")));
  EXPECT_FALSE(std::filesystem::exists(refused_file));
  // Delete removes the job and, unused now, its artifact.
  EXPECT_EQ(quantd.Ctl({"delete", JobIdFrom(submit.out)}).exit_code, 0);
  RunResult gone = quantd.Ctl({"artifacts", artifact});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_THAT(gone.err, HasSubstr("code 5"));
}

// CIFAR-10 binary records: a label byte, then 3x32x32 pixel bytes (CHW).
struct CifarImages {
  std::vector<uint8_t> labels;
  std::string pixels;  // N * 3072 bytes
};

CifarImages ReadCifar(const std::string& path) {
  const std::string bytes = ReadFileOrEmpty(path);
  CifarImages images;
  for (size_t at = 0; at + 3073 <= bytes.size(); at += 3073) {
    images.labels.push_back(static_cast<uint8_t>(bytes[at]));
    images.pixels.append(bytes, at + 1, 3072);
  }
  return images;
}

inference::ModelInferRequest InferRequest(const std::string& model, const CifarImages& images, size_t first,
                                          size_t count) {
  inference::ModelInferRequest request;
  request.set_model_name(model);
  request.set_id(absl::StrCat("batch-", first));
  auto* input = request.add_inputs();
  input->set_name("input");
  input->set_datatype("UINT8");
  for (int64_t d : {static_cast<int64_t>(count), int64_t{3}, int64_t{32}, int64_t{32}}) input->add_shape(d);
  request.add_raw_input_contents(images.pixels.substr(first * 3072, count * 3072));
  return request;
}

// Top-1 of a served model over every image, 64 per request.
struct Served {
  int64_t correct = 0;
  std::vector<int> predictions;
  grpc::Status status;
};

Served ServeAll(inference::GRPCInferenceService::Stub& stub, const std::string& model, const CifarImages& images) {
  Served served;
  for (size_t first = 0; first < images.labels.size(); first += 64) {
    const size_t count = std::min<size_t>(64, images.labels.size() - first);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    inference::ModelInferResponse response;
    served.status = stub.ModelInfer(&context, InferRequest(model, images, first, count), &response);
    if (!served.status.ok()) return served;
    if (response.raw_output_contents_size() != 1 || response.raw_output_contents(0).size() != count * 10 * 4) {
      served.status = grpc::Status(grpc::StatusCode::INTERNAL, "unexpected output size: " + response.DebugString());
      return served;
    }
    const float* scores = reinterpret_cast<const float*>(response.raw_output_contents(0).data());
    for (size_t n = 0; n < count; ++n) {
      const int best = static_cast<int>(std::max_element(scores + n * 10, scores + n * 10 + 10) - (scores + n * 10));
      served.predictions.push_back(best);
      if (best == images.labels[first + n]) ++served.correct;
    }
  }
  return served;
}

grpc::Status Infer(inference::GRPCInferenceService::Stub& stub, const inference::ModelInferRequest& request,
                   inference::ModelInferResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return stub.ModelInfer(&context, request, response);
}

// curl, as a user would call the REST endpoints: the HTTP status and body.
struct CurlResult {
  int status = 0;
  std::string body;
};

CurlResult Curl(const std::string& url, const std::vector<std::string>& args = {}) {
  std::vector<std::string> argv = {"/usr/bin/curl", "-sS", "-o", "-", "-w", "\n%{http_code}"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(url);
  absl::StatusOr<RunResult> run = RunCommand(argv, absl::Seconds(60));
  EXPECT_TRUE(run.ok() && run->exit_code == 0) << url << ": " << (run.ok() ? run->err : run.status().ToString());
  CurlResult result;
  if (!run.ok()) return result;
  const size_t newline = run->out.rfind('\n');
  if (newline == std::string::npos) return result;
  result.status = std::atoi(run->out.c_str() + newline + 1);
  result.body = run->out.substr(0, newline);
  return result;
}

// The raw FP32 scores of one ModelInfer response.
std::string Scores(const inference::ModelInferResponse& response) {
  return response.raw_output_contents_size() == 1 ? response.raw_output_contents(0) : std::string();
}

// Issue #11: a job with a model name publishes version 1; the Open Inference
// Protocol serves it (and its FP32 source) with exactly the accuracy the job
// measured on the 10000 test images, over gRPC and REST; concurrent requests
// are batched dynamically with bit-identical results; bad requests name
// their field; a second job run alongside inference leaves it error-free and
// gives the same artifact.
//
// Under the sanitizers (about 30 times slower) the same checks run on the
// first kServedImages (1000) test images, against the job's own figures on those.

// Triton's repository index of the models ready to serve.
inference::RepositoryIndexResponse ReadyIndex(inference::GRPCInferenceService::Stub& stub) {
  grpc::ClientContext context;
  inference::RepositoryIndexRequest request;
  request.set_ready(true);
  inference::RepositoryIndexResponse index;
  const grpc::Status status = stub.RepositoryIndex(&context, request, &index);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return index;
}

TEST(JobsIntegrationTest, APublishedVersionServesTheOpenInferenceProtocolExactly) {
  // A long batching delay, so concurrent requests surely meet (a full batch
  // of 64 never waits). Two inference threads: on 2 CPUs every CPU runs
  // passes, so they deliver their results themselves (the other tests run
  // the default, one less than the CPUs, with a completion thread).
  Quantd quantd({"--metrics_port=0", "--max_queue_delay_us=20000", "--inference_threads=2"});
  ASSERT_TRUE(quantd.Start());
  RunResult submit = quantd.Ctl(SubmitArgs({absl::StrCat("--eval=", kTest),
                                             absl::StrCat("--eval_max_samples=", kServedImages),
                                             "--model_name=resnet8", "--wait"}));
  ASSERT_EQ(submit.exit_code, 0) << submit.out << submit.err << quantd.log();
  nlohmann::json job = quantd.Job(JobIdFrom(submit.out));
  const nlohmann::json& result = job["result"];
  ASSERT_EQ(result["modelName"], "resnet8") << job.dump();
  const int64_t job_fp32_correct = std::stoll(result["fp32Accuracy"]["correct"].get<std::string>());
  if (kServedImages == 10000) {
    EXPECT_EQ(job_fp32_correct, 8719);  // the fixture's FP32 figure
  }
  ASSERT_EQ(result["modelVersion"], "1");
  EXPECT_EQ(result["inputShape"], nlohmann::json::parse(R"(["3", "32", "32"])"));
  const int64_t job_int8_correct = std::stoll(result["int8Accuracy"]["correct"].get<std::string>());

  auto channel = grpc::CreateChannel(quantd.target(), grpc::InsecureChannelCredentials());
  auto stub = inference::GRPCInferenceService::NewStub(channel);
  {
    grpc::ClientContext context;
    inference::ServerReadyResponse ready;
    ASSERT_TRUE(stub->ServerReady(&context, inference::ServerReadyRequest(), &ready).ok());
    EXPECT_TRUE(ready.ready());
    // Not loaded yet (the FP32 source never is by a job), yet servable: the
    // index lists both as READY, as ModelReady would answer, saying so.
    const inference::RepositoryIndexResponse index = ReadyIndex(*stub);
    ASSERT_EQ(index.models_size(), 2) << index.DebugString();
    EXPECT_EQ(index.models(1).name(), "resnet8.fp32");
    EXPECT_EQ(index.models(1).state(), "READY");
    EXPECT_THAT(index.models(1).reason(), HasSubstr("loads and warms up on its first request"));
    grpc::ClientContext metadata_context;
    inference::ModelMetadataRequest request;
    request.set_name("resnet8");
    inference::ModelMetadataResponse metadata;
    ASSERT_TRUE(stub->ModelMetadata(&metadata_context, request, &metadata).ok());
    EXPECT_EQ(metadata.name(), "resnet8");
    EXPECT_THAT(metadata.versions(), ::testing::ElementsAre("1"));
    ASSERT_EQ(metadata.inputs_size(), 1);
    EXPECT_THAT(metadata.inputs(0).shape(), ::testing::ElementsAre(-1, 3, 32, 32));
    EXPECT_THAT(metadata.outputs(0).shape(), ::testing::ElementsAre(-1, 10));
  }

  // Every test image through the served int8 model: the job's own count.
  CifarImages test = ReadCifar(std::string(FIXTURES_DIR) + "/cifar10/test_batch.bin");
  ASSERT_EQ(test.labels.size(), 10000u);
  test.labels.resize(kServedImages);
  test.pixels.resize(static_cast<size_t>(kServedImages) * 3072);
  Served int8 = ServeAll(*stub, "resnet8", test);
  ASSERT_TRUE(int8.status.ok()) << int8.status.error_message();
  EXPECT_EQ(int8.correct, job_int8_correct);
  std::cout << "served int8 top-1: " << int8.correct << "/" << kServedImages << " (the job measured "
            << job_int8_correct << ")\n";
  Served fp32 = ServeAll(*stub, "resnet8.fp32", test);
  ASSERT_TRUE(fp32.status.ok()) << fp32.status.error_message();
  EXPECT_EQ(fp32.correct, job_fp32_correct);
  int agree = 0;
  for (size_t i = 0; i < kServedImages; ++i) agree += int8.predictions[i] == fp32.predictions[i];
  std::cout << "served FP32 top-1: " << fp32.correct << "/" << kServedImages << "; int8/FP32 agreement " << agree
            << "/" << kServedImages << "\n";

  {  // A client generated from the protocol's .proto alone (Node.js: @grpc/grpc-js and
     // @grpc/proto-loader, no reflection) gets the same predictions.
    auto node = RunCommand({NODE_BIN, std::string(NODE_DIR) + "/oip_infer.js", quantd.target(),
                            std::string(SOURCE_DIR) + "/proto/inference/grpc_predict_v2.proto", "resnet8",
                            std::string(FIXTURES_DIR) + "/cifar10/test_batch.bin", "100", "32"},
                           absl::Seconds(60));
    ASSERT_TRUE(node.ok()) << node.status();
    ASSERT_EQ(node->exit_code, 0) << node->out << node->err;
    nlohmann::json client = nlohmann::json::parse(node->out, nullptr, false);
    ASSERT_TRUE(client.is_object()) << node->out;
    EXPECT_EQ(client["live"], true);
    EXPECT_EQ(client["ready"], true);
    EXPECT_EQ(client["id"], "node-client");
    EXPECT_EQ(client["metadata"]["inputs"][0]["shape"], nlohmann::json::parse(R"(["-1", "3", "32", "32"])"));
    EXPECT_EQ(client["predictions"].get<std::vector<int>>(),
              std::vector<int>(int8.predictions.begin() + 100, int8.predictions.begin() + 132));
  }
  {  // Python's torch.jit.load of the same artifact, on the engine that served
     // it, predicts the same class for every image.
    inference::ModelInferResponse response;
    ASSERT_TRUE(Infer(*stub, InferRequest("resnet8", test, 0, 1), &response).ok());
    const std::string engine = response.parameters().at("kernel_engine").string_param();
    const std::string artifact =
        quantd.dir() + "/data/artifacts/" + result["artifactSha256"].get<std::string>() + ".pt";
    auto python = RunCommand(
        {"/usr/bin/python3", "-c",
         "import sys, numpy as np, torch\n"
         "artifact, engine, cifar = sys.argv[1:4]\n"
         "torch.set_num_threads(1)\n"
         "torch.backends.quantized.engine = engine\n"
         "m = torch.jit.load(artifact)\n"
         "raw = np.fromfile(cifar, dtype=np.uint8).reshape(-1, 3073)[:int(sys.argv[4])]\n"
         "x = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32))\n"
         "with torch.no_grad():\n"
         "    p = torch.cat([m(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])\n"
         "sys.stdout.write(''.join(str(int(c)) for c in p))\n",
         artifact, engine, std::string(FIXTURES_DIR) + "/cifar10/test_batch.bin", std::to_string(kServedImages)},
        absl::Seconds(240));
    ASSERT_TRUE(python.ok()) << python.status();
    ASSERT_EQ(python->exit_code, 0) << python->err;
    std::string served;
    for (int p : int8.predictions) served += static_cast<char>('0' + p);
    ASSERT_EQ(python->out.size(), served.size());
    size_t differ = 0;
    for (size_t i = 0; i < served.size(); ++i) differ += python->out[i] != served[i];
    EXPECT_EQ(differ, 0u) << "served and Python predictions differ on " << differ << " of " << kServedImages
                          << " images (" << engine
                          << ")";
    std::cout << "Python torch.jit.load of the artifact (" << engine << "): same class on all " << kServedImages
              << " images\n";
  }
  {  // The same images as FP32 in typed contents give the same scores as UINT8 raw bytes.
    inference::ModelInferRequest raw = InferRequest("resnet8", test, 0, 4);
    inference::ModelInferRequest typed = raw;
    typed.clear_raw_input_contents();
    typed.mutable_inputs(0)->set_datatype("FP32");
    for (unsigned char c : raw.raw_input_contents(0)) typed.mutable_inputs(0)->mutable_contents()->add_fp32_contents(c);
    inference::ModelInferResponse a, b;
    ASSERT_TRUE(Infer(*stub, raw, &a).ok());
    grpc::Status typed_status = Infer(*stub, typed, &b);
    ASSERT_TRUE(typed_status.ok()) << typed_status.error_message();
    EXPECT_EQ(a.raw_output_contents(0), b.raw_output_contents(0));
    EXPECT_EQ(a.id(), "batch-0");
    EXPECT_EQ(a.model_version(), "1");
  }
  {  // Triton's classification: the top 3 as "score:index:label", best first.
    inference::ModelInferRequest request = InferRequest("resnet8", test, 0, 2);
    auto* output = request.add_outputs();
    output->set_name("output");
    (*output->mutable_parameters())["classification"].set_int64_param(3);
    inference::ModelInferResponse response;
    ASSERT_TRUE(Infer(*stub, request, &response).ok());
    ASSERT_EQ(response.outputs(0).datatype(), "BYTES");
    EXPECT_THAT(response.outputs(0).shape(), ::testing::ElementsAre(2, 3));
    const std::string& raw = response.raw_output_contents(0);
    uint32_t size = 0;
    std::memcpy(&size, raw.data(), 4);
    const std::string first = raw.substr(4, size);
    const char* kLabels[] = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
    EXPECT_THAT(first, ::testing::EndsWith(absl::StrCat(":", int8.predictions[0], ":", kLabels[int8.predictions[0]])));
  }
  // Bad requests: the right code, the field named, and the server goes on.
  auto expect_error = [&](inference::ModelInferRequest request, grpc::StatusCode code, const std::string& field) {
    inference::ModelInferResponse response;
    grpc::Status status = Infer(*stub, request, &response);
    EXPECT_EQ(status.error_code(), code) << field << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(field));
  };
  inference::ModelInferRequest good = InferRequest("resnet8", test, 0, 2);
  inference::ModelInferRequest bad = good;
  bad.set_model_name("nope");
  expect_error(bad, grpc::StatusCode::NOT_FOUND, "nope");
  bad = good;
  bad.set_model_version("7");
  expect_error(bad, grpc::StatusCode::NOT_FOUND, "no version 7");
  bad = good;
  bad.set_model_version("latest");
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "model_version");
  bad = good;
  bad.mutable_inputs(0)->set_shape(3, 31);
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].shape");
  bad = good;
  bad.mutable_inputs(0)->set_datatype("INT64");
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].datatype");
  bad = good;
  bad.mutable_raw_input_contents(0)->pop_back();
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "raw_input_contents[0]");
  expect_error(InferRequest("resnet8", test, 0, 65), grpc::StatusCode::INVALID_ARGUMENT, "--max_batch_size");
  bad = good;
  bad.clear_raw_input_contents();
  bad.mutable_inputs(0)->set_datatype("FP32");
  for (int i = 0; i < 2 * 3072; ++i) {
    bad.mutable_inputs(0)->mutable_contents()->add_fp32_contents(i == 77 ? std::nanf("") : 1.0f);
  }
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "NaN");
  bad = good;
  bad.mutable_inputs(0)->set_name("pixels");
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "inputs[0].name");
  bad = good;
  auto* not_scores = bad.add_outputs();
  not_scores->set_name("logits");
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "outputs[0].name");
  bad = good;
  bad.add_outputs()->set_name("output");
  bad.add_outputs()->set_name("output");
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "outputs[1].name: \"output\" requested twice");
  // A shape of 10000 dims is named in a short message (the whole of it would
  // outgrow gRPC's trailer limit and reach the client as another error).
  bad = good;
  for (int d = 0; d < 10000; ++d) bad.mutable_inputs(0)->add_shape(1);
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "... (10004 dims)]");
  bad = good;
  bad.set_model_version("01");
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "model_version");
  bad = good;
  bad.set_id(std::string(2000, 'x'));
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "id: 2000 bytes");
  bad = good;
  (*bad.mutable_parameters())["timeout"].set_int64_param(-5);
  expect_error(bad, grpc::StatusCode::INVALID_ARGUMENT, "parameters[timeout]");
  {  // Triton's "timeout" parameter: a request still queued once its timeout
     // has passed is not run. One sent within the batching delay (20 ms) of
     // the last pass queues for up to that delay, far past 1 us; sent later
     // (a stalled test machine), it runs at once on an idle server, so a
     // few tries.
    inference::ModelInferRequest hurried = good;
    (*hurried.mutable_parameters())["timeout"].set_int64_param(1);
    inference::ModelInferRequest patient = good;
    (*patient.mutable_parameters())["timeout"].set_int64_param(60'000'000);
    int expired = 0;
    for (int attempt = 0; attempt < 5 && expired == 0; ++attempt) {
      inference::ModelInferResponse response;
      ASSERT_TRUE(Infer(*stub, patient, &response).ok());
      grpc::Status late = Infer(*stub, hurried, &response);
      if (late.ok()) continue;
      EXPECT_EQ(late.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << late.error_message();
      EXPECT_THAT(late.error_message(), HasSubstr("parameters[timeout]"));
      ++expired;
    }
    EXPECT_EQ(expired, 1) << "no request with a 1 us timeout was ever dropped";
  }

  {  // Triton's repository index, and quantctl's view.
    const inference::RepositoryIndexResponse index = ReadyIndex(*stub);
    ASSERT_EQ(index.models_size(), 2) << index.DebugString();
    EXPECT_EQ(index.models(0).name(), "resnet8");
    EXPECT_EQ(index.models(1).name(), "resnet8.fp32");
    EXPECT_EQ(index.models(0).state(), "READY");
    EXPECT_EQ(index.models(1).state(), "READY");
    EXPECT_EQ(index.models(0).reason(), "") << "both are loaded now";
    EXPECT_EQ(index.models(1).reason(), "");
  }
  // Dynamic batching: 16 clients sending batch-1 requests at once get the
  // scores of the same images run alone, bit for bit. The FP32 source's
  // requests are never coalesced (its kernels' sums depend on the batch size).
  for (const std::string model : {"resnet8", "resnet8.fp32"}) {
    constexpr int kClients = 16, kPerClient = 4;
    std::vector<std::string> alone(kClients * kPerClient);
    for (size_t i = 0; i < alone.size(); ++i) {
      inference::ModelInferResponse response;
      ASSERT_TRUE(Infer(*stub, InferRequest(model, test, i, 1), &response).ok());
      ASSERT_EQ(response.parameters().at("executed_batch_size").int64_param(), 1);
      alone[i] = Scores(response);
    }
    std::vector<std::string> together(alone.size());
    std::vector<int64_t> batch_sizes(alone.size());
    std::vector<grpc::Status> statuses(alone.size());
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        for (int k = 0; k < kPerClient; ++k) {
          const size_t i = static_cast<size_t>(k * kClients + c);
          inference::ModelInferResponse response;
          statuses[i] = Infer(*stub, InferRequest(model, test, i, 1), &response);
          together[i] = Scores(response);
          if (statuses[i].ok()) batch_sizes[i] = response.parameters().at("executed_batch_size").int64_param();
        }
      });
    }
    for (std::thread& t : clients) t.join();
    int64_t largest = 0;
    for (size_t i = 0; i < alone.size(); ++i) {
      ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
      EXPECT_EQ(together[i], alone[i]) << "image " << i << " differs when batched with " << batch_sizes[i] - 1
                                       << " others";
      largest = std::max(largest, batch_sizes[i]);
    }
    if (model == "resnet8") {
      EXPECT_GT(largest, 1) << "no two requests were ever batched together";
    } else {
      EXPECT_EQ(largest, 1) << "FP32 requests were coalesced";
    }
    std::cout << "dynamic batching, " << model << ": " << alone.size() << " batch-1 requests from " << kClients
              << " clients; largest pass " << largest << "; scores bit-identical to unbatched\n";
  }
  {  // Triton's ModelStatistics: every sample counted once, and fewer passes
     // than requests (the dynamic batches above).
    grpc::ClientContext context;
    inference::ModelStatisticsRequest request;
    request.set_name("resnet8");
    inference::ModelStatisticsResponse response;
    ASSERT_TRUE(stub->ModelStatistics(&context, request, &response).ok());
    ASSERT_EQ(response.model_stats_size(), 1) << response.DebugString();
    const inference::ModelStatistics& s = response.model_stats(0);
    EXPECT_EQ(s.version(), "1");
    uint64_t samples = 0, executions = 0;
    for (const auto& b : s.batch_stats()) {
      samples += b.batch_size() * b.compute_infer().count();
      executions += b.compute_infer().count();
    }
    EXPECT_EQ(executions, s.execution_count());
    EXPECT_EQ(samples, s.inference_count());
    EXPECT_GE(s.inference_count(), static_cast<uint64_t>(kServedImages));
    EXPECT_LT(s.execution_count(), s.inference_stats().success().count()) << "no batching seen";
    EXPECT_GT(s.inference_stats().compute_infer().ns(), 0u);
    EXPECT_GT(s.inference_stats().fail().count(), 0u);  // the bad requests above
    grpc::ClientContext bad_context;
    request.set_version("x");
    EXPECT_EQ(stub->ModelStatistics(&bad_context, request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    // Unknown names and versions are NOT_FOUND, as for metadata and infer.
    for (const auto& [name, version] : {std::pair<std::string, std::string>{"nope", ""}, {"resnet8", "7"}}) {
      grpc::ClientContext unknown_context;
      request.set_name(name);
      request.set_version(version);
      grpc::Status unknown = stub->ModelStatistics(&unknown_context, request, &response);
      EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND) << name << " " << version;
      EXPECT_THAT(unknown.error_message(), HasSubstr(name));
    }
  }
  {  // REST (KServe v2) with curl: health, metadata, JSON and binary infer,
     // the same scores as gRPC, errors as {"error": ...} naming the field.
    const std::string v2 = quantd.http_url() + "/v2";
    EXPECT_EQ(Curl(v2 + "/health/live").status, 200);
    CurlResult ready = Curl(v2 + "/health/ready");
    EXPECT_EQ(ready.status, 200) << ready.body;
    CurlResult server = Curl(v2);
    nlohmann::json server_metadata = nlohmann::json::parse(server.body, nullptr, false);
    ASSERT_TRUE(server_metadata.is_object()) << server.body;
    EXPECT_EQ(server_metadata["name"], "quantd") << server.body;
    CurlResult metadata = Curl(v2 + "/models/resnet8");
    ASSERT_EQ(metadata.status, 200) << metadata.body;
    nlohmann::json meta = nlohmann::json::parse(metadata.body, nullptr, false);
    EXPECT_EQ(meta["inputs"][0]["shape"], nlohmann::json::parse("[-1, 3, 32, 32]")) << metadata.body;
    EXPECT_EQ(Curl(v2 + "/models/resnet8/versions/1/ready").status, 200);

    inference::ModelInferResponse grpc_response;
    ASSERT_TRUE(Infer(*stub, InferRequest("resnet8", test, 0, 2), &grpc_response).ok());
    std::vector<float> grpc_scores(20);
    std::memcpy(grpc_scores.data(), Scores(grpc_response).data(), 80);
    std::vector<int> pixels(test.pixels.begin(), test.pixels.begin() + 2 * 3072);
    for (int& p : pixels) p &= 0xff;
    nlohmann::json body = {{"id", "rest-1"},
                           {"inputs", {{{"name", "input"}, {"shape", {2, 3, 32, 32}}, {"datatype", "UINT8"},
                                        {"data", pixels}}}}};
    const std::string body_file = quantd.dir() + "/infer.json";
    std::ofstream(body_file) << body.dump();
    CurlResult infer = Curl(v2 + "/models/resnet8/infer",
                            {"-H", "Content-Type: application/json", "--data-binary", "@" + body_file});
    ASSERT_EQ(infer.status, 200) << infer.body;
    nlohmann::json answer = nlohmann::json::parse(infer.body, nullptr, false);
    EXPECT_EQ(answer["id"], "rest-1");
    EXPECT_EQ(answer["model_version"], "1");
    EXPECT_EQ(answer["outputs"][0]["shape"], nlohmann::json::parse("[2, 10]"));
    EXPECT_EQ(answer["outputs"][0]["data"].get<std::vector<float>>(), grpc_scores) << infer.body;

    // The binary tensor data extension, both ways.
    nlohmann::json header = {
        {"inputs", {{{"name", "input"}, {"shape", {2, 3, 32, 32}}, {"datatype", "UINT8"},
                     {"parameters", {{"binary_data_size", 2 * 3072}}}}}},
        {"outputs", {{{"name", "output"}, {"parameters", {{"binary_data", true}}}}}}};
    const std::string header_text = header.dump();
    const std::string binary_file = quantd.dir() + "/infer.bin";
    std::ofstream(binary_file, std::ios::binary) << header_text << test.pixels.substr(0, 2 * 3072);
    const std::string headers_file = quantd.dir() + "/infer.headers";
    CurlResult binary = Curl(v2 + "/models/resnet8/versions/1/infer",
                             {"-H", "Content-Type: application/octet-stream", "-H",
                              absl::StrCat("Inference-Header-Content-Length: ", header_text.size()), "-D",
                              headers_file, "--data-binary", "@" + binary_file});
    ASSERT_EQ(binary.status, 200) << binary.body;
    const std::string headers = ReadFileOrEmpty(headers_file);
    const size_t at = headers.find("Inference-Header-Content-Length: ");
    ASSERT_NE(at, std::string::npos) << headers;
    const size_t json_size = std::stoul(headers.substr(at + 33));
    ASSERT_EQ(binary.body.size(), json_size + 80) << binary.body;
    EXPECT_EQ(binary.body.substr(json_size), Scores(grpc_response));
    {  // Binary data that does not fill the shape is named as REST sends it.
      auto post_binary = [&](const std::string& header_length) {
        return Curl(v2 + "/models/resnet8/infer",
                    {"-H", "Content-Type: application/octet-stream", "-H",
                     "Inference-Header-Content-Length: " + header_length, "--data-binary", "@" + binary_file});
      };
      nlohmann::json short_header = header;
      short_header["inputs"][0]["parameters"]["binary_data_size"] = 5;
      const std::string short_text = short_header.dump();
      std::ofstream(binary_file, std::ios::binary | std::ios::trunc) << short_text << test.pixels.substr(0, 5);
      CurlResult short_binary = post_binary(std::to_string(short_text.size()));
      EXPECT_EQ(short_binary.status, 400) << short_binary.body;
      EXPECT_THAT(short_binary.body, HasSubstr("inputs[0] binary data (parameters.binary_data_size)"));
      // A size short of the bytes sent says what the sizes cover.
      std::ofstream(binary_file, std::ios::binary | std::ios::trunc) << short_text << test.pixels.substr(0, 3072);
      CurlResult uncovered = post_binary(std::to_string(short_text.size()));
      EXPECT_EQ(uncovered.status, 400) << uncovered.body;
      EXPECT_THAT(uncovered.body, HasSubstr("3067 bytes after the inputs' binary data: the inputs' "
                                            "parameters.binary_data_size add up to 5 of the 3072 bytes"));
      // An empty JSON header is named as the header that says so.
      CurlResult empty_header = post_binary("0");
      EXPECT_EQ(empty_header.status, 400) << empty_header.body;
      EXPECT_THAT(nlohmann::json::parse(empty_header.body, nullptr, false).value("error", ""),
                  HasSubstr("Inference-Header-Content-Length: \"0\" is not a length"));
    }

    auto expect_rest_error = [&](const std::string& url, const std::string& payload, int status,
                                 const std::string& field) {
      std::ofstream(body_file, std::ios::trunc) << payload;
      CurlResult r = Curl(url, {"-H", "Content-Type: application/json", "--data-binary", "@" + body_file});
      EXPECT_EQ(r.status, status) << url << " " << r.body;
      nlohmann::json error = nlohmann::json::parse(r.body, nullptr, false);
      ASSERT_TRUE(error.is_object()) << r.body;
      EXPECT_THAT(error.value("error", ""), HasSubstr(field)) << r.body;
    };
    nlohmann::json wrong_shape = body;
    wrong_shape["inputs"][0]["shape"] = {2, 3, 31, 32};
    expect_rest_error(v2 + "/models/resnet8/infer", wrong_shape.dump(), 400, "inputs[0].shape");
    nlohmann::json short_data = body;
    short_data["inputs"][0]["data"] = {1, 2, 3};
    expect_rest_error(v2 + "/models/resnet8/infer", short_data.dump(), 400,
                      "inputs[0].data: 3 values, but [2, 3, 32, 32] holds 6144");
    expect_rest_error(v2 + "/models/nope/infer", body.dump(), 404, "nope");
    expect_rest_error(v2 + "/models/resnet8/versions/9/infer", body.dump(), 404, "no version 9");
    // The output's own binary_data over the request's binary_data_output,
    // which must be a boolean.
    nlohmann::json json_output = body;
    json_output["parameters"] = {{"binary_data_output", true}};
    json_output["outputs"] = {{{"name", "output"}, {"parameters", {{"binary_data", false}}}}};
    std::ofstream(body_file, std::ios::trunc) << json_output.dump();
    CurlResult as_json = Curl(v2 + "/models/resnet8/infer",
                              {"-H", "Content-Type: application/json", "--data-binary", "@" + body_file});
    ASSERT_EQ(as_json.status, 200) << as_json.body;
    EXPECT_EQ(nlohmann::json::parse(as_json.body, nullptr, false)["outputs"][0]["data"].get<std::vector<float>>(),
              grpc_scores);
    json_output["parameters"]["binary_data_output"] = "yes";
    expect_rest_error(v2 + "/models/resnet8/infer", json_output.dump(), 400, "parameters.binary_data_output");
    // Counted with the model's other requests, as gRPC's decode errors are.
    auto invalid_requests = [&](const std::string& labels = R"(model="resnet8",version="1")",
                                const std::string& code = "INVALID_ARGUMENT") -> int64_t {
      const std::string series = absl::StrCat(R"(quantd_inference_requests_total{code=")", code, R"(",)", labels, "} ");
      const std::string text = Curl(quantd.http_url() + "/metrics").body;
      const size_t at = text.find(series);
      return at == std::string::npos ? 0 : std::stoll(text.substr(at + series.size()));
    };
    const int64_t invalid_before = invalid_requests();
    expect_rest_error(v2 + "/models/resnet8/infer", "{not json", 400, "body: not valid JSON");
    EXPECT_EQ(invalid_requests(), invalid_before + 1);
    expect_rest_error(v2 + "/models/resnet8/infer", "[1, 2]", 400, "body: not a JSON object");
    nlohmann::json no_timeout = body;
    no_timeout["parameters"] = {{"timeout", -1}};
    expect_rest_error(v2 + "/models/resnet8/infer", no_timeout.dump(), 400, "parameters.timeout: microseconds");
    nlohmann::json renamed = body;
    renamed["inputs"][0]["name"] = "pixels";
    expect_rest_error(v2 + "/models/resnet8/infer", renamed.dump(), 400, "inputs[0].name");
    // More values, or empty arrays, than a full batch (64 x 3072, nested row
    // by row) has: refused while parsing.
    nlohmann::json too_many = body;
    too_many["inputs"][0]["data"] = std::vector<int>(2 * 64 * 3072 + 2000, 0);
    expect_rest_error(v2 + "/models/resnet8/infer", too_many.dump(), 400, "values, keys and arrays in the JSON body");
    too_many["inputs"][0]["data"] = std::vector<std::vector<int>>(2 * 64 * 3072 + 2000);
    expect_rest_error(v2 + "/models/resnet8/infer", too_many.dump(), 400, "values, keys and arrays in the JSON body");
    // Keys count too: a dropped value leaves its key in the parsed object.
    nlohmann::json many_keys = body;
    for (int k = 0; k < 2 * 64 * 3072 + 2000; ++k) many_keys["x"][absl::StrCat("k", k)] = 0;
    expect_rest_error(v2 + "/models/resnet8/infer", many_keys.dump(), 400, "values, keys and arrays in the JSON body");
    // An array of many objects under the limit (100 000 outputs once took 2 s
    // of CPU to parse): parsed, then refused at its second entry.
    nlohmann::json many_outputs = body;
    many_outputs["outputs"] = std::vector<nlohmann::json>(100000, nlohmann::json{{"name", "output"}});
    expect_rest_error(v2 + "/models/resnet8/infer", many_outputs.dump(), 400,
                      "outputs[1].name: \"output\" requested twice");
    // One long string is one element: strings have their own bound, checked
    // before the parser copies them.
    nlohmann::json long_id = body;
    long_id["id"] = std::string(4 << 20, 'i');
    expect_rest_error(v2 + "/models/resnet8/infer", long_id.dump(), 400, "body: a JSON string of 4194304 bytes");
    expect_rest_error(v2 + "/models/resnet8/infer", "{\"inputs\": [], \"x\": 1e309}", 400,
                      "body: not valid JSON: [json.exception.out_of_range.406] number overflow");
    // The FP32 source overflows on pixels of 3e38: JSON has no number for its
    // NaN outputs, so the call says so instead of sending null.
    nlohmann::json overflowing = body;
    overflowing["inputs"][0]["datatype"] = "FP32";
    overflowing["inputs"][0]["data"] = std::vector<float>(2 * 3072, 3e38f);
    const std::string fp32_labels = R"(model="resnet8.fp32",version="1")";
    const int64_t unfit_before = invalid_requests(fp32_labels, "FAILED_PRECONDITION");
    expect_rest_error(v2 + "/models/resnet8.fp32/infer", overflowing.dump(), 400, "which JSON cannot carry");
    // Counted as answered (it was counted OK before).
    EXPECT_EQ(invalid_requests(fp32_labels, "FAILED_PRECONDITION"), unfit_before + 1);
    EXPECT_EQ(Curl(v2 + "/models/nope/ready").status, 404);
    nlohmann::json huge_dim = body;
    huge_dim["inputs"][0]["shape"] = nlohmann::json::parse("[18446744073709551615, 3, 32, 32]");
    expect_rest_error(v2 + "/models/resnet8/infer", huge_dim.dump(), 400, "inputs[0].shape[0]: beyond the int64 range");
    nlohmann::json out_of_range = body;
    out_of_range["inputs"][0]["datatype"] = "FP32";
    out_of_range["inputs"][0]["data"][5] = 1e300;
    expect_rest_error(v2 + "/models/resnet8/infer", out_of_range.dump(), 400,
                      "inputs[0].data[5]: 1e+300 is outside the FP32 range");
    nlohmann::json strings = body;
    strings["inputs"][0]["datatype"] = "BYTES";
    expect_rest_error(v2 + "/models/resnet8/infer", strings.dump(), 400, "inputs[0].datatype");
    // An empty version or name is an inference request refused, counted
    // under model="" as gRPC's ModelInfer without a model_name is.
    const int64_t unnamed_before = invalid_requests(R"(model="",version="")");
    expect_rest_error(v2 + "/models/resnet8/versions//infer", body.dump(), 400, "version: empty");
    expect_rest_error(v2 + "/models//infer", body.dump(), 400, "model name: empty");
    EXPECT_EQ(invalid_requests(R"(model="",version="")"), unnamed_before + 2);
    expect_rest_error(v2 + "/models/resnet8/versions/01/infer", body.dump(), 400, "version");
    {
      // Named as REST names it (the gRPC message's field is model_version).
      std::ofstream(body_file, std::ios::trunc) << body.dump();
      CurlResult r = Curl(v2 + "/models/resnet8/versions/01/infer",
                          {"-H", "Content-Type: application/json", "--data-binary", "@" + body_file});
      EXPECT_TRUE(absl::StartsWith(nlohmann::json::parse(r.body, nullptr, false).value("error", ""), "version: "))
          << r.body;
    }
    // Each resource takes one method: 405 with Allow and a JSON error.
    const std::string allow_file = quantd.dir() + "/allow.headers";
    CurlResult wrong_method = Curl(v2 + "/models/resnet8/infer", {"-D", allow_file});
    EXPECT_EQ(wrong_method.status, 405) << wrong_method.body;
    EXPECT_THAT(ReadFileOrEmpty(allow_file), HasSubstr("Allow: POST"));
    EXPECT_THAT(wrong_method.body, HasSubstr(R"({"error":")"));
    EXPECT_THAT(wrong_method.body, HasSubstr("use POST"));
    CurlResult put = Curl(v2 + "/health/live", {"-X", "PUT", "--data", ""});
    EXPECT_EQ(put.status, 405) << put.body;
    EXPECT_THAT(put.body, HasSubstr(R"({"error":")"));
    EXPECT_THAT(put.body, HasSubstr("use GET"));
    const std::string options_allow = quantd.dir() + "/options_allow.headers";
    CurlResult options = Curl(v2 + "/health/live", {"-X", "OPTIONS", "-D", options_allow});
    EXPECT_EQ(options.status, 405) << options.body;
    EXPECT_THAT(ReadFileOrEmpty(options_allow), HasSubstr("Allow: GET"));
    // A DELETE without a length (curl sends none) is answered before its
    // body is read: httplib would read one to the end of the connection (a
    // 400 after its 5 s read timeout, before).
    const std::string delete_allow = quantd.dir() + "/delete_allow.headers";
    CurlResult del = Curl(v2 + "/models/resnet8", {"-X", "DELETE", "-D", delete_allow});
    EXPECT_EQ(del.status, 405) << del.body;
    EXPECT_THAT(del.body, HasSubstr("no resource here takes DELETE; /v2/models/resnet8 takes GET"));
    EXPECT_THAT(ReadFileOrEmpty(delete_allow), HasSubstr("Allow: GET"));  // it once had none
    const std::string delete_infer_allow = quantd.dir() + "/delete_infer_allow.headers";
    EXPECT_EQ(Curl(v2 + "/models/resnet8/infer", {"-X", "DELETE", "-D", delete_infer_allow}).status, 405);
    EXPECT_THAT(ReadFileOrEmpty(delete_infer_allow), HasSubstr("Allow: POST"));
    EXPECT_EQ(Curl(quantd.http_url() + "/nowhere", {"-X", "DELETE"}).status, 404);
    // /metrics takes GET: POST is not "not found; try /metrics".
    const std::string metrics_allow = quantd.dir() + "/metrics_allow.headers";
    CurlResult post_metrics = Curl(quantd.http_url() + "/metrics", {"-X", "POST", "--data", "", "-D", metrics_allow});
    EXPECT_EQ(post_metrics.status, 405) << post_metrics.body;
    EXPECT_THAT(ReadFileOrEmpty(metrics_allow), HasSubstr("Allow: GET"));
    // A model may be called "infer": GET of that name is its metadata (none here).
    EXPECT_EQ(Curl(v2 + "/models/infer").status, 404);
    // The repository index takes {"ready": ...}, not a large body.
    expect_rest_error(v2 + "/repository/index", absl::StrCat("{\"ready\": false, \"pad\": [", std::string(10000, '0'), "]}"),
                      400, "a repository index request takes at most");
    // Triton's statistics extension over REST, as tritonclient reads it.
    CurlResult stats = Curl(v2 + "/models/resnet8/stats");
    ASSERT_EQ(stats.status, 200) << stats.body;
    nlohmann::json model_stats = nlohmann::json::parse(stats.body, nullptr, false);
    ASSERT_TRUE(model_stats.is_object()) << stats.body;
    ASSERT_EQ(model_stats["model_stats"].size(), 1u) << stats.body;
    EXPECT_EQ(model_stats["model_stats"][0]["version"], "1");
    EXPECT_TRUE(model_stats["model_stats"][0]["inference_count"].is_number_unsigned()) << stats.body;
    EXPECT_GT(model_stats["model_stats"][0]["inference_count"].get<uint64_t>(), 0u);
    EXPECT_GT(model_stats["model_stats"][0]["inference_stats"]["success"]["count"].get<uint64_t>(), 0u);
    CurlResult all_stats = Curl(v2 + "/models/stats");
    ASSERT_EQ(all_stats.status, 200) << all_stats.body;
    EXPECT_GE(nlohmann::json::parse(all_stats.body, nullptr, false)["model_stats"].size(), 2u) << all_stats.body;
    EXPECT_EQ(Curl(v2 + "/models/nope/stats").status, 404);
    EXPECT_EQ(Curl(v2 + "/models/resnet8/versions/7/stats").status, 404);
  }
  {  // The metrics count it: requests by code, samples and executed passes.
    CurlResult metrics = Curl(quantd.http_url() + "/metrics");
    ASSERT_EQ(metrics.status, 200);
    EXPECT_THAT(metrics.body, HasSubstr(R"(quantd_inference_requests_total{code="OK",model="resnet8",version="1"})"));
    EXPECT_THAT(metrics.body, HasSubstr(R"(quantd_inference_requests_total{code="NOT_FOUND",model="",version=""})"));
    EXPECT_THAT(metrics.body, HasSubstr(R"(quantd_inference_executions_total{model="resnet8",version="1"})"));
    // The 10000 served images and the 2 x 64 batch-1 requests of the batching
    // check; not the 2 images of the overflowing REST request, whose pass ran
    // but whose answer failed (counted as served before 2026-12-06).
    EXPECT_THAT(metrics.body, HasSubstr(absl::StrCat(R"(quantd_inference_samples_total{model="resnet8.fp32",version="1"} )",
                                                     kServedImages + 2 * 64, "\n")));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_inference_queue_duration_seconds_bucket"));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_inference_models_loaded 2"));
    // Jobs: what ran here, and the store's figures.
    EXPECT_THAT(metrics.body, HasSubstr("quantd_jobs_submitted_total 1\n"));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_jobs_finished_total{state=\"succeeded\"} 1\n"));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_jobs_finished_total{state=\"failed\"} 0\n"));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_jobs{state=\"succeeded\"} 1\n"));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_jobs{state=\"queued\"} 0\n"));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_job_phase_duration_seconds_count{phase=\"calibrating\"} 1\n"));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_calibration_samples_total 1000\n"));
    EXPECT_THAT(metrics.body, HasSubstr(absl::StrCat(
                                  "quantd_model_accuracy_ratio{model=\"resnet8\",precision=\"int8\",version=\"1\"} ",
                                  static_cast<double>(job_int8_correct) / kServedImages)));
    EXPECT_THAT(metrics.body, HasSubstr(absl::StrCat(
                                  "quantd_model_accuracy_ratio{model=\"resnet8\",precision=\"fp32\",version=\"1\"} ",
                                  static_cast<double>(job_fp32_correct) / kServedImages)));
    EXPECT_THAT(metrics.body, HasSubstr("quantd_data_dir_bytes "));
    // Every metric the alert rules and the dashboard use is exported and has
    // a sample now (a job and inferences have run).
    std::set<std::string> used;
    for (const char* file : {"/deploy/prometheus/rules.yml", "/deploy/grafana/quantd-dashboard.json"}) {
      const std::string text = ReadFileOrEmpty(std::string(SOURCE_DIR) + file);
      ASSERT_FALSE(text.empty()) << file;
      const std::regex name(R"((quantd|process)_[a-z0-9_]+)");
      for (auto it = std::sregex_iterator(text.begin(), text.end(), name); it != std::sregex_iterator(); ++it) {
        used.insert(it->str());
      }
    }
    EXPECT_GT(used.size(), 15u);
    // Exported with TLS only (this quantd has none): the security
    // integration test checks it on a quantd with TLS.
    EXPECT_EQ(used.erase("quantd_tls_certificate_expiry_timestamp_seconds"), 1u);
    for (const std::string& metric : used) {
      const std::regex sample("(^|\n)" + metric + R"((\{[^\n]*\})? [0-9])");
      EXPECT_TRUE(std::regex_search(metrics.body, sample)) << metric << " is used by deploy/ but has no sample";
    }
  }
  {  // Evaluate: asynchronous, int8 and FP32 side by side, exactly the
     // figures served inference gives; quantctl prints tables.
    RunResult eval = quantd.Ctl({"eval", "resnet8", absl::StrCat("--data=", kTest),
                                 absl::StrCat("--max_samples=", kServedImages)});
    ASSERT_EQ(eval.exit_code, 0) << eval.out << eval.err;
    auto percent = [](int64_t part) { return 100.0 * static_cast<double>(part) / kServedImages; };
    EXPECT_THAT(eval.out, HasSubstr(absl::StrFormat("int8       %.2f%% (%d)", percent(job_int8_correct),
                                                    job_int8_correct)));
    EXPECT_THAT(eval.out, HasSubstr(absl::StrFormat("fp32       %.2f%% (%d)", percent(job_fp32_correct),
                                                    job_fp32_correct)));
    EXPECT_THAT(eval.out, HasSubstr(absl::StrFormat("agreement: %.2f%% (%d/%d)", percent(agree), agree,
                                                    kServedImages)));
    EXPECT_THAT(eval.out, HasSubstr("confusion matrix, int8"));
    EXPECT_THAT(eval.out, HasSubstr("airplane"));
    std::cout << eval.out << "\n";
    // The same evaluation again by its id (as after quantctl was stopped):
    // the same report.
    std::smatch id;
    ASSERT_TRUE(std::regex_search(eval.out, id, std::regex("evaluation (eval-[0-9a-z-]+):"))) << eval.out;
    RunResult again = quantd.Ctl({"eval", "--id=" + id[1].str()});
    ASSERT_EQ(again.exit_code, 0) << again.err;
    EXPECT_EQ(again.out, eval.out.substr(eval.out.find(id[0].str())));  // without progress lines
    RunResult unknown_id = quantd.Ctl({"eval", "--id=eval-nope"});
    EXPECT_EQ(unknown_id.exit_code, 1);
    EXPECT_THAT(unknown_id.err, HasSubstr("code 5"));

    // A smaller evaluation without FP32 (another figure than the job's under
    // the sanitizers too, where the job judged 1000 images).
    constexpr int kSubset = 500;
    RunResult json = quantd.Ctl({"--json", "eval", "resnet8:1", absl::StrCat("--data=", kTest),
                                 absl::StrCat("--max_samples=", kSubset), "--batch_size=100", "--skip_fp32"});
    ASSERT_EQ(json.exit_code, 0) << json.out << json.err;
    nlohmann::json e = nlohmann::json::parse(json.out, nullptr, false);
    ASSERT_TRUE(e.is_object()) << json.out;
    EXPECT_EQ(e["state"], "EVALUATION_STATE_SUCCEEDED");
    const nlohmann::json& report = e["report"];
    EXPECT_EQ(report["samples"], std::to_string(kSubset));
    EXPECT_FALSE(report.contains("fp32"));
    int64_t cells = 0, diagonal = 0, per_class = 0;
    for (size_t i = 0; i < report["int8"]["confusion"].size(); ++i) {
      const int64_t v = std::stoll(report["int8"]["confusion"][i].get<std::string>());
      cells += v;
      if (i % 11 == 0) diagonal += v;
    }
    for (const auto& v : report["perClassTotal"]) per_class += std::stoll(v.get<std::string>());
    EXPECT_EQ(cells, kSubset);
    EXPECT_EQ(per_class, kSubset);
    EXPECT_EQ(std::to_string(diagonal), report["int8"]["top1Correct"].get<std::string>());
    int64_t first_correct = 0;
    for (size_t i = 0; i < kSubset; ++i) first_correct += int8.predictions[i] == test.labels[i];
    EXPECT_EQ(diagonal, first_correct);
    // The accuracy gauges keep both figures of the newest evaluation that
    // measured both (the one before), on its images: this int8-only one
    // once replaced the int8 figure alone, beside FP32 from other images.
    ASSERT_NE(first_correct * kServedImages, int64_t{job_int8_correct} * kSubset) << "the figures must differ";
    CurlResult metrics = Curl(quantd.http_url() + "/metrics");
    ASSERT_EQ(metrics.status, 200);
    EXPECT_THAT(metrics.body, HasSubstr(absl::StrCat(
                                  "quantd_model_accuracy_ratio{model=\"resnet8\",precision=\"int8\",version=\"1\"} ",
                                  static_cast<double>(job_int8_correct) / kServedImages)));
    EXPECT_THAT(metrics.body, HasSubstr(absl::StrCat(
                                  "quantd_model_accuracy_ratio{model=\"resnet8\",precision=\"fp32\",version=\"1\"} ",
                                  static_cast<double>(job_fp32_correct) / kServedImages)));
    EXPECT_THAT(metrics.body, HasSubstr(absl::StrCat("quantd_model_accuracy_samples{model=\"resnet8\",version=\"1\"} ",
                                                     kServedImages, "\n")));
    // quantctl models shows the job's figures and, below, the newest
    // evaluation's (this int8-only one), as ListModels carries them.
    RunResult models = quantd.Ctl({"models", "resnet8"});
    ASSERT_EQ(models.exit_code, 0) << models.err;
    const std::string last = absl::StrCat("last evaluation ", e["id"].get<std::string>(), ": int8 ",
                                          absl::StrFormat("%.2f%% (%d/%d)", 100.0 * first_correct / kSubset,
                                                          first_correct, kSubset),
                                          "\n");
    EXPECT_THAT(models.out + "\n", HasSubstr(last)) << models.out;

    RunResult missing = quantd.Ctl({"eval", "resnet8:9", absl::StrCat("--data=", kTest)});
    EXPECT_NE(missing.exit_code, 0);
    EXPECT_THAT(missing.err, HasSubstr("no version 9"));

    // An uploaded dataset whose bytes changed in the blob store (the upload
    // is its only copy) is DATA_LOSS naming the field, for an evaluation and
    // a job alike, not images read from damaged bytes.
    {
      RunResult upload = quantd.Ctl({"upload", std::string(FIXTURES_DIR) + "/cifar10/calib_batch.bin", "--kind=dataset"});
      ASSERT_EQ(upload.exit_code, 0) << upload.err;
      const std::string blob = upload.out.substr(0, 64);
      {
        std::fstream file(quantd.dir() + "/data/blobs/" + blob, std::ios::in | std::ios::out | std::ios::binary);
        file.seekp(5000);
        file.put('\x7f');
      }
      RunResult damaged_eval = quantd.Ctl({"eval", "resnet8:1", "--data_blob=" + blob});
      EXPECT_EQ(damaged_eval.exit_code, 1) << damaged_eval.out;
      EXPECT_THAT(damaged_eval.err, HasSubstr("code 15"));  // DATA_LOSS
      EXPECT_THAT(damaged_eval.err, HasSubstr("dataset.blob_id: blob " + blob + " is corrupted in the blob store"));
      RunResult damaged_job = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), "--calib_blob=" + blob});
      EXPECT_EQ(damaged_job.exit_code, 1) << damaged_job.out;
      EXPECT_THAT(damaged_job.err, HasSubstr("code 15"));
      EXPECT_THAT(damaged_job.err, HasSubstr("calibration.dataset.blob_id: blob " + blob));
      EXPECT_THAT(damaged_job.err, HasSubstr("upload the original file again"));
    }

    // Images of another layout than the version's are refused when the
    // evaluation starts, not after the models have loaded, saying how the
    // file was read and naming no path of this server.
    {
      std::string header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 32, 32, 3), }";
      while ((10 + header.size() + 1) % 64 != 0) header += ' ';
      header += '\n';
      std::ofstream npy(quantd.dir() + "/data/nhwc.npy", std::ios::binary);
      npy << "\x93NUMPY" << '\x01' << '\x00' << static_cast<char>(header.size()) << '\x00' << header
          << std::string(2 * 32 * 32 * 3, '\x01');
      std::string labels = "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }";
      while ((10 + labels.size() + 1) % 64 != 0) labels += ' ';
      labels += '\n';
      std::ofstream labels_npy(quantd.dir() + "/data/nhwc_labels.npy", std::ios::binary);
      labels_npy << "\x93NUMPY" << '\x01' << '\x00' << static_cast<char>(labels.size()) << '\x00' << labels
                 << std::string(16, '\0');
    }
    RunResult nhwc = quantd.Ctl({"eval", "resnet8:1", "--data=nhwc.npy", "--data_format=npy",
                                 "--data_labels=nhwc_labels.npy"});
    EXPECT_EQ(nhwc.exit_code, 1) << nhwc.out << nhwc.err;
    EXPECT_THAT(nhwc.err, HasSubstr("code 3"));
    EXPECT_THAT(nhwc.err, HasSubstr("dataset: its samples are [32, 32, 3] (read as NCHW, the layout version 1 was "
                                    "calibrated in), not resnet8's input shape [3, 32, 32]"));
    EXPECT_THAT(nhwc.err, Not(HasSubstr(quantd.dir())));

    // A long evaluation started by mistake is cancelled (it held one of the
    // server's evaluation slots to the end): CANCELLED at its next batch,
    // with the reason; cancelling it again is FAILED_PRECONDITION.
    auto quantd_stub = v1::QuantizationService::NewStub(channel);
    v1::EvaluateRequest long_one;
    long_one.set_model_name("resnet8");
    long_one.mutable_dataset()->set_path(kTest);
    long_one.mutable_dataset()->set_format(v1::DATASET_FORMAT_CIFAR10_BINARY);
    long_one.set_batch_size(1);
    v1::Evaluation started;
    {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      ASSERT_TRUE(quantd_stub->Evaluate(&context, long_one, &started).ok());
    }
    RunResult cancel = quantd.Ctl({"cancel", started.id(), "--reason=wrong dataset"});
    ASSERT_EQ(cancel.exit_code, 0) << cancel.out << cancel.err;
    EXPECT_THAT(cancel.out, HasSubstr("cancel requested"));
    RunResult followed = quantd.Ctl({"eval", "--id=" + started.id()});
    EXPECT_EQ(followed.exit_code, 1);
    EXPECT_THAT(followed.err, HasSubstr("CANCELLED: cancelled: wrong dataset")) << followed.err;
    v1::Evaluation ended;
    {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::GetEvaluationRequest get;
      get.set_id(started.id());
      ASSERT_TRUE(quantd_stub->GetEvaluation(&context, get, &ended).ok());
    }
    EXPECT_EQ(ended.state(), v1::EVALUATION_STATE_CANCELLED);
    EXPECT_LT(ended.samples_done(), ended.samples_total());
    RunResult cancelled_again = quantd.Ctl({"cancel", started.id()});
    EXPECT_EQ(cancelled_again.exit_code, 1);
    EXPECT_THAT(cancelled_again.err, HasSubstr("code 9"));
  }
  {  // quantctl infer: images from a local file, top K with class names.
    RunResult infer = quantd.Ctl({"infer", "resnet8", "--data=" + std::string(FIXTURES_DIR) + "/cifar10/test_batch.bin",
                                  "--first=0", "--count=3", "--top=2"});
    ASSERT_EQ(infer.exit_code, 0) << infer.out << infer.err;
    const char* kNames[] = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
    for (int i = 0; i < 3; ++i) {
      EXPECT_THAT(infer.out, HasSubstr(absl::StrCat("image ", i, " (", kNames[test.labels[i]], "):  ",
                                                    kNames[int8.predictions[i]], " ")));
    }
    RunResult past = quantd.Ctl({"infer", "resnet8", "--data=" + std::string(FIXTURES_DIR) + "/cifar10/test_batch.bin",
                                 "--first=9999", "--count=2"});
    EXPECT_EQ(past.exit_code, 2);
    EXPECT_THAT(past.err, HasSubstr("--first/--count: 2 images from index 9999 run past the file's 10000 images"));
  }
  {  // A quantization job alongside inference: inference never fails nor
     // changes its answers, and the job's artifact is byte-identical to the
     // same job run alone (the first). It publishes version 2, which the
     // clients (asking for the latest) switch to mid-flight.
    std::atomic<bool> stop{false};
    std::atomic<int64_t> requests{0}, failures{0}, wrong{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&, c] {
        for (int64_t i = 0; !stop.load(); ++i) {
          const size_t first = static_cast<size_t>((c * 256 + i * 8) % (kServedImages - 8));
          inference::ModelInferResponse response;
          if (!Infer(*stub, InferRequest("resnet8", test, first, 8), &response).ok()) {
            ++failures;
            continue;
          }
          const std::string scores = Scores(response);
          for (size_t k = 0; k < 8 && scores.size() == 8 * 40; ++k) {
            float row[10];
            std::memcpy(row, scores.data() + k * 40, sizeof(row));
            const int best = static_cast<int>(std::max_element(row, row + 10) - row);
            if (best != int8.predictions[first + k]) ++wrong;
          }
          if (scores.size() != 8 * 40) ++wrong;
          ++requests;
        }
      });
    }
    RunResult again = quantd.Ctl(SubmitArgs({"--model_name=resnet8", "--wait"}));
    const int64_t during_job = requests.load();
    stop = true;
    for (std::thread& t : clients) t.join();
    ASSERT_EQ(again.exit_code, 0) << again.out << again.err;
    nlohmann::json second = quantd.Job(JobIdFrom(again.out));
    EXPECT_EQ(second["result"]["modelVersion"], "2");
    EXPECT_EQ(second["result"]["artifactSha256"], result["artifactSha256"]) << "the job's artifact changed when "
                                                                                 "inference ran beside it";
    EXPECT_GT(during_job, 0);
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(wrong.load(), 0);
    std::cout << "a job alongside inference: " << requests.load() << " requests of 8 images from 4 clients, "
              << failures.load() << " errors, the same artifact as the job run alone\n";
  }
  RunResult models = quantd.Ctl({"models"});
  EXPECT_THAT(models.out, HasSubstr("resnet8"));
  EXPECT_THAT(models.out, HasSubstr(absl::StrCat("(", job_int8_correct, "/", kServedImages, ")")));
  // Unpublished: no longer served (the job and artifact stay).
  ASSERT_EQ(quantd.Ctl({"models", "delete", "resnet8:1"}).exit_code, 0);
  inference::ModelInferRequest first_version = good;
  first_version.set_model_version("1");
  expect_error(first_version, grpc::StatusCode::NOT_FOUND, "resnet8");
  EXPECT_EQ(quantd.Ctl({"artifacts", result["artifactId"]}).exit_code, 0);
  // Empty listings say so.
  EXPECT_EQ(quantd.Ctl({"models", "nope"}).out, "no published versions of nope\n");
  EXPECT_EQ(quantd.Ctl({"jobs", "--state=failed"}).out, "no jobs in state failed\n");
}

// Issue #12: quantd's range estimators are a custom qconfig away, from
// quantctl and the API, and a bad choice names its flag or field.
TEST(JobsIntegrationTest, RangeEstimatorsRunAsCustomQConfigsAndBadChoicesNameTheirField) {
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  RunResult submit = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib),
                                 "--fusion=auto", "--preset=custom", "--activation_observer=percentile",
                                 "--percentile=99.99", "--weight_observer=per_channel_symmetric",
                                 absl::StrCat("--eval=", kTest), "--eval_max_samples=1000", "--wait"});
  ASSERT_EQ(submit.exit_code, 0) << submit.out << submit.err << quantd.log();
  nlohmann::json job = quantd.Job(JobIdFrom(submit.out));
  const nlohmann::json& result = job["result"];
  EXPECT_THAT(result["qconfigDescription"].get<std::string>(), HasSubstr("HistogramObserver[percentile 99.99]"));
  EXPECT_EQ(result["requirements"]["activationQuantMax"], "255");
  EXPECT_EQ(result["quality"]["passed"], true);
  EXPECT_GE(result["quality"]["top1Agreement"].get<double>(), 0.95);
  // A different estimator gives a different model.
  RunResult mse = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib),
                              "--fusion=auto", "--preset=custom", "--activation_observer=mse", "--wait"});
  ASSERT_EQ(mse.exit_code, 0) << mse.out << mse.err;
  nlohmann::json mse_job = quantd.Job(JobIdFrom(mse.out));
  EXPECT_THAT(mse_job["result"]["qconfigDescription"].get<std::string>(), HasSubstr("HistogramObserver[mse]"));
  EXPECT_NE(mse_job["result"]["artifactSha256"], result["artifactSha256"]);

  RunResult no_custom = quantd.Ctl(SubmitArgs({"--percentile=99"}));
  EXPECT_EQ(no_custom.exit_code, 2);
  EXPECT_THAT(no_custom.err, HasSubstr("--percentile: needs --preset=custom"));
  RunResult unknown = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib),
                                  "--preset=custom", "--activation_observer=kl"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.err, HasSubstr("--activation_observer: unknown observer \"kl\""));
  RunResult out_of_range = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib),
                                       "--preset=custom", "--activation_observer=percentile", "--percentile=150"});
  // Refused by quantctl before any call, as quantd-quantize refuses it (the
  // server's own check, qconfig.custom.percentile, is in job_conversion_test).
  EXPECT_EQ(out_of_range.exit_code, 2);
  EXPECT_THAT(out_of_range.err, HasSubstr("--percentile must be a number in (0, 100], not \"150\""));
}

// Accuracy-aware mode end to end: flags, the trial table in the result,
// trials on the WatchJob stream and in the metrics, and the best preset.
TEST(JobsIntegrationTest, AccuracyAwareJobReportsEveryTrialOnWatchAndInMetrics) {
  Quantd quantd({"--metrics_port=0"});
  ASSERT_TRUE(quantd.Start());
  // Against FP32's predictions with a 0.2-point tolerance, no range estimator
  // suffices (they agree with FP32 on 98-99.3% of images): the trial budget
  // ends the search among the layers tried alone in FP32 (the time budget is
  // out of the way on slow or sanitized builds).
  RunResult submit = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib),
                                 "--samples_per_class=20", absl::StrCat("--tuning=", kVal), "--against_fp32",
                                 "--tolerance=0.2", "--max_trials=15", "--max_fp32_layers=3",
                                 "--time_budget_seconds=600", "--wait"});
  ASSERT_EQ(submit.exit_code, 0) << submit.out << submit.err << quantd.log();
  EXPECT_THAT(submit.out, HasSubstr(" trial 1/15 estimator: top-1 "));
  EXPECT_THAT(submit.out, HasSubstr(" trial 15/15 "));
  EXPECT_THAT(submit.out, HasSubstr("val_batch.bin (2000 images, FP32's predictions as labels): FP32 top-1 "
                                    "100.00%, goal >= 99.80%; NOT met (trial budget)"));
  nlohmann::json job = quantd.Job(JobIdFrom(submit.out));
  const nlohmann::json& result = job["result"];
  const nlohmann::json& tuning = result["tuning"];
  ASSERT_EQ(tuning["trials"].size(), 15u) << tuning.dump();
  EXPECT_EQ(job["request"]["accuracyGoal"].value("maxFp32Layers", 0), 3) << job["request"].dump();
  EXPECT_EQ(tuning["stoppedBecause"], "trial budget");
  EXPECT_EQ(tuning["met"], false);
  EXPECT_DOUBLE_EQ(tuning["fp32Top1"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(tuning["targetTop1"].get<double>(), 0.998);
  int estimators = 0, alone = 0;
  for (const nlohmann::json& trial : tuning["trials"]) {
    const std::string stage = trial["stage"];
    if (stage == "estimator") ++estimators;
    if (stage == "sensitivity") {
      ++alone;
      EXPECT_EQ(trial["fp32Layers"].size(), 1u);
    }
    EXPECT_GT(trial["top1Agreement"].get<double>(), 0.9);
  }
  // fbgemm's, then 8-bit, then 5 estimators with bias correction, then the
  // same 5 with fitted weight rounding too
  EXPECT_EQ(estimators, 12);
  EXPECT_EQ(alone, 3);
  EXPECT_EQ(tuning["sensitivity"].size(), 3u);
  // The artifact keeps the best trial's FP32 layers, and the job says so.
  const nlohmann::json& best = tuning["trials"][tuning.value("bestTrial", 0)];
  EXPECT_EQ(tuning.value("fp32Layers", nlohmann::json::array()), best.value("fp32Layers", nlohmann::json::array()));
  EXPECT_EQ(result["fallbacks"].size(), 1u + best.value("fp32Layers", nlohmann::json::array()).size());
  ASSERT_GE(result["advice"].size(), 1u);
  EXPECT_THAT(result["advice"].dump(), HasSubstr("least accurate int8 layers"));
  EXPECT_THAT(result["advice"].dump(), HasSubstr("bias correction on "));
  EXPECT_THAT(result["advice"].dump(), HasSubstr("fitted weight rounding on "));
  CurlResult metrics = Curl(quantd.http_url() + "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_THAT(metrics.body, HasSubstr(R"(quantd_tuning_trials_total{outcome="short",stage="estimator"} 12)"));
  EXPECT_THAT(metrics.body, HasSubstr(R"(quantd_tuning_trials_total{outcome="short",stage="sensitivity"} 3)"));
  EXPECT_THAT(metrics.body, HasSubstr(R"(quantd_job_phase_duration_seconds_count{phase="tuning"} 1)"));

  // The best preset: every estimator tried on the calibration images, no labels.
  RunResult best_preset = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib),
                                      "--samples_per_class=20", "--preset=best", "--wait"});
  ASSERT_EQ(best_preset.exit_code, 0) << best_preset.out << best_preset.err;
  nlohmann::json best_job = quantd.Job(JobIdFrom(best_preset.out));
  EXPECT_EQ(best_job["result"]["tuning"]["trials"].size(), 5u);
  EXPECT_THAT(best_job["result"]["qconfigDescription"].get<std::string>(), StartsWith("best: "));
  EXPECT_EQ(best_job["result"]["requirements"]["activationQuantMax"], "255");
  EXPECT_THAT(best_job["result"]["qconfigDescription"].get<std::string>(), EndsWith(" bias_correction"));

  // Bias correction, fitted rounding and cross-layer equalization on a
  // PyTorch preset, through the API (and the job store's JSON).
  RunResult corrected = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib),
                                    "--samples_per_class=20", "--preset=onednn", "--bias_correction",
                                    "--fitted_rounding", "--cross_layer_equalization", "--wait"});
  ASSERT_EQ(corrected.exit_code, 0) << corrected.out << corrected.err;
  nlohmann::json corrected_job = quantd.Job(JobIdFrom(corrected.out));
  EXPECT_THAT(corrected_job["result"]["qconfigDescription"].get<std::string>(),
              AllOf(StartsWith("onednn: "), EndsWith(" equalization fitted_rounding bias_correction")));
  EXPECT_EQ(corrected_job["request"]["qconfig"].value("biasCorrection", false), true)
      << corrected_job["request"].dump();
  EXPECT_EQ(corrected_job["request"]["qconfig"].value("fittedRounding", false), true);
  EXPECT_EQ(corrected_job["request"]["qconfig"].value("crossLayerEqualization", false), true);
  // ResNet8's three blocks each have one conv pair joined by a ReLU alone.
  EXPECT_THAT(corrected_job["result"]["advice"].dump(),
              HasSubstr("cross-layer equalization rescaled 3 conv pair(s): layer1.conv1 -> layer1.conv2"));

  RunResult no_tuning = quantd.Ctl(SubmitArgs({"--tolerance=0.2"}));
  EXPECT_EQ(no_tuning.exit_code, 2);
  EXPECT_THAT(no_tuning.err, HasSubstr("--tolerance: needs --tuning or --tuning_blob"));
  RunResult bad_tolerance = quantd.Ctl(SubmitArgs({absl::StrCat("--tuning=", kVal), "--tolerance=150"}));
  // Refused by quantctl before any call (the server's own check,
  // accuracy_goal.tolerance, is in job_conversion_test).
  EXPECT_EQ(bad_tolerance.exit_code, 2);
  EXPECT_THAT(bad_tolerance.err, HasSubstr("--tolerance: a number of points in [0, 100] expected"));
  RunResult missing = quantd.Ctl(SubmitArgs({"--tuning=fixtures/cifar10/no_such.bin"}));
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_THAT(missing.err, HasSubstr("accuracy_goal.tuning"));
}

TEST(JobsIntegrationTest, ThirdPartyJsonClientRunsTheSameJob) {
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  nlohmann::json groups = nlohmann::json::array();
  for (const char* g : {"conv1,bn1,relu1", "layer1.conv1,layer1.bn1,layer1.relu1", "layer1.conv2,layer1.bn2"}) {
    nlohmann::json modules = nlohmann::json::array();
    std::string s = g;
    size_t start = 0;
    while (true) {
      size_t comma = s.find(',', start);
      modules.push_back(s.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    groups.push_back({{"modules", modules}});
  }
  nlohmann::json request = {
      {"model", {{"path", kModel}}},
      {"qconfig", {{"preset", "QCONFIG_PRESET_FBGEMM"}}},
      {"fusion", {{"groups", {{"groups", groups}}}}},
      {"calibration", {{"dataset", {{"path", kCalib}, {"format", "DATASET_FORMAT_CIFAR10_BINARY"}}},
                       {"batch_size", 100}}},
      {"idempotency_key", "json-client-1"}};
  auto node = RunCommand({NODE_BIN, std::string(NODE_DIR) + "/submit_job.js", quantd.target(), request.dump()},
                         kJobTimeout);
  ASSERT_TRUE(node.ok());
  ASSERT_EQ(node->exit_code, 0) << node->out << node->err;
  auto report = nlohmann::json::parse(node->out, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << node->out;
  EXPECT_EQ(report["submitted"]["state"], "JOB_STATE_QUEUED");
  EXPECT_EQ(report["final"]["state"], "JOB_STATE_SUCCEEDED") << node->out;
  EXPECT_EQ(report["final"]["result"]["artifact_sha256"].get<std::string>().size(), 64u);
  // Same idempotency key, same request: the same job.
  auto again = RunCommand({NODE_BIN, std::string(NODE_DIR) + "/submit_job.js", quantd.target(), request.dump()},
                          kJobTimeout);
  ASSERT_TRUE(again.ok());
  auto second = nlohmann::json::parse(again->out, nullptr, false);
  EXPECT_EQ(second["submitted"]["id"], report["submitted"]["id"]);
}

TEST(JobsIntegrationTest, TwentyConcurrentSubmitsFillTheQueueAndTheRestAreRejected) {
  Quantd quantd({"--workers=1", "--queue_capacity=5"});
  ASSERT_TRUE(quantd.Start());
  std::vector<std::unique_ptr<Subprocess>> clients;
  for (int i = 0; i < 20; ++i) {
    std::vector<std::string> argv = {QUANTCTL_BIN, "--server=" + quantd.target()};
    for (const std::string& a : SubmitArgs({"--samples_per_class=5"})) argv.push_back(a);
    Subprocess::Options options;
    options.stdout_path = absl::StrCat(quantd.dir(), "/submit", i, ".out");
    options.stderr_path = absl::StrCat(quantd.dir(), "/submit", i, ".err");
    auto child = Subprocess::Start(argv, options);
    ASSERT_TRUE(child.ok());
    clients.push_back(std::move(*child));
  }
  std::vector<std::string> accepted;
  int rejected = 0;
  for (int i = 0; i < 20; ++i) {
    std::optional<int> code = clients[i]->WaitFor(absl::Seconds(60));
    ASSERT_TRUE(code.has_value());
    if (*code == 0) {
      accepted.push_back(JobIdFrom(ReadFileOrEmpty(absl::StrCat(quantd.dir(), "/submit", i, ".out"))));
    } else {
      EXPECT_THAT(ReadFileOrEmpty(absl::StrCat(quantd.dir(), "/submit", i, ".err")), HasSubstr("code 8"));
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GE(accepted.size(), 5u);
  for (const std::string& id : accepted) EXPECT_EQ(quantd.WaitDone(id)["state"], "JOB_STATE_SUCCEEDED");
  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));
}

TEST(JobsIntegrationTest, TwentyJobsWithOneWorkerAllFinishInOrder) {
  Quantd quantd({"--workers=1"});
  ASSERT_TRUE(quantd.Start());
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    RunResult r = quantd.Ctl(SubmitArgs({"--samples_per_class=5"}));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ids.push_back(JobIdFrom(r.out));
  }
  std::string previous_start;
  for (const std::string& id : ids) {
    nlohmann::json job = quantd.WaitDone(id);
    EXPECT_EQ(job["state"], "JOB_STATE_SUCCEEDED");
    std::string start = job.value("startTime", "");
    EXPECT_LT(previous_start, start) << "job " << id << " started before an older one";
    previous_start = start;
  }
  RunResult list = quantd.Ctl({"--json", "jobs", "--page_size=1000"});
  EXPECT_EQ(nlohmann::json::parse(list.out)["jobs"].size(), 20u);
  // The same request made the same bytes: one artifact, listed by its first
  // job; asked for by another job, it names that job (it once named the
  // first).
  nlohmann::json artifacts = nlohmann::json::parse(quantd.Ctl({"--json", "artifacts"}).out, nullptr, false);
  ASSERT_TRUE(artifacts.is_object());
  ASSERT_EQ(artifacts["artifacts"].size(), 1u) << artifacts.dump();
  EXPECT_EQ(artifacts["artifacts"][0]["jobId"], ids[0]);
  nlohmann::json of_job =
      nlohmann::json::parse(quantd.Ctl({"--json", "artifacts", "--job=" + ids[7]}).out, nullptr, false);
  ASSERT_TRUE(of_job.is_object());
  ASSERT_EQ(of_job["artifacts"].size(), 1u) << of_job.dump();
  EXPECT_EQ(of_job["artifacts"][0]["jobId"], ids[7]);
  EXPECT_EQ(of_job["artifacts"][0]["id"], artifacts["artifacts"][0]["id"]);
}

// Starts `quantctl watch ID` into a file and waits for `needle` in it.
bool WatchUntil(Quantd& quantd, const std::string& id, const std::string& needle,
                std::unique_ptr<Subprocess>* watcher) {
  Subprocess::Options options;
  options.stdout_path = quantd.dir() + "/watch." + id;
  options.stderr_path = quantd.dir() + "/watch." + id + ".err";
  auto child = Subprocess::Start({QUANTCTL_BIN, "--server=" + quantd.target(), "watch", id}, options);
  if (!child.ok()) return false;
  *watcher = std::move(*child);
  const absl::Time deadline = absl::Now() + kJobTimeout;
  while (absl::Now() < deadline) {
    if (ReadFileOrEmpty(options.stdout_path).find(needle) != std::string::npos) return true;
    absl::SleepFor(absl::Milliseconds(2));  // poll interval
  }
  return false;
}

// Submits a fbgemm job in batches of 10 and returns its id once a watcher
// (left running in `watcher`) has seen calibration start; "" on failure.
std::string SubmitAndWatchUntilCalibrating(Quantd& quantd, std::unique_ptr<Subprocess>* watcher) {
  RunResult r = quantd.Ctl(SubmitArgs({"--batch_size=10"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (r.exit_code != 0) return "";
  const std::string id = JobIdFrom(r.out);
  return WatchUntil(quantd, id, " calibration ", watcher) ? id : "";
}

// Starts `quantd`, submits a job as above and kills quantd (SIGKILL) once
// the job calibrates; returns the job's id, "" on failure.
std::string StartAndKillDuringCalibration(Quantd& quantd) {
  if (!quantd.Start()) return "";
  std::unique_ptr<Subprocess> watcher;
  const std::string id = SubmitAndWatchUntilCalibrating(quantd, &watcher);
  if (id.empty() || !quantd.child().Signal(SIGKILL) || !quantd.child().WaitFor(absl::Seconds(10)).has_value()) {
    return "";
  }
  return id;
}

TEST(JobsIntegrationTest, KillDuringCalibrationThenRestartGivesTheSameArtifact) {
  std::string reference;
  {
    Quantd quantd;
    ASSERT_TRUE(quantd.Start());
    RunResult r = quantd.Ctl(SubmitArgs({"--batch_size=10", "--wait"}));
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    reference = quantd.Job(JobIdFrom(r.out))["result"]["artifactSha256"];
  }
  Quantd quantd({"--metrics_port=0"});
  const std::string id = StartAndKillDuringCalibration(quantd);
  ASSERT_FALSE(id.empty()) << quantd.log();
  ASSERT_TRUE(quantd.Start());
  EXPECT_THAT(quantd.log(), HasSubstr("requeued=1"));
  nlohmann::json job = quantd.WaitDone(id);
  EXPECT_EQ(job["state"], "JOB_STATE_SUCCEEDED");
  EXPECT_EQ(job["attemptCount"], 2);
  EXPECT_EQ(job["result"]["artifactSha256"], reference);
  // Dashboards and the interrupted-jobs alert see the recovery.
  CurlResult metrics = Curl(quantd.http_url() + "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_THAT(metrics.body, HasSubstr("quantd_jobs_recovered_total{outcome=\"requeued\"} 1\n"));
  EXPECT_THAT(metrics.body, HasSubstr("quantd_jobs_recovered_total{outcome=\"failed\"} 0\n"));
  EXPECT_TRUE(TemporaryFiles(quantd.dir() + "/data/artifacts").empty());
  EXPECT_TRUE(TemporaryFiles(quantd.dir() + "/data/blobs").empty());
}

// Published versions whose artifact is gone from the store (a volume not
// mounted, files deleted by hand) are named in the start-up log, not found
// only when a client's inference fails; the server serves the rest.
TEST(JobsIntegrationTest, AMissingPublishedArtifactIsLoggedAtStart) {
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  RunResult submit = quantd.Ctl(SubmitArgs({"--model_name=r8", "--batch_size=10", "--wait"}));
  ASSERT_EQ(submit.exit_code, 0) << submit.out << submit.err << quantd.log();
  const std::string sha = quantd.Job(JobIdFrom(submit.out))["result"]["artifactSha256"];
  ASSERT_TRUE(quantd.child().Signal(SIGTERM));
  ASSERT_TRUE(quantd.child().WaitFor(absl::Seconds(30)).has_value());
  EXPECT_THAT(quantd.log(), ::testing::Not(HasSubstr("is missing from the artifact store")));
  // Cut to 0 bytes (a disk that lost it, a copy that failed): damaged.
  const std::string file = quantd.dir() + "/data/artifacts/" + sha + ".pt";
  const std::uintmax_t stored = fs::file_size(file);
  fs::resize_file(file, 0);
  ASSERT_TRUE(quantd.Start());
  EXPECT_THAT(quantd.log(), HasSubstr(absl::StrCat("WARNING quantd: artifact art-", sha.substr(0, 16),
                                                   " is 0 bytes in the artifact store under ")));
  EXPECT_THAT(quantd.log(), HasSubstr(absl::StrCat(", not the ", stored, " its job stored (damaged): versions r8:1")));
  ASSERT_TRUE(quantd.child().Signal(SIGTERM));
  ASSERT_TRUE(quantd.child().WaitFor(absl::Seconds(30)).has_value());
  ASSERT_TRUE(fs::remove(file));
  ASSERT_TRUE(quantd.Start());
  EXPECT_THAT(quantd.log(), HasSubstr(absl::StrCat("WARNING quantd: artifact art-", sha.substr(0, 16),
                                                   " is missing from the artifact store under ")));
  EXPECT_THAT(quantd.log(), HasSubstr(": versions r8:1 cannot be served until it is back"));
  RunResult health = quantd.Ctl({"health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  // Deleting the job unpublishes its version, and says so.
  RunResult deleted = quantd.Ctl({"delete", JobIdFrom(submit.out)});
  EXPECT_EQ(deleted.exit_code, 0) << deleted.err;
  EXPECT_THAT(deleted.out, HasSubstr("; the model version it published, r8:1, is unpublished"));
  EXPECT_THAT(quantd.log(), HasSubstr(absl::StrCat("method=DeleteJob target=", JobIdFrom(submit.out),
                                                   " result=OK unpublished=r8/1")));
  EXPECT_THAT(quantd.Ctl({"models"}).out, ::testing::Not(HasSubstr("r8")));
}

// A job store older than the artifacts (a jobs.db restored from a backup;
// here, one made anew) does not make the start-up sweep delete the
// artifacts and manifests of jobs it never knew, their only record: they
// stay, and the log says why, also after the store has newer jobs.
TEST(JobsIntegrationTest, AnOlderJobStoreKeepsTheArtifactsOfJobsItNeverKnew) {
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  RunResult submit = quantd.Ctl(SubmitArgs({"--batch_size=10", "--wait"}));
  ASSERT_EQ(submit.exit_code, 0) << submit.out << submit.err << quantd.log();
  const std::string sha = quantd.Job(JobIdFrom(submit.out))["result"]["artifactSha256"];
  ASSERT_TRUE(quantd.child().Signal(SIGTERM));
  ASSERT_TRUE(quantd.child().WaitFor(absl::Seconds(30)).has_value());
  for (const auto& entry : fs::directory_iterator(quantd.dir() + "/data")) {
    if (absl::StartsWith(entry.path().filename().string(), "jobs.db")) fs::remove(entry.path());
  }
  ASSERT_TRUE(quantd.Start());
  // Named, so an operator knows which jobs to look for.
  EXPECT_THAT(quantd.log(), HasSubstr(absl::StrCat("WARNING quantd: kept 1 artifact files of jobs the job store has no "
                                                   "record of (", JobIdFrom(submit.out), "; was an older jobs.db")));
  EXPECT_TRUE(fs::exists(quantd.dir() + "/data/artifacts/" + sha + ".pt"));
  // Still kept once the store has a newer job of its own, at the next start
  // (they were deleted then).
  RunResult another = quantd.Ctl(SubmitArgs({"--batch_size=10", "--seed=7", "--wait"}));
  ASSERT_EQ(another.exit_code, 0) << another.out << another.err << quantd.log();
  ASSERT_TRUE(quantd.child().Signal(SIGTERM));
  ASSERT_TRUE(quantd.child().WaitFor(absl::Seconds(30)).has_value());
  ASSERT_TRUE(quantd.Start());
  EXPECT_THAT(quantd.log(), HasSubstr("WARNING quantd: kept 1 artifact files of jobs the job store has no record of"));
  EXPECT_TRUE(fs::exists(quantd.dir() + "/data/artifacts/" + sha + ".pt"));
}

// A second quantd on the same data dir (a rolling update on a shared
// volume) used to re-queue the first one's running job: it ran twice. Now it
// refuses to start, and the first one's job runs once.
TEST(JobsIntegrationTest, ASecondServerOnTheSameDataDirRefusesToStart) {
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  std::unique_ptr<Subprocess> watcher;
  const std::string id = SubmitAndWatchUntilCalibrating(quantd, &watcher);
  ASSERT_FALSE(id.empty()) << quantd.log();
  auto second = RunCommand({QUANTD_BIN, "--bind_address=127.0.0.1", "--grpc_port=0", "--metrics_port=-1",
                            "--data_dir=" + quantd.dir() + "/data"},
                           absl::Seconds(60));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE(second->exit_code, 0);
  EXPECT_THAT(second->err, HasSubstr("is in use by another quantd"));
  EXPECT_THAT(second->err, HasSubstr("--data_dir"));
  nlohmann::json job = quantd.WaitDone(id);
  EXPECT_EQ(job["state"], "JOB_STATE_SUCCEEDED");
  EXPECT_EQ(job["attemptCount"], 1);
}

// Blobs have a life cycle: listed with the jobs using them, not deletable
// while a job needs them, deleted after; the data dir quota refuses uploads
// and artifacts that would not fit, failing the job cleanly.
TEST(JobsIntegrationTest, BlobsAreListedProtectedWhileUsedAndDeleted) {
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  RunResult upload = quantd.Ctl({"upload", std::string(FIXTURES_DIR) + "/models/resnet8_fp32.torchscript.pt"});
  ASSERT_EQ(upload.exit_code, 0) << upload.err;
  const std::string blob = upload.out.substr(0, 64);
  EXPECT_THAT(quantd.Ctl({"blobs"}).out, HasSubstr(blob));
  const std::vector<std::string> submit = {"submit", "--model_blob=" + blob, absl::StrCat("--calib=", kCalib),
                                           "--batch_size=10", absl::StrCat("--fusion=", kFusion),
                                           "--idempotency_key=blob-lifecycle"};
  RunResult submitted = quantd.Ctl(submit);
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string id = JobIdFrom(submitted.out);
  std::unique_ptr<Subprocess> watcher;
  ASSERT_TRUE(WatchUntil(quantd, id, " calibration ", &watcher)) << quantd.log();
  EXPECT_THAT(quantd.Ctl({"blobs", blob}).out, HasSubstr("used by " + id));
  RunResult refused = quantd.Ctl({"blobs", "delete", blob});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, HasSubstr("code 9"));  // FAILED_PRECONDITION
  EXPECT_THAT(refused.err, HasSubstr(id));
  EXPECT_EQ(quantd.WaitDone(id)["state"], "JOB_STATE_SUCCEEDED");
  RunResult deleted = quantd.Ctl({"blobs", "delete", blob});
  EXPECT_EQ(deleted.exit_code, 0) << deleted.err;
  EXPECT_THAT(quantd.Ctl({"blobs", blob}).err, HasSubstr("code 5"));
  EXPECT_THAT(quantd.Ctl({"blobs"}).out, Not(HasSubstr(blob)));
  EXPECT_THAT(quantd.log(), HasSubstr("method=DeleteBlob target=" + blob + " result=OK"));
  // A retry of the submission (same key, same request) still gets its job,
  // though the blob it names is gone; a new key needs the blob.
  RunResult retried = quantd.Ctl(submit);
  EXPECT_EQ(retried.exit_code, 0) << retried.err;
  EXPECT_EQ(JobIdFrom(retried.out), id);
  std::vector<std::string> fresh = submit;
  fresh.back() = "--idempotency_key=blob-lifecycle-2";
  RunResult refused_fresh = quantd.Ctl(fresh);
  EXPECT_EQ(refused_fresh.exit_code, 1);
  EXPECT_THAT(refused_fresh.err, HasSubstr("model.blob_id"));
  // The same key with another request is refused, naming the job.
  std::vector<std::string> other = submit;
  other[3] = "--batch_size=20";
  RunResult conflicting = quantd.Ctl(other);
  EXPECT_EQ(conflicting.exit_code, 1);
  EXPECT_THAT(conflicting.err, HasSubstr("code 6"));  // ALREADY_EXISTS
  EXPECT_THAT(conflicting.err, HasSubstr("was already used by job " + id));
}

TEST(JobsIntegrationTest, AFullDataDirRefusesUploadsAndFailsJobsCleanly) {
  auto bytes_under = [](const std::string& dir) {
    int64_t total = 0;
    for (const auto& entry : fs::recursive_directory_iterator(dir)) {
      if (entry.is_regular_file()) total += static_cast<int64_t>(entry.file_size());
    }
    return total;
  };
  int64_t fresh = 0;  // a fresh data dir: the job store
  {
    Quantd full({"--max_data_bytes=60000"});  // below one ResNet8 artifact
    ASSERT_TRUE(full.Start());
    fresh = bytes_under(full.dir() + "/data");
    RunResult upload = full.Ctl({"upload", std::string(FIXTURES_DIR) + "/models/resnet8_fp32.torchscript.pt"});
    EXPECT_EQ(upload.exit_code, 1);
    EXPECT_THAT(upload.err, HasSubstr("code 8"));  // RESOURCE_EXHAUSTED
    EXPECT_THAT(upload.err, HasSubstr("--max_data_bytes"));
    // No room for a job's record either: refused at submit (the job store
    // once grew past the quota one accepted job at a time).
    RunResult refused = full.Ctl(SubmitArgs({"--samples_per_class=5"}));
    EXPECT_EQ(refused.exit_code, 1);
    EXPECT_THAT(refused.err, HasSubstr("code 8"));
    EXPECT_THAT(refused.err, HasSubstr("QuantizeJob's job record"));
  }
  // Room for the record (twice the request and 64 KiB) but not for the
  // ~100 kB artifact: the job runs and FAILS cleanly when it stores.
  Quantd quantd({absl::StrCat("--max_data_bytes=", fresh + 90000)});
  ASSERT_TRUE(quantd.Start());
  RunResult job = quantd.Ctl(SubmitArgs({"--samples_per_class=5", "--wait"}));
  EXPECT_EQ(job.exit_code, 1) << job.err;
  nlohmann::json failed = quantd.Job(JobIdFrom(job.out));
  EXPECT_EQ(failed["state"], "JOB_STATE_FAILED");
  EXPECT_EQ(failed["result"]["errorCode"], 8);
  EXPECT_THAT(failed["result"]["errorMessage"].get<std::string>(), HasSubstr("quota"));
  EXPECT_TRUE(TemporaryFiles(quantd.dir() + "/data/artifacts").empty());
  EXPECT_TRUE(fs::is_empty(quantd.dir() + "/data/artifacts"));  // nothing half-written
  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));
}

// A job's batches are bounded by bytes: 10 CIFAR images as float32 are
// 122880 bytes, over a 100000-byte limit.
TEST(JobsIntegrationTest, ABatchOverTheByteLimitFailsTheJobNamingTheField) {
  Quantd quantd({"--max_batch_bytes=100000"});
  ASSERT_TRUE(quantd.Start());
  RunResult r = quantd.Ctl(SubmitArgs({"--batch_size=10", "--wait"}));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  nlohmann::json job = quantd.Job(JobIdFrom(r.out));
  EXPECT_EQ(job["state"], "JOB_STATE_FAILED");
  EXPECT_EQ(job["result"]["errorCode"], 3);
  EXPECT_THAT(job["result"]["errorMessage"].get<std::string>(),
              HasSubstr("calibration.batch_size: 10 images of 3x32x32 float32 take 122880 bytes"));
  EXPECT_EQ(quantd.WaitDone(JobIdFrom(quantd.Ctl(SubmitArgs({"--batch_size=8", "--wait"})).out))["state"],
            "JOB_STATE_SUCCEEDED");
}

// SIGTERM with a watcher attached: the watch ends at once with UNAVAILABLE
// (it used to hold the shutdown for the whole grace period), the running job
// goes back to the queue and finishes after the restart, run once.
// A graceful stop ends open watch streams at once, so they do not hold the
// shutdown; `quantctl watch` then waits for the server and, once it is back
// on its address, resumes after the last event it saw and ends with the
// job's result.
// A graceful stop waits up to its grace for calls in flight (here an upload
// that went quiet); a second SIGTERM during it stops quantd at once (it went
// unheard before), saying so, with 128 + the signal as its exit code.
TEST(JobsIntegrationTest, ASecondSigtermDuringTheGraceStopsAtOnce) {
  Quantd quantd({"--shutdown_grace_seconds=120"});
  ASSERT_TRUE(quantd.Start());
  auto stub = v1::QuantizationService::NewStub(grpc::CreateChannel(quantd.target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::BlobInfo info;
  std::unique_ptr<grpc::ClientWriter<v1::UploadModelRequest>> upload = stub->UploadModel(&context, &info);
  v1::UploadModelRequest first;
  first.mutable_metadata()->set_size_bytes(1000);
  ASSERT_TRUE(upload->Write(first));
  v1::UploadModelRequest chunk;
  chunk.set_chunk_data(std::string(10, 'x'));
  ASSERT_TRUE(upload->Write(chunk));  // the server has taken the call once this is written
  ASSERT_TRUE(quantd.child().Signal(SIGTERM));
  EXPECT_FALSE(quantd.child().WaitFor(absl::Seconds(2)).has_value()) << "the first SIGTERM waits for the upload";
  ASSERT_TRUE(quantd.child().Signal(SIGTERM));
  const std::optional<int> code = quantd.child().WaitFor(absl::Seconds(20));
  ASSERT_TRUE(code.has_value()) << quantd.log();
  EXPECT_EQ(*code, 128 + SIGTERM);
  EXPECT_THAT(quantd.log(), HasSubstr("a second SIGTERM or SIGINT stops at once"));
  EXPECT_THAT(quantd.log(), HasSubstr("received SIGTERM again while shutting down: stopping now"));
  context.TryCancel();
}

TEST(JobsIntegrationTest, GracefulShutdownEndsWatchesAndRequeuesTheRunningJob) {
  Quantd quantd({"--shutdown_grace_seconds=30"});
  ASSERT_TRUE(quantd.Start());
  std::unique_ptr<Subprocess> watcher;
  const std::string id = SubmitAndWatchUntilCalibrating(quantd, &watcher);
  ASSERT_FALSE(id.empty()) << quantd.log();
  ASSERT_TRUE(quantd.child().Signal(SIGTERM));
  // Well inside the 30 s grace: nothing holds the shutdown.
  ASSERT_TRUE(quantd.child().WaitFor(absl::Seconds(20)).has_value()) << quantd.log();
  const std::string watch_err = quantd.dir() + "/watch." + id + ".err";
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (ReadFileOrEmpty(watch_err).find("shutting down") == std::string::npos && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));  // poll interval
  }
  EXPECT_THAT(ReadFileOrEmpty(watch_err), HasSubstr("shutting down"));
  EXPECT_THAT(ReadFileOrEmpty(watch_err), HasSubstr("watching again"));
  EXPECT_FALSE(watcher->Poll().has_value()) << "the watch gave up while the server was away";
  ASSERT_TRUE(quantd.Start(/*same_port=*/true));
  nlohmann::json job = quantd.WaitDone(id);
  EXPECT_EQ(job["state"], "JOB_STATE_SUCCEEDED");
  EXPECT_EQ(job["attemptCount"], 1);  // the interrupted attempt does not count
  const std::optional<int> watch_exit = watcher->WaitFor(absl::Seconds(30));
  ASSERT_TRUE(watch_exit.has_value());
  EXPECT_EQ(*watch_exit, 0) << ReadFileOrEmpty(watch_err);
  // Resumed: the job's later events, or (when it finished before the watch
  // came back) a snapshot of it SUCCEEDED; then its result.
  const std::string events = ReadFileOrEmpty(quantd.dir() + "/watch." + id);
  EXPECT_THAT(events, HasSubstr("SUCCEEDED"));
  EXPECT_THAT(events, HasSubstr(id + " result artifact art-"));
}

TEST(JobsIntegrationTest, CancelDuringCalibrationAndTheWorkerGoesOn) {
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  const std::string first = JobIdFrom(quantd.Ctl(SubmitArgs({"--batch_size=10"})).out);
  const std::string second = JobIdFrom(quantd.Ctl(SubmitArgs({"--samples_per_class=5"})).out);
  std::unique_ptr<Subprocess> watcher;
  ASSERT_TRUE(WatchUntil(quantd, first, " calibration ", &watcher));
  RunResult cancel = quantd.Ctl({"cancel", first, "--reason=test"});
  EXPECT_EQ(cancel.exit_code, 0) << cancel.err;
  // Still RUNNING when answered, it says that the cancel took.
  EXPECT_THAT(cancel.out, ::testing::AnyOf(HasSubstr("CANCELLED"), HasSubstr("\ncancel recorded: the job ends CANCELLED")))
      << cancel.out;
  nlohmann::json job = quantd.WaitDone(first);
  EXPECT_EQ(job["state"], "JOB_STATE_CANCELLED");
  EXPECT_EQ(job["phase"], "PHASE_CALIBRATING");
  EXPECT_THAT(job["result"]["errorMessage"].get<std::string>(), HasSubstr("test"));
  ASSERT_TRUE(watcher->WaitFor(absl::Seconds(10)).has_value());
  std::string events = ReadFileOrEmpty(quantd.dir() + "/watch." + first);
  EXPECT_THAT(events, HasSubstr("state CANCELLED"));
  EXPECT_EQ(events.find("calibration 100/100"), std::string::npos);
  EXPECT_EQ(quantd.WaitDone(second)["state"], "JOB_STATE_SUCCEEDED");
}

// quantd in a mount namespace of its own with its data dir on a tmpfs of
// `size`, which `prepare` (shell commands; "$0" is the data dir) fills
// before quantd starts. By default a 450 KiB "ballast" file there stands for
// what an operator can delete to make room. Empty where this machine allows
// neither a mount namespace as root nor a user namespace.
std::vector<std::string> SmallDiskLauncher(const std::string& data_dir, const std::string& size,
                                           const std::string& prepare = "") {
  const std::string script = absl::StrCat(
      "mount -t tmpfs -o size=", size, " tmpfs \"$0\" && ",
      prepare.empty() ? absl::StrCat("ln -s '", fs::canonical(FIXTURES_DIR).string(),
                                     "' \"$0/fixtures\" && head -c 460800 /dev/zero > \"$0/ballast\"")
                      : prepare,
      " && exec \"$@\"");
  for (std::vector<std::string> unshare :
       {std::vector<std::string>{"/usr/bin/unshare", "--mount", "--propagation", "private"},
        std::vector<std::string>{"/usr/bin/unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"}}) {
    std::vector<std::string> probe = unshare;
    probe.insert(probe.end(), {"/bin/sh", "-c", "mount -t tmpfs -o size=64k tmpfs \"$0\"", data_dir});
    absl::StatusOr<RunResult> works = RunCommand(probe, absl::Seconds(20));
    if (works.ok() && works->exit_code == 0) {
      unshare.insert(unshare.end(), {"/bin/sh", "-c", script, data_dir});
      return unshare;
    }
  }
  return {};
}

// quantd killed while it runs a job, then started again on its data dir
// copied to a disk with not a byte free: it serves (health, the job list)
// instead of exiting, and its log says that the interrupted job waits. Once
// room is made, without a restart, the job is recovered and finishes.
TEST(JobsIntegrationTest, AServerStartedOnAFullDiskServesAndRecoversItsJobOnceThereIsRoom) {
  Quantd quantd;
  const std::string id = StartAndKillDuringCalibration(quantd);
  ASSERT_FALSE(id.empty()) << quantd.log();
  const std::string saved = quantd.dir() + "/saved";
  fs::copy(quantd.dir() + "/data", saved, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  // `head` stops with "No space left on device": the filler takes every byte.
  std::vector<std::string> launcher = SmallDiskLauncher(
      quantd.dir() + "/data", "16m", absl::StrCat("cp -a '", saved, "/.' \"$0\" && { head -c 32M /dev/zero > \"$0/filler\" 2>/dev/null; true; }"));
  if (launcher.empty()) GTEST_SKIP() << "no mount namespace on this machine (unshare refused)";
  quantd.set_launcher(launcher);
  ASSERT_TRUE(quantd.Start()) << quantd.log();
  const int pid = nlohmann::json::parse(ReadFileOrEmpty(quantd.dir() + "/ports.json"))["pid"].get<int>();
  const std::string data = absl::StrCat("/proc/", pid, "/root", quantd.dir(), "/data");
  ASSERT_TRUE(fs::exists(data + "/filler"));
  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));
  EXPECT_THAT(quantd.Ctl({"jobs"}).out, HasSubstr(id));
  EXPECT_THAT(quantd.log(), HasSubstr("cannot recover the jobs this server was running when it stopped yet"));
  EXPECT_EQ(quantd.Job(id)["state"], "JOB_STATE_RUNNING");

  fs::remove(data + "/filler");
  nlohmann::json job = quantd.WaitDone(id);
  EXPECT_EQ(job["state"], "JOB_STATE_SUCCEEDED") << job.dump() << quantd.log();
  EXPECT_EQ(job["attemptCount"], 2);
  // Recovered at once by the workers, or by the lease check if the job's
  // lease (30 s) ran out first on a slow machine.
  EXPECT_THAT(quantd.log(), ::testing::AnyOf(HasSubstr("recovered the jobs this server was running when it stopped: "
                                                       "requeued=1"),
                                             HasSubstr("recovered jobs whose lease ran out: requeued=1")));
}

// The data dir on a 1000 KiB filesystem: jobs run until it is full, then one
// FAILS with RESOURCE_EXHAUSTED leaving no partial file (or, when the job
// store fills up first, waits until its outcome can be recorded); with not a byte
// left the job store cannot write either, and a new job is refused or waits
// QUEUED; the server keeps serving. Once room is made (no restart), waiting
// jobs finish and new ones succeed.
TEST(JobsIntegrationTest, AFullDiskFailsJobsCleanlyAndTheServerKeepsServing) {
  Quantd quantd;
  std::vector<std::string> launcher = SmallDiskLauncher(quantd.dir() + "/data", "1000k");
  if (launcher.empty()) GTEST_SKIP() << "no mount namespace on this machine (unshare refused)";
  quantd.set_launcher(launcher);
  ASSERT_TRUE(quantd.Start());
  const int pid = nlohmann::json::parse(ReadFileOrEmpty(quantd.dir() + "/ports.json"))["pid"].get<int>();
  // quantd's view of its data dir, from outside its mount namespace.
  const std::string data = absl::StrCat("/proc/", pid, "/root", quantd.dir(), "/data");
  ASSERT_TRUE(fs::exists(data + "/ballast"));

  std::vector<std::string> ids;
  bool full = false;
  for (int samples = 1; samples <= 12 && !full; ++samples) {
    RunResult r = quantd.Ctl(SubmitArgs({absl::StrCat("--samples_per_class=", samples)}));
    if (r.exit_code != 0) {  // the job store itself refused the submit
      EXPECT_THAT(r.err, HasSubstr("code 8")) << r.err;
      full = true;
      break;
    }
    ids.push_back(JobIdFrom(r.out));
    const absl::Time deadline = absl::Now() + absl::Seconds(20);  // a job here takes about 1 s
    std::string state;
    while (absl::Now() < deadline) {
      nlohmann::json job = quantd.Job(ids.back());
      state = job.value("state", "");
      if (state == "JOB_STATE_FAILED") {
        EXPECT_EQ(job["result"]["errorCode"], 8) << job.dump();
        EXPECT_THAT(job["result"].value("errorMessage", ""), HasSubstr("No space left on device"));
        full = true;
        break;
      }
      if (state == "JOB_STATE_SUCCEEDED") break;
      absl::SleepFor(absl::Milliseconds(50));  // poll interval
    }
    if (state == "JOB_STATE_QUEUED" || state == "JOB_STATE_RUNNING") {
      // The job store cannot write: the job waits to be claimed, or to have
      // its outcome recorded, and the log says why.
      EXPECT_THAT(quantd.log(), ::testing::AnyOf(HasSubstr("cannot claim the next queued job"),
                                                 HasSubstr("cannot record the outcome of job")));
      full = true;
    }
    ASSERT_TRUE(full || state == "JOB_STATE_SUCCEEDED") << "job " << ids.back() << " is " << state;
  }
  ASSERT_TRUE(full) << "1000 KiB never filled up";
  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));
  EXPECT_EQ(quantd.Ctl({"jobs"}).exit_code, 0);
  // Nothing half-written: no temporary file, no manifest without its artifact.
  EXPECT_THAT(TemporaryFiles(data), ::testing::IsEmpty());
  for (const auto& entry : fs::directory_iterator(data + "/artifacts")) {
    const std::string name = entry.path().filename().string();
    if (absl::EndsWith(name, ".manifest.json")) {
      EXPECT_TRUE(fs::exists(data + "/artifacts/" + name.substr(0, 64) + ".pt")) << "orphan " << name;
    }
  }

  // Now not a byte left, so the job store cannot write either: a submit is
  // refused with RESOURCE_EXHAUSTED, or its job waits QUEUED (said in the
  // log) because the worker cannot claim it.
  {
    std::ofstream filler(data + "/filler", std::ios::binary);
    const std::string block(4096, 'f');
    while (filler.write(block.data(), block.size())) {
    }
  }
  RunResult refused = quantd.Ctl(SubmitArgs({"--samples_per_class=30"}));
  if (refused.exit_code == 0) {
    ids.push_back(JobIdFrom(refused.out));
    const absl::Time until = absl::Now() + absl::Seconds(3);
    while (absl::Now() < until) {
      ASSERT_EQ(quantd.Job(ids.back())["state"], "JOB_STATE_QUEUED");
      absl::SleepFor(absl::Milliseconds(100));  // poll interval
    }
    EXPECT_THAT(quantd.log(), HasSubstr("cannot claim the next queued job"));
  } else {
    EXPECT_THAT(refused.err, HasSubstr("code 8"));
  }
  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));

  // Make room; without a restart every job that was waiting finishes and a
  // new one succeeds.
  ASSERT_TRUE(fs::remove(data + "/filler"));
  ASSERT_TRUE(fs::remove(data + "/ballast"));
  for (const std::string& id : ids) {
    nlohmann::json job = quantd.WaitDone(id);
    EXPECT_THAT(job.value("state", ""), ::testing::AnyOf("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED")) << id;
  }
  RunResult after = quantd.Ctl(SubmitArgs({"--samples_per_class=20", "--wait"}));
  EXPECT_EQ(after.exit_code, 0) << after.out << after.err << RunCommand({"/bin/ls", "-lR", data}, absl::Seconds(10))->out;
  EXPECT_EQ(quantd.Job(JobIdFrom(after.out))["state"], "JOB_STATE_SUCCEEDED");
}

constexpr char kLoaderCrashers[] = SOURCE_DIR "/tests/fuzz/crashers/torchscript";

// LibTorch's TorchScript loader crashes on some archives (tests/fuzz/crashers:
// stack overflow in its parser; memory errors the sanitizer build catches).
// quantd loads each job's model in a child process first: the crash fails
// that job with INVALID_ARGUMENT, and the server and the job calibrating
// beside it go on.
TEST(JobsIntegrationTest, ModelsThatCrashLibTorchsLoaderFailOnlyTheirJob) {
  Quantd quantd({"--workers=2"});
  ASSERT_TRUE(quantd.Start());
  std::unique_ptr<Subprocess> watcher;
  const std::string good = SubmitAndWatchUntilCalibrating(quantd, &watcher);
  ASSERT_FALSE(good.empty());
  int crashers = 0;
  for (const auto& entry : fs::directory_iterator(kLoaderCrashers)) {
    SCOPED_TRACE(entry.path().string());
    ++crashers;
    RunResult upload = quantd.Ctl({"upload", entry.path().string()});
    ASSERT_EQ(upload.exit_code, 0) << upload.err;
    RunResult r = quantd.Ctl(
        {"submit", "--model_blob=" + upload.out.substr(0, 64), absl::StrCat("--calib=", kCalib), "--wait"});
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    nlohmann::json job = quantd.Job(JobIdFrom(r.out));
    EXPECT_EQ(job["state"], "JOB_STATE_FAILED");
    // INVALID_ARGUMENT; RESOURCE_EXHAUSTED for the one asking for 26 GiB.
    EXPECT_THAT(job["result"].value("errorCode", 0), ::testing::AnyOf(3, 8));
    const std::string message = job["result"].value("errorMessage", "");
    EXPECT_THAT(message, HasSubstr(upload.out.substr(0, 64)));  // names the model
    if (entry.path().filename() == "deep_nesting.pt") {
      // Overflows the stack in every build: only the child can report it.
      EXPECT_THAT(message, HasSubstr("child process"));
    }
    ASSERT_FALSE(quantd.child().Poll().has_value()) << "quantd died: " << quantd.log();
  }
  EXPECT_GE(crashers, 3);
  nlohmann::json done = quantd.WaitDone(good);
  EXPECT_EQ(done["state"], "JOB_STATE_SUCCEEDED") << done.dump();
  EXPECT_EQ(done["attemptCount"], 1);  // never interrupted
  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));
}

// In a container the child shares the server's memory limit: capped by
// --model_vet_memory_bytes, a model that needs more fails its job naming the
// flag, before it could bring the OOM killer to the server.
TEST(JobsIntegrationTest, TheVettingChildKeepsToItsMemoryCap) {
  Quantd quantd({"--model_vet_memory_bytes=16777216"});  // 16 MiB
  ASSERT_TRUE(quantd.Start());
  // A classifier with a 64 MiB weight: loading it needs more than the cap.
  const std::string model = quantd.dir() + "/data/wide.pt";
  auto made = RunCommand({"/usr/bin/python3", "-c",
                          "import sys, torch\n"
                          "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 5461), "
                          "torch.nn.Linear(5461, 10))\n"
                          "torch.jit.script(m.eval()).save(sys.argv[1])\n",
                          model},
                         absl::Seconds(120));
  ASSERT_TRUE(made.ok());
  ASSERT_EQ(made->exit_code, 0) << made->err;
  RunResult r = quantd.Ctl({"submit", "--model=wide.pt", absl::StrCat("--calib=", kCalib), "--wait"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  nlohmann::json job = quantd.Job(JobIdFrom(r.out));
  EXPECT_EQ(job["state"], "JOB_STATE_FAILED");
  EXPECT_EQ(job["result"].value("errorCode", 0), 8);  // RESOURCE_EXHAUSTED
  EXPECT_THAT(job["result"].value("errorMessage", ""), HasSubstr("may use 16777216 more bytes, --model_vet_memory_bytes"));
  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));
}

// Why: without the child the same file takes the whole server down.
TEST(JobsIntegrationTest, WithoutVettingALoaderCrashEndsTheServer) {
  Quantd quantd({"--vet_models=false"});
  ASSERT_TRUE(quantd.Start());
  RunResult upload = quantd.Ctl({"upload", std::string(kLoaderCrashers) + "/deep_nesting.pt"});
  ASSERT_EQ(upload.exit_code, 0) << upload.err;
  quantd.Ctl({"submit", "--model_blob=" + upload.out.substr(0, 64), absl::StrCat("--calib=", kCalib)});
  const std::optional<int> exit_code = quantd.child().WaitFor(kJobTimeout);
  ASSERT_TRUE(exit_code.has_value()) << "quantd survived: the crasher does not crash LibTorch's loader";
  EXPECT_GT(*exit_code, 128) << "ended by a signal";
}

TEST(JobsIntegrationTest, BadInputsGetTheRightCodeAndTheServerKeepsServing) {
  Quantd quantd({"--max_upload_bytes=40000000"});
  ASSERT_TRUE(quantd.Start());
  const std::string dir = quantd.dir();
  // A corrupt model file: uploads fine, the job FAILS with INVALID_ARGUMENT.
  std::ofstream(dir + "/corrupt.pt") << "this is not a TorchScript archive";
  RunResult upload = quantd.Ctl({"upload", dir + "/corrupt.pt"});
  ASSERT_EQ(upload.exit_code, 0) << upload.err;
  const std::string blob = upload.out.substr(0, 64);
  RunResult bad_model = quantd.Ctl({"submit", "--model_blob=" + blob, absl::StrCat("--calib=", kCalib), "--wait"});
  EXPECT_EQ(bad_model.exit_code, 1);
  nlohmann::json failed = quantd.Job(JobIdFrom(bad_model.out));
  EXPECT_EQ(failed["state"], "JOB_STATE_FAILED");
  EXPECT_EQ(failed["result"]["errorCode"], 3);
  EXPECT_FALSE(failed["result"]["errorMessage"].get<std::string>().empty());

  // A truncated dataset: refused as it is uploaded, and as a path at submit.
  {
    std::ifstream in(std::string(FIXTURES_DIR) + "/cifar10/calib_batch.bin", std::ios::binary);
    std::string bytes(5000, '\0');
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    std::ofstream(dir + "/truncated.bin", std::ios::binary) << bytes;
    std::ofstream(dir + "/data/truncated.bin", std::ios::binary) << bytes;
  }
  RunResult data = quantd.Ctl({"upload", dir + "/truncated.bin", "--kind=dataset"});
  EXPECT_EQ(data.exit_code, 1);
  EXPECT_THAT(data.err, HasSubstr("code 3"));
  EXPECT_THAT(data.err, HasSubstr("metadata.format: the file is not DATASET_FORMAT_CIFAR10_BINARY"));
  RunResult truncated = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), "--calib=truncated.bin"});
  EXPECT_EQ(truncated.exit_code, 1);
  EXPECT_THAT(truncated.err, HasSubstr("code 3"));
  EXPECT_THAT(truncated.err, HasSubstr("calibration.dataset"));

  // A .npy whose header has no 'shape' key once killed the server with every
  // job in it (std::out_of_range on a thread); now it is a refusal naming it.
  {
    std::string header = "{'descr': '|u1', 'fortran_order': False, }\n";
    std::ofstream npy(dir + "/data/noshape.npy", std::ios::binary);
    npy.write("\x93NUMPY\x01\x00", 8);
    const char len[2] = {static_cast<char>(header.size()), 0};
    npy.write(len, 2);
    npy << header << std::string(3072, '\x01');
  }
  RunResult no_shape = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), "--calib=noshape.npy",
                                   "--calib_format=npy", "--wait"});
  EXPECT_EQ(no_shape.exit_code, 1) << no_shape.out;
  EXPECT_THAT(no_shape.out + no_shape.err, HasSubstr("'shape'"));
  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));

  // An upload whose sha256 does not match.
  RunResult mismatch = quantd.Ctl({"upload", dir + "/corrupt.pt", "--sha256=" + std::string(64, 'a')});
  EXPECT_EQ(mismatch.exit_code, 1);
  EXPECT_THAT(mismatch.err, HasSubstr("code 15"));  // DATA_LOSS

  // A fusion spec naming a missing module: the job FAILS with INVALID_ARGUMENT.
  RunResult missing = quantd.Ctl({"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib),
                                  "--samples_per_class=5", "--fusion=conv1,bn9", "--wait"});
  EXPECT_EQ(missing.exit_code, 1);
  nlohmann::json fusion = quantd.Job(JobIdFrom(missing.out));
  EXPECT_EQ(fusion["state"], "JOB_STATE_FAILED");
  EXPECT_EQ(fusion["result"]["errorCode"], 3);
  EXPECT_THAT(fusion["result"]["errorMessage"].get<std::string>(), HasSubstr("bn9"));

  // An int8 model that cannot work (make_coverage_models.py's "broken"):
  // FAILED with FAILED_PRECONDITION and the figures, unless allowed.
  {
    auto made = RunCommand({"/usr/bin/python3", std::string(SOURCE_DIR) + "/worker/engine/testing/make_coverage_models.py",
                            dir + "/data/coverage"},
                           absl::Seconds(120));
    ASSERT_TRUE(made.ok() && made->exit_code == 0) << (made.ok() ? made->err : made.status().ToString());
    const std::vector<std::string> broken = {"submit", "--model=coverage/broken.pt", "--calib=coverage/images.npy",
                                             "--calib_format=npy", "--calib_labels=coverage/labels.npy",
                                             "--batch_size=32", "--wait"};
    RunResult refused = quantd.Ctl(broken);
    EXPECT_EQ(refused.exit_code, 1) << refused.out << refused.err;
    nlohmann::json job = quantd.Job(JobIdFrom(refused.out));
    EXPECT_EQ(job["state"], "JOB_STATE_FAILED");
    EXPECT_EQ(job["result"]["errorCode"], 9);  // FAILED_PRECONDITION
    EXPECT_THAT(job["result"]["errorMessage"].get<std::string>(), HasSubstr("agrees with FP32"));
    EXPECT_THAT(job["result"]["errorMessage"].get<std::string>(), HasSubstr("fc ("));
    std::vector<std::string> allowed = broken;
    allowed.push_back("--allow_low_quality");
    RunResult kept = quantd.Ctl(allowed);
    EXPECT_EQ(kept.exit_code, 0) << kept.out << kept.err;
    EXPECT_THAT(kept.out, HasSubstr("WARNING: quality check failed"));
    EXPECT_THAT(kept.out, HasSubstr("quality: FAILED"));
  }

  // A link in the data dir to a file outside it (and outside --read_roots).
  fs::create_symlink("/etc/hostname", dir + "/data/outside.pt");
  RunResult linked = quantd.Ctl({"submit", "--model=outside.pt", absl::StrCat("--calib=", kCalib)});
  EXPECT_EQ(linked.exit_code, 1);
  EXPECT_THAT(linked.err, HasSubstr("code 3"));
  EXPECT_THAT(linked.err, HasSubstr("is a link to a file outside the data root and --read_roots"));
  EXPECT_THAT(linked.err, Not(HasSubstr("/etc/hostname")));  // the operator's log names it
  EXPECT_THAT(quantd.log(), HasSubstr("is a link to /etc/hostname, outside the data dir"));

  // A path outside the data root.
  RunResult escape = quantd.Ctl({"submit", "--model=../../etc/passwd", absl::StrCat("--calib=", kCalib)});
  EXPECT_EQ(escape.exit_code, 1);
  EXPECT_THAT(escape.err, HasSubstr("code 3"));
  EXPECT_THAT(escape.err, HasSubstr("model.path"));

  // Unknown ids.
  RunResult unknown = quantd.Ctl({"job", "job-does-not-exist"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("code 5"));
  EXPECT_THAT(quantd.Ctl({"cancel", "job-does-not-exist"}).err, HasSubstr("code 5"));
  EXPECT_THAT(quantd.Ctl({"watch", "job-does-not-exist"}).err, HasSubstr("code 5"));

  // Long ids, tokens and paths are echoed in errors; once past gRPC's 8 KiB
  // trailer limit the client saw "metadata size exceeds limit" (code 8).
  const std::string long_value(20000, 'a');
  RunResult long_artifact = quantd.Ctl({"artifacts", long_value});
  EXPECT_THAT(long_artifact.err, HasSubstr("code 3"));
  EXPECT_THAT(long_artifact.err, HasSubstr("id: 20000 characters"));
  RunResult long_token = quantd.Ctl({"jobs", "--page_token=" + long_value});
  EXPECT_THAT(long_token.err, HasSubstr("code 3"));
  EXPECT_THAT(long_token.err, HasSubstr("page_token"));
  RunResult long_path = quantd.Ctl({"submit", "--model=" + long_value, absl::StrCat("--calib=", kCalib)});
  EXPECT_THAT(long_path.err, HasSubstr("code 5"));
  EXPECT_THAT(long_path.err, HasSubstr("model.path"));
  EXPECT_THAT(quantd.Ctl({"blobs", long_value}).err, HasSubstr("code 3"));

  EXPECT_THAT(quantd.Ctl({"health"}).out, StartsWith("SERVING\n"));
}

// Chaos: 20 jobs (two specs) while quantd is kill -9ed at random moments,
// ten times, then left to finish. Every job ends SUCCEEDED with exactly the
// artifact an uninterrupted run of its spec gives, or FAILED with a reason
// (a job that crashed the server twice is not retried); none is lost, none
// ran concurrently with itself (one owner per data dir), no temporary file
// is left.
TEST(JobsIntegrationTest, ChaosKillNineAtRandomMomentsLosesNothing) {
  // 100 calibration images in batches of 10: long enough for kills to land
  // inside jobs, short enough for 20 of them.
  const std::vector<std::vector<std::string>> specs = {
      SubmitArgs({"--samples_per_class=10", "--batch_size=10"}),
      {"submit", absl::StrCat("--model=", kModel), absl::StrCat("--calib=", kCalib), "--preset=qnnpack",
       "--fusion=auto", "--samples_per_class=10", "--batch_size=10"}};
  std::vector<std::string> reference;
  {
    Quantd clean;
    ASSERT_TRUE(clean.Start());
    for (std::vector<std::string> spec : specs) {
      spec.push_back("--wait");
      RunResult r = clean.Ctl(spec);
      ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
      reference.push_back(clean.Job(JobIdFrom(r.out))["result"]["artifactSha256"]);
    }
  }
  Quantd quantd;
  ASSERT_TRUE(quantd.Start());
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    RunResult r = quantd.Ctl(specs[static_cast<size_t>(i % 2)]);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ids.push_back(JobIdFrom(r.out));
  }
  std::mt19937 rng(20261130);
  std::uniform_int_distribution<int> pause_ms(0, 150);
  int kills_while_running = 0;
  for (int kill = 0; kill < 10; ++kill) {
    // A random moment while a job runs (or of start-up, if none gets going).
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (absl::Now() < give_up) {
      RunResult running = quantd.Ctl({"--json", "jobs", "--state=running"});
      if (nlohmann::json::parse(running.out, nullptr, false).value("jobs", nlohmann::json::array()).size() > 0) {
        ++kills_while_running;
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));  // poll interval
    }
    absl::SleepFor(absl::Milliseconds(pause_ms(rng)));
    ASSERT_TRUE(quantd.child().Signal(SIGKILL));
    ASSERT_TRUE(quantd.child().WaitFor(absl::Seconds(10)).has_value());
    ASSERT_TRUE(quantd.Start()) << "restart " << kill;
  }
  int succeeded = 0, interrupted = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    nlohmann::json job = quantd.WaitDone(ids[i]);
    const std::string state = job.value("state", "");
    if (job.value("attemptCount", 0) > 1) ++interrupted;
    if (state == "JOB_STATE_SUCCEEDED") {
      ++succeeded;
      EXPECT_EQ(job["result"]["artifactSha256"], reference[i % 2]) << ids[i];
      EXPECT_LE(job["attemptCount"].get<int>(), 2) << ids[i];
    } else {
      EXPECT_EQ(state, "JOB_STATE_FAILED") << ids[i] << ": " << job.dump();
      EXPECT_THAT(job["result"]["errorMessage"].get<std::string>(), HasSubstr("interrupted while running")) << ids[i];
    }
  }
  RunResult all = quantd.Ctl({"--json", "jobs", "--page_size=1000"});
  EXPECT_EQ(nlohmann::json::parse(all.out)["jobs"].size(), 20u);  // none lost, none duplicated
  EXPECT_GE(succeeded, 10);
  EXPECT_GE(kills_while_running, 4) << "the kills hardly ever came while a job ran: the test tested little";
  EXPECT_GE(interrupted, 1);
  EXPECT_TRUE(TemporaryFiles(quantd.dir() + "/data").empty());
  std::cout << "chaos: 10 kill -9s, " << kills_while_running << " while a job ran; " << interrupted
            << " jobs interrupted; " << succeeded
            << "/20 succeeded with the uninterrupted artifact, the rest failed after two crashes\n";
}

}  // namespace
}  // namespace quantd
