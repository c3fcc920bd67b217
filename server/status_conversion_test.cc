#include "server/status_conversion.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace quantd {
namespace {

TEST(StatusConversionTest, OkStaysOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(StatusConversionTest, KeepsCodeAndMessage) {
  grpc::Status status = ToGrpcStatus(absl::NotFoundError("job \"x\" not found"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), "job \"x\" not found");

  status = ToGrpcStatus(absl::UnimplementedError("later"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST(StatusConversionTest, LongMessageIsCutKeepingItsHead) {
  // An echoed 20000-character id once made the client fail with "received
  // initial metadata size exceeds limit" instead of the error.
  grpc::Status status = ToGrpcStatus(
      absl::InvalidArgumentError(absl::StrCat("page_token: \"", std::string(20000, 'a'), "\" is not a token")));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(status.error_message().size(), 1100u);
  EXPECT_EQ(status.error_message().rfind("page_token: \"aaa", 0), 0u);
  EXPECT_NE(status.error_message().find("more bytes cut"), std::string::npos);

  // A multi-byte character at the cut is not split.
  std::string accented = std::string(1023, 'a') + "\xC3\xA9" + std::string(100, 'b');
  std::string cut = ToGrpcStatus(absl::NotFoundError(accented)).error_message();
  EXPECT_EQ(cut.substr(0, 1026), std::string(1023, 'a') + "...");
}

TEST(StatusConversionTest, EveryCodeRoundTrips) {
  for (int code = 1; code <= 16; ++code) {
    absl::Status original(static_cast<absl::StatusCode>(code), "m");
    grpc::Status converted = ToGrpcStatus(original);
    EXPECT_EQ(static_cast<int>(converted.error_code()), code);
    EXPECT_EQ(FromGrpcStatus(converted), original);
  }
}

TEST(StatusConversionTest, OutOfRangeCodeBecomesUnknown) {
  absl::Status odd(static_cast<absl::StatusCode>(42), "odd");
  EXPECT_EQ(ToGrpcStatus(odd).error_code(), grpc::StatusCode::UNKNOWN);
  // (grpc::StatusCode has no fixed underlying type: a value outside it
  // cannot be made without undefined behaviour, which UBSan rightly flags.)
}

TEST(StatusConversionTest, CodeNames) {
  EXPECT_STREQ(GrpcStatusCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_STREQ(GrpcStatusCodeName(grpc::StatusCode::UNIMPLEMENTED), "UNIMPLEMENTED");
  EXPECT_STREQ(GrpcStatusCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
}

}  // namespace
}  // namespace quantd
