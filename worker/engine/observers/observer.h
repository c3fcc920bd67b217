#ifndef QUANTD_WORKER_ENGINE_OBSERVERS_OBSERVER_H_
#define QUANTD_WORKER_ENGINE_OBSERVERS_OBSERVER_H_

// Observers record statistics of a tensor during calibration and turn them
// into quantization parameters, with PyTorch 1.13's numerics
// (torch/ao/quantization/observer.py): same float32 arithmetic, same order.

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quantd::engine {

enum class ObserverKind { kMinMax, kMovingAverageMinMax, kHistogram, kPerChannelMinMax };
// How a histogram observer picks its range (see range_search.h): PyTorch's
// greedy L2 search (the presets), or one of quantd's estimators.
enum class RangeEstimator { kPyTorchL2, kMse, kPercentile, kEntropy };
enum class QScheme { kPerTensorAffine, kPerTensorSymmetric, kPerChannelSymmetric, kPerChannelAffine };

struct ObserverSpec {
  ObserverKind kind = ObserverKind::kHistogram;
  QScheme qscheme = QScheme::kPerTensorAffine;
  bool signed_int8 = false;  // qint8 (weights) instead of quint8 (activations)
  bool reduce_range = false; // 7-bit range: 0..127 or -64..63
  double averaging_constant = 0.01;  // moving average
  int64_t bins = 2048;               // histogram
  int64_t upsample_rate = 128;       // histogram
  RangeEstimator estimator = RangeEstimator::kPyTorchL2;  // histogram
  double percentile = 99.99;                              // RangeEstimator::kPercentile
  // Histogram: also keep one over the values' exact range, which estimators
  // other than PyTorch's read. Implied by such an estimator; set it when
  // ComputeAs will ask for them (accuracy tuning, the best preset).
  bool exact_histogram = false;

  std::string Describe() const;
  int64_t quant_min() const;
  int64_t quant_max() const;
};

struct QParams {
  std::vector<float> scale;  // one per tensor, or one per output channel
  std::vector<int64_t> zero_point;
  bool per_channel = false;
  bool signed_int8 = false;
  int64_t quant_min = 0;
  int64_t quant_max = 255;
};

class Observer {
 public:
  virtual ~Observer() = default;
  // One calibration batch arrives in pieces (its rows split along dim 0),
  // each observed as soon as it is computed, while it is still in cache;
  // EndBatch closes the batch. The statistics are those of the whole batch
  // at once: the observers still see PyTorch's batches.
  virtual void ObserveChunk(const at::Tensor& chunk) = 0;
  virtual void EndBatch() = 0;
  void ObserveChunks(const std::vector<at::Tensor>& chunks) {
    for (const at::Tensor& chunk : chunks) ObserveChunk(chunk);
    EndBatch();
  }
  void Observe(const at::Tensor& x) { ObserveChunks({x}); }
  virtual absl::StatusOr<QParams> Compute() const = 0;
  // The qparams another spec would give from the same statistics, without
  // calibrating again (accuracy-aware tuning tries several): histogram
  // observers answer for any histogram spec with the same bins (estimator,
  // qscheme and reduce_range may differ); the others are UNIMPLEMENTED.
  // `range` (optional) receives the chosen range.
  virtual absl::StatusOr<QParams> ComputeAs(const ObserverSpec& spec, std::pair<float, float>* range) const;
  // The range the qparams were computed from (after any search).
  virtual std::pair<float, float> ObservedRange() const = 0;
};

absl::StatusOr<std::unique_ptr<Observer>> MakeObserver(const ObserverSpec& spec);

// UniformQuantizationObserverBase._calculate_qparams on float32 min/max
// tensors (0-d for per-tensor, 1-d for per-channel).
QParams CalculateQParams(const ObserverSpec& spec, const at::Tensor& min_val, const at::Tensor& max_val);

std::unique_ptr<Observer> NewMinMaxObserver(const ObserverSpec& spec);
std::unique_ptr<Observer> NewMovingAverageMinMaxObserver(const ObserverSpec& spec);
std::unique_ptr<Observer> NewHistogramObserver(const ObserverSpec& spec);
std::unique_ptr<Observer> NewPerChannelMinMaxObserver(const ObserverSpec& spec);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_OBSERVERS_OBSERVER_H_
