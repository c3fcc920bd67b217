#ifndef QUANTD_SERVER_METRICS_HTTP_SERVER_H_
#define QUANTD_SERVER_METRICS_HTTP_SERVER_H_

// The HTTP edge: GET /metrics (Prometheus text format), optionally behind a
// bearer token, and the Open Inference Protocol's REST endpoints under /v2
// (InferenceRest), on cpp-httplib, over HTTPS when given a certificate. Not
// prometheus::Exposer: civetweb (behind it) starts its threads with a fixed
// 100 KiB stack, and with LibTorch and OpenBLAS linked in their static TLS
// alone exceeds that, so pthread_create fails ("Cannot create threads").

#include <prometheus/collectable.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "server/auth.h"
#include "server/inference_rest.h"
#include "server/paced_http_server.h"

namespace quantd {

class MetricsHttpServer {
 public:
  struct Options {
    std::string host;
    int port = 0;  // 0 = any free port
    // Both set: HTTPS with this PEM certificate chain and key.
    std::string tls_cert_file;
    std::string tls_key_file;
    // With TLS: clients must present a certificate this PEM CA signed (mTLS).
    std::string tls_client_ca_file;
    // With TLS: the three files are read again for new connections once they
    // change, looked at no more often than this.
    absl::Duration tls_reload_interval = absl::Seconds(60);
    // Set: /metrics needs a token with the read role.
    Authenticator* auth = nullptr;
    // Set: runs before each /metrics scrape (gauges read from the stores).
    std::function<void()> before_scrape;
    // Set, with TLS: given the loaded certificate's expiry (Unix seconds)
    // at each scrape, after the scrape's own connection looked at the files.
    prometheus::Gauge* tls_certificate_expiry = nullptr;
    // Set: /v2 serves the Open Inference Protocol's REST endpoints.
    InferenceRest* inference = nullptr;
    // Largest request body (an inference request's tensors).
    size_t max_body_bytes = size_t{64} << 20;
    // How fast a request must arrive, and the connection pool's size.
    ConnectionPace pace;
  };
  // /metrics serves what `sources` collect, in order (a registry, the
  // process metrics).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const Options& options, std::vector<std::shared_ptr<prometheus::Collectable>> sources);
  ~MetricsHttpServer();

  int port() const { return port_; }
  bool tls() const { return tls_; }

 private:
  MetricsHttpServer() = default;

  PacedHttpServer paced_;
  httplib::Server* http_ = nullptr;  // paced_'s
  std::vector<std::shared_ptr<prometheus::Collectable>> sources_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};  // set before the listener is stopped on purpose
  int port_ = 0;
  bool tls_ = false;
};

}  // namespace quantd

#endif  // QUANTD_SERVER_METRICS_HTTP_SERVER_H_
