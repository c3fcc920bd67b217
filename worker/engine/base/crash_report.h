#ifndef QUANTD_WORKER_ENGINE_BASE_CRASH_REPORT_H_
#define QUANTD_WORKER_ENGINE_BASE_CRASH_REPORT_H_

namespace quantd::engine {

// On a fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT) the
// process writes the signal and every frame of the failing thread's stack,
// with symbol names, to stderr, then dies of the signal as before. A crash
// deep inside LibTorch or oneDNN during a long run (CI's 48-job run died of
// SIGSEGV with no trace) then leaves its stack in the log. `argv0` finds
// the binary's symbols. No-op in sanitizer builds, whose own reports are
// better. Call once, early in main.
void InstallCrashReport(const char* argv0);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_BASE_CRASH_REPORT_H_
