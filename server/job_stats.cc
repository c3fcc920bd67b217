#include "server/job_stats.h"

#include <cstdint>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/time/time.h"
#include "worker/evaluation.h"

namespace quantd {
namespace {

// From 10 ms (fusing a small model) to 1 h (calibrating a large one).
prometheus::Histogram::BucketBoundaries PhaseBuckets() {
  return {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
}

std::string Lower(const char* name) { return absl::AsciiStrToLower(name); }

}  // namespace

JobStats::JobStats(prometheus::Registry& registry)
    : finished_(prometheus::BuildCounter()
                    .Name("quantd_jobs_finished_total")
                    .Help("Quantization jobs this process finished, by final state (succeeded, failed, cancelled).")
                    .Register(registry)),
      phase_seconds_(prometheus::BuildHistogram()
                         .Name("quantd_job_phase_duration_seconds")
                         .Help("Duration of each phase of the jobs this process ran, by phase.")
                         .Register(registry)),
      jobs_(prometheus::BuildGauge()
                .Name("quantd_jobs")
                .Help("Jobs in the job store by state (shared by every replica on the store: aggregate with max).")
                .Register(registry)),
      accuracy_(prometheus::BuildGauge()
                    .Name("quantd_model_accuracy_ratio")
                    .Help("Top-1 accuracy of each published model version, by precision (int8, fp32), both "
                          "from one measurement: its newest Evaluate that measured both, else its job's "
                          "evaluation.")
                    .Register(registry)),
      accuracy_samples_(prometheus::BuildGauge()
                            .Name("quantd_model_accuracy_samples")
                            .Help("How many labelled samples quantd_model_accuracy_ratio of each published "
                                  "model version was measured on.")
                            .Register(registry)),
      submitted_(prometheus::BuildCounter()
                     .Name("quantd_jobs_submitted_total")
                     .Help("Quantization jobs created through this process (idempotent repeats not counted).")
                     .Register(registry)
                     .Add({})),
      calibration_samples_(prometheus::BuildCounter()
                               .Name("quantd_calibration_samples_total")
                               .Help("Calibration samples (images) the jobs of this process ran through observers.")
                               .Register(registry)
                               .Add({})),
      tuning_trials_(prometheus::BuildCounter()
                         .Name("quantd_tuning_trials_total")
                         .Help("Accuracy-aware tuning trials the jobs of this process ran, by stage (estimator, "
                               "sensitivity, fallback) and outcome (meets_goal, short, failed).")
                         .Register(registry)),
      data_dir_bytes_(prometheus::BuildGauge()
                          .Name("quantd_data_dir_bytes")
                          .Help("Bytes in regular files under --data_dir (job store, artifacts, blobs).")
                          .Register(registry)
                          .Add({})),
      data_dir_limit_bytes_(prometheus::BuildGauge()
                                .Name("quantd_data_dir_limit_bytes")
                                .Help("--max_data_bytes: what quantd_data_dir_bytes may reach before uploads, "
                                      "artifacts and submits are refused (RESOURCE_EXHAUSTED); 0 = no limit.")
                                .Register(registry)
                                .Add({})),
      recovered_(prometheus::BuildCounter()
                     .Name("quantd_jobs_recovered_total")
                     .Help("Interrupted jobs this process recovered (its own after a restart, or any whose lease ran "
                           "out), by outcome: requeued, failed after their last attempt, or cancelled (a cancel was "
                           "requested before the interruption).")
                     .Register(registry)),
      recovered_requeued_(recovered_.Add({{"outcome", "requeued"}})),
      recovered_failed_(recovered_.Add({{"outcome", "failed"}})),
      recovered_cancelled_(recovered_.Add({{"outcome", "cancelled"}})),
      evaluations_finished_(prometheus::BuildCounter()
                                .Name("quantd_evaluations_finished_total")
                                .Help("Evaluations (Evaluate) this process ran to an end, by final state "
                                      "(succeeded, failed, cancelled).")
                                .Register(registry)) {
  for (const char* state : {"succeeded", "failed", "cancelled"}) evaluations_finished_.Add({{"state", state}});
  // Every state and final state exists from the start: a rate over a series
  // that appears only with its first failure would miss that failure.
  for (worker::JobState state : {worker::JobState::kSucceeded, worker::JobState::kFailed,
                                 worker::JobState::kCancelled}) {
    finished_.Add({{"state", Lower(worker::JobStateName(state))}});
  }
  for (const char* stage : {"estimator", "sensitivity", "fallback"}) {
    for (const char* outcome : {"meets_goal", "short", "failed"}) tuning_trials_.Add({{"stage", stage}, {"outcome", outcome}});
  }
  for (worker::JobState state : {worker::JobState::kQueued, worker::JobState::kRunning, worker::JobState::kSucceeded,
                                 worker::JobState::kFailed, worker::JobState::kCancelled}) {
    jobs_.Add({{"state", Lower(worker::JobStateName(state))}});
  }
}

void JobStats::OnJobEvent(const worker::JobEvent& event) {
  switch (event.kind) {
    case worker::JobEvent::Kind::kSubmitted:
      submitted_.Increment();
      break;
    case worker::JobEvent::Kind::kStateChanged:
      if (event.state == worker::JobState::kSucceeded || event.state == worker::JobState::kFailed ||
          event.state == worker::JobState::kCancelled) {
        finished_.Add({{"state", Lower(worker::JobStateName(event.state))}}).Increment();
      }
      break;
    case worker::JobEvent::Kind::kPhaseFinished:
      phase_seconds_.Add({{"phase", Lower(worker::JobPhaseName(event.phase.phase))}}, PhaseBuckets())
          .Observe(event.phase.seconds);
      break;
    case worker::JobEvent::Kind::kCalibrationProgress: {
      absl::MutexLock lock(&mu_);
      int64_t& seen = calibrated_[event.job_id];
      // A new attempt counts from 0 again.
      const int64_t added = event.samples_done >= seen ? event.samples_done - seen : event.samples_done;
      seen = event.samples_done;
      calibration_samples_.Increment(static_cast<double>(added));
      break;
    }
    case worker::JobEvent::Kind::kTrialFinished: {
      const char* outcome = !event.trial.error.empty() ? "failed" : event.trial.meets_goal ? "meets_goal" : "short";
      tuning_trials_.Add({{"stage", event.trial.stage}, {"outcome", outcome}}).Increment();
      break;
    }
    case worker::JobEvent::Kind::kResult: {
      absl::MutexLock lock(&mu_);
      calibrated_.erase(event.job_id);
      break;
    }
    default:
      break;
  }
}

void JobStats::CountEvaluationFinished(absl::string_view state) {
  evaluations_finished_.Add({{"state", absl::AsciiStrToLower(state)}}).Increment();
}

void JobStats::CountRecovered(const worker::JobStore::RecoveryCounts& total) {
  absl::MutexLock lock(&mu_);
  const int requeued = total.requeued - recovered_counted_.requeued;
  const int failed = total.failed - recovered_counted_.failed;
  const int cancelled = total.cancelled - recovered_counted_.cancelled;
  if (requeued > 0) recovered_requeued_.Increment(requeued);
  // No runner reports these: the finished counts (and the job failure ratio)
  // must see them.
  if (failed > 0) {
    recovered_failed_.Increment(failed);
    finished_.Add({{"state", Lower(worker::JobStateName(worker::JobState::kFailed))}}).Increment(failed);
  }
  if (cancelled > 0) {
    recovered_cancelled_.Increment(cancelled);
    finished_.Add({{"state", Lower(worker::JobStateName(worker::JobState::kCancelled))}}).Increment(cancelled);
  }
  recovered_counted_ = total;
}

void JobStats::Refresh(worker::JobStore& jobs, const worker::DataQuota* quota) {
  if (absl::StatusOr<std::map<worker::JobState, int64_t>> counts = jobs.CountByState(); counts.ok()) {
    for (worker::JobState state : {worker::JobState::kQueued, worker::JobState::kRunning,
                                   worker::JobState::kSucceeded, worker::JobState::kFailed,
                                   worker::JobState::kCancelled}) {
      auto it = counts->find(state);
      jobs_.Add({{"state", Lower(worker::JobStateName(state))}})
          .Set(it == counts->end() ? 0.0 : static_cast<double>(it->second));
    }
  }
  if (quota != nullptr) {
    if (absl::StatusOr<int64_t> used = quota->UsedBytes(); used.ok()) data_dir_bytes_.Set(static_cast<double>(*used));
    data_dir_limit_bytes_.Set(static_cast<double>(quota->max_bytes()));
  }
  absl::StatusOr<std::vector<worker::ModelVersion>> versions = jobs.ListModelVersions("");
  if (!versions.ok()) return;
  // Each version's int8 and FP32 figures come from one measurement, on one
  // dataset: its newest Evaluate that measured both (version numbers are
  // never used again, so none is another version's), else its job's own
  // evaluation. (Each precision once followed its own newest Evaluate, so
  // an int8-only one on 20 images against the job's FP32 on 10000 showed a
  // drop that no measurement had seen.)
  struct Measured {
    double int8 = 0;
    std::optional<double> fp32;
    int64_t samples = 0;
    absl::Time finished = absl::InfinitePast();
  };
  std::map<std::pair<std::string, int64_t>, Measured> evaluated;
  if (absl::StatusOr<std::vector<std::string>> latest = jobs.LatestEvaluations(); latest.ok()) {
    for (const std::string& record : *latest) {
      absl::StatusOr<worker::Evaluation> e = worker::DecodeEvaluation(record);
      if (!e.ok() || !e->report.has_value() || e->report->samples <= 0 || !e->report->fp32.has_value()) continue;
      const absl::Time finished = e->finish_time.value_or(e->update_time);
      Measured& slot = evaluated[{e->spec.model_name, e->spec.model_version}];
      if (finished < slot.finished) continue;
      const double samples = static_cast<double>(e->report->samples);
      slot.int8 = static_cast<double>(e->report->int8.top1_correct) / samples;
      slot.fp32 = static_cast<double>(e->report->fp32->top1_correct) / samples;
      slot.samples = e->report->samples;
      slot.finished = finished;
    }
  }
  std::map<std::tuple<std::string, std::string, std::string>, double> now;
  std::map<std::tuple<std::string, std::string, std::string>, double> samples_now;  // precision ""
  for (const worker::ModelVersion& v : *versions) {
    const std::string version = std::to_string(v.version);
    if (auto it = evaluated.find({v.name, v.version}); it != evaluated.end()) {
      now[{v.name, version, "int8"}] = it->second.int8;
      now[{v.name, version, "fp32"}] = *it->second.fp32;
      samples_now[{v.name, version, ""}] = static_cast<double>(it->second.samples);
      continue;
    }
    absl::StatusOr<worker::Job> job = jobs.Get(v.job_id);
    if (!job.ok() || !job->result.has_value()) continue;
    const engine::QuantizeReport& report = job->result->report;
    if (report.int8_accuracy.has_value()) {
      now[{v.name, version, "int8"}] = report.int8_accuracy->top1();
      samples_now[{v.name, version, ""}] = static_cast<double>(report.int8_accuracy->total);
    }
    if (report.fp32_accuracy.has_value()) now[{v.name, version, "fp32"}] = report.fp32_accuracy->top1();
  }
  absl::MutexLock lock(&mu_);
  SetGauges(accuracy_, now, {"model", "version", "precision"}, &accuracy_gauges_);
  SetGauges(accuracy_samples_, samples_now, {"model", "version", ""}, &accuracy_samples_gauges_);
}

void JobStats::SetGauges(prometheus::Family<prometheus::Gauge>& family, const GaugeValues& values,
                         const std::array<std::string, 3>& label_names, GaugeIndex* exported) {
  // Those of versions no longer published (or no longer measured) go.
  for (auto it = exported->begin(); it != exported->end();) {
    if (values.count(it->first) == 0) {
      family.Remove(it->second);
      it = exported->erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [key, value] : values) {
    prometheus::Gauge*& gauge = (*exported)[key];
    if (gauge == nullptr) {
      const auto& [a, b, c] = key;
      std::map<std::string, std::string> labels = {{label_names[0], a}, {label_names[1], b}};
      if (!label_names[2].empty()) labels[label_names[2]] = c;
      gauge = &family.Add(labels);
    }
    gauge->Set(value);
  }
}

}  // namespace quantd
