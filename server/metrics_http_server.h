#ifndef QUANTD_SERVER_METRICS_HTTP_SERVER_H_
#define QUANTD_SERVER_METRICS_HTTP_SERVER_H_

// A minimal HTTP/1.1 server for GET /metrics (Prometheus text format), on
// one thread. It replaces prometheus::Exposer: civetweb (behind Exposer)
// starts its threads with a fixed 100 KiB stack, and once LibTorch and
// OpenBLAS are linked into the process their static TLS alone exceeds that,
// so pthread_create fails with EINVAL ("Cannot create threads").

#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace quantd {

class MetricsHttpServer {
 public:
  // Binds `host`:`port` (0 = any free port) and starts serving `registry`.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();  // stops within ~100 ms

  int port() const { return port_; }

 private:
  MetricsHttpServer(int fd, int port, std::shared_ptr<prometheus::Registry> registry);
  void Serve();
  void HandleConnection(int fd);

  const int listen_fd_;
  const int port_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_METRICS_HTTP_SERVER_H_
