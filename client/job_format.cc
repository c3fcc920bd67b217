#include "client/job_format.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <ostream>

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "worker/engine/base/flag_values.h"

namespace quantd::cli {

std::string CommandArgs::Get(const std::string& name, const std::string& fallback) const {
  auto it = flags.find(name);
  return it == flags.end() ? fallback : it->second;
}

std::string PositionalCountError(const CommandArgs& a, size_t min, size_t max, const std::string& takes) {
  const size_t n = a.positional.size();
  if (n >= min && n <= max) return "";
  if (n == 0) return absl::StrCat(takes, " required");
  std::vector<std::string> quoted;
  for (const std::string& p : a.positional) quoted.push_back(absl::StrCat("\"", p, "\""));
  return absl::StrCat(max == 0 ? "takes no arguments" : absl::StrCat("takes ", takes), ", got ", n, ": ",
                      absl::StrJoin(quoted, " "));
}

std::string OnlyJobId(const std::vector<std::string>& args, std::string* error) {
  std::optional<CommandArgs> a = ParseCommandArgs(args, {}, error);
  if (a.has_value()) *error = PositionalCountError(*a, 1, 1, "JOB_ID");
  return error->empty() ? a->positional[0] : "";
}

std::optional<CommandArgs> ParseCommandArgs(const std::vector<std::string>& args,
                                            const std::vector<std::string>& allowed, std::string* error,
                                            const std::vector<std::string>& booleans) {
  auto listed = [](const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  CommandArgs parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "-o" || absl::StartsWith(arg, "-o=")) arg = "-" + arg;
    if (!absl::StartsWith(arg, "--")) {
      parsed.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    std::replace(name.begin(), name.end(), '-', '_');  // --page-size = --page_size, as in every quantd tool
    const std::string shown = name == "o" ? "-o" : "--" + name;
    if (!listed(allowed, name) && !listed(booleans, name)) {
      *error = absl::StrCat("unknown flag ", shown);
      return std::nullopt;
    }
    if (listed(booleans, name)) {
      // "--flag" alone is true; an explicit value must be a boolean (as for
      // quantd's and quantd-quantize's flags): "--wait=false" does not wait.
      bool on = true;
      if (value.has_value() && !absl::SimpleAtob(*value, &on)) {
        *error = absl::StrCat(shown, " expects true or false, got \"", *value, "\"");
        return std::nullopt;
      }
      parsed.flags[name] = on ? "true" : "false";
      continue;
    }
    // A value-taking flag: "--flag=VALUE" or "--flag VALUE".
    if (!value.has_value()) {
      if (i + 1 >= args.size() || absl::StartsWith(args[i + 1], "--")) {
        *error = absl::StrCat(shown, " needs a value");
        return std::nullopt;
      }
      value = args[++i];
    }
    parsed.flags[name] = *value;
  }
  return parsed;
}

std::string ShortEnum(const std::string& name, const std::string& prefix) {
  return absl::StartsWith(name, prefix) ? name.substr(prefix.size()) : name;
}

namespace {

std::string State(v1::JobState s) { return ShortEnum(v1::JobState_Name(s), "JOB_STATE_"); }
std::string Phase(v1::Phase p) { return ShortEnum(v1::Phase_Name(p), "PHASE_"); }

std::string AccuracyText(const v1::Accuracy& a) {
  return absl::StrFormat("%d/%d (%.2f%%)", a.correct(), a.total(), 100.0 * a.top1());
}

}  // namespace

std::string JobLine(const v1::Job& job) {
  // A queued job has no phase yet.
  const std::string phase = job.phase() == v1::PHASE_UNSPECIFIED ? "-" : Phase(job.phase());
  return absl::StrCat(job.id(), "  ", State(job.state()), "  ", phase, "  ",
                      google::protobuf::util::TimeUtil::ToString(job.create_time()),
                      job.result().artifact_id().empty() ? "" : "  " + job.result().artifact_id());
}

std::string DatasetFormatOf(const std::string& path, const std::string& flag, const std::string& format,
                            std::string* error) {
  if (format == "cifar10" || format == "npy") return format;
  if (!format.empty()) {
    *error = absl::StrCat("--", flag, "_format must be cifar10 or npy, not \"", format, "\"");
    return "";
  }
  if (absl::EndsWith(path, ".bin")) return "cifar10";
  if (absl::EndsWith(path, ".npy")) return "npy";
  *error = absl::StrCat("--", flag, ": cannot tell the format of \"", path,
                        "\" (CIFAR-10 binary .bin or NumPy .npy); name it with --", flag, "_format=cifar10|npy");
  return "";
}

bool ParseModelTarget(const std::string& text, bool version_required, ModelTarget* target, std::string* error) {
  const size_t colon = text.find(':');
  target->name = text.substr(0, colon);
  target->version = colon == std::string::npos ? "" : text.substr(colon + 1);
  if (target->name.empty()) {
    *error = absl::StrCat("\"", text, "\": give NAME", version_required ? ":VERSION" : "[:VERSION]", ", e.g. resnet8:2");
    return false;
  }
  if (colon == std::string::npos) {
    if (!version_required) return true;
    *error = absl::StrCat("\"", text, "\": give NAME:VERSION, e.g. resnet8:2");
    return false;
  }
  // Digits, no leading zero ("01" is not version 1 to the server either).
  const std::string& v = target->version;
  const bool canonical = !v.empty() && v.size() <= 18 && v[0] >= '1' && v[0] <= '9' &&
                         std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!canonical) {
    *error = absl::StrCat("VERSION: \"", v, "\" is not 1, 2, ...", version_required ? "" : " (leave it out for the newest)");
    return false;
  }
  return true;
}

bool SetDataset(const CommandArgs& a, const std::string& prefix, v1::DatasetRef* ref, std::string* error) {
  // The path and the blob are one oneof: the second set would silently win.
  if (a.Has(prefix) && a.Has(prefix + "_blob")) {
    *error = absl::StrCat("--", prefix, " and --", prefix, "_blob name the same dataset: give one");
    return false;
  }
  if (a.Has(prefix)) ref->set_path(a.Get(prefix));
  if (a.Has(prefix + "_blob")) ref->set_blob_id(a.Get(prefix + "_blob"));
  // A blob's name is not known here: CIFAR-10 binary unless --FLAG_format says.
  const std::string format =
      a.Has(prefix) ? DatasetFormatOf(a.Get(prefix), prefix, a.Get(prefix + "_format"), error)
                    : DatasetFormatOf("", prefix, a.Get(prefix + "_format", "cifar10"), error);
  if (format.empty()) return false;
  ref->set_format(format == "npy" ? v1::DATASET_FORMAT_NPY : v1::DATASET_FORMAT_CIFAR10_BINARY);
  const std::string labels = prefix + "_labels", labels_blob = prefix + "_labels_blob";
  if (a.Has(labels) && a.Has(labels_blob)) {
    *error = absl::StrCat("--", labels, " and --", labels_blob, " name the same labels: give one");
    return false;
  }
  // The server ignores labels beside CIFAR-10 records, which carry their own:
  // a user giving them expects them to be used.
  for (const std::string& flag : {labels, labels_blob}) {
    if (!a.Has(flag)) continue;
    if (absl::Status status = CheckLabelsFlag("--" + flag, format); !status.ok()) {
      *error = std::string(status.message());
      return false;
    }
  }
  if (a.Has(labels)) ref->set_labels_path(a.Get(labels));
  if (a.Has(labels_blob)) ref->set_labels_blob_id(a.Get(labels_blob));
  return true;
}

std::string TrialText(const v1::TuningTrial& t) {
  std::string text = absl::StrFormat("%4d %-11s ", t.index() + 1, t.stage());
  if (!t.error().empty()) return absl::StrCat(text, "failed: ", t.error());
  absl::StrAppend(&text, t.has_top1() ? absl::StrFormat("%7.2f%%", 100 * t.top1()) : std::string("       -"),
                  absl::StrFormat(" %7.2f%% %8.2f %7.2f  ", 100 * t.top1_agreement(), t.output_sqnr_db(), t.seconds()),
                  t.activation_observer());
  if (t.fp32_layers_size() > 0) absl::StrAppend(&text, " | FP32: ", absl::StrJoin(t.fp32_layers(), ", "));
  if (t.meets_goal()) absl::StrAppend(&text, "  (meets goal)");
  return text;
}

// One trial as a line of its own (watch, submit --wait): each figure named,
// since no table header is above it.
std::string TrialLine(const v1::TuningTrial& t) {
  std::string text = absl::StrCat(t.stage(), ": ");
  if (!t.error().empty()) return absl::StrCat(text, "failed: ", t.error());
  absl::StrAppend(&text, "top-1 ", t.has_top1() ? absl::StrFormat("%.2f%%", 100 * t.top1()) : std::string("-"),
                  absl::StrFormat(", agreement %.2f%%, SQNR %.2f dB, %.2f s, ", 100 * t.top1_agreement(),
                                  t.output_sqnr_db(), t.seconds()),
                  "activations ", t.activation_observer());
  if (t.fp32_layers_size() > 0) absl::StrAppend(&text, ", FP32: ", absl::StrJoin(t.fp32_layers(), ", "));
  if (t.meets_goal()) absl::StrAppend(&text, " (meets goal)");
  return text;
}

std::string TuningText(const v1::TuningReport& t) {
  std::string text = absl::StrCat("\n  tuning: on ", t.judged_on());
  if (t.has_target_top1()) {
    absl::StrAppend(&text, absl::StrFormat(": FP32 top-1 %.2f%%, goal >= %.2f%%; %s (%s)", 100 * t.fp32_top1(),
                                           100 * t.target_top1(), t.met() ? "met" : "NOT met", t.stopped_because()));
  } else {
    absl::StrAppend(&text, ": closest to FP32 chosen");
  }
  absl::StrAppend(&text, absl::StrFormat(" in %d trials, %.1f s", t.trials_size(), t.seconds()));
  absl::StrAppend(&text, "\n    trial stage        top-1    agree  SQNR dB  time s  activation observer / FP32 layers");
  for (const v1::TuningTrial& trial : t.trials()) {
    absl::StrAppend(&text, "\n   ", trial.index() == t.best_trial() ? "*" : " ", TrialText(trial));
  }
  if (t.sensitivity_size() > 0) {
    absl::StrAppend(&text, "\n    sensitivity (agreement with FP32 gained, the layer alone in FP32):");
    for (const v1::LayerSensitivity& s : t.sensitivity()) {
      absl::StrAppend(&text, absl::StrFormat(" %s %+.2f", s.layer(), 100 * s.agreement_gain()));
    }
  }
  if (t.fp32_layers_size() > 0) absl::StrAppend(&text, "\n    kept in FP32: ", absl::StrJoin(t.fp32_layers(), ", "));
  return text;
}

std::string JobText(const v1::Job& job) {
  std::string text = absl::StrCat("job ", job.id(), "\n  state: ", State(job.state()),
                                  "\n  phase: ", Phase(job.phase()),
                                  "\n  attempts: ", job.attempt_count(), "\n  created: ",
                                  google::protobuf::util::TimeUtil::ToString(job.create_time()));
  if (!job.has_result()) return text;
  const v1::JobResult& r = job.result();
  if (!r.artifact_id().empty()) {
    absl::StrAppend(&text, "\n  artifact: ", r.artifact_id(), "\n  sha256: ", r.artifact_sha256(),
                    "\n  size_bytes: ", r.artifact_size_bytes(), "\n  kernel_engine: ",
                    r.kernel_engine(), "\n  qconfig: ", r.qconfig_description(),
                    "\n  calibration_samples: ", r.calibration_samples());
    if (r.model_version() > 0) {
      absl::StrAppend(&text, "\n  published: ", r.model_name(), " version ", r.model_version(),
                      r.model_version_deleted() ? " (since deleted)" : "");
    }
    std::vector<std::string> groups;
    for (const auto& g : r.fused_groups()) groups.push_back("[" + absl::StrJoin(g.modules(), ",") + "]");
    absl::StrAppend(&text, "\n  fused: ", absl::StrJoin(groups, " "));
    for (const auto& f : r.fallbacks()) {
      absl::StrAppend(&text, "\n  fallback: ", f.node(), " (", f.op(), "): ", f.reason());
    }
    for (const auto& l : r.layers()) {
      absl::StrAppend(&text, absl::StrFormat("\n  layer %-24s %-16s scale=%.6g zp=%d", l.name(),
                                             l.op(), l.output_scale(), l.output_zero_point()));
      if (l.has_sqnr_db()) absl::StrAppend(&text, absl::StrFormat(" sqnr=%.1fdB", l.sqnr_db()));
    }
    if (r.has_fp32_accuracy()) absl::StrAppend(&text, "\n  fp32_top1: ", AccuracyText(r.fp32_accuracy()));
    if (r.has_int8_accuracy()) absl::StrAppend(&text, "\n  int8_top1: ", AccuracyText(r.int8_accuracy()));
    if (r.has_kernel_choice()) {
      absl::StrAppend(&text, "\n  kernel_choice: ", r.kernel_choice().reason());
      for (const auto& c : r.kernel_choice().candidates()) {
        absl::StrAppend(&text, "\n    ", c.engine(), c.exact() ? " exact" : " NOT exact",
                        c.has_ms_per_image() ? absl::StrFormat(" %.3f ms/image", c.ms_per_image()) : "", ": ",
                        c.why());
      }
      absl::StrAppend(&text, "\n  cpu: ", r.cpu().model(), " (oneDNN isa ", r.cpu().onednn_isa(), ")");
      absl::StrAppend(&text, "\n  runs exactly with: ", r.requirements().kernel_engine(),
                      r.requirements().needs_non_saturating_u8s8() ? " on CPUs with VNNI or AMX (elsewhere qnnpack)"
                                                                   : " on any CPU");
    }
    if (r.has_quality() && r.quality().samples() > 0) {
      const v1::QualityReport& q = r.quality();
      absl::StrAppend(&text, "\n  quality: ", q.passed() ? "passed" : "FAILED", " on ", q.samples(),
                      " calibration images:");
      if (q.has_top1_agreement()) {
        absl::StrAppend(&text, absl::StrFormat(" top-1 agreement %.1f%%", 100 * q.top1_agreement()));
      }
      if (q.has_output_sqnr_db()) {
        absl::StrAppend(&text, q.has_top1_agreement() ? "," : "",
                        absl::StrFormat(" output SQNR %.1f dB", q.output_sqnr_db()));
      }
    }
  }
  if (r.has_tuning()) absl::StrAppend(&text, TuningText(r.tuning()));
  for (const std::string& advice : r.advice()) absl::StrAppend(&text, "\n  advice: ", advice);
  for (const std::string& warning : r.warnings()) absl::StrAppend(&text, "\n  WARNING: ", warning);
  for (const auto& t : r.phase_timings()) {
    absl::StrAppend(&text, absl::StrFormat("\n  time %-12s %.3fs", Phase(t.phase()), t.seconds()));
  }
  if (!r.error_message().empty()) {
    absl::StrAppend(&text, "\n  error: ", r.error_message(), " (code ", r.error_code(), ")");
  }
  return text;
}

std::string EventText(const v1::JobEvent& e) {
  switch (e.event_case()) {
    case v1::JobEvent::kSnapshot:
      return absl::StrCat(e.job_id(), " ", State(e.snapshot().state()),
                          e.snapshot().phase() == v1::PHASE_UNSPECIFIED ? "" : " " + Phase(e.snapshot().phase()));
    case v1::JobEvent::kStateChanged: return absl::StrCat(e.job_id(), " state ", State(e.state_changed()));
    case v1::JobEvent::kPhaseStarted: return absl::StrCat(e.job_id(), " phase ", Phase(e.phase_started()));
    case v1::JobEvent::kPhaseFinished:
      return absl::StrFormat("%s phase %s done in %.3fs", e.job_id(), Phase(e.phase_finished().phase()),
                             e.phase_finished().seconds());
    case v1::JobEvent::kCalibrationProgress:
      return absl::StrCat(e.job_id(), " calibration ", e.calibration_progress().batches_done(), "/",
                          e.calibration_progress().batches_total());
    case v1::JobEvent::kTuningProgress:
      return absl::StrCat(e.job_id(), " trial ", e.tuning_progress().trials_done(), "/",
                          e.tuning_progress().trial_budget(), " ", TrialLine(e.tuning_progress().trial()));
    case v1::JobEvent::kResult: {
      const v1::JobResult& r = e.result();
      if (!r.error_message().empty()) return absl::StrCat(e.job_id(), " error: ", r.error_message());
      std::string text = absl::StrCat(e.job_id(), " result artifact ", r.artifact_id(), " sha256 ",
                                      r.artifact_sha256(), " size ", r.artifact_size_bytes());
      if (r.model_version() > 0) {
        absl::StrAppend(&text, " published ", r.model_name(), " version ", r.model_version(),
                        r.model_version_deleted() ? " (since deleted)" : "");
      }
      if (r.has_int8_accuracy()) {
        absl::StrAppend(&text, " int8 ", AccuracyText(r.int8_accuracy()), " fp32 ",
                        AccuracyText(r.fp32_accuracy()));
      }
      return text;
    }
    default: return absl::StrCat(e.job_id(), " (unknown event)");
  }
}

std::string ArtifactText(const v1::Artifact& a) {
  std::string text = absl::StrCat(a.id(), "  sha256=", a.sha256(), "  size=", a.size_bytes(),
                                  "  job=", a.job_id(), "  engine=", a.kernel_engine());
  if (a.has_int8_accuracy()) absl::StrAppend(&text, "  int8=", AccuracyText(a.int8_accuracy()));
  return text;
}

namespace {

// A status that says the server is away for now, not that the call is
// wrong: UNAVAILABLE (down, restarting), CANCELLED (a stopping server
// cancels the calls that reach it), RESOURCE_EXHAUSTED (its RPC queue is
// full, or a watch fell too far behind). Worth asking again.
bool ServerAway(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::CANCELLED ||
         status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
}

std::string Percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? "-" : absl::StrFormat("%.2f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

std::string ClassName(const v1::EvaluationReport& r, int c) {
  return c < r.class_names_size() ? r.class_names(c) : absl::StrCat("class ", c);
}

}  // namespace

std::string EvaluationText(const v1::Evaluation& e) {
  const v1::EvaluationReport& r = e.report();
  const bool fp32 = r.has_fp32();
  const int classes = static_cast<int>(r.classes());
  std::string text = absl::StrFormat("evaluation %s: %s version %d on %d images (int8 on %s)\n\n", e.id(),
                                     e.model_name(), e.model_version(), r.samples(), r.kernel_engine());
  absl::StrAppend(&text, absl::StrFormat("%-10s %-22s %-22s %s\n", "", "TOP-1", "TOP-5", "IMAGES/S"));
  auto column = [&](const char* name, const v1::PrecisionEvaluation& p) {
    absl::StrAppend(&text, absl::StrFormat("%-10s %-22s %-22s %.0f\n", name,
                                           absl::StrFormat("%s (%d)", Percent(p.top1_correct(), r.samples()),
                                                           p.top1_correct()),
                                           absl::StrFormat("%s (%d)", Percent(p.top5_correct(), r.samples()),
                                                           p.top5_correct()),
                                           p.images_per_second()));
  };
  column("int8", r.int8());
  if (fp32) {
    column("fp32", r.fp32());
    absl::StrAppend(&text, absl::StrFormat("\nint8/FP32 top-1 agreement: %s (%d/%d); output SQNR: %s\n",
                                           Percent(r.agreement(), r.samples()), r.agreement(), r.samples(),
                                           r.has_output_sqnr_db() ? absl::StrFormat("%.1f dB", r.output_sqnr_db())
                                                                  : "identical scores"));
    if (r.first_disagreements_size() > 0) {
      absl::StrAppend(&text, "first disagreeing images: ", absl::StrJoin(r.first_disagreements(), ", "), "\n");
    }
  }
  // Columns as wide as their longest entry: class names and counts of any
  // length stay aligned.
  size_t name_width = 5;  // "CLASS"
  for (int c = 0; c < classes; ++c) name_width = std::max(name_width, ClassName(r, c).size());
  const int index_width = static_cast<int>(std::to_string(std::max(classes - 1, 0)).size());
  absl::StrAppend(&text, absl::StrFormat("\n%*s  %-*s %7s  %-11s %-11s %s\n", index_width, "#",
                                         static_cast<int>(name_width), "CLASS", "IMAGES", "INT8 TOP-1",
                                         fp32 ? "FP32 TOP-1" : "", fp32 ? "AGREEMENT" : ""));
  for (int c = 0; c < classes; ++c) {
    const uint64_t total = c < r.per_class_total_size() ? r.per_class_total(c) : 0;
    const uint64_t int8_correct = c < r.int8().per_class_correct_size() ? r.int8().per_class_correct(c) : 0;
    const uint64_t fp32_correct = c < r.fp32().per_class_correct_size() ? r.fp32().per_class_correct(c) : 0;
    std::string line = absl::StrFormat("%*d  %-*s %7d  %-11s %-11s %s", index_width, c, static_cast<int>(name_width),
                                       ClassName(r, c), total, Percent(int8_correct, total),
                                       fp32 ? Percent(fp32_correct, total) : "",
                                       fp32 && c < r.per_class_agreement_size()
                                           ? Percent(r.per_class_agreement(c), total)
                                           : "");
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&text, line, "\n");
  }
  auto grid = [&](const char* name, const v1::PrecisionEvaluation& p) {
    if (classes > kMaxGridClasses) {
      absl::StrAppend(&text, "\nconfusion matrix, ", name, ": ", classes, " x ", classes,
                      ", too wide to print (--json has it)\n");
      return;
    }
    uint64_t largest = 0;
    for (uint64_t count : p.confusion()) largest = std::max(largest, count);
    const int width =
        static_cast<int>(std::max<size_t>({std::to_string(largest).size(), static_cast<size_t>(index_width), 3}));
    absl::StrAppend(&text, "\nconfusion matrix, ", name, " (rows: true class, columns: predicted class #)\n",
                    absl::StrFormat("%*s  %-*s", index_width, "", static_cast<int>(name_width), ""));
    for (int c = 0; c < classes; ++c) absl::StrAppend(&text, absl::StrFormat(" %*d", width, c));
    absl::StrAppend(&text, "\n");
    for (int t = 0; t < classes; ++t) {
      absl::StrAppend(&text, absl::StrFormat("%*d  %-*s", index_width, t, static_cast<int>(name_width),
                                             ClassName(r, t)));
      for (int c = 0; c < classes; ++c) {
        const int i = t * classes + c;
        absl::StrAppend(&text, absl::StrFormat(" %*d", width, i < p.confusion_size() ? p.confusion(i) : 0));
      }
      absl::StrAppend(&text, "\n");
    }
  };
  grid("int8", r.int8());
  if (fp32) grid("fp32", r.fp32());
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

std::string JsonLine(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

int FollowJob(const CommandContext& context, const std::string& job_id, bool job_exists) {
  return FollowJob(context, job_id, absl::Minutes(5), job_exists);
}

int FollowJob(const CommandContext& context, const std::string& job_id, absl::Duration reconnect_window,
              bool job_exists) {
  auto stub = v1::QuantizationService::NewStub(context.channel);
  v1::JobEvent event;
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  // On a terminal, calibration progress rewrites one live line (phase,
  // batches done/total, elapsed, time left); piped, every event is a line.
  const bool terminal = context.out == &std::cout && ::isatty(STDOUT_FILENO) == 1 && !context.options.json;
  bool live_line = false;
  absl::Time calibration_start = absl::InfinitePast();
  // A lost watch (the server restarting, or gone without closing: see the
  // channel's keepalive) is resumed after the last event seen, for as long as
  // the server comes back within `reconnect_window` of the moment the watch
  // broke (a stream may stay quiet for long: a queued job, a long phase). A
  // watch that never got an event (a wrong address) fails at once.
  bool had_contact = job_exists;
  bool got_result = false;
  uint64_t last_sequence = 0;
  absl::Time broken_since = absl::InfiniteFuture();
  absl::Duration backoff = absl::Milliseconds(250);
  bool interruption_reported = false;
  // When the watched attempt started: a snapshot after a reconnect with
  // another start is the job run again from the start (its server crashed or
  // stopped meanwhile), whose earlier events this watch did not see.
  std::optional<std::pair<int64_t, int32_t>> attempt_started;
  while (!got_result) {
    grpc::ClientContext client_context;
    context.PrepareCall(client_context, /*with_deadline=*/false);
    // A job may queue and run for long: the watch gets a day, not --timeout.
    client_context.set_deadline(std::chrono::system_clock::now() + std::chrono::hours(24));
    v1::WatchJobRequest request;
    request.set_id(job_id);
    request.set_after_sequence(last_sequence);
    auto reader = stub->WatchJob(&client_context, request);
    while (reader->Read(&event)) {
      had_contact = true;
      broken_since = absl::InfiniteFuture();
      backoff = absl::Milliseconds(250);
      interruption_reported = false;
      last_sequence = std::max<uint64_t>(last_sequence, event.sequence());
      if (terminal && event.event_case() == v1::JobEvent::kCalibrationProgress) {
        const auto& p = event.calibration_progress();
        const absl::Time now = absl::Now();
        if (calibration_start == absl::InfinitePast()) calibration_start = now;
        const absl::Duration elapsed = now - calibration_start;
        std::string line = absl::StrCat(event.job_id(), " calibrating: batch ", p.batches_done(), "/",
                                        p.batches_total(), ", ",
                                        absl::FormatDuration(absl::Trunc(elapsed, absl::Milliseconds(100))));
        if (p.batches_done() > 0 && p.batches_total() > p.batches_done()) {
          absl::StrAppend(&line, ", about ",
                          absl::FormatDuration(absl::Trunc(
                              elapsed * (static_cast<double>(p.batches_total() - p.batches_done()) / p.batches_done()),
                              absl::Milliseconds(100))),
                          " left");
        }
        *context.out << "\r\033[K" << line << std::flush;
        live_line = true;
        continue;
      }
      // A state the snapshot (or the last event) already printed says nothing
      // new to a reader; --json keeps every event.
      if (!context.options.json && event.event_case() == v1::JobEvent::kStateChanged &&
          event.state_changed() == state) {
        continue;
      }
      if (live_line) *context.out << "\n";
      live_line = false;
      if (event.has_snapshot() && event.snapshot().has_start_time()) {
        const std::pair<int64_t, int32_t> started = {event.snapshot().start_time().seconds(),
                                                     event.snapshot().start_time().nanos()};
        if (attempt_started.has_value() && *attempt_started != started && !context.options.json) {
          *context.out << event.job_id() << " runs again from the start (attempt " << event.snapshot().attempt_count()
                       << "): its server stopped while it ran; this watch missed the new attempt's first events\n";
        }
        attempt_started = started;
      }
      *context.out << (context.options.json ? JsonLine(event) : EventText(event)) << "\n";
      context.out->flush();
      if (event.has_snapshot()) state = event.snapshot().state();
      if (event.event_case() == v1::JobEvent::kStateChanged) state = event.state_changed();
      // The last event: a stream that breaks after it is not watched again
      // (the server would replay the result).
      if (event.has_result()) got_result = true;
    }
    if (live_line) *context.out << "\n";
    live_line = false;
    grpc::Status status = reader->Finish();
    if (status.ok() || got_result) break;
    // (This client never cancels its watch; after RESOURCE_EXHAUSTED for a
    // stalled terminal it resumes from the last event it printed.)
    const bool server_away = ServerAway(status);
    if (broken_since == absl::InfiniteFuture()) broken_since = absl::Now();
    if (!server_away || !had_contact || absl::Now() - broken_since > reconnect_window) {
      return context.RpcFailed("watch", status);
    }
    if (!interruption_reported) {
      *context.err << "quantctl: the watch of " << job_id << " was interrupted (" << status.error_message()
                   << "); watching again once the server answers\n";
      interruption_reported = true;
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
  return state == v1::JOB_STATE_SUCCEEDED ? kExitOk : kExitFailure;
}

int FollowEvaluation(const CommandContext& context, v1::QuantizationService::StubInterface& stub,
                     v1::Evaluation evaluation, absl::Duration reconnect_window) {
  const bool terminal = context.out == &std::cout && ::isatty(STDOUT_FILENO) == 1 && !context.options.json;
  // Time left comes from the rate seen while following (an evaluation
  // followed again with --id may be far along); elapsed from its start, on
  // the server's clock where this one agrees.
  const absl::Time start = absl::Now();
  const uint64_t done_at_start = evaluation.samples_done();
  absl::Time created = start;
  if (evaluation.has_create_time()) {
    created = std::min(start, absl::FromUnixSeconds(evaluation.create_time().seconds()) +
                                  absl::Nanoseconds(evaluation.create_time().nanos()));
  }
  absl::Time last_line = start;
  absl::Time broken_since = absl::InfiniteFuture();
  absl::Duration backoff = absl::Milliseconds(250);
  if (!terminal && evaluation.state() == v1::EVALUATION_STATE_RUNNING) {
    // The id at once, for a script that may want to cancel it: on stdout
    // with the progress lines, or beside --json's output on stderr.
    std::ostream& to = context.options.json ? *context.err : *context.out;
    to << "evaluation " << evaluation.id() << " of " << evaluation.model_name() << " version "
       << evaluation.model_version() << " is running (quantctl cancel " << evaluation.id() << " stops it)"
       << std::endl;
  }
  while (evaluation.state() == v1::EVALUATION_STATE_RUNNING) {
    absl::SleepFor(absl::Milliseconds(200));  // poll interval
    grpc::ClientContext call;
    context.PrepareCall(call);
    v1::GetEvaluationRequest get;
    get.set_id(evaluation.id());
    v1::Evaluation polled;
    grpc::Status status = stub.GetEvaluation(&call, get, &polled);
    if (!status.ok()) {
      // As FollowJob, and a slow answer (each poll has --timeout_seconds;
      // the watch has a day).
      const bool server_away = ServerAway(status) || status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
      const absl::Time now = absl::Now();
      if (!server_away || (broken_since != absl::InfiniteFuture() && now - broken_since > reconnect_window)) {
        if (terminal) *context.out << "\n";
        return context.RpcFailed("get evaluation", status);
      }
      if (broken_since == absl::InfiniteFuture()) {
        broken_since = now;
        if (terminal) *context.out << "\n";
        *context.err << "quantctl: polling evaluation " << evaluation.id() << " failed (" << status.error_message()
                     << "); asking again once the server answers (if the server stopped, the evaluation "
                        "ended with it)\n";
      }
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(2));
      continue;
    }
    evaluation = std::move(polled);
    broken_since = absl::InfiniteFuture();
    backoff = absl::Milliseconds(250);
    const absl::Time now = absl::Now();
    const uint64_t done = evaluation.samples_done();
    const uint64_t total = evaluation.samples_total();
    // The id, so that a user who stops following can come back (--id).
    std::string line = absl::StrFormat("evaluation %s of %s version %d: %d/%d images, %s elapsed", evaluation.id(),
                                       evaluation.model_name(), evaluation.model_version(), done, total,
                                       absl::FormatDuration(absl::Trunc(now - created, absl::Seconds(1))));
    if (done > done_at_start && total > done) {
      const double per_image = absl::ToDoubleSeconds(now - start) / static_cast<double>(done - done_at_start);
      absl::StrAppend(&line, ", about ",
                      absl::FormatDuration(absl::Trunc(
                          absl::Seconds(per_image * static_cast<double>(total - done)), absl::Seconds(1))),
                      " left");
    }
    if (terminal) {
      *context.out << "\r\033[K" << line << std::flush;
    } else if (!context.options.json && now - last_line >= absl::Seconds(5)) {
      *context.out << line << std::endl;  // a pipe reads each line as it comes
      last_line = now;
    }
  }
  if (terminal) *context.out << "\r\033[K";
  if (evaluation.state() != v1::EVALUATION_STATE_SUCCEEDED) {
    if (context.options.json) context.Print(evaluation, "");
    *context.err << "quantctl: evaluation " << evaluation.id()
                 << (evaluation.state() == v1::EVALUATION_STATE_CANCELLED ? " was cancelled: " : " failed: ")
                 << evaluation.error_code() << ": " << evaluation.error() << "\n";
    return kExitFailure;
  }
  context.Print(evaluation, EvaluationText(evaluation));
  return kExitOk;
}

}  // namespace quantd::cli
