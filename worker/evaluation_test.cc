#include "worker/evaluation.h"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/testing/forwarding_job_store.h"

namespace quantd::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Scores for 6 classes with `best` highest, then `second`, the rest 0.
std::vector<float> Scores(int best, int second) {
  std::vector<float> s(6, 0.0f);
  s[best] = 2.0f;
  s[second] = 1.0f;
  return s;
}

std::vector<float> Concat(std::initializer_list<std::vector<float>> rows) {
  std::vector<float> out;
  for (const auto& r : rows) out.insert(out.end(), r.begin(), r.end());
  return out;
}

TEST(EvaluationAccumulatorTest, CountsTopOneTopFiveConfusionAndAgreementPerClass) {
  EvaluationAccumulator acc(6, /*with_fp32=*/true);
  // Labels 0, 1, 1, 2. int8 predicts 0, 1, 3, 5; FP32 predicts 0, 1, 1, 2.
  const std::vector<int64_t> labels = {0, 1, 1, 2};
  const std::vector<float> int8 = Concat({Scores(0, 1), Scores(1, 0), Scores(3, 1), Scores(5, 4)});
  const std::vector<float> fp32 = Concat({Scores(0, 1), Scores(1, 0), Scores(1, 3), Scores(2, 5)});
  ASSERT_TRUE(acc.Add(100, labels, int8, &fp32).ok());
  acc.AddSeconds(0.5, 2.0);
  const EvaluationReport r = acc.Finish();
  EXPECT_EQ(r.samples, 4);
  EXPECT_THAT(r.per_class_total, ElementsAre(1, 2, 1, 0, 0, 0));
  EXPECT_EQ(r.int8.top1_correct, 2);
  // Sample 3 (label 2) has int8 scores 0 for classes 0..3: five classes
  // beat or tie it ahead of it (5, 4, 0, 1), so it is still in the top 5;
  // sample 2 (label 1) is second.
  EXPECT_EQ(r.int8.top5_correct, 4);
  EXPECT_THAT(r.int8.per_class_correct, ElementsAre(1, 1, 0, 0, 0, 0));
  EXPECT_EQ(r.int8.confusion[1 * 6 + 3], 1);  // a 1 taken for a 3
  EXPECT_EQ(r.int8.confusion[2 * 6 + 5], 1);
  ASSERT_TRUE(r.fp32.has_value());
  EXPECT_EQ(r.fp32->top1_correct, 4);
  EXPECT_EQ(r.agreement, 2);
  EXPECT_THAT(r.per_class_agreement, ElementsAre(1, 1, 0, 0, 0, 0));
  EXPECT_THAT(r.first_disagreements, ElementsAre(102, 103));
  EXPECT_DOUBLE_EQ(r.int8.seconds, 0.5);
  EXPECT_DOUBLE_EQ(r.fp32->seconds, 2.0);
  // Signal: 4 rows of 2^2 + 1^2. Noise: row 3 differs by 1 in two classes,
  // row 4 by 2 in one and by 1 in two.
  const double signal = 4 * 5.0, noise = (1 + 1) + (4 + 1 + 1);
  EXPECT_NEAR(r.output_sqnr_db, 10 * std::log10(signal / noise), 1e-9);
}

TEST(EvaluationAccumulatorTest, TopFiveMissesWhenFiveClassesScoreHigher) {
  EvaluationAccumulator acc(6, /*with_fp32=*/false);
  const std::vector<float> scores = {5, 4, 3, 2, 1, 0};
  ASSERT_TRUE(acc.Add(0, {5}, scores, nullptr).ok());
  ASSERT_TRUE(acc.Add(1, {4}, scores, nullptr).ok());
  const EvaluationReport r = acc.Finish();
  EXPECT_EQ(r.int8.top1_correct, 0);
  EXPECT_EQ(r.int8.top5_correct, 1);
  EXPECT_FALSE(r.fp32.has_value());
  EXPECT_TRUE(r.first_disagreements.empty());
}

TEST(EvaluationAccumulatorTest, IdenticalScoresHaveInfiniteSqnr) {
  EvaluationAccumulator acc(6, /*with_fp32=*/true);
  const std::vector<float> s = Scores(2, 3);
  ASSERT_TRUE(acc.Add(0, {2}, s, &s).ok());
  EXPECT_TRUE(std::isinf(acc.Finish().output_sqnr_db));
}

// A model that overflowed (NaN scores) is never right by accident: NaN
// ranks below every number in top-1 and top-5.
TEST(EvaluationAccumulatorTest, NanScoresAreNeverCorrect) {
  EvaluationAccumulator acc(6, /*with_fp32=*/false);
  const float nan = std::nanf("");
  ASSERT_TRUE(acc.Add(0, {3}, std::vector<float>(6, nan), nullptr).ok());
  // The label's score is the only number: top-1 despite the NaN before it.
  ASSERT_TRUE(acc.Add(1, {2}, {nan, nan, 0.5f, nan, nan, nan}, nullptr).ok());
  const EvaluationReport r = acc.Finish();
  EXPECT_EQ(r.int8.top1_correct, 1);
  EXPECT_EQ(r.int8.top5_correct, 1);
  EXPECT_EQ(r.int8.confusion[2 * 6 + 2], 1);
}

// An all-NaN row predicts nothing: not class 0 (once counted as correct for
// label 0, and as agreeing when FP32 overflowed too), and no confusion cell.
TEST(EvaluationAccumulatorTest, AnAllNanRowPredictsNoClassAtAll) {
  EvaluationAccumulator acc(6, /*with_fp32=*/true);
  const std::vector<float> nans(6, std::nanf(""));
  ASSERT_TRUE(acc.Add(0, {0}, nans, &nans).ok());
  const EvaluationReport r = acc.Finish();
  EXPECT_EQ(r.int8.top1_correct, 0);
  EXPECT_EQ(r.int8.per_class_correct[0], 0);
  EXPECT_EQ(r.fp32->top1_correct, 0);
  EXPECT_EQ(r.agreement, 0);
  EXPECT_EQ(r.per_class_agreement[0], 0);
  EXPECT_EQ(r.first_disagreements, std::vector<int64_t>{0});
  for (int64_t cell : r.int8.confusion) EXPECT_EQ(cell, 0);
  for (int64_t cell : r.fp32->confusion) EXPECT_EQ(cell, 0);
  EXPECT_EQ(r.per_class_total[0], 1);
}

// SQNR's two other non-finite values survive the stored record and mean
// what they say: not "identical scores" (+inf).
TEST(EvaluationCodecTest, NonFiniteSqnrRoundTrips) {
  const std::vector<float> zeros(6, 0.0f), ones(6, 1.0f), nans(6, std::nanf(""));
  for (const std::vector<float>* fp32 : {&zeros, &nans}) {
    EvaluationAccumulator acc(6, /*with_fp32=*/true);
    ASSERT_TRUE(acc.Add(0, {1}, ones, fp32).ok());
    Evaluation e;
    e.id = "eval-sqnr";
    e.state = EvaluationState::kSucceeded;
    e.report = acc.Finish();
    absl::StatusOr<Evaluation> back = DecodeEvaluation(EncodeEvaluation(e));
    ASSERT_TRUE(back.ok()) << back.status();
    const double db = back->report->output_sqnr_db;
    if (fp32 == &zeros) {
      EXPECT_TRUE(std::isinf(db) && db < 0) << db;
    } else {
      EXPECT_TRUE(std::isnan(db)) << db;
    }
  }
}

TEST(EvaluationAccumulatorTest, ALabelOutsideTheClassesIsInvalidNamingTheSample) {
  EvaluationAccumulator acc(6, /*with_fp32=*/false);
  const absl::Status status = acc.Add(40, {0, 9}, Concat({Scores(0, 1), Scores(0, 1)}), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("sample 41 is 9"));
  EXPECT_EQ(acc.Add(0, {0}, std::vector<float>(5), nullptr).code(), absl::StatusCode::kInternal);
}

TEST(EvaluationAccumulatorTest, ModelsWithTooManyClassesAreRefusedBeforeAnythingIsSized) {
  EXPECT_TRUE(EvaluationAccumulator::CheckClasses("resnet8", 10).ok());
  EXPECT_TRUE(EvaluationAccumulator::CheckClasses("imagenet", 1000).ok());
  const absl::Status huge = EvaluationAccumulator::CheckClasses("big", 1000000);
  EXPECT_EQ(huge.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(huge.message()), HasSubstr("model_name: big outputs 1000000 classes"));
  EXPECT_FALSE(EvaluationAccumulator::CheckClasses("none", 0).ok());
}

// A store whose LatestEvaluations are the given records (nothing else is
// called).
class StoredRecords : public testing::ForwardingJobStore {
 public:
  explicit StoredRecords(std::vector<std::string> records)
      : ForwardingJobStore(nullptr), records_(std::move(records)) {}
  absl::StatusOr<std::vector<std::string>> LatestEvaluations() override { return records_; }

 private:
  std::vector<std::string> records_;
};

// What ListModels shows as each version's last evaluation: the newest that
// succeeded, whatever ran or failed after it.
TEST(NewestSucceededEvaluationsTest, TheNewestSucceededOneOfEachVersion) {
  auto record = [](const std::string& id, const std::string& model, int64_t version, EvaluationState state,
                   int64_t finished_s, int correct) {
    Evaluation e;
    e.id = id;
    e.spec.model_name = model;
    e.spec.model_version = version;
    e.state = state;
    e.update_time = absl::FromUnixSeconds(finished_s);
    if (state != EvaluationState::kRunning) e.finish_time = e.update_time;
    if (state == EvaluationState::kSucceeded) {
      EvaluationAccumulator acc(6, false);
      for (int i = 0; i < 4; ++i) EXPECT_TRUE(acc.Add(i, {i < correct ? 1 : 2}, Scores(1, 2), nullptr).ok());
      e.report = acc.Finish();
    }
    return EncodeEvaluation(e);
  };
  StoredRecords store({record("eval-b", "r8", 1, EvaluationState::kSucceeded, 20, 3),
                       record("eval-a", "r8", 1, EvaluationState::kSucceeded, 10, 1),
                       record("eval-c", "r8", 1, EvaluationState::kFailed, 30, 0),
                       record("eval-d", "r8", 2, EvaluationState::kRunning, 40, 0),
                       record("eval-e", "other", 1, EvaluationState::kSucceeded, 5, 2), "not a record"});
  const auto newest = NewestSucceededEvaluations(store);
  ASSERT_EQ(newest.size(), 2u);
  EXPECT_EQ(newest.at({"r8", 1}).id, "eval-b");
  EXPECT_EQ(newest.at({"r8", 1}).report->int8.top1_correct, 3);
  EXPECT_EQ(newest.at({"other", 1}).id, "eval-e");
  EXPECT_EQ(newest.count({"r8", 2}), 0u);
}

TEST(EvaluationCodecTest, ARecordRoundTrips) {
  Evaluation e;
  e.id = "eval-1";
  e.spec.model_name = "resnet8";
  e.spec.model_version = 3;
  e.spec.dataset.path = "/data/test_batch.bin";
  e.spec.max_samples = 500;
  e.spec.batch_size = 128;
  e.state = EvaluationState::kSucceeded;
  e.create_time = absl::FromUnixMicros(1700000000000001);
  e.update_time = absl::FromUnixMicros(1700000000500002);
  e.finish_time = e.update_time;
  e.samples_done = 500;
  e.samples_total = 500;
  e.runner = "host:/data";
  e.runner_incarnation = "process-1";
  EvaluationAccumulator acc(6, true);
  const std::vector<float> q = Scores(1, 2), f = Scores(1, 3);
  ASSERT_TRUE(acc.Add(0, {1}, q, &f).ok());
  e.report = acc.Finish();
  e.report->class_names = {"a", "b", "c", "d", "e", "f"};
  e.report->kernel_engine = "onednn";
  absl::StatusOr<Evaluation> back = DecodeEvaluation(EncodeEvaluation(e));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id, "eval-1");
  EXPECT_EQ(back->spec.model_version, 3);
  EXPECT_EQ(back->spec.dataset.path, "/data/test_batch.bin");
  EXPECT_EQ(back->state, EvaluationState::kSucceeded);
  EXPECT_EQ(back->create_time, e.create_time);
  EXPECT_EQ(back->finish_time, e.finish_time);
  ASSERT_TRUE(back->report.has_value());
  EXPECT_EQ(back->report->int8.confusion, e.report->int8.confusion);
  EXPECT_EQ(back->report->fp32->top1_correct, 1);
  EXPECT_DOUBLE_EQ(back->report->output_sqnr_db, e.report->output_sqnr_db);
  EXPECT_EQ(back->report->class_names[5], "f");
  EXPECT_EQ(back->runner, "host:/data");
  EXPECT_EQ(back->runner_incarnation, "process-1");
  EXPECT_EQ(DecodeEvaluation("{").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace quantd::worker
