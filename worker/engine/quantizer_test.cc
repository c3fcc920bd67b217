#include "worker/engine/quantizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/serialization/import.h>

#include <algorithm>
#include <map>
#include <sstream>

#include "worker/engine/quantizer_internal.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

QuantizeOptions ResNet8Options(const std::string& preset) {
  QuantizeOptions options;
  options.model_path = testing::ResNet8Path();
  options.calibration.path = testing::CalibrationPath();
  options.calibration.samples_per_class = 20;  // 200 images keep the unit tests quick
  options.qconfig.preset = preset;
  options.fusion.groups = testing::ResNet8FusionGroups();
  return options;
}

const LayerReport* FindLayer(const QuantizeReport& r, const std::string& name) {
  for (const auto& l : r.layers) {
    if (l.name == name) return &l;
  }
  return nullptr;
}

TEST(QuantizeTest, ResNet8ReportAndDeterministicArtifact) {
  auto a = Quantize(ResNet8Options("fbgemm"));
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = Quantize(ResNet8Options("fbgemm"));
  ASSERT_TRUE(b.ok()) << b.status();
  auto bytes_a = (*a)->SerializeArtifact();
  auto bytes_b = (*b)->SerializeArtifact();
  ASSERT_TRUE(bytes_a.ok() && bytes_b.ok());
  EXPECT_EQ(*bytes_a, *bytes_b);  // byte-identical
  const QuantizeReport& r = (*a)->report();
  EXPECT_EQ(r.kernel_engine, "onednn");  // Debian's LibTorch has no fbgemm kernels: recorded, not hidden
  EXPECT_EQ(r.calibration_samples, 200);
  EXPECT_EQ(r.fused_groups.size(), 7u);
  ASSERT_EQ(r.fallbacks.size(), 1u);
  EXPECT_EQ(r.fallbacks[0].node, "softmax");
  const LayerReport* input = FindLayer(r, "quantize:x");
  ASSERT_NE(input, nullptr);
  EXPECT_EQ(input->output_zero_point, 0);
  EXPECT_GT(input->output_scale, 1.9);  // 7-bit activations over raw pixels: ~255/127
  const LayerReport* conv = FindLayer(r, "layer2.conv1");
  ASSERT_NE(conv, nullptr);
  EXPECT_EQ(conv->op, "conv2d_relu");
  EXPECT_EQ(conv->weight_scales.size(), 32u);  // per channel
  ASSERT_TRUE(conv->sqnr_db.has_value());
  EXPECT_GT(*conv->sqnr_db, 15.0);
  EXPECT_EQ(r.artifact_sha256.size(), 64u);
  EXPECT_EQ(r.artifact_size_bytes, static_cast<int64_t>(bytes_a->size()));
}

// Splitting calibration across intra-op threads (convolutions, observers'
// extrema and counts) must not change a single quantization parameter.
TEST(QuantizeTest, TwoThreadsGiveTheSameArtifactAsOne) {
  QuantizeOptions options = ResNet8Options("fbgemm");
  options.overlap_observers = false;
  InitializeRuntime(2);
  auto two = Quantize(options);
  InitializeRuntime(1);
  auto one = Quantize(options);
  ASSERT_TRUE(two.ok() && one.ok());
  EXPECT_EQ(*(*two)->SerializeArtifact(), *(*one)->SerializeArtifact());
}

TEST(QuantizeTest, ArtifactRunsInTheTorchScriptInterpreterLikeTheRuntime) {
  auto model = Quantize(ResNet8Options("onednn"));
  ASSERT_TRUE(model.ok()) << model.status();
  auto bytes = (*model)->SerializeArtifact();
  ASSERT_TRUE(bytes.ok());
  std::istringstream stream(*bytes);
  torch::jit::Module artifact = torch::jit::load(stream);
  DatasetSpec test;
  test.path = testing::TestSetPath();
  auto batch = (*OpenDataset(test))->ReadBatch(0, 64);
  at::NoGradGuard no_grad;
  at::Tensor expected = *(*model)->impl().executor->Forward(batch->images);
  at::Tensor got = artifact.forward({batch->images}).toTensor();
  EXPECT_TRUE(at::equal(expected, got));
}

// quantized::add follows the process-global quantized engine (QNNPACK has its
// own fixed-point add). A program made for qnnpack kernels adds as the
// operator does under QNNPACK, as Python does after setting the engine for
// that artifact, whatever engine another job left set. (On ResNet8's adds the
// two arithmetics happen to agree; on random tensors they differ in ~0.1% of
// codes, which is why the runtime does not leave the choice to global state.)
TEST(QuantizeTest, QnnpackProgramAddsAsQnnpackWhateverTheGlobalEngine) {
  QuantizeOptions options = ResNet8Options("qnnpack");
  options.kernel_engine = "qnnpack";
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_TRUE(Quantize(ResNet8Options("onednn")).ok());  // leaves the global engine on onednn
  DatasetSpec test;
  test.path = testing::TestSetPath();
  auto batch = (*OpenDataset(test))->ReadBatch(0, 64);
  at::NoGradGuard no_grad;
  std::map<int, at::Tensor> values;
  std::vector<Instr> adds;
  auto run = (*model)->impl().executor->Run({batch->images}, [&](const Instr& instr, const at::Tensor& out) {
    values[instr.outputs[0]] = out;
    if (instr.kind == InstrKind::kAdd) adds.push_back(instr);
  });
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(adds.size(), 3u);
  const at::QEngine before = at::globalContext().qEngine();
  at::globalContext().setQEngine(at::QEngine::QNNPACK);
  for (const Instr& add : adds) {
    const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(add.relu ? "quantized::add_relu" : "quantized::add", "");
    torch::jit::Stack stack{values.at(add.inputs[0].value), values.at(add.inputs[1].value), add.scale, add.zero_point};
    op.callBoxed(stack);
    EXPECT_TRUE(at::equal(stack[0].toTensor().int_repr(), values.at(add.outputs[0]).int_repr())) << add.name;
  }
  at::globalContext().setQEngine(before);
}

TEST(QuantizeTest, CancellationStopsAtABatchBoundary) {
  QuantizeOptions options = ResNet8Options("onednn");
  options.batch_size = 20;
  int64_t batches_seen = 0;
  options.progress = [&](const ProgressEvent& e) {
    if (e.phase == Phase::kCalibrating && e.batches_done > 0) batches_seen = e.batches_done;
    return !(e.phase == Phase::kCalibrating && e.batches_done == 3);
  };
  auto model = Quantize(options);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(batches_seen, 3);
}

TEST(QuantizeTest, BadInputsGetClearErrors) {
  QuantizeOptions options = ResNet8Options("fbgemm");
  options.qconfig.preset = "tflite";
  EXPECT_EQ(Quantize(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = ResNet8Options("fbgemm");
  options.fusion.groups = {{"conv1", "bn9"}};
  auto s = Quantize(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bn9"), std::string::npos);
  options = ResNet8Options("fbgemm");
  options.kernel_engine = "fbgemm";  // not compiled into Debian's LibTorch
  const std::vector<std::string> engines = AvailableKernelEngines();
  if (std::find(engines.begin(), engines.end(), "fbgemm") == engines.end()) {
    s = Quantize(options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("not compiled"), std::string::npos);
  }
  options = ResNet8Options("fbgemm");
  options.qconfig.preset = "";
  options.qconfig.activation_observer = "minmax";
  options.qconfig.weight_observer = "per_tensor_affine";
  options.kernel_engine = "onednn";
  s = Quantize(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("qnnpack"), std::string::npos) << s;
}

class SmallModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("small_model"));
    auto made = testing::RunCommand(testing::Python() + " " + testing::SourceDir() +
                                    "/worker/engine/testing/make_small_model.py " + *dir_);
    ASSERT_TRUE(made.ok()) << made.status();
  }
  static QuantizeOptions Options() {
    QuantizeOptions options;
    options.model_path = *dir_ + "/small_model.pt";
    options.calibration.format = DatasetFormat::kNpy;
    options.calibration.path = *dir_ + "/images.npy";
    options.calibration.labels_path = *dir_ + "/labels.npy";
    options.batch_size = 16;
    options.fusion.automatic = true;
    options.qconfig.preset = "qnnpack";
    return options;
  }
  static std::string* dir_;
};
std::string* SmallModelTest::dir_ = nullptr;

TEST_F(SmallModelTest, DepthwiseMaxPoolLinearReluAndAFallback) {
  auto model = Quantize(Options());
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& r = (*model)->report();
  auto op_of = [&](const std::string& name) {
    const LayerReport* l = FindLayer(r, name);
    return l ? l->op : std::string("<none>");
  };
  EXPECT_EQ(op_of("conv"), "conv2d_relu");  // conv+bn+relu
  EXPECT_EQ(op_of("dw"), "conv2d");         // depthwise, not fused: its output feeds two branches
  EXPECT_EQ(op_of("branch"), "conv2d");
  EXPECT_EQ(op_of("fc"), "linear_relu");
  EXPECT_EQ(op_of("head"), "linear");
  EXPECT_EQ(FindLayer(r, "dw")->weight_scales.size(), 1u);  // qnnpack preset: per-tensor weights
  // erf has no int8 kernel: it runs in FP32 and is listed, the model is re-quantized after it.
  bool erf_listed = false;
  for (const auto& f : r.fallbacks) {
    erf_listed = erf_listed || f.op == "aten::erf";
    EXPECT_NE(f.node, "pool") << "max-pool runs on the int8 tensor";
  }
  EXPECT_TRUE(erf_listed);
  // ... and after the FP32 erf, the residual add re-quantizes its FP32 input.
  EXPECT_NE(FindLayer(r, "quantize:erf"), nullptr);
  std::vector<std::vector<std::string>> expected_groups = {{"conv", "bn", "relu"}, {"fc", "fc_relu"}};
  for (const auto& g : expected_groups) {
    EXPECT_NE(std::find(r.fused_groups.begin(), r.fused_groups.end(), g), r.fused_groups.end()) << g[0];
  }
  // The int8 model agrees with FP32 on most of these random images.
  DatasetSpec data = Options().calibration;
  auto int8 = (*model)->PredictInt8(data, 64);
  ASSERT_TRUE(int8.ok()) << int8.status();
  EXPECT_EQ(int8->size(), 64u);
  auto bytes = (*model)->SerializeArtifact();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
}

}  // namespace
}  // namespace quantd::engine
