#ifndef QUANTD_WORKER_ENGINE_BASE_CPU_FEATURES_H_
#define QUANTD_WORKER_ENGINE_BASE_CPU_FEATURES_H_

// Which hand-vectorized kernel paths this CPU can take. Every such path has a
// portable twin with the same results; tests cap the level to check that on
// any machine.
//
// The level can be capped from outside, to reproduce another CPU on this one:
// QUANTD_MAX_CPU_ISA=portable|avx2|avx512, or, when that is unset, oneDNN's
// own DNNL_MAX_CPU_ISA (anything below AVX512_CORE caps quantd at AVX2, below
// AVX2 at portable), so that one variable emulates the whole int8 stack.

#include <optional>
#include <string>

namespace quantd::engine {

enum class KernelIsa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
const char* KernelIsaName(KernelIsa isa);

// The level this CPU supports, before any cap.
KernelIsa CpuKernelIsa();
// The level quantd's own kernels use: CpuKernelIsa() capped by the
// environment (read once) or by SetMaxKernelIsaForTesting.
KernelIsa MaxKernelIsa();

bool CpuHasAvx2Fma();     // AVX2 + FMA
bool CpuHasAvx512();      // AVX-512 F
bool CpuHasAvx512Bw();    // AVX-512 F + BW
bool CpuHasAvx512Vbmi();  // AVX-512 F + BW + VBMI

// Caps (or, with nullopt, stops capping beyond the environment) the level
// the functions above allow.
void SetMaxKernelIsaForTesting(std::optional<KernelIsa> cap);
// Shorthand: true caps at portable, false removes the test cap.
void ForcePortableKernelsForTesting(bool force);

// Parses a QUANTD_MAX_CPU_ISA / DNNL_MAX_CPU_ISA value (case-insensitive);
// nullopt for an empty or unknown one.
std::optional<KernelIsa> KernelIsaCapFromEnvironmentValue(const std::string& quantd_value,
                                                          const std::string& dnnl_value);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_BASE_CPU_FEATURES_H_
