#include "worker/engine/base/flag_values.h"

#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace quantd {

bool IsKernelEngineName(absl::string_view name) {
  return name == "onednn" || name == "qnnpack" || name == "fbgemm" || name == "x86";
}

absl::StatusOr<std::vector<double>> ParseNumberList(absl::string_view text, absl::string_view flag) {
  std::vector<double> numbers;
  if (text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": comma-separated numbers expected, got \"\""));
  }
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    double value = 0;
    if (part.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": a number left out in \"", text, "\""));
    }
    if (!absl::SimpleAtod(part, &value) || !std::isfinite(value)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": \"", part, "\" is not a number"));
    }
    // The API carries them as float32: one tool must not take what the other refuses.
    if (std::abs(value) > std::numeric_limits<float>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": ", part, " is too large"));
    }
    numbers.push_back(value);
  }
  if (numbers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": comma-separated numbers expected, got \"", text, "\""));
  }
  return numbers;
}

absl::Status CheckLabelsFlag(absl::string_view labels_flag, absl::string_view format) {
  if (format == "npy") return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(labels_flag, ": CIFAR-10 records carry their labels; a labels file goes with .npy images"));
}

absl::Status CheckFusionGroups(const std::vector<std::vector<std::string>>& groups) {
  if (groups.empty()) return absl::InvalidArgumentError("--fusion: no groups (auto, none, or a,b;c,d)");
  std::set<std::string> seen;
  for (const std::vector<std::string>& group : groups) {
    const std::string listed = absl::StrJoin(group, ",");
    for (const std::string& name : group) {
      if (name.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("--fusion: an empty module path in group \"", listed, "\""));
      }
      if (!seen.insert(name).second) {
        return absl::InvalidArgumentError(absl::StrCat("--fusion: module \"", name, "\" is in two groups"));
      }
    }
    if (group.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat("--fusion: group \"", listed,
                                                     "\" needs two or more modules (auto, none, or a,b;c,d)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<FusionFlag> ParseFusionFlag(absl::string_view text) {
  FusionFlag fusion;
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "auto") {
    fusion.automatic = true;
    return fusion;
  }
  if (lower == "none") return fusion;
  for (absl::string_view group : absl::StrSplit(text, ';', absl::SkipEmpty())) {
    fusion.groups.push_back(absl::StrSplit(group, ','));
  }
  if (fusion.groups.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--fusion: no groups in \"", text, "\" (auto, none, or a,b;c,d)"));
  }
  if (absl::Status checked = CheckFusionGroups(fusion.groups); !checked.ok()) return checked;
  return fusion;
}

}  // namespace quantd
