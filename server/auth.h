#ifndef QUANTD_SERVER_AUTH_H_
#define QUANTD_SERVER_AUTH_H_

// Bearer-token authentication with roles, for gRPC and HTTP alike.
//
// The token file has one token per line: "<name> <role> <token>", where role
// is read, submit or admin (each includes the ones before it); '#' starts a
// comment. The file is re-read when it changes (checked at most once per
// second), so tokens are added and revoked without a restart; a file that
// fails to parse keeps the previous tokens and logs why. Only SHA-256 digests
// of tokens are kept in memory, and no token is ever logged.

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/file_stamp.h"
#include "worker/clock.h"

namespace quantd {

enum class Role { kNone = 0, kRead = 1, kSubmit = 2, kAdmin = 3 };
const char* RoleName(Role role);
absl::StatusOr<Role> ParseRole(absl::string_view name);

struct Principal {
  std::string name;  // from the token file; "anonymous" when auth is off
  Role role = Role::kNone;
};

struct TokenEntry {
  std::string name;
  Role role = Role::kRead;
  std::string token_sha256;
};

// Parses token-file text. Errors name the line, never the token.
absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view text);
// Every well-formed line's entry, and the first malformed line's error (OK
// when there is none).
struct ParsedTokenFile {
  std::vector<TokenEntry> entries;
  absl::Status error;
};
ParsedTokenFile ParseTokenLines(absl::string_view text);

class Authenticator {
 public:
  // Off: everyone is an anonymous admin (the embedded default on localhost).
  static std::unique_ptr<Authenticator> Disabled();
  // Loads `token_file`; fails if it cannot be read or parsed, or is empty.
  static absl::StatusOr<std::unique_ptr<Authenticator>> FromFile(const std::string& token_file,
                                                                 worker::Clock* clock);

  bool enabled() const { return enabled_; }

  // `authorization` is the request's "authorization" header/metadata value
  // ("Bearer <token>"), empty when absent. UNAUTHENTICATED for a missing,
  // malformed or unknown token; PERMISSION_DENIED when its role is below
  // `required`. `what` (e.g. "QuantizeJob") goes into the message.
  // `identified`, when given, gets the name of a token that was recognized,
  // also when its role is too low (for the audit log).
  absl::StatusOr<Principal> Authorize(absl::string_view authorization, Role required, absl::string_view what,
                                      std::string* identified = nullptr);

 private:
  Authenticator(bool enabled, std::string path, worker::Clock* clock)
      : enabled_(enabled), path_(std::move(path)), clock_(clock) {}
  void ReloadIfChanged() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const bool enabled_;
  const std::string path_;
  worker::Clock* const clock_;
  absl::Mutex mu_;
  std::vector<TokenEntry> tokens_ ABSL_GUARDED_BY(mu_);
  absl::Time next_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  FileStamp loaded_stamp_ ABSL_GUARDED_BY(mu_);
  // A change seen at the last check, applied if the next one sees it again.
  FileStamp settling_stamp_ ABSL_GUARDED_BY(mu_);
  bool file_missing_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_AUTH_H_
