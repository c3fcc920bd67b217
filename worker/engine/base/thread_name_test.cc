#include "worker/engine/base/thread_name.h"

#include <thread>

#include <gtest/gtest.h>

namespace quantd {
namespace {

TEST(ThreadNameTest, NamesTheCallingThreadOnlyAndCutsTo15Characters) {
  const std::string before = ThisThreadName();
  std::string named, cut;
  std::thread([&] {
    NameThisThread("quantd-infer");
    named = ThisThreadName();
    NameThisThread("quantd-a-name-longer-than-fifteen");
    cut = ThisThreadName();
  }).join();
  EXPECT_EQ(named, "quantd-infer");
  EXPECT_EQ(cut, "quantd-a-name-l");
  EXPECT_EQ(ThisThreadName(), before);
}

}  // namespace
}  // namespace quantd
