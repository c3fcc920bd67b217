#include "worker/engine/passes/fold_pooling.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/api/module.h>

#include <string>
#include <vector>

#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/testing/run_fp32.h"

namespace quantd::engine {
namespace {

// conv -> relu -> POOL -> flatten -> linear, where POOL is `pooling` on `y`
// and the linear layer reads `features` values.
torch::jit::Module Head(const std::string& pooling, const std::string& returned = "z", int64_t features = 6) {
  torch::jit::Module m("Head");
  at::manual_seed(11);
  m.register_parameter("cw", at::randn({6, 3, 3, 3}), false);
  m.register_parameter("w", at::randn({4, features}), false);
  m.register_parameter("b", at::randn({4}), false);
  m.define(R"(
    def forward(self, x):
        y = torch.relu(torch.conv2d(x, self.cw, None, [1, 1], [1, 1]))
        p = )" + pooling + R"(
        z = torch.linear(torch.flatten(p, 1), self.w, self.b)
        return )" + returned + R"(
  )");
  return m;
}

int CountKind(const Graph& graph, OpKind kind) {
  int n = 0;
  for (const Node& node : graph.nodes) n += !node.removed && node.kind == kind;
  return n;
}

TEST(FoldPoolingTest, GlobalAveragePoolingBeforeLinearBecomesOneConvolutionWithTheSameOutput) {
  for (const std::string pooling : {"torch.adaptive_avg_pool2d(y, [1, 1])", "torch.avg_pool2d(y, [8, 6])"}) {
    SCOPED_TRACE(pooling);
    auto graph = ImportTorchScript(Head(pooling));
    ASSERT_TRUE(graph.ok()) << graph.status();
    const at::Tensor x = at::randn({5, 3, 8, 6}) * 40;
    const at::Tensor before = testing::RunFp32(*graph, x);

    auto folded = FoldGlobalPoolingIntoLinear(&*graph, {3, 8, 6});
    ASSERT_TRUE(folded.ok()) << folded.status();
    ASSERT_EQ(folded->size(), 1u);
    EXPECT_EQ((*folded)[0].size(), 3u);
    EXPECT_EQ(CountKind(*graph, OpKind::kAvgPool2d) + CountKind(*graph, OpKind::kAdaptiveAvgPool2d), 0);
    EXPECT_EQ(CountKind(*graph, OpKind::kLinear), 0);
    EXPECT_EQ(CountKind(*graph, OpKind::kConv2d), 2);
    // The new convolution's kernel covers the whole [8, 6] feature map.
    const Node* head = nullptr;
    for (const Node& node : graph->nodes) {
      if (!node.removed && node.kind == OpKind::kConv2d && node.name == (*folded)[0][2]) head = &node;
    }
    ASSERT_NE(head, nullptr);
    EXPECT_EQ(head->inputs[1].constant.toTensor().sizes(), (std::vector<int64_t>{4, 6, 8, 6}));

    const at::Tensor after = testing::RunFp32(*graph, x);
    ASSERT_EQ(after.sizes(), before.sizes());
    EXPECT_TRUE(at::allclose(after, before, 1e-4, 1e-3)) << (after - before).abs().max().item<float>();
  }
}

// ... and heads whose folded weights would be too large to pay.
TEST(FoldPoolingTest, LeavesPartialPoolingOtherReadersAndOtherSizesAlone) {
  struct Case {
    std::string pooling, returned;
    int64_t features;
    std::vector<int64_t> sample_shape;
  };
  for (const Case& c : std::vector<Case>{
           {"torch.avg_pool2d(y, [2, 2])", "z", 72, {3, 8, 6}},  // [6, 4, 3] pooled
           {"torch.avg_pool2d(y, [8, 6])", "z", 6, {3, 8, 8}},  // [6, 1, 1], but not of the whole 8x8 map
           {"torch.avg_pool2d(y, [8, 6], [1, 1], [0, 0], False, True, 7)", "z", 6, {3, 8, 6}},  // divisor
           {"torch.adaptive_avg_pool2d(y, [1, 1])", "(z, p)", 6, {3, 8, 6}},  // pooled value also returned
           {"torch.adaptive_avg_pool2d(y, [2, 2])", "z", 24, {3, 8, 6}},
           // Global, but folded it would be 4 x 6 x 512 x 512 weights (over 4M).
           {"torch.adaptive_avg_pool2d(y, [1, 1])", "z", 6, {3, 512, 512}},
       }) {
    SCOPED_TRACE(c.pooling + " returning " + c.returned);
    auto graph = ImportTorchScript(Head(c.pooling, c.returned, c.features));
    ASSERT_TRUE(graph.ok()) << graph.status();
    const std::string before = graph->Dump();
    auto folded = FoldGlobalPoolingIntoLinear(&*graph, c.sample_shape);
    ASSERT_TRUE(folded.ok()) << folded.status();
    EXPECT_TRUE(folded->empty());
    EXPECT_EQ(graph->Dump(), before);
  }
}

TEST(FoldPoolingTest, ASampleShapeTheModelCannotRunIsAnErrorThatSaysWhatFailed) {
  auto graph = ImportTorchScript(Head("torch.adaptive_avg_pool2d(y, [1, 1])"));
  ASSERT_TRUE(graph.ok()) << graph.status();
  auto folded = FoldGlobalPoolingIntoLinear(&*graph, {4, 8, 6});  // the conv takes 3 channels
  ASSERT_FALSE(folded.ok());
  EXPECT_NE(std::string(folded.status().message()).find("feature map sizes"), std::string::npos) << folded.status();
}

}  // namespace
}  // namespace quantd::engine
