#ifndef QUANTD_WORKER_ENGINE_ACCURACY_TUNING_H_
#define QUANTD_WORKER_ENGINE_ACCURACY_TUNING_H_

// Accuracy-aware tuning and the "best" preset, on LibTorch: runs the search
// of tuning/accuracy_search.h with trials that reuse one calibration (each
// trial asks the histograms for another estimator's qparams, converts and
// scores), and writes the trial table and advice. Internal to the engine.

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/module.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/passes/calibrate.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/qconfig/qconfig.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/report.h"

namespace quantd::engine {

struct TuningSetup {
  const Graph* fused = nullptr;
  const CalibrationResult* calibrated = nullptr;
  QConfig qconfig;                 // as requested; its activation observer is a histogram
  std::string engine;              // the kernel engine every trial converts for
  bool eight_bit_exact = true;     // 8-bit activations are exact on `engine` here
  const torch::jit::Module* fp32_module = nullptr;
  // The image shape the int8 program is fixed to (pooling folded into the
  // classifier): the tuning set must match it. Empty: any.
  std::vector<int64_t> input_shape;
  // Labelled mode (accuracy-aware): judged on goal->tuning against its labels.
  std::optional<AccuracyGoal> goal;
  int64_t max_batch_bytes = 0;
  // Label-free mode (the "best" preset): judged on these images against
  // these FP32 outputs.
  at::Tensor judge_images;
  at::Tensor judge_fp32_outputs;
  // Per-layer SQNR of all-int8 trials: these images and the calibration's
  // FP32 references.
  at::Tensor sqnr_images;
  ProgressCallback progress;
  // What the job spent before tuning (loading, calibration): the goal's time
  // budget is for the whole job.
  absl::Duration spent_before = absl::ZeroDuration();
};

struct TunedSettings {
  ObserverSpec activation;
  bool bias_correction = false;
  bool fitted_rounding = false;
  std::set<std::string> fp32_layers;
  TuningReport report;
  std::vector<std::string> advice;
};

absl::StatusOr<TunedSettings> TuneQuantization(const TuningSetup& setup);

// The activation qparams `plan` needs, from the calibration's observers
// answering for `activation` (Observer::ComputeAs).
absl::StatusOr<std::map<int, QParams>> ActivationQParamsFor(const CalibrationResult& calibrated,
                                                            const QuantizationPlan& plan, const ObserverSpec& activation,
                                                            const Graph& fused);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_ACCURACY_TUNING_H_
