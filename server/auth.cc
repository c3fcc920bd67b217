#include "server/auth.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/sha256.h"

namespace quantd {
namespace {

constexpr absl::Duration kReloadCheckInterval = absl::Seconds(1);

// Equal-length hex digests compared without an early exit, so response time
// says nothing about how much of a guess was right.
bool SameDigest(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The file's text; NOT_FOUND if it cannot be read.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read token file ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kRead: return "read";
    case Role::kSubmit: return "submit";
    case Role::kAdmin: return "admin";
    case Role::kNone: break;
  }
  return "none";
}

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  if (name == "read") return Role::kRead;
  if (name == "submit") return Role::kSubmit;
  if (name == "admin") return Role::kAdmin;
  return absl::InvalidArgumentError(absl::StrCat("role '", name, "' is not read, submit or admin"));
}

namespace {

constexpr size_t kMinTokenLength = 16;

// A field of the token file, quoted for an error, unless it could be a token
// (a line whose columns are swapped puts one where a name or role goes).
std::string FieldForError(absl::string_view field) {
  if (field.size() < kMinTokenLength) return absl::StrCat("'", field, "'");
  return absl::StrCat("(", field.size(), " characters, not shown: it may be a token)");
}

}  // namespace

ParsedTokenFile ParseTokenLines(absl::string_view text) {
  ParsedTokenFile parsed;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    // A comment starts at "#" at the start of a line or after a blank: a "#"
    // inside a token is part of it (cutting it there left a weaker token).
    for (size_t hash = line.find('#'); hash != absl::string_view::npos; hash = line.find('#', hash + 1)) {
      if (hash == 0 || line[hash - 1] == ' ' || line[hash - 1] == '\t') {
        line = line.substr(0, hash);
        break;
      }
    }
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    auto malformed = [&](const std::string& why) {
      if (parsed.error.ok()) parsed.error = absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": ", why));
    };
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 3) {
      malformed(absl::StrCat("expected \"<name> <role> <token>\", found ", fields.size(), " fields"));
      continue;
    }
    absl::StatusOr<Role> role = ParseRole(fields[1]);
    if (!role.ok()) {
      malformed(absl::StrCat("role ", FieldForError(fields[1]), " is not read, submit or admin"));
      continue;
    }
    if (fields[2].size() < kMinTokenLength) {
      malformed(absl::StrCat("the token of ", FieldForError(fields[0]), " is shorter than ", kMinTokenLength,
                             " characters"));
      continue;
    }
    std::string digest = engine::Sha256Hex(std::string(fields[2]));
    // One token under two names: the first line won, and the second's role
    // was ignored without a word.
    const auto same = std::find_if(parsed.entries.begin(), parsed.entries.end(),
                                   [&](const TokenEntry& e) { return e.token_sha256 == digest; });
    if (same != parsed.entries.end()) {
      malformed(absl::StrCat("the token of ", FieldForError(fields[0]), " is also the token of ",
                             FieldForError(same->name), ": each token names one caller"));
      continue;
    }
    parsed.entries.push_back({std::string(fields[0]), *role, std::move(digest)});
  }
  return parsed;
}

absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view text) {
  ParsedTokenFile parsed = ParseTokenLines(text);
  if (!parsed.error.ok()) return parsed.error;
  return std::move(parsed.entries);
}

std::unique_ptr<Authenticator> Authenticator::Disabled() {
  return std::unique_ptr<Authenticator>(new Authenticator(false, "", worker::Clock::Real()));
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::FromFile(const std::string& token_file,
                                                                       worker::Clock* clock) {
  absl::StatusOr<FileStamp> stamp = StampOf(token_file, "token file");
  if (!stamp.ok()) return stamp.status();
  absl::StatusOr<std::string> text = ReadTokenFile(token_file);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<TokenEntry>> tokens = ParseTokenFile(*text);
  if (!tokens.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("token file ", token_file, ": ", tokens.status().message()));
  }
  // At start an empty file is a mistake; later it is how to refuse everyone.
  if (tokens->empty()) return absl::InvalidArgumentError(absl::StrCat("token file ", token_file, " has no tokens"));
  std::unique_ptr<Authenticator> auth(new Authenticator(true, token_file, clock));
  absl::MutexLock lock(&auth->mu_);
  auth->tokens_ = std::move(*tokens);
  auth->loaded_stamp_ = *stamp;
  auth->next_check_ = clock->Now() + kReloadCheckInterval;
  return auth;
}

void Authenticator::ReloadIfChanged() {
  const absl::Time now = clock_->Now();
  if (now < next_check_) return;
  next_check_ = now + kReloadCheckInterval;
  absl::StatusOr<FileStamp> stamp = StampOf(path_, "token file");
  absl::StatusOr<std::string> text = stamp.ok() ? ReadTokenFile(path_) : absl::StatusOr<std::string>(stamp.status());
  if (!text.ok()) {
    // Missing for a moment while a Secret's files are swapped: keep what is
    // loaded, and say so once, not every second.
    if (!file_missing_) {
      LogLine(LogLevel::kWarning, absl::StrCat("quantd: ", text.status().message(), "; keeping the loaded tokens"));
    }
    file_missing_ = true;
    return;
  }
  const bool was_missing = file_missing_;
  file_missing_ = false;
  if (!was_missing && *stamp == loaded_stamp_) {
    settling_stamp_ = FileStamp{};  // a change undone before it settled
    return;
  }
  ParsedTokenFile parsed = ParseTokenLines(*text);
  // A file rewritten in place (truncated, then written) reads empty or cut
  // off for a moment, which would refuse every call until the next check.
  // A file that looks whole (parses, lists tokens, ends its last line)
  // applies at once: a revocation must not wait. One that does not applies
  // once it is the same at the next check.
  const bool looks_whole = parsed.error.ok() && !parsed.entries.empty() && !text->empty() && text->back() == '\n';
  if (!looks_whole && *stamp != settling_stamp_) {
    settling_stamp_ = *stamp;
    return;
  }
  settling_stamp_ = FileStamp{};
  loaded_stamp_ = *stamp;  // a bad file is reported once, not every second
  if (!parsed.error.ok()) {
    // Nothing new is granted from a bad file, but what it no longer lists is
    // revoked: a typo must not keep a token alive that the edit removed.
    std::vector<TokenEntry> kept;
    for (const TokenEntry& old : tokens_) {
      for (const TokenEntry& listed : parsed.entries) {
        if (listed.name == old.name && listed.role == old.role && SameDigest(listed.token_sha256, old.token_sha256)) {
          kept.push_back(old);
          break;
        }
      }
    }
    LogLine(LogLevel::kError, absl::StrCat("quantd: token file ", path_, ": ", parsed.error.message(), "; kept ",
                                           kept.size(), " of the ", tokens_.size(),
                                           " loaded tokens (those still listed unchanged), granting none new"));
    tokens_ = std::move(kept);
    return;
  }
  tokens_ = std::move(parsed.entries);
  if (tokens_.empty()) {
    LogLine(LogLevel::kWarning,
            absl::StrCat("quantd: token file ", path_, " lists no tokens: every call that needs one is refused"));
    return;
  }
  LogLine(LogLevel::kInfo, absl::StrCat("quantd: reloaded ", tokens_.size(), " tokens from ", path_));
}

absl::StatusOr<Principal> Authenticator::Authorize(absl::string_view authorization, Role required,
                                                   absl::string_view what, std::string* identified) {
  if (!enabled_) return Principal{"anonymous", Role::kAdmin};
  absl::string_view value = absl::StripAsciiWhitespace(authorization);
  if (value.empty()) {
    return absl::UnauthenticatedError(absl::StrCat(what, ": no bearer token (send \"authorization: Bearer <token>\")"));
  }
  if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError(absl::StrCat(what, ": the authorization header is not \"Bearer <token>\""));
  }
  const std::string digest = engine::Sha256Hex(std::string(absl::StripAsciiWhitespace(value.substr(7))));
  absl::MutexLock lock(&mu_);
  ReloadIfChanged();
  for (const TokenEntry& entry : tokens_) {
    if (!SameDigest(entry.token_sha256, digest)) continue;
    if (identified != nullptr) *identified = entry.name;
    if (static_cast<int>(entry.role) < static_cast<int>(required)) {
      return absl::PermissionDeniedError(absl::StrCat(what, " needs the ", RoleName(required), " role; '",
                                                      entry.name, "' has ", RoleName(entry.role)));
    }
    return Principal{entry.name, entry.role};
  }
  return absl::UnauthenticatedError(absl::StrCat(what, ": unknown or revoked token"));
}

}  // namespace quantd
