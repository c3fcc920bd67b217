#ifndef QUANTD_WORKER_ENGINE_BASE_FLAG_VALUES_H_
#define QUANTD_WORKER_ENGINE_BASE_FLAG_VALUES_H_

// Values that quantctl, quantd-quantize and the server check alike, so that
// a mistake is the same usage error (naming the flag) in either tool, before
// any work, and never passes one tool that the other refuses. Names
// (presets, observers, kernel engines, layouts) are taken in either case.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quantd {

// onednn, qnnpack, fbgemm or x86 (whether this LibTorch has it is checked
// where it runs).
bool IsKernelEngineName(absl::string_view name);
constexpr char kKernelEngineNames[] = "onednn, qnnpack, fbgemm or x86";

// An accuracy-aware job's budgets.
constexpr int64_t kMaxTrialsLimit = 1000;
constexpr double kMaxTimeBudgetSeconds = 86400;

// "a,b,c" as finite numbers, at least one: an empty list would mean no
// normalization, silently. INVALID_ARGUMENT naming `flag` ("--mean").
absl::StatusOr<std::vector<double>> ParseNumberList(absl::string_view text, absl::string_view flag);

}  // namespace quantd

#endif  // QUANTD_WORKER_ENGINE_BASE_FLAG_VALUES_H_
