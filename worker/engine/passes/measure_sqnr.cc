#include "worker/engine/passes/measure_sqnr.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"

namespace quantd::engine {

std::vector<int> SqnrValues(const Graph& fused, const QuantizationPlan& plan) {
  std::vector<int> values;
  for (const Node& n : fused.nodes) {
    if (!n.removed && plan.roles[static_cast<size_t>(n.id)] == NodeRole::kInt8) values.push_back(n.outputs[0]);
  }
  return values;
}

absl::StatusOr<std::map<std::string, double>> MeasureSqnr(const Int8Executor& int8, const at::Tensor& images,
                                                          const std::map<int, at::Tensor>& reference) {
  at::NoGradGuard no_grad;
  std::map<std::string, double> sqnr;
  absl::Status mismatch;
  auto int8_out = int8.Run({images}, [&](const Instr& instr, const at::Tensor& t) {
    if (instr.kind != InstrKind::kConv2d && instr.kind != InstrKind::kLinear && instr.kind != InstrKind::kAdd) return;
    auto it = reference.find(instr.outputs[0]);
    if (it == reference.end()) return;
    if (!it->second.sizes().equals(t.sizes())) {
      mismatch = absl::InternalError(absl::StrCat("SQNR: the FP32 reference of '", instr.name, "' has shape ",
                                                  c10::str(it->second.sizes()), ", its int8 output ",
                                                  c10::str(t.sizes())));
      return;
    }
    // One pass in plain C++ over both tensors in the int8 tensor's memory
    // order, reading its codes directly rather than dequantizing a copy.
    const at::Tensor got = t.contiguous(t.suggest_memory_format());
    const at::Tensor ref = it->second.contiguous(t.suggest_memory_format());
    const float* r = ref.data_ptr<float>();
    double signal = 0, noise = 0;
    auto accumulate = [&](auto&& value_at) {
      for (int64_t i = 0, n = ref.numel(); i < n; ++i) {
        const double d = static_cast<double>(r[i]) - value_at(i);
        signal += static_cast<double>(r[i]) * static_cast<double>(r[i]);
        noise += d * d;
      }
    };
    const double scale = got.qscheme() == at::kPerTensorAffine ? got.q_scale() : 0.0;
    const int64_t zero_point = got.qscheme() == at::kPerTensorAffine ? got.q_zero_point() : 0;
    if (got.qscheme() == at::kPerTensorAffine && got.scalar_type() == at::kQUInt8) {
      const c10::quint8* codes = got.data_ptr<c10::quint8>();
      accumulate([&](int64_t i) { return static_cast<double>(codes[i].val_ - zero_point) * scale; });
    } else if (got.qscheme() == at::kPerTensorAffine && got.scalar_type() == at::kQInt8) {
      const c10::qint8* codes = got.data_ptr<c10::qint8>();
      accumulate([&](int64_t i) { return static_cast<double>(codes[i].val_ - zero_point) * scale; });
    } else {
      const at::Tensor dense = got.dequantize().contiguous(t.suggest_memory_format());
      const float* g = dense.data_ptr<float>();
      accumulate([&](int64_t i) { return static_cast<double>(g[i]); });
    }
    sqnr[instr.name] = noise > 0 ? 10.0 * std::log10(signal / noise) : std::numeric_limits<double>::infinity();
  });
  if (!int8_out.ok()) return int8_out.status();
  if (!mismatch.ok()) return mismatch;
  return sqnr;
}

}  // namespace quantd::engine
