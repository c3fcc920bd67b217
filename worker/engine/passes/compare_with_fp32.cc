#include "worker/engine/passes/compare_with_fp32.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/predicted_class.h"

namespace quantd::engine {

double SqnrDb(double signal, double noise) {
  // A NaN output is no signal at all: the lowest score (NaN > 0 is false,
  // and it once read as a perfect match). So is an infinite reference: its
  // error is infinite too, inf / inf is NaN, and a NaN SQNR passed the quality
  // check (NaN < minimum is false).
  if (std::isnan(signal) || std::isnan(noise) || std::isinf(signal)) return -std::numeric_limits<double>::infinity();
  return noise > 0 ? 10.0 * std::log10(signal / noise) : std::numeric_limits<double>::infinity();
}

at::Tensor PredictedClasses(const at::Tensor& scores) {
  const at::Tensor s = (scores.is_quantized() ? scores.dequantize() : scores).detach().to(at::kFloat).contiguous();
  const int64_t rows = s.size(0), classes = s.size(1);
  at::Tensor predicted = at::empty({rows}, at::kLong);
  const float* row = s.data_ptr<float>();
  int64_t* out = predicted.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i) out[i] = PredictedClass(row + i * classes, classes);
  return predicted;
}

int64_t CountAgreeing(const at::Tensor& a, const at::Tensor& b) {
  return a.eq(b).logical_and(a.ne(kNoClass)).sum().item<int64_t>();
}

namespace {

// SQNR of a (possibly quantized) int8-side tensor against its FP32 reference
// of the same shape. One pass in plain C++ in the tensor's memory order,
// reading int8 codes directly rather than dequantizing a copy.
double TensorSqnr(const at::Tensor& t, const at::Tensor& reference) {
  const at::MemoryFormat format = t.suggest_memory_format();
  const at::Tensor got = t.contiguous(format);
  const at::Tensor ref = reference.to(at::kFloat).contiguous(format);
  const float* r = ref.data_ptr<float>();
  double signal = 0, noise = 0;
  auto accumulate = [&](auto&& value_at) {
    for (int64_t i = 0, n = ref.numel(); i < n; ++i) {
      const double d = static_cast<double>(r[i]) - value_at(i);
      signal += static_cast<double>(r[i]) * static_cast<double>(r[i]);
      noise += d * d;
    }
  };
  const bool per_tensor = got.is_quantized() && got.qscheme() == at::kPerTensorAffine;
  const double scale = per_tensor ? got.q_scale() : 0.0;
  const int64_t zero_point = per_tensor ? got.q_zero_point() : 0;
  if (per_tensor && got.scalar_type() == at::kQUInt8) {
    const c10::quint8* codes = got.data_ptr<c10::quint8>();
    accumulate([&](int64_t i) { return static_cast<double>(codes[i].val_ - zero_point) * scale; });
  } else if (per_tensor && got.scalar_type() == at::kQInt8) {
    const c10::qint8* codes = got.data_ptr<c10::qint8>();
    accumulate([&](int64_t i) { return static_cast<double>(codes[i].val_ - zero_point) * scale; });
  } else {
    const at::Tensor dense = (got.is_quantized() ? got.dequantize() : got.to(at::kFloat)).contiguous(format);
    const float* g = dense.data_ptr<float>();
    accumulate([&](int64_t i) { return static_cast<double>(g[i]); });
  }
  return SqnrDb(signal, noise);
}

}  // namespace

std::vector<int> SqnrValues(const Graph& fused, const QuantizationPlan& plan) {
  std::vector<int> values;
  for (const Node& n : fused.nodes) {
    if (!n.removed && plan.roles[static_cast<size_t>(n.id)] == NodeRole::kInt8) values.push_back(n.outputs[0]);
  }
  return values;
}

std::vector<int> OutputValues(const Graph& fused) {
  std::vector<int> values;
  for (const Operand& out : fused.outputs) {
    if (out.kind == Operand::Kind::kValue) values.push_back(out.value);
  }
  return values;
}

absl::StatusOr<Int8VsFp32> CompareWithFp32(const Int8Executor& int8, const at::Tensor& images,
                                           const std::map<int, at::Tensor>& layer_references,
                                           const std::vector<at::Tensor>& fp32_outputs) {
  at::NoGradGuard no_grad;
  Int8VsFp32 result;
  absl::Status mismatch;
  auto outputs = int8.Run({images}, [&](const Instr& instr, const at::Tensor& t) {
    if (instr.kind != InstrKind::kConv2d && instr.kind != InstrKind::kLinear && instr.kind != InstrKind::kAdd &&
        instr.kind != InstrKind::kQuantizedOp) {
      return;
    }
    auto it = layer_references.find(instr.outputs[0]);
    if (it == layer_references.end()) return;
    const at::Tensor& ref = it->second;
    if (ref.dim() != t.dim() || ref.dim() == 0 || !ref.sizes().slice(1).equals(t.sizes().slice(1))) {
      mismatch = absl::InternalError(absl::StrCat("the FP32 reference of '", instr.name, "' has shape ",
                                                  c10::str(ref.sizes()), ", its int8 output ", c10::str(t.sizes())));
      return;
    }
    // A model output's reference may hold more images (kept for the quality
    // check) than this comparison runs, or fewer: the images both have.
    const int64_t rows = std::min(ref.size(0), t.size(0));
    result.layer_sqnr_db[instr.name] = TensorSqnr(t.narrow(0, 0, rows), ref.narrow(0, 0, rows));
  });
  if (!outputs.ok()) return outputs.status();
  if (!mismatch.ok()) return mismatch;
  QUANTD_RETURN_IF_ERROR(TorchTry("comparing the int8 outputs with FP32", [&]() -> absl::Status {
    for (size_t i = 0; i < outputs->size() && i < fp32_outputs.size(); ++i) {
      const at::Tensor& ref = fp32_outputs[i];
      if (!ref.defined() || !(*outputs)[i].isTensor()) continue;
      const at::Tensor got = (*outputs)[i].toTensor();
      if (!got.sizes().equals(ref.sizes())) {
        return absl::InternalError(absl::StrCat("model output ", i, ": int8 shape ", c10::str(got.sizes()),
                                                ", FP32 shape ", c10::str(ref.sizes())));
      }
      const double sqnr = TensorSqnr(got, ref);
      result.output_sqnr_db = std::min(result.output_sqnr_db.value_or(sqnr), sqnr);
      result.samples = got.dim() > 0 ? got.size(0) : 1;
      if (got.dim() == 2 && got.size(0) > 0 && got.size(1) > 1 && !result.top1_agreement) {
        result.top1_agreement = static_cast<double>(CountAgreeing(PredictedClasses(got), PredictedClasses(ref))) /
                                static_cast<double>(got.size(0));
      }
    }
    return absl::OkStatus();
  }));
  return result;
}

QualityReport JudgeQuality(const Int8VsFp32& comparison, const QualityThresholds& thresholds) {
  QualityReport q;
  q.samples = comparison.samples;
  q.top1_agreement = comparison.top1_agreement;
  q.output_sqnr_db = comparison.output_sqnr_db;
  q.min_top1_agreement = thresholds.min_top1_agreement;
  q.min_output_sqnr_db = thresholds.min_output_sqnr_db;
  std::vector<std::pair<double, std::string>> layers;
  for (const auto& [name, sqnr] : comparison.layer_sqnr_db) layers.push_back({sqnr, name});
  std::sort(layers.begin(), layers.end());
  for (size_t i = 0; i < layers.size() && i < 3; ++i) {
    q.worst_layers.push_back(absl::StrFormat("%s (%.1f dB)", layers[i].second, layers[i].first));
  }
  std::vector<std::string> problems;
  if (q.top1_agreement && *q.top1_agreement < thresholds.min_top1_agreement) {
    problems.push_back(absl::StrFormat("top-1 agrees with FP32 on %.1f%% of %d calibration images (minimum %.1f%%)",
                                       100 * *q.top1_agreement, q.samples, 100 * thresholds.min_top1_agreement));
  }
  if (q.output_sqnr_db && *q.output_sqnr_db < thresholds.min_output_sqnr_db) {
    problems.push_back(absl::StrFormat("output SQNR %.1f dB against FP32 (minimum %.1f dB)", *q.output_sqnr_db,
                                       thresholds.min_output_sqnr_db));
  }
  q.passed = problems.empty();
  if (!q.passed) {
    q.message = absl::StrCat("the int8 model is broken: ", absl::StrJoin(problems, "; "));
    if (!q.worst_layers.empty()) {
      absl::StrAppend(&q.message, "; lowest per-layer SQNR: ", absl::StrJoin(q.worst_layers, ", "));
    }
  }
  return q;
}

}  // namespace quantd::engine
