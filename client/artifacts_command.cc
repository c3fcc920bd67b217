// quantctl artifacts [ID] [--job=JOB_ID]: ListArtifacts, or GetArtifact.

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunArtifacts(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(args, {"job", "page_size", "page_token"}, &error);
  if (a.has_value()) error = PositionalCountError(*a, 0, 1, "ARTIFACT_ID");
  // Empty, the filter would be off: every artifact listed as the job's.
  if (error.empty() && a->Has("job") && a->Get("job").empty()) {
    error = "--job is empty (an unset variable?); leave the flag out for every job's artifacts";
  }
  uint32_t page_size = 0;
  if (error.empty() && a->Has("page_size") && !absl::SimpleAtoi(a->Get("page_size"), &page_size)) {
    error = absl::StrCat("--page_size: \"", a->Get("page_size"), "\" is not a count (0 = the server's default)");
  }
  if (!error.empty()) {
    return context.UsageError(absl::StrCat(
        "artifacts: ", error,
        "\nusage: artifacts [ARTIFACT_ID] [--job=JOB_ID] [--page_size=N] [--page_token=T]"));
  }
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  if (a->positional.size() == 1) {
    v1::GetArtifactRequest request;
    request.set_id(a->positional[0]);
    v1::Artifact artifact;
    grpc::Status status = stub->GetArtifact(&client_context, request, &artifact);
    if (!status.ok()) return context.RpcFailed("get artifact", status);
    context.Print(artifact, ArtifactText(artifact));
    return kExitOk;
  }
  v1::ListArtifactsRequest request;
  request.set_job_id(a->Get("job"));
  request.set_page_size(page_size);
  request.set_page_token(a->Get("page_token"));
  v1::ListArtifactsResponse response;
  grpc::Status status = stub->ListArtifacts(&client_context, request, &response);
  if (!status.ok()) return context.RpcFailed("list artifacts", status);
  std::string text;
  for (const v1::Artifact& artifact : response.artifacts()) absl::StrAppend(&text, ArtifactText(artifact), "\n");
  // Without it a text user could never see past the first page.
  if (!response.next_page_token().empty()) {
    absl::StrAppend(&text, "next page: --page_token=", response.next_page_token(), "\n");
  }
  if (!text.empty()) text.pop_back();
  if (text.empty()) {
    text = request.job_id().empty() ? "no artifacts" : absl::StrCat("no artifacts of job ", request.job_id());
  }
  context.Print(response, text);
  return kExitOk;
}

}  // namespace quantd::cli
