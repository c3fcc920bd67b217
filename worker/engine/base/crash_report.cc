#include "worker/engine/base/crash_report.h"

#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "absl/debugging/symbolize.h"

namespace quantd::engine {

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

// Only async-signal-safe calls from here on: write(2), no allocation.
void Write(const char* text) {
  for (size_t left = std::strlen(text); left > 0;) {
    const ssize_t n = write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

void WriteHex(uintptr_t value) {
  char text[19] = "0x";
  for (int i = 0; i < 16; ++i) text[2 + i] = "0123456789abcdef"[(value >> (60 - 4 * i)) & 0xf];
  text[18] = '\0';
  Write(text);
}

const char* SignalName(int signal) {
  switch (signal) {
    case SIGSEGV:
      return "SIGSEGV";
    case SIGBUS:
      return "SIGBUS";
    case SIGILL:
      return "SIGILL";
    case SIGFPE:
      return "SIGFPE";
    case SIGABRT:
      return "SIGABRT";
    default:
      return "a fatal signal";
  }
}

void OnFatalSignal(int signal, siginfo_t* info, void*) {
  Write("*** ");
  Write(SignalName(signal));
  Write(" at address ");
  WriteHex(reinterpret_cast<uintptr_t>(info->si_addr));
  Write(": the stack of the thread that failed ***\n");
  // glibc's unwinder reads .eh_frame, so frames without frame pointers
  // (LibTorch's, oneDNN's, ours at -O2) and the signal frame unwind;
  // absl::Symbolize names them from each object's symbol table, static
  // functions included, without allocating.
  void* frames[64];
  const int depth = backtrace(frames, 64);
  static char name[1024];
  for (int i = 0; i < depth; ++i) {
    Write("    @ ");
    WriteHex(reinterpret_cast<uintptr_t>(frames[i]));
    Write("  ");
    // A return address is one past its call: look up the call itself.
    void* pc = static_cast<char*>(frames[i]) - (i > 0 ? 1 : 0);
    if (absl::Symbolize(pc, name, sizeof(name))) {
      Write(name);
      Write("\n");
    } else {
      // A stripped library (Debian's LibTorch, oneDNN): its file and the
      // offset in it, which objdump places without the process's layout.
      // glibc writes it without allocating.
      backtrace_symbols_fd(&frames[i], 1, STDERR_FILENO);
    }
  }
  // Dies of the same signal (SA_RESETHAND restored the default action), as
  // it would have without this report.
  raise(signal);
}

}  // namespace

void InstallCrashReport(const char* argv0) {
  if (kSanitized) return;
  absl::InitializeSymbolizer(argv0);
  // The first backtrace() loads libgcc's unwinder (it allocates): now, not
  // in the handler.
  void* warm_up[1];
  backtrace(warm_up, 1);
  // A stack overflow leaves no stack to report from: this thread gets an
  // alternate one.
  static char alternate_stack[64 * 1024];
  stack_t stack{};
  stack.ss_sp = alternate_stack;
  stack.ss_size = sizeof(alternate_stack);
  sigaltstack(&stack, nullptr);
  struct sigaction action {};
  action.sa_sigaction = OnFatalSignal;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  for (int signal : kFatalSignals) sigaction(signal, &action, nullptr);
}

}  // namespace quantd::engine
