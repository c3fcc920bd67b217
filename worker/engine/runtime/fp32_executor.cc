#include "worker/engine/runtime/fp32_executor.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {

c10::IValue EvaluateOperand(const Operand& operand, const std::vector<c10::IValue>& values) {
  switch (operand.kind) {
    case Operand::Kind::kValue:
      return values[static_cast<size_t>(operand.value)];
    case Operand::Kind::kConstant:
      return operand.constant;
    case Operand::Kind::kList: {
      if (auto tuple = operand.list_type->cast<c10::TupleType>()) {
        std::vector<c10::IValue> items;
        for (const Operand& item : operand.items) items.push_back(EvaluateOperand(item, values));
        return c10::ivalue::Tuple::create(std::move(items));
      }
      auto list_type = operand.list_type->expect<c10::ListType>();
      c10::impl::GenericList list(list_type->getElementType());
      for (const Operand& item : operand.items) list.push_back(EvaluateOperand(item, values));
      return list;
    }
  }
  return c10::IValue();
}

absl::StatusOr<Fp32Executor> Fp32Executor::Create(const Graph* graph) {
  Fp32Executor executor;
  executor.graph_ = graph;
  absl::Status status = TorchTry("preparing the FP32 operators", [&]() {
    executor.ops_.assign(graph->nodes.size(), torch::jit::Operation(nullptr));
    for (const Node& node : graph->nodes) {
      if (node.removed) continue;
      executor.ops_[static_cast<size_t>(node.id)] = node.jit_node->getOperation();
      const c10::FunctionSchema* schema = node.jit_node->maybeSchema();
      if (schema != nullptr && schema->is_mutable()) executor.mutates_values_ = true;
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return executor;
}

absl::Status Fp32Executor::RunNode(const Node& node, std::vector<c10::IValue>* values) const {
  return TorchTry(absl::StrCat("running '", node.name, "' (", node.OpName(), ") in FP32"), [&]() {
    torch::jit::Stack stack;
    stack.reserve(node.inputs.size());
    for (const Operand& in : node.inputs) stack.push_back(EvaluateOperand(in, *values));
    ops_[static_cast<size_t>(node.id)](stack);
    if (stack.size() != node.outputs.size()) return absl::InternalError("operator arity mismatch");
    if (node.fused_relu) {
      // In place when nothing else can see the op's output (no alias of an input).
      const at::Tensor& out = stack[0].toTensor();
      if (out.use_count() == 1 && out.storage().use_count() == 1) {
        at::relu_(stack[0].toTensor());
      } else {
        stack[0] = at::relu(out);
      }
      if (node.fused_clamp_max) stack[0].toTensor().clamp_max_(*node.fused_clamp_max);
    }
    for (size_t i = 0; i < stack.size(); ++i) (*values)[static_cast<size_t>(node.outputs[i])] = std::move(stack[i]);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<c10::IValue>> Fp32Executor::Run(const std::vector<c10::IValue>& inputs,
                                                             const ValueTap& tap) const {
  if (inputs.size() != graph_->inputs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model takes ", graph_->inputs.size(), " inputs, got ", inputs.size()));
  }
  std::vector<c10::IValue> values(static_cast<size_t>(graph_->num_values));
  for (size_t i = 0; i < inputs.size(); ++i) {
    values[static_cast<size_t>(graph_->inputs[i])] = inputs[i];
    if (tap && inputs[i].isTensor()) tap(graph_->inputs[i], inputs[i].toTensor());
  }
  for (const Node& node : graph_->nodes) {
    if (node.removed) continue;
    absl::Status status = RunNode(node, &values);
    if (!status.ok()) return status;
    if (tap) {
      for (int out : node.outputs) {
        const c10::IValue& v = values[static_cast<size_t>(out)];
        if (v.isTensor()) tap(out, v.toTensor());
      }
    }
  }
  std::vector<c10::IValue> outputs;
  for (const Operand& out : graph_->outputs) outputs.push_back(EvaluateOperand(out, values));
  return outputs;
}

}  // namespace quantd::engine
