#include "server/auth.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/log.h"
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

struct FileStamp {
  int64_t mtime_ns = 0;
  int64_t size = -1;
};

absl::StatusOr<FileStamp> Stamp(const std::string& path) {
  struct stat st = {};
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError(absl::StrCat("token file ", path, " is missing"));
  return FileStamp{static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                   static_cast<int64_t>(st.st_size)};
}

absl::StatusOr<std::vector<TokenEntry>> LoadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read token file ", path));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::vector<TokenEntry>> entries = ParseTokenFile(text.str());
  if (!entries.ok()) return absl::InvalidArgumentError(absl::StrCat("token file ", path, ": ", entries.status().message()));
  if (entries->empty()) return absl::InvalidArgumentError(absl::StrCat("token file ", path, " has no tokens"));
  return entries;
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

absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view text) {
  std::vector<TokenEntry> entries;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 3) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": expected \"<name> <role> <token>\", found ", fields.size(), " fields"));
    }
    absl::StatusOr<Role> role = ParseRole(fields[1]);
    if (!role.ok()) return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": ", role.status().message()));
    if (fields[2].size() < 16) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": the token of '", fields[0],
                                                     "' is shorter than 16 characters"));
    }
    entries.push_back({std::string(fields[0]), *role, engine::Sha256Hex(std::string(fields[2]))});
  }
  return entries;
}

std::unique_ptr<Authenticator> Authenticator::Disabled() {
  return std::unique_ptr<Authenticator>(new Authenticator(false, "", worker::Clock::Real()));
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::FromFile(const std::string& token_file,
                                                                       worker::Clock* clock) {
  absl::StatusOr<FileStamp> stamp = Stamp(token_file);
  if (!stamp.ok()) return stamp.status();
  absl::StatusOr<std::vector<TokenEntry>> tokens = LoadTokenFile(token_file);
  if (!tokens.ok()) return tokens.status();
  std::unique_ptr<Authenticator> auth(new Authenticator(true, token_file, clock));
  absl::MutexLock lock(&auth->mu_);
  auth->tokens_ = std::move(*tokens);
  auth->loaded_mtime_ns_ = stamp->mtime_ns;
  auth->loaded_size_ = stamp->size;
  auth->next_check_ = clock->Now() + kReloadCheckInterval;
  return auth;
}

void Authenticator::ReloadIfChanged() {
  const absl::Time now = clock_->Now();
  if (now < next_check_) return;
  next_check_ = now + kReloadCheckInterval;
  absl::StatusOr<FileStamp> stamp = Stamp(path_);
  if (!stamp.ok()) {
    LogLine(LogLevel::kWarning, absl::StrCat("quantd: ", stamp.status().message(), "; keeping the loaded tokens"));
    return;
  }
  if (stamp->mtime_ns == loaded_mtime_ns_ && stamp->size == loaded_size_) return;
  absl::StatusOr<std::vector<TokenEntry>> tokens = LoadTokenFile(path_);
  loaded_mtime_ns_ = stamp->mtime_ns;  // a bad file is reported once, not every second
  loaded_size_ = stamp->size;
  if (!tokens.ok()) {
    LogLine(LogLevel::kError, absl::StrCat("quantd: not reloading tokens: ", tokens.status().message(),
                                           "; keeping the ", tokens_.size(), " loaded"));
    return;
  }
  tokens_ = std::move(*tokens);
  LogLine(LogLevel::kInfo, absl::StrCat("quantd: reloaded ", tokens_.size(), " tokens from ", path_));
}

absl::StatusOr<Principal> Authenticator::Authorize(absl::string_view authorization, Role required,
                                                   absl::string_view what) {
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
    if (static_cast<int>(entry.role) < static_cast<int>(required)) {
      return absl::PermissionDeniedError(absl::StrCat(what, " needs the ", RoleName(required), " role; '",
                                                      entry.name, "' has ", RoleName(entry.role)));
    }
    return Principal{entry.name, entry.role};
  }
  return absl::UnauthenticatedError(absl::StrCat(what, ": unknown or revoked token"));
}

}  // namespace quantd
