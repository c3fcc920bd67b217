#include "worker/quantize_cli/quantize_cli.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/serialization/artifact_file.h"

namespace quantd::cli {
namespace {

absl::StatusOr<engine::DatasetFormat> FormatOf(const std::string& path, const std::string& flag) {
  if (absl::EndsWith(path, ".bin")) return engine::DatasetFormat::kCifar10Binary;
  if (absl::EndsWith(path, ".npy")) return engine::DatasetFormat::kNpy;
  return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot tell the format of '", path,
                                                 "' (CIFAR-10 binary .bin or NumPy .npy)"));
}

std::vector<double> ParseDoubles(const std::string& text) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    double v = 0;
    if (absl::SimpleAtod(part, &v)) out.push_back(v);
  }
  return out;
}

}  // namespace

std::string QuantizeUsage() {
  return R"(usage: quantd-quantize --model M.pt --calibration calib.bin --output artifact.pt [options]

  --model PATH               FP32 TorchScript model (torch.jit.script/trace + save)
  --calibration PATH         calibration set: CIFAR-10 binary (.bin) or images .npy
  --calibration-labels PATH  labels .npy for an .npy calibration set (needed for --samples-per-class)
  --samples-per-class N      stratified selection of N samples per class (fixed --seed, default 0)
  --batch-size N             calibration batch size (default 100, as PyTorch's recipe)
  --qconfig NAME             fbgemm | x86 | onednn | qnnpack | custom (default fbgemm)
  --activation-observer O    custom: minmax | moving_average_minmax | histogram
  --weight-observer O        custom: per_channel_symmetric | per_tensor_symmetric | per_tensor_affine
  --reduce-range             custom: 7-bit activations
  --kernel-engine E          onednn | qnnpack | fbgemm | x86 (default: best compiled in)
  --fusion auto|SPEC.json    fusion groups (JSON list of module-path lists) or auto (default auto)
  --layout NCHW|NHWC|auto    .npy image layout (default auto)
  --scale S --mean a,b,c --std a,b,c   preprocessing (default: raw pixel values)
  --output PATH              int8 TorchScript artifact
  --report PATH              manifest JSON (qconfig, fused groups, fallbacks, per-layer qparams and SQNR)
  --eval PATH                labeled set (.bin, or .npy with --eval-labels) for FP32 and int8 top-1
  --threads N                intra-op threads (default 1)
  --overlap-observers        gather calibration statistics on a second thread (same result;
                             --threads 2 is faster: convolutions and observers both split)
  --quiet                    print only errors
)";
}

absl::StatusOr<engine::FusionSpec> ParseFusionSpec(const std::string& value) {
  engine::FusionSpec spec;
  if (value == "auto") {
    spec.automatic = true;
    return spec;
  }
  std::ifstream in(value);
  if (!in) return absl::NotFoundError(absl::StrCat("--fusion: cannot open spec file '", value, "'"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat("--fusion: '", value, "' is not valid JSON"));
  if (j.is_object() && j.contains("groups")) j = j["groups"];
  if (j.is_string() && j.get<std::string>() == "auto") {
    spec.automatic = true;
    return spec;
  }
  if (!j.is_array()) return absl::InvalidArgumentError("--fusion: the spec must be a list of module-path lists");
  for (const auto& group : j) {
    if (!group.is_array()) return absl::InvalidArgumentError("--fusion: each group must be a list of module paths");
    std::vector<std::string> names;
    for (const auto& name : group) {
      if (!name.is_string()) return absl::InvalidArgumentError("--fusion: module paths must be strings");
      names.push_back(name.get<std::string>());
    }
    spec.groups.push_back(std::move(names));
  }
  return spec;
}

absl::StatusOr<QuantizeCommand> ParseQuantizeArgs(const std::vector<std::string>& args) {
  static const std::set<std::string> kBoolFlags = {"reduce-range", "quiet", "help", "overlap-observers"};
  std::map<std::string, std::string> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "--")) return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    std::string name = arg.substr(2);
    std::string value;
    const auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (kBoolFlags.count(name)) {
      value = "true";
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
    flags[name] = value;
  }
  static const std::set<std::string> kKnown = {
      "model", "calibration", "calibration-labels", "samples-per-class", "seed", "batch-size", "qconfig",
      "activation-observer", "weight-observer", "reduce-range", "kernel-engine", "fusion", "layout", "scale",
      "mean", "std", "output", "report", "eval", "eval-labels", "threads", "quiet", "help", "overlap-observers"};
  for (const auto& [name, value] : flags) {
    if (!kKnown.count(name)) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
  }
  if (flags.count("help")) return absl::InvalidArgumentError("help requested");
  auto get = [&](const std::string& name, const std::string& fallback = "") {
    auto it = flags.find(name);
    return it == flags.end() ? fallback : it->second;
  };
  auto get_int = [&](const std::string& name, int64_t fallback) -> absl::StatusOr<int64_t> {
    auto it = flags.find(name);
    if (it == flags.end()) return fallback;
    int64_t v = 0;
    if (!absl::SimpleAtoi(it->second, &v) || v < 0) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a non-negative integer, not '", it->second, "'"));
    }
    return v;
  };

  QuantizeCommand cmd;
  engine::QuantizeOptions& o = cmd.options;
  o.model_path = get("model");
  if (o.model_path.empty()) return absl::InvalidArgumentError("--model is required");
  cmd.output_path = get("output");
  if (cmd.output_path.empty()) return absl::InvalidArgumentError("--output is required");
  cmd.report_path = get("report");
  o.calibration.path = get("calibration");
  if (o.calibration.path.empty()) return absl::InvalidArgumentError("--calibration is required");
  QUANTD_ASSIGN_OR_RETURN(o.calibration.format, FormatOf(o.calibration.path, "--calibration"));
  o.calibration.labels_path = get("calibration-labels");
  QUANTD_ASSIGN_OR_RETURN(o.calibration.samples_per_class, get_int("samples-per-class", 0));
  QUANTD_ASSIGN_OR_RETURN(int64_t seed, get_int("seed", 0));
  o.calibration.seed = static_cast<uint64_t>(seed);
  o.calibration.layout = get("layout", "auto");
  if (flags.count("scale") && !absl::SimpleAtod(get("scale"), &o.calibration.preprocessing.scale)) {
    return absl::InvalidArgumentError("--scale must be a number");
  }
  o.calibration.preprocessing.mean = ParseDoubles(get("mean"));
  o.calibration.preprocessing.std = ParseDoubles(get("std"));
  QUANTD_ASSIGN_OR_RETURN(o.batch_size, get_int("batch-size", 100));
  if (o.batch_size == 0) return absl::InvalidArgumentError("--batch-size must be positive");
  const std::string qconfig = get("qconfig", "fbgemm");
  if (qconfig == "custom") {
    o.qconfig.preset = "";
    o.qconfig.activation_observer = get("activation-observer", "histogram");
    o.qconfig.weight_observer = get("weight-observer", "per_channel_symmetric");
    o.qconfig.reduce_range = get("reduce-range") == "true";
  } else {
    o.qconfig.preset = qconfig;
    if (flags.count("activation-observer") || flags.count("weight-observer") || flags.count("reduce-range")) {
      return absl::InvalidArgumentError("--activation-observer/--weight-observer/--reduce-range need --qconfig custom");
    }
  }
  o.kernel_engine = get("kernel-engine");
  QUANTD_ASSIGN_OR_RETURN(o.fusion, ParseFusionSpec(get("fusion", "auto")));
  if (flags.count("eval")) {
    engine::DatasetSpec eval = o.calibration;
    eval.path = get("eval");
    QUANTD_ASSIGN_OR_RETURN(eval.format, FormatOf(eval.path, "--eval"));
    eval.labels_path = get("eval-labels");
    eval.samples_per_class = 0;
    o.evaluation = eval;
  }
  QUANTD_ASSIGN_OR_RETURN(int64_t threads, get_int("threads", 1));
  cmd.threads = static_cast<int>(std::max<int64_t>(1, threads));
  cmd.quiet = get("quiet") == "true";
  o.overlap_observers = get("overlap-observers") == "true";
  return cmd;
}

absl::Status RunQuantize(const QuantizeCommand& command, std::ostream& out) {
  engine::InitializeRuntime(command.threads);
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<engine::QuantizedModel> model, engine::Quantize(command.options));
  QUANTD_ASSIGN_OR_RETURN(std::string bytes, model->SerializeArtifact());
  const engine::QuantizeReport& r = model->report();
  if (!command.report_path.empty()) {
    QUANTD_RETURN_IF_ERROR(engine::WriteFileAtomically(command.report_path, engine::ManifestJson(r)));
  }
  absl::Status written = engine::WriteFileAtomically(command.output_path, bytes);
  if (!written.ok()) {
    if (!command.report_path.empty()) std::remove(command.report_path.c_str());
    return written;
  }
  if (command.quiet) return absl::OkStatus();
  out << "quantized " << command.options.model_path << " with " << r.qconfig_description << "\n";
  out << "kernel engine: " << r.kernel_engine << " (LibTorch " << r.torch_version << ", " << r.intra_op_threads
      << " intra-op thread(s))\n";
  out << "calibration: " << r.calibration_samples << " samples in batches of " << r.calibration_batch_size << "\n";
  out << "fused groups:";
  for (const auto& g : r.fused_groups) out << " [" << absl::StrJoin(g, ", ") << "]";
  out << "\n";
  out << "fp32 fallbacks:";
  if (r.fallbacks.empty()) out << " none";
  for (const auto& f : r.fallbacks) out << "\n  " << f.node << " (" << f.op << "): " << f.reason;
  out << "\n";
  out << "layers:\n";
  for (const auto& l : r.layers) {
    out << "  " << std::left << std::setw(22) << l.name << std::setw(13) << l.op << " scale=" << std::setprecision(6)
        << l.output_scale << " zp=" << l.output_zero_point;
    if (l.sqnr_db) out << " sqnr=" << std::fixed << std::setprecision(1) << *l.sqnr_db << "dB" << std::defaultfloat;
    out << "\n";
  }
  if (r.fp32_accuracy && r.int8_accuracy) {
    out << std::fixed << std::setprecision(2);
    out << "fp32 top-1: " << 100.0 * r.fp32_accuracy->top1() << "% (" << r.fp32_accuracy->correct << "/"
        << r.fp32_accuracy->total << ")\n";
    out << "int8 top-1: " << 100.0 * r.int8_accuracy->top1() << "% (" << r.int8_accuracy->correct << "/"
        << r.int8_accuracy->total << ")\n";
    out << std::defaultfloat;
  }
  out << "timings:";
  for (const auto& t : r.timings) out << " " << t.phase << "=" << std::setprecision(3) << t.seconds << "s";
  out << "\n";
  out << "artifact: " << command.output_path << " (" << r.artifact_size_bytes << " bytes, sha256 " << r.artifact_sha256
      << ")\n";
  return absl::OkStatus();
}

}  // namespace quantd::cli
