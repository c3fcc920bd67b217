#include <nlohmann/json.hpp>

#include "worker/engine/report.h"

namespace quantd::engine {

std::string ManifestJson(const QuantizeReport& r) {
  nlohmann::ordered_json j;
  j["format"] = "quantd.artifact.v1";
  j["qconfig"] = {{"name", r.qconfig_name}, {"description", r.qconfig_description}};
  j["kernel_engine"] = r.kernel_engine;
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
                      {"sha256", r.calibration_sha256}};
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
  j["versions"] = {{"quantd", r.quantd_version}, {"libtorch", r.torch_version}};
  j["intra_op_threads"] = r.intra_op_threads;
  return j.dump(2);
}

}  // namespace quantd::engine
