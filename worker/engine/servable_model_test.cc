#include "worker/engine/servable_model.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "worker/engine/quantizer.h"
#include "worker/engine/testing/test_env.h"

namespace quantd::engine {
namespace {

// The ResNet8 fbgemm-preset artifact (made for onednn's kernels here).
const std::string& ResNet8Artifact() {
  static const std::string* bytes = [] {
    QuantizeOptions options;
    options.model_path = testing::ResNet8Path();
    options.calibration.path = testing::CalibrationPath();
    options.calibration.samples_per_class = 10;
    options.qconfig.preset = "fbgemm";
    options.fusion.automatic = true;
    options.quality_samples = 0;
    auto model = Quantize(options);
    EXPECT_TRUE(model.ok()) << model.status();
    auto* out = new std::string;
    if (model.ok()) {
      EXPECT_EQ((*model)->report().kernel_engine, "onednn");
      auto serialized = (*model)->SerializeArtifact();
      EXPECT_TRUE(serialized.ok()) << serialized.status();
      if (serialized.ok()) *out = *serialized;
    }
    return out;
  }();
  return *bytes;
}

// The first `n` calibration images as float pixels, NCHW.
std::vector<float> Images(int n) {
  std::ifstream in(testing::CalibrationPath(), std::ios::binary);
  const std::string cifar((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> out;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < 3072; ++j) out.push_back(static_cast<uint8_t>(cifar.at(i * 3073 + 1 + j)));
  }
  return out;
}

std::vector<int64_t> Shape(int n) { return {n, 3, 32, 32}; }

// An archive whose compile error throws while LibTorch renders it (found by
// torchscript_import_fuzzer) is a status from the int8 loader too, as from
// the FP32 one, not the end of the process.
TEST(ServableModelTest, AnArchiveWhoseErrorMessageThrowsIsAStatusOnEitherLoader) {
  std::ifstream in(testing::SourceDir() + "/tests/fuzz/corpus/torchscript_import_fuzzer/what_throws_while_rendering",
                   std::ios::binary);
  ASSERT_TRUE(in.good());
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const absl::Status int8 = ServableModel::LoadInt8Artifact(bytes, "qnnpack", "crafted", 0).status();
  EXPECT_EQ(int8.code(), absl::StatusCode::kFailedPrecondition) << int8;
  EXPECT_NE(int8.message().find("does not compile in this LibTorch"), std::string::npos) << int8;
  const absl::Status fp32 = ServableModel::LoadFp32Bytes(bytes, "crafted").status();
  EXPECT_EQ(fp32.code(), absl::StatusCode::kFailedPrecondition) << fp32;
}

TEST(ServableModelTest, BatchSizeCopiesGiveBitIdenticalOutputs) {
  ASSERT_FALSE(ResNet8Artifact().empty());
  auto model = ServableModel::LoadInt8Artifact(ResNet8Artifact(), "onednn", "resnet8", /*batch_size_copies=*/4);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<float> images = Images(5);
  auto first = (*model)->Run(images, Shape(5));  // on the model as loaded; asks for a copy for 5
  ASSERT_TRUE(first.ok()) << first.status();
  (*model)->WaitForBatchSizeCopies();
  EXPECT_EQ((*model)->batch_size_copies(), 1);
  auto again = (*model)->Run(images, Shape(5));  // on the copy
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->shape, first->shape);
  EXPECT_EQ(again->values, first->values);
  // And each image alone (batch 1 gets its copy too) gives the same rows.
  std::vector<float> one_by_one;
  for (int round = 0; round < 2; ++round) {
    one_by_one.clear();
    for (int i = 0; i < 5; ++i) {
      auto single = (*model)->Run(absl::MakeConstSpan(images).subspan(i * 3072, 3072), Shape(1));
      ASSERT_TRUE(single.ok()) << single.status();
      one_by_one.insert(one_by_one.end(), single->values.begin(), single->values.end());
    }
    EXPECT_EQ(one_by_one, first->values) << "round " << round;
    (*model)->WaitForBatchSizeCopies();
  }
  EXPECT_EQ((*model)->batch_size_copies(), 2);
}

TEST(ServableModelTest, BatchSizeCopiesStopAtTheirLimitAndOnlyOnOnednn) {
  ASSERT_FALSE(ResNet8Artifact().empty());
  const std::vector<float> images = Images(4);
  auto onednn = ServableModel::LoadInt8Artifact(ResNet8Artifact(), "onednn", "resnet8", /*batch_size_copies=*/2);
  auto qnnpack = ServableModel::LoadInt8Artifact(ResNet8Artifact(), "qnnpack", "resnet8", /*batch_size_copies=*/2);
  auto none = ServableModel::LoadInt8Artifact(ResNet8Artifact(), "onednn", "resnet8", /*batch_size_copies=*/0);
  ASSERT_TRUE(onednn.ok() && qnnpack.ok() && none.ok());
  for (int n = 2; n <= 4; ++n) {
    for (auto* model : {&*onednn, &*qnnpack, &*none}) {
      auto out = (*model)->Run(absl::MakeConstSpan(images).subspan(0, n * 3072), Shape(n));
      ASSERT_TRUE(out.ok()) << out.status();
      (*model)->WaitForBatchSizeCopies();
    }
  }
  EXPECT_EQ((*onednn)->batch_size_copy_limit(), 2);
  EXPECT_EQ((*qnnpack)->batch_size_copy_limit(), 0);
  EXPECT_EQ((*none)->batch_size_copy_limit(), 0);
  EXPECT_EQ((*onednn)->batch_size_copies(), 2);   // sizes 2 and 3; 4 runs on the model as loaded
  EXPECT_EQ((*qnnpack)->batch_size_copies(), 0);  // qnnpack keeps no state per shape
  EXPECT_EQ((*none)->batch_size_copies(), 0);
  // Dropped while a copy is being built: the builder is joined, nothing runs after.
  auto dropped = ServableModel::LoadInt8Artifact(ResNet8Artifact(), "onednn", "resnet8", 2);
  ASSERT_TRUE(dropped.ok());
  ASSERT_TRUE((*dropped)->Run(images, Shape(4)).ok());
  dropped->reset();
}

}  // namespace
}  // namespace quantd::engine
