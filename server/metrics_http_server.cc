#include "server/metrics_http_server.h"

#include <httplib.h>
#include <prometheus/text_serializer.h>

#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/audit_log.h"

namespace quantd {
namespace {

int HttpStatusFor(absl::StatusCode code) {
  return code == absl::StatusCode::kPermissionDenied ? 403 : 401;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const Options& options, std::vector<std::shared_ptr<prometheus::Collectable>> sources) {
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->sources_ = std::move(sources);
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!options.tls_client_ca_file.empty() && options.tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--metrics_tls_client_ca needs --tls_cert and --tls_key (mTLS is TLS first)");
  }
  if (!options.tls_cert_file.empty()) {
    // With a client CA, httplib makes OpenSSL require a client certificate
    // it signed (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT).
    auto https = std::make_unique<httplib::SSLServer>(
        options.tls_cert_file.c_str(), options.tls_key_file.c_str(),
        options.tls_client_ca_file.empty() ? nullptr : options.tls_client_ca_file.c_str());
    if (!https->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tls_cert/--tls_key", options.tls_client_ca_file.empty() ? "" : "/--metrics_tls_client_ca",
          ": cannot load ", options.tls_cert_file, " and ", options.tls_key_file,
          options.tls_client_ca_file.empty() ? "" : absl::StrCat(" and ", options.tls_client_ca_file), " for HTTPS"));
    }
    server->http_ = std::move(https);
    server->tls_ = true;
  } else {
    server->http_ = std::make_unique<httplib::Server>();
  }
  httplib::Server& http = *server->http_;
  // A silent client holds one pool thread for at most this long.
  http.set_read_timeout(5, 0);
  http.set_write_timeout(5, 0);
  Authenticator* auth = options.auth;
  const std::vector<std::shared_ptr<prometheus::Collectable>>* collected = &server->sources_;
  std::function<void()> before_scrape = options.before_scrape;
  http.Get("/metrics", [auth, collected, before_scrape](const httplib::Request& request, httplib::Response& response) {
    if (auth != nullptr) {
      absl::StatusOr<Principal> caller = auth->Authorize(request.get_header_value("Authorization"), Role::kRead,
                                                         "GET /metrics");
      if (!caller.ok()) {
        AuditLine("", request.remote_addr, "GET /metrics", "", caller.status());
        response.status = HttpStatusFor(caller.status().code());
        if (response.status == 401) response.set_header("WWW-Authenticate", "Bearer");
        response.set_content(absl::StrCat(caller.status().message(), "\n"), "text/plain");
        return;
      }
    }
    if (before_scrape) before_scrape();
    std::vector<prometheus::MetricFamily> families;
    for (const std::shared_ptr<prometheus::Collectable>& source : *collected) {
      std::vector<prometheus::MetricFamily> more = source->Collect();
      families.insert(families.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
    }
    response.set_content(prometheus::TextSerializer().Serialize(families),
                         "text/plain; version=0.0.4; charset=utf-8");
  });
  http.set_payload_max_length(options.max_body_bytes);
  if (InferenceRest* rest = options.inference; rest != nullptr) {
    auto serve = [rest](const httplib::Request& request, httplib::Response& response) {
      HttpCall call;
      call.method = request.method;
      call.path = request.path;
      call.authorization = request.get_header_value("Authorization");
      call.inference_header_length = request.get_header_value("Inference-Header-Content-Length");
      call.body = request.body;
      call.remote = request.remote_addr;
      HttpReply reply = rest->Handle(call);
      response.status = reply.status;
      for (const auto& [name, value] : reply.headers) response.set_header(name, value);
      response.set_content(std::move(reply.body), reply.content_type.c_str());
    };
    http.Get(R"(/v2(/.*)?)", serve);
    http.Post(R"(/v2(/.*)?)", serve);
    // Any other method gets the protocol's JSON error (405, with Allow).
    http.Put(R"(/v2(/.*)?)", serve);
    http.Delete(R"(/v2(/.*)?)", serve);
    http.Patch(R"(/v2(/.*)?)", serve);
  }
  http.set_error_handler([](const httplib::Request& request, httplib::Response& response) {
    if (response.status == 404 && response.body.empty()) {
      response.set_content("not found; try /metrics or /v2\n", "text/plain");
    }
  });
  std::string host = options.host;
  if (!host.empty() && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (options.port == 0) {
    server->port_ = http.bind_to_any_port(host.c_str());
  } else if (http.bind_to_port(host.c_str(), options.port)) {
    server->port_ = options.port;
  }
  if (server->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", options.host, ":", options.port,
                                               " (address in use or not local?)"));
  }
  server->thread_ = std::thread([&http] { http.listen_after_bind(); });
  // stop() is a no-op until the accept loop runs: wait for it, so that a
  // server destroyed right away cannot leave the loop (and the join) hanging.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!http.is_running() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (http_ != nullptr) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace quantd
