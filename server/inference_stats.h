#ifndef QUANTD_SERVER_INFERENCE_STATS_H_
#define QUANTD_SERVER_INFERENCE_STATS_H_

// Prometheus metrics of inference (after Triton's nv_inference_* families):
// requests by model, version and status code, samples inferred, executed
// passes (samples / passes is the average batch size), queue and compute
// time, and the model cache. Label values are bounded by what is published:
// model names with their ".fp32" twins, and version numbers.

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "inference/grpc_predict_v2.pb.h"
#include "worker/dynamic_batcher.h"
#include "worker/job.h"

namespace quantd {

class InferenceStats {
 public:
  explicit InferenceStats(prometheus::Registry& registry);

  // One finished ModelInfer. `ran` is set when it reached a forward pass.
  void RecordRequest(const std::string& model, int64_t version, absl::StatusCode code, int64_t samples,
                     const worker::BatchStats* ran);
  // After a model is loaded or evicted.
  void SetCache(int models, int64_t bytes);
  // How many requests have been recorded: taken before the published
  // versions are listed, for KeepOnly.
  uint64_t Mark() const;
  // Drops the series and statistics of versions no longer published (and
  // of names with none left), so deleted versions do not stay exported for
  // the life of the process. `published`: the job store's versions, listed
  // after `mark` (Mark()): a version with requests since then stays (it was
  // published after the listing, and its counts restarted from zero).
  void KeepOnly(const std::vector<worker::ModelVersion>& published, uint64_t mark);
  // Triton's ModelStatistics for `name` ("" = all) and `version` (0 = all),
  // from this process's requests, sorted by name and version.
  void Fill(const std::string& name, int64_t version, inference::ModelStatisticsResponse* response) const;

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& samples_;
  prometheus::Family<prometheus::Counter>& executions_;
  prometheus::Family<prometheus::Histogram>& queue_seconds_;
  prometheus::Family<prometheus::Histogram>& compute_seconds_;
  prometheus::Gauge& models_loaded_;
  prometheus::Gauge& cache_bytes_;

  struct Duration {
    uint64_t count = 0;
    uint64_t ns = 0;
  };
  struct PerVersion {
    uint64_t last_recorded = 0;  // recorded_ at its last request
    uint64_t last_inference_ms = 0;
    uint64_t inference_count = 0;
    uint64_t execution_count = 0;
    Duration success, fail, queue, compute;
    std::map<int64_t, Duration> batches;  // executions by batch size
    // Its Prometheus series, looked up once (not per request).
    prometheus::Counter* samples = nullptr;
    prometheus::Counter* executions = nullptr;
    prometheus::Histogram* queue_seconds = nullptr;
    prometheus::Histogram* compute_seconds = nullptr;
    std::map<absl::StatusCode, prometheus::Counter*> requests;
  };
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, int64_t>, PerVersion> versions_ ABSL_GUARDED_BY(mu_);
  uint64_t recorded_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_INFERENCE_STATS_H_
