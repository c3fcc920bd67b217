#ifndef QUANTD_WORKER_JOB_H_
#define QUANTD_WORKER_JOB_H_

// A quantization job as the worker sees it: plain C++ (no protos, no gRPC).
// The server converts to and from quantd.v1 messages.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "worker/engine/data/dataset_spec.h"
#include "worker/engine/passes/fusion_spec.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/report.h"

namespace quantd::worker {

enum class JobState { kQueued = 1, kRunning = 2, kSucceeded = 3, kFailed = 4, kCancelled = 5 };
// Same numbers as quantd.v1.Phase (0 = none yet). kTuning runs between
// kCalibrating and kConverting; it came later, so it has the next number.
enum class JobPhase { kNone = 0, kLoading, kFusing, kCalibrating, kConverting, kEvaluating, kStoring, kTuning };

const char* JobStateName(JobState state);
// A cancelled job's error message for the reason CancelJob gave ("" = none).
std::string CancelledMessage(const std::string& reason);
const char* JobPhaseName(JobPhase phase);
bool IsTerminal(JobState state);
JobPhase FromEnginePhase(engine::Phase phase);
// "loading" -> kLoading ...; kNone for unknown names.
JobPhase JobPhaseFromName(const std::string& name);

// What to run, with every reference already resolved to a local file.
struct JobSpec {
  std::string model_path;
  // Non-empty: a SUCCEEDED job publishes its artifact as the next version of
  // this model name (see JobStore::Finish).
  std::string model_name;
  engine::DatasetSpec calibration;
  engine::QConfigChoice qconfig;
  std::string kernel_engine;
  engine::FusionSpec fusion;
  int64_t batch_size = 100;
  std::optional<engine::DatasetSpec> evaluation;
  int64_t evaluation_batch_size = 256;
  bool strict_kernels = false;
  // The quality gate (see engine::QuantizeOptions).
  int64_t quality_samples = engine::QuantizeOptions().quality_samples;
  double min_top1_agreement = engine::QuantizeOptions().min_top1_agreement;
  double min_output_sqnr_db = engine::QuantizeOptions().min_output_sqnr_db;
  bool allow_low_quality = false;
  // Accuracy-aware mode (see engine::AccuracyGoal).
  std::optional<engine::AccuracyGoal> accuracy_goal;
};

struct PhaseTiming {
  JobPhase phase = JobPhase::kNone;
  double seconds = 0;
};

struct JobResult {
  std::string artifact_id;
  std::string artifact_sha256;
  int64_t artifact_size_bytes = 0;
  // The engine's report (fused groups, fallbacks, layers, accuracies, ...).
  engine::QuantizeReport report;
  std::vector<PhaseTiming> phase_timings;
  // The model version this job published (set by JobStore::Finish); 0 = none.
  std::string model_name;
  int64_t model_version = 0;
  // Read from the store, never stored: the version was deleted since.
  bool model_version_deleted = false;
  absl::StatusCode error_code = absl::StatusCode::kOk;
  std::string error_message;
};

struct Job {
  std::string id;
  JobState state = JobState::kQueued;
  JobPhase phase = JobPhase::kNone;
  absl::Time create_time = absl::InfinitePast();
  std::optional<absl::Time> start_time;
  std::optional<absl::Time> finish_time;
  // Absolute deadline from the request (none = no client deadline).
  std::optional<absl::Time> deadline;
  JobSpec spec;
  // The request as the client sent it, opaque to the worker (the server
  // stores its serialized proto here and echoes it back).
  std::string request_echo;
  // Client idempotency key ("" = none) and a fingerprint of the request it
  // came with, to tell a retry from a different request.
  std::string idempotency_key;
  std::string request_fingerprint;
  uint32_t attempt_count = 0;
  std::optional<JobResult> result;  // set once the job has finished
  // Who submitted it (the token's name; "anonymous" without auth; "" for
  // jobs stored before owners were kept).
  std::string owner;
};

// A published model version: a name's versions count from 1 and are never
// reused, also after a version is deleted.
struct ModelVersion {
  std::string name;
  int64_t version = 0;
  std::string job_id;
  absl::Time create_time = absl::InfinitePast();
};

// Model names: 1-64 of [a-z0-9_-], starting with a letter or digit (they
// appear in URLs and metric labels). `field` names the request field.
absl::Status ValidateModelName(const std::string& name, const std::string& field);

// "art-" + the first 16 hex digits of the artifact's sha256.
std::string ArtifactIdFor(const std::string& sha256);
// "<prefix>-<12 hex digits of ms since the epoch><8 random hex digits>":
// unique, and ordered by creation time (job and evaluation ids).
std::string NewTimeOrderedId(const std::string& prefix, absl::Time now);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_JOB_H_
