#ifndef QUANTD_SERVER_METRICS_INTERCEPTOR_H_
#define QUANTD_SERVER_METRICS_INTERCEPTOR_H_

// A gRPC server interceptor that feeds ServerMetrics (and, at debug level,
// logs each RPC). Works with the callback API, unary and streaming alike.

#include <grpcpp/support/server_interceptor.h>

#include "server/metrics.h"

namespace quantd {

class MetricsInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // `metrics` must outlive the server.
  explicit MetricsInterceptorFactory(ServerMetrics* metrics) : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  ServerMetrics* metrics_;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_METRICS_INTERCEPTOR_H_
