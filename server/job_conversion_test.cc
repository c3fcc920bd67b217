#include "server/job_conversion.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "worker/engine/quantizer.h"
#include "worker/input_locator.h"
#include "worker/job_codec.h"

namespace quantd {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

class ResolvePathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ("resolve_path_test." + std::to_string(getpid()));
    fs::remove_all(root_);
    data_ = root_ / "data";
    for (const char* dir : {"artifacts", "blobs", "datasets/blobs", "../shared"}) fs::create_directories(data_ / dir);
    for (const char* file : {"jobs.db", "jobs.db-wal", "LOCK", "artifacts/a.pt", "blobs/b", "model.pt",
                             "datasets/blobs/calib.bin", "../shared/calib.bin"}) {
      std::ofstream(data_ / file) << "x";
    }
  }
  void TearDown() override { fs::remove_all(root_); }

  ReferenceResolver Resolver() const { return ReferenceResolver(data_.string(), nullptr, {(root_ / "shared").string()}); }

  // A valid request: model.pt calibrated on a CIFAR-10 file of one record.
  v1::QuantizeJobRequest OneRecordRequest() const {
    std::ofstream(data_ / "datasets/blobs/calib.bin", std::ios::trunc) << std::string(3073, '\0');
    v1::QuantizeJobRequest request;
    request.mutable_model()->set_path("model.pt");
    request.mutable_calibration()->mutable_dataset()->set_path("datasets/blobs/calib.bin");
    request.mutable_calibration()->mutable_dataset()->set_format(v1::DATASET_FORMAT_CIFAR10_BINARY);
    return request;
  }

  fs::path root_;
  fs::path data_;
};

TEST_F(ResolvePathTest, InputsUnderTheDataDirAndReadRootsResolve) {
  const ReferenceResolver resolver = Resolver();
  absl::StatusOr<ResolvedInput> model = resolver.ResolvePath("model.pt", "model.path");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->local_path, fs::canonical(data_ / "model.pt").string());
  EXPECT_EQ(model->reference, "data:model.pt");
  // Only the top of the data dir is quantd's: a dataset folder may hold a "blobs".
  EXPECT_TRUE(resolver.ResolvePath("datasets/blobs/calib.bin", "calibration.path").ok());
  // A link under the data dir is followed once, here: the reference names
  // the file it led to, under its root.
  fs::create_symlink(root_ / "shared", data_ / "shared");
  absl::StatusOr<ResolvedInput> shared = resolver.ResolvePath("shared/calib.bin", "calibration.path");
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(shared->reference, fs::canonical(root_ / "shared/calib.bin").string());
  fs::create_symlink(data_ / "datasets/blobs/calib.bin", data_ / "calib-link.bin");
  EXPECT_EQ(resolver.ResolvePath("calib-link.bin", "calibration.path")->reference, "data:datasets/blobs/calib.bin");
}

// A stored job names its inputs so that any replica on a shared job store
// finds them: no path of the server that accepted it (worker/input_locator.h).
TEST_F(ResolvePathTest, AStoredJobKeepsReferencesNotThisServersPaths) {
  v1::QuantizeJobRequest request = OneRecordRequest();
  request.mutable_evaluation()->mutable_dataset()->set_path("datasets/blobs/calib.bin");
  request.mutable_evaluation()->mutable_dataset()->set_format(v1::DATASET_FORMAT_CIFAR10_BINARY);
  absl::StatusOr<worker::Job> job = JobFromRequest(request, Resolver());
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->spec.model_path, "data:model.pt");
  EXPECT_EQ(job->spec.calibration.path, "data:datasets/blobs/calib.bin");
  ASSERT_TRUE(job->spec.evaluation.has_value());
  EXPECT_EQ(job->spec.evaluation->path, "data:datasets/blobs/calib.bin");
  EXPECT_THAT(worker::EncodeJobSpec(job->spec), ::testing::Not(HasSubstr(root_.string())));

  // Another replica, with its own data dir holding the same relative files,
  // runs the job on them.
  const fs::path other = root_ / "replica-b";
  fs::create_directories(other / "datasets/blobs");
  std::ofstream(other / "model.pt") << "x";
  std::ofstream(other / "datasets/blobs/calib.bin") << std::string(3073, '\0');
  const worker::InputLocator locator(other.string(), nullptr);
  absl::StatusOr<worker::JobSpec> local = worker::LocalizeJobSpec(job->spec, &locator);
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(local->model_path, fs::canonical(other / "model.pt").string());
  EXPECT_EQ(local->calibration.path, fs::canonical(other / "datasets/blobs/calib.bin").string());
  EXPECT_EQ(local->evaluation->path, local->calibration.path);

  // One that lacks a file fails naming the field.
  fs::remove(other / "model.pt");
  absl::Status missing = worker::LocalizeJobSpec(job->spec, &locator).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("model: \"model.pt\""));
}

TEST_F(ResolvePathTest, QuantdsOwnStateIsNotAnInput) {
  const ReferenceResolver resolver = Resolver();
  for (const char* path : {"jobs.db", "jobs.db-wal", "LOCK", "artifacts/a.pt", "blobs/b", "./blobs/b"}) {
    absl::StatusOr<ResolvedInput> resolved = resolver.ResolvePath(path, "model.path");
    ASSERT_FALSE(resolved.ok()) << path;
    EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(resolved.status().message(), HasSubstr("model.path")) << path;
    EXPECT_THAT(resolved.status().message(), HasSubstr("quantd's own")) << path;
  }
  // Nor through a link whose own name looks harmless.
  fs::create_symlink(data_ / "jobs.db", data_ / "calib.bin");
  absl::StatusOr<ResolvedInput> linked = resolver.ResolvePath("calib.bin", "calibration.path");
  ASSERT_FALSE(linked.ok());
  EXPECT_THAT(linked.status().message(), HasSubstr("quantd's own jobs.db"));
  // Nor through a hard link, which has no other name to give it away.
  fs::create_hard_link(data_ / "jobs.db", data_ / "hard.bin");
  absl::StatusOr<ResolvedInput> hard = resolver.ResolvePath("hard.bin", "calibration.path");
  ASSERT_FALSE(hard.ok());
  EXPECT_EQ(hard.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(hard.status().message(), HasSubstr("calibration.path: \"hard.bin\" is a hard link to quantd's own jobs.db"));
  // A hard link between two inputs is an input.
  std::ofstream(data_ / "one.bin") << "x";
  fs::create_hard_link(data_ / "one.bin", data_ / "two.bin");
  EXPECT_TRUE(resolver.ResolvePath("two.bin", "calibration.path").ok());
}

TEST_F(ResolvePathTest, EscapesAndMissingFilesAreRefused) {
  const ReferenceResolver resolver = Resolver();
  EXPECT_EQ(resolver.ResolvePath("../shared/calib.bin", "model.path").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolver.ResolvePath("/etc/hostname", "model.path").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolver.ResolvePath("missing.pt", "model.path").status().code(), absl::StatusCode::kNotFound);
  // There, but not a file: the request is wrong, nothing is missing.
  absl::StatusOr<ResolvedInput> folder = resolver.ResolvePath("datasets", "calibration.path");
  ASSERT_FALSE(folder.ok());
  EXPECT_EQ(folder.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(folder.status().message(), HasSubstr("calibration.path: \"datasets\" is not a regular file"));
  fs::create_symlink("/etc/hostname", data_ / "outside.pt");
  absl::StatusOr<ResolvedInput> outside = resolver.ResolvePath("outside.pt", "model.path");
  ASSERT_FALSE(outside.ok());
  EXPECT_THAT(outside.status().message(), HasSubstr("is a link to a file outside the data root"));
  // Where it leads is for the server's log, not for any submitter.
  EXPECT_THAT(outside.status().message(), Not(HasSubstr("/etc/hostname")));
}

// A job's request is kept and echoed in every GetJob and ListJobs page: it
// is held to a job description's size, and labels to labels' sizes.
TEST_F(ResolvePathTest, OversizedRequestsAndLabelsAreRefusedNamingTheField) {
  const ReferenceResolver resolver = Resolver();
  v1::QuantizeJobRequest request = OneRecordRequest();
  ASSERT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();

  v1::QuantizeJobRequest big = request;
  (*big.mutable_labels())["notes"] = std::string(70000, 'x');
  absl::Status status = JobFromRequest(big, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("request: "));
  v1::QuantizeJobRequest long_value = request;
  (*long_value.mutable_labels())["team"] = std::string(300, 'x');
  EXPECT_THAT(JobFromRequest(long_value, resolver).status().message(), HasSubstr("labels[team]: 300 characters"));
  v1::QuantizeJobRequest long_key = request;
  (*long_key.mutable_labels())[std::string(64, 'k')] = "v";
  EXPECT_THAT(JobFromRequest(long_key, resolver).status().message(), HasSubstr("is not 1 to 63 characters"));

  // An explicit QCONFIG_PRESET_UNSPECIFIED is the default, as unset is.
  v1::QuantizeJobRequest unspecified = request;
  unspecified.mutable_qconfig()->set_preset(v1::QCONFIG_PRESET_UNSPECIFIED);
  absl::StatusOr<worker::Job> job = JobFromRequest(unspecified, resolver);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->spec.qconfig.preset, "fbgemm");
}

// A custom qconfig's percentile: the share of values kept, in (0, 100], and
// only for the percentile estimator (quantctl checks the same first).
TEST_F(ResolvePathTest, ACustomPercentileOutOfRangeOrForAnotherObserverNamesTheField) {
  const ReferenceResolver resolver = Resolver();
  v1::QuantizeJobRequest request = OneRecordRequest();
  v1::CustomQConfig* custom = request.mutable_qconfig()->mutable_custom();
  custom->set_activation_observer(v1::ACTIVATION_OBSERVER_PERCENTILE);
  custom->set_percentile(99.9);
  absl::StatusOr<worker::Job> job = JobFromRequest(request, resolver);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_DOUBLE_EQ(job->spec.qconfig.percentile, 99.9);
  custom->set_percentile(150);
  absl::Status status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("qconfig.custom.percentile: 150 is not in (0, 100]"));
  custom->set_percentile(99);
  custom->set_activation_observer(v1::ACTIVATION_OBSERVER_HISTOGRAM);
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("qconfig.custom.percentile: only for activation_observer"));
}

TEST_F(ResolvePathTest, AnAccuracyGoalOutOfRangeNamesTheField) {
  const ReferenceResolver resolver = Resolver();
  v1::QuantizeJobRequest request = OneRecordRequest();
  v1::AccuracyGoal* goal = request.mutable_accuracy_goal();
  goal->mutable_tuning()->set_path("datasets/blobs/calib.bin");
  goal->mutable_tuning()->set_format(v1::DATASET_FORMAT_CIFAR10_BINARY);
  goal->set_tolerance(0.5);
  ASSERT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();
  goal->set_tolerance(150);
  absl::Status status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("accuracy_goal.tolerance: 150 is not a number of points in [0, 100]"));
  goal->set_tolerance(0.5);
  goal->set_max_trials(5000);
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(), HasSubstr("accuracy_goal.max_trials: at most 1000"));
  // Tuning reads histograms, which a MinMax observer does not keep.
  goal->set_max_trials(10);
  request.mutable_qconfig()->mutable_custom()->set_activation_observer(v1::ACTIVATION_OBSERVER_MINMAX);
  status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("qconfig.custom.activation_observer: accuracy_goal tries range estimators"));
  request.mutable_qconfig()->mutable_custom()->set_activation_observer(v1::ACTIVATION_OBSERVER_MSE);
  EXPECT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();
}

// onednn takes no weight zero points: refused at submit, not after calibration.
TEST_F(ResolvePathTest, AffineWeightsOnOnednnAreRefusedAtSubmit) {
  const ReferenceResolver resolver = Resolver();
  v1::QuantizeJobRequest request = OneRecordRequest();
  request.mutable_qconfig()->mutable_custom()->set_weight_observer(v1::WEIGHT_OBSERVER_PER_TENSOR_AFFINE);
  request.mutable_qconfig()->set_kernel_engine("qnnpack");
  ASSERT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();
  const std::vector<std::string> engines = engine::AvailableKernelEngines();
  if (std::find(engines.begin(), engines.end(), "onednn") == engines.end()) GTEST_SKIP() << "no onednn here";
  request.mutable_qconfig()->set_kernel_engine("onednn");
  const absl::Status status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("qconfig.custom.weight_observer: WEIGHT_OBSERVER_PER_TENSOR_AFFINE gives "
                                          "weight zero points, which qconfig.kernel_engine \"onednn\" rejects"));
}

// The job is stored as JSON text: a link to a file whose name is not UTF-8
// was stored with the name altered, and the job failed NOT_FOUND on a path
// nobody gave.
TEST_F(ResolvePathTest, ALinkToAPathThatIsNotUtf8IsRefused) {
  const ReferenceResolver resolver = Resolver();
  std::ofstream(data_ / "datasets/caf\xe9.bin") << std::string(3073, '\0');
  fs::create_symlink(data_ / "datasets/caf\xe9.bin", data_ / "datasets/latin1.bin");
  absl::Status status = resolver.ResolvePath("datasets/latin1.bin", "calibration.dataset.path").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("calibration.dataset.path: \"datasets/latin1.bin\" leads to a file whose "
                                          "path is not UTF-8"));
  std::ofstream(data_ / "datasets/caf\xc3\xa9.bin") << std::string(3073, '\0');  // café in UTF-8
  EXPECT_TRUE(resolver.ResolvePath("datasets/caf\xc3\xa9.bin", "calibration.dataset.path").ok());
}

// A .npy file of `shape` and `descr` ("|u1", "<i8"), data all zero.
void WriteNpy(const fs::path& path, const std::string& descr, const std::vector<int64_t>& shape, size_t item_bytes) {
  std::string dims;
  size_t items = 1;
  for (int64_t d : shape) {
    dims += std::to_string(d) + ", ";
    items *= static_cast<size_t>(d);
  }
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << "\x93NUMPY" << '\x01' << '\x00' << static_cast<char>(header.size() & 0xff)
      << static_cast<char>(header.size() >> 8) << header << std::string(items * item_bytes, '\0');
}

// Refused at submit, not after calibration and tuning ran: .npy images
// without labels where labels are needed; a deadline already passed (the job
// was queued, then cancelled by the first worker); a limit that cannot apply.
TEST_F(ResolvePathTest, WhatWouldFailOnlyAfterTheJobRanIsRefusedAtSubmit) {
  const ReferenceResolver resolver = Resolver();
  WriteNpy(data_ / "datasets/blobs/images.npy", "|u1", {2, 3, 4, 4}, 1);
  WriteNpy(data_ / "datasets/blobs/labels.npy", "<i8", {2}, 8);
  auto npy = [](v1::DatasetRef* ref, bool labelled) {
    ref->set_path("datasets/blobs/images.npy");
    ref->set_format(v1::DATASET_FORMAT_NPY);
    if (labelled) ref->set_labels_path("datasets/blobs/labels.npy");
  };
  v1::QuantizeJobRequest request = OneRecordRequest();
  npy(request.mutable_evaluation()->mutable_dataset(), /*labelled=*/false);
  absl::Status status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("evaluation.dataset.labels_path (or .labels_blob_id): required"));
  npy(request.mutable_evaluation()->mutable_dataset(), /*labelled=*/true);
  EXPECT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();

  request = OneRecordRequest();
  npy(request.mutable_calibration()->mutable_dataset(), /*labelled=*/false);
  EXPECT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();
  request.mutable_calibration()->set_samples_per_class(10);
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("calibration.dataset.labels_path (or .labels_blob_id): required for .npy images with "
                        "calibration.samples_per_class"));

  request = OneRecordRequest();
  npy(request.mutable_accuracy_goal()->mutable_tuning(), /*labelled=*/false);
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("accuracy_goal.tuning.labels_path (or .labels_blob_id): required"));
  // Judged against FP32's predictions, an unlabelled set is what it is for.
  request.mutable_accuracy_goal()->set_against_fp32(true);
  EXPECT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();
  request.mutable_accuracy_goal()->set_against_fp32(false);
  npy(request.mutable_accuracy_goal()->mutable_tuning(), /*labelled=*/true);
  request.mutable_accuracy_goal()->set_int8_only(true);
  request.mutable_accuracy_goal()->set_max_fp32_layers(3);
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("accuracy_goal.max_fp32_layers: not with accuracy_goal.int8_only"));

  request = OneRecordRequest();
  request.mutable_qconfig()->set_strict_kernels(true);
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("qconfig.strict_kernels: only with qconfig.kernel_engine"));

  request = OneRecordRequest();
  request.mutable_deadline()->set_seconds(1);  // 1970
  status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("deadline: 1970-01-01T00:00:01+00:00 has passed"));
  request.mutable_deadline()->set_seconds(absl::ToUnixSeconds(absl::Now() + absl::Hours(1)));
  EXPECT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();
  // Seconds behind: a client whose clock is behind the server's.
  request.mutable_deadline()->set_seconds(absl::ToUnixSeconds(absl::Now() - absl::Seconds(10)));
  EXPECT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();

  // Labels beside CIFAR-10 records (which carry theirs) are ignored, as the
  // API says: not resolved (a missing one refused the job; an expired blob
  // failed it at run time) nor kept with the job.
  request = OneRecordRequest();
  request.mutable_calibration()->mutable_dataset()->set_labels_path("datasets/blobs/no-such-labels.npy");
  absl::StatusOr<worker::Job> ignored = JobFromRequest(request, resolver);
  ASSERT_TRUE(ignored.ok()) << ignored.status();
  EXPECT_TRUE(ignored->spec.calibration.labels_path.empty());

  // A .npy set's files are opened at submit as the job opens them: a bad
  // file failed the job only when it was read (an evaluation set after
  // calibration and tuning). Messages name the field and the files as the
  // client knows them, not by this server's paths.
  request = OneRecordRequest();
  npy(request.mutable_evaluation()->mutable_dataset(), /*labelled=*/true);
  WriteNpy(data_ / "datasets/blobs/labels.npy", "<i8", {3}, 8);
  status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("evaluation.dataset: labels data:datasets/blobs/labels.npy must be 1-D with 2 entries"));
  EXPECT_THAT(status.message(), ::testing::Not(HasSubstr(root_.string())));
  WriteNpy(data_ / "datasets/blobs/labels.npy", "<i8", {2}, 8);
  WriteNpy(data_ / "datasets/blobs/images.npy", "<f8", {2, 3, 4, 4}, 8);
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("evaluation.dataset: data:datasets/blobs/images.npy: image dtype <f8 is not supported"));
  WriteNpy(data_ / "datasets/blobs/images.npy", "|u1", {2, 3, 4, 4}, 1);
  request = OneRecordRequest();
  npy(request.mutable_calibration()->mutable_dataset(), /*labelled=*/true);
  request.mutable_calibration()->set_samples_per_class(3);  // two images, both of class 0
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("calibration.dataset: samples_per_class=3 but class 0 has only 2 samples"));

  // A mean or std without one value per channel failed the job once it
  // ran: refused at submit, for CIFAR-10's 3 channels and a .npy file's.
  request = OneRecordRequest();
  request.mutable_preprocessing()->add_mean(1);
  request.mutable_preprocessing()->add_mean(2);
  status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "preprocessing.mean: 2 values; CIFAR-10 images have 3 channels, one value each");
  request.mutable_preprocessing()->add_mean(3);
  EXPECT_TRUE(JobFromRequest(request, resolver).ok()) << JobFromRequest(request, resolver).status();
  request.mutable_preprocessing()->add_std(4);
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("preprocessing: mean and std must have one value per channel each"));
  request.mutable_preprocessing()->clear_mean();
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("preprocessing.std: 1 values; CIFAR-10 images have 3 channels"));
  request = OneRecordRequest();
  npy(request.mutable_calibration()->mutable_dataset(), /*labelled=*/false);
  request.mutable_preprocessing()->add_mean(1);
  request.mutable_preprocessing()->add_mean(2);
  status = JobFromRequest(request, resolver).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("preprocessing.mean has 2 values, the images have 3 channels"));

  // A CIFAR-10 file cut short: the message names the field that gave it.
  request = OneRecordRequest();
  std::ofstream(data_ / "datasets/blobs/calib.bin", std::ios::trunc) << std::string(10, '\0');
  EXPECT_THAT(JobFromRequest(request, resolver).status().message(),
              HasSubstr("calibration.dataset.path: the file is 10 bytes, not a whole number of 3073-byte"));
}

TEST(RequestFingerprintTest, ARetryWithAnotherDeadlineIsTheSameRequest) {
  // quantctl --deadline_seconds sends "now + N": a retry of the same
  // submission a second later was refused as another request.
  v1::QuantizeJobRequest first;
  first.mutable_model()->set_path("model.pt");
  first.set_idempotency_key("k1");
  first.mutable_deadline()->set_seconds(1800000000);
  v1::QuantizeJobRequest retry = first;
  retry.mutable_deadline()->set_seconds(1800000001);
  EXPECT_EQ(RequestFingerprint(first), RequestFingerprint(retry));
  v1::QuantizeJobRequest no_deadline = first;
  no_deadline.clear_deadline();
  EXPECT_EQ(RequestFingerprint(first), RequestFingerprint(no_deadline));

  v1::QuantizeJobRequest other_model = first;
  other_model.mutable_model()->set_path("other.pt");
  EXPECT_NE(RequestFingerprint(first), RequestFingerprint(other_model));
}

}  // namespace
}  // namespace quantd
