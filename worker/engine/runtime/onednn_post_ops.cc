#include "worker/engine/runtime/onednn_post_ops.h"

#include <torch/csrc/jit/ir/ir.h>

#include <vector>

namespace quantd::engine {

bool UnfusesInt8Relu(const std::string& kernel_engine) { return kernel_engine == "onednn"; }

int UnfuseInt8Relu(torch::jit::Graph& graph, const std::string& kernel_engine) {
  if (!UnfusesInt8Relu(kernel_engine)) return 0;
  const c10::Symbol conv_relu = c10::Symbol::fromQualString("quantized::conv2d_relu");
  const c10::Symbol linear_relu = c10::Symbol::fromQualString("quantized::linear_relu");
  std::vector<torch::jit::Node*> fused;
  for (torch::jit::Node* node : graph.nodes()) {
    if ((node->kind() == conv_relu || node->kind() == linear_relu) && node->outputs().size() == 1) {
      fused.push_back(node);
    }
  }
  for (torch::jit::Node* node : fused) {
    const c10::Symbol plain = c10::Symbol::fromQualString(node->kind() == conv_relu ? "quantized::conv2d"
                                                                                    : "quantized::linear");
    torch::jit::WithInsertPoint insert_before(node);
    std::vector<torch::jit::NamedValue> args(node->inputs().begin(), node->inputs().end());
    torch::jit::Value* out = graph.insert(plain, args);
    // The kernel's output is fresh: only this ReLU reads it before the uses.
    torch::jit::Value* relu = graph.insert(c10::Symbol::fromQualString("aten::relu_"), {out});
    out->setType(node->output()->type());
    relu->setType(node->output()->type());
    node->output()->replaceAllUsesWith(relu);
    node->destroy();
  }
  return static_cast<int>(fused.size());
}

}  // namespace quantd::engine
