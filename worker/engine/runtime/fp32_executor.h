#ifndef QUANTD_WORKER_ENGINE_RUNTIME_FP32_EXECUTOR_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_FP32_EXECUTOR_H_

// Runs the (possibly fused) FP32 IR op by op through each op's TorchScript
// operator, handing every produced tensor to an optional tap: this is how
// calibration feeds observers and how per-layer SQNR finds its references.

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/ir/graph.h"

namespace quantd::engine {

using ValueTap = std::function<void(int value, const at::Tensor& tensor)>;

// Reads an operand from the current values (lists are built with their
// TorchScript element type).
c10::IValue EvaluateOperand(const Operand& operand, const std::vector<c10::IValue>& values);

class Fp32Executor {
 public:
  static absl::StatusOr<Fp32Executor> Create(const Graph* graph);

  // Whether some op writes into one of its inputs (aten::add_, relu_, ...):
  // a tapped tensor may then change after the tap saw it.
  bool MutatesValues() const { return mutates_values_; }

  // Runs forward on `inputs` (one per graph input). Returns the outputs.
  absl::StatusOr<std::vector<c10::IValue>> Run(const std::vector<c10::IValue>& inputs, const ValueTap& tap = nullptr) const;

  // One step of Run: `node` (live, of this graph) reads its operands from
  // `values` and stores its outputs there.
  absl::Status RunNode(const Node& node, std::vector<c10::IValue>* values) const;

 private:
  const Graph* graph_ = nullptr;
  mutable std::vector<torch::jit::Operation> ops_;  // by node id (calling one is non-const)
  bool mutates_values_ = false;
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_FP32_EXECUTOR_H_
