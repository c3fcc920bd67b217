#include "server/audit_log.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/engine/base/log.h"

namespace quantd {
namespace {

// Bytes of a field written: targets and messages echo what callers sent
// (a model name, a blob id, a sha256), and a 7 MiB one made a 29 MB line.
constexpr size_t kMaxFieldBytes = 256;

// `value` as is when it is a plain token, else quoted with '"', '\' and
// control characters escaped; "-" when empty. Past kMaxFieldBytes it is cut
// (not inside a UTF-8 sequence) and says how much was left out.
std::string Field(absl::string_view value) {
  if (value.empty()) return "-";
  std::string cut;
  if (value.size() > kMaxFieldBytes) {
    size_t end = kMaxFieldBytes;
    while (end > 0 && (static_cast<unsigned char>(value[end]) & 0xC0) == 0x80) --end;
    cut = absl::StrCat("...(", value.size() - end, " more bytes)");
    value = value.substr(0, end);
  }
  bool plain = true;
  for (unsigned char c : value) plain = plain && c > ' ' && c != '=' && c != '"' && c != '\\' && c != 0x7f;
  if (plain && cut.empty()) return std::string(value);
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
  absl::StrAppend(&quoted, cut, "\"");
  return quoted;
}

}  // namespace

std::string AuditText(absl::string_view who, absl::string_view peer, absl::string_view method,
                      absl::string_view target, const absl::Status& result, const AuditEffects& effects) {
  std::string line = absl::StrCat("audit: who=", Field(who), " peer=", Field(peer), " method=", Field(method),
                                  " target=", Field(target), " result=", absl::StatusCodeToString(result.code()));
  for (const auto& [key, value] : effects) absl::StrAppend(&line, " ", key, "=", Field(value));
  if (!result.ok()) {
    std::string message = Field(result.message());
    if (message.front() != '"') message = absl::StrCat("\"", message, "\"");
    absl::StrAppend(&line, " message=", message);
  }
  return line;
}

void AuditLine(absl::string_view who, absl::string_view peer, absl::string_view method, absl::string_view target,
               const absl::Status& result, const AuditEffects& effects) {
  LogLine(LogLevel::kInfo, AuditText(who, peer, method, target, result, effects));
}

}  // namespace quantd
