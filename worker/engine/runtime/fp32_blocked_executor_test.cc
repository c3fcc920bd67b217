#include "worker/engine/runtime/fp32_blocked_executor.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/api/module.h>

#include <map>

#include "worker/engine/data/dataset.h"
#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/passes/fuse_modules.h"
#include "worker/engine/runtime/fp32_executor.h"
#include "worker/engine/runtime/int8_capabilities.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

// The channel block oneDNN's FP32 convolutions use on this CPU: 16 floats
// (one zmm register) with AVX-512, 8 (one ymm) with AVX2.
int64_t ExpectedBlock() {
  const std::string isa = OneDnnEffectiveIsa();
  if (isa.rfind("avx512", 0) == 0) return 16;
  if (isa.rfind("avx", 0) == 0) return 8;
  return 0;  // unknown: not checked
}

void ExpectBlockWidth(const at::Tensor& t) {
  if (ExpectedBlock() != 0) {
    EXPECT_EQ(t.size(4), ExpectedBlock()) << "oneDNN isa " << OneDnnEffectiveIsa();
  }
}

// A tapped tensor as the NCHW value it holds.
at::Tensor AsPlain(const at::Tensor& t, TapLayout layout) {
  if (layout == TapLayout::kPlain) return t.contiguous();
  EXPECT_EQ(t.dim(), 5);
  return t.permute({0, 1, 4, 2, 3}).reshape({t.size(0), t.size(1) * t.size(4), t.size(2), t.size(3)});
}

// The acceptance numbers rest on this: the oneDNN path reproduces LibTorch's
// FP32 activations bit for bit, for every value calibration observes.
// Explicit groups keep the residual add and its ReLU apart; auto fuses them.
class Fp32BlockedExecutorTest : public ::testing::TestWithParam<bool> {};

TEST_P(Fp32BlockedExecutorTest, ResNet8ValuesAreBitIdenticalToLibTorch) {
  auto graph = ImportTorchScriptFile(testing::ResNet8Path());
  ASSERT_TRUE(graph.ok()) << graph.status();
  const FusionSpec fusion = GetParam() ? FusionSpec{true, {}} : FusionSpec{false, testing::ResNet8FusionGroups()};
  ASSERT_TRUE(FuseModules(&*graph, fusion).ok());
  auto blocked = Fp32BlockedExecutor::Create(&*graph);
  ASSERT_TRUE(blocked.ok()) << blocked.status();
  // The acceptance numbers depend on this path: a build without it (CMake
  // not finding oneDNN's headers) must fail here, not skip.
  ASSERT_NE(*blocked, nullptr) << "this build has no oneDNN calibration path (QUANTD_HAVE_ONEDNN off)";
  auto plain = Fp32Executor::Create(&*graph);
  ASSERT_TRUE(plain.ok());

  DatasetSpec spec;
  spec.path = testing::CalibrationPath();
  auto dataset = OpenDataset(spec);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  const int previous_threads = at::get_num_threads();
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    for (int64_t n : {25, 16, 40}) {
      auto batch = (*dataset)->ReadBatch(100, n);
      ASSERT_TRUE(batch.ok());
      ASSERT_TRUE((*blocked)->Accepts(batch->images));
      at::NoGradGuard no_grad;
      std::map<int, at::Tensor> expected, actual;
      ASSERT_TRUE(plain->Run({batch->images}, [&](int v, const at::Tensor& t) { expected[v] = t.clone(); }).ok());
      int blocked_values = 0;
      ASSERT_TRUE((*blocked)
                      ->Run(batch->images,
                            [&](int v, const at::Tensor& t, TapLayout layout) {
                              actual[v] = AsPlain(t, layout).clone();
                              if (layout == TapLayout::kBlocked) {
                                ++blocked_values;
                                ExpectBlockWidth(t);
                              }
                            })
                      .ok());
      ASSERT_EQ(actual.size(), expected.size());
      EXPECT_GE(blocked_values, 9) << "the convolutions' outputs should stay blocked";
      for (const auto& [value, tensor] : expected) {
        ASSERT_TRUE(actual.count(value)) << value;
        // Bit for bit: the int32 views compare the encodings, -0.0 and NaN included.
        EXPECT_TRUE(at::equal(actual[value].contiguous().view(at::kInt), tensor.contiguous().view(at::kInt))) << "value " << value << ", batch " << n << ", threads "
                                                      << threads;
      }
    }
  }
  at::set_num_threads(previous_threads);
}

INSTANTIATE_TEST_SUITE_P(Fusion, Fp32BlockedExecutorTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Auto" : "ExplicitGroups"; });

// Channels that are not a multiple of 16 (outputs handed back as NCHW), a
// conv without bias, strides, zero pads of blocked values, an add of two
// blocked values and a graph input read by two convs.
TEST(Fp32BlockedExecutorRulesTest, SmallModelIsBitIdenticalToLibTorch) {
  torch::jit::Module small("Small");
  at::manual_seed(7);
  small.register_parameter("w1", at::randn({8, 3, 3, 3}), false);
  small.register_parameter("b1", at::randn({8}), false);
  small.register_parameter("w2", at::randn({16, 8, 3, 3}), false);
  small.register_parameter("w3", at::randn({16, 16, 1, 1}), false);
  small.register_parameter("w4", at::randn({16, 3, 3, 3}), false);
  small.define(R"(
    def forward(self, x):
        y = torch.relu(torch.conv2d(x, self.w1, self.b1, [1, 1], [1, 1]))
        z = torch.conv2d(y, self.w2, None, [2, 2], [1, 1])
        p = torch.constant_pad_nd(z, [0, 1, 0, 1], 0.0)
        s = torch.conv2d(p, self.w3, None, [1, 1], [0, 0])
        t = torch.conv2d(x, self.w4, None, [2, 2], [0, 0])
        return torch.relu(s + torch.constant_pad_nd(t, [0, 2, 0, 2], 0.0))
  )");
  auto graph = ImportTorchScript(small);
  ASSERT_TRUE(graph.ok()) << graph.status();
  auto blocked = Fp32BlockedExecutor::Create(&*graph);
  ASSERT_TRUE(blocked.ok()) << blocked.status();
  // The acceptance numbers depend on this path: a build without it (CMake
  // not finding oneDNN's headers) must fail here, not skip.
  ASSERT_NE(*blocked, nullptr) << "this build has no oneDNN calibration path (QUANTD_HAVE_ONEDNN off)";
  auto plain = Fp32Executor::Create(&*graph);
  ASSERT_TRUE(plain.ok());
  const at::Tensor x = at::randn({16, 3, 16, 16}) * 50;
  at::NoGradGuard no_grad;
  std::map<int, at::Tensor> expected, actual;
  ASSERT_TRUE(plain->Run({x}, [&](int v, const at::Tensor& t) { expected[v] = t.clone(); }).ok());
  std::map<TapLayout, int> layouts;
  ASSERT_TRUE((*blocked)
                  ->Run(x,
                        [&](int v, const at::Tensor& t, TapLayout layout) {
                          actual[v] = AsPlain(t, layout).clone();
                          ++layouts[layout];
                          if (layout == TapLayout::kBlocked) ExpectBlockWidth(t);
                        })
                  .ok());
  // The 16-channel values stay blocked on any CPU; the 8-channel conv's output
  // too where oneDNN blocks by 8 (AVX2), else it is handed back as NCHW.
  const bool blocks_of_8 = ExpectedBlock() == 8;
  EXPECT_GE(layouts[TapLayout::kBlocked], blocks_of_8 ? 6 : 5);
  EXPECT_GE(layouts[TapLayout::kPlain], blocks_of_8 ? 1 : 2);  // the input (and the 8-channel conv)
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [value, tensor] : expected) {
    EXPECT_TRUE(at::equal(actual[value].contiguous().view(at::kInt), tensor.contiguous().view(at::kInt)))
        << "value " << value;
  }
}

TEST(Fp32BlockedExecutorRulesTest, LeavesSmallBatchesAndInPlaceGraphsToLibTorch) {
  auto graph = ImportTorchScriptFile(testing::ResNet8Path());
  ASSERT_TRUE(graph.ok()) << graph.status();
  auto blocked = Fp32BlockedExecutor::Create(&*graph);
  ASSERT_TRUE(blocked.ok()) << blocked.status();
  if (*blocked != nullptr) {
    // LibTorch may run a 1x1 convolution of fewer than 16 images without oneDNN.
    EXPECT_FALSE((*blocked)->Accepts(at::zeros({15, 3, 32, 32})));
    EXPECT_TRUE((*blocked)->Accepts(at::zeros({16, 3, 32, 32})));
    EXPECT_FALSE((*blocked)->Accepts(at::zeros({16, 3, 32, 32}, at::kDouble)));
    EXPECT_FALSE((*blocked)->Run(at::zeros({4, 3, 32, 32}), nullptr).ok());
  }

  torch::jit::Module in_place("InPlace");
  in_place.register_parameter("weight", at::ones({16, 3, 3, 3}), false);
  in_place.define(R"(
    def forward(self, x):
        y = torch.conv2d(x, self.weight)
        y.relu_()
        return y
  )");
  auto mutating = ImportTorchScript(in_place);
  ASSERT_TRUE(mutating.ok()) << mutating.status();
  auto none = Fp32BlockedExecutor::Create(&*mutating);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, nullptr);
}

}  // namespace
}  // namespace quantd::engine
