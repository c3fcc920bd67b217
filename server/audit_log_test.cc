#include "server/audit_log.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace quantd {
namespace {

TEST(AuditTextTest, PlainValuesAsTheyAre) {
  EXPECT_EQ(AuditText("ci", "ipv4:10.0.0.7:53122", "QuantizeJob", "job-1", absl::OkStatus()),
            "audit: who=ci peer=ipv4:10.0.0.7:53122 method=QuantizeJob target=job-1 result=OK");
  EXPECT_EQ(AuditText("", "", "ListJobs", "", absl::UnauthenticatedError("ListJobs: no bearer token")),
            "audit: who=- peer=- method=ListJobs target=- result=UNAUTHENTICATED "
            "message=\"ListJobs: no bearer token\"");
}

// What a call changed beyond its target follows the result, quoted like any
// caller-chosen value (a model name).
TEST(AuditTextTest, EffectsFollowTheResult) {
  EXPECT_EQ(AuditText("ops", "ipv4:10.0.0.7:1", "DeleteJob", "job-1", absl::OkStatus(), {{"unpublished", "r8/2"}}),
            "audit: who=ops peer=ipv4:10.0.0.7:1 method=DeleteJob target=job-1 result=OK unpublished=r8/2");
  EXPECT_EQ(AuditText("ops", "-", "DeleteJob", "job-1", absl::OkStatus(), {{"unpublished", "a b=c/1"}}),
            "audit: who=ops peer=- method=DeleteJob target=job-1 result=OK unpublished=\"a b=c/1\"");
}

// A caller-chosen target or URL path cannot add fields or lines: before, only
// line breaks were escaped, and "x who=admin result=OK" read as fields.
TEST(AuditTextTest, CallerChosenValuesCannotForgeFieldsOrLines) {
  EXPECT_EQ(AuditText("", "ipv6:[::1]:5", "GET /v2/x who=admin result=OK", "job-x\nresult=OK",
                      absl::NotFoundError("no \"job-x\"\\")),
            "audit: who=- peer=ipv6:[::1]:5 method=\"GET /v2/x who=admin result=OK\" "
            "target=\"job-x\\x0aresult=OK\" result=NOT_FOUND message=\"no \\\"job-x\\\"\\\\\"");
}

// Targets and messages echo what a caller sent: one Evaluate with a model
// name of 120000 control bytes wrote a 480 KB line (a 7 MiB expected_sha256,
// a 29 MB one). Each field is cut, saying how much was left out.
TEST(AuditTextTest, CallerChosenValuesAreCut) {
  const std::string huge(120000, '\x01');
  const std::string line = AuditText("ci", "ipv4:10.0.0.7:1", "Evaluate", huge,
                                     absl::InvalidArgumentError(absl::StrCat("model_name: \"", huge, "\"")));
  EXPECT_LT(line.size(), 2500u);
  EXPECT_NE(line.find("target=\"\\x01"), std::string::npos) << line.substr(0, 200);
  EXPECT_NE(line.find("...(119744 more bytes)\" result=INVALID_ARGUMENT"), std::string::npos);
  EXPECT_NE(line.find("...(119758 more bytes)\""), std::string::npos);
  // Not inside a UTF-8 sequence: 255 ASCII bytes, then "é" straddling 256.
  const std::string text = std::string(255, 'a') + "\xc3\xa9" + std::string(10, 'b');
  EXPECT_NE(AuditText("ci", "p", "M", text, absl::OkStatus()).find(std::string(255, 'a') + "...(12 more bytes)"),
            std::string::npos);
}

}  // namespace
}  // namespace quantd
