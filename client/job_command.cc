// quantctl job ID: GetJob.

#include "absl/strings/str_cat.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunJob(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  const std::string id = OnlyJobId(args, &error);
  if (!error.empty()) return context.UsageError(absl::StrCat("job: ", error, "\nusage: job JOB_ID"));
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  v1::GetJobRequest request;
  request.set_id(id);
  v1::Job job;
  grpc::Status status = stub->GetJob(&client_context, request, &job);
  if (!status.ok()) return context.RpcFailed("get job", status);
  context.Print(job, JobText(job));
  return kExitOk;
}

}  // namespace quantd::cli
