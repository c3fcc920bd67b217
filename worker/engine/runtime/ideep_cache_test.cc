#include "worker/engine/runtime/ideep_cache.h"

#include <cstdlib>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quantd::engine {
namespace {

using ::testing::HasSubstr;

// ctest starts this binary without LRU_CACHE_CAPACITY: linking the int8
// runtime alone must have bounded ideep's cache before main.
TEST(IdeepCacheTest, TheRuntimeBoundsIdeepsCacheBeforeMain) {
  EXPECT_EQ(IdeepCacheCapacity(), "1") << "was LRU_CACHE_CAPACITY set in the test's environment?";
  EXPECT_EQ(IdeepCacheWarning(), "");
}

TEST(IdeepCacheTest, AnotherCapacityIsNamedInTheWarning) {
  const std::string before = IdeepCacheCapacity();
  ASSERT_EQ(setenv(kIdeepCacheCapacityVariable, "1024", /*overwrite=*/1), 0);
  const std::string warning = IdeepCacheWarning();
  ASSERT_EQ(setenv(kIdeepCacheCapacityVariable, before.c_str(), /*overwrite=*/1), 0);
  EXPECT_THAT(warning, HasSubstr("LRU_CACHE_CAPACITY=1024"));
  EXPECT_THAT(warning, HasSubstr("crash"));
}

}  // namespace
}  // namespace quantd::engine
