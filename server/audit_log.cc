#include "server/audit_log.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/log.h"

namespace quantd {
namespace {

// `value` as is when it is a plain token, else quoted with '"', '\' and
// control characters escaped; "-" when empty.
std::string Field(absl::string_view value) {
  if (value.empty()) return "-";
  bool plain = true;
  for (unsigned char c : value) plain = plain && c > ' ' && c != '=' && c != '"' && c != '\\' && c != 0x7f;
  if (plain) return std::string(value);
  std::string quoted = "\"";
  for (unsigned char c : value) {
    if (c == '"' || c == '\\') {
      quoted.push_back('\\');
      quoted.push_back(static_cast<char>(c));
    } else if (c < ' ' || c == 0x7f) {
      absl::StrAppendFormat(&quoted, "\\x%02x", c);
    } else {
      quoted.push_back(static_cast<char>(c));
    }
  }
  quoted.push_back('"');
  return quoted;
}

}  // namespace

std::string AuditText(absl::string_view who, absl::string_view peer, absl::string_view method,
                      absl::string_view target, const absl::Status& result) {
  std::string line = absl::StrCat("audit: who=", Field(who), " peer=", Field(peer), " method=", Field(method),
                                  " target=", Field(target), " result=", absl::StatusCodeToString(result.code()));
  if (!result.ok()) {
    std::string message = Field(result.message());
    if (message.front() != '"') message = absl::StrCat("\"", message, "\"");
    absl::StrAppend(&line, " message=", message);
  }
  return line;
}

void AuditLine(absl::string_view who, absl::string_view peer, absl::string_view method, absl::string_view target,
               const absl::Status& result) {
  LogLine(LogLevel::kInfo, AuditText(who, peer, method, target, result));
}

}  // namespace quantd
