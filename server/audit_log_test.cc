#include "server/audit_log.h"

#include <gtest/gtest.h>

namespace quantd {
namespace {

TEST(AuditTextTest, PlainValuesAsTheyAre) {
  EXPECT_EQ(AuditText("ci", "ipv4:10.0.0.7:53122", "QuantizeJob", "job-1", absl::OkStatus()),
            "audit: who=ci peer=ipv4:10.0.0.7:53122 method=QuantizeJob target=job-1 result=OK");
  EXPECT_EQ(AuditText("", "", "ListJobs", "", absl::UnauthenticatedError("ListJobs: no bearer token")),
            "audit: who=- peer=- method=ListJobs target=- result=UNAUTHENTICATED "
            "message=\"ListJobs: no bearer token\"");
}

// A caller-chosen target or URL path cannot add fields or lines: before, only
// line breaks were escaped, and "x who=admin result=OK" read as fields.
TEST(AuditTextTest, CallerChosenValuesCannotForgeFieldsOrLines) {
  EXPECT_EQ(AuditText("", "ipv6:[::1]:5", "GET /v2/x who=admin result=OK", "job-x\nresult=OK",
                      absl::NotFoundError("no \"job-x\"\\")),
            "audit: who=- peer=ipv6:[::1]:5 method=\"GET /v2/x who=admin result=OK\" "
            "target=\"job-x\\x0aresult=OK\" result=NOT_FOUND message=\"no \\\"job-x\\\"\\\\\"");
}

}  // namespace
}  // namespace quantd
