// quantctl: command-line client of quantd. See client/commands.cc for the
// command table.

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "client/cli.h"
#include "client/commands.h"

namespace {

int RunQuantctl(int argc, char** argv) {
  using namespace quantd::cli;
  std::vector<std::string> argv_rest(argv + 1, argv + argc);
  const char* environment_token = std::getenv("QUANTD_TOKEN");
  const char* environment_server = std::getenv("QUANTD_SERVER");
  auto invocation = ParseInvocation(argv_rest, environment_token == nullptr ? "" : environment_token,
                                    environment_server == nullptr ? "" : environment_server);
  if (!invocation.ok()) {
    // One line naming the flag, as quantd's and quantd-quantize's: a page of
    // usage after it would scroll the error away. Bare `quantctl` gets the page.
    if (argv_rest.empty()) {
      std::cerr << Usage();
    } else {
      const bool hinted = absl::StrContains(invocation.status().message(), "--help");
      std::cerr << "quantctl: " << invocation.status().message()
                << (hinted ? "" : " (quantctl --help lists the flags and commands)") << "\n";
    }
    return kExitUsage;
  }
  if (invocation->version && !invocation->help) {
    std::cout << "quantctl " << QUANTD_VERSION << "\n";
    return kExitOk;
  }
  const Command* command = FindCommand(invocation->command);
  if (invocation->help && (command != nullptr || invocation->command.empty())) {
    std::cout << (command != nullptr ? CommandUsage(*command) : Usage());
    return kExitOk;
  }
  if (command == nullptr) {
    std::cerr << "quantctl: unknown command \"" << invocation->command << "\" (quantctl --help lists the commands)\n";
    return kExitUsage;
  }
  CommandContext context;
  context.options = invocation->options;
  auto credentials = ChannelCredentials(invocation->options);
  if (!credentials.ok()) {
    std::cerr << "quantctl: " << credentials.status().message() << "\n";
    return kExitUsage;
  }
  // Keepalive pings (quantd accepts them every 10 s or more) notice a server
  // that vanished without closing the connection, so a long watch is resumed
  // instead of waiting out its deadline.
  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  channel_args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
  channel_args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  context.channel = grpc::CreateCustomChannel(invocation->options.server, *credentials, channel_args);
  context.out = &std::cout;
  context.err = &std::cerr;
  return command->run(context, invocation->args);
}

}  // namespace

int main(int argc, char** argv) {
  const int code = RunQuantctl(argc, argv);
  // An answer that did not reach stdout (a full disk, a closed pipe) is not
  // a success, whatever the server said.
  std::cout.flush();
  if (code == quantd::cli::kExitOk && !std::cout) {
    std::cerr << "quantctl: cannot write the answer to standard output\n";
    return quantd::cli::kExitFailure;
  }
  return code;
}
