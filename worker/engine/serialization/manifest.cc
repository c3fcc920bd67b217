#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "worker/engine/report.h"

namespace quantd::engine {
namespace {

nlohmann::ordered_json OptionalNumber(const std::optional<double>& v) {
  return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
}

}  // namespace

std::string ManifestJson(const QuantizeReport& r) {
  nlohmann::ordered_json j;
  j["format"] = "quantd.artifact.v1";
  j["qconfig"] = {{"name", r.qconfig_name}, {"description", r.qconfig_description}};
  j["kernel_engine"] = r.kernel_engine;
  // What running the artifact needs: the engine to load it under, and
  // whether that engine is exact only on CPUs without int16 saturation.
  j["requirements"] = {{"kernel_engine", r.requirements.kernel_engine},
                       {"activation_quant_max", r.requirements.activation_quant_max},
                       {"needs_non_saturating_u8s8", r.requirements.needs_non_saturating_u8s8}};
  nlohmann::ordered_json candidates = nlohmann::ordered_json::array();
  for (const auto& c : r.kernel_choice.candidates) {
    candidates.push_back({{"engine", c.engine}, {"exact", c.exact}, {"why", c.why},
                          {"ms_per_image", OptionalNumber(c.ms_per_image)}});
  }
  j["kernel_choice"] = {{"engine", r.kernel_choice.engine}, {"reason", r.kernel_choice.reason},
                        {"candidates", candidates}};
  nlohmann::ordered_json saturating = nlohmann::ordered_json::array();
  for (const auto& s : r.cpu.saturating_engines) saturating.push_back({{"engine", s.engine}, {"ops", s.ops}});
  j["cpu"] = {{"model", r.cpu.model_name}, {"features", r.cpu.features}, {"onednn_isa", r.cpu.onednn_isa},
              {"kernel_isa", r.cpu.kernel_isa}, {"saturating_engines", saturating}};
  j["fused_groups"] = r.fused_groups;
  nlohmann::ordered_json fallbacks = nlohmann::ordered_json::array();
  for (const auto& f : r.fallbacks) fallbacks.push_back({{"node", f.node}, {"op", f.op}, {"reason", f.reason}});
  j["fallbacks"] = fallbacks;
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& l : r.layers) {
    nlohmann::ordered_json layer = {{"name", l.name},
                                    {"op", l.op},
                                    {"output_scale", l.output_scale},
                                    {"output_zero_point", l.output_zero_point},
                                    {"weight_scales", l.weight_scales}};
    layer["sqnr_db"] = l.sqnr_db ? nlohmann::ordered_json(*l.sqnr_db) : nlohmann::ordered_json(nullptr);
    layers.push_back(layer);
  }
  j["layers"] = layers;
  j["calibration"] = {{"samples", r.calibration_samples},
                      {"batch_size", r.calibration_batch_size},
                      {"sha256", r.calibration_sha256},
                      {"input_shape", r.input_shape}};
  j["model_sha256"] = r.model_sha256;
  j["artifact"] = {{"sha256", r.artifact_sha256}, {"size_bytes", r.artifact_size_bytes}};
  auto accuracy = [](const std::optional<Accuracy>& a) {
    if (!a) return nlohmann::ordered_json(nullptr);
    return nlohmann::ordered_json{{"correct", a->correct}, {"total", a->total}, {"top1", a->top1()}};
  };
  j["accuracy"] = {{"fp32", accuracy(r.fp32_accuracy)}, {"int8", accuracy(r.int8_accuracy)}};
  nlohmann::ordered_json timings = nlohmann::ordered_json::object();
  for (const auto& t : r.timings) timings[t.phase] = t.seconds;
  j["timings_seconds"] = timings;
  const QualityReport& q = r.quality;
  j["quality"] = {{"samples", q.samples},
                  {"top1_agreement", OptionalNumber(q.top1_agreement)},
                  {"output_sqnr_db", OptionalNumber(q.output_sqnr_db)},
                  {"min_top1_agreement", q.min_top1_agreement},
                  {"min_output_sqnr_db", q.min_output_sqnr_db},
                  {"worst_layers", q.worst_layers},
                  {"passed", q.passed},
                  {"message", q.message}};
  if (r.tuning) {
    const TuningReport& t = *r.tuning;
    nlohmann::ordered_json trials = nlohmann::ordered_json::array();
    for (const Trial& trial : t.trials) {
      nlohmann::ordered_json row = {{"index", trial.index},
                                    {"stage", trial.stage},
                                    {"activation_observer", trial.settings},
                                    {"fp32_layers", trial.fp32_layers},
                                    {"top1", OptionalNumber(trial.score.top1)},
                                    {"agreement", trial.score.agreement},
                                    {"output_sqnr_db", trial.score.output_sqnr_db},
                                    {"seconds", trial.seconds},
                                    {"meets_goal", trial.meets_goal}};
      if (!trial.error.empty()) row["error"] = trial.error;
      trials.push_back(row);
    }
    nlohmann::ordered_json sensitivity = nlohmann::ordered_json::array();
    for (const LayerSensitivity& s : t.sensitivity) {
      sensitivity.push_back({{"layer", s.layer}, {"gain", s.gain}, {"sqnr_db", OptionalNumber(s.sqnr_db)}});
    }
    j["tuning"] = {{"judged_on", t.judged_on},
                   {"samples", t.samples},
                   {"fp32_top1", OptionalNumber(t.fp32_top1)},
                   {"target_top1", OptionalNumber(t.target_top1)},
                   {"met", t.met},
                   {"stopped_because", t.stopped_because},
                   {"best_trial", t.best_trial},
                   {"fp32_layers", t.fp32_layers},
                   {"seconds", t.seconds},
                   {"sensitivity", sensitivity},
                   {"trials", trials}};
  }
  j["advice"] = r.advice;
  j["warnings"] = r.warnings;
  j["versions"] = {{"quantd", r.quantd_version}, {"libtorch", r.torch_version}};
  j["intra_op_threads"] = r.intra_op_threads;
  // Error text can carry bytes from the model (names); never throw on them.
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

absl::StatusOr<ArtifactRequirements> ArtifactRequirementsFromManifest(const std::string& manifest_json) {
  const nlohmann::json j = nlohmann::json::parse(manifest_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("the manifest is not a JSON object");
  ArtifactRequirements r;
  const nlohmann::json* req = j.contains("requirements") ? &j["requirements"] : nullptr;
  const nlohmann::json& engine = req != nullptr && req->contains("kernel_engine") ? (*req)["kernel_engine"]
                                 : j.contains("kernel_engine")                    ? j["kernel_engine"]
                                                                                  : nlohmann::json();
  if (!engine.is_string() || engine.get<std::string>().empty()) {
    return absl::InvalidArgumentError("the manifest names no kernel_engine");
  }
  r.kernel_engine = engine.get<std::string>();
  if (req != nullptr) {
    if (req->contains("activation_quant_max") && (*req)["activation_quant_max"].is_number_integer()) {
      r.activation_quant_max = (*req)["activation_quant_max"].get<int64_t>();
    }
    if (req->contains("needs_non_saturating_u8s8") && (*req)["needs_non_saturating_u8s8"].is_boolean()) {
      r.needs_non_saturating_u8s8 = (*req)["needs_non_saturating_u8s8"].get<bool>();
    }
  } else {
    // Manifests from before quantd recorded requirements: assume the worst.
    r.needs_non_saturating_u8s8 = r.kernel_engine != "qnnpack";
  }
  return r;
}

}  // namespace quantd::engine
