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
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

// A tapped tensor in NCHW order: blocked values come as [N, C/16, H, W, 16].
at::Tensor AsPlain(const at::Tensor& t) {
  if (t.dim() != 5) return t.contiguous();
  return t.permute({0, 1, 4, 2, 3}).reshape({t.size(0), t.size(1) * t.size(4), t.size(2), t.size(3)});
}

std::map<int, at::Tensor> Collect(const std::function<void(const ValueTap&)>& run) {
  std::map<int, at::Tensor> seen;
  run([&](int value, const at::Tensor& t) { seen[value] = AsPlain(t).clone(); });
  return seen;
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
  if (*blocked == nullptr) GTEST_SKIP() << "this build has no oneDNN calibration path";
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
      auto expected = Collect([&](const ValueTap& tap) { ASSERT_TRUE(plain->Run({batch->images}, tap).ok()); });
      auto actual = Collect([&](const ValueTap& tap) { ASSERT_TRUE((*blocked)->Run(batch->images, tap).ok()); });
      ASSERT_EQ(actual.size(), expected.size());
      int blocked_values = 0;
      (*blocked)->Run(batch->images, [&](int, const at::Tensor& t) { blocked_values += t.dim() == 5; }).IgnoreError();
      EXPECT_GE(blocked_values, 9) << "the convolutions' outputs should stay blocked";
      for (const auto& [value, tensor] : expected) {
        ASSERT_TRUE(actual.count(value)) << value;
        EXPECT_TRUE(at::equal(actual[value], tensor)) << "value " << value << ", batch " << n << ", threads "
                                                      << threads;
      }
    }
  }
  at::set_num_threads(previous_threads);
}

INSTANTIATE_TEST_SUITE_P(Fusion, Fp32BlockedExecutorTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Auto" : "ExplicitGroups"; });

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
