#include "worker/engine/runtime/int8_program.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/runtime/fp32_executor.h"

namespace quantd::engine {
namespace {

c10::OperatorHandle KernelFor(const Instr& instr) {
  auto& dispatcher = c10::Dispatcher::singleton();
  switch (instr.kind) {
    case InstrKind::kConv2d:
      return dispatcher.findSchemaOrThrow(instr.relu ? "quantized::conv2d_relu" : "quantized::conv2d", "new");
    case InstrKind::kLinear:
      return dispatcher.findSchemaOrThrow(instr.relu ? "quantized::linear_relu" : "quantized::linear", "");
    case InstrKind::kAdd:
      return dispatcher.findSchemaOrThrow(instr.relu ? "quantized::add_relu" : "quantized::add", "");
    default:
      return dispatcher.findSchemaOrThrow("aten::dequantize", "self");
  }
}

}  // namespace

absl::StatusOr<Int8Executor> Int8Executor::Create(const Program* program) {
  Int8Executor executor;
  executor.program_ = program;
  absl::Status status = TorchTry("preparing the int8 kernels", [&]() {
    for (const Instr& instr : program->instrs) {
      executor.ops_.push_back(instr.kind == InstrKind::kOp ? instr.jit_node->getOperation() : torch::jit::Operation(nullptr));
      executor.kernels_.push_back(KernelFor(instr));
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return executor;
}

absl::StatusOr<std::vector<c10::IValue>> Int8Executor::Run(const std::vector<c10::IValue>& inputs,
                                                             const SlotTap& tap) const {
  if (inputs.size() != program_->inputs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model takes ", program_->inputs.size(), " inputs, got ", inputs.size()));
  }
  std::vector<c10::IValue> slots(static_cast<size_t>(program_->num_slots));
  for (size_t i = 0; i < inputs.size(); ++i) slots[static_cast<size_t>(program_->inputs[i])] = inputs[i];
  torch::jit::Stack stack;
  for (size_t k = 0; k < program_->instrs.size(); ++k) {
    const Instr& instr = program_->instrs[k];
    absl::Status status = TorchTry(absl::StrCat("running '", instr.name, "'"), [&]() {
      stack.clear();
      switch (instr.kind) {
        case InstrKind::kQuantize:
          stack.push_back(at::quantize_per_tensor(EvaluateOperand(instr.inputs[0], slots).toTensor(), instr.scale,
                                                  instr.zero_point, instr.dtype));
          break;
        case InstrKind::kDequantize:
          stack.push_back(EvaluateOperand(instr.inputs[0], slots).toTensor().dequantize());
          break;
        case InstrKind::kConv2d:
        case InstrKind::kLinear:
          stack.push_back(EvaluateOperand(instr.inputs[0], slots));
          stack.push_back(instr.packed);
          stack.push_back(instr.scale);
          stack.push_back(instr.zero_point);
          kernels_[k].callBoxed(stack);
          break;
        case InstrKind::kAdd:
          stack.push_back(EvaluateOperand(instr.inputs[0], slots));
          stack.push_back(EvaluateOperand(instr.inputs[1], slots));
          stack.push_back(instr.scale);
          stack.push_back(instr.zero_point);
          kernels_[k].callBoxed(stack);
          break;
        case InstrKind::kOp:
          for (const Operand& in : instr.inputs) stack.push_back(EvaluateOperand(in, slots));
          ops_[k](stack);
          break;
      }
      if (stack.size() != instr.outputs.size()) return absl::InternalError("kernel arity mismatch");
      for (size_t i = 0; i < stack.size(); ++i) slots[static_cast<size_t>(instr.outputs[i])] = std::move(stack[i]);
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    if (tap && !instr.outputs.empty() && slots[static_cast<size_t>(instr.outputs[0])].isTensor()) {
      tap(instr, slots[static_cast<size_t>(instr.outputs[0])].toTensor());
    }
  }
  std::vector<c10::IValue> outputs;
  for (const Operand& out : program_->outputs) outputs.push_back(EvaluateOperand(out, slots));
  return outputs;
}

absl::StatusOr<at::Tensor> Int8Executor::Forward(const at::Tensor& input) const {
  auto outputs = Run({input});
  if (!outputs.ok()) return outputs.status();
  if (outputs->size() != 1 || !(*outputs)[0].isTensor()) return absl::InvalidArgumentError("model output is not one tensor");
  return (*outputs)[0].toTensor();
}

}  // namespace quantd::engine
