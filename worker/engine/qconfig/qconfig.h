#ifndef QUANTD_WORKER_ENGINE_QCONFIG_QCONFIG_H_
#define QUANTD_WORKER_ENGINE_QCONFIG_QCONFIG_H_

// Policy: which observers a backend's recipe uses. The presets are exactly
// PyTorch 1.13's get_default_qconfig(backend).

#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/observers/observer.h"

namespace quantd::engine {

struct QConfig {
  std::string name;  // "fbgemm", ..., or "custom"
  ObserverSpec activation;
  ObserverSpec weight;
  // Add to each int8 conv/linear bias the mean output shift its rounded
  // weights cause on the calibration images (passes/bias_correction.h).
  bool bias_correction = false;
  // Round int8 weights against each layer's calibration inputs instead of to
  // nearest (passes/weight_rounding.h).
  bool fitted_rounding = false;
  // Rescale conv pairs across ReLU before calibration so int8 rounds every
  // channel alike (passes/equalize.h).
  bool equalization = false;
  std::string Describe() const;
};

// fbgemm | x86 | onednn | qnnpack.
absl::StatusOr<QConfig> QConfigPreset(const std::string& preset);

// activation: minmax | moving_average_minmax | histogram;
// weight: per_channel_symmetric | per_tensor_symmetric | per_tensor_affine.
absl::StatusOr<QConfig> CustomQConfig(const std::string& activation, const std::string& weight, bool reduce_range);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_QCONFIG_QCONFIG_H_
