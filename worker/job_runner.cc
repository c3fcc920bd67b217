#include "worker/job_runner.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/status_macros.h"

namespace quantd::worker {
namespace {

// Tries at recording a job's outcome when the store fails otherwise than
// "full" or "busy": about 26 s of backoff at the default 100 ms.
constexpr int kFinishRetriesOnOtherErrors = 10;
// While the server stops: about 3 s of tries in all (from 100 ms, doubling).
constexpr int kFinishRetriesWhileStopping = 5;

class RealEngine final : public QuantizationEngine {
 public:
  explicit RealEngine(ModelVetter vet_model) : vet_model_(std::move(vet_model)) {}

  absl::StatusOr<EngineOutput> Run(const engine::QuantizeOptions& options) override {
    if (vet_model_) {
      if (options.progress && !options.progress({engine::Phase::kLoading, 0, 0})) {
        return absl::CancelledError("cancelled before loading");
      }
      QUANTD_RETURN_IF_ERROR(vet_model_(options.model_path));
    }
    QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<engine::QuantizedModel> model, engine::Quantize(options));
    if (options.progress && !options.progress({engine::Phase::kStoring, 0, 0})) {
      return absl::CancelledError("cancelled before storing");
    }
    EngineOutput output;
    QUANTD_ASSIGN_OR_RETURN(output.artifact, model->SerializeArtifact());
    output.report = model->report();
    output.manifest_json = engine::ManifestJson(output.report);
    return output;
  }

 private:
  const ModelVetter vet_model_;
};

}  // namespace

std::unique_ptr<QuantizationEngine> NewRealEngine(ModelVetter vet_model) {
  return std::make_unique<RealEngine>(std::move(vet_model));
}

engine::QuantizeOptions ToQuantizeOptions(const JobSpec& spec) {
  engine::QuantizeOptions options;
  options.model_path = spec.model_path;
  options.calibration = spec.calibration;
  options.qconfig = spec.qconfig;
  options.fusion = spec.fusion;
  options.batch_size = spec.batch_size;
  options.kernel_engine = spec.kernel_engine;
  options.evaluation = spec.evaluation;
  options.evaluation_batch_size = spec.evaluation_batch_size;
  options.strict_kernels = spec.strict_kernels;
  options.quality_samples = spec.quality_samples;
  options.min_top1_agreement = spec.min_top1_agreement;
  options.min_output_sqnr_db = spec.min_output_sqnr_db;
  options.allow_low_quality = spec.allow_low_quality;
  options.accuracy_goal = spec.accuracy_goal;
  return options;
}

absl::StatusOr<EngineOutput> JobRunner::RunEngineGuarded(const engine::QuantizeOptions& options) {
  // The engine converts its own exceptions; this catch is for any engine
  // plugged in here, so that one job's failure never takes the server down.
  try {
    return engine_->Run(options);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("the quantization engine threw: ", e.what()));
  } catch (...) {
    return absl::InternalError("the quantization engine threw an unknown exception");
  }
}

absl::StatusOr<std::optional<std::string>> JobRunner::ReleaseRetrying(const Job& job) {
  // A release that fails leaves the job RUNNING with this attempt counted:
  // the next start takes it for crashed, and at the last attempt FAILs it.
  // The store being busy is often why the job is being released at all, so
  // it gets a few tries, as the outcome of a stopping server does.
  absl::Duration backoff = finish_retry_backoff_;
  absl::StatusOr<std::optional<std::string>> kept = store_->Release(job.id, job.attempt_count);
  for (int attempt = 1; attempt < kFinishRetriesWhileStopping + 1 &&
                        (kept.status().code() == absl::StatusCode::kUnavailable ||
                         kept.status().code() == absl::StatusCode::kResourceExhausted);
       ++attempt) {
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
    kept = store_->Release(job.id, job.attempt_count);
  }
  if (!kept.ok()) {
    Log(LogLevel::kWarning, "quantd: job ", job.id,
        " could not be put back in the queue (it is recovered when its lease ",
        "runs out, as a crashed attempt): ", kept.status());
  }
  return kept;
}

Job JobRunner::Run(Job job, absl::Time deadline, StopSignals* stop, absl::Duration budget) {
  // On the interval clock: a system clock set forward by an hour (a VM
  // resumed, NTP stepping) once failed every running job at once.
  const absl::Time budget_end = interval_clock_->Now() + budget;
  job.state = JobState::kRunning;
  job.phase = JobPhase::kNone;
  {
    JobEvent event;
    event.kind = JobEvent::Kind::kStateChanged;
    event.state = JobState::kRunning;
    events_->Publish(job, event);
  }

  JobResult result;
  JobPhase current = JobPhase::kNone;
  absl::Time phase_start = interval_clock_->Now();
  bool deadline_hit = false;
  bool budget_hit = false;  // the server's limit on one run, not the job's own deadline
  std::optional<std::string> cancel_requested;  // the reason, when requested through the store
  // Once the job was recovered by another process (or by this one, as a new
  // attempt), its events are that attempt's: this one's would mix in, and
  // one after the new attempt's result would reopen its closed stream.
  auto publish = [&](const JobEvent& event) {
    if (!stop->lease_lost.load()) events_->Publish(job, event);
  };

  auto enter_phase = [&](JobPhase phase) {
    const absl::Time now = interval_clock_->Now();
    if (current != JobPhase::kNone) {
      PhaseTiming timing{current, absl::ToDoubleSeconds(now - phase_start)};
      result.phase_timings.push_back(timing);
      JobEvent event;
      event.kind = JobEvent::Kind::kPhaseFinished;
      event.phase = timing;
      publish(event);
    }
    current = phase;
    phase_start = now;
    if (phase == JobPhase::kNone) return;
    job.phase = phase;
    (void)store_->SetPhase(job.id, job.attempt_count, phase);  // best effort: display only
    JobEvent event;
    event.kind = JobEvent::Kind::kPhaseStarted;
    event.phase.phase = phase;
    publish(event);
  };

  // The store keeps references (input_locator.h); the engine reads this
  // process's files. One that is not here fails the job naming its field.
  const absl::StatusOr<JobSpec> local_spec = LocalizeJobSpec(job.spec, inputs_);
  if (!local_spec.ok()) enter_phase(JobPhase::kLoading);  // where the job fails: "loading: model: ..."
  engine::QuantizeOptions options = ToQuantizeOptions(local_spec.ok() ? *local_spec : job.spec);
  options.max_batch_bytes = max_batch_bytes_;
  engine::QuantizeReport refused_report;
  options.refused_report = &refused_report;
  options.progress = [&](const engine::ProgressEvent& progress) {
    const JobPhase phase = FromEnginePhase(progress.phase);
    if (phase != current) enter_phase(phase);
    if (phase == JobPhase::kCalibrating && progress.batches_total > 0) {
      JobEvent event;
      event.kind = JobEvent::Kind::kCalibrationProgress;
      event.batches_done = progress.batches_done;
      event.batches_total = progress.batches_total;
      event.samples_done = progress.batches_done * job.spec.batch_size;
      publish(event);
    }
    if (phase == JobPhase::kTuning && progress.trial != nullptr) {
      JobEvent event;
      event.kind = JobEvent::Kind::kTrialFinished;
      event.trial = *progress.trial;
      event.batches_done = progress.batches_done;
      event.batches_total = progress.batches_total;
      publish(event);
    }
    if (stop->cancelled.load() || stop->shutting_down.load() || stop->lease_lost.load()) return false;
    // A cancel requested through the store, possibly by another server process.
    if (absl::StatusOr<std::optional<std::string>> requested = store_->CancelRequest(job.id);
        requested.ok() && requested->has_value()) {
      cancel_requested = **requested;
      return false;
    }
    const absl::Time date = clock_->Now(), elapsed = interval_clock_->Now();
    if (date > deadline || elapsed > budget_end) {
      deadline_hit = true;
      // Both may have passed by this check: blamed is the one that passed first.
      budget_hit = elapsed > budget_end && (date <= deadline || date - (elapsed - budget_end) < deadline);
      return false;
    }
    return true;
  };

  JobState final_state = JobState::kSucceeded;
  // A job whose own deadline passed before a worker got to it never starts
  // (the server-wide limit counts from the start, so only the job's own).
  const bool expired_while_queued = job.deadline.has_value() && clock_->Now() > *job.deadline;
  absl::StatusOr<EngineOutput> output =
      expired_while_queued ? absl::StatusOr<EngineOutput>(absl::CancelledError("deadline passed while queued"))
      : !local_spec.ok()   ? absl::StatusOr<EngineOutput>(local_spec.status())
                           : RunEngineGuarded(options);
  if (stop->lease_lost.load()) {
    // Recovered by another process: the store's row is its business now.
    absl::StatusOr<Job> stored = store_->Get(job.id);
    return stored.ok() ? *stored : job;
  }
  if (!output.ok() && stop->shutting_down.load() && !stop->cancelled.load() && !cancel_requested.has_value() &&
      !deadline_hit && output.status().code() == absl::StatusCode::kCancelled) {
    // Interrupted by a graceful shutdown: back to the queue for the next start.
    // An error of the job's own that came meanwhile (its deadline too) is its
    // outcome instead, and so is a cancel requested since the engine last
    // asked: it was acknowledged, so the job must not run again.
    absl::StatusOr<std::optional<std::string>> kept = ReleaseRetrying(job);
    if (!kept.ok() || !kept->has_value()) {
      job.state = JobState::kQueued;
      return job;
    }
    cancel_requested = **kept;
  }
  // What this attempt stored but does not record (storing failed halfway,
  // or the job turned out cancelled): removed once the outcome is recorded,
  // unless another job holds it.
  std::optional<std::pair<std::string, std::string>> stored_unrecorded;  // artifact id, sha256
  const char* unrecorded_why = "";
  // A cancel acknowledged here after the engine last asked: nothing stored.
  if (output.ok() && stop->cancelled.load()) output = absl::CancelledError("cancelled as the engine finished");
  if (output.ok()) {
    if (current != JobPhase::kStoring) enter_phase(JobPhase::kStoring);
    // Pinned first, so that deleting an identical job cannot remove these
    // bytes between storing them and recording the result.
    const std::string sha256 = engine::Sha256Hex(output->artifact);
    absl::Status pinned = store_->PinArtifact(job.id, job.attempt_count, ArtifactIdFor(sha256));
    // A store busy past its own timeout (another writer on a shared one, a
    // backup) or full is no reason to throw away a finished job, which may
    // be an hour of tuning: retried as Finish is, while the lease is renewed,
    // until the store answers, the server stops or the job is another's.
    absl::Duration pin_backoff = finish_retry_backoff_;
    for (int attempt = 1; (pinned.code() == absl::StatusCode::kUnavailable ||
                           pinned.code() == absl::StatusCode::kResourceExhausted) &&
                          !stop->shutting_down.load() && !stop->lease_lost.load() && !stop->cancelled.load();
         ++attempt) {
      if (attempt == 1 || attempt % 20 == 0) {
        Log(LogLevel::kWarning, "quantd: cannot pin the artifact of job ", job.id, " (retrying): ", pinned);
      }
      absl::SleepFor(pin_backoff);
      pin_backoff = std::min(pin_backoff * 2, absl::Seconds(5));
      pinned = store_->PinArtifact(job.id, job.attempt_count, ArtifactIdFor(sha256));
    }
    const bool store_busy = pinned.code() == absl::StatusCode::kUnavailable ||
                            pinned.code() == absl::StatusCode::kResourceExhausted;
    std::optional<std::string> cancelled_at_stop;
    // (Not one cancelled here: back in the queue it would run again.)
    if (store_busy && stop->shutting_down.load() && !stop->lease_lost.load() && !stop->cancelled.load()) {
      // Stopping with the store still busy: back to the queue, to run again
      // at the next start, as an interrupted job does, not FAILED for it.
      absl::StatusOr<std::optional<std::string>> kept = ReleaseRetrying(job);
      if (!kept.ok() || !kept->has_value()) {
        job.state = JobState::kQueued;
        return job;
      }
      cancelled_at_stop = **kept;  // a cancel asked meanwhile: it is the outcome
    }
    // Cancelled here while the store was busy (CancelJob could not record it
    // and told the client it was cancelled here): that is the outcome.
    if (!cancelled_at_stop.has_value() && !pinned.ok() && stop->cancelled.load()) {
      cancelled_at_stop = stop->cancel_reason;
    }
    if (cancelled_at_stop.has_value()) {
      final_state = JobState::kCancelled;
      result.error_code = absl::StatusCode::kCancelled;
      result.error_message = CancelledMessage(*cancelled_at_stop);
    } else if (absl::StatusOr<StoredArtifact> stored =
                   pinned.ok() ? artifacts_->Put(job.id, output->artifact, output->manifest_json)
                               : absl::StatusOr<StoredArtifact>(pinned);
               stored.ok()) {
      result.report = std::move(output->report);
      // What the engine wrote about its inputs names this replica's files
      // ("/data/blobs/<sha> (2000 labelled images)"): the client's
      // references instead, as in errors.
      if (local_spec.ok()) {
        auto refer = [&](std::string& text) { text = ReferToInputs(text, job.spec, *local_spec); };
        if (result.report.tuning.has_value()) refer(result.report.tuning->judged_on);
        for (std::string& advice : result.report.advice) refer(advice);
        for (std::string& warning : result.report.warnings) refer(warning);
      }
      result.artifact_sha256 = stored->sha256;
      result.artifact_size_bytes = stored->size_bytes;
      result.artifact_id = ArtifactIdFor(stored->sha256);
    } else {
      final_state = JobState::kFailed;
      result.error_code = stored.status().code();
      result.error_message = absl::StrCat("storing the artifact failed: ", stored.status().message());
      // Files renamed into place before the failure (a folder sync that
      // failed after the rename) would stay, counted against the quota.
      if (pinned.ok()) {
        stored_unrecorded.emplace(ArtifactIdFor(sha256), sha256);
        unrecorded_why = "failed storing its artifact";
      }
    }
  } else if ((stop->cancelled.load() || cancel_requested.has_value()) &&
             output.status().code() == absl::StatusCode::kCancelled) {
    final_state = JobState::kCancelled;
    result.error_code = absl::StatusCode::kCancelled;
    const std::string reason = stop->cancelled.load() ? stop->cancel_reason : *cancel_requested;
    result.error_message = CancelledMessage(reason);
  } else if (expired_while_queued) {
    final_state = JobState::kCancelled;
    result.error_code = absl::StatusCode::kDeadlineExceeded;
    result.error_message = "the job's deadline passed while it was queued";
  } else if (deadline_hit) {
    final_state = JobState::kFailed;
    result.error_code = absl::StatusCode::kDeadlineExceeded;
    // Which limit: the client's to change, or the operator's.
    result.error_message =
        budget_hit ? absl::StrCat("the server's limit on one run of a job (", absl::FormatDuration(budget),
                                  ", quantd --job_deadline_seconds) passed during ", JobPhaseName(current))
                   : absl::StrCat("the job's deadline (", absl::FormatTime(deadline, absl::UTCTimeZone()),
                                  ", its request's deadline) passed during ", JobPhaseName(current));
  } else {
    final_state = JobState::kFailed;
    result.error_code = output.status().code();
    if (result.error_code == absl::StatusCode::kOk) result.error_code = absl::StatusCode::kUnknown;
    result.error_message = absl::StrCat(
        JobPhaseName(current), ": ",
        local_spec.ok() ? ReferToInputs(output.status().message(), job.spec, *local_spec) : output.status().message());
    // Refused by the quality gate: what was measured stays in the result
    // (it once said 0 calibration samples and no layers).
    if (!refused_report.quality.message.empty() && !refused_report.quality.passed) {
      result.report = std::move(refused_report);
      if (local_spec.ok()) {
        for (std::string& advice : result.report.advice) advice = ReferToInputs(advice, job.spec, *local_spec);
        for (std::string& warning : result.report.warnings) warning = ReferToInputs(warning, job.spec, *local_spec);
      }
    }
  }
  enter_phase(JobPhase::kNone);

  const absl::Time now = clock_->Now();
  auto cancel_instead = [&](const std::string& reason) {
    stored_unrecorded.emplace(result.artifact_id, result.artifact_sha256);
    unrecorded_why = "was cancelled as it finished";
    final_state = JobState::kCancelled;
    result = JobResult();
    result.error_code = absl::StatusCode::kCancelled;
    result.error_message = CancelledMessage(reason);
  };
  auto record = [&]() {
    // Cancelled here after the engine returned, by a CancelJob the store
    // did not record (it told the client the job was cancelled here): the
    // store has no cancel row to refuse the success with.
    if (final_state == JobState::kSucceeded && stop->cancelled.load()) cancel_instead(stop->cancel_reason);
    absl::Status recorded = store_->Finish(job.id, job.attempt_count, final_state, result, now);
    if (recorded.code() != absl::StatusCode::kAborted || final_state != JobState::kSucceeded) return recorded;
    // A cancel acknowledged (through the store, maybe by another replica)
    // while the artifact was stored: it is the outcome, as the client was told.
    absl::StatusOr<std::optional<std::string>> reason = store_->CancelRequest(job.id);
    if (!reason.ok()) return reason.status();
    cancel_instead(reason->value_or("cancelled"));
    return store_->Finish(job.id, job.attempt_count, final_state, result, now);
  };
  absl::Status finished = record();
  // A store that cannot write (a full disk) would leave the job RUNNING with
  // nobody running it: retry until the outcome is recorded. While the server
  // stops, a few quick tries only: what is still unrecorded then is re-queued
  // by the next start and run again from the start, its artifact swept. Real
  // time: this waits for space, not for a test.
  // Other errors (a corrupt or read-only store) may never pass: after a few
  // tries the runner lets go, and its lease, no longer renewed, runs out and
  // the job is recovered like a crashed one, instead of this worker waiting
  // forever with the job RUNNING.
  absl::Duration backoff = finish_retry_backoff_;
  auto worth_retrying = [&](int attempt) {
    if (finished.ok() || finished.code() == absl::StatusCode::kFailedPrecondition) return false;
    if (stop->shutting_down.load()) return attempt <= kFinishRetriesWhileStopping;
    const bool transient = finished.code() == absl::StatusCode::kResourceExhausted ||
                           finished.code() == absl::StatusCode::kUnavailable;
    return transient || attempt <= kFinishRetriesOnOtherErrors;
  };
  for (int attempt = 1; worth_retrying(attempt); ++attempt) {
    if (attempt == 1 || attempt % 20 == 0) {
      Log(LogLevel::kWarning, "quantd: cannot record the outcome of job ", job.id, " (retrying): ", finished);
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
    finished = record();
  }
  if (!finished.ok() && finished.code() != absl::StatusCode::kFailedPrecondition && !stop->shutting_down.load()) {
    Log(LogLevel::kError, "quantd: giving up recording the outcome of job ", job.id,
        " (recovered when its lease runs out): ", finished);
  }
  // An artifact this attempt stored that no job records goes unless a job
  // holds it: one that stores the same bytes pins them first, under the same
  // lock. Held by others, only this job's manifest goes (unless this job,
  // run again by another worker, holds it itself).
  auto remove_unless_held = [&](const std::string& artifact_id, const std::string& sha256, const char* why) {
    const absl::Status released = store_->WithArtifactLocked(
        artifact_id, [&](const std::vector<std::string>& holders) {
          if (holders.empty()) return artifacts_->Remove(sha256);
          if (std::find(holders.begin(), holders.end(), job.id) != holders.end()) return absl::OkStatus();
          return artifacts_->RemoveManifest(sha256, job.id);
        });
    if (!released.ok()) {
      // Only what this attempt added: the bytes when no job holds them,
      // else just this job's manifest (held bytes are never at stake).
      Log(LogLevel::kWarning, "quantd: job ", job.id, " attempt ", job.attempt_count, " ", why,
          "; what it added to artifact ", artifact_id, " (its manifest, and the bytes unless another job holds them) "
          "is left for the next sweep: ", released);
    }
  };
  if (finished.ok() && stored_unrecorded.has_value() && !stored_unrecorded->first.empty()) {
    remove_unless_held(stored_unrecorded->first, stored_unrecorded->second, unrecorded_why);
  }
  if (!finished.ok()) {
    // Someone else owns the job now (recovered after the lease ran out).
    const auto [artifact_id, sha256] =
        stored_unrecorded.value_or(std::make_pair(result.artifact_id, result.artifact_sha256));
    if (finished.code() == absl::StatusCode::kFailedPrecondition && !artifact_id.empty()) {
      remove_unless_held(artifact_id, sha256, "lost its lease");
    }
    // Report what is stored.
    absl::StatusOr<Job> stored = store_->Get(job.id);
    return stored.ok() ? *stored : job;
  }
  job.state = final_state;
  job.finish_time = now;
  job.result = result;
  // As stored: a published version's name and number are the store's.
  if (absl::StatusOr<Job> stored = store_->Get(job.id); stored.ok() && stored->result.has_value()) {
    job = *std::move(stored);
  }
  events_->PublishOutcome(job);
  return job;
}

}  // namespace quantd::worker
