#include "worker/job.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace quantd::worker {

std::string CancelledMessage(const std::string& reason) {
  return reason.empty() ? std::string("cancelled by CancelJob") : absl::StrCat("cancelled: ", reason);
}

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued: return "QUEUED";
    case JobState::kRunning: return "RUNNING";
    case JobState::kSucceeded: return "SUCCEEDED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCancelled: return "CANCELLED";
  }
  return "UNKNOWN";
}

const char* JobPhaseName(JobPhase phase) {
  switch (phase) {
    case JobPhase::kNone: return "none";
    case JobPhase::kLoading: return "loading";
    case JobPhase::kFusing: return "fusing";
    case JobPhase::kCalibrating: return "calibrating";
    case JobPhase::kTuning: return "tuning";
    case JobPhase::kConverting: return "converting";
    case JobPhase::kEvaluating: return "evaluating";
    case JobPhase::kStoring: return "storing";
  }
  return "none";
}

JobPhase JobPhaseFromName(const std::string& name) {
  for (JobPhase phase : {JobPhase::kLoading, JobPhase::kFusing, JobPhase::kCalibrating, JobPhase::kTuning,
                         JobPhase::kConverting, JobPhase::kEvaluating, JobPhase::kStoring}) {
    if (name == JobPhaseName(phase)) return phase;
  }
  return JobPhase::kNone;
}

bool IsTerminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled;
}

JobPhase FromEnginePhase(engine::Phase phase) {
  switch (phase) {
    case engine::Phase::kLoading: return JobPhase::kLoading;
    case engine::Phase::kFusing: return JobPhase::kFusing;
    case engine::Phase::kCalibrating: return JobPhase::kCalibrating;
    case engine::Phase::kTuning: return JobPhase::kTuning;
    case engine::Phase::kConverting: return JobPhase::kConverting;
    case engine::Phase::kEvaluating: return JobPhase::kEvaluating;
    case engine::Phase::kStoring: return JobPhase::kStoring;
  }
  return JobPhase::kNone;
}

std::string ArtifactIdFor(const std::string& sha256) { return "art-" + sha256.substr(0, 16); }

std::string NewTimeOrderedId(const std::string& prefix, absl::Time now) {
  static std::mt19937_64* rng = new std::mt19937_64(std::random_device{}());
  static absl::Mutex* rng_mu = new absl::Mutex();
  uint64_t random;
  {
    absl::MutexLock lock(rng_mu);
    random = (*rng)();
  }
  return absl::StrFormat("%s-%012x%08x", prefix, absl::ToUnixMillis(now), static_cast<uint32_t>(random));
}

absl::Status ValidateModelName(const std::string& name, const std::string& field) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": \"", name.substr(0, 80), "\" ", why));
  };
  if (name.empty()) return bad("is empty");
  if (name.size() > 64) return bad("is longer than 64 characters");
  // /v2/models/stats is every model's statistics (Triton's REST path).
  if (name == "stats") return bad("is reserved: /v2/models/stats lists every model's statistics");
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '_' && c != '-'))) {
      return bad("may only hold a-z, 0-9, '_' and '-', starting with a letter or digit");
    }
  }
  return absl::OkStatus();
}

}  // namespace quantd::worker
