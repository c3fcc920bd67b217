#include "client/cli.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace quantd::cli {
namespace {

// Splits "--name=value" into name and value; "--name" has no value.
void SplitFlag(absl::string_view arg, absl::string_view* name,
               std::optional<absl::string_view>* value) {
  arg.remove_prefix(2);
  size_t eq = arg.find('=');
  if (eq == absl::string_view::npos) {
    *name = arg;
    value->reset();
  } else {
    *name = arg.substr(0, eq);
    *value = arg.substr(eq + 1);
  }
}

absl::StatusOr<bool> ParseBool(absl::string_view name, absl::string_view value) {
  bool result = false;
  if (!absl::SimpleAtob(value, &result)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " expects true or false, got \"", value, "\""));
  }
  return result;
}

}  // namespace

absl::StatusOr<Invocation> ParseInvocation(const std::vector<std::string>& argv,
                                           const std::string& environment_token,
                                           const std::string& environment_server) {
  Invocation invocation;
  invocation.options.token = environment_token;
  if (!environment_server.empty()) invocation.options.server = environment_server;
  bool flags_done = false;
  std::string timeout_spelled;  // --timeout_seconds or its old name, once given
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (!flags_done && arg == "-h") {  // as quantd and quantd-quantize
      invocation.help = true;
      continue;
    }
    if (flags_done || !absl::StartsWith(arg, "--") || arg == "--") {
      if (arg == "--" && !flags_done) {
        flags_done = true;
        continue;
      }
      if (invocation.command.empty() && !absl::StartsWith(arg, "-")) {
        invocation.command = arg;
      } else {
        invocation.args.push_back(arg);
      }
      continue;
    }
    absl::string_view raw_name;
    std::optional<absl::string_view> value;
    SplitFlag(arg, &raw_name, &value);
    std::string name(raw_name);
    std::replace(name.begin(), name.end(), '-', '_');  // --tls-ca = --tls_ca, as in every quantd tool
    // A value-taking global flag may also be written "--flag VALUE".
    auto take_value = [&]() -> absl::StatusOr<std::string> {
      if (value.has_value()) return std::string(*value);
      // As for command flags and quantd-quantize's: "--token --json" is a
      // missing value, not the token "--json".
      if (i + 1 >= argv.size() || absl::StartsWith(argv[i + 1], "--")) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      return argv[++i];
    };
    if (name == "server") {
      absl::StatusOr<std::string> server = take_value();
      if (!server.ok()) return server.status();
      if (server->empty()) return absl::InvalidArgumentError("--server must not be empty");
      invocation.options.server = *server;
    } else if (name == "timeout_seconds" || name == "timeout") {  // --timeout: its old name
      if (!timeout_spelled.empty() && timeout_spelled != name) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", timeout_spelled, " and --", name, " are the same flag: give one"));
      }
      timeout_spelled = name;
      absl::StatusOr<std::string> text = take_value();
      if (!text.ok()) return text.status();
      double seconds = 0;
      if (!absl::SimpleAtod(*text, &seconds) || !(seconds > 0 && seconds <= 366 * 86400)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--", name, " expects a positive number of seconds up to a year, got \"", *text, "\""));
      }
      invocation.options.timeout_seconds = seconds;
    } else if (name == "json") {
      if (value.has_value()) {
        absl::StatusOr<bool> json = ParseBool(name, *value);
        if (!json.ok()) return json.status();
        invocation.options.json = *json;
      } else {
        invocation.options.json = true;
      }
    } else if (name == "token" || name == "tls_ca" || name == "tls_cert" || name == "tls_key") {
      absl::StatusOr<std::string> text = take_value();
      if (!text.ok()) return text.status();
      if (text->empty()) return absl::InvalidArgumentError(absl::StrCat("--", name, " must not be empty"));
      if (name == "token") invocation.options.token = *text;
      if (name == "tls_ca") invocation.options.tls_ca_file = *text;
      if (name == "tls_cert") invocation.options.tls_cert_file = *text;
      if (name == "tls_key") invocation.options.tls_key_file = *text;
    } else if (name == "help") {
      invocation.help = true;
    } else if (name == "version") {  // anywhere, as quantd takes it
      invocation.version = true;
    } else {
      invocation.args.push_back(arg);  // the command's own flag
    }
  }
  if (invocation.command.empty() && !invocation.help && !invocation.version) {
    return absl::InvalidArgumentError("no command given (try --help)");
  }
  const GlobalOptions& o = invocation.options;
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!o.tls_cert_file.empty() && o.tls_ca_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert needs --tls_ca (a client certificate is for TLS connections)");
  }
  return invocation;
}

std::string GlobalUsage() {
  return "usage: quantctl [--server=HOST:PORT] [--timeout_seconds=S] [--json] [--token=T] [--tls_ca=PEM] COMMAND "
         "[ARGS...]\n"
         "\n"
         "global flags:\n"
         "  --server=HOST:PORT  quantd gRPC address (default: $QUANTD_SERVER, else localhost:50051)\n"
         "  --timeout_seconds=S deadline of each RPC (default 10; alias --timeout), as quantd's *_seconds flags\n"
         "  --json              print responses as JSON\n"
         "  --token=TOKEN       bearer token (default: $QUANTD_TOKEN)\n"
         "  --tls_ca=PEM        connect over TLS, trusting this CA (quantd's --tls_cert)\n"
         "  --tls_cert=PEM --tls_key=PEM\n"
         "                      client certificate for mTLS (quantd's --tls_client_ca)\n"
         "  --help              this text; after a command, that command's flags\n"
         "Value flags are --flag=VALUE or --flag VALUE; boolean flags --flag or --flag=true|false.\n";
}

}  // namespace quantd::cli
