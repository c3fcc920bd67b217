#include "server/inference_stats.h"

#include <set>

#include "absl/time/clock.h"

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
  absl::MutexLock lock(&mu_);
  PerVersion& stats = versions_[{model, version}];
  stats.last_recorded = ++recorded_;
  const std::string v = version > 0 ? std::to_string(version) : "";
  prometheus::Counter*& requests = stats.requests[code];
  if (requests == nullptr) {
    requests = &requests_.Add({{"model", model}, {"version", v}, {"code", absl::StatusCodeToString(code)}});
  }
  requests->Increment();
  stats.last_inference_ms = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
  const uint64_t ns =
      ran == nullptr ? 0 : static_cast<uint64_t>(absl::ToInt64Nanoseconds(ran->queue_time + ran->compute_time));
  Duration& outcome = code == absl::StatusCode::kOk ? stats.success : stats.fail;
  ++outcome.count;
  outcome.ns += ns;
  if (ran == nullptr) return;
  // The pass series exist once a request of this version reached a pass.
  if (stats.samples == nullptr) {
    stats.samples = &samples_.Add({{"model", model}, {"version", v}});
    stats.executions = &executions_.Add({{"model", model}, {"version", v}});
    stats.queue_seconds = &queue_seconds_.Add({{"model", model}}, InferenceBuckets());
    stats.compute_seconds = &compute_seconds_.Add({{"model", model}}, InferenceBuckets());
  }
  ++stats.queue.count;
  stats.queue.ns += static_cast<uint64_t>(absl::ToInt64Nanoseconds(ran->queue_time));
  ++stats.compute.count;
  stats.compute.ns += static_cast<uint64_t>(absl::ToInt64Nanoseconds(ran->compute_time));
  stats.queue_seconds->Observe(absl::ToDoubleSeconds(ran->queue_time));
  stats.compute_seconds->Observe(absl::ToDoubleSeconds(ran->compute_time));
  if (code == absl::StatusCode::kOk) {
    stats.inference_count += static_cast<uint64_t>(samples);
    stats.samples->Increment(static_cast<double>(samples));
  }
  if (ran->first_of_pass) {
    ++stats.execution_count;
    stats.executions->Increment();
    Duration& batch = stats.batches[ran->executed_batch_size];
    ++batch.count;
    batch.ns += static_cast<uint64_t>(absl::ToInt64Nanoseconds(ran->compute_time));
  }
}

uint64_t InferenceStats::Mark() const {
  absl::MutexLock lock(&mu_);
  return recorded_;
}

void InferenceStats::KeepOnly(const std::vector<worker::ModelVersion>& published, uint64_t mark) {
  std::set<std::pair<std::string, int64_t>> versions;
  std::set<std::string> names = {""};  // requests that named no published model stay counted
  for (const worker::ModelVersion& v : published) {
    for (const std::string& name : {v.name, v.name + ".fp32"}) {
      versions.insert({name, v.version});
      names.insert(name);
    }
  }
  absl::MutexLock lock(&mu_);
  std::set<prometheus::Histogram*> orphaned_queue, orphaned_compute;
  for (auto it = versions_.begin(); it != versions_.end();) {
    const auto& [model, version] = it->first;
    const bool kept = model.empty() || it->second.last_recorded > mark ||
                      (version == 0 ? names.count(model) > 0 : versions.count(it->first) > 0);
    if (kept) {
      ++it;
      continue;
    }
    PerVersion& stats = it->second;
    for (auto& [code, counter] : stats.requests) requests_.Remove(counter);
    if (stats.samples != nullptr) samples_.Remove(stats.samples);
    if (stats.executions != nullptr) executions_.Remove(stats.executions);
    // Queue and compute histograms are per model: they go with its last version.
    if (names.count(model) == 0 && stats.queue_seconds != nullptr) {
      orphaned_queue.insert(stats.queue_seconds);
      orphaned_compute.insert(stats.compute_seconds);
    }
    it = versions_.erase(it);
  }
  for (prometheus::Histogram* histogram : orphaned_queue) queue_seconds_.Remove(histogram);
  for (prometheus::Histogram* histogram : orphaned_compute) compute_seconds_.Remove(histogram);
}

void InferenceStats::SetCache(int models, int64_t bytes) {
  models_loaded_.Set(models);
  cache_bytes_.Set(static_cast<double>(bytes));
}

void InferenceStats::Fill(const std::string& name, int64_t version,
                          inference::ModelStatisticsResponse* response) const {
  auto copy = [](const Duration& from, inference::StatisticDuration* to) {
    to->set_count(from.count);
    to->set_ns(from.ns);
  };
  absl::MutexLock lock(&mu_);
  for (const auto& [key, stats] : versions_) {
    const auto& [model, number] = key;
    if (model.empty() || number == 0) continue;  // requests that named no published version
    if ((!name.empty() && model != name) || (version != 0 && number != version)) continue;
    inference::ModelStatistics* out = response->add_model_stats();
    out->set_name(model);
    out->set_version(std::to_string(number));
    out->set_last_inference(stats.last_inference_ms);
    out->set_inference_count(stats.inference_count);
    out->set_execution_count(stats.execution_count);
    copy(stats.success, out->mutable_inference_stats()->mutable_success());
    copy(stats.fail, out->mutable_inference_stats()->mutable_fail());
    copy(stats.queue, out->mutable_inference_stats()->mutable_queue());
    copy(stats.compute, out->mutable_inference_stats()->mutable_compute_infer());
    for (const auto& [size, batch] : stats.batches) {
      inference::InferBatchStatistics* b = out->add_batch_stats();
      b->set_batch_size(static_cast<uint64_t>(size));
      copy(batch, b->mutable_compute_infer());
    }
  }
}

}  // namespace quantd
