#include "worker/engine/passes/fuse_modules.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/runtime/fp32_executor.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

Graph ResNet8() {
  auto graph = ImportTorchScriptFile(testing::ResNet8Path());
  EXPECT_TRUE(graph.ok()) << graph.status();
  return std::move(graph).value();
}

absl::Status FuseError(const std::vector<std::vector<std::string>>& groups) {
  Graph graph = ResNet8();
  FusionSpec spec;
  spec.groups = groups;
  return FuseModules(&graph, spec).status();
}

TEST(FuseModulesTest, ExplicitSpecFoldsBatchNormWithoutChangingOutputs) {
  Graph original = ResNet8();
  Graph fused = ResNet8();
  FusionSpec spec;
  spec.groups = testing::ResNet8FusionGroups();
  auto groups = FuseModules(&fused, spec);
  ASSERT_TRUE(groups.ok()) << groups.status();
  EXPECT_EQ(*groups, testing::ResNet8FusionGroups());
  at::manual_seed(0);
  at::Tensor x = at::rand({8, 3, 32, 32}) * 255;
  auto a = Fp32Executor::Create(&original)->Run({x});
  auto b = Fp32Executor::Create(&fused)->Run({x});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::allclose((*a)[0].toTensor(), (*b)[0].toTensor(), 1e-4, 1e-5));
  int live_bn = 0;
  for (const Node& n : fused.nodes) live_bn += !n.removed && n.kind == OpKind::kBatchNorm;
  EXPECT_EQ(live_bn, 0);
}

TEST(FuseModulesTest, AutoFindsTheEagerGroupsPlusResidualAddRelu) {
  Graph graph = ResNet8();
  FusionSpec spec;
  spec.automatic = true;
  auto groups = FuseModules(&graph, spec);
  ASSERT_TRUE(groups.ok()) << groups.status();
  std::vector<std::vector<std::string>> module_groups, add_groups;
  for (const auto& g : *groups) (g[0].find(":add") != std::string::npos ? add_groups : module_groups).push_back(g);
  EXPECT_EQ(module_groups, testing::ResNet8FusionGroups());
  EXPECT_EQ(add_groups, (std::vector<std::vector<std::string>>{
                            {"layer1:add", "layer1.relu2"}, {"layer2:add", "layer2.relu2"}, {"layer3:add", "layer3.relu2"}}));
}

TEST(FuseModulesTest, UnknownModuleNamesTheGroupAndEntry) {
  absl::Status s = FuseError({{"conv1", "bn1", "relu1"}, {"layer9.conv1", "layer9.bn1"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("[layer9.conv1, layer9.bn1]"), std::string::npos) << s;
  EXPECT_NE(s.message().find("'layer9.conv1'"), std::string::npos) << s;
}

TEST(FuseModulesTest, WrongTypesAreRejected) {
  absl::Status s = FuseError({{"bn1", "conv1"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("cannot fuse (batch_norm, conv2d)"), std::string::npos) << s;
}

TEST(FuseModulesTest, NonConsecutiveModulesAreRejected) {
  absl::Status s = FuseError({{"conv1", "relu1"}});  // bn1 sits between them
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("not consecutive"), std::string::npos) << s;
}

TEST(FuseModulesTest, ContainerModulesAreAmbiguous) {
  absl::Status s = FuseError({{"layer1", "layer1.relu2"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'layer1' is a container module"), std::string::npos) << s;
  EXPECT_NE(s.message().find("layer1:add"), std::string::npos) << s;
}

// A container with no op of its own (its submodules run them) is named as
// one too; it was "no module or op named 'head' runs in the model's forward".
TEST(FuseModulesTest, AContainerWithoutOpsOfItsOwnIsNamedAsOne) {
  torch::jit::Module act("Act");
  act.define("def forward(self, x):\n    return torch.relu(x)\n");
  torch::jit::Module head("Head");
  head.register_module("act", act);
  head.define("def forward(self, x):\n    return self.act.forward(x)\n");
  torch::jit::Module root("Root");
  root.register_parameter("w", at::randn({4, 3, 3, 3}), false);
  root.register_module("head", head);
  root.define("def forward(self, x):\n    return self.head.forward(torch.conv2d(x, self.w))\n");
  auto graph = ImportTorchScript(root);
  ASSERT_TRUE(graph.ok()) << graph.status();
  FusionSpec spec;
  spec.groups = {{"head", "conv2d"}};
  absl::Status s = FuseModules(&*graph, spec).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'head' is a container module (its ops run in its submodules); name one of them, e.g. "
                             "'head.act"),
            std::string::npos)
      << s;
}

TEST(FuseModulesTest, IntermediateWithAnotherConsumerIsRejected) {
  const std::string dir = testing::MakeTempDir("fuse_small_model");
  auto made = testing::RunCommand(testing::Python() + " " + testing::SourceDir() +
                                  "/worker/engine/testing/make_small_model.py " + dir);
  ASSERT_TRUE(made.ok()) << made.status();
  auto graph = ImportTorchScriptFile(dir + "/small_model.pt");
  ASSERT_TRUE(graph.ok()) << graph.status();
  FusionSpec spec;
  spec.groups = {{"dw", "dw_relu"}};
  absl::Status s = FuseModules(&*graph, spec).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("the output of 'dw' is also used by 'branch'"), std::string::npos) << s;
}

}  // namespace
}  // namespace quantd::engine
