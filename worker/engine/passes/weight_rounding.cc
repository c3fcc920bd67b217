#include "worker/engine/passes/weight_rounding.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {
namespace {

// Images per im2col chunk: bounds the patch matrix (~150 KB per image for a
// 16-channel 32x32 map).
constexpr int64_t kChunkImages = 16;
// Added to H's diagonal, as a share of its mean: keeps the factorization
// stable where inputs are nearly collinear or never vary (GPTQ's 1%).
constexpr double kDamping = 0.01;

std::vector<int64_t> Pair(const c10::IValue& v) {
  std::vector<int64_t> out = v.toIntVector();
  if (out.size() == 1) out.push_back(out[0]);
  return out;
}

// Sum over `x`'s patches of each group's patch outer products, double
// [G, D, D]; `*count` gets the number of patches per group.
at::Tensor ConvPatchMoments(const Node& node, const at::Tensor& x, int64_t* count) {
  const at::Tensor weight = node.inputs[1].constant.toTensor();
  const int64_t groups = node.inputs[6].constant.toInt();
  const int64_t per_group = weight.size(1) * weight.size(2) * weight.size(3);
  const at::Tensor input = x.narrow(1, 0, weight.size(1) * groups);
  at::Tensor sum = at::zeros({groups, per_group, per_group}, at::kDouble);
  *count = 0;
  for (int64_t first = 0; first < input.size(0); first += kChunkImages) {
    const at::Tensor chunk = input.narrow(0, first, std::min(kChunkImages, input.size(0) - first)).contiguous();
    // [n, C * kh * kw, L], channel-major within the column like weight.reshape(O, -1)
    const at::Tensor cols = at::im2col(chunk.to(at::kFloat), {weight.size(2), weight.size(3)},
                                       Pair(node.inputs[5].constant), Pair(node.inputs[4].constant),
                                       Pair(node.inputs[3].constant));
    const at::Tensor patches =
        cols.view({cols.size(0), groups, per_group, cols.size(2)}).permute({1, 0, 3, 2}).reshape({groups, -1, per_group});
    sum += at::bmm(patches.transpose(1, 2), patches).to(at::kDouble);
    *count += patches.size(1);
  }
  return sum;
}

}  // namespace

InputMomentAccumulator::InputMomentAccumulator(const Graph& graph) {
  for (const Node& node : graph.nodes) {
    if (node.removed || (node.kind != OpKind::kConv2d && node.kind != OpKind::kLinear)) continue;
    if (node.inputs.empty() || node.inputs[0].kind != Operand::Kind::kValue) continue;
    const at::Tensor weight = node.inputs[1].constant.toTensor();
    if (weight.numel() / weight.size(0) > kMaxRoundingColumns) continue;
    Input& input = inputs_[node.inputs[0].value];
    if (node.kind == OpKind::kConv2d) {
      input.convs.push_back(NodeSum{&node, at::Tensor(), 0});
    } else {
      input.linears.push_back(&node);
    }
    nodes_.push_back(&node);
  }
}

absl::Status InputMomentAccumulator::ReducePending(Input& input) {
  if (!input.pending.defined() || input.pending.size(0) == 0) return absl::OkStatus();
  for (NodeSum& conv : input.convs) {
    absl::Status status = TorchTry(absl::StrCat("input statistics of '", conv.node->name, "'"), [&]() -> absl::Status {
      if (input.pending.dim() != 4) {
        return absl::InternalError(absl::StrCat("conv input of ", input.pending.dim(), " dimensions"));
      }
      int64_t count = 0;
      const at::Tensor sum = ConvPatchMoments(*conv.node, input.pending, &count);
      conv.sum = conv.sum.defined() ? conv.sum + sum : sum;
      conv.count += count;
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
  }
  input.pending = at::Tensor();
  return absl::OkStatus();
}

absl::Status InputMomentAccumulator::Add(int value, const at::Tensor& images) {
  auto it = inputs_.find(value);
  if (it == inputs_.end() || images.dim() == 0 || images.size(0) == 0) return absl::OkStatus();
  Input& input = it->second;
  at::NoGradGuard no_grad;
  if (!input.linears.empty()) input.rows.push_back(images.clone());
  if (input.convs.empty()) return absl::OkStatus();
  // Chunks of kChunkImages counted from the first image, as
  // InputSecondMoments chunks a whole tensor.
  for (int64_t first = 0; first < images.size(0);) {
    const int64_t have = input.pending.defined() ? input.pending.size(0) : 0;
    const int64_t take = std::min(kChunkImages - have, images.size(0) - first);
    const at::Tensor part = images.narrow(0, first, take);
    input.pending = have == 0 ? part.clone() : at::cat({input.pending, part});
    first += take;
    if (input.pending.size(0) == kChunkImages) QUANTD_RETURN_IF_ERROR(ReducePending(input));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<int, at::Tensor>> InputMomentAccumulator::Finish() {
  std::map<int, at::Tensor> moments;
  for (auto& [value, input] : inputs_) QUANTD_RETURN_IF_ERROR(ReducePending(input));
  for (const Node* node : nodes_) {
    Input& input = inputs_.at(node->inputs[0].value);
    if (node->kind == OpKind::kConv2d) {
      for (const NodeSum& conv : input.convs) {
        if (conv.node != node) continue;
        if (!conv.sum.defined()) {
          return absl::InternalError(absl::StrCat("weight rounding: no calibration inputs of '", node->name, "'"));
        }
        moments[node->id] = conv.sum / static_cast<double>(std::max<int64_t>(conv.count, 1));
      }
      continue;
    }
    if (input.rows.empty()) {
      return absl::InternalError(absl::StrCat("weight rounding: no calibration inputs of '", node->name, "'"));
    }
    absl::Status status = TorchTry(absl::StrCat("input statistics of '", node->name, "'"), [&]() -> absl::Status {
      at::NoGradGuard no_grad;
      const at::Tensor weight = node->inputs[1].constant.toTensor();
      const at::Tensor rows = at::cat(input.rows).reshape({-1, weight.size(1)}).to(at::kDouble);
      moments[node->id] = (at::matmul(rows.t(), rows) / static_cast<double>(rows.size(0))).unsqueeze(0);
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
  }
  return moments;
}

absl::StatusOr<std::map<int, at::Tensor>> InputSecondMoments(const Graph& graph,
                                                              const std::map<int, at::Tensor>& inputs) {
  InputMomentAccumulator accumulator(graph);
  for (const auto& [value, x] : inputs) QUANTD_RETURN_IF_ERROR(accumulator.Add(value, x));
  return accumulator.Finish();
}

absl::StatusOr<at::Tensor> RoundToInputs(const Node& node, const at::Tensor& quantized_weight,
                                         const at::Tensor& second_moment) {
  at::Tensor rounded;
  absl::Status status = TorchTry(absl::StrCat("weight rounding of '", node.name, "'"), [&]() -> absl::Status {
    at::NoGradGuard no_grad;
    const at::Tensor weight = node.inputs[1].constant.toTensor().to(at::kDouble).contiguous();
    const int64_t out = weight.size(0);
    const int64_t groups = second_moment.size(0);
    const int64_t columns = second_moment.size(1);
    if (second_moment.dim() != 3 || weight.numel() != out * columns || out % groups != 0) {
      return absl::InternalError(absl::StrCat("input statistics of shape [", absl::StrJoin(second_moment.sizes(), ", "),
                                              "] for weights of shape [", absl::StrJoin(weight.sizes(), ", "), "]"));
    }
    const bool per_channel = quantized_weight.qscheme() == at::kPerChannelAffine ||
                             quantized_weight.qscheme() == at::kPerChannelSymmetric;
    std::vector<double> scale(static_cast<size_t>(out));
    std::vector<int64_t> zero_point(static_cast<size_t>(out));
    for (int64_t o = 0; o < out; ++o) {
      scale[static_cast<size_t>(o)] = per_channel ? quantized_weight.q_per_channel_scales()[o].item<double>()
                                                  : quantized_weight.q_scale();
      zero_point[static_cast<size_t>(o)] = per_channel ? quantized_weight.q_per_channel_zero_points()[o].item<int64_t>()
                                                       : quantized_weight.q_zero_point();
    }
    at::Tensor w = weight.reshape({out, columns}).clone();
    at::Tensor q = at::empty({out, columns}, at::kChar);
    auto wa = w.accessor<double, 2>();
    auto qa = q.accessor<int8_t, 2>();
    const int64_t per_group = out / groups;
    for (int64_t g = 0; g < groups; ++g) {
      at::Tensor h = second_moment[g].to(at::kDouble).clone();
      const double mean_diagonal = h.diagonal().mean().item<double>();
      at::Tensor upper;  // Cholesky factor of H^-1, upper: row i spreads column i's error
      if (mean_diagonal > 0) {
        h.diagonal().add_(kDamping * mean_diagonal);
        auto [factor, info] = at::linalg_cholesky_ex(h);
        if (info.item<int64_t>() == 0) {
          auto [inverse_factor, inverse_info] = at::linalg_cholesky_ex(at::cholesky_inverse(factor), /*upper=*/true);
          if (inverse_info.item<int64_t>() == 0) upper = inverse_factor;
        }
      }
      auto ua = upper.defined() ? std::optional(upper.accessor<double, 2>()) : std::nullopt;
      for (int64_t o = g * per_group; o < (g + 1) * per_group; ++o) {
        const double s = scale[static_cast<size_t>(o)];
        const int64_t zp = zero_point[static_cast<size_t>(o)];
        for (int64_t i = 0; i < columns; ++i) {
          const double code = std::clamp<double>(std::nearbyint(wa[o][i] / s) + static_cast<double>(zp), -128, 127);
          qa[o][i] = static_cast<int8_t>(code);
          if (!ua) continue;  // nothing measured: round to nearest
          const double error = (wa[o][i] - (code - static_cast<double>(zp)) * s) / (*ua)[i][i];
          for (int64_t j = i + 1; j < columns; ++j) wa[o][j] -= error * (*ua)[i][j];
        }
      }
    }
    const at::Tensor codes = q.reshape(weight.sizes());
    if (per_channel) {
      rounded = at::_make_per_channel_quantized_tensor(codes, quantized_weight.q_per_channel_scales(),
                                                       quantized_weight.q_per_channel_zero_points(), 0);
    } else {
      rounded = at::_make_per_tensor_quantized_tensor(codes, quantized_weight.q_scale(),
                                                      quantized_weight.q_zero_point());
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return rounded;
}

namespace {

// The same quantized tensor: scheme, qparams and integers.
bool SameQuantized(const at::Tensor& a, const at::Tensor& b) {
  if (a.qscheme() != b.qscheme() || !a.sizes().equals(b.sizes())) return false;
  if (a.qscheme() == at::kPerChannelAffine || a.qscheme() == at::kPerChannelSymmetric) {
    if (a.q_per_channel_axis() != b.q_per_channel_axis() ||
        !at::equal(a.q_per_channel_scales(), b.q_per_channel_scales()) ||
        !at::equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())) {
      return false;
    }
  } else if (a.q_scale() != b.q_scale() || a.q_zero_point() != b.q_zero_point()) {
    return false;
  }
  return at::equal(a.int_repr(), b.int_repr());
}

}  // namespace

absl::StatusOr<at::Tensor> FittedWeights::RoundToInputs(const Node& node, const at::Tensor& quantized_weight,
                                                        const at::Tensor& second_moment) {
  {
    absl::MutexLock lock(&mu_);
    auto it = by_node_.find(node.id);
    if (it != by_node_.end() && it->second.second_moment.is_same(second_moment)) {
      bool same = false;
      absl::Status status = TorchTry("comparing weights with the fitted ones", [&]() {
        same = SameQuantized(it->second.nearest, quantized_weight);
        return absl::OkStatus();
      });
      if (!status.ok()) return status;
      if (same) return it->second.fitted;
    }
  }
  QUANTD_ASSIGN_OR_RETURN(at::Tensor fitted, engine::RoundToInputs(node, quantized_weight, second_moment));
  absl::MutexLock lock(&mu_);
  by_node_[node.id] = Fit{quantized_weight, second_moment, fitted};
  ++fits_;
  return fitted;
}

int64_t FittedWeights::fits() const {
  absl::MutexLock lock(&mu_);
  return fits_;
}

}  // namespace quantd::engine
