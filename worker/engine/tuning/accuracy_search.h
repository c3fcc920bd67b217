#ifndef QUANTD_WORKER_ENGINE_TUNING_ACCURACY_SEARCH_H_
#define QUANTD_WORKER_ENGINE_TUNING_ACCURACY_SEARCH_H_

// Accuracy-aware tuning's search, free of LibTorch: which settings to try in
// which order, when to stop, and which trial wins. The caller runs each trial
// (converts with the settings from one calibration, scores it on the tuning
// set), so the search is tested with scripted scores and a fake clock.
//
// Order: every range-estimator candidate, fully int8 (each costs one
// conversion and one pass over the tuning set); if none meets the goal, each
// int8 layer alone kept in FP32 with the best candidate (its measured
// sensitivity); then, most sensitive first, each layer added to the FP32 set
// and kept there only if the set comes closer to FP32 with it.
// After the estimators, it stops when the goal is met or a budget runs out.
// The winner is the trial that meets the goal with the fewest FP32 layers,
// then the closest to FP32, or else the closest trial.
//
// "Closest to FP32" is top-1 agreement with FP32 on the tuning images (then
// top-1, then output SQNR), not top-1 itself: on 2000 images two int8 models
// 97-98% faithful to FP32 differ in top-1 by a few images of noise, while
// agreement measures what the tolerance is about, faithfulness.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quantd::engine {

struct TrialScore {
  std::optional<double> top1;   // on the labelled tuning set (fraction); absent without labels
  double agreement = 0;         // top-1 agreement with FP32 on the same images
  double output_sqnr_db = 0;    // int8 output against FP32
  // Each layer's int8 output SQNR (same order as the search's `layers`;
  // empty or nullopt where not measured): ranks equally sensitive layers.
  std::vector<std::optional<double>> layer_sqnr_db;
};

struct TrialRequest {
  int index = 0;
  const char* stage = "";       // "estimator" | "sensitivity" | "fallback"
  int candidate = 0;            // index into the estimator candidates
  std::vector<std::string> fp32_layers;
};

struct Trial {
  int index = 0;
  std::string stage;
  int candidate = 0;
  std::string settings;         // the candidate's description
  std::vector<std::string> fp32_layers;
  TrialScore score;
  double seconds = 0;
  bool meets_goal = false;
  std::string error;            // why the trial could not run (then score is empty)
};

struct SearchGoal {
  // With labels: the goal is top-1 >= fp32_top1 - max_top1_drop (fractions).
  // Without: no goal; every estimator candidate runs and the closest to FP32
  // wins (no FP32 layers).
  std::optional<double> fp32_top1;
  double max_top1_drop = 0.001;  // absolute, a fraction
  int64_t max_trials = 40;
  // From the search's start. No trial starts unless it and the final
  // conversion after the search (taken as one more trial) fit, judged by the
  // longest trial so far; the first one always runs.
  absl::Duration time_budget = absl::Seconds(60);
  bool allow_fp32_layers = true;
  // At most this many layers in FP32 (0 = no cap): the greedy set stops
  // growing there.
  int64_t max_fp32_layers = 0;
  // Rank by output SQNR before agreement (the label-free best preset): on
  // 1000 images agreement moves 0.1% per image, and on the calibration images
  // themselves it favours the estimators that fit their histograms tightest
  // (measured on ResNet8: the highest agreement there was the lowest on test).
  bool sqnr_first = false;
};

struct LayerSensitivity {
  std::string layer;
  double gain = 0;  // agreement with FP32 when this layer alone stays FP32, minus the all-int8 best's
  std::optional<double> sqnr_db;  // the layer's int8 output SQNR in the best all-int8 trial
};

struct SearchOutcome {
  std::vector<Trial> trials;
  int best = -1;                // index into trials
  bool met = false;
  std::vector<LayerSensitivity> sensitivity;  // most sensitive first
  std::string stopped_because;  // "goal met", "trial budget", "time budget", "search done"
};

using RunTrial = std::function<absl::StatusOr<TrialScore>(const TrialRequest& request)>;
// Told of each finished trial; returning false cancels the search.
using TrialDone = std::function<bool(const Trial& trial)>;

// `candidates` describes the estimator settings (index = TrialRequest::candidate);
// `layers` are the int8 layers that may stay FP32. A trial that fails is recorded and skipped, except the first (then
// nothing can work) and a cancellation, which end the search with that status.
absl::StatusOr<SearchOutcome> SearchForAccuracy(const std::vector<std::string>& candidates,
                                                const std::vector<std::string>& layers, const SearchGoal& goal,
                                                const RunTrial& run, const std::function<absl::Time()>& now,
                                                const TrialDone& on_trial = nullptr);

// The number the search maximises first: top-1 agreement with FP32.
double Objective(const TrialScore& score);

// a is closer to FP32 than b: higher agreement, then top-1, then output SQNR
// (SQNR first with goal.sqnr_first).
bool CloserToFp32(const TrialScore& a, const TrialScore& b, const SearchGoal& goal);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_TUNING_ACCURACY_SEARCH_H_
