#ifndef QUANTD_SERVER_JOB_STATS_H_
#define QUANTD_SERVER_JOB_STATS_H_

// Prometheus metrics of quantization jobs. Counters are this process's
// (submitted here, finished by its workers, by final state; phase durations;
// calibration images); gauges are read from the job store at each scrape, so
// with several replicas on one store each reports the same shared figures
// (aggregate them with max, not sum): jobs by state, each published
// version's accuracy (newest Evaluate with FP32, else its job's), and the data
// dir's bytes.

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <map>
#include <string>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "worker/data_quota.h"
#include "worker/job_events.h"
#include "worker/job_store.h"

namespace quantd {

class JobStats : public worker::JobWatcher {
 public:
  explicit JobStats(prometheus::Registry& registry);

  // From the event hub: new jobs, terminal states, phase timings, calibration
  // progress.
  void OnJobEvent(const worker::JobEvent& event) override;
  // Reads the gauges' figures from the store (and the data dir's size, when
  // `quota` is given). Called before each scrape.
  void Refresh(worker::JobStore& jobs, const worker::DataQuota* quota);
  // Counts what the worker pool recovered since the last call (`total` is
  // the pool's running total): jobs put back in the queue, and jobs failed
  // after their last attempt, which are also finished jobs.
  void CountRecovered(const worker::JobStore::RecoveryCounts& total);
  // An evaluation run here ended in `state` ("SUCCEEDED", "FAILED" or
  // "CANCELLED", as EvaluationStateName gives it).
  void CountEvaluationFinished(absl::string_view state);

 private:
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Histogram>& phase_seconds_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Gauge>& accuracy_;
  prometheus::Family<prometheus::Gauge>& accuracy_samples_;
  prometheus::Counter& submitted_;
  prometheus::Counter& calibration_samples_;
  prometheus::Family<prometheus::Counter>& tuning_trials_;
  prometheus::Gauge& data_dir_bytes_;
  prometheus::Gauge& data_dir_limit_bytes_;
  prometheus::Family<prometheus::Counter>& recovered_;
  prometheus::Counter& recovered_requeued_;
  prometheus::Counter& recovered_failed_;
  prometheus::Counter& recovered_cancelled_;
  prometheus::Family<prometheus::Counter>& evaluations_finished_;

  absl::Mutex mu_;
  // Calibration samples seen so far per running job (progress is cumulative).
  absl::flat_hash_map<std::string, int64_t> calibrated_ ABSL_GUARDED_BY(mu_);
  worker::JobStore::RecoveryCounts recovered_counted_ ABSL_GUARDED_BY(mu_);
  // Gauges by up to three label values, and those now exported of a family.
  using GaugeValues = std::map<std::tuple<std::string, std::string, std::string>, double>;
  using GaugeIndex = std::map<std::tuple<std::string, std::string, std::string>, prometheus::Gauge*>;
  // Sets `family` to `values` (labelled by `label_names`; a third name ""
  // for two labels), removing the gauges in `exported` that have none.
  static void SetGauges(prometheus::Family<prometheus::Gauge>& family, const GaugeValues& values,
                        const std::array<std::string, 3>& label_names, GaugeIndex* exported);
  // The accuracy gauges now exported, to drop those of deleted versions.
  GaugeIndex accuracy_gauges_ ABSL_GUARDED_BY(mu_);
  GaugeIndex accuracy_samples_gauges_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quantd

#endif  // QUANTD_SERVER_JOB_STATS_H_
