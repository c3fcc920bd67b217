#include "server/paced_http_server.h"

#include <fcntl.h>
#include <httplib.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "worker/clock.h"
#include "worker/engine/base/status_macros.h"

namespace quantd {

class OpenConnections {
 public:
  // False once closing: the caller drops the connection at once.
  bool Add(int fd) {
    absl::MutexLock lock(&mu_);
    if (closing_) return false;
    fds_.insert(fd);
    return true;
  }
  // Before the descriptor is closed, so that ShutdownAll never touches a
  // number the process has reused.
  void Remove(int fd) {
    absl::MutexLock lock(&mu_);
    fds_.erase(fd);
  }
  void ShutdownAll() {
    absl::MutexLock lock(&mu_);
    closing_ = true;
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }

  // Connections accepted and waiting for a pool thread.
  std::atomic<int> waiting_for_thread{0};

 private:
  absl::Mutex mu_;
  absl::flat_hash_set<int> fds_ ABSL_GUARDED_BY(mu_);
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
};

PacedHttpServer::PacedHttpServer() = default;
PacedHttpServer::~PacedHttpServer() = default;
PacedHttpServer::PacedHttpServer(PacedHttpServer&&) noexcept = default;
PacedHttpServer& PacedHttpServer::operator=(PacedHttpServer&&) noexcept = default;

void PacedHttpServer::CloseConnections() const {
  if (connections != nullptr) connections->ShutdownAll();
}

namespace {

using Clock = std::chrono::steady_clock;

// A request line and headers larger than this are refused (400).
constexpr int64_t kMaxHeaderBytes = 64 * 1024;

absl::Duration TimeoutOf(time_t sec, time_t usec) { return absl::Seconds(sec) + absl::Microseconds(usec); }

// poll(2) on one descriptor for at most `timeout` (at least 1 ms), through
// signals: > 0 ready, 0 timed out, < 0 failed.
int PollFor(int fd, short events, absl::Duration timeout) {
  pollfd p = {fd, events, 0};
  const int ms = static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout)));
  int ready;
  do {
    ready = ::poll(&p, 1, ms);
  } while (ready < 0 && errno == EINTR);
  return ready;
}

// The time one request may still spend waiting on its socket.
class RequestBudget {
 public:
  explicit RequestBudget(const ConnectionPace& pace) : pace_(pace) {}

  void Reset() {
    waited_ = absl::ZeroDuration();
    moved_ = 0;
    spent_ = false;
    header_too_long_ = false;
    header_bytes_ = 0;
    in_header_ = true;
    tail_ = 0;
  }
  // Follows the bytes httplib takes, while its request's header lasts
  // (httplib 0.11 bounds neither a header line's length nor their number);
  // false once the header passes kMaxHeaderBytes without its blank line.
  bool TakeHeaderBytes(const char* data, size_t size) {
    for (size_t i = 0; in_header_ && i < size; ++i) {
      tail_ = (tail_ << 8) | static_cast<unsigned char>(data[i]);
      ++header_bytes_;
      if ((tail_ & 0xffffffffu) == 0x0d0a0d0au) in_header_ = false;
    }
    if (in_header_ && header_bytes_ > kMaxHeaderBytes) {
      header_too_long_ = true;  // httplib answers 400; nothing more is read
      return false;
    }
    return true;
  }
  // The request ran out of time or header space: whatever httplib
  // answered, the connection ends.
  bool ends_connection() const { return spent_ || header_too_long_; }
  void Moved(ssize_t bytes) {
    if (bytes > 0) moved_ += bytes;
  }
  // Waits up to `timeout` (one read or write), within the budget, for
  // `events` on `fd`; true when it may go on (an error or hang-up included:
  // the read or write that follows reports it).
  bool Wait(int fd, short events, absl::Duration timeout) {
    const absl::Duration left =
        pace_.request_base +
        absl::Seconds(static_cast<double>(moved_) / static_cast<double>(std::max<int64_t>(1, pace_.min_bytes_per_second))) -
        waited_;
    if (spent_ || left <= absl::ZeroDuration()) {
      spent_ = true;
      return false;
    }
    const Clock::time_point start = Clock::now();
    const int ready = PollFor(fd, events, std::min(left, timeout));
    waited_ += absl::FromChrono(Clock::now() - start);
    // A wait the budget cut short spends it, whatever is left by the clock.
    if (ready == 0 && left <= timeout) spent_ = true;
    return ready > 0;
  }

 private:
  const ConnectionPace pace_;
  absl::Duration waited_;
  int64_t moved_ = 0;
  bool spent_ = false;
  bool header_too_long_ = false;
  int64_t header_bytes_ = 0;
  bool in_header_ = true;
  uint32_t tail_ = 0;  // the last four header bytes
};

// The numeric host and port of `fd`'s peer or own end (`get_name`:
// getpeername or getsockname); "" and 0 if unknown.
std::string Address(int (*get_name)(int, sockaddr*, socklen_t*), int fd, int* port) {
  sockaddr_storage address = {};
  socklen_t length = sizeof(address);
  char host[NI_MAXHOST] = "";
  char service[NI_MAXSERV] = "";
  *port = 0;
  if (get_name(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 ||
      ::getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, host, sizeof(host), service,
                    sizeof(service), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "";
  }
  *port = std::atoi(service);
  return host;
}

// Acknowledges what was just read at once. A client that writes a request's
// headers and body apart without TCP_NODELAY (httplib's own client does)
// holds the body back until the headers are acknowledged, and the kernel
// delays that acknowledgement by up to 40 ms: every request on a kept-alive
// connection took 44 ms. Quick-ack mode ends by itself, so it is asked again
// after each read.
void AcknowledgeNow(int fd) {
  int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

// A connection's stream, paced by its current request's budget.
class PacedStream : public httplib::Stream {
 public:
  PacedStream(int fd, RequestBudget* budget, absl::Duration read_timeout, absl::Duration write_timeout)
      : fd_(fd), budget_(budget), read_timeout_(read_timeout), write_timeout_(write_timeout) {}

  // Bytes of a next request already received (pipelined).
  virtual bool HasPending() const = 0;

  void get_remote_ip_and_port(std::string& ip, int& port) const override { ip = Address(::getpeername, fd_, &port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { ip = Address(::getsockname, fd_, &port); }
  socket_t socket() const override { return fd_; }

 protected:
  bool WaitReadable() const { return budget_->Wait(fd_, POLLIN, read_timeout_); }
  bool WaitWritable() const { return budget_->Wait(fd_, POLLOUT, write_timeout_); }

  const int fd_;
  RequestBudget* const budget_;

 private:
  const absl::Duration read_timeout_;
  const absl::Duration write_timeout_;
};

class PlainStream : public PacedStream {
 public:
  using PacedStream::PacedStream;

  bool HasPending() const override { return begin_ < end_; }
  bool is_readable() const override { return HasPending() || WaitReadable(); }
  bool is_writable() const override { return WaitWritable(); }

  // Buffered: httplib reads request lines a byte at a time.
  ssize_t read(char* ptr, size_t size) override {
    if (!HasPending()) {
      if (!WaitReadable()) return -1;
      ssize_t n;
      do {
        n = ::recv(fd_, buffer_, sizeof(buffer_), 0);
      } while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      AcknowledgeNow(fd_);
      budget_->Moved(n);
      begin_ = 0;
      end_ = static_cast<size_t>(n);
    }
    const size_t taken = std::min(size, end_ - begin_);
    std::memcpy(ptr, buffer_ + begin_, taken);
    begin_ += taken;
    if (!budget_->TakeHeaderBytes(ptr, taken)) return -1;
    return static_cast<ssize_t>(taken);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!WaitWritable()) return -1;
    ssize_t n;
    do {
      n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    budget_->Moved(n);
    return n;
  }

 private:
  char buffer_[16 * 1024];
  size_t begin_ = 0;
  size_t end_ = 0;
};

// TLS over a non-blocking socket: a record that arrives a byte at a time
// waits in poll, on the budget, never inside OpenSSL.
class TlsStream : public PacedStream {
 public:
  TlsStream(SSL* ssl, int fd, RequestBudget* budget, absl::Duration read_timeout, absl::Duration write_timeout)
      : PacedStream(fd, budget, read_timeout, write_timeout), ssl_(ssl) {}

  bool Handshake() {
    return Retry([&] { return SSL_accept(ssl_); }) == 1;
  }
  bool HasPending() const override { return SSL_pending(ssl_) > 0; }
  bool is_readable() const override { return HasPending() || WaitReadable(); }
  bool is_writable() const override { return WaitWritable(); }
  ssize_t read(char* ptr, size_t size) override {
    const int n = Retry([&] { return SSL_read(ssl_, ptr, static_cast<int>(std::min<size_t>(size, INT32_MAX))); });
    if (n > 0) AcknowledgeNow(fd_);
    budget_->Moved(n);
    if (n > 0 && !budget_->TakeHeaderBytes(ptr, static_cast<size_t>(n))) return -1;
    return n;
  }
  ssize_t write(const char* ptr, size_t size) override {
    const int n = Retry([&] { return SSL_write(ssl_, ptr, static_cast<int>(std::min<size_t>(size, INT32_MAX))); });
    budget_->Moved(n);
    return n;
  }

 private:
  // Repeats `op` (with the same arguments, as OpenSSL asks) while it waits
  // for the socket; its result, 0 at a clean close, -1 on failure.
  template <typename Op>
  int Retry(Op op) {
    for (;;) {
      ERR_clear_error();
      const int n = op();
      if (n > 0) return n;
      switch (SSL_get_error(ssl_, n)) {
        case SSL_ERROR_WANT_READ:
          if (!WaitReadable()) return -1;
          break;
        case SSL_ERROR_WANT_WRITE:
          if (!WaitWritable()) return -1;
          break;
        case SSL_ERROR_ZERO_RETURN:
          return 0;
        default:
          return -1;
      }
    }
  }

  SSL* const ssl_;
};

using ServeOne = std::function<bool(httplib::Stream&, bool close_connection, bool& connection_closed)>;

// Set by a handler on the thread serving the connection: end it after this
// response (the request's body was left unread).
thread_local bool t_end_connection = false;
// The socket of the connection this thread serves a request of, else -1.
thread_local int t_connection_fd = -1;

// Closing a socket with unread bytes in its receive buffer sends a reset,
// which can discard the response the peer has not read yet (off loopback,
// its last segment is often still in flight). So what the client still sends
// of a body left unread is read and dropped first, for at most a second and
// 8 MiB; a client that read its answer closes long before.
void DrainBeforeClose(int fd) {
  const absl::Time deadline = absl::Now() + absl::Seconds(1);
  char buffer[16384];
  size_t drained = 0;
  while (drained < (size_t{8} << 20)) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration() || PollFor(fd, POLLIN, left) <= 0) break;
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n <= 0) break;
    drained += static_cast<size_t>(n);
  }
}

// Whether a request arrives on the connection within the keep-alive
// timeout. A connection idle for `yield_after` gives its thread up as soon as
// another connection waits for one: idle keep-alive clients (a scraper, a
// browser, a load generator between bursts) would otherwise hold every
// thread for the whole timeout, and new connections, health probes among
// them, would wait behind them or be refused. HTTP lets a server close an
// idle connection at any time; its client reconnects.
bool NextRequestArrives(int fd, PacedStream& stream, absl::Duration keep_alive_timeout, absl::Duration yield_after,
                        const std::atomic<int>& waiting_for_thread) {
  if (stream.HasPending()) return true;
  const absl::Time idle_since = absl::Now();
  if (PollFor(fd, POLLIN, std::min(keep_alive_timeout, yield_after)) > 0) return true;
  // Past `yield_after`: short waits, each followed by a look at the queue.
  constexpr absl::Duration kQueueCheckInterval = absl::Milliseconds(50);
  for (;;) {
    const absl::Duration left = keep_alive_timeout - (absl::Now() - idle_since);
    if (left <= absl::ZeroDuration() || waiting_for_thread.load() > 0) return false;
    const int ready = PollFor(fd, POLLIN, std::min(left, kQueueCheckInterval));
    if (ready != 0) return ready > 0;
  }
}

// Requests on one connection, keep-alive as httplib serves them: the wait
// for a next request is bounded by the keep-alive timeout (and shortened
// while others wait for a thread), each request by its budget.
bool ServeRequests(int fd, PacedStream& stream, RequestBudget& budget, size_t max_requests,
                   absl::Duration keep_alive_timeout, const ConnectionPace& pace, const OpenConnections& connections,
                   const httplib::Server& server, const ServeOne& serve_one) {
  bool ok = false;
  for (size_t left = std::max<size_t>(1, max_requests); left > 0; --left) {
    if (!NextRequestArrives(fd, stream, keep_alive_timeout, pace.idle_yield_after, connections.waiting_for_thread)) {
      break;
    }
    budget.Reset();
    bool closed = false;
    t_end_connection = false;
    t_connection_fd = fd;
    ok = serve_one(stream, left == 1 || !server.is_running(), closed);
    t_connection_fd = -1;
    if (!ok || closed || budget.ends_connection() || t_end_connection) break;
  }
  const bool body_left_unread = t_end_connection;
  t_end_connection = false;
  if (body_left_unread) DrainBeforeClose(fd);
  return ok;
}

}  // namespace

void EndConnectionAfterThisResponse() { t_end_connection = true; }

std::function<bool()> ClientGoneCheck() {
  const int fd = t_connection_fd;
  if (fd < 0) return [] { return false; };
  // The socket stays open while the handler runs. A client that closed
  // (FIN: the read side hung up) or reset it is gone; one that sends its
  // next request early is not.
  return [fd] {
    pollfd p{fd, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  };
}

namespace {

void CloseSocket(OpenConnections& connections, int fd) {
  connections.Remove(fd);
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
}

// Set on the accepting thread while it runs a connection the pool has no
// room for: process_and_close_socket then refuses it at once.
thread_local bool t_refuse_connection = false;

// httplib's pool, with a bound on the connections waiting for a thread.
class BoundedPool : public httplib::TaskQueue {
 public:
  BoundedPool(size_t threads, int max_waiting, std::shared_ptr<OpenConnections> connections)
      : pool_(threads), max_waiting_(max_waiting), connections_(std::move(connections)) {}

  void enqueue(std::function<void()> fn) override {
    std::atomic<int>& waiting = connections_->waiting_for_thread;
    if (waiting.load() >= max_waiting_) {
      // Run here, on the accepting thread: the connection's task only
      // writes a 503 without waiting and closes it.
      t_refuse_connection = true;
      fn();
      t_refuse_connection = false;
      return;
    }
    ++waiting;
    pool_.enqueue([&waiting, fn = std::move(fn)] {
      --waiting;
      fn();
    });
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  httplib::ThreadPool pool_;
  const int max_waiting_;
  const std::shared_ptr<OpenConnections> connections_;  // outlives the pool's tasks
};

// A connection the server has no room for: a 503 if the socket takes it now
// (TLS cannot without a handshake), then closed.
void Refuse(int fd, bool plain) {
  if (plain) {
    static constexpr char kBusy[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 65\r\n"
        "Retry-After: 1\r\nConnection: close\r\n\r\n"
        "{\"error\": \"too many HTTP connections waiting; retry in a moment\"}";
    (void)::send(fd, kBusy, sizeof(kBusy) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
}

class PlainServer : public httplib::Server {
 public:
  PlainServer(const ConnectionPace& pace, std::shared_ptr<OpenConnections> connections)
      : pace_(pace), connections_(std::move(connections)) {}

 private:
  bool process_and_close_socket(socket_t fd) override {
    if (t_refuse_connection) {
      Refuse(fd, /*plain=*/true);
      return false;
    }
    if (!connections_->Add(fd)) {
      ::close(fd);
      return false;
    }
    RequestBudget budget(pace_);
    PlainStream stream(fd, &budget, TimeoutOf(read_timeout_sec_, read_timeout_usec_),
                       TimeoutOf(write_timeout_sec_, write_timeout_usec_));
    const bool ok = ServeRequests(fd, stream, budget, keep_alive_max_count_, absl::Seconds(keep_alive_timeout_sec_),
                                  pace_, *connections_, *this, [this](httplib::Stream& s, bool close, bool& closed) {
                                    return process_request(s, close, closed, nullptr);
                                  });
    CloseSocket(*connections_, fd);
    return ok;
  }

  const ConnectionPace pace_;
  const std::shared_ptr<OpenConnections> connections_;
};

class TlsServer : public httplib::SSLServer {
 public:
  // httplib's context sets the protocol options and the verify mode; each
  // connection then gets `identity`'s newest certificate, key and client CA.
  TlsServer(const ConnectionPace& pace, std::shared_ptr<OpenConnections> connections, const TlsFiles& files,
            std::shared_ptr<TlsIdentity> identity)
      : httplib::SSLServer(files.cert.c_str(), files.key.c_str(),
                           files.client_ca.empty() ? nullptr : files.client_ca.c_str()),
        pace_(pace),
        connections_(std::move(connections)),
        identity_(std::move(identity)) {}

 private:
  bool process_and_close_socket(socket_t fd) override {
    if (t_refuse_connection) {
      Refuse(fd, /*plain=*/false);
      return false;
    }
    if (!connections_->Add(fd)) {
      ::close(fd);
      return false;
    }
    bool ok = false;
    SSL* ssl = SSL_new(ssl_context());
    const int flags = ::fcntl(fd, F_GETFL, 0);
    if (ssl != nullptr && identity_->ApplyTo(ssl) && flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 &&
        SSL_set_fd(ssl, fd) == 1) {
      RequestBudget budget(pace_);
      TlsStream stream(ssl, fd, &budget, TimeoutOf(read_timeout_sec_, read_timeout_usec_),
                       TimeoutOf(write_timeout_sec_, write_timeout_usec_));
      // The handshake is the first request's: same budget.
      if (stream.Handshake()) {
        ok = ServeRequests(fd, stream, budget, keep_alive_max_count_, absl::Seconds(keep_alive_timeout_sec_), pace_,
                           *connections_, *this,
                           [this, ssl](httplib::Stream& s, bool close, bool& closed) {
                             return process_request(s, close, closed, [ssl](httplib::Request& r) { r.ssl = ssl; });
                           });
        SSL_shutdown(ssl);  // one close_notify, not waited for
      }
    }
    if (ssl != nullptr) SSL_free(ssl);
    ERR_clear_error();
    CloseSocket(*connections_, fd);
    return ok;
  }

  const ConnectionPace pace_;
  const std::shared_ptr<OpenConnections> connections_;
  const std::shared_ptr<TlsIdentity> identity_;
};

template <typename Server>
void UsePool(Server& server, const ConnectionPace& pace, const std::shared_ptr<OpenConnections>& connections) {
  const size_t threads = static_cast<size_t>(std::max(1, pace.threads));
  const int max_waiting = std::max(0, pace.max_waiting);
  server.new_task_queue = [threads, max_waiting, connections] {
    return new BoundedPool(threads, max_waiting, connections);
  };
}

}  // namespace

PacedHttpServer MakePacedHttpServer(const ConnectionPace& pace) {
  PacedHttpServer made;
  made.connections = std::make_shared<OpenConnections>();
  auto http = std::make_unique<PlainServer>(pace, made.connections);
  UsePool(*http, pace, made.connections);
  made.http = std::move(http);
  return made;
}

absl::StatusOr<PacedHttpServer> MakePacedHttpsServer(const ConnectionPace& pace, const TlsFiles& files,
                                                     absl::Duration reload_check_interval) {
  PacedHttpServer made;
  QUANTD_ASSIGN_OR_RETURN(made.identity, TlsIdentity::Load(files, reload_check_interval, worker::Clock::Real()));
  made.connections = std::make_shared<OpenConnections>();
  auto https = std::make_unique<TlsServer>(pace, made.connections, files, made.identity);
  if (!https->is_valid()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load ", files.cert, " and ", files.key,
                                                   files.client_ca.empty() ? "" : absl::StrCat(" and ", files.client_ca)));
  }
  UsePool(*https, pace, made.connections);
  made.http = std::move(https);
  return made;
}

}  // namespace quantd
