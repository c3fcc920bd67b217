// Linked into every test binary (CMake quantd_test): glibc's malloc keeps the
// memory it frees, in the test process and in the processes it starts (Python
// with PyTorch, through GLIBC_TUNABLES). LibTorch allocates activation buffers
// of many MiB per batch, which glibc's defaults map, fault in page by page and
// unmap again each time, and page faults are slow on these VMs: a PyTorch
// parity test took 25-29 s so and 12 s with this (1.2 million minor faults
// against 0.15 million). quantd links jemalloc (CMake option QUANTD_JEMALLOC)
// and sanitizer builds use their own allocator; neither reads these settings.

#include <malloc.h>
#include <stdlib.h>

namespace {

constexpr int kKeepBelowBytes = 1 << 30;

// Debian 12's glibc (2.36) takes a threshold this high; glibcs that cap it
// at 32 MiB get that. A trim threshold alone would be worse than glibc's
// defaults (it fixes the mmap threshold at 128 KiB), so it comes second.
[[maybe_unused]] const bool kTuned = [] {
  if (mallopt(M_MMAP_THRESHOLD, kKeepBelowBytes) == 1 || mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1) {
    mallopt(M_TRIM_THRESHOLD, kKeepBelowBytes);
  }
  setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824",
         /*overwrite=*/0);
  return true;
}();

}  // namespace
