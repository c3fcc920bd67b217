#include "server/blocking_executor.h"

#include <atomic>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "worker/engine/base/thread_name.h"

namespace quantd {
namespace {

TEST(BlockingExecutorTest, RunsEveryTaskOnItsThreads) {
  std::atomic<int> ran{0};
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<bool> ran_on_caller{false};
  {
    BlockingExecutor executor(3, 100);
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE(executor.TrySchedule([&] {
        if (std::this_thread::get_id() == caller) ran_on_caller = true;
        ++ran;
      }));
    }
  }  // the destructor drains the queue
  EXPECT_EQ(ran.load(), 100);
  EXPECT_FALSE(ran_on_caller.load());
}

TEST(BlockingExecutorTest, StatusOfTaskAnswersForAThrowingHandler) {
  EXPECT_EQ(StatusOfTask("GetJob", [] { return absl::NotFoundError("job \"x\" not found"); }),
            absl::NotFoundError("job \"x\" not found"));
  const absl::Status thrown =
      StatusOfTask("ListJobs", []() -> absl::Status { throw std::runtime_error("CodedOutputStream failed"); });
  EXPECT_EQ(thrown.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(thrown.message(), "ListJobs")) << thrown;
  EXPECT_TRUE(absl::StrContains(thrown.message(), "CodedOutputStream failed")) << thrown;
  const absl::Status out_of_memory = StatusOfTask("GetArtifact", []() -> absl::Status { throw std::bad_alloc(); });
  EXPECT_EQ(out_of_memory.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(out_of_memory.message(), "GetArtifact")) << out_of_memory;
  EXPECT_EQ(StatusOfTask("Evaluate", []() -> absl::Status { throw 1; }).code(), absl::StatusCode::kInternal);
}

TEST(BlockingExecutorTest, ItsThreadsCarryTheNameGiven) {
  std::string name;
  {
    BlockingExecutor executor(1, 1, "quantd-rpc");
    absl::Notification ran;
    ASSERT_TRUE(executor.TrySchedule([&] {
      name = ThisThreadName();
      ran.Notify();
    }));
    ran.WaitForNotification();
  }
  EXPECT_EQ(name, "quantd-rpc");
}

TEST(BlockingExecutorTest, AFullQueueRefusesAndAcceptsAgainOnceItDrains) {
  BlockingExecutor executor(1, 2);
  absl::Notification started, release;
  ASSERT_TRUE(executor.TrySchedule([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();  // the only thread is busy; the queue is empty
  std::atomic<int> ran{0};
  ASSERT_TRUE(executor.TrySchedule([&] { ++ran; }));
  ASSERT_TRUE(executor.TrySchedule([&] { ++ran; }));
  bool third_ran = false;
  EXPECT_FALSE(executor.TrySchedule([&] { third_ran = true; }));
  release.Notify();
  executor.Shutdown();
  EXPECT_EQ(ran.load(), 2);
  EXPECT_FALSE(third_ran);
}

TEST(BlockingExecutorTest, ContinuationsOfAdmittedCallsPassAFullQueue) {
  BlockingExecutor executor(1, 1);
  absl::Notification started, release;
  ASSERT_TRUE(executor.TrySchedule([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();
  std::atomic<int> ran{0};
  ASSERT_TRUE(executor.TrySchedule([&] { ++ran; }));
  EXPECT_FALSE(executor.TrySchedule([&] { ++ran; }));  // full for new calls
  EXPECT_TRUE(executor.ScheduleContinuation([&] { ++ran; }));
  EXPECT_EQ(executor.queued(), 2);
  release.Notify();
  executor.Shutdown();
  EXPECT_EQ(ran.load(), 2);
  EXPECT_FALSE(executor.ScheduleContinuation([&] { ++ran; }));  // but not after shutdown
  EXPECT_EQ(ran.load(), 2);
}

TEST(BlockingExecutorTest, ShutdownRunsWhatWasQueuedAndRefusesTheRest) {
  BlockingExecutor executor(1, 10);
  absl::Notification started, release;
  ASSERT_TRUE(executor.TrySchedule([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();
  std::vector<int> order;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(executor.TrySchedule([&order, i] { order.push_back(i); }));
  std::thread stopper([&] { executor.Shutdown(); });
  release.Notify();
  stopper.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_FALSE(executor.TrySchedule([] {}));
  executor.Shutdown();  // idempotent
}

}  // namespace
}  // namespace quantd
