#include "worker/engine/qconfig/qconfig.h"

#include "absl/strings/str_cat.h"

namespace quantd::engine {
namespace {

ObserverSpec Activation(ObserverKind kind, bool reduce_range) {
  ObserverSpec spec;
  spec.kind = kind;
  spec.qscheme = QScheme::kPerTensorAffine;
  spec.signed_int8 = false;
  spec.reduce_range = reduce_range;
  return spec;
}

ObserverSpec PerChannelSymmetricWeight() {
  ObserverSpec spec;
  spec.kind = ObserverKind::kPerChannelMinMax;
  spec.qscheme = QScheme::kPerChannelSymmetric;
  spec.signed_int8 = true;
  return spec;
}

ObserverSpec PerTensorWeight(QScheme scheme) {
  ObserverSpec spec;
  spec.kind = ObserverKind::kMinMax;
  spec.qscheme = scheme;
  spec.signed_int8 = true;
  return spec;
}

}  // namespace

std::string QConfig::Describe() const {
  return absl::StrCat(name, ": activation=", activation.Describe(), " weight=", weight.Describe(),
                      equalization ? " equalization" : "", fitted_rounding ? " fitted_rounding" : "",
                      bias_correction ? " bias_correction" : "");
}

absl::StatusOr<QConfig> QConfigPreset(const std::string& preset) {
  QConfig q;
  q.name = preset;
  if (preset == "fbgemm" || preset == "x86") {
    q.activation = Activation(ObserverKind::kHistogram, /*reduce_range=*/true);
    q.weight = PerChannelSymmetricWeight();
  } else if (preset == "onednn" || preset == "best") {
    // "best" starts here; the engine picks its range estimator per model.
    q.activation = Activation(ObserverKind::kHistogram, /*reduce_range=*/false);
    q.weight = PerChannelSymmetricWeight();
    q.bias_correction = preset == "best";
    q.fitted_rounding = preset == "best";
  } else if (preset == "qnnpack") {
    q.activation = Activation(ObserverKind::kHistogram, /*reduce_range=*/false);
    q.weight = PerTensorWeight(QScheme::kPerTensorSymmetric);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("qconfig preset '", preset, "' is unknown (fbgemm, x86, onednn, qnnpack or best)"));
  }
  return q;
}

absl::StatusOr<QConfig> CustomQConfig(const std::string& activation, const std::string& weight, bool reduce_range) {
  QConfig q;
  q.name = "custom";
  if (activation == "minmax") {
    q.activation = Activation(ObserverKind::kMinMax, reduce_range);
  } else if (activation == "moving_average_minmax") {
    q.activation = Activation(ObserverKind::kMovingAverageMinMax, reduce_range);
  } else if (activation == "histogram") {
    q.activation = Activation(ObserverKind::kHistogram, reduce_range);
  } else if (activation == "mse" || activation == "percentile" || activation == "entropy") {
    // quantd's range estimators over the same histogram (range_search.h).
    q.activation = Activation(ObserverKind::kHistogram, reduce_range);
    q.activation.estimator = activation == "mse"          ? RangeEstimator::kMse
                             : activation == "percentile" ? RangeEstimator::kPercentile
                                                          : RangeEstimator::kEntropy;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("activation observer '", activation,
                                                   "' is unknown (minmax, moving_average_minmax, histogram, mse, "
                                                   "percentile or entropy)"));
  }
  if (weight == "per_channel_symmetric") {
    q.weight = PerChannelSymmetricWeight();
  } else if (weight == "per_tensor_symmetric") {
    q.weight = PerTensorWeight(QScheme::kPerTensorSymmetric);
  } else if (weight == "per_tensor_affine") {
    q.weight = PerTensorWeight(QScheme::kPerTensorAffine);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight observer '", weight, "' is unknown (per_channel_symmetric, per_tensor_symmetric or per_tensor_affine)"));
  }
  return q;
}

}  // namespace quantd::engine
