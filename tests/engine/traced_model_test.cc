// torch.jit.trace, the most common way people export, on the real fixture:
// the traced ResNet8 (made by tests/engine/pytorch_reference.py --trace from
// the same weights) quantizes to the scripted fixture's program, byte for
// byte, with the same accuracy.

#include <gtest/gtest.h>

#include "worker/engine/quantizer.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

class TracedResNet8Test : public ::testing::TestWithParam<bool> {};

TEST_P(TracedResNet8Test, SameArtifactAndAccuracyAsTheScriptedModel) {
  const std::string traced = testing::MakeTempDir("traced_resnet8") + "/resnet8_traced.pt";
  auto made = testing::RunCommand(testing::Python() + " " + testing::SourceDir() +
                                  "/tests/engine/pytorch_reference.py --fixtures " + testing::FixturesDir() +
                                  " --trace " + traced);
  ASSERT_TRUE(made.ok()) << made.status();
  DatasetSpec test;
  test.path = testing::TestSetPath();
  std::map<std::string, std::unique_ptr<QuantizedModel>> models;
  for (const std::string& path : {testing::ResNet8Path(), traced}) {
    QuantizeOptions options;
    options.model_path = path;
    options.calibration.path = testing::CalibrationPath();
    options.qconfig.preset = "fbgemm";
    if (GetParam()) {
      options.fusion.automatic = true;
    } else {
      options.fusion.groups = testing::ResNet8FusionGroups();
    }
    options.evaluation = test;
    auto model = Quantize(options);
    ASSERT_TRUE(model.ok()) << path << ": " << model.status();
    models[path == traced ? "traced" : "scripted"] = std::move(model).value();
  }
  const QuantizeReport& scripted = models["scripted"]->report();
  const QuantizeReport& traced_report = models["traced"]->report();
  std::cout << "[ fbgemm " << (GetParam() ? "auto" : "groups") << " ] int8 top-1: scripted "
            << scripted.int8_accuracy->correct << "/10000, traced " << traced_report.int8_accuracy->correct
            << "/10000" << std::endl;
  EXPECT_EQ(traced_report.fused_groups, scripted.fused_groups);
  EXPECT_EQ(traced_report.fallbacks.size(), 1u);  // softmax, as in the scripted model
  EXPECT_EQ(traced_report.fp32_accuracy->correct, 8719);
  EXPECT_LE(std::abs(traced_report.int8_accuracy->correct - scripted.int8_accuracy->correct), 15);
  auto a = models["scripted"]->SerializeArtifact();
  auto b = models["traced"]->SerializeArtifact();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b) << "the traced model's artifact differs from the scripted one's";
}

INSTANTIATE_TEST_SUITE_P(Fusion, TracedResNet8Test, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Auto" : "ExplicitGroups"; });

}  // namespace
}  // namespace quantd::engine
