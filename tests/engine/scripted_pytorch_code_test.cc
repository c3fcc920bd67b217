// Models scripted by users run PyTorch's own torch.nn code, which branches and
// loops on its input's shape (F.interpolate, behind nn.Upsample). quantd's
// import cannot follow that code; it must say so, naming the PyTorch code and
// the way out (torch.jit.trace), not send the user looking for a loop of
// their own. Arguments with defaults run with their defaults, as TorchScript
// runs them when the input comes alone.

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/testing/run_fp32.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

class ScriptedPyTorchCodeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("scripted_pytorch_code"));
    made_ = new absl::Status(testing::RunCommand(testing::Python() + " " + testing::SourceDir() +
                                                 "/tests/engine/scripted_models.py " + *dir_)
                                 .status());
  }
  static std::string Model(const std::string& name) { return *dir_ + "/" + name + ".pt"; }

  static std::string* dir_;
  static absl::Status* made_;
};
std::string* ScriptedPyTorchCodeTest::dir_ = nullptr;
absl::Status* ScriptedPyTorchCodeTest::made_ = nullptr;

TEST_F(ScriptedPyTorchCodeTest, UpsamplingIsNamedWithTheWayOut) {
  ASSERT_TRUE(made_->ok()) << *made_;
  const absl::Status module = ImportTorchScriptFile(Model("upsampled")).status();
  EXPECT_EQ(module.code(), absl::StatusCode::kInvalidArgument) << module;
  EXPECT_EQ(module.message(),
            "module 'up' runs torch.nn.Upsample's call of torch.nn.functional.interpolate, whose scripted code "
            "branches or loops on its input's shape, which quantd's import cannot follow; save the model with "
            "torch.jit.trace instead (traced, it runs as recorded, in FP32 where it has no int8 kernel)");
  const absl::Status function = ImportTorchScriptFile(Model("interpolated")).status();
  EXPECT_EQ(function.code(), absl::StatusCode::kInvalidArgument) << function;
  EXPECT_EQ(function.message().rfind("the model's forward runs torch.nn.functional.interpolate, whose scripted code", 0),
            0u)
      << function;
}

TEST_F(ScriptedPyTorchCodeTest, ArgumentsWithDefaultsTakeThem) {
  ASSERT_TRUE(made_->ok()) << *made_;
  absl::StatusOr<Graph> graph = ImportTorchScriptFile(Model("default_arguments"));
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_EQ(graph->inputs.size(), 1u) << "k, relu and bias are their defaults, not inputs";
  const at::Tensor x = at::randn({2, 3, 8, 8});
  const at::Tensor expected = graph->module.forward({x}).toTensor();
  EXPECT_TRUE(at::allclose(testing::RunFp32(*graph, x), expected)) << "k = 2 and the ReLU, as the model runs alone";
}

}  // namespace
}  // namespace quantd::engine
