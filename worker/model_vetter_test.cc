// The parent's side of model vetting against real child processes: small
// shell scripts that behave like a vetting child that passes, rejects,
// crashes or hangs. The real child (quantd --vet_model_file) on real crashing
// archives is in tests/integration/jobs_integration_test.cc.

#include "worker/model_vetter.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quantd::worker {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

ModelVetterOptions Script(const std::string& script, absl::Duration timeout = absl::Seconds(30)) {
  ModelVetterOptions options;
  // sh -c SCRIPT sh MODEL_PATH: the model path is $1.
  options.command = {"/bin/sh", "-c", script, "sh"};
  options.timeout = timeout;
  return options;
}

TEST(ModelVetterTest, AModelTheChildLoadsIsOk) {
  // The path arrives as the last argument.
  EXPECT_TRUE(
      VetModelInChildProcess(Script(R"(test "$1" = /models/m.pt || exit 9; exit 0)"), "/models/m.pt").ok());
}

TEST(ModelVetterTest, TheChildsOwnStatusIsPassedOn) {
  absl::Status status = VetModelInChildProcess(
      Script(R"(printf 'status 3\nloading TorchScript model %s: no forward\n' "$1"; exit 2)"), "/m.pt");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "loading TorchScript model /m.pt: no forward");

  status = VetModelInChildProcess(Script(R"(printf 'status 8\nout of memory\n'; exit 2)"), "/m.pt");
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "out of memory");
}

// The child reads an untrusted model: it gets none of the server's files
// (an upload being written, the job store), only stdin, stdout and stderr.
TEST(ModelVetterTest, TheChildInheritsNoDescriptorButItsStandardOnes) {
  const int fd = ::open("/dev/null", O_RDONLY);  // no O_CLOEXEC, as std::fstream opens files
  ASSERT_GE(fd, 3);
  const absl::Status status = VetModelInChildProcess(
      Script("test -e /proc/self/fd/" + std::to_string(fd) + " && { echo \"inherited fd " + std::to_string(fd) +
             "\"; exit 3; }; exit 0"),
      "/m.pt");
  ::close(fd);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(ModelVetterTest, ACrashIsInvalidArgumentNamingTheSignalAndTheModel) {
  const absl::Status status =
      VetModelInChildProcess(Script("echo 'sanitizer report noise'; kill -SEGV $$"), "/data/blobs/b1");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr("/data/blobs/b1"), HasSubstr("crashed"), HasSubstr("SIGSEGV")));
  EXPECT_THAT(status.message(), ::testing::Not(HasSubstr("noise")));
}

TEST(ModelVetterTest, AnyOtherExitShowsItsCodeAndLastLine) {
  const absl::Status status = VetModelInChildProcess(Script("echo first; echo 'bad flag'; exit 7"), "/m.pt");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr("exit code 7"), HasSubstr("bad flag"), HasSubstr("/m.pt")));
  EXPECT_THAT(status.message(), ::testing::Not(HasSubstr("first")));
}

TEST(ModelVetterTest, AHangingChildIsKilledAtTheTimeoutNamingTheFlag) {
  for (const std::string script : {"sleep 60", "exec >&- 2>&-; sleep 60"}) {
    SCOPED_TRACE(script);
    const absl::Time start = absl::Now();
    const absl::Status status = VetModelInChildProcess(Script(script, absl::Milliseconds(300)), "/m.pt");
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
    EXPECT_THAT(status.message(), AllOf(HasSubstr("--model_vet_seconds=0.3"), HasSubstr("/m.pt")));
    EXPECT_LT(absl::Now() - start, absl::Seconds(20)) << "the child was not killed";
  }
}

// With SIGCHLD ignored the kernel reaps the child itself: its exit status is
// lost, and that must never pass as a clean load of a model that crashed it.
TEST(ModelVetterTest, ALostExitStatusIsNeverTakenForASuccess) {
  struct sigaction ignore = {}, before = {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ASSERT_EQ(::sigaction(SIGCHLD, &ignore, &before), 0);
  const absl::Status crashed = VetModelInChildProcess(Script("kill -SEGV $$"), "/m.pt");
  ::sigaction(SIGCHLD, &before, nullptr);
  EXPECT_EQ(crashed.code(), absl::StatusCode::kInternal) << crashed;
  EXPECT_THAT(std::string(crashed.message()), HasSubstr("lost the exit status"));
  EXPECT_THAT(std::string(crashed.message()), HasSubstr("/m.pt"));
}

TEST(ModelVetterTest, AProgramThatCannotStartIsInternalNamingIt) {
  ModelVetterOptions options;
  options.command = {"/nonexistent/quantd", "--vet_model_file"};
  const absl::Status status = VetModelInChildProcess(options, "/m.pt");
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent/quantd"));
}

std::string WriteFile(const std::string& name, const std::string& content) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
  return path;
}

int Lines(const std::string& path) {
  std::ifstream in(path);
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  return lines;
}

TEST(CachingModelVetterTest, AModelIsVettedOncePerContent) {
  const std::string runs = WriteFile("vetter_runs", "");
  // Each child run leaves a line; a model whose content is "bad" is rejected.
  CachingModelVetter vetter(Script("echo run >> " + runs +
                                   R"(; if grep -q bad "$1"; then printf 'status 3\nbad model\n'; exit 2; fi)"));
  const std::string a = WriteFile("model_a.pt", "weights one");
  const std::string same_as_a = WriteFile("model_a_copy.pt", "weights one");
  EXPECT_TRUE(vetter.Vet(a).ok());
  EXPECT_TRUE(vetter.Vet(a).ok());
  EXPECT_TRUE(vetter.Vet(same_as_a).ok());
  EXPECT_EQ(Lines(runs), 1);

  WriteFile("model_a.pt", "weights two");  // same path, new content: vetted again
  EXPECT_TRUE(vetter.Vet(a).ok());
  EXPECT_EQ(Lines(runs), 2);

  const std::string bad = WriteFile("model_bad.pt", "bad weights");
  EXPECT_EQ(vetter.Vet(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(vetter.Vet(bad).code(), absl::StatusCode::kInvalidArgument);  // failures are not remembered
  EXPECT_EQ(Lines(runs), 4);

  EXPECT_EQ(vetter.Vet(::testing::TempDir() + "/no_such_model.pt").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Lines(runs), 4);  // no file, no child
}

}  // namespace
}  // namespace quantd::worker
