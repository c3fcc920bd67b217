// Issue #12: on a MobileNetV2-style model the test builds itself (inverted
// residuals, depthwise convolutions, ReLU6, BatchNorm statistics warmed on
// CIFAR images; worker/engine/testing/mobilenet_v2_sqnr.py), the best
// preset's output SQNR against FP32 beats PyTorch 1.13's best eager-mode
// preset by at least 2 dB: same calibration images, same test images, both
// int8 models run by PyTorch (quantd's artifact through torch.jit.load).

#include <gtest/gtest.h>

#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "worker/engine/quantizer.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

std::string Script() { return testing::SourceDir() + "/worker/engine/testing/mobilenet_v2_sqnr.py"; }

TEST(MobileNetV2Test, BestPresetBeatsPyTorchsBestEagerPresetByTwoDb) {
  const std::string dir = testing::MakeTempDir("mobilenet_v2");
  auto built = testing::RunCommand(testing::Python() + " " + Script() + " build " + dir + " " + testing::FixturesDir());
  ASSERT_TRUE(built.ok()) << built.status();
  std::ifstream eager_file(dir + "/eager.json");
  const nlohmann::json eager = nlohmann::json::parse(eager_file);
  double best_eager = -1e9;
  std::string best_eager_preset;
  for (const auto& [preset, db] : eager.at("eager_sqnr_db").items()) {
    if (db.get<double>() > best_eager) {
      best_eager = db.get<double>();
      best_eager_preset = preset;
    }
  }
  ASSERT_FALSE(best_eager_preset.empty()) << eager.dump();

  QuantizeOptions options;
  options.model_path = dir + "/mobilenet_v2.pt";
  options.calibration.path = testing::CalibrationPath();
  options.calibration.limit = eager.at("calibration_images").get<int64_t>();
  options.batch_size = 100;  // as the eager baselines observe them
  options.fusion.automatic = true;
  options.qconfig.preset = "best";
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& report = (*model)->report();
  EXPECT_EQ(report.fallbacks.size(), 0u);  // fully int8
  auto bytes = (*model)->SerializeArtifact();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const std::string artifact = dir + "/best.pt";
  std::ofstream(artifact, std::ios::binary) << *bytes;
  auto scored = testing::RunCommand(testing::Python() + " " + Script() + " score " + options.model_path + " " +
                                    artifact + " " + report.kernel_engine + " " + testing::FixturesDir());
  ASSERT_TRUE(scored.ok()) << scored.status();
  const double best = nlohmann::json::parse(*scored).at("sqnr_db").get<double>();

  std::cout << "MobileNetV2-style model, output SQNR against FP32 on " << eager.at("scored_images")
            << " test images, calibrated on " << options.calibration.limit << " images:\n";
  for (const auto& [preset, db] : eager.at("eager_sqnr_db").items()) {
    std::cout << "  PyTorch eager " << preset << ": " << db.get<double>() << " dB\n";
  }
  std::cout << "  quantd best (" << report.qconfig_description << ", kernels " << report.kernel_engine
            << "): " << best << " dB\n";
  EXPECT_GE(best, best_eager + 2.0) << "best eager preset: " << best_eager_preset;
}

}  // namespace
}  // namespace quantd::engine
