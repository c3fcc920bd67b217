#include "worker/engine/quantizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/jit/serialization/import.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/synchronization/notification.h"
#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/passes/calibrate.h"
#include "worker/engine/passes/convert.h"
#include "worker/engine/passes/fuse_modules.h"
#include "worker/engine/quantizer_internal.h"
#include "worker/engine/runtime/fp32_executor.h"
#include "worker/engine/runtime/prepack.h"
#include "worker/engine/serialization/torchscript_writer.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

// A progress callback that counts the calibration batches run into
// `*batches`: a request refused before calibration leaves it at 0.
ProgressCallback CountCalibrationBatches(int* batches) {
  return [batches](const ProgressEvent& p) {
    if (p.phase == Phase::kCalibrating && p.batches_done > 0) ++*batches;
    return true;
  };
}

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

// Saves `m` and returns options that calibrate it on the first `images`
// calibration images.
QuantizeOptions SavedModelOptions(const torch::jit::Module& m, const std::string& name, int64_t images) {
  const std::string path = testing::MakeTempDir(name) + "/" + name + ".pt";
  m.save(path);
  QuantizeOptions options;
  options.model_path = path;
  options.calibration.path = testing::CalibrationPath();
  options.calibration.limit = images;
  return options;
}

// The artifact `model` writes, loaded in the TorchScript interpreter, gives
// what its int8 program gives on the first 8 calibration images; returns
// the artifact's outputs.
at::Tensor ExpectArtifactComputesTheProgram(QuantizedModel& model, const QuantizeOptions& options) {
  auto bytes = model.SerializeArtifact();
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return at::Tensor();
  std::istringstream in(*bytes);
  torch::jit::Module artifact = torch::jit::load(in);
  auto batch = (*OpenDataset(options.calibration))->ReadBatch(0, 8);
  EXPECT_TRUE(batch.ok()) << batch.status();
  if (!batch.ok()) return at::Tensor();
  auto ours = model.impl().executor->Forward(batch->images);
  EXPECT_TRUE(ours.ok()) << ours.status();
  const at::Tensor theirs = artifact.forward({batch->images}).toTensor();
  if (ours.ok()) {
    EXPECT_TRUE(at::equal(theirs, *ours));
  }
  return theirs;
}

// at::set_num_threads rebuilds QNNPACK's global thread pool: SetIntraOpThreads
// waits until no QNNPACK kernel runs (accuracy-tuning trial threads set their
// count through it, while served models may run on QNNPACK).
TEST(SetIntraOpThreadsTest, WaitsWhileAQnnpackKernelRuns) {
  const std::vector<std::string> engines = AvailableKernelEngineNames();
  if (std::find(engines.begin(), engines.end(), "qnnpack") == engines.end()) GTEST_SKIP() << "no qnnpack";
  const int threads = IntraOpThreads();  // this thread's count, already initialized
  absl::Notification inside, leave, set;
  std::thread kernel([&] {
    EXPECT_TRUE(WithKernelEngine("qnnpack", "a kernel", [&] {
                  inside.Notify();
                  leave.WaitForNotification();
                }).ok());
  });
  inside.WaitForNotification();
  std::thread setter([&] {
    SetIntraOpThreads(threads);
    set.Notify();
  });
  EXPECT_FALSE(set.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  leave.Notify();
  kernel.join();
  setter.join();
  EXPECT_TRUE(set.HasBeenNotified());
  EXPECT_EQ(IntraOpThreads(), threads);
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
// A QNNPACK conv runs on LibTorch's global thread pool, which
// SetIntraOpThreads rebuilds under onednn's lease: a job's QNNPACK conv must
// hold qnnpack's lease, or a thread count set elsewhere meanwhile (a new
// thread's first call, an evaluation starting) hung it in the freed pool.
TEST(QuantizeTest, QnnpackConvolutionsHoldTheirEnginesLease) {
  const std::vector<std::string> engines = AvailableKernelEngineNames();
  for (const char* needed : {"qnnpack", "onednn"}) {
    if (std::find(engines.begin(), engines.end(), needed) == engines.end()) GTEST_SKIP() << "needs " << needed;
  }
  torch::jit::Module m("OneConv");  // no add or pooling: those took the lease already
  m.register_parameter("w", at::randn({8, 3, 3, 3}) * 0.01, false);
  m.define(R"(
    def forward(self, x):
        return torch.conv2d(x, self.w)
  )");
  QuantizeOptions options = SavedModelOptions(m, "one_conv", 16);
  options.kernel_engine = "qnnpack";
  options.quality_samples = 0;
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto batch = (*OpenDataset(options.calibration))->ReadBatch(0, 4);
  ASSERT_TRUE(batch.ok());
  {
    // Once first, so that this batch size's packs are made (prepacking takes
    // the lease by itself).
    at::NoGradGuard no_grad;
    ASSERT_TRUE((*model)->impl().executor->Forward(batch->images).ok());
  }
  absl::Notification inside, leave, ran;
  std::thread onednn_holder([&] {
    EXPECT_TRUE(WithKernelEngine("onednn", "another engine's kernel", [&] {
                  inside.Notify();
                  leave.WaitForNotification();
                }).ok());
  });
  inside.WaitForNotification();
  std::thread pass([&] {
    at::NoGradGuard no_grad;
    EXPECT_TRUE((*model)->impl().executor->Forward(batch->images).ok());
    ran.Notify();
  });
  EXPECT_FALSE(ran.WaitForNotificationWithTimeout(absl::Milliseconds(300)))
      << "the QNNPACK conv ran while onednn held the engine";
  leave.Notify();
  onednn_holder.join();
  pass.join();
  EXPECT_TRUE(ran.HasBeenNotified());
}

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

// Scales at the observer's floor (a weight channel pruned to zero, a branch
// that stayed zero through calibration) reach QNNPACK's int32 bias and int8
// add: the bias wrapped around (channel 1, meant to give 3.0, gave -2.0)
// and the add asserted inside LibTorch, failing the job. Both engines now
// compute the FP32 model within a few output steps.
TEST(QuantizeTest, ScalesAtTheObserversFloorFitQnnpacksBiasAndAdd) {
  torch::jit::Module m("PrunedChannel");
  at::manual_seed(12);
  at::Tensor w = at::randn({4, 3, 3, 3}) * 0.2;
  w[1].zero_();
  m.register_parameter("w", w, false);
  m.register_parameter("b", at::tensor({0.1f, 3.0f, -0.2f, 0.3f}), false);
  m.register_parameter("w2", at::randn({4, 3, 3, 3}) * 0.2, false);
  m.register_parameter("b2", at::full({4}, -3000.0f), false);
  m.define(R"(
    def forward(self, x):
        x = x / 255.0
        y = torch.conv2d(x, self.w, self.b)
        dead = torch.relu(torch.conv2d(x, self.w2, self.b2))
        return torch.flatten(y + dead, 1)
  )");
  const std::vector<std::string> available = AvailableKernelEngineNames();
  // Fused, the dead branch's ReLU leaves it all zeros (the smallest scale);
  // unfused, its codes keep the conv's scale, 2^8 times the add's output's
  // and more.
  for (const bool fused : {true, false}) {
    for (const char* engine : {"qnnpack", "onednn"}) {
      if (std::find(available.begin(), available.end(), engine) == available.end()) continue;
      QuantizeOptions options = SavedModelOptions(m, "pruned_channel", 32);
      options.fusion.automatic = fused;
      options.kernel_engine = engine;
      auto model = Quantize(options);
      ASSERT_TRUE(model.ok()) << engine << " fused " << fused << ": " << model.status();
      auto batch = (*OpenDataset(options.calibration))->ReadBatch(0, 8);
      ASSERT_TRUE(batch.ok());
      at::NoGradGuard no_grad;
      auto ours = (*model)->impl().executor->Forward(batch->images);
      ASSERT_TRUE(ours.ok()) << ours.status();
      const at::Tensor fp32 = m.forward({batch->images}).toTensor();
      const at::Tensor pruned = ours->view({8, 4, -1}).select(1, 1);
      // Unfused, the add's output step is raised to 1/128 of the dead
      // branch's (0.18; an input's own rounding is 64 times that).
      const float step = fused ? 0.04 : 0.2;
      EXPECT_LT((pruned - 3.0).abs().max().item<float>(), step) << engine << " fused " << fused;
      EXPECT_LT((*ours - fp32).abs().max().item<float>(), 2 * step) << engine << " fused " << fused;
      ExpectArtifactComputesTheProgram(**model, options);
      // The report (and so the manifest) holds the scales the int8 weights
      // hold: raised for the bias, they are doubles, once rounded to float.
      for (const Instr& instr : (*model)->impl().program->instrs) {
        if (instr.kind != InstrKind::kConv2d) continue;
        const at::Tensor weight = instr.prepack_args[0].toTensor();
        const LayerReport* layer = FindLayer((*model)->report(), instr.name);
        ASSERT_NE(layer, nullptr) << instr.name;
        ASSERT_EQ(layer->weight_scales.size(), static_cast<size_t>(weight.size(0))) << instr.name;
        for (int64_t c = 0; c < weight.size(0); ++c) {
          EXPECT_EQ(layer->weight_scales[static_cast<size_t>(c)], weight.q_per_channel_scales()[c].item<double>())
              << engine << " " << instr.name << "[" << c << "]";
        }
      }
    }
  }
}

// The batch count was (size + batch_size - 1) / batch_size: a huge
// batch_size overflowed it to zero batches, and calibration saw no data.
TEST(QuantizeTest, AHugeBatchSizeIsOneBatch) {
  QuantizeOptions options = ResNet8Options("qnnpack");
  options.calibration.samples_per_class = 0;
  options.calibration.limit = 20;
  options.batch_size = std::numeric_limits<int64_t>::max();
  options.quality_samples = 0;
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->report().calibration_samples, 20);
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

// A NaN or infinity in a float evaluation set is found before calibration,
// not when its batch is scored after calibration and conversion.
TEST_F(SmallModelTest, ANonFiniteImageInAnEvaluationSetIsRefusedBeforeCalibration) {
  std::vector<float> pixels(static_cast<size_t>(20 * 16 * 16 * 3), 100.0f);
  pixels[static_cast<size_t>(19 * 16 * 16 * 3 + 5)] = std::numeric_limits<float>::infinity();  // the last image
  testing::WriteNpy(*dir_ + "/infinite.npy", "<f4", {20, 16, 16, 3}, pixels.data(), pixels.size() * 4);
  std::vector<int64_t> labels(20, 1);
  testing::WriteNpy(*dir_ + "/infinite_labels.npy", "<i8", {20}, labels.data(), labels.size() * 8);
  QuantizeOptions options = Options();
  DatasetSpec evaluation = options.calibration;
  evaluation.path = *dir_ + "/infinite.npy";
  evaluation.labels_path = *dir_ + "/infinite_labels.npy";
  options.evaluation = evaluation;
  int calibration_batches = 0;
  options.progress = CountCalibrationBatches(&calibration_batches);
  const absl::Status s = Quantize(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("infinite.npy: image 19 has an infinite value"), std::string::npos) << s;
  EXPECT_EQ(calibration_batches, 0);
}

// A batch's memory is bounded by bytes: 16 images of 3x16x16 float32 are
// 49152 bytes.
TEST_F(SmallModelTest, BatchesOverTheByteLimitAreRefused) {
  QuantizeOptions options = Options();
  options.max_batch_bytes = 49152 - 1;
  absl::Status refused = Quantize(options).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("calibration.batch_size: 16 images of 3x16x16 float32 take 49152 bytes"),
            std::string::npos)
      << refused;
  EXPECT_NE(refused.message().find("; at most 15"), std::string::npos) << refused;
  // Smaller than one image: "at most 0" was no advice.
  options.max_batch_bytes = 1000;
  refused = Quantize(options).status();
  EXPECT_NE(refused.message().find("not even one image (3072 bytes) fits: raise --max_batch_bytes"),
            std::string::npos)
      << refused;
  options.max_batch_bytes = 49152;
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  // The quality gate's images (100 asked, 64 in the file) are one batch too:
  // 16 of them, said in a warning.
  auto warns = [](const QuantizeReport& report, const std::string& text) {
    return std::any_of(report.warnings.begin(), report.warnings.end(),
                       [&](const std::string& w) { return w.find(text) != std::string::npos; });
  };
  EXPECT_EQ((*model)->report().quality.samples, 16);
  EXPECT_TRUE(warns((*model)->report(), "quality_gate.samples: compared int8 with FP32 on 16 images, not 100"))
      << ::testing::PrintToString((*model)->report().warnings);
  options.max_batch_bytes = 0;
  auto unlimited = Quantize(options);
  ASSERT_TRUE(unlimited.ok()) << unlimited.status();
  EXPECT_EQ((*unlimited)->report().quality.samples, 64);
  EXPECT_FALSE(warns((*unlimited)->report(), "quality_gate"));
  DatasetSpec data = Options().calibration;
  EXPECT_EQ((*model)->EvaluateInt8(data, 32).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*model)->EvaluateInt8(data, 16).ok());
  // No batch holds more than the set's 64 images: a batch size above that
  // (a default of 100 or 256) asks for no more than the set takes.
  options.max_batch_bytes = 64 * 3072;
  options.batch_size = 1000;
  auto whole = Quantize(options);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_TRUE((*whole)->EvaluateInt8(data, 1000).ok());
  options.max_batch_bytes = 64 * 3072 - 1;
  refused = Quantize(options).status();
  EXPECT_NE(refused.message().find("calibration.batch_size: 64 images of 3x16x16 float32"), std::string::npos)
      << refused;
}

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
  // The int8 model agrees with FP32 on most of these random images: with
  // Python's FP32 predictions as labels, accuracy is agreement. C++'s FP32
  // run must match Python's on every image.
  DatasetSpec against_fp32 = Options().calibration;
  against_fp32.labels_path = *dir_ + "/fp32_predictions.npy";
  auto fp32 = (*model)->EvaluateFp32(against_fp32, 64);
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ(fp32->correct, 64);
  auto int8 = (*model)->EvaluateInt8(against_fp32, 64);
  ASSERT_TRUE(int8.ok()) << int8.status();
  EXPECT_EQ(int8->total, 64);
  EXPECT_GE(int8->correct, 58) << "int8 agrees with FP32 on " << int8->correct << "/64";
  // Labels outside the head's 4 classes (1-based: 1..4) were scored as
  // silently wrong; Evaluate refused them, job evaluation did not.
  {
    std::vector<int64_t> labels(64);
    // 1-based from sample 40 on: the first outside is sample 43's 4, in
    // the third batch of 16.
    for (int64_t i = 0; i < 64; ++i) labels[static_cast<size_t>(i)] = (i < 40 ? 0 : 1) + i % 4;
    testing::WriteNpy(*dir_ + "/one_based_labels.npy", "<i8", {64}, labels.data(), labels.size() * 8);
  }
  DatasetSpec one_based = Options().calibration;
  one_based.labels_path = *dir_ + "/one_based_labels.npy";
  for (bool int8_side : {true, false}) {
    auto refused = int8_side ? (*model)->EvaluateInt8(one_based, 16) : (*model)->EvaluateFp32(one_based, 16);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
    EXPECT_NE(refused.status().message().find("evaluation.dataset: sample 43's label is 4, outside the model's 4 classes"),
              std::string::npos)
        << refused.status();
  }
  auto predictions = (*model)->PredictInt8(against_fp32, 64);
  ASSERT_TRUE(predictions.ok()) << predictions.status();
  EXPECT_EQ(predictions->size(), 64u);
  ASSERT_TRUE(r.quality.top1_agreement.has_value());
  EXPECT_GE(*r.quality.top1_agreement, 0.9);
  ASSERT_TRUE(r.quality.output_sqnr_db.has_value());
  EXPECT_GE(*r.quality.output_sqnr_db, 15.0);
  auto bytes = (*model)->SerializeArtifact();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
}


// conv1 -> relu -> conv2 -> relu -> conv3 whose conv1 output channels are
// scaled by 3^(c - 2) and conv2's input columns by the inverse: FP32 does not
// see it, int8 does (one activation scale for all of conv1's output channels,
// and with per-tensor weights one weight scale for all of conv1's rows).
std::string SkewedChainModel(const std::string& dir) {
  torch::jit::Module m("SkewedChain");
  at::manual_seed(3);
  const at::Tensor skew = at::pow(3.0, at::arange(8, at::kFloat) - 3);
  m.register_parameter("w1", at::randn({8, 3, 3, 3}) * 0.01 * skew.reshape({8, 1, 1, 1}), false);
  m.register_parameter("b1", at::randn({8}) * skew, false);
  m.register_parameter("w2", at::randn({8, 8, 3, 3}) * 0.3 / skew.reshape({1, 8, 1, 1}), false);
  m.register_parameter("b2", at::randn({8}), false);
  m.register_parameter("w3", at::randn({4, 8, 1, 1}), false);
  m.define(R"(
    def forward(self, x):
        y = torch.relu(torch.conv2d(x, self.w1, self.b1, [1, 1], [1, 1]))
        z = torch.relu(torch.conv2d(y, self.w2, self.b2, [1, 1], [1, 1]))
        return torch.conv2d(z, self.w3)
  )");
  const std::string path = dir + "/skewed_chain.pt";
  m.save(path);
  return path;
}

// A model made for 1-channel images, calibrated on CIFAR's 3 channels: the
// request's mistake (INVALID_ARGUMENT naming the dataset's shape), found on
// one sample, not an INTERNAL error from calibration's first batch.
TEST(QuantizeTest, ADatasetTheModelCannotTakeIsTheRequestsError) {
  torch::jit::Module m("Gray");
  m.register_parameter("w", at::ones({4, 1, 3, 3}), false);
  m.define(R"(
    def forward(self, x):
        return torch.conv2d(x, self.w)
  )");
  const std::string path = testing::MakeTempDir("gray") + "/gray.pt";
  m.save(path);
  QuantizeOptions options;
  options.model_path = path;
  options.calibration.path = testing::CalibrationPath();
  options.fusion.automatic = true;
  const absl::Status s = Quantize(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("does not run on the dataset's samples of shape [3, 32, 32]"), std::string::npos) << s;
  // With LibTorch's reason, not the interpreter's header line.
  EXPECT_NE(s.message().find("expected input[1, 3, 32, 32] to have 1 channels"), std::string::npos) << s;
}

TEST(QuantizeTest, AModelReturningATupleIsRefusedBeforeCalibration) {
  torch::jit::Module m("TwoHeads");
  m.register_parameter("w", at::ones({4, 3, 3, 3}), false);
  m.define(R"(
    def forward(self, x):
        y = torch.conv2d(x, self.w)
        return y, torch.relu(y)
  )");
  const std::string path = testing::MakeTempDir("two_heads") + "/two_heads.pt";
  m.save(path);
  QuantizeOptions options;
  options.model_path = path;
  options.calibration.path = testing::CalibrationPath();
  options.fusion.automatic = true;
  int calibration_batches = 0;
  options.progress = CountCalibrationBatches(&calibration_batches);
  const absl::Status s = Quantize(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("returns a tuple of 2 values"), std::string::npos) << s;
  EXPECT_EQ(calibration_batches, 0);
}

// What a model's one sample already shows is said before calibration: a
// list output, a set scored on a model that is no classifier, labels beyond
// its classes (each was found only after calibration, or at EVALUATING).
TEST(QuantizeTest, OutputsTheRequestCannotUseAreRefusedBeforeCalibration) {
  auto model = [](const std::string& name, const std::string& body) {
    torch::jit::Module m(name);
    m.register_parameter("w", at::ones({4, 3, 3, 3}), false);
    m.define(body);
    return m;
  };
  const torch::jit::Module listed = model("Listed", R"(
    def forward(self, x) -> List[Tensor]:
        y = torch.conv2d(x, self.w)
        return [y, torch.relu(y)]
  )");
  const torch::jit::Module maps = model("Maps", R"(
    def forward(self, x):
        return torch.conv2d(x, self.w)
  )");
  const torch::jit::Module three_classes = model("Three", R"(
    def forward(self, x):
        return torch.conv2d(x, self.w).mean([2, 3])[:, :3]
  )");
  int calibration_batches = 0;
  auto quantize = [&](const torch::jit::Module& m, const std::string& name, bool evaluate) {
    QuantizeOptions options = SavedModelOptions(m, name, 100);
    options.fusion.automatic = true;
    if (evaluate) {
      DatasetSpec evaluation;
      evaluation.path = testing::CalibrationPath();
      options.evaluation = evaluation;
    }
    options.progress = CountCalibrationBatches(&calibration_batches);
    return Quantize(options);
  };
  absl::Status s = quantize(listed, "listed", false).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), "model: forward returns List[Tensor]; quantd quantizes and serves models with one tensor "
                         "output (return only the one to serve)");
  s = quantize(maps, "maps", true).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), "evaluation: scoring top-1 needs a classifier, but the model's output for one sample has "
                         "shape [1, 4, 30, 30], not [1, classes]");
  EXPECT_EQ(calibration_batches, 0);
  EXPECT_TRUE(quantize(maps, "maps", false).ok()) << "a feature map is fine to quantize, only not to score";
  calibration_batches = 0;
  s = quantize(three_classes, "three_classes", true).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message().rfind("evaluation: sample ", 0), 0u) << s;
  EXPECT_NE(s.message().find("outside the model's 3 classes (labels are 0..2)"), std::string::npos) << s;
  EXPECT_EQ(calibration_batches, 0);
  // A model with no op on int8 kernels is not a silent success.
  const torch::jit::Module pooled = model("Pooled", R"(
    def forward(self, x):
        return x.mean([2, 3])
  )");
  absl::StatusOr<std::unique_ptr<QuantizedModel>> nothing_int8 = quantize(pooled, "pooled", false);
  ASSERT_TRUE(nothing_int8.ok()) << nothing_int8.status();
  const std::vector<std::string>& warnings = (*nothing_int8)->report().warnings;
  EXPECT_TRUE(std::any_of(warnings.begin(), warnings.end(), [](const std::string& w) {
    return w.rfind("no op of this model runs on int8 kernels", 0) == 0;
  })) << ::testing::PrintToString(warnings);
  for (const std::string& advice : (*nothing_int8)->report().advice) {
    EXPECT_EQ(advice.find("reduce_range"), std::string::npos) << advice;  // there are no int8 activations
  }
}

// padding='same' is a string LibTorch's int8 convs cannot take: the conv
// stays FP32 and its fallback says why (it said "no int8 kernel for
// aten::conv2d", which has one).
TEST(QuantizeTest, AConvWithStringPaddingSaysWhyItStaysFp32) {
  torch::jit::Module m("Same");
  m.register_parameter("w", at::randn({4, 3, 3, 3}) * 0.1, false);
  m.define(R"(
    def forward(self, x):
        return torch.conv2d(x, self.w, None, [1, 1], "same").mean([2, 3])
  )");
  QuantizeOptions options = SavedModelOptions(m, "same_padding", 100);
  options.fusion.automatic = true;
  absl::StatusOr<std::unique_ptr<QuantizedModel>> model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<FallbackReport>& fallbacks = (*model)->report().fallbacks;
  const auto conv = std::find_if(fallbacks.begin(), fallbacks.end(),
                                 [](const FallbackReport& f) { return f.op == "aten::conv2d"; });
  ASSERT_NE(conv, fallbacks.end());
  EXPECT_EQ(conv->reason.rfind("conv2d with padding='same' has no int8 kernel", 0), 0u) << conv->reason;
}

// In-place ops were imported as pure ones: later readers kept the value
// before the write, so int8 skipped `relu_` (its output unread) and the
// input's `sub_`. Now every later reader reads the written value.
TEST(QuantizeTest, InPlaceWritesReachLaterReaders) {
  at::manual_seed(7);
  torch::jit::Module m("InPlace");
  m.register_parameter("w", at::randn({8, 3, 3, 3}) * 0.01, false);
  m.register_parameter("b", at::full({8}, -0.5), false);
  m.define(R"(
    def forward(self, x):
        x.sub_(128.0)
        y = torch.conv2d(x, self.w, self.b)
        torch.relu_(y)
        return torch.max_pool2d(y, 2)
  )");
  QuantizeOptions options = SavedModelOptions(m, "in_place", 64);
  options.quality_samples = 0;
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto batch = (*OpenDataset(options.calibration))->ReadBatch(0, 16);
  ASSERT_TRUE(batch.ok());
  at::NoGradGuard no_grad;
  const at::Tensor expected = m.forward({batch->images.clone()}).toTensor();
  auto int8 = (*model)->impl().executor->Forward(batch->images.clone());
  ASSERT_TRUE(int8.ok()) << int8.status();
  EXPECT_GE(int8->min().item<float>(), 0.0f) << "relu_ was skipped";
  const double noise = (*int8 - expected).pow(2).sum().item<double>();
  const double signal = expected.pow(2).sum().item<double>();
  EXPECT_GT(10 * std::log10(signal / noise), 25.0) << "int8 does not compute what the FP32 model does";
}

// The int8 program of a model that writes its input in place leaves the
// caller's tensor alone: tuning and the quality check run many programs on
// the same images, and each saw them shifted once more.
TEST(QuantizeTest, AModelWritingItsInputInPlaceLeavesTheCallersImagesAlone) {
  at::manual_seed(7);
  torch::jit::Module m("InPlaceInput");
  m.register_parameter("w", at::randn({8, 3, 3, 3}) * 0.01, false);
  m.register_parameter("b", at::full({8}, -0.5), false);
  m.define(R"(
    def forward(self, x):
        x.sub_(128.0)
        return torch.relu(torch.conv2d(x, self.w, self.b))
  )");
  QuantizeOptions options = SavedModelOptions(m, "in_place_input", 64);
  options.quality_samples = 64;  // the check runs the int8 program on images it keeps
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto batch = (*OpenDataset(options.calibration))->ReadBatch(0, 16);
  ASSERT_TRUE(batch.ok());
  const at::Tensor before = batch->images.clone();
  auto first = (*model)->impl().executor->Forward(batch->images);
  auto second = (*model)->impl().executor->Forward(batch->images);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_TRUE(batch->images.equal(before)) << "the int8 program wrote the caller's images";
  EXPECT_TRUE(first->equal(*second));
}

// The graph quantd calibrates and converts is checked against the model's
// own output on a sample: an op the importer or fusion misreads (a computed
// bias was once dropped by fusion) is refused, not made into a wrong model
// that the quality gate, which compares against that same graph, passes.
TEST(CheckImportComputesTheModelTest, RefusesAGraphThatComputesSomethingElse) {
  torch::jit::Module m("Small");
  m.register_parameter("w", at::randn({4, 3, 3, 3}), false);
  m.define(R"(
    def forward(self, x):
        return torch.relu(torch.conv2d(x, self.w))
  )");
  auto graph = ImportTorchScript(m);
  ASSERT_TRUE(graph.ok()) << graph.status();
  const at::Tensor sample = at::rand({1, 3, 8, 8});
  at::NoGradGuard no_grad;
  const at::Tensor expected = m.forward({sample}).toTensor();
  EXPECT_TRUE(CheckImportComputesTheModel(*graph, sample, expected).ok());
  const absl::Status other = CheckImportComputesTheModel(*graph, sample, expected * 1.1 + 0.1);
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
  EXPECT_NE(other.message().find("does not compute what the model computes"), std::string::npos) << other;
  const absl::Status shape = CheckImportComputesTheModel(*graph, sample, expected.flatten());
  EXPECT_EQ(shape.code(), absl::StatusCode::kFailedPrecondition) << shape;
}

// A write through a view changes the viewed tensor; int8 runs on other
// tensors, so the write would be lost there. The import refuses the model,
// naming the write, before any calibration. (The weights make the lost ReLU
// matter: each output channel's weights sum to zero, so that on raw pixels
// about half the outputs are negative. Before the import refused it, the
// quality gate did, for this model; a write that costs less passed it.)
TEST(QuantizeTest, AWriteThroughAViewIsRefused) {
  torch::jit::Module m("WriteThroughAView");
  at::manual_seed(11);
  const at::Tensor w = at::randn({8, 3, 3, 3}) * 0.01;
  m.register_parameter("w", w - w.mean({1, 2, 3}, /*keepdim=*/true), false);
  m.register_parameter("b", at::full({8}, -0.5), false);
  m.define(R"(
    def forward(self, x):
        y = torch.conv2d(x, self.w, self.b)
        torch.relu_(y.view(-1))
        return y
  )");
  QuantizeOptions options = SavedModelOptions(m, "view_write", 16);
  const absl::Status status = Quantize(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("'aten::relu_'"), std::string::npos) << status;
  EXPECT_NE(status.message().find("through a view"), std::string::npos) << status;
}

// Infinite and NaN constants of FP32 ops (a mask filled with -inf, a clamp
// open below) are written so that TorchScript compiles them: the artifact
// loads and computes what quantd's runtime computes.
TEST(QuantizeTest, InfiniteConstantsReachTheArtifact) {
  torch::jit::Module m("Infinite");
  at::manual_seed(5);
  m.register_parameter("w", at::randn({10, 3, 32, 32}) * 0.001, false);
  m.define(R"(
    def forward(self, x):
        y = torch.flatten(torch.conv2d(x, self.w), 1)
        y = y.masked_fill(y > 1000.0, float("-inf"))
        y = torch.clamp(y, float("-inf"), 1000.0)
        return torch.softmax(y, 1)
  )");
  QuantizeOptions options = SavedModelOptions(m, "infinite", 16);
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectArtifactComputesTheProgram(**model, options);
}

// A device argument of an op that runs at run time (a size from the input)
// reaches the artifact: writing it failed the job after calibration,
// conversion and the quality check had all passed.
TEST(QuantizeTest, DeviceConstantsReachTheArtifact) {
  torch::jit::Module m("Device");
  at::manual_seed(9);
  m.register_parameter("w", at::randn({10, 3, 32, 32}) * 0.001, false);
  m.define(R"(
    def forward(self, x):
        y = torch.flatten(torch.conv2d(x, self.w), 1)
        return y + torch.zeros([x.size(0), 10], dtype=6, device=torch.device("cpu"))
  )");
  QuantizeOptions options = SavedModelOptions(m, "device", 16);
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectArtifactComputesTheProgram(**model, options);
}

// A clamp open above (clamp(x, 0, inf), ONNX's Clip(0, FLT_MAX)) is a ReLU:
// its bound once quantized to code 0 (the float-to-integer cast of infinity
// is undefined), and the int8 output was all zeros, fused into the conv or
// not. Bounds past kOpenClampBound are open too.
TEST(QuantizeTest, AClampOpenAboveIsAReluFusedOrNot) {
  for (const char* bound : {"float(\"inf\")", "3.0e38"}) {
    torch::jit::Module m("OpenClamp");
    at::manual_seed(8);
    m.register_parameter("w1", at::randn({8, 3, 3, 3}) * 0.05, false);
    m.register_parameter("w2", at::randn({10, 8, 30, 30}) * 0.01, false);
    m.define(absl::StrCat(R"(
    def forward(self, x):
        y = torch.clamp(torch.conv2d(x, self.w1), 0.0, )", bound, R"()
        return torch.flatten(torch.conv2d(y, self.w2), 1)
  )"));
    for (bool automatic : {true, false}) {
      QuantizeOptions options = SavedModelOptions(m, "open_clamp", 16);
      options.fusion.automatic = automatic;
      auto model = Quantize(options);
      ASSERT_TRUE(model.ok()) << bound << " " << automatic << ": " << model.status();
      const QualityReport& quality = (*model)->report().quality;
      ASSERT_TRUE(quality.output_sqnr_db.has_value());
      EXPECT_GT(*quality.output_sqnr_db, 20.0) << bound << " " << automatic;
      ExpectArtifactComputesTheProgram(**model, options);
    }
  }
}

// A clamp with no finite bound (clamp(x, max=inf), clamp(x, -1e20, 1e20))
// does nothing to int8 codes: the runtime kept them, but the artifact was
// written as torch.clamp with neither bound, which raises on every forward,
// in Python and in quantd's own serving.
TEST(QuantizeTest, AClampWithNoFiniteBoundIsNoOpInTheArtifact) {
  for (const char* bounds : {"None, float(\"inf\")", "-1.0e20, 1.0e20"}) {
    torch::jit::Module m("UnboundedClamp");
    at::manual_seed(8);
    m.register_parameter("w1", at::randn({8, 3, 3, 3}) * 0.05, false);
    m.register_parameter("w2", at::randn({10, 8, 30, 30}) * 0.01, false);
    m.define(absl::StrCat(R"(
    def forward(self, x):
        y = torch.clamp(torch.conv2d(x, self.w1), )", bounds, R"()
        return torch.flatten(torch.conv2d(y, self.w2), 1)
  )"));
    QuantizeOptions options = SavedModelOptions(m, "unbounded_clamp", 16);
    auto model = Quantize(options);
    ASSERT_TRUE(model.ok()) << bounds << ": " << model.status();
    ExpectArtifactComputesTheProgram(**model, options);
  }
}

// Indexing with a tensor (x[idx]) is aten::index(x, Tensor?[]): a bare list
// literal in the artifact's code reads as List[Tensor], which newer
// TorchScript refuses for it. An empty list argument (sum over dim=[]) was
// written with annotate(), which a module's define() does not know: the job
// failed after calibrating, storing the artifact. Both are typed variables now.
TEST(QuantizeTest, ListArgumentsReachTheArtifactTyped) {
  torch::jit::Module m("Indexed");
  at::manual_seed(6);
  m.register_parameter("w", at::randn({10, 3, 32, 32}) * 0.001, false);
  m.register_buffer("order", at::arange(9, 0, -2, at::kLong));  // 9, 7, 5, 3, 1
  m.define(R"(
    def forward(self, x):
        y = torch.flatten(torch.conv2d(x, self.w), 1)
        z = y.t()[self.order].t()
        return torch.softmax(z, 1) + 0.001 * torch.sum(z, [])
  )");
  QuantizeOptions options = SavedModelOptions(m, "indexed", 16);
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(ExpectArtifactComputesTheProgram(**model, options).sizes(), (std::vector<int64_t>{8, 5}));
}

// conv -> ReLU -> global average pooling -> linear: any image size runs.
torch::jit::Module PooledHead() {
  torch::jit::Module m("PooledHead");
  at::manual_seed(4);
  m.register_parameter("w", at::randn({8, 3, 3, 3}) * 0.01, false);
  m.register_parameter("fc", at::randn({4, 8}) * 0.1, false);
  m.define(R"(
    def forward(self, x):
        y = torch.relu(torch.conv2d(x, self.w, None, 1, 1))
        return torch.linear(torch.flatten(torch.adaptive_avg_pool2d(y, 1), 1), self.fc)
  )");
  return m;
}

// With pooling folded into the classifier (the best preset) the int8
// program is fixed to the calibration's image size: an evaluation set of
// another size was scored anyway, the folded classifier sliding over the
// larger map. Refused now, before calibration; without the fold other sizes
// evaluate as the model allows.
TEST(QuantizeTest, OnlyAProgramFixedToTheCalibrationSizeRefusesOtherSizes) {
  torch::jit::Module m = PooledHead();
  QuantizeOptions options = SavedModelOptions(m, "pooled_head", 64);
  const std::string dir = testing::MakeTempDir("other_size");
  const std::vector<uint8_t> pixels(4 * 20 * 20 * 3, 16);
  testing::WriteNpy(dir + "/images.npy", "|u1", {4, 20, 20, 3}, pixels.data(), pixels.size());
  const std::vector<int64_t> labels(4, 0);
  testing::WriteNpy(dir + "/labels.npy", "<i8", {4}, labels.data(), labels.size() * 8);
  DatasetSpec smaller;
  smaller.format = DatasetFormat::kNpy;
  smaller.path = dir + "/images.npy";
  smaller.labels_path = dir + "/labels.npy";

  options.qconfig.preset = "best";
  options.evaluation = smaller;
  const absl::Status refused = Quantize(options).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("evaluation: its samples are [3, 20, 20], but the int8 model is fixed to the "
                                   "calibration's [3, 32, 32]"),
            std::string::npos)
      << refused;

  options.qconfig.preset = "qnnpack";
  options.evaluation.reset();
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto other_size = (*model)->EvaluateInt8(smaller, 4);
  EXPECT_TRUE(other_size.ok()) << other_size.status();
}

// An evaluation or tuning set the model cannot take (here NHWC files read
// as NCHW: 20 channels for a 3-channel model) failed the job with INTERNAL
// once calibration (and tuning) had run. Each set's first sample goes
// through the FP32 model before calibration now, as the calibration set's.
TEST(QuantizeTest, AnEvaluationOrTuningSetTheModelCannotTakeIsRefusedBeforeCalibration) {
  torch::jit::Module m = PooledHead();
  QuantizeOptions options = SavedModelOptions(m, "wrong_layout", 64);
  options.qconfig.preset = "qnnpack";
  const std::string dir = testing::MakeTempDir("wrong_layout_sets");
  const std::vector<uint8_t> pixels(4 * 20 * 20 * 3, 16);
  testing::WriteNpy(dir + "/images.npy", "|u1", {4, 20, 20, 3}, pixels.data(), pixels.size());
  const std::vector<int64_t> labels(4, 0);
  testing::WriteNpy(dir + "/labels.npy", "<i8", {4}, labels.data(), labels.size() * 8);
  DatasetSpec nhwc_read_as_nchw;
  nhwc_read_as_nchw.format = DatasetFormat::kNpy;
  nhwc_read_as_nchw.path = dir + "/images.npy";
  nhwc_read_as_nchw.labels_path = dir + "/labels.npy";
  nhwc_read_as_nchw.layout = "NCHW";
  std::vector<Phase> phases;
  options.progress = [&](const ProgressEvent& p) {
    phases.push_back(p.phase);
    return true;
  };

  options.evaluation = nhwc_read_as_nchw;
  absl::Status refused = Quantize(options).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_EQ(refused.message().rfind("evaluation: the model does not run on the dataset's samples of shape [20, 20, 3]",
                                    0),
            0u)
      << refused;
  const auto calibrated = [&] { return std::find(phases.begin(), phases.end(), Phase::kCalibrating) != phases.end(); };
  EXPECT_FALSE(calibrated());

  options.evaluation.reset();
  AccuracyGoal goal;
  goal.tuning = nhwc_read_as_nchw;
  options.accuracy_goal = goal;
  refused = Quantize(options).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_EQ(refused.message().rfind("accuracy_goal.tuning: the model does not run on the dataset's samples of shape", 0),
            0u)
      << refused;
  EXPECT_FALSE(calibrated());

  // Read in their own layout, the same files are fine.
  nhwc_read_as_nchw.layout = "NHWC";
  options.accuracy_goal.reset();
  options.evaluation = nhwc_read_as_nchw;
  EXPECT_TRUE(Quantize(options).ok());
}

// ShuffleNet's channel split: chunk and split unpacked into pieces. The
// pieces run in FP32 (read out of the list), each is quantized for the int8
// layers that read it, and the artifact computes what quantd's runtime does.
TEST(QuantizeTest, ChannelSplitsQuantizeAndReachTheArtifact) {
  torch::jit::Module m("ChannelSplit");
  at::manual_seed(9);
  m.register_parameter("stem", at::randn({16, 3, 3, 3}) * 0.01, false);
  m.register_parameter("branch", at::randn({8, 8, 3, 3}) * 0.1, false);
  m.register_parameter("head", at::randn({10, 16}) * 0.1, false);
  m.define(R"(
    def forward(self, x):
        y = torch.relu(torch.conv2d(x, self.stem, None, 1, 1))
        a, b = y.chunk(2, 1)
        y = torch.cat([a, torch.relu(torch.conv2d(b, self.branch, None, 1, 1))], 1)
        p, q = torch.split(y, [6, 10], 1)
        y = torch.cat([q, p], 1)
        return torch.linear(torch.flatten(torch.adaptive_avg_pool2d(y, 1), 1), self.head)
  )");
  QuantizeOptions options = SavedModelOptions(m, "channel_split", 64);
  options.qconfig.preset = "qnnpack";
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  // The convolutions, the cats and the classifier run on int8.
  std::map<std::string, int> int8_ops;
  for (const LayerReport& layer : (*model)->report().layers) ++int8_ops[layer.op];
  EXPECT_EQ(int8_ops["conv2d"] + int8_ops["conv2d_relu"], 2) << "the stem's and the branch's convolutions";
  EXPECT_EQ(int8_ops["cat"], 2);
  EXPECT_EQ(int8_ops["linear"], 1);
  auto batch = (*OpenDataset(options.calibration))->ReadBatch(0, 16);
  ASSERT_TRUE(batch.ok()) << batch.status();
  at::NoGradGuard no_grad;
  const at::Tensor expected = m.forward({batch->images.clone()}).toTensor();
  auto ours = (*model)->impl().executor->Forward(batch->images);
  ASSERT_TRUE(ours.ok()) << ours.status();
  const double noise = (*ours - expected).pow(2).sum().item<double>();
  EXPECT_GT(10 * std::log10(expected.pow(2).sum().item<double>() / noise), 25.0);
  auto bytes = (*model)->SerializeArtifact();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  std::istringstream in(*bytes);
  torch::jit::Module artifact = torch::jit::load(in);
  EXPECT_TRUE(at::equal(artifact.forward({batch->images}).toTensor(), *ours));
}

// conv1's weights of 1e37 overflow float32 on raw pixels: infinities (and
// then NaN) reach the observers. Before, the histogram observer cast them to
// integers (undefined) and min/max observers made an infinite or NaN scale
// that LibTorch's quantizer took without complaint.
TEST(QuantizeTest, ActivationsThatOverflowFailNamingTheLayer) {
  torch::jit::Module m("Overflowing");
  m.register_parameter("w1", at::full({4, 3, 3, 3}, 1e37), false);
  m.register_parameter("w2", at::ones({4, 4, 1, 1}), false);
  m.define(R"(
    def forward(self, x):
        y = torch.relu(torch.conv2d(x, self.w1))
        return torch.conv2d(y, self.w2)
  )");
  const std::string path = testing::MakeTempDir("overflowing") + "/overflowing.pt";
  m.save(path);
  for (const std::string preset : {"fbgemm", "custom"}) {
    SCOPED_TRACE(preset);
    QuantizeOptions options;
    options.model_path = path;
    options.calibration.path = testing::CalibrationPath();
    options.calibration.limit = 32;
    options.batch_size = 32;
    options.fusion.automatic = true;
    options.qconfig.preset = preset;
    if (preset == "custom") {
      options.qconfig.preset = "";
      options.qconfig.activation_observer = "minmax";
      options.qconfig.weight_observer = "per_channel_symmetric";
    }
    const absl::Status s = Quantize(options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("the output of "), std::string::npos) << s;
    EXPECT_TRUE(s.message().find("overflow") != std::string::npos) << s;
  }
}

TEST(QuantizeEqualizationTest, CrossLayerEqualizationRecoversSkewedChannels) {
  const std::string model = SkewedChainModel(testing::MakeTempDir("skewed_chain"));
  // Per-tensor weights (weight ranges equalized) and per-channel weights
  // (activation ranges balanced against conv2's weights).
  for (const std::string preset : {"qnnpack", "onednn"}) {
    SCOPED_TRACE(preset);
    QuantizeOptions options;
    options.model_path = model;
    options.calibration.path = testing::CalibrationPath();
    options.calibration.limit = 64;
    options.batch_size = 32;
    options.fusion.automatic = true;
    options.qconfig.preset = preset;
    options.quality_samples = 64;
    options.min_output_sqnr_db = -100;
    options.min_top1_agreement = 0;
    auto plain = Quantize(options);
    ASSERT_TRUE(plain.ok()) << plain.status();
    options.qconfig.equalization = true;
    auto equalized = Quantize(options);
    ASSERT_TRUE(equalized.ok()) << equalized.status();
    const QuantizeReport& r = (*equalized)->report();
    EXPECT_NE(r.qconfig_description.find("equalization"), std::string::npos) << r.qconfig_description;
    const bool advised = std::any_of(r.advice.begin(), r.advice.end(), [](const std::string& a) {
      return a.find("cross-layer equalization rescaled 2 conv pair(s)") != std::string::npos;
    });
    EXPECT_TRUE(advised) << ::testing::PrintToString(r.advice);
    const double before = *(*plain)->report().quality.output_sqnr_db;
    const double after = *r.quality.output_sqnr_db;
    std::cout << preset << ": output SQNR " << before << " dB without equalization, " << after << " dB with\n";
    EXPECT_GT(after, before + 20.0);
  }
}

CpuInt8Report SaturatingCpu() {
  CpuInt8Report cpu = CpuInt8Info();
  cpu.model_name = "an AVX2 server";
  cpu.onednn_isa = "avx2";
  cpu.saturating_engines = {{"onednn", {"conv2d", "linear"}}};
  return cpu;
}

bool HasEngine(const std::string& engine) {
  const std::vector<std::string> engines = AvailableKernelEngines();
  return std::find(engines.begin(), engines.end(), engine) != engines.end();
}

const KernelCandidate* FindCandidate(const QuantizeReport& r, const std::string& engine) {
  for (const auto& c : r.kernel_choice.candidates) {
    if (c.engine == engine) return &c;
  }
  return nullptr;
}

// Where onednn saturates with 8-bit activations (an AVX2 server), the onednn
// preset moves to the fastest exact engine, measured, with the reason
// recorded; the fbgemm preset's 7-bit activations stay on onednn.
TEST(QuantizeKernelChoiceTest, SaturatingCpuGetsAnExactEngine) {
  if (!HasEngine("onednn") || !HasEngine("qnnpack")) GTEST_SKIP() << "needs onednn and qnnpack";
  QuantizeOptions options = ResNet8Options("onednn");
  options.cpu_for_testing = SaturatingCpu();
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& r = (*model)->report();
  EXPECT_EQ(r.kernel_engine, "qnnpack");
  EXPECT_EQ(r.kernel_choice.engine, "qnnpack");
  EXPECT_NE(r.kernel_choice.reason.find("saturation"), std::string::npos) << r.kernel_choice.reason;
  const KernelCandidate* onednn = FindCandidate(r, "onednn");
  const KernelCandidate* qnnpack = FindCandidate(r, "qnnpack");
  ASSERT_TRUE(onednn != nullptr && qnnpack != nullptr);
  EXPECT_FALSE(onednn->exact);
  EXPECT_TRUE(qnnpack->exact);
  EXPECT_TRUE(onednn->ms_per_image.has_value() && qnnpack->ms_per_image.has_value());
  EXPECT_FALSE(r.requirements.needs_non_saturating_u8s8);
  EXPECT_TRUE(r.warnings.empty());

  options = ResNet8Options("fbgemm");
  options.cpu_for_testing = SaturatingCpu();
  model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->report().kernel_engine, "onednn");
  EXPECT_EQ((*model)->report().requirements.activation_quant_max, 127);
  EXPECT_FALSE((*model)->report().requirements.needs_non_saturating_u8s8);
}

// tanh on int8 takes LibTorch's fixed qparams: its codes span 0..255 with
// reduce_range too. Where they feed a conv, the fbgemm preset's 7 bits do
// not keep onednn exact on an AVX2 server: the artifact needs 8-bit-exact
// kernels. Where tanh only feeds the output, the preset stays on onednn.
TEST(QuantizeKernelChoiceTest, TanhCodesFeedingAConvNeedExactKernelsDespiteReduceRange) {
  if (!HasEngine("onednn") || !HasEngine("qnnpack")) GTEST_SKIP() << "needs onednn and qnnpack";
  for (const bool tanh_feeds_conv : {true, false}) {
    SCOPED_TRACE(tanh_feeds_conv ? "tanh -> conv" : "conv -> tanh");
    torch::jit::Module m("Tanh");
    m.register_parameter("w1", at::randn({8, 3, 3, 3}) * 0.01, false);
    m.register_parameter("w2", at::randn({10, 8, 1, 1}) * 0.3, false);
    m.define(tanh_feeds_conv ? R"(
    def forward(self, x):
        y = torch.conv2d(torch.tanh(torch.conv2d(x, self.w1)), self.w2)
        return torch.flatten(torch.adaptive_avg_pool2d(y, 1), 1)
  )"
                             : R"(
    def forward(self, x):
        y = torch.tanh(torch.conv2d(torch.relu(torch.conv2d(x, self.w1)), self.w2))
        return torch.flatten(torch.adaptive_avg_pool2d(y, 1), 1)
  )");
    const std::string path = testing::MakeTempDir("tanh") + "/tanh.pt";
    m.save(path);
    QuantizeOptions options;
    options.model_path = path;
    options.calibration.path = testing::CalibrationPath();
    options.calibration.samples_per_class = 5;
    options.fusion.automatic = true;
    options.qconfig.preset = "fbgemm";
    options.cpu_for_testing = SaturatingCpu();
    options.min_top1_agreement = 0;  // a random model: this test is about the kernel choice
    options.min_output_sqnr_db = -100;
    auto model = Quantize(options);
    ASSERT_TRUE(model.ok()) << model.status();
    const QuantizeReport& r = (*model)->report();
    EXPECT_EQ(r.kernel_engine, tanh_feeds_conv ? "qnnpack" : "onednn");
    EXPECT_EQ(r.requirements.activation_quant_max, tanh_feeds_conv ? 255 : 127);
    const KernelCandidate* onednn = FindCandidate(r, "onednn");
    ASSERT_NE(onednn, nullptr);
    EXPECT_EQ(onednn->exact, !tanh_feeds_conv) << onednn->why;
  }
}

TEST(QuantizeKernelChoiceTest, ANamedSaturatingEngineWarnsOrFailsWhenStrict) {
  if (!HasEngine("onednn") || !HasEngine("qnnpack")) GTEST_SKIP() << "needs onednn and qnnpack";
  QuantizeOptions options = ResNet8Options("onednn");
  options.cpu_for_testing = SaturatingCpu();
  options.kernel_engine = "onednn";
  // This test is about the warning: on a CPU that really saturates, the
  // quality gate would fail the model (see the next test).
  options.min_top1_agreement = 0;
  options.min_output_sqnr_db = -100;
  auto model = Quantize(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& r = (*model)->report();
  EXPECT_EQ(r.kernel_engine, "onednn");
  EXPECT_TRUE(r.requirements.needs_non_saturating_u8s8);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("saturation"), std::string::npos) << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("measured on"), std::string::npos) << r.warnings[0];  // the effect, against qnnpack
  EXPECT_NE(r.warnings[0].find("qnnpack"), std::string::npos) << r.warnings[0];

  options.strict_kernels = true;
  const absl::Status strict = Quantize(options).status();
  EXPECT_EQ(strict.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(strict.message().find("saturation"), std::string::npos) << strict;
}

// Where onednn really saturates (an AVX2 CPU, or DNNL_MAX_CPU_ISA=AVX2),
// forcing it on 8-bit activations wrecks ResNet8, and the quality gate says so.
TEST(QuantizeKernelChoiceTest, RealSaturationFailsTheQualityGate) {
  if (!CpuInt8Info().Saturates("onednn")) GTEST_SKIP() << "onednn is exact on this CPU: " << CpuInt8Info().Summary();
  QuantizeOptions options = ResNet8Options("onednn");
  options.kernel_engine = "onednn";
  const absl::Status status = Quantize(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_NE(status.message().find("broken"), std::string::npos) << status;
  EXPECT_NE(status.message().find("saturation"), std::string::npos) << "names the cause: " << status;
}

// On this machine, whatever it is: the default never runs a saturating engine.
TEST(QuantizeKernelChoiceTest, ThisCpuGetsAnExactEngine) {
  auto model = Quantize(ResNet8Options("onednn"));
  ASSERT_TRUE(model.ok()) << model.status();
  const QuantizeReport& r = (*model)->report();
  EXPECT_EQ(r.kernel_engine, CpuInt8Info().Saturates("onednn") ? "qnnpack" : "onednn") << CpuInt8Info().Summary();
  const KernelCandidate* chosen = FindCandidate(r, r.kernel_engine);
  ASSERT_NE(chosen, nullptr);
  EXPECT_TRUE(chosen->exact);
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(r.cpu.Summary(), CpuInt8Info().Summary());
  EXPECT_TRUE(r.quality.passed);
  ASSERT_TRUE(r.quality.top1_agreement.has_value());
  EXPECT_GE(*r.quality.top1_agreement, 0.9);
  EXPECT_EQ(r.quality.samples, 100);
}

// Small models the test builds (worker/engine/testing/make_coverage_models.py),
// each scripted and traced.
class CoverageModelsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTempDir("coverage_models"));
    auto made = testing::RunCommand(testing::Python() + " " + testing::SourceDir() +
                                    "/worker/engine/testing/make_coverage_models.py " + *dir_);
    ASSERT_TRUE(made.ok()) << made.status();
  }
  static QuantizeOptions Options(const std::string& model, const std::string& preset) {
    QuantizeOptions options;
    options.model_path = *dir_ + "/" + model + ".pt";
    options.calibration = Images();
    options.batch_size = 32;
    options.fusion.automatic = true;
    options.qconfig.preset = preset;
    return options;
  }
  static DatasetSpec Images() {
    DatasetSpec images;
    images.format = DatasetFormat::kNpy;
    images.path = *dir_ + "/images.npy";
    images.labels_path = *dir_ + "/labels.npy";
    images.layout = "NCHW";
    return images;
  }

  // Quantizes the scripted and the traced model; checks what every model
  // must satisfy and returns the scripted one's report.
  static QuantizeReport QuantizeBoth(const std::string& name, const std::string& preset) {
    auto scripted = Quantize(Options(name, preset));
    EXPECT_TRUE(scripted.ok()) << name << ": " << scripted.status();
    auto traced = Quantize(Options(name + "_traced", preset));
    EXPECT_TRUE(traced.ok()) << name << " traced: " << traced.status();
    if (!scripted.ok() || !traced.ok()) return {};
    const QuantizeReport& r = (*scripted)->report();
    EXPECT_TRUE(r.quality.passed) << r.quality.message;
    for (const LayerReport& l : r.layers) {
      if (l.sqnr_db) {
        EXPECT_GT(*l.sqnr_db, 10.0) << name << " " << l.name;
      }
    }
    // torch.jit.trace and torch.jit.script import to the same program.
    auto bytes = (*scripted)->SerializeArtifact();
    auto traced_bytes = (*traced)->SerializeArtifact();
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_TRUE(traced_bytes.ok()) << traced_bytes.status();
    if (!bytes.ok() || !traced_bytes.ok()) return r;
    EXPECT_EQ(*bytes, *traced_bytes) << name << ": traced and scripted artifacts differ";
    ExpectPythonRunsTheArtifact(name + "_" + preset, **scripted, *bytes);
    return r;
  }

  // Python's torch.jit.load of the artifact gives quantd's outputs.
  static void ExpectPythonRunsTheArtifact(const std::string& tag, const QuantizedModel& model, const std::string& bytes) {
    const std::string artifact = *dir_ + "/" + tag + ".pt";
    const std::string outputs = *dir_ + "/" + tag + ".f32";
    {
      std::ofstream out(artifact, std::ios::binary);
      out << bytes;
    }
    auto ran = testing::RunCommand(testing::Python() + " " + testing::SourceDir() +
                                   "/worker/engine/testing/run_artifact.py " + artifact + " " +
                                   model.report().kernel_engine + " " + *dir_ + "/images.npy " + outputs);
    ASSERT_TRUE(ran.ok()) << ran.status();
    auto dataset = OpenDataset(Images());
    ASSERT_TRUE(dataset.ok()) << dataset.status();
    auto batch = (*dataset)->ReadBatch(0, (*dataset)->size());
    ASSERT_TRUE(batch.ok()) << batch.status();
    auto ours = const_cast<QuantizedModel&>(model).impl().executor->Forward(batch->images);
    ASSERT_TRUE(ours.ok()) << ours.status();
    const at::Tensor mine = ours->contiguous();
    std::vector<float> theirs(static_cast<size_t>(mine.numel()));
    std::ifstream in(outputs, std::ios::binary);
    in.read(reinterpret_cast<char*>(theirs.data()), static_cast<std::streamsize>(theirs.size() * sizeof(float)));
    ASSERT_EQ(in.gcount(), static_cast<std::streamsize>(theirs.size() * sizeof(float))) << tag;
    const at::Tensor python = at::from_blob(theirs.data(), mine.sizes(), at::kFloat);
    EXPECT_TRUE(at::equal(mine.argmax(1), python.argmax(1))) << tag;
    EXPECT_LE((mine - python).abs().max().item<float>(), 1e-5f) << tag;
  }

  static std::string* dir_;
};
std::string* CoverageModelsTest::dir_ = nullptr;

std::string OpOf(const QuantizeReport& r, const std::string& name) {
  const LayerReport* l = FindLayer(r, name);
  return l ? l->op : std::string("<none>");
}

// MobileNetV2's block: ReLU6 (in place) fused into the conv before it,
// hardswish on its int8 kernel, clamp, depthwise conv: no FP32 fallback at all.
TEST_F(CoverageModelsTest, InvertedResidualRunsWhollyInInt8) {
  for (const std::string preset : {"fbgemm", "qnnpack"}) {
    const QuantizeReport r = QuantizeBoth("inverted_residual", preset);
    EXPECT_TRUE(r.fallbacks.empty()) << preset << ": " << (r.fallbacks.empty() ? "" : r.fallbacks[0].node);
    EXPECT_EQ(OpOf(r, "dw"), "conv2d_relu") << preset;
    const LayerReport* dw = FindLayer(r, "dw");
    ASSERT_NE(dw, nullptr);
    EXPECT_EQ(dw->output_zero_point, 0) << preset << ": the range observed after ReLU6 starts at 0";
    EXPECT_LE(dw->output_scale * static_cast<double>(r.requirements.activation_quant_max), 6.0 + 1e-6) << preset;
    EXPECT_EQ(OpOf(r, "hs"), "hardswish") << preset;
    EXPECT_EQ(OpOf(r, "add"), "add") << preset;
    int quantizes = 0;
    for (const LayerReport& l : r.layers) quantizes += l.op == "quantize";
    EXPECT_EQ(quantizes, 1) << preset << ": only the input is quantized";
  }
}

// Auto fusion takes a ReLU6-like clamp into the conv (+BN) before it, which
// PyTorch's eager mode cannot: FP32 outputs are unchanged, and the conv's
// int8 output range is observed after the clamp (all codes for [0, 6]).
TEST_F(CoverageModelsTest, Relu6FusesIntoTheConvolutionBeforeIt) {
  auto original = ImportTorchScriptFile(*dir_ + "/inverted_residual.pt");
  auto fused = ImportTorchScriptFile(*dir_ + "/inverted_residual.pt");
  ASSERT_TRUE(original.ok() && fused.ok());
  FusionSpec automatic;
  automatic.automatic = true;
  auto groups = FuseModules(&*fused, automatic);
  ASSERT_TRUE(groups.ok()) << groups.status();
  for (const std::string conv : {"stem", "expand", "dw"}) {
    const std::vector<std::string> group = {conv, conv + "_bn", conv + "_act"};
    EXPECT_NE(std::find(groups->begin(), groups->end(), group), groups->end()) << conv;
    for (const Node& node : fused->nodes) {
      if (node.name != conv) continue;
      EXPECT_TRUE(node.fused_relu) << conv;
      EXPECT_EQ(node.fused_clamp_max, std::optional<double>(6.0)) << conv;
    }
  }
  at::manual_seed(1);
  const at::Tensor x = at::rand({4, 3, 16, 16}) * 4;  // the images are 0..1: larger values reach the clamp
  auto a = Fp32Executor::Create(&*original)->Run({x});
  auto b = Fp32Executor::Create(&*fused)->Run({x});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::allclose((*a)[0].toTensor(), (*b)[0].toTensor(), 1e-4, 1e-5));

  // Named explicitly too.
  auto explicit_graph = ImportTorchScriptFile(*dir_ + "/inverted_residual.pt");
  ASSERT_TRUE(explicit_graph.ok());
  FusionSpec spec;
  spec.groups = {{"dw", "dw_bn", "dw_act"}};
  EXPECT_TRUE(FuseModules(&*explicit_graph, spec).ok());

  // Kept in FP32 (as accuracy-aware tuning may), the fused conv clamps in
  // quantd's runtime and in the artifact's TorchScript alike. This model's
  // depthwise outputs stay below 1, so the bound is lowered to make it bite.
  constexpr float kBound = 0.25f;
  for (Node& node : fused->nodes) {
    if (node.name == "dw") node.fused_clamp_max = kBound;
  }
  const QuantizationPlan plan = PlanQuantization(*fused, {"dw"});
  auto images = OpenDataset(Images());
  ASSERT_TRUE(images.ok()) << images.status();
  auto calibrated = Calibrate(*fused, plan, ObserverSpec(), images->get(), CalibrationOptions(), nullptr);
  ASSERT_TRUE(calibrated.ok()) << calibrated.status();
  auto qconfig = QConfigPreset("onednn");
  ASSERT_TRUE(qconfig.ok());
  std::vector<LayerReport> layers;
  auto program = Convert(*fused, plan, calibrated->qparams, *qconfig, "onednn", &layers);
  ASSERT_TRUE(program.ok()) << program.status();
  auto int8 = Int8Executor::Create(&*program);
  ASSERT_TRUE(int8.ok()) << int8.status();
  at::Tensor dw_out;
  auto ran = int8->Run({x}, [&](const Instr& instr, const at::Tensor& t) {
    if (instr.name == "dw") dw_out = t;
  });
  ASSERT_TRUE(ran.ok()) << ran.status();
  ASSERT_TRUE(dw_out.defined());
  EXPECT_FALSE(dw_out.is_quantized());
  EXPECT_EQ(dw_out.max().item<float>(), kBound);
  EXPECT_GT(dw_out.eq(kBound).sum().item<int64_t>(), 0);
  auto module = ProgramToModule(*program);
  ASSERT_TRUE(module.ok()) << module.status();
  const at::Tensor artifact_out = module->forward({x}).toTensor();
  EXPECT_TRUE(at::equal(artifact_out, (*ran)[0].toTensor()));
}

// In int8, a fused bound is made by the output's saturation only when its
// code is the largest. With reduce_range (the fbgemm and x86 presets) the
// bound observed in calibration gets code ~127 while the kernel's quint8
// output goes on to 255: the codes above it are clamped, in quantd's runtime
// and in the artifact alike.
TEST_F(CoverageModelsTest, AFusedRelu6BoundsTheInt8ConvolutionUnderReduceRange) {
  auto fused = ImportTorchScriptFile(*dir_ + "/inverted_residual.pt");
  ASSERT_TRUE(fused.ok()) << fused.status();
  FusionSpec automatic;
  automatic.automatic = true;
  ASSERT_TRUE(FuseModules(&*fused, automatic).ok());
  constexpr float kBound = 0.25f;  // this model's depthwise outputs stay below 1: lowered to bite
  for (Node& node : fused->nodes) {
    if (node.name == "dw") node.fused_clamp_max = kBound;
  }
  const QuantizationPlan plan = PlanQuantization(*fused, {});
  auto images = OpenDataset(Images());
  ASSERT_TRUE(images.ok()) << images.status();
  for (const std::string preset : {"fbgemm", "onednn"}) {
    auto qconfig = QConfigPreset(preset);
    ASSERT_TRUE(qconfig.ok());
    auto calibrated = Calibrate(*fused, plan, qconfig->activation, images->get(), CalibrationOptions(), nullptr);
    ASSERT_TRUE(calibrated.ok()) << calibrated.status();
    std::vector<LayerReport> layers;
    auto program = Convert(*fused, plan, calibrated->qparams, *qconfig, "onednn", &layers);
    ASSERT_TRUE(program.ok()) << program.status();
    auto int8 = Int8Executor::Create(&*program);
    ASSERT_TRUE(int8.ok()) << int8.status();
    at::manual_seed(1);
    const at::Tensor x = at::rand({4, 3, 16, 16}) * 4;
    at::Tensor dw_out;
    auto ran = int8->Run({x}, [&](const Instr& instr, const at::Tensor& t) {
      if (instr.name == "dw") dw_out = t;
    });
    ASSERT_TRUE(ran.ok()) << ran.status();
    ASSERT_TRUE(dw_out.defined() && dw_out.is_quantized()) << preset;
    const double scale = dw_out.q_scale();
    const at::Tensor values = dw_out.dequantize();
    EXPECT_LE(values.max().item<double>(), kBound + scale / 2 + 1e-7) << preset;
    EXPECT_GT(values.ge(kBound - scale).sum().item<int64_t>(), 0) << preset << ": the bound must bite";
    auto module = ProgramToModule(*program);
    ASSERT_TRUE(module.ok()) << module.status();
    EXPECT_TRUE(at::equal(module->forward({x}).toTensor(), (*ran)[0].toTensor())) << preset;
  }
}

// SqueezeNet's fire module: cat on int8 tensors, sigmoid with LibTorch's
// fixed int8 qparams.
TEST_F(CoverageModelsTest, FireModuleCatsInInt8) {
  for (const std::string preset : {"fbgemm", "qnnpack"}) {
    const QuantizeReport r = QuantizeBoth("fire", preset);
    EXPECT_TRUE(r.fallbacks.empty()) << preset << ": " << (r.fallbacks.empty() ? "" : r.fallbacks[0].node);
    EXPECT_EQ(OpOf(r, "cat"), "cat") << preset;
    EXPECT_EQ(OpOf(r, "e3"), "conv2d_relu") << preset;
  }
}

// Every op of the coverage models on QNNPACK kernels too, which is where
// the presets with 8-bit activations run on CPUs without VNNI.
TEST_F(CoverageModelsTest, QnnpackKernelsToo) {
  if (!HasEngine("qnnpack")) GTEST_SKIP() << "no qnnpack";
  for (const std::string model : {"inverted_residual", "fire"}) {
    QuantizeOptions options = Options(model, "onednn");
    options.kernel_engine = "qnnpack";
    auto quantized = Quantize(options);
    ASSERT_TRUE(quantized.ok()) << quantized.status();
    for (const LayerReport& l : (*quantized)->report().layers) {
      if (l.sqnr_db) {
        EXPECT_GT(*l.sqnr_db, 10.0) << model << " " << l.name;
      }
    }
    auto bytes = (*quantized)->SerializeArtifact();
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    ExpectPythonRunsTheArtifact(model + "_on_qnnpack", **quantized, *bytes);
  }
}

// GELU and LayerNorm have no int8 kernels: they run in FP32 between int8
// convs, are listed as fallbacks, and the artifact is still a valid module.
TEST_F(CoverageModelsTest, FallbacksKeepTheArtifactWritable) {
  const QuantizeReport r = QuantizeBoth("gelu_layernorm", "fbgemm");
  std::vector<std::string> fallback_ops;
  for (const auto& f : r.fallbacks) fallback_ops.push_back(f.op);
  EXPECT_EQ(fallback_ops, (std::vector<std::string>{"aten::gelu", "aten::layer_norm"}));
  EXPECT_EQ(OpOf(r, "c2"), "conv2d");
}

// An int8 model that cannot work (one huge channel erases the rest) fails
// instead of passing as a success, and says where it breaks.
TEST_F(CoverageModelsTest, ABrokenInt8ModelFailsWithAMessage) {
  for (const std::string model : {"broken", "broken_traced"}) {
    QuantizeOptions options = Options(model, "fbgemm");
    QuantizeReport refused;
    options.refused_report = &refused;
    const absl::Status status = Quantize(options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_NE(status.message().find("broken"), std::string::npos) << status;
    EXPECT_NE(status.message().find("agrees with FP32"), std::string::npos) << status;
    EXPECT_NE(status.message().find("fc ("), std::string::npos) << "names the worst layer: " << status;
    // What was measured comes with the refusal (a failed job once reported
    // 0 calibration samples and no layers).
    EXPECT_FALSE(refused.quality.passed);
    EXPECT_EQ(refused.quality.message, status.message());
    EXPECT_GT(refused.calibration_samples, 0);
    EXPECT_FALSE(refused.layers.empty());
    options.refused_report = nullptr;

    options.allow_low_quality = true;
    auto kept = Quantize(options);
    ASSERT_TRUE(kept.ok()) << kept.status();
    EXPECT_FALSE((*kept)->report().quality.passed);
    ASSERT_EQ((*kept)->report().warnings.size(), 1u);
    EXPECT_NE((*kept)->report().warnings[0].find("quality check failed"), std::string::npos);
  }
}

}  // namespace
}  // namespace quantd::engine
