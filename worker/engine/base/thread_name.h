#ifndef QUANTD_WORKER_ENGINE_BASE_THREAD_NAME_H_
#define QUANTD_WORKER_ENGINE_BASE_THREAD_NAME_H_

// quantd's threads carry names of their own ("quantd-infer", "quantd-job",
// ...), so that `top -H`, `ps -L`, perf and gdb tell its pools apart. A
// thread started by a named one (OpenMP's, cpp-httplib's) inherits the name.

#include <string>

#include "absl/strings/string_view.h"

namespace quantd {

// Names the calling thread. Linux keeps the first 15 characters.
void NameThisThread(absl::string_view name);

// The calling thread's name ("" if it cannot be read).
std::string ThisThreadName();

}  // namespace quantd

#endif  // QUANTD_WORKER_ENGINE_BASE_THREAD_NAME_H_
