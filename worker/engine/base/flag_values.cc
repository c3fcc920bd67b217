#include "worker/engine/base/flag_values.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace quantd {

bool IsKernelEngineName(absl::string_view name) {
  return name == "onednn" || name == "qnnpack" || name == "fbgemm" || name == "x86";
}

absl::StatusOr<std::vector<double>> ParseNumberList(absl::string_view text, absl::string_view flag) {
  std::vector<double> numbers;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    double value = 0;
    if (!absl::SimpleAtod(part, &value) || !std::isfinite(value)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": \"", part, "\" is not a number"));
    }
    numbers.push_back(value);
  }
  if (numbers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": comma-separated numbers expected, got \"", text, "\""));
  }
  return numbers;
}

}  // namespace quantd
