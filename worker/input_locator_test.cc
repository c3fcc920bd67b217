#include "worker/input_locator.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "worker/local_blob_store.h"

namespace quantd::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class InputLocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ("input_locator_test." + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_ / "data/datasets");
    fs::create_directories(root_ / "elsewhere");
    std::ofstream(root_ / "data/datasets/calib.bin") << "calibration";
    std::ofstream(root_ / "elsewhere/calib.bin") << "not this one";
    absl::StatusOr<std::unique_ptr<LocalBlobStore>> blobs = LocalBlobStore::Open((root_ / "data/blobs").string(), 1 << 20);
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    blobs_ = std::move(*blobs);
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string Upload(const std::string& bytes) {
    absl::StatusOr<std::unique_ptr<BlobUpload>> upload = blobs_->BeginUpload("", 0);
    EXPECT_TRUE(upload.ok()) << upload.status();
    EXPECT_TRUE((*upload)->Append(bytes).ok());
    absl::StatusOr<BlobInfo> info = (*upload)->Commit();
    EXPECT_TRUE(info.ok()) << info.status();
    return info->sha256;
  }

  fs::path root_;
  std::unique_ptr<BlobStore> blobs_;
};

TEST_F(InputLocatorTest, EachFormResolvesToThisReplicasFile) {
  const InputLocator locator((root_ / "data").string(), blobs_.get());
  const std::string blob = Upload("model bytes");
  absl::StatusOr<std::string> from_blob = locator.LocalPath(BlobReference(blob), "model");
  ASSERT_TRUE(from_blob.ok()) << from_blob.status();
  EXPECT_EQ(*from_blob, (root_ / "data/blobs" / blob).string());

  absl::StatusOr<std::string> from_data = locator.LocalPath(DataDirReference("datasets/calib.bin"), "calibration");
  ASSERT_TRUE(from_data.ok()) << from_data.status();
  EXPECT_EQ(*from_data, fs::canonical(root_ / "data/datasets/calib.bin").string());

  // A read root's file (deployment config, the same path on every replica)
  // and jobs stored before references: absolute paths, as they are.
  const std::string absolute = (root_ / "elsewhere/calib.bin").string();
  EXPECT_EQ(*locator.LocalPath(absolute, "calibration"), absolute);
}

// A queued job reads its upload when it runs: bytes damaged since its
// submission fail it DATA_LOSS, naming the field, instead of being read.
TEST_F(InputLocatorTest, ABlobDamagedInTheStoreIsDataLossNamingTheField) {
  const InputLocator locator((root_ / "data").string(), blobs_.get());
  const std::string blob = Upload("calibration images");
  ASSERT_TRUE(locator.LocalPath(BlobReference(blob), "calibration.dataset.blob_id").ok());
  std::ofstream(root_ / "data/blobs" / blob, std::ios::binary | std::ios::trunc) << "calibration imageS";
  const absl::Status damaged = locator.LocalPath(BlobReference(blob), "calibration.dataset.blob_id").status();
  EXPECT_EQ(damaged.code(), absl::StatusCode::kDataLoss) << damaged;
  EXPECT_THAT(damaged.message(), HasSubstr("calibration.dataset.blob_id: blob " + blob + " is corrupted"));
}

TEST_F(InputLocatorTest, WhatIsNotHereOrNotAReferenceFailsNamingTheField) {
  const InputLocator locator((root_ / "data").string(), blobs_.get());
  const std::string absent(64, 'a');
  absl::Status blob = locator.LocalPath(BlobReference(absent), "calibration.dataset").status();
  EXPECT_EQ(blob.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(blob.message(), HasSubstr("calibration.dataset: blob " + absent));
  absl::Status file = locator.LocalPath(DataDirReference("datasets/gone.bin"), "model").status();
  EXPECT_EQ(file.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.message(), HasSubstr("model: \"datasets/gone.bin\""));
  // A row edited in the store cannot reach outside the data dir.
  for (const std::string& escape : {DataDirReference("../elsewhere/calib.bin"), DataDirReference("/etc/hostname"),
                                    DataDirReference("")}) {
    EXPECT_EQ(locator.LocalPath(escape, "model").status().code(), absl::StatusCode::kInvalidArgument) << escape;
  }
  EXPECT_EQ(locator.LocalPath("relative/path.bin", "model").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(locator.LocalPath(BlobReference("not-a-sha"), "model").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Submission resolved links once; a folder swapped for a link since then
// would redirect the job to a file nobody checked.
TEST_F(InputLocatorTest, ALinkThatAppearedAfterSubmissionIsNotFollowed) {
  const InputLocator locator((root_ / "data").string(), blobs_.get());
  fs::rename(root_ / "data/datasets", root_ / "data/old");
  fs::create_directories(root_ / "elsewhere/datasets");
  std::ofstream(root_ / "elsewhere/datasets/calib.bin") << "swapped";
  fs::create_directory_symlink(root_ / "elsewhere/datasets", root_ / "data/datasets");
  absl::Status status = locator.LocalPath(DataDirReference("datasets/calib.bin"), "calibration.dataset").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("symbolic link"));

  // A read root's file (stored as an absolute path) likewise: its folder
  // swapped for a link that leads elsewhere (here into the data dir).
  fs::create_directories(root_ / "shared/sets");
  std::ofstream(root_ / "shared/sets/calib.bin") << "shared";
  const std::string shared = (root_ / "shared/sets/calib.bin").string();
  EXPECT_EQ(*locator.LocalPath(shared, "calibration.dataset"), shared);
  fs::rename(root_ / "shared/sets", root_ / "shared/old");
  fs::create_directory_symlink(root_ / "elsewhere/datasets", root_ / "shared/sets");
  status = locator.LocalPath(shared, "calibration.dataset").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("symbolic link"));
  fs::remove(root_ / "shared/sets");
  EXPECT_EQ(locator.LocalPath(shared, "calibration.dataset").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(InputLocatorTest, ASpecIsLocalizedWholeOrNotAtAll) {
  const InputLocator locator((root_ / "data").string(), blobs_.get());
  JobSpec spec;
  spec.model_path = BlobReference(Upload("model"));
  spec.calibration.path = DataDirReference("datasets/calib.bin");
  spec.evaluation = engine::DatasetSpec();
  spec.evaluation->path = BlobReference(Upload("images"));
  spec.evaluation->labels_path = BlobReference(Upload("labels"));
  spec.accuracy_goal = engine::AccuracyGoal();
  spec.accuracy_goal->tuning.path = (root_ / "elsewhere/calib.bin").string();
  absl::StatusOr<JobSpec> local = LocalizeJobSpec(spec, &locator);
  ASSERT_TRUE(local.ok()) << local.status();
  for (const std::string* path : {&local->model_path, &local->calibration.path, &local->evaluation->path,
                                  &local->evaluation->labels_path, &local->accuracy_goal->tuning.path}) {
    EXPECT_TRUE(fs::path(*path).is_absolute()) << *path;
    EXPECT_TRUE(fs::is_regular_file(*path)) << *path;
  }
  EXPECT_TRUE(local->calibration.labels_path.empty());

  spec.evaluation->labels_path = BlobReference(std::string(64, 'b'));
  absl::Status missing = LocalizeJobSpec(spec, &locator).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  // Named as the request's field: the labels were given as a blob id.
  EXPECT_THAT(missing.message(), HasSubstr("evaluation.dataset.labels_blob_id: blob"));

  // Without a locator (worker tests with fake engines) the spec is as it was.
  absl::StatusOr<JobSpec> unchanged = LocalizeJobSpec(spec, nullptr);
  ASSERT_TRUE(unchanged.ok()) << unchanged.status();
  EXPECT_EQ(unchanged->model_path, spec.model_path);
  EXPECT_EQ(unchanged->evaluation->labels_path, spec.evaluation->labels_path);
}

// An engine error names the files it read; the job's result names them as
// the client did, not by this server's layout.
TEST_F(InputLocatorTest, ErrorsNameInputsByTheirReferences) {
  const InputLocator locator((root_ / "data").string(), blobs_.get());
  JobSpec spec;
  spec.model_path = BlobReference(Upload("model"));
  spec.calibration.path = DataDirReference("datasets/calib.bin");
  absl::StatusOr<JobSpec> local = LocalizeJobSpec(spec, &locator);
  ASSERT_TRUE(local.ok()) << local.status();
  const std::string message = ReferToInputs(
      absl::StrCat("CIFAR-10 file ", local->calibration.path, " is truncated; model ", local->model_path), spec, *local);
  EXPECT_EQ(message, absl::StrCat("CIFAR-10 file data:datasets/calib.bin is truncated; model ", spec.model_path));
  EXPECT_THAT(message, ::testing::Not(HasSubstr(root_.string())));

  // One dataset's files alike (an evaluation's).
  engine::DatasetSpec stored;
  stored.path = BlobReference(Upload("images"));
  stored.labels_path = DataDirReference("datasets/labels.npy");
  engine::DatasetSpec here;
  here.path = (root_ / "data/blobs/x").string();
  here.labels_path = (root_ / "data/datasets/labels.npy").string();
  EXPECT_EQ(ReferToDataset(absl::StrCat(here.labels_path, ": 9 labels for ", here.path), stored, here),
            absl::StrCat("data:datasets/labels.npy: 9 labels for ", stored.path));
  // No reference (an evaluation started in-process): names kept.
  EXPECT_EQ(ReferToDataset(absl::StrCat(here.path, " is short"), engine::DatasetSpec(), here),
            absl::StrCat(here.path, " is short"));
}

}  // namespace
}  // namespace quantd::worker
