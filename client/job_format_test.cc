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
  EXPECT_THAT(JobText(job), HasSubstr("\n  published: resnet8 version 2\n"));
  result.set_model_version_deleted(true);
  EXPECT_THAT(JobText(job), HasSubstr("\n  published: resnet8 version 2 (since deleted)\n"));
}

// A streamed trial has no table header above it: its figures are named.
TEST(JobTextTest, AStreamedTrialNamesItsFigures) {
  v1::JobEvent event;
  event.set_job_id("job-1");
  v1::TuningProgress& progress = *event.mutable_tuning_progress();
  progress.set_trials_done(3);
  progress.set_trial_budget(40);
  v1::TuningTrial& trial = *progress.mutable_trial();
  trial.set_stage("fallback");
  trial.set_top1(0.8712);
  trial.set_top1_agreement(0.981);
  trial.set_output_sqnr_db(21.5);
  trial.set_seconds(1.25);
  trial.set_activation_observer("mse");
  trial.add_fp32_layers("conv1");
  trial.set_meets_goal(true);
  EXPECT_EQ(EventText(event), "job-1 trial 3/40 fallback: top-1 87.12%, agreement 98.10%, SQNR 21.50 dB, "
                              "1.25 s, activations mse, FP32: conv1 (meets goal)");
  trial.set_error("out of time");
  EXPECT_EQ(EventText(event), "job-1 trial 3/40 fallback: failed: out of time");
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

// A server with `service` only, and a quantctl context on it writing to
// `out` and `err`.
std::unique_ptr<grpc::Server> StartScripted(grpc::Service* service) {
  grpc::ServerBuilder builder;
  builder.RegisterService(service);
  return builder.BuildAndStart();
}
CommandContext ContextOn(grpc::Server& server, std::ostream* out, std::ostream* err) {
  CommandContext context;
  context.channel = server.InProcessChannel(grpc::ChannelArguments());
  context.out = out;
  context.err = err;
  return context;
}

class FollowJobTest : public ::testing::Test {
 protected:
  // Runs FollowJob against `script`; returns its exit code.
  int Follow(std::vector<ScriptedWatch::Call> script, absl::Duration reconnect_window, bool job_exists = false) {
    service_ = std::make_unique<ScriptedWatch>(std::move(script));
    server_ = StartScripted(service_.get());
    const int rc = FollowJob(ContextOn(*server_, &out_, &err_), "job-1", reconnect_window, job_exists);
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

// A state change to the state the snapshot printed (a job claimed as its
// watch began) printed RUNNING twice; the real changes still print.
TEST_F(FollowJobTest, AStateTheSnapshotAlreadyShowedIsNotPrintedAgain) {
  v1::JobEvent running = Succeeded(2);
  running.set_state_changed(v1::JOB_STATE_RUNNING);
  const int rc = Follow({{{Snapshot(1, v1::JOB_STATE_RUNNING), running, Succeeded(3), Result(4)},
                          absl::ZeroDuration(),
                          grpc::Status::OK}},
                        absl::Minutes(5));
  EXPECT_EQ(rc, kExitOk) << err_.str();
  EXPECT_THAT(out_.str(), Not(HasSubstr("state RUNNING"))) << out_.str();
  EXPECT_THAT(out_.str(), HasSubstr("job-1 state SUCCEEDED")) << out_.str();
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

// A job run again from the start after its server stopped (a new attempt,
// another start time in the snapshot) is said, not spliced into the first
// attempt's timeline.
TEST_F(FollowJobTest, AJobRunAgainFromTheStartAfterAReconnectIsSaid) {
  const grpc::Status restart(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  v1::JobEvent first = Snapshot(1, v1::JOB_STATE_RUNNING);
  first.mutable_snapshot()->mutable_start_time()->set_seconds(100);
  first.mutable_snapshot()->set_attempt_count(1);
  v1::JobEvent again = Snapshot((uint64_t{2} << 32) + 1, v1::JOB_STATE_RUNNING);
  again.mutable_snapshot()->mutable_start_time()->set_seconds(160);
  again.mutable_snapshot()->set_attempt_count(2);
  const int rc = Follow({{{first}, absl::ZeroDuration(), restart},
                         {{again, Succeeded((uint64_t{2} << 32) + 2), Result((uint64_t{2} << 32) + 3)},
                          absl::ZeroDuration(),
                          grpc::Status::OK}},
                        absl::Minutes(5));
  EXPECT_EQ(rc, kExitOk) << err_.str();
  EXPECT_THAT(out_.str(), HasSubstr("job-1 runs again from the start (attempt 2)")) << out_.str();

  // The same attempt seen again after a reconnect says nothing of the kind.
  out_.str("");
  v1::JobEvent same = again;
  same.set_sequence((uint64_t{3} << 32) + 1);
  const int resumed = Follow({{{again}, absl::ZeroDuration(), restart},
                              {{same, Succeeded((uint64_t{3} << 32) + 2), Result((uint64_t{3} << 32) + 3)},
                               absl::ZeroDuration(),
                               grpc::Status::OK}},
                             absl::Minutes(5));
  EXPECT_EQ(resumed, kExitOk) << err_.str();
  EXPECT_THAT(out_.str(), Not(HasSubstr("runs again"))) << out_.str();
}

v1::Evaluation FinishedEvaluation(int classes, bool named) {
  v1::Evaluation e;
  e.set_id("eval-1");
  e.set_state(v1::EVALUATION_STATE_SUCCEEDED);
  v1::EvaluationReport& r = *e.mutable_report();
  r.set_classes(static_cast<uint32_t>(classes));
  r.set_samples(static_cast<uint64_t>(classes) * 1000);
  for (int c = 0; c < classes; ++c) {
    if (named) r.add_class_names(c == 1 ? "a rather long class name" : absl::StrCat("c", c));
    r.add_per_class_total(1000);
    r.mutable_int8()->add_per_class_correct(900);
    for (int p = 0; p < classes; ++p) r.mutable_int8()->add_confusion(p == c ? 900 : (p == 0 ? 100 : 0));
  }
  return e;
}

// Unnamed classes ("class 0", "class 1", ...) once all headed their grid
// column "class ", and a long name shifted its rows: columns are class
// numbers now, and names pad to the longest.
TEST(EvaluationTextTest, GridColumnsAreClassNumbersAndRowsStayAligned) {
  for (bool named : {false, true}) {
    const std::string text = EvaluationText(FinishedEvaluation(12, named));
    const size_t grid = text.find("confusion matrix, int8");
    ASSERT_NE(grid, std::string::npos) << text;
    std::vector<std::string> lines = absl::StrSplit(text.substr(grid), '\n');
    ASSERT_EQ(lines.size(), 14u) << text;  // title, header, 12 rows
    EXPECT_THAT(lines[1], HasSubstr("   0   1   2")) << lines[1];
    EXPECT_THAT(lines[1], HasSubstr("  10  11")) << lines[1];
    for (size_t i = 2; i < lines.size(); ++i) {
      EXPECT_EQ(lines[i].size(), lines[1].size()) << "row " << i - 2 << ": " << lines[i];
    }
    EXPECT_THAT(lines[2], HasSubstr(" 900")) << lines[2];
  }
}

TEST(EvaluationTextTest, AGridTooWideToReadIsLeftToJson) {
  const std::string text = EvaluationText(FinishedEvaluation(kMaxGridClasses + 1, false));
  EXPECT_THAT(text, HasSubstr("confusion matrix, int8: 33 x 33, too wide to print (--json has it)"));
  EXPECT_THAT(text, HasSubstr("32  class 32")) << text;  // the per-class table is all there
}

// submit --wait: the job was just created, so a first watch refused for a
// busy queue (or a restart) is retried; a bare watch of an id that may be
// wrong fails at once.
TEST_F(FollowJobTest, AFirstWatchRefusedIsRetriedOnlyForAJobJustSubmitted) {
  const grpc::Status busy(grpc::StatusCode::RESOURCE_EXHAUSTED, "1000 calls already wait (--rpc_queue_capacity)");
  const std::vector<ScriptedWatch::Call> script = {
      {{}, absl::ZeroDuration(), busy},
      {{Snapshot(1, v1::JOB_STATE_SUCCEEDED), Result(2)}, absl::ZeroDuration(), grpc::Status::OK}};
  EXPECT_EQ(Follow(script, absl::Minutes(5), /*job_exists=*/true), kExitOk) << err_.str();
  EXPECT_EQ(service_->calls_made.load(), 2);
  EXPECT_EQ(ResultLines(), 1) << out_.str();
  EXPECT_EQ(Follow(script, absl::Minutes(5)), kExitFailure);
  EXPECT_EQ(service_->calls_made.load(), 1);
}

// A quantd that answers GetEvaluation from a script of statuses; OK answers
// the evaluation done.
class ScriptedEvaluation final : public v1::QuantizationService::Service {
 public:
  explicit ScriptedEvaluation(std::vector<grpc::Status> answers) : answers_(std::move(answers)) {}
  grpc::Status GetEvaluation(grpc::ServerContext*, const v1::GetEvaluationRequest*,
                             v1::Evaluation* evaluation) override {
    const size_t n = static_cast<size_t>(calls_made.fetch_add(1));
    if (n >= answers_.size()) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no call scripted");
    if (answers_[n].ok()) *evaluation = FinishedEvaluation(2, true);
    return answers_[n];
  }
  std::atomic<int> calls_made{0};

 private:
  const std::vector<grpc::Status> answers_;
};

class FollowEvaluationTest : public ::testing::Test {
 protected:
  int Follow(std::vector<grpc::Status> answers, absl::Duration reconnect_window, bool json = false) {
    service_ = std::make_unique<ScriptedEvaluation>(std::move(answers));
    server_ = StartScripted(service_.get());
    CommandContext context = ContextOn(*server_, &out_, &err_);
    context.options.json = json;
    auto stub = v1::QuantizationService::NewStub(context.channel);
    v1::Evaluation running;
    running.set_id("eval-1");
    running.set_model_name("resnet8");
    running.set_model_version(1);
    running.set_state(v1::EVALUATION_STATE_RUNNING);
    const int rc = FollowEvaluation(context, *stub, running, reconnect_window);
    server_->Shutdown();
    return rc;
  }
  std::unique_ptr<ScriptedEvaluation> service_;
  std::unique_ptr<grpc::Server> server_;
  std::ostringstream out_, err_;
};

// One failed poll (a restart, a slow answer) ended `quantctl eval` with a
// failure while the evaluation ran on.
TEST_F(FollowEvaluationTest, APollThatFailsOnTheWayIsAskedAgain) {
  const int rc = Follow({grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused"),
                         grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "slow"),
                         grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "--rpc_queue_capacity"),
                         grpc::Status::OK},
                        absl::Minutes(5));
  EXPECT_EQ(rc, kExitOk) << err_.str();
  EXPECT_EQ(service_->calls_made.load(), 4);
  EXPECT_THAT(err_.str(), HasSubstr("); asking again once the server answers"));
  EXPECT_THAT(out_.str(), HasSubstr("evaluation eval-1"));
}

// Piped, the id came only with the first progress line 5 s in (and a
// buffered one later still): a script could not cancel what it started.
// It comes before the first poll now, on stderr beside --json.
TEST_F(FollowEvaluationTest, TheIdIsPrintedBeforeTheFirstPoll) {
  const grpc::Status gone(grpc::StatusCode::NOT_FOUND, "no evaluation eval-1");
  EXPECT_EQ(Follow({gone}, absl::Minutes(5)), kExitFailure);
  EXPECT_THAT(out_.str(), testing::StartsWith("evaluation eval-1 of resnet8 version 1 is running (quantctl cancel eval-1 "
                                              "stops it)\n"));
  out_.str("");
  err_.str("");
  EXPECT_EQ(Follow({gone}, absl::Minutes(5), /*json=*/true), kExitFailure);
  EXPECT_EQ(out_.str(), "");  // stdout stays JSON
  EXPECT_THAT(err_.str(), HasSubstr("evaluation eval-1 of resnet8 version 1 is running (quantctl cancel eval-1 stops it)"));
}

TEST_F(FollowEvaluationTest, OtherErrorsAndAServerAwayTooLongEndIt) {
  EXPECT_EQ(Follow({grpc::Status(grpc::StatusCode::NOT_FOUND, "no evaluation eval-1")}, absl::Minutes(5)),
            kExitFailure);
  EXPECT_EQ(service_->calls_made.load(), 1);
  const grpc::Status away(grpc::StatusCode::UNAVAILABLE, "connection refused");
  EXPECT_EQ(Follow({away, away, away, away, grpc::Status::OK}, absl::Milliseconds(300)), kExitFailure);
  EXPECT_LT(service_->calls_made.load(), 5);
}

}  // namespace
}  // namespace quantd::cli
