#ifndef QUANTD_WORKER_ENGINE_BASE_TORCH_STATUS_H_
#define QUANTD_WORKER_ENGINE_BASE_TORCH_STATUS_H_

// LibTorch reports errors by throwing c10::Error (and sometimes std::exception).
// The engine never lets them escape: wrap calls with QUANTD_TORCH_TRY.

#include <exception>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace quantd::engine {

// First line of a LibTorch error message (the rest is a C++ backtrace).
inline std::string FirstLine(const std::string& message) {
  const auto pos = message.find('\n');
  return pos == std::string::npos ? message : message.substr(0, pos);
}

template <typename Fn>
absl::Status TorchTry(const std::string& context, Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(context, ": ", FirstLine(e.what())));
  }
}

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_BASE_TORCH_STATUS_H_
