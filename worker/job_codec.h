#ifndef QUANTD_WORKER_JOB_CODEC_H_
#define QUANTD_WORKER_JOB_CODEC_H_

// JSON encodings of JobSpec and JobResult, used by job stores to keep them in
// one text column (a PostgreSQL store would use jsonb).

#include <string>

#include "absl/status/statusor.h"
#include "worker/job.h"

namespace quantd::worker {

std::string EncodeJobSpec(const JobSpec& spec);
absl::StatusOr<JobSpec> DecodeJobSpec(const std::string& json);
std::string EncodeJobResult(const JobResult& result);
absl::StatusOr<JobResult> DecodeJobResult(const std::string& json);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_JOB_CODEC_H_
