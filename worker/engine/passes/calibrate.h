#ifndef QUANTD_WORKER_ENGINE_PASSES_CALIBRATE_H_
#define QUANTD_WORKER_ENGINE_PASSES_CALIBRATE_H_

// Calibration: run the fused FP32 graph over the calibration set batch by
// batch, feeding each observed value to its activation observer. With
// `overlap`, observers work on a second thread while the next batch runs.

#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/dataset.h"
#include "worker/engine/ir/graph.h"
#include "worker/engine/observers/observer.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/passes/weight_rounding.h"

namespace quantd::engine {

// Called after each batch with (batches done, total batches); returning
// false cancels calibration at that batch boundary.
using BatchProgress = std::function<bool(int64_t done, int64_t total)>;

struct CalibrationResult {
  std::map<int, QParams> qparams;                  // by observed value id
  std::map<int, std::pair<float, float>> ranges;   // observer's chosen range
  // The observers themselves, by observed value id: accuracy-aware tuning
  // asks them for other specs' qparams (Observer::ComputeAs).
  std::map<int, std::unique_ptr<Observer>> observers;
  int64_t samples = 0;
  // The values CalibrationOptions::reference_values and output_values name,
  // for their first images; 4-D ones channels-last, as int8 kernels lay out.
  std::map<int, at::Tensor> references;
  // Per-element means over every calibration image of the values
  // CalibrationOptions::mean_values names (float, [C, H, W] or [F]): bias
  // correction's expected layer inputs.
  std::map<int, at::Tensor> means;
  // With CalibrationOptions::second_moment_samples: E[x x^T] of each conv2d
  // and linear node's input patches over the first images, by node id
  // (InputSecondMoments): fitted weight rounding's statistics.
  std::map<int, at::Tensor> input_second_moments;
  // Weights fitted to those statistics, shared by every conversion from this
  // calibration (tuning trials, the final one).
  std::shared_ptr<FittedWeights> fitted_weights = std::make_shared<FittedWeights>();
};

struct CalibrationOptions {
  int64_t batch_size = 100;  // what each observer sees at once (PyTorch's recipe: 100)
  // Forward runs in sub-batches of this size: same activations (per-sample
  // ops), but they stay in cache, which makes the FP32 pass ~1.8x faster.
  int64_t forward_batch_size = 25;
  bool overlap = false;  // observers on a second thread
  // Copies of these FP32 values for the first images (the SQNR report's
  // references), so that report needs no second FP32 pass.
  std::vector<int> reference_values;
  int64_t reference_samples = 0;
  // The same for these values (the model's outputs, for the quality gate)
  // over the first output_samples images.
  std::vector<int> output_values;
  int64_t output_samples = 0;
  // Values whose mean image is kept (CalibrationResult::means).
  std::vector<int> mean_values;
  // Images over which CalibrationResult::input_second_moments is measured (0: none).
  int64_t second_moment_samples = 0;
};

absl::StatusOr<CalibrationResult> Calibrate(const Graph& graph, const QuantizationPlan& plan,
                                            const ObserverSpec& activation, Dataset* dataset,
                                            const CalibrationOptions& options, const BatchProgress& progress);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_CALIBRATE_H_
