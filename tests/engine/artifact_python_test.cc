// The artifact is a standard TorchScript module: Python's torch.jit.load
// (Debian's python3-torch 1.13) runs it and predicts exactly what quantd's
// own runtime predicts, on all 10000 test images: PyTorch's presets, and the
// best preset with its bias correction and pooling folded into the classifier.

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "worker/engine/quantizer.h"
#include "worker/engine/serialization/artifact_file.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

class ArtifactInPythonTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ArtifactInPythonTest, SamePredictionsOnTheWholeTestSet) {
  QuantizeOptions options;
  options.model_path = testing::ResNet8Path();
  options.calibration.path = testing::CalibrationPath();
  options.qconfig.preset = GetParam();
  options.fusion.automatic = true;
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto bytes = (*model)->SerializeArtifact();
  ASSERT_TRUE(bytes.ok());
  const std::string dir = testing::MakeTempDir("artifact_python_" + GetParam());
  ASSERT_TRUE(WriteFileAtomically(dir + "/int8.pt", *bytes).ok());

  DatasetSpec test;
  test.path = testing::TestSetPath();
  auto ours = (*model)->PredictInt8(test, 500);
  ASSERT_TRUE(ours.ok()) << ours.status();
  ASSERT_EQ(ours->size(), 10000u);

  auto result = testing::RunCommand(testing::Python() + " " + testing::SourceDir() +
                                    "/tests/engine/pytorch_reference.py --fixtures " + testing::FixturesDir() +
                                    " --engine " + (*model)->report().kernel_engine + " --artifact " + dir +
                                    "/int8.pt --artifact-preds " + dir + "/python_preds.u8");
  ASSERT_TRUE(result.ok()) << result.status();
  std::ifstream in(dir + "/python_preds.u8", std::ios::binary);
  std::vector<char> theirs(10000);
  in.read(theirs.data(), 10000);
  ASSERT_EQ(in.gcount(), 10000);
  int disagreements = 0, correct_python = 0;
  for (size_t i = 0; i < 10000; ++i) disagreements += (*ours)[i] != static_cast<unsigned char>(theirs[i]);
  correct_python = nlohmann::json::parse(*result)["artifact_correct"];
  std::cout << "[ " << GetParam() << " ] Python torch.jit.load: " << correct_python << "/10000 correct, "
            << disagreements << " predictions differ from quantd's runtime" << std::endl;
  EXPECT_EQ(disagreements, 0);
}

INSTANTIATE_TEST_SUITE_P(Presets, ArtifactInPythonTest, ::testing::Values("fbgemm", "onednn", "qnnpack", "best"));

}  // namespace
}  // namespace quantd::engine
