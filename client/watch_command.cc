// quantctl watch ID: streams a job's events until it ends.

#include "absl/strings/match.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunWatch(const CommandContext& context, const std::vector<std::string>& args) {
  if (args.size() != 1 || absl::StartsWith(args[0], "--")) return context.UsageError("usage: watch JOB_ID");
  return FollowJob(context, args[0]);
}

}  // namespace quantd::cli
