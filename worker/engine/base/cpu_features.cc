#include "worker/engine/base/cpu_features.h"

#include <atomic>

namespace quantd::engine {
namespace {

std::atomic<bool> force_portable{false};

}  // namespace

bool CpuHasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has && !force_portable.load(std::memory_order_relaxed);
}

bool CpuHasAvx512Bw() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has && !force_portable.load(std::memory_order_relaxed);
}

bool CpuHasAvx512Vbmi() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi");
  return has && !force_portable.load(std::memory_order_relaxed);
}

void ForcePortableKernelsForTesting(bool force) { force_portable.store(force); }

}  // namespace quantd::engine
