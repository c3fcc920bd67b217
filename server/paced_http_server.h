#ifndef QUANTD_SERVER_PACED_HTTP_SERVER_H_
#define QUANTD_SERVER_PACED_HTTP_SERVER_H_

// cpp-httplib servers whose connections must keep pace. httplib 0.11 bounds
// each read and write (its read/write timeouts), not a request: a client
// that sends one header line every few seconds keeps a pool thread forever,
// and as many such clients as the pool has threads stop /metrics and /v2
// (health probes included), and the shutdown that waits for those threads.
// Here each request may spend `request_base` plus 1 s per
// `min_bytes_per_second` it moved waiting on its socket (the handler's own
// time does not count), a request line and headers 64 KiB in all (httplib
// bounds neither a line's length nor their number), connections waiting for
// a thread are bounded, an idle keep-alive connection gives its thread up to
// a waiting one, and CloseConnections() ends every open connection at
// shutdown.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/tls_identity.h"

namespace httplib {
class Server;
}

namespace quantd {

struct ConnectionPace {
  absl::Duration request_base = absl::Seconds(10);
  int64_t min_bytes_per_second = int64_t{1} << 20;
  // Pool threads serving connections (idle keep-alive ones hold one each).
  int threads = 32;
  // A keep-alive connection idle this long is closed as soon as another
  // connection waits for a thread (otherwise it stays for the keep-alive
  // timeout, 5 s).
  absl::Duration idle_yield_after = absl::Milliseconds(500);
  // Connections accepted while every thread is busy wait for one, at most
  // this many; the next is answered 503 at once and closed (each waiting one
  // holds a descriptor and memory: httplib's own queue has no bound).
  int max_waiting = 256;
};

class OpenConnections;

// A server of plain HTTP, or of HTTPS with a PEM certificate chain and key
// (and, with a client CA, mTLS against it).
struct PacedHttpServer {
  PacedHttpServer();
  ~PacedHttpServer();
  PacedHttpServer(PacedHttpServer&&) noexcept;
  PacedHttpServer& operator=(PacedHttpServer&&) noexcept;

  std::unique_ptr<httplib::Server> http;
  std::shared_ptr<OpenConnections> connections;
  // HTTPS: the certificate, key and client CA its connections get.
  std::shared_ptr<TlsIdentity> identity;

  // Shuts down every connection open now: their reads and writes fail, so
  // the pool's threads finish. Call after http->stop().
  void CloseConnections() const;
};

// Called from a handler: the connection it serves ends once this response is
// written (httplib 0.11 goes on reading a kept-alive connection whatever
// the response's "Connection: close" says, so the bytes of a body left
// unread would be parsed as the next request).
void EndConnectionAfterThisResponse();

// Called from a handler: a check, usable from any thread until the handler
// returns, of whether the client has closed this request's connection (it
// left: nobody will read the answer). Always false outside a paced server.
std::function<bool()> ClientGoneCheck();

PacedHttpServer MakePacedHttpServer(const ConnectionPace& pace);
// InvalidArgument if the certificate, key or CA cannot be loaded.
// Certificate, key and client CA are read again for new connections once
// their files change, looked at no more often than `reload_check_interval`.
absl::StatusOr<PacedHttpServer> MakePacedHttpsServer(const ConnectionPace& pace, const TlsFiles& files,
                                                     absl::Duration reload_check_interval);

}  // namespace quantd

#endif  // QUANTD_SERVER_PACED_HTTP_SERVER_H_
