#include "worker/dynamic_batcher.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <new>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/base/thread_name.h"

namespace quantd::worker {
namespace {

using ::testing::ElementsAre;

constexpr int64_t kValuesPerSample = 2;

// Each sample's output is its two input values times ten and plus one, so a
// caller can tell its own rows. Records the batch size of every pass; can
// hold a pass until released.
class FakeModel : public BatchableModel {
 public:
  absl::StatusOr<engine::ServingOutput> Run(std::vector<float> samples, int64_t batch) const override {
    {
      absl::MutexLock lock(&mu_);
      passes_.push_back(batch);
      mu_.Await(absl::Condition(
          +[](const bool* open) { return *open; }, &open_));
    }
    if (throw_bad_alloc_) throw std::bad_alloc();
    if (!error_.ok()) return error_;
    engine::ServingOutput out;
    out.shape = {batch, kValuesPerSample};
    for (float v : samples) out.values.push_back(v * 10 + 1);
    return out;
  }
  void Hold() {
    absl::MutexLock lock(&mu_);
    open_ = false;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }
  // Waits until `n` passes have started.
  void AwaitPasses(size_t n) const {
    absl::MutexLock lock(&mu_);
    auto started = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return passes_.size() >= n; };
    mu_.Await(absl::Condition(&started));
  }
  std::vector<int64_t> passes() const {
    absl::MutexLock lock(&mu_);
    return passes_;
  }
  void FailWith(absl::Status error) { error_ = std::move(error); }
  void ThrowBadAlloc(bool on) { throw_bad_alloc_ = on; }

 private:
  mutable absl::Mutex mu_;
  mutable std::vector<int64_t> passes_ ABSL_GUARDED_BY(mu_);
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  absl::Status error_;
  std::atomic<bool> throw_bad_alloc_{false};
};

// A model whose scores would change with the pass's size (FP32).
class AloneModel : public FakeModel {
 public:
  bool coalesces() const override { return false; }
};

// One request's outcome.
struct Outcome {
  absl::Notification done;
  absl::StatusOr<engine::ServingOutput> output;
  BatchStats stats;
  std::thread::id thread;  // where `done` ran
  std::string thread_name;  // and its name
};

std::vector<float> Samples(int64_t batch, float first) {
  std::vector<float> values;
  for (int64_t i = 0; i < batch * kValuesPerSample; ++i) values.push_back(first + static_cast<float>(i));
  return values;
}

absl::Status Submit(DynamicBatcher& batcher, const std::shared_ptr<FakeModel>& model, int64_t batch, float first,
                    Outcome* outcome, DynamicBatcher::Abandoned abandoned = nullptr) {
  return batcher.Submit(
      model, Samples(batch, first), batch,
      [outcome](absl::StatusOr<engine::ServingOutput> output, const BatchStats& stats) {
        outcome->output = std::move(output);
        outcome->stats = stats;
        outcome->thread = std::this_thread::get_id();
        outcome->thread_name = ThisThreadName();
        outcome->done.Notify();
      },
      std::move(abandoned));
}

DynamicBatcher::Options OneThread(int64_t max_batch_size, absl::Duration delay) {
  DynamicBatcher::Options options;
  options.threads = 1;
  options.max_batch_size = max_batch_size;
  options.max_queue_delay = delay;
  options.run_on_caller_when_idle = false;  // tests of queueing; the caller path has its own
  return options;
}

TEST(DynamicBatcherTest, RequestsWithinTheDelayRunAsOneBatchAndEachGetsItsOwnRows) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(4, absl::InfiniteDuration()), Clock::Real());
  Outcome a, b, c;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &a).ok());
  ASSERT_TRUE(Submit(batcher, model, 2, 100, &b).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 200, &c).ok());  // 4 samples: the batch is full
  for (Outcome* o : {&a, &b, &c}) o->done.WaitForNotification();
  EXPECT_THAT(model->passes(), ElementsAre(4));
  ASSERT_TRUE(a.output.ok()) << a.output.status();
  EXPECT_THAT(a.output->shape, ElementsAre(1, 2));
  EXPECT_THAT(a.output->values, ElementsAre(1, 11));
  ASSERT_TRUE(b.output.ok());
  EXPECT_THAT(b.output->shape, ElementsAre(2, 2));
  EXPECT_THAT(b.output->values, ElementsAre(1001, 1011, 1021, 1031));
  ASSERT_TRUE(c.output.ok());
  EXPECT_THAT(c.output->values, ElementsAre(2001, 2011));
  EXPECT_EQ(b.stats.executed_batch_size, 4);
  EXPECT_EQ(b.thread_name, "quantd-infer");  // a batcher thread ran the pass and delivered
}

TEST(DynamicBatcherTest, ALoneRequestRunsOnceItsDelayIsOver) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(64, absl::Milliseconds(1)), Clock::Real());
  Outcome a;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &a).ok());
  a.done.WaitForNotification();
  ASSERT_TRUE(a.output.ok());
  EXPECT_THAT(model->passes(), ElementsAre(1));
}

TEST(DynamicBatcherTest, RequestsThatQueueBehindARunningPassJoinTheNextWithoutSplitting) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(5, absl::ZeroDuration()), Clock::Real());
  model->Hold();
  Outcome first, b, c, d, e;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &first).ok());
  model->AwaitPasses(1);
  ASSERT_TRUE(Submit(batcher, model, 2, 100, &b).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 200, &c).ok());
  ASSERT_TRUE(Submit(batcher, model, 3, 300, &d).ok());  // does not fit beside b and c (5)
  ASSERT_TRUE(Submit(batcher, model, 2, 400, &e).ok());
  model->Release();
  for (Outcome* o : {&first, &b, &c, &d, &e}) o->done.WaitForNotification();
  EXPECT_THAT(model->passes(), ElementsAre(1, 3, 5));
  ASSERT_TRUE(d.output.ok());
  EXPECT_THAT(d.output->values, ElementsAre(3001, 3011, 3021, 3031, 3041, 3051));
  ASSERT_TRUE(e.output.ok());
  EXPECT_THAT(e.output->values, ElementsAre(4001, 4011, 4021, 4031));
  EXPECT_EQ(c.stats.executed_batch_size, 3);
}

// Callers that went away while their requests waited (a client's deadline
// passed behind a long pass) get the status their Abandoned callback gives
// and take no place in the pass; the others' rows stay their own.
TEST(DynamicBatcherTest, RequestsWhoseCallersWentAwayWhileQueuedAreNotRun) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(8, absl::ZeroDuration()), Clock::Real());
  model->Hold();
  Outcome first, gone, kept, also_gone, all_gone;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &first).ok());
  model->AwaitPasses(1);
  std::atomic<bool> caller_left{false};
  const DynamicBatcher::Abandoned left = [&caller_left] {
    return caller_left.load() ? absl::CancelledError("the caller left") : absl::OkStatus();
  };
  const DynamicBatcher::Abandoned timed_out = [&caller_left] {
    return caller_left.load() ? absl::DeadlineExceededError("parameters[timeout] passed") : absl::OkStatus();
  };
  ASSERT_TRUE(Submit(batcher, model, 2, 100, &gone, left).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 200, &kept).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 300, &also_gone, timed_out).ok());
  caller_left = true;
  model->Release();
  for (Outcome* o : {&first, &gone, &kept, &also_gone}) o->done.WaitForNotification();
  EXPECT_THAT(model->passes(), ElementsAre(1, 1));  // kept ran alone
  ASSERT_TRUE(kept.output.ok()) << kept.output.status();
  EXPECT_THAT(kept.output->values, ElementsAre(2001, 2011));
  EXPECT_EQ(kept.stats.executed_batch_size, 1);
  EXPECT_EQ(gone.output.status(), absl::CancelledError("the caller left"));
  EXPECT_EQ(also_gone.output.status(), absl::DeadlineExceededError("parameters[timeout] passed"));
  for (Outcome* o : {&gone, &also_gone}) {
    EXPECT_EQ(o->stats.executed_batch_size, 0);  // never in a pass
    EXPECT_FALSE(o->stats.first_of_pass);
  }
  // A pass whose every request was abandoned does not run at all.
  model->Hold();
  Outcome blocker;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &blocker).ok());
  model->AwaitPasses(3);
  ASSERT_TRUE(Submit(batcher, model, 1, 400, &all_gone, left).ok());
  model->Release();
  blocker.done.WaitForNotification();
  all_gone.done.WaitForNotification();
  EXPECT_EQ(all_gone.output.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(model->passes(), ElementsAre(1, 1, 1));
}

// Abandoned requests take no room in a pass: the live ones behind them
// fill it (they were counted towards max_batch_size, and the pass ran
// smaller while live requests waited for the next).
TEST(DynamicBatcherTest, AbandonedRequestsLeaveTheirRoomInAPassToLiveOnes) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(3, absl::ZeroDuration()), Clock::Real());
  model->Hold();
  Outcome first, gone, a, b, c;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &first).ok());
  model->AwaitPasses(1);
  std::atomic<bool> caller_left{false};
  ASSERT_TRUE(Submit(batcher, model, 2, 100, &gone, [&caller_left] {
                return caller_left.load() ? absl::CancelledError("the caller left") : absl::OkStatus();
              }).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 200, &a).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 300, &b).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 400, &c).ok());
  caller_left = true;
  model->Release();
  for (Outcome* o : {&first, &gone, &a, &b, &c}) o->done.WaitForNotification();
  EXPECT_THAT(model->passes(), ElementsAre(1, 3));
  EXPECT_EQ(gone.output.status(), absl::CancelledError("the caller left"));
  ASSERT_TRUE(c.output.ok()) << c.output.status();
  EXPECT_THAT(c.output->values, ElementsAre(4001, 4011));
}

TEST(DynamicBatcherTest, WithoutBatchingEveryRequestRunsAlone) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::ZeroDuration());
  options.batching = false;
  DynamicBatcher batcher(options, Clock::Real());
  model->Hold();
  Outcome a, b, c;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &a).ok());
  model->AwaitPasses(1);
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &b).ok());
  ASSERT_TRUE(Submit(batcher, model, 2, 200, &c).ok());
  model->Release();
  for (Outcome* o : {&a, &b, &c}) o->done.WaitForNotification();
  EXPECT_THAT(model->passes(), ElementsAre(1, 1, 2));
}

// With batching on, a model that does not coalesce runs each request as a
// pass of its own, at once when due (no delay waiting for others), while
// another model's requests still coalesce.
TEST(DynamicBatcherTest, AModelThatDoesNotCoalesceRunsEachRequestAloneBesideOnesThatDo) {
  auto alone = std::make_shared<AloneModel>();
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(8, absl::Hours(1)), Clock::Real());
  Outcome a, b, c, d, e;
  ASSERT_TRUE(Submit(batcher, alone, 1, 0, &a).ok());
  ASSERT_TRUE(Submit(batcher, alone, 2, 100, &b).ok());
  ASSERT_TRUE(Submit(batcher, alone, 1, 200, &c).ok());
  for (Outcome* o : {&a, &b, &c}) o->done.WaitForNotification();  // not after the hour's delay
  EXPECT_THAT(alone->passes(), ElementsAre(1, 2, 1));
  ASSERT_TRUE(b.output.ok());
  EXPECT_THAT(b.output->values, ElementsAre(1001, 1011, 1021, 1031));
  EXPECT_EQ(b.stats.executed_batch_size, 2);
  ASSERT_TRUE(Submit(batcher, model, 4, 300, &d).ok());
  ASSERT_TRUE(Submit(batcher, model, 4, 400, &e).ok());  // 8: full, so due
  for (Outcome* o : {&d, &e}) o->done.WaitForNotification();
  EXPECT_THAT(model->passes(), ElementsAre(8));
}

TEST(DynamicBatcherTest, AFullModelQueueIsResourceExhaustedAndOtherModelsStillQueue) {
  auto model = std::make_shared<FakeModel>();
  auto other = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::ZeroDuration());
  options.queue_capacity = 2;
  DynamicBatcher batcher(options, Clock::Real());
  model->Hold();
  Outcome running, b, c, refused, elsewhere;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &running).ok());
  model->AwaitPasses(1);
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &b).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 200, &c).ok());
  const absl::Status full = Submit(batcher, model, 1, 300, &refused);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()), ::testing::HasSubstr("--inference_queue_capacity"));
  EXPECT_TRUE(Submit(batcher, other, 1, 400, &elsewhere).ok());
  model->Release();
  for (Outcome* o : {&running, &b, &c, &elsewhere}) {
    o->done.WaitForNotification();
    EXPECT_TRUE(o->output.ok());
  }
  EXPECT_FALSE(refused.done.HasBeenNotified());
}

TEST(DynamicBatcherTest, AFailedPassFailsEachOfItsRequests) {
  auto model = std::make_shared<FakeModel>();
  model->FailWith(absl::InternalError("kernel said no"));
  DynamicBatcher batcher(OneThread(2, absl::InfiniteDuration()), Clock::Real());
  Outcome a, b;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &a).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &b).ok());
  for (Outcome* o : {&a, &b}) {
    o->done.WaitForNotification();
    EXPECT_EQ(o->output.status().code(), absl::StatusCode::kInternal);
  }
  EXPECT_THAT(model->passes(), ElementsAre(2));
}

// A pass that throws (out of memory) once ended the process from a batcher
// thread: each of its requests is answered RESOURCE_EXHAUSTED instead, and
// the batcher goes on serving.
TEST(DynamicBatcherTest, APassThatThrowsAnswersEachRequestAndTheBatcherGoesOn) {
  auto model = std::make_shared<FakeModel>();
  model->ThrowBadAlloc(true);
  DynamicBatcher batcher(OneThread(2, absl::ZeroDuration()), Clock::Real());
  Outcome a, b;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &a).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &b).ok());
  for (Outcome* o : {&a, &b}) {
    o->done.WaitForNotification();
    EXPECT_EQ(o->output.status().code(), absl::StatusCode::kResourceExhausted);
  }
  model->ThrowBadAlloc(false);
  Outcome after;
  ASSERT_TRUE(Submit(batcher, model, 1, 5, &after).ok());
  after.done.WaitForNotification();
  ASSERT_TRUE(after.output.ok()) << after.output.status();
  EXPECT_EQ(after.output->values.front(), 51.0f);
}

// A caller's answer callback that throws (its own encoding failed) must not
// end the batcher thread or cost the other requests of its pass their answers.
TEST(DynamicBatcherTest, ACallbackThatThrowsLeavesTheOtherRequestsOfItsPassAnswered) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(3, absl::InfiniteDuration()), Clock::Real());
  Outcome before, after;
  absl::Notification thrower_called;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &before).ok());
  ASSERT_TRUE(batcher
                  .Submit(
                      model, Samples(1, 50), 1,
                      [&thrower_called](absl::StatusOr<engine::ServingOutput>, const BatchStats&) {
                        thrower_called.Notify();
                        throw std::runtime_error("encoding failed");
                      },
                      nullptr)
                  .ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &after).ok());  // 3 samples: the batch is full
  for (Outcome* o : {&before, &after}) o->done.WaitForNotification();
  EXPECT_TRUE(thrower_called.HasBeenNotified());
  EXPECT_THAT(model->passes(), ElementsAre(3));
  ASSERT_TRUE(after.output.ok()) << after.output.status();
  EXPECT_THAT(after.output->values, ElementsAre(1001, 1011));  // its own rows, after the thrower's

  Outcome next;  // the batcher thread is still there
  ASSERT_TRUE(Submit(batcher, model, 1, 5, &next).ok());
  batcher.Shutdown();
  ASSERT_TRUE(next.done.HasBeenNotified());
  ASSERT_TRUE(next.output.ok()) << next.output.status();
  EXPECT_EQ(next.output->values.front(), 51.0f);
}

// Dropping the requests whose callers left runs their checks and answers
// on a batcher thread too: a check or an answer that throws there ended the
// process. It ends its own request only.
TEST(DynamicBatcherTest, AnAbandonedCheckOrAnswerThatThrowsEndsItsOwnRequestOnly) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(3, absl::InfiniteDuration()), Clock::Real());
  Outcome kept, check_threw;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &kept).ok());
  ASSERT_TRUE(
      Submit(batcher, model, 1, 50, &check_threw, []() -> absl::Status { throw std::bad_alloc(); }).ok());
  absl::Notification thrower_called;
  ASSERT_TRUE(batcher
                  .Submit(
                      model, Samples(1, 100), 1,
                      [&thrower_called](absl::StatusOr<engine::ServingOutput>, const BatchStats&) {
                        thrower_called.Notify();
                        throw std::runtime_error("encoding failed");
                      },
                      [] { return absl::CancelledError("the caller left"); })
                  .ok());  // 3 samples: the batch is full
  kept.done.WaitForNotification();
  check_threw.done.WaitForNotification();
  EXPECT_TRUE(thrower_called.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(kept.output.ok()) << kept.output.status();
  EXPECT_EQ(check_threw.output.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(model->passes(), ElementsAre(1));  // only the one still wanted

  Outcome next;  // the batcher thread is still there
  ASSERT_TRUE(Submit(batcher, model, 1, 5, &next).ok());
  batcher.Shutdown();
  ASSERT_TRUE(next.done.HasBeenNotified());
  EXPECT_TRUE(next.output.ok()) << next.output.status();
}

TEST(DynamicBatcherTest, ShutdownRunsWhatIsQueuedAndRefusesMore) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(8, absl::InfiniteDuration()), Clock::Real());
  Outcome a, b, late;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &a).ok());
  ASSERT_TRUE(Submit(batcher, model, 2, 100, &b).ok());
  batcher.Shutdown();
  EXPECT_TRUE(a.done.HasBeenNotified());
  EXPECT_TRUE(b.done.HasBeenNotified());
  EXPECT_THAT(model->passes(), ElementsAre(3));
  EXPECT_EQ(Submit(batcher, model, 1, 0, &late).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Submit(batcher, model, 9, 0, &late).code(), absl::StatusCode::kInvalidArgument);
}

TEST(DynamicBatcherTest, OnAnIdleBatcherARequestRunsOnTheSubmittingThreadWithoutWaitingForADelay) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::Hours(1));
  options.run_on_caller_when_idle = true;
  int inits = 0;
  options.thread_init = [&inits] { ++inits; };  // the batcher thread's and this one's
  FakeClock clock;
  DynamicBatcher batcher(options, &clock);
  Outcome a, b, c;
  ASSERT_TRUE(Submit(batcher, model, 2, 0, &a).ok());
  EXPECT_TRUE(a.done.HasBeenNotified());  // ran before Submit returned
  EXPECT_EQ(a.thread, std::this_thread::get_id());
  ASSERT_TRUE(a.output.ok());
  EXPECT_THAT(a.output->values, ElementsAre(1, 11, 21, 31));
  clock.Advance(absl::Hours(2));  // quiet for longer than the delay: idle again
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &b).ok());
  EXPECT_EQ(b.thread, std::this_thread::get_id());
  // Right after a pass (as under load, when its clients send again): queued,
  // to wait for company.
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &c).ok());
  EXPECT_FALSE(c.done.HasBeenNotified());
  batcher.Shutdown();  // runs what is queued
  ASSERT_TRUE(c.done.HasBeenNotified());
  EXPECT_NE(c.thread, std::this_thread::get_id());
  EXPECT_EQ(inits, 2);  // once per thread, not per request
  EXPECT_THAT(model->passes(), ElementsAre(2, 1, 1));
}

// A request may wait before Submit (a cold model's load); if its caller left
// meanwhile, it is not run on the idle batcher's caller path either.
TEST(DynamicBatcherTest, OnAnIdleBatcherARequestWhoseCallerLeftIsNotRun) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::Hours(1));
  options.run_on_caller_when_idle = true;
  FakeClock clock;
  DynamicBatcher batcher(options, &clock);
  Outcome gone;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &gone, [] { return absl::CancelledError("the caller went away"); }).ok());
  ASSERT_TRUE(gone.done.HasBeenNotified());
  EXPECT_EQ(gone.output.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(model->passes(), ElementsAre());
  EXPECT_EQ(gone.stats.executed_batch_size, 0);
}

TEST(BatchDueAtTest, TheDelayCountsFromArrivalOrTheLastPassEndButAtMostTwice) {
  const absl::Time t = absl::FromUnixSeconds(1000);
  const absl::Duration d = absl::Milliseconds(1);
  EXPECT_EQ(BatchDueAt(t, absl::InfinitePast(), d), t + d);               // no pass yet
  EXPECT_EQ(BatchDueAt(t, t - absl::Seconds(1), d), t + d);               // an old pass
  EXPECT_EQ(BatchDueAt(t, t + absl::Microseconds(300), d), t + absl::Microseconds(1300));  // a pass ended since
  EXPECT_EQ(BatchDueAt(t, t + absl::Seconds(5), d), t + 2 * d);           // passes keep ending: capped
  EXPECT_EQ(BatchDueAt(t, t + absl::Seconds(5), absl::ZeroDuration()), t);
}

TEST(DynamicBatcherTest, UnderLoadTheDelayCountsFromTheEndOfTheLastPass) {
  // A request queued during a pass would be due the moment the pass ends;
  // instead it waits from then, for the clients just answered (up to twice
  // the delay after it arrived).
  auto model = std::make_shared<FakeModel>();
  FakeClock clock;
  DynamicBatcher batcher(OneThread(8, absl::Milliseconds(100)), &clock);
  model->Hold();
  Outcome first, b;
  ASSERT_TRUE(Submit(batcher, model, 1, 0, &first).ok());
  clock.Advance(absl::Milliseconds(100));  // first is due: its pass starts, and is held
  model->AwaitPasses(1);
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &b).ok());  // b arrives at +100 ms
  clock.Advance(absl::Milliseconds(120));  // b's own delay is over while the pass runs
  model->Release();
  first.done.WaitForNotification();  // the pass ends at +220 ms
  absl::SleepFor(absl::Milliseconds(50));  // room for a batcher that ran b at once to do so
  EXPECT_FALSE(b.done.HasBeenNotified()) << "b ran when the pass ended";
  clock.Advance(absl::Milliseconds(80));  // +300 ms: 200 ms after b arrived, the cap
  b.done.WaitForNotification();
  EXPECT_EQ(b.stats.queue_time, absl::Milliseconds(200));
  EXPECT_THAT(model->passes(), ElementsAre(1, 1));
}

// Shutdown returns only once a pass that a request runs on its own thread
// has ended: after it, the batcher may be destroyed under that pass.
TEST(DynamicBatcherTest, ShutdownWaitsForAPassRunningOnTheSubmittingThread) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::ZeroDuration());
  options.run_on_caller_when_idle = true;
  DynamicBatcher batcher(options, Clock::Real());
  model->Hold();
  Outcome first;
  std::thread caller([&] { ASSERT_TRUE(Submit(batcher, model, 1, 0, &first).ok()); });
  model->AwaitPasses(1);  // running on `caller`
  absl::Notification shut_down;
  std::thread stopping([&] {
    batcher.Shutdown();
    shut_down.Notify();
  });
  std::thread second_stop([&] { batcher.Shutdown(); });  // a second caller waits for the first
  EXPECT_FALSE(shut_down.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  model->Release();
  caller.join();
  stopping.join();
  second_stop.join();
  EXPECT_TRUE(shut_down.HasBeenNotified());
  ASSERT_TRUE(first.done.HasBeenNotified());
  EXPECT_TRUE(first.output.ok());
}

TEST(DynamicBatcherTest, RequestsThatFindEverySlotBusyQueueAndRunCoalescedOnTheBatchersThread) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::ZeroDuration());
  options.run_on_caller_when_idle = true;
  DynamicBatcher batcher(options, Clock::Real());
  model->Hold();
  Outcome first, b, c;
  std::thread caller([&] { ASSERT_TRUE(Submit(batcher, model, 1, 0, &first).ok()); });
  model->AwaitPasses(1);  // the caller holds the only slot
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &b).ok());
  ASSERT_TRUE(Submit(batcher, model, 2, 200, &c).ok());
  EXPECT_FALSE(b.done.HasBeenNotified());  // queued, not run here
  const std::thread::id caller_id = caller.get_id();
  model->Release();
  caller.join();
  for (Outcome* o : {&first, &b, &c}) o->done.WaitForNotification();
  EXPECT_EQ(first.thread, caller_id);
  EXPECT_NE(b.thread, std::this_thread::get_id());
  EXPECT_EQ(b.thread, c.thread);
  EXPECT_THAT(model->passes(), ElementsAre(1, 3));
  ASSERT_TRUE(c.output.ok());
  EXPECT_THAT(c.output->values, ElementsAre(2001, 2011, 2021, 2031));
}

TEST(DynamicBatcherTest, AfterAPassOfSeveralRequestsTheNextQueuesUntilAPassRunsAlone) {
  // Concurrent clients: the request after a coalesced pass comes from one of
  // the clients just answered, and the others are about to send too. Run
  // alone on its own thread, it would hold the slot for a pass of one.
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::ZeroDuration());
  options.run_on_caller_when_idle = true;
  DynamicBatcher batcher(options, Clock::Real());
  model->Hold();
  Outcome first, b, c, d;
  std::thread caller([&] { ASSERT_TRUE(Submit(batcher, model, 1, 0, &first).ok()); });
  model->AwaitPasses(1);
  ASSERT_TRUE(Submit(batcher, model, 1, 100, &b).ok());
  ASSERT_TRUE(Submit(batcher, model, 1, 200, &c).ok());
  model->Release();
  caller.join();
  c.done.WaitForNotification();
  ASSERT_TRUE(Submit(batcher, model, 1, 300, &d).ok());
  d.done.WaitForNotification();
  EXPECT_NE(d.thread, std::this_thread::get_id());  // queued, although nothing ran and the delay is 0
  EXPECT_THAT(model->passes(), ElementsAre(1, 2, 1));
  // A pass of one request ended: one client, so again run at once. (The
  // batcher thread counts d's pass just after d's callback: a few tries,
  // each a little later, for a loaded machine where that thread is slow to
  // get the CPU back.)
  bool ran_here = false;
  for (int i = 0; i < 100 && !ran_here; ++i) {
    if (i > 0) absl::SleepFor(absl::Milliseconds(std::min(i, 20)));  // the batcher thread's bookkeeping
    Outcome e;
    ASSERT_TRUE(Submit(batcher, model, 1, 400, &e).ok());
    e.done.WaitForNotification();
    ran_here = e.thread == std::this_thread::get_id();
  }
  EXPECT_TRUE(ran_here);
}

TEST(DynamicBatcherTest, ARequestThatFindsAPassRunningQueuesForABatcherThreadEvenWithASlotFree) {
  auto model = std::make_shared<FakeModel>();
  auto other = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::Microseconds(50));
  options.threads = 2;
  options.run_on_caller_when_idle = true;
  FakeClock clock;
  DynamicBatcher batcher(options, &clock);
  model->Hold();
  Outcome first, b;
  std::thread caller([&] { ASSERT_TRUE(Submit(batcher, model, 1, 0, &first).ok()); });
  model->AwaitPasses(1);
  ASSERT_TRUE(Submit(batcher, other, 1, 100, &b).ok());  // the second slot, on a batcher thread
  absl::SleepFor(absl::Milliseconds(50));  // room for a batcher that ran b at once to do so
  EXPECT_FALSE(b.done.HasBeenNotified()) << "b did not wait for company";
  clock.Advance(absl::Microseconds(50));
  b.done.WaitForNotification();
  EXPECT_EQ(b.stats.queue_time, absl::Microseconds(50));  // it waited for company, the delay
  EXPECT_NE(b.thread, std::this_thread::get_id());
  EXPECT_FALSE(first.done.HasBeenNotified());
  model->Release();
  caller.join();
  EXPECT_TRUE(first.done.HasBeenNotified());
}

// A batch-1 request whose callback blocks until `may_finish` (a slow
// response write), noting the thread it was delivered on.
struct BlockedDelivery {
  absl::Notification delivering, may_finish;
  std::thread::id thread;
  absl::Status Submit(DynamicBatcher& batcher, const std::shared_ptr<FakeModel>& model) {
    return batcher.Submit(model, Samples(1, 0), 1,
                          [this](absl::StatusOr<engine::ServingOutput> output, const BatchStats&) {
                            EXPECT_TRUE(output.ok());
                            thread = std::this_thread::get_id();
                            delivering.Notify();
                            may_finish.WaitForNotification();
                          });
  }
};

TEST(DynamicBatcherTest, WithCompletionThreadsTheNextPassDoesNotWaitForTheLastOnesCallbacks) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::ZeroDuration());
  options.completion_threads = 1;
  DynamicBatcher batcher(options, Clock::Real());
  BlockedDelivery a;
  ASSERT_TRUE(a.Submit(batcher, model).ok());
  a.delivering.WaitForNotification();
  Outcome b;
  ASSERT_TRUE(Submit(batcher, model, 2, 100, &b).ok());
  model->AwaitPasses(2);  // b's pass ran while a's callback still blocks
  EXPECT_FALSE(b.done.HasBeenNotified());  // delivered in order, after a's
  a.may_finish.Notify();
  b.done.WaitForNotification();
  EXPECT_EQ(b.thread, a.thread);  // the completion thread
  EXPECT_EQ(b.thread_name, "quantd-deliver");
  EXPECT_NE(b.thread, std::this_thread::get_id());
  ASSERT_TRUE(b.output.ok());
  EXPECT_THAT(b.output->values, ElementsAre(1001, 1011, 1021, 1031));
  EXPECT_THAT(model->passes(), ElementsAre(1, 2));
}

TEST(DynamicBatcherTest, WhenCompletionThreadsFallBehindTheBatcherDeliversItself) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::ZeroDuration());
  options.completion_threads = 1;
  DynamicBatcher batcher(options, Clock::Real());
  BlockedDelivery a;
  ASSERT_TRUE(a.Submit(batcher, model).ok());
  a.delivering.WaitForNotification();
  // Eight passes' results wait for the blocked completion thread; the ninth
  // is delivered by the batcher thread that ran it.
  std::vector<Outcome> outcomes(9);
  for (size_t i = 0; i < outcomes.size(); ++i) {
    ASSERT_TRUE(Submit(batcher, model, 1, static_cast<float>(100 * i), &outcomes[i]).ok());
    model->AwaitPasses(i + 2);
  }
  outcomes[8].done.WaitForNotification();
  EXPECT_NE(outcomes[8].thread, a.thread);
  EXPECT_NE(outcomes[8].thread, std::this_thread::get_id());
  EXPECT_FALSE(outcomes[0].done.HasBeenNotified());
  a.may_finish.Notify();
  for (Outcome& o : outcomes) o.done.WaitForNotification();
  EXPECT_EQ(outcomes[0].thread, a.thread);
}

TEST(DynamicBatcherTest, ShutdownDeliversEveryCompletionBeforeItReturns) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher::Options options = OneThread(8, absl::Hours(1));
  options.completion_threads = 2;
  DynamicBatcher batcher(options, Clock::Real());
  std::vector<Outcome> outcomes(5);
  for (size_t i = 0; i < outcomes.size(); ++i) {
    ASSERT_TRUE(Submit(batcher, model, 1, static_cast<float>(100 * i), &outcomes[i]).ok());
  }
  batcher.Shutdown();  // the hour-long delay is cut short, and the results delivered
  for (Outcome& o : outcomes) {
    ASSERT_TRUE(o.done.HasBeenNotified());
    ASSERT_TRUE(o.output.ok());
  }
  EXPECT_THAT(outcomes[4].output->values, ElementsAre(4001, 4011));
}

TEST(DynamicBatcherTest, AnOversizedOrEmptyBatchIsInvalidNamingTheFlag) {
  auto model = std::make_shared<FakeModel>();
  DynamicBatcher batcher(OneThread(4, absl::ZeroDuration()), Clock::Real());
  Outcome o;
  const absl::Status big = Submit(batcher, model, 5, 0, &o);
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(big.message()), ::testing::HasSubstr("--max_batch_size"));
  EXPECT_EQ(Submit(batcher, model, 0, 0, &o).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::worker
