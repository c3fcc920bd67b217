#ifndef QUANTD_SERVER_AUDIT_LOG_H_
#define QUANTD_SERVER_AUDIT_LOG_H_

// One log line per mutating call and per refused call:
//   audit: who=<name|-> peer=<address> method=<Method> target=<id|-> result=<CODE>[ (<message>)]
// Names come from the token file; tokens never appear.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace quantd {

void AuditLine(absl::string_view who, absl::string_view peer, absl::string_view method, absl::string_view target,
               const absl::Status& result);

}  // namespace quantd

#endif  // QUANTD_SERVER_AUDIT_LOG_H_
