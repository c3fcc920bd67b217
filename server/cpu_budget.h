#ifndef QUANTD_SERVER_CPU_BUDGET_H_
#define QUANTD_SERVER_CPU_BUDGET_H_

// How many CPUs this process may use, for the defaults that depend on it
// (--inference_threads, the completion thread). Both limits count: the
// affinity mask (taskset, cpusets) and the CFS quota of the cgroup
// (a Kubernetes CPU limit), which the mask does not show: a pod limited to
// 2 CPUs on a 64-core node sees all 64 in its mask.

#include <optional>

#include "absl/strings/string_view.h"

namespace quantd {

// CPUs allowed by a cgroup quota of `quota_us` per `period_us`, rounded up
// (1.5 CPUs: 2); nullopt for no limit (quota "max" or -1) or bad values.
std::optional<int> CpusFromQuota(absl::string_view quota_us, absl::string_view period_us);

// cgroup v2's cpu.max ("max 100000", "200000 100000").
std::optional<int> CpusFromCgroupV2CpuMax(absl::string_view cpu_max);

// The CPUs this process may use: its affinity mask's count, lowered to its
// cgroup's CPU quota when there is one (v2 /sys/fs/cgroup/cpu.max, else v1
// cpu.cfs_quota_us / cpu.cfs_period_us). At least 1.
int UsableCpus();

// --inference_threads when it is 0: one less than the usable CPUs, so the
// gRPC threads (and a completion thread) keep a CPU; at least 1. On 2 cores
// one inference thread served 16 batch-1 clients faster than two.
int DefaultInferenceThreads(int usable_cpus);

}  // namespace quantd

#endif  // QUANTD_SERVER_CPU_BUDGET_H_
