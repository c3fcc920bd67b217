#include "worker/engine/passes/insert_observers.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace quantd::engine {
namespace {

bool IsPassThrough(OpKind kind) {
  switch (kind) {
    case OpKind::kRelu:
    case OpKind::kPad:
    case OpKind::kAvgPool2d:
    case OpKind::kAdaptiveAvgPool2d:
    case OpKind::kMaxPool2d:
    case OpKind::kFlatten:
    case OpKind::kDropout:
    case OpKind::kClamp:
    case OpKind::kFixedQParams:
      return true;
    default:
      return false;
  }
}

// The activation inputs an int8 op reads (weights are constants).
std::vector<int> ActivationInputs(const Node& node) {
  if (node.kind == OpKind::kAdd) return {node.inputs[0].value, node.inputs[1].value};
  if (node.kind == OpKind::kCat) {
    std::vector<int> values;
    CollectValues(node.inputs[0], &values);
    return values;
  }
  return {node.inputs[0].value};
}

bool ProducesTensor(const Node& node) {
  return !node.outputs.empty() && node.jit_node->outputs()[0]->type()->isSubtypeOf(*c10::TensorType::get());
}

std::string Fp32Reason(const Node& node, bool input_is_int8) {
  switch (node.kind) {
    case OpKind::kSoftmax:
      return "softmax stays FP32 in this recipe (eager mode dequantizes before it)";
    case OpKind::kBatchNorm:
      return "batch_norm not fused into a conv has no int8 kernel here";
    case OpKind::kGeneric:
      // A conv the int8 kernels would take, but for its padding.
      if (node.OpName() == "aten::conv2d" && node.inputs.size() == 7 &&
          node.inputs[4].kind == Operand::Kind::kConstant && node.inputs[4].constant.isString()) {
        return absl::StrCat("conv2d with padding='", node.inputs[4].constant.toStringRef(),
                            "' has no int8 kernel (LibTorch's take padding as numbers: for 'same' with stride 1 "
                            "and an odd kernel k, padding=k//2 computes the same)");
      }
      return absl::StrCat("no int8 kernel for ", node.OpName());
    default:
      return input_is_int8 ? "unsupported arguments for the int8 kernel" : "its input is FP32";
  }
}

// An in-place clamp (hardtanh_) whose input is read elsewhere too: the int8
// runtime clamps into a new tensor, so it stays FP32, where LibTorch's own
// in-place op keeps the aliasing.
bool ClampsInPlaceWhatOthersRead(const Graph& graph, const Node& node) {
  if (node.kind != OpKind::kClamp || !node.jit_node->schema().is_mutable()) return false;
  const int input = node.inputs[0].value;
  return graph.Consumers(input).size() > 1 || graph.IsGraphOutput(input);
}

}  // namespace

QuantizationPlan PlanQuantization(const Graph& graph, const std::set<std::string>& keep_fp32) {
  QuantizationPlan plan;
  plan.roles.assign(graph.nodes.size(), NodeRole::kFp32);
  plan.int8_value.assign(static_cast<size_t>(graph.num_values), false);
  auto observe = [&](int value) {
    if (std::find(plan.observed_values.begin(), plan.observed_values.end(), value) == plan.observed_values.end()) {
      plan.observed_values.push_back(value);
    }
  };
  for (const Node& node : graph.nodes) {
    if (node.removed) continue;
    const bool int8_kernel = node.kind == OpKind::kConv2d || node.kind == OpKind::kLinear ||
                             node.kind == OpKind::kAdd || node.kind == OpKind::kHardswish ||
                             node.kind == OpKind::kCat;
    const bool kept_fp32 = int8_kernel && keep_fp32.count(node.name) > 0;
    const bool first_input_int8 = !node.inputs.empty() && node.inputs[0].kind == Operand::Kind::kValue &&
                                  plan.int8_value[static_cast<size_t>(node.inputs[0].value)];
    if (int8_kernel && !kept_fp32) {
      plan.roles[static_cast<size_t>(node.id)] = NodeRole::kInt8;
      for (int v : ActivationInputs(node)) {
        if (!plan.int8_value[static_cast<size_t>(v)]) observe(v);
      }
      plan.int8_value[static_cast<size_t>(node.outputs[0])] = true;
      observe(node.outputs[0]);
    } else if (IsPassThrough(node.kind) && first_input_int8 && !ClampsInPlaceWhatOthersRead(graph, node)) {
      plan.roles[static_cast<size_t>(node.id)] = NodeRole::kPassThrough;
      plan.int8_value[static_cast<size_t>(node.outputs[0])] = true;
    } else if (ProducesTensor(node)) {
      plan.fallbacks.push_back({node.name, node.OpName(),
                                kept_fp32 ? "kept in FP32 by request" : Fp32Reason(node, first_input_int8)});
    }
  }
  return plan;
}

bool FixedQParamsCodesReachWeightedOps(const Graph& graph, const QuantizationPlan& plan) {
  auto role = [&](int node) { return plan.roles[static_cast<size_t>(node)]; };
  std::vector<int> frontier;
  for (const Node& node : graph.nodes) {
    if (!node.removed && node.kind == OpKind::kFixedQParams && role(node.id) == NodeRole::kPassThrough) {
      frontier.push_back(node.outputs[0]);
    }
  }
  std::set<int> seen;
  while (!frontier.empty()) {
    const int value = frontier.back();
    frontier.pop_back();
    if (!seen.insert(value).second) continue;
    for (int consumer : graph.Consumers(value)) {
      const Node& node = graph.nodes[static_cast<size_t>(consumer)];
      if (role(consumer) == NodeRole::kInt8 && (node.kind == OpKind::kConv2d || node.kind == OpKind::kLinear)) {
        return true;
      }
      if (role(consumer) == NodeRole::kPassThrough) frontier.push_back(node.outputs[0]);
    }
  }
  return false;
}

}  // namespace quantd::engine
