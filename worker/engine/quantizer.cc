#include "worker/engine/quantizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/version.h>
#include <torch/csrc/jit/serialization/import.h>

#include <malloc.h>

#include <cmath>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "worker/engine/base/sha256.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"
#include "worker/engine/data/dataset.h"
#include "worker/engine/ir/import_torchscript.h"
#include "worker/engine/passes/calibrate.h"
#include "worker/engine/passes/convert.h"
#include "worker/engine/passes/fuse_modules.h"
#include "worker/engine/passes/insert_observers.h"
#include "worker/engine/passes/measure_sqnr.h"
#include "worker/engine/qconfig/qconfig.h"
#include "worker/engine/runtime/fp32_executor.h"
#include "worker/engine/runtime/int8_program.h"
#include "worker/engine/runtime/prepack.h"
#include "worker/engine/quantizer_internal.h"
#include "worker/engine/serialization/torchscript_writer.h"

namespace quantd::engine {

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kLoading: return "loading";
    case Phase::kFusing: return "fusing";
    case Phase::kCalibrating: return "calibrating";
    case Phase::kConverting: return "converting";
    case Phase::kEvaluating: return "evaluating";
    case Phase::kStoring: return "storing";
  }
  return "?";
}

namespace {

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
  QUANTD_ASSIGN_OR_RETURN(std::string bytes, SerializeProgram(impl_->program));
  impl_->report.artifact_sha256 = Sha256Hex(bytes);
  impl_->report.artifact_size_bytes = static_cast<int64_t>(bytes.size());
  return bytes;
}

absl::StatusOr<Accuracy> QuantizedModel::EvaluateInt8(const DatasetSpec& dataset, int64_t batch_size,
                                                      const ProgressCallback& progress) const {
  return impl_->Evaluate(dataset, batch_size, /*int8=*/true, progress);
}

absl::StatusOr<Accuracy> QuantizedModel::EvaluateFp32(const DatasetSpec& dataset, int64_t batch_size,
                                                      const ProgressCallback& progress) const {
  return impl_->Evaluate(dataset, batch_size, /*int8=*/false, progress);
}

absl::StatusOr<std::vector<int64_t>> QuantizedModel::PredictInt8(const DatasetSpec& dataset, int64_t batch_size) const {
  std::vector<int64_t> predictions;
  QUANTD_RETURN_IF_ERROR(impl_->ForEachBatch(dataset, batch_size, nullptr, [&](const Batch& batch) -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(at::Tensor out, impl_->executor->Forward(batch.images));
    at::Tensor arg = out.argmax(1).contiguous();
    predictions.insert(predictions.end(), arg.data_ptr<int64_t>(), arg.data_ptr<int64_t>() + arg.numel());
    return absl::OkStatus();
  }));
  return predictions;
}

void SetIntraOpThreads(int threads) { at::set_num_threads(std::max(1, threads)); }

void InitializeRuntime(int intra_op_threads) {
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  SetIntraOpThreads(intra_op_threads);
}
int IntraOpThreads() { return at::get_num_threads(); }

std::vector<std::string> AvailableKernelEngines() { return AvailableKernelEngineNames(); }

absl::StatusOr<std::string> KernelEngineFor(const std::string& preset, const std::string& requested) {
  const std::vector<std::string> available = AvailableKernelEngines();
  auto has = [&](const std::string& e) { return std::find(available.begin(), available.end(), e) != available.end(); };
  if (!requested.empty()) {
    if (!has(requested)) {
      return absl::InvalidArgumentError(absl::StrCat("kernel_engine '", requested, "' is not compiled into this LibTorch (available: ",
                                                     absl::StrJoin(available, ", "), ")"));
    }
    return requested;
  }
  std::vector<std::string> preference;
  if (preset == "x86") preference = {"x86", "fbgemm", "onednn", "qnnpack"};
  else if (preset == "fbgemm") preference = {"fbgemm", "x86", "onednn", "qnnpack"};
  else preference = {"onednn", "x86", "fbgemm", "qnnpack"};
  for (const std::string& e : preference) {
    if (has(e)) return e;
  }
  return absl::FailedPreconditionError("this LibTorch has no quantized kernel engine");
}

std::string TorchVersion() { return TORCH_VERSION; }

absl::StatusOr<std::unique_ptr<QuantizedModel>> Quantize(const QuantizeOptions& options) {
  auto impl = std::make_unique<QuantizedModel::Impl>();
  QuantizeReport& report = impl->report;
  report.torch_version = TorchVersion();
  report.quantd_version = QUANTD_VERSION;
  report.intra_op_threads = IntraOpThreads();
  report.calibration_batch_size = options.batch_size;
  PhaseClock clock(&report);
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
  }
  report.qconfig_name = qconfig.name;
  report.qconfig_description = qconfig.Describe();
  QUANTD_ASSIGN_OR_RETURN(report.kernel_engine, KernelEngineFor(options.qconfig.preset, options.kernel_engine));

  QUANTD_RETURN_IF_ERROR(enter(Phase::kLoading));
  QUANTD_ASSIGN_OR_RETURN(report.model_sha256, Sha256File(options.model_path));
  QUANTD_ASSIGN_OR_RETURN(impl->fused, ImportTorchScriptFile(options.model_path));
  // Fusion builds new tensors and never mutates the module, so the loaded
  // module itself stays the FP32 reference.
  impl->fp32_module = impl->fused.module;
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Dataset> calibration, OpenDataset(options.calibration));
  QUANTD_ASSIGN_OR_RETURN(report.calibration_sha256, calibration->Fingerprint());

  QUANTD_RETURN_IF_ERROR(enter(Phase::kFusing));
  QUANTD_ASSIGN_OR_RETURN(report.fused_groups, FuseModules(&impl->fused, options.fusion));
  const QuantizationPlan plan = PlanQuantization(impl->fused);
  report.fallbacks = plan.fallbacks;

  QUANTD_RETURN_IF_ERROR(enter(Phase::kCalibrating));
  const BatchProgress batch_progress = [&](int64_t done, int64_t total) {
    return !options.progress || options.progress({Phase::kCalibrating, done, total});
  };
  CalibrationOptions calibration_options;
  calibration_options.batch_size = options.batch_size;
  calibration_options.forward_batch_size = options.forward_batch_size;
  calibration_options.overlap = options.overlap_observers;
  if (options.sqnr_samples > 0) {
    calibration_options.reference_values = SqnrValues(impl->fused, plan);
    calibration_options.reference_samples = options.sqnr_samples;
  }
  QUANTD_ASSIGN_OR_RETURN(CalibrationResult calibrated, Calibrate(impl->fused, plan, qconfig.activation, calibration.get(),
                                                                 calibration_options, batch_progress));
  report.calibration_samples = calibrated.samples;

  QUANTD_RETURN_IF_ERROR(enter(Phase::kConverting));
  std::vector<LayerReport> layers;
  QUANTD_ASSIGN_OR_RETURN(impl->program, Convert(impl->fused, plan, calibrated.qparams, qconfig, report.kernel_engine, &layers));
  QUANTD_ASSIGN_OR_RETURN(Int8Executor executor, Int8Executor::Create(&impl->program));
  impl->executor = std::make_unique<Int8Executor>(std::move(executor));
  // Make the batch-1 packs now: they serve the latency-critical case.
  {
    std::vector<int64_t> shape = calibration->sample_shape();
    shape.insert(shape.begin(), 1);
    at::NoGradGuard no_grad;
    auto warm = impl->executor->Forward(at::zeros(shape, at::kFloat));
    if (!warm.ok()) return warm.status();
  }

  // Per-layer SQNR on the first calibration samples.
  std::map<std::string, double> sqnr;
  if (options.sqnr_samples > 0) {
    QUANTD_ASSIGN_OR_RETURN(Batch batch, calibration->ReadBatch(0, std::min(options.sqnr_samples, calibration->size())));
    QUANTD_ASSIGN_OR_RETURN(sqnr, MeasureSqnr(*impl->executor, batch.images, calibrated.references));
  }
  for (LayerReport& layer : layers) {
    auto it = sqnr.find(layer.name);
    if (it != sqnr.end()) layer.sqnr_db = it->second;
    report.layers.push_back(std::move(layer));
  }

  if (options.evaluation) {
    QUANTD_RETURN_IF_ERROR(enter(Phase::kEvaluating));
    QUANTD_ASSIGN_OR_RETURN(Accuracy fp32, impl->Evaluate(*options.evaluation, options.evaluation_batch_size, false, options.progress));
    QUANTD_ASSIGN_OR_RETURN(Accuracy int8, impl->Evaluate(*options.evaluation, options.evaluation_batch_size, true, options.progress));
    report.fp32_accuracy = fp32;
    report.int8_accuracy = int8;
  }
  clock.Stop();
  return std::unique_ptr<QuantizedModel>(new QuantizedModel(std::move(impl)));
}

}  // namespace quantd::engine
