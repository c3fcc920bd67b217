#include "worker/engine/passes/weight_rounding.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <vector>

namespace quantd::engine {
namespace {

at::Tensor RoundToNearest(const at::Tensor& w) {
  const at::Tensor scales = w.abs().flatten(1).amax(1).to(at::kDouble) / 127.5;
  return at::quantize_per_channel(w, scales, at::zeros({w.size(0)}, at::kLong), 0, at::kQInt8);
}

Graph OneNodeGraph(Node node) {
  Graph graph;
  node.id = 0;
  node.outputs = {1};
  graph.nodes.push_back(std::move(node));
  graph.inputs = {0};
  graph.num_values = 2;
  return graph;
}

Node Conv(const at::Tensor& weight, int64_t stride, int64_t padding, int64_t groups) {
  Node node;
  node.kind = OpKind::kConv2d;
  node.name = "conv";
  node.inputs = {Operand::Value(0),
                 Operand::Constant(weight),
                 Operand::Constant(c10::IValue()),
                 Operand::Constant(std::vector<int64_t>{stride, stride}),
                 Operand::Constant(std::vector<int64_t>{padding, padding}),
                 Operand::Constant(std::vector<int64_t>{1, 1}),
                 Operand::Constant(groups)};
  return node;
}

// Images whose neighbouring pixels and channels are correlated, as real
// feature maps are: smooth random fields plus a shared component.
at::Tensor CorrelatedImages(int64_t n, int64_t c, int64_t hw) {
  at::Tensor base = at::randn({n, 1, hw, hw});
  at::Tensor x = at::randn({n, c, hw, hw}) * 0.3 + base;
  return at::avg_pool2d(x, {3, 3}, {1, 1}, {1, 1}) * 20 + 5;
}

double OutputError(const at::Tensor& x, const at::Tensor& w, const at::Tensor& qw, int64_t stride, int64_t padding,
                   int64_t groups) {
  const at::Tensor diff = at::conv2d(x, w - qw.dequantize(), {}, {stride, stride}, {padding, padding}, {1, 1}, groups);
  return diff.pow(2).mean().item<double>();
}

TEST(WeightRoundingTest, FittedRoundingHasLessOutputErrorThanRoundingToNearestWithTheSameScales) {
  at::manual_seed(5);
  struct Case {
    int64_t in, out, stride, padding, groups;
  };
  for (const Case& c : std::vector<Case>{{3, 16, 1, 1, 1}, {16, 32, 2, 0, 1}, {8, 8, 1, 1, 8}}) {
    SCOPED_TRACE(testing::Message() << "in " << c.in << " out " << c.out << " groups " << c.groups);
    const at::Tensor w = at::randn({c.out, c.in / c.groups, 3, 3}) * 0.1;
    const Graph graph = OneNodeGraph(Conv(w, c.stride, c.padding, c.groups));
    const at::Tensor calibration = CorrelatedImages(64, c.in, 12);
    auto moments = InputSecondMoments(graph, {{0, calibration}});
    ASSERT_TRUE(moments.ok()) << moments.status();
    ASSERT_EQ(moments->count(0), 1u);
    EXPECT_EQ(moments->at(0).sizes(), (std::vector<int64_t>{c.groups, c.in / c.groups * 9, c.in / c.groups * 9}));

    const at::Tensor nearest = RoundToNearest(w);
    auto fitted = RoundToInputs(graph.nodes[0], nearest, moments->at(0));
    ASSERT_TRUE(fitted.ok()) << fitted.status();
    // Same qparams, other integers.
    EXPECT_TRUE(at::equal(fitted->q_per_channel_scales(), nearest.q_per_channel_scales()));
    EXPECT_TRUE(at::equal(fitted->q_per_channel_zero_points(), nearest.q_per_channel_zero_points()));
    EXPECT_FALSE(at::equal(fitted->int_repr(), nearest.int_repr()));
    // Each integer moves by a few steps at most: the error stays a rounding error.
    EXPECT_LE((fitted->int_repr().to(at::kInt) - nearest.int_repr().to(at::kInt)).abs().max().item<int>(), 4);

    // Less output error on held-out images from the same distribution.
    const at::Tensor held_out = CorrelatedImages(64, c.in, 12);
    const double e_nearest = OutputError(held_out, w, nearest, c.stride, c.padding, c.groups);
    const double e_fitted = OutputError(held_out, w, *fitted, c.stride, c.padding, c.groups);
    std::cout << "  output MSE: nearest " << e_nearest << ", fitted " << e_fitted << "\n";
    EXPECT_LT(e_fitted, 0.7 * e_nearest);
  }
}

// With independent inputs (H diagonal) rounding to nearest is optimal, and
// fitted rounding must reproduce it exactly.
TEST(WeightRoundingTest, IndependentInputsKeepRoundToNearest) {
  at::manual_seed(6);
  Node linear;
  linear.kind = OpKind::kLinear;
  linear.name = "fc";
  const at::Tensor w = at::randn({10, 24});
  linear.inputs = {Operand::Value(0), Operand::Constant(w), Operand::Constant(at::zeros({10}))};
  const Graph graph = OneNodeGraph(linear);
  // Rows that each excite one feature: E[x x^T] is diagonal.
  const at::Tensor x = at::eye(24) * at::arange(1, 25).to(at::kFloat).unsqueeze(1);
  auto moments = InputSecondMoments(graph, {{0, x}});
  ASSERT_TRUE(moments.ok()) << moments.status();
  const at::Tensor nearest = RoundToNearest(w);
  auto fitted = RoundToInputs(graph.nodes[0], nearest, moments->at(0));
  ASSERT_TRUE(fitted.ok()) << fitted.status();
  EXPECT_TRUE(at::equal(fitted->int_repr(), nearest.int_repr()));
}

TEST(WeightRoundingTest, LayersTooWideForTheFactorizationAreLeftOut) {
  const at::Tensor w = at::randn({4, 64, 8, 8});  // 4096 columns, as a classifier folded over an 8x8 map
  const Graph graph = OneNodeGraph(Conv(w, 1, 0, 1));
  auto moments = InputSecondMoments(graph, {{0, at::randn({2, 64, 8, 8})}});
  ASSERT_TRUE(moments.ok()) << moments.status();
  EXPECT_TRUE(moments->empty());
}

// Tuning converts once per trial from one calibration: the same weights
// and statistics give the same fit, computed once.
TEST(WeightRoundingTest, FitsAreReusedForTheSameWeightsAndStatistics) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({8, 4, 3, 3});
  Graph graph = OneNodeGraph(Conv(w, 1, 1, 1));
  auto moments = InputSecondMoments(graph, {{0, CorrelatedImages(16, 4, 6)}});
  ASSERT_TRUE(moments.ok()) << moments.status();
  const at::Tensor nearest = RoundToNearest(w);
  FittedWeights fitted;
  auto first = fitted.RoundToInputs(graph.nodes[0], nearest, moments->at(0));
  auto again = fitted.RoundToInputs(graph.nodes[0], RoundToNearest(w), moments->at(0));
  ASSERT_TRUE(first.ok() && again.ok());
  EXPECT_EQ(fitted.fits(), 1);
  EXPECT_TRUE(at::equal(again->int_repr(), first->int_repr()));
  auto direct = RoundToInputs(graph.nodes[0], nearest, moments->at(0));
  ASSERT_TRUE(direct.ok());
  EXPECT_TRUE(at::equal(direct->int_repr(), first->int_repr()));

  // Other qparams (another weight observer): fitted anew.
  const at::Tensor coarser =
      at::quantize_per_channel(w, nearest.q_per_channel_scales() * 2, nearest.q_per_channel_zero_points(), 0, at::kQInt8);
  auto other = fitted.RoundToInputs(graph.nodes[0], coarser, moments->at(0));
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(fitted.fits(), 2);
  EXPECT_TRUE(at::equal(other->q_per_channel_scales(), coarser.q_per_channel_scales()));
}

// Calibration feeds the accumulator a few images at a time (its sub-batches,
// here 7, so that pieces straddle the 16-image chunks): the statistics must
// be those of the whole tensor, bit for bit, so that fitted rounding (and the
// best preset's models) do not depend on the batch size.
TEST(WeightRoundingTest, StatisticsGatheredInPiecesEqualTheWholeTensors) {
  at::manual_seed(9);
  Graph graph;
  Node conv = Conv(at::randn({8, 4, 3, 3}), 1, 1, 1);
  conv.id = 0;
  conv.outputs = {1};
  Node linear;
  linear.kind = OpKind::kLinear;
  linear.name = "fc";
  linear.id = 1;
  linear.inputs = {Operand::Value(2), Operand::Constant(at::randn({10, 12})), Operand::Constant(c10::IValue())};
  linear.outputs = {3};
  graph.nodes = {conv, linear};
  graph.inputs = {0, 2};
  graph.num_values = 4;
  const at::Tensor images = CorrelatedImages(37, 4, 6);
  const at::Tensor features = at::randn({37, 12});
  auto whole = InputSecondMoments(graph, {{0, images}, {2, features}});
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->size(), 2u);

  InputMomentAccumulator pieces(graph);
  EXPECT_TRUE(pieces.Wants(0));
  EXPECT_TRUE(pieces.Wants(2));
  EXPECT_FALSE(pieces.Wants(1));
  for (int64_t first = 0; first < 37; first += 7) {
    const int64_t n = std::min<int64_t>(7, 37 - first);
    at::Tensor piece = images.narrow(0, first, n).clone();
    ASSERT_TRUE(pieces.Add(0, piece).ok());
    piece.fill_(1e6);  // the caller's tensor may be overwritten (in-place ops) once added
    ASSERT_TRUE(pieces.Add(2, features.narrow(0, first, n)).ok());
  }
  auto gathered = pieces.Finish();
  ASSERT_TRUE(gathered.ok()) << gathered.status();
  for (int node : {0, 1}) EXPECT_TRUE(at::equal(gathered->at(node), whole->at(node))) << node;
}

}  // namespace
}  // namespace quantd::engine
