#include "server/metrics.h"

#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "server/status_conversion.h"

namespace quantd {
namespace {

constexpr char kOtherMethod[] = "other";

// From 0.5 ms (health checks, int8 batch-1 inference) to 5 min (a job
// submission never takes that long; uploads of large datasets might).
prometheus::Histogram::BucketBoundaries DurationBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
          0.25,   0.5,   1,      2.5,   5,    10,    30,    60, 300};
}

}  // namespace

ServerMetrics::ServerMetrics(const Options& options)
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("quantd_grpc_requests_total")
                    .Help("Finished gRPC requests by method and status code.")
                    .Register(*registry_)),
      durations_(prometheus::BuildHistogram()
                     .Name("quantd_grpc_request_duration_seconds")
                     .Help("Time from receiving a gRPC request to sending its status.")
                     .Register(*registry_)),
      in_flight_(prometheus::BuildGauge()
                     .Name("quantd_grpc_requests_in_flight")
                     .Help("gRPC requests currently being handled.")
                     .Register(*registry_)
                     .Add({})) {
  prometheus::BuildGauge()
      .Name("quantd_build_info")
      .Help("Always 1; labels describe the running build.")
      .Register(*registry_)
      .Add({{"version", options.version}})
      .Set(1);
  if (!options.cpu_labels.empty()) {
    std::map<std::string, std::string> labels(options.cpu_labels.begin(), options.cpu_labels.end());
    prometheus::BuildGauge()
        .Name("quantd_cpu_info")
        .Help("Always 1; labels describe the CPU as int8 kernels see it (measured at start).")
        .Register(*registry_)
        .Add(labels)
        .Set(1);
  }
  std::vector<std::string> labels;
  for (const std::string& method : options.methods) {
    absl::string_view label = method;
    if (absl::StartsWith(label, "/")) label.remove_prefix(1);
    method_labels_.emplace(method, std::string(label));
    labels.emplace_back(label);
  }
  labels.emplace_back(kOtherMethod);
  for (const std::string& label : labels) {
    histograms_.emplace(label,
                        &durations_.Add({{"method", label}}, DurationBuckets()));
  }
}

std::string ServerMetrics::MethodLabel(absl::string_view full_method) const {
  auto it = method_labels_.find(full_method);
  return it == method_labels_.end() ? std::string(kOtherMethod) : it->second;
}

void ServerMetrics::RecordRpc(absl::string_view full_method,
                              grpc::StatusCode code, double seconds) {
  std::string method = MethodLabel(full_method);
  requests_.Add({{"method", method}, {"code", GrpcStatusCodeName(code)}})
      .Increment();
  histograms_.at(method)->Observe(seconds);
}

void ServerMetrics::RpcStarted() { in_flight_.Increment(); }

void ServerMetrics::RpcFinished() { in_flight_.Decrement(); }

}  // namespace quantd
