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

// Most images in one calibration or evaluation batch, and in the quality
// check.
constexpr int64_t kMaxBatchSize = 10000;
constexpr int64_t kMaxQualitySamples = 10000;

// An accuracy-aware job's budgets.
constexpr int64_t kMaxTrialsLimit = 1000;
constexpr double kMaxTimeBudgetSeconds = 86400;

// "a,b,c" as finite numbers within float32's range (the API's type), at
// least one and none left out ("1,,2"): an empty list would mean no
// normalization, silently. INVALID_ARGUMENT naming `flag` ("--mean").
absl::StatusOr<std::vector<double>> ParseNumberList(absl::string_view text, absl::string_view flag);

// --fusion's value: "auto" or "none" (either case), or groups inline,
// "conv1,bn1,relu1;layer1.conv1,layer1.bn1": each of two or more module
// paths, none empty, no module in two groups. INVALID_ARGUMENT naming
// --fusion, so that either tool refuses before any work what fusion would
// refuse after loading the model.
struct FusionFlag {
  bool automatic = false;
  std::vector<std::vector<std::string>> groups;  // empty with automatic off: none
};
absl::StatusOr<FusionFlag> ParseFusionFlag(absl::string_view text);
// The same checks for groups from elsewhere (quantd-quantize's .json spec).
absl::Status CheckFusionGroups(const std::vector<std::vector<std::string>>& groups);

// A labels flag (`labels_flag`, e.g. "--calib_labels") beside a dataset of
// `format` ("cifar10" or "npy"): CIFAR-10 records carry their labels, and a
// labels file given with them would be ignored without a word.
// INVALID_ARGUMENT naming the flag.
absl::Status CheckLabelsFlag(absl::string_view labels_flag, absl::string_view format);

}  // namespace quantd

#endif  // QUANTD_WORKER_ENGINE_BASE_FLAG_VALUES_H_
