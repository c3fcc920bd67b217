#include "worker/evaluation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "worker/dataset_json.h"
#include "worker/input_locator.h"
#include "worker/json_number.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/thread_name.h"
#include "worker/engine/data/batch_limits.h"
#include "worker/engine/data/image_reader.h"
#include "worker/engine/predicted_class.h"
#include "worker/engine/quantizer.h"

namespace quantd::worker {
namespace {

using nlohmann::json;

json EncodePrecision(const PrecisionResult& p) {
  return json{{"top1_correct", p.top1_correct},
              {"top5_correct", p.top5_correct},
              {"seconds", p.seconds},
              {"per_class_correct", p.per_class_correct},
              {"confusion", p.confusion}};
}

PrecisionResult DecodePrecision(const json& j) {
  PrecisionResult p;
  p.top1_correct = j.at("top1_correct").get<int64_t>();
  p.top5_correct = j.at("top5_correct").get<int64_t>();
  p.seconds = j.at("seconds").get<double>();
  p.per_class_correct = j.at("per_class_correct").get<std::vector<int64_t>>();
  p.confusion = j.at("confusion").get<std::vector<int64_t>>();
  return p;
}

// Whether `label` is among the k best scores, ranked as PredictedClass ranks them
// (on ties the lower index first).
bool InTopK(const float* scores, int64_t classes, int64_t label, int64_t k) {
  if (std::isnan(scores[label])) return false;
  int64_t better = 0;
  for (int64_t c = 0; c < classes; ++c) {
    if (scores[c] > scores[label] || (scores[c] == scores[label] && c < label)) ++better;
  }
  return better < k;
}

// A dataset whose samples are not the model's input; a .npy's shape depends
// on the layout it was read in, which the message names.
std::string SampleShapeMismatch(const std::vector<int64_t>& samples, const EvaluationSpec& spec,
                                const std::vector<int64_t>& input_shape) {
  std::string read_as;
  if (spec.dataset.format == engine::DatasetFormat::kNpy && !spec.dataset.layout.empty() && spec.dataset.layout != "auto") {
    read_as = absl::StrCat(" (read as ", spec.dataset.layout, ", the layout version ", spec.model_version,
                           " was calibrated in)");
  }
  return absl::StrCat("dataset: its samples are [", absl::StrJoin(samples, ", "), "]", read_as, ", not ",
                      spec.model_name, "'s input shape [", absl::StrJoin(input_shape, ", "), "] (as calibrated)");
}

// What the store selects LatestEvaluations by.
JobStore::EvaluationIndex IndexOf(const Evaluation& e) {
  JobStore::EvaluationIndex index;
  index.model_name = e.spec.model_name;
  index.model_version = e.spec.model_version;
  if (e.state == EvaluationState::kSucceeded && e.report.has_value()) {
    index.succeeded = e.finish_time.value_or(e.update_time);
    index.has_fp32 = e.report->fp32.has_value();
  }
  index.finished = e.state != EvaluationState::kRunning;
  return index;
}

}  // namespace

const char* EvaluationStateName(EvaluationState state) {
  switch (state) {
    case EvaluationState::kRunning: return "RUNNING";
    case EvaluationState::kSucceeded: return "SUCCEEDED";
    case EvaluationState::kFailed: return "FAILED";
    case EvaluationState::kCancelled: return "CANCELLED";
  }
  return "RUNNING";
}

std::string EncodeEvaluation(const Evaluation& e) {
  json j = {{"id", e.id},
            {"model_name", e.spec.model_name},
            {"model_version", e.spec.model_version},
            {"dataset", EncodeDataset(e.spec.dataset)},
            {"max_samples", e.spec.max_samples},
            {"batch_size", e.spec.batch_size},
            {"skip_fp32", e.spec.skip_fp32},
            {"owner", e.spec.owner},
            {"state", static_cast<int>(e.state)},
            {"create_us", absl::ToUnixMicros(e.create_time)},
            {"update_us", absl::ToUnixMicros(e.update_time)},
            {"samples_done", e.samples_done},
            {"samples_total", e.samples_total},
            {"error_code", static_cast<int>(e.error_code)},
            {"error_message", e.error_message}};
  if (!e.runner.empty()) {
    j["runner"] = e.runner;
    j["runner_incarnation"] = e.runner_incarnation;
  }
  if (e.finish_time.has_value()) j["finish_us"] = absl::ToUnixMicros(*e.finish_time);
  if (e.report.has_value()) {
    const EvaluationReport& r = *e.report;
    json report = {{"samples", r.samples},
                   {"classes", r.classes},
                   {"class_names", r.class_names},
                   {"per_class_total", r.per_class_total},
                   {"kernel_engine", r.kernel_engine},
                   {"int8", EncodePrecision(r.int8)},
                   {"agreement", r.agreement},
                   {"per_class_agreement", r.per_class_agreement},
                   {"output_sqnr_db", EncodeNumber(r.output_sqnr_db)},
                   {"first_disagreements", r.first_disagreements}};
    if (r.fp32.has_value()) report["fp32"] = EncodePrecision(*r.fp32);
    j["report"] = std::move(report);
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<Evaluation> DecodeEvaluation(const std::string& text) {
  try {
    const json j = json::parse(text);
    Evaluation e;
    e.id = j.at("id").get<std::string>();
    e.spec.model_name = j.at("model_name").get<std::string>();
    e.spec.model_version = j.at("model_version").get<int64_t>();
    e.spec.dataset = DecodeDataset(j.at("dataset"));
    e.spec.max_samples = j.at("max_samples").get<int64_t>();
    e.spec.batch_size = j.at("batch_size").get<int64_t>();
    e.spec.skip_fp32 = j.at("skip_fp32").get<bool>();
    if (j.contains("owner")) e.spec.owner = j.at("owner").get<std::string>();  // older records have none
    e.state = static_cast<EvaluationState>(j.at("state").get<int>());
    e.create_time = absl::FromUnixMicros(j.at("create_us").get<int64_t>());
    e.update_time = absl::FromUnixMicros(j.at("update_us").get<int64_t>());
    if (j.contains("finish_us")) e.finish_time = absl::FromUnixMicros(j.at("finish_us").get<int64_t>());
    e.samples_done = j.at("samples_done").get<int64_t>();
    e.samples_total = j.at("samples_total").get<int64_t>();
    e.error_code = static_cast<absl::StatusCode>(j.at("error_code").get<int>());
    e.error_message = j.at("error_message").get<std::string>();
    if (j.contains("runner")) {  // older records have none
      e.runner = j.at("runner").get<std::string>();
      e.runner_incarnation = j.at("runner_incarnation").get<std::string>();
    }
    if (j.contains("report")) {
      const json& r = j.at("report");
      EvaluationReport report;
      report.samples = r.at("samples").get<int64_t>();
      report.classes = r.at("classes").get<int64_t>();
      report.class_names = r.at("class_names").get<std::vector<std::string>>();
      report.per_class_total = r.at("per_class_total").get<std::vector<int64_t>>();
      report.kernel_engine = r.at("kernel_engine").get<std::string>();
      report.int8 = DecodePrecision(r.at("int8"));
      if (r.contains("fp32")) report.fp32 = DecodePrecision(r.at("fp32"));
      report.agreement = r.at("agreement").get<int64_t>();
      report.per_class_agreement = r.at("per_class_agreement").get<std::vector<int64_t>>();
      // null: +inf (identical scores), as records before EncodeNumber hold it.
      report.output_sqnr_db = DecodeNumber(r.at("output_sqnr_db"), std::numeric_limits<double>::infinity());
      report.first_disagreements = r.at("first_disagreements").get<std::vector<int64_t>>();
      e.report = std::move(report);
    }
    return e;
  } catch (const std::exception& error) {
    return absl::DataLossError(absl::StrCat("stored evaluation record: ", error.what()));
  }
}

std::map<std::pair<std::string, int64_t>, Evaluation> NewestSucceededEvaluations(JobStore& store) {
  std::map<std::pair<std::string, int64_t>, Evaluation> newest;
  absl::StatusOr<std::vector<std::string>> latest = store.LatestEvaluations();
  if (!latest.ok()) return newest;
  for (const std::string& record : *latest) {
    absl::StatusOr<Evaluation> e = DecodeEvaluation(record);
    if (!e.ok() || e->state != EvaluationState::kSucceeded || !e->report.has_value() || e->report->samples <= 0) {
      continue;
    }
    const absl::Time finished = e->finish_time.value_or(e->update_time);
    auto [it, added] = newest.try_emplace({e->spec.model_name, e->spec.model_version}, *e);
    if (!added && finished > it->second.finish_time.value_or(it->second.update_time)) it->second = *std::move(e);
  }
  return newest;
}

absl::Status EvaluationAccumulator::CheckClasses(const std::string& model_name, int64_t classes) {
  if (classes >= 1 && classes <= kMaxClasses) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("model_name: ", model_name.substr(0, 64), " outputs ", classes,
                                                    " classes; Evaluate takes models of 1 to ", kMaxClasses));
}

EvaluationAccumulator::EvaluationAccumulator(int64_t classes, bool with_fp32) {
  report_.classes = classes;
  const size_t n = static_cast<size_t>(classes);
  report_.per_class_total.assign(n, 0);
  report_.int8.per_class_correct.assign(n, 0);
  report_.int8.confusion.assign(n * n, 0);
  if (with_fp32) {
    report_.fp32 = report_.int8;
    report_.per_class_agreement.assign(n, 0);
  }
}

absl::Status EvaluationAccumulator::CheckLabel(int64_t sample, int64_t label, int64_t classes) {
  if (label >= 0 && label < classes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("dataset: the label of sample ", sample, " is ", label,
                                                 ", outside the model's ", classes, " classes"));
}

absl::Status EvaluationAccumulator::Add(int64_t first, const std::vector<int64_t>& labels,
                                        const std::vector<float>& int8, const std::vector<float>* fp32) {
  const int64_t classes = report_.classes;
  const int64_t n = static_cast<int64_t>(labels.size());
  if (static_cast<int64_t>(int8.size()) != n * classes ||
      (fp32 != nullptr && static_cast<int64_t>(fp32->size()) != n * classes)) {
    return absl::InternalError(absl::StrCat("a batch of ", n, " samples gave ", int8.size(), " int8 scores for ",
                                            classes, " classes"));
  }
  if (fp32 != nullptr && !report_.fp32.has_value()) return absl::InternalError("FP32 scores without an FP32 column");
  const int64_t k = std::min<int64_t>(5, classes);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t label = labels[i];
    QUANTD_RETURN_IF_ERROR(CheckLabel(first + i, label, classes));
    ++report_.per_class_total[label];
    const float* q = int8.data() + i * classes;
    const int64_t q_top = engine::PredictedClass(q, classes);
    // A row with no prediction has no cell: the row sums to fewer than its
    // class's samples.
    if (q_top != engine::kNoClass) ++report_.int8.confusion[label * classes + q_top];
    if (q_top == label) {
      ++report_.int8.top1_correct;
      ++report_.int8.per_class_correct[label];
    }
    if (InTopK(q, classes, label, k)) ++report_.int8.top5_correct;
    if (fp32 == nullptr) continue;
    const float* f = fp32->data() + i * classes;
    const int64_t f_top = engine::PredictedClass(f, classes);
    if (f_top != engine::kNoClass) ++report_.fp32->confusion[label * classes + f_top];
    if (f_top == label) {
      ++report_.fp32->top1_correct;
      ++report_.fp32->per_class_correct[label];
    }
    if (InTopK(f, classes, label, k)) ++report_.fp32->top5_correct;
    if (engine::SamePrediction(f_top, q_top)) {
      ++report_.agreement;
      ++report_.per_class_agreement[label];
    } else if (report_.first_disagreements.size() < EvaluationReport::kMaxDisagreements) {
      report_.first_disagreements.push_back(first + i);
    }
    for (int64_t c = 0; c < classes; ++c) {
      const double diff = static_cast<double>(f[c]) - static_cast<double>(q[c]);
      signal_ += static_cast<double>(f[c]) * static_cast<double>(f[c]);
      noise_ += diff * diff;
    }
  }
  report_.samples += n;
  return absl::OkStatus();
}

void EvaluationAccumulator::AddSeconds(double int8_seconds, double fp32_seconds) {
  report_.int8.seconds += int8_seconds;
  if (report_.fp32.has_value()) report_.fp32->seconds += fp32_seconds;
}

EvaluationReport EvaluationAccumulator::Finish() const {
  EvaluationReport report = report_;
  if (report.fp32.has_value()) {
    // Identical scores: +inf. FP32 scores all zero and int8's not: -inf (log
    // of 0). A score that is not finite: NaN.
    report.output_sqnr_db =
        noise_ == 0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(signal_ / noise_);
  }
  return report;
}

Evaluator::Evaluator(JobStore* store, ModelRepository* models, Clock* clock, const Options& options,
                     Clock* interval_clock)
    : store_(store),
      models_(models),
      clock_(clock),
      interval_clock_(interval_clock),
      options_(options),
      incarnation_(NewTimeOrderedId("process", absl::Now())) {}

Evaluator::~Evaluator() { Shutdown(); }

absl::StatusOr<Evaluation> Evaluator::Start(EvaluationSpec spec) {
  QUANTD_RETURN_IF_ERROR(ValidateModelName(spec.model_name, "model_name"));
  if (spec.batch_size < 1 || spec.batch_size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size: ", spec.batch_size, " is not in 1..4096"));
  }
  if (spec.max_samples < 0) return absl::InvalidArgumentError("max_samples: must be >= 0 (0 = all)");
  QUANTD_ASSIGN_OR_RETURN(ModelVersion version, store_->GetModelVersion(spec.model_name, spec.model_version));
  spec.model_version = version.version;
  const absl::StatusOr<Job> job = store_->Get(version.job_id);
  // A .npy is read in the layout the version was calibrated with (the
  // request has no layout of its own), not guessed from its shape.
  const bool npy = spec.dataset.format == engine::DatasetFormat::kNpy;
  if (npy && (spec.dataset.layout.empty() || spec.dataset.layout == "auto")) {
    if (job.ok() && !job->spec.calibration.layout.empty()) spec.dataset.layout = job->spec.calibration.layout;
  }
  absl::StatusOr<std::unique_ptr<engine::ImageReader>> reader = engine::ImageReader::Open(spec.dataset);
  if (!reader.ok()) {
    // The dataset's own code (NOT_FOUND, DATA_LOSS, RESOURCE_EXHAUSTED, ...),
    // said of the request's field.
    return absl::Status(reader.status().code(),
                        absl::StrCat("dataset: ",
                                     ReferToDataset(reader.status().message(), spec.dataset_reference, spec.dataset)));
  }
  // Refused here, not by the evaluation after the models have loaded.
  if (job.ok() && job->result.has_value()) {
    const std::vector<int64_t>& input_shape = job->result->report.input_shape;
    if (!input_shape.empty() && (*reader)->sample_shape() != input_shape) {
      return absl::InvalidArgumentError(SampleShapeMismatch((*reader)->sample_shape(), spec, input_shape));
    }
  }
  // No batch holds more than the images evaluated.
  const int64_t evaluated =
      spec.max_samples > 0 ? std::min(spec.max_samples, (*reader)->size()) : (*reader)->size();
  QUANTD_RETURN_IF_ERROR(engine::CheckBatchBytes((*reader)->sample_shape(), std::min(spec.batch_size, evaluated),
                                                 options_.max_batch_bytes, "batch_size"));
  Evaluation evaluation;
  evaluation.create_time = clock_->Now();
  evaluation.update_time = evaluation.create_time;
  evaluation.id = NewTimeOrderedId("eval", evaluation.create_time);
  evaluation.runner = options_.runner;
  evaluation.runner_incarnation = incarnation_;
  evaluation.spec = std::move(spec);
  evaluation.samples_total = (*reader)->size();
  if (evaluation.spec.max_samples > 0) {
    evaluation.samples_total = std::min(evaluation.samples_total, evaluation.spec.max_samples);
  }
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::UnavailableError("the server is shutting down");
  if (static_cast<int>(running_.size()) >= options_.max_running) {
    return absl::ResourceExhaustedError(
        absl::StrCat(running_.size(), " evaluations already run on this server; retry when one has finished"));
  }
  QUANTD_RETURN_IF_ERROR(store_->PutEvaluation(evaluation.id, EncodeEvaluation(evaluation), IndexOf(evaluation)));
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->done->load()) {
      it->thread.join();
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  workers_.reserve(workers_.size() + 1);  // so that the push_back below cannot throw
  auto done = std::make_shared<std::atomic<bool>>(false);
  running_.insert(evaluation.id);
  std::shared_ptr<engine::ImageReader> open_reader = *std::move(reader);
  std::thread thread;
  try {
    // The reader is moved in, so that Run's reset closes the file.
    thread = std::thread([this, evaluation, open_reader = std::move(open_reader), done]() mutable {
      NameThisThread("quantd-eval");
      Run(std::move(evaluation), std::move(open_reader), done.get());
    });
  } catch (const std::exception& error) {
    // No thread (the process's limit, or memory): not left RUNNING, holding
    // a slot; its record says so, from here if the store will not take it.
    running_.erase(evaluation.id);
    const absl::Status refused = absl::ResourceExhaustedError(
        absl::StrCat("cannot start a thread for the evaluation (", error.what(), "); retry later"));
    evaluation.state = EvaluationState::kFailed;
    evaluation.error_code = refused.code();
    evaluation.error_message = std::string(refused.message());
    evaluation.finish_time = evaluation.update_time = clock_->Now();
    if (!store_->PutEvaluation(evaluation.id, EncodeEvaluation(evaluation), IndexOf(evaluation)).ok()) {
      unstored_[evaluation.id] = evaluation;
    }
    return refused;
  }
  workers_.push_back(Worker{std::move(thread), done});
  return evaluation;
}

absl::StatusOr<Evaluation> Evaluator::Get(const std::string& id) {
  // Looked up before the record is read: Run stores the final record, then
  // leaves running_, so a record read after finding the evaluation not
  // running here is final, or another server's (or a stopped one's). In the
  // other order, one that finished in between read as stale.
  bool running_here = false;
  std::optional<Evaluation> unstored;
  {
    absl::MutexLock lock(&mu_);
    running_here = running_.count(id) > 0;
    if (auto it = unstored_.find(id); it != unstored_.end()) unstored = it->second;
  }
  if (unstored.has_value()) {
    // Written again; kept until it takes, or until its version is deleted
    // (and with it its evaluations).
    const absl::Status put = store_->PutEvaluation(id, EncodeEvaluation(*unstored), IndexOf(*unstored));
    if (put.ok() || absl::IsNotFound(put)) {
      absl::MutexLock lock(&mu_);
      unstored_.erase(id);
    }
    if (absl::IsNotFound(put)) {  // gone with its version: the store says so
      const absl::Status gone = store_->GetEvaluation(id).status();
      if (!gone.ok()) return gone;
    }
    return *unstored;
  }
  QUANTD_ASSIGN_OR_RETURN(std::string text, store_->GetEvaluation(id));
  QUANTD_ASSIGN_OR_RETURN(Evaluation evaluation, DecodeEvaluation(text));
  if (evaluation.state != EvaluationState::kRunning || running_here) return evaluation;
  if (!options_.runner.empty() && evaluation.runner == options_.runner &&
      evaluation.runner_incarnation != incarnation_) {
    // This server's, from before it restarted: written as FAILED, so that
    // every server on the store reads it so at once too.
    evaluation.state = EvaluationState::kFailed;
    evaluation.error_code = absl::StatusCode::kAborted;
    evaluation.error_message =
        absl::StrCat("the server running it restarted after ", evaluation.samples_done, " of ",
                     evaluation.samples_total, " samples; evaluate again");
    evaluation.finish_time = evaluation.update_time = clock_->Now();
    // Best effort: unwritten, it still reads so here, and stale elsewhere.
    store_->PutEvaluation(id, EncodeEvaluation(evaluation), IndexOf(evaluation)).IgnoreError();
    return evaluation;
  }
  if (clock_->Now() - evaluation.update_time > options_.stale_after) {
    evaluation.state = EvaluationState::kFailed;
    evaluation.error_code = absl::StatusCode::kAborted;
    // The same text at every read: it names the last progress, not the
    // time since, which grew with each poll.
    evaluation.error_message = absl::StrCat(
        "no progress since ", absl::FormatTime(absl::RFC3339_sec, evaluation.update_time, absl::UTCTimeZone()),
        " (more than ", absl::FormatDuration(options_.stale_after),
        "): the server running it stopped; evaluate again");
  }
  return evaluation;
}

absl::StatusOr<Evaluation> Evaluator::Cancel(const std::string& id, const std::string& reason) {
  QUANTD_ASSIGN_OR_RETURN(Evaluation evaluation, Get(id));
  if (evaluation.state != EvaluationState::kRunning) {
    return absl::FailedPreconditionError(
        absl::StrCat("evaluation ", id, " has already finished (", EvaluationStateName(evaluation.state), ")"));
  }
  bool here = false;
  {
    absl::MutexLock lock(&mu_);
    here = running_.count(id) > 0;
    if (here) cancelled_.emplace(id, reason);  // the first reason stays
  }
  // Through the store too: another server may run it, and this one may stop.
  const absl::Status requested = store_->RequestEvaluationCancel(id, reason);
  // Finished since Get looked (here too: its final record is stored).
  if (!requested.ok() && (!here || requested.code() == absl::StatusCode::kFailedPrecondition)) return requested;
  return evaluation;
}

std::optional<std::string> Evaluator::CancelledHere(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = cancelled_.find(id);
  if (it == cancelled_.end()) return std::nullopt;
  return it->second;
}

void Evaluator::Shutdown() {
  std::vector<Worker> workers;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    workers.swap(workers_);
  }
  stopping_ = true;
  for (Worker& worker : workers) worker.thread.join();
}

bool Evaluator::Store(const Evaluation& evaluation) {
  // A store that cannot write now (a full disk) loses only progress; the
  // final record is retried a few times.
  constexpr int kAttempts = 5;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    const absl::Status put = store_->PutEvaluation(evaluation.id, EncodeEvaluation(evaluation), IndexOf(evaluation));
    if (put.ok()) return true;
    if (absl::IsNotFound(put)) {
      // Its model version was deleted, and its evaluations with it: this
      // one stops and leaves no record (nothing to keep).
      absl::MutexLock lock(&mu_);
      cancelled_.emplace(evaluation.id, "its model version was deleted");
      return true;
    }
    if (evaluation.state == EvaluationState::kRunning) return true;
    // Real time: this waits for the disk, not for a test.
    if (attempt + 1 < kAttempts) absl::SleepFor(absl::Milliseconds(100 << attempt));
  }
  return false;
}

void Evaluator::Run(Evaluation evaluation, std::shared_ptr<engine::ImageReader> reader, std::atomic<bool>* done) {
  if (options_.intra_op_threads > 0) engine::SetIntraOpThreads(options_.intra_op_threads);
  absl::StatusOr<EvaluationReport> report;
  try {
    report = Evaluate(&evaluation, *reader);
  } catch (const std::exception& error) {  // e.g. bad_alloc: this evaluation fails, not the server
    report = absl::InternalError(absl::StrCat("evaluation stopped: ", error.what()));
  } catch (...) {
    report = absl::InternalError("evaluation stopped: an unknown exception");
  }
  reader.reset();  // the dataset's file is closed before the record says done
  evaluation.update_time = clock_->Now();
  evaluation.finish_time = evaluation.update_time;
  if (report.ok()) {
    evaluation.state = EvaluationState::kSucceeded;
    evaluation.report = std::move(*report);
  } else {
    const bool cancelled = report.status().code() == absl::StatusCode::kCancelled;
    evaluation.state = cancelled ? EvaluationState::kCancelled : EvaluationState::kFailed;
    evaluation.error_code = report.status().code();
    evaluation.error_message =
        ReferToDataset(report.status().message(), evaluation.spec.dataset_reference, evaluation.spec.dataset);
  }
  const bool stored = Store(evaluation);
  if (options_.on_finished) options_.on_finished(evaluation.state);
  absl::MutexLock lock(&mu_);
  cancelled_.erase(evaluation.id);
  // Not stored: kept here, or its report would be lost, and the stale
  // RUNNING record read as a stopped server's.
  if (!stored) unstored_[evaluation.id] = evaluation;
  running_.erase(evaluation.id);
  done->store(true);
}

absl::StatusOr<EvaluationReport> Evaluator::Evaluate(Evaluation* evaluation, engine::ImageReader& reader) {
  const EvaluationSpec& spec = evaluation->spec;
  const absl::Status stopped = absl::UnavailableError("the server stopped during the evaluation; evaluate again");
  // A cancel asked here, or (polled with each progress write) through the
  // store by any server.
  auto cancelled = [&]() -> std::optional<absl::Status> {
    std::optional<std::string> reason = CancelledHere(evaluation->id);
    if (!reason.has_value()) return std::nullopt;
    return absl::CancelledError(reason->empty() ? "cancelled" : absl::StrCat("cancelled: ", *reason));
  };
  auto poll_store = [&] {
    absl::StatusOr<std::optional<std::string>> requested = store_->CancelRequest(evaluation->id);
    if (requested.ok() && requested->has_value()) {
      absl::MutexLock lock(&mu_);
      cancelled_.emplace(evaluation->id, **requested);
    }
  };
  QUANTD_ASSIGN_OR_RETURN(std::shared_ptr<const LoadedModel> int8, models_->Load(spec.model_name, spec.model_version));
  // A load may take a while (another caller's, a large model): other servers
  // reading the record must not take this one for stopped meanwhile.
  evaluation->update_time = clock_->Now();
  Store(*evaluation);
  std::shared_ptr<const LoadedModel> fp32;
  if (!spec.skip_fp32) {
    if (std::optional<absl::Status> status = cancelled()) return *status;
    if (stopping_) return stopped;
    QUANTD_ASSIGN_OR_RETURN(fp32, models_->Load(absl::StrCat(spec.model_name, ".fp32"), spec.model_version));
  }
  if (reader.sample_shape() != int8->info().input_shape) {
    return absl::InvalidArgumentError(SampleShapeMismatch(reader.sample_shape(), spec, int8->info().input_shape));
  }
  if (int8->info().output_shape.size() != 1) {
    return absl::FailedPreconditionError(absl::StrCat(spec.model_name, " does not output [N, classes] scores"));
  }
  const int64_t classes = int8->info().output_shape[0];
  QUANTD_RETURN_IF_ERROR(EvaluationAccumulator::CheckClasses(spec.model_name, classes));
  if (fp32 != nullptr && fp32->info().output_shape != int8->info().output_shape) {
    return absl::FailedPreconditionError(absl::StrCat(
        spec.model_name, ".fp32 (version ", spec.model_version, "'s FP32 source) outputs [",
        absl::StrJoin(fp32->info().output_shape, ", "), "] scores per image, its int8 model [",
        absl::StrJoin(int8->info().output_shape, ", "), "]: evaluate with skip_fp32"));
  }
  // The labels are in memory: one outside the model's classes is found
  // before the passes, not after them.
  const std::vector<int64_t> labels = reader.Labels(evaluation->samples_total);
  for (size_t i = 0; i < labels.size(); ++i) {
    QUANTD_RETURN_IF_ERROR(EvaluationAccumulator::CheckLabel(static_cast<int64_t>(i), labels[i], classes));
  }
  EvaluationAccumulator accumulator(classes, fp32 != nullptr);
  // Loaded: other servers reading the record count the first batch from now.
  absl::Time last_write = interval_clock_->Now();
  evaluation->update_time = clock_->Now();
  Store(*evaluation);
  poll_store();  // asked elsewhere while the models loaded
  for (int64_t start = 0; start < evaluation->samples_total; start += spec.batch_size) {
    // A cancel first: one asked just before a shutdown is the outcome.
    if (std::optional<absl::Status> status = cancelled()) return *status;
    if (stopping_) return stopped;
    const int64_t count = std::min(spec.batch_size, evaluation->samples_total - start);
    QUANTD_ASSIGN_OR_RETURN(engine::ImageBatch batch, reader.Read(start, count));
    // Copied before the clock starts: each column's time is its pass only.
    std::vector<float> int8_pixels = fp32 != nullptr ? batch.pixels : std::move(batch.pixels);
    const absl::Time t0 = interval_clock_->Now();
    QUANTD_ASSIGN_OR_RETURN(engine::ServingOutput q, int8->Run(std::move(int8_pixels), batch.count));
    const absl::Time t1 = interval_clock_->Now();
    std::optional<engine::ServingOutput> f;
    if (fp32 != nullptr) {
      if (std::optional<absl::Status> status = cancelled()) return *status;
      if (stopping_) return stopped;
      QUANTD_ASSIGN_OR_RETURN(f, fp32->Run(std::move(batch.pixels), batch.count));
    }
    const absl::Time t2 = interval_clock_->Now();
    accumulator.AddSeconds(absl::ToDoubleSeconds(t1 - t0), absl::ToDoubleSeconds(t2 - t1));
    QUANTD_RETURN_IF_ERROR(accumulator.Add(start, batch.labels, q.values, f.has_value() ? &f->values : nullptr));
    evaluation->samples_done = start + count;
    if (t2 - last_write >= options_.progress_interval) {
      evaluation->update_time = clock_->Now();
      Store(*evaluation);
      last_write = t2;
      poll_store();
    }
  }
  EvaluationReport report = accumulator.Finish();
  // Names come with the calibration set's format (CIFAR-10's ten): a model
  // with another number of outputs has none.
  if (static_cast<int64_t>(int8->info().labels.size()) == classes) report.class_names = int8->info().labels;
  report.kernel_engine = int8->info().kernel_engine;
  return report;
}

}  // namespace quantd::worker
