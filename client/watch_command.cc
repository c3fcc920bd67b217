// quantctl watch ID: streams a job's events until it ends.

#include "absl/strings/str_cat.h"
#include "client/job_format.h"

namespace quantd::cli {

int RunWatch(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  const std::string id = OnlyJobId(args, &error);
  if (!error.empty()) return context.UsageError(absl::StrCat("watch: ", error, "\nusage: watch JOB_ID"));
  return FollowJob(context, id);
}

}  // namespace quantd::cli
