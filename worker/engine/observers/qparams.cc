#include <ATen/ATen.h>

#include <limits>

#include "absl/strings/str_cat.h"
#include "worker/engine/observers/observer.h"

namespace quantd::engine {

int64_t ObserverSpec::quant_min() const {
  if (signed_int8) return reduce_range ? -64 : -128;
  return 0;
}

int64_t ObserverSpec::quant_max() const {
  if (signed_int8) return reduce_range ? 63 : 127;
  return reduce_range ? 127 : 255;
}

std::string ObserverSpec::Describe() const {
  std::string name;
  switch (kind) {
    case ObserverKind::kMinMax: name = "MinMaxObserver"; break;
    case ObserverKind::kMovingAverageMinMax: name = "MovingAverageMinMaxObserver"; break;
    case ObserverKind::kHistogram:
      switch (estimator) {
        case RangeEstimator::kPyTorchL2: name = "HistogramObserver"; break;
        case RangeEstimator::kMse: name = "HistogramObserver[mse]"; break;
        case RangeEstimator::kPercentile: name = absl::StrCat("HistogramObserver[percentile ", percentile, "]"); break;
        case RangeEstimator::kEntropy: name = "HistogramObserver[entropy]"; break;
      }
      break;
    case ObserverKind::kPerChannelMinMax: name = "PerChannelMinMaxObserver"; break;
  }
  const char* scheme = "per_tensor_affine";
  if (qscheme == QScheme::kPerTensorSymmetric) scheme = "per_tensor_symmetric";
  if (qscheme == QScheme::kPerChannelSymmetric) scheme = "per_channel_symmetric";
  if (qscheme == QScheme::kPerChannelAffine) scheme = "per_channel_affine";
  return absl::StrCat(name, "(", signed_int8 ? "qint8" : "quint8", ", ", scheme,
                      reduce_range ? ", reduce_range" : "", ")");
}

QParams CalculateQParams(const ObserverSpec& spec, const at::Tensor& min_in, const at::Tensor& max_in) {
  const int64_t quant_min = spec.quant_min();
  const int64_t quant_max = spec.quant_max();
  const float eps = std::numeric_limits<float>::epsilon();
  at::Tensor min_val = min_in.to(at::kFloat);
  at::Tensor max_val = max_in.to(at::kFloat);
  at::Tensor min_val_neg = at::min(min_val, at::zeros_like(min_val));
  at::Tensor max_val_pos = at::max(max_val, at::zeros_like(max_val));
  at::Tensor scale;
  at::Tensor zero_point = at::zeros(min_val_neg.sizes(), at::kLong);
  const bool symmetric = spec.qscheme == QScheme::kPerTensorSymmetric || spec.qscheme == QScheme::kPerChannelSymmetric;
  if (symmetric) {
    max_val_pos = at::max(-min_val_neg, max_val_pos);
    scale = max_val_pos / (static_cast<double>(quant_max - quant_min) / 2);
    scale = at::max(scale, at::full_like(scale, eps));
    if (!spec.signed_int8) zero_point.fill_(128);
  } else {
    scale = (max_val_pos - min_val_neg) / static_cast<double>(quant_max - quant_min);
    scale = at::max(scale, at::full_like(scale, eps));
    zero_point = quant_min - at::round(min_val_neg / scale).to(at::kInt);
    zero_point = at::clamp(zero_point, quant_min, quant_max).to(at::kLong);
  }
  QParams q;
  q.per_channel = spec.qscheme == QScheme::kPerChannelSymmetric || spec.qscheme == QScheme::kPerChannelAffine;
  q.signed_int8 = spec.signed_int8;
  q.quant_min = quant_min;
  q.quant_max = quant_max;
  at::Tensor s = scale.reshape({-1}).contiguous();
  at::Tensor z = zero_point.reshape({-1}).contiguous();
  q.scale.assign(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
  q.zero_point.assign(z.data_ptr<int64_t>(), z.data_ptr<int64_t>() + z.numel());
  return q;
}

absl::StatusOr<QParams> Observer::ComputeAs(const ObserverSpec& spec, std::pair<float, float>*) const {
  return absl::UnimplementedError(absl::StrCat("only a histogram observer's statistics answer for ", spec.Describe()));
}

absl::StatusOr<std::unique_ptr<Observer>> MakeObserver(const ObserverSpec& spec) {
  const bool per_channel = spec.qscheme == QScheme::kPerChannelSymmetric || spec.qscheme == QScheme::kPerChannelAffine;
  switch (spec.kind) {
    case ObserverKind::kPerChannelMinMax:
      if (!per_channel) return absl::InvalidArgumentError("PerChannelMinMaxObserver needs a per-channel qscheme");
      return NewPerChannelMinMaxObserver(spec);
    case ObserverKind::kMinMax:
      if (per_channel) return absl::InvalidArgumentError("MinMaxObserver is per-tensor");
      return NewMinMaxObserver(spec);
    case ObserverKind::kMovingAverageMinMax:
      if (per_channel) return absl::InvalidArgumentError("MovingAverageMinMaxObserver is per-tensor");
      return NewMovingAverageMinMaxObserver(spec);
    case ObserverKind::kHistogram:
      if (per_channel) return absl::InvalidArgumentError("HistogramObserver is per-tensor");
      return NewHistogramObserver(spec);
  }
  return absl::InvalidArgumentError("unknown observer kind");
}

}  // namespace quantd::engine
