#include "worker/job.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace quantd::worker {
namespace {

using ::testing::HasSubstr;

// Model names appear in URLs and metric labels: lower-case letters, digits,
// '_' and '-', up to 64. "stats" is Triton's REST path for every model's
// statistics, so no model may take it.
TEST(ValidateModelNameTest, NamesFitUrlsAndLabelsAndStatsIsReserved) {
  for (const std::string& good : std::vector<std::string>{"resnet8", "r8-int8_v2", "8bit", std::string(64, 'a')}) {
    EXPECT_TRUE(ValidateModelName(good, "model_name").ok()) << good;
  }
  for (const std::string& bad :
       std::vector<std::string>{"", "ResNet8", "-resnet", "res net", "a/b", "a.fp32", std::string(65, 'a')}) {
    const absl::Status status = ValidateModelName(bad, "model_name");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(status.message()), HasSubstr("model_name")) << bad;
  }
  const absl::Status stats = ValidateModelName("stats", "model_name");
  EXPECT_EQ(stats.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(stats.message()), HasSubstr("reserved"));
}

}  // namespace
}  // namespace quantd::worker
