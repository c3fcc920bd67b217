// quantctl submit: QuantizeJob from flags or a JSON job file; --wait follows
// the job until it ends (exit 0 only if it SUCCEEDED).

#include <cmath>
#include <limits>
#include <fstream>
#include <ostream>
#include <sstream>

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/job_format.h"
#include "worker/engine/base/flag_values.h"

namespace quantd::cli {

const char kSubmitUsage[] =
    "submit [--file=JOB.json] --model=PATH|--model_blob=ID --calib=PATH|--calib_blob=ID "
    "(the model and calibration set from the flags or the file's JSON request; a flag beside --file sets "
    "its field over the file's) "
    "[--calib_format=cifar10|npy] [--calib_labels=PATH|--calib_labels_blob=ID] [--batch_size=N] [--samples_per_class=N] "
    "[--seed=N] [--preset=fbgemm|x86|onednn|qnnpack|best|custom] [--activation_observer=O] [--weight_observer=W] "
    "[--reduce_range] [--percentile=P] [--bias_correction] [--fitted_rounding] [--cross_layer_equalization] "
    "[--kernel_engine=E] [--strict_kernels] "
    "[--quality_samples=N] [--min_top1_agreement=F] [--min_output_sqnr_db=DB] [--allow_low_quality] "
    "[--fusion=auto|none|a,b,c;d,e] [--eval=PATH|--eval_blob=ID] [--eval_format=F] [--eval_labels=PATH|--eval_labels_blob=ID] "
    "[--eval_max_samples=N] [--scale=X] [--mean=a,b,c] [--std=a,b,c] [--layout=NCHW|NHWC] [--idempotency_key=K] "
    "[--deadline_seconds=N] [--model_name=NAME] [--tuning=PATH|--tuning_blob=ID [--tuning_format=F] "
    "[--tuning_labels=PATH|--tuning_labels_blob=ID] [--tolerance=POINTS] [--relative_tolerance] [--max_trials=N] "
    "[--time_budget_seconds=S] [--int8_only] [--max_fp32_layers=N] [--against_fp32]] [--wait]";

namespace {

// --mean/--std as quantd-quantize reads them (ParseNumberList).
bool ParseFloats(const CommandArgs& a, const char* flag, google::protobuf::RepeatedField<float>* out,
                 std::string* error) {
  absl::StatusOr<std::vector<double>> numbers = ParseNumberList(a.Get(flag), absl::StrCat("--", flag));
  if (!numbers.ok()) return (*error = std::string(numbers.status().message()), false);
  for (double v : *numbers) out->Add(static_cast<float>(v));
  return true;
}

}  // namespace

bool QuantizeJobRequestFromFlags(const CommandArgs& a, v1::QuantizeJobRequest* r, std::string* error) {
  // Given but empty (an unset variable: --model_name="$NAME"), the server
  // would take them as not given: a job that is never published, or never
  // deduplicated, without a word.
  for (const char* flag : {"idempotency_key", "model_name", "model", "model_blob", "calib", "calib_blob",
                           "calib_labels", "calib_labels_blob", "eval", "eval_blob", "eval_labels",
                           "eval_labels_blob", "tuning", "tuning_blob", "tuning_labels", "tuning_labels_blob", "fusion",
                           "file"}) {
    if (a.Has(flag) && a.Get(flag).empty()) {
      return (*error = absl::StrCat("--", flag, " is empty (an unset variable?); leave the flag out for none"), false);
    }
  }
  if (a.Has("model") && a.Has("model_blob")) {
    return (*error = "--model and --model_blob name the same input: give one", false);
  }
  if (a.Has("model")) r->mutable_model()->set_path(a.Get("model"));
  if (a.Has("model_blob")) r->mutable_model()->set_blob_id(a.Get("model_blob"));
  if (a.Has("calib") || a.Has("calib_blob")) {
    if (!SetDataset(a, "calib", r->mutable_calibration()->mutable_dataset(), error)) return false;
  } else {
    // As for --eval_* and --tuning_*: a format or labels with no dataset
    // to apply them to would be dropped silently.
    for (const char* flag : {"calib_format", "calib_labels", "calib_labels_blob"}) {
      if (a.Has(flag)) return (*error = absl::StrCat("--", flag, ": needs --calib or --calib_blob"), false);
    }
  }
  uint32_t n = 0;
  if (a.Has("batch_size")) {
    if (!absl::SimpleAtoi(a.Get("batch_size"), &n) || n == 0 || n > kMaxBatchSize) {
      return (*error = absl::StrCat("--batch_size: a number in 1..", kMaxBatchSize, " expected"), false);
    }
    r->mutable_calibration()->set_batch_size(n);
  }
  if (a.Has("samples_per_class")) {
    if (!absl::SimpleAtoi(a.Get("samples_per_class"), &n)) return (*error = "--samples_per_class: not a count", false);
    r->mutable_calibration()->set_samples_per_class(n);
  }
  if (a.Has("seed")) {
    uint64_t seed = 0;
    if (!absl::SimpleAtoi(a.Get("seed"), &seed)) return (*error = "--seed: not a count (0 or more)", false);
    r->mutable_calibration()->set_seed(seed);
  }
  auto upper = [](std::string name) {
    for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return name;
  };
  // Custom from --preset=custom or, with no --preset, from --file's
  // qconfig.custom: the flags below then set their fields over the file's.
  const bool custom =
      a.Has("preset") ? absl::AsciiStrToLower(a.Get("preset")) == "custom" : r->qconfig().has_custom();
  if (a.Has("preset") && !custom) {
    v1::QConfigPreset preset;
    // The enum's UNSPECIFIED would reach the server as "not given".
    if (!v1::QConfigPreset_Parse(upper("QCONFIG_PRESET_" + a.Get("preset")), &preset) ||
        preset == v1::QCONFIG_PRESET_UNSPECIFIED) {
      return (*error = absl::StrCat("--preset: unknown preset \"", a.Get("preset"), "\""), false);
    }
    r->mutable_qconfig()->set_preset(preset);
  }
  // A boolean given as false is as good as left out (a wrapper passing
  // --reduce_range=$RR must not fail for RR=false).
  auto given = [&a](const std::string& flag) {
    const bool boolean = flag == "reduce_range" || flag == "int8_only" || flag == "against_fp32" ||
                         flag == "relative_tolerance";
    return a.Has(flag) && (!boolean || a.IsOn(flag));
  };
  for (const char* flag : {"activation_observer", "weight_observer", "reduce_range", "percentile"}) {
    if (given(flag) && !custom) {
      return (*error = absl::StrCat("--", flag, ": needs --preset=custom (or qconfig.custom in --file)"), false);
    }
  }
  if (custom) {
    v1::CustomQConfig* c = r->mutable_qconfig()->mutable_custom();
    v1::ActivationObserver activation = c->activation_observer() == v1::ACTIVATION_OBSERVER_UNSPECIFIED
                                            ? v1::ACTIVATION_OBSERVER_HISTOGRAM
                                            : c->activation_observer();
    if (a.Has("activation_observer") &&
        (!v1::ActivationObserver_Parse(upper("ACTIVATION_OBSERVER_" + a.Get("activation_observer")), &activation) ||
         activation == v1::ACTIVATION_OBSERVER_UNSPECIFIED)) {
      return (*error = absl::StrCat("--activation_observer: unknown observer \"", a.Get("activation_observer"),
                                    "\" (minmax, moving_average_minmax, histogram, mse, percentile or entropy)"),
              false);
    }
    c->set_activation_observer(activation);
    v1::WeightObserver weight = c->weight_observer() == v1::WEIGHT_OBSERVER_UNSPECIFIED
                                    ? v1::WEIGHT_OBSERVER_PER_CHANNEL_SYMMETRIC
                                    : c->weight_observer();
    if (a.Has("weight_observer") &&
        (!v1::WeightObserver_Parse(upper("WEIGHT_OBSERVER_" + a.Get("weight_observer")), &weight) ||
         weight == v1::WEIGHT_OBSERVER_UNSPECIFIED)) {
      return (*error = absl::StrCat("--weight_observer: unknown observer \"", a.Get("weight_observer"),
                                    "\" (per_channel_symmetric, per_tensor_symmetric or per_tensor_affine)"),
              false);
    }
    c->set_weight_observer(weight);
    if (a.Has("reduce_range")) c->set_reduce_range(a.IsOn("reduce_range"));
    if (a.Has("percentile")) {
      // As quantd-quantize. 0 would reach the server as "unset" (99.99).
      double percentile = 0;
      if (!absl::SimpleAtod(a.Get("percentile"), &percentile) || !(percentile > 0 && percentile <= 100)) {
        return (*error = absl::StrCat("--percentile must be a number in (0, 100], not \"", a.Get("percentile"), "\""),
                false);
      }
      if (activation != v1::ACTIVATION_OBSERVER_PERCENTILE) {
        return (*error = "--percentile: only with --activation_observer=percentile", false);
      }
      c->set_percentile(percentile);
    }
  }
  if (a.Has("kernel_engine")) {
    const std::string engine = absl::AsciiStrToLower(a.Get("kernel_engine"));
    if (!IsKernelEngineName(engine)) {
      return (*error = absl::StrCat("--kernel_engine: unknown kernel engine \"", a.Get("kernel_engine"), "\" (",
                                    kKernelEngineNames, ")"),
              false);
    }
    r->mutable_qconfig()->set_kernel_engine(engine);
  }
  if (a.Has("strict_kernels")) r->mutable_qconfig()->set_strict_kernels(a.IsOn("strict_kernels"));
  // (One set by --file alone is the server's to name, as its field.)
  if (a.IsOn("strict_kernels") && r->qconfig().kernel_engine().empty()) {
    return (*error = "--strict_kernels: only with --kernel_engine (without one an exact engine is chosen)", false);
  }
  if (a.Has("bias_correction")) r->mutable_qconfig()->set_bias_correction(a.IsOn("bias_correction"));
  if (a.Has("fitted_rounding")) r->mutable_qconfig()->set_fitted_rounding(a.IsOn("fitted_rounding"));
  if (a.Has("cross_layer_equalization")) {
    r->mutable_qconfig()->set_cross_layer_equalization(a.IsOn("cross_layer_equalization"));
  }
  v1::QualityGate* gate = r->mutable_quality_gate();
  if (a.Has("quality_samples")) {
    if (!absl::SimpleAtoi(a.Get("quality_samples"), &n) || n > kMaxQualitySamples) {
      return (*error = absl::StrCat("--quality_samples: a number in 0..", kMaxQualitySamples, " expected"), false);
    }
    gate->set_samples(n);
  }
  for (const char* flag : {"min_top1_agreement", "min_output_sqnr_db"}) {
    if (!a.Has(flag)) continue;
    double v = 0;
    // As quantd-quantize checks them: named here, not by the server's field.
    if (!absl::SimpleAtod(a.Get(flag), &v) || !std::isfinite(v)) {
      return (*error = absl::StrCat("--", flag, " must be a finite number, not '", a.Get(flag), "'"), false);
    }
    if (std::string(flag) == "min_top1_agreement") {
      if (!(v >= 0 && v <= 1)) return (*error = "--min_top1_agreement must be a fraction in 0..1", false);
      gate->set_min_top1_agreement(v);
    } else {
      gate->set_min_output_sqnr_db(v);
    }
  }
  if (a.Has("allow_low_quality")) gate->set_allow_low_quality(a.IsOn("allow_low_quality"));
  if (gate->ByteSizeLong() == 0) r->clear_quality_gate();
  if (a.Has("fusion")) {
    if (absl::EndsWith(a.Get("fusion"), ".json")) {
      // quantd-quantize reads such a file; a job's spec travels in its request.
      return (*error = "--fusion: groups go inline here (a,b,c;d,e), or as fusion.groups in --file's JSON", false);
    }
    absl::StatusOr<FusionFlag> fusion = ParseFusionFlag(a.Get("fusion"));  // as quantd-quantize checks it
    if (!fusion.ok()) return (*error = std::string(fusion.status().message()), false);
    if (fusion->groups.empty()) {
      r->mutable_fusion()->set_auto_(fusion->automatic);
    } else {
      auto* groups = r->mutable_fusion()->mutable_groups();
      for (const std::vector<std::string>& group : fusion->groups) {
        auto* g = groups->add_groups();
        for (const std::string& m : group) g->add_modules(m);
      }
    }
  }
  // The evaluation set from the flags, or --file's that they refine.
  if (a.Has("eval") || a.Has("eval_blob")) {
    if (!SetDataset(a, "eval", r->mutable_evaluation()->mutable_dataset(), error)) return false;
  } else {
    // A format or labels describe the set named beside them.
    for (const char* flag : {"eval_format", "eval_labels", "eval_labels_blob"}) {
      if (a.Has(flag)) return (*error = absl::StrCat("--", flag, ": needs --eval or --eval_blob"), false);
    }
  }
  if (a.Has("eval_max_samples")) {
    if (!r->has_evaluation()) {
      return (*error = "--eval_max_samples: needs --eval or --eval_blob (or evaluation in --file)", false);
    }
    if (!absl::SimpleAtoi(a.Get("eval_max_samples"), &n)) return (*error = "--eval_max_samples: not a count", false);
    r->mutable_evaluation()->set_max_samples(n);
  }
  if (a.Has("scale")) {
    float scale = 0;
    if (!absl::SimpleAtof(a.Get("scale"), &scale) || !std::isfinite(scale) || scale == 0) {
      return (*error = "--scale: a finite, non-zero number expected", false);
    }
    r->mutable_preprocessing()->set_scale(scale);
  }
  if (a.Has("mean") && !ParseFloats(a, "mean", r->mutable_preprocessing()->mutable_mean(), error)) {
    return false;
  }
  if (a.Has("std") && !ParseFloats(a, "std", r->mutable_preprocessing()->mutable_std(), error)) return false;
  if (a.Has("layout")) {
    // quantd-quantize's flag. No "auto" here: a job's layout is fixed when it
    // is submitted, and evaluations of its versions read .npy sets in it.
    const std::string layout = absl::AsciiStrToUpper(a.Get("layout"));
    if (layout == "NCHW") {
      r->mutable_preprocessing()->set_input_layout(v1::TENSOR_LAYOUT_NCHW);
    } else if (layout == "NHWC") {
      r->mutable_preprocessing()->set_input_layout(v1::TENSOR_LAYOUT_NHWC);
    } else {
      return (*error = absl::StrCat("--layout must be NCHW or NHWC, not \"", a.Get("layout"), "\""), false);
    }
  }
  // The tuning set from the flags, or --file's accuracy_goal that they refine.
  if (a.Has("tuning") || a.Has("tuning_blob")) {
    if (!SetDataset(a, "tuning", r->mutable_accuracy_goal()->mutable_tuning(), error)) return false;
  } else {
    for (const char* flag : {"tuning_format", "tuning_labels", "tuning_labels_blob"}) {
      if (a.Has(flag)) return (*error = absl::StrCat("--", flag, ": needs --tuning or --tuning_blob"), false);
    }
  }
  if (r->has_accuracy_goal()) {
    v1::AccuracyGoal* goal = r->mutable_accuracy_goal();
    if (a.Has("tolerance")) {
      double points = 0;
      if (!absl::SimpleAtod(a.Get("tolerance"), &points) || !(points >= 0 && points <= 100)) {
        return (*error = "--tolerance: a number of points in [0, 100] expected", false);
      }
      goal->set_tolerance(points);
    }
    if (a.Has("relative_tolerance")) goal->set_relative(a.IsOn("relative_tolerance"));
    if (a.Has("max_trials")) {
      if (!absl::SimpleAtoi(a.Get("max_trials"), &n) || n == 0 || n > kMaxTrialsLimit) {
        return (*error = absl::StrCat("--max_trials: a number in 1..", kMaxTrialsLimit, " expected"), false);
      }
      goal->set_max_trials(n);
    }
    if (a.Has("time_budget_seconds")) {
      double seconds = 0;
      if (!absl::SimpleAtod(a.Get("time_budget_seconds"), &seconds) ||
          !(seconds > 0 && seconds <= kMaxTimeBudgetSeconds)) {
        return (*error = absl::StrCat("--time_budget_seconds: a positive number up to ", kMaxTimeBudgetSeconds,
                                      " expected"),
                false);
      }
      goal->set_time_budget_seconds(seconds);
    }
    if (a.Has("int8_only")) goal->set_int8_only(a.IsOn("int8_only"));
    if (a.Has("max_fp32_layers")) {
      uint32_t n = 0;
      if (!absl::SimpleAtoi(a.Get("max_fp32_layers"), &n)) {
        return (*error = "--max_fp32_layers: a count expected (0 = no cap)", false);
      }
      goal->set_max_fp32_layers(n);
    }
    if (a.Has("against_fp32")) goal->set_against_fp32(a.IsOn("against_fp32"));
    if (goal->int8_only() && goal->max_fp32_layers() > 0) {
      return (*error = "--max_fp32_layers: not with --int8_only (no layer stays FP32)", false);
    }
  } else {
    for (const char* flag : {"tolerance", "relative_tolerance", "max_trials", "time_budget_seconds", "int8_only",
                             "max_fp32_layers", "against_fp32"}) {
      if (given(flag)) {
        return (*error = absl::StrCat("--", flag, ": needs --tuning or --tuning_blob (or accuracy_goal in --file)"),
                false);
      }
    }
  }
  if (a.Has("idempotency_key")) r->set_idempotency_key(a.Get("idempotency_key"));
  if (a.Has("model_name")) r->set_model_name(a.Get("model_name"));
  if (a.Has("deadline_seconds")) {
    double seconds = 0;
    if (!absl::SimpleAtod(a.Get("deadline_seconds"), &seconds) || !(seconds > 0 && seconds <= 366 * 86400)) {
      return (*error = "--deadline_seconds: a positive number of seconds up to a year expected", false);
    }
    // From now to the millisecond: whole seconds of now would make it up to
    // a second early (a deadline of 0.5 s could be past on arrival).
    *r->mutable_deadline() = google::protobuf::util::TimeUtil::MillisecondsToTimestamp(
        absl::ToUnixMillis(absl::Now()) + std::llround(seconds * 1000));
  }
  return true;
}

int RunSubmit(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(
      args,
      {"file", "model", "model_blob", "calib", "calib_blob", "calib_format", "calib_labels", "calib_labels_blob",
       "batch_size", "samples_per_class", "seed", "preset", "activation_observer", "weight_observer",
       "percentile",
       "kernel_engine", "quality_samples", "min_top1_agreement", "min_output_sqnr_db", "fusion", "eval",
       "eval_blob", "eval_format", "eval_labels", "eval_labels_blob", "eval_max_samples", "scale", "mean", "std", "layout",
       "idempotency_key", "deadline_seconds", "model_name", "tuning", "tuning_blob", "tuning_format",
       "tuning_labels", "tuning_labels_blob", "tolerance", "max_trials", "time_budget_seconds", "max_fp32_layers"},
      &error,
      {"reduce_range", "bias_correction", "fitted_rounding", "cross_layer_equalization", "strict_kernels",
       "allow_low_quality", "relative_tolerance", "int8_only", "against_fp32", "wait"});
  if (!a.has_value()) return context.UsageError(absl::StrCat("submit: ", error, "\nusage: ", kSubmitUsage));
  if (!a->positional.empty()) {
    return context.UsageError(
        absl::StrCat("submit: unexpected argument \"", a->positional[0], "\"\nusage: ", kSubmitUsage));
  }
  v1::QuantizeJobRequest request;
  if (a->Has("file")) {
    std::ifstream in(a->Get("file"));
    if (!in) return context.UsageError(absl::StrCat("submit: cannot read ", a->Get("file")));
    std::stringstream json;
    json << in.rdbuf();
    auto status = google::protobuf::util::JsonStringToMessage(json.str(), &request);
    if (!status.ok()) {
      return context.UsageError(absl::StrCat("submit: ", a->Get("file"), ": ", status.ToString()));
    }
  }
  if (!QuantizeJobRequestFromFlags(*a, &request, &error)) return context.UsageError(absl::StrCat("submit: ", error));
  // Required, from the flags or --file: said here, naming the flags, not
  // by the server naming its fields.
  if (request.model().path().empty() && request.model().blob_id().empty()) {
    return context.UsageError(absl::StrCat("submit: a model is required: --model or --model_blob\nusage: ", kSubmitUsage));
  }
  if (request.calibration().dataset().path().empty() && request.calibration().dataset().blob_id().empty()) {
    return context.UsageError(
        absl::StrCat("submit: a calibration set is required: --calib or --calib_blob\nusage: ", kSubmitUsage));
  }

  auto stub = v1::QuantizationService::NewStub(context.channel);
  grpc::ClientContext client_context;
  context.PrepareCall(client_context);
  v1::Job job;
  grpc::Status status = stub->QuantizeJob(&client_context, request, &job);
  if (!status.ok()) return context.RpcFailed("submit", status);
  if (context.options.json) {
    *context.out << JsonLine(job) << "\n";
  } else {
    *context.out << job.id() << " " << ShortEnum(v1::JobState_Name(job.state()), "JOB_STATE_") << "\n";
  }
  if (!a->IsOn("wait")) return kExitOk;
  int rc = FollowJob(context, job.id(), /*job_exists=*/true);
  if (!context.options.json) {
    grpc::ClientContext get_context;
    context.PrepareCall(get_context);
    v1::GetJobRequest get;
    get.set_id(job.id());
    if (stub->GetJob(&get_context, get, &job).ok()) *context.out << JobText(job) << "\n";
  }
  return rc;
}

}  // namespace quantd::cli
