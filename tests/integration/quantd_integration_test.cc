// Starts the real quantd binary on ephemeral ports and talks to it only with
// outside tools: a third-party Node.js reflection client, quantctl, plain
// HTTP for /metrics, promtool, and signals.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/integration/test_util/http_get.h"
#include "tests/integration/test_util/subprocess.h"

namespace quantd {
namespace {

using ::quantd::test_util::HttpExchange;
using ::quantd::test_util::HttpGet;
using ::quantd::test_util::MakeTempDir;
using ::quantd::test_util::ReadFileOrEmpty;
using ::quantd::test_util::RunCommand;
using ::quantd::test_util::Subprocess;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using ::testing::IsSupersetOf;

constexpr absl::Duration kStartTimeout = absl::Seconds(30);
constexpr absl::Duration kCommandTimeout = absl::Seconds(60);
// civetweb (behind prometheus::Exposer) needs ~2 s to stop.
constexpr absl::Duration kShutdownTimeout = absl::Seconds(15);

// A quantd process on ephemeral ports with its own data dir.
class QuantdProcess {
 public:
  // `extra_flags` are appended to the command line.
  static std::unique_ptr<QuantdProcess> Start(const std::vector<std::string>& extra_flags = {}) {
    auto process = std::unique_ptr<QuantdProcess>(new QuantdProcess());
    process->dir_ = MakeTempDir("quantd_it");
    EXPECT_FALSE(process->dir_.empty());
    std::vector<std::string> argv = {QUANTD_BIN,
                                     "--bind_address=127.0.0.1",
                                     "--grpc_port=0",
                                     "--metrics_port=0",
                                     "--data_dir=" + process->dir_ + "/data",
                                     "--port_file=" + process->port_file(),
                                     "--shutdown_grace_seconds=5"};
    argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
    Subprocess::Options options;
    options.stderr_path = process->log_path();
    auto child = Subprocess::Start(argv, options);
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return nullptr;
    process->child_ = std::move(*child);
    return process;
  }

  ~QuantdProcess() {
    child_.reset();  // kills it if a test left it running
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // Polls until the port file appears (or the process dies, or time runs
  // out). Returns false with the log in the failure message otherwise.
  ::testing::AssertionResult WaitUntilListening() {
    const absl::Time deadline = absl::Now() + kStartTimeout;
    while (absl::Now() < deadline) {
      if (std::optional<int> code = child_->Poll(); code.has_value()) {
        return ::testing::AssertionFailure()
               << "quantd exited with " << *code << " before listening; log:\n" << log();
      }
      if (std::filesystem::exists(port_file())) {
        auto ports = nlohmann::json::parse(ReadFileOrEmpty(port_file()), nullptr, false);
        if (ports.is_discarded()) {
          return ::testing::AssertionFailure() << "bad port file " << ReadFileOrEmpty(port_file());
        }
        grpc_port_ = ports.at("grpc_port").get<int>();
        metrics_port_ = ports.at("metrics_port").get<int>();
        return ::testing::AssertionSuccess();
      }
      child_->WaitFor(absl::Milliseconds(20));  // poll interval; returns early on exit
    }
    return ::testing::AssertionFailure() << "quantd did not listen within "
                                         << absl::FormatDuration(kStartTimeout) << "; log:\n"
                                         << log();
  }

  std::string grpc_target() const { return absl::StrCat("127.0.0.1:", grpc_port_); }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  Subprocess& child() { return *child_; }
  std::string log() const { return ReadFileOrEmpty(log_path()); }
  std::string dir() const { return dir_; }

 private:
  QuantdProcess() = default;
  std::string port_file() const { return dir_ + "/ports.json"; }
  std::string log_path() const { return dir_ + "/quantd.log"; }

  std::string dir_;
  std::unique_ptr<Subprocess> child_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
};

class QuantdIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    quantd_ = QuantdProcess::Start();
    ASSERT_NE(quantd_, nullptr);
    ASSERT_TRUE(quantd_->WaitUntilListening());
  }

  // quantctl against the server under test.
  test_util::RunResult Quantctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {QUANTCTL_BIN, "--server=" + quantd_->grpc_target(),
                                     "--timeout_seconds=10"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto result = RunCommand(argv, kCommandTimeout);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : test_util::RunResult{};
  }

  std::unique_ptr<QuantdProcess> quantd_;
};

TEST_F(QuantdIntegrationTest, ThirdPartyReflectionClientSeesTheApi) {
  ASSERT_TRUE(std::filesystem::exists(NODE_BIN))
      << "node not found at configure time (" << NODE_BIN << "); run scripts/setup.sh";
  ASSERT_TRUE(std::filesystem::exists(std::string(NODE_DIR) + "/node_modules/grpc-js-reflection-client"))
      << "npm packages missing in " << NODE_DIR << "; run scripts/setup.sh";
  auto result = RunCommand({NODE_BIN, std::string(NODE_DIR) + "/reflection_probe.js", quantd_->grpc_target()},
                    kCommandTimeout);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->exit_code, 0) << "stdout:\n" << result->out << "\nstderr:\n" << result->err;
  auto report = nlohmann::json::parse(result->out, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << result->out;
  SCOPED_TRACE(report.dump(2));

  // Listed by reflection.
  EXPECT_THAT(report["services"].get<std::vector<std::string>>(),
              IsSupersetOf({"quantd.v1.QuantizationService", "grpc.health.v1.Health",
                            "inference.GRPCInferenceService"}));
  // Described by reflection.
  EXPECT_THAT(report["quantd_methods"].get<std::vector<std::string>>(),
              IsSupersetOf({"QuantizeJob", "GetJob", "ListJobs", "WatchJob", "CancelJob",
                            "DeleteJob", "UploadModel", "UploadDataset", "GetArtifact",
                            "ListArtifacts", "DownloadArtifact", "ListModels", "DeleteModelVersion",
                            "Evaluate", "GetEvaluation", "CancelEvaluation"}));
  EXPECT_EQ(report["quantize_job"]["request_type"], "quantd.v1.QuantizeJobRequest");
  EXPECT_EQ(report["quantize_job"]["response_type"], "quantd.v1.Job");
  EXPECT_THAT(report["quantize_job"]["request_fields"].get<std::vector<std::string>>(),
              IsSupersetOf({"model", "qconfig", "fusion", "calibration", "preprocessing",
                            "evaluation", "idempotency_key", "deadline"}));
  EXPECT_THAT(report["health_methods"].get<std::vector<std::string>>(),
              IsSupersetOf({"Check", "Watch"}));
  // Health Check through the reflected descriptor.
  EXPECT_EQ(report["health_check"]["server"], "SERVING");
  EXPECT_EQ(report["health_check"]["quantd.v1.QuantizationService"], "SERVING");
  EXPECT_EQ(report["health_check_unknown_code"], 5);  // NOT_FOUND
  // Unimplemented RPCs say so, with a reason.
  EXPECT_EQ(report["get_job"]["code"], 5);  // NOT_FOUND
  EXPECT_THAT(report["get_job"]["details"].get<std::string>(), HasSubstr("job-does-not-exist"));
}

TEST_F(QuantdIntegrationTest, QuantctlHealthPrintsServing) {
  // The server's health, then what it runs on: the CPU as int8 kernels see it.
  test_util::RunResult text = Quantctl({"health"});
  EXPECT_EQ(text.exit_code, 0) << text.err;
  EXPECT_THAT(text.out, StartsWith("SERVING\nserver: quantd "));
  EXPECT_THAT(text.out, HasSubstr("\ncpu: "));
  EXPECT_THAT(text.out, HasSubstr("oneDNN isa: "));
  EXPECT_THAT(text.out, HasSubstr("saturating with 8-bit activations: "));

  test_util::RunResult json = Quantctl({"--json", "health"});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  auto parsed = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_FALSE(parsed.is_discarded()) << json.out;
  EXPECT_EQ(parsed["status"], "SERVING");
  EXPECT_FALSE(parsed["server"]["cpu"]["kernelIsa"].get<std::string>().empty()) << json.out;
  EXPECT_FALSE(parsed["server"]["kernelEngines"].empty()) << json.out;

  test_util::RunResult service = Quantctl({"health", "--service=quantd.v1.QuantizationService"});
  EXPECT_EQ(service.exit_code, 0) << service.err;
  EXPECT_EQ(service.out, "SERVING\n");

  test_util::RunResult unknown = Quantctl({"health", "--service=no.such.Service"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("unknown service"));
}

TEST_F(QuantdIntegrationTest, QuantctlFailsClearlyWithoutAServer) {
  auto result = RunCommand({QUANTCTL_BIN, "--server=127.0.0.1:1", "--timeout_seconds=2", "health"},
                    kCommandTimeout);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->exit_code, 1);
  EXPECT_THAT(result->err, HasSubstr("127.0.0.1:1"));
}

TEST_F(QuantdIntegrationTest, MetricsEndpointPassesPromtool) {
  ASSERT_TRUE(std::filesystem::exists(PROMTOOL_BIN))
      << "promtool not found at configure time (" << PROMTOOL_BIN << "); run scripts/setup.sh";
  // Some traffic first, so the per-RPC series exist.
  EXPECT_EQ(Quantctl({"health"}).exit_code, 0);
  EXPECT_EQ(Quantctl({"health"}).exit_code, 0);

  auto response = HttpGet("127.0.0.1", quantd_->metrics_port(), "/metrics", absl::Seconds(10));
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->status_code, 200) << response->headers;
  const std::string& body = response->body;
  EXPECT_THAT(body, HasSubstr("quantd_build_info{version=\""));
  EXPECT_THAT(body, HasSubstr("quantd_grpc_requests_total{code=\"OK\","
                              "method=\"grpc.health.v1.Health/Check\"} 2"));
  EXPECT_THAT(body, HasSubstr("quantd_grpc_request_duration_seconds_bucket{"
                              "method=\"grpc.health.v1.Health/Check\",le=\"+Inf\"} 2"));

  std::string metrics_file = quantd_->dir() + "/metrics.txt";
  {
    std::ofstream out(metrics_file);
    out << body;
  }
  auto check = RunCommand({PROMTOOL_BIN, "check", "metrics"}, kCommandTimeout, metrics_file);
  ASSERT_TRUE(check.ok()) << check.status();
  // promtool: 0 = fine, 1 = parse error, 3 = lint problems.
  EXPECT_EQ(check->exit_code, 0) << "promtool check metrics:\n"
                                 << check->out << check->err << "\nmetrics:\n" << body;
}

// A free TCP port on loopback (for a server that needs one given).
int FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    port = ntohs(address.sin_port);
  }
  ::close(fd);
  return port;
}

// The real Prometheus server (Debian's) scrapes quantd on loopback with
// deploy/'s alert and recording rules loaded: the target is up, quantd's
// series are queryable, and every rule evaluates without error.
TEST_F(QuantdIntegrationTest, PrometheusScrapesQuantdAndEvaluatesTheRules) {
  ASSERT_TRUE(std::filesystem::exists(PROMETHEUS_BIN)) << "prometheus not found; run scripts/setup.sh";
  EXPECT_EQ(Quantctl({"health"}).exit_code, 0);
  const int port = FreeLoopbackPort();
  ASSERT_GT(port, 0);
  const std::string dir = quantd_->dir() + "/prometheus";
  std::filesystem::create_directories(dir + "/data");
  {
    std::ofstream config(dir + "/prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
           << "rule_files:\n  - " << SOURCE_DIR << "/deploy/prometheus/rules.yml\n"
           << "scrape_configs:\n  - job_name: quantd\n    static_configs:\n      - targets: [\"127.0.0.1:"
           << quantd_->metrics_port() << "\"]\n";
  }
  Subprocess::Options options;
  options.stdout_path = dir + "/prometheus.log";
  options.stderr_path = dir + "/prometheus.log";
  auto prometheus = Subprocess::Start(
      {PROMETHEUS_BIN, "--config.file=" + dir + "/prometheus.yml", "--storage.tsdb.path=" + dir + "/data",
       absl::StrCat("--web.listen-address=127.0.0.1:", port)},
      options);
  ASSERT_TRUE(prometheus.ok()) << prometheus.status();
  const std::string api = absl::StrCat("http://127.0.0.1:", port, "/api/v1/");
  auto get = [&](const std::string& path) {
    auto run = RunCommand({"/usr/bin/curl", "-sS", "-g", api + path}, absl::Seconds(10));
    return run.ok() && run->exit_code == 0 ? nlohmann::json::parse(run->out, nullptr, false) : nlohmann::json();
  };
  // Wait (bounded) for a scrape and two rule evaluations.
  nlohmann::json up, rules;
  bool evaluated = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline && !evaluated) {
    absl::SleepFor(absl::Milliseconds(500));  // Prometheus scrapes and evaluates every second
    up = get("query?query=up{job=\"quantd\"}");
    rules = get("rules");
    if (!up.is_object() || up["data"]["result"].empty() || up["data"]["result"][0]["value"][1] != "1") continue;
    if (!rules.is_object() || rules["data"]["groups"].empty()) continue;
    evaluated = true;
    for (const auto& rule : rules["data"]["groups"][0]["rules"]) {
      if (!rule.contains("lastEvaluation") || rule["lastEvaluation"] == "0001-01-01T00:00:00Z") evaluated = false;
    }
  }
  ASSERT_TRUE(evaluated) << "up: " << up.dump() << "\nrules: " << rules.dump() << "\n"
                         << ReadFileOrEmpty(dir + "/prometheus.log");
  int checked = 0;
  for (const auto& rule : rules["data"]["groups"][0]["rules"]) {
    EXPECT_EQ(rule["health"], "ok") << rule.dump();
    ++checked;
  }
  EXPECT_GE(checked, 8);
  nlohmann::json build = get("query?query=quantd_build_info");
  ASSERT_TRUE(build.is_object());
  ASSERT_FALSE(build["data"]["result"].empty()) << build.dump();
  EXPECT_TRUE(build["data"]["result"][0]["metric"].contains("version"));
  nlohmann::json health = get("query?query=quantd_grpc_requests_total{method=\"grpc.health.v1.Health/Check\"}");
  ASSERT_TRUE(health.is_object());
  EXPECT_FALSE(health["data"]["result"].empty()) << health.dump();
  nlohmann::json jobs = get("query?query=max(quantd_jobs{state=\"queued\"})");
  ASSERT_TRUE(jobs.is_object());
  ASSERT_FALSE(jobs["data"]["result"].empty()) << jobs.dump();
  EXPECT_EQ(jobs["data"]["result"][0]["value"][1], "0");
  // No alert fires on an idle, healthy quantd, once the rules have seen a
  // scrape (QuantdAbsent is pending for an evaluation before the first).
  nlohmann::json alerts = get("alerts");
  for (const absl::Time settle = absl::Now() + absl::Seconds(10);
       absl::Now() < settle && alerts.is_object() && !alerts["data"]["alerts"].empty();) {
    absl::SleepFor(absl::Milliseconds(500));  // Prometheus evaluates every second
    alerts = get("alerts");
  }
  ASSERT_TRUE(alerts.is_object());
  EXPECT_TRUE(alerts["data"]["alerts"].empty()) << alerts.dump();
}

// The HTTP port refuses bodies it could not bound before reading them
// (chunked, without a length, compressed), JSON nested past any real
// request's depth, and gives its own errors as the protocol's JSON; HEAD
// works where GET does. The server keeps serving throughout.
TEST_F(QuantdIntegrationTest, TheHttpEdgeRefusesBodiesItCannotBoundAndAnswersInJson) {
  const int port = quantd_->metrics_port();
  auto exchange = [port](const std::string& request) {
    absl::StatusOr<test_util::HttpResponse> response = HttpExchange("127.0.0.1", port, request, absl::Seconds(10));
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : test_util::HttpResponse{};
  };
  auto error_of = [](const test_util::HttpResponse& response) {
    nlohmann::json body = nlohmann::json::parse(response.body, nullptr, false);
    return body.is_object() && body.contains("error") ? body["error"].get<std::string>() : "(no JSON error)";
  };
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  struct Case {
    std::string request;  // as sent
    int status;
    std::string error;  // in the JSON error
  };
  const std::string index = "POST /v2/repository/index HTTP/1.1\r\nHost: q\r\nConnection: close\r\n";
  const std::vector<Case> cases = {
      {index + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"rea\r\n", 411, "Content-Length"},
      {"POST /v2/repository/index HTTP/1.0\r\nHost: q\r\nConnection: close\r\n\r\n{}", 411, "Content-Length"},
      {"POST /v2/models/resnet8/infer HTTP/1.1\r\nHost: q\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n"
       "Connection: close\r\n\r\nabcd",
       415, "uncompressed"},
      {absl::StrCat(index, "Content-Length: ", deep.size(), "\r\n\r\n", deep), 400, "nested deeper than 32"},
      {index + "Content-Length: 999999999999\r\n\r\n{}", 413, "larger than the server accepts"},
      {index + "Content-Length: -2\r\n\r\n{}", 400, "Content-Length"},
      // curl -d's default Content-Type: cpp-httplib caps it at 8 KiB.
      {absl::StrCat(index, "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 9000\r\n\r\n",
                    std::string(9000, 'x')),
       413, "Content-Type: application/json"},
  };
  for (const Case& c : cases) {
    test_util::HttpResponse response = exchange(c.request);
    EXPECT_EQ(response.status_code, c.status) << c.request.substr(0, 120) << "\n" << response.headers;
    EXPECT_THAT(error_of(response), HasSubstr(c.error)) << c.request.substr(0, 120);
  }
  // A GET's body would be read as the next request on the connection.
  const std::string inner = "GET /v2/health/live HTTP/1.1\r\nHost: q\r\n\r\n";
  test_util::HttpResponse smuggling = exchange(absl::StrCat(
      "GET /v2/health/live HTTP/1.1\r\nHost: q\r\nContent-Length: ", inner.size(), "\r\n\r\n", inner));
  EXPECT_EQ(smuggling.status_code, 400) << smuggling.headers;
  EXPECT_THAT(error_of(smuggling), HasSubstr("GET takes no body"));
  EXPECT_EQ(smuggling.body.find("HTTP/1.1"), std::string::npos) << "a second response: " << smuggling.body;
  // Nor may a body be framed otherwise by a proxy in front: two lengths (a
  // proxy may take the last), or one that is not plain digits.
  const std::string infer = "POST /v2/models/resnet8/infer HTTP/1.1\r\nHost: q\r\nContent-Type: application/json\r\n";
  for (const std::string& lengths :
       {absl::StrCat("Content-Length: 2\r\nContent-Length: ", 2 + inner.size(), "\r\n"),
        absl::StrCat("Content-Length: ", 2 + inner.size(), "\r\nContent-Length: ", 2 + inner.size(), "\r\n"),
        absl::StrCat("Content-Length: +", 2 + inner.size(), "\r\n")}) {
    test_util::HttpResponse framed = exchange(absl::StrCat(infer, lengths, "\r\n{}", inner));
    EXPECT_EQ(framed.status_code, 400) << lengths << framed.headers;
    EXPECT_THAT(error_of(framed), HasSubstr("Content-Length: ")) << lengths;
    EXPECT_EQ(framed.body.find("HTTP/1.1"), std::string::npos) << lengths << "a second response: " << framed.body;
  }
  // A request line too long to parse: its path is unknown, the error JSON.
  test_util::HttpResponse too_long =
      exchange(absl::StrCat("GET /v2/models/", std::string(9000, 'a'), " HTTP/1.1\r\nHost: q\r\n\r\n"));
  EXPECT_EQ(too_long.status_code, 414) << too_long.headers;
  EXPECT_THAT(error_of(too_long), HasSubstr("too long"));
  // Any method httplib reads no body for, not only GET.
  test_util::HttpResponse trace = exchange(absl::StrCat(
      "TRACE /v2/health/live HTTP/1.1\r\nHost: q\r\nContent-Length: ", inner.size(), "\r\n\r\n", inner));
  EXPECT_EQ(trace.status_code, 400) << trace.headers;
  EXPECT_THAT(error_of(trace), HasSubstr("TRACE takes no body"));
  // Outside /v2 nothing takes a body: refused from the headers, before the
  // 64 MiB declared here (and never sent) would be read.
  for (const auto& [path, status] : std::vector<std::pair<std::string, int>>{{"/metrics", 405}, {"/elsewhere", 404}}) {
    test_util::HttpResponse declared =
        exchange(absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: q\r\nContent-Length: 67108864\r\n\r\n{}"));
    EXPECT_EQ(declared.status_code, status) << path << "\n" << declared.headers;
  }
  test_util::HttpResponse head = exchange("HEAD /v2/health/live HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(head.status_code, 200) << head.headers;
  EXPECT_TRUE(head.body.empty());
  // Still serving.
  auto live = HttpGet("127.0.0.1", port, "/v2/health/live", absl::Seconds(10));
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(live->status_code, 200);
  EXPECT_EQ(Quantctl({"health"}).exit_code, 0);
}

TEST_F(QuantdIntegrationTest, SigtermShutsDownGracefullyWithExitZero) {
  ASSERT_EQ(Quantctl({"health"}).exit_code, 0);
  ASSERT_TRUE(quantd_->child().Signal(SIGTERM));
  std::optional<int> code = quantd_->child().WaitFor(kShutdownTimeout);
  ASSERT_TRUE(code.has_value()) << "quantd still running "
                                << absl::FormatDuration(kShutdownTimeout)
                                << " after SIGTERM; log:\n" << quantd_->log();
  EXPECT_EQ(*code, 0) << quantd_->log();
  std::string log = quantd_->log();
  EXPECT_THAT(log, HasSubstr("quantd: listening grpc=127.0.0.1:" +
                             std::to_string(quantd_->grpc_port())));
  EXPECT_THAT(log, HasSubstr("received SIGTERM"));
  EXPECT_THAT(log, HasSubstr("quantd: stopped"));
  // The port is closed now.
  test_util::RunResult after = Quantctl({"--timeout_seconds=2", "health"});
  EXPECT_NE(after.exit_code, 0);
}

// SIGHUP (a closed terminal, or a reload an operator expects) used to kill
// quantd like a crash, counting its running job's attempt; now it is logged
// and ignored.
TEST_F(QuantdIntegrationTest, SighupIsLoggedAndIgnored) {
  ASSERT_TRUE(quantd_->child().Signal(SIGHUP));
  for (int i = 0; i < 100 && quantd_->log().find("received SIGHUP") == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_THAT(quantd_->log(), HasSubstr("received SIGHUP, ignored"));
  EXPECT_EQ(Quantctl({"health"}).exit_code, 0);
  ASSERT_TRUE(quantd_->child().Signal(SIGTERM));
  std::optional<int> code = quantd_->child().WaitFor(kShutdownTimeout);
  ASSERT_TRUE(code.has_value()) << quantd_->log();
  EXPECT_EQ(*code, 0) << quantd_->log();
}

TEST_F(QuantdIntegrationTest, SigintAlsoExitsZero) {
  ASSERT_TRUE(quantd_->child().Signal(SIGINT));
  std::optional<int> code = quantd_->child().WaitFor(kShutdownTimeout);
  ASSERT_TRUE(code.has_value()) << quantd_->log();
  EXPECT_EQ(*code, 0) << quantd_->log();
}

TEST_F(QuantdIntegrationTest, SecondServerOnTheSamePortFailsClearly) {
  auto second = QuantdProcess::Start({"--grpc_port=" + std::to_string(quantd_->grpc_port()),
                                      "--metrics_port=-1"});
  ASSERT_NE(second, nullptr);
  // QuantdProcess passes --grpc_port=0 first; the later flag wins.
  std::optional<int> code = second->child().WaitFor(kStartTimeout);
  ASSERT_TRUE(code.has_value()) << "second quantd did not exit; log:\n" << second->log();
  EXPECT_EQ(*code, 1);
  EXPECT_THAT(second->log(), HasSubstr("cannot serve gRPC on 127.0.0.1:" +
                                       std::to_string(quantd_->grpc_port())));
}

TEST(QuantdFlagsTest, InvalidWorkersFailsClearly) {
  std::string dir = MakeTempDir("quantd_flags");
  auto result = RunCommand({QUANTD_BIN, "--grpc_port=0", "--metrics_port=-1", "--workers=0",
                     "--data_dir=" + dir + "/data"},
                    kCommandTimeout);
  ASSERT_TRUE(result.ok()) << result.status();
  // A usage error, as an unknown flag's (a port in use, a failed start, is 1),
  // said before anything starts: no data dir is made.
  EXPECT_EQ(result->exit_code, 2);
  EXPECT_THAT(result->err, HasSubstr("workers must be in 1..256"));
  EXPECT_THAT(result->err, ::testing::Not(HasSubstr("starting")));
  EXPECT_FALSE(std::filesystem::exists(dir + "/data"));
  std::filesystem::remove_all(dir);
}

TEST(QuantdFlagsTest, UnknownFlagsAndUnparsableValuesAreUsageErrors) {
  std::string dir = MakeTempDir("quantd_flags");
  for (const auto& [flag, named] : std::vector<std::pair<std::string, std::string>>{
           {"--bogus=1", "quantd: --bogus: unknown flag (quantd --help lists them)"},
           {"--grpc_port=abc", "quantd: --grpc_port: 'abc' is not an integer"},
           {"--max_batch_size=1e3", "quantd: --max_batch_size: '1e3' is not an integer"},
           {"--job_deadline_seconds=soon", "quantd: --job_deadline_seconds: 'soon' is not a number"},
           {"--dynamic_batching=maybe", "quantd: --dynamic_batching: 'maybe' is not true or false"}}) {
    auto result = RunCommand({QUANTD_BIN, "--metrics_port=-1", flag, "--data_dir=" + dir + "/data"}, kCommandTimeout);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->exit_code, 2) << flag << ": " << result->err;  // as quantd's own checks, not a failed start
    EXPECT_THAT(result->err, HasSubstr(named)) << flag;
    EXPECT_FALSE(std::filesystem::exists(dir + "/data")) << flag;
  }
  std::filesystem::remove_all(dir);
}

// quantd started with `args` exits 2 (a usage error, as quantd's own checks),
// says `says` and has not made `data_dir`.
void ExpectUsageError(const std::vector<std::string>& args, const std::string& says, const std::string& data_dir) {
  std::vector<std::string> command = {QUANTD_BIN, "--grpc_port=0", "--metrics_port", "-1"};
  command.insert(command.end(), args.begin(), args.end());
  auto result = RunCommand(command, kCommandTimeout);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->exit_code, 2) << says << ": " << result->err;
  EXPECT_THAT(result->err, HasSubstr(says));
  EXPECT_FALSE(std::filesystem::exists(data_dir)) << says;
}

// "--data_dir --workers=4" once started with a data dir named "--workers=4"
// (Abseil only warned); a TLS or token file that cannot be read once made
// the data dir, then failed to start (exit 1).
TEST(QuantdFlagsTest, AMissingValueOrUnreadableFileIsAUsageErrorNamingTheFlag) {
  std::string dir = MakeTempDir("quantd_flags");
  const std::string data = "--data_dir=" + dir + "/data";
  // Read but malformed: a failed start (exit 1), where a missing file was a usage error.
  std::ofstream(dir + "/bad-tokens") << "ci reader 0123456789abcdef\n";
  for (const auto& [args, says] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--bind_address", "--workers=2", data}, "--bind_address needs a value"},
           {{data, "--token_file=" + dir + "/bad-tokens"}, "--token_file: token file " + dir +
                                                                "/bad-tokens: line 1: role 'reader' is not read"},
           {{data, "--token_file"}, "--token_file needs a value"},
           {{data, "--token_file=" + dir + "/no-such-tokens"}, "--token_file: cannot read"},
           {{data, "--tls_cert=" + dir + "/no-cert.pem", "--tls_key=" + dir + "/no-key.pem"}, "--tls_cert"},
           // Given empty (an unset variable), they turned auth or TLS off without a word.
           {{data, "--token_file="}, "--token_file is empty"},
           {{data, "--token_file", ""}, "--token_file is empty"},
           {{data, "--tls_cert=", "--tls_key="}, "--tls_cert is empty"},
           // Abseil takes one dash too, past every check above ("-token_file=" ran without auth).
           {{data, "-token_file="}, "-token_file=: flags take two dashes (--token_file=)"},
           {{"-data_dir=" + dir + "/data"}, "flags take two dashes"},
           {{data, "-version"}, "-version: flags take two dashes"},
           // A flag file would pass every check above.
           {{data, "--flagfile=" + dir + "/flags"}, "--flagfile=" + dir + "/flags: not supported"},
           {{data, "--fromenv=token_file"}, "--fromenv=token_file: not supported"},
           {{data, "--blob_ttl_seconds=0.001"}, "--blob_ttl_seconds must be 0 (keep blobs) or in 1..1e9"},
           // Once a failed start (exit 1) that named the metrics port.
           {{data, "--bind_address=999.1.1.1"},
            "--bind_address: \"999.1.1.1\" is not an IP address nor a host name this machine resolves"},
           {{data, "--bind_address=no host"}, "--bind_address: \"no host\" is not an IP address"}}) {
    ExpectUsageError(args, says, dir + "/data");
  }
  std::filesystem::remove_all(dir);
}

// A key that does not match its certificate would only have failed every
// handshake later; a reload interval out of range would have spun or never
// looked.
TEST(QuantdFlagsTest, AMismatchedTlsKeyOrReloadIntervalIsAUsageErrorNamingTheFlags) {
  std::string dir = MakeTempDir("quantd_flags");
  for (const std::string name : {"a", "b"}) {
    auto made = RunCommand({"/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=" + name, "-keyout",
                            dir + "/" + name + ".key", "-out", dir + "/" + name + ".pem"},
                           kCommandTimeout);
    ASSERT_TRUE(made.ok() && made->exit_code == 0) << (made.ok() ? made->err : made.status().ToString());
  }
  const std::string data = "--data_dir=" + dir + "/data";
  for (const auto& [args, says] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{data, "--tls_cert=" + dir + "/a.pem", "--tls_key=" + dir + "/b.key"},
            "--tls_cert/--tls_key/--tls_client_ca: key file " + dir + "/b.key does not match the certificate"},
           {{data, "--tls_cert=" + dir + "/a.pem", "--tls_key=" + dir + "/a.key", "--tls_reload_seconds=0"},
            "--tls_reload_seconds must be in 1..86400"}}) {
    ExpectUsageError(args, says, dir + "/data");
  }
  std::filesystem::remove_all(dir);
}

TEST(QuantdFlagsTest, HelpListsTheFlagsAndSucceeds) {
  auto result = RunCommand({QUANTD_BIN, "--help"}, kCommandTimeout);
  ASSERT_TRUE(result.ok()) << result.status();
  // As quantctl and quantd-quantize: help is not a failure.
  EXPECT_EQ(result->exit_code, 0) << result->err;
  EXPECT_THAT(result->out, HasSubstr("--data_dir (default: ./data)"));
  EXPECT_THAT(result->out, HasSubstr("--inference_threads"));
  EXPECT_THAT(result->out, HasSubstr("--model_cache_bytes"));
  // Only quantd's own flags, not those of the libraries linked in.
  EXPECT_THAT(result->out, ::testing::Not(HasSubstr("--flagfile")));
}

// The three tools answer -h, --help and --version alike: on stdout, exit 0.
TEST(QuantdFlagsTest, EveryToolAnswersHelpAndVersionTheSameWay) {
  for (const std::string tool : {QUANTD_BIN, QUANTCTL_BIN, QUANTIZE_BIN}) {
    const std::string name = std::filesystem::path(tool).filename().string();
    for (const char* flag : {"-h", "--help"}) {
      auto help = RunCommand({tool, flag}, kCommandTimeout);
      ASSERT_TRUE(help.ok()) << help.status();
      EXPECT_EQ(help->exit_code, 0) << name << " " << flag << ": " << help->err;
      EXPECT_THAT(help->out, HasSubstr("--")) << name << " " << flag;
    }
    // --version alone, and after other flags or a command.
    const std::string other = name == "quantctl" ? "health" : name == "quantd" ? "--workers=2" : "--quiet";
    for (const std::vector<std::string>& args :
         {std::vector<std::string>{"--version"}, std::vector<std::string>{other, "--version"}}) {
      std::vector<std::string> command = {tool};
      command.insert(command.end(), args.begin(), args.end());
      auto version = RunCommand(command, kCommandTimeout);
      ASSERT_TRUE(version.ok()) << version.status();
      EXPECT_EQ(version->exit_code, 0) << name << " " << args.front() << ": " << version->err;
      EXPECT_THAT(version->out, ::testing::StartsWith(name + " ")) << name << " " << args.front();
    }
  }
  // Help for a command that does not exist is an unknown command, not help.
  auto unknown = RunCommand({QUANTCTL_BIN, "bogus", "--help"}, kCommandTimeout);
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_EQ(unknown->exit_code, 2) << unknown->out;
  EXPECT_THAT(unknown->err, HasSubstr("unknown command \"bogus\""));
}

// A wrong flag is one line naming it and where the flags are listed, from
// each tool: quantctl and quantd-quantize once printed a page of usage after
// it, scrolling the error away. Bare quantctl still gets the page.
TEST(QuantdFlagsTest, AWrongFlagIsOneLineNamingItFromEveryTool) {
  for (const auto& [command, says] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{QUANTD_BIN, "--bogus=1"}, "quantd: --bogus: unknown flag (quantd --help lists them)\n"},
           {{QUANTCTL_BIN, "--timeout_seconds=abc", "jobs"},
            "quantctl: --timeout_seconds expects a positive number of seconds up to a year, got \"abc\" "
            "(quantctl --help lists the flags and commands)\n"},
           {{QUANTCTL_BIN, "bogus"}, "quantctl: unknown command \"bogus\" (quantctl --help lists the commands)\n"},
           {{QUANTIZE_BIN, "--model=m.pt", "--bogus=1"},
            "quantd-quantize: unknown flag --bogus (quantd-quantize --help lists the flags)\n"}}) {
    auto result = RunCommand(command, kCommandTimeout);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->exit_code, 2) << command[1];
    EXPECT_EQ(result->err, says) << command[1];
  }
  auto bare = RunCommand({QUANTCTL_BIN}, kCommandTimeout);
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->exit_code, 2);
  EXPECT_THAT(bare->err, HasSubstr("global flags:"));
}

// An answer that never reached stdout is not a success (it once exited 0).
TEST(QuantdFlagsTest, QuantctlFailsWhenItsAnswerCannotBeWritten) {
  auto full = RunCommand({"/bin/sh", "-c", std::string(QUANTCTL_BIN) + " --help > /dev/full"}, kCommandTimeout);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->exit_code, 1) << full->err;
  EXPECT_THAT(full->err, HasSubstr("cannot write the answer to standard output"));
}

// Abseil's usage flags exited 0 inside flag parsing, which quantd's exit-2
// hook turned into a silent exit 2 with nothing printed.
TEST(QuantdFlagsTest, VersionPrintsAndOtherUsageFlagsAreRefusedByName) {
  auto version = RunCommand({QUANTD_BIN, "--version"}, kCommandTimeout);
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(version->exit_code, 0) << version->err;
  EXPECT_THAT(version->out, ::testing::StartsWith("quantd "));
  for (const char* flag : {"--helpmatch=grpc", "--only_check_args", "--help=false"}) {
    auto refused = RunCommand({QUANTD_BIN, flag}, kCommandTimeout);
    ASSERT_TRUE(refused.ok()) << refused.status();
    EXPECT_EQ(refused->exit_code, 2) << flag;
    EXPECT_THAT(refused->err, HasSubstr(flag)) << flag;
  }
}

}  // namespace
}  // namespace quantd
