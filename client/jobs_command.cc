// quantctl jobs: ListJobs, newest first.

#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunJobs(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(args, {"state", "page_size", "page_token"}, &error);
  if (a.has_value()) error = PositionalCountError(*a, 0, 0, "");
  if (!error.empty()) {
    return context.UsageError(absl::StrCat("jobs: ", error,
                                           "\nusage: jobs [--state=queued,running,...] [--page_size=N] [--page_token=T]"));
  }
  v1::ListJobsRequest request;
  const std::string state_list = a->Get("state");
  const std::vector<absl::string_view> states = absl::StrSplit(state_list, ',', absl::SkipEmpty());
  if (a->Has("state") && states.empty()) {
    // Given empty (an unset variable), it would list every job.
    return context.UsageError("jobs: --state: no state given (queued, running, succeeded, failed or cancelled)");
  }
  for (absl::string_view s : states) {
    std::string name = absl::StrCat("JOB_STATE_", s);
    for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    v1::JobState state;
    if (!v1::JobState_Parse(name, &state) || state == v1::JOB_STATE_UNSPECIFIED) {
      return context.UsageError(absl::StrCat("jobs: --state: unknown state \"", s,
                                             "\" (queued, running, succeeded, failed or cancelled)"));
    }
    request.add_states(state);
  }
  uint32_t page_size = 0;
  if (a->Has("page_size") && !absl::SimpleAtoi(a->Get("page_size"), &page_size)) {
    return context.UsageError(
        absl::StrCat("jobs: --page_size: \"", a->Get("page_size"), "\" is not a count (0 = the server's default)"));
  }
  request.set_page_size(page_size);
  request.set_page_token(a->Get("page_token"));
  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  v1::ListJobsResponse response;
  grpc::Status status = stub->ListJobs(&client_context, request, &response);
  if (!status.ok()) return context.RpcFailed("list jobs", status);
  std::string text;
  for (const v1::Job& job : response.jobs()) absl::StrAppend(&text, JobLine(job), "\n");
  if (!response.next_page_token().empty()) absl::StrAppend(&text, "next page: --page_token=", response.next_page_token(), "\n");
  if (!text.empty()) text.pop_back();
  if (text.empty()) text = request.states().empty() ? "no jobs" : absl::StrCat("no jobs in state ", a->Get("state"));
  context.Print(response, text);
  return kExitOk;
}

}  // namespace quantd::cli
