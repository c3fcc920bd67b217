#include "server/inference_stats.h"

namespace quantd {
namespace {

// From 50 us (an int8 batch-1 pass waits little) to 10 s.
prometheus::Histogram::BucketBoundaries InferenceBuckets() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,    10};
}

}  // namespace

InferenceStats::InferenceStats(prometheus::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name("quantd_inference_requests_total")
                    .Help("Finished ModelInfer requests (gRPC and REST) by model, version and status code.")
                    .Register(registry)),
      samples_(prometheus::BuildCounter()
                   .Name("quantd_inference_samples_total")
                   .Help("Samples (images) inferred successfully, by model and version.")
                   .Register(registry)),
      executions_(prometheus::BuildCounter()
                      .Name("quantd_inference_executions_total")
                      .Help("Forward passes run, by model and version; samples / executions is the average "
                            "dynamic batch size.")
                      .Register(registry)),
      queue_seconds_(prometheus::BuildHistogram()
                         .Name("quantd_inference_queue_duration_seconds")
                         .Help("Time a request waited in its model's queue before its pass started.")
                         .Register(registry)),
      compute_seconds_(prometheus::BuildHistogram()
                           .Name("quantd_inference_compute_duration_seconds")
                           .Help("Time of the forward pass a request was part of.")
                           .Register(registry)),
      models_loaded_(prometheus::BuildGauge()
                         .Name("quantd_inference_models_loaded")
                         .Help("Model versions loaded in the model cache.")
                         .Register(registry)
                         .Add({})),
      cache_bytes_(prometheus::BuildGauge()
                       .Name("quantd_inference_model_cache_bytes")
                       .Help("Bytes the loaded models count against --model_cache_bytes.")
                       .Register(registry)
                       .Add({})) {}

void InferenceStats::RecordRequest(const std::string& model, int64_t version, absl::StatusCode code,
                                   int64_t samples, const worker::BatchStats* ran) {
  const std::string v = version > 0 ? std::to_string(version) : "";
  requests_.Add({{"model", model}, {"version", v}, {"code", absl::StatusCodeToString(code)}}).Increment();
  if (ran == nullptr) return;
  if (ran->first_of_pass) executions_.Add({{"model", model}, {"version", v}}).Increment();
  if (code == absl::StatusCode::kOk) samples_.Add({{"model", model}, {"version", v}}).Increment(samples);
  queue_seconds_.Add({{"model", model}}, InferenceBuckets()).Observe(absl::ToDoubleSeconds(ran->queue_time));
  compute_seconds_.Add({{"model", model}}, InferenceBuckets()).Observe(absl::ToDoubleSeconds(ran->compute_time));
}

void InferenceStats::SetCache(int models, int64_t bytes) {
  models_loaded_.Set(models);
  cache_bytes_.Set(static_cast<double>(bytes));
}

}  // namespace quantd
