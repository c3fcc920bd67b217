#include "worker/engine/passes/equalize.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/data/dataset.h"
#include "worker/engine/runtime/fp32_executor.h"

namespace quantd::engine {
namespace {

// Scales outside [1/kMaxScale, kMaxScale] would trade one badly rounded
// channel for another; a dead channel (range 0) keeps s = 1.
constexpr double kMaxScale = 32.0;
constexpr int kMaxSweeps = 20;
constexpr double kSettled = 1e-4;

bool IsFloatTensorConstant(const Node& node, size_t i) {
  return i < node.inputs.size() && node.inputs[i].kind == Operand::Kind::kConstant &&
         node.inputs[i].constant.isTensor() && node.inputs[i].constant.toTensor().scalar_type() == at::kFloat;
}

std::optional<int64_t> Groups(const Node& conv) {
  if (conv.inputs.size() != 7 || conv.inputs[6].kind != Operand::Kind::kConstant || !conv.inputs[6].constant.isInt()) {
    return std::nullopt;
  }
  return conv.inputs[6].constant.toInt();
}

at::Tensor Weight(const Node& node) { return node.inputs[1].constant.toTensor(); }

// max |B[:, c]| per input channel c of B's weight [O, C/g, kh, kw], as [C].
at::Tensor InputColumnRanges(const Node& b, int64_t channels) {
  const at::Tensor w = Weight(b).abs();
  const int64_t groups = *Groups(b);
  const int64_t per_group_in = w.size(1), per_group_out = w.size(0) / groups;
  // [g, O/g, C/g, k] -> max over output channels and the kernel -> [g, C/g]
  return w.reshape({groups, per_group_out, per_group_in, -1}).amax({1, 3}).reshape({channels}).to(at::kDouble);
}

// max |A[c]| per output channel c, as [C].
at::Tensor OutputRowRanges(const Node& a) {
  const at::Tensor w = Weight(a);
  return w.abs().reshape({w.size(0), -1}).amax(1).to(at::kDouble);
}

// s_c = x_c^alpha / y_c^(1 - alpha), 1 where either is 0, divided by the
// scales' geometric mean (only ratios matter) and clipped to
// [1/kMaxScale, kMaxScale]. alpha = 1/2 makes x_c / s_c = y_c * s_c.
at::Tensor BalancingScales(const at::Tensor& x, const at::Tensor& y, double alpha = 0.5) {
  const at::Tensor valid = (x > 0).logical_and(y > 0);
  at::Tensor s = at::where(valid, x.clamp_min(1e-30).pow(alpha) / y.clamp_min(1e-30).pow(1 - alpha), at::ones_like(x));
  if (valid.any().item<bool>()) {
    const double log_mean = s.masked_select(valid).log().mean().item<double>();
    s = at::where(valid, s / std::exp(log_mean), s);
  }
  return s.clamp(1.0 / kMaxScale, kMaxScale);
}

// Divides A's output channels by `s` and multiplies B's input channels by it.
void Apply(Graph* graph, const EqualizablePair& pair, const at::Tensor& s) {
  Node& a = graph->nodes[static_cast<size_t>(pair.first)];
  Node& b = graph->nodes[static_cast<size_t>(pair.second)];
  const at::Tensor sf = s.to(at::kFloat);
  const at::Tensor wa = Weight(a);
  std::vector<int64_t> a_shape(static_cast<size_t>(wa.dim()), 1);
  a_shape[0] = -1;
  a.inputs[1].constant = wa / sf.reshape(a_shape);
  if (IsFloatTensorConstant(a, 2)) a.inputs[2].constant = a.inputs[2].constant.toTensor() / sf;

  const at::Tensor wb = Weight(b);
  const int64_t groups = *Groups(b);
  const int64_t per_group_in = wb.size(1), per_group_out = wb.size(0) / groups;
  const at::Tensor sb = sf.reshape({groups, 1, per_group_in, 1});
  b.inputs[1].constant = (wb.reshape({groups, per_group_out, per_group_in, -1}) * sb).reshape(wb.sizes()).contiguous();
}

EqualizedPair Describe(const Graph& graph, const EqualizablePair& pair, const at::Tensor& s) {
  EqualizedPair out;
  out.first = graph.nodes[static_cast<size_t>(pair.first)].name;
  out.second = graph.nodes[static_cast<size_t>(pair.second)].name;
  out.min_scale = s.min().item<double>();
  out.max_scale = s.max().item<double>();
  return out;
}

}  // namespace

std::vector<EqualizablePair> FindEqualizablePairs(const Graph& graph) {
  std::vector<EqualizablePair> pairs;
  for (const Node& a : graph.nodes) {
    if (a.removed || a.kind != OpKind::kConv2d || a.fused_clamp_max.has_value() || a.outputs.size() != 1) continue;
    if (!IsFloatTensorConstant(a, 1) || Weight(a).dim() != 4 || !Groups(a)) continue;
    if (a.inputs.size() > 2 && !IsFloatTensorConstant(a, 2) &&
        !(a.inputs[2].kind == Operand::Kind::kConstant && a.inputs[2].constant.isNone())) {
      continue;
    }
    const int value = a.outputs[0];
    if (graph.IsGraphOutput(value)) continue;
    const std::vector<int> consumers = graph.Consumers(value);
    if (consumers.size() != 1) continue;
    const Node& b = graph.nodes[static_cast<size_t>(consumers[0])];
    if (b.kind != OpKind::kConv2d || !IsFloatTensorConstant(b, 1) || Weight(b).dim() != 4 || !Groups(b)) continue;
    // B reads the value once, as its data input.
    if (b.inputs[0].kind != Operand::Kind::kValue || b.inputs[0].value != value) continue;
    const int64_t channels = Weight(a).size(0), groups = *Groups(b);
    if (groups < 1 || Weight(b).size(1) * groups != channels || Weight(b).size(0) % groups != 0) continue;
    pairs.push_back({a.id, b.id, value});
  }
  return pairs;
}

absl::StatusOr<std::map<int, at::Tensor>> MeasureChannelRanges(const Graph& graph, const std::vector<int>& values,
                                                               Dataset* dataset, int64_t max_samples,
                                                               int64_t batch_size) {
  std::map<int, at::Tensor> ranges;
  if (values.empty()) return ranges;
  const std::set<int> wanted(values.begin(), values.end());
  QUANTD_ASSIGN_OR_RETURN(Fp32Executor executor, Fp32Executor::Create(&graph));
  const int64_t total = std::min(max_samples, dataset->size());
  for (int64_t start = 0; start < total; start += batch_size) {
    QUANTD_ASSIGN_OR_RETURN(Batch batch, dataset->ReadBatch(start, std::min(batch_size, total - start)));
    QUANTD_RETURN_IF_ERROR(TorchTry("measuring channel ranges for cross-layer equalization", [&]() -> absl::Status {
      at::NoGradGuard no_grad;
      auto run = executor.Run({batch.images}, [&](int value, const at::Tensor& t) {
        if (wanted.count(value) == 0 || t.dim() < 2) return;
        // [N, C, ...] -> [C]: the largest |value| of each channel
        at::Tensor m = t.detach().abs().transpose(0, 1).reshape({t.size(1), -1}).amax(1).to(at::kDouble);
        auto [it, inserted] = ranges.emplace(value, m);
        if (!inserted) it->second = at::maximum(it->second, m);
      });
      return run.status();
    }));
  }
  return ranges;
}

absl::StatusOr<std::vector<EqualizedPair>> EqualizeWeightRanges(Graph* graph,
                                                                const std::vector<EqualizablePair>& pairs) {
  std::vector<at::Tensor> applied(pairs.size());
  QUANTD_RETURN_IF_ERROR(TorchTry("equalizing weight ranges", [&]() {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < pairs.size(); ++i) {
      applied[i] = at::ones({Weight(graph->nodes[static_cast<size_t>(pairs[i].first)]).size(0)}, at::kDouble);
    }
    // A layer in the middle of a chain is B of one pair and A of the next:
    // each sweep's scales move the other pair's ranges, so sweep until settled.
    for (int sweep = 0; sweep < kMaxSweeps; ++sweep) {
      double largest_change = 0;
      for (size_t i = 0; i < pairs.size(); ++i) {
        const Node& a = graph->nodes[static_cast<size_t>(pairs[i].first)];
        const Node& b = graph->nodes[static_cast<size_t>(pairs[i].second)];
        at::Tensor s = BalancingScales(OutputRowRanges(a), InputColumnRanges(b, Weight(a).size(0)));
        // Keep the accumulated scale within bounds too.
        const at::Tensor total = (applied[i] * s).clamp(1.0 / kMaxScale, kMaxScale);
        s = total / applied[i];
        largest_change = std::max(largest_change, (s.log().abs().max()).item<double>());
        Apply(graph, pairs[i], s);
        applied[i] = total;
      }
      if (largest_change < kSettled) break;
    }
    return absl::OkStatus();
  }));
  std::vector<EqualizedPair> out;
  for (size_t i = 0; i < pairs.size(); ++i) out.push_back(Describe(*graph, pairs[i], applied[i]));
  return out;
}

absl::StatusOr<std::vector<EqualizedPair>> EqualizeActivationRanges(Graph* graph,
                                                                    const std::vector<EqualizablePair>& pairs,
                                                                    const std::map<int, at::Tensor>& channel_ranges,
                                                                    double alpha) {
  std::vector<EqualizedPair> out;
  QUANTD_RETURN_IF_ERROR(TorchTry("equalizing activation ranges", [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    for (const EqualizablePair& pair : pairs) {
      auto it = channel_ranges.find(pair.value);
      const Node& a = graph->nodes[static_cast<size_t>(pair.first)];
      const Node& b = graph->nodes[static_cast<size_t>(pair.second)];
      const int64_t channels = Weight(a).size(0);
      if (it == channel_ranges.end()) continue;
      if (it->second.dim() != 1 || it->second.size(0) != channels) {
        return absl::InvalidArgumentError(absl::StrCat("channel ranges of ", a.name, "'s output: expected ", channels,
                                                       " values, got ", it->second.numel()));
      }
      const at::Tensor s = BalancingScales(it->second.to(at::kDouble), InputColumnRanges(b, channels), alpha);
      Apply(graph, pair, s);
      out.push_back(Describe(*graph, pair, s));
    }
    return absl::OkStatus();
  }));
  return out;
}

}  // namespace quantd::engine
