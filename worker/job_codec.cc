#include "worker/job_codec.h"

#include <limits>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "worker/dataset_json.h"
#include "worker/json_number.h"

namespace quantd::worker {
namespace {

using nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

json EncodeAccuracy(const std::optional<engine::Accuracy>& a) {
  if (!a.has_value()) return nullptr;
  return json{{"correct", a->correct}, {"total", a->total}};
}

std::optional<engine::Accuracy> DecodeAccuracy(const json& j) {
  if (j.is_null()) return std::nullopt;
  engine::Accuracy a;
  a.correct = j.at("correct").get<int64_t>();
  a.total = j.at("total").get<int64_t>();
  return a;
}

json OptionalNumber(const std::optional<double>& v) { return v ? EncodeNumber(*v) : json(); }
// Arrays of numbers, each as EncodeNumber writes it (a weight's scale is
// inf for an inf weight, whose model the quality gate may still keep).
template <typename T>
json EncodeNumbers(const std::vector<T>& values) {
  json out = json::array();
  for (T v : values) out.push_back(EncodeNumber(static_cast<double>(v)));
  return out;
}
template <typename T>
std::vector<T> DecodeNumbers(const json& j) {
  std::vector<T> out;
  for (const json& v : j) out.push_back(static_cast<T>(DecodeNumber(v, kNaN)));
  return out;
}
std::optional<double> DecodeOptionalNumber(const json& j) {
  return j.is_null() ? std::nullopt : std::optional<double>(DecodeNumber(j, kNaN));
}

json EncodeScore(const engine::TrialScore& s) {
  return json{{"top1", OptionalNumber(s.top1)}, {"agreement", EncodeNumber(s.agreement)},
              {"output_sqnr_db", EncodeNumber(s.output_sqnr_db)}};
}

engine::TrialScore DecodeScore(const json& j) {
  engine::TrialScore s;
  s.top1 = DecodeOptionalNumber(j.at("top1"));
  s.agreement = DecodeNumber(j.at("agreement"), kNaN);
  s.output_sqnr_db = DecodeNumber(j.at("output_sqnr_db"), kNaN);
  return s;
}

json EncodeTuning(const engine::TuningReport& t) {
  json trials = json::array();
  for (const engine::Trial& trial : t.trials) {
    trials.push_back(json{{"index", trial.index},
                          {"stage", trial.stage},
                          {"candidate", trial.candidate},
                          {"settings", trial.settings},
                          {"fp32_layers", trial.fp32_layers},
                          {"score", EncodeScore(trial.score)},
                          {"seconds", EncodeNumber(trial.seconds)},
                          {"meets_goal", trial.meets_goal},
                          {"error", trial.error}});
  }
  json sensitivity = json::array();
  for (const engine::LayerSensitivity& s : t.sensitivity) {
    sensitivity.push_back(json{{"layer", s.layer}, {"gain", EncodeNumber(s.gain)}, {"sqnr_db", OptionalNumber(s.sqnr_db)}});
  }
  return json{{"judged_on", t.judged_on},
              {"samples", t.samples},
              {"fp32_top1", OptionalNumber(t.fp32_top1)},
              {"target_top1", OptionalNumber(t.target_top1)},
              {"met", t.met},
              {"stopped_because", t.stopped_because},
              {"best_trial", t.best_trial},
              {"candidates", t.candidates},
              {"trials", trials},
              {"sensitivity", sensitivity},
              {"fp32_layers", t.fp32_layers},
              {"seconds", EncodeNumber(t.seconds)}};
}

engine::TuningReport DecodeTuning(const json& j) {
  engine::TuningReport t;
  t.judged_on = j.at("judged_on").get<std::string>();
  t.samples = j.at("samples").get<int64_t>();
  t.fp32_top1 = DecodeOptionalNumber(j.at("fp32_top1"));
  t.target_top1 = DecodeOptionalNumber(j.at("target_top1"));
  t.met = j.at("met").get<bool>();
  t.stopped_because = j.at("stopped_because").get<std::string>();
  t.best_trial = j.at("best_trial").get<int>();
  t.candidates = j.at("candidates").get<std::vector<std::string>>();
  for (const json& r : j.at("trials")) {
    engine::Trial trial;
    trial.index = r.at("index").get<int>();
    trial.stage = r.at("stage").get<std::string>();
    trial.candidate = r.at("candidate").get<int>();
    trial.settings = r.at("settings").get<std::string>();
    trial.fp32_layers = r.at("fp32_layers").get<std::vector<std::string>>();
    trial.score = DecodeScore(r.at("score"));
    trial.seconds = DecodeNumber(r.at("seconds"), kNaN);
    trial.meets_goal = r.at("meets_goal").get<bool>();
    trial.error = r.at("error").get<std::string>();
    t.trials.push_back(std::move(trial));
  }
  for (const json& s : j.at("sensitivity")) {
    t.sensitivity.push_back({s.at("layer").get<std::string>(), DecodeNumber(s.at("gain"), kNaN),
                             DecodeOptionalNumber(s.at("sqnr_db"))});
  }
  t.fp32_layers = j.at("fp32_layers").get<std::vector<std::string>>();
  t.seconds = DecodeNumber(j.at("seconds"), kNaN);
  return t;
}

// The kernel choice, CPU, requirements, quality and warnings of a report.
// Rows written before quantd recorded them have none: they decode empty.
json EncodeKernelReport(const engine::QuantizeReport& r) {
  json candidates = json::array();
  for (const engine::KernelCandidate& c : r.kernel_choice.candidates) {
    candidates.push_back(
        json{{"engine", c.engine}, {"exact", c.exact}, {"why", c.why}, {"ms_per_image", OptionalNumber(c.ms_per_image)}});
  }
  json saturating = json::array();
  for (const auto& s : r.cpu.saturating_engines) saturating.push_back(json{{"engine", s.engine}, {"ops", s.ops}});
  const engine::QualityReport& q = r.quality;
  return json{
      {"kernel_choice", {{"engine", r.kernel_choice.engine}, {"reason", r.kernel_choice.reason}, {"candidates", candidates}}},
      {"cpu",
       {{"model", r.cpu.model_name},
        {"features", r.cpu.features},
        {"onednn_isa", r.cpu.onednn_isa},
        {"kernel_isa", r.cpu.kernel_isa},
        {"saturating_engines", saturating}}},
      {"requirements",
       {{"kernel_engine", r.requirements.kernel_engine},
        {"activation_quant_max", r.requirements.activation_quant_max},
        {"needs_non_saturating_u8s8", r.requirements.needs_non_saturating_u8s8}}},
      {"quality",
       {{"samples", q.samples},
        {"top1_agreement", OptionalNumber(q.top1_agreement)},
        {"output_sqnr_db", OptionalNumber(q.output_sqnr_db)},
        {"worst_layers", q.worst_layers},
        {"min_top1_agreement", q.min_top1_agreement},
        {"min_output_sqnr_db", q.min_output_sqnr_db},
        {"passed", q.passed},
        {"message", q.message}}},
      {"warnings", r.warnings},
      {"advice", r.advice},
      {"tuning", r.tuning ? EncodeTuning(*r.tuning) : json()}};
}

void DecodeKernelReport(const json& j, engine::QuantizeReport* r) {
  if (!j.is_object()) return;
  const json& choice = j.at("kernel_choice");
  r->kernel_choice.engine = choice.at("engine").get<std::string>();
  r->kernel_choice.reason = choice.at("reason").get<std::string>();
  for (const json& c : choice.at("candidates")) {
    r->kernel_choice.candidates.push_back({c.at("engine").get<std::string>(), c.at("exact").get<bool>(),
                                           c.at("why").get<std::string>(), DecodeOptionalNumber(c.at("ms_per_image"))});
  }
  const json& cpu = j.at("cpu");
  r->cpu.model_name = cpu.at("model").get<std::string>();
  r->cpu.features = cpu.at("features").get<std::vector<std::string>>();
  r->cpu.onednn_isa = cpu.at("onednn_isa").get<std::string>();
  r->cpu.kernel_isa = cpu.at("kernel_isa").get<std::string>();
  for (const json& s : cpu.at("saturating_engines")) {
    r->cpu.saturating_engines.push_back({s.at("engine").get<std::string>(), s.at("ops").get<std::vector<std::string>>()});
  }
  const json& req = j.at("requirements");
  r->requirements.kernel_engine = req.at("kernel_engine").get<std::string>();
  r->requirements.activation_quant_max = req.at("activation_quant_max").get<int64_t>();
  r->requirements.needs_non_saturating_u8s8 = req.at("needs_non_saturating_u8s8").get<bool>();
  const json& q = j.at("quality");
  r->quality.samples = q.at("samples").get<int64_t>();
  r->quality.top1_agreement = DecodeOptionalNumber(q.at("top1_agreement"));
  r->quality.output_sqnr_db = DecodeOptionalNumber(q.at("output_sqnr_db"));
  r->quality.worst_layers = q.at("worst_layers").get<std::vector<std::string>>();
  r->quality.min_top1_agreement = q.at("min_top1_agreement").get<double>();
  r->quality.min_output_sqnr_db = q.at("min_output_sqnr_db").get<double>();
  r->quality.passed = q.at("passed").get<bool>();
  r->quality.message = q.at("message").get<std::string>();
  r->warnings = j.at("warnings").get<std::vector<std::string>>();
  r->advice = j.value("advice", std::vector<std::string>());
  if (j.contains("tuning") && !j.at("tuning").is_null()) r->tuning = DecodeTuning(j.at("tuning"));
}

}  // namespace

std::string EncodeJobSpec(const JobSpec& spec) {
  json j{{"model_path", spec.model_path},
         {"model_name", spec.model_name},
         {"calibration", EncodeDataset(spec.calibration)},
         {"preset", spec.qconfig.preset},
         {"activation_observer", spec.qconfig.activation_observer},
         {"weight_observer", spec.qconfig.weight_observer},
         {"reduce_range", spec.qconfig.reduce_range},
         {"percentile", spec.qconfig.percentile},
         {"bias_correction", spec.qconfig.bias_correction},
         {"fitted_rounding", spec.qconfig.fitted_rounding},
         {"cross_layer_equalization", spec.qconfig.equalization},
         {"kernel_engine", spec.kernel_engine},
         {"fusion_auto", spec.fusion.automatic},
         {"fusion_groups", spec.fusion.groups},
         {"batch_size", spec.batch_size},
         {"evaluation", spec.evaluation.has_value() ? EncodeDataset(*spec.evaluation) : json()},
         {"evaluation_batch_size", spec.evaluation_batch_size},
         {"strict_kernels", spec.strict_kernels},
         {"quality_samples", spec.quality_samples},
         {"min_top1_agreement", spec.min_top1_agreement},
         {"min_output_sqnr_db", spec.min_output_sqnr_db},
         {"allow_low_quality", spec.allow_low_quality}};
  if (spec.accuracy_goal) {
    const engine::AccuracyGoal& g = *spec.accuracy_goal;
    j["accuracy_goal"] = json{{"tuning", EncodeDataset(g.tuning)},
                              {"max_top1_drop", g.max_top1_drop},
                              {"relative", g.relative},
                              {"max_trials", g.max_trials},
                              {"time_budget_seconds", g.time_budget_seconds},
                              {"allow_fp32_layers", g.allow_fp32_layers},
                              {"max_fp32_layers", g.max_fp32_layers},
                              {"against_fp32", g.against_fp32}};
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<JobSpec> DecodeJobSpec(const std::string& text) {
  try {
    json j = json::parse(text);
    JobSpec spec;
    spec.model_path = j.at("model_path").get<std::string>();
    spec.model_name = j.value("model_name", std::string());
    spec.calibration = DecodeDataset(j.at("calibration"));
    spec.qconfig.preset = j.at("preset").get<std::string>();
    spec.qconfig.activation_observer = j.at("activation_observer").get<std::string>();
    spec.qconfig.weight_observer = j.at("weight_observer").get<std::string>();
    spec.qconfig.reduce_range = j.at("reduce_range").get<bool>();
    spec.qconfig.percentile = j.value("percentile", engine::QConfigChoice().percentile);  // absent before it existed
    spec.qconfig.bias_correction = j.value("bias_correction", false);
    spec.qconfig.fitted_rounding = j.value("fitted_rounding", false);
    spec.qconfig.equalization = j.value("cross_layer_equalization", false);
    spec.kernel_engine = j.at("kernel_engine").get<std::string>();
    spec.fusion.automatic = j.at("fusion_auto").get<bool>();
    spec.fusion.groups = j.at("fusion_groups").get<std::vector<std::vector<std::string>>>();
    spec.batch_size = j.at("batch_size").get<int64_t>();
    if (!j.at("evaluation").is_null()) spec.evaluation = DecodeDataset(j.at("evaluation"));
    spec.evaluation_batch_size = j.at("evaluation_batch_size").get<int64_t>();
    // Absent from rows stored before the quality gate: the defaults.
    spec.strict_kernels = j.value("strict_kernels", spec.strict_kernels);
    spec.quality_samples = j.value("quality_samples", spec.quality_samples);
    spec.min_top1_agreement = j.value("min_top1_agreement", spec.min_top1_agreement);
    spec.min_output_sqnr_db = j.value("min_output_sqnr_db", spec.min_output_sqnr_db);
    spec.allow_low_quality = j.value("allow_low_quality", spec.allow_low_quality);
    if (j.contains("accuracy_goal")) {
      const json& g = j.at("accuracy_goal");
      engine::AccuracyGoal goal;
      goal.tuning = DecodeDataset(g.at("tuning"));
      goal.max_top1_drop = g.at("max_top1_drop").get<double>();
      goal.relative = g.at("relative").get<bool>();
      goal.max_trials = g.at("max_trials").get<int64_t>();
      goal.time_budget_seconds = g.at("time_budget_seconds").get<double>();
      goal.allow_fp32_layers = g.at("allow_fp32_layers").get<bool>();
      goal.max_fp32_layers = g.value("max_fp32_layers", int64_t{0});
      goal.against_fp32 = g.value("against_fp32", false);
      spec.accuracy_goal = goal;
    }
    return spec;
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("stored job spec is unreadable: ", e.what()));
  }
}

std::string EncodeJobResult(const JobResult& result) {
  const engine::QuantizeReport& r = result.report;
  json layers = json::array();
  for (const engine::LayerReport& l : r.layers) {
    layers.push_back(json{{"name", l.name},
                          {"op", l.op},
                          {"output_scale", EncodeNumber(l.output_scale)},
                          {"output_zero_point", l.output_zero_point},
                          {"weight_scales", EncodeNumbers(l.weight_scales)},
                          {"sqnr_db", OptionalNumber(l.sqnr_db)}});
  }
  json fallbacks = json::array();
  for (const engine::FallbackReport& f : r.fallbacks) {
    fallbacks.push_back(json{{"node", f.node}, {"op", f.op}, {"reason", f.reason}});
  }
  json timings = json::array();
  for (const PhaseTiming& t : result.phase_timings) {
    timings.push_back(json{{"phase", JobPhaseName(t.phase)}, {"seconds", EncodeNumber(t.seconds)}});
  }
  json j{{"artifact_id", result.artifact_id},
         {"artifact_sha256", result.artifact_sha256},
         {"artifact_size_bytes", result.artifact_size_bytes},
         {"qconfig_name", r.qconfig_name},
         {"qconfig_description", r.qconfig_description},
         {"kernel_engine", r.kernel_engine},
         {"fused_groups", r.fused_groups},
         {"fallbacks", fallbacks},
         {"layers", layers},
         {"calibration_samples", r.calibration_samples},
         {"fp32_accuracy", EncodeAccuracy(r.fp32_accuracy)},
         {"int8_accuracy", EncodeAccuracy(r.int8_accuracy)},
         {"phase_timings", timings},
         {"model_name", result.model_name},
         {"model_version", result.model_version},
         {"input_shape", r.input_shape},
         {"model_sha256", r.model_sha256},
         {"error_code", static_cast<int>(result.error_code)},
         {"error_message", result.error_message},
         {"kernel_report", EncodeKernelReport(r)}};
  // Model-supplied text (layer names) may not be valid UTF-8.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<JobResult> DecodeJobResult(const std::string& text) {
  try {
    json j = json::parse(text);
    JobResult result;
    result.artifact_id = j.at("artifact_id").get<std::string>();
    result.artifact_sha256 = j.at("artifact_sha256").get<std::string>();
    result.artifact_size_bytes = j.at("artifact_size_bytes").get<int64_t>();
    engine::QuantizeReport& r = result.report;
    r.qconfig_name = j.at("qconfig_name").get<std::string>();
    r.qconfig_description = j.at("qconfig_description").get<std::string>();
    r.kernel_engine = j.at("kernel_engine").get<std::string>();
    r.fused_groups = j.at("fused_groups").get<std::vector<std::vector<std::string>>>();
    for (const json& f : j.at("fallbacks")) {
      r.fallbacks.push_back({f.at("node").get<std::string>(), f.at("op").get<std::string>(),
                             f.at("reason").get<std::string>()});
    }
    for (const json& l : j.at("layers")) {
      engine::LayerReport layer;
      layer.name = l.at("name").get<std::string>();
      layer.op = l.at("op").get<std::string>();
      layer.output_scale = DecodeNumber(l.at("output_scale"), kNaN);
      layer.output_zero_point = l.at("output_zero_point").get<int64_t>();
      layer.weight_scales = DecodeNumbers<double>(l.at("weight_scales"));
      layer.sqnr_db = DecodeOptionalNumber(l.at("sqnr_db"));
      r.layers.push_back(std::move(layer));
    }
    r.calibration_samples = j.at("calibration_samples").get<int64_t>();
    r.fp32_accuracy = DecodeAccuracy(j.at("fp32_accuracy"));
    r.int8_accuracy = DecodeAccuracy(j.at("int8_accuracy"));
    r.artifact_sha256 = result.artifact_sha256;
    r.artifact_size_bytes = result.artifact_size_bytes;
    // Absent from rows stored before it was kept: unknown (not checked).
    r.model_sha256 = j.value("model_sha256", std::string());
    for (const json& t : j.at("phase_timings")) {
      result.phase_timings.push_back(
          {JobPhaseFromName(t.at("phase").get<std::string>()), DecodeNumber(t.at("seconds"), kNaN)});
    }
    // Absent from rows stored before model versions: none.
    result.model_name = j.value("model_name", std::string());
    result.model_version = j.value("model_version", int64_t{0});
    r.input_shape = j.value("input_shape", std::vector<int64_t>());
    result.error_code = static_cast<absl::StatusCode>(j.at("error_code").get<int>());
    result.error_message = j.at("error_message").get<std::string>();
    if (j.contains("kernel_report")) DecodeKernelReport(j.at("kernel_report"), &r);
    return result;
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("stored job result is unreadable: ", e.what()));
  }
}

}  // namespace quantd::worker
