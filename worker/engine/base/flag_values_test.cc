#include "worker/engine/base/flag_values.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace quantd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ParseFusionFlagTest, AutoAndNoneInEitherCaseAndGroupsInline) {
  for (const char* text : {"auto", "AUTO", "Auto"}) {
    auto fusion = ParseFusionFlag(text);
    ASSERT_TRUE(fusion.ok()) << text;
    EXPECT_TRUE(fusion->automatic);
  }
  auto none = ParseFusionFlag("None");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->automatic);
  EXPECT_TRUE(none->groups.empty());
  auto groups = ParseFusionFlag("conv1,bn1,relu1;layer1.conv1,layer1.bn1;");
  ASSERT_TRUE(groups.ok()) << groups.status();
  EXPECT_THAT(groups->groups, ElementsAre(ElementsAre("conv1", "bn1", "relu1"), ElementsAre("layer1.conv1", "layer1.bn1")));
}

// What fusion refuses after loading the model is refused before, naming
// the flag: quantd-quantize took these and failed once the model had loaded.
TEST(ParseFusionFlagTest, GroupsFusionWouldRefuseAreUsageErrorsNamingTheFlag) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"conv1", "needs two or more modules"},
      {"conv1,bn1;conv1,bn2", "\"conv1\" is in two groups"},
      {"conv1,,bn1", "an empty module path"},
      {",", "an empty module path"},
      {";", "no groups"},
      {"", "no groups"},
  };
  for (const auto& [text, why] : bad) {
    auto fusion = ParseFusionFlag(text);
    ASSERT_FALSE(fusion.ok()) << text;
    EXPECT_EQ(fusion.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(fusion.status().message()), HasSubstr("--fusion: ")) << text;
    EXPECT_THAT(std::string(fusion.status().message()), HasSubstr(why)) << text;
  }
}

TEST(ParseNumberListTest, FiniteNumbersNoneLeftOut) {
  auto numbers = ParseNumberList("125.3, 123.0,113.9", "--mean");
  ASSERT_TRUE(numbers.ok()) << numbers.status();
  EXPECT_THAT(*numbers, ElementsAre(125.3, 123.0, 113.9));
  for (const char* text : {"", "1,,2", "1,2,", "1,nan", "1,inf", "x", "1,1e39", "-1e39"}) {
    auto bad = ParseNumberList(text, "--mean");
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr("--mean: ")) << text;
  }
}

}  // namespace
}  // namespace quantd
