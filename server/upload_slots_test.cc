#include "server/upload_slots.h"

#include <optional>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace quantd {
namespace {

TEST(UploadSlotsTest, TheSlotPastTheCapacityIsRefusedUntilOneIsGivenBack) {
  UploadSlots slots(2);
  std::optional<UploadSlots::Slot> first = slots.TryTake();
  std::optional<UploadSlots::Slot> second = slots.TryTake();
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(second.has_value());
  EXPECT_FALSE(slots.TryTake().has_value());
  EXPECT_EQ(slots.in_use(), 2);
  first.reset();
  EXPECT_EQ(slots.in_use(), 1);
  EXPECT_TRUE(slots.TryTake().has_value());  // taken and given back at once
  EXPECT_EQ(slots.in_use(), 1);
}

TEST(UploadSlotsTest, AMovedSlotIsGivenBackOnce) {
  UploadSlots slots(1);
  {
    std::optional<UploadSlots::Slot> taken = slots.TryTake();
    ASSERT_TRUE(taken.has_value());
    UploadSlots::Slot moved(std::move(*taken));
    taken.reset();  // the moved-from slot holds nothing
    EXPECT_EQ(slots.in_use(), 1);
    EXPECT_FALSE(slots.TryTake().has_value());
  }
  EXPECT_EQ(slots.in_use(), 0);
  EXPECT_TRUE(slots.TryTake().has_value());
}

TEST(UploadSlotsTest, CapacityZeroIsNoCap) {
  UploadSlots slots(0);
  std::vector<UploadSlots::Slot> held;
  for (int i = 0; i < 1000; ++i) {
    std::optional<UploadSlots::Slot> slot = slots.TryTake();
    ASSERT_TRUE(slot.has_value()) << i;
    held.push_back(std::move(*slot));
  }
  EXPECT_EQ(slots.in_use(), 1000);
}

}  // namespace
}  // namespace quantd
