#include "worker/engine/passes/compare_with_fp32.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

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
  Int8VsFp32 comparison;
  comparison.samples = 1;
  comparison.output_sqnr_db = SqnrDb(1, kNaN);
  EXPECT_FALSE(JudgeQuality(comparison, QualityThresholds{}).passed);
}

}  // namespace
}  // namespace quantd::engine
