// Issue #10, security: the real quantd with TLS (mTLS), bearer tokens with
// roles from a reloadable file, and an audit log; driven by the real quantctl
// and curl, with certificates made by openssl at test time.

#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/integration/test_util/subprocess.h"

namespace quantd {
namespace {

namespace fs = std::filesystem;
using ::quantd::test_util::MakeTempDir;
using ::quantd::test_util::ReadFileOrEmpty;
using ::quantd::test_util::RunCommand;
using ::quantd::test_util::RunResult;
using ::quantd::test_util::Subprocess;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kReadToken[] = "reader-token-5f2b8c1e9d";
constexpr char kSubmitToken[] = "submitter-token-7a3e0f44";
constexpr char kAdminToken[] = "admin-token-c09d2b7716e";
constexpr char kOtherSubmitToken[] = "other-submitter-token-3b81d6";

// openssl, failing the test with its stderr.
void OpenSsl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = RunCommand(argv, absl::Seconds(60));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->exit_code, 0) << r->err;
}

// A CA and a certificate it signs (for 127.0.0.1 and localhost).
void MakeCa(const std::string& dir, const std::string& name) {
  OpenSsl({"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=" + name,
           "-keyout", dir + "/" + name + ".key", "-out", dir + "/" + name + ".pem"});
}
void MakeCert(const std::string& dir, const std::string& ca, const std::string& name) {
  OpenSsl({"req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name, "-keyout", dir + "/" + name + ".key",
           "-out", dir + "/" + name + ".csr"});
  std::ofstream(dir + "/" + name + ".ext") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  OpenSsl({"x509", "-req", "-in", dir + "/" + name + ".csr", "-CA", dir + "/" + ca + ".pem", "-CAkey",
           dir + "/" + ca + ".key", "-CAcreateserial", "-days", "2", "-extfile", dir + "/" + name + ".ext", "-out",
           dir + "/" + name + ".pem"});
}

class SecureQuantd : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("quantd_secure");
    ASSERT_NO_FATAL_FAILURE(MakeCa(dir_, "ca"));
    ASSERT_NO_FATAL_FAILURE(MakeCa(dir_, "rogue_ca"));
    ASSERT_NO_FATAL_FAILURE(MakeCert(dir_, "ca", "server"));
    ASSERT_NO_FATAL_FAILURE(MakeCert(dir_, "ca", "client"));
    ASSERT_NO_FATAL_FAILURE(MakeCert(dir_, "rogue_ca", "rogue"));
    std::ofstream(dir_ + "/tokens") << "# name role token\n"
                                    << "reader read " << kReadToken << "\n"
                                    << "ci submit " << kSubmitToken << "\n"
                                    << "ops admin " << kAdminToken << "\n"
                                    << "ci2 submit " << kOtherSubmitToken << "\n";
    std::vector<std::string> argv = {QUANTD_BIN,
                                     "--bind_address=127.0.0.1",
                                     "--grpc_port=0",
                                     "--metrics_port=0",
                                     "--data_dir=" + dir_ + "/data",
                                     "--port_file=" + dir_ + "/ports.json",
                                     "--shutdown_grace_seconds=2",
                                     "--tls_cert=" + dir_ + "/server.pem",
                                     "--tls_key=" + dir_ + "/server.key",
                                     "--tls_client_ca=" + dir_ + "/ca.pem",
                                     "--metrics_tls_client_ca=" + dir_ + "/ca.pem",
                                     "--tls_reload_seconds=1",
                                     "--token_file=" + dir_ + "/tokens",
                                     "--metrics_require_token"};
    Subprocess::Options options;
    options.stderr_path = dir_ + "/quantd.log";
    auto child = Subprocess::Start(argv, options);
    ASSERT_TRUE(child.ok()) << child.status();
    child_ = std::move(*child);
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline && !fs::exists(dir_ + "/ports.json")) {
      ASSERT_FALSE(child_->Poll().has_value()) << log();
      child_->WaitFor(absl::Milliseconds(20));
    }
    ASSERT_TRUE(fs::exists(dir_ + "/ports.json")) << log();
    auto ports = nlohmann::json::parse(ReadFileOrEmpty(dir_ + "/ports.json"));
    grpc_port_ = ports["grpc_port"].get<int>();
    metrics_port_ = ports["metrics_port"].get<int>();
  }
  void TearDown() override {
    child_.reset();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // quantctl over mTLS with `token` (empty = none), plus `extra` flags.
  RunResult Ctl(const std::string& token, std::vector<std::string> args, std::vector<std::string> tls = {}) {
    std::vector<std::string> argv = {QUANTCTL_BIN, absl::StrCat("--server=127.0.0.1:", grpc_port_), "--timeout_seconds=10"};
    if (tls.empty()) {
      tls = {"--tls_ca=" + dir_ + "/ca.pem", "--tls_cert=" + dir_ + "/client.pem", "--tls_key=" + dir_ + "/client.key"};
    }
    argv.insert(argv.end(), tls.begin(), tls.end());
    if (!token.empty()) argv.push_back("--token=" + token);
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = RunCommand(argv, absl::Seconds(60));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : RunResult{};
  }

  // curl's HTTP status for GET /metrics over HTTPS ("000": no HTTP at all),
  // presenting the client certificate `cert` ("" = none).
  std::string MetricsStatus(const std::string& token, const std::string& cert = "client") {
    return GetMetrics(token, cert, {"-o", "/dev/null", "-w", "%{http_code}"});
  }
  // The exposition itself.
  std::string Metrics(const std::string& token) { return GetMetrics(token, "client", {}); }

  std::string GetMetrics(const std::string& token, const std::string& cert, const std::vector<std::string>& output,
                         const std::string& server_ca = "ca") {
    std::vector<std::string> argv = {"/usr/bin/curl", "-s"};
    argv.insert(argv.end(), output.begin(), output.end());
    argv.insert(argv.end(), {"--cacert", dir_ + "/" + server_ca + ".pem",
                             absl::StrCat("https://127.0.0.1:", metrics_port_, "/metrics")});
    if (!cert.empty()) {
      argv.insert(argv.end(), {"--cert", dir_ + "/" + cert + ".pem", "--key", dir_ + "/" + cert + ".key"});
    }
    if (!token.empty()) {
      argv.push_back("-H");
      argv.push_back(absl::StrCat("Authorization: Bearer ", token));
    }
    auto r = RunCommand(argv, absl::Seconds(30));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->out : "";
  }

  std::string log() const { return ReadFileOrEmpty(dir_ + "/quantd.log"); }

  std::string dir_;
  std::unique_ptr<Subprocess> child_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
};

TEST_F(SecureQuantd, TokensAndRolesDecideWhoMayDoWhat) {
  // read: may look, may not submit or delete.
  RunResult jobs = Ctl(kReadToken, {"jobs"});
  EXPECT_EQ(jobs.exit_code, 0) << jobs.err;
  RunResult upload_as_reader = Ctl(kReadToken, {"upload", dir_ + "/tokens"});
  EXPECT_EQ(upload_as_reader.exit_code, 1);
  EXPECT_THAT(upload_as_reader.err, HasSubstr("code 7"));  // PERMISSION_DENIED
  EXPECT_THAT(upload_as_reader.err, HasSubstr("UploadModel needs the submit role"));
  // Audited under the token's name (it was "who=-").
  EXPECT_THAT(log(), ::testing::ContainsRegex("audit: who=reader peer=[^ ]+ method=UploadModel target=- "
                                              "result=PERMISSION_DENIED"));

  // submit: may upload and submit, may not delete.
  std::ofstream(dir_ + "/model.bin") << "not a model, but bytes";
  RunResult upload = Ctl(kSubmitToken, {"upload", dir_ + "/model.bin"});
  EXPECT_EQ(upload.exit_code, 0) << upload.err;
  // A dataset's extension without --kind: said, and still a model.
  EXPECT_THAT(upload.err, HasSubstr("model.bin goes as a model (--kind=model, the default); a dataset needs "
                                    "--kind=dataset"));
  RunResult delete_as_ci = Ctl(kSubmitToken, {"delete", "job-x"});
  EXPECT_THAT(delete_as_ci.err, HasSubstr("code 7"));
  // admin: admitted (the job does not exist: NOT_FOUND, past the gate).
  EXPECT_THAT(Ctl(kAdminToken, {"delete", "job-x"}).err, HasSubstr("code 5"));

  // No token, an unknown one, $QUANTD_TOKEN: UNAUTHENTICATED.
  RunResult anonymous = Ctl("", {"jobs"});
  EXPECT_EQ(anonymous.exit_code, 1);
  EXPECT_THAT(anonymous.err, HasSubstr("code 16"));
  EXPECT_THAT(anonymous.err, HasSubstr("no bearer token"));
  EXPECT_THAT(Ctl("a-token-nobody-issued-ever", {"jobs"}).err, HasSubstr("code 16"));
  // An inference refused at the door counts as an inference request.
  std::ofstream(dir_ + "/one.bin") << std::string(3073, '\0');  // one CIFAR-10 record
  EXPECT_THAT(Ctl("", {"infer", "resnet8", "--data=" + dir_ + "/one.bin"}).err, HasSubstr("code 16"));
  EXPECT_THAT(Metrics(kReadToken),
              HasSubstr("quantd_inference_requests_total{code=\"UNAUTHENTICATED\",model=\"\",version=\"\"} 1"));
  {
    auto r = RunCommand({"/usr/bin/env", absl::StrCat("QUANTD_TOKEN=", kReadToken), QUANTCTL_BIN,
                         absl::StrCat("--server=127.0.0.1:", grpc_port_), "--tls_ca=" + dir_ + "/ca.pem",
                         "--tls_cert=" + dir_ + "/client.pem", "--tls_key=" + dir_ + "/client.key", "jobs"},
                        absl::Seconds(30));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->exit_code, 0) << r->err;
  }

  // Health stays open for probes (the caller still needs a trusted cert).
  RunResult health = Ctl("", {"health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(health.out, "SERVING\n");  // without a token, no server details
  EXPECT_THAT(health.err, HasSubstr("the server's details were refused"));  // and it says why
  EXPECT_THAT(Ctl(kReadToken, {"health"}).out, HasSubstr("cpu:"));

  // The audit log: who did what, with which result; refusals too; no token.
  const std::string text = log();
  EXPECT_THAT(text, HasSubstr("audit: who=ci"));
  EXPECT_THAT(text, HasSubstr("method=UploadModel target=" + upload.out.substr(0, 64) + " result=OK"));
  EXPECT_THAT(text, HasSubstr("who=ops peer="));
  EXPECT_THAT(text, HasSubstr("method=DeleteJob target=job-x result=NOT_FOUND"));
  // A call refused for its role names what it was aimed at (it was "-").
  EXPECT_THAT(text, ::testing::ContainsRegex("audit: who=ci peer=[^ ]+ method=DeleteJob target=job-x "
                                             "result=PERMISSION_DENIED"));
  EXPECT_THAT(text, HasSubstr("method=ListJobs target=- result=UNAUTHENTICATED"));
  for (const char* token : {kReadToken, kSubmitToken, kAdminToken}) EXPECT_THAT(text, Not(HasSubstr(token)));
}

// A job is its submitter's: another submitter may not cancel it, an admin may.
TEST_F(SecureQuantd, OnlyTheSubmitterOrAnAdminMayCancelAJob) {
  std::ofstream(dir_ + "/model.bin") << "not a model, but bytes";
  std::ofstream(dir_ + "/calib.bin") << std::string(3073 * 10, '\0');  // 10 CIFAR-10 records
  RunResult model = Ctl(kSubmitToken, {"upload", dir_ + "/model.bin"});
  RunResult calib = Ctl(kSubmitToken, {"upload", dir_ + "/calib.bin", "--kind=dataset"});
  ASSERT_EQ(model.exit_code, 0) << model.err;
  ASSERT_EQ(calib.exit_code, 0) << calib.err;
  auto submit = [&](const char* token) {
    RunResult r = Ctl(token, {"--json", "submit", "--model_blob=" + model.out.substr(0, 64),
                              "--calib_blob=" + calib.out.substr(0, 64)});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out, nullptr, false);
  };
  const nlohmann::json mine = submit(kSubmitToken);
  ASSERT_TRUE(mine.contains("id")) << mine.dump();
  const std::string id = mine["id"];
  EXPECT_EQ(mine["submittedBy"], "ci");

  RunResult theirs = Ctl(kOtherSubmitToken, {"cancel", id});
  EXPECT_EQ(theirs.exit_code, 1);
  EXPECT_THAT(theirs.err, HasSubstr("code 7"));  // PERMISSION_DENIED
  EXPECT_THAT(theirs.err, HasSubstr("was submitted by \"ci\"; only its submitter or an admin may cancel it"));
  // Its submitter and an admin get past the check (the job may have failed
  // already: this model is no model, so FAILED_PRECONDITION is fine too).
  for (const char* token : {kSubmitToken, kAdminToken}) {
    RunResult cancel = Ctl(token, {"cancel", id});
    EXPECT_THAT(cancel.err, Not(HasSubstr("code 7"))) << token;
  }
  EXPECT_THAT(Ctl(kOtherSubmitToken, {"cancel", "job-does-not-exist"}).err, HasSubstr("code 5"));
  EXPECT_THAT(log(), HasSubstr("who=ci2"));
  EXPECT_THAT(log(), HasSubstr("method=CancelJob target=" + id + " result=PERMISSION_DENIED"));
}

TEST_F(SecureQuantd, UntrustedOrMissingClientCertificatesAndPlaintextAreRefused) {
  RunResult rogue = Ctl(kAdminToken, {"jobs"},
                        {"--tls_ca=" + dir_ + "/ca.pem", "--tls_cert=" + dir_ + "/rogue.pem",
                         "--tls_key=" + dir_ + "/rogue.key"});
  EXPECT_EQ(rogue.exit_code, 1);
  EXPECT_THAT(rogue.err, HasSubstr("code 14"));  // the handshake fails: UNAVAILABLE
  RunResult no_cert = Ctl(kAdminToken, {"jobs"}, {"--tls_ca=" + dir_ + "/ca.pem"});
  EXPECT_THAT(no_cert.err, HasSubstr("code 14"));
  RunResult plaintext = Ctl(kAdminToken, {"jobs"}, {"--timeout_seconds=3"});
  EXPECT_THAT(plaintext.err, HasSubstr("code 14"));
  // A client that does not trust the server's CA refuses it too.
  RunResult wrong_ca = Ctl(kAdminToken, {"jobs"},
                           {"--tls_ca=" + dir_ + "/rogue_ca.pem", "--tls_cert=" + dir_ + "/client.pem",
                            "--tls_key=" + dir_ + "/client.key"});
  EXPECT_THAT(wrong_ca.err, HasSubstr("code 14"));
  EXPECT_EQ(Ctl(kReadToken, {"jobs"}).exit_code, 0);  // and the right one still works
}

TEST_F(SecureQuantd, MetricsOverHttpsNeedAReadToken) {
  EXPECT_EQ(MetricsStatus(""), "401");
  EXPECT_EQ(MetricsStatus("a-token-nobody-issued-ever"), "401");
  EXPECT_EQ(MetricsStatus(kReadToken), "200");
  // The served certificate's expiry, for an alert before it lapses (openssl
  // made it for 2 days).
  std::smatch expiry;
  const std::string metrics = Metrics(kReadToken);
  ASSERT_TRUE(std::regex_search(metrics, expiry, std::regex("\nquantd_tls_certificate_expiry_timestamp_seconds ([0-9.e+]+)\n")))
      << metrics.substr(0, 2000);
  const double days_left = (std::stod(expiry[1]) - absl::ToUnixSeconds(absl::Now())) / 86400;
  EXPECT_GT(days_left, 1.9);
  EXPECT_LT(days_left, 2.1);
}

// A REST request whose token is missing is refused from its headers, before
// its body is read: 24 MiB sent at 256 KiB/s would take over 90 s to read,
// and the 401 comes within curl's 20 s.
TEST_F(SecureQuantd, ARestBodyWithoutATokenIsRefusedBeforeItIsRead) {
  const std::string body = dir_ + "/big.json";
  {
    std::ofstream out(body, std::ios::binary);
    const std::string zeros(1 << 20, ' ');
    for (int i = 0; i < 24; ++i) out << zeros;
  }
  for (const std::string token : {"", "a-token-nobody-issued-ever"}) {
    std::vector<std::string> argv = {"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "20",
                                     "--limit-rate", "256k", "--cacert", dir_ + "/ca.pem", "--cert",
                                     dir_ + "/client.pem", "--key", dir_ + "/client.key", "-H",
                                     "Content-Type: application/json", "--data-binary", "@" + body};
    if (!token.empty()) argv.insert(argv.end(), {"-H", "Authorization: Bearer " + token});
    argv.push_back(absl::StrCat("https://127.0.0.1:", metrics_port_, "/v2/models/resnet8/infer"));
    auto r = RunCommand(argv, absl::Seconds(60));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->out, "401") << (token.empty() ? "no token" : "an unknown token");
  }
  // Counted as gRPC's refusals are, and the server goes on.
  EXPECT_THAT(Metrics(kReadToken),
              HasSubstr(R"(quantd_inference_requests_total{code="UNAUTHENTICATED",model="",version=""} 2)"));
}

// --metrics_tls_client_ca: without a certificate the CA signed, no HTTP at all.
TEST_F(SecureQuantd, MetricsOverHttpsNeedATrustedClientCertificate) {
  EXPECT_EQ(MetricsStatus(kReadToken, ""), "000");
  EXPECT_EQ(MetricsStatus(kReadToken, "rogue"), "000");
  EXPECT_EQ(MetricsStatus(kReadToken, "client"), "200");
}

// The HTTP port serves REST inference too: mTLS on gRPC alone leaves it to
// tokens, which quantd says at start. (This fixture gives both flags.)
TEST_F(SecureQuantd, MutualTlsOnGrpcAloneIsWarnedAbout) {
  EXPECT_THAT(log(), Not(HasSubstr("--tls_client_ca requires client certificates on gRPC only")));
  const std::string log_path = dir_ + "/grpc_mtls_only.log";
  Subprocess::Options options;
  options.stderr_path = log_path;
  auto child = Subprocess::Start({QUANTD_BIN, "--bind_address=127.0.0.1", "--grpc_port=0", "--metrics_port=0",
                                  "--data_dir=" + dir_ + "/data2", "--port_file=" + dir_ + "/ports2.json",
                                  "--tls_cert=" + dir_ + "/server.pem", "--tls_key=" + dir_ + "/server.key",
                                  "--tls_client_ca=" + dir_ + "/ca.pem", "--token_file=" + dir_ + "/tokens"},
                                 options);
  ASSERT_TRUE(child.ok()) << child.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline && !fs::exists(dir_ + "/ports2.json") && !(*child)->Poll().has_value()) {
    (*child)->WaitFor(absl::Milliseconds(20));
  }
  EXPECT_THAT(ReadFileOrEmpty(log_path),
              HasSubstr("--tls_client_ca requires client certificates on gRPC only; the HTTP port (REST inference "
                        "under /v2, /metrics, the health probes) takes any client"));
}

TEST_F(SecureQuantd, TheTokenFileIsReloadedWithoutARestart) {
  const std::string late = "late-token-91c4e0b2aa";
  EXPECT_THAT(Ctl(late, {"jobs"}).err, HasSubstr("code 16"));
  std::ofstream(dir_ + "/tokens", std::ios::trunc) << "ops admin " << kAdminToken << "\nlate read " << late << "\n";
  // The server looks at the file at most once a second: poll until it has.
  RunResult r;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  do {
    r = Ctl(late, {"jobs"});
  } while (r.exit_code != 0 && absl::Now() < deadline);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(Ctl(kReadToken, {"jobs"}).err, HasSubstr("code 16"));  // revoked
  EXPECT_THAT(log(), HasSubstr("reloaded 2 tokens"));
}

// A renewed server certificate (here from another CA, so that clients can
// tell) is served on gRPC and HTTPS without a restart, once the files have
// been swapped as a Kubernetes Secret update swaps them.
TEST_F(SecureQuantd, ARenewedServerCertificateIsServedWithoutARestart) {
  ASSERT_NO_FATAL_FAILURE(MakeCa(dir_, "new_ca"));
  ASSERT_NO_FATAL_FAILURE(MakeCert(dir_, "new_ca", "new_server"));
  const std::vector<std::string> trusting_new_ca = {"--tls_ca=" + dir_ + "/new_ca.pem",
                                                    "--tls_cert=" + dir_ + "/client.pem",
                                                    "--tls_key=" + dir_ + "/client.key"};
  EXPECT_THAT(Ctl(kReadToken, {"jobs"}, trusting_new_ca).err, HasSubstr("code 14"));
  EXPECT_EQ(GetMetrics(kReadToken, "client", {"-o", "/dev/null", "-w", "%{http_code}"}, "new_ca"), "000");

  for (const char* ext : {".key", ".pem"}) {
    fs::copy_file(dir_ + "/new_server" + ext, dir_ + "/swap" + ext);
    fs::rename(dir_ + "/swap" + ext, dir_ + "/server" + ext);
  }
  // quantd looks at the files once a second (--tls_reload_seconds=1).
  RunResult grpc;
  std::string https;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  do {
    grpc = Ctl(kReadToken, {"jobs"}, trusting_new_ca);
    https = GetMetrics(kReadToken, "client", {"-o", "/dev/null", "-w", "%{http_code}"}, "new_ca");
  } while ((grpc.exit_code != 0 || https != "200") && absl::Now() < deadline);
  EXPECT_EQ(grpc.exit_code, 0) << grpc.err;
  EXPECT_EQ(https, "200");
  // The old certificate is no longer served, and the client CA still holds.
  EXPECT_THAT(Ctl(kReadToken, {"jobs"}).err, HasSubstr("code 14"));
  EXPECT_EQ(MetricsStatus(kReadToken), "000");
  EXPECT_THAT(Ctl(kReadToken, {"jobs"},
                  {"--tls_ca=" + dir_ + "/new_ca.pem", "--tls_cert=" + dir_ + "/rogue.pem",
                   "--tls_key=" + dir_ + "/rogue.key"})
                  .err,
              HasSubstr("code 14"));
  EXPECT_THAT(log(), HasSubstr("HTTPS: reloaded"));
}

}  // namespace
}  // namespace quantd
