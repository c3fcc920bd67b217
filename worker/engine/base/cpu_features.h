#ifndef QUANTD_WORKER_ENGINE_BASE_CPU_FEATURES_H_
#define QUANTD_WORKER_ENGINE_BASE_CPU_FEATURES_H_

// Which hand-vectorized kernel paths this CPU can take. Every such path has a
// portable twin with the same results; tests force the portable ones to
// check that on any machine.

namespace quantd::engine {

bool CpuHasAvx512();      // AVX-512 F
bool CpuHasAvx512Bw();    // AVX-512 F + BW
bool CpuHasAvx512Vbmi();  // AVX-512 F + BW + VBMI

// While forced, the functions above answer false.
void ForcePortableKernelsForTesting(bool force);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_BASE_CPU_FEATURES_H_
