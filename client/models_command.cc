// quantctl models [NAME] | models delete NAME:VERSION: ListModels, DeleteModelVersion.

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "client/job_format.h"

namespace quantd::cli {
namespace {

std::string AccuracyText(const v1::Accuracy& a) {
  if (a.total() == 0) return "-";
  return absl::StrFormat("%.2f%% (%d/%d)", 100.0 * static_cast<double>(a.correct()) / static_cast<double>(a.total()),
                         a.correct(), a.total());
}

}  // namespace

int RunModels(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(args, {}, &error);
  const bool deleting = a.has_value() && !a->positional.empty() && a->positional[0] == "delete";
  if (a.has_value()) {
    // NAME:VERSION as eval and infer take it; NAME VERSION as before.
    error = deleting ? PositionalCountError(*a, 2, 3, "delete NAME:VERSION") : PositionalCountError(*a, 0, 1, "NAME");
  }
  if (!error.empty()) {
    return context.UsageError(absl::StrCat("models: ", error, "\nusage: models [NAME] | models delete NAME:VERSION"));
  }
  v1::DeleteModelVersionRequest deletion;
  uint64_t version = 0;
  if (deleting) {  // checked before any connection is made
    const std::string given =
        a->positional.size() == 3 ? absl::StrCat(a->positional[1], ":", a->positional[2]) : a->positional[1];
    ModelTarget target;
    if (!ParseModelTarget(given, /*version_required=*/true, &target, &error) ||
        !absl::SimpleAtoi(target.version, &version)) {
      return context.UsageError(absl::StrCat("models delete: ", error));
    }
    deletion.set_name(target.name);
    deletion.set_version(version);
  }
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  if (deleting) {
    v1::DeleteModelVersionResponse response;
    grpc::Status status = stub->DeleteModelVersion(&client_context, deletion, &response);
    if (!status.ok()) return context.RpcFailed("delete model version", status);
    context.Print(response, absl::StrCat("unpublished ", deletion.name(), " version ", version));
    return kExitOk;
  }
  v1::ListModelsRequest request;
  if (!a->positional.empty()) request.set_name(a->positional[0]);
  v1::ListModelsResponse response;
  grpc::Status status = stub->ListModels(&client_context, request, &response);
  if (!status.ok()) return context.RpcFailed("list models", status);
  if (response.versions().empty()) {
    context.Print(response, request.name().empty() ? "no published versions"
                                                   : absl::StrCat("no published versions of ", request.name()));
    return kExitOk;
  }
  std::string text = absl::StrFormat("%-20s %7s  %-24s %-21s %-20s %-20s %s", "NAME", "VERSION", "JOB", "ARTIFACT",
                                     "INT8 TOP-1", "FP32 TOP-1", "LOADED");
  for (const v1::ModelVersionInfo& v : response.versions()) {
    absl::StrAppend(&text, "\n",
                    absl::StrFormat("%-20s %7d  %-24s %-21s %-20s %-20s %s", v.name(), v.version(), v.job_id(),
                                    v.artifact_id(), AccuracyText(v.int8_accuracy()),
                                    AccuracyText(v.fp32_accuracy()), v.loaded() ? "yes" : "no"));
    // The columns are the job's own figures; a later Evaluate goes below.
    if (v.has_last_evaluation()) {
      const v1::EvaluationSummary& e = v.last_evaluation();
      absl::StrAppend(&text, "\n", std::string(30, ' '), "last evaluation ", e.evaluation_id(), ": int8 ",
                      AccuracyText(e.int8_accuracy()),
                      e.has_fp32_accuracy() ? absl::StrCat(", fp32 ", AccuracyText(e.fp32_accuracy())) : "");
    }
  }
  context.Print(response, text);
  return kExitOk;
}

}  // namespace quantd::cli
