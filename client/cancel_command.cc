// quantctl cancel ID [--reason=TEXT]: CancelJob, or CancelEvaluation for an
// evaluation's id (eval-...).

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunCancel(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(args, {"reason"}, &error);
  if (!a.has_value() || a->positional.size() != 1) {
    if (error.empty()) error = a.has_value() && a->positional.size() > 1 ? "one ID at a time" : "a JOB_ID or EVALUATION_ID required";
    return context.UsageError(absl::StrCat("cancel: ", error, "\nusage: cancel (JOB_ID | EVALUATION_ID) [--reason=TEXT]"));
  }
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  if (absl::StartsWith(a->positional[0], "eval-")) {
    v1::CancelEvaluationRequest request;
    request.set_id(a->positional[0]);
    request.set_reason(a->Get("reason"));
    v1::Evaluation evaluation;
    grpc::Status status = stub->CancelEvaluation(&client_context, request, &evaluation);
    if (!status.ok()) return context.RpcFailed("cancel", status);
    context.Print(evaluation, absl::StrCat("evaluation ", evaluation.id(), " of ", evaluation.model_name(),
                                           " version ", evaluation.model_version(), ": cancel requested at ",
                                           evaluation.samples_done(), "/", evaluation.samples_total(), " images"));
    return kExitOk;
  }
  v1::CancelJobRequest request;
  request.set_id(a->positional[0]);
  request.set_reason(a->Get("reason"));
  v1::Job job;
  grpc::Status status = stub->CancelJob(&client_context, request, &job);
  if (!status.ok()) return context.RpcFailed("cancel", status);
  // A running job still reads RUNNING here: it ends at its next check.
  context.Print(job, job.state() == v1::JOB_STATE_CANCELLED
                         ? JobLine(job)
                         : absl::StrCat(JobLine(job), "\ncancel recorded: the job ends CANCELLED at its next check "
                                                      "(quantctl watch ", job.id(), " shows it)"));
  return kExitOk;
}

}  // namespace quantd::cli
