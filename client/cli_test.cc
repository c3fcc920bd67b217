#include "client/cli.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "client/commands.h"

namespace quantd::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

TEST(ParseInvocationTest, Defaults) {
  auto invocation = ParseInvocation({"health"});
  ASSERT_TRUE(invocation.ok()) << invocation.status();
  EXPECT_EQ(invocation->command, "health");
  EXPECT_EQ(invocation->options.server, "localhost:50051");
  EXPECT_DOUBLE_EQ(invocation->options.timeout_seconds, 10);
  EXPECT_FALSE(invocation->options.json);
  EXPECT_THAT(invocation->args, IsEmpty());
}

TEST(ParseInvocationTest, GlobalFlagsBeforeAndAfterCommand) {
  auto invocation = ParseInvocation(
      {"--server=10.0.0.1:1234", "--timeout", "2.5", "health", "--json", "--service=x"});
  ASSERT_TRUE(invocation.ok()) << invocation.status();
  EXPECT_EQ(invocation->options.server, "10.0.0.1:1234");
  EXPECT_DOUBLE_EQ(invocation->options.timeout_seconds, 2.5);
  EXPECT_TRUE(invocation->options.json);
  EXPECT_EQ(invocation->command, "health");
  EXPECT_THAT(invocation->args, ElementsAre("--service=x"));
}

TEST(ParseInvocationTest, JsonTakesExplicitValue) {
  auto invocation = ParseInvocation({"--json=false", "health"});
  ASSERT_TRUE(invocation.ok());
  EXPECT_FALSE(invocation->options.json);
  EXPECT_FALSE(ParseInvocation({"--json=maybe", "health"}).ok());
}

TEST(ParseInvocationTest, DoubleDashEndsGlobalFlags) {
  auto invocation = ParseInvocation({"health", "--", "--json", "positional"});
  ASSERT_TRUE(invocation.ok());
  EXPECT_FALSE(invocation->options.json);
  EXPECT_THAT(invocation->args, ElementsAre("--json", "positional"));
}

TEST(ParseInvocationTest, RejectsBadTimeouts) {
  for (const char* bad : {"--timeout=0", "--timeout=-1", "--timeout=abc", "--timeout=nan"}) {
    auto invocation = ParseInvocation({bad, "health"});
    EXPECT_FALSE(invocation.ok()) << bad;
    EXPECT_THAT(std::string(invocation.status().message()), HasSubstr("--timeout")) << bad;
  }
  EXPECT_FALSE(ParseInvocation({"health", "--timeout"}).ok());
}

TEST(ParseInvocationTest, RequiresACommand) {
  EXPECT_FALSE(ParseInvocation({}).ok());
  EXPECT_FALSE(ParseInvocation({"--json"}).ok());
  auto help = ParseInvocation({"--help"});
  ASSERT_TRUE(help.ok());
  EXPECT_TRUE(help->help);
}

TEST(ParseInvocationTest, EmptyServerIsRejected) {
  EXPECT_FALSE(ParseInvocation({"--server=", "health"}).ok());
}

TEST(CommandTableTest, FindsCommands) {
  ASSERT_NE(FindCommand("health"), nullptr);
  EXPECT_EQ(FindCommand("no-such-command"), nullptr);
  EXPECT_THAT(Usage(), HasSubstr("health"));
  EXPECT_THAT(Usage(), HasSubstr("--server"));
}

TEST(CommandTableTest, HealthRejectsUnknownArguments) {
  CommandContext context;
  std::ostringstream out, err;
  context.out = &out;
  context.err = &err;
  EXPECT_EQ(RunHealth(context, {"--bogus"}), kExitUsage);
  EXPECT_THAT(err.str(), HasSubstr("--bogus"));
}

}  // namespace
}  // namespace quantd::cli
