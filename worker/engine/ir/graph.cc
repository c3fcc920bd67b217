#include "worker/engine/ir/graph.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace quantd::engine {

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kConv2d: return "conv2d";
    case OpKind::kLinear: return "linear";
    case OpKind::kBatchNorm: return "batch_norm";
    case OpKind::kRelu: return "relu";
    case OpKind::kAdd: return "add";
    case OpKind::kPad: return "pad";
    case OpKind::kAvgPool2d: return "avg_pool2d";
    case OpKind::kAdaptiveAvgPool2d: return "adaptive_avg_pool2d";
    case OpKind::kMaxPool2d: return "max_pool2d";
    case OpKind::kFlatten: return "flatten";
    case OpKind::kSoftmax: return "softmax";
    case OpKind::kDropout: return "dropout";
    case OpKind::kClamp: return "clamp";
    case OpKind::kFixedQParams: return "fixed_qparams";
    case OpKind::kHardswish: return "hardswish";
    case OpKind::kCat: return "cat";
    case OpKind::kGeneric: return "generic";
  }
  return "?";
}

std::string Node::OpName() const {
  return jit_node != nullptr ? jit_node->kind().toQualString() : OpKindName(kind);
}

void CollectValues(const Operand& operand, std::vector<int>* out) {
  if (operand.kind == Operand::Kind::kValue) out->push_back(operand.value);
  for (const Operand& item : operand.items) CollectValues(item, out);
}

std::optional<ClampBounds> ClampBoundsOf(const torch::jit::Node* op, const std::vector<Operand>& inputs) {
  if (op == nullptr || inputs.empty()) return std::nullopt;
  auto bound = [](const Operand& operand) -> std::optional<double> {
    if (operand.kind != Operand::Kind::kConstant || !operand.constant.isScalar()) return std::nullopt;
    const double value = operand.constant.toScalar().toDouble();
    if (!(std::abs(value) <= kOpenClampBound)) return std::nullopt;  // also NaN
    return value;
  };
  const std::string kind = op->kind().toQualString();
  if (kind == "aten::relu6" || kind == "aten::relu6_") return ClampBounds{0.0, 6.0};
  if ((kind == "aten::hardtanh" || kind == "aten::hardtanh_" || kind == "aten::clamp") && inputs.size() == 3) {
    return ClampBounds{bound(inputs[1]), bound(inputs[2])};
  }
  return std::nullopt;
}

std::vector<int> Graph::Consumers(int value) const {
  std::vector<int> result;
  for (const Node& node : nodes) {
    if (node.removed) continue;
    std::vector<int> read;
    for (const Operand& in : node.inputs) CollectValues(in, &read);
    if (std::find(read.begin(), read.end(), value) != read.end()) result.push_back(node.id);
  }
  return result;
}

bool Graph::IsGraphOutput(int value) const {
  std::vector<int> read;
  for (const Operand& out : outputs) CollectValues(out, &read);
  return std::find(read.begin(), read.end(), value) != read.end();
}

namespace {
void ReplaceIn(Operand* operand, int from, int to) {
  if (operand->kind == Operand::Kind::kValue && operand->value == from) operand->value = to;
  for (Operand& item : operand->items) ReplaceIn(&item, from, to);
}
}  // namespace

void Graph::ReplaceUses(int from, int to) {
  for (Node& node : nodes) {
    if (node.removed) continue;
    for (Operand& in : node.inputs) ReplaceIn(&in, from, to);
  }
  for (Operand& out : outputs) ReplaceIn(&out, from, to);
}

std::vector<int> Graph::NodesOfModule(const std::string& path) const {
  std::vector<int> result;
  for (const Node& node : nodes) {
    if (!node.removed && node.module_path == path) result.push_back(node.id);
  }
  return result;
}

std::string Graph::Dump() const {
  std::ostringstream out;
  out << "inputs:";
  for (int v : inputs) out << " %" << v;
  out << "\n";
  for (const Node& node : nodes) {
    if (node.removed) continue;
    out << "  ";
    for (int v : node.outputs) out << "%" << v << " ";
    out << "= " << node.OpName() << (node.fused_relu ? "+relu" : "") << " [" << node.name << "](";
    bool first = true;
    for (const Operand& in : node.inputs) {
      if (!first) out << ", ";
      first = false;
      if (in.kind == Operand::Kind::kValue) {
        out << "%" << in.value;
      } else if (in.kind == Operand::Kind::kList) {
        out << "[list]";
      } else if (!in.constant_name.empty()) {
        out << in.constant_name;
      } else if (in.constant.isTensor()) {
        out << "<tensor>";
      } else {
        out << in.constant;
      }
    }
    out << ")\n";
  }
  out << "outputs:";
  for (const Operand& o : outputs) {
    if (o.kind == Operand::Kind::kValue) out << " %" << o.value;
  }
  out << "\n";
  return out.str();
}

}  // namespace quantd::engine
