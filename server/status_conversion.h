#ifndef QUANTD_SERVER_STATUS_CONVERSION_H_
#define QUANTD_SERVER_STATUS_CONVERSION_H_

// The only place where absl::Status and grpc::Status meet. Everything inside
// quantd returns absl::Status; handlers convert at the edge.

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace quantd {

// Same code (the two enums share numbering) and message, the message cut to
// its first KiB (it travels in a trailer). OK maps to OK with no message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The reverse, for code that calls other gRPC services.
absl::Status FromGrpcStatus(const grpc::Status& status);

// "OK", "CANCELLED", ... "UNAUTHENTICATED"; "UNKNOWN" for values outside the
// enum. Used as a bounded metrics label.
const char* GrpcStatusCodeName(grpc::StatusCode code);

}  // namespace quantd

#endif  // QUANTD_SERVER_STATUS_CONVERSION_H_
