// SqliteJobStore, BlobStore, LocalArtifactStore and JobEventHub.

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <atomic>
#include <thread>
#include <tuple>
#include <vector>

#include <gmock/gmock.h>
#include <sqlite3.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "worker/artifact_sweep.h"
#include "worker/blob_collector.h"
#include "worker/local_blob_store.h"
#include "worker/data_quota.h"
#include "worker/data_dir_lock.h"
#include "worker/engine/base/sha256.h"
#include "worker/job_events.h"
#include "worker/local_artifact_store.h"
#include "worker/published_artifacts_check.h"
#include "worker/sqlite_job_store.h"

namespace quantd::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// The directories TempDir made for the running test, removed when it ends
// (they were left in /tmp, hundreds a run).
std::vector<fs::path>& DirsOfThisTest() {
  static auto* dirs = new std::vector<fs::path>();
  return *dirs;
}

class RemoveTempDirsAfterEachTest : public ::testing::EmptyTestEventListener {
  void OnTestEnd(const ::testing::TestInfo&) override {
    for (const fs::path& dir : DirsOfThisTest()) {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
    DirsOfThisTest().clear();
  }
};

const bool kTempDirsRemoved = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new RemoveTempDirsAfterEachTest());
  return true;
}();

std::string TempDir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() /
                 (name + "_" + std::to_string(::getpid()) + "_" +
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  DirsOfThisTest().push_back(dir);
  return dir.string();
}

Job NewJob(const std::string& id, int64_t seconds, const std::string& key = "") {
  Job job;
  job.id = id;
  job.create_time = absl::FromUnixSeconds(seconds);
  job.spec.model_path = "/m.pt";
  job.spec.calibration.path = "/c.bin";
  job.request_echo = std::string("\x01\x00\x02", 3);
  job.idempotency_key = key;
  job.request_fingerprint = "fp-" + id;
  return job;
}

// Job `id` published as the next version of `name` (a job that succeeded).
void Publish(JobStore& store, const std::string& id, const std::string& name) {
  Job job = NewJob(id, 1);
  job.spec.model_name = name;
  ASSERT_TRUE(store.Create(job, 10).ok());
  ASSERT_TRUE(store.ClaimNext(absl::FromUnixSeconds(5), "local", absl::Hours(1)).ok());
  ASSERT_TRUE(store.Finish(id, 1, JobState::kSucceeded, JobResult(), absl::FromUnixSeconds(5)).ok());
}

// Published versions whose artifact file is gone (a volume not mounted,
// files deleted by hand) are found at start-up, by artifact.
TEST(PublishedArtifactsCheckTest, NamesEachMissingArtifactWithTheVersionsOnIt) {
  const std::string dir = TempDir("published_check");
  auto jobs = SqliteJobStore::Open(dir + "/jobs.db");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  auto artifacts = LocalArtifactStore::Open(dir + "/artifacts");
  ASSERT_TRUE(artifacts.ok()) << artifacts.status();
  auto kept = (*artifacts)->Put("a", "kept bytes", "{}");
  auto lost = (*artifacts)->Put("b", "lost bytes", "{}");
  ASSERT_TRUE(kept.ok() && lost.ok());
  // a: resnet8:1 on the kept bytes; b, c: resnet8:2 and other:1 on the lost
  // ones; d: a job with that artifact but no name (not served).
  for (const auto& [id, name, stored] : std::vector<std::tuple<std::string, std::string, StoredArtifact>>{
           {"a", "resnet8", *kept}, {"b", "resnet8", *lost}, {"c", "other", *lost}, {"d", "", *lost}}) {
    Job job = NewJob(id, 1);
    job.spec.model_name = name;
    ASSERT_TRUE((*jobs)->Create(job, 10).ok());
    ASSERT_TRUE((*jobs)->ClaimNext(absl::FromUnixSeconds(5), "local", absl::Hours(1)).ok());
    JobResult result;
    result.artifact_sha256 = stored.sha256;
    result.artifact_id = ArtifactIdFor(stored.sha256);
    result.artifact_size_bytes = stored.size_bytes;
    ASSERT_TRUE((*jobs)->Finish(id, 1, JobState::kSucceeded, result, absl::FromUnixSeconds(5)).ok());
  }
  auto none = FindMissingPublishedArtifacts(**jobs, **artifacts);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());

  // Cut short: its size is not the one the job recorded.
  fs::resize_file(fs::path(dir) / "artifacts" / (lost->sha256 + ".pt"), 3);
  auto short_file = FindMissingPublishedArtifacts(**jobs, **artifacts);
  ASSERT_TRUE(short_file.ok()) << short_file.status();
  ASSERT_EQ(short_file->size(), 1u);
  EXPECT_EQ((*short_file)[0].artifact_id, ArtifactIdFor(lost->sha256));
  EXPECT_EQ((*short_file)[0].found_bytes, 3);
  EXPECT_EQ((*short_file)[0].recorded_bytes, lost->size_bytes);

  ASSERT_TRUE(fs::remove(fs::path(dir) / "artifacts" / (lost->sha256 + ".pt")));
  auto missing = FindMissingPublishedArtifacts(**jobs, **artifacts);
  ASSERT_TRUE(missing.ok()) << missing.status();
  ASSERT_EQ(missing->size(), 1u);
  EXPECT_EQ((*missing)[0].artifact_id, ArtifactIdFor(lost->sha256));
  EXPECT_EQ((*missing)[0].found_bytes, -1);
  EXPECT_THAT((*missing)[0].versions, ::testing::ElementsAre("other:1", "resnet8:2"));
}

TEST(SqliteJobStoreTest, CreateGetListClaimFinish) {
  auto store = SqliteJobStore::Open(TempDir("jobs") + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE((*store)->Create(NewJob("j" + std::to_string(i), i), 10).ok());
  auto job = (*store)->Get("j2");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state, JobState::kQueued);
  EXPECT_EQ(job->request_echo, std::string("\x01\x00\x02", 3));
  EXPECT_EQ(job->spec.model_path, "/m.pt");
  EXPECT_EQ((*store)->Get("nope").status().code(), absl::StatusCode::kNotFound);

  auto page = (*store)->List({}, 2, "");
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs.size(), 2u);
  EXPECT_EQ(page->jobs[0].id, "j3");
  EXPECT_EQ(page->jobs[1].id, "j2");
  ASSERT_FALSE(page->next_page_token.empty());
  auto page2 = (*store)->List({}, 2, page->next_page_token);
  ASSERT_TRUE(page2.ok());
  ASSERT_EQ(page2->jobs.size(), 1u);
  EXPECT_EQ(page2->jobs[0].id, "j1");
  EXPECT_TRUE(page2->next_page_token.empty());
  EXPECT_EQ((*store)->List({}, 2, "garbage").status().code(), absl::StatusCode::kInvalidArgument);

  auto claimed = (*store)->ClaimNext(absl::FromUnixSeconds(10), "local", absl::Hours(1));
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  EXPECT_EQ((*claimed)->id, "j1");  // oldest first
  EXPECT_EQ((*claimed)->state, JobState::kRunning);
  EXPECT_EQ((*claimed)->attempt_count, 1u);
  EXPECT_TRUE((*store)->Delete("j1", nullptr).code() == absl::StatusCode::kFailedPrecondition);

  JobResult result;
  result.artifact_id = "art-0123";
  result.artifact_sha256 = std::string(64, 'a');
  result.report.layers.push_back({"conv1", "conv2d_relu", 0.5, 3, {0.1f, 0.2f}, 31.5});
  result.phase_timings.push_back({JobPhase::kCalibrating, 1.25});
  ASSERT_TRUE((*store)->Finish("j1", 1, JobState::kSucceeded, result, absl::FromUnixSeconds(11)).ok());
  // A stale attempt cannot finish it again.
  EXPECT_FALSE((*store)->Finish("j1", 1, JobState::kFailed, result, absl::FromUnixSeconds(12)).ok());
  auto done = (*store)->Get("j1");
  ASSERT_TRUE(done.ok() && done->result.has_value());
  EXPECT_EQ(done->state, JobState::kSucceeded);
  EXPECT_EQ(done->result->report.layers[0].sqnr_db, 31.5);
  EXPECT_EQ(done->result->phase_timings[0].phase, JobPhase::kCalibrating);
  auto users = (*store)->JobsWithArtifact("art-0123");
  ASSERT_TRUE(users.ok());
  EXPECT_EQ(users->size(), 1u);
  auto artifacts = (*store)->ListArtifactJobs("", 10, "");
  ASSERT_TRUE(artifacts.ok());
  EXPECT_EQ(artifacts->jobs.size(), 1u);

  auto filtered = (*store)->List({JobState::kSucceeded}, 10, "");
  ASSERT_TRUE(filtered.ok());
  ASSERT_EQ(filtered->jobs.size(), 1u);
  EXPECT_TRUE((*store)->Delete("j1", nullptr).ok());
  EXPECT_EQ((*store)->Get("j1").status().code(), absl::StatusCode::kNotFound);
}

// The delete race: job B, identical to the finished job A, is storing the
// same artifact when A is deleted. B pinned the artifact before storing it,
// so deleting A must not release it; once B's result replaces the pin (or B
// fails without an artifact), the last holder releases it.
TEST(SqliteJobStoreTest, KeepsWhoSubmittedAndAddsTheColumnsToOlderStores) {
  const std::string path = TempDir("sqlite_owner") + "/jobs.db";
  {
    auto store = SqliteJobStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    Job job = NewJob("job-1", 100);
    job.owner = "ci";
    ASSERT_TRUE((*store)->Create(job, 10).ok());
    EXPECT_EQ((*store)->Get("job-1")->owner, "ci");
  }
  // A store from before owners and leases were kept: the same table without
  // those columns, and a job its server was running when it stopped.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  for (const char* drop : {"ALTER TABLE jobs DROP COLUMN owner", "ALTER TABLE jobs DROP COLUMN holder",
                           "ALTER TABLE jobs DROP COLUMN lease_us", "UPDATE jobs SET state = 2, attempt = 1"}) {
    ASSERT_EQ(sqlite3_exec(db, drop, nullptr, nullptr, nullptr), SQLITE_OK) << drop << ": " << sqlite3_errmsg(db);
  }
  sqlite3_close(db);
  auto store = SqliteJobStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<Job> old = (*store)->Get("job-1");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->owner, "");  // unknown
  // Its job has no lease, so any server's sweep recovers it.
  EXPECT_EQ((*store)->RecoverInterrupted(2, absl::FromUnixSeconds(101), "")->requeued, 1);
  Job job = NewJob("job-2", 200);
  job.owner = "ci2";
  ASSERT_TRUE((*store)->Create(job, 10).ok());
  EXPECT_EQ((*store)->Get("job-2")->owner, "ci2");
}

TEST(SqliteJobStoreTest, APinnedArtifactIsNotReleasedByDeletingAnIdenticalJob) {
  auto store = SqliteJobStore::Open(TempDir("pins") + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  JobResult with_artifact;
  with_artifact.artifact_id = "art-0123";
  with_artifact.artifact_sha256 = std::string(64, 'a');
  const absl::Time now = absl::FromUnixSeconds(10);
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE((*store)->Create(NewJob(id, 1), 10).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());  // a
  ASSERT_TRUE((*store)->Finish("a", 1, JobState::kSucceeded, with_artifact, now).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());  // b
  ASSERT_TRUE((*store)->PinArtifact("b", 1, "art-0123").ok());
  EXPECT_EQ((*store)->PinArtifact("b", 2, "art-0123").code(), absl::StatusCode::kFailedPrecondition);

  std::vector<std::pair<std::string, bool>> released;
  auto record = [&](const Job& deleted, bool last_holder) {
    released.emplace_back(deleted.id, last_holder);
    return absl::OkStatus();
  };
  ASSERT_TRUE((*store)->Delete("a", record).ok());
  EXPECT_THAT(released, ::testing::ElementsAre(std::make_pair(std::string("a"), false)));

  ASSERT_TRUE((*store)->Finish("b", 1, JobState::kSucceeded, with_artifact, now).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());  // c pins it, then fails without it
  ASSERT_TRUE((*store)->PinArtifact("c", 1, "art-0123").ok());
  ASSERT_TRUE((*store)->Finish("c", 1, JobState::kFailed, JobResult{}, now).ok());
  ASSERT_TRUE((*store)->Delete("b", record).ok());
  EXPECT_EQ(released.back(), std::make_pair(std::string("b"), true));
  ASSERT_TRUE((*store)->Delete("c", record).ok());  // held nothing: no call
  EXPECT_EQ(released.size(), 2u);
}

// An attempt's pin is its own: a job recovered (failed, cancelled or
// requeued) or released holds nothing, and its artifact listing does not
// show the identical job's artifact it had pinned as its own.
TEST(SqliteJobStoreTest, AnInterruptedAttemptsPinIsDroppedWithIt) {
  auto store = SqliteJobStore::Open(TempDir("stale_pins") + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  JobResult with_artifact;
  with_artifact.artifact_id = "art-0123";
  with_artifact.artifact_sha256 = std::string(64, 'a');
  const absl::Time now = absl::FromUnixSeconds(10);
  const absl::Time later = now + absl::Hours(2);  // every lease has run out
  for (const char* id : {"done", "failed", "cancelled", "requeued", "released"}) {
    ASSERT_TRUE((*store)->Create(NewJob(id, 1), 10).ok());
  }
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());  // done
  ASSERT_TRUE((*store)->Finish("done", 1, JobState::kSucceeded, with_artifact, now).ok());
  for (const char* id : {"failed", "cancelled", "requeued", "released"}) {
    ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());
    ASSERT_TRUE((*store)->PinArtifact(id, 1, "art-0123").ok());
  }
  ASSERT_TRUE((*store)->RequestCancel("cancelled", "stop").ok());
  ASSERT_TRUE((*store)->Release("released", 1).ok());
  EXPECT_THAT(*(*store)->ArtifactHolders("art-0123"),
              ::testing::UnorderedElementsAre("done", "failed", "cancelled", "requeued"));
  absl::StatusOr<JobStore::RecoveryCounts> counts = (*store)->RecoverInterrupted(2, later, "");
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->cancelled, 1);
  EXPECT_EQ(counts->requeued, 2);  // "failed" and "requeued", on their first attempt
  // "failed" runs again (the oldest queued), pins again, and is interrupted for good.
  absl::StatusOr<std::optional<Job>> again = (*store)->ClaimNext(later, "local", absl::Hours(1));
  ASSERT_TRUE(again.ok() && again->has_value());
  ASSERT_EQ((*again)->id, "failed");
  ASSERT_TRUE((*store)->PinArtifact("failed", 2, "art-0123").ok());
  counts = (*store)->RecoverInterrupted(2, later + absl::Hours(2), "");
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->failed, 1);
  EXPECT_THAT(*(*store)->ArtifactHolders("art-0123"), ::testing::ElementsAre("done"));
  for (const char* id : {"failed", "cancelled", "requeued", "released"}) {
    absl::StatusOr<JobPage> listed = (*store)->ListArtifactJobs(id, 10, "");
    ASSERT_TRUE(listed.ok()) << listed.status();
    EXPECT_TRUE(listed->jobs.empty()) << id << " lists " << listed->jobs.front().id << "'s artifact as its own";
  }
  EXPECT_EQ((*store)->ListArtifactJobs("done", 10, "")->jobs.size(), 1u);
}

// A crash after a cancel was acknowledged: the restart's recovery cancels
// the job instead of running it again; other interrupted jobs are requeued.
TEST(SqliteJobStoreTest, RecoveryCancelsAnInterruptedJobWhoseCancelWasRequested) {
  auto store = SqliteJobStore::Open(TempDir("recover_cancelled") + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  const absl::Time now = absl::FromUnixSeconds(10);
  ASSERT_TRUE((*store)->Create(NewJob("a", 1), 10).ok());
  ASSERT_TRUE((*store)->Create(NewJob("b", 2), 10).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());  // a
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());  // b
  ASSERT_TRUE((*store)->RequestCancel("a", "wrong model").ok());
  absl::StatusOr<JobStore::RecoveryCounts> recovered = (*store)->RecoverInterrupted(2, now, "local");
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ(recovered->cancelled, 1);
  EXPECT_EQ(recovered->requeued, 1);
  EXPECT_EQ(recovered->failed, 0);
  Job a = *(*store)->Get("a");
  EXPECT_EQ(a.state, JobState::kCancelled);
  ASSERT_TRUE(a.result.has_value());
  EXPECT_EQ(a.result->error_code, absl::StatusCode::kCancelled);
  EXPECT_EQ(a.result->error_message, "cancelled: wrong model");
  EXPECT_EQ(a.finish_time, now);
  EXPECT_FALSE((*store)->CancelRequest("a")->has_value());
  EXPECT_EQ((*store)->Get("b")->state, JobState::kQueued);
}

// Once the job's deletion is committed, the caller hears OK even if its
// artifact could not be removed (the start-up sweep gets it): an error would
// make the caller retry into NOT_FOUND.
TEST(SqliteJobStoreTest, ADeletedJobIsReportedDeletedEvenIfItsArtifactStays) {
  auto store = SqliteJobStore::Open(TempDir("delete_release_fails") + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  JobResult with_artifact;
  with_artifact.artifact_id = "art-0456";
  with_artifact.artifact_sha256 = std::string(64, 'b');
  const absl::Time now = absl::FromUnixSeconds(10);
  ASSERT_TRUE((*store)->Create(NewJob("a", 1), 10).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());
  ASSERT_TRUE((*store)->Finish("a", 1, JobState::kSucceeded, with_artifact, now).ok());
  int calls = 0;
  EXPECT_TRUE((*store)->Delete("a", [&](const Job&, bool last_holder) {
                        ++calls;
                        EXPECT_TRUE(last_holder);
                        return absl::UnavailableError("the artifact volume is gone");
                      })
                  .ok());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ((*store)->Get("a").status().code(), absl::StatusCode::kNotFound);
}

// Another process (a second connection to the same file) cannot pin an
// artifact while a deletion or a sweep decides whether to remove it: its
// PinArtifact waits until the decision and the removal are done, and then
// stores the file again itself.
TEST(SqliteJobStoreTest, PinningWaitsWhileAnotherProcessDecidesToRemoveAnArtifact) {
  const std::string db = TempDir("artifact_lock") + "/jobs.db";
  auto here = SqliteJobStore::Open(db);
  auto there = SqliteJobStore::Open(db);
  ASSERT_TRUE(here.ok() && there.ok());
  const absl::Time now = absl::FromUnixSeconds(10);
  ASSERT_TRUE((*there)->Create(NewJob("storing", 1), 10).ok());
  ASSERT_TRUE((*there)->ClaimNext(now, "host-b:/data", absl::Hours(1)).ok());

  std::atomic<bool> pinned{false};
  std::thread pinning;
  const absl::Status used = (*here)->WithArtifactLocked("art-0123", [&](const std::vector<std::string>& holders) {
    EXPECT_THAT(holders, ::testing::IsEmpty());
    pinning = std::thread([&] {
      EXPECT_TRUE((*there)->PinArtifact("storing", 1, "art-0123").ok());
      pinned = true;
    });
    absl::SleepFor(absl::Milliseconds(200));  // the removal of the files, taking its time
    EXPECT_FALSE(pinned.load());
    return absl::OkStatus();
  });
  EXPECT_TRUE(used.ok()) << used;
  pinning.join();
  EXPECT_TRUE(pinned.load());
  // Now held, and said so to the next one who looks.
  ASSERT_TRUE((*here)
                  ->WithArtifactLocked("art-0123",
                                       [](const std::vector<std::string>& holders) {
                                         EXPECT_THAT(holders, ::testing::ElementsAre("storing"));
                                         return absl::OkStatus();
                                       })
                  .ok());
  // What `use` returns is what the call returns.
  EXPECT_EQ((*here)
                ->WithArtifactLocked("art-0123",
                                     [](const std::vector<std::string>&) { return absl::DataLossError("disk"); })
                .code(),
            absl::StatusCode::kDataLoss);
}

TEST(SqliteJobStoreTest, SucceededJobsPublishNumberedVersionsThatAreNeverReused) {
  const std::string dir = TempDir("versions");
  auto store = SqliteJobStore::Open(dir + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  const absl::Time now = absl::FromUnixSeconds(10);
  JobResult result;
  result.artifact_id = "art-0123";
  result.artifact_sha256 = std::string(64, 'a');
  // a, b, d publish "resnet8"; c fails; e publishes "other"; f has no name.
  for (const char* id : {"a", "b", "c", "d", "e", "f"}) {
    Job job = NewJob(id, 1);
    job.spec.model_name = std::string(id) == "e" ? "other" : std::string(id) == "f" ? "" : "resnet8";
    ASSERT_TRUE((*store)->Create(job, 10).ok());
    ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());
    const JobState state = std::string(id) == "c" ? JobState::kFailed : JobState::kSucceeded;
    ASSERT_TRUE((*store)->Finish(id, 1, state, result, now).ok());
  }
  auto versions = (*store)->ListModelVersions("resnet8");
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), 3u);
  EXPECT_EQ((*versions)[0].job_id, "a");
  EXPECT_EQ((*versions)[2].version, 3);
  EXPECT_EQ((*versions)[2].job_id, "d");
  auto d = (*store)->Get("d");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->result->model_name, "resnet8");
  EXPECT_EQ(d->result->model_version, 3);
  EXPECT_FALSE(d->result->model_version_deleted);
  EXPECT_EQ((*store)->Get("f")->result->model_version, 0);
  EXPECT_EQ((*store)->ListModelVersions("")->size(), 4u);

  // Newest, a given one, and what is missing.
  EXPECT_EQ((*store)->GetModelVersion("resnet8", 0)->job_id, "d");
  EXPECT_EQ((*store)->GetModelVersion("resnet8", 2)->job_id, "b");
  absl::Status missing = (*store)->GetModelVersion("resnet8", 7).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("no version 7"));
  EXPECT_EQ((*store)->GetModelVersion("nope", 0).status().code(), absl::StatusCode::kNotFound);

  // Deleting the newest version, or its job, never frees its number.
  ASSERT_TRUE((*store)->DeleteModelVersion("resnet8", 3).ok());
  EXPECT_EQ((*store)->DeleteModelVersion("resnet8", 3).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->GetModelVersion("resnet8", 0)->version, 2);
  // Its job still says which version it published, and that it is gone.
  d = (*store)->Get("d");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->result->model_version, 3);
  EXPECT_TRUE(d->result->model_version_deleted);
  auto listed = (*store)->List({}, 10, "");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->jobs.size(), 6u);
  for (const Job& job : listed->jobs) {
    ASSERT_TRUE(job.result.has_value()) << job.id;
    EXPECT_EQ(job.result->model_version_deleted, job.id == "d") << job.id;
  }
  ASSERT_TRUE((*store)->Delete("b", nullptr).ok());
  EXPECT_EQ((*store)->GetModelVersion("resnet8", 0)->version, 1);
  Job g = NewJob("g", 2);
  g.spec.model_name = "resnet8";
  ASSERT_TRUE((*store)->Create(g, 10).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());
  ASSERT_TRUE((*store)->Finish("g", 1, JobState::kSucceeded, result, now).ok());
  EXPECT_EQ((*store)->GetModelVersion("resnet8", 0)->version, 4);

  // A published job's source model stays in use (its FP32 side is served);
  // its calibration set does not (it was never swept, and DeleteBlob named
  // a finished job to wait for).
  EXPECT_THAT(*(*store)->ActiveJobsUsing("/m.pt"), ::testing::ElementsAre("a", "e", "g"));
  EXPECT_THAT(*(*store)->ActiveJobsUsing("/c.bin"), ::testing::IsEmpty());
  ASSERT_TRUE((*store)->Create(NewJob("queued", 3), 10).ok());
  EXPECT_THAT(*(*store)->ActiveJobsUsing("/c.bin"), ::testing::ElementsAre("queued"));
}

// A cancel of an evaluation goes through the store, for whichever server
// runs it; a finished record clears it.
TEST(SqliteJobStoreTest, EvaluationCancelRequestsLastUntilTheEvaluationFinishes) {
  auto store = SqliteJobStore::Open(TempDir("evaluation_cancel") + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->RequestEvaluationCancel("eval-nope", "x").code(), absl::StatusCode::kNotFound);
  Publish(**store, "j1", "resnet8");
  JobStore::EvaluationIndex running;
  running.model_name = "resnet8";
  running.model_version = 1;
  const std::string running_record = R"({"state": 1})";  // as EncodeEvaluation writes RUNNING
  ASSERT_TRUE((*store)->PutEvaluation("eval-1", running_record, running).ok());
  EXPECT_EQ(*(*store)->CancelRequest("eval-1"), std::nullopt);
  ASSERT_TRUE((*store)->RequestEvaluationCancel("eval-1", "wrong dataset").ok());
  EXPECT_EQ(*(*store)->CancelRequest("eval-1"), std::optional<std::string>("wrong dataset"));
  ASSERT_TRUE((*store)->PutEvaluation("eval-1", running_record, running).ok());  // progress: still asked
  EXPECT_EQ(*(*store)->CancelRequest("eval-1"), std::optional<std::string>("wrong dataset"));
  JobStore::EvaluationIndex finished = running;
  finished.finished = true;
  ASSERT_TRUE((*store)->PutEvaluation("eval-1", R"({"state": 2})", finished).ok());
  EXPECT_EQ(*(*store)->CancelRequest("eval-1"), std::nullopt);
  // Finished since the caller looked: no request that nothing would clear.
  EXPECT_EQ((*store)->RequestEvaluationCancel("eval-1", "late").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*(*store)->CancelRequest("eval-1"), std::nullopt);
}

TEST(SqliteJobStoreTest, LatestEvaluationsAreEachVersionsNewestSucceededAndNewestWithFp32) {
  const std::string path = TempDir("evaluations") + "/jobs.db";
  {  // A store from before evaluations were indexed, with one record.
    auto store = SqliteJobStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  for (const char* sql : {"DROP INDEX evaluations_latest", "DROP TABLE evaluations",
                          "CREATE TABLE evaluations (id TEXT PRIMARY KEY, record TEXT NOT NULL)",
                          "INSERT INTO evaluations VALUES ('old', 'old record')"}) {
    ASSERT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sql << ": " << sqlite3_errmsg(db);
  }
  sqlite3_close(db);
  auto store = SqliteJobStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*(*store)->GetEvaluation("old"), "old record");
  auto at = [](int64_t seconds) { return std::optional<absl::Time>(absl::FromUnixSeconds(seconds)); };
  using Index = JobStore::EvaluationIndex;
  // Jobs j1 and j2 publish resnet8 v1 and v2, j3 other v1.
  Publish(**store, "j1", "resnet8");
  Publish(**store, "j2", "resnet8");
  Publish(**store, "j3", "other");
  // resnet8 v1: FP32 at 10, int8 only at 20, one still running, one failed
  // (no index time); v2: one at 15; other v1: none succeeded.
  ASSERT_TRUE((*store)->PutEvaluation("e1", "v1 with fp32", Index{"resnet8", 1, at(10), true}).ok());
  ASSERT_TRUE((*store)->PutEvaluation("e2", "v1 int8 only", Index{"resnet8", 1, at(20), false}).ok());
  ASSERT_TRUE((*store)->PutEvaluation("e3", "v1 running", Index{"resnet8", 1, std::nullopt, false}).ok());
  ASSERT_TRUE((*store)->PutEvaluation("e4", "v2", Index{"resnet8", 2, at(15), true}).ok());
  ASSERT_TRUE((*store)->PutEvaluation("e5", "other failed", Index{"other", 1, std::nullopt, false}).ok());
  auto latest = (*store)->LatestEvaluations();
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_THAT(*latest, ::testing::ElementsAre("v1 with fp32", "v2", "v1 int8 only"));
  // A newer evaluation with FP32 is both: returned once, and the older ones
  // of its version are no longer.
  ASSERT_TRUE((*store)->PutEvaluation("e3", "v1 done", Index{"resnet8", 1, at(30), true}).ok());
  EXPECT_THAT(*(*store)->LatestEvaluations(), ::testing::ElementsAre("v2", "v1 done"));

  // A version's evaluations go with it, unpublished or with its job: nothing
  // else deleted them, and every Evaluate adds one.
  ASSERT_TRUE((*store)->DeleteModelVersion("resnet8", 1).ok());
  for (const char* id : {"e1", "e2", "e3"}) {
    EXPECT_EQ((*store)->GetEvaluation(id).status().code(), absl::StatusCode::kNotFound) << id;
  }
  EXPECT_THAT(*(*store)->LatestEvaluations(), ::testing::ElementsAre("v2"));
  ASSERT_TRUE((*store)->Delete("j3", nullptr).ok());
  EXPECT_EQ((*store)->GetEvaluation("e5").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*store)->GetEvaluation("e4").ok());
  // One running when its version was deleted does not write itself back:
  // it came back and stayed, with no version.
  const absl::Status late = (*store)->PutEvaluation("e6", "v1 late", Index{"resnet8", 1, at(40), true});
  EXPECT_EQ(late.code(), absl::StatusCode::kNotFound) << late;
  EXPECT_EQ((*store)->GetEvaluation("e6").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(*(*store)->LatestEvaluations(), ::testing::ElementsAre("v2"));
}

// Every Evaluate adds a record: a version keeps its newest 100, and always
// those its metrics come from and those still running.
TEST(SqliteJobStoreTest, AVersionKeepsItsNewestEvaluationsAndTheOnesItsMetricsUse) {
  auto store = SqliteJobStore::Open(TempDir("evaluation_pruning") + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  Publish(**store, "j1", "resnet8");
  Publish(**store, "j2", "other");
  using Index = JobStore::EvaluationIndex;
  Index fp32{"resnet8", 1, absl::FromUnixSeconds(1), true};
  fp32.finished = true;
  ASSERT_TRUE((*store)->PutEvaluation("e000", "oldest, with fp32", fp32).ok());
  ASSERT_TRUE((*store)->PutEvaluation("e001", "running", Index{"resnet8", 1, std::nullopt, false}).ok());
  Index other{"other", 1, std::nullopt, false};
  other.finished = true;
  ASSERT_TRUE((*store)->PutEvaluation("o000", "another model's", other).ok());
  Index failed{"resnet8", 1, std::nullopt, false};
  failed.finished = true;
  constexpr int kFailed = 104;  // e002..e105: with e000 and e001, 106 records
  for (int i = 2; i < 2 + kFailed; ++i) {
    ASSERT_TRUE((*store)->PutEvaluation(absl::StrFormat("e%03d", i), "failed", failed).ok()) << i;
  }
  ASSERT_EQ(JobStore::kEvaluationsKeptPerVersion, 100);
  for (int i = 2; i < 6; ++i) {  // the oldest finished beyond the newest 100
    EXPECT_EQ((*store)->GetEvaluation(absl::StrFormat("e%03d", i)).status().code(), absl::StatusCode::kNotFound)
        << i;
  }
  for (const char* kept : {"e006", "e105", "e000", "e001", "o000"}) {
    EXPECT_TRUE((*store)->GetEvaluation(kept).ok()) << kept;
  }
  EXPECT_THAT(*(*store)->LatestEvaluations(), ::testing::ElementsAre("oldest, with fp32"));
}

TEST(SqliteJobStoreTest, ADeleteThatFailsHalfwayChangesNothing) {
  const std::string path = TempDir("delete_atomic") + "/jobs.db";
  auto store = SqliteJobStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  const absl::Time now = absl::FromUnixSeconds(10);
  Job job = NewJob("a", 1);
  job.spec.model_name = "resnet8";
  ASSERT_TRUE((*store)->Create(job, 10).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());
  JobResult result;
  result.artifact_id = "art-0123";
  result.artifact_sha256 = std::string(64, 'a');
  ASSERT_TRUE((*store)->Finish("a", 1, JobState::kSucceeded, result, now).ok());
  {  // The unpublishing step fails, after the job's own row was deleted.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TRIGGER no_unpublish BEFORE DELETE ON model_versions "
                           "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  bool released = false;
  EXPECT_FALSE((*store)->Delete("a", [&](const Job&, bool) {
                          released = true;
                          return absl::OkStatus();
                        })
                   .ok());
  EXPECT_FALSE(released);
  EXPECT_TRUE((*store)->Get("a").ok());  // rolled back with the rest
  EXPECT_EQ((*store)->GetModelVersion("resnet8", 0)->job_id, "a");
}

TEST(SqliteJobStoreTest, CountsJobsByState) {
  auto store = SqliteJobStore::Open(TempDir("counts") + "/jobs.db");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->CountByState()->empty());
  for (const char* id : {"a", "b", "c", "d"}) ASSERT_TRUE((*store)->Create(NewJob(id, 1), 10).ok());
  const absl::Time now = absl::FromUnixSeconds(10);
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());  // a runs
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());  // b runs
  ASSERT_TRUE((*store)->Finish("b", 1, JobState::kFailed, JobResult(), now).ok());
  auto counts = (*store)->CountByState();
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(*counts, (std::map<JobState, int64_t>{
                         {JobState::kQueued, 2}, {JobState::kRunning, 1}, {JobState::kFailed, 1}}));
}

// A cancel asked of a running attempt that a shutdown then releases: the
// job is not queued to run again (the cancel was acknowledged); the release
// hands back the reason for the runner to record the cancellation.
TEST(SqliteJobStoreTest, AJobWithACancelRequestIsNotReleasedToTheQueue) {
  auto store = SqliteJobStore::Open(TempDir("jobs_cancel_rows") + "/jobs.db");
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Create(NewJob("a", 1), 10).ok());
  ASSERT_TRUE((*store)->Create(NewJob("b", 2), 10).ok());
  auto claimed = (*store)->ClaimNext(absl::FromUnixSeconds(2), "host-1", absl::Seconds(30));
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  const uint32_t attempt = (*claimed)->attempt_count;
  ASSERT_TRUE((*store)->RequestCancel("a", "stop it").ok());
  // Another attempt's release changes nothing and reports nothing.
  absl::StatusOr<std::optional<std::string>> stale = (*store)->Release("a", attempt + 1);
  ASSERT_TRUE(stale.ok()) << stale.status();
  EXPECT_EQ(*stale, std::nullopt);
  absl::StatusOr<std::optional<std::string>> kept = (*store)->Release("a", attempt);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(*kept, std::optional<std::string>("stop it"));
  ASSERT_EQ((*store)->Get("a")->state, JobState::kRunning);
  ASSERT_TRUE((*store)->Finish("a", attempt, JobState::kCancelled, JobResult(), absl::FromUnixSeconds(3)).ok());
  EXPECT_EQ(*(*store)->CancelRequest("a"), std::nullopt);
  // Without a request the job goes back to the queue, its attempt not counted.
  auto next = (*store)->ClaimNext(absl::FromUnixSeconds(4), "host-1", absl::Seconds(30));
  ASSERT_TRUE(next.ok() && next->has_value());
  ASSERT_EQ((*next)->id, "b");
  absl::StatusOr<std::optional<std::string>> released = (*store)->Release("b", (*next)->attempt_count);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(*released, std::nullopt);
  EXPECT_EQ((*store)->Get("b")->state, JobState::kQueued);
  EXPECT_EQ((*store)->Get("b")->attempt_count, 0u);
}

TEST(SqliteJobStoreTest, IdempotencyKeyAndCapacity) {
  auto store = SqliteJobStore::Open(TempDir("jobs") + "/jobs.db");
  ASSERT_TRUE(store.ok());
  Job first = NewJob("a", 1, "key-1");
  ASSERT_TRUE((*store)->Create(first, 2).ok());
  Job retry = NewJob("b", 2, "key-1");
  retry.request_fingerprint = first.request_fingerprint;
  auto same = (*store)->Create(retry, 2);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->id, "a");
  Job other = NewJob("c", 3, "key-1");
  EXPECT_EQ((*store)->Create(other, 2).status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE((*store)->Create(NewJob("d", 4), 2).ok());
  auto full = (*store)->Create(NewJob("e", 5), 2);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.status().message()), HasSubstr("queue is full"));
  auto cancelled = (*store)->CancelQueued("d", "no longer needed", absl::FromUnixSeconds(6));
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state, JobState::kCancelled);
  // A second cancel (a concurrent CancelJob that lost the race) changes
  // nothing, so its caller publishes no second set of events.
  EXPECT_EQ((*store)->CancelQueued("d", "again", absl::FromUnixSeconds(7)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*store)->Get("d")->result->error_message, "no longer needed");
  EXPECT_TRUE((*store)->Create(NewJob("e", 5), 2).ok());
}

// An idempotency key is its submitter's: another submitter's same key (and
// same request) makes another job, never hands over the first one's.
TEST(SqliteJobStoreTest, IdempotencyKeysArePerSubmitter) {
  auto store = SqliteJobStore::Open(TempDir("keys") + "/jobs.db");
  ASSERT_TRUE(store.ok());
  Job by_a = NewJob("a", 1, "nightly");
  by_a.owner = "team-a";
  ASSERT_TRUE((*store)->Create(by_a, 10).ok());
  Job by_b = NewJob("b", 2, "nightly");
  by_b.owner = "team-b";
  by_b.request_fingerprint = by_a.request_fingerprint;
  absl::StatusOr<Job> created = (*store)->Create(by_b, 10);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->id, "b");
  EXPECT_EQ(created->idempotency_key, "nightly");  // as given, not as stored
  Job retry_a = NewJob("c", 3, "nightly");
  retry_a.owner = "team-a";
  retry_a.request_fingerprint = by_a.request_fingerprint;
  EXPECT_EQ((*store)->Create(retry_a, 10)->id, "a");
  Job other_a = NewJob("d", 4, "nightly");
  other_a.owner = "team-a";
  absl::Status reused = (*store)->Create(other_a, 10).status();
  EXPECT_EQ(reused.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(reused.message()), HasSubstr("idempotency_key \"nightly\" was already used by job a"));
  // Looked up as Create does: per submitter.
  EXPECT_EQ((*store)->FindByIdempotencyKey("team-a", "nightly").value()->id, "a");
  EXPECT_EQ((*store)->FindByIdempotencyKey("team-b", "nightly").value()->id, "b");
  EXPECT_EQ((*store)->FindByIdempotencyKey("team-c", "nightly").value(), std::nullopt);
  EXPECT_EQ((*store)->FindByIdempotencyKey("team-a", "weekly").value(), std::nullopt);
  EXPECT_EQ((*store)->FindByIdempotencyKey("team-a", "").value(), std::nullopt);
}

TEST(SqliteJobStoreTest, CancelRequestsAreForRunningJobsAndClearedByFinish) {
  const std::string path = TempDir("cancel") + "/jobs.db";
  auto store = SqliteJobStore::Open(path);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Create(NewJob("a", 1), 10).ok());
  EXPECT_EQ((*store)->RequestCancel("a", "too early").code(), absl::StatusCode::kFailedPrecondition);  // QUEUED
  auto claimed = (*store)->ClaimNext(absl::FromUnixSeconds(2), "local", absl::Hours(1));
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  EXPECT_FALSE((*store)->CancelRequest("a")->has_value());
  ASSERT_TRUE((*store)->RequestCancel("a", "user asked").ok());
  // Another process opening the same file sees the request.
  auto other = SqliteJobStore::Open(path);
  ASSERT_TRUE(other.ok());
  auto seen = (*other)->CancelRequest("a");
  ASSERT_TRUE(seen.ok() && seen->has_value());
  EXPECT_EQ(**seen, "user asked");
  // Acknowledged, so the job cannot succeed any more (its runner finished
  // after it last looked): refused, nothing changed.
  JobResult succeeded;
  succeeded.artifact_id = "art-1";
  EXPECT_EQ((*store)->Finish("a", 1, JobState::kSucceeded, succeeded, absl::FromUnixSeconds(3)).code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ((*store)->Get("a")->state, JobState::kRunning);
  EXPECT_TRUE((*store)->CancelRequest("a")->has_value());
  JobResult result;
  result.error_code = absl::StatusCode::kCancelled;
  ASSERT_TRUE((*store)->Finish("a", 1, JobState::kCancelled, result, absl::FromUnixSeconds(3)).ok());
  EXPECT_FALSE((*store)->CancelRequest("a")->has_value());
  EXPECT_EQ((*store)->RequestCancel("a", "late").code(), absl::StatusCode::kFailedPrecondition);  // finished
}

TEST(SqliteJobStoreTest, RecoveryRequeuesThenFailsAfterTwoCrashes) {
  std::string path = TempDir("jobs") + "/jobs.db";
  {
    auto store = SqliteJobStore::Open(path);
    ASSERT_TRUE((*store)->Create(NewJob("x", 1), 10).ok());
    ASSERT_TRUE((*store)->ClaimNext(absl::FromUnixSeconds(2), "local", absl::Hours(1)).ok());  // then "crash"
  }
  {
    auto store = SqliteJobStore::Open(path);
    auto counts = (*store)->RecoverInterrupted(2, absl::FromUnixSeconds(3), "local");
    ASSERT_TRUE(counts.ok());
    EXPECT_EQ(counts->requeued, 1);
    EXPECT_EQ((*store)->Get("x")->state, JobState::kQueued);
    auto again = (*store)->ClaimNext(absl::FromUnixSeconds(4), "local", absl::Hours(1));
    EXPECT_EQ((*again)->attempt_count, 2u);  // crash again
  }
  auto store = SqliteJobStore::Open(path);
  auto counts = (*store)->RecoverInterrupted(2, absl::FromUnixSeconds(5), "local");
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->failed, 1);
  auto job = (*store)->Get("x");
  EXPECT_EQ(job->state, JobState::kFailed);
  EXPECT_THAT(job->result->error_message, HasSubstr("interrupted while running 2 times"));
}

// Several processes may share a store: a job another live process holds is
// not recovered until its lease runs out, however often the others sweep.
TEST(SqliteJobStoreTest, RecoveryTakesOnlyExpiredLeasesAndTheRestartedHoldersJobs) {
  const std::string path = TempDir("jobs_lease") + "/jobs.db";
  auto store = SqliteJobStore::Open(path);
  auto other = SqliteJobStore::Open(path);  // a second process's connection
  ASSERT_TRUE(store.ok() && other.ok());
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE((*store)->Create(NewJob(id, 1), 10).ok());
  const absl::Time t0 = absl::FromUnixSeconds(100);
  ASSERT_EQ((*(*store)->ClaimNext(t0, "host-1:/data", absl::Seconds(30)))->id, "a");
  ASSERT_EQ((*(*other)->ClaimNext(t0, "host-2:/data", absl::Seconds(30)))->id, "b");
  ASSERT_EQ((*(*other)->ClaimNext(t0, "host-2:/data", absl::Seconds(30)))->id, "c");

  // Within the leases nothing is interrupted, for any sweeper.
  auto counts = (*store)->RecoverInterrupted(2, t0 + absl::Seconds(29), "");
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->requeued, 0);
  // host-2 keeps renewing c, not b.
  ASSERT_TRUE((*other)->RenewLease("c", 1, t0 + absl::Seconds(90)).ok());
  // host-1 restarts: its own job is recovered at once, host-2's are not.
  counts = (*store)->RecoverInterrupted(2, t0 + absl::Seconds(29), "host-1:/data");
  EXPECT_EQ(counts->requeued, 1);
  EXPECT_EQ((*store)->Get("a")->state, JobState::kQueued);
  EXPECT_EQ((*store)->Get("b")->state, JobState::kRunning);
  // b's lease runs out; c's renewed one has not.
  counts = (*store)->RecoverInterrupted(2, t0 + absl::Seconds(31), "");
  EXPECT_EQ(counts->requeued, 1);
  EXPECT_EQ((*store)->Get("b")->state, JobState::kQueued);
  EXPECT_EQ((*store)->Get("c")->state, JobState::kRunning);
  // host-2 learns that b is no longer its own, and cannot record it.
  EXPECT_EQ((*other)->RenewLease("b", 1, t0 + absl::Seconds(90)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*other)->Finish("b", 1, JobState::kSucceeded, JobResult(), t0 + absl::Seconds(32)).code(),
            absl::StatusCode::kFailedPrecondition);
  // The next claim of b is attempt 2, with a lease of its own.
  auto again = (*store)->ClaimNext(t0 + absl::Seconds(32), "host-1:/data", absl::Seconds(30));
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->id, "a");
  again = (*store)->ClaimNext(t0 + absl::Seconds(32), "host-1:/data", absl::Seconds(30));
  EXPECT_EQ((*again)->id, "b");
  EXPECT_EQ((*again)->attempt_count, 2u);
  EXPECT_EQ((*store)->RecoverInterrupted(2, t0 + absl::Seconds(61), "")->requeued, 0);
  EXPECT_TRUE((*store)->RenewLease("b", 2, t0 + absl::Seconds(120)).ok());
}

// A row this server cannot decode (written by a newer version, or damaged)
// used to be claimed RUNNING before decoding and then stay RUNNING forever.
TEST(SqliteJobStoreTest, AnUndecodableRowFailsAndTheNextJobIsClaimed) {
  std::string path = TempDir("jobs") + "/jobs.db";
  auto store = SqliteJobStore::Open(path);
  ASSERT_TRUE((*store)->Create(NewJob("broken", 1), 10).ok());
  ASSERT_TRUE((*store)->Create(NewJob("fine", 2), 10).ok());
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "UPDATE jobs SET spec = '{not json' WHERE id = 'broken'", nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  auto claimed = (*store)->ClaimNext(absl::FromUnixSeconds(3), "local", absl::Hours(1));
  ASSERT_TRUE(claimed.ok()) << claimed.status();
  ASSERT_TRUE(claimed->has_value());
  EXPECT_EQ((*claimed)->id, "fine");
  // The broken row is FAILED with the reason, readable through the raw table.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT state, result FROM jobs WHERE id = 'broken'", -1, &stmt, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(stmt, 0), static_cast<int>(JobState::kFailed));
  EXPECT_THAT(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 1)), HasSubstr("cannot be read back"));
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  EXPECT_FALSE((*(*store)->ClaimNext(absl::FromUnixSeconds(4), "local", absl::Hours(1))).has_value());
  // It can be listed, read and deleted like any failed job.
  absl::StatusOr<JobPage> listed = (*store)->List({}, 10, "");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->jobs.size(), 2u);
  absl::StatusOr<Job> broken = (*store)->Get("broken");
  ASSERT_TRUE(broken.ok()) << broken.status();
  EXPECT_EQ(broken->result->error_code, absl::StatusCode::kDataLoss);
  EXPECT_TRUE((*store)->Delete("broken", nullptr).ok());
}

// A result that does not read back (damaged) leaves the job readable, as
// DATA_LOSS, and deletable; non-finite scores (an SQNR of -inf when the
// reference output is all zero) read back as written.
TEST(SqliteJobStoreTest, AResultThatDoesNotReadBackIsDataLossAndNonFiniteScoresRoundTrip) {
  std::string path = TempDir("results") + "/jobs.db";
  auto store = SqliteJobStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  const absl::Time now = absl::FromUnixSeconds(10);
  for (const char* id : {"tuned", "damaged"}) ASSERT_TRUE((*store)->Create(NewJob(id, 1), 10).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());
  ASSERT_TRUE((*store)->ClaimNext(now, "local", absl::Hours(1)).ok());
  JobResult result;
  engine::TuningReport tuning;
  engine::Trial trial;
  trial.score.agreement = 0.5;
  trial.score.output_sqnr_db = -std::numeric_limits<double>::infinity();
  tuning.trials.push_back(trial);
  result.report.tuning = tuning;
  engine::LayerReport layer;
  layer.name = "conv1";
  layer.sqnr_db = std::numeric_limits<double>::infinity();  // exact
  // A model with an inf weight: scales that are not finite (the quality
  // gate's allow_low_quality keeps it). They made the whole result unreadable.
  layer.output_scale = std::numeric_limits<double>::infinity();
  layer.weight_scales = {0.5f, std::numeric_limits<float>::infinity()};
  result.report.layers.push_back(layer);
  tuning.seconds = std::numeric_limits<double>::quiet_NaN();
  result.report.tuning = tuning;
  ASSERT_TRUE((*store)->Finish("tuned", 1, JobState::kSucceeded, result, now).ok());
  absl::StatusOr<Job> tuned = (*store)->Get("tuned");
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  ASSERT_TRUE(tuned->result->report.tuning.has_value());
  EXPECT_EQ(tuned->result->report.tuning->trials[0].score.output_sqnr_db, -std::numeric_limits<double>::infinity());
  EXPECT_EQ(tuned->result->report.layers[0].sqnr_db, std::numeric_limits<double>::infinity());
  EXPECT_EQ(tuned->result->report.layers[0].output_scale, std::numeric_limits<double>::infinity());
  EXPECT_THAT(tuned->result->report.layers[0].weight_scales,
              ::testing::ElementsAre(0.5f, std::numeric_limits<float>::infinity()));
  EXPECT_TRUE(std::isnan(tuned->result->report.tuning->seconds));

  ASSERT_TRUE((*store)->Finish("damaged", 1, JobState::kSucceeded, JobResult{}, now).ok());
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "UPDATE jobs SET result = '{\"report\": 1}' WHERE id = 'damaged'", nullptr, nullptr,
                           nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  absl::StatusOr<Job> damaged = (*store)->Get("damaged");
  ASSERT_TRUE(damaged.ok()) << damaged.status();
  EXPECT_EQ(damaged->result->error_code, absl::StatusCode::kDataLoss);
  EXPECT_THAT(damaged->result->error_message, HasSubstr("unreadable"));
  EXPECT_EQ((*store)->List({}, 10, "")->jobs.size(), 2u);
  EXPECT_TRUE((*store)->Delete("damaged", nullptr).ok());
}

// Files this process writes stop at `bytes` while it lives (EFBIG, as on a
// full disk: quantd ignores SIGXFSZ, and so does the test).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    rlimit small = saved_;
    small.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &small) == 0;
  }
  ~FileSizeLimit() { ::setrlimit(RLIMIT_FSIZE, &saved_); }
  bool ok() const { return ok_; }

 private:
  rlimit saved_{};
  bool ok_ = false;
};

// Past a file size limit (as on a full disk) storing an artifact fails with
// RESOURCE_EXHAUSTED and leaves nothing: no temporary file, and no manifest
// without its artifact.
TEST(LocalArtifactStoreTest, AWriteThatRunsOutOfRoomLeavesNothing) {
  const std::string dir = TempDir("artifacts_full");
  auto store = LocalArtifactStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<StoredArtifact> stored;
  {
    FileSizeLimit limit(4096);
    ASSERT_TRUE(limit.ok());
    stored = (*store)->Put("job-1", std::string(10000, 'q'), "{\"job\": 1}");
  }
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kResourceExhausted) << stored.status();
  EXPECT_TRUE(fs::is_empty(dir)) << "left behind: " << fs::directory_iterator(dir)->path();
  // With room again the same artifact is stored whole.
  stored = (*store)->Put("job-1", std::string(10000, 'q'), "{\"job\": 1}");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(*(*store)->Read(stored->sha256), std::string(10000, 'q'));
}

// Ranges stream an artifact piece by piece: what is asked for, fewer bytes
// at the end, none past it; NOT_FOUND for an artifact not stored.
TEST(LocalArtifactStoreTest, RangesReadThePiecesOfAnArtifact) {
  auto store = LocalArtifactStore::Open(TempDir("artifact_ranges"));
  ASSERT_TRUE(store.ok()) << store.status();
  std::string bytes;
  for (int i = 0; i < 10000; ++i) bytes.push_back(static_cast<char>(i * 7));
  absl::StatusOr<StoredArtifact> stored = (*store)->Put("job-1", bytes, "{}");
  ASSERT_TRUE(stored.ok()) << stored.status();
  std::string joined;
  for (uint64_t offset = 0; offset < bytes.size(); offset += 3000) {
    absl::StatusOr<std::string> piece = (*store)->ReadRange(stored->sha256, offset, 3000);
    ASSERT_TRUE(piece.ok()) << piece.status();
    EXPECT_EQ(piece->size(), std::min<size_t>(3000, bytes.size() - offset));
    joined += *piece;
  }
  EXPECT_EQ(joined, bytes);
  EXPECT_EQ(*(*store)->ReadRange(stored->sha256, 10000, 100), "");
  EXPECT_EQ(*(*store)->ReadRange(stored->sha256, 1u << 30, 100), "");
  EXPECT_EQ(*(*store)->ReadRange(stored->sha256, 9990, 0), "");
  EXPECT_EQ((*store)->ReadRange(std::string(64, 'a'), 0, 10).status().code(), absl::StatusCode::kNotFound);
}

TEST(BlobStoreTest, AnUploadThatRunsOutOfRoomIsResourceExhaustedAndLeavesNothing) {
  const std::string dir = TempDir("blobs_full");
  auto store = LocalBlobStore::Open(dir, 1 << 20);
  ASSERT_TRUE(store.ok()) << store.status();
  absl::Status appended;
  {
    FileSizeLimit limit(4096);
    ASSERT_TRUE(limit.ok());
    auto upload = (*store)->BeginUpload("", 0);
    ASSERT_TRUE(upload.ok()) << upload.status();
    appended = (*upload)->Append(std::string(10000, 'u'));
  }
  EXPECT_EQ(appended.code(), absl::StatusCode::kResourceExhausted) << appended;
  EXPECT_THAT(appended.message(), HasSubstr("cannot write upload"));
  EXPECT_TRUE(fs::is_empty(dir)) << "left behind: " << fs::directory_iterator(dir)->path();
}

TEST(BlobStoreTest, UploadVerifiesShaAndLimit) {
  std::string dir = TempDir("blobs");
  auto store = LocalBlobStore::Open(dir, 10);
  ASSERT_TRUE(store.ok());
  const std::string sha = engine::Sha256Hex("hello world");
  EXPECT_EQ((*store)->BeginUpload("", 11).status().code(), absl::StatusCode::kResourceExhausted);
  {
    auto upload = (*store)->BeginUpload("", 0);
    ASSERT_TRUE(upload.ok());
    EXPECT_TRUE((*upload)->Append("hello ").ok());
    EXPECT_EQ((*upload)->Append("world").code(), absl::StatusCode::kResourceExhausted);
  }
  auto big = LocalBlobStore::Open(dir, 100);
  {
    auto upload = (*big)->BeginUpload(std::string(64, '0'), 0);
    ASSERT_TRUE((*upload)->Append("hello world").ok());
    const absl::Status mismatch = (*upload)->Commit().status();
    EXPECT_EQ(mismatch.code(), absl::StatusCode::kDataLoss);
    // Said as what it may be: a wrong hash as much as damaged bytes.
    EXPECT_NE(mismatch.message().find("(a wrong hash given, or bytes changed on the way); nothing was stored"),
              std::string::npos)
        << mismatch;
  }
  auto upload = (*big)->BeginUpload(sha, 11);
  ASSERT_TRUE((*upload)->Append("hello ").ok() && (*upload)->Append("world").ok());
  auto info = (*upload)->Commit();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->sha256, sha);
  EXPECT_EQ(info->size_bytes, 11);
  EXPECT_TRUE((*big)->PathOf(sha, "model.blob_id").ok());
  EXPECT_EQ((*big)->PathOf(std::string(64, 'b'), "model.blob_id").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ((*big)->PathOf("xyz", "model.blob_id").status().code(), absl::StatusCode::kInvalidArgument);
  // No temporary files are left behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST(BlobStoreTest, VerifiedPathOfFindsABlobWhoseBytesChangedInTheStore) {
  const std::string dir = TempDir("blobs");
  auto store = LocalBlobStore::Open(dir, 100);
  ASSERT_TRUE(store.ok());
  auto upload = (*store)->BeginUpload("", 0);
  ASSERT_TRUE(upload.ok() && (*upload)->Append("hello world").ok());
  auto info = (*upload)->Commit();
  ASSERT_TRUE(info.ok()) << info.status();
  absl::StatusOr<std::string> intact = (*store)->VerifiedPathOf(info->sha256, "calibration.dataset.blob_id");
  ASSERT_TRUE(intact.ok()) << intact.status();
  EXPECT_EQ(*intact, *(*store)->PathOf(info->sha256, "x"));

  // One byte flipped on disk, then the file cut short: both are damage.
  for (const std::string& damaged : {std::string("hello World"), std::string("hello")}) {
    {
      std::ofstream out(*intact, std::ios::binary | std::ios::trunc);
      out << damaged;
    }
    const absl::Status status = (*store)->VerifiedPathOf(info->sha256, "calibration.dataset.blob_id").status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_THAT(status.message(), HasSubstr("calibration.dataset.blob_id: blob " + info->sha256 +
                                            " is corrupted in the blob store (its bytes now hash to " +
                                            engine::Sha256Hex(damaged)));
    EXPECT_THAT(status.message(), Not(HasSubstr(dir))) << "no server paths in a client's error";
    // Only what reads the bytes checks them: listing and deleting still work.
    EXPECT_TRUE((*store)->PathOf(info->sha256, "x").ok());
  }
  EXPECT_EQ((*store)->VerifiedPathOf(std::string(64, 'c'), "model.blob_id").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->VerifiedPathOf("xyz", "model.blob_id").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BlobStoreTest, CutOffOrOversizedUploadsAgainstTheDeclaredSizeAreNeverBlobs) {
  std::string dir = TempDir("blobs");
  auto store = LocalBlobStore::Open(dir, 100);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->BeginUpload("", -1).status().code(), absl::StatusCode::kInvalidArgument);
  {
    auto upload = (*store)->BeginUpload("", 11);
    ASSERT_TRUE((*upload)->Append("hello ").ok());
    auto committed = (*upload)->Commit();  // the client stopped after 6 of 11 bytes
    EXPECT_EQ(committed.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(committed.status().message(), HasSubstr("6 of the 11"));
  }
  {
    auto upload = (*store)->BeginUpload("", 5);
    EXPECT_EQ((*upload)->Append("hello world").code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ((*store)->PathOf(engine::Sha256Hex("hello "), "id").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(fs::is_empty(dir));  // neither blobs nor temporaries
}

TEST(DataDirLockTest, OneOwnerAtATimeAndTheRefusalNamesIt) {
  const std::string dir = TempDir("lock");
  auto first = DataDirLock::Acquire(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = DataDirLock::Acquire(dir);  // flock conflicts across open files, even in one process
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("in use by another quantd"));
  EXPECT_THAT(second.status().message(), HasSubstr(absl::StrCat("pid ", ::getpid())));
  first->reset();
  EXPECT_TRUE(DataDirLock::Acquire(dir).ok());  // released with its owner
}

// LOCK keeps a dead owner's pid after a crash and reads like a stale pidfile.
// Deleting it while quantd ran let a second quantd start on the same data
// dir, which re-queued the first one's running job as its own interrupted
// one: the directory's own lock still refuses it.
TEST(DataDirLockTest, DeletingTheLockFileDoesNotLetASecondOwnerIn) {
  const std::string dir = TempDir("lock_deleted");
  auto first = DataDirLock::Acquire(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(fs::remove(fs::path(dir) / "LOCK"));
  auto second = DataDirLock::Acquire(dir);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("is in use by another quantd (its LOCK file was deleted"));
  first->reset();
  EXPECT_TRUE(DataDirLock::Acquire(dir).ok());
}

// Blob life cycle: listed, touched by use, collected only when unused and
// idle for the TTL, never while a queued or running job refers to it.
TEST(BlobStoreTest, RemoveIfDecidesWithNoSubmitInBetween) {
  const std::string dir = TempDir("blob_remove_if");
  auto blobs = LocalBlobStore::Open(dir, 1000);
  ASSERT_TRUE(blobs.ok());
  auto upload = (*blobs)->BeginUpload("", 0);
  ASSERT_TRUE((*upload)->Append("bytes").ok());
  absl::StatusOr<BlobInfo> blob = (*upload)->Commit();
  ASSERT_TRUE(blob.ok());
  EXPECT_FALSE(*(*blobs)->RemoveIf(blob->sha256, [] { return false; }));
  EXPECT_TRUE((*blobs)->PathOf(blob->sha256, "id").ok());
  EXPECT_EQ((*blobs)->RemoveIf(blob->sha256, []() -> absl::StatusOr<bool> { return absl::InternalError("store"); })
                .status()
                .code(),
            absl::StatusCode::kInternal);
  EXPECT_TRUE((*blobs)->PathOf(blob->sha256, "id").ok());
  // While a submit holds a Use, a removal waits: its check cannot run until
  // the submit's job is recorded.
  absl::Notification checked;
  absl::StatusOr<bool> removed;
  std::thread remover;
  {
    const BlobStore::Use submitting(**blobs);
    remover = std::thread([&] {
      removed = (*blobs)->RemoveIf(blob->sha256, [&] {
        checked.Notify();
        return true;
      });
    });
    EXPECT_FALSE(checked.WaitForNotificationWithTimeout(absl::Milliseconds(100)));
  }
  remover.join();
  EXPECT_TRUE(checked.HasBeenNotified());
  ASSERT_TRUE(removed.ok());
  EXPECT_TRUE(*removed);
  EXPECT_EQ((*blobs)->PathOf(blob->sha256, "id").status().code(), absl::StatusCode::kNotFound);
}

// The same bytes uploaded again while the sweep decides to remove the idle
// blob: the upload's commit waits for the decision, so the fresh file it
// reports as stored is not the one removed.
TEST(BlobStoreTest, ACommitWaitsWhileTheSweepDecidesOnTheSameBlob) {
  const std::string dir = TempDir("blob_commit_vs_sweep");
  auto blobs = LocalBlobStore::Open(dir, 1000);
  ASSERT_TRUE(blobs.ok());
  auto first = (*blobs)->BeginUpload("", 0);
  ASSERT_TRUE((*first)->Append("bytes").ok());
  absl::StatusOr<BlobInfo> blob = (*first)->Commit();
  ASSERT_TRUE(blob.ok());
  auto again = (*blobs)->BeginUpload("", 0);
  ASSERT_TRUE((*again)->Append("bytes").ok());

  absl::Notification deciding, committed;
  bool committed_while_deciding = false;
  absl::StatusOr<BlobInfo> second;
  std::thread sweep([&] {
    ASSERT_TRUE(*(*blobs)->RemoveIf(blob->sha256, [&] {
      deciding.Notify();
      committed_while_deciding = committed.WaitForNotificationWithTimeout(absl::Milliseconds(100));
      return true;  // it looked idle
    }));
  });
  deciding.WaitForNotification();
  std::thread upload([&] {
    second = (*again)->Commit();
    committed.Notify();
  });
  sweep.join();
  upload.join();
  EXPECT_FALSE(committed_while_deciding);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->already_existed);  // the old file went first
  EXPECT_TRUE((*blobs)->PathOf(blob->sha256, "id").ok()) << "a blob reported stored is gone";
}

TEST(BlobCollectorTest, CollectsOnlyIdleBlobsNoActiveJobUses) {
  const std::string dir = TempDir("gc");
  auto blobs = LocalBlobStore::Open(dir + "/blobs", 1000);
  auto jobs = SqliteJobStore::Open(dir + "/jobs.db");
  ASSERT_TRUE(blobs.ok() && jobs.ok());
  auto put = [&](const std::string& content) {
    auto upload = (*blobs)->BeginUpload("", 0);
    EXPECT_TRUE((*upload)->Append(content).ok());
    return (*upload)->Commit()->sha256;
  };
  const std::string idle = put("idle"), used = put("used by a queued job"), recent = put("recent");
  const absl::Time now = absl::FromUnixSeconds(2000000000);
  ASSERT_TRUE((*blobs)->Touch(idle, now - absl::Hours(48)).ok());
  ASSERT_TRUE((*blobs)->Touch(used, now - absl::Hours(48)).ok());
  ASSERT_TRUE((*blobs)->Touch(recent, now - absl::Hours(1)).ok());
  Job job = NewJob("q", 1);
  job.spec.model_path = dir + "/blobs/" + used;
  ASSERT_TRUE((*jobs)->Create(job, 10).ok());
  EXPECT_THAT(*(*jobs)->ActiveJobsUsing(used), ::testing::ElementsAre("q"));

  auto listed = (*blobs)->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 3u);
  EXPECT_EQ((*blobs)->Stat(idle, "id")->last_used, now - absl::Hours(48));

  auto removed = CollectUnusedBlobs(**blobs, **jobs, now, absl::Hours(24));
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_THAT(*removed, ::testing::ElementsAre(idle));
  EXPECT_EQ((*blobs)->Stat(idle, "id").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*blobs)->Stat(used, "id").ok());
  EXPECT_TRUE((*blobs)->Stat(recent, "id").ok());

  // Once the job has finished, its blob is collected like any other.
  ASSERT_TRUE((*jobs)->ClaimNext(now, "local", absl::Hours(1)).ok());
  JobResult result;
  ASSERT_TRUE((*jobs)->Finish("q", 1, JobState::kSucceeded, result, now).ok());
  EXPECT_THAT(*CollectUnusedBlobs(**blobs, **jobs, now, absl::Hours(24)), ::testing::ElementsAre(used));
  EXPECT_EQ((*blobs)->Remove(used).code(), absl::StatusCode::kNotFound);
}

// Another replica sharing the blob store: its submit touches a blob between
// this process's listing and its decision, outside this process's locks.
class TouchedByAnotherReplica final : public BlobStore {
 public:
  TouchedByAnotherReplica(const BlobStore* shared, std::string blob_id, absl::Time when)
      : shared_(shared), blob_id_(std::move(blob_id)), when_(when) {}
  int stats() const { return stats_; }

  absl::StatusOr<std::vector<StoredBlob>> List() const override { return shared_->List(); }
  absl::StatusOr<StoredBlob> Stat(const std::string& id, const std::string& field) const override {
    if (id == blob_id_ && stats_++ == 0) {
      EXPECT_TRUE(shared_->Touch(id, when_).ok());
    }
    return shared_->Stat(id, field);
  }
  absl::Status Remove(const std::string& id) const override { return shared_->Remove(id); }
  absl::Status Touch(const std::string& id, absl::Time now) const override { return shared_->Touch(id, now); }
  absl::StatusOr<std::unique_ptr<BlobUpload>> BeginUpload(const std::string& sha256, int64_t size) const override {
    return shared_->BeginUpload(sha256, size);
  }
  absl::StatusOr<std::string> PathOf(const std::string& id, const std::string& field) const override {
    return shared_->PathOf(id, field);
  }
  absl::StatusOr<std::string> VerifiedPathOf(const std::string& id, const std::string& field) const override {
    return shared_->VerifiedPathOf(id, field);
  }
  int64_t max_bytes() const override { return shared_->max_bytes(); }

 private:
  const BlobStore* shared_;
  const std::string blob_id_;
  const absl::Time when_;
  mutable int stats_ = 0;
};

TEST(BlobCollectorTest, ABlobAnotherReplicaSubmitsWithWhileTheSweepDecidesStays) {
  const std::string dir = TempDir("gc_shared");
  auto local = LocalBlobStore::Open(dir + "/blobs", 1000);
  auto jobs = SqliteJobStore::Open(dir + "/jobs.db");
  ASSERT_TRUE(local.ok() && jobs.ok());
  auto upload = (*local)->BeginUpload("", 0);
  ASSERT_TRUE((*upload)->Append("model bytes").ok());
  const std::string id = (*upload)->Commit()->sha256;
  const absl::Time now = absl::FromUnixSeconds(2000000000);
  ASSERT_TRUE((*local)->Touch(id, now - absl::Hours(48)).ok());

  // Listed as idle for two days; the other replica's submit (now) lands
  // before the decision, and its job is not recorded yet.
  TouchedByAnotherReplica shared(local->get(), id, now);
  auto removed = CollectUnusedBlobs(shared, **jobs, now, absl::Hours(24));
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_TRUE(removed->empty());
  EXPECT_EQ(shared.stats(), 1) << "the decision did not look at the blob's last use again";
  EXPECT_TRUE((*local)->PathOf(id, "id").ok()) << "a blob just submitted with was removed";

  // Idle again a day later: collected.
  removed = CollectUnusedBlobs(shared, **jobs, now + absl::Hours(25), absl::Hours(24));
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_THAT(*removed, ::testing::ElementsAre(id));
}

TEST(ArtifactSweepTest, RemovesWhatNoJobHoldsAndSparesWhatARunningJobPinned) {
  const std::string dir = TempDir("sweep");
  auto jobs = SqliteJobStore::Open(dir + "/jobs.db");
  auto artifacts = LocalArtifactStore::Open(dir + "/artifacts");
  ASSERT_TRUE(jobs.ok() && artifacts.ok());
  const absl::Time now = absl::FromUnixSeconds(10);
  // "held" succeeded with its artifact; "rerun" stored the same bytes, then
  // failed; "crashed" stored other bytes and failed too.
  auto held = (*artifacts)->Put("held", "int8 bytes", "{}");
  auto rerun = (*artifacts)->Put("rerun", "int8 bytes", "{}");
  auto crashed = (*artifacts)->Put("crashed", "other bytes", "{}");
  ASSERT_TRUE(held.ok() && rerun.ok() && crashed.ok());
  for (const char* id : {"held", "rerun", "crashed", "lost"}) {
    ASSERT_TRUE((*jobs)->Create(NewJob(id, 1), 10).ok());
    ASSERT_TRUE((*jobs)->ClaimNext(now, "local", absl::Hours(1)).ok());
    JobResult result;
    if (std::string(id) == "held") {
      result.artifact_sha256 = held->sha256;
      result.artifact_id = ArtifactIdFor(held->sha256);
    }
    ASSERT_TRUE((*jobs)->Finish(id, 1, std::string(id) == "held" ? JobState::kSucceeded : JobState::kFailed, result,
                                now)
                    .ok());
  }
  // A manifest whose bytes never made it (a crash between the two writes).
  const std::string lone = std::string(64, 'e');
  std::ofstream((*artifacts)->ManifestPath(lone, "lost")) << "{}";
  // "storing" runs (in this process or another) and has stored its bytes,
  // pinned first, but not recorded them yet.
  ASSERT_TRUE((*jobs)->Create(NewJob("storing", 2), 10).ok());
  ASSERT_TRUE((*jobs)->ClaimNext(now, "host-2:/data", absl::Hours(1)).ok());
  const std::string storing_sha = engine::Sha256Hex("storing bytes");
  ASSERT_TRUE((*jobs)->PinArtifact("storing", 1, ArtifactIdFor(storing_sha)).ok());
  ASSERT_TRUE((*artifacts)->Put("storing", "storing bytes", "{}").ok());

  auto swept = RemoveUnheldArtifacts(**artifacts, **jobs);
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->artifacts, 2);  // "crashed"'s bytes, and the lone manifest
  EXPECT_EQ(swept->manifests, 1);  // "rerun"'s manifest of the bytes "held" keeps
  auto listed = (*artifacts)->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_THAT(listed->at(held->sha256), ::testing::ElementsAre("held"));
  EXPECT_THAT(listed->at(storing_sha), ::testing::ElementsAre("storing"));
  EXPECT_TRUE((*artifacts)->Contains(held->sha256));
  EXPECT_TRUE((*artifacts)->Contains(storing_sha));
  // Nothing left to sweep.
  swept = RemoveUnheldArtifacts(**artifacts, **jobs);
  EXPECT_EQ(swept->artifacts + swept->manifests, 0);
}

// A jobs.db restored from a backup is older than the artifacts: the files of
// jobs it never knew are their only record and stay, also once the store
// has newer jobs of its own. Files of jobs it deleted (a removal that failed
// after the deletion) or that failed still go.
TEST(ArtifactSweepTest, KeepsTheFilesOfJobsTheStoreNeverKnew) {
  const std::string dir = TempDir("sweep_restored");
  auto jobs = SqliteJobStore::Open(dir + "/jobs.db");
  auto artifacts = LocalArtifactStore::Open(dir + "/artifacts");
  ASSERT_TRUE(jobs.ok() && artifacts.ok());
  auto finish = [&](const std::string& id, JobState state, const std::string& bytes) {
    ASSERT_TRUE((*jobs)->Create(NewJob(id, 100), 10).ok());
    ASSERT_TRUE((*jobs)->ClaimNext(absl::FromUnixSeconds(100), "local", absl::Hours(1)).ok());
    JobResult result;
    if (state == JobState::kSucceeded) {
      result.artifact_sha256 = engine::Sha256Hex(bytes);
      result.artifact_id = ArtifactIdFor(result.artifact_sha256);
    }
    ASSERT_TRUE((*jobs)->Finish(id, 1, state, result, absl::FromUnixSeconds(100)).ok());
  };
  finish("failed", JobState::kFailed, "");
  finish("deleted", JobState::kSucceeded, "deleted job's bytes");
  auto unreleased = [](const Job&, bool) { return absl::InternalError("disk"); };  // its files stay
  ASSERT_TRUE((*jobs)->Delete("deleted", unreleased).ok());
  EXPECT_TRUE(*(*jobs)->WasDeleted("deleted"));
  EXPECT_FALSE(*(*jobs)->WasDeleted("failed"));
  auto deleted = (*artifacts)->Put("deleted", "deleted job's bytes", "{}");
  auto failed = (*artifacts)->Put("failed", "failed job's bytes", "{}");
  auto kept = (*artifacts)->Put("unknown", "unknown job's bytes", "{}");
  auto shared = (*artifacts)->Put("unknown-too", "unknown job's bytes", "{}");  // the same bytes, a second manifest
  ASSERT_TRUE(deleted.ok() && failed.ok() && kept.ok() && shared.ok());

  auto swept = RemoveUnheldArtifacts(**artifacts, **jobs);
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->artifacts, 2);  // the deleted job's and the failed job's
  EXPECT_EQ(swept->kept_unknown, 1);
  // Named for the log: the artifacts removed, the unknown jobs kept.
  EXPECT_THAT(swept->removed_ids, ::testing::UnorderedElementsAre(ArtifactIdFor(deleted->sha256),
                                                                  ArtifactIdFor(failed->sha256)));
  EXPECT_THAT(swept->unknown_jobs, ::testing::UnorderedElementsAre("unknown", "unknown-too"));
  EXPECT_FALSE((*artifacts)->Contains(deleted->sha256));
  EXPECT_FALSE((*artifacts)->Contains(failed->sha256));
  ASSERT_TRUE((*artifacts)->Contains(kept->sha256));
  EXPECT_THAT((*artifacts)->List()->at(kept->sha256), ::testing::UnorderedElementsAre("unknown", "unknown-too"));

  // A newer job of the store's own changes nothing for them.
  finish("newer", JobState::kFailed, "");
  swept = RemoveUnheldArtifacts(**artifacts, **jobs);
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->artifacts, 0);
  EXPECT_EQ(swept->kept_unknown, 1);
  EXPECT_TRUE((*artifacts)->Contains(kept->sha256));
}

TEST(ArtifactSweepTest, FirstNamesSaysHowManyItLeftOut) {
  EXPECT_EQ(FirstNames({}, 0), "");
  EXPECT_EQ(FirstNames({"b", "a"}, 2), "a, b");
  EXPECT_EQ(FirstNames({"a", "b", "c", "d"}, 4, 2), "a, b and 2 more");
  // Of more than the set kept.
  EXPECT_EQ(FirstNames({"a", "b", "c"}, 150, 2), "a, b and 148 more");
}

TEST(DataQuotaTest, UploadsAndArtifactsBeyondTheQuotaAreRefusedAndLeaveNothing) {
  const std::string dir = TempDir("quota");
  DataQuota quota(dir, 100);
  auto blobs = LocalBlobStore::Open(dir + "/blobs", 1000, &quota);
  auto artifacts = LocalArtifactStore::Open(dir + "/artifacts", &quota);
  ASSERT_TRUE(blobs.ok() && artifacts.ok());
  EXPECT_EQ((*blobs)->BeginUpload("", 101).status().code(), absl::StatusCode::kResourceExhausted);
  {
    auto upload = (*blobs)->BeginUpload("", 60);
    ASSERT_TRUE((*upload)->Append(std::string(60, 'x')).ok());
    ASSERT_TRUE((*upload)->Commit().ok());
  }
  EXPECT_EQ(*quota.UsedBytes(), 60);
  auto put = (*artifacts)->Put("job-1", std::string(50, 'a'), "{}");
  EXPECT_EQ(put.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(put.status().message(), HasSubstr("--max_data_bytes"));
  EXPECT_TRUE(fs::is_empty(dir + "/artifacts"));
  EXPECT_TRUE((*artifacts)->Put("job-1", std::string(30, 'a'), "{}").ok());  // 92 of 100 bytes used
  // An identical job's artifact costs only its manifest.
  EXPECT_TRUE((*artifacts)->Put("job-2", std::string(30, 'a'), "{}").ok());
  EXPECT_EQ((*artifacts)->Put("job-3", std::string(30, 'b'), "{}").status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(DataQuota(dir, 0).Check(int64_t{1} << 40, "anything").ok());  // 0 = no limit
}

TEST(DataQuotaTest, TwoArtifactsStoredAtOnceCannotBothTakeTheRoomLeft) {
  // Room for one 60-byte artifact and its manifest, not two: whichever
  // thread checks second sees the first one's reservation (a check alone
  // let both through when they overlapped).
  for (int round = 0; round < 20; ++round) {
    const std::string dir = TempDir(absl::StrCat("quota_race_", round));
    DataQuota quota(dir, 100);
    auto artifacts = LocalArtifactStore::Open(dir + "/artifacts", &quota);
    ASSERT_TRUE(artifacts.ok());
    absl::Status first, second;
    std::thread a([&] { first = (*artifacts)->Put("job-a", std::string(60, 'a'), "{}").status(); });
    std::thread b([&] { second = (*artifacts)->Put("job-b", std::string(60, 'b'), "{}").status(); });
    a.join();
    b.join();
    EXPECT_NE(first.ok(), second.ok()) << "round " << round << ": " << first << " / " << second;
    EXPECT_EQ(quota.ReservedBytes(), 0);
    EXPECT_LE(*quota.UsedBytes(), 100);
  }
}

// An upload that declares no size reserves room before each step is
// written. Checked only every 16 MiB received, uploads under 16 MiB were
// never checked: six of 15 MiB stored 94 MB against a 20 MB quota.
TEST(DataQuotaTest, UploadsOfUndeclaredSizeReserveBeforeTheyWrite) {
  const std::string dir = TempDir("quota_undeclared");
  DataQuota quota(dir, 100);
  auto blobs = LocalBlobStore::Open(dir + "/blobs", 1000, &quota);
  ASSERT_TRUE(blobs.ok());
  auto first = (*blobs)->BeginUpload("", 0);
  auto second = (*blobs)->BeginUpload("", 0);
  ASSERT_TRUE(first.ok() && second.ok());  // no room for a 16 MiB step: none taken yet
  ASSERT_TRUE((*first)->Append(std::string(60, 'x')).ok());
  absl::Status refused = (*second)->Append(std::string(60, 'y'));
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("--max_data_bytes"));
  ASSERT_TRUE((*first)->Commit().ok());
  EXPECT_EQ(*quota.UsedBytes(), 60);
  EXPECT_EQ(quota.ReservedBytes(), 0);
  // With room, one reservation covers many chunks.
  DataQuota roomy(dir, int64_t{1} << 30);
  auto blobs_roomy = LocalBlobStore::Open(dir + "/blobs", 1000, &roomy);
  auto third = (*blobs_roomy)->BeginUpload("", 0);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(roomy.ReservedBytes(), int64_t{16} << 20);
  ASSERT_TRUE((*third)->Append(std::string(10, 'z')).ok());
  EXPECT_EQ(roomy.ReservedBytes(), (int64_t{16} << 20) - 10);
  ASSERT_TRUE((*third)->Commit().ok());
  EXPECT_EQ(roomy.ReservedBytes(), 0);
}

TEST(DataQuotaTest, UploadsInProgressReserveTheirDeclaredSize) {
  const std::string dir = TempDir("quota_reserve");
  DataQuota quota(dir, 100);
  auto blobs = LocalBlobStore::Open(dir + "/blobs", 1000, &quota);
  auto artifacts = LocalArtifactStore::Open(dir + "/artifacts", &quota);
  ASSERT_TRUE(blobs.ok() && artifacts.ok());
  // Each fits alone; together they would not.
  auto first = (*blobs)->BeginUpload("", 60);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(quota.ReservedBytes(), 60);
  auto second = (*blobs)->BeginUpload("", 60);
  ASSERT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(second.status().message(), HasSubstr("60 reserved by uploads in progress"));
  // A declared size near the int64 limit (--max_upload_bytes may allow it)
  // is refused, not wrapped around into room.
  EXPECT_EQ(quota.Reserve(std::numeric_limits<int64_t>::max(), "metadata.size_bytes").status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(quota.ReservedBytes(), 60);
  // Nor may an artifact take the reserved bytes.
  EXPECT_EQ((*artifacts)->Put("job-1", std::string(50, 'a'), "{}").status().code(),
            absl::StatusCode::kResourceExhausted);
  // Bytes written move from the reservation to the file: the sum stays.
  ASSERT_TRUE((*first)->Append(std::string(25, 'x')).ok());
  EXPECT_EQ(quota.ReservedBytes(), 35);
  EXPECT_EQ(*quota.UsedBytes() + quota.ReservedBytes(), 60);
  EXPECT_EQ((*blobs)->BeginUpload("", 41).status().code(), absl::StatusCode::kResourceExhausted);
  {
    auto fits = (*blobs)->BeginUpload("", 40);
    ASSERT_TRUE(fits.ok());
    EXPECT_EQ(quota.ReservedBytes(), 75);
  }  // abandoned: its reservation goes with it
  EXPECT_EQ(quota.ReservedBytes(), 35);
  ASSERT_TRUE((*first)->Append(std::string(35, 'x')).ok());
  ASSERT_TRUE((*first)->Commit().ok());
  EXPECT_EQ(quota.ReservedBytes(), 0);
  EXPECT_EQ(*quota.UsedBytes(), 60);
  // A failed upload hands its reservation back too.
  auto cut = (*blobs)->BeginUpload("", 40);
  ASSERT_TRUE(cut.ok());
  ASSERT_TRUE((*cut)->Append(std::string(10, 'y')).ok());
  EXPECT_EQ((*cut)->Commit().status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(quota.ReservedBytes(), 0);
  EXPECT_EQ(*quota.UsedBytes(), 60);
  // No limit: nothing is held.
  DataQuota unlimited(dir, 0);
  auto held = unlimited.Reserve(int64_t{1} << 40, "upload");
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(unlimited.ReservedBytes(), 0);
}

TEST(LocalArtifactStoreTest, PutReadRemoveAndCleansTemporaries) {
  std::string dir = TempDir("artifacts");
  std::ofstream(dir + "/.tmp.leftover.pt.ABCDEF") << "half";
  auto store = LocalArtifactStore::Open(dir);
  ASSERT_TRUE(store.ok());
  EXPECT_FALSE(fs::exists(dir + "/.tmp.leftover.pt.ABCDEF"));
  auto stored = (*store)->Put("job-1", "artifact bytes", "{}");
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->sha256, engine::Sha256Hex("artifact bytes"));
  EXPECT_EQ(*(*store)->Read(stored->sha256), "artifact bytes");
  EXPECT_TRUE((*store)->Put("job-1", "artifact bytes", "{}").ok());  // idempotent
  EXPECT_TRUE((*store)->Remove(stored->sha256).ok());
  EXPECT_EQ((*store)->Read(stored->sha256).status().code(), absl::StatusCode::kNotFound);
}

// A file that cannot be removed is an error, not a success: a deletion or a
// sweep told OK counts the bytes gone while they stay (and count against the
// quota). Removing what is already gone is fine. (The test runs as root, so
// the failure is a non-empty folder where a file is expected.)
TEST(LocalArtifactStoreTest, FilesThatCannotBeRemovedAreAnError) {
  const std::string dir = TempDir("unremovable");
  auto store = LocalArtifactStore::Open(dir);
  ASSERT_TRUE(store.ok());
  const std::string sha = engine::Sha256Hex("stuck bytes");
  fs::create_directories((*store)->ArtifactPath(sha));
  std::ofstream((*store)->ArtifactPath(sha) + "/inside") << "x";
  const absl::Status removed = (*store)->Remove(sha);
  EXPECT_FALSE(removed.ok());
  EXPECT_THAT(std::string(removed.message()), HasSubstr(sha));
  fs::create_directories((*store)->ManifestPath(sha, "job-1"));
  std::ofstream((*store)->ManifestPath(sha, "job-1") + "/inside") << "x";
  const absl::Status manifest_removed = (*store)->RemoveManifest(sha, "job-1");
  EXPECT_FALSE(manifest_removed.ok());
  EXPECT_THAT(std::string(manifest_removed.message()), HasSubstr("job-1"));
  fs::remove_all(dir);
  ASSERT_TRUE(fs::create_directories(dir));
  EXPECT_TRUE((*store)->Remove(sha).ok());
  EXPECT_TRUE((*store)->RemoveManifest(sha, "job-1").ok());
}

// An identical job keeps intact bytes as they are, and replaces bytes that
// were damaged since they were stored (flipped or cut short).
TEST(LocalArtifactStoreTest, AnIdenticalJobRepairsADamagedArtifactAndKeepsAnIntactOne) {
  const std::string dir = TempDir("repair");
  auto store = LocalArtifactStore::Open(dir);
  ASSERT_TRUE(store.ok());
  const std::string bytes(3 << 20, 'q');  // over one read chunk
  auto stored = (*store)->Put("job-a", bytes, "{}");
  ASSERT_TRUE(stored.ok()) << stored.status();
  const std::string path = dir + "/" + stored->sha256 + ".pt";
  auto inode = [&] {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? st.st_ino : ino_t{0};
  };
  const ino_t first = inode();
  ASSERT_TRUE((*store)->Put("job-b", bytes, "{}").ok());
  EXPECT_EQ(inode(), first) << "intact bytes were written again";
  for (const bool truncate : {false, true}) {
    {
      std::fstream damage(path, std::ios::in | std::ios::out | std::ios::binary);
      damage.seekp(static_cast<std::streamoff>(bytes.size() - 7));
      damage.put('x');
    }
    if (truncate) fs::resize_file(path, bytes.size() / 2);
    ASSERT_NE(*(*store)->Read(stored->sha256), bytes);
    ASSERT_TRUE((*store)->Put("job-c", bytes, "{}").ok());
    EXPECT_EQ(*(*store)->Read(stored->sha256), bytes) << (truncate ? "truncated" : "flipped");
  }
}

// Identical jobs share the artifact's bytes; each keeps its own manifest
// until it is deleted.
TEST(LocalArtifactStoreTest, EachJobKeepsItsOwnManifest) {
  const std::string dir = TempDir("manifests");
  auto store = LocalArtifactStore::Open(dir);
  ASSERT_TRUE(store.ok());
  auto first = (*store)->Put("job-a", "same bytes", "{\"job\": \"a\"}");
  auto second = (*store)->Put("job-b", "same bytes", "{\"job\": \"b\"}");
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_EQ(first->sha256, second->sha256);
  const std::string sha = first->sha256;
  auto read = [&](const std::string& job) {
    std::ifstream in(dir + "/" + sha + "." + job + ".manifest.json");
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(read("job-a"), "{\"job\": \"a\"}");
  EXPECT_EQ(read("job-b"), "{\"job\": \"b\"}");
  ASSERT_TRUE((*store)->RemoveManifest(sha, "job-a").ok());
  EXPECT_EQ(read("job-a"), "");
  EXPECT_EQ(read("job-b"), "{\"job\": \"b\"}");
  EXPECT_TRUE((*store)->Contains(sha));
  ASSERT_TRUE((*store)->Remove(sha).ok());
  EXPECT_TRUE(fs::is_empty(dir));
  EXPECT_EQ((*store)->Put("../job", "x", "{}").status().code(), absl::StatusCode::kInvalidArgument);
}

class RecordingWatcher : public JobWatcher {
 public:
  void OnJobEvent(const JobEvent& event) override { events.push_back(event); }
  void OnHubClosing() override { ++closings; }
  std::vector<JobEvent> events;
  int closings = 0;
};

TEST(JobEventHubTest, CloseAllEndsEveryWatchAndRefusesNewOnes) {
  FakeClock clock;
  JobEventHub hub(&clock);
  Job a = NewJob("a", 1), b = NewJob("b", 2);
  a.state = b.state = JobState::kRunning;
  auto load_a = [&]() -> absl::StatusOr<Job> { return a; };
  auto load_b = [&]() -> absl::StatusOr<Job> { return b; };
  RecordingWatcher on_a, on_b;
  ASSERT_TRUE(hub.Subscribe("a", load_a, &on_a).ok());
  ASSERT_TRUE(hub.Subscribe("b", load_b, &on_b).ok());
  hub.CloseAll();
  EXPECT_EQ(on_a.closings, 1);
  EXPECT_EQ(on_b.closings, 1);
  EXPECT_EQ(hub.WatcherCount("a"), 0);
  JobEvent phase;
  phase.kind = JobEvent::Kind::kPhaseStarted;
  hub.Publish(a, phase);  // nobody is told any more
  EXPECT_EQ(on_a.events.size(), 1u);
  RecordingWatcher late;
  EXPECT_EQ(hub.Subscribe("a", load_a, &late).status().code(), absl::StatusCode::kUnavailable);
}

// A client that saw events before a restart resumes with the last sequence
// it saw: the next server's events, the replayed result of a finished job
// included, all come after it.
TEST(JobEventHubTest, SequencesKeepIncreasingAcrossServerStarts) {
  const std::string path = TempDir("generations") + "/jobs.db";
  uint64_t first_generation = 0;
  {
    auto store = SqliteJobStore::Open(path);
    ASSERT_TRUE(store.ok());
    first_generation = *(*store)->NextGeneration();
  }
  auto store = SqliteJobStore::Open(path);  // the next server start
  ASSERT_TRUE(store.ok());
  const uint64_t second_generation = *(*store)->NextGeneration();
  EXPECT_EQ(second_generation, first_generation + 1);

  FakeClock clock;
  Job job = NewJob("j", 1);
  job.state = JobState::kRunning;
  JobEventHub before(&clock, first_generation);
  for (int i = 0; i < 50; ++i) before.Publish(job, JobEvent{});  // progress before the restart
  RecordingWatcher seen;
  auto loaded = [&]() -> absl::StatusOr<Job> { return job; };
  ASSERT_TRUE(before.Subscribe("j", loaded, &seen).ok());
  const uint64_t last_seen = seen.events.back().sequence;

  JobEventHub after(&clock, second_generation);
  job.state = JobState::kSucceeded;
  RecordingWatcher resumed;
  ASSERT_TRUE(after.Subscribe("j", loaded, &resumed).ok());
  ASSERT_EQ(resumed.events.size(), 2u);
  EXPECT_EQ(resumed.events[1].kind, JobEvent::Kind::kResult);
  EXPECT_GT(resumed.events[1].sequence, last_seen);  // WatchJob would not skip it
}

// The store read of a job the hub does not follow runs without the hub's
// lock: a store busy for seconds held up every publish, and Unsubscribe on
// gRPC's threads. A result published during the read (this process finished
// the job) makes it read again, so the watch is not left on a stale RUNNING.
TEST(JobEventHubTest, SubscribeReadsTheStoreWithoutTheHubsLock) {
  FakeClock clock;
  JobEventHub hub(&clock);
  Job job = NewJob("j", 1);
  job.state = JobState::kRunning;
  int loads = 0;
  bool others_went_on = false;
  auto load = [&]() -> absl::StatusOr<Job> {
    ++loads;
    if (loads == 1) {
      absl::Notification answered;
      std::thread other([&] {
        (void)hub.WatcherCount("another-job");  // takes the hub's lock
        answered.Notify();
      });
      others_went_on = answered.WaitForNotificationWithTimeout(absl::Seconds(10));
      other.join();
      Job finished = job;
      finished.state = JobState::kSucceeded;
      hub.PublishOutcome(finished);  // the job ends here while it is read
      return job;                    // what the store said before that
    }
    Job finished = job;
    finished.state = JobState::kSucceeded;
    return finished;
  };
  RecordingWatcher watcher;
  absl::StatusOr<uint64_t> token = hub.Subscribe("j", load, &watcher);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_TRUE(others_went_on) << "the hub's lock was held while the store was read";
  EXPECT_EQ(loads, 2);
  EXPECT_EQ(*token, 0u);  // finished: no subscription kept
  ASSERT_EQ(watcher.events.size(), 2u);
  EXPECT_EQ(watcher.events[0].snapshot.state, JobState::kSucceeded);
  EXPECT_EQ(watcher.events[1].kind, JobEvent::Kind::kResult);
  EXPECT_EQ(hub.WatcherCount("j"), 0);

  // Another job's stream ending meanwhile is no reason to read again (on a
  // busy server such ends used up the tries).
  Job other = NewJob("other", 2);
  other.state = JobState::kSucceeded;
  Job k = NewJob("k", 3);
  k.state = JobState::kRunning;
  int k_loads = 0;
  auto load_k = [&]() -> absl::StatusOr<Job> {
    ++k_loads;
    hub.PublishOutcome(other);
    return k;
  };
  RecordingWatcher on_k;
  absl::StatusOr<uint64_t> k_token = hub.Subscribe("k", load_k, &on_k);
  ASSERT_TRUE(k_token.ok()) << k_token.status();
  EXPECT_EQ(k_loads, 1);
  EXPECT_NE(*k_token, 0u);
  EXPECT_EQ(hub.WatcherCount("k"), 1);
}

TEST(JobEventHubTest, LateWatcherGetsSnapshotFirstThenEvents) {
  FakeClock clock;
  JobEventHub hub(&clock);
  Job job = NewJob("j", 1);
  job.state = JobState::kRunning;
  JobEvent phase;
  phase.kind = JobEvent::Kind::kPhaseStarted;
  phase.phase.phase = JobPhase::kCalibrating;
  job.phase = JobPhase::kCalibrating;
  hub.Publish(job, phase);

  RecordingWatcher early, late;
  auto never = []() -> absl::StatusOr<Job> { return absl::InternalError("not called"); };
  auto token = hub.Subscribe("j", never, &late);
  ASSERT_TRUE(token.ok());
  ASSERT_EQ(late.events.size(), 1u);
  EXPECT_EQ(late.events[0].kind, JobEvent::Kind::kSnapshot);
  EXPECT_EQ(late.events[0].snapshot.phase, JobPhase::kCalibrating);
  auto token2 = hub.Subscribe("j", never, &early);
  EXPECT_EQ(hub.WatcherCount("j"), 2);

  JobEvent result;
  result.kind = JobEvent::Kind::kResult;
  job.state = JobState::kSucceeded;
  hub.Publish(job, result);
  ASSERT_EQ(late.events.size(), 2u);
  EXPECT_EQ(late.events[1].kind, JobEvent::Kind::kResult);
  EXPECT_EQ(late.events[1].sequence, (uint64_t{1} << 32) + 2);
  EXPECT_EQ(early.events.size(), 2u);
  EXPECT_EQ(hub.WatcherCount("j"), 0);

  RecordingWatcher after_end;
  auto loaded = [&]() -> absl::StatusOr<Job> { return job; };
  auto token3 = hub.Subscribe("j", loaded, &after_end);
  ASSERT_TRUE(token3.ok());
  EXPECT_EQ(*token3, 0u);
  ASSERT_EQ(after_end.events.size(), 2u);
  EXPECT_EQ(after_end.events[0].kind, JobEvent::Kind::kSnapshot);
  EXPECT_EQ(after_end.events[1].kind, JobEvent::Kind::kResult);
}

}  // namespace
}  // namespace quantd::worker
