#ifndef QUANTD_WORKER_ENGINE_BASE_TORCH_STATUS_H_
#define QUANTD_WORKER_ENGINE_BASE_TORCH_STATUS_H_

// LibTorch reports errors by throwing c10::Error (and sometimes std::exception).
// The engine never lets them escape: wrap calls with QUANTD_TORCH_TRY.

#include <algorithm>
#include <cctype>
#include <exception>
#include <new>
#include <string>
#include <typeinfo>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace quantd::engine {

// First non-blank line of a LibTorch error message (the rest is a C++
// backtrace; TorchScript compile errors start with an empty line).
inline std::string FirstLine(const std::string& message) {
  size_t start = 0;
  while (start < message.size()) {
    const auto end = message.find('\n', start);
    const std::string line = message.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (line.find_first_not_of(" \t\r") != std::string::npos) return line;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return "(LibTorch gave no message)";
}

// A TorchScript module that fails while it runs says so on its first line,
// then gives its TorchScript traceback, then the cause as "RuntimeError:
// ...": that cause line, or else the first line.
inline std::string CauseLine(const std::string& message) {
  const std::string first = FirstLine(message);
  if (first.rfind("The following operation failed in the TorchScript interpreter", 0) != 0) return first;
  size_t start = 0;
  while (start < message.size()) {
    const size_t end = std::min(message.find('\n', start), message.size());
    const std::string line = message.substr(start, end - start);
    const size_t colon = line.find(": ");
    if (colon != std::string::npos && colon > 0) {
      const std::string name = line.substr(0, colon);
      bool identifier = true;
      for (char c : name) identifier = identifier && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.');
      const auto ends_with = [&](const std::string& suffix) {
        return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
      };
      if (identifier && (ends_with("Error") || ends_with("Exception"))) return line;
    }
    start = end + 1;
  }
  return first;
}

// The first line of `e`'s message. Not for torch::jit::ErrorReport (a
// TorchScript compile error): LibTorch 1.13 renders its source context in
// what(), which can throw inside noexcept and so end the process. Known by
// its type's name, so that this header needs no LibTorch include.
inline std::string ExceptionMessage(const std::exception& e) {
  if (std::string(typeid(e).name()).find("ErrorReport") != std::string::npos) {
    return "TorchScript code that does not compile in this LibTorch";
  }
  return CauseLine(e.what());
}

// Whether `e` is LibTorch's CPU allocator failing: it throws c10::Error
// ("DefaultCPUAllocator: can't allocate memory" / "not enough memory"), not
// std::bad_alloc, so a batch too large for the machine would read INTERNAL.
inline bool IsAllocationFailure(const std::exception& e) {
  if (std::string(typeid(e).name()).find("ErrorReport") != std::string::npos) return false;
  const std::string what = e.what();
  return what.find("DefaultCPUAllocator") != std::string::npos;
}

// `e` as a status naming `context`: out of memory as RESOURCE_EXHAUSTED.
inline absl::Status StatusFromException(const std::string& context, const std::exception& e) {
  if (IsAllocationFailure(e)) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of memory (", ExceptionMessage(e), ")"));
  }
  return absl::InternalError(absl::StrCat(context, ": ", ExceptionMessage(e)));
}

template <typename Fn>
absl::Status TorchTry(const std::string& context, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of memory"));
  } catch (const std::exception& e) {
    return StatusFromException(context, e);
  } catch (...) {
    return absl::InternalError(absl::StrCat(context, ": an exception that is not a std::exception"));
  }
}

// The engine's public entry points run their body through this: whatever a
// library throws (c10::Error, std::bad_alloc, std::out_of_range, ...) becomes
// a status naming `context`, so a bad model or file fails one job and never
// unwinds into the caller's thread.
template <typename Fn>
auto GuardEntryPoint(const std::string& context, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": out of memory"));
  } catch (const std::exception& e) {
    return StatusFromException(context, e);
  } catch (...) {
    return absl::InternalError(absl::StrCat(context, ": an exception that is not a std::exception"));
  }
}

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_BASE_TORCH_STATUS_H_
