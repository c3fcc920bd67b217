#include "worker/engine/passes/fold_pooling.h"

#include <ATen/ATen.h>
#include <torch/csrc/jit/ir/irparser.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/runtime/fp32_executor.h"

namespace quantd::engine {
namespace {

constexpr char kConv2dIr[] = R"IR(
graph(%x : Tensor, %w : Tensor, %b : Tensor?, %s : int[], %p : int[], %d : int[], %g : int):
  %r : Tensor = aten::conv2d(%x, %w, %b, %s, %p, %d, %g)
  return (%r))IR";

bool IsConstant(const Node& node, size_t i) {
  return i < node.inputs.size() && node.inputs[i].kind == Operand::Kind::kConstant;
}

std::optional<std::vector<int64_t>> ConstantInts(const Node& node, size_t i) {
  if (!IsConstant(node, i)) return std::nullopt;
  const c10::IValue& v = node.inputs[i].constant;
  if (v.isInt()) return std::vector<int64_t>{v.toInt()};
  if (v.isIntList()) return v.toIntVector();
  return std::nullopt;
}

bool AllZero(const std::vector<int64_t>& v) {
  for (int64_t x : v) {
    if (x != 0) return false;
  }
  return true;
}

// Whether `pool` averages its whole [N, C, H, W] input into [N, C, 1, 1].
bool IsGlobalAverage(const Node& pool, const std::vector<int64_t>& input_shape) {
  if (input_shape.size() != 4) return false;
  const int64_t h = input_shape[2], w = input_shape[3];
  if (pool.kind == OpKind::kAdaptiveAvgPool2d) {
    const auto size = ConstantInts(pool, 1);
    return size && !size->empty() && size->size() <= 2 && (*size)[0] == 1 && size->back() == 1;
  }
  if (pool.kind != OpKind::kAvgPool2d || pool.inputs.size() != 7) return false;
  // avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
  const auto kernel = ConstantInts(pool, 1);
  const auto padding = ConstantInts(pool, 3);
  if (!kernel || kernel->empty() || kernel->size() > 2 || !padding || !AllZero(*padding)) return false;
  if (!IsConstant(pool, 6) || !pool.inputs[6].constant.isNone()) return false;
  return (*kernel)[0] == h && kernel->back() == w;
}

// flatten(x, 1, -1) or flatten(x, 1, 3) of a 4-d value.
bool FlattensFromChannels(const Node& flatten) {
  if (flatten.kind != OpKind::kFlatten || flatten.inputs.size() != 3) return false;
  const auto start = ConstantInts(flatten, 1);
  const auto end = ConstantInts(flatten, 2);
  return start && end && start->size() == 1 && end->size() == 1 && (*start)[0] == 1 &&
         ((*end)[0] == -1 || (*end)[0] == 3);
}

// The only live consumer of `node`'s single output, if it has exactly one
// and the output is not also a model output.
const Node* SoleConsumer(const Graph& graph, const Node& node) {
  if (node.outputs.size() != 1 || graph.IsGraphOutput(node.outputs[0])) return nullptr;
  const std::vector<int> consumers = graph.Consumers(node.outputs[0]);
  if (consumers.size() != 1) return nullptr;
  const Node& next = graph.nodes[static_cast<size_t>(consumers[0])];
  if (next.inputs.empty() || next.inputs[0].kind != Operand::Kind::kValue || next.inputs[0].value != node.outputs[0]) {
    return nullptr;
  }
  return &next;
}

// The shape of every value one FP32 pass over a zero sample produces.
absl::StatusOr<std::map<int, std::vector<int64_t>>> ValueShapes(const Graph& graph,
                                                                 const std::vector<int64_t>& sample_shape) {
  std::map<int, std::vector<int64_t>> shapes;
  QUANTD_ASSIGN_OR_RETURN(Fp32Executor executor, Fp32Executor::Create(&graph));
  std::vector<int64_t> batch_shape = {1};
  batch_shape.insert(batch_shape.end(), sample_shape.begin(), sample_shape.end());
  const absl::Status run = TorchTry("running one zero sample", [&]() {
    at::Tensor zeros = at::zeros(batch_shape);
    shapes[graph.inputs[0]] = zeros.sizes().vec();
    at::NoGradGuard no_grad;
    return executor.Run({zeros}, [&](int value, const at::Tensor& t) { shapes[value] = t.sizes().vec(); }).status();
  });
  if (!run.ok()) {
    return absl::Status(run.code(), absl::StrCat("finding the feature map sizes before pooling, on one sample of shape [",
                                                 absl::StrJoin(sample_shape, ", "), "]: ", run.message()));
  }
  return shapes;
}

// The most weights a folded classifier may have (16 MiB as FP32).
constexpr int64_t kMaxFoldedWeights = int64_t{4} << 20;

}  // namespace

absl::StatusOr<std::vector<std::vector<std::string>>> FoldGlobalPoolingIntoLinear(
    Graph* graph, const std::vector<int64_t>& sample_shape) {
  std::vector<std::vector<std::string>> folded;
  // Candidates first: the shapes need one FP32 pass, which is wasted on a
  // model without such a head.
  struct Head {
    int pool, flatten, linear;
  };
  std::vector<Head> heads;
  for (const Node& pool : graph->nodes) {
    if (pool.removed || (pool.kind != OpKind::kAvgPool2d && pool.kind != OpKind::kAdaptiveAvgPool2d)) continue;
    if (pool.inputs.empty() || pool.inputs[0].kind != Operand::Kind::kValue) continue;
    const Node* flatten = SoleConsumer(*graph, pool);
    if (flatten == nullptr || !FlattensFromChannels(*flatten)) continue;
    const Node* linear = SoleConsumer(*graph, *flatten);
    if (linear == nullptr || linear->kind != OpKind::kLinear || linear->inputs.size() != 3) continue;
    if (!IsConstant(*linear, 1) || !linear->inputs[1].constant.isTensor() || !IsConstant(*linear, 2)) continue;
    heads.push_back({pool.id, flatten->id, linear->id});
  }
  if (heads.empty() || graph->inputs.size() != 1) return folded;
  QUANTD_ASSIGN_OR_RETURN(const auto shapes, ValueShapes(*graph, sample_shape));

  for (const Head& head : heads) {
    Node& pool = graph->nodes[static_cast<size_t>(head.pool)];
    Node& linear = graph->nodes[static_cast<size_t>(head.linear)];
    const Node& flatten = graph->nodes[static_cast<size_t>(head.flatten)];
    const auto shape = shapes.find(pool.inputs[0].value);
    if (shape == shapes.end() || !IsGlobalAverage(pool, shape->second)) continue;
    const at::Tensor weight = linear.inputs[1].constant.toTensor();
    const int64_t channels = shape->second[1], h = shape->second[2], w = shape->second[3];
    if (weight.dim() != 2 || weight.size(1) != channels || weight.scalar_type() != at::kFloat) continue;
    // The folded weights are the classifier's times H x W: worth it for a
    // small head (ResNet8's 10 x 64 x 8 x 8), not for ResNet-50's (100M
    // weights, 49x the head's work).
    if (weight.size(0) * channels * h * w > kMaxFoldedWeights) continue;

    // The op to run: a one-node TorchScript graph the Graph keeps alive.
    auto op_graph = std::make_shared<torch::jit::Graph>();
    QUANTD_RETURN_IF_ERROR(TorchTry("parsing conv2d", [&]() {
      torch::jit::parseIR(kConv2dIr, op_graph.get());
      return absl::OkStatus();
    }));
    torch::jit::Node* conv_op = nullptr;
    for (torch::jit::Node* n : op_graph->nodes()) conv_op = n;
    if (conv_op == nullptr || conv_op->maybeOperator() == nullptr) return absl::InternalError("no conv2d operator");
    graph->canonical_ops.push_back(std::move(op_graph));

    at::Tensor conv_weight;
    QUANTD_RETURN_IF_ERROR(TorchTry("building the folded weights", [&]() {
      at::NoGradGuard no_grad;
      conv_weight = (weight / static_cast<double>(h * w))
                        .reshape({weight.size(0), channels, 1, 1})
                        .expand({weight.size(0), channels, h, w})
                        .contiguous();
      return absl::OkStatus();
    }));

    folded.push_back({pool.name, flatten.name, linear.name});
    // The pooling node becomes the convolution (it runs where the pooling
    // ran, on the same input); flatten then reads [N, out, 1, 1], and the
    // linear layer's readers read flatten.
    Node conv;
    conv.id = pool.id;
    conv.kind = OpKind::kConv2d;
    conv.name = linear.name;
    conv.module_path = linear.module_path;
    conv.module_type = linear.module_type;
    conv.module_is_leaf = linear.module_is_leaf;
    conv.jit_node = conv_op;
    conv.inputs = {pool.inputs[0],
                   Operand::Constant(conv_weight, absl::StrCat(linear.name, ".weight (", pool.name, " folded)")),
                   linear.inputs[2],
                   Operand::Constant(c10::List<int64_t>({1, 1})),
                   Operand::Constant(c10::List<int64_t>({0, 0})),
                   Operand::Constant(c10::List<int64_t>({1, 1})),
                   Operand::Constant(int64_t{1})};
    conv.outputs = pool.outputs;
    conv.fused_relu = linear.fused_relu;
    conv.fused_clamp_max = linear.fused_clamp_max;
    conv.fused_names = {pool.name};
    conv.fused_names.insert(conv.fused_names.end(), linear.fused_names.begin(), linear.fused_names.end());
    const int linear_output = linear.outputs.at(0);
    linear.removed = true;
    pool = std::move(conv);
    graph->ReplaceUses(linear_output, flatten.outputs.at(0));
  }
  return folded;
}

}  // namespace quantd::engine
