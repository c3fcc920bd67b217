#ifndef QUANTD_WORKER_ENGINE_RUNTIME_KERNEL_CHOICE_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_KERNEL_CHOICE_H_

// Which quantized kernel engine computes an int8 model exactly on this CPU.
//
// x86 int8 kernels without VNNI (onednn, fbgemm) sum pairs of u8 x s8
// products in int16 with saturation: with 8-bit activations (codes up to 255)
// a pair can reach 2 * 255 * 128 = 65280 and is clipped to 32767, which
// silently wrecks a model. 7-bit activations (reduce_range, the fbgemm
// preset) cannot overflow; QNNPACK widens to 16 bits first and is exact
// everywhere. Whether an engine saturates on this CPU is measured
// (int8_capabilities.h).

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/report.h"

namespace quantd::engine {

// The engines to consider for a preset, best first: the preset's own engine
// where compiled in, then onednn (the fastest here on VNNI CPUs), then the
// rest of `available`.
std::vector<std::string> KernelPreference(const std::string& preset, const std::vector<std::string>& available);

// Whether `engine` computes int8 ops exactly on `cpu` when activations reach
// `activation_quant_max` (255, or 127 with reduce_range), and why.
KernelCandidate AssessKernelEngine(const std::string& engine, int64_t activation_quant_max, const CpuInt8Report& cpu);

// What an artifact made for `engine` needs from the CPU it runs on.
ArtifactRequirements RequirementsFor(const std::string& engine, int64_t activation_quant_max);

// The engine to run an artifact with `requirements` on `cpu`: its own, unless
// that saturates here; then qnnpack (exact on any CPU) if `allow_reroute` and
// it is compiled in, else FAILED_PRECONDITION naming the problem.
absl::StatusOr<std::string> RuntimeKernelEngine(const ArtifactRequirements& requirements, const CpuInt8Report& cpu,
                                                const std::vector<std::string>& available, bool allow_reroute);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_KERNEL_CHOICE_H_
