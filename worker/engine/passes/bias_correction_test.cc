#include "worker/engine/passes/bias_correction.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

namespace quantd::engine {
namespace {

// Per-output-channel symmetric int8, as the weight observers quantize.
at::Tensor QuantizePerChannel(const at::Tensor& w) {
  const at::Tensor scales = w.abs().flatten(1).amax(1).to(at::kDouble) / 127.5;
  return at::quantize_per_channel(w, scales, at::zeros({w.size(0)}, at::kLong), 0, at::kQInt8);
}

Node ConvNode(const at::Tensor& weight, const c10::IValue& bias, int64_t stride, int64_t padding, int64_t groups) {
  Node node;
  node.kind = OpKind::kConv2d;
  node.name = "conv";
  node.inputs = {Operand::Value(0),
                 Operand::Constant(weight),
                 Operand::Constant(bias),
                 Operand::Constant(std::vector<int64_t>{stride, stride}),
                 Operand::Constant(std::vector<int64_t>{padding, padding}),
                 Operand::Constant(std::vector<int64_t>{1, 1}),
                 Operand::Constant(groups)};
  return node;
}

// The mean output of the layer per channel over a batch: what correction
// must make the int8 weights reproduce.
at::Tensor MeanConvOutput(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                          int64_t padding, int64_t groups) {
  return at::conv2d(x, w, b, {stride, stride}, {padding, padding}, {1, 1}, groups).mean({0, 2, 3});
}

// Inputs with a large mean, as raw pixels are: int8 rounding of the weights
// then shifts the output mean by far more than its noise.
at::Tensor PixelLikeImages(int64_t n, int64_t c, int64_t h, int64_t w) {
  return at::rand({n, c, h, w}, at::kFloat) * 255;
}

TEST(BiasCorrectionTest, IntWeightsReproduceTheFp32MeanOutputIncludingPaddedBorders) {
  at::manual_seed(3);
  struct Case {
    int64_t in, out, stride, padding, groups;
  };
  for (const Case& c : std::vector<Case>{{3, 16, 1, 1, 1}, {16, 32, 2, 0, 1}, {8, 8, 1, 1, 8}}) {
    SCOPED_TRACE(testing::Message() << "in " << c.in << " out " << c.out << " stride " << c.stride << " groups "
                                    << c.groups);
    const at::Tensor x = PixelLikeImages(64, c.in, 12, 12);
    const at::Tensor w = at::randn({c.out, c.in / c.groups, 3, 3}) * 0.1;
    const at::Tensor b = at::randn({c.out});
    const at::Tensor qw = QuantizePerChannel(w);
    const Node node = ConvNode(w, b, c.stride, c.padding, c.groups);

    absl::StatusOr<at::Tensor> corrected = CorrectedBias(node, qw, x.mean(0));
    ASSERT_TRUE(corrected.ok()) << corrected.status();
    const at::Tensor want = MeanConvOutput(x, w, b, c.stride, c.padding, c.groups);
    const at::Tensor uncorrected = MeanConvOutput(x, qw.dequantize(), b, c.stride, c.padding, c.groups);
    const at::Tensor got = MeanConvOutput(x, qw.dequantize(), *corrected, c.stride, c.padding, c.groups);
    const double shift = (uncorrected - want).abs().max().item<double>();
    const double left = (got - want).abs().max().item<double>();
    EXPECT_GT(shift, 1e-3);      // rounding moved the mean output
    EXPECT_LT(left, 1e-3);       // the corrected bias moves it back
    EXPECT_LT(left, shift / 50);
  }
}

TEST(BiasCorrectionTest, LinearLayerAndMissingBias) {
  at::manual_seed(4);
  const at::Tensor x = at::rand({256, 64}) * 10;
  const at::Tensor w = at::randn({10, 64}) * 0.3;
  const at::Tensor qw = QuantizePerChannel(w);
  Node node;
  node.kind = OpKind::kLinear;
  node.name = "fc";
  node.inputs = {Operand::Value(0), Operand::Constant(w), Operand::Constant(c10::IValue())};
  absl::StatusOr<at::Tensor> corrected = CorrectedBias(node, qw, x.mean(0));
  ASSERT_TRUE(corrected.ok()) << corrected.status();
  ASSERT_EQ(corrected->sizes(), at::IntArrayRef({10}));
  const at::Tensor want = at::linear(x, w).mean(0);
  const at::Tensor got = at::linear(x, qw.dequantize(), *corrected).mean(0);
  EXPECT_GT((at::linear(x, qw.dequantize()).mean(0) - want).abs().max().item<double>(), 1e-3);
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-4);
}

// A linear layer on a sequence ([N, T, F]): the mean is kept per position,
// [T, F]. That failed the whole job with INTERNAL once.
TEST(BiasCorrectionTest, LinearLayerOnASequence) {
  at::manual_seed(5);
  const at::Tensor x = at::rand({64, 7, 32}) * 10 + at::arange(7).view({1, 7, 1});
  const at::Tensor w = at::randn({10, 32}) * 0.3;
  const at::Tensor qw = QuantizePerChannel(w);
  Node node;
  node.kind = OpKind::kLinear;
  node.name = "fc";
  node.inputs = {Operand::Value(0), Operand::Constant(w), Operand::Constant(at::randn({10}))};
  absl::StatusOr<at::Tensor> corrected = CorrectedBias(node, qw, x.mean(0));
  ASSERT_TRUE(corrected.ok()) << corrected.status();
  ASSERT_EQ(corrected->sizes(), at::IntArrayRef({10}));
  const at::Tensor want = at::linear(x, w, node.inputs[2].constant.toTensor()).mean(std::vector<int64_t>{0, 1});
  const at::Tensor got = at::linear(x, qw.dequantize(), *corrected).mean(std::vector<int64_t>{0, 1});
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-4);
}

TEST(BiasCorrectionTest, MeanOfTheWrongShapeIsAnError) {
  const at::Tensor w = at::randn({4, 3, 3, 3});
  const Node node = ConvNode(w, at::zeros({4}), 1, 1, 1);
  absl::StatusOr<at::Tensor> corrected = CorrectedBias(node, QuantizePerChannel(w), at::zeros({2, 8, 8}));
  EXPECT_EQ(corrected.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(corrected.status().message().find("conv"), std::string::npos);
}

TEST(BiasCorrectionTest, InputsAreTheConvAndLinearInputs) {
  Graph graph;
  Node conv = ConvNode(at::zeros({1, 1, 1, 1}), c10::IValue(), 1, 0, 1);
  conv.inputs[0] = Operand::Value(5);
  Node add;
  add.kind = OpKind::kAdd;
  add.inputs = {Operand::Value(6), Operand::Value(7)};
  Node linear;
  linear.kind = OpKind::kLinear;
  linear.inputs = {Operand::Value(8), Operand::Constant(at::zeros({1, 1})), Operand::Constant(c10::IValue())};
  Node removed = conv;
  removed.inputs[0] = Operand::Value(9);
  removed.removed = true;
  graph.nodes = {conv, add, linear, removed};
  EXPECT_EQ(BiasCorrectionInputs(graph), (std::vector<int>{5, 8}));
}

}  // namespace
}  // namespace quantd::engine
