#include "worker/data_dir_lock.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "worker/engine/testing/test_env.h"

namespace quantd::worker {
namespace {

using ::testing::HasSubstr;

TEST(DataDirLockTest, OneOwnerAtATimeAndTheNextAfterIt) {
  const std::string dir = engine::testing::MakeTempDir("data_dir_lock");
  auto first = DataDirLock::Acquire(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = DataDirLock::Acquire(dir);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("is in use by another quantd (pid "));
  first->reset();
  EXPECT_TRUE(DataDirLock::Acquire(dir).ok());
}

// LOCK keeps a dead owner's pid after a crash and reads like a stale pidfile.
// Deleting it while quantd runs let a second quantd start on the same data
// dir, which re-queued the first one's running job as its own interrupted
// one: the directory's own lock still refuses it.
TEST(DataDirLockTest, DeletingTheLockFileDoesNotLetASecondOwnerIn) {
  const std::string dir = engine::testing::MakeTempDir("data_dir_lock_deleted");
  auto first = DataDirLock::Acquire(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(std::filesystem::remove(std::filesystem::path(dir) / "LOCK"));
  auto second = DataDirLock::Acquire(dir);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("is in use by another quantd (its LOCK file was deleted"));
  first->reset();
  EXPECT_TRUE(DataDirLock::Acquire(dir).ok());
}

}  // namespace
}  // namespace quantd::worker
