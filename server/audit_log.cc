#include "server/audit_log.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/log.h"

namespace quantd {

void AuditLine(absl::string_view who, absl::string_view peer, absl::string_view method, absl::string_view target,
               const absl::Status& result) {
  std::string line = absl::StrCat("audit: who=", who.empty() ? "-" : who, " peer=", peer.empty() ? "-" : peer,
                                  " method=", method, " target=", target.empty() ? "-" : target,
                                  " result=", absl::StatusCodeToString(result.code()));
  if (!result.ok()) absl::StrAppend(&line, " (", result.message(), ")");
  // Messages may quote user input: one event stays one line.
  LogLine(LogLevel::kInfo, absl::StrReplaceAll(line, {{"\n", "\\n"}, {"\r", "\\r"}}));
}

}  // namespace quantd
