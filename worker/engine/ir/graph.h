#ifndef QUANTD_WORKER_ENGINE_IR_GRAPH_H_
#define QUANTD_WORKER_ENGINE_IR_GRAPH_H_

// The engine's IR: a flat dataflow graph of ATen-level ops, built by walking a
// TorchScript module's forward (see import_torchscript.h). Every node remembers
// the module it came from, which is what fusion specs and reports refer to.

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <optional>
#include <string>
#include <vector>

namespace quantd::engine {

enum class OpKind {
  kConv2d,
  kLinear,
  kBatchNorm,
  kRelu,
  kAdd,
  kPad,
  kAvgPool2d,
  kAdaptiveAvgPool2d,
  kMaxPool2d,
  kFlatten,
  kSoftmax,
  kDropout,
  kClamp,          // hardtanh / relu6 / clamp with constant bounds: on int8, keeps its input's qparams
  kFixedQParams,   // sigmoid / hardsigmoid / tanh: on int8, LibTorch's fixed output qparams
  kHardswish,      // int8 kernel with its own output qparams
  kCat,            // cat of a list of tensors: int8 kernel with its own output qparams
  kGeneric,  // any other op: runs in FP32 through its TorchScript operator
};

const char* OpKindName(OpKind kind);

// One input of a node: a graph value, a constant (a folded literal or a
// module attribute such as a weight), or a list mixing both.
struct Operand {
  enum class Kind { kValue, kConstant, kList };
  Kind kind = Kind::kConstant;
  int value = -1;
  c10::IValue constant;
  std::string constant_name;  // "layer1.conv1.weight" for module attributes
  std::vector<Operand> items;  // kList
  c10::TypePtr list_type;      // kList: the list's TorchScript type

  static Operand Value(int id) {
    Operand o;
    o.kind = Kind::kValue;
    o.value = id;
    return o;
  }
  static Operand Constant(c10::IValue v, std::string name = "") {
    Operand o;
    o.kind = Kind::kConstant;
    o.constant = std::move(v);
    o.constant_name = std::move(name);
    return o;
  }
};

struct Node {
  int id = -1;
  OpKind kind = OpKind::kGeneric;
  std::string name;         // unique, e.g. "layer1.conv1" or "layer1:add"
  std::string module_path;  // module whose code emitted the op ("" = root)
  std::string module_type;  // unmangled class name, e.g. "torch.nn.modules.conv.Conv2d"
  bool module_is_leaf = false;  // the module has no submodules (Conv2d, ReLU, ...)
  torch::jit::Node* jit_node = nullptr;  // schema and FP32 operator
  std::vector<Operand> inputs;
  std::vector<int> outputs;
  // Set by fusion: the op is followed by a ReLU folded into it, and the
  // module names merged into this node (for reports).
  bool fused_relu = false;
  // With fused_relu: the upper bound of a ReLU6-like clamp folded in too
  // (relu6, hardtanh or clamp from 0). An int8 kernel needs no clamp for it:
  // its output range is observed after the clamp, so requantization saturates
  // at or below the bound.
  std::optional<double> fused_clamp_max;
  std::vector<std::string> fused_names;
  bool removed = false;

  std::string OpName() const;  // "aten::conv2d"
};

struct Graph {
  torch::jit::Module module;  // keeps the jit graphs that nodes point into alive
  // Graphs the importer made for ops it rewrote into their scripted form
  // (traced models' aten::_convolution -> aten::conv2d, ...): their nodes are
  // the jit_node of the rewritten IR nodes.
  std::vector<std::shared_ptr<torch::jit::Graph>> canonical_ops;
  std::vector<Node> nodes;    // topological order; fusion marks nodes removed
  std::vector<int> inputs;    // forward's tensor arguments (self excluded)
  std::vector<c10::TypePtr> input_types;
  std::vector<std::string> input_names;
  std::vector<Operand> outputs;  // forward's return values (values or constants)
  bool output_is_tuple = false;
  int num_values = 0;

  int NewValue() { return num_values++; }
  // Live nodes that read `value` (a node reading it twice is listed once).
  std::vector<int> Consumers(int value) const;
  bool IsGraphOutput(int value) const;
  // Replaces every use of `from` (node inputs and graph outputs) with `to`.
  void ReplaceUses(int from, int to);
  // Live nodes whose module_path is `path` and whose kind is not generic-free.
  std::vector<int> NodesOfModule(const std::string& path) const;
  std::string Dump() const;
};

// Every value id an operand reads, recursively through lists.
void CollectValues(const Operand& operand, std::vector<int>* out);

// The bounds of a clamp-like op (clamp, hardtanh, relu6, in place or not)
// given its TorchScript node and inputs, if it is one; a missing bound is open,
// and so is an infinite one or one past kOpenClampBound (clamp(x, 0, inf),
// ONNX's Clip(0, FLT_MAX)): no int8 code reaches it, and quantizing it would
// overflow (LibTorch's quantized clamp then gives all zeros).
inline constexpr double kOpenClampBound = 1e12;
struct ClampBounds {
  std::optional<double> min, max;
};
std::optional<ClampBounds> ClampBoundsOf(const torch::jit::Node* op, const std::vector<Operand>& inputs);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_IR_GRAPH_H_
