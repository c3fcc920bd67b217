// quantctl health [--service=NAME]: grpc.health.v1.Health/Check.

#include <ostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace quantd::cli {

int RunHealth(const CommandContext& context, const std::vector<std::string>& args) {
  grpc::health::v1::HealthCheckRequest request;
  for (const std::string& arg : args) {
    if (absl::StartsWith(arg, "--service=")) {
      request.set_service(arg.substr(std::string("--service=").size()));
    } else {
      return context.UsageError(absl::StrCat("health: unexpected argument \"", arg,
                                             "\" (usage: health [--service=NAME])"));
    }
  }
  auto stub = grpc::health::v1::Health::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.SetDeadline(client_context);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&client_context, request, &response);
  if (!status.ok()) return context.RpcFailed("health check", status);
  context.Print(response,
                grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()));
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kExitOk
                                                                            : kExitFailure;
}

}  // namespace quantd::cli
