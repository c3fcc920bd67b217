#include "client/job_format.h"

#include <atomic>
#include <memory>
#include <sstream>
#include <utility>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "absl/strings/match.h"

namespace quantd::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

TEST(ParseCommandArgsTest, ValueFlagsTakeEqualsOrTheNextArgument) {
  std::string error;
  auto a = ParseCommandArgs({"--model", "m.pt", "--calib=c.bin", "-o", "out.bin", "extra"}, {"model", "calib", "o"},
                            &error);
  ASSERT_TRUE(a.has_value()) << error;
  EXPECT_THAT(a->flags, UnorderedElementsAre(Pair("model", "m.pt"), Pair("calib", "c.bin"), Pair("o", "out.bin")));
  EXPECT_THAT(a->positional, ElementsAre("extra"));
}

// Before, "--model" alone became the model path "true", and the path after
// it a stray positional argument.
TEST(ParseCommandArgsTest, AValueFlagWithoutItsValueIsAnErrorNamingIt) {
  std::string error;
  EXPECT_FALSE(ParseCommandArgs({"--model_name"}, {"model_name"}, &error).has_value());
  EXPECT_EQ(error, "--model_name needs a value");
  EXPECT_FALSE(ParseCommandArgs({"--model", "--calib=c.bin"}, {"model", "calib"}, &error).has_value());
  EXPECT_EQ(error, "--model needs a value");
  EXPECT_FALSE(ParseCommandArgs({"-o"}, {"o"}, &error).has_value());
  EXPECT_EQ(error, "-o needs a value");
  // An explicit empty value is the caller's to judge.
  auto empty = ParseCommandArgs({"--reason="}, {"reason"}, &error);
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->Get("reason", "unset"), "");
}

TEST(ParseCommandArgsTest, BooleanFlagsAreStrict) {
  std::string error;
  auto a = ParseCommandArgs({"--wait", "--skip_fp32=false", "--int8_only=1", "job.json"}, {},
                            &error, {"wait", "skip_fp32", "int8_only", "against_fp32"});
  ASSERT_TRUE(a.has_value()) << error;
  EXPECT_TRUE(a->IsOn("wait"));
  EXPECT_TRUE(a->Has("skip_fp32"));
  EXPECT_FALSE(a->IsOn("skip_fp32"));  // --wait=false no longer waits
  EXPECT_TRUE(a->IsOn("int8_only"));
  EXPECT_FALSE(a->IsOn("against_fp32"));
  EXPECT_THAT(a->positional, ElementsAre("job.json"));  // a boolean never takes the next argument

  EXPECT_FALSE(ParseCommandArgs({"--reduce_range=maybe"}, {}, &error, {"reduce_range"}).has_value());
  EXPECT_EQ(error, "--reduce_range expects true or false, got \"maybe\"");
}

TEST(ParseCommandArgsTest, UnknownFlagsAreNamed) {
  std::string error;
  EXPECT_FALSE(ParseCommandArgs({"--modle=m.pt"}, {"model"}, &error, {"wait"}).has_value());
  EXPECT_EQ(error, "unknown flag --modle");
}

// A job that published a version says which, as quantctl models lists it.
TEST(JobTextTest, APublishedVersionIsNamed) {
  v1::Job job;
  job.set_id("job-1");
  v1::JobResult& result = *job.mutable_result();
  result.set_artifact_id("art-1");
  EXPECT_THAT(JobText(job), Not(HasSubstr("published")));
  result.set_model_name("resnet8");
  result.set_model_version(2);
  EXPECT_THAT(JobText(job), HasSubstr("\n  published: resnet8 version 2"));
}

// A quantd that answers WatchJob from a script: each call writes its events,
// stays quiet for a while, then ends with its status.
class ScriptedWatch final : public v1::QuantizationService::Service {
 public:
  struct Call {
    std::vector<v1::JobEvent> events;
    absl::Duration quiet;
    grpc::Status end;
  };
  explicit ScriptedWatch(std::vector<Call> calls) : calls_(std::move(calls)) {}

  grpc::Status WatchJob(grpc::ServerContext*, const v1::WatchJobRequest*,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    const size_t n = static_cast<size_t>(calls_made.fetch_add(1));
    if (n >= calls_.size()) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no call scripted");
    for (const v1::JobEvent& event : calls_[n].events) writer->Write(event);
    absl::SleepFor(calls_[n].quiet);
    return calls_[n].end;
  }

  std::atomic<int> calls_made{0};

 private:
  const std::vector<Call> calls_;
};

v1::JobEvent Snapshot(uint64_t sequence, v1::JobState state) {
  v1::JobEvent event;
  event.set_job_id("job-1");
  event.set_sequence(sequence);
  event.mutable_snapshot()->set_id("job-1");
  event.mutable_snapshot()->set_state(state);
  return event;
}

v1::JobEvent Succeeded(uint64_t sequence) {
  v1::JobEvent event;
  event.set_job_id("job-1");
  event.set_sequence(sequence);
  event.set_state_changed(v1::JOB_STATE_SUCCEEDED);
  return event;
}

v1::JobEvent Result(uint64_t sequence) {
  v1::JobEvent event;
  event.set_job_id("job-1");
  event.set_sequence(sequence);
  event.mutable_result()->set_artifact_id("art-1");
  return event;
}

class FollowJobTest : public ::testing::Test {
 protected:
  // Runs FollowJob against `script`; returns its exit code.
  int Follow(std::vector<ScriptedWatch::Call> script, absl::Duration reconnect_window) {
    service_ = std::make_unique<ScriptedWatch>(std::move(script));
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    CommandContext context;
    context.channel = server_->InProcessChannel(grpc::ChannelArguments());
    context.out = &out_;
    context.err = &err_;
    const int rc = FollowJob(context, "job-1", reconnect_window);
    server_->Shutdown();
    return rc;
  }
  int ResultLines() const {
    int n = 0;
    for (absl::string_view line : absl::StrSplit(out_.str(), '\n')) n += absl::StrContains(line, " result ");
    return n;
  }

  std::unique_ptr<ScriptedWatch> service_;
  std::unique_ptr<grpc::Server> server_;
  std::ostringstream out_, err_;
};

// The stream broke right after the result (before its OK status): the job is
// over, so it is not watched again (the server would replay the result).
TEST_F(FollowJobTest, AWatchThatBreaksAfterTheResultEndsWithOneResult) {
  const grpc::Status cut(grpc::StatusCode::UNAVAILABLE, "connection reset");
  const int rc = Follow({{{Snapshot(1, v1::JOB_STATE_RUNNING), Succeeded(2), Result(3)}, absl::ZeroDuration(), cut},
                         {{Snapshot(1, v1::JOB_STATE_SUCCEEDED), Result(2)}, absl::ZeroDuration(), grpc::Status::OK}},
                        absl::Minutes(5));
  EXPECT_EQ(rc, kExitOk) << err_.str();
  EXPECT_EQ(service_->calls_made.load(), 1);
  EXPECT_EQ(ResultLines(), 1) << out_.str();
}

// The reconnect window counts from the break, not from the last event: a
// stream quiet for longer than the window (a queued job) is still resumed.
TEST_F(FollowJobTest, AQuietWatchThatBreaksIsResumedWithinTheWindowOfTheBreak) {
  const grpc::Status restart(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  const int rc =
      Follow({{{Snapshot(1, v1::JOB_STATE_QUEUED)}, absl::Milliseconds(400), restart},
              {{Snapshot((uint64_t{2} << 32) + 1, v1::JOB_STATE_SUCCEEDED), Result((uint64_t{2} << 32) + 2)},
               absl::ZeroDuration(),
               grpc::Status::OK}},
             /*reconnect_window=*/absl::Milliseconds(300));
  EXPECT_EQ(rc, kExitOk) << err_.str();
  EXPECT_EQ(service_->calls_made.load(), 2);
  EXPECT_EQ(ResultLines(), 1) << out_.str();
  EXPECT_THAT(err_.str(), HasSubstr("was interrupted"));
}

}  // namespace
}  // namespace quantd::cli
