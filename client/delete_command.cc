// quantctl delete ID: DeleteJob (and its artifact if no other job has it).

#include "client/job_format.h"

namespace quantd::cli {

int RunDelete(const CommandContext& context, const std::vector<std::string>& args) {
  if (args.size() != 1) return context.UsageError("usage: delete JOB_ID");
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  v1::DeleteJobRequest request;
  request.set_id(args[0]);
  v1::DeleteJobResponse response;
  grpc::Status status = stub->DeleteJob(&client_context, request, &response);
  if (!status.ok()) return context.RpcFailed("delete", status);
  context.Print(response, "deleted " + args[0]);
  return kExitOk;
}

}  // namespace quantd::cli
