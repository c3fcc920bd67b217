#ifndef QUANTD_WORKER_ENGINE_REPORT_H_
#define QUANTD_WORKER_ENGINE_REPORT_H_

// What a quantization run reports: plain data, free of LibTorch, shared by
// the CLI, the worker and the manifest.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace quantd::engine {

struct LayerReport {
  std::string name;
  std::string op;  // conv2d_relu, linear, add_relu, quantize, ...
  double output_scale = 0;
  int64_t output_zero_point = 0;
  std::vector<float> weight_scales;
  std::optional<double> sqnr_db;  // int8 output vs FP32, on calibration batches
};

struct FallbackReport {
  std::string node;
  std::string op;
  std::string reason;
};

struct Accuracy {
  int64_t correct = 0;
  int64_t total = 0;
  double top1() const { return total == 0 ? 0.0 : static_cast<double>(correct) / static_cast<double>(total); }
};

struct PhaseTiming {
  std::string phase;
  double seconds = 0;
};

struct QuantizeReport {
  std::string qconfig_name;
  std::string qconfig_description;
  std::string kernel_engine;
  std::vector<std::vector<std::string>> fused_groups;
  std::vector<FallbackReport> fallbacks;
  std::vector<LayerReport> layers;
  int64_t calibration_samples = 0;
  int64_t calibration_batch_size = 0;
  std::string model_sha256;
  std::string calibration_sha256;
  std::string artifact_sha256;
  int64_t artifact_size_bytes = 0;
  std::optional<Accuracy> fp32_accuracy;
  std::optional<Accuracy> int8_accuracy;
  std::vector<PhaseTiming> timings;
  std::string torch_version;
  std::string quantd_version;
  int intra_op_threads = 1;
};

// The manifest written beside an artifact (JSON).
std::string ManifestJson(const QuantizeReport& report);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_REPORT_H_
