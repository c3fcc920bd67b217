#include "worker/engine/runtime/fp32_executor.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/api/module.h>

#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

// Calibration copies what it observes only when an op may later overwrite it.
TEST(Fp32ExecutorTest, KnowsWhetherAnOpWritesIntoItsInputs) {
  torch::jit::Module in_place("InPlace");
  in_place.define(R"(
    def forward(self, x):
        y = x * 2.0
        y.add_(1.0)
        return y
  )");
  auto graph = ImportTorchScript(in_place);
  ASSERT_TRUE(graph.ok()) << graph.status();
  auto executor = Fp32Executor::Create(&*graph);
  ASSERT_TRUE(executor.ok());
  EXPECT_TRUE(executor->MutatesValues());
  auto out = executor->Run({at::ones({2})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(at::equal((*out)[0].toTensor(), at::full({2}, 3.0f)));

  auto resnet8 = ImportTorchScriptFile(testing::ResNet8Path());
  ASSERT_TRUE(resnet8.ok()) << resnet8.status();
  auto plain = Fp32Executor::Create(&*resnet8);
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->MutatesValues());
}

}  // namespace
}  // namespace quantd::engine
