#include "server/call_auth.h"

#include "server/audit_log.h"

namespace quantd {

absl::StatusOr<Principal> AdmitCall(Authenticator& auth, grpc::CallbackServerContext* context, Role required,
                                    absl::string_view method) {
  absl::string_view authorization;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization = absl::string_view(it->second.data(), it->second.size());
  }
  absl::StatusOr<Principal> caller = auth.Authorize(authorization, required, method);
  if (!caller.ok()) AuditLine("", context->peer(), method, "", caller.status());
  return caller;
}

}  // namespace quantd
