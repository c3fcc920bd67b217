#include "server/auth.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/sha256.h"

namespace quantd {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kReadToken[] = "read-token-0123456789";
constexpr char kSubmitToken[] = "submit-token-0123456789";
constexpr char kAdminToken[] = "admin-token-0123456789";

std::string TokenFilePath() {
  return (std::filesystem::temp_directory_path() /
          ("quantd_auth_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name()))
      .string();
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

std::string Tokens() {
  return absl::StrCat("# name role token\n", "reader read ", kReadToken, "\n", "ci submit ", kSubmitToken,
                      "  # the CI pipeline\n", "\n", "ops admin ", kAdminToken, "\n");
}

TEST(TokenFileTest, ParsesRolesAndKeepsOnlyDigests) {
  auto entries = ParseTokenFile(Tokens());
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[1].name, "ci");
  EXPECT_EQ((*entries)[1].role, Role::kSubmit);
  EXPECT_EQ((*entries)[1].token_sha256.size(), 64u);
  EXPECT_EQ((*entries)[1].token_sha256.find("submit-token"), std::string::npos);
}

// A "#" inside a token is part of it; before, the token was cut there and
// the shorter prefix became the valid one.
TEST(TokenFileTest, AHashInsideATokenIsNotAComment) {
  auto entries = ParseTokenFile("ci admin 0123456789abcdef#Zq9xy  # a comment\n#whole line\n");
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_EQ((*entries)[0].token_sha256, engine::Sha256Hex("0123456789abcdef#Zq9xy"));
}

TEST(TokenFileTest, ErrorsNameTheLineAndNeverTheToken) {
  const std::string secret = "a-secret-that-must-not-leak";
  auto bad_role = ParseTokenFile("x read 0123456789abcdef\ny owner " + secret + "\n");
  EXPECT_EQ(bad_role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_role.status().message(), HasSubstr("line 2"));
  EXPECT_THAT(bad_role.status().message(), HasSubstr("owner"));
  EXPECT_THAT(bad_role.status().message(), Not(HasSubstr(secret)));
  auto fields = ParseTokenFile("x read\n");
  EXPECT_THAT(fields.status().message(), HasSubstr("line 1"));
  auto short_token = ParseTokenFile("x read short\n");
  EXPECT_THAT(short_token.status().message(), HasSubstr("shorter than 16"));
  EXPECT_THAT(short_token.status().message(), Not(HasSubstr("short\n")));
  // Columns swapped: the token stands where the role or the name goes.
  auto token_as_role = ParseTokenFile("ci " + secret + " admin\n");
  EXPECT_THAT(token_as_role.status().message(), HasSubstr("line 1: role (27 characters, not shown"));
  EXPECT_THAT(token_as_role.status().message(), Not(HasSubstr(secret)));
  auto token_as_name = ParseTokenFile(secret + " admin ci\n");
  EXPECT_THAT(token_as_name.status().message(), HasSubstr("shorter than 16"));
  EXPECT_THAT(token_as_name.status().message(), Not(HasSubstr(secret)));
  // One token under two names: the first line won and the second's role
  // was dropped without a word.
  auto twice = ParseTokenFile("x read " + secret + "\ny admin " + secret + "\n");
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(twice.status().message(), HasSubstr("line 2: the token of 'y' is also the token of 'x'"));
  EXPECT_THAT(twice.status().message(), Not(HasSubstr(secret)));
  // One name with two tokens is a rotation: both stand.
  auto rotation = ParseTokenFile("ci submit 0123456789abcdef\nci submit fedcba9876543210\n");
  ASSERT_TRUE(rotation.ok()) << rotation.status();
  EXPECT_EQ(rotation->size(), 2u);
}

TEST(AuthenticatorTest, RolesIncludeTheOnesBelow) {
  const std::string path = TokenFilePath();
  Write(path, Tokens());
  worker::FakeClock clock;
  auto auth = Authenticator::FromFile(path, &clock);
  ASSERT_TRUE(auth.ok()) << auth.status();
  auto reader = (*auth)->Authorize(absl::StrCat("Bearer ", kReadToken), Role::kRead, "GetJob");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->name, "reader");
  auto denied = (*auth)->Authorize(absl::StrCat("Bearer ", kReadToken), Role::kSubmit, "QuantizeJob");
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(denied.status().message(), HasSubstr("QuantizeJob needs the submit role; 'reader' has read"));
  EXPECT_TRUE((*auth)->Authorize(absl::StrCat("bearer ", kSubmitToken), Role::kSubmit, "QuantizeJob").ok());
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", kSubmitToken), Role::kAdmin, "DeleteJob").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", kAdminToken), Role::kAdmin, "DeleteJob")->name, "ops");

  for (const std::string& bad : {std::string(), std::string("Bearer"), std::string("Basic dXNlcjpwYXNz"),
                                 std::string("Bearer not-a-known-token-at-all"), std::string(kReadToken)}) {
    auto refused = (*auth)->Authorize(bad, Role::kRead, "GetJob");
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated) << bad;
    EXPECT_THAT(refused.status().message(), HasSubstr("GetJob")) << bad;
    EXPECT_THAT(refused.status().message(), Not(HasSubstr("not-a-known-token"))) << bad;
  }
  std::filesystem::remove(path);
}

TEST(AuthenticatorTest, ReloadsAChangedFileKeepsTokensWhenTheNewFileIsBad) {
  const std::string path = TokenFilePath();
  Write(path, Tokens());
  worker::FakeClock clock;
  auto auth = Authenticator::FromFile(path, &clock);
  ASSERT_TRUE(auth.ok()) << auth.status();
  const std::string new_token = "a-brand-new-token-42";
  // Revoke "reader", add "late" (a different size, so the change shows even
  // within the file system's timestamp granularity).
  Write(path, absl::StrCat("late read ", new_token, "\nops admin ", kAdminToken, "\n"));
  EXPECT_TRUE((*auth)->Authorize(absl::StrCat("Bearer ", kReadToken), Role::kRead, "GetJob").ok())
      << "checked at most once per second";
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", kReadToken), Role::kRead, "GetJob").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", new_token), Role::kRead, "GetJob")->name, "late");

  // A bad file grants nothing new, keeps the tokens it still lists
  // unchanged, and revokes the rest: "late" was removed by the same edit that
  // has a typo, and "newcomer" was added by it.
  const std::string newcomer = "a-newcomers-token-43";
  Write(path, absl::StrCat("broken line\nops admin ", kAdminToken, "\nnewcomer read ", newcomer, "\n"));
  clock.Advance(absl::Seconds(2));
  (void)(*auth)->Authorize(absl::StrCat("Bearer ", kAdminToken), Role::kRead, "GetJob");  // the check that sees the change
  clock.Advance(absl::Seconds(2));
  EXPECT_TRUE((*auth)->Authorize(absl::StrCat("Bearer ", kAdminToken), Role::kAdmin, "DeleteJob").ok());
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", new_token), Role::kRead, "GetJob").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", newcomer), Role::kRead, "GetJob").status().code(),
            absl::StatusCode::kUnauthenticated);

  // Fixed, the file applies as written.
  Write(path, absl::StrCat("ops admin ", kAdminToken, "\nnewcomer read ", newcomer, "\n"));
  clock.Advance(absl::Seconds(2));
  (void)(*auth)->Authorize(absl::StrCat("Bearer ", kAdminToken), Role::kRead, "GetJob");
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", newcomer), Role::kRead, "GetJob")->name, "newcomer");

  // Missing for a moment (a Secret's files being swapped): the loaded tokens stay.
  std::filesystem::remove(path);
  clock.Advance(absl::Seconds(2));
  EXPECT_TRUE((*auth)->Authorize(absl::StrCat("Bearer ", newcomer), Role::kRead, "GetJob").ok());

  // Emptied on purpose: everyone is refused, once the empty file is seen
  // at two checks (not a rewrite under way).
  Write(path, "# nobody for now\n");
  clock.Advance(absl::Seconds(2));
  EXPECT_TRUE((*auth)->Authorize(absl::StrCat("Bearer ", kAdminToken), Role::kRead, "GetJob").ok());
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", kAdminToken), Role::kRead, "GetJob").status().code(),
            absl::StatusCode::kUnauthenticated);
  std::filesystem::remove(path);
}

// `echo ... > tokens` truncates the file, then writes it: a check between
// the two reads it empty. Applied at once, that refused every call until
// the next check. A file that does not look whole (empty, cut off, bad)
// applies only once it is the same at two checks; a whole one at once.
TEST(AuthenticatorTest, AFileReadEmptyHalfwayThroughARewriteRefusesNobody) {
  const std::string path = TokenFilePath();
  Write(path, Tokens());
  worker::FakeClock clock;
  auto auth = Authenticator::FromFile(path, &clock);
  ASSERT_TRUE(auth.ok()) << auth.status();
  Write(path, "");  // truncated
  clock.Advance(absl::Seconds(2));
  EXPECT_TRUE((*auth)->Authorize(absl::StrCat("Bearer ", kReadToken), Role::kRead, "GetJob").ok());
  // Cut off mid-line: not applied either (the token "reader" would be
  // revoked by a line not yet written).
  Write(path, "ci submit submit-tok");
  clock.Advance(absl::Seconds(2));
  EXPECT_TRUE((*auth)->Authorize(absl::StrCat("Bearer ", kReadToken), Role::kRead, "GetJob").ok());
  const std::string added = "a-token-added-by-the-rewrite";
  Write(path, absl::StrCat(Tokens(), "new read ", added, "\n"));  // written: whole, applied at once
  clock.Advance(absl::Seconds(2));
  EXPECT_TRUE((*auth)->Authorize(absl::StrCat("Bearer ", kReadToken), Role::kRead, "GetJob").ok());
  EXPECT_EQ((*auth)->Authorize(absl::StrCat("Bearer ", added), Role::kRead, "GetJob")->name, "new");
  std::filesystem::remove(path);
}

TEST(AuthenticatorTest, DisabledAdmitsEveryoneAsAnonymousAdmin) {
  auto auth = Authenticator::Disabled();
  EXPECT_FALSE(auth->enabled());
  auto caller = auth->Authorize("", Role::kAdmin, "DeleteJob");
  ASSERT_TRUE(caller.ok());
  EXPECT_EQ(caller->name, "anonymous");
}

TEST(AuthenticatorTest, AMissingOrEmptyFileFailsAtStart) {
  worker::FakeClock clock;
  EXPECT_EQ(Authenticator::FromFile("/nonexistent/tokens", &clock).status().code(), absl::StatusCode::kNotFound);
  const std::string path = TokenFilePath();
  Write(path, "# nobody\n");
  EXPECT_THAT(Authenticator::FromFile(path, &clock).status().message(), HasSubstr("no tokens"));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace quantd
