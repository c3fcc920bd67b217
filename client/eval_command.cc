// quantctl eval NAME[:VERSION] --data=PATH ...: Evaluate, then GetEvaluation
// until it ends, with a live progress line on a terminal; prints the report
// as tables (the confusion matrix as a grid) or, with --json, the message.

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/job_format.h"

namespace quantd::cli {
namespace {

constexpr char kUsage[] =
    "usage: eval NAME[:VERSION] (--data=PATH | --data_blob=ID) [--data_format=cifar10|npy] "
    "[--data_labels=PATH | --data_labels_blob=ID] "
    "[--max_samples=N] [--batch_size=N] [--skip_fp32]\n"
    "       eval --id=EVALUATION_ID (follow or show one already started)";

}  // namespace

int RunEval(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(
      args, {"data", "data_blob", "data_format", "data_labels", "data_labels_blob", "max_samples", "batch_size", "id"},
      &error,
      {"skip_fp32"});
  if (a.has_value() && a->Has("id")) {
    for (const char* other : {"data", "data_blob", "data_format", "data_labels", "data_labels_blob", "max_samples",
                              "batch_size", "skip_fp32"}) {
      if (a->Has(other)) {
        error = absl::StrCat("--id follows an evaluation already started; --", other, " is not for it");
      }
    }
    if (error.empty()) error = PositionalCountError(*a, 0, 0, "");
    if (error.empty() && a->Get("id").empty()) error = "--id: an evaluation id (eval-...)";
  } else if (a.has_value()) {
    error = PositionalCountError(*a, 1, 1, "NAME[:VERSION]");
  }
  ModelTarget target;
  if (error.empty() && a.has_value() && !a->Has("id")) {
    (void)ParseModelTarget(a->positional[0], /*version_required=*/false, &target, &error);
  }
  if (!error.empty()) {
    return context.UsageError(absl::StrCat("eval: ", error, "\n", kUsage));
  }
  if (a->Has("id")) {
    auto stub = v1::QuantizationService::NewStub(context.channel);
    v1::Evaluation evaluation;
    grpc::ClientContext call;
    context.PrepareCall(call);
    v1::GetEvaluationRequest get;
    get.set_id(a->Get("id"));
    grpc::Status status = stub->GetEvaluation(&call, get, &evaluation);
    if (!status.ok()) return context.RpcFailed("get evaluation", status);
    return FollowEvaluation(context, *stub, std::move(evaluation), absl::Minutes(5));
  }
  v1::EvaluateRequest request;
  request.set_model_name(target.name);
  request.set_model_version(target.version);
  if (!a->Has("data") && !a->Has("data_blob")) {
    return context.UsageError(absl::StrCat("eval: --data or --data_blob required\n", kUsage));
  }
  if (!SetDataset(*a, "data", request.mutable_dataset(), &error)) return context.UsageError("eval: " + error);
  if (a->Has("max_samples")) {
    uint32_t value = 0;  // 0: all of them
    if (!absl::SimpleAtoi(a->Get("max_samples"), &value)) {
      return context.UsageError(absl::StrCat("eval: --max_samples: \"", a->Get("max_samples"), "\" is not a count"));
    }
    request.set_max_samples(value);
  }
  if (a->Has("batch_size")) {
    constexpr uint32_t kMaxEvaluationBatch = 4096;  // the server's limit for Evaluate
    uint32_t value = 0;
    if (!absl::SimpleAtoi(a->Get("batch_size"), &value) || value == 0 || value > kMaxEvaluationBatch) {
      return context.UsageError(absl::StrCat("eval: --batch_size: a number in 1..", kMaxEvaluationBatch,
                                             " expected, got \"", a->Get("batch_size"), "\""));
    }
    request.set_batch_size(value);
  }
  request.set_skip_fp32(a->IsOn("skip_fp32"));

  auto stub = v1::QuantizationService::NewStub(context.channel);
  v1::Evaluation evaluation;
  {
    grpc::ClientContext call;
    context.PrepareCall(call);
    grpc::Status status = stub->Evaluate(&call, request, &evaluation);
    if (!status.ok()) return context.RpcFailed("evaluate", status);
  }
  return FollowEvaluation(context, *stub, std::move(evaluation), absl::Minutes(5));
}

}  // namespace quantd::cli
