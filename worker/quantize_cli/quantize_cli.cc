#include "worker/quantize_cli/quantize_cli.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <cmath>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "worker/engine/base/flag_values.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/qconfig/qconfig.h"
#include "worker/engine/serialization/artifact_file.h"

namespace quantd::cli {
namespace {

// The same file, by path or (both existing) by identity: a hard link or
// "./x" is the same file as "x".
bool SameFile(const std::string& a, const std::string& b) {
  std::error_code error;
  if (std::filesystem::exists(a, error) && std::filesystem::exists(b, error)) {
    return std::filesystem::equivalent(a, b, error);
  }
  // Absolute first: weakly_canonical keeps "c.bin" relative but resolves "./c.bin".
  return std::filesystem::weakly_canonical(std::filesystem::absolute(a, error), error) ==
         std::filesystem::weakly_canonical(std::filesystem::absolute(b, error), error);
}

// --output and --report are written once the job is done: naming an input,
// or each other, would replace it without a word.
absl::Status CheckOutputsAreNotInputs(const QuantizeCommand& cmd) {
  const engine::QuantizeOptions& o = cmd.options;
  std::vector<std::pair<std::string, std::string>> inputs = {{"--model", o.model_path},
                                                             {"--calib", o.calibration.path},
                                                             {"--calib_labels", o.calibration.labels_path}};
  if (o.evaluation.has_value()) {
    inputs.insert(inputs.end(), {{"--eval", o.evaluation->path}, {"--eval_labels", o.evaluation->labels_path}});
  }
  if (o.accuracy_goal.has_value()) {
    inputs.insert(inputs.end(),
                  {{"--tuning", o.accuracy_goal->tuning.path}, {"--tuning_labels", o.accuracy_goal->tuning.labels_path}});
  }
  std::vector<std::pair<std::string, std::string>> outputs = {{"--output", cmd.output_path}};
  if (!cmd.report_path.empty()) outputs.emplace_back("--report", cmd.report_path);
  for (const auto& [flag, path] : outputs) {
    for (const auto& [input_flag, input] : inputs) {
      if (!input.empty() && SameFile(path, input)) {
        return absl::InvalidArgumentError(
            absl::StrCat(flag, ": \"", path, "\" is the ", input_flag, " file; writing it would replace that input"));
      }
    }
  }
  if (!cmd.report_path.empty() && SameFile(cmd.output_path, cmd.report_path)) {
    return absl::InvalidArgumentError("--report: the same file as --output; give each its own");
  }
  return absl::OkStatus();
}

// `format` from --FLAG_format (cifar10 | npy, as quantctl's); empty: told by
// the file's extension.
absl::StatusOr<engine::DatasetFormat> FormatOf(const std::string& path, const std::string& flag,
                                               const std::string& format) {
  if (format == "cifar10") return engine::DatasetFormat::kCifar10Binary;
  if (format == "npy") return engine::DatasetFormat::kNpy;
  if (!format.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, "_format must be cifar10 or npy, not '", format, "'"));
  }
  if (absl::EndsWith(path, ".bin")) return engine::DatasetFormat::kCifar10Binary;
  if (absl::EndsWith(path, ".npy")) return engine::DatasetFormat::kNpy;
  return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot tell the format of '", path,
                                                 "' (CIFAR-10 binary .bin or NumPy .npy); name it with ", flag,
                                                 "_format=cifar10|npy"));
}

absl::Status CheckLabels(const std::string& flag, engine::DatasetFormat format) {
  return CheckLabelsFlag(flag, format == engine::DatasetFormat::kNpy ? "npy" : "cifar10");
}

}  // namespace

std::string QuantizeUsage() {
  return R"(usage: quantd-quantize --model M.pt --calib calib.bin --output artifact.pt [options]

Flags use quantctl's and quantd's names and syntax: --name=value or --name value;
booleans --name or --name=true|false; dashes and underscores are the same
(--kernel-engine = --kernel_engine).

  --model PATH               FP32 TorchScript model (torch.jit.script or torch.jit.trace, then save)
  --calib PATH               calibration set: CIFAR-10 binary (.bin) or images .npy (alias --calibration)
  --calib_format F           cifar10 | npy (default: from the extension; --eval_format and
                             --tuning_format likewise)
  --calib_labels PATH        labels .npy for an .npy calibration set (needed for --samples_per_class)
  --samples_per_class N      stratified selection of N samples per class (fixed --seed, default 0)
  --batch_size N             calibration batch size (default 100, as PyTorch's recipe)
  --preset NAME              fbgemm | x86 | onednn | qnnpack | best | custom (default fbgemm; alias
                             --qconfig). best: 8-bit activations, per-channel weights rounded
                             against each layer's inputs, bias correction, global average pooling
                             folded into the classifier, and the range estimator whose output is
                             closest to FP32 (output SQNR) on the calibration images
  --activation_observer O    custom: minmax | moving_average_minmax | histogram (PyTorch's),
                             or quantd's range estimators: mse | percentile | entropy
  --percentile P             custom, percentile: the share of values kept, in (0, 100] (default 99.99)
  --weight_observer O        custom: per_channel_symmetric | per_tensor_symmetric | per_tensor_affine
  --reduce_range             custom: 7-bit activations
  --kernel_engine E          onednn | qnnpack | fbgemm | x86 (default: the fastest exact one on this CPU)
  --strict_kernels           fail if --kernel_engine saturates on this CPU (default: a warning)
  --bias_correction          any preset: correct each int8 conv/linear bias for the mean output shift
                             its int8 weights cause on the calibration images (the best preset has it)
  --fitted_rounding          any preset: round int8 weights against each layer's calibration inputs,
                             GPTQ-style, instead of to nearest (the best preset has it)
  --cross_layer_equalization any preset: rescale conv pairs joined by a ReLU before calibration
                             (per-tensor weights: equal weight ranges; per-channel: activation ranges
                             balanced against the next layer's weights)
  --fusion auto|none|a,b,c;d,e|SPEC.json
                             fusion: auto (default), none, groups inline as quantctl takes them
                             (modules comma-separated, groups semicolon-separated), or a .json
                             file with a list of module-path lists
  --layout NCHW|NHWC|auto    .npy image layout (default auto)
  --scale S --mean a,b,c --std a,b,c   preprocessing (default: raw pixel values)
  --output PATH              int8 TorchScript artifact
  --report PATH              manifest JSON (qconfig, kernel choice and CPU, fused groups, fallbacks,
                             per-layer qparams and SQNR, quality check, requirements)
  --tuning PATH              accuracy-aware mode: a labelled tuning set (.bin, or .npy with
                             --tuning_labels; never the test set). From one calibration, range
                             estimators are tried, then the most sensitive layers kept in FP32,
                             until int8 top-1 on it is within --tolerance of FP32
  --tolerance POINTS         top-1 points the int8 model may lose on the tuning set (default 0.1)
  --relative_tolerance       --tolerance is in percent of FP32's top-1
  --max_trials N             trial budget (default 40)
  --time_budget_seconds S    time budget for the whole job (default 60)
  --int8_only                never keep a layer in FP32 (try range estimators only)
  --max_fp32_layers N        keep at most N layers in FP32 (default and 0: no cap)
  --against_fp32             judge top-1 against the FP32 model's predictions, not the labels:
                             --tolerance then bounds disagreement with FP32 (no labels needed)
  --eval PATH                labeled set (.bin, or .npy with --eval_labels) for FP32 and int8 top-1
  --eval_max_samples N       evaluate the first N images of --eval only (default and 0: all)
  --quality_samples N        calibration images the int8-vs-FP32 check compares (default 100; 0 = off)
  --min_top1_agreement F     least top-1 agreement with FP32, 0..1 (default 0.8)
  --min_output_sqnr_db DB    least output SQNR against FP32 (default 10)
  --allow_low_quality        keep a model that fails the check (with a warning) instead of failing
  --intra_op_threads N       LibTorch intra-op threads, 1..1024 (default 1; quantd's flag of the
                             same name; alias --threads)
  --overlap_observers        gather calibration statistics on a second thread (same result;
                             --intra_op_threads 2 is faster: convolutions and observers both split)
  --quiet                    print only errors
)";
}

absl::StatusOr<engine::FusionSpec> ParseFusionSpec(const std::string& value) {
  engine::FusionSpec spec;
  if (!absl::EndsWith(value, ".json")) {
    // quantctl's syntax, checked as quantctl checks it.
    QUANTD_ASSIGN_OR_RETURN(FusionFlag fusion, ParseFusionFlag(value));
    spec.automatic = fusion.automatic;
    spec.groups = std::move(fusion.groups);
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
  QUANTD_RETURN_IF_ERROR(CheckFusionGroups(spec.groups));  // as for groups inline
  return spec;
}

absl::StatusOr<QuantizeCommand> ParseQuantizeArgs(const std::vector<std::string>& args) {
  static const std::set<std::string> kBoolFlags = {"reduce_range", "quiet", "help", "overlap_observers",
                                                   "strict_kernels", "allow_low_quality", "relative_tolerance",
                                                   "int8_only", "against_fp32", "bias_correction",
                                                   "fitted_rounding", "cross_layer_equalization"};
  // quantctl's names for the same things.
  static const std::map<std::string, std::string> kAliases = {{"calibration", "calib"},
                                                              {"calibration_labels", "calib_labels"},
                                                              {"qconfig", "preset"},
                                                              {"threads", "intra_op_threads"}};
  static const std::set<std::string> kKnown = {
      "model", "calib", "calib_format", "calib_labels", "eval_format", "tuning_format", "samples_per_class", "seed",
      "batch_size", "preset", "activation_observer", "weight_observer", "reduce_range", "percentile", "kernel_engine",
      "strict_kernels", "fusion", "layout", "scale", "mean", "std", "output", "report", "eval", "eval_labels",
      "eval_max_samples", "intra_op_threads", "quiet", "help", "overlap_observers", "quality_samples", "min_top1_agreement",
      "min_output_sqnr_db", "allow_low_quality", "tuning", "tuning_labels", "tolerance", "relative_tolerance",
      "max_trials", "time_budget_seconds", "int8_only", "max_fp32_layers", "against_fp32", "bias_correction",
      "fitted_rounding", "cross_layer_equalization"};
  std::map<std::string, std::string> flags;
  std::map<std::string, std::string> spelled;  // flag -> the name it was given as
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2);
    std::string value;
    const auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    std::replace(name.begin(), name.end(), '-', '_');
    const std::string typed = name;
    if (auto alias = kAliases.find(name); alias != kAliases.end()) name = alias->second;
    // Before its value is looked for: "--verbose --quiet" is an unknown flag.
    if (!kKnown.count(name)) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (auto earlier = spelled.find(name); earlier != spelled.end() && earlier->second != typed) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", earlier->second, " and --", typed, " are the same flag: give one"));
    }
    spelled[name] = typed;
    if (kBoolFlags.count(name)) {
      // "--flag" alone is true; "--flag=VALUE" must be a boolean.
      bool on = true;
      if (eq != std::string::npos && !absl::SimpleAtob(value, &on)) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " expects true or false, got \"", value, "\""));
      }
      value = on ? "true" : "false";
    } else if (eq == std::string::npos) {
      if (i + 1 >= args.size() || absl::StartsWith(args[i + 1], "--")) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    // Names in either case, as quantctl takes them ("FBGEMM", "nchw").
    if (name == "preset" || name == "activation_observer" || name == "weight_observer" || name == "kernel_engine" ||
        (name == "layout" && absl::AsciiStrToLower(value) == "auto")) {
      value = absl::AsciiStrToLower(value);
    } else if (name == "layout") {
      value = absl::AsciiStrToUpper(value);
    }
    flags[name] = value;
  }
  if (flags.count("help") && flags["help"] == "true") return absl::InvalidArgumentError("help requested");
  // Given but empty (an unset variable: --report="$OUT"), a file flag would
  // read as not given: no report written, no labels, without a word.
  for (const char* flag : {"model", "output", "report", "calib", "calib_labels", "eval", "eval_labels", "tuning",
                           "tuning_labels", "fusion"}) {
    if (auto it = flags.find(flag); it != flags.end() && it->second.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--", spelled[flag], " is empty (an unset variable?)"));
    }
  }
  auto get = [&](const std::string& name, const std::string& fallback = "") {
    auto it = flags.find(name);
    return it == flags.end() ? fallback : it->second;
  };
  // Given, and for a boolean given as true: --int8_only=false is as good as
  // left out (a wrapper passing --int8_only=$X must not fail for X=false).
  auto given = [&](const std::string& name) {
    auto it = flags.find(name);
    return it != flags.end() && (kBoolFlags.count(name) == 0 || it->second == "true");
  };
  auto get_int = [&](const std::string& name, int64_t fallback) -> absl::StatusOr<int64_t> {
    auto it = flags.find(name);
    if (it == flags.end()) return fallback;
    int64_t v = 0;
    if (!absl::SimpleAtoi(it->second, &v) || v < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " must be a non-negative integer, not '", it->second, "'"));
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
  o.calibration.path = get("calib");
  if (o.calibration.path.empty()) return absl::InvalidArgumentError("--calib is required");
  QUANTD_ASSIGN_OR_RETURN(o.calibration.format, FormatOf(o.calibration.path, "--calib", get("calib_format")));
  o.calibration.labels_path = get("calib_labels");
  if (flags.count("calib_labels")) QUANTD_RETURN_IF_ERROR(CheckLabels("--calib_labels", o.calibration.format));
  QUANTD_ASSIGN_OR_RETURN(o.calibration.samples_per_class, get_int("samples_per_class", 0));
  // As quantd refuses such a job at submit: said before anything runs.
  if (o.calibration.samples_per_class > 0 && o.calibration.format == engine::DatasetFormat::kNpy &&
      o.calibration.labels_path.empty()) {
    return absl::InvalidArgumentError("--calib_labels: required for .npy images with --samples_per_class (per class)");
  }
  // The API's full uint64 range, as quantctl takes it: a job's selection can
  // be reproduced here with its seed.
  if (flags.count("seed") && !absl::SimpleAtoi(get("seed"), &o.calibration.seed)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seed must be an integer in 0..18446744073709551615, not '", get("seed"), "'"));
  }
  o.calibration.layout = get("layout", "auto");
  if (o.calibration.layout != "auto" && o.calibration.layout != "NCHW" && o.calibration.layout != "NHWC") {
    return absl::InvalidArgumentError(
        absl::StrCat("--layout must be NCHW, NHWC or auto, not '", o.calibration.layout, "'"));
  }
  if (flags.count("scale") && (!absl::SimpleAtod(get("scale"), &o.calibration.preprocessing.scale) ||
                              !std::isfinite(o.calibration.preprocessing.scale) ||
                              o.calibration.preprocessing.scale == 0)) {
    return absl::InvalidArgumentError("--scale must be a finite, non-zero number");
  }
  if (flags.count("mean")) {
    QUANTD_ASSIGN_OR_RETURN(o.calibration.preprocessing.mean, ParseNumberList(get("mean"), "--mean"));
  }
  if (flags.count("std")) {
    QUANTD_ASSIGN_OR_RETURN(o.calibration.preprocessing.std, ParseNumberList(get("std"), "--std"));
  }
  QUANTD_ASSIGN_OR_RETURN(o.batch_size, get_int("batch_size", 100));
  if (o.batch_size == 0 || o.batch_size > kMaxBatchSize) {
    return absl::InvalidArgumentError(absl::StrCat("--batch_size: a number in 1..", kMaxBatchSize, " expected"));
  }
  const std::string qconfig = get("preset", "fbgemm");
  if (qconfig == "custom") {
    o.qconfig.preset = "";
    o.qconfig.activation_observer = get("activation_observer", "histogram");
    o.qconfig.weight_observer = get("weight_observer", "per_channel_symmetric");
    o.qconfig.reduce_range = get("reduce_range") == "true";
    // Checked here, so that a mistake is a usage error naming its flag, as in quantctl.
    // The activation observer alone first (with the default weights): the
    // error names the flag that is wrong.
    if (absl::Status activation =
            engine::CustomQConfig(o.qconfig.activation_observer, "per_channel_symmetric", o.qconfig.reduce_range)
                .status();
        !activation.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--activation_observer: ", activation.message()));
    }
    if (absl::Status weight = engine::CustomQConfig(o.qconfig.activation_observer, o.qconfig.weight_observer,
                                                    o.qconfig.reduce_range)
                                  .status();
        !weight.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--weight_observer: ", weight.message()));
    }
    if (flags.count("percentile")) {
      if (!absl::SimpleAtod(get("percentile"), &o.qconfig.percentile) ||
          !(o.qconfig.percentile > 0 && o.qconfig.percentile <= 100)) {
        return absl::InvalidArgumentError(absl::StrCat("--percentile must be a number in (0, 100], not '",
                                                       get("percentile"), "'"));
      }
      if (o.qconfig.activation_observer != "percentile") {
        return absl::InvalidArgumentError("--percentile: only with --activation_observer=percentile");
      }
    }
  } else {
    o.qconfig.preset = qconfig;
    if (absl::Status preset = engine::QConfigPreset(qconfig).status(); !preset.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--preset: ", preset.message()));
    }
    for (const char* flag : {"activation_observer", "weight_observer", "reduce_range", "percentile"}) {
      if (given(flag)) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": needs --preset custom"));
    }
  }
  o.kernel_engine = get("kernel_engine");
  if (flags.count("kernel_engine") && !IsKernelEngineName(o.kernel_engine)) {
    return absl::InvalidArgumentError(absl::StrCat("--kernel_engine: unknown kernel engine \"", o.kernel_engine,
                                                   "\" (", kKernelEngineNames, ")"));
  }
  // As quantd refuses such a job at submit: said before anything runs.
  if (o.kernel_engine == "onednn" && o.qconfig.weight_observer == "per_tensor_affine") {
    return absl::InvalidArgumentError(
        "--weight_observer: per_tensor_affine gives weight zero points, which --kernel_engine=onednn rejects (use "
        "a symmetric weight observer, or --kernel_engine=qnnpack)");
  }
  QUANTD_ASSIGN_OR_RETURN(o.fusion, ParseFusionSpec(get("fusion", "auto")));
  if (flags.count("eval")) {
    engine::DatasetSpec eval = o.calibration;
    eval.path = get("eval");
    QUANTD_ASSIGN_OR_RETURN(eval.format, FormatOf(eval.path, "--eval", get("eval_format")));
    eval.labels_path = get("eval_labels");
    if (flags.count("eval_labels")) QUANTD_RETURN_IF_ERROR(CheckLabels("--eval_labels", eval.format));
    if (eval.format == engine::DatasetFormat::kNpy && eval.labels_path.empty()) {
      return absl::InvalidArgumentError("--eval_labels: required for .npy images to evaluate");
    }
    eval.samples_per_class = 0;
    // As quantctl's flag of the same name: the first N images, 0 = all.
    QUANTD_ASSIGN_OR_RETURN(eval.limit, get_int("eval_max_samples", 0));
    o.evaluation = eval;
  }
  if (flags.count("tuning")) {
    engine::AccuracyGoal goal;
    goal.tuning = o.calibration;
    goal.tuning.path = get("tuning");
    QUANTD_ASSIGN_OR_RETURN(goal.tuning.format, FormatOf(goal.tuning.path, "--tuning", get("tuning_format")));
    goal.tuning.labels_path = get("tuning_labels");
    if (flags.count("tuning_labels")) QUANTD_RETURN_IF_ERROR(CheckLabels("--tuning_labels", goal.tuning.format));
    goal.tuning.samples_per_class = 0;
    double points = 0.1;
    if (flags.count("tolerance") && (!absl::SimpleAtod(get("tolerance"), &points) || !(points >= 0 && points <= 100))) {
      return absl::InvalidArgumentError(absl::StrCat("--tolerance: '", get("tolerance"),
                                                     "' is not a number of top-1 points in [0, 100]"));
    }
    goal.max_top1_drop = points / 100;
    goal.relative = get("relative_tolerance") == "true";
    QUANTD_ASSIGN_OR_RETURN(goal.max_trials, get_int("max_trials", goal.max_trials));
    if (goal.max_trials == 0 || goal.max_trials > kMaxTrialsLimit) {
      return absl::InvalidArgumentError(absl::StrCat("--max_trials: a number in 1..", kMaxTrialsLimit, " expected"));
    }
    if (flags.count("time_budget_seconds") &&
        (!absl::SimpleAtod(get("time_budget_seconds"), &goal.time_budget_seconds) ||
         !(goal.time_budget_seconds > 0 && goal.time_budget_seconds <= kMaxTimeBudgetSeconds))) {
      return absl::InvalidArgumentError(
          absl::StrCat("--time_budget_seconds: a positive number up to ", kMaxTimeBudgetSeconds, " expected"));
    }
    goal.allow_fp32_layers = get("int8_only") != "true";
    QUANTD_ASSIGN_OR_RETURN(goal.max_fp32_layers, get_int("max_fp32_layers", 0));
    goal.against_fp32 = get("against_fp32") == "true";
    // As quantd refuses such a job at submit: said before anything runs.
    if (!goal.allow_fp32_layers && goal.max_fp32_layers > 0) {
      return absl::InvalidArgumentError("--max_fp32_layers: not with --int8_only (no layer stays FP32)");
    }
    const std::string& observer = o.qconfig.activation_observer;
    if (o.qconfig.preset.empty() && (observer == "minmax" || observer == "moving_average_minmax")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--activation_observer: --tuning tries range estimators on the calibration's histograms, which ", observer,
          " does not keep (use a preset, or histogram, mse, percentile or entropy)"));
    }
    if (!goal.against_fp32 && goal.tuning.format == engine::DatasetFormat::kNpy && goal.tuning.labels_path.empty()) {
      return absl::InvalidArgumentError(
          "--tuning_labels: required for .npy images to tune on (or --against_fp32, which needs none)");
    }
    o.accuracy_goal = goal;
  } else {
    for (const char* flag : {"tuning_format", "tuning_labels", "tolerance", "relative_tolerance", "max_trials",
                             "time_budget_seconds", "int8_only", "max_fp32_layers", "against_fp32"}) {
      if (given(flag)) return absl::InvalidArgumentError(absl::StrCat("--", flag, " needs --tuning"));
    }
  }
  if (!flags.count("eval")) {
    for (const char* flag : {"eval_format", "eval_labels", "eval_max_samples"}) {
      if (flags.count(flag)) return absl::InvalidArgumentError(absl::StrCat("--", flag, " needs --eval"));
    }
  }
  QUANTD_ASSIGN_OR_RETURN(int64_t threads, get_int("intra_op_threads", 1));
  if (threads < 1 || threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--intra_op_threads must be in 1..1024, not ", threads));
  }
  cmd.threads = static_cast<int>(threads);
  cmd.quiet = get("quiet") == "true";
  o.overlap_observers = get("overlap_observers") == "true";
  o.strict_kernels = get("strict_kernels") == "true";
  // Without a named engine quantd picks an exact one: there is nothing to be strict about.
  if (o.strict_kernels && o.kernel_engine.empty()) {
    return absl::InvalidArgumentError("--strict_kernels: only with --kernel_engine (without one an exact engine is "
                                      "chosen)");
  }
  o.qconfig.bias_correction = get("bias_correction") == "true";
  o.qconfig.fitted_rounding = get("fitted_rounding") == "true";
  o.qconfig.equalization = get("cross_layer_equalization") == "true";
  o.allow_low_quality = get("allow_low_quality") == "true";
  QUANTD_ASSIGN_OR_RETURN(o.quality_samples, get_int("quality_samples", o.quality_samples));
  if (o.quality_samples > kMaxQualitySamples) {
    return absl::InvalidArgumentError(absl::StrCat("--quality_samples: a number in 0..", kMaxQualitySamples, " expected"));
  }
  for (auto [name, target] : {std::pair<const char*, double*>{"min_top1_agreement", &o.min_top1_agreement},
                              {"min_output_sqnr_db", &o.min_output_sqnr_db}}) {
    if (flags.count(name) && (!absl::SimpleAtod(get(name), target) || !std::isfinite(*target))) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a finite number, not '", get(name), "'"));
    }
  }
  if (!(o.min_top1_agreement >= 0 && o.min_top1_agreement <= 1)) {
    return absl::InvalidArgumentError("--min_top1_agreement must be a fraction in 0..1");
  }
  QUANTD_RETURN_IF_ERROR(CheckOutputsAreNotInputs(cmd));
  return cmd;
}

namespace {

void PrintTuning(const engine::TuningReport& t, std::ostream& out) {
  out << std::fixed;
  out << "tuning on " << t.judged_on;
  if (t.fp32_top1) out << ": FP32 top-1 " << std::setprecision(2) << 100 * *t.fp32_top1 << "%";
  if (t.target_top1) out << ", goal >= " << std::setprecision(2) << 100 * *t.target_top1 << "%";
  if (t.target_top1) {
    out << "; " << (t.met ? "met" : "NOT met") << " (" << t.stopped_because << ")";
  } else {
    out << "; closest to FP32 chosen";
  }
  out << " in " << t.trials.size() << " trials, " << std::setprecision(1) << t.seconds << " s\n";
  out << "  trial  stage        top-1    agree   SQNR dB  time s  activation observer / FP32 layers\n";
  for (const engine::Trial& trial : t.trials) {
    out << "  " << std::right << std::setw(4) << trial.index + 1 << (trial.index == t.best_trial ? "*" : " ") << " "
        << std::left << std::setw(11) << trial.stage << std::right;
    if (!trial.error.empty()) {
      out << "  failed: " << trial.error << "\n";
      continue;
    }
    if (trial.score.top1) {
      out << std::setw(7) << std::setprecision(2) << 100 * *trial.score.top1 << "%";
    } else {
      out << "       -";
    }
    out << std::setw(8) << std::setprecision(2) << 100 * trial.score.agreement << "%" << std::setw(9)
        << std::setprecision(2) << trial.score.output_sqnr_db << std::setw(8) << std::setprecision(2) << trial.seconds
        << "  " << trial.settings;
    if (!trial.fp32_layers.empty()) out << " | FP32: " << absl::StrJoin(trial.fp32_layers, ", ");
    out << (trial.meets_goal ? "  (meets goal)" : "") << "\n";
  }
  if (!t.sensitivity.empty()) {
    out << "  sensitivity (agreement with FP32 gained, in points, with the layer alone in FP32):";
    for (const engine::LayerSensitivity& s : t.sensitivity) {
      out << " " << s.layer << " " << std::showpos << std::setprecision(2) << 100 * s.gain << std::noshowpos;
    }
    out << "\n";
  }
  out << std::defaultfloat;
}

}  // namespace

namespace {

// The engine says its options as the API names them (a server's client sets
// preprocessing.std); this tool's user set a flag.
absl::Status InFlagTerms(const absl::Status& status) {
  return absl::Status(status.code(), absl::StrReplaceAll(status.message(), {{"preprocessing.mean", "--mean"},
                                                                           {"preprocessing.std", "--std"},
                                                                           {"preprocessing.scale", "--scale"},
                                                                           {"samples_per_class=", "--samples_per_class="}}));
}

}  // namespace

absl::Status RunQuantize(const QuantizeCommand& command, std::ostream& out) {
  engine::InitializeRuntime(command.threads);
  absl::StatusOr<std::unique_ptr<engine::QuantizedModel>> quantized = engine::Quantize(command.options);
  if (!quantized.ok()) return InFlagTerms(quantized.status());
  std::unique_ptr<engine::QuantizedModel> model = std::move(*quantized);
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
  out << "  why: " << r.kernel_choice.reason << "\n";
  for (const auto& c : r.kernel_choice.candidates) {
    out << "  " << c.engine << (c.exact ? ": exact" : ": NOT exact");
    if (c.ms_per_image) out << ", " << std::setprecision(3) << *c.ms_per_image << " ms/image";
    out << " (" << c.why << ")\n";
  }
  out << "cpu: " << r.cpu.Summary() << "\n";
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
  if (r.quality.samples > 0) {
    out << std::fixed << std::setprecision(1) << "quality: " << (r.quality.passed ? "passed" : "FAILED") << " on "
        << r.quality.samples << " calibration images:";
    if (r.quality.top1_agreement) out << " top-1 agreement with FP32 " << 100 * *r.quality.top1_agreement << "%";
    if (r.quality.output_sqnr_db) {
      out << (r.quality.top1_agreement ? "," : "") << " output SQNR " << *r.quality.output_sqnr_db << " dB";
    }
    out << std::defaultfloat << "\n";
  }
  if (r.tuning) PrintTuning(*r.tuning, out);
  for (const std::string& advice : r.advice) out << "advice: " << advice << "\n";
  for (const std::string& warning : r.warnings) out << "WARNING: " << warning << "\n";
  out << "timings:";
  for (const auto& t : r.timings) out << " " << t.phase << "=" << std::setprecision(3) << t.seconds << "s";
  out << "\n";
  out << "artifact: " << command.output_path << " (" << r.artifact_size_bytes << " bytes, sha256 " << r.artifact_sha256
      << ")\n";
  return absl::OkStatus();
}

}  // namespace quantd::cli
