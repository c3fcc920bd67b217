#ifndef QUANTD_WORKER_JOB_RUNNER_H_
#define QUANTD_WORKER_JOB_RUNNER_H_

// Runs one claimed job through the engine: maps engine progress to job
// events and phases, stops at the next batch boundary when cancelled or past
// its deadline, stores the artifact (STORING) and records the outcome.

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/artifact_store.h"
#include "worker/clock.h"
#include "worker/engine/quantizer.h"
#include "worker/input_locator.h"
#include "worker/job.h"
#include "worker/job_events.h"
#include "worker/job_store.h"

namespace quantd::worker {

// What the engine hands back for a successful run.
struct EngineOutput {
  engine::QuantizeReport report;
  std::string artifact;
  std::string manifest_json;
};

// The engine behind an interface, so worker tests can use a fake.
class QuantizationEngine {
 public:
  virtual ~QuantizationEngine() = default;
  virtual absl::StatusOr<EngineOutput> Run(const engine::QuantizeOptions& options) = 0;
};

// Decides whether the model at a path may be loaded in this process (see
// model_vetter.h); a non-OK status fails the job with it.
using ModelVetter = std::function<absl::Status(const std::string& model_path)>;

// engine::Quantize + SerializeArtifact + ManifestJson. With `vet_model`, a
// job's model is vetted before the engine loads it.
std::unique_ptr<QuantizationEngine> NewRealEngine(ModelVetter vet_model = nullptr);

// Why a run should stop early.
struct StopSignals {
  std::atomic<bool> cancelled{false};
  std::string cancel_reason;  // set before `cancelled`
  std::atomic<bool> shutting_down{false};
  // The job's lease ran out and another process may run it now: stop and
  // record nothing.
  std::atomic<bool> lease_lost{false};
};

class JobRunner {
 public:
  // `clock` gives dates (stored times, a job's own deadline); durations
  // (the run's budget, phase timings) are measured on `interval_clock`,
  // which never jumps when the system time is set (null: `clock`).
  JobRunner(JobStore* store, ArtifactStore* artifacts, QuantizationEngine* engine,
            JobEventHub* events, Clock* clock, int64_t max_batch_bytes = 0,
            absl::Duration finish_retry_backoff = absl::Milliseconds(100), const InputLocator* inputs = nullptr,
            Clock* interval_clock = nullptr)
      : store_(store), artifacts_(artifacts), engine_(engine), events_(events), clock_(clock),
        interval_clock_(interval_clock != nullptr ? interval_clock : clock), max_batch_bytes_(max_batch_bytes),
        finish_retry_backoff_(finish_retry_backoff), inputs_(inputs) {}

  // `job` has just been claimed (RUNNING). `deadline` is a date (the job's
  // own; InfiniteFuture = none), `budget` the longest this run may take
  // (InfiniteDuration = no limit). Returns the job as recorded at the end.
  Job Run(Job job, absl::Time deadline, StopSignals* stop, absl::Duration budget = absl::InfiniteDuration());

 private:
  absl::StatusOr<EngineOutput> RunEngineGuarded(const engine::QuantizeOptions& options);
  // JobStore::Release, retried a few times while the store is busy.
  absl::StatusOr<std::optional<std::string>> ReleaseRetrying(const Job& job);
  JobStore* const store_;
  ArtifactStore* const artifacts_;
  QuantizationEngine* const engine_;
  JobEventHub* const events_;
  Clock* const clock_;
  Clock* const interval_clock_;
  const int64_t max_batch_bytes_;
  // First wait before recording a job's outcome again (doubling, up to 5 s).
  const absl::Duration finish_retry_backoff_;
  // Resolves the spec's input references to this process's files (see
  // LocalizeJobSpec for null).
  const InputLocator* const inputs_;
};

engine::QuantizeOptions ToQuantizeOptions(const JobSpec& spec);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_JOB_RUNNER_H_
