#include "worker/engine/runtime/kernel_choice.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quantd::engine {
namespace {

bool Has(const std::vector<std::string>& list, const std::string& item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

std::string WhereSaturating(const CpuInt8Report& cpu) {
  std::string where = cpu.model_name.empty() ? "this CPU" : cpu.model_name;
  if (!cpu.onednn_isa.empty()) absl::StrAppend(&where, ", oneDNN isa ", cpu.onednn_isa);
  return where;
}

}  // namespace

std::vector<std::string> KernelPreference(const std::string& preset, const std::vector<std::string>& available) {
  std::vector<std::string> order;
  if (preset == "x86") order = {"x86", "fbgemm", "onednn", "qnnpack"};
  else if (preset == "fbgemm") order = {"fbgemm", "x86", "onednn", "qnnpack"};
  else order = {"onednn", "x86", "fbgemm", "qnnpack"};
  std::vector<std::string> result;
  for (const std::string& engine : order) {
    if (Has(available, engine)) result.push_back(engine);
  }
  for (const std::string& engine : available) {
    if (!Has(result, engine)) result.push_back(engine);
  }
  return result;
}

KernelCandidate AssessKernelEngine(const std::string& engine, int64_t activation_quant_max, const CpuInt8Report& cpu) {
  KernelCandidate c;
  c.engine = engine;
  if (!cpu.Saturates(engine)) {
    c.exact = true;
    c.why = engine == "qnnpack" ? "widens u8 and s8 to 16 bits before multiplying: exact on any CPU"
                                : absl::StrCat("measured exact with 8-bit activations on ", WhereSaturating(cpu));
  } else if (activation_quant_max <= 127) {
    c.exact = true;
    c.why =
        "7-bit activations (reduce_range): u7 x s8 pair sums fit in int16 (values past the calibrated range "
        "take codes above 127, which may saturate)";
  } else {
    c.exact = false;
    c.why = absl::StrCat("sums u8 x s8 pairs in int16 with saturation on ", WhereSaturating(cpu),
                         " (no VNNI): activation codes up to ", activation_quant_max, " overflow");
  }
  return c;
}

ArtifactRequirements RequirementsFor(const std::string& engine, int64_t activation_quant_max) {
  ArtifactRequirements r;
  r.kernel_engine = engine;
  r.activation_quant_max = activation_quant_max;
  r.needs_non_saturating_u8s8 = engine != "qnnpack" && activation_quant_max > 127;
  return r;
}

absl::StatusOr<std::string> RuntimeKernelEngine(const ArtifactRequirements& requirements, const CpuInt8Report& cpu,
                                                const std::vector<std::string>& available, bool allow_reroute) {
  const std::string& engine = requirements.kernel_engine;
  if (!Has(available, engine) && !allow_reroute) {
    return absl::FailedPreconditionError(absl::StrCat("the artifact was made for kernel engine '", engine,
                                                      "', which this LibTorch lacks (available: ",
                                                      absl::StrJoin(available, ", "), ")"));
  }
  const bool saturates = requirements.needs_non_saturating_u8s8 && cpu.Saturates(engine);
  if (Has(available, engine) && !saturates) return engine;
  const std::string problem =
      Has(available, engine)
          ? absl::StrCat("kernel engine '", engine, "' ",
                         AssessKernelEngine(engine, requirements.activation_quant_max, cpu).why)
          : absl::StrCat("kernel engine '", engine, "' is not compiled into this LibTorch");
  if (!allow_reroute) {
    return absl::FailedPreconditionError(
        absl::StrCat("the artifact would not run exactly here: ", problem, "; run it on qnnpack instead"));
  }
  if (!Has(available, "qnnpack")) {
    return absl::FailedPreconditionError(
        absl::StrCat("the artifact would not run exactly here: ", problem, ", and there is no qnnpack to run it on"));
  }
  return std::string("qnnpack");
}

}  // namespace quantd::engine
