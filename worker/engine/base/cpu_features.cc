#include "worker/engine/base/cpu_features.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace quantd::engine {
namespace {

constexpr int kNoCap = -1;
std::atomic<int> test_cap{kNoCap};

KernelIsa EnvironmentCap() {
  static const KernelIsa cap = [] {
    const char* quantd = std::getenv("QUANTD_MAX_CPU_ISA");
    const char* dnnl = std::getenv("DNNL_MAX_CPU_ISA");
    return KernelIsaCapFromEnvironmentValue(quantd ? quantd : "", dnnl ? dnnl : "").value_or(KernelIsa::kAvx512);
  }();
  return cap;
}

bool Allows(KernelIsa needed) { return static_cast<int>(MaxKernelIsa()) >= static_cast<int>(needed); }

}  // namespace

const char* KernelIsaName(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kPortable: return "portable";
    case KernelIsa::kAvx2: return "avx2";
    case KernelIsa::kAvx512: return "avx512";
  }
  return "?";
}

std::optional<KernelIsa> KernelIsaCapFromEnvironmentValue(const std::string& quantd_value,
                                                          const std::string& dnnl_value) {
  const std::string quantd = absl::AsciiStrToLower(quantd_value);
  if (quantd == "portable" || quantd == "default" || quantd == "none") return KernelIsa::kPortable;
  if (quantd == "avx2") return KernelIsa::kAvx2;
  if (quantd == "avx512") return KernelIsa::kAvx512;
  if (!quantd.empty()) return std::nullopt;
  const std::string dnnl = absl::AsciiStrToLower(dnnl_value);
  if (dnnl.empty() || dnnl == "all") return std::nullopt;
  if (absl::StartsWith(dnnl, "avx512")) return KernelIsa::kAvx512;
  if (absl::StartsWith(dnnl, "avx2")) return KernelIsa::kAvx2;
  if (dnnl == "sse41" || dnnl == "avx") return KernelIsa::kPortable;
  return std::nullopt;
}

KernelIsa CpuKernelIsa() {
  static const KernelIsa isa = [] {
    if (__builtin_cpu_supports("avx512f")) return KernelIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return KernelIsa::kAvx2;
    return KernelIsa::kPortable;
  }();
  return isa;
}

KernelIsa MaxKernelIsa() {
  int level = std::min(static_cast<int>(CpuKernelIsa()), static_cast<int>(EnvironmentCap()));
  const int cap = test_cap.load(std::memory_order_relaxed);
  if (cap != kNoCap) level = std::min(level, cap);
  return static_cast<KernelIsa>(level);
}

bool CpuHasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has && Allows(KernelIsa::kAvx2);
}

bool CpuHasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has && Allows(KernelIsa::kAvx512);
}

bool CpuHasAvx512Bw() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has && Allows(KernelIsa::kAvx512);
}

bool CpuHasAvx512Vbmi() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi");
  return has && Allows(KernelIsa::kAvx512);
}

void SetMaxKernelIsaForTesting(std::optional<KernelIsa> cap) {
  test_cap.store(cap ? static_cast<int>(*cap) : kNoCap);
}

void ForcePortableKernelsForTesting(bool force) {
  SetMaxKernelIsaForTesting(force ? std::optional<KernelIsa>(KernelIsa::kPortable) : std::nullopt);
}

}  // namespace quantd::engine
