#include "worker/model_repository.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <torch/script.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "worker/clock.h"
#include "worker/engine/quantizer.h"
#include "worker/engine/testing/test_env.h"
#include "worker/evaluation.h"
#include "worker/input_locator.h"
#include "worker/local_artifact_store.h"
#include "worker/local_blob_store.h"
#include "worker/sqlite_job_store.h"
#include "worker/testing/forwarding_artifact_store.h"
#include "worker/testing/forwarding_job_store.h"

namespace quantd::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The real ResNet8, quantized once for the whole suite (a fraction of a
// second): what a succeeded job leaves in the stores.
struct Quantized {
  std::string bytes;
  engine::QuantizeReport report;
};

const Quantized& ResNet8Int8() {
  static const Quantized* quantized = [] {
    engine::QuantizeOptions options;
    options.model_path = engine::testing::ResNet8Path();
    options.calibration.path = engine::testing::CalibrationPath();
    options.calibration.limit = 100;  // one batch: enough for a servable model, quick under the sanitizers
    options.fusion.automatic = true;
    options.quality_samples = 0;
    auto model = engine::Quantize(options);
    EXPECT_TRUE(model.ok()) << model.status();
    auto* q = new Quantized;
    if (model.ok()) {
      auto bytes = (*model)->SerializeArtifact();
      EXPECT_TRUE(bytes.ok());
      if (bytes.ok()) q->bytes = *bytes;
      q->report = (*model)->report();
    }
    return q;
  }();
  return *quantized;
}

class ModelRepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(ResNet8Int8().bytes.empty());
    const std::string dir = engine::testing::MakeTempDir("model_repository");
    auto jobs = SqliteJobStore::Open(dir + "/jobs.db");
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    jobs_ = std::move(*jobs);
    auto artifacts = LocalArtifactStore::Open(dir + "/artifacts");
    ASSERT_TRUE(artifacts.ok()) << artifacts.status();
    artifacts_ = std::move(*artifacts);
  }

  // A job that succeeded with the ResNet8 artifact (or `quantized`, made from
  // `model_path`), published as `name`.
  void Publish(const std::string& id, const std::string& name,
               const std::string& model_path = engine::testing::ResNet8Path(),
               const Quantized& quantized = ResNet8Int8()) {
    Job job;
    job.id = id;
    job.create_time = clock_.Now();
    job.spec.model_name = name;
    job.spec.model_path = model_path;
    job.spec.calibration.path = engine::testing::CalibrationPath();
    job.request_fingerprint = id;
    ASSERT_TRUE(jobs_->Create(job, 100).ok());
    ASSERT_TRUE(jobs_->ClaimNext(clock_.Now(), "local", absl::Hours(1)).ok());
    auto stored = artifacts_->Put(id, quantized.bytes, "{}");
    ASSERT_TRUE(stored.ok()) << stored.status();
    JobResult result;
    result.artifact_sha256 = stored->sha256;
    result.artifact_id = ArtifactIdFor(stored->sha256);
    result.artifact_size_bytes = stored->size_bytes;
    result.report = quantized.report;
    ASSERT_TRUE(jobs_->Finish(id, 1, JobState::kSucceeded, result, clock_.Now()).ok());
  }

  std::unique_ptr<ModelRepository> Repository(int64_t cache_bytes = int64_t{1} << 30,
                                              int batch_size_copies = engine::kDefaultBatchSizeCopies) {
    return RepositoryOver(artifacts_.get(), cache_bytes, batch_size_copies);
  }
  // The same over another artifact store (one that fails or holds reads).
  std::unique_ptr<ModelRepository> RepositoryOver(ArtifactStore* artifacts, int64_t cache_bytes = int64_t{1} << 30,
                                                  int batch_size_copies = engine::kDefaultBatchSizeCopies) {
    ModelRepository::Options options;
    options.cache_bytes = cache_bytes;
    options.batch_size_copies = batch_size_copies;
    options.clock = &clock_;
    return std::make_unique<ModelRepository>(jobs_.get(), artifacts, options);
  }

  FakeClock clock_;
  std::unique_ptr<SqliteJobStore> jobs_;
  std::unique_ptr<LocalArtifactStore> artifacts_;
};

TEST_F(ModelRepositoryTest, LoadsTheNewestOrANamedVersionWarmAndItsFp32Source) {
  Publish("a", "resnet8");
  auto repository = Repository();
  auto model = repository->Load("resnet8", 0);
  ASSERT_TRUE(model.ok()) << model.status();
  const ServedModelInfo& info = (*model)->info();
  EXPECT_EQ(info.version, 1);
  EXPECT_EQ(info.job_id, "a");
  EXPECT_FALSE(info.fp32);
  EXPECT_THAT(info.input_shape, ElementsAre(3, 32, 32));
  EXPECT_THAT(info.output_shape, ElementsAre(10));  // found by the warm-up pass
  EXPECT_EQ(info.kernel_engine, ResNet8Int8().report.kernel_engine);
  EXPECT_EQ(info.labels.size(), 10u);
  // With room for its batch-size copies (an eighth of the budget), it counts
  // with them and the artifact's bytes kept to make them.
  // (On onednn: qnnpack keeps no copies.)
  EXPECT_EQ(repository->cached_bytes(), (info.kernel_engine == "onednn" ? 2 + engine::kDefaultBatchSizeCopies : 1) *
                                            static_cast<int64_t>(ResNet8Int8().bytes.size()));

  auto fp32 = repository->Load("resnet8.fp32", 1);
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_TRUE((*fp32)->info().fp32);
  EXPECT_EQ((*fp32)->info().kernel_engine, "fp32");
  EXPECT_EQ(repository->cached_models(), 2);
  // Both run a real image: the int8 and FP32 scores are close, not equal.
  std::vector<float> gray(3 * 32 * 32, 128.0f);
  auto int8_out = (*model)->Run(gray, 1);
  auto fp32_out = (*fp32)->Run(gray, 1);
  ASSERT_TRUE(int8_out.ok() && fp32_out.ok());
  ASSERT_EQ(int8_out->values.size(), 10u);
  EXPECT_NE(int8_out->values, fp32_out->values);

  // Loading again is the cached object.
  EXPECT_EQ(*repository->Load("resnet8", 1), *model);
  EXPECT_EQ(repository->FindLoaded("resnet8", 0), *model);
}

// The FP32 source loads in the server's own process: only the bytes its job
// quantized (a file replaced since could be anything, even a model LibTorch's
// loader crashes on).
TEST_F(ModelRepositoryTest, AnFp32SourceChangedSinceItsJobIsRefused) {
  const std::string copy = engine::testing::MakeTempDir("fp32_source") + "/resnet8.pt";
  std::filesystem::copy_file(engine::testing::ResNet8Path(), copy);
  Publish("a", "resnet8", copy);
  {
    std::ofstream(copy, std::ios::binary | std::ios::app) << "appended";
  }
  auto repository = Repository();
  const absl::Status changed = repository->Load("resnet8.fp32", 1).status();
  EXPECT_EQ(changed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(changed.message()), HasSubstr("changed since the job quantized it"));
  EXPECT_TRUE(repository->Load("resnet8", 1).ok());  // the int8 artifact is the store's own

  std::filesystem::copy_file(engine::testing::ResNet8Path(), copy, std::filesystem::copy_options::overwrite_existing);
  repository->ForgetResolutions();
  EXPECT_TRUE(repository->Load("resnet8.fp32", 1).ok());
}

// An uploaded FP32 source is named by its sha256: other bytes under that
// name are damage in the blob store (DATA_LOSS, as for a damaged artifact),
// not a newer file to publish a version from.
TEST_F(ModelRepositoryTest, AnUploadedFp32SourceDamagedInTheBlobStoreIsDataLoss) {
  const std::string dir = engine::testing::MakeTempDir("fp32_blob");
  auto blobs = LocalBlobStore::Open(dir + "/blobs", int64_t{1} << 30);
  ASSERT_TRUE(blobs.ok()) << blobs.status();
  std::ifstream in(engine::testing::ResNet8Path(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto upload = (*blobs)->BeginUpload("", static_cast<int64_t>(bytes.size()));
  ASSERT_TRUE(upload.ok()) << upload.status();
  ASSERT_TRUE((*upload)->Append(bytes).ok());
  auto stored = (*upload)->Commit();
  ASSERT_TRUE(stored.ok()) << stored.status();
  Publish("a", "resnet8", BlobReference(stored->sha256));
  InputLocator inputs(dir, blobs->get());
  ModelRepository::Options options;
  options.clock = &clock_;
  options.inputs = &inputs;
  EXPECT_TRUE(ModelRepository(jobs_.get(), artifacts_.get(), options).Load("resnet8.fp32", 1).ok());

  auto path = (*blobs)->PathOf(stored->sha256, "model");
  ASSERT_TRUE(path.ok()) << path.status();
  std::filesystem::resize_file(*path, bytes.size() - 1);
  const absl::Status damaged = ModelRepository(jobs_.get(), artifacts_.get(), options).Load("resnet8.fp32", 1).status();
  EXPECT_EQ(damaged.code(), absl::StatusCode::kDataLoss) << damaged;
  EXPECT_THAT(std::string(damaged.message()), HasSubstr("is corrupted in the blob store"));
}

// A model that sums its output to one number per call (not per sample)
// quantizes, but cannot be served by sample: an error, where taking the
// output's shape after the batch dimension read past a 0-D shape.
// Refused at load, not at every request: a model whose output is one number
// ([]) or one number per sample ([N]).
TEST_F(ModelRepositoryTest, AModelWithoutABatchedOutputIsRefusedAtLoad) {
  const struct {
    const char* name;
    const char* reduction;
    const char* shape;
  } cases[] = {{"summing", "torch.sum(y)", "[]"}, {"scoring", "torch.sum(y, dim=[1, 2, 3])", "[1]"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    torch::jit::Module m(c.name);
    m.register_parameter("w", at::ones({4, 3, 3, 3}) * 0.01, false);
    m.define(absl::StrCat(R"(
    def forward(self, x):
        y = torch.relu(torch.conv2d(x, self.w))
        return )", c.reduction, "\n"));
    const std::string path = engine::testing::MakeTempDir(c.name) + "/" + c.name + ".pt";
    m.save(path);
    engine::QuantizeOptions options;
    options.model_path = path;
    options.calibration.path = engine::testing::CalibrationPath();
    options.calibration.limit = 20;
    options.fusion.automatic = true;
    options.qconfig.preset = "qnnpack";
    options.quality_samples = 0;
    auto model = engine::Quantize(options);
    ASSERT_TRUE(model.ok()) << model.status();
    Quantized quantized;
    quantized.bytes = *(*model)->SerializeArtifact();
    quantized.report = (*model)->report();
    Publish(absl::StrCat(c.name, "-job"), c.name, path, quantized);
    const absl::Status refused = Repository()->Load(c.name, 1).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(refused.message()),
                HasSubstr(absl::StrCat("its output for a batch of one has shape ", c.shape, ";")));
  }
}

TEST_F(ModelRepositoryTest, UnknownNamesAndVersionsAreNotFoundAndBadNamesInvalid) {
  Publish("a", "resnet8");
  auto repository = Repository();
  EXPECT_EQ(repository->Load("nope", 0).status().code(), absl::StatusCode::kNotFound);
  const absl::Status missing = repository->Load("resnet8", 9).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.message()), HasSubstr("no version 9"));
  // Asked for by its FP32 source's name, the error names that.
  const absl::Status missing_fp32 = repository->Load("resnet8.fp32", 9).status();
  EXPECT_EQ(missing_fp32.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing_fp32.message()),
              HasSubstr("model \"resnet8.fp32\" (the FP32 source of a version of \"resnet8\"): "));
  EXPECT_THAT(std::string(missing_fp32.message()), HasSubstr("no version 9"));
  EXPECT_EQ(repository->Load("Bad Name", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(repository->FindLoaded("resnet8", 0), nullptr);  // nothing loaded yet
  EXPECT_EQ(repository->cached_models(), 0);
}

// What Load just found absent is known so without the store (a request for
// it is refused at once instead of queueing for a load thread), for
// resolve_ttl, or until a version is published or deleted here.
TEST_F(ModelRepositoryTest, WhatLoadFoundAbsentIsKnownForTheResolveTtl) {
  Publish("a", "resnet8");
  auto repository = Repository();
  EXPECT_TRUE(repository->KnownAbsent("nope", 0).ok());  // not asked yet
  const absl::Status missing = repository->Load("nope", 0).status();
  ASSERT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(repository->KnownAbsent("nope", 0), missing);
  EXPECT_EQ(repository->Load("resnet8.fp32", 9).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(repository->KnownAbsent("resnet8.fp32", 9).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(repository->KnownAbsent("resnet8", 9).ok());  // the int8 name was not asked
  EXPECT_TRUE(repository->KnownAbsent("resnet8", 0).ok());  // it exists
  clock_.Advance(absl::Seconds(2));
  EXPECT_TRUE(repository->KnownAbsent("nope", 0).ok()) << "past resolve_ttl the store is asked again";
  EXPECT_FALSE(repository->Load("nope", 0).ok());
  repository->ForgetResolutions();  // a version was published here
  EXPECT_TRUE(repository->KnownAbsent("nope", 0).ok());
}

using testing::ForwardingArtifactStore;

// An artifact store whose reads wait for Release(), then fail as a corrupt
// artifact would; it counts them.
class FailingArtifactStore final : public ForwardingArtifactStore {
 public:
  using ForwardingArtifactStore::ForwardingArtifactStore;
  absl::StatusOr<std::string> Read(const std::string&) override {
    reads_.fetch_add(1);
    release_.WaitForNotification();
    return absl::DataLossError("artifact: sha256 mismatch");
  }
  absl::StatusOr<std::string> ReadRange(const std::string&, uint64_t, uint64_t) override {
    return absl::DataLossError("artifact: sha256 mismatch");
  }

  void Release() { release_.Notify(); }
  int reads() const { return reads_.load(); }

 private:
  absl::Notification release_;
  std::atomic<int> reads_{0};
};

TEST_F(ModelRepositoryTest, CallersWaitingForAFailedLoadShareItsFailure) {
  Publish("a", "resnet8");
  FailingArtifactStore failing(artifacts_.get());
  auto repository = RepositoryOver(&failing);
  constexpr int kCallers = 4;
  std::vector<absl::Status> outcomes(kCallers);
  std::vector<std::thread> callers;
  callers.emplace_back([&] { outcomes[0] = repository->Load("resnet8", 0).status(); });
  while (failing.reads() == 0) std::this_thread::yield();  // the first load is under way
  for (int i = 1; i < kCallers; ++i) {
    callers.emplace_back([&, i] { outcomes[i] = repository->Load("resnet8", 0).status(); });
  }
  while (repository->waiting_for_load() < kCallers - 1) std::this_thread::yield();
  failing.Release();
  for (std::thread& t : callers) t.join();
  for (const absl::Status& outcome : outcomes) EXPECT_EQ(outcome.code(), absl::StatusCode::kDataLoss) << outcome;
  EXPECT_EQ(failing.reads(), 1);
  // A caller that comes later tries again.
  EXPECT_EQ(repository->Load("resnet8", 0).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(failing.reads(), 2);
}

// Throws std::bad_alloc on its first read, as reading a large artifact may.
class ThrowingArtifactStore final : public ForwardingArtifactStore {
 public:
  using ForwardingArtifactStore::ForwardingArtifactStore;
  absl::StatusOr<std::string> Read(const std::string& sha256) override {
    if (!thrown_) {
      thrown_ = true;
      throw std::bad_alloc();
    }
    return real_->Read(sha256);
  }

 private:
  bool thrown_ = false;
};

// A load that threw once left its "loading" mark behind: every later load
// of that version waited for it forever.
TEST_F(ModelRepositoryTest, ALoadThatThrowsFailsThatLoadOnly) {
  Publish("a", "resnet8");
  ThrowingArtifactStore throwing(artifacts_.get());
  auto repository = RepositoryOver(&throwing);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> first = repository->Load("resnet8", 0);
  EXPECT_EQ(first.status().code(), absl::StatusCode::kResourceExhausted) << first.status();
  EXPECT_THAT(first.status().message(), HasSubstr("model resnet8 version 1"));
  absl::StatusOr<std::shared_ptr<const LoadedModel>> again = repository->Load("resnet8", 0);
  EXPECT_TRUE(again.ok()) << again.status();
}

// The version exists, its artifact does not: not NOT_FOUND (which says there
// is no such version, while ListModels shows it).
TEST_F(ModelRepositoryTest, APublishedVersionWhoseArtifactIsGoneIsAFailedPrecondition) {
  Publish("a", "resnet8");
  auto job = jobs_->Get("a");
  ASSERT_TRUE(job.ok());
  ASSERT_TRUE(artifacts_->Remove(job->result->artifact_sha256).ok());
  auto repository = Repository();
  int64_t resolved = -1;
  absl::Status status = repository->Load("resnet8", 0, nullptr, &resolved).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("is gone from the artifact store"));
  // Said, so that the server counts the failure against version 1 (it once
  // counted it under model="", where a per-model alert never looks).
  EXPECT_EQ(resolved, 1);
  resolved = -1;
  EXPECT_EQ(repository->Load("resnet9", 0, nullptr, &resolved).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(resolved, -1);  // no such version: nothing to count it against
}

// A deleted version's model kept its memory and its share of the budget
// until evicted, which may be never.
TEST_F(ModelRepositoryTest, ADeletedVersionLeavesTheCache) {
  Publish("a", "resnet8");
  Publish("b", "other");
  auto repository = Repository();
  ASSERT_TRUE(repository->Load("resnet8", 0).ok());
  ASSERT_TRUE(repository->Load("resnet8.fp32", 0).ok());
  ASSERT_TRUE(repository->Load("other", 0).ok());
  const int64_t other_bytes = [&] {
    auto other = repository->Load("other", 0);
    return other.ok() ? (*other)->info().cost_bytes : -1;
  }();
  ASSERT_EQ(repository->cached_models(), 3);
  ASSERT_TRUE(jobs_->DeleteModelVersion("resnet8", 1).ok());
  repository->ForgetResolutions();
  repository->DropUnpublished();
  EXPECT_EQ(repository->cached_models(), 1);
  EXPECT_EQ(repository->cached_bytes(), other_bytes);
  EXPECT_TRUE(repository->IsLoaded("other", 1, false));
  EXPECT_EQ(repository->Load("resnet8", 1).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ModelRepositoryTest, BatchSizeCopiesCountAgainstTheBudgetUpToAnEighthOfIt) {
  Publish("a", "resnet8");
  const auto size = static_cast<int64_t>(ResNet8Int8().bytes.size());
  // The artifact, its copies, and its bytes kept to make them.
  auto roomy = Repository(8 * 3 * size + 7);  // an eighth: room for 3 copies
  auto loaded = roomy->Load("resnet8", 0);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const bool onednn = (*loaded)->info().kernel_engine == "onednn";  // qnnpack keeps no copies
  EXPECT_EQ(roomy->cached_bytes(), (onednn ? 5 : 1) * size);
  auto capped = Repository(int64_t{1} << 30, /*batch_size_copies=*/1);
  ASSERT_TRUE(capped->Load("resnet8", 0).ok());
  EXPECT_EQ(capped->cached_bytes(), (onednn ? 3 : 1) * size);
  auto off = Repository(int64_t{1} << 30, /*batch_size_copies=*/0);
  ASSERT_TRUE(off->Load("resnet8", 0).ok());
  EXPECT_EQ(off->cached_bytes(), size);
  // FP32 sources get no copies.
  ASSERT_TRUE(off->Load("resnet8.fp32", 0).ok());
  EXPECT_EQ(off->cached_bytes(), size + static_cast<int64_t>(std::ifstream(engine::testing::ResNet8Path(),
                                                                           std::ios::binary | std::ios::ate)
                                                                 .tellg()));
}

TEST_F(ModelRepositoryTest, TheCacheKeepsItsByteBudgetLeastRecentlyUsedOut) {
  Publish("a", "first");
  Publish("b", "second");
  const auto size = static_cast<int64_t>(ResNet8Int8().bytes.size());
  auto repository = Repository(2 * size);  // room for two artifacts (an eighth of it: for no copy)
  ASSERT_TRUE(repository->Load("first", 0).ok());
  ASSERT_TRUE(repository->Load("second", 0).ok());
  ASSERT_TRUE(repository->Load("first", 0).ok());  // now the most recently used
  EXPECT_TRUE(repository->IsLoaded("first", 1, false));
  EXPECT_TRUE(repository->IsLoaded("second", 1, false));
  Publish("c", "third");
  ASSERT_TRUE(repository->Load("third", 0).ok());
  EXPECT_EQ(repository->cached_models(), 2);
  EXPECT_EQ(repository->cached_bytes(), 2 * size);
  EXPECT_TRUE(repository->IsLoaded("first", 1, false));
  EXPECT_FALSE(repository->IsLoaded("second", 1, false));  // least recently used: out
  EXPECT_TRUE(repository->IsLoaded("third", 1, false));
  // An evicted version loads again on demand.
  ASSERT_TRUE(repository->Load("second", 0).ok());
  EXPECT_FALSE(repository->IsLoaded("first", 1, false));
}

// Counts artifact reads (each a model load).
class CountingArtifactStore : public ForwardingArtifactStore {
 public:
  using ForwardingArtifactStore::ForwardingArtifactStore;
  absl::StatusOr<std::string> Read(const std::string& sha256) override {
    reads.fetch_add(1);
    return real_->Read(sha256);
  }
  std::atomic<int> reads{0};
};

// An evaluation holds its int8 model for hours; the budget may evict it
// meanwhile (its FP32 twin's load did). The next request for that version
// loaded a second copy beside the held one, outside the budget, and split
// its requests over two batcher queues. The held model goes back in the
// cache instead.
TEST_F(ModelRepositoryTest, AnEvictedModelStillInUseGoesBackInTheCacheNotLoadedTwice) {
  Publish("a", "first");
  Publish("b", "second");
  const auto size = static_cast<int64_t>(ResNet8Int8().bytes.size());
  CountingArtifactStore counting(artifacts_.get());
  auto repository = RepositoryOver(&counting, size);  // room for one
  absl::StatusOr<std::shared_ptr<const LoadedModel>> held = repository->Load("first", 0);
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_TRUE(repository->Load("second", 0).ok());  // evicts "first", still held
  EXPECT_FALSE(repository->IsLoaded("first", 1, false));
  const int reads = counting.reads.load();
  absl::StatusOr<std::shared_ptr<const LoadedModel>> again = repository->Load("first", 0);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->get(), held->get());
  EXPECT_EQ(counting.reads.load(), reads);  // not read again
  EXPECT_TRUE(repository->IsLoaded("first", 1, false));
  EXPECT_EQ(repository->cached_models(), 1);
  EXPECT_EQ(repository->cached_bytes(), size);
  // Once nobody holds it, an evicted model is loaded afresh.
  ASSERT_TRUE(repository->Load("second", 0).ok());
  held = absl::StatusOr<std::shared_ptr<const LoadedModel>>();
  again = absl::StatusOr<std::shared_ptr<const LoadedModel>>();
  ASSERT_TRUE(repository->Load("first", 0).ok());
  EXPECT_GT(counting.reads.load(), reads);
}

TEST_F(ModelRepositoryTest, ANewVersionIsSeenAfterTheResolutionTtlOrAtOnceWhenForgotten) {
  Publish("a", "resnet8");
  auto repository = Repository();
  ASSERT_EQ((*repository->Load("resnet8", 0))->info().version, 1);
  Publish("b", "resnet8");  // as another replica would: this repository is not told
  ASSERT_NE(repository->FindLoaded("resnet8", 0), nullptr);
  EXPECT_EQ(repository->FindLoaded("resnet8", 0)->info().version, 1);  // resolution still fresh
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(repository->FindLoaded("resnet8", 0), nullptr);  // stale: must ask the store
  EXPECT_EQ((*repository->Load("resnet8", 0))->info().version, 2);

  Publish("c", "resnet8");
  EXPECT_EQ(repository->FindLoaded("resnet8", 0)->info().version, 2);
  repository->ForgetResolutions();  // published through this process
  EXPECT_EQ(repository->FindLoaded("resnet8", 0), nullptr);
  EXPECT_EQ((*repository->Load("resnet8", 0))->info().version, 3);
}

// A model in steady use stays found without the store (its requests never
// go to the load threads, where another model's long load could hold them,
// just to resolve again), while what another replica publishes or deletes
// is still seen within the TTL. One not asked for lately ages out as before.
TEST_F(ModelRepositoryTest, ResolutionsInUseAreRefreshedBeforeTheyExpire) {
  Publish("a", "resnet8");
  Publish("x", "other");
  auto repository = Repository();
  ASSERT_EQ((*repository->Load("resnet8", 0))->info().version, 1);
  ASSERT_EQ((*repository->Load("resnet8", 1))->info().version, 1);
  ASSERT_TRUE(repository->Load("other", 0).ok());

  clock_.Advance(absl::Milliseconds(300));
  Publish("b", "resnet8");  // by another replica: this repository is not told
  repository->RefreshResolutions();  // younger than half the TTL: not read again
  ASSERT_NE(repository->FindLoaded("resnet8", 0), nullptr);
  EXPECT_EQ(repository->FindLoaded("resnet8", 0)->info().version, 1);

  clock_.Advance(absl::Milliseconds(300));  // 0.6 s
  ASSERT_NE(repository->FindLoaded("resnet8", 1), nullptr);
  repository->RefreshResolutions();
  // The newest moved on to version 2, not loaded yet: no model (a load).
  EXPECT_EQ(repository->FindLoaded("resnet8", 0), nullptr);
  EXPECT_EQ((*repository->Load("resnet8", 0))->info().version, 2);

  clock_.Advance(absl::Milliseconds(600));  // 1.2 s: "other" unused for longer than the TTL
  ASSERT_NE(repository->FindLoaded("resnet8", 1), nullptr);
  repository->RefreshResolutions();
  clock_.Advance(absl::Milliseconds(500));  // 1.7 s
  EXPECT_EQ(repository->FindLoaded("other", 0), nullptr);  // aged out: its next request asks the store
  // Resolved at 1.2 s; without the refreshes it would have expired at 1 s.
  ASSERT_NE(repository->FindLoaded("resnet8", 1), nullptr);
  ASSERT_NE(repository->FindLoaded("resnet8", 0), nullptr);

  // Deleted by another replica: the resolution goes at the next refresh.
  ASSERT_TRUE(jobs_->DeleteModelVersion("resnet8", 1).ok());
  ASSERT_NE(repository->FindLoaded("resnet8", 1), nullptr);  // still fresh
  repository->RefreshResolutions();
  EXPECT_EQ(repository->FindLoaded("resnet8", 1), nullptr);
  EXPECT_EQ(repository->Load("resnet8", 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(repository->FindLoaded("resnet8", 0)->info().version, 2);
}

// Reads artifacts from the real store once released: a model load that
// takes as long as the test wants.
class HeldArtifactStore : public ForwardingArtifactStore {
 public:
  using ForwardingArtifactStore::ForwardingArtifactStore;
  absl::StatusOr<std::string> Read(const std::string& sha256) override {
    if (!reading.HasBeenNotified()) reading.Notify();  // the first read; loads after it pass
    if (!release.WaitForNotificationWithTimeout(absl::Seconds(30))) return absl::DeadlineExceededError("held");
    return real_->Read(sha256);
  }

  absl::Notification reading, release;
};

// resnet8 version 1 loaded by one caller (its read held) while a second
// waits for that load; `meanwhile` runs with both in flight, then the read
// is released. The callers' outcomes in `first` and `second`.
void LoadWithAWaiter(ModelRepository& repository, HeldArtifactStore& held,
                     absl::StatusOr<std::shared_ptr<const LoadedModel>>* first,
                     absl::StatusOr<std::shared_ptr<const LoadedModel>>* second,
                     const std::function<void()>& meanwhile) {
  std::thread loading([&] { *first = repository.Load("resnet8", 1); });
  std::thread waiting;
  if (held.reading.WaitForNotificationWithTimeout(absl::Seconds(20))) {
    waiting = std::thread([&] { *second = repository.Load("resnet8", 1); });
    while (repository.waiting_for_load() == 0) absl::SleepFor(absl::Milliseconds(1));  // until it waits
    meanwhile();
  } else {
    ADD_FAILURE() << "the first load never read its artifact";
  }
  held.release.Notify();
  loading.join();
  if (waiting.joinable()) waiting.join();
}

// A load under way when its version was deleted put the model in the cache
// after DropUnpublished had looked, where it kept its budget until evicted.
TEST_F(ModelRepositoryTest, AVersionDeletedWhileItLoadsIsNotCached) {
  Publish("a", "resnet8");
  HeldArtifactStore held(artifacts_.get());
  auto repository = RepositoryOver(&held);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> loaded;
  std::thread loading([&] { loaded = repository->Load("resnet8", 1); });
  ASSERT_TRUE(held.reading.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(jobs_->DeleteModelVersion("resnet8", 1).ok());
  repository->ForgetResolutions();
  repository->DropUnpublished();
  held.release.Notify();
  loading.join();
  // The request that came before the delete is served; nothing stays.
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(repository->cached_models(), 0);
  EXPECT_EQ(repository->cached_bytes(), 0);
  EXPECT_EQ(repository->Load("resnet8", 1).status().code(), absl::StatusCode::kNotFound);
}

// A caller that waited for another's load, then loads itself (the first
// load was not cached: its version was deleted meanwhile), loads under the
// resolution it made before the delete: served to it, not cached either.
TEST_F(ModelRepositoryTest, AVersionDeletedWhileACallerWaitsForAnothersLoadIsNotCached) {
  Publish("a", "resnet8");
  HeldArtifactStore held(artifacts_.get());
  auto repository = RepositoryOver(&held);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> first, second;
  LoadWithAWaiter(*repository, held, &first, &second, [&] {
    ASSERT_TRUE(jobs_->DeleteModelVersion("resnet8", 1).ok());
    repository->ForgetResolutions();
    repository->DropUnpublished();
  });
  EXPECT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(repository->cached_models(), 0);
  EXPECT_EQ(repository->cached_bytes(), 0);
}

// Another job's publish (any model's) forgets every resolution. One that
// came during a cold load left the load uncached, and each caller waiting
// for it then loaded its own copy, one after another, none cached. The
// version still published as resolved is cached, and its waiters share it.
TEST_F(ModelRepositoryTest, AnotherPublishDuringALoadLeavesItCachedAndShared) {
  Publish("a", "resnet8");
  HeldArtifactStore held(artifacts_.get());
  auto repository = RepositoryOver(&held);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> first, second;
  LoadWithAWaiter(*repository, held, &first, &second, [&] {
    Publish("b", "other");
    repository->ForgetResolutions();  // as the server's publish watcher does
  });
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->get(), second->get());  // one load
  EXPECT_EQ(repository->cached_models(), 1);
  ASSERT_TRUE(repository->Load("resnet8", 1).ok());
  EXPECT_EQ(repository->Load("resnet8", 1)->get(), first->get());
}

// A caller waiting for another's load stops when it has gone (its client
// cancelled, its deadline passed); the load goes on for the first caller.
TEST_F(ModelRepositoryTest, ACallerThatLeftStopsWaitingForAnothersLoad) {
  Publish("a", "resnet8");
  HeldArtifactStore held(artifacts_.get());
  auto repository = RepositoryOver(&held);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> first;
  std::thread loading([&] { first = repository->Load("resnet8", 1); });
  ASSERT_TRUE(held.reading.WaitForNotificationWithTimeout(absl::Seconds(20)));
  std::atomic<bool> left{false};
  absl::StatusOr<std::shared_ptr<const LoadedModel>> second;
  std::thread waiting([&] {
    second = repository->Load("resnet8", 1, [&] {
      return left.load() ? absl::CancelledError("the caller went away") : absl::OkStatus();
    });
  });
  while (repository->waiting_for_load() == 0) absl::SleepFor(absl::Milliseconds(1));  // until it waits
  left = true;
  waiting.join();  // while the first load is still held
  EXPECT_EQ(second.status(), absl::CancelledError("the caller went away"));
  EXPECT_EQ(repository->waiting_for_load(), 0);
  held.release.Notify();
  loading.join();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(repository->cached_models(), 1);
}

// resnet8's int8 column alone on the first 100 images of `dataset`.
EvaluationSpec Int8OnFirst100(const std::string& dataset) {
  EvaluationSpec spec;
  spec.model_name = "resnet8";
  spec.dataset.path = dataset;
  spec.max_samples = 100;
  spec.skip_fp32 = true;
  return spec;
}

// The evaluation's record once it is no longer RUNNING (or after a minute).
absl::StatusOr<Evaluation> WaitUntilFinished(Evaluator& evaluator, const std::string& id) {
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  absl::StatusOr<Evaluation> record = evaluator.Get(id);
  while (record.ok() && record->state == EvaluationState::kRunning && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));  // poll interval
    record = evaluator.Get(id);
  }
  return record;
}

// The evaluator reads its models through the repository: its staleness rule
// is tested here, with a real published model.
TEST_F(ModelRepositoryTest, AnEvaluationThisServerRunsIsNeverStaleOneLeftByAStoppedServerIs) {
  Publish("a", "resnet8");
  HeldArtifactStore held(artifacts_.get());
  auto repository = RepositoryOver(&held);
  Evaluator::Options options;
  options.stale_after = absl::Minutes(2);
  absl::Mutex finished_mu;
  std::vector<EvaluationState> finished;  // what on_finished reported (metrics)
  options.on_finished = [&](EvaluationState state) {
    absl::MutexLock lock(&finished_mu);
    finished.push_back(state);
  };
  Evaluator evaluator(jobs_.get(), repository.get(), &clock_, options);

  auto started = evaluator.Start(Int8OnFirst100(engine::testing::CalibrationPath()));
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_TRUE(held.reading.WaitForNotificationWithTimeout(absl::Seconds(20)));
  // The model takes 10 minutes to load: still RUNNING, not taken for the
  // record of a server that stopped.
  clock_.Advance(absl::Minutes(10));
  auto loading = evaluator.Get(started->id);
  ASSERT_TRUE(loading.ok()) << loading.status();
  EXPECT_EQ(loading->state, EvaluationState::kRunning);

  // Another server on the same store sees the record's last write: stale.
  auto other_repository = Repository();
  Evaluator other(jobs_.get(), other_repository.get(), &clock_, options);
  auto elsewhere = other.Get(started->id);
  ASSERT_TRUE(elsewhere.ok()) << elsewhere.status();
  EXPECT_EQ(elsewhere->state, EvaluationState::kFailed);
  EXPECT_EQ(elsewhere->error_code, absl::StatusCode::kAborted);
  EXPECT_THAT(elsewhere->error_message, HasSubstr("no progress since "));
  // The same record at every read (it named the time since, which grew).
  clock_.Advance(absl::Seconds(7));
  auto later = other.Get(started->id);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_EQ(later->error_message, elsewhere->error_message);

  held.release.Notify();
  absl::StatusOr<Evaluation> done = WaitUntilFinished(evaluator, started->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, EvaluationState::kSucceeded) << done->error_message;
  EXPECT_EQ(done->samples_done, 100);
  // Finished records are never stale, wherever they are read.
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(other.Get(started->id)->state, EvaluationState::kSucceeded);
  evaluator.Shutdown();  // joins the evaluation's thread, past its on_finished
  absl::MutexLock lock(&finished_mu);
  EXPECT_THAT(finished, ::testing::ElementsAre(EvaluationState::kSucceeded));
}

// After a crash the restarted server (the same runner on the same store)
// answered its own dead evaluation RUNNING for two more minutes, and
// `quantctl eval --id` waited that long: it is FAILED at once now, for every
// server on the store. Another runner's record still waits for staleness.
TEST_F(ModelRepositoryTest, AnEvaluationLeftRunningByThisServersLastProcessFailsAtOnce) {
  Publish("a", "resnet8");
  HeldArtifactStore held(artifacts_.get());
  auto repository = RepositoryOver(&held);
  Evaluator::Options options;
  options.stale_after = absl::Minutes(2);
  options.runner = "host:/data";
  auto before_crash = std::make_unique<Evaluator>(jobs_.get(), repository.get(), &clock_, options);
  auto started = before_crash->Start(Int8OnFirst100(engine::testing::CalibrationPath()));
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_TRUE(held.reading.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(before_crash->Get(started->id)->state, EvaluationState::kRunning);

  Evaluator::Options other_options = options;
  other_options.runner = "other-host:/data";
  auto other_repository = Repository();
  Evaluator other(jobs_.get(), other_repository.get(), &clock_, other_options);
  EXPECT_EQ(other.Get(started->id)->state, EvaluationState::kRunning);  // not stale yet

  // The same runner in a new process (the clock has not moved).
  auto restarted_repository = Repository();
  Evaluator restarted(jobs_.get(), restarted_repository.get(), &clock_, options);
  absl::StatusOr<Evaluation> after = restarted.Get(started->id);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->state, EvaluationState::kFailed);
  EXPECT_EQ(after->error_code, absl::StatusCode::kAborted);
  EXPECT_THAT(after->error_message, HasSubstr("the server running it restarted after 0 of 100 samples"));
  // Written: the other server reads it FAILED too.
  EXPECT_EQ(DecodeEvaluation(*jobs_->GetEvaluation(started->id))->state, EvaluationState::kFailed);
  EXPECT_EQ(other.Get(started->id)->state, EvaluationState::kFailed);

  held.release.Notify();
  before_crash.reset();  // joins its thread
}

// Unpublishing a version deletes its evaluations: one running then kept
// running and wrote its record back, which then stayed with no version.
TEST_F(ModelRepositoryTest, AnEvaluationWhoseVersionIsDeletedWhileItRunsLeavesNoRecord) {
  Publish("a", "resnet8");
  HeldArtifactStore held(artifacts_.get());
  auto repository = RepositoryOver(&held);
  Evaluator evaluator(jobs_.get(), repository.get(), &clock_, Evaluator::Options());
  auto started = evaluator.Start(Int8OnFirst100(engine::testing::CalibrationPath()));
  ASSERT_TRUE(started.ok()) << started.status();
  ASSERT_TRUE(held.reading.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(jobs_->DeleteModelVersion("resnet8", 1).ok());
  held.release.Notify();
  evaluator.Shutdown();  // joins it, however far it got
  const absl::Status gone = evaluator.Get(started->id).status();
  EXPECT_EQ(gone.code(), absl::StatusCode::kNotFound) << gone;
  EXPECT_THAT(std::string(gone.message()), HasSubstr("an evaluation goes with its model version"));
  EXPECT_EQ(jobs_->GetEvaluation(started->id).status().code(), absl::StatusCode::kNotFound);
  // The store refuses a record for a version that is not published.
  JobStore::EvaluationIndex index;
  index.model_name = "resnet8";
  index.model_version = 1;
  const absl::Status put = jobs_->PutEvaluation("eval-x", "{}", index);
  EXPECT_EQ(put.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(put.message()), HasSubstr("model version resnet8:1 was deleted"));
}

// A store that refuses finished evaluation records while `full` (a full
// disk); progress records pass.
class FullForFinishedEvaluations : public testing::ForwardingJobStore {
 public:
  using ForwardingJobStore::ForwardingJobStore;
  absl::Status PutEvaluation(const std::string& id, const std::string& record, const EvaluationIndex& index) override {
    absl::StatusOr<Evaluation> decoded = DecodeEvaluation(record);
    if (full.load() && decoded.ok() && decoded->state != EvaluationState::kRunning) {
      return absl::ResourceExhaustedError("sqlite step: database or disk is full");
    }
    return real_->PutEvaluation(id, record, index);
  }
  std::atomic<bool> full{true};
};

// The final record the store would not take was lost: its report gone, and
// the RUNNING record left behind read as a stopped server's (FAILED) two
// minutes later. The evaluator answers it from memory and writes it again
// until the store takes it.
TEST_F(ModelRepositoryTest, AnEvaluationWhoseFinalRecordTheStoreRefusesIsStillAnswered) {
  Publish("a", "resnet8");
  auto repository = Repository();
  FullForFinishedEvaluations store(jobs_.get());
  Evaluator::Options options;
  options.stale_after = absl::Minutes(2);
  Evaluator evaluator(&store, repository.get(), &clock_, options);
  auto started = evaluator.Start(Int8OnFirst100(engine::testing::CalibrationPath()));
  ASSERT_TRUE(started.ok()) << started.status();
  absl::StatusOr<Evaluation> done = WaitUntilFinished(evaluator, started->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, EvaluationState::kSucceeded) << done->error_message;
  EXPECT_EQ(done->samples_done, 100);
  // Timed on a steady clock, not the records' clock (here a fake one that
  // does not move; a wall clock stepped back gave negative seconds).
  ASSERT_TRUE(done->report.has_value());
  EXPECT_GT(done->report->int8.seconds, 0);
  EXPECT_EQ(DecodeEvaluation(*jobs_->GetEvaluation(started->id))->state, EvaluationState::kRunning);
  clock_.Advance(absl::Minutes(10));
  EXPECT_EQ(evaluator.Get(started->id)->state, EvaluationState::kSucceeded);
  store.full = false;  // room again: the next Get writes it
  EXPECT_EQ(evaluator.Get(started->id)->state, EvaluationState::kSucceeded);
  EXPECT_EQ(DecodeEvaluation(*jobs_->GetEvaluation(started->id))->state, EvaluationState::kSucceeded);
}

// Held in memory for want of room, an evaluation whose version is then
// deleted goes with it: it was written again on every GetEvaluation.
TEST_F(ModelRepositoryTest, AnEvaluationHeldInMemoryGoesWithItsDeletedVersion) {
  Publish("a", "resnet8");
  auto repository = Repository();
  FullForFinishedEvaluations store(jobs_.get());
  Evaluator evaluator(&store, repository.get(), &clock_, Evaluator::Options());
  auto started = evaluator.Start(Int8OnFirst100(engine::testing::CalibrationPath()));
  ASSERT_TRUE(started.ok()) << started.status();
  absl::StatusOr<Evaluation> done = WaitUntilFinished(evaluator, started->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, EvaluationState::kSucceeded) << done->error_message;
  ASSERT_TRUE(jobs_->DeleteModelVersion("resnet8", 1).ok());
  store.full = false;
  const absl::Status gone = evaluator.Get(started->id).status();
  EXPECT_EQ(gone.code(), absl::StatusCode::kNotFound) << gone;
  EXPECT_EQ(evaluator.Get(started->id).status().code(), absl::StatusCode::kNotFound);  // not kept either
  EXPECT_EQ(jobs_->GetEvaluation(started->id).status().code(), absl::StatusCode::kNotFound);
}

// Its dataset is opened when the evaluation starts: the file (an uploaded
// blob, say) may be deleted afterwards, the evaluation reads what it opened.
TEST_F(ModelRepositoryTest, AnEvaluationReadsTheDatasetItOpenedAtStart) {
  Publish("a", "resnet8");
  HeldArtifactStore held(artifacts_.get());
  auto repository = RepositoryOver(&held);
  Evaluator evaluator(jobs_.get(), repository.get(), &clock_, Evaluator::Options());
  const std::string copy = engine::testing::MakeTempDir("evaluation_dataset") + "/calib.bin";
  std::filesystem::copy_file(engine::testing::CalibrationPath(), copy,
                             std::filesystem::copy_options::overwrite_existing);
  auto started = evaluator.Start(Int8OnFirst100(copy));
  ASSERT_TRUE(started.ok()) << started.status();
  // Held in loading the model, before any image is read: the file goes.
  ASSERT_TRUE(held.reading.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(std::filesystem::remove(copy));
  held.release.Notify();
  absl::StatusOr<Evaluation> done = WaitUntilFinished(evaluator, started->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state, EvaluationState::kSucceeded) << done->error_message;
  EXPECT_EQ(done->samples_done, 100);
}

TEST_F(ModelRepositoryTest, AnEvaluationBatchOverTheByteLimitIsRefusedNamingTheField) {
  Publish("a", "resnet8");
  auto repository = Repository();
  Evaluator::Options options;
  options.max_batch_bytes = 1 << 20;  // 85 CIFAR images as float32
  Evaluator evaluator(jobs_.get(), repository.get(), &clock_, options);
  EvaluationSpec spec;
  spec.model_name = "resnet8";
  spec.dataset.path = engine::testing::CalibrationPath();
  spec.batch_size = 100;
  const absl::Status refused = evaluator.Start(spec).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("batch_size: 100 images of 3x32x32 float32 take 1228800 bytes"));
  spec.batch_size = 80;
  spec.max_samples = 80;
  spec.skip_fp32 = true;
  EXPECT_TRUE(evaluator.Start(spec).ok());
}

}  // namespace
}  // namespace quantd::worker
