// quantctl health [--service=NAME]: grpc.health.v1.Health/Check. For the
// whole server (no --service) it also shows what the server runs on
// (QuantizationService/GetServerInfo): versions, kernel engines, and the CPU
// as int8 kernels see it.

#include <ostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/commands.h"
#include "client/job_format.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quantd/v1/quantd.grpc.pb.h"

namespace quantd::cli {
namespace {

std::string ServerInfoText(const v1::ServerInfo& info) {
  const v1::CpuInfo& cpu = info.cpu();
  std::vector<std::string> saturating;
  for (const auto& s : cpu.saturating_engines()) {
    saturating.push_back(absl::StrCat(s.engine(), " (", absl::StrJoin(s.ops(), ", "), ")"));
  }
  return absl::StrCat(
      "server: quantd ", info.version(), ", LibTorch ", info.libtorch_version(), ", kernel engines ",
      absl::StrJoin(info.kernel_engines(), " "), ", ", info.workers(), " worker(s) x ", info.intra_op_threads(),
      " intra-op thread(s), ", info.inference_threads(),
      " inference thread(s)\ncpu: ", cpu.model().empty() ? "unknown" : cpu.model(),
      "\n  features: ", absl::StrJoin(cpu.features(), " "),
      "\n  oneDNN isa: ", cpu.onednn_isa().empty() ? "unknown" : cpu.onednn_isa(),
      "\n  quantd kernels: ", cpu.kernel_isa(),
      "\n  saturating with 8-bit activations: ", saturating.empty() ? "none" : absl::StrJoin(saturating, ", "));
}

}  // namespace

int RunHealth(const CommandContext& context, const std::vector<std::string>& args) {
  grpc::health::v1::HealthCheckRequest request;
  std::string error;
  auto a = ParseCommandArgs(args, {"service"}, &error);
  if (!a.has_value() || !a->positional.empty()) {
    return context.UsageError(
        absl::StrCat("health: ", a.has_value() ? absl::StrCat("unexpected argument \"", a->positional[0], "\"") : error,
                     " (usage: health [--service=NAME])"));
  }
  request.set_service(a->Get("service"));
  auto stub = grpc::health::v1::Health::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&client_context, request, &response);
  if (!status.ok()) return context.RpcFailed("health check", status);
  const std::string serving = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
  const int rc = response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kExitOk : kExitFailure;
  v1::ServerInfo info;
  if (request.service().empty() && rc == kExitOk) {
    grpc::ClientContext info_context;
    context.PrepareCall(info_context);
    // A server without GetServerInfo (older quantd) still reports its health.
    // Health needs no token but the server's details do: a refused token is
    // said, as the health alone would hide it until the next command.
    const grpc::Status details = v1::QuantizationService::NewStub(context.channel)
                                     ->GetServerInfo(&info_context, v1::GetServerInfoRequest(), &info);
    if (!details.ok()) {
      info.Clear();
      if (details.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
          details.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
        *context.err << "quantctl: health: the server's details were refused (" << details.error_message()
                     << "): check --token or QUANTD_TOKEN\n";
      }
    }
  }
  if (info.version().empty()) {
    context.Print(response, serving);
  } else if (context.options.json) {
    *context.out << "{\"status\": \"" << serving << "\", \"server\": " << JsonLine(info) << "}\n";
  } else {
    *context.out << serving << "\n" << ServerInfoText(info) << "\n";
  }
  return rc;
}

}  // namespace quantd::cli
