#include "worker/engine/base/helper_threads.h"

#include <algorithm>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quantd::engine {
namespace {

using ::testing::ElementsAre;

TEST(HelperThreadsTest, RunsEachIndexOnItsOwnThreadAtOnce) {
  HelperThreads helpers;
  absl::Mutex mu;
  std::vector<int> indices;
  std::set<std::thread::id> threads;
  std::thread::id caller_ran;
  int arrived = 0;
  helpers.Run(3, [&](int k) {
    absl::MutexLock lock(&mu);
    indices.push_back(k);
    threads.insert(std::this_thread::get_id());
    if (k == 0) caller_ran = std::this_thread::get_id();
    ++arrived;
    // All three are running at once, or this waits forever.
    mu.Await(absl::Condition(+[](int* n) { return *n == 3; }, &arrived));
  });
  std::sort(indices.begin(), indices.end());
  EXPECT_THAT(indices, ElementsAre(0, 1, 2));
  EXPECT_EQ(threads.size(), 3u);
  EXPECT_EQ(caller_ran, std::this_thread::get_id());
  EXPECT_EQ(helpers.size(), 2u);
}

// The point of the class: a later call runs on the same threads.
TEST(HelperThreadsTest, LaterCallsReuseTheThreads) {
  HelperThreads helpers;
  std::thread::id first, second;
  helpers.Run(2, [&](int k) {
    if (k == 1) first = std::this_thread::get_id();
  });
  helpers.Run(2, [&](int k) {
    if (k == 1) second = std::this_thread::get_id();
  });
  EXPECT_EQ(first, second);
  EXPECT_NE(first, std::this_thread::get_id());
  EXPECT_EQ(helpers.size(), 1u);
  helpers.Run(3, [](int) {});
  EXPECT_EQ(helpers.size(), 2u);
}

// Calls may overlap: each gets helpers of its own at once, none waits
// behind another call's task (in tuning that would be a stall).
TEST(HelperThreadsTest, OverlappingCallsEachGetTheirThreads) {
  HelperThreads helpers;
  absl::Mutex mu;
  int arrived = 0;
  std::set<std::thread::id> threads;
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      helpers.Run(2, [&](int) {
        absl::MutexLock lock(&mu);
        threads.insert(std::this_thread::get_id());
        ++arrived;
        // All eight tasks are running at once, or this waits forever.
        mu.Await(absl::Condition(+[](int* n) { return *n == 8; }, &arrived));
      });
    });
  }
  for (std::thread& caller : callers) caller.join();
  EXPECT_EQ(arrived, 8);
  EXPECT_EQ(threads.size(), 8u);  // four callers and four helpers
  EXPECT_EQ(helpers.size(), 4u);
}

TEST(HelperThreadsTest, OneRunsOnTheCallerAlone) {
  HelperThreads helpers;
  std::thread::id ran;
  helpers.Run(1, [&](int) { ran = std::this_thread::get_id(); });
  EXPECT_EQ(ran, std::this_thread::get_id());
  helpers.Run(0, [](int) { FAIL(); });
  EXPECT_EQ(helpers.size(), 0u);
}

}  // namespace
}  // namespace quantd::engine
