#include "worker/engine/passes/compare_with_fp32.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "worker/engine/predicted_class.h"

namespace quantd::engine {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST(SqnrDbTest, TenLogOfSignalOverNoise) {
  EXPECT_DOUBLE_EQ(SqnrDb(100, 1), 20);
  EXPECT_EQ(SqnrDb(1, 0), kInf);  // identical outputs
}

// A NaN anywhere in the int8 outputs made the noise NaN, "NaN > 0" false,
// and the SQNR +inf: the quality check passed and the best preset preferred
// that candidate.
TEST(SqnrDbTest, NaNIsTheLowestScoreAndFailsTheQualityCheck) {
  EXPECT_EQ(SqnrDb(1, kNaN), -kInf);
  EXPECT_EQ(SqnrDb(kNaN, 1), -kInf);
  EXPECT_EQ(SqnrDb(kInf, kInf), -kInf);  // an FP32 reference that overflowed
  EXPECT_EQ(SqnrDb(1, kInf), -kInf);
  Int8VsFp32 comparison;
  comparison.samples = 1;
  comparison.output_sqnr_db = SqnrDb(1, kNaN);
  EXPECT_FALSE(JudgeQuality(comparison, QualityThresholds{}).passed);
}

// at::argmax ranks NaN first: a model that overflowed on an image counted
// as predicting class 1 there in the job's evaluation and tuning trials,
// while Evaluate counted no prediction.
TEST(PredictedClassesTest, NaNRanksBelowEveryNumberAndARowOfNaNPredictsNothing) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const at::Tensor scores = at::tensor({1.f, nan, 0.f,    //
                                        nan, nan, nan,    //
                                        2.f, 5.f, 5.f,    // ties: the first
                                        nan, -inf, -inf,  // below every number, -inf too
                                        -1.f, inf, nan})
                                .reshape({5, 3});
  const at::Tensor predicted = PredictedClasses(scores);
  ASSERT_EQ(predicted.scalar_type(), at::kLong);
  EXPECT_EQ(std::vector<int64_t>(predicted.data_ptr<int64_t>(), predicted.data_ptr<int64_t>() + 5),
            (std::vector<int64_t>{0, kNoClass, 1, 1, 1}));
  EXPECT_EQ(scores.argmax(1)[0].item<int64_t>(), 1);  // what the callers used to count

  // Two models predicting nothing for an image do not agree on it.
  const at::Tensor other = at::tensor({0.f, 1.f, 0.f, nan, nan, nan, 0.f, 1.f, 0.f, 0.f, 0.f, 1.f, 0.f, 1.f, 0.f})
                               .reshape({5, 3});
  EXPECT_EQ(CountAgreeing(predicted, PredictedClasses(other)), 2);  // rows 2 and 4
}

TEST(PredictedClassesTest, QuantizedScoresRankAsTheirValues) {
  const at::Tensor scores = at::tensor({0.5f, 2.f, 1.f, 3.f, 0.f, 3.f}).reshape({2, 3});
  const at::Tensor q = at::quantize_per_tensor(scores, 0.5, 0, at::kQUInt8);
  const at::Tensor predicted = PredictedClasses(q);
  EXPECT_EQ(predicted[0].item<int64_t>(), 1);
  EXPECT_EQ(predicted[1].item<int64_t>(), 0);
}

}  // namespace
}  // namespace quantd::engine
