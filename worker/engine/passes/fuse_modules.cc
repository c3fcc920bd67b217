#include "worker/engine/passes/fuse_modules.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {
namespace {

std::string GroupText(const std::vector<std::string>& group) { return absl::StrCat("[", absl::StrJoin(group, ", "), "]"); }

// The node a fusion-spec entry names: a node name, or a module that emitted
// exactly one op.
absl::StatusOr<int> ResolveNode(const Graph& graph, const std::string& entry, const std::string& group) {
  for (const Node& n : graph.nodes) {
    if (!n.removed && n.name == entry) return n.id;
  }
  std::vector<int> nodes = graph.NodesOfModule(entry);
  if (!nodes.empty() && !graph.nodes[nodes[0]].module_is_leaf) {
    return absl::InvalidArgumentError(absl::StrCat("fusion group ", group, ": '", entry, "' is a container module (",
                                                   graph.nodes[nodes[0]].module_type, "); name one of its ops, e.g. '",
                                                   graph.nodes[nodes[0]].name, "'"));
  }
  if (nodes.size() == 1) return nodes[0];
  if (nodes.empty()) {
    // A container with no op of its own runs: its submodules' ops are its.
    for (const Node& n : graph.nodes) {
      if (!n.removed && absl::StartsWith(n.module_path, entry + ".")) {
        return absl::InvalidArgumentError(absl::StrCat("fusion group ", group, ": '", entry,
                                                       "' is a container module (its ops run in its submodules); "
                                                       "name one of them, e.g. '", n.name, "'"));
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("fusion group ", group, ": no module or op named '", entry, "' runs in the model's forward"));
  }
  return absl::InvalidArgumentError(absl::StrCat("fusion group ", group, ": module '", entry, "' runs ", nodes.size(),
                                                 " ops; name one of them (e.g. '", graph.nodes[nodes[0]].name, "')"));
}

// The upper bound of a clamp that starts at 0 (relu6, hardtanh(0, max),
// clamp(0, max)): a ReLU that a convolution can take in too. An open upper
// bound (clamp(0, inf)) is +inf: a plain ReLU.
std::optional<double> ReluLikeUpperBound(const Node& node) {
  if (node.kind != OpKind::kClamp) return std::nullopt;
  const std::optional<ClampBounds> bounds = ClampBoundsOf(node.jit_node, node.inputs);
  if (!bounds || bounds->min != 0.0) return std::nullopt;
  if (!bounds->max) return std::numeric_limits<double>::infinity();
  if (!(*bounds->max > 0)) return std::nullopt;
  return bounds->max;
}

bool SupportedPattern(const std::vector<OpKind>& kinds) {
  using K = OpKind;
  static const std::vector<std::vector<K>> kPatterns = {
      {K::kConv2d, K::kBatchNorm}, {K::kConv2d, K::kBatchNorm, K::kRelu}, {K::kConv2d, K::kRelu},
      {K::kLinear, K::kRelu},      {K::kBatchNorm, K::kRelu},             {K::kAdd, K::kRelu},
      // ReLU6-like clamps (ReluLikeUpperBound), which PyTorch's eager mode cannot fuse.
      {K::kConv2d, K::kBatchNorm, K::kClamp}, {K::kConv2d, K::kClamp},
  };
  for (const auto& p : kPatterns) {
    if (p == kinds) return true;
  }
  return false;
}

// Each op must read exactly the previous op's output, and nothing else may.
absl::Status CheckChain(const Graph& graph, const std::vector<int>& ids, const std::string& group) {
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const Node& cur = graph.nodes[ids[i]];
    const Node& next = graph.nodes[ids[i + 1]];
    const int out = cur.outputs.at(0);
    if (next.inputs.empty() || next.inputs[0].kind != Operand::Kind::kValue || next.inputs[0].value != out) {
      return absl::InvalidArgumentError(absl::StrCat("fusion group ", group, ": '", next.name,
                                                     "' does not take the output of '", cur.name,
                                                     "' (the modules are not consecutive in the dataflow)"));
    }
    std::vector<int> consumers = graph.Consumers(out);
    for (int c : consumers) {
      if (c != next.id) {
        return absl::InvalidArgumentError(absl::StrCat("fusion group ", group, ": the output of '", cur.name,
                                                       "' is also used by '", graph.nodes[c].name, "'"));
      }
    }
    if (graph.IsGraphOutput(out)) {
      return absl::InvalidArgumentError(
          absl::StrCat("fusion group ", group, ": the output of '", cur.name, "' is also a model output"));
    }
  }
  return absl::OkStatus();
}

at::Tensor TensorOrEmpty(const Operand& o) {
  return o.constant.isTensor() ? o.constant.toTensor() : at::Tensor();
}

// fuse_conv_bn_weights, same float32 expressions.
absl::Status FoldBatchNorm(Node* conv, const Node& bn) {
  return TorchTry(absl::StrCat("folding '", bn.name, "' into '", conv->name, "'"), [&]() {
    at::Tensor conv_w = conv->inputs[1].constant.toTensor();
    at::Tensor conv_b = TensorOrEmpty(conv->inputs[2]);
    at::Tensor bn_w = TensorOrEmpty(bn.inputs[1]);
    at::Tensor bn_b = TensorOrEmpty(bn.inputs[2]);
    at::Tensor bn_rm = bn.inputs[3].constant.toTensor();
    at::Tensor bn_rv = bn.inputs[4].constant.toTensor();
    const double eps = bn.inputs[7].constant.toDouble();
    if (!conv_b.defined()) conv_b = at::zeros_like(bn_rm);
    if (!bn_w.defined()) bn_w = at::ones_like(bn_rm);
    if (!bn_b.defined()) bn_b = at::zeros_like(bn_rm);
    at::NoGradGuard no_grad;
    at::Tensor var_rsqrt = at::rsqrt(bn_rv + eps);
    std::vector<int64_t> shape(static_cast<size_t>(conv_w.dim()), 1);
    shape[0] = -1;
    at::Tensor fused_w = conv_w * (bn_w * var_rsqrt).reshape(shape);
    at::Tensor fused_b = (conv_b - bn_rm) * var_rsqrt * bn_w + bn_b;
    conv->inputs[1] = Operand::Constant(fused_w.detach(), absl::StrCat(conv->name, ".weight (", bn.name, " folded)"));
    conv->inputs[2] = Operand::Constant(fused_b.detach(), absl::StrCat(conv->name, ".bias (", bn.name, " folded)"));
    return absl::OkStatus();
  });
}

absl::Status ApplyGroup(Graph* graph, const std::vector<int>& ids) {
  Node& head = graph->nodes[ids[0]];
  for (size_t i = 1; i < ids.size(); ++i) {
    Node& next = graph->nodes[ids[i]];
    if (next.kind == OpKind::kBatchNorm) {
      QUANTD_RETURN_IF_ERROR(FoldBatchNorm(&head, next));
    } else {  // ReLU, or a ReLU6-like clamp after a conv
      if (head.kind == OpKind::kBatchNorm || head.kind == OpKind::kConv2d || head.kind == OpKind::kLinear ||
          head.kind == OpKind::kAdd) {
        head.fused_relu = true;
      }
      if (next.kind == OpKind::kClamp) {
        const std::optional<double> upper = ReluLikeUpperBound(next);
        if (upper && std::isfinite(*upper)) head.fused_clamp_max = upper;
      }
    }
    head.fused_names.push_back(next.name);
    next.removed = true;
    graph->ReplaceUses(next.outputs.at(0), head.outputs.at(0));
  }
  return absl::OkStatus();
}

// The single live consumer of a node's first output, if there is exactly one
// and the output is not also a model output.
int SoleConsumer(const Graph& graph, const Node& node) {
  if (node.outputs.empty()) return -1;
  const int out = node.outputs[0];
  std::vector<int> consumers = graph.Consumers(out);
  if (consumers.size() != 1 || graph.IsGraphOutput(out)) return -1;
  const Node& next = graph.nodes[consumers[0]];
  if (next.inputs.empty() || next.inputs[0].kind != Operand::Kind::kValue || next.inputs[0].value != out) return -1;
  return consumers[0];
}

}  // namespace

std::vector<std::vector<int>> FindFusableGroups(const Graph& graph) {
  std::vector<std::vector<int>> groups;
  std::set<int> taken;
  for (const Node& node : graph.nodes) {
    if (node.removed || taken.count(node.id)) continue;
    std::vector<int> group = {node.id};
    int next = SoleConsumer(graph, node);
    auto kind_of = [&](int id) { return id < 0 ? OpKind::kGeneric : graph.nodes[id].kind; };
    switch (node.kind) {
      case OpKind::kConv2d:
        if (kind_of(next) == OpKind::kBatchNorm) {
          group.push_back(next);
          next = SoleConsumer(graph, graph.nodes[next]);
        }
        if (kind_of(next) == OpKind::kRelu || (next >= 0 && ReluLikeUpperBound(graph.nodes[next]))) {
          group.push_back(next);
        }
        break;
      // Not a batch_norm without its conv: it runs in FP32 here (no int8
      // kernel), so fusing its ReLU would list as fused what is no int8 op.
      case OpKind::kLinear:
      case OpKind::kAdd:
        if (kind_of(next) == OpKind::kRelu) group.push_back(next);
        break;
      default:
        break;
    }
    if (group.size() > 1) {
      for (int id : group) taken.insert(id);
      groups.push_back(group);
    }
  }
  return groups;
}

absl::StatusOr<std::vector<std::vector<std::string>>> FuseModules(Graph* graph, const FusionSpec& spec) {
  std::vector<std::vector<int>> resolved;
  if (spec.automatic) {
    if (!spec.groups.empty()) return absl::InvalidArgumentError("fusion: give either auto or explicit groups, not both");
    resolved = FindFusableGroups(*graph);
  } else {
    std::set<int> used;
    for (const auto& group : spec.groups) {
      const std::string text = GroupText(group);
      if (group.size() < 2) return absl::InvalidArgumentError(absl::StrCat("fusion group ", text, ": needs at least two modules"));
      std::vector<int> ids;
      std::vector<OpKind> kinds;
      std::vector<std::string> kind_names;
      for (const std::string& entry : group) {
        QUANTD_ASSIGN_OR_RETURN(int id, ResolveNode(*graph, entry, text));
        if (!used.insert(id).second) {
          return absl::InvalidArgumentError(absl::StrCat("fusion group ", text, ": '", entry, "' is already in another group"));
        }
        ids.push_back(id);
        kinds.push_back(graph->nodes[id].kind);
        kind_names.push_back(OpKindName(graph->nodes[id].kind));
      }
      if (!SupportedPattern(kinds)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "fusion group ", text, ": cannot fuse (", absl::StrJoin(kind_names, ", "),
            "); supported: conv2d+batch_norm, conv2d+batch_norm+relu, conv2d+relu, linear+relu, batch_norm+relu, "
            "add+relu, and conv2d(+batch_norm)+relu6 (or a clamp from 0)"));
      }
      if (kinds.back() == OpKind::kClamp && !ReluLikeUpperBound(graph->nodes[ids.back()])) {
        return absl::InvalidArgumentError(absl::StrCat("fusion group ", text, ": '", group.back(),
                                                       "' is not a clamp from 0 (relu6, hardtanh(0, max) or "
                                                       "clamp(0, max)), which is all a convolution can take in"));
      }
      QUANTD_RETURN_IF_ERROR(CheckChain(*graph, ids, text));
      resolved.push_back(ids);
    }
  }
  std::vector<std::vector<std::string>> fused;
  for (const auto& ids : resolved) {
    std::vector<std::string> names;
    for (int id : ids) names.push_back(graph->nodes[id].name);
    QUANTD_RETURN_IF_ERROR(ApplyGroup(graph, ids));
    fused.push_back(names);
  }
  return fused;
}

}  // namespace quantd::engine
