#ifndef QUANTD_SERVER_METRICS_H_
#define QUANTD_SERVER_METRICS_H_

// Prometheus metrics of the gRPC edge. Label values are bounded: methods come
// from a fixed list given at construction (anything else is "other"), codes
// from the 17 gRPC status code names.

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

namespace quantd {

class ServerMetrics {
 public:
  struct Options {
    // Value of quantd_build_info{version=...}.
    std::string version;
    // Labels of quantd_cpu_info (model, onednn_isa, vnni, ...): one series.
    std::vector<std::pair<std::string, std::string>> cpu_labels;
    // Full gRPC method names ("/pkg.Service/Method") that get their own
    // label value.
    std::vector<std::string> methods;
  };

  explicit ServerMetrics(const Options& options);
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // What /metrics serves.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The label for a full method name: "pkg.Service/Method" if known,
  // "other" otherwise.
  std::string MethodLabel(absl::string_view full_method) const;

  // Counts one finished RPC and observes its duration.
  void RecordRpc(absl::string_view full_method, grpc::StatusCode code,
                 double seconds);
  void RpcStarted();
  void RpcFinished();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& durations_;
  prometheus::Gauge& in_flight_;
  // full method name -> label value; fixed after construction.
  absl::flat_hash_map<std::string, std::string> method_labels_;
  // label value -> histogram; fixed after construction.
  absl::flat_hash_map<std::string, prometheus::Histogram*> histograms_;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_METRICS_H_
