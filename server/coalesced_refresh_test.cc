#include "server/coalesced_refresh.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"

namespace quantd {
namespace {

TEST(CoalescedRefreshTest, OneCallerRefreshesEachTime) {
  int refreshes = 0;
  CoalescedRefresh refresh([&] { ++refreshes; });
  refresh.Run();
  refresh.Run();
  EXPECT_EQ(refreshes, 2);
}

// Callers that arrive during a refresh never run one beside it, each returns
// only after a refresh that began after its call, and all of them share the
// one refresh that follows.
TEST(CoalescedRefreshTest, CallersQueuedBehindARefreshShareTheNextOne) {
  std::atomic<int> started{0};
  std::atomic<int> finished{0};
  std::atomic<int> running{0};
  std::atomic<int> most_running{0};
  absl::Notification release_first;
  CoalescedRefresh refresh([&] {
    const int n = started.fetch_add(1);
    const int now = running.fetch_add(1) + 1;
    int seen = most_running.load();
    while (now > seen && !most_running.compare_exchange_weak(seen, now)) {
    }
    if (n == 0) release_first.WaitForNotification();
    running.fetch_sub(1);
    finished.fetch_add(1);
  });
  std::thread first([&] { refresh.Run(); });
  while (started.load() == 0) std::this_thread::yield();
  constexpr int kCallers = 8;
  std::vector<int> started_at_call(kCallers);
  std::vector<int> finished_at_return(kCallers);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      started_at_call[i] = started.load();
      refresh.Run();
      finished_at_return[i] = finished.load();
    });
  }
  // Every caller queued behind the first refresh before it ends.
  while (refresh.waiting() < kCallers) std::this_thread::yield();
  release_first.Notify();
  first.join();
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(most_running.load(), 1);
  for (int i = 0; i < kCallers; ++i) {
    EXPECT_GT(finished_at_return[i], started_at_call[i]) << "caller " << i << " returned on an older refresh";
  }
  EXPECT_EQ(started.load(), 2) << "the eight callers did not share one refresh";
}

}  // namespace
}  // namespace quantd
