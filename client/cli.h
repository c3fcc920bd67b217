#ifndef QUANTD_CLIENT_CLI_H_
#define QUANTD_CLIENT_CLI_H_

// quantctl's command line: global flags (anywhere before "--"), a command
// name, and the command's own arguments.
//
//   quantctl [--server=HOST:PORT] [--timeout_seconds=S] [--json] [--token=T]
//            [--tls_ca=PEM [--tls_cert=PEM --tls_key=PEM]] COMMAND [ARGS...]

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::cli {

struct GlobalOptions {
  // gRPC target of quantd.
  std::string server = "localhost:50051";
  // Deadline of every RPC, in seconds (> 0).
  double timeout_seconds = 10;
  // Print responses as JSON (proto3 JSON mapping) instead of text.
  bool json = false;
  // Bearer token (--token, else $QUANTD_TOKEN); empty = none.
  std::string token;
  // TLS: the CA that signed quantd's certificate (set = TLS on); a client
  // certificate and key for mTLS.
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
};

struct Invocation {
  GlobalOptions options;
  // Empty when only --help was given.
  std::string command;
  // Everything after the command that is not a global flag.
  std::vector<std::string> args;
  bool help = false;
  bool version = false;  // --version: print it and exit 0, as quantd does
};

// Parses argv[1..]. Global flags may appear before or after the command
// ("quantctl health --json" works); "--" ends flag parsing, and everything
// after it goes to the command. Unknown flags are left to the command.
// `environment_token` is $QUANTD_TOKEN (used when --token is absent), and
// `environment_server` $QUANTD_SERVER (when --server is absent; empty = the
// default).
absl::StatusOr<Invocation> ParseInvocation(const std::vector<std::string>& argv,
                                           const std::string& environment_token = "",
                                           const std::string& environment_server = "");

// The text printed by --help (global part; commands add their own lines).
std::string GlobalUsage();

}  // namespace quantd::cli

#endif  // QUANTD_CLIENT_CLI_H_
