#include "worker/engine/base/crash_report.h"

#include <csignal>
#include <cstdlib>

#include <gtest/gtest.h>

namespace quantd::engine {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitizedBuild = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitizedBuild = true;
#else
constexpr bool kSanitizedBuild = false;
#endif
#else
constexpr bool kSanitizedBuild = false;
#endif

// Raised, not a write through a null pointer: the compiler may drop or
// rewrite an access it knows to be undefined.
[[gnu::noinline]] void CrashHereOnPurpose() {
  std::raise(SIGSEGV);
  asm volatile("");  // keeps the call from being a tail call, out of the stack
}

// The report names the signal and the function that crashed; the process
// still dies of the signal (a parent, or CTest, sees SIGSEGV as before).
TEST(CrashReportDeathTest, ASegfaultPrintsItsStackWithSymbolsAndStillKillsTheProcess) {
  if (kSanitizedBuild) GTEST_SKIP() << "sanitizer builds keep the sanitizer's own report";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        InstallCrashReport("/proc/self/exe");
        CrashHereOnPurpose();
      },
      ::testing::KilledBySignal(SIGSEGV), "SIGSEGV(.|\n)*CrashHereOnPurpose");
}

int CrashComparing(const void*, const void*) {
  std::raise(SIGSEGV);
  return 0;
}

[[gnu::noinline]] void CrashInsideLibc() {
  int values[] = {3, 1, 2};
  std::qsort(values, 3, sizeof(int), CrashComparing);
}

// A frame no symbol table names (here glibc's sort, stripped of its static
// functions, as Debian's LibTorch and oneDNN are) is still placed: its file
// and the offset in it, which objdump can read.
TEST(CrashReportDeathTest, AFrameWithoutASymbolNamesItsLibraryAndOffset) {
  if (kSanitizedBuild) GTEST_SKIP() << "sanitizer builds keep the sanitizer's own report";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        InstallCrashReport("/proc/self/exe");
        CrashInsideLibc();
      },
      ::testing::KilledBySignal(SIGSEGV), "CrashComparing(.|\n)*libc\\.so\\.6\\(\\+0x[0-9a-f]+\\)");
}

}  // namespace
}  // namespace quantd::engine
