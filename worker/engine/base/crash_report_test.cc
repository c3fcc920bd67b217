#include "worker/engine/base/crash_report.h"

#include <csignal>

#include <gtest/gtest.h>

namespace quantd::engine {
namespace {

// Raised, not a write through a null pointer: the compiler may drop or
// rewrite an access it knows to be undefined.
[[gnu::noinline]] void CrashHereOnPurpose() {
  std::raise(SIGSEGV);
  asm volatile("");  // keeps the call from being a tail call, out of the stack
}

// The report names the signal and the function that crashed; the process
// still dies of the signal (a parent, or CTest, sees SIGSEGV as before).
TEST(CrashReportDeathTest, ASegfaultPrintsItsStackWithSymbolsAndStillKillsTheProcess) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "sanitizer builds keep the sanitizer's own report";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  GTEST_SKIP() << "sanitizer builds keep the sanitizer's own report";
#endif
#endif
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        InstallCrashReport("/proc/self/exe");
        CrashHereOnPurpose();
      },
      ::testing::KilledBySignal(SIGSEGV), "SIGSEGV(.|\n)*CrashHereOnPurpose");
}

}  // namespace
}  // namespace quantd::engine
