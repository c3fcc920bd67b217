#ifndef QUANTD_WORKER_ENGINE_REPORT_H_
#define QUANTD_WORKER_ENGINE_REPORT_H_

// What a quantization run reports: plain data, free of LibTorch, shared by
// the CLI, the worker and the manifest.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/tuning/accuracy_search.h"

namespace quantd::engine {

struct LayerReport {
  std::string name;
  std::string op;  // conv2d_relu, linear, add_relu, quantize, ...
  double output_scale = 0;
  int64_t output_zero_point = 0;
  std::vector<double> weight_scales;  // as the int8 weights hold them
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

// What this machine's int8 kernels can do, as far as results depend on it.
struct CpuInt8Report {
  std::string model_name;             // "Intel(R) Xeon(R) ...", from /proc/cpuinfo
  std::vector<std::string> features;  // int8-relevant x86 features present: avx2, fma, avx512f, avx512bw,
                                      // avx512_vnni, avx_vnni, amx_int8
  std::string onednn_isa;             // oneDNN's effective ISA ("avx512_core_vnni"); honours DNNL_MAX_CPU_ISA
  std::string kernel_isa;             // quantd's own kernels: avx512 | avx2 | portable
  // Kernel engines whose u8 x s8 kernels were measured (at process start) to
  // saturate with 8-bit activations: their int16 pair sums overflow without
  // VNNI. Each entry: engine and the op kinds that saturated.
  struct Saturation {
    std::string engine;
    std::vector<std::string> ops;  // conv2d, depthwise_conv2d, linear
  };
  std::vector<Saturation> saturating_engines;
  bool Saturates(const std::string& engine) const;
  std::string Summary() const;  // one line for logs and `quantctl health`
};

// One kernel engine considered for a job.
struct KernelCandidate {
  std::string engine;
  bool exact = false;
  std::string why;                      // why it is (not) exact here
  std::optional<double> ms_per_image;   // measured when the choice needed it
};

// Which kernel engine a job runs on, and why.
struct KernelChoice {
  std::string engine;
  std::string reason;
  std::vector<KernelCandidate> candidates;
};

// int8 against FP32 on the first calibration samples: the check that keeps a
// broken int8 model from passing as a success.
struct QualityReport {
  int64_t samples = 0;
  std::optional<double> top1_agreement;  // classifier outputs ([N, C], C > 1) only
  std::optional<double> output_sqnr_db;  // worst over the model's tensor outputs
  std::vector<std::string> worst_layers;  // "layer2.conv1 (3.1 dB)", lowest SQNR first
  double min_top1_agreement = 0;
  double min_output_sqnr_db = 0;
  bool passed = true;
  std::string message;  // why it failed, or empty
};

// What running the artifact needs, recorded in its manifest.
struct ArtifactRequirements {
  std::string kernel_engine;       // the engine the packs and the numerics are for
  int64_t activation_quant_max = 255;
  // The engine is exact only on CPUs whose u8 x s8 dot products do not
  // saturate (VNNI or AMX): true for onednn/fbgemm/x86 with 8-bit activations.
  bool needs_non_saturating_u8s8 = false;
};

// Accuracy-aware tuning (QuantizeOptions::accuracy_goal) or the "best"
// preset's search: what was judged on, every trial, and what won.
struct TuningReport {
  std::string judged_on;              // "val_batch.bin (2000 labelled images)", "first 1000 calibration images"
  int64_t samples = 0;
  std::optional<double> fp32_top1;   // labelled sets only
  std::optional<double> target_top1;  // fp32_top1 minus the tolerance, at least 0
  bool met = false;
  std::string stopped_because;
  int best_trial = -1;
  std::vector<std::string> candidates;  // activation observer of each estimator candidate
  std::vector<Trial> trials;
  std::vector<LayerSensitivity> sensitivity;  // measured ones, most sensitive first
  std::vector<std::string> fp32_layers;       // of the chosen trial
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
  // One input sample's dimensions as calibrated (e.g. {3, 32, 32}): what the
  // model is served with.
  std::vector<int64_t> input_shape;
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
  CpuInt8Report cpu;
  KernelChoice kernel_choice;
  ArtifactRequirements requirements;
  QualityReport quality;
  std::optional<TuningReport> tuning;
  // What cost accuracy and what to do about it, measured where possible.
  std::vector<std::string> advice;
  // Things the user should know although the job succeeded (a forced kernel
  // engine that saturates here, a quality check passed only by opt-in, ...).
  std::vector<std::string> warnings;
};

// The manifest written beside an artifact (JSON).
std::string ManifestJson(const QuantizeReport& report);
// Reads the requirements back from a manifest.
absl::StatusOr<ArtifactRequirements> ArtifactRequirementsFromManifest(const std::string& manifest_json);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_REPORT_H_
