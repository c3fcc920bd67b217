#include "server/allocator.h"

#include <dlfcn.h>
#include <sys/types.h>

#include <cstddef>

#include "absl/strings/str_cat.h"

namespace quantd {

std::string AllocatorSummary() {
  // Looked up, not linked: quantd_server does not depend on jemalloc.
  using Mallctl = int (*)(const char*, void*, size_t*, void*, size_t);
  auto mallctl = reinterpret_cast<Mallctl>(::dlsym(RTLD_DEFAULT, "mallctl"));
  if (mallctl == nullptr) return "the C library's malloc";
  const char* version = nullptr;
  size_t size = sizeof(version);
  std::string summary = "jemalloc";
  if (mallctl("version", &version, &size, nullptr, 0) == 0 && version != nullptr) {
    absl::StrAppend(&summary, " ", version);
  }
  size_t oversize_threshold = 0;
  size = sizeof(oversize_threshold);
  if (mallctl("opt.oversize_threshold", &oversize_threshold, &size, nullptr, 0) == 0) {
    absl::StrAppend(&summary, " oversize_threshold=", oversize_threshold);
  }
  ssize_t dirty_decay_ms = 0;
  size = sizeof(dirty_decay_ms);
  if (mallctl("opt.dirty_decay_ms", &dirty_decay_ms, &size, nullptr, 0) == 0) {
    absl::StrAppend(&summary, " dirty_decay_ms=", dirty_decay_ms);
  }
  return summary;
}

}  // namespace quantd
