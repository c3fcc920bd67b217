#include "worker/engine/passes/equalize.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/api/module.h>

#include <string>
#include <vector>

#include "worker/engine/data/dataset.h"
#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/passes/fuse_modules.h"
#include "worker/engine/testing/run_fp32.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

// x -> conv(w1) -> relu -> conv(w2, groups) -> MIDDLE -> conv(w3) -> out,
// fused automatically. Channel c of w1's output is scaled by 3^(c - 2) and
// w2's input column c by the inverse: the same function as unscaled weights,
// with channel ranges 243x apart.
Graph Chain(const std::string& middle, int64_t groups = 1) {
  torch::jit::Module m("Chain");
  at::manual_seed(5);
  const at::Tensor skew = at::pow(3.0, at::arange(6, at::kFloat) - 2);
  m.register_parameter("w1", at::randn({6, 3, 3, 3}) * skew.reshape({6, 1, 1, 1}), false);
  m.register_parameter("b1", at::randn({6}) * skew, false);
  at::Tensor w2 = at::randn({6, 6 / groups, 3, 3});
  if (groups == 1) w2 = w2 / skew.reshape({1, 6, 1, 1});
  if (groups == 6) w2 = w2 / skew.reshape({6, 1, 1, 1});
  m.register_parameter("w2", w2, false);
  m.register_parameter("b2", at::randn({6}), false);
  m.register_parameter("w3", at::randn({4, 6, 1, 1}), false);
  m.define(R"(
    def forward(self, x):
        y = torch.relu(torch.conv2d(x, self.w1, self.b1, [1, 1], [1, 1]))
        z = torch.conv2d(y, self.w2, self.b2, [1, 1], [1, 1], [1, 1], )" +
           std::to_string(groups) + R"()
        z = )" +
           middle + R"(
        return torch.conv2d(z, self.w3)
  )");
  auto graph = ImportTorchScript(m);
  EXPECT_TRUE(graph.ok()) << graph.status();
  FusionSpec spec;
  spec.automatic = true;
  auto fused = FuseModules(&*graph, spec);
  EXPECT_TRUE(fused.ok()) << fused.status();
  return std::move(graph).value();
}

std::vector<std::pair<std::string, std::string>> PairNames(const Graph& graph,
                                                           const std::vector<EqualizablePair>& pairs) {
  std::vector<std::pair<std::string, std::string>> names;
  for (const EqualizablePair& p : pairs) {
    names.emplace_back(graph.nodes[static_cast<size_t>(p.first)].name, graph.nodes[static_cast<size_t>(p.second)].name);
  }
  return names;
}

at::Tensor WeightOf(const Graph& graph, int node) {
  return graph.nodes[static_cast<size_t>(node)].inputs[1].constant.toTensor();
}

// `w` rounded to int8 on one symmetric scale for the whole tensor (qnnpack's
// weights): the signal-to-noise of its worst output channel, in dB.
double WorstChannelSqnrDb(const at::Tensor& w) {
  const double scale = w.abs().max().item<double>() / 127.0;
  const at::Tensor rounded = at::round(w / scale).clamp(-127, 127) * scale;
  const at::Tensor signal = w.pow(2).reshape({w.size(0), -1}).sum(1);
  const at::Tensor noise = (w - rounded).pow(2).reshape({w.size(0), -1}).sum(1).clamp_min(1e-30);
  return 10.0 * (signal / noise).log10().min().item<double>();
}

TEST(EqualizeTest, FindsConvPairsJoinedByReluAloneOnResNet8) {
  auto graph = ImportTorchScriptFile(testing::ResNet8Path());
  ASSERT_TRUE(graph.ok()) << graph.status();
  FusionSpec spec;
  spec.automatic = true;
  ASSERT_TRUE(FuseModules(&*graph, spec).ok());
  // The stem's and every block's output also feed a residual add: only the
  // convolutions inside each block pair up.
  EXPECT_EQ(PairNames(*graph, FindEqualizablePairs(*graph)),
            (std::vector<std::pair<std::string, std::string>>{
                {"layer1.conv1", "layer1.conv2"}, {"layer2.conv1", "layer2.conv2"}, {"layer3.conv1", "layer3.conv2"}}));
}

TEST(EqualizeTest, LeavesReluSixSecondReadersAndModelOutputsAlone) {
  struct Case {
    std::string middle;
    int64_t groups;
    size_t pairs;  // (conv1, conv2) always qualifies; (conv2, conv3) depends on
                   // MIDDLE
  };
  for (const Case& c : std::vector<Case>{{"torch.relu(z)", 1, 2},
                                         {"z", 1, 2},
                                         {"torch.clamp(z, 0.0, 6.0)", 1, 1},  // ReLU6: does not commute with scaling
                                         {"torch.relu(z) + z", 1, 1},         // a second reader of conv2's output
                                         {"torch.relu(z)", 6, 2}}) {          // depthwise conv2
    SCOPED_TRACE(c.middle + " groups " + std::to_string(c.groups));
    Graph graph = Chain(c.middle, c.groups);
    const std::vector<EqualizablePair> pairs = FindEqualizablePairs(graph);
    ASSERT_EQ(pairs.size(), c.pairs);
    EXPECT_EQ(graph.nodes[static_cast<size_t>(pairs[0].second)].inputs[0].value, pairs[0].value);
  }
  // A conv whose output the model returns keeps it.
  torch::jit::Module m("Returned");
  m.register_parameter("w1", at::randn({4, 3, 1, 1}), false);
  m.register_parameter("w2", at::randn({4, 4, 1, 1}), false);
  m.define(R"(
    def forward(self, x):
        y = torch.conv2d(x, self.w1)
        return torch.conv2d(y, self.w2), y
  )");
  auto graph = ImportTorchScript(m);
  ASSERT_TRUE(graph.ok()) << graph.status();
  EXPECT_TRUE(FindEqualizablePairs(*graph).empty());
}

TEST(EqualizeTest, WeightRangesEqualizedWithTheSameFunction) {
  for (const int64_t groups : {1, 6}) {
    SCOPED_TRACE(groups);
    Graph graph = Chain("torch.relu(z)", groups);
    const at::Tensor x = at::randn({4, 3, 8, 8}) * 50;
    const at::Tensor before = testing::RunFp32(graph, x);
    const std::vector<EqualizablePair> pairs = FindEqualizablePairs(graph);
    ASSERT_EQ(pairs.size(), 2u);
    const double sqnr_before = WorstChannelSqnrDb(WeightOf(graph, pairs[0].first));

    auto equalized = EqualizeWeightRanges(&graph, pairs);
    ASSERT_TRUE(equalized.ok()) << equalized.status();
    ASSERT_EQ(equalized->size(), 2u);
    EXPECT_EQ((*equalized)[0].first, graph.nodes[static_cast<size_t>(pairs[0].first)].name);
    EXPECT_LT((*equalized)[0].min_scale, (*equalized)[0].max_scale);

    const at::Tensor after = testing::RunFp32(graph, x);
    EXPECT_TRUE(at::allclose(after, before, 1e-3, 1e-2)) << (after - before).abs().max().item<float>();
    // The skew is gone: conv1's rows span far less than 243x, so one int8
    // scale rounds even the smallest one well.
    const at::Tensor w1 = WeightOf(graph, pairs[0].first);
    const at::Tensor rows = w1.abs().reshape({6, -1}).amax(1);
    EXPECT_LT((rows.max() / rows.min()).item<double>(), 16.0) << rows;
    EXPECT_GT(WorstChannelSqnrDb(w1), sqnr_before + 20.0) << sqnr_before;
    // Each pair's ranges meet in the middle once the sweeps settle: conv1's
    // row c spans what conv2's column c spans (up to one common factor).
    const at::Tensor w2 = WeightOf(graph, pairs[0].second);
    const at::Tensor columns =
        groups == 1 ? w2.abs().transpose(0, 1).reshape({6, -1}).amax(1) : w2.abs().reshape({6, -1}).amax(1);
    const at::Tensor ratio = rows / columns;
    EXPECT_LT((ratio.max() / ratio.min()).item<double>(), 1.01) << ratio;
  }
}

TEST(EqualizeTest, ActivationRangesBalancedAgainstTheNextWeightsWithTheSameFunction) {
  Graph graph = Chain("torch.relu(z)");
  DatasetSpec spec;
  spec.path = testing::CalibrationPath();
  auto dataset = OpenDataset(spec);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  auto images = (*dataset)->ReadBatch(0, 8);
  ASSERT_TRUE(images.ok()) << images.status();
  const at::Tensor x = images->images;
  const at::Tensor before = testing::RunFp32(graph, x);
  const std::vector<EqualizablePair> pairs = FindEqualizablePairs(graph);
  ASSERT_EQ(pairs.size(), 2u);

  // Ranges measured on 64 real CIFAR images.
  auto ranges = MeasureChannelRanges(graph, {pairs[0].value, pairs[1].value}, dataset->get(), 64, 16);
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  ASSERT_EQ(ranges->size(), 2u);
  const at::Tensor a = ranges->at(pairs[0].value);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{6}));
  // The 3^c skew shows in conv1's output channels.
  EXPECT_GT((a.max() / a.min()).item<double>(), 50.0) << a;

  // Both pairs would move conv2's weights: the first alone is checked.
  auto equalized = EqualizeActivationRanges(&graph, {pairs[0]}, *ranges);
  ASSERT_TRUE(equalized.ok()) << equalized.status();
  ASSERT_EQ(equalized->size(), 1u);
  const at::Tensor after = testing::RunFp32(graph, x);
  EXPECT_TRUE(at::allclose(after, before, 1e-3, 1e-2)) << (after - before).abs().max().item<float>();

  // Measured again, each channel's range now equals its column's in conv2
  // (up to one common factor): a_c / s_c = w_c * s_c.
  auto again = MeasureChannelRanges(graph, {pairs[0].value}, dataset->get(), 64, 16);
  ASSERT_TRUE(again.ok()) << again.status();
  const at::Tensor w2 = WeightOf(graph, pairs[0].second).to(at::kDouble);
  const at::Tensor columns = w2.abs().transpose(0, 1).reshape({6, -1}).amax(1);
  const at::Tensor ratio = again->at(pairs[0].value) / columns;
  EXPECT_LT((ratio.max() / ratio.min()).item<double>(), 1.01) << ratio;
  const at::Tensor a_after = again->at(pairs[0].value);
  EXPECT_LT((a_after.max() / a_after.min()).item<double>(), (a.max() / a.min()).item<double>() / 4) << a_after;

  // A range of the wrong length names the layer.
  std::map<int, at::Tensor> wrong = {{pairs[0].value, at::ones({5}, at::kDouble)}};
  auto bad = EqualizeActivationRanges(&graph, pairs, wrong);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(graph.nodes[static_cast<size_t>(pairs[0].first)].name), std::string::npos)
      << bad.status();
}

}  // namespace
}  // namespace quantd::engine
