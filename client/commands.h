#ifndef QUANTD_CLIENT_COMMANDS_H_
#define QUANTD_CLIENT_COMMANDS_H_

// quantctl's command table. A new command is one function plus one row in
// Commands() (commands.cc); it gets a connected channel and the global
// options, and returns the process exit code.

#include <chrono>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "client/cli.h"

namespace quantd::cli {

// Exit codes shared by all commands.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // RPC failed, or the answer is "no"
inline constexpr int kExitUsage = 2;    // bad command line

struct CommandContext {
  GlobalOptions options;
  std::shared_ptr<grpc::ChannelInterface> channel;
  std::ostream* out;
  std::ostream* err;

  // Sets the bearer token (if any) and a deadline `options.timeout_seconds`
  // from now on `context`.
  void PrepareCall(grpc::ClientContext& context, bool with_deadline = true) const;
  // Prints `message` as JSON (--json) or as `text` followed by a newline.
  void Print(const google::protobuf::Message& message, const std::string& text) const;
  // Reports a failed RPC on stderr and returns kExitFailure.
  int RpcFailed(const std::string& what, const grpc::Status& status) const;
  // Reports a usage error on stderr and returns kExitUsage.
  int UsageError(const std::string& message) const;
};

struct Command {
  const char* name;
  const char* args;     // e.g. "[--service=NAME]"
  const char* summary;  // one line
  int (*run)(const CommandContext& context, const std::vector<std::string>& args);
  const char* all_args = nullptr;  // every flag, where `args` abbreviates them
};

// submit's every flag (its row in the table abbreviates them).
extern const char kSubmitUsage[];

// Insecure, or TLS (and mTLS) from the --tls_* flags; errors name the flag.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const GlobalOptions& options);

// All commands, sorted by name.
const std::vector<Command>& Commands();
// The command called `name`, or nullptr.
const Command* FindCommand(const std::string& name);
// GlobalUsage() plus one line per command.
std::string Usage();
// "quantctl COMMAND --help": the command's arguments, every flag, and summary.
std::string CommandUsage(const Command& command);

// Commands (one file each).
int RunHealth(const CommandContext& context, const std::vector<std::string>& args);
int RunArtifacts(const CommandContext& context, const std::vector<std::string>& args);
int RunBlobs(const CommandContext& context, const std::vector<std::string>& args);
int RunModels(const CommandContext& context, const std::vector<std::string>& args);
int RunCancel(const CommandContext& context, const std::vector<std::string>& args);
int RunDelete(const CommandContext& context, const std::vector<std::string>& args);
int RunDownload(const CommandContext& context, const std::vector<std::string>& args);
int RunEval(const CommandContext& context, const std::vector<std::string>& args);
int RunInfer(const CommandContext& context, const std::vector<std::string>& args);
int RunJob(const CommandContext& context, const std::vector<std::string>& args);
int RunJobs(const CommandContext& context, const std::vector<std::string>& args);
int RunSubmit(const CommandContext& context, const std::vector<std::string>& args);
int RunUpload(const CommandContext& context, const std::vector<std::string>& args);
int RunWatch(const CommandContext& context, const std::vector<std::string>& args);

}  // namespace quantd::cli

#endif  // QUANTD_CLIENT_COMMANDS_H_
