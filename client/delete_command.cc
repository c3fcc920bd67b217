// quantctl delete ID: DeleteJob (and its artifact if no other job has it, and
// the model version it published).

#include "absl/strings/str_cat.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunDelete(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  const std::string id = OnlyJobId(args, &error);
  if (!error.empty()) return context.UsageError(absl::StrCat("delete: ", error, "\nusage: delete JOB_ID"));
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  v1::DeleteJobRequest request;
  request.set_id(id);
  v1::DeleteJobResponse response;
  grpc::Status status = stub->DeleteJob(&client_context, request, &response);
  if (!status.ok()) return context.RpcFailed("delete", status);
  context.Print(response, response.unpublished_model_name().empty()
                              ? "deleted " + id
                              : absl::StrCat("deleted ", id, "; the model version it published, ",
                                             response.unpublished_model_name(), ":",
                                             response.unpublished_model_version(), ", is unpublished"));
  return kExitOk;
}

}  // namespace quantd::cli
