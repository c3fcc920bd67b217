#ifndef QUANTD_SERVER_CALL_AUTH_H_
#define QUANTD_SERVER_CALL_AUTH_H_

// The bearer token of a gRPC call, checked by every service on the port.

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth.h"

namespace quantd {

// The caller, if its token allows `required`; else the status to answer
// (the refusal is audited, with `target`: the job, blob or version the call
// named, so that attempts on it beyond one's role are found by its id).
absl::StatusOr<Principal> AdmitCall(Authenticator& auth, grpc::CallbackServerContext* context, Role required,
                                    absl::string_view method, absl::string_view target = "");

}  // namespace quantd

#endif  // QUANTD_SERVER_CALL_AUTH_H_
