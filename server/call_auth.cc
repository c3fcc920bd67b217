#include "server/call_auth.h"

#include "server/audit_log.h"

namespace quantd {

absl::StatusOr<Principal> AdmitCall(Authenticator& auth, grpc::CallbackServerContext* context, Role required,
                                    absl::string_view method, absl::string_view target) {
  absl::string_view authorization;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization = absl::string_view(it->second.data(), it->second.size());
  }
  // A known token with too low a role is audited under its name: attempts
  // beyond one's role are what the audit log is for.
  std::string who;
  absl::StatusOr<Principal> caller = auth.Authorize(authorization, required, method, &who);
  if (!caller.ok()) AuditLine(who, context->peer(), method, target, caller.status());
  return caller;
}

}  // namespace quantd
