// quantctl eval NAME[:VERSION] --data=PATH ...: Evaluate, then GetEvaluation
// until it ends, with a live progress line on a terminal; prints the report
// as tables (the confusion matrix as a grid) or, with --json, the message.

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/job_format.h"

namespace quantd::cli {
namespace {

constexpr char kUsage[] =
    "usage: eval NAME[:VERSION] (--data=PATH | --data_blob=ID) [--data_format=cifar10|npy] [--data_labels=PATH] "
    "[--max_samples=N] [--batch_size=N] [--skip_fp32]\n"
    "       eval --id=EVALUATION_ID (follow or show one already started)";

std::string Percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? "-" : absl::StrFormat("%.2f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

std::string ClassName(const v1::EvaluationReport& r, int c) {
  return c < r.class_names_size() ? r.class_names(c) : absl::StrCat("class ", c);
}

std::string ReportText(const v1::Evaluation& e) {
  const v1::EvaluationReport& r = e.report();
  const bool fp32 = r.has_fp32();
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
  absl::StrAppend(&text, absl::StrFormat("\n%-12s %7s  %-11s %-11s %s\n", "CLASS", "IMAGES", "INT8 TOP-1",
                                         fp32 ? "FP32 TOP-1" : "", fp32 ? "AGREEMENT" : ""));
  for (int c = 0; c < static_cast<int>(r.classes()); ++c) {
    const uint64_t total = c < r.per_class_total_size() ? r.per_class_total(c) : 0;
    absl::StrAppend(
        &text, absl::StrFormat("%-12s %7d  %-11s %-11s %s\n", ClassName(r, c), total,
                               Percent(r.int8().per_class_correct(c), total),
                               fp32 ? Percent(r.fp32().per_class_correct(c), total) : "",
                               fp32 && c < r.per_class_agreement_size() ? Percent(r.per_class_agreement(c), total)
                                                                         : ""));
  }
  auto grid = [&](const char* name, const v1::PrecisionEvaluation& p) {
    absl::StrAppend(&text, "\nconfusion matrix, ", name, " (rows: true class, columns: predicted)\n",
                    absl::StrFormat("%-12s", ""));
    for (int c = 0; c < static_cast<int>(r.classes()); ++c) {
      absl::StrAppend(&text, absl::StrFormat(" %6s", ClassName(r, c).substr(0, 6)));
    }
    absl::StrAppend(&text, "\n");
    for (int t = 0; t < static_cast<int>(r.classes()); ++t) {
      absl::StrAppend(&text, absl::StrFormat("%-12s", ClassName(r, t)));
      for (int c = 0; c < static_cast<int>(r.classes()); ++c) {
        const int i = t * static_cast<int>(r.classes()) + c;
        absl::StrAppend(&text, absl::StrFormat(" %6d", i < p.confusion_size() ? p.confusion(i) : 0));
      }
      absl::StrAppend(&text, "\n");
    }
  };
  grid("int8", r.int8());
  if (fp32) grid("fp32", r.fp32());
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

// Follows `evaluation` until it ends (a live line on a terminal, a plain one
// every few seconds on a pipe), then prints its report.
int FollowEvaluation(const CommandContext& context, v1::QuantizationService::Stub& stub, v1::Evaluation evaluation) {
  const bool terminal = context.out == &std::cout && ::isatty(STDOUT_FILENO) == 1 && !context.options.json;
  const absl::Time start = absl::Now();
  absl::Time last_line = start;
  while (evaluation.state() == v1::EVALUATION_STATE_RUNNING) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // poll interval
    grpc::ClientContext call;
    context.PrepareCall(call);
    v1::GetEvaluationRequest get;
    get.set_id(evaluation.id());
    grpc::Status status = stub.GetEvaluation(&call, get, &evaluation);
    if (!status.ok()) return context.RpcFailed("get evaluation", status);
    const absl::Duration elapsed = absl::Now() - start;
    const double done = static_cast<double>(evaluation.samples_done());
    const double total = static_cast<double>(evaluation.samples_total());
    // The id, so that a user who stops following can come back (--id).
    std::string line = absl::StrFormat("evaluation %s of %s version %d: %d/%d images, %s elapsed", evaluation.id(),
                                       evaluation.model_name(), evaluation.model_version(), evaluation.samples_done(),
                                       evaluation.samples_total(),
                                       absl::FormatDuration(absl::Trunc(elapsed, absl::Seconds(1))));
    if (done > 0 && total > done) {
      absl::StrAppend(&line, ", about ",
                      absl::FormatDuration(absl::Trunc(elapsed * ((total - done) / done), absl::Seconds(1))),
                      " left");
    }
    if (terminal) {
      *context.out << "\r\033[K" << line << std::flush;
    } else if (!context.options.json && absl::Now() - last_line >= absl::Seconds(5)) {
      *context.out << line << "\n";
      last_line = absl::Now();
    }
  }
  if (terminal) *context.out << "\r\033[K";
  if (evaluation.state() != v1::EVALUATION_STATE_SUCCEEDED) {
    if (context.options.json) context.Print(evaluation, "");
    *context.err << "quantctl: evaluation " << evaluation.id() << " failed: " << evaluation.error_code() << ": "
                 << evaluation.error() << "\n";
    return kExitFailure;
  }
  context.Print(evaluation, ReportText(evaluation));
  return kExitOk;
}

}  // namespace

int RunEval(const CommandContext& context, const std::vector<std::string>& args) {
  std::string error;
  auto a = ParseCommandArgs(
      args, {"data", "data_blob", "data_format", "data_labels", "max_samples", "batch_size", "id"}, &error,
      {"skip_fp32"});
  if (a.has_value() && a->Has("id")) {
    for (const char* other : {"data", "data_blob", "data_format", "data_labels", "max_samples", "batch_size",
                              "skip_fp32"}) {
      if (a->Has(other)) {
        error = absl::StrCat("--id follows an evaluation already started; --", other, " is not for it");
      }
    }
    if (error.empty()) error = PositionalCountError(*a, 0, 0, "");
    if (error.empty() && a->Get("id").empty()) error = "--id: an evaluation id (eval-...)";
  } else if (a.has_value()) {
    error = PositionalCountError(*a, 1, 1, "NAME[:VERSION]");
  }
  ModelTarget target;
  if (error.empty() && a.has_value() && !a->Has("id")) {
    (void)ParseModelTarget(a->positional[0], /*version_required=*/false, &target, &error);
  }
  if (!error.empty()) {
    return context.UsageError(absl::StrCat("eval: ", error, "\n", kUsage));
  }
  auto stub = v1::QuantizationService::NewStub(context.channel);
  if (a->Has("id")) {
    v1::Evaluation evaluation;
    grpc::ClientContext call;
    context.PrepareCall(call);
    v1::GetEvaluationRequest get;
    get.set_id(a->Get("id"));
    grpc::Status status = stub->GetEvaluation(&call, get, &evaluation);
    if (!status.ok()) return context.RpcFailed("get evaluation", status);
    return FollowEvaluation(context, *stub, std::move(evaluation));
  }
  v1::EvaluateRequest request;
  request.set_model_name(target.name);
  request.set_model_version(target.version);
  if (!a->Has("data") && !a->Has("data_blob")) {
    return context.UsageError(absl::StrCat("eval: --data or --data_blob required\n", kUsage));
  }
  if (!SetDataset(*a, "data", request.mutable_dataset(), &error)) return context.UsageError("eval: " + error);
  for (const char* flag : {"max_samples", "batch_size"}) {
    if (!a->Has(flag)) continue;
    uint32_t value = 0;
    // --max_samples=0 is all of them; a batch of 0 is a mistake (as in submit).
    if (!absl::SimpleAtoi(a->Get(flag), &value) || (value == 0 && std::string(flag) == "batch_size")) {
      return context.UsageError(absl::StrCat("eval: --", flag, ": \"", a->Get(flag), "\" is not a count"));
    }
    if (std::string(flag) == "max_samples") request.set_max_samples(value);
    if (std::string(flag) == "batch_size") request.set_batch_size(value);
  }
  request.set_skip_fp32(a->IsOn("skip_fp32"));

  v1::Evaluation evaluation;
  {
    grpc::ClientContext call;
    context.PrepareCall(call);
    grpc::Status status = stub->Evaluate(&call, request, &evaluation);
    if (!status.ok()) return context.RpcFailed("evaluate", status);
  }
  return FollowEvaluation(context, *stub, std::move(evaluation));
}

}  // namespace quantd::cli
