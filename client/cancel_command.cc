// quantctl cancel ID [--reason=TEXT]: CancelJob.

#include "absl/strings/str_cat.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunCancel(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(args, {"reason"}, &error);
  if (!a.has_value() || a->positional.size() != 1) {
    if (error.empty()) error = a.has_value() && a->positional.size() > 1 ? "one JOB_ID at a time" : "JOB_ID required";
    return context.UsageError(absl::StrCat("cancel: ", error, "\nusage: cancel JOB_ID [--reason=TEXT]"));
  }
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  v1::CancelJobRequest request;
  request.set_id(a->positional[0]);
  request.set_reason(a->Get("reason"));
  v1::Job job;
  grpc::Status status = stub->CancelJob(&client_context, request, &job);
  if (!status.ok()) return context.RpcFailed("cancel", status);
  context.Print(job, JobLine(job));
  return kExitOk;
}

}  // namespace quantd::cli
