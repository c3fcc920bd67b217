#include "worker/engine/passes/calibrate.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>

#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/passes/bias_correction.h"
#include "worker/engine/passes/compare_with_fp32.h"
#include "worker/engine/passes/fuse_modules.h"
#include "worker/engine/runtime/fp32_executor.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

// The SQNR report's FP32 side comes from calibration's own forward pass (in
// sub-batches, on the oneDNN path where it applies): it must equal a fresh
// LibTorch pass over the same images, including across a sub-batch boundary.
// The fused ResNet8 fixture and the first `images` calibration images.
struct FusedResNet8 {
  absl::StatusOr<Graph> graph;
  QuantizationPlan plan;
  absl::StatusOr<std::unique_ptr<Dataset>> dataset;
};

FusedResNet8 LoadFusedResNet8(int64_t images) {
  FusedResNet8 r{ImportTorchScriptFile(testing::ResNet8Path()), {}, absl::UnknownError("not opened")};
  if (!r.graph.ok()) return r;
  absl::Status fused = FuseModules(&*r.graph, FusionSpec{false, testing::ResNet8FusionGroups()}).status();
  if (!fused.ok()) {
    r.graph = fused;
    return r;
  }
  r.plan = PlanQuantization(*r.graph);
  DatasetSpec spec;
  spec.path = testing::CalibrationPath();
  spec.limit = images;
  r.dataset = OpenDataset(spec);
  return r;
}

TEST(CalibrateTest, KeptReferencesEqualAFreshFp32Pass) {
  FusedResNet8 fixture = LoadFusedResNet8(200);
  ASSERT_TRUE(fixture.graph.ok()) << fixture.graph.status();
  ASSERT_TRUE(fixture.dataset.ok()) << fixture.dataset.status();
  auto& graph = fixture.graph;
  auto& dataset = fixture.dataset;
  const QuantizationPlan& plan = fixture.plan;
  ObserverSpec histogram;
  CalibrationOptions options;
  options.forward_batch_size = 25;
  options.reference_values = SqnrValues(*graph, plan);
  ASSERT_GE(options.reference_values.size(), 13u) << "ResNet8's int8 layers are its references";
  options.reference_samples = 32;
  auto calibrated = Calibrate(*graph, plan, histogram, dataset->get(), options, nullptr);
  ASSERT_TRUE(calibrated.ok()) << calibrated.status();
  ASSERT_EQ(calibrated->references.size(), options.reference_values.size());

  auto images = (*dataset)->ReadBatch(0, 32);
  ASSERT_TRUE(images.ok());
  auto fp32 = Fp32Executor::Create(&*graph);
  ASSERT_TRUE(fp32.ok());
  at::NoGradGuard no_grad;
  int compared = 0;
  auto out = fp32->Run({images->images}, [&](int value, const at::Tensor& t) {
    auto it = calibrated->references.find(value);
    if (it == calibrated->references.end()) return;
    // Convolutions and adds compute each image alone, whatever the batch;
    // the final linear's GEMM may round differently for another batch size.
    const Node* producer = nullptr;
    for (const Node& n : graph->nodes) {
      if (!n.removed && n.outputs[0] == value) producer = &n;
    }
    ASSERT_NE(producer, nullptr);
    if (producer->kind == OpKind::kLinear) {
      EXPECT_TRUE(at::allclose(it->second, t, 1e-5, 1e-5)) << producer->name;
    } else {
      EXPECT_TRUE(at::equal(it->second.contiguous(), t.contiguous())) << producer->name;
    }
    ++compared;
  });
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(compared, static_cast<int>(options.reference_values.size()));
}

// Bias correction's means come from the same pass (blocked layout included,
// where the channel order must be undone): each must equal the mean of a
// fresh LibTorch pass over the same images.
TEST(CalibrateTest, KeptMeansEqualAFreshFp32Pass) {
  FusedResNet8 fixture = LoadFusedResNet8(150);
  ASSERT_TRUE(fixture.graph.ok()) << fixture.graph.status();
  ASSERT_TRUE(fixture.dataset.ok()) << fixture.dataset.status();
  auto& graph = fixture.graph;
  auto& dataset = fixture.dataset;
  const QuantizationPlan& plan = fixture.plan;
  CalibrationOptions options;
  options.batch_size = 100;  // a partial last batch
  options.forward_batch_size = 25;
  options.mean_values = BiasCorrectionInputs(*graph);
  ASSERT_EQ(options.mean_values.size(), 10u);  // 9 convolutions and the classifier
  auto calibrated = Calibrate(*graph, plan, ObserverSpec(), dataset->get(), options, nullptr);
  ASSERT_TRUE(calibrated.ok()) << calibrated.status();
  ASSERT_EQ(calibrated->means.size(), 10u);

  auto images = (*dataset)->ReadBatch(0, 150);
  ASSERT_TRUE(images.ok());
  auto fp32 = Fp32Executor::Create(&*graph);
  ASSERT_TRUE(fp32.ok());
  at::NoGradGuard no_grad;
  int compared = 0;
  auto out = fp32->Run({images->images}, [&](int value, const at::Tensor& t) {
    auto it = calibrated->means.find(value);
    if (it == calibrated->means.end()) return;
    const at::Tensor want = t.to(at::kDouble).mean(0).to(at::kFloat);
    ASSERT_EQ(it->second.sizes(), want.sizes()) << "value " << value;
    EXPECT_TRUE(at::allclose(it->second, want, 1e-4, 1e-4)) << "value " << value;
    ++compared;
  });
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(compared, 10);
}

}  // namespace
}  // namespace quantd::engine
