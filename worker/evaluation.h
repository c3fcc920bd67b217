#ifndef QUANTD_WORKER_EVALUATION_H_
#define QUANTD_WORKER_EVALUATION_H_

// Evaluation of a published model version on a labelled dataset: its int8
// artifact and its FP32 source side by side, through the same loaded models
// and preprocessing that serve inference. Top-1 and top-5, per-class
// accuracy, confusion matrices, int8/FP32 agreement (overall and per class),
// the int8 scores' SQNR against FP32's, the first disagreeing samples and
// each column's images per second.
//
// An evaluation runs asynchronously on its own thread; its record (state,
// progress, report) lives in the job store, so any server on the store can
// answer for it and a client's deadline never limits the size of the set.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/clock.h"
#include "worker/engine/data/dataset_spec.h"
#include "worker/engine/data/image_reader.h"
#include "worker/job_store.h"
#include "worker/model_repository.h"

namespace quantd::worker {

enum class EvaluationState { kRunning = 1, kSucceeded = 2, kFailed = 3, kCancelled = 4 };
const char* EvaluationStateName(EvaluationState state);

struct EvaluationSpec {
  std::string model_name;     // a published name (not its ".fp32" twin)
  int64_t model_version = 0;  // 0 = newest; resolved when the evaluation starts
  engine::DatasetSpec dataset;  // this server's files
  // The same files by the references the client knows them by, for errors
  // (no server layout in a message); not stored. Empty: `dataset`'s names.
  engine::DatasetSpec dataset_reference;
  int64_t max_samples = 0;  // 0 = all
  int64_t batch_size = 256;
  bool skip_fp32 = false;
  std::string owner;  // the caller's token name, who (with admins) may cancel it
};

struct PrecisionResult {
  int64_t top1_correct = 0;
  int64_t top5_correct = 0;  // top-min(5, classes)
  double seconds = 0;        // forward passes only
  std::vector<int64_t> per_class_correct;  // by true class
  std::vector<int64_t> confusion;          // classes x classes: row = true class, column = predicted
};

struct EvaluationReport {
  int64_t samples = 0;
  int64_t classes = 0;
  std::vector<std::string> class_names;  // when known (CIFAR-10), else empty
  std::vector<int64_t> per_class_total;
  std::string kernel_engine;  // what ran the int8 column
  PrecisionResult int8;
  std::optional<PrecisionResult> fp32;
  // With FP32: samples whose int8 and FP32 top-1 agree, overall and per true
  // class; the int8 scores' SQNR against FP32's over every sample (dB); the
  // first disagreeing sample indices (at most kMaxDisagreements).
  int64_t agreement = 0;
  std::vector<int64_t> per_class_agreement;
  double output_sqnr_db = 0;
  std::vector<int64_t> first_disagreements;
  static constexpr int kMaxDisagreements = 20;
};

struct Evaluation {
  std::string id;
  EvaluationSpec spec;
  EvaluationState state = EvaluationState::kRunning;
  absl::Time create_time = absl::InfinitePast();
  absl::Time update_time = absl::InfinitePast();  // progress is written at least this recently
  std::optional<absl::Time> finish_time;
  int64_t samples_done = 0;
  int64_t samples_total = 0;
  std::optional<EvaluationReport> report;  // SUCCEEDED
  absl::StatusCode error_code = absl::StatusCode::kOk;
  std::string error_message;  // FAILED
  // Which server runs it (its lease holder name, as for jobs) and which
  // process of that server: a record left RUNNING by an earlier process of
  // the same server is known to be dead at once. Empty in older records.
  std::string runner;
  std::string runner_incarnation;
};

// The newest succeeded evaluation with a report of each published version
// (name, version) among the store's LatestEvaluations; records that do not
// decode are skipped.
std::map<std::pair<std::string, int64_t>, Evaluation> NewestSucceededEvaluations(JobStore& store);

// The record as stored (JSON) and back.
std::string EncodeEvaluation(const Evaluation& evaluation);
absl::StatusOr<Evaluation> DecodeEvaluation(const std::string& text);

// Adds up batches of scores into a report. Pure arithmetic, no models.
class EvaluationAccumulator {
 public:
  // Per-class tables and a classes x classes confusion matrix per column: a
  // model with more classes (a client's upload can have millions) is refused
  // (FAILED_PRECONDITION naming it) before anything is sized from it.
  static constexpr int64_t kMaxClasses = 1000;
  static absl::Status CheckClasses(const std::string& model_name, int64_t classes);
  // A sample's label must name one of the model's classes.
  static absl::Status CheckLabel(int64_t sample, int64_t label, int64_t classes);

  EvaluationAccumulator(int64_t classes, bool with_fp32);
  // A batch starting at sample `first`: its labels, and its scores
  // ([labels.size(), classes] row-major) from each column (fp32 null
  // without FP32). INVALID_ARGUMENT for a label outside the classes.
  absl::Status Add(int64_t first, const std::vector<int64_t>& labels, const std::vector<float>& int8,
                   const std::vector<float>* fp32);
  void AddSeconds(double int8_seconds, double fp32_seconds);
  EvaluationReport Finish() const;

 private:
  EvaluationReport report_;
  double signal_ = 0;  // sum of FP32 scores squared
  double noise_ = 0;   // sum of (FP32 - int8) squared
};

class Evaluator {
 public:
  struct Options {
    int max_running = 2;
    // How often a running evaluation writes its progress to the store.
    absl::Duration progress_interval = absl::Milliseconds(500);
    // A RUNNING record that no server here runs and that was not updated
    // for this long belongs to a server that stopped: it reads as FAILED.
    absl::Duration stale_after = absl::Minutes(2);
    // This server's name on the store (its job lease holder name). A
    // RUNNING record of this runner that this process did not start was
    // left by an earlier process of this server, so it reads as FAILED at
    // once (only one process serves a data dir). Empty: staleness only.
    std::string runner;
    // LibTorch intra-op threads of an evaluation's thread; 0 = LibTorch's
    // default for a new thread. (Set to 1 here, the FP32 column ran at 421
    // images/s instead of 2646 on a 2-core EPYC: left at the default.)
    int intra_op_threads = 0;
    // Most bytes one batch of float32 images may take (quantd's
    // --max_batch_bytes); 0 = no limit.
    int64_t max_batch_bytes = 0;
    // Called with the final state of each evaluation run here, once its
    // record is written (metrics); may be empty.
    std::function<void(EvaluationState)> on_finished;
  };
  // `clock` gives the records' times; `interval_clock` (steady: a wall
  // clock stepped by NTP made negative or huge timings) the passes' seconds
  // and the progress interval.
  Evaluator(JobStore* store, ModelRepository* models, Clock* clock, const Options& options,
            Clock* interval_clock = Clock::Monotonic());
  ~Evaluator();
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  // Checks the request (NOT_FOUND for an unknown model or version,
  // INVALID_ARGUMENT naming the dataset field), stores the evaluation as
  // RUNNING and starts it. RESOURCE_EXHAUSTED when max_running already run
  // here; UNAVAILABLE after Shutdown.
  absl::StatusOr<Evaluation> Start(EvaluationSpec spec);
  // From the store, by any server on it. NOT_FOUND for an unknown id.
  absl::StatusOr<Evaluation> Get(const std::string& id);
  // Asks a running evaluation to stop, wherever it runs (through the store;
  // here at once): it ends CANCELLED at its next batch. Returns its record
  // as it was; NOT_FOUND for an unknown id, FAILED_PRECONDITION for one that
  // has finished.
  absl::StatusOr<Evaluation> Cancel(const std::string& id, const std::string& reason);
  // Stops running evaluations (stored as FAILED, UNAVAILABLE: the server
  // stopped) and joins their threads. Idempotent.
  void Shutdown();

 private:
  // `reader` is the dataset Start opened: read from the file opened then, so
  // a blob deleted after Start cannot take it away.
  void Run(Evaluation evaluation, std::shared_ptr<engine::ImageReader> reader, std::atomic<bool>* done);
  absl::StatusOr<EvaluationReport> Evaluate(Evaluation* evaluation, engine::ImageReader& reader);
  // False when a final record could not be written (after a few tries);
  // true, with the evaluation cancelled, when its version was deleted.
  bool Store(const Evaluation& evaluation);

  JobStore* const store_;
  ModelRepository* const models_;
  Clock* const clock_;
  Clock* const interval_clock_;
  const Options options_;
  // Tells this process's records from those of earlier ones of the same runner.
  const std::string incarnation_;
  std::atomic<bool> stopping_{false};
  absl::Mutex mu_;
  // Ids of the evaluations this server runs: never stale, however long a
  // model load or a batch takes.
  std::set<std::string> running_ ABSL_GUARDED_BY(mu_);
  // Cancels of evaluations running here: id -> reason.
  std::map<std::string, std::string> cancelled_ ABSL_GUARDED_BY(mu_);
  // The reason of a cancel of `id` asked here, if any.
  std::optional<std::string> CancelledHere(const std::string& id) ABSL_LOCKS_EXCLUDED(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Finished evaluations whose final record the store refused (a full disk):
  // answered from here, and written again at each Get until it takes.
  std::map<std::string, Evaluation> unstored_ ABSL_GUARDED_BY(mu_);
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  // Finished ones are joined at the next Start (or at Shutdown).
  std::vector<Worker> workers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_EVALUATION_H_
