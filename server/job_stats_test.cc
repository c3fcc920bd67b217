#include "server/job_stats.h"

#include <prometheus/text_serializer.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "worker/evaluation.h"
#include "worker/sqlite_job_store.h"

namespace quantd {
namespace {

using ::testing::HasSubstr;

std::string Scrape(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

worker::JobEvent Finished(const std::string& id, worker::JobState state) {
  worker::JobEvent event;
  event.kind = worker::JobEvent::Kind::kStateChanged;
  event.job_id = id;
  event.state = state;
  return event;
}

TEST(JobStatsTest, RecoveriesAreCountedOnceAndRecoveredFailuresAreFinishedJobs) {
  prometheus::Registry registry;
  JobStats stats(registry);
  // Both outcomes exist before the first recovery, so a rate sees the first.
  std::string text = Scrape(registry);
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"requeued\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"failed\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"cancelled\"} 0\n"));

  stats.OnJobEvent(Finished("job-1", worker::JobState::kFailed));  // a runner's failure
  // The pool's running totals, read before each scrape: only what is new counts.
  stats.CountRecovered({.requeued = 2, .failed = 0});
  stats.CountRecovered({.requeued = 2, .failed = 0});
  stats.CountRecovered({.requeued = 3, .failed = 1});
  stats.CountRecovered({.requeued = 3, .failed = 1, .cancelled = 2});
  text = Scrape(registry);
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"requeued\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"failed\"} 1\n"));
  // A job failed by recovery has no runner to report it: the job failure
  // ratio sees it through this counter.
  EXPECT_THAT(text, HasSubstr("quantd_jobs_finished_total{state=\"failed\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_finished_total{state=\"succeeded\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_recovered_total{outcome=\"cancelled\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("quantd_jobs_finished_total{state=\"cancelled\"} 2\n"));
}

// Evaluations that fail or are cancelled left no trace in the metrics.
TEST(JobStatsTest, EvaluationsAreCountedByFinalStateFromTheStart) {
  prometheus::Registry registry;
  JobStats stats(registry);
  EXPECT_THAT(Scrape(registry), HasSubstr("quantd_evaluations_finished_total{state=\"failed\"} 0\n"));
  stats.CountEvaluationFinished(worker::EvaluationStateName(worker::EvaluationState::kSucceeded));
  stats.CountEvaluationFinished(worker::EvaluationStateName(worker::EvaluationState::kCancelled));
  stats.CountEvaluationFinished(worker::EvaluationStateName(worker::EvaluationState::kCancelled));
  const std::string text = Scrape(registry);
  EXPECT_THAT(text, HasSubstr("quantd_evaluations_finished_total{state=\"succeeded\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("quantd_evaluations_finished_total{state=\"cancelled\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("quantd_evaluations_finished_total{state=\"failed\"} 0\n"));
}

// A job's store with version 1 of "resnet8" published, its job having
// evaluated int8 8500 and FP32 8719 of 10000 images.
std::unique_ptr<worker::SqliteJobStore> StoreWithAPublishedVersion() {
  const std::string dir = absl::StrCat(std::filesystem::temp_directory_path().string(), "/job_stats_test.", getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto store = worker::SqliteJobStore::Open(dir + "/jobs.db");
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return nullptr;
  worker::Job job;
  job.id = "job-a";
  job.spec.model_name = "resnet8";
  job.spec.model_path = "model.pt";
  job.request_fingerprint = job.id;
  EXPECT_TRUE((*store)->Create(job, 10).ok());
  EXPECT_TRUE((*store)->ClaimNext(absl::FromUnixSeconds(100), "local", absl::Hours(1)).ok());
  worker::JobResult result;
  result.artifact_sha256 = std::string(64, 'a');
  result.artifact_id = worker::ArtifactIdFor(result.artifact_sha256);
  result.report.int8_accuracy = engine::Accuracy{8500, 10000};
  result.report.fp32_accuracy = engine::Accuracy{8719, 10000};
  EXPECT_TRUE((*store)->Finish("job-a", 1, worker::JobState::kSucceeded, result, absl::FromUnixSeconds(101)).ok());
  return *std::move(store);
}

// A succeeded evaluation of resnet8 version 1 on `samples` images, finished
// at `finished` (unix seconds), with an FP32 column when `fp32_correct` >= 0.
void PutEvaluation(worker::JobStore& store, const std::string& id, int64_t samples, int64_t int8_correct,
                   int64_t fp32_correct, int64_t finished) {
  worker::Evaluation e;
  e.id = id;
  e.spec.model_name = "resnet8";
  e.spec.model_version = 1;
  e.state = worker::EvaluationState::kSucceeded;
  e.create_time = absl::FromUnixSeconds(finished - 1);
  e.update_time = absl::FromUnixSeconds(finished);
  e.finish_time = e.update_time;
  e.samples_done = e.samples_total = samples;
  worker::EvaluationAccumulator accumulator(2, fp32_correct >= 0);
  for (int64_t i = 0; i < samples; ++i) {
    // Label 0; a score row (1, 0) predicts it, (0, 1) does not.
    const std::vector<float> int8 = i < int8_correct ? std::vector<float>{1, 0} : std::vector<float>{0, 1};
    const std::vector<float> fp32 = i < fp32_correct ? std::vector<float>{1, 0} : std::vector<float>{0, 1};
    ASSERT_TRUE(accumulator.Add(i, {0}, int8, fp32_correct >= 0 ? &fp32 : nullptr).ok());
  }
  e.report = accumulator.Finish();
  worker::JobStore::EvaluationIndex index;
  index.model_name = "resnet8";
  index.model_version = 1;
  index.succeeded = e.finish_time;
  index.has_fp32 = fp32_correct >= 0;
  index.finished = true;
  ASSERT_TRUE(store.PutEvaluation(id, worker::EncodeEvaluation(e), index).ok());
}

// int8 and FP32 once followed each precision's own newest evaluation: an
// int8-only one on 20 images beside the job's FP32 on 10000 read as a drop
// no measurement had seen.
TEST(JobStatsTest, BothAccuraciesOfAVersionComeFromOneMeasurement) {
  std::unique_ptr<worker::SqliteJobStore> store = StoreWithAPublishedVersion();
  ASSERT_NE(store, nullptr);
  prometheus::Registry registry;
  JobStats stats(registry);
  auto expect = [&](const std::string& int8, const std::string& fp32, const std::string& samples) {
    stats.Refresh(*store, nullptr);
    const std::string text = Scrape(registry);
    EXPECT_THAT(text, HasSubstr(R"(quantd_model_accuracy_ratio{model="resnet8",precision="int8",version="1"} )" +
                                int8 + "\n"));
    EXPECT_THAT(text, HasSubstr(R"(quantd_model_accuracy_ratio{model="resnet8",precision="fp32",version="1"} )" +
                                fp32 + "\n"));
    EXPECT_THAT(text, HasSubstr(R"(quantd_model_accuracy_samples{model="resnet8",version="1"} )" + samples + "\n"));
  };
  expect("0.85", "0.8719", "10000");  // the job's evaluation
  PutEvaluation(*store, "eval-1", 500, 400, 450, 200);
  expect("0.8", "0.9", "500");  // an Evaluate with both
  PutEvaluation(*store, "eval-2", 20, 19, -1, 300);
  expect("0.8", "0.9", "500");  // int8 only: not paired with another's FP32
  PutEvaluation(*store, "eval-3", 100, 70, 80, 400);
  expect("0.7", "0.8", "100");

  ASSERT_TRUE(store->DeleteModelVersion("resnet8", 1).ok());
  stats.Refresh(*store, nullptr);
  const std::string text = Scrape(registry);
  EXPECT_THAT(text, ::testing::Not(HasSubstr("quantd_model_accuracy_ratio{")));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("quantd_model_accuracy_samples{")));
}

}  // namespace
}  // namespace quantd
