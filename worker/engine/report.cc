#include "worker/engine/report.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quantd::engine {

bool CpuInt8Report::Saturates(const std::string& engine) const {
  for (const Saturation& s : saturating_engines) {
    if (s.engine == engine) return true;
  }
  return false;
}

std::string CpuInt8Report::Summary() const {
  std::string text = absl::StrCat(model_name.empty() ? "unknown CPU" : model_name, "; ",
                                  features.empty() ? "no AVX2" : absl::StrJoin(features, " "));
  if (!onednn_isa.empty()) absl::StrAppend(&text, "; oneDNN isa ", onednn_isa);
  absl::StrAppend(&text, "; quantd kernels ", kernel_isa);
  if (saturating_engines.empty()) {
    absl::StrAppend(&text, "; int8 kernels exact with 8-bit activations");
  } else {
    std::vector<std::string> parts;
    for (const Saturation& s : saturating_engines) {
      parts.push_back(absl::StrCat(s.engine, " (", absl::StrJoin(s.ops, ", "), ")"));
    }
    absl::StrAppend(&text, "; saturating with 8-bit activations: ", absl::StrJoin(parts, ", "));
  }
  return text;
}

}  // namespace quantd::engine
