#ifndef QUANTD_SERVER_AUDIT_LOG_H_
#define QUANTD_SERVER_AUDIT_LOG_H_

// One log line per mutating call and per refused call, logfmt style:
//   audit: who=<name|-> peer=<address> method=<Method> target=<id|-> result=<CODE>[ <key>=<value>...][ message="<message>"]
// A value with a blank, '=', '"', '\' or a control character is quoted and
// escaped, so no value (a job id or URL path a caller chose) can forge a
// field or a line. Names come from the token file; tokens never appear.

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace quantd {

// What a call changed beyond its target (DeleteJob: the version it
// unpublished), as key=value fields; keys are the server's own.
using AuditEffects = std::vector<std::pair<std::string, std::string>>;

// The audit line, without the log prefix.
std::string AuditText(absl::string_view who, absl::string_view peer, absl::string_view method,
                      absl::string_view target, const absl::Status& result, const AuditEffects& effects = {});
void AuditLine(absl::string_view who, absl::string_view peer, absl::string_view method, absl::string_view target,
               const absl::Status& result, const AuditEffects& effects = {});

}  // namespace quantd

#endif  // QUANTD_SERVER_AUDIT_LOG_H_
