#include "worker/engine/runtime/ideep_cache.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace quantd::engine {
namespace {

// Before main, so before any thread exists: each thread reads the variable at
// its first oneDNN call, and setenv must not race a getenv.
const bool kIdeepCacheBounded = [] {
  return setenv(kIdeepCacheCapacityVariable, "1", /*overwrite=*/0) == 0;
}();

}  // namespace

std::string IdeepCacheCapacity() {
  const char* value = std::getenv(kIdeepCacheCapacityVariable);
  return value == nullptr ? "" : value;
}

std::string IdeepCacheWarning() {
  (void)kIdeepCacheBounded;
  const std::string capacity = IdeepCacheCapacity();
  if (capacity == "1") return "";
  return absl::StrCat(kIdeepCacheCapacityVariable, "=", capacity.empty() ? "(unset)" : capacity,
                      ": LibTorch 1.13 may rebuild an int8 oneDNN kernel from a stale descriptor and fail or crash "
                      "after many jobs; quantd sets it to 1 unless the environment sets it");
}

}  // namespace quantd::engine
