// Faithfulness on the real fixtures: quantd's int8 ResNet8 against PyTorch
// 1.13 eager-mode PTQ computed in the same test run (tests/engine/
// pytorch_reference.py, Debian's python3-torch), same qconfig numerics, same
// 1000 calibration images in batches of 100, the eager fusion groups (and
// automatic fusion against eager mode's add_relu), on the kernel engine quantd
// chose for this CPU: an exact one, so on any CPU the numbers stay near the
// FP32 model's (on an AVX2 CPU, onednn kernels would wreck the 8-bit presets).

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "worker/engine/quantizer.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

struct ParityCase {
  std::string reference_qconfig;  // pytorch_reference.py --qconfig
  std::string preset;             // ours; empty = custom minmax
  bool histogram;
  bool auto_fusion = false;
};

void PrintTo(const ParityCase& c, std::ostream* os) {
  *os << c.reference_qconfig << (c.auto_fusion ? " auto" : " groups");
}

class PyTorchParityTest : public ::testing::TestWithParam<ParityCase> {};

// PyTorch module names -> quantd layer names.
std::string OurName(const std::string& torch_name) {
  if (torch_name == "quant") return "quantize:x";
  const std::string suffix = ".skip_add";
  if (torch_name.size() > suffix.size() && torch_name.compare(torch_name.size() - suffix.size(), suffix.size(), suffix) == 0) {
    return torch_name.substr(0, torch_name.size() - suffix.size()) + ":add";
  }
  return torch_name;
}

TEST_P(PyTorchParityTest, AccuracyAndQParamsMatchEagerMode) {
  const ParityCase& c = GetParam();
  QuantizeOptions options;
  options.model_path = testing::ResNet8Path();
  options.calibration.path = testing::CalibrationPath();
  if (c.auto_fusion) {
    options.fusion.automatic = true;
  } else {
    options.fusion.groups = testing::ResNet8FusionGroups();
  }
  options.qconfig.preset = c.preset;
  if (c.preset.empty()) {
    options.qconfig.activation_observer = "minmax";
    options.qconfig.weight_observer = "per_channel_symmetric";
    options.qconfig.reduce_range = false;
  }
  DatasetSpec test;
  test.path = testing::TestSetPath();
  options.evaluation = test;
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& r = (*model)->report();
  EXPECT_TRUE(r.warnings.empty());

  // PyTorch on the same kernels: the ones quantd chose as exact here.
  auto reference_json = testing::RunCommand(
      testing::Python() + " " + testing::SourceDir() + "/tests/engine/pytorch_reference.py --fixtures " +
      testing::FixturesDir() + " --qconfig " + c.reference_qconfig + " --engine " + r.kernel_engine +
      " --fusion " + (c.auto_fusion ? "auto" : "groups"));
  ASSERT_TRUE(reference_json.ok()) << reference_json.status();
  const nlohmann::json reference = nlohmann::json::parse(*reference_json);

  const int64_t theirs = reference["correct"];
  const int64_t ours = r.int8_accuracy->correct;
  std::cout << "[ " << c.reference_qconfig << (c.auto_fusion ? " auto" : " groups") << " on " << r.kernel_engine
            << " ] int8 top-1: quantd " << ours << "/10000, PyTorch eager " << theirs << "/10000 (FP32 "
            << r.fp32_accuracy->correct << "); " << r.cpu.Summary() << std::endl;
  EXPECT_EQ(r.fp32_accuracy->correct, 8719);
  EXPECT_LE(std::abs(ours - theirs), 15) << "more than 0.15 points apart";

  std::map<std::string, const LayerReport*> layers;
  for (const auto& l : r.layers) layers[l.name] = &l;
  int compared = 0;
  for (const auto& [name, q] : reference["qparams"].items()) {
    ASSERT_TRUE(layers.count(OurName(name))) << "no layer " << OurName(name) << " for PyTorch's " << name;
    const LayerReport& l = *layers[OurName(name)];
    const double scale = q["scale"];
    const int64_t zero_point = q["zero_point"];
    const double rel = std::abs(l.output_scale - scale) / scale;
    if (c.histogram) {
      EXPECT_LE(rel, 0.01) << name;
      EXPECT_LE(std::abs(l.output_zero_point - zero_point), 1) << name;
    } else {
      EXPECT_LE(rel, 1e-5) << name;
      EXPECT_EQ(l.output_zero_point, zero_point) << name;
    }
    if (q.contains("weight_scales")) {
      const std::vector<double> ws = q["weight_scales"];
      ASSERT_EQ(ws.size(), l.weight_scales.size()) << name;
      for (size_t i = 0; i < ws.size(); ++i) EXPECT_NEAR(l.weight_scales[i], ws[i], 1e-5 * ws[i]) << name << "[" << i << "]";
    }
    ++compared;
  }
  EXPECT_EQ(compared, 14);  // input + 9 convs + 3 adds + fc
}

INSTANTIATE_TEST_SUITE_P(Presets, PyTorchParityTest,
                         ::testing::Values(ParityCase{"fbgemm", "fbgemm", true}, ParityCase{"onednn", "onednn", true},
                                           ParityCase{"qnnpack", "qnnpack", true}, ParityCase{"minmax", "", false},
                                           ParityCase{"fbgemm", "fbgemm", true, true},
                                           ParityCase{"onednn", "onednn", true, true},
                                           ParityCase{"qnnpack", "qnnpack", true, true}),
                         [](const auto& info) {
                           return info.param.reference_qconfig + (info.param.auto_fusion ? "_auto" : "");
                         });

}  // namespace
}  // namespace quantd::engine
