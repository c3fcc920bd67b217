#include "worker/engine/quantizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/version.h>
#include <torch/csrc/jit/serialization/import.h>

#include <malloc.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "worker/engine/accuracy_tuning.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/data/dataset.h"
#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/passes/bias_correction.h"
#include "worker/engine/passes/calibrate.h"
#include "worker/engine/passes/convert.h"
#include "worker/engine/passes/equalize.h"
#include "worker/engine/passes/fold_pooling.h"
#include "worker/engine/passes/fuse_modules.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/passes/compare_with_fp32.h"
#include "worker/engine/qconfig/qconfig.h"
#include "worker/engine/runtime/fp32_executor.h"
#include "worker/engine/runtime/int8_capabilities.h"
#include "worker/engine/runtime/int8_program.h"
#include "worker/engine/runtime/kernel_choice.h"
#include "worker/engine/runtime/prepack.h"
#include "worker/engine/quantizer_internal.h"
#include "worker/engine/serialization/torchscript_writer.h"

namespace quantd::engine {

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kLoading: return "loading";
    case Phase::kFusing: return "fusing";
    case Phase::kCalibrating: return "calibrating";
    case Phase::kTuning: return "tuning";
    case Phase::kConverting: return "converting";
    case Phase::kEvaluating: return "evaluating";
    case Phase::kStoring: return "storing";
  }
  return "?";
}

namespace {

// Images whose layer inputs fitted weight rounding measures: enough patches
// for every layer's statistics (ResNet8's last convs see 64 per image for
// 576 columns), at a fraction of calibration's time.
constexpr int64_t kFittedRoundingSamples = 256;

// Images whose channel ranges cross-layer equalization balances: the
// calibration images it runs on first, in FP32.
constexpr int64_t kEqualizationSamples = 256;

std::string EqualizationAdvice(const std::vector<EqualizedPair>& pairs) {
  if (pairs.empty()) {
    return "cross-layer equalization found no conv pair joined by at most a ReLU (a ReLU6 between them, or a "
           "second reader of the first one's output, rules a pair out)";
  }
  std::vector<std::string> described;
  for (const EqualizedPair& p : pairs) {
    described.push_back(absl::StrFormat("%s -> %s (channel scales %.2g to %.2g)", p.first, p.second, p.min_scale,
                                        p.max_scale));
  }
  return absl::StrCat("cross-layer equalization rescaled ", pairs.size(), " conv pair(s): ",
                      absl::StrJoin(described, ", "));
}

// Per-channel weights balance the measured channel ranges of the values
// between pairs against the second layer's weights; per-tensor weights
// balance the two layers' weight ranges (passes/equalize.h).
absl::StatusOr<std::vector<EqualizedPair>> Equalize(Graph* graph, const QConfig& qconfig, Dataset* calibration,
                                                    int64_t batch_size) {
  const std::vector<EqualizablePair> pairs = FindEqualizablePairs(*graph);
  if (pairs.empty()) return std::vector<EqualizedPair>{};
  const bool per_channel = qconfig.weight.qscheme == QScheme::kPerChannelSymmetric ||
                           qconfig.weight.qscheme == QScheme::kPerChannelAffine;
  if (!per_channel) return EqualizeWeightRanges(graph, pairs);
  std::vector<int> values;
  for (const EqualizablePair& pair : pairs) values.push_back(pair.value);
  QUANTD_ASSIGN_OR_RETURN(auto ranges, MeasureChannelRanges(*graph, values, calibration, kEqualizationSamples,
                                                            std::max<int64_t>(1, batch_size)));
  return EqualizeActivationRanges(graph, pairs, ranges);
}

class PhaseClock {
 public:
  explicit PhaseClock(QuantizeReport* report) : report_(report) {}
  void Start(const char* phase) {
    Stop();
    phase_ = phase;
    start_ = absl::Now();
  }
  void Stop() {
    if (phase_ != nullptr) report_->timings.push_back({phase_, absl::ToDoubleSeconds(absl::Now() - start_)});
    phase_ = nullptr;
  }

 private:
  QuantizeReport* report_;
  const char* phase_ = nullptr;
  absl::Time start_;
};

}  // namespace

QuantizedModel::QuantizedModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
QuantizedModel::~QuantizedModel() = default;

const QuantizeReport& QuantizedModel::report() const { return impl_->report; }

absl::StatusOr<std::string> QuantizedModel::SerializeArtifact() {
  PrepareThreadForLibTorch();
  return GuardEntryPoint("writing the artifact", [&]() -> absl::StatusOr<std::string> {
    QUANTD_ASSIGN_OR_RETURN(std::string bytes, SerializeProgram(*impl_->program));
    impl_->report.artifact_sha256 = Sha256Hex(bytes);
    impl_->report.artifact_size_bytes = static_cast<int64_t>(bytes.size());
    return bytes;
  });
}

absl::StatusOr<Accuracy> QuantizedModel::EvaluateInt8(const DatasetSpec& dataset, int64_t batch_size,
                                                      const ProgressCallback& progress) const {
  PrepareThreadForLibTorch();
  return GuardEntryPoint(absl::StrCat("evaluating int8 on ", dataset.path),
                         [&] { return impl_->Evaluate(dataset, batch_size, /*int8=*/true, progress); });
}

absl::StatusOr<Accuracy> QuantizedModel::EvaluateFp32(const DatasetSpec& dataset, int64_t batch_size,
                                                      const ProgressCallback& progress) const {
  PrepareThreadForLibTorch();
  return GuardEntryPoint(absl::StrCat("evaluating FP32 on ", dataset.path),
                         [&] { return impl_->Evaluate(dataset, batch_size, /*int8=*/false, progress); });
}

absl::StatusOr<std::vector<int64_t>> QuantizedModel::PredictInt8(const DatasetSpec& dataset, int64_t batch_size) const {
  PrepareThreadForLibTorch();
  return GuardEntryPoint(absl::StrCat("predicting on ", dataset.path),
                         [&] { return PredictInt8Unguarded(dataset, batch_size); });
}

absl::StatusOr<std::vector<int64_t>> QuantizedModel::PredictInt8Unguarded(const DatasetSpec& dataset,
                                                                           int64_t batch_size) const {
  std::vector<int64_t> predictions;
  QUANTD_RETURN_IF_ERROR(impl_->ForEachBatch(dataset, batch_size, nullptr, [&](const Batch& batch) -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(at::Tensor out, impl_->executor->Forward(batch.images));
    const at::Tensor arg = PredictedClasses(out);
    predictions.insert(predictions.end(), arg.data_ptr<int64_t>(), arg.data_ptr<int64_t>() + arg.numel());
    return absl::OkStatus();
  }));
  return predictions;
}

// The graph quantd calibrates and converts (imported, fused, folded,
// equalized) must compute what the model computes: an op the importer
// misreads would otherwise make a wrong int8 model that the quality gate,
// which compares against this same graph, cannot see. Fusion changes FP32
// rounding only: 60 dB of output SQNR is far above that and far below a
// misread op.
absl::Status CheckImportComputesTheModel(const Graph& graph, const at::Tensor& sample, const at::Tensor& expected) {
  if (!sample.defined() || !expected.defined() || !at::isfinite(expected).all().item<bool>()) return absl::OkStatus();
  QUANTD_ASSIGN_OR_RETURN(Fp32Executor executor, Fp32Executor::Create(&graph));
  at::NoGradGuard no_grad;
  QUANTD_ASSIGN_OR_RETURN(std::vector<c10::IValue> outputs, executor.Run({sample.clone()}));
  if (outputs.size() != 1 || !outputs[0].isTensor()) return absl::OkStatus();  // said elsewhere
  const at::Tensor got = outputs[0].toTensor().detach().to(at::kFloat);
  if (got.sizes() != expected.sizes()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model: quantd's reading of this model gives an output of shape [", absl::StrJoin(got.sizes(), ", "),
        "] where the model gives [", absl::StrJoin(expected.sizes(), ", "), "]; quantd cannot quantize it"));
  }
  const double sqnr = SqnrDb(expected.pow(2).sum().item<double>(), (got - expected).pow(2).sum().item<double>());
  if (sqnr >= 60.0) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrFormat(
      "model: quantd's reading of this model does not compute what the model computes (%.1f dB output SQNR "
      "against the model on the first calibration sample; an op quantd misreads, such as an in-place write "
      "through a view); quantd cannot quantize it",
      sqnr));
}

void SetIntraOpThreads(int threads) {
  // LibTorch's set_num_threads rebuilds the global thread pool QNNPACK's
  // kernels run on: done under onednn's lease, which no QNNPACK kernel
  // holds (and the thread's first-call set-up before it, the same way).
  PrepareThreadForLibTorch();
  auto set = [threads] { at::set_num_threads(std::max(1, threads)); };
  if (!WithKernelEngine("onednn", "setting LibTorch's intra-op threads", set).ok()) set();
}

void InitializeRuntime(int intra_op_threads) {
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  SetIntraOpThreads(intra_op_threads);
}
int IntraOpThreads() { return at::get_num_threads(); }

std::vector<std::string> AvailableKernelEngines() { return AvailableKernelEngineNames(); }

const CpuInt8Report& CpuInt8Info() { return CpuInt8Capabilities(); }

absl::StatusOr<std::string> KernelEngineForArtifact(const ArtifactRequirements& requirements, bool allow_reroute) {
  return RuntimeKernelEngine(requirements, CpuInt8Capabilities(), AvailableKernelEngines(), allow_reroute);
}

std::string TorchVersion() { return TORCH_VERSION; }

namespace {

// Whether two dataset paths name one file (a blob referenced twice, or one
// path spelled two ways).
bool SameFile(const std::string& a, const std::string& b) {
  std::error_code error;
  return !a.empty() && !b.empty() && std::filesystem::equivalent(a, b, error) && !error;
}

// Warnings for a tuning set that is also the calibration or evaluation set:
// allowed (a user may have nothing else), but the figures then mislead.
std::vector<std::string> OverlappingSetWarnings(const QuantizeOptions& options) {
  std::vector<std::string> warnings;
  if (!options.accuracy_goal) return warnings;
  const std::string& tuning = options.accuracy_goal->tuning.path;
  if (SameFile(tuning, options.calibration.path)) {
    warnings.push_back(absl::StrCat(
        "accuracy_goal.tuning: ", tuning, " is also the calibration set: trials are judged on images calibration "
        "fitted its ranges to, which favours overfitted ranges; a separate labelled set judges them fairly"));
  }
  if (options.evaluation && SameFile(tuning, options.evaluation->path)) {
    warnings.push_back(absl::StrCat(
        "evaluation: ", options.evaluation->path, " is also the tuning set: the search chose the model on these "
        "images, so the evaluation overstates its accuracy on new data"));
  }
  return warnings;
}

// A program converted for one kernel engine, with its executor (which points
// into the program: both on the heap, so they move together).
struct Converted {
  std::unique_ptr<Program> program;
  std::unique_ptr<Int8Executor> executor;
  std::vector<LayerReport> layers;
};

// Milliseconds per image of the int8 program on `images` (best of 3 after a
// warm-up run).
absl::StatusOr<double> MsPerImage(const Int8Executor& executor, const at::Tensor& images) {
  at::NoGradGuard no_grad;
  double best = 0;
  for (int run = 0; run < 4; ++run) {
    const absl::Time start = absl::Now();
    QUANTD_RETURN_IF_ERROR(executor.Forward(images).status());
    const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
    if (run == 1 || (run > 1 && ms < best)) best = ms;
  }
  return best / static_cast<double>(std::max<int64_t>(1, images.size(0)));
}

std::string Percent(const std::optional<double>& v) {
  return v ? absl::StrFormat("%.1f%%", 100 * *v) : std::string("n/a");
}
std::string Db(const std::optional<double>& v) { return v ? absl::StrFormat("%.1f dB", *v) : std::string("n/a"); }

bool WeightsHaveZeroPoints(const QConfig& qconfig) {
  return qconfig.weight.qscheme == QScheme::kPerTensorAffine || qconfig.weight.qscheme == QScheme::kPerChannelAffine;
}

// Converts the calibrated model for kernel engines and picks the one to keep
// (QuantizeOptions::kernel_engine): the preferred engine if it is exact here,
// else the fastest exact one (timed), else (nothing exact) the preferred one
// with a warning; a named engine as given, with a warning that measures what
// its saturation costs when it is not exact. Fills the report's choice.
class KernelChooser {
 public:
  using Compare = std::function<absl::StatusOr<Int8VsFp32>(const Int8Executor&)>;

  KernelChooser(const Graph& fused, const QuantizationPlan& plan, const CalibrationResult& calibrated,
                const QConfig& qconfig, Compare compare, at::Tensor timing_images, QuantizeReport* report)
      : fused_(fused), plan_(plan), calibrated_(calibrated), qconfig_(qconfig), compare_(std::move(compare)),
        timing_images_(std::move(timing_images)), report_(report) {}

  absl::StatusOr<std::unique_ptr<Converted>> Requested(const KernelCandidate& requested,
                                                       const std::vector<std::string>& available) {
    KernelChoice& choice = report_->kernel_choice;
    choice = {requested.engine, absl::StrCat("requested; ", requested.why), {requested}};
    QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Converted> chosen, ConvertFor(requested.engine));
    if (requested.exact) return chosen;
    std::string effect;
    for (const std::string& engine : available) {
      const int64_t quant_max = qconfig_.activation.quant_max();
      if (engine == requested.engine || !AssessKernelEngine(engine, quant_max, report_->cpu).exact) continue;
      QUANTD_ASSIGN_OR_RETURN(Int8VsFp32 ours, compare_(*chosen->executor));
      QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Converted> exact, ConvertFor(engine));
      QUANTD_ASSIGN_OR_RETURN(Int8VsFp32 theirs, compare_(*exact->executor));
      effect = absl::StrCat("; measured on ", ours.samples, " calibration images: top-1 agreement with FP32 ",
                            Percent(ours.top1_agreement), " (", engine, ", exact: ", Percent(theirs.top1_agreement),
                            "), output SQNR ", Db(ours.output_sqnr_db), " (", engine, ": ", Db(theirs.output_sqnr_db),
                            ")");
      break;
    }
    report_->warnings.push_back(absl::StrCat("kernel_engine '", requested.engine, "' ", requested.why, effect,
                                             ". Leave kernel_engine empty for an exact engine, use a qconfig with "
                                             "reduce_range, or set strict kernels to make this an error"));
    return chosen;
  }

  absl::StatusOr<std::unique_ptr<Converted>> Automatic(std::vector<KernelCandidate> candidates) {
    if (candidates.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("no compiled-in kernel engine accepts the weights of ",
                                                        qconfig_.Describe(), " (onednn needs symmetric weights)"));
    }
    KernelChoice& choice = report_->kernel_choice;
    const KernelCandidate& preferred = candidates[0];
    if (preferred.exact) {
      choice = {preferred.engine,
                absl::StrCat("preferred engine for the ", qconfig_.name, " qconfig; ", preferred.why),
                candidates};
      return ConvertFor(preferred.engine);
    }
    // Time every engine (the saturating one too, so the report shows what
    // exactness costs) and keep the fastest exact one.
    std::unique_ptr<Converted> chosen;
    std::optional<size_t> fastest;
    for (size_t i = 0; i < candidates.size(); ++i) {
      // An engine that cannot run this model (a LibTorch kernel's own
      // limits) drops out; the job fails only if the one it needs does.
      absl::StatusOr<std::unique_ptr<Converted>> converted = ConvertFor(candidates[i].engine);
      if (converted.ok() && timing_images_.defined() && timing_images_.size(0) > 0) {
        absl::StatusOr<double> ms = MsPerImage(*(*converted)->executor, timing_images_);
        if (ms.ok()) {
          candidates[i].ms_per_image = *ms;
        } else {
          converted = ms.status();
        }
      }
      if (!converted.ok()) {
        candidates[i].exact = false;
        candidates[i].why = absl::StrCat("failed on this model: ", converted.status().message());
        continue;
      }
      if (!candidates[i].exact) continue;
      if (!fastest || candidates[i].ms_per_image.value_or(0) < candidates[*fastest].ms_per_image.value_or(0)) {
        fastest = i;
        chosen = std::move(*converted);
      }
    }
    if (fastest) {
      choice = {candidates[*fastest].engine,
                absl::StrCat("preferred engine '", preferred.engine, "' ", preferred.why, "; '",
                             candidates[*fastest].engine, "' is the fastest exact one here: ", candidates[*fastest].why),
                candidates};
      return chosen;
    }
    choice = {preferred.engine, "no kernel engine is exact here", candidates};
    report_->warnings.push_back(absl::StrCat("no kernel engine computes this qconfig exactly on this CPU: '",
                                             preferred.engine, "' ", preferred.why,
                                             "; a qconfig with reduce_range (e.g. fbgemm) would be exact within the calibrated range"));
    return ConvertFor(preferred.engine);
  }

 private:
  absl::StatusOr<std::unique_ptr<Converted>> ConvertFor(const std::string& engine) const {
    auto converted = std::make_unique<Converted>();
    QUANTD_ASSIGN_OR_RETURN(Program program, Convert(fused_, plan_, calibrated_.qparams, qconfig_, engine,
                                                     &converted->layers, calibrated_.means,
                                                     calibrated_.input_second_moments,
                                                     calibrated_.fitted_weights.get()));
    converted->program = std::make_unique<Program>(std::move(program));
    QUANTD_ASSIGN_OR_RETURN(Int8Executor executor, Int8Executor::Create(converted->program.get()));
    converted->executor = std::make_unique<Int8Executor>(std::move(executor));
    return converted;
  }

  const Graph& fused_;
  const QuantizationPlan& plan_;
  const CalibrationResult& calibrated_;
  const QConfig& qconfig_;
  const Compare compare_;
  const at::Tensor timing_images_;
  QuantizeReport* const report_;
};

// Whether any layer of the converted model runs on int8 kernels.
bool AnyInt8Layer(const QuantizeReport& report) {
  return std::any_of(report.layers.begin(), report.layers.end(),
                     [](const LayerReport& layer) { return layer.op != "quantize"; });
}

// Advice for a run that measured no alternatives: where the error is, and
// what would measure the fixes.

std::vector<std::string> UnmeasuredAdvice(const QuantizeReport& report, const QConfig& qconfig) {
  std::vector<std::string> advice;
  if (qconfig.activation.reduce_range && AnyInt8Layer(report) &&
      AssessKernelEngine(report.kernel_engine, 255, report.cpu).exact) {
    advice.push_back(absl::StrCat("reduce_range: kernel engine '", report.kernel_engine,
                                  "' computes 8-bit activations exactly on this CPU, so the 7-bit activations of ",
                                  qconfig.name, " are not needed here and usually cost accuracy; the best preset or "
                                  "accuracy-aware mode measures how much"));
  }
  std::vector<const LayerReport*> worst;
  for (const LayerReport& layer : report.layers) {
    if (layer.sqnr_db && layer.op != "quantize") worst.push_back(&layer);
  }
  std::sort(worst.begin(), worst.end(), [](const LayerReport* a, const LayerReport* b) { return *a->sqnr_db < *b->sqnr_db; });
  if (worst.size() > 3) worst.resize(3);
  std::vector<std::string> parts;
  for (const LayerReport* layer : worst) parts.push_back(absl::StrFormat("%s (%.1f dB)", layer->name, *layer->sqnr_db));
  if (!parts.empty()) {
    advice.push_back(absl::StrCat("least accurate int8 layers (output SQNR against FP32): ", absl::StrJoin(parts, ", "),
                                  "; accuracy-aware mode with a labelled tuning set measures what keeping each in "
                                  "FP32 gains"));
  }
  return advice;
}

}  // namespace

namespace {
absl::StatusOr<std::unique_ptr<QuantizedModel::Impl>> QuantizeUnguarded(const QuantizeOptions& options);
}  // namespace

absl::Status CheckModelLoads(const std::string& model_path) {
  return ImportTorchScriptFile(model_path).status();
}

absl::StatusOr<std::unique_ptr<QuantizedModel>> Quantize(const QuantizeOptions& options) {
  PrepareThreadForLibTorch();
  return GuardEntryPoint(absl::StrCat("quantizing ", options.model_path),
                         [&]() -> absl::StatusOr<std::unique_ptr<QuantizedModel>> {
                           QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<QuantizedModel::Impl> impl,
                                                   QuantizeUnguarded(options));
                           return std::unique_ptr<QuantizedModel>(new QuantizedModel(std::move(impl)));
                         });
}

namespace {

absl::StatusOr<std::unique_ptr<QuantizedModel::Impl>> QuantizeUnguarded(const QuantizeOptions& options) {
  auto impl = std::make_unique<QuantizedModel::Impl>();
  QuantizeReport& report = impl->report;
  report.torch_version = TorchVersion();
  report.quantd_version = QUANTD_VERSION;
  report.intra_op_threads = IntraOpThreads();
  report.calibration_batch_size = options.batch_size;
  PhaseClock clock(&report);
  const absl::Time job_began = absl::Now();
  auto enter = [&](Phase phase) -> absl::Status {
    clock.Start(PhaseName(phase));
    if (options.progress && !options.progress({phase, 0, 0})) {
      return absl::CancelledError(absl::StrCat("cancelled before ", PhaseName(phase)));
    }
    return absl::OkStatus();
  };

  QConfig qconfig;
  if (!options.qconfig.preset.empty()) {
    QUANTD_ASSIGN_OR_RETURN(qconfig, QConfigPreset(options.qconfig.preset));
  } else {
    QUANTD_ASSIGN_OR_RETURN(qconfig, CustomQConfig(options.qconfig.activation_observer, options.qconfig.weight_observer,
                                                   options.qconfig.reduce_range));
    if (!(options.qconfig.percentile > 0 && options.qconfig.percentile <= 100)) {
      return absl::InvalidArgumentError(
          absl::StrCat("percentile: ", options.qconfig.percentile, " is not in (0, 100]"));
    }
    qconfig.activation.percentile = options.qconfig.percentile;
  }
  if (options.qconfig.bias_correction) qconfig.bias_correction = true;
  if (options.qconfig.fitted_rounding) qconfig.fitted_rounding = true;
  if (options.qconfig.equalization) qconfig.equalization = true;
  report.qconfig_name = qconfig.name;
  report.qconfig_description = qconfig.Describe();
  const bool best_preset = options.qconfig.preset == "best";
  if (options.accuracy_goal) {
    const AccuracyGoal& goal = *options.accuracy_goal;
    if (!(goal.max_top1_drop >= 0 && goal.max_top1_drop <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("accuracy_goal.max_top1_drop: ", goal.max_top1_drop, " is not a fraction in [0, 1]"));
    }
    if (goal.max_trials < 1) {
      return absl::InvalidArgumentError(absl::StrCat("accuracy_goal.max_trials: ", goal.max_trials, " is below 1"));
    }
    if (!(goal.time_budget_seconds > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("accuracy_goal.time_budget_seconds: ", goal.time_budget_seconds, " is not positive"));
    }
    if (goal.tuning.path.empty()) return absl::InvalidArgumentError("accuracy_goal.tuning: no dataset given");
  }
  for (std::string& warning : OverlappingSetWarnings(options)) report.warnings.push_back(std::move(warning));
  const bool tune = options.accuracy_goal.has_value() || best_preset;
  if (tune && qconfig.activation.kind != ObserverKind::kHistogram) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.accuracy_goal ? "accuracy_goal" : "the best preset",
        " tries range estimators on one calibration's histograms: activation observer ",
        qconfig.activation.Describe(), " keeps none (use a preset, or histogram, mse, percentile or entropy)"));
  }

  // Kernel engines: what this CPU computes exactly with the qconfig's
  // activation range. Settled before calibration where no measurement is
  // needed, so a bad request fails at once.
  report.cpu = options.cpu_for_testing ? *options.cpu_for_testing : CpuInt8Capabilities();
  int64_t activation_quant_max = qconfig.activation.quant_max();
  const std::vector<std::string> available = AvailableKernelEngines();
  if (available.empty()) return absl::FailedPreconditionError("this LibTorch has no quantized kernel engine");
  std::vector<KernelCandidate> candidates;
  if (!options.kernel_engine.empty()) {
    if (std::find(available.begin(), available.end(), options.kernel_engine) == available.end()) {
      return absl::InvalidArgumentError(absl::StrCat("kernel_engine '", options.kernel_engine,
                                                     "' is not compiled into this LibTorch (available: ",
                                                     absl::StrJoin(available, ", "), ")"));
    }
    // Refused before calibration, not when converting the first layer.
    if (options.kernel_engine == "onednn" && WeightsHaveZeroPoints(qconfig)) {
      return absl::InvalidArgumentError(absl::StrCat("kernel_engine 'onednn' rejects weight zero points, which weight "
                                                     "observer ", qconfig.weight.Describe(), " gives; use a symmetric "
                                                     "weight observer or kernel engine qnnpack"));
    }
    candidates.push_back(AssessKernelEngine(options.kernel_engine, activation_quant_max, report.cpu));
    if (!candidates[0].exact && options.strict_kernels) {
      return absl::FailedPreconditionError(absl::StrCat("kernel_engine '", options.kernel_engine, "' ",
                                                        candidates[0].why, " (strict kernels)"));
    }
  } else {
    for (const std::string& engine : KernelPreference(options.qconfig.preset, available)) {
      // onednn rejects weight zero points: only a named request reaches it then (and fails clearly).
      if (engine == "onednn" && WeightsHaveZeroPoints(qconfig)) continue;
      candidates.push_back(AssessKernelEngine(engine, activation_quant_max, report.cpu));
    }
  }

  // Tuning converts every trial for one engine: the requested one, or the
  // first in preference order that is exact here with 8-bit activations
  // (so trials may drop reduce_range), or else the one the qconfig would get.
  std::string trial_engine;
  bool eight_bit_exact = false;
  if (tune) {
    if (!options.kernel_engine.empty()) {
      trial_engine = options.kernel_engine;
      eight_bit_exact = AssessKernelEngine(trial_engine, 255, report.cpu).exact;
    } else {
      for (const std::string& engine : KernelPreference(options.qconfig.preset, available)) {
        if (engine == "onednn" && WeightsHaveZeroPoints(qconfig)) continue;
        if (AssessKernelEngine(engine, 255, report.cpu).exact) {
          trial_engine = engine;
          eight_bit_exact = true;
          break;
        }
      }
      if (trial_engine.empty()) trial_engine = candidates[0].engine;
    }
  }

  QUANTD_RETURN_IF_ERROR(enter(Phase::kLoading));
  QUANTD_ASSIGN_OR_RETURN(report.model_sha256, Sha256File(options.model_path));
  QUANTD_ASSIGN_OR_RETURN(impl->fused, ImportTorchScriptFile(options.model_path));
  // Said now, not after calibration and conversion, where the int8 program's
  // first run found it.
  if (impl->fused.outputs.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("model: forward returns a tuple of ", impl->fused.outputs.size(),
                                                   " values; quantd quantizes and serves models with one tensor "
                                                   "output (return only the one to serve)"));
  }
  // Fusion builds new tensors and never mutates the module, so the loaded
  // module itself stays the FP32 reference.
  impl->fp32_module = impl->fused.module;
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Dataset> calibration, OpenDataset(options.calibration));
  impl->max_batch_bytes = options.max_batch_bytes;
  QUANTD_RETURN_IF_ERROR(
      CheckBatchBytes(*calibration, options.batch_size, options.max_batch_bytes, "calibration.batch_size"));
  QUANTD_ASSIGN_OR_RETURN(report.calibration_sha256, calibration->Fingerprint());
  report.input_shape = calibration->sample_shape();
  // One sample of each set through the FP32 model first: a dataset the model
  // cannot take (3 channels for a 1-channel model, a wrong size, the wrong
  // layout) is the request's error, said before calibration, not an
  // INTERNAL one from its first batch (for the evaluation set, after
  // calibration and tuning).
  at::Tensor first_sample, first_output;
  // `scored`: top-1 is measured on the set (evaluation, tuning), so the model
  // must be a classifier; `labelled`: against the set's labels, which must
  // then be among its classes (not when tuning against FP32's predictions).
  auto run_one_sample = [&](Dataset& dataset, const std::string& field, bool scored,
                            bool labelled) -> absl::Status {
    if (dataset.size() == 0) return absl::OkStatus();
    QUANTD_RETURN_IF_ERROR(dataset.CheckFinite());
    QUANTD_ASSIGN_OR_RETURN(Batch first, dataset.ReadBatch(0, 1));
    at::Tensor output;
    std::string output_type;
    absl::Status runs = TorchTry("one sample", [&] {
      at::NoGradGuard no_grad;
      // A copy: the model may write into its input.
      c10::IValue out = impl->fp32_module.forward({first.images.clone()});
      if (out.isTensor()) {
        output = out.toTensor().detach().to(at::kFloat);
      } else {
        output_type = out.type()->annotation_str();
      }
      return absl::OkStatus();
    });
    if (!runs.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": the model does not run on the dataset's samples of "
                                                     "shape [", absl::StrJoin(dataset.sample_shape(), ", "),
                                                     "] (", runs.message(), ")"));
    }
    if (!output.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("model: forward returns ", output_type,
                                                     "; quantd quantizes and serves models with one tensor output "
                                                     "(return only the one to serve)"));
    }
    // Said now, not once calibration (and tuning) are done.
    if (scored && !IsClassifierOutput(output)) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": scoring top-1 needs a classifier, but the model's "
                                                     "output for one sample has shape [",
                                                     absl::StrJoin(output.sizes(), ", "), "], not [1, classes]"));
    }
    if (scored && labelled) {
      const std::vector<int64_t> labels = dataset.SelectedLabels(dataset.size());
      QUANTD_RETURN_IF_ERROR(
          CheckLabelsInRange(at::tensor(labels), output.size(1), field, /*first_sample=*/0));
    }
    if (&dataset == calibration.get()) {
      first_sample = first.images;
      first_output = output;
    }
    return absl::OkStatus();
  };
  QUANTD_RETURN_IF_ERROR(run_one_sample(*calibration, "calibration", /*scored=*/false, /*labelled=*/false));
  // Open until the best preset's fold has checked their image size too.
  std::unique_ptr<Dataset> evaluation_set, tuning_set;
  if (options.evaluation) {
    QUANTD_ASSIGN_OR_RETURN(evaluation_set, OpenDataset(*options.evaluation));
    QUANTD_RETURN_IF_ERROR(run_one_sample(*evaluation_set, "evaluation", /*scored=*/true, /*labelled=*/true));
  }
  if (options.accuracy_goal) {
    QUANTD_ASSIGN_OR_RETURN(tuning_set, OpenDataset(options.accuracy_goal->tuning));
    QUANTD_RETURN_IF_ERROR(run_one_sample(*tuning_set, "accuracy_goal.tuning", /*scored=*/true,
                                          /*labelled=*/!options.accuracy_goal->against_fp32));
  }

  QUANTD_RETURN_IF_ERROR(enter(Phase::kFusing));
  QUANTD_ASSIGN_OR_RETURN(report.fused_groups, FuseModules(&impl->fused, options.fusion));
  if (best_preset) {
    // Not in PyTorch's presets, whose int8 models it would change.
    QUANTD_ASSIGN_OR_RETURN(auto folded, FoldGlobalPoolingIntoLinear(&impl->fused, report.input_shape));
    report.fused_groups.insert(report.fused_groups.end(), folded.begin(), folded.end());
    if (!folded.empty()) {
      impl->fixed_input_shape = report.input_shape;
      // Checked now, not after calibration and tuning: the sets that would
      // be scored wrongly on a program fixed to this size.
      if (evaluation_set) QUANTD_RETURN_IF_ERROR(impl->CheckFixedInputShape(*evaluation_set, "evaluation"));
      if (tuning_set) QUANTD_RETURN_IF_ERROR(impl->CheckFixedInputShape(*tuning_set, "accuracy_goal.tuning"));
    }
  }
  evaluation_set.reset();  // read again where they are scored
  tuning_set.reset();
  std::vector<EqualizedPair> equalized;
  if (qconfig.equalization) {
    QUANTD_ASSIGN_OR_RETURN(equalized, Equalize(&impl->fused, qconfig, calibration.get(), options.batch_size));
  }
  QUANTD_RETURN_IF_ERROR(CheckImportComputesTheModel(impl->fused, first_sample, first_output));
  QuantizationPlan plan = PlanQuantization(impl->fused);
  report.fallbacks = plan.fallbacks;
  // reduce_range's 7 bits do not hold where sigmoid/tanh codes (0..255)
  // feed a conv or linear: the engines are assessed again for 8 bits.
  auto widen_for_fixed_qparams = [&](const QuantizationPlan& p) -> absl::Status {
    if (activation_quant_max >= 255 || !FixedQParamsCodesReachWeightedOps(impl->fused, p)) return absl::OkStatus();
    activation_quant_max = 255;
    for (KernelCandidate& c : candidates) c = AssessKernelEngine(c.engine, activation_quant_max, report.cpu);
    if (!options.kernel_engine.empty() && !candidates[0].exact && options.strict_kernels) {
      return absl::FailedPreconditionError(absl::StrCat("kernel_engine '", options.kernel_engine, "' ",
                                                        candidates[0].why,
                                                        " (sigmoid/tanh codes reach a conv or linear; strict kernels)"));
    }
    return absl::OkStatus();
  };
  QUANTD_RETURN_IF_ERROR(widen_for_fixed_qparams(plan));

  QUANTD_RETURN_IF_ERROR(enter(Phase::kCalibrating));
  const BatchProgress batch_progress = [&](int64_t done, int64_t total) {
    return !options.progress || options.progress({Phase::kCalibrating, done, total});
  };
  CalibrationOptions calibration_options;
  calibration_options.batch_size = options.batch_size;
  calibration_options.forward_batch_size = options.forward_batch_size;
  calibration_options.overlap = options.overlap_observers;
  // The images int8 runs on after conversion: the SQNR ones and the quality gate's.
  // The best preset judges estimators on up to 1000 of them against FP32.
  // They are one batch in memory, so no more than a batch's bytes of them.
  const int64_t comparable = std::min(calibration->size(),
                                      ImagesWithinBytes(calibration->sample_shape(), options.max_batch_bytes));
  if (options.sqnr_samples > 0) {
    calibration_options.reference_values = SqnrValues(impl->fused, plan);
    calibration_options.reference_samples = std::min(options.sqnr_samples, comparable);
  }
  const int64_t judged_samples = best_preset ? std::min<int64_t>(1000, comparable) : 0;
  const int64_t compared_samples =
      std::min(std::max({options.sqnr_samples, options.quality_samples, judged_samples}), comparable);
  if (options.quality_samples > compared_samples && compared_samples < calibration->size()) {
    report.warnings.push_back(absl::StrCat(
        "quality_gate.samples: compared int8 with FP32 on ", compared_samples, " images, not ",
        options.quality_samples, ": more would take over the limit of ", options.max_batch_bytes,
        " bytes per batch (quantd --max_batch_bytes)"));
  }
  if (options.quality_samples > 0 || judged_samples > 0) {
    calibration_options.output_values = OutputValues(impl->fused);
    calibration_options.output_samples = compared_samples;
  }
  // Every trial of tuning may correct biases.
  if (qconfig.bias_correction || tune) calibration_options.mean_values = BiasCorrectionInputs(impl->fused);
  // Tuning tries fitted rounding with every qconfig.
  if (qconfig.fitted_rounding || tune) calibration_options.second_moment_samples = kFittedRoundingSamples;
  // Tuning may keep any int8 layer in FP32: the values that would then be
  // quantized again where int8 ops read them are observed too (any set of
  // FP32 layers needs only values some single layer's plan needs).
  QuantizationPlan calibration_plan = plan;
  if (options.accuracy_goal && options.accuracy_goal->allow_fp32_layers) {
    for (const Node& node : impl->fused.nodes) {
      if (node.removed || plan.roles[static_cast<size_t>(node.id)] != NodeRole::kInt8) continue;
      for (int v : PlanQuantization(impl->fused, {node.name}).observed_values) {
        std::vector<int>& observed = calibration_plan.observed_values;
        if (std::find(observed.begin(), observed.end(), v) == observed.end()) observed.push_back(v);
      }
    }
  }
  // Tuning and the best preset ask the same histograms for other estimators.
  ObserverSpec calibration_activation = qconfig.activation;
  calibration_activation.exact_histogram = tune;
  QUANTD_ASSIGN_OR_RETURN(CalibrationResult calibrated,
                          Calibrate(impl->fused, calibration_plan, calibration_activation, calibration.get(),
                                    calibration_options, batch_progress));
  report.calibration_samples = calibrated.samples;

  at::Tensor compared_images;
  if (compared_samples > 0) {
    QUANTD_ASSIGN_OR_RETURN(Batch batch, calibration->ReadBatch(0, compared_samples));
    compared_images = batch.images;
  }
  if (tune) {
    QUANTD_RETURN_IF_ERROR(enter(Phase::kTuning));
    TuningSetup setup;
    setup.fused = &impl->fused;
    setup.calibrated = &calibrated;
    setup.qconfig = qconfig;
    setup.engine = trial_engine;
    setup.eight_bit_exact = eight_bit_exact;
    setup.fp32_module = &impl->fp32_module;
    setup.input_shape = impl->fixed_input_shape;
    setup.goal = options.accuracy_goal;
    setup.max_batch_bytes = options.max_batch_bytes;
    if (judged_samples > 0 && !impl->fused.outputs.empty() &&
        impl->fused.outputs[0].kind == Operand::Kind::kValue) {
      auto it = calibrated.references.find(impl->fused.outputs[0].value);
      if (it != calibrated.references.end() && it->second.dim() > 0 && it->second.size(0) >= judged_samples) {
        setup.judge_images = compared_images.narrow(0, 0, judged_samples);
        setup.judge_fp32_outputs = it->second.narrow(0, 0, judged_samples);
      }
    }
    if (options.sqnr_samples > 0) {
      setup.sqnr_images = compared_images.narrow(0, 0, std::min(options.sqnr_samples, compared_samples));
    }
    setup.progress = options.progress;
    setup.spent_before = absl::Now() - job_began;
    QUANTD_ASSIGN_OR_RETURN(TunedSettings tuned, TuneQuantization(setup));
    qconfig.activation = tuned.activation;
    qconfig.bias_correction = tuned.bias_correction;
    qconfig.fitted_rounding = tuned.fitted_rounding;
    if (!best_preset) qconfig.name = absl::StrCat(qconfig.name, "+tuned");
    report.qconfig_name = qconfig.name;
    report.qconfig_description = qconfig.Describe();
    plan = PlanQuantization(impl->fused, tuned.fp32_layers);
    for (FallbackReport& f : plan.fallbacks) {
      if (tuned.fp32_layers.count(f.node) > 0) f.reason = "kept in FP32 by accuracy-aware tuning (most sensitive layers)";
    }
    report.fallbacks = plan.fallbacks;
    QUANTD_ASSIGN_OR_RETURN(calibrated.qparams,
                            ActivationQParamsFor(calibrated, plan, qconfig.activation, impl->fused));
    report.tuning = std::move(tuned.report);
    report.advice = std::move(tuned.advice);
    activation_quant_max = qconfig.activation.quant_max();
    candidates = {AssessKernelEngine(trial_engine, activation_quant_max, report.cpu)};
    QUANTD_RETURN_IF_ERROR(widen_for_fixed_qparams(plan));
  }

  QUANTD_RETURN_IF_ERROR(enter(Phase::kConverting));
  std::vector<at::Tensor> fp32_outputs;
  if (compared_samples > 0) {
    for (const Operand& out : impl->fused.outputs) {
      auto it = out.kind == Operand::Kind::kValue ? calibrated.references.find(out.value) : calibrated.references.end();
      const bool full = it != calibrated.references.end() && it->second.dim() > 0 && it->second.size(0) == compared_samples;
      fp32_outputs.push_back(options.quality_samples > 0 && full ? it->second : at::Tensor());
    }
  }
  auto compare = [&](const Int8Executor& executor) -> absl::StatusOr<Int8VsFp32> {
    if (compared_samples == 0) return Int8VsFp32{};
    return CompareWithFp32(executor, compared_images, calibrated.references, fp32_outputs);
  };

  // Timing (when the preferred engine would saturate) uses up to 32 of the
  // quality-check images.
  KernelChooser chooser(impl->fused, plan, calibrated, qconfig, compare,
                        compared_samples > 0 ? compared_images.narrow(0, 0, std::min<int64_t>(compared_samples, 32))
                                             : at::Tensor(),
                        &report);
  std::unique_ptr<Converted> chosen;
  if (!options.kernel_engine.empty()) {
    QUANTD_ASSIGN_OR_RETURN(chosen, chooser.Requested(candidates[0], available));
  } else {
    QUANTD_ASSIGN_OR_RETURN(chosen, chooser.Automatic(candidates));
  }
  const KernelChoice& choice = report.kernel_choice;
  report.kernel_engine = choice.engine;
  report.requirements = RequirementsFor(choice.engine, activation_quant_max);
  impl->program = std::move(chosen->program);
  impl->executor = std::move(chosen->executor);
  std::vector<LayerReport> layers = std::move(chosen->layers);
  // Make the batch-1 packs now: they serve the latency-critical case.
  {
    std::vector<int64_t> shape = calibration->sample_shape();
    shape.insert(shape.begin(), 1);
    at::NoGradGuard no_grad;
    auto warm = impl->executor->Forward(at::zeros(shape, at::kFloat));
    if (!warm.ok()) return warm.status();
  }

  // Per-layer SQNR and the quality gate, on the first calibration images.
  QUANTD_ASSIGN_OR_RETURN(Int8VsFp32 comparison, compare(*impl->executor));
  for (LayerReport& layer : layers) {
    auto it = comparison.layer_sqnr_db.find(layer.name);
    if (it != comparison.layer_sqnr_db.end()) layer.sqnr_db = it->second;
    report.layers.push_back(std::move(layer));
  }
  if (!AnyInt8Layer(report)) {
    report.warnings.push_back(
        "no op of this model runs on int8 kernels (each is an FP32 fallback, listed with its reason): the artifact "
        "computes what the FP32 model computes, with no int8 speed-up");
  }
  if (!tune) report.advice = UnmeasuredAdvice(report, qconfig);
  if (qconfig.equalization) report.advice.push_back(EqualizationAdvice(equalized));
  if (options.quality_samples > 0) {
    report.quality = JudgeQuality(comparison, {options.min_top1_agreement, options.min_output_sqnr_db});
    for (const KernelCandidate& c : choice.candidates) {
      if (!report.quality.passed && c.engine == choice.engine && !c.exact) {
        absl::StrAppend(&report.quality.message, "; likely cause: kernel_engine '", c.engine, "' ", c.why);
      }
    }
    if (!report.quality.passed) {
      if (!options.allow_low_quality) {
        if (options.refused_report != nullptr) *options.refused_report = report;
        return absl::FailedPreconditionError(report.quality.message);
      }
      report.warnings.push_back(absl::StrCat("quality check failed, kept because low quality is allowed: ",
                                             report.quality.message));
    }
  }

  if (options.evaluation) {
    QUANTD_RETURN_IF_ERROR(enter(Phase::kEvaluating));
    QUANTD_ASSIGN_OR_RETURN(Accuracy fp32, impl->Evaluate(*options.evaluation, options.evaluation_batch_size, false, options.progress));
    QUANTD_ASSIGN_OR_RETURN(Accuracy int8, impl->Evaluate(*options.evaluation, options.evaluation_batch_size, true, options.progress));
    report.fp32_accuracy = fp32;
    report.int8_accuracy = int8;
    if (options.accuracy_goal && fp32.total > 0) {
      // The tuning set's verdict, checked on data it never saw.
      const AccuracyGoal& goal = *options.accuracy_goal;
      const double allowed = goal.relative ? goal.max_top1_drop * fp32.top1() : goal.max_top1_drop;
      const double drop = fp32.top1() - int8.top1();
      const std::string change = drop >= 0 ? absl::StrFormat("a drop of %.2f points", 100 * drop)
                                            : absl::StrFormat("%.2f points above FP32", -100 * drop);
      if (goal.against_fp32) {
        // There the tolerance bounds disagreement with FP32, not this drop:
        // no verdict against it.
        report.advice.push_back(absl::StrFormat(
            "on the evaluation set %s: int8 top-1 %.2f%% against FP32 %.2f%%, %s (the goal "
            "bounded disagreement with FP32's predictions on the tuning set, not this drop)",
            options.evaluation->path, 100 * int8.top1(), 100 * fp32.top1(), change));
      } else {
        report.advice.push_back(absl::StrFormat(
            "on the evaluation set %s: int8 top-1 %.2f%% against FP32 %.2f%%, %s for a tolerance "
            "of %.2f points: %s",
            options.evaluation->path, 100 * int8.top1(), 100 * fp32.top1(), change, 100 * allowed,
            drop <= allowed + 1e-12 ? "within it" : absl::StrFormat("missed by %.2f points", 100 * (drop - allowed))));
      }
    }
  }
  clock.Stop();
  return impl;
}

}  // namespace

}  // namespace quantd::engine
