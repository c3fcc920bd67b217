#include "server/status_conversion.h"

#include <gtest/gtest.h>

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
