#ifndef QUANTD_WORKER_ENGINE_RUNTIME_INT8_CAPABILITIES_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_INT8_CAPABILITIES_H_

// What this machine's int8 kernels can do. x86 int8 kernels without VNNI
// (AVX2, AVX-512 before Cascade Lake) multiply u8 activations by s8 weights
// in pairs summed into int16 with saturation, so 8-bit activations (codes up
// to 255) can overflow; 7-bit activations (reduce_range) cannot. Whether an
// engine saturates is measured here with LibTorch's own kernels rather than
// inferred from CPU flags, so it also holds under DNNL_MAX_CPU_ISA and on
// CPUs this code has not seen.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/report.h"

namespace quantd::engine {

// Detected once per process (the probe takes a few milliseconds).
const CpuInt8Report& CpuInt8Capabilities();

// The probe behind CpuInt8Report::saturating_engines, for one engine: runs a
// conv2d, a depthwise conv2d and a linear with every activation at 255 and
// every weight at 127 and compares with the exact integer result. Returns the
// op kinds whose results were wrong (empty: exact).
absl::StatusOr<std::vector<std::string>> ProbeSaturatingOps(const std::string& kernel_engine);

// oneDNN's effective ISA as its name ("avx2", "avx512_core_vnni", ...), ""
// when this build does not link oneDNN.
std::string OneDnnEffectiveIsa();

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_INT8_CAPABILITIES_H_
