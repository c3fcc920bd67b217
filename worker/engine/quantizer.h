#ifndef QUANTD_WORKER_ENGINE_QUANTIZER_H_
#define QUANTD_WORKER_ENGINE_QUANTIZER_H_

// The engine's front door: post-training static int8 quantization of a
// TorchScript model (fuse -> insert observers -> calibrate -> convert), the
// int8 runtime, and the artifact. No LibTorch types in this header.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/data/dataset_spec.h"
#include "worker/engine/passes/fusion_spec.h"
#include "worker/engine/report.h"

namespace quantd::engine {

// A preset (fbgemm | x86 | onednn | qnnpack | best), or, with `preset` empty, a
// custom choice of observers. "best" is fully int8 with 8-bit activations and
// per-channel weights whose activation range estimator is chosen per model:
// every estimator is tried on the one calibration, and the one whose output
// is closest to FP32 (SQNR) on the calibration images wins.
struct QConfigChoice {
  std::string preset = "fbgemm";
  // minmax | moving_average_minmax | histogram | mse | percentile | entropy
  std::string activation_observer = "histogram";
  std::string weight_observer = "per_channel_symmetric";  // | per_tensor_symmetric | per_tensor_affine
  bool reduce_range = false;
  double percentile = 99.99;  // activation_observer percentile
  // On any preset or custom qconfig (the best preset always has it); see
  // passes/bias_correction.h.
  bool bias_correction = false;
  // On any preset or custom qconfig; see passes/weight_rounding.h and
  // passes/equalize.h.
  bool fitted_rounding = false;
  bool equalization = false;
};

enum class Phase { kLoading, kFusing, kCalibrating, kTuning, kConverting, kEvaluating, kStoring };
const char* PhaseName(Phase phase);

struct ProgressEvent {
  Phase phase = Phase::kLoading;
  int64_t batches_done = 0;   // kTuning: trials done
  int64_t batches_total = 0;  // kTuning: the trial budget
  const Trial* trial = nullptr;  // kTuning: the trial just finished
};
// Called at each phase start and after each calibration/evaluation batch;
// returning false cancels the run at that point (absl::CancelledError).
using ProgressCallback = std::function<bool(const ProgressEvent&)>;

// Accuracy-aware mode: from one calibration, try range estimators, then keep
// the most sensitive layers in FP32, until the int8 top-1 on `tuning` is
// within the tolerance of FP32's; always keep the best model found.
struct AccuracyGoal {
  DatasetSpec tuning;             // labelled; never the test set
  double max_top1_drop = 0.001;   // a fraction: 0.001 = 0.1 points of top-1
  bool relative = false;          // max_top1_drop is a fraction of FP32's top-1
  int64_t max_trials = 40;
  double time_budget_seconds = 60;  // for the whole job
  bool allow_fp32_layers = true;
  int64_t max_fp32_layers = 0;  // 0 = no cap
  // Judge top-1 against the FP32 model's predictions instead of the labels
  // (which may then be absent): the tolerance bounds disagreement with FP32.
  bool against_fp32 = false;
};

struct QuantizeOptions {
  std::string model_path;
  DatasetSpec calibration;
  QConfigChoice qconfig;
  FusionSpec fusion;
  int64_t batch_size = 100;        // calibration batches (PyTorch's recipe uses 100)
  int64_t forward_batch_size = 25; // FP32 forward sub-batches during calibration (speed only)
  int64_t sqnr_samples = 32;       // first calibration samples used for the per-layer SQNR (0: none)
  // Gather observer statistics on a second thread while the next batch runs
  // forward (same results; uses two cores during calibration).
  bool overlap_observers = false;
  // "" = the fastest engine that is exact on this CPU for the qconfig (see
  // KernelChoice in the report); a named engine is used as given.
  std::string kernel_engine;
  // A named kernel engine that saturates on this CPU for the qconfig's
  // activations fails the run (FAILED_PRECONDITION) instead of succeeding
  // with a warning.
  bool strict_kernels = false;
  // The quality gate: int8 against FP32 on the first `quality_samples`
  // calibration images (0: no check). Below either threshold the run fails
  // with FAILED_PRECONDITION, unless `allow_low_quality`, which keeps the
  // model and adds a warning.
  int64_t quality_samples = 100;
  double min_top1_agreement = 0.8;   // classifier outputs only
  double min_output_sqnr_db = 10.0;
  bool allow_low_quality = false;
  // Tests: decide kernels as if on a CPU with these capabilities (the
  // kernels themselves still run on this one).
  std::optional<CpuInt8Report> cpu_for_testing;
  std::optional<AccuracyGoal> accuracy_goal;
  std::optional<DatasetSpec> evaluation;  // FP32 and int8 top-1 on this labeled set
  int64_t evaluation_batch_size = 256;
  // Most bytes one batch of float32 images may take (calibration and
  // evaluation); 0 = no limit. A larger batch_size is INVALID_ARGUMENT.
  int64_t max_batch_bytes = 0;
  ProgressCallback progress;
  // Set: gets what was measured (calibration, per-layer SQNR, the quality
  // verdict, advice) when the quality gate refuses the model, so a failed
  // job can say why it failed.
  QuantizeReport* refused_report = nullptr;
};

class QuantizedModel {
 public:
  ~QuantizedModel();
  QuantizedModel(const QuantizedModel&) = delete;
  QuantizedModel& operator=(const QuantizedModel&) = delete;

  const QuantizeReport& report() const;
  // The TorchScript artifact's bytes; fills the report's artifact sha256/size.
  absl::StatusOr<std::string> SerializeArtifact();
  // Top-1 of the int8 model on a labeled dataset.
  absl::StatusOr<Accuracy> EvaluateInt8(const DatasetSpec& dataset, int64_t batch_size,
                                        const ProgressCallback& progress = nullptr) const;
  absl::StatusOr<Accuracy> EvaluateFp32(const DatasetSpec& dataset, int64_t batch_size,
                                        const ProgressCallback& progress = nullptr) const;
  // The int8 model's predicted class for every sample of a dataset
  // (predicted_class.h: kNoClass for NaN scores).
  absl::StatusOr<std::vector<int64_t>> PredictInt8(const DatasetSpec& dataset, int64_t batch_size) const;

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  friend absl::StatusOr<std::unique_ptr<QuantizedModel>> Quantize(const QuantizeOptions& options);
  explicit QuantizedModel(std::unique_ptr<Impl> impl);
  absl::StatusOr<std::vector<int64_t>> PredictInt8Unguarded(const DatasetSpec& dataset, int64_t batch_size) const;
  std::unique_ptr<Impl> impl_;
};

// Every entry point of the engine returns a status for whatever goes wrong
// inside it, exceptions from LibTorch and the standard library included.
absl::StatusOr<std::unique_ptr<QuantizedModel>> Quantize(const QuantizeOptions& options);

// Loads and reads a TorchScript model the way Quantize does, and no more:
// what a child process runs to find out whether LibTorch survives the file
// (see worker/model_vetter.h).
absl::Status CheckModelLoads(const std::string& model_path);

// Process-wide LibTorch settings: intra-op threads (LibTorch defaults to 1
// here; 2 OpenMP threads on a busy 2-core machine can be 100x slower). Also
// this thread's own count (OpenMP keeps one per thread). Waits while a
// qnnpack pass runs; must not be called holding a qnnpack WithKernelEngine.
void SetIntraOpThreads(int threads);
// Once at process start: SetIntraOpThreads plus allocator settings that keep
// the large activation buffers of calibration from being returned to the OS
// and page-faulted back in on every batch.
void InitializeRuntime(int intra_op_threads);
int IntraOpThreads();
std::vector<std::string> AvailableKernelEngines();
// This machine's int8 capabilities (x86 features, oneDNN's ISA, which kernel
// engines saturate with 8-bit activations), detected once per process.
const CpuInt8Report& CpuInt8Info();
// The kernel engine to run an artifact on this machine: its own, or qnnpack
// where its own would saturate and `allow_reroute`; otherwise
// FAILED_PRECONDITION saying why (see kernel_choice.h).
absl::StatusOr<std::string> KernelEngineForArtifact(const ArtifactRequirements& requirements, bool allow_reroute);
std::string TorchVersion();

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_QUANTIZER_H_
