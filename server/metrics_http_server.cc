#include "server/metrics_http_server.h"

#include <httplib.h>
#include <sys/socket.h>
#include <nlohmann/json.hpp>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <exception>
#include <fstream>
#include <iterator>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/audit_log.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/thread_name.h"

namespace quantd {
namespace {

int HttpStatusFor(absl::StatusCode code) {
  return code == absl::StatusCode::kPermissionDenied ? 403 : 401;
}

// An error as the client of `path` reads one: the protocol's JSON under /v2,
// a line of text elsewhere. Before the path is known (a request line too
// long to parse) it may be /v2's client: JSON too.
void SetError(const httplib::Request& request, httplib::Response& response, int status, const std::string& message) {
  response.status = status;
  if (request.path.empty() || absl::StartsWith(request.path, "/v2")) {
    response.set_content(nlohmann::json{{"error", message}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                         "application/json");
  } else {
    response.set_content(absl::StrCat(message, "\n"), "text/plain");
  }
}

// httplib 0.11 holds --max_body_bytes only against a Content-Length: a
// chunked body, one read to the end of the connection, or a compressed one
// (inflated without bound) would be read whole before any handler or
// authentication runs. Bodies must therefore come plain, with their length.
// Checked before the body is read; what it leaves unread ends the connection
// within httplib's keep-alive count.
httplib::Server::HandlerResponse RefuseUnboundedBodies(const httplib::Request& request, httplib::Response& response,
                                                       size_t max_body_bytes) {
  // The methods httplib reads a body for even without a length (to the end
  // of the connection), DELETE among them.
  const bool takes_body = request.method == "POST" || request.method == "PUT" || request.method == "PATCH" ||
                          request.method == "PRI" || request.method == "DELETE" ||
                          request.has_header("Content-Length") || request.has_header("Transfer-Encoding");
  if (!takes_body) return httplib::Server::HandlerResponse::Unhandled;
  // The body stays unread: the connection ends after the answer.
  auto refuse = [&](int status, const std::string& message) {
    SetError(request, response, status, message);
    response.set_header("Connection", "close");
    EndConnectionAfterThisResponse();
    return httplib::Server::HandlerResponse::Handled;
  };
  if (request.method == "DELETE" && !request.has_header("Transfer-Encoding") &&
      !request.has_header("Content-Length")) {
    // A 405 says what the resource takes (HTTP requires Allow on it).
    const std::string allowed =
        request.path == "/metrics" ? "GET" : InferenceRest::AllowedMethodFor(request.path);
    if (allowed.empty()) return refuse(404, "not found; try /metrics or /v2");
    response.set_header("Allow", allowed);
    return refuse(405, absl::StrCat("no resource here takes DELETE; ", request.path.substr(0, 256), " takes ",
                                    allowed));
  }
  if (request.has_header("Transfer-Encoding") || !request.has_header("Content-Length")) {
    return refuse(411,
                  "send the body with a Content-Length header (chunked bodies and bodies without a length are refused)");
  }
  // One length, in digits only: httplib frames the body by the first
  // Content-Length and absl::SimpleAtoi takes "+2". A proxy in front that
  // framed it otherwise (by the last one, or refusing "+2") would pass on
  // bytes that quantd then reads as a further request: smuggled past it.
  if (const size_t count = request.get_header_value_count("Content-Length"); count != 1) {
    return refuse(400, absl::StrCat("Content-Length: given ", count, " times; send it once"));
  }
  // Answered at once: httplib would first read (and drop) the whole body.
  const std::string& declared = request.get_header_value("Content-Length");
  uint64_t length = 0;
  if (declared.empty() || !std::all_of(declared.begin(), declared.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(declared, &length)) {
    return refuse(400, "Content-Length: not a number of bytes (digits only)");
  }
  if (max_body_bytes > 0 && length > max_body_bytes) {
    return refuse(413, absl::StrCat("the body of ", length, " bytes is larger than the server accepts (",
                                    max_body_bytes, ")"));
  }
  const std::string encoding = absl::AsciiStrToLower(request.get_header_value("Content-Encoding"));
  if (!encoding.empty() && encoding != "identity") {
    return refuse(415, absl::StrCat("Content-Encoding \"", encoding.substr(0, 40),
                                    "\" is refused: send the body uncompressed"));
  }
  return httplib::Server::HandlerResponse::Unhandled;
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
    absl::StatusOr<PacedHttpServer> https = MakePacedHttpsServer(
        options.pace, TlsFiles{options.tls_cert_file, options.tls_key_file, options.tls_client_ca_file},
        options.tls_reload_interval);
    if (!https.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tls_cert/--tls_key", options.tls_client_ca_file.empty() ? "" : "/--metrics_tls_client_ca", ": ",
          https.status().message(), " for HTTPS"));
    }
    server->paced_ = *std::move(https);
    server->tls_ = true;
  } else {
    server->paced_ = MakePacedHttpServer(options.pace);
  }
  server->http_ = server->paced_.http.get();
  httplib::Server& http = *server->http_;
  // cpp-httplib sets SO_REUSEPORT on Linux, so a second quantd on a busy
  // port would bind too and take half of its requests and scrapes. Only
  // SO_REUSEADDR (a restart binds over connections in TIME_WAIT), as gRPC's
  // port has (server.cc).
  // TCP_NODELAY: httplib writes a response's headers and body apart, and
  // with Nagle's algorithm the body then waited for the client's delayed ACK:
  // every request after the first on a kept-alive connection took 40 ms.
  // Accepted sockets inherit it from the listening one on Linux.
  http.set_tcp_nodelay(true);
  auto listening = std::make_shared<int>(-1);
  http.set_socket_options([listening](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    *listening = sock;  // the last one tried is the one bound
  });
  // httplib closes a connection after 5 requests by default: pooled clients
  // then reconnect all the time.
  http.set_keep_alive_max_count(1000);
  // One read or write waits at most this long (and a request, the pace's
  // budget in all).
  http.set_read_timeout(5, 0);
  http.set_write_timeout(5, 0);
  Authenticator* auth = options.auth;
  const std::vector<std::shared_ptr<prometheus::Collectable>>* collected = &server->sources_;
  std::function<void()> before_scrape = options.before_scrape;
  std::shared_ptr<TlsIdentity> identity = server->paced_.identity;
  prometheus::Gauge* expiry = identity != nullptr ? options.tls_certificate_expiry : nullptr;
  http.Get("/metrics", [auth, collected, before_scrape, identity, expiry](const httplib::Request& request,
                                                                         httplib::Response& response) {
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
    if (expiry != nullptr) expiry->Set(static_cast<double>(absl::ToUnixSeconds(identity->certificate_expiry())));
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
      // Moved, not copied: a body may be --max_body_bytes, and httplib reads
      // nothing of the request's body after its handler.
      call.body = std::move(const_cast<httplib::Request&>(request).body);
      call.remote = request.remote_addr;
      call.client_gone = ClientGoneCheck();
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
    http.Options(R"(/v2(/.*)?)", serve);
  }
  http.set_pre_routing_handler([max_body_bytes = options.max_body_bytes, rest = options.inference](
                                    const httplib::Request& request, httplib::Response& response) {
    if (RefuseUnboundedBodies(request, response, max_body_bytes) == httplib::Server::HandlerResponse::Handled) {
      return httplib::Server::HandlerResponse::Handled;
    }
    uint64_t length = 0;  // RefuseUnboundedBodies has checked that a Content-Length is a number
    if (!absl::SimpleAtoi(request.get_header_value("Content-Length"), &length) || length == 0) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    auto refuse = [&](int status, const std::string& message) {
      SetError(request, response, status, message);
      response.set_header("Connection", "close");  // the body stays unread
      EndConnectionAfterThisResponse();
      return httplib::Server::HandlerResponse::Handled;
    };
    // httplib reads a body for these methods only; for any other its bytes
    // would be parsed as the next request on the connection (a request
    // smuggled past a proxy that took them for the body).
    if (request.method != "POST" && request.method != "PUT" && request.method != "PATCH" &&
        request.method != "DELETE") {
      return refuse(400, absl::StrCat(request.method.substr(0, 16), " takes no body (Content-Length: ", length, ")"));
    }
    // Only /v2 takes a body. Elsewhere httplib would read all of it before
    // answering 404 or 405, for any caller.
    if (rest == nullptr || !InferenceRest::Owns(request.path)) {
      if (request.path == "/metrics") {
        response.set_header("Allow", "GET");
        return refuse(405, absl::StrCat("/metrics takes GET, not ", request.method.substr(0, 16)));
      }
      return refuse(404, "not found; try /metrics or /v2");
    }
    // A caller without the right token is refused from the headers, before
    // httplib reads (and holds) a body of up to --max_body_bytes for it.
    if (std::optional<HttpReply> refused = rest->RefuseBeforeBody(
            request.method, request.path, request.get_header_value("Authorization"), request.remote_addr)) {
      response.status = refused->status;
      for (const auto& [name, value] : refused->headers) response.set_header(name, value);
      response.set_content(std::move(refused->body), refused->content_type.c_str());
      response.set_header("Connection", "close");  // the body stays unread
      EndConnectionAfterThisResponse();
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // httplib's own errors (a bad request line, a body over the limit) come
  // without a body: given one here, JSON under /v2 as the protocol says.
  http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& request,
                                                                  httplib::Response& response) {
    if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (response.status == 404 && request.path == "/metrics") {
      // Only GET is routed there: another method is not "not found".
      SetError(request, response, 405, absl::StrCat("/metrics takes GET, not ", request.method.substr(0, 16)));
      response.set_header("Allow", "GET");
    } else if (response.status == 404) {
      SetError(request, response, 404, "not found; try /metrics or /v2");
    } else if (response.status == 413) {
      // Bodies declaring more than the limit were refused before reading;
      // this is cpp-httplib's own 8 KiB cap on form-encoded ones.
      const bool form = absl::StartsWith(request.get_header_value("Content-Type"), "application/x-www-form-urlencoded");
      SetError(request, response, 413,
               form ? "a form-encoded body (the Content-Type curl -d sends) is limited to 8 KiB: send "
                      "Content-Type: application/json"
                    : "the body is larger than the server accepts");
    } else if (response.status == 400) {
      SetError(request, response, 400, "malformed HTTP request or body");
      // httplib keeps the connection after a request line it cannot parse,
      // and would read that request's header lines as further requests.
      response.set_header("Connection", "close");
      EndConnectionAfterThisResponse();
    } else if (response.status == 414) {
      SetError(request, response, 414, "the request URI is too long");
    } else {
      SetError(request, response, response.status, absl::StrCat("HTTP ", response.status));
    }
    return httplib::Server::HandlerResponse::Handled;
  }));
  // Without this, httplib puts the exception's text in a response header.
  http.set_exception_handler([](const httplib::Request& request, httplib::Response& response, std::exception_ptr) {
    LogLine(LogLevel::kError, absl::StrCat("quantd: HTTP ", request.method, " ", request.path.substr(0, 200),
                                           " failed with an exception"));
    SetError(request, response, 500, "internal error");
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
  // httplib listens with a backlog of 5: a burst of new connections (a load
  // balancer's pool, many clients at once) then waited for SYN retransmits,
  // a second each, or was reset. Listening again only raises the backlog.
  int accepting = 0;
  socklen_t length = sizeof(accepting);
  if (*listening >= 0 && getsockopt(*listening, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0 &&
      accepting == 1 && ::listen(*listening, SOMAXCONN) != 0) {
    LogLine(LogLevel::kWarning, absl::StrCat("quantd: cannot raise the HTTP port's listen backlog: ", std::strerror(errno)));
  }
  std::atomic<bool>* stopping = &server->stopping_;
  const int port = server->port_;
  server->thread_ = std::thread([&http, stopping, port] {
    NameThisThread("quantd-http");  // and the worker threads httplib starts from here
    // httplib leaves its accept loop for good on an accept error other than
    // a full descriptor table (ENFILE, ENOMEM, ...): say so, as /metrics and
    // /v2 are gone while gRPC still serves.
    const bool ok = http.listen_after_bind();
    if (!stopping->load()) {
      LogLine(LogLevel::kError, absl::StrCat("quantd: the HTTP listener on port ", port, " stopped (",
                                             ok ? "closed" : "accept failed",
                                             "): /metrics and /v2 are no longer served; restart quantd"));
    }
  });
  // stop() is a no-op until the accept loop runs: wait for it, so that a
  // server destroyed right away cannot leave the loop (and the join) hanging.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!http.is_running() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  if (!http.is_running()) {
    return absl::UnavailableError(absl::StrCat("the HTTP listener on port ", port, " did not start"));
  }
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  stopping_ = true;
  if (http_ != nullptr) http_->stop();
  // Connections still open (idle keep-alive ones, slow clients) would hold
  // the pool, and its join, until their own timeouts.
  paced_.CloseConnections();
  if (thread_.joinable()) thread_.join();
}

}  // namespace quantd
