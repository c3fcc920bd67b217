// WorkerPool + JobRunner with a fake engine: order, cancellation at a batch
// boundary, deadlines on a fake clock, restart recovery, delete.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "worker/artifact_sweep.h"
#include "worker/engine/base/status_macros.h"
#include "worker/local_artifact_store.h"
#include "worker/sqlite_job_store.h"
#include "worker/testing/forwarding_artifact_store.h"
#include "worker/testing/forwarding_job_store.h"
#include "worker/worker_pool.h"

namespace quantd::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// Pretends to quantize: LOADING, FUSING, `batches` CALIBRATING batches,
// CONVERTING, STORING. Can stop before a batch until released, and moves a
// fake clock per batch.
class FakeEngine : public QuantizationEngine {
 public:
  absl::StatusOr<EngineOutput> Run(const engine::QuantizeOptions& options) override {
    absl::StatusOr<EngineOutput> output = RunBatches(options);
    runs_returned.fetch_add(1);
    return output;
  }
  absl::StatusOr<EngineOutput> RunBatches(const engine::QuantizeOptions& options) {
    {
      absl::MutexLock lock(&mu_);
      order_.push_back(options.model_path);
    }
    if (options.model_path == "bad") return absl::InvalidArgumentError("not a TorchScript file");
    if (options.model_path == "throws") throw std::out_of_range("basic_string::substr: __pos (which is 1) > size 0");
    auto& progress = options.progress;
    if (!progress({engine::Phase::kLoading, 0, 0})) return absl::CancelledError("c");
    if (!progress({engine::Phase::kFusing, 0, 0})) return absl::CancelledError("c");
    if (!progress({engine::Phase::kCalibrating, 0, batches})) return absl::CancelledError("c");
    for (int b = 1; b <= batches; ++b) {
      if (b == run_until_stopped_at_batch) {
        // Runs on until the pool stops it, then ends as an engine does: with
        // CANCELLED, or with an error of its own that happened meanwhile.
        paused.Notify();
        const absl::Time give_up = absl::Now() + absl::Seconds(30);
        while (progress({engine::Phase::kCalibrating, b - 1, batches}) && absl::Now() < give_up) {
          absl::SleepFor(absl::Milliseconds(1));  // a batch's worth of work
        }
        if (hold_after_stop) {  // a batch (or a model load) that runs on after the stop
          stop_seen.Notify();
          release_after_stop.WaitForNotificationWithTimeout(absl::Seconds(30));
        }
        if (options.model_path == "fails_while_stopping") return absl::DataLossError("calibration batch 3 is corrupt");
        return absl::CancelledError("c");
      }
      if (b == pause_at_batch && !paused.HasBeenNotified()) {
        paused.Notify();
        release.WaitForNotificationWithTimeout(absl::Seconds(30));
      }
      if (clock != nullptr) clock->Advance(absl::Seconds(1));
      batches_run.fetch_add(1);
      {
        absl::MutexLock lock(&mu_);
        ++batches_by_model_[options.model_path];
      }
      if (!progress({engine::Phase::kCalibrating, b, batches})) return absl::CancelledError("c");
    }
    if (!progress({engine::Phase::kConverting, 0, 0})) return absl::CancelledError("c");
    if (options.model_path == "low_quality") {  // as the quality gate refuses a model
      engine::QuantizeReport refused;
      refused.calibration_samples = batches * options.batch_size;
      refused.quality.passed = false;
      refused.quality.message = "int8 agrees with FP32 on 12% of 100 images";
      refused.advice.push_back("keep conv1 in FP32");
      if (options.refused_report != nullptr) *options.refused_report = refused;
      return absl::FailedPreconditionError(refused.quality.message);
    }
    EngineOutput output;
    output.artifact = "int8 of " + options.model_path;
    output.manifest_json = "{}";
    output.report.kernel_engine = "onednn";
    return output;
  }
  int batches_of(const std::string& model) {
    absl::MutexLock lock(&mu_);
    return batches_by_model_[model];
  }
  std::vector<std::string> order() {
    absl::MutexLock lock(&mu_);
    return order_;
  }

  int batches = 10;
  int pause_at_batch = 0;
  int run_until_stopped_at_batch = 0;
  bool hold_after_stop = false;  // with run_until_stopped_at_batch
  FakeClock* clock = nullptr;
  absl::Notification paused, release, stop_seen, release_after_stop;
  std::atomic<int> batches_run{0};
  std::atomic<int> runs_returned{0};

 private:
  absl::Mutex mu_;
  std::vector<std::string> order_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> batches_by_model_ ABSL_GUARDED_BY(mu_);
};

// An engine that finishes at once, its last check passed, after
// `as_it_returns` (a stop signal set just then: the server stopping, a cancel).
class FinishesThen : public QuantizationEngine {
 public:
  explicit FinishesThen(std::function<void()> as_it_returns) : as_it_returns_(std::move(as_it_returns)) {}
  absl::StatusOr<EngineOutput> Run(const engine::QuantizeOptions& options) override {
    if (!options.progress({engine::Phase::kConverting, 0, 0})) return absl::CancelledError("c");
    as_it_returns_();
    EngineOutput output;
    output.artifact = "int8";
    output.manifest_json = "{}";
    return output;
  }

 private:
  const std::function<void()> as_it_returns_;
};

// A job store on a disk that is full for a while: the first `claim_failures`
// ClaimNext and `finish_failures` Finish calls fail as SQLite does then.
// It also records the latest lease a renewal extended to.
class FullDiskStore : public testing::ForwardingJobStore {
 public:
  explicit FullDiskStore(JobStore* real) : ForwardingJobStore(real) {}
  absl::StatusOr<std::optional<Job>> ClaimNext(absl::Time now, const std::string& holder,
                                               absl::Duration lease) override {
    if (claim_failures.fetch_sub(1) > 0) return Full();
    absl::StatusOr<std::optional<Job>> claimed = real_->ClaimNext(now, holder, lease);
    if (after_claim && claimed.ok() && claimed->has_value()) after_claim();
    return claimed;
  }
  absl::Status RenewLease(const std::string& id, uint32_t attempt, absl::Time expires) override {
    absl::Status renewed = real_->RenewLease(id, attempt, expires);
    if (renewed.ok()) {
      absl::MutexLock lock(&renewed_mu_);
      renewed_until_ = std::max(renewed_until_, expires);
    }
    if (after_renewal) after_renewal();
    return renewed;
  }
  // Waits (real time, up to `timeout`) for a renewal that extends a lease past `t`.
  bool WaitForRenewalPast(absl::Time t, absl::Duration timeout) {
    absl::MutexLock lock(&renewed_mu_);
    auto renewed = [this, t]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(renewed_mu_) { return renewed_until_ > t; };
    return renewed_mu_.AwaitWithTimeout(absl::Condition(&renewed), timeout);
  }
  absl::StatusOr<uint64_t> NextGeneration() override {
    if (generation_failures.fetch_sub(1) > 0) return Full();
    return real_->NextGeneration();
  }
  absl::StatusOr<RecoveryCounts> RecoverInterrupted(uint32_t max_attempts, absl::Time now,
                                                    const std::string& restarted_holder) override {
    if (recover_failures.fetch_sub(1) > 0) {
      return recover_corrupt ? absl::InternalError("sqlite step: database disk image is malformed") : Full();
    }
    return real_->RecoverInterrupted(max_attempts, now, restarted_holder);
  }
  absl::Status Finish(const std::string& id, uint32_t attempt, JobState state, const JobResult& result,
                      absl::Time now) override {
    finish_calls.fetch_add(1);
    if (finish_failures.fetch_sub(1) > 0) {
      return finish_corrupt ? absl::InternalError("sqlite step: database disk image is malformed") : Full();
    }
    return real_->Finish(id, attempt, state, result, now);
  }
  absl::StatusOr<std::optional<std::string>> Release(const std::string& id, uint32_t attempt) override {
    release_calls.fetch_add(1);
    if (release_busy.fetch_sub(1) > 0) return absl::UnavailableError("sqlite step: database is locked");
    return real_->Release(id, attempt);
  }
  absl::Status PinArtifact(const std::string& id, uint32_t attempt, const std::string& artifact_id) override {
    pin_calls.fetch_add(1);
    if (pin_busy.fetch_sub(1) > 0) return absl::UnavailableError("sqlite step: database is locked");
    absl::Status pinned = real_->PinArtifact(id, attempt, artifact_id);
    if (after_pin) after_pin();
    return pinned;
  }
  absl::Status WithArtifactLocked(const std::string& artifact_id, const ArtifactHoldersUse& use) override {
    if (before_artifact_decision) before_artifact_decision();
    return real_->WithArtifactLocked(artifact_id, use);
  }
  absl::StatusOr<std::vector<std::string>> ArtifactHolders(const std::string& artifact_id) override {
    absl::StatusOr<std::vector<std::string>> holders = real_->ArtifactHolders(artifact_id);
    if (before_artifact_decision) before_artifact_decision();
    return holders;
  }

  std::function<void()> after_renewal;  // runs after each RenewLease (set before use)
  std::function<void()> after_pin;      // runs after each PinArtifact (set before use)
  // Runs as late as a caller can be outrun before it decides on an
  // artifact's files: after ArtifactHolders read them, before
  // WithArtifactLocked takes the lock (set before use).
  std::function<void()> before_artifact_decision;
  std::atomic<int> claim_failures{0};
  std::atomic<int> generation_failures{0};
  std::atomic<int> recover_failures{0};     // every RecoverInterrupted, the maintenance rounds' too
  std::atomic<bool> recover_corrupt{false};  // RecoverInterrupted's failures are INTERNAL
  std::atomic<int> finish_failures{0};
  std::atomic<int> finish_calls{0};
  std::atomic<bool> finish_corrupt{false};  // Finish's failures are not "full" but INTERNAL
  std::atomic<int> pin_busy{0};  // PinArtifact calls that find the store busy
  std::atomic<int> release_calls{0};
  std::atomic<int> release_busy{0};  // Release calls that find the store busy
  std::function<void()> after_claim;  // after a ClaimNext that claimed a job
  std::atomic<int> pin_calls{0};

 private:
  static absl::Status Full() {
    return absl::ResourceExhaustedError("sqlite step: database or disk is full (the disk holding the job store is full)");
  }
  absl::Mutex renewed_mu_;
  absl::Time renewed_until_ ABSL_GUARDED_BY(renewed_mu_) = absl::InfinitePast();
};

class WorkerPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() /
            ("pool_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name())).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    store_ = *SqliteJobStore::Open(dir_ + "/jobs.db");
    artifacts_ = *LocalArtifactStore::Open(dir_ + "/artifacts");
  }
  void TearDown() override {
    store_.reset();
    artifacts_.reset();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // A pool on the test's store, or on `store` (a wrapper of it).
  std::unique_ptr<WorkerPool> NewPool(WorkerPool::Options options = {}, Clock* clock = Clock::Real(),
                                      JobStore* store = nullptr) {
    options.idle_poll = absl::Milliseconds(20);
    auto pool = WorkerPool::Create(options, store != nullptr ? store : store_.get(), artifacts_.get(), &engine_, clock);
    EXPECT_TRUE(pool.ok()) << pool.status();
    return std::move(*pool);
  }

  // Another process on the same job store: its own SQLite connection to the
  // same file, and a pool on it (the artifacts and the engine are shared).
  struct OtherProcess {
    std::unique_ptr<SqliteJobStore> store;
    std::unique_ptr<WorkerPool> pool;  // destroyed before its store
  };
  OtherProcess NewPoolOfAnotherProcess(WorkerPool::Options options, Clock* clock = Clock::Real()) {
    OtherProcess other;
    auto store = SqliteJobStore::Open(dir_ + "/jobs.db");
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return other;
    other.store = std::move(*store);
    options.idle_poll = absl::Milliseconds(20);
    auto pool = WorkerPool::Create(options, other.store.get(), artifacts_.get(), &engine_, clock);
    EXPECT_TRUE(pool.ok()) << pool.status();
    if (pool.ok()) other.pool = std::move(*pool);
    return other;
  }

  // A process's pool options: its lease holder name, a lease renewed only by
  // the test's MaintainLeases.
  static WorkerPool::Options HolderOptions(const std::string& holder) {
    WorkerPool::Options options;
    options.holder = holder;
    options.lease = absl::Hours(1);
    return options;
  }

  // Process a ("host-a:/data", one worker) runs job "m", paused before its
  // second batch. Returns its pool and the job id ("" if it never paused).
  std::pair<std::unique_ptr<WorkerPool>, std::string> StartJobPausedInA(FakeClock* clock) {
    engine_.pause_at_batch = 2;
    auto pool = NewPool(HolderOptions("host-a:/data"), clock);
    pool->Start();
    std::string id = pool->Submit(NewJob("m"))->id;
    if (!engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20))) id.clear();
    return {std::move(pool), id};
  }

  static Job NewJob(const std::string& model) {
    Job job;
    job.spec.model_path = model;
    job.request_fingerprint = model;
    return job;
  }

  // A job `id` that ran (in another process, say) and FAILED holding no
  // artifact: files it left are the sweep's to remove. (Files of a job the
  // store never knew are kept: see artifact_sweep.h.)
  void RecordFailedJob(const std::string& id) {
    Job job = NewJob(id);
    job.id = id;
    ASSERT_TRUE(store_->Create(job, 10).ok());
    absl::StatusOr<std::optional<Job>> claimed = store_->ClaimNext(absl::Now(), "host-b:/data", absl::Hours(1));
    ASSERT_TRUE(claimed.ok() && claimed->has_value());
    ASSERT_TRUE(store_->Finish(id, 1, JobState::kFailed, JobResult(), absl::Now()).ok());
  }

  // Records `job` (its id set), claims it as process a would, and runs it
  // with `runner` as a worker does; returns what the runner returned.
  Job CreateClaimAndRun(JobRunner& runner, const Job& job, Clock& clock, StopSignals* stop,
                        absl::Time deadline = absl::InfiniteFuture()) {
    EXPECT_TRUE(store_->Create(job, 10).ok());
    absl::StatusOr<std::optional<Job>> claimed = store_->ClaimNext(clock.Now(), "host-a:/data", absl::Hours(10));
    EXPECT_TRUE(claimed.ok() && claimed->has_value());
    if (!claimed.ok() || !claimed->has_value()) return job;
    return runner.Run(**claimed, deadline, stop);
  }

  // Polls the store until the job is in `state` (bounded).
  Job WaitForState(const std::string& id, JobState state) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    Job job;
    while (absl::Now() < deadline) {
      job = *store_->Get(id);
      if (job.state == state) return job;
      absl::SleepFor(absl::Milliseconds(5));  // poll interval
    }
    ADD_FAILURE() << "job " << id << " stayed " << JobStateName(job.state);
    return job;
  }

  std::string dir_;
  FakeEngine engine_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<LocalArtifactStore> artifacts_;
};

TEST_F(WorkerPoolTest, RunsJobsInOrderAndRecordsResults) {
  auto pool = NewPool();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(pool->Submit(NewJob("m" + std::to_string(i)))->id);
  pool->Start();
  for (const std::string& id : ids) {
    Job job = WaitForState(id, JobState::kSucceeded);
    ASSERT_TRUE(job.result.has_value());
    EXPECT_EQ(job.attempt_count, 1u);
    EXPECT_EQ(job.phase, JobPhase::kStoring);
    EXPECT_EQ(job.result->artifact_sha256.size(), 64u);
    EXPECT_TRUE(artifacts_->Contains(job.result->artifact_sha256));
    std::vector<JobPhase> phases;
    for (const PhaseTiming& t : job.result->phase_timings) phases.push_back(t.phase);
    EXPECT_EQ(phases, (std::vector<JobPhase>{JobPhase::kLoading, JobPhase::kFusing,
                                             JobPhase::kCalibrating, JobPhase::kConverting,
                                             JobPhase::kStoring}));
  }
  EXPECT_EQ(engine_.order(), (std::vector<std::string>{"m0", "m1", "m2", "m3", "m4"}));
}

// While the disk is full the queued job waits and the finished one keeps
// trying to record its outcome; once space is back both go through.
TEST_F(WorkerPoolTest, AJobsOutcomeIsRecordedOnceTheStoreCanWriteAgain) {
  FullDiskStore full(store_.get());
  full.claim_failures = 3;
  full.finish_failures = 4;
  engine_.batches = 2;
  WorkerPool::Options options;
  options.idle_poll = absl::Milliseconds(5);
  options.finish_retry_backoff = absl::Milliseconds(1);
  auto pool = WorkerPool::Create(options, &full, artifacts_.get(), &engine_, Clock::Real());
  ASSERT_TRUE(pool.ok()) << pool.status();
  (*pool)->Start();
  absl::StatusOr<Job> job = (*pool)->Submit(NewJob("m1"));
  ASSERT_TRUE(job.ok()) << job.status();
  Job done = WaitForState(job->id, JobState::kSucceeded);
  EXPECT_EQ(done.attempt_count, 1u);
  EXPECT_EQ(full.finish_calls.load(), 5);  // four refused, the fifth recorded
  EXPECT_TRUE(artifacts_->Contains(done.result->artifact_sha256));
}

WorkerPool::Options FastRetries() {
  WorkerPool::Options options;
  options.finish_retry_backoff = absl::Milliseconds(1);
  return options;
}

TEST_F(WorkerPoolTest, AStoreBusyWhileTheArtifactIsPinnedDoesNotFailTheJob) {
  FullDiskStore busy(store_.get());
  busy.pin_busy = 2;
  auto pool = NewPool(FastRetries(), Clock::Real(), &busy);
  ASSERT_NE(pool, nullptr);
  pool->Start();
  absl::StatusOr<Job> job = pool->Submit(NewJob("m1"));
  ASSERT_TRUE(job.ok()) << job.status();
  Job done = WaitForState(job->id, JobState::kSucceeded);
  EXPECT_EQ(busy.pin_calls.load(), 3);  // two busy, the third pinned
  EXPECT_TRUE(artifacts_->Contains(done.result->artifact_sha256));
}

// Busy for longer than a few tries (a backup holding the store): the job's
// result is kept, not thrown away after four tries as it once was.
TEST_F(WorkerPoolTest, AStoreBusyForLongStillKeepsTheFinishedJob) {
  FullDiskStore busy(store_.get());
  busy.pin_busy = 9;
  auto pool = NewPool(FastRetries(), Clock::Real(), &busy);
  ASSERT_NE(pool, nullptr);
  pool->Start();
  absl::StatusOr<Job> job = pool->Submit(NewJob("m1"));
  ASSERT_TRUE(job.ok()) << job.status();
  Job done = WaitForState(job->id, JobState::kSucceeded);
  EXPECT_EQ(busy.pin_calls.load(), 10);  // nine busy, the tenth pinned
  EXPECT_TRUE(artifacts_->Contains(done.result->artifact_sha256));
}

// Stopping while the store is still busy: the finished job goes back to the
// queue, to run again at the next start, instead of FAILED for the store.
TEST_F(WorkerPoolTest, AStoreBusyWhenTheServerStopsRequeuesTheFinishedJob) {
  FullDiskStore busy(store_.get());
  busy.pin_busy = 1000000;
  auto pool = NewPool(FastRetries(), Clock::Real(), &busy);
  ASSERT_NE(pool, nullptr);
  pool->Start();
  absl::StatusOr<Job> job = pool->Submit(NewJob("m1"));
  ASSERT_TRUE(job.ok()) << job.status();
  for (const absl::Time give_up = absl::Now() + absl::Seconds(30);
       busy.pin_calls.load() < 3 && absl::Now() < give_up;) {
    absl::SleepFor(absl::Milliseconds(5));  // waiting for the worker's retries
  }
  ASSERT_GE(busy.pin_calls.load(), 3);
  pool->Stop();
  absl::StatusOr<Job> stored = store_->Get(job->id);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->state, JobState::kQueued);
  EXPECT_FALSE(stored->result.has_value());
}

// A finished job whose outcome meets a busy store as the server stops gets a
// few quick tries: it once got none, stayed RUNNING, and ran again from the
// start at the next start (its stored artifact swept meanwhile).
TEST_F(WorkerPoolTest, AnOutcomeMeetingABusyStoreAsTheServerStopsIsStillRecorded) {
  FakeClock clock;
  StopSignals stop;
  FinishesThen engine([&] { stop.shutting_down.store(true); });  // SIGTERM after the last step
  FullDiskStore store(store_.get());
  store.finish_failures = 2;
  JobEventHub events(&clock);
  JobRunner runner(&store, artifacts_.get(), &engine, &events, &clock, int64_t{1} << 30, absl::Milliseconds(1));
  Job job = NewJob("m");
  job.id = "job-finished-as-stopping";
  const Job finished = CreateClaimAndRun(runner, job, clock, &stop);
  EXPECT_EQ(store.finish_calls.load(), 3);
  EXPECT_EQ(finished.state, JobState::kSucceeded);
  EXPECT_EQ(store_->Get(job.id)->state, JobState::kSucceeded);
}

// A job claimed just as the pool stops is put back in the queue, not run,
// and a store busy at that moment gets more tries: the job stayed RUNNING
// until its lease ran out, and counted as an attempt that crashed.
TEST_F(WorkerPoolTest, AJobClaimedAsThePoolStopsGoesBackToTheQueueThroughABusyStore) {
  FullDiskStore busy(store_.get());
  busy.release_busy = 2;
  absl::Notification claimed, stopping;
  busy.after_claim = [&] {
    claimed.Notify();
    stopping.WaitForNotification();
  };
  WorkerPool::Options options = FastRetries();
  options.workers = 1;
  auto pool = NewPool(options, Clock::Real(), &busy);
  ASSERT_NE(pool, nullptr);
  pool->Start();
  absl::StatusOr<Job> job = pool->Submit(NewJob("m1"));
  ASSERT_TRUE(job.ok()) << job.status();
  claimed.WaitForNotification();
  std::thread stopper([&] { pool->Stop(); });
  absl::SleepFor(absl::Milliseconds(200));  // Stop marks the pool stopping at once, then waits for the worker
  stopping.Notify();
  stopper.join();
  EXPECT_EQ(busy.release_calls.load(), 3);  // two busy, the third released
  absl::StatusOr<Job> stored = store_->Get(job->id);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->state, JobState::kQueued);
  EXPECT_EQ(engine_.runs_returned.load(), 0) << "the job ran";
}

// A store that fails for good (corrupt, read-only) held the worker forever,
// renewing the job's lease: the job stayed RUNNING and the queue stalled.
TEST_F(WorkerPoolTest, AStoreThatCannotRecordAnOutcomeForGoodLetsTheWorkerGoOn) {
  FullDiskStore corrupt(store_.get());
  corrupt.finish_corrupt = true;
  corrupt.finish_failures = 11;  // the first try and ten more
  auto pool = NewPool(FastRetries(), Clock::Real(), &corrupt);
  ASSERT_NE(pool, nullptr);
  pool->Start();
  absl::StatusOr<Job> stuck = pool->Submit(NewJob("m1"));
  ASSERT_TRUE(stuck.ok()) << stuck.status();
  absl::StatusOr<Job> next = pool->Submit(NewJob("m2"));
  ASSERT_TRUE(next.ok()) << next.status();
  WaitForState(next->id, JobState::kSucceeded);
  EXPECT_EQ(corrupt.finish_calls.load(), 12);
  // Not recorded: RUNNING until its lease, no longer renewed, runs out.
  EXPECT_EQ(store_->Get(stuck->id)->state, JobState::kRunning);
}

TEST_F(WorkerPoolTest, EngineErrorFailsTheJobWithItsCode) {
  auto pool = NewPool();
  pool->Start();
  Job job = WaitForState(pool->Submit(NewJob("bad"))->id, JobState::kFailed);
  EXPECT_EQ(job.result->error_code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(job.result->error_message, HasSubstr("not a TorchScript file"));
}

// A job the quality gate refuses keeps what was measured in its result: it
// once said 0 calibration samples, with no advice.
TEST_F(WorkerPoolTest, AJobRefusedByTheQualityGateKeepsItsReport) {
  auto pool = NewPool();
  pool->Start();
  Job job = WaitForState(pool->Submit(NewJob("low_quality"))->id, JobState::kFailed);
  EXPECT_EQ(job.result->error_code, absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(job.result->error_message, HasSubstr("agrees with FP32 on 12%"));
  EXPECT_GT(job.result->report.calibration_samples, 0);
  EXPECT_FALSE(job.result->report.quality.passed);
  EXPECT_THAT(job.result->report.advice, ::testing::ElementsAre("keep conv1 in FP32"));
  EXPECT_TRUE(job.result->artifact_id.empty());
}

// A throw from inside an engine once ended the process (std::terminate on
// the worker thread) with every other job; now it fails only its own job.
TEST_F(WorkerPoolTest, AnEngineThatThrowsFailsOnlyItsJob) {
  auto pool = NewPool();
  const std::string thrower = pool->Submit(NewJob("throws"))->id;
  const std::string next = pool->Submit(NewJob("fine"))->id;
  pool->Start();
  Job failed = WaitForState(thrower, JobState::kFailed);
  EXPECT_EQ(failed.result->error_code, absl::StatusCode::kInternal);
  EXPECT_THAT(failed.result->error_message, HasSubstr("substr"));
  EXPECT_EQ(WaitForState(next, JobState::kSucceeded).attempt_count, 1u);
}

TEST_F(WorkerPoolTest, QueueCapacityIsEnforced) {
  WorkerPool::Options options;
  options.queue_capacity = 2;
  auto pool = NewPool(options);  // not started: everything stays queued
  EXPECT_TRUE(pool->Submit(NewJob("a")).ok());
  EXPECT_TRUE(pool->Submit(NewJob("b")).ok());
  EXPECT_EQ(pool->Submit(NewJob("c")).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(WorkerPoolTest, CancelQueuedAtOnceAndRunningAtNextBatch) {
  engine_.pause_at_batch = 3;
  auto pool = NewPool();
  std::string running = pool->Submit(NewJob("first"))->id;
  std::string queued = pool->Submit(NewJob("second"))->id;
  std::string next = pool->Submit(NewJob("third"))->id;
  pool->Start();
  ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));
  auto cancelled = pool->Cancel(queued, "");
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state, JobState::kCancelled);
  ASSERT_TRUE(pool->Cancel(running, "user asked").ok());
  engine_.release.Notify();
  Job job = WaitForState(running, JobState::kCancelled);
  EXPECT_EQ(engine_.batches_of("first"), 3);  // stopped right after the batch in flight
  EXPECT_THAT(job.result->error_message, HasSubstr("user asked"));
  WaitForState(next, JobState::kSucceeded);  // the worker goes on
  EXPECT_EQ(pool->Cancel(next, "").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->Cancel("job-unknown", "").status().code(), absl::StatusCode::kNotFound);
}

// Two server processes share one store: the one that did not claim the job
// can still cancel it, through the store.
TEST_F(WorkerPoolTest, CancelReachesAJobRunningInAnotherProcess) {
  engine_.pause_at_batch = 2;
  auto runner = NewPool();
  auto other = NewPool();  // never started: it only serves RPCs
  const std::string id = runner->Submit(NewJob("shared"))->id;
  runner->Start();
  ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));
  auto accepted = other->Cancel(id, "from replica b");
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(accepted->state, JobState::kRunning);  // stops at the next batch boundary
  engine_.release.Notify();
  Job job = WaitForState(id, JobState::kCancelled);
  EXPECT_EQ(engine_.batches_of("shared"), 2);
  EXPECT_THAT(job.result->error_message, HasSubstr("from replica b"));
  EXPECT_FALSE(store_->CancelRequest(id)->has_value());  // cleared with the result
}

TEST_F(WorkerPoolTest, DeadlineFailsTheJobOnTheFakeClock) {
  FakeClock clock;
  engine_.clock = &clock;
  WorkerPool::Options options;
  options.job_deadline = absl::Seconds(4);
  auto pool = NewPool(options, &clock);
  pool->Start();
  Job job = WaitForState(pool->Submit(NewJob("slow"))->id, JobState::kFailed);
  EXPECT_EQ(job.result->error_code, absl::StatusCode::kDeadlineExceeded);
  // Named as the operator's limit, not the client's deadline.
  EXPECT_THAT(job.result->error_message,
              HasSubstr("the server's limit on one run of a job (4s, quantd --job_deadline_seconds) passed during "));
  EXPECT_EQ(engine_.batches_run.load(), 5);
}

// --job_deadline_seconds is a duration from the start, on the interval
// clock: the system time set forward (a VM resumed, NTP stepping) once failed
// every running job at once.
TEST_F(WorkerPoolTest, TheServerWideLimitIgnoresTheSystemTimeBeingSet) {
  FakeClock dates, intervals;
  engine_.clock = &dates;  // each batch sets the date a second forward; no time passes
  WorkerPool::Options options;
  options.job_deadline = absl::Seconds(4);
  options.interval_clock = &intervals;
  auto pool = NewPool(options, &dates);
  pool->Start();
  Job job = WaitForState(pool->Submit(NewJob("dated"))->id, JobState::kSucceeded);
  EXPECT_EQ(engine_.batches_run.load(), 10);
  for (const PhaseTiming& timing : job.result->phase_timings) EXPECT_EQ(timing.seconds, 0) << JobPhaseName(timing.phase);
}

// job.proto: a job whose deadline passes while it is still queued is cancelled.
TEST_F(WorkerPoolTest, DeadlinePassedWhileQueuedCancelsWithoutRunning) {
  FakeClock clock;
  auto pool = NewPool({}, &clock);
  Job late = NewJob("late");
  late.deadline = clock.Now() - absl::Seconds(1);
  const std::string id = pool->Submit(late)->id;
  pool->Start();
  Job job = WaitForState(id, JobState::kCancelled);
  ASSERT_TRUE(job.result.has_value());
  EXPECT_EQ(job.result->error_code, absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(job.result->error_message, HasSubstr("while it was queued"));
  EXPECT_TRUE(engine_.order().empty());  // the engine never saw it
}

TEST_F(WorkerPoolTest, RestartRequeuesInterruptedJobAndDeleteRemovesArtifact) {
  std::string id;
  {
    auto pool = NewPool();
    id = pool->Submit(NewJob("m"))->id;
  }
  ASSERT_TRUE(store_->ClaimNext(absl::Now(), "local", absl::Hours(1)).ok());  // a worker took it, then the process died
  auto pool = NewPool();
  EXPECT_EQ(pool->recovered().requeued, 1);
  pool->Start();
  Job job = WaitForState(id, JobState::kSucceeded);
  EXPECT_EQ(job.attempt_count, 2u);
  std::string sha = job.result->artifact_sha256;
  EXPECT_EQ(pool->Delete(id).code(), absl::StatusCode::kOk);
  EXPECT_FALSE(artifacts_->Contains(sha));
  EXPECT_EQ(pool->Delete(id).code(), absl::StatusCode::kNotFound);
}

// Files no job holds are removed at start-up and by each later sweep (the
// sweep thread's, hourly by default) while jobs' artifacts stay.
TEST_F(WorkerPoolTest, ArtifactsNoJobHoldsAreSweptWhileTheServerRuns) {
  RecordFailedJob("job-gone");
  RecordFailedJob("job-lost");
  ASSERT_TRUE(artifacts_->Put("job-gone", "left at start", "{}").ok());
  WorkerPool::Options options;
  options.artifact_sweep = absl::Hours(1);
  auto pool = NewPool(options);
  EXPECT_EQ(pool->swept().artifacts, 1);
  pool->Start();
  const std::string id = pool->Submit(NewJob("m"))->id;
  const std::string held = WaitForState(id, JobState::kSucceeded).result->artifact_sha256;
  // Left by a job that lost its lease elsewhere, say, after the start.
  auto orphan = artifacts_->Put("job-lost", "left while running", "{}");
  ASSERT_TRUE(orphan.ok()) << orphan.status();
  absl::StatusOr<SweptArtifacts> swept = pool->SweepArtifacts();
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->artifacts, 1);
  EXPECT_FALSE(artifacts_->Contains(orphan->sha256));
  EXPECT_TRUE(artifacts_->Contains(held));
  EXPECT_EQ(pool->swept().artifacts, 2);
}

// The sweep thread runs on its own period; a period of zero or less would
// make it a loop that lists every file nonstop, so it is refused.
TEST_F(WorkerPoolTest, TheSweepThreadSweepsEachPeriod) {
  RecordFailedJob("job-lost");
  WorkerPool::Options options;
  options.artifact_sweep = absl::Milliseconds(20);
  auto pool = NewPool(options);
  pool->Start();
  auto orphan = artifacts_->Put("job-lost", "left while running", "{}");
  ASSERT_TRUE(orphan.ok()) << orphan.status();
  // The sweep counts what it removed once it has removed it all.
  for (const absl::Time give_up = absl::Now() + absl::Seconds(30);
       (artifacts_->Contains(orphan->sha256) || pool->swept().artifacts < 1) && absl::Now() < give_up;) {
    absl::SleepFor(absl::Milliseconds(5));  // waiting for the pool's own thread
  }
  EXPECT_FALSE(artifacts_->Contains(orphan->sha256));
  EXPECT_GE(pool->swept().artifacts, 1);
  for (const absl::Duration period : {absl::ZeroDuration(), absl::Seconds(-1)}) {
    options.artifact_sweep = period;
    auto refused = WorkerPool::Create(options, store_.get(), artifacts_.get(), &engine_, Clock::Real());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << period;
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr("artifact sweep period"));
  }
}

// Two processes share one store (here: two pools, each on its own SQLite
// connection to one file). While one renews its job's lease the other never
// takes it; once it stops renewing (frozen), the other recovers and runs the
// job, and the first, on its next renewal, stops without recording anything.
TEST_F(WorkerPoolTest, AJobWhoseLeaseRunsOutIsRecoveredByAnotherProcess) {
  FakeClock clock;
  engine_.pause_at_batch = 2;
  // Long leases: the maintenance threads renew every lease / 3 of real time,
  // never during the test, which renews by calling MaintainLeases.
  WorkerPool::Options options_a;
  options_a.holder = "host-a:/data";
  options_a.lease = absl::Hours(1);
  WorkerPool::Options options_b = options_a;
  options_b.holder = "host-b:/data";
  auto pool_a = NewPool(options_a, &clock);
  pool_a->Start();
  const std::string id = pool_a->Submit(NewJob("m"))->id;
  ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));  // a runs it

  OtherProcess b = NewPoolOfAnotherProcess(options_b, &clock);
  ASSERT_NE(b.pool, nullptr);
  WorkerPool* const pool_b = b.pool.get();
  EXPECT_EQ(pool_b->recovered().requeued, 0);  // a is alive: not b's to recover
  pool_b->Start();
  clock.Advance(absl::Minutes(50));
  EXPECT_EQ(pool_a->MaintainLeases().requeued, 0);  // a renews: until 1 h 50 min
  clock.Advance(absl::Minutes(50));
  EXPECT_EQ(pool_b->MaintainLeases().requeued, 0);
  EXPECT_EQ(b.store->Get(id)->state, JobState::kRunning);

  // a freezes (renews nothing); after its lease b takes the job over.
  clock.Advance(absl::Minutes(61));
  EXPECT_EQ(pool_b->MaintainLeases().requeued, 1);
  EXPECT_EQ(pool_b->recovered().requeued, 1);  // the running total, for /metrics
  Job job = WaitForState(id, JobState::kSucceeded);
  EXPECT_EQ(job.attempt_count, 2u);
  EXPECT_TRUE(artifacts_->Contains(job.result->artifact_sha256));

  // a wakes up: its renewal fails, and its run stops at the next batch.
  pool_a->MaintainLeases();
  engine_.release.Notify();
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (engine_.runs_returned.load() < 2 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(engine_.runs_returned.load(), 2);
  // b's 10 batches, and a's first two: a did not run on to the end.
  EXPECT_EQ(engine_.batches_of("m"), 12);
  Job after = *store_->Get(id);
  EXPECT_EQ(after.state, JobState::kSucceeded);
  EXPECT_EQ(after.attempt_count, 2u);
  EXPECT_EQ(after.result->artifact_sha256, job.result->artifact_sha256);
}

// Waits until `engine` has returned from at least `runs` runs.
void WaitForRuns(FakeEngine& engine, int runs) {
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (engine.runs_returned.load() < runs && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_GE(engine.runs_returned.load(), runs);
}

// The job of a frozen process is recovered (queued again) by another one
// that does not run it yet. The frozen runner, on its next renewal, still
// stops at its next batch, and the job then runs once more, from the queue.
TEST_F(WorkerPoolTest, ARunnerWhoseJobWasRecoveredStopsBeforeTheJobRunsAgain) {
  FakeClock clock;
  auto [pool_a, id] = StartJobPausedInA(&clock);
  ASSERT_FALSE(id.empty());
  OtherProcess b = NewPoolOfAnotherProcess(HolderOptions("host-b:/data"), &clock);
  ASSERT_NE(b.pool, nullptr);
  WorkerPool* const pool_b = b.pool.get();  // never started: runs nothing

  clock.Advance(absl::Minutes(61));
  EXPECT_EQ(pool_b->MaintainLeases().requeued, 1);
  EXPECT_EQ(store_->Get(id)->state, JobState::kQueued);
  pool_a->MaintainLeases();  // a wakes up: its renewal fails
  engine_.release.Notify();
  WaitForRuns(engine_, 1);
  // a's single worker then claims the queued job: attempt 2, all 10 batches.
  Job job = WaitForState(id, JobState::kSucceeded);
  EXPECT_EQ(job.attempt_count, 2u);
  WaitForRuns(engine_, 2);
  // Two batches of the stopped run, not ten.
  EXPECT_EQ(engine_.batches_of("m"), 12);
}

// A cancel acknowledged while the job ran here, then an interruption before
// the runner stopped (it froze past its lease; a crash is the same to the
// store): the recovery makes the cancel the job's outcome instead of
// running the job again.
TEST_F(WorkerPoolTest, ACancelAcknowledgedBeforeAnInterruptionIsTheJobsOutcome) {
  FakeClock clock;
  auto [pool_a, id] = StartJobPausedInA(&clock);
  ASSERT_FALSE(id.empty());
  ASSERT_TRUE(pool_a->Cancel(id, "not needed").ok());
  EXPECT_EQ(store_->Get(id)->state, JobState::kRunning);  // stops at its next batch

  OtherProcess b = NewPoolOfAnotherProcess(HolderOptions("host-b:/data"), &clock);
  ASSERT_NE(b.pool, nullptr);
  clock.Advance(absl::Minutes(61));
  const JobStore::RecoveryCounts recovered = b.pool->MaintainLeases();
  EXPECT_EQ(recovered.cancelled, 1);
  EXPECT_EQ(recovered.requeued, 0);
  Job job = *store_->Get(id);
  EXPECT_EQ(job.state, JobState::kCancelled);
  ASSERT_TRUE(job.result.has_value());
  EXPECT_EQ(job.result->error_code, absl::StatusCode::kCancelled);
  EXPECT_EQ(job.result->error_message, "cancelled: not needed");
  EXPECT_FALSE(store_->CancelRequest(id)->has_value());

  engine_.release.Notify();
  WaitForRuns(engine_, 1);
  pool_a->Stop();
  EXPECT_EQ(engine_.order().size(), 1u);  // never run again
  EXPECT_EQ(store_->Get(id)->state, JobState::kCancelled);
  EXPECT_EQ(store_->Get(id)->attempt_count, 1u);
}

// A process that froze past its lease claims its own job again (recovered,
// queued) while its first runner still holds it: that runner stops at its
// next batch instead of running unseen beside the new attempt.
TEST_F(WorkerPoolTest, ClaimingAJobAnEarlierAttemptStillRunsHereStopsThatAttempt) {
  FakeClock clock;
  engine_.pause_at_batch = 2;
  WorkerPool::Options options_a;
  options_a.holder = "host-a:/data";
  options_a.workers = 2;
  options_a.lease = absl::Hours(1);
  WorkerPool::Options options_b = options_a;
  options_b.holder = "host-b:/data";
  auto pool_a = NewPool(options_a, &clock);
  pool_a->Start();
  const std::string id = pool_a->Submit(NewJob("m"))->id;
  ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));
  OtherProcess b = NewPoolOfAnotherProcess(options_b, &clock);
  ASSERT_NE(b.pool, nullptr);
  WorkerPool* const pool_b = b.pool.get();

  clock.Advance(absl::Minutes(61));
  EXPECT_EQ(pool_b->MaintainLeases().requeued, 1);
  // a's idle worker claims it (attempt 2) and runs it through.
  Job job = WaitForState(id, JobState::kSucceeded);
  EXPECT_EQ(job.attempt_count, 2u);
  engine_.release.Notify();
  WaitForRuns(engine_, 2);
  EXPECT_EQ(engine_.batches_of("m"), 12);  // the first attempt stopped after its second batch
  EXPECT_EQ(store_->Get(id)->attempt_count, 2u);
}

// A store busy at that moment (often why the server is being stopped) gets
// a few tries: the release once got one, and the job stayed RUNNING with the
// attempt counted, to be FAILED at the next start on its last attempt.
TEST_F(WorkerPoolTest, GracefulShutdownRequeuesTheRunningJob) {
  engine_.run_until_stopped_at_batch = 3;
  std::string id;
  FullDiskStore busy(store_.get());
  busy.release_busy = 2;
  {
    auto pool = NewPool(FastRetries(), Clock::Real(), &busy);
    pool->Start();
    id = pool->Submit(NewJob("m"))->id;
    ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));
    pool->Stop();
  }
  EXPECT_EQ(busy.release_calls.load(), 3);  // two busy, the third released
  Job job = *store_->Get(id);
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_FALSE(job.result.has_value());
  engine_.run_until_stopped_at_batch = 0;
  auto pool = NewPool();
  pool->Start();
  // A graceful stop does not use up one of the job's attempts, as a crash does.
  EXPECT_EQ(WaitForState(id, JobState::kSucceeded).attempt_count, 1u);
}

// A stopping server keeps renewing the leases of the jobs that are still
// draining (a batch or a model load is not interrupted), so that another
// process does not take them for crashed and spend one of their attempts.
// A round of lease maintenance reads the clock once: its recovery never takes
// the lease it has just renewed for expired, even if the clock jumps (or the
// thread stalls past the lease) between the renewal and the recovery.
TEST_F(WorkerPoolTest, ALeaseRenewalIsNotUndoneByTheSameRoundsRecovery) {
  FakeClock clock;
  engine_.pause_at_batch = 2;
  WorkerPool::Options options;
  options.holder = "host-a:/data";
  options.lease = absl::Hours(1);  // the maintenance thread stays out of the way
  FullDiskStore store(store_.get());  // no failures
  auto pool = NewPool(options, &clock, &store);
  pool->Start();
  const std::string id = pool->Submit(NewJob("m"))->id;
  ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));
  store.after_renewal = [&clock] { clock.Advance(absl::Hours(2)); };
  EXPECT_EQ(pool->MaintainLeases().requeued, 0);
  store.after_renewal = nullptr;
  Job job = *store_->Get(id);
  EXPECT_EQ(job.state, JobState::kRunning);
  EXPECT_EQ(job.attempt_count, 1u);
  engine_.release.Notify();
  EXPECT_EQ(WaitForState(id, JobState::kSucceeded).attempt_count, 1u);
  pool->Stop();
}

TEST_F(WorkerPoolTest, LeasesAreRenewedWhileRunningJobsDrainOnShutdown) {
  FakeClock clock;
  engine_.run_until_stopped_at_batch = 3;
  engine_.hold_after_stop = true;
  WorkerPool::Options options_a;
  options_a.holder = "host-a:/data";
  options_a.lease = absl::Milliseconds(30);  // renewed every 10 ms of real time, to 30 ms of `clock`
  WorkerPool::Options options_b = options_a;
  options_b.holder = "host-b:/data";
  FullDiskStore store_a(store_.get());  // no failures: it reports a's renewals
  auto pool_a = NewPool(options_a, &clock, &store_a);
  pool_a->Start();
  const std::string id = pool_a->Submit(NewJob("m"))->id;
  ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));
  OtherProcess b = NewPoolOfAnotherProcess(options_b, &clock);
  ASSERT_NE(b.pool, nullptr);
  WorkerPool* const pool_b = b.pool.get();

  std::thread stopping([&] { pool_a->Stop(); });
  ASSERT_TRUE(engine_.stop_seen.WaitForNotificationWithTimeout(absl::Seconds(20)));
  clock.Advance(absl::Hours(1));  // far past the lease a had when it began to stop
  // a's maintenance thread, while a drains, renews the lease on `clock`
  // (waited for, not slept for: a loaded CI machine may be slow to run it).
  EXPECT_TRUE(store_a.WaitForRenewalPast(clock.Now(), absl::Seconds(20)));
  EXPECT_EQ(pool_b->MaintainLeases().requeued, 0);
  engine_.release_after_stop.Notify();
  stopping.join();
  Job job = *store_->Get(id);
  EXPECT_EQ(job.state, JobState::kQueued);  // released by the graceful stop
  EXPECT_EQ(job.attempt_count, 0u);         // without using up an attempt
}

// An engine error that happens while the server shuts down is the job's
// outcome: requeued, the job would only fail the same way after the restart.
TEST_F(WorkerPoolTest, AnErrorDuringShutdownFailsTheJobInsteadOfRequeueingIt) {
  engine_.run_until_stopped_at_batch = 3;
  auto pool = NewPool();
  pool->Start();
  const std::string id = pool->Submit(NewJob("fails_while_stopping"))->id;
  ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));
  pool->Stop();
  Job job = *store_->Get(id);
  EXPECT_EQ(job.state, JobState::kFailed);
  ASSERT_TRUE(job.result.has_value());
  EXPECT_EQ(job.result->error_code, absl::StatusCode::kDataLoss);
  EXPECT_THAT(job.result->error_message, HasSubstr("calibration batch 3 is corrupt"));
}

// The job's deadline passes, and while its engine winds down the server
// begins a graceful stop: the deadline is the job's outcome, not a job to
// queue again for the next start.
TEST_F(WorkerPoolTest, ADeadlineThatPassedBeforeAShutdownIsTheJobsOutcome) {
  class StopsLate : public QuantizationEngine {
   public:
    StopsLate(FakeClock* clock, StopSignals* stop) : clock_(clock), stop_(stop) {}
    absl::StatusOr<EngineOutput> Run(const engine::QuantizeOptions& options) override {
      if (!options.progress({engine::Phase::kCalibrating, 0, 10})) return absl::CancelledError("stopped");
      clock_->Advance(absl::Hours(2));  // a batch that outlives the deadline
      if (options.progress({engine::Phase::kCalibrating, 1, 10})) return absl::InternalError("the deadline went unseen");
      stop_->shutting_down.store(true);  // SIGTERM while the batch winds down
      return absl::CancelledError("stopped");
    }

   private:
    FakeClock* const clock_;
    StopSignals* const stop_;
  };
  FakeClock clock;
  StopSignals stop;
  StopsLate engine(&clock, &stop);
  JobEventHub events(&clock);
  JobRunner runner(store_.get(), artifacts_.get(), &engine, &events, &clock);
  Job job = NewJob("m");
  job.id = "job-deadline-then-stop";
  const absl::Time deadline = clock.Now() + absl::Hours(1);
  const Job finished = CreateClaimAndRun(runner, job, clock, &stop, deadline);
  EXPECT_EQ(finished.state, JobState::kFailed);
  const Job stored = *store_->Get(job.id);
  EXPECT_EQ(stored.state, JobState::kFailed);
  ASSERT_TRUE(stored.result.has_value());
  EXPECT_EQ(stored.result->error_code, absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(stored.result->error_message,
              HasSubstr(absl::StrCat("the job's deadline (", absl::FormatTime(deadline, absl::UTCTimeZone()),
                                     ", its request's deadline) passed during calibrating")));
}

// A batch long enough for both limits to pass blames the one that passed
// first: here the server's limit (2 h from the start) before the job's own
// deadline (3 h), both seen at 4 h.
TEST_F(WorkerPoolTest, WhenBothLimitsPassTheFirstToPassIsNamed) {
  class OneLongBatch : public QuantizationEngine {
   public:
    OneLongBatch(FakeClock* dates, FakeClock* intervals) : dates_(dates), intervals_(intervals) {}
    absl::StatusOr<EngineOutput> Run(const engine::QuantizeOptions& options) override {
      if (!options.progress({engine::Phase::kCalibrating, 0, 10})) return absl::CancelledError("stopped");
      dates_->Advance(absl::Hours(4));
      intervals_->Advance(absl::Hours(4));
      if (options.progress({engine::Phase::kCalibrating, 1, 10})) return absl::InternalError("the limits went unseen");
      return absl::CancelledError("stopped");
    }

   private:
    FakeClock* const dates_;
    FakeClock* const intervals_;
  };
  FakeClock dates, intervals;
  OneLongBatch engine(&dates, &intervals);
  JobEventHub events(&dates);
  JobRunner runner(store_.get(), artifacts_.get(), &engine, &events, &dates, 0, absl::Milliseconds(100), nullptr,
                   &intervals);
  Job job = NewJob("m");
  job.id = "job-both-limits";
  ASSERT_TRUE(store_->Create(job, 10).ok());
  absl::StatusOr<std::optional<Job>> claimed = store_->ClaimNext(dates.Now(), "host-a:/data", absl::Hours(10));
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  StopSignals stop;
  const Job finished = runner.Run(**claimed, dates.Now() + absl::Hours(3), &stop, absl::Hours(2));
  ASSERT_TRUE(finished.result.has_value());
  EXPECT_EQ(finished.result->error_code, absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(finished.result->error_message,
              HasSubstr("the server's limit on one run of a job (2h, quantd --job_deadline_seconds) passed during"));
}

// A client's cancel lands after the engine last asked, and a graceful stop
// follows before it asks again: the cancel was acknowledged, so the job is
// CANCELLED, not queued to run again at the next start.
TEST_F(WorkerPoolTest, ACancelRequestedJustBeforeAShutdownIsTheJobsOutcome) {
  class CancelledThenStopped : public QuantizationEngine {
   public:
    CancelledThenStopped(JobStore* store, StopSignals* stop) : store_(store), stop_(stop) {}
    absl::StatusOr<EngineOutput> Run(const engine::QuantizeOptions& options) override {
      if (!options.progress({engine::Phase::kCalibrating, 0, 10})) return absl::CancelledError("stopped");
      EXPECT_TRUE(store_->RequestCancel("job-cancel-then-stop", "not needed").ok());  // CancelJob, elsewhere
      stop_->shutting_down.store(true);  // SIGTERM before the next batch
      return absl::CancelledError("stopped");
    }

   private:
    JobStore* const store_;
    StopSignals* const stop_;
  };
  FakeClock clock;
  StopSignals stop;
  CancelledThenStopped engine(store_.get(), &stop);
  JobEventHub events(&clock);
  JobRunner runner(store_.get(), artifacts_.get(), &engine, &events, &clock);
  Job job = NewJob("m");
  job.id = "job-cancel-then-stop";
  const Job finished = CreateClaimAndRun(runner, job, clock, &stop);
  EXPECT_EQ(finished.state, JobState::kCancelled);
  const Job stored = *store_->Get(job.id);
  EXPECT_EQ(stored.state, JobState::kCancelled);
  ASSERT_TRUE(stored.result.has_value());
  EXPECT_EQ(stored.result->error_code, absl::StatusCode::kCancelled);
  EXPECT_THAT(stored.result->error_message, HasSubstr("cancelled: not needed"));
  EXPECT_EQ(*store_->CancelRequest(job.id), std::nullopt);
}

// An input this process does not have (another replica took the upload)
// fails the job while loading, naming the field, before the engine runs.
TEST_F(WorkerPoolTest, AJobWhoseInputIsNotHereFailsWhileLoadingNamingTheField) {
  const InputLocator locator(dir_, /*blobs=*/nullptr);
  WorkerPool::Options options;
  options.inputs = &locator;
  auto pool = NewPool(options);
  pool->Start();
  const std::string id = pool->Submit(NewJob(DataDirReference("models/missing.pt")))->id;
  const Job job = WaitForState(id, JobState::kFailed);
  ASSERT_TRUE(job.result.has_value());
  EXPECT_EQ(job.result->error_code, absl::StatusCode::kNotFound);
  EXPECT_THAT(job.result->error_message, HasSubstr("loading: model: \"models/missing.pt\""));
  pool->Stop();
  EXPECT_EQ(engine_.runs_returned.load(), 0);  // the engine never ran
}

// The job's lease ran out while its runner stored the artifact, and another
// process recovered it (here: failed it, out of attempts). The runner cannot
// record its outcome; the artifact it stored is no job's, and goes.
TEST_F(WorkerPoolTest, AnArtifactStoredByARunnerThatLostItsJobIsRemoved) {
  FakeClock clock;
  FullDiskStore store_a(store_.get());  // no failures: it reports the pin
  store_a.after_pin = [&] {
    EXPECT_EQ(store_->RecoverInterrupted(/*max_attempts=*/1, clock.Now() + absl::Hours(2), "")->failed, 1);
  };
  WorkerPool::Options options;
  options.lease = absl::Hours(1);
  auto pool = NewPool(options, &clock, &store_a);
  pool->Start();
  const std::string id = pool->Submit(NewJob("m"))->id;
  WaitForRuns(engine_, 1);
  pool->Stop();
  const Job job = *store_->Get(id);
  EXPECT_EQ(job.state, JobState::kFailed);
  ASSERT_TRUE(job.result.has_value());
  EXPECT_THAT(job.result->error_message, HasSubstr("not retried again"));
  absl::StatusOr<std::map<std::string, std::vector<std::string>>> listed = artifacts_->List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(listed->empty()) << listed->size() << " artifact(s) left behind";
}

// A job run again (its lease ran out, so its pin was dropped) left its
// manifest of an artifact another job holds. The sweep (hourly, while
// workers run) must not remove that manifest once the job, running again,
// has pinned the artifact to store it: the job would succeed without one.
TEST_F(WorkerPoolTest, TheSweepKeepsTheManifestOfAJobThatPinsTheArtifactBeforeItDecides) {
  const absl::Time now = absl::FromUnixSeconds(100);
  const std::string bytes = "int8 bytes";
  auto run_to_pin = [&](const std::string& id) -> absl::StatusOr<StoredArtifact> {
    Job job = NewJob("m");
    job.id = id;
    QUANTD_RETURN_IF_ERROR(store_->Create(job, 10).status());
    QUANTD_RETURN_IF_ERROR(store_->ClaimNext(now, "host-a:/data", absl::Hours(1)).status());
    return artifacts_->Put(id, bytes, "{}");
  };
  absl::StatusOr<StoredArtifact> held = run_to_pin("job-held");
  ASSERT_TRUE(held.ok()) << held.status();
  const std::string artifact_id = ArtifactIdFor(held->sha256);
  ASSERT_TRUE(store_->PinArtifact("job-held", 1, artifact_id).ok());
  JobResult result;
  result.artifact_id = artifact_id;
  result.artifact_sha256 = held->sha256;
  ASSERT_TRUE(store_->Finish("job-held", 1, JobState::kSucceeded, result, now).ok());
  // "job-rerun": RUNNING, its manifest written by an earlier attempt, no pin.
  ASSERT_TRUE(run_to_pin("job-rerun").ok());
  const fs::path rerun_manifest = fs::path(dir_) / "artifacts" / (held->sha256 + ".job-rerun.manifest.json");
  ASSERT_TRUE(fs::exists(rerun_manifest));

  FullDiskStore store(store_.get());
  int pins = 0;
  store.before_artifact_decision = [&] {
    if (pins++ == 0) {
      EXPECT_TRUE(store_->PinArtifact("job-rerun", 1, artifact_id).ok());
    }
  };
  absl::StatusOr<SweptArtifacts> swept = RemoveUnheldArtifacts(*artifacts_, store);
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->manifests, 0);
  EXPECT_TRUE(fs::exists(rerun_manifest));
  // Once the rerun lets go of it (failed), its manifest goes.
  ASSERT_TRUE(store_->Finish("job-rerun", 1, JobState::kFailed, JobResult(), now).ok());
  store.before_artifact_decision = nullptr;
  swept = RemoveUnheldArtifacts(*artifacts_, store);
  ASSERT_TRUE(swept.ok()) << swept.status();
  EXPECT_EQ(swept->manifests, 1);
  EXPECT_FALSE(fs::exists(rerun_manifest));
  EXPECT_TRUE(artifacts_->Contains(held->sha256));
}

TEST_F(WorkerPoolTest, DeletingOneOfTwoIdenticalJobsKeepsTheirArtifact) {
  auto pool = NewPool();
  pool->Start();
  const std::string first = pool->Submit(NewJob("m"))->id;
  Job job = WaitForState(first, JobState::kSucceeded);
  const std::string second = pool->Submit(NewJob("m"))->id;
  WaitForState(second, JobState::kSucceeded);
  const std::string sha = job.result->artifact_sha256;
  ASSERT_TRUE(fs::exists(dir_ + "/artifacts/" + sha + "." + first + ".manifest.json"));
  ASSERT_TRUE(pool->Delete(first).ok());
  EXPECT_TRUE(artifacts_->Contains(sha));
  EXPECT_FALSE(fs::exists(dir_ + "/artifacts/" + sha + "." + first + ".manifest.json"));
  EXPECT_TRUE(fs::exists(dir_ + "/artifacts/" + sha + "." + second + ".manifest.json"));
  ASSERT_TRUE(pool->Delete(second).ok());
  EXPECT_FALSE(artifacts_->Contains(sha));
  EXPECT_TRUE(fs::is_empty(dir_ + "/artifacts"));
}

class CountingWatcher : public JobWatcher {
 public:
  void OnJobEvent(const JobEvent& event) override {
    absl::MutexLock lock(&mu);
    kinds.push_back(event.kind);
    if (event.kind == JobEvent::Kind::kStateChanged) states.push_back(event.state);
    if (event.kind == JobEvent::Kind::kPhaseStarted) phases.push_back(event.phase.phase);
    if (event.kind != JobEvent::Kind::kSnapshot) {
      EXPECT_GT(event.sequence, last_sequence);
      last_sequence = event.sequence;
    }
    if (event.kind == JobEvent::Kind::kResult) {
      result = event.result;
      done.Notify();
    }
  }
  void OnJobGone(const std::string&) override { gone.Notify(); }
  int Count(JobEvent::Kind kind) {
    absl::MutexLock lock(&mu);
    return static_cast<int>(std::count(kinds.begin(), kinds.end(), kind));
  }
  absl::Mutex mu;
  std::vector<JobEvent::Kind> kinds;
  std::vector<JobState> states;
  std::vector<JobPhase> phases;
  uint64_t last_sequence = 0;
  JobResult result;
  absl::Notification done;
  absl::Notification gone;
};

// A server started on a full disk serves, instead of exiting: it numbers its
// watch events without the store, and recovers the job it was running when
// it stopped once the store can write, before it claims any other (the
// recovery takes this holder's jobs for interrupted: one claimed here first
// would be taken too). A store that is damaged, not full, still fails the start.
TEST_F(WorkerPoolTest, AStartOnAFullDiskRecoversItsInterruptedJobOnceTheStoreCanWrite) {
  std::string interrupted;
  {
    auto pool = NewPool();
    interrupted = pool->Submit(NewJob("m"))->id;
  }
  ASSERT_TRUE(store_->ClaimNext(absl::Now(), "local", absl::Hours(1)).ok());  // then the process died
  {
    FullDiskStore corrupt(store_.get());
    corrupt.recover_failures = 1;
    corrupt.recover_corrupt = true;
    EXPECT_EQ(WorkerPool::Create({}, &corrupt, artifacts_.get(), &engine_, Clock::Real()).status().code(),
              absl::StatusCode::kInternal);
  }
  FullDiskStore full(store_.get());
  full.generation_failures = 1;
  full.recover_failures = 3;  // Create's, then the first two workers' tries
  WorkerPool::Options options;
  options.workers = 2;
  auto pool = NewPool(options, Clock::Real(), &full);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->recovered().requeued, 0);
  EXPECT_EQ(store_->Get(interrupted)->state, JobState::kRunning);
  // Numbered apart from every start the store counted.
  const std::string queued = pool->Submit(NewJob("n"))->id;
  CountingWatcher watcher;
  ASSERT_TRUE(pool->events().Subscribe(queued, [&] { return store_->Get(queued); }, &watcher).ok());

  pool->Start();
  const Job recovered = WaitForState(interrupted, JobState::kSucceeded);
  const Job later = WaitForState(queued, JobState::kSucceeded);
  EXPECT_LE(full.recover_failures.load(), 0);
  EXPECT_EQ(pool->recovered().requeued, 1);
  EXPECT_EQ(recovered.attempt_count, 2u);
  // The older job ran first: nothing was claimed before the recovery.
  ASSERT_TRUE(recovered.start_time.has_value() && later.start_time.has_value());
  EXPECT_LE(*recovered.start_time, *later.start_time);
  EXPECT_EQ(later.attempt_count, 1u);
  ASSERT_TRUE(watcher.done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_GE(watcher.last_sequence >> 32, uint64_t{1} << 31);
  EXPECT_LT(watcher.last_sequence >> 32, uint64_t{1} << 32);
}

// A watcher here of a job that another process runs or cancels (a second
// pool on its own connection to the same file) learns from the store what
// changed: the state, the phase, and the result, which ends its stream. The
// pool that runs the job tells its own watchers as before: nobody hears
// anything twice.
TEST_F(WorkerPoolTest, WatchersOfAJobAnotherProcessRunsHearItsStateAndResult) {
  engine_.pause_at_batch = 2;
  WorkerPool::Options options_a;
  options_a.holder = "host-a:/data";
  options_a.watch_sync = absl::Hours(1);  // the test syncs by calling SyncFollowedJobs
  WorkerPool::Options options_b = options_a;
  options_b.holder = "host-b:/data";
  auto pool_a = NewPool(options_a);
  OtherProcess b = NewPoolOfAnotherProcess(options_b);
  ASSERT_NE(b.pool, nullptr);
  WorkerPool* const pool_b = b.pool.get();
  const std::string runs = pool_a->Submit(NewJob("m"))->id;
  const std::string waits = pool_a->Submit(NewJob("q"))->id;
  CountingWatcher here, there, cancelled_there;
  auto load_a = [&](const std::string& id) { return [&, id] { return store_->Get(id); }; };
  auto load_b = [&](const std::string& id) { return [&, id] { return b.store->Get(id); }; };
  ASSERT_TRUE(pool_a->events().Subscribe(runs, load_a(runs), &here).ok());
  ASSERT_TRUE(pool_b->events().Subscribe(runs, load_b(runs), &there).ok());
  ASSERT_TRUE(pool_b->events().Subscribe(waits, load_b(waits), &cancelled_there).ok());

  pool_a->Start();  // only a runs jobs
  ASSERT_TRUE(engine_.paused.WaitForNotificationWithTimeout(absl::Seconds(20)));
  pool_a->SyncFollowedJobs();  // a runs it: its runner tells `here`
  pool_b->SyncFollowedJobs();
  pool_b->SyncFollowedJobs();  // nothing new
  {
    absl::MutexLock lock(&there.mu);
    EXPECT_EQ(there.states, std::vector<JobState>{JobState::kRunning});
    EXPECT_EQ(there.phases, std::vector<JobPhase>{JobPhase::kCalibrating});
  }
  ASSERT_TRUE(pool_a->Cancel(waits, "not needed").ok());
  pool_b->SyncFollowedJobs();
  ASSERT_TRUE(cancelled_there.done.HasBeenNotified());
  {
    absl::MutexLock lock(&cancelled_there.mu);
    EXPECT_EQ(cancelled_there.states, std::vector<JobState>{JobState::kCancelled});
    EXPECT_EQ(cancelled_there.result.error_code, absl::StatusCode::kCancelled);
  }

  engine_.release.Notify();
  ASSERT_TRUE(here.done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  pool_a->SyncFollowedJobs();
  pool_b->SyncFollowedJobs();
  ASSERT_TRUE(there.done.HasBeenNotified());
  {
    absl::MutexLock lock(&there.mu);
    EXPECT_EQ(there.states, (std::vector<JobState>{JobState::kRunning, JobState::kSucceeded}));
    EXPECT_EQ(there.result.artifact_sha256.size(), 64u);
  }
  pool_b->SyncFollowedJobs();  // the job is no longer followed: nothing more
  EXPECT_EQ(there.Count(JobEvent::Kind::kResult), 1);
  EXPECT_EQ(here.Count(JobEvent::Kind::kResult), 1);
  absl::MutexLock lock(&here.mu);
  EXPECT_EQ(here.states, (std::vector<JobState>{JobState::kRunning, JobState::kSucceeded}));
  EXPECT_EQ(here.phases, (std::vector<JobPhase>{JobPhase::kLoading, JobPhase::kFusing, JobPhase::kCalibrating,
                                                JobPhase::kConverting, JobPhase::kStoring}));
}

// A job that another process finished and deleted between two syncs leaves
// its watchers here no result to read: they are told it is gone (the server
// ends their streams NOT_FOUND) instead of waiting for ever.
TEST_F(WorkerPoolTest, WatchersOfAJobDeletedElsewhereBeforeItsResultWasReadAreToldItIsGone) {
  WorkerPool::Options options_a;
  options_a.holder = "host-a:/data";
  options_a.watch_sync = absl::Hours(1);  // the test syncs by calling SyncFollowedJobs
  WorkerPool::Options options_b = options_a;
  options_b.holder = "host-b:/data";
  auto pool_a = NewPool(options_a);
  OtherProcess b = NewPoolOfAnotherProcess(options_b);
  ASSERT_NE(b.pool, nullptr);
  WorkerPool* const pool_b = b.pool.get();
  const std::string id = pool_a->Submit(NewJob("q"))->id;
  CountingWatcher there;
  ASSERT_TRUE(pool_b->events().Subscribe(id, [&] { return b.store->Get(id); }, &there).ok());
  pool_b->SyncFollowedJobs();  // still queued: nothing new, still followed
  EXPECT_FALSE(there.gone.HasBeenNotified());
  EXPECT_EQ(pool_b->events().WatcherCount(id), 1);

  ASSERT_TRUE(pool_a->Cancel(id, "not needed").ok());
  ASSERT_TRUE(pool_a->Delete(id).ok());
  pool_b->SyncFollowedJobs();
  EXPECT_TRUE(there.gone.HasBeenNotified());
  EXPECT_EQ(there.Count(JobEvent::Kind::kResult), 0);
  EXPECT_EQ(pool_b->events().WatcherCount(id), 0);
  EXPECT_TRUE(pool_b->events().FollowedJobs().empty());
}

TEST_F(WorkerPoolTest, WatchersSeeProgressAndResult) {
  auto pool = NewPool();
  Job job = NewJob("m");
  job.spec.model_name = "resnet8";
  std::string id = pool->Submit(job)->id;
  CountingWatcher a, b;
  auto load = [&]() { return pool->store().Get(id); };
  ASSERT_TRUE(pool->events().Subscribe(id, load, &a).ok());
  ASSERT_TRUE(pool->events().Subscribe(id, load, &b).ok());
  pool->Start();
  ASSERT_TRUE(a.done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(b.done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  absl::MutexLock lock(&a.mu);
  EXPECT_EQ(a.kinds.front(), JobEvent::Kind::kSnapshot);
  EXPECT_EQ(a.kinds.back(), JobEvent::Kind::kResult);
  int progress = 0;
  for (auto kind : a.kinds) progress += kind == JobEvent::Kind::kCalibrationProgress;
  EXPECT_EQ(progress, 11);  // 0/10 at the phase start, then one per batch
  // The version the store published, as GetJob shows it (it was missing).
  EXPECT_EQ(a.result.model_name, "resnet8");
  EXPECT_EQ(a.result.model_version, 1);
}

// A cancel acknowledged after the engine last asked (here by another
// replica, through the store, while the artifact is being stored) is the
// job's outcome, as the client was told: no version is published, and the
// artifact stored for it goes. It once ended SUCCEEDED, its model served.
TEST_F(WorkerPoolTest, ACancelAcknowledgedWhileTheArtifactIsStoredIsTheJobsOutcome) {
  FakeClock clock;
  FullDiskStore store(store_.get());  // no failures: it reports the pin
  store.after_pin = [&] { EXPECT_TRUE(store_->RequestCancel("job-late-cancel", "wrong model").ok()); };
  JobEventHub events(&clock);
  JobRunner runner(&store, artifacts_.get(), &engine_, &events, &clock);
  Job job = NewJob("m");
  job.id = "job-late-cancel";
  job.spec.model_name = "resnet8";
  StopSignals stop;
  const Job finished = CreateClaimAndRun(runner, job, clock, &stop);
  EXPECT_EQ(store.pin_calls.load(), 1);
  EXPECT_EQ(finished.state, JobState::kCancelled);
  const Job stored = *store_->Get(job.id);
  EXPECT_EQ(stored.state, JobState::kCancelled);
  ASSERT_TRUE(stored.result.has_value());
  EXPECT_EQ(stored.result->error_code, absl::StatusCode::kCancelled);
  EXPECT_THAT(stored.result->error_message, HasSubstr("cancelled: wrong model"));
  EXPECT_TRUE(stored.result->artifact_id.empty());
  absl::StatusOr<std::vector<ModelVersion>> versions = store_->ListModelVersions("resnet8");
  ASSERT_TRUE(versions.ok()) << versions.status();
  EXPECT_TRUE(versions->empty());
  absl::StatusOr<std::map<std::string, std::vector<std::string>>> listed = artifacts_->List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(listed->empty()) << listed->size() << " artifact(s) left behind";
  EXPECT_EQ(*store_->CancelRequest(job.id), std::nullopt);
}

// A runner whose job was recovered (its lease lost) publishes nothing more:
// its phase and progress events mixed into the new attempt's stream, and one
// after that attempt's result reopened the closed stream as RUNNING.
TEST_F(WorkerPoolTest, ARunnerThatLostItsLeasePublishesNoMoreEvents) {
  FakeClock clock;
  JobEventHub events(&clock);
  JobRunner runner(store_.get(), artifacts_.get(), &engine_, &events, &clock);
  Job job = NewJob("m");
  job.id = "job-lost";
  ASSERT_TRUE(store_->Create(job, 10).ok());
  absl::StatusOr<std::optional<Job>> claimed = store_->ClaimNext(clock.Now(), "host-a:/data", absl::Hours(10));
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  CountingWatcher watcher;
  ASSERT_TRUE(events.Subscribe(job.id, [&]() -> absl::StatusOr<Job> { return **claimed; }, &watcher).ok());
  StopSignals stop;
  stop.lease_lost.store(true);  // recovered elsewhere before the runner got going
  runner.Run(**claimed, absl::InfiniteFuture(), &stop);
  EXPECT_EQ(watcher.Count(JobEvent::Kind::kPhaseStarted), 0);
  EXPECT_EQ(watcher.Count(JobEvent::Kind::kCalibrationProgress), 0);
}

// CancelJob on this server while the store could not record the request
// (busy past its timeout): the job is cancelled here only, and the client
// was told so. The store has no cancel row to refuse the success with, so
// the runner itself must not record one: the job ended SUCCEEDED and
// published its version. Cancelled after the pin, and during a busy pin.
TEST_F(WorkerPoolTest, ACancelOnlyThisServerKnowsOfIsTheJobsOutcome) {
  for (const bool while_busy : {false, true}) {
    SCOPED_TRACE(while_busy ? "cancelled while the pin waits for a busy store" : "cancelled after the pin");
    FakeClock clock;
    FullDiskStore store(store_.get());
    StopSignals stop;
    auto cancel_here = [&stop] {
      stop.cancel_reason = "wrong model";
      stop.cancelled.store(true);
    };
    std::thread canceller;
    if (while_busy) {
      store.pin_busy = 1000000;
      canceller = std::thread([&] {
        while (store.pin_calls.load() < 3) absl::SleepFor(absl::Milliseconds(1));
        cancel_here();
      });
    } else {
      store.after_pin = cancel_here;
    }
    JobEventHub events(&clock);
    JobRunner runner(&store, artifacts_.get(), &engine_, &events, &clock, /*max_batch_bytes=*/0,
                     /*finish_retry_backoff=*/absl::Milliseconds(1));
    Job job = NewJob("m");
    job.id = while_busy ? "job-cancel-busy" : "job-cancel-here";
    job.spec.model_name = job.id;
    const Job finished = CreateClaimAndRun(runner, job, clock, &stop);
    if (canceller.joinable()) canceller.join();
    EXPECT_EQ(finished.state, JobState::kCancelled);
    const Job stored = *store_->Get(job.id);
    EXPECT_EQ(stored.state, JobState::kCancelled);
    ASSERT_TRUE(stored.result.has_value());
    EXPECT_THAT(stored.result->error_message, HasSubstr("wrong model"));
    EXPECT_TRUE(store_->ListModelVersions(job.id)->empty());
    absl::StatusOr<std::map<std::string, std::vector<std::string>>> listed = artifacts_->List();
    ASSERT_TRUE(listed.ok()) << listed.status();
    EXPECT_TRUE(listed->empty()) << listed->size() << " artifact(s) left behind";
  }
}

// Cancelled here (CancelJob on this server) just as the engine returned:
// nothing is stored.
TEST_F(WorkerPoolTest, ACancelSeenAsTheEngineReturnsStoresNothing) {
  FakeClock clock;
  StopSignals stop;
  FinishesThen engine([&] {
    stop.cancel_reason = "not needed";
    stop.cancelled.store(true);  // after the last check
  });
  FullDiskStore store(store_.get());
  JobEventHub events(&clock);
  JobRunner runner(&store, artifacts_.get(), &engine, &events, &clock);
  Job job = NewJob("m");
  job.id = "job-cancelled-as-it-returns";
  const Job finished = CreateClaimAndRun(runner, job, clock, &stop);
  EXPECT_EQ(finished.state, JobState::kCancelled);
  EXPECT_EQ(store.pin_calls.load(), 0);
  ASSERT_TRUE(finished.result.has_value());
  EXPECT_THAT(finished.result->error_message, HasSubstr("cancelled: not needed"));
  EXPECT_EQ(store_->Get(job.id)->state, JobState::kCancelled);
}

// A job's result shows the client's references, never this server's files:
// the engine's descriptions of its inputs (the tuning set it judged on,
// advice, warnings) name local paths.
TEST_F(WorkerPoolTest, AResultNamesTheInputsAsTheClientDidNotThisServersFiles) {
  fs::create_directories(dir_ + "/datasets");
  std::ofstream(dir_ + "/datasets/val.bin") << "x";
  const InputLocator locator(dir_, /*blobs=*/nullptr);
  class DescribesItsInputs : public QuantizationEngine {
   public:
    absl::StatusOr<EngineOutput> Run(const engine::QuantizeOptions& options) override {
      EngineOutput output;
      output.artifact = "int8";
      output.manifest_json = "{}";
      engine::TuningReport tuning;
      tuning.judged_on = options.calibration.path + " (1 labelled image)";
      output.report.tuning = tuning;
      output.report.advice.push_back("calibrate on more of " + options.calibration.path);
      output.report.warnings.push_back(options.calibration.path + " is small");
      return output;
    }
  } engine;
  FakeClock clock;
  StopSignals stop;
  JobEventHub events(&clock);
  JobRunner runner(store_.get(), artifacts_.get(), &engine, &events, &clock, 0, absl::Milliseconds(1), &locator);
  Job job = NewJob(DataDirReference("datasets/val.bin"));
  job.id = "job-described";
  job.spec.calibration.path = DataDirReference("datasets/val.bin");
  const Job finished = CreateClaimAndRun(runner, job, clock, &stop);
  ASSERT_EQ(finished.state, JobState::kSucceeded) << finished.result->error_message;
  absl::StatusOr<Job> stored = store_->Get(job.id);
  ASSERT_TRUE(stored.ok() && stored->result.has_value()) << stored.status();
  const engine::QuantizeReport& report = stored->result->report;
  ASSERT_TRUE(report.tuning.has_value());
  for (const std::string& text : {report.tuning->judged_on, report.advice.at(0), report.warnings.at(0)}) {
    EXPECT_THAT(text, Not(HasSubstr(dir_))) << text;
    EXPECT_THAT(text, HasSubstr("datasets/val.bin")) << text;
  }
}

// An artifact store whose Put stores the files, then fails (a folder sync
// that fails after the rename, say).
class FailsAfterStoring : public testing::ForwardingArtifactStore {
 public:
  using ForwardingArtifactStore::ForwardingArtifactStore;
  absl::StatusOr<StoredArtifact> Put(const std::string& job_id, const std::string& bytes,
                                     const std::string& manifest_json) override {
    QUANTD_RETURN_IF_ERROR(real_->Put(job_id, bytes, manifest_json).status());
    return absl::InternalError("cannot sync the folder artifacts: Input/output error");
  }
};

// A job whose artifact failed to store is FAILED and leaves no files (they
// counted against the quota until the hourly sweep); the bytes another job
// holds stay, without the failed job's manifest.
TEST_F(WorkerPoolTest, AJobThatFailsStoringItsArtifactLeavesNoFiles) {
  FakeClock clock;
  StopSignals stop;
  FinishesThen engine([] {});
  JobEventHub events(&clock);
  FailsAfterStoring failing(artifacts_.get());
  JobRunner runner(store_.get(), &failing, &engine, &events, &clock);
  Job job = NewJob("m");
  job.id = "job-store-fails";
  const Job finished = CreateClaimAndRun(runner, job, clock, &stop);
  EXPECT_EQ(finished.state, JobState::kFailed);
  ASSERT_TRUE(finished.result.has_value());
  EXPECT_THAT(finished.result->error_message, HasSubstr("storing the artifact failed: cannot sync the folder"));
  absl::StatusOr<std::map<std::string, std::vector<std::string>>> listed = artifacts_->List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(listed->empty()) << listed->size() << " artifact(s) left behind";

  // The same bytes, held by a job that stored them fine.
  JobRunner fine(store_.get(), artifacts_.get(), &engine, &events, &clock);
  Job held = NewJob("m");
  held.id = "job-held";
  ASSERT_EQ(CreateClaimAndRun(fine, held, clock, &stop).state, JobState::kSucceeded);
  Job again = NewJob("m");
  again.id = "job-store-fails-again";
  EXPECT_EQ(CreateClaimAndRun(runner, again, clock, &stop).state, JobState::kFailed);
  listed = artifacts_->List();
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_THAT(listed->begin()->second, ::testing::ElementsAre("job-held"));
}

// A job claimed as the pool stops, with a cancel asked meanwhile, ends
// CANCELLED without running; its watchers here (and the metrics, an
// observer) hear it as they hear any job's end. They once heard nothing.
TEST_F(WorkerPoolTest, AJobCancelledAsThePoolStopsIsToldToItsWatchers) {
  FullDiskStore store(store_.get());
  absl::Notification claimed, stopping;
  store.after_claim = [&] {
    claimed.Notify();
    stopping.WaitForNotification();
  };
  WorkerPool::Options options = FastRetries();
  options.workers = 1;
  auto pool = NewPool(options, Clock::Real(), &store);
  ASSERT_NE(pool, nullptr);
  pool->Start();
  absl::StatusOr<Job> job = pool->Submit(NewJob("m1"));
  ASSERT_TRUE(job.ok()) << job.status();
  claimed.WaitForNotification();
  ASSERT_TRUE(store_->RequestCancel(job->id, "not needed").ok());
  CountingWatcher watcher;
  ASSERT_TRUE(pool->events().Subscribe(job->id, [&] { return store_->Get(job->id); }, &watcher).ok());
  std::thread stopper([&] { pool->Stop(); });
  absl::SleepFor(absl::Milliseconds(200));  // Stop marks the pool stopping at once, then waits for the worker
  stopping.Notify();
  stopper.join();
  EXPECT_EQ(store_->Get(job->id)->state, JobState::kCancelled);
  EXPECT_EQ(engine_.runs_returned.load(), 0) << "the job ran";
  ASSERT_TRUE(watcher.done.HasBeenNotified());
  absl::MutexLock lock(&watcher.mu);
  EXPECT_EQ(watcher.states.back(), JobState::kCancelled);
  EXPECT_THAT(watcher.result.error_message, HasSubstr("cancelled: not needed"));
}

}  // namespace
}  // namespace quantd::worker
