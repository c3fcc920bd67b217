#include "client/job_format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace quantd::cli
