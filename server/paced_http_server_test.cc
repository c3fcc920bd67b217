#include "server/paced_http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/auth.h"
#include "server/inference_rest.h"
#include "server/metrics_http_server.h"
#include "tests/integration/test_util/http_get.h"

namespace quantd {
namespace {

// The HTTP edge with a pool of `threads` and a request budget of 300 ms plus
// 1 s per MiB: small enough that slow clients run out of it quickly.
std::unique_ptr<MetricsHttpServer> StartServer(int threads, int max_waiting = 256, InferenceRest* rest = nullptr) {
  MetricsHttpServer::Options options;
  options.inference = rest;
  options.host = "127.0.0.1";
  options.pace.request_base = absl::Milliseconds(300);
  options.pace.threads = threads;
  options.pace.max_waiting = max_waiting;
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server = MetricsHttpServer::Start(options, {});
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

class Connection {
 public:
  explicit Connection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address = {};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~Connection() { Close(); }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) { return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()); }
  // True if the server answered or closed within `timeout`.
  bool EndedWithin(absl::Duration timeout) {
    pollfd p = {fd_, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) > 0;
  }
  // One response with a Content-Length, on a connection kept open.
  std::string ReadOneResponse() {
    std::string all;
    char buffer[4096];
    for (;;) {
      const size_t end = all.find("\r\n\r\n");
      if (end != std::string::npos) {
        const size_t at = absl::AsciiStrToLower(all).find("content-length:");
        size_t length = 0;
        if (at != std::string::npos) length = std::strtoul(all.c_str() + at + 15, nullptr, 10);
        if (all.size() >= end + 4 + length) return all;
      }
      if (!EndedWithin(absl::Seconds(5))) return all;
      const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) return all;
      all.append(buffer, n);
    }
  }
  std::string ReadAll() {
    std::string all;
    char buffer[4096];
    ssize_t n;
    while (EndedWithin(absl::Seconds(5)) && (n = ::recv(fd_, buffer, sizeof(buffer), 0)) > 0) all.append(buffer, n);
    return all;
  }

 private:
  int fd_;
  bool connected_ = false;
};

TEST(PacedHttpServerTest, ClientsThatDripHeadersLoseTheirThreadsAndOthersAreServed) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2);
  ASSERT_NE(server, nullptr);
  // As many slow clients as the pool has threads, each sending a header
  // line every 50 ms: never silent for a read timeout (5 s).
  std::vector<std::unique_ptr<Connection>> slow;
  for (int i = 0; i < 2; ++i) {
    slow.push_back(std::make_unique<Connection>(server->port()));
    ASSERT_TRUE(slow.back()->connected());
    ASSERT_TRUE(slow.back()->Send("GET /metrics HTTP/1.1\r\n"));
  }
  const absl::Time start = absl::Now();
  bool all_ended = false;
  for (int line = 0; !all_ended && absl::Now() - start < absl::Seconds(4); ++line) {
    all_ended = true;
    for (auto& connection : slow) {
      if (!connection->EndedWithin(absl::ZeroDuration())) {
        all_ended = false;
        connection->Send(absl::StrCat("X-Line-", line, ": x\r\n"));
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(all_ended) << "slow clients were still connected after " << absl::Now() - start;
  // Their threads are free again.
  absl::StatusOr<test_util::HttpResponse> metrics =
      test_util::HttpGet("127.0.0.1", server->port(), "/metrics", absl::Seconds(2));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->status_code, 200);
}

TEST(PacedHttpServerTest, ABodyThatKeepsPaceMayTakeLongerThanTheBase) {
  // Only /v2 reads a body. The repository index refuses one over 4 KiB
  // after reading it, before it would need a model repository.
  std::unique_ptr<Authenticator> auth = Authenticator::Disabled();
  InferenceRest rest(/*core=*/nullptr, auth.get());
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2, /*max_waiting=*/256, &rest);
  ASSERT_NE(server, nullptr);
  // 1 MiB in 32 KiB pieces every 20 ms: about 0.65 s in all, over the 300 ms
  // base but well within the 1 s that one MiB adds. Answered (with a 400),
  // not cut off.
  const int64_t body_bytes = int64_t{1} << 20;
  Connection client(server->port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Send(absl::StrCat("POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                       "Content-Type: application/octet-stream\r\nContent-Length: ",
                                       body_bytes, "\r\n\r\n")));
  const std::string piece(32 * 1024, 'x');
  for (int64_t sent = 0; sent < body_bytes; sent += piece.size()) {
    ASSERT_TRUE(client.Send(piece));
    absl::SleepFor(absl::Milliseconds(20));  // 32 pieces: over the base by the sends alone
  }
  const std::string answer = client.ReadAll();
  EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 400")) << answer.substr(0, 200);
  EXPECT_TRUE(absl::StrContains(answer, "a repository index request takes at most 4096")) << answer.substr(0, 400);
}

// Header lines of 1 KiB (httplib refuses a line over 8 KiB by itself, but
// not their number).
std::string HeaderLines(int count) {
  std::string lines;
  for (int i = 0; i < count; ++i) absl::StrAppend(&lines, "X-Line-", i, ": ", std::string(1000, 'a'), "\r\n");
  return lines;
}

TEST(PacedHttpServerTest, HeadersOver64KiBAreRefused) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2);
  ASSERT_NE(server, nullptr);
  Connection client(server->port());
  ASSERT_TRUE(client.connected());
  // Sent at full speed, so the time budget never runs out: only the size
  // stops it. The server may close before all of it is sent.
  client.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n" + HeaderLines(300));
  const std::string refused = client.ReadAll();
  EXPECT_TRUE(absl::StartsWith(refused, "HTTP/1.1 400")) << refused.substr(0, 200);
  // 60 KiB of them are fine.
  Connection fine(server->port());
  ASSERT_TRUE(fine.Send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + HeaderLines(60) + "\r\n"));
  const std::string answered = fine.ReadAll();
  EXPECT_TRUE(absl::StartsWith(answered, "HTTP/1.1 200")) << answered.substr(0, 200);
}

TEST(PacedHttpServerTest, StoppingEndsOpenConnectionsAtOnce) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2);
  ASSERT_NE(server, nullptr);
  // A connection idle between keep-alive requests: its thread waits up to
  // the keep-alive timeout (5 s) for the next one.
  Connection idle(server->port());
  ASSERT_TRUE(idle.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(absl::StartsWith(idle.ReadOneResponse(), "HTTP/1.1 200"));
  const absl::Time start = absl::Now();
  server.reset();
  // Without closing it, the join would wait out the keep-alive timeout.
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(idle.EndedWithin(absl::ZeroDuration()));
  EXPECT_EQ(idle.ReadAll(), "");
}

// httplib queues connections for its pool without a bound: a flood of them
// would hold descriptors and memory until the server runs out. Past the
// bound they are refused at once, and those already waiting are served.
TEST(PacedHttpServerTest, ConnectionsBeyondTheWaitingBoundAreRefusedAtOnce) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/1, /*max_waiting=*/1);
  ASSERT_NE(server, nullptr);
  // The one thread: a keep-alive connection between requests.
  Connection busy(server->port());
  ASSERT_TRUE(busy.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(absl::StartsWith(busy.ReadOneResponse(), "HTTP/1.1 200"));
  Connection waiting(server->port());  // accepted and queued before the next
  ASSERT_TRUE(waiting.connected());
  Connection refused(server->port());
  ASSERT_TRUE(refused.connected());
  const std::string answer = refused.ReadAll();
  EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 503")) << answer.substr(0, 200);
  EXPECT_TRUE(absl::StrContains(answer, "too many HTTP connections waiting")) << answer;
  EXPECT_FALSE(waiting.EndedWithin(absl::ZeroDuration()));
  // The waiting one gets the thread once the busy one leaves.
  busy.Close();
  ASSERT_TRUE(waiting.Send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  const std::string served = waiting.ReadAll();
  EXPECT_TRUE(absl::StartsWith(served, "HTTP/1.1 200")) << served.substr(0, 200);
}

// Idle keep-alive connections, as many as the pool has threads, would make
// a new connection (a health probe) wait out the keep-alive timeout (5 s).
// One idle past `idle_yield_after` (500 ms) is closed as soon as another
// waits, and the new one is served.
TEST(PacedHttpServerTest, IdleKeepAliveConnectionsYieldTheirThreadsToWaitingOnes) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2);
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<Connection>> idle;
  for (int i = 0; i < 2; ++i) {
    idle.push_back(std::make_unique<Connection>(server->port()));
    ASSERT_TRUE(idle.back()->Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_TRUE(absl::StartsWith(idle.back()->ReadOneResponse(), "HTTP/1.1 200"));
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<test_util::HttpResponse> probe =
      test_util::HttpGet("127.0.0.1", server->port(), "/metrics", absl::Seconds(3));
  ASSERT_TRUE(probe.ok()) << probe.status() << " after " << absl::Now() - start;
  EXPECT_EQ(probe->status_code, 200);
  // One of the idle connections gave its thread up: the server closed it.
  EXPECT_TRUE(idle[0]->EndedWithin(absl::ZeroDuration()) || idle[1]->EndedWithin(absl::ZeroDuration()));
}

// httplib keeps a connection after a request line it cannot parse and read
// that request's header lines as requests of their own: a header that looked
// like "GET /metrics HTTP/1.1" was served (request smuggling past a proxy
// that reads the line otherwise). Now the 400 ends the connection.
TEST(PacedHttpServerTest, AMalformedRequestLineEndsItsConnection) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2);
  ASSERT_NE(server, nullptr);
  for (const std::string& line : {std::string("FOO /x HTTP/1.1"), std::string("GET /metrics HTTP/2.0"),
                                  std::string("GET /metrics")}) {
    Connection client(server->port());
    ASSERT_TRUE(client.Send(line + "\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    const std::string answer = client.ReadAll();  // to the close, which must come
    EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 400")) << line << ": " << answer;
    EXPECT_NE(answer.find("malformed HTTP request"), std::string::npos) << answer;
    EXPECT_EQ(answer.find("HTTP/1.1", 1), std::string::npos) << line << ": a second answer: " << answer;
  }
}

// Pooled clients (load balancers, HTTP client libraries) reuse a connection:
// httplib closed it after 5 requests. And it wrote headers and body apart
// without TCP_NODELAY, so each request after the first waited 40 ms for the
// client's delayed ACK: the listening socket has TCP_NODELAY, which accepted
// ones inherit, and a listen backlog above httplib's 5.
TEST(PacedHttpServerTest, AKeptAliveConnectionServesManyRequestsOnANoDelaySocket) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2);
  ASSERT_NE(server, nullptr);
  Connection client(server->port());
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(client.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    const std::string answer = client.ReadOneResponse();
    ASSERT_TRUE(absl::StartsWith(answer, "HTTP/1.1 200")) << "request " << i << ": " << answer;
    EXPECT_EQ(absl::AsciiStrToLower(answer).find("connection: close"), std::string::npos) << "request " << i;
  }
  // This process's listening socket on the port.
  int listening = -1;
  for (int fd = 0; fd < 1024 && listening < 0; ++fd) {
    sockaddr_in address = {};
    socklen_t length = sizeof(address);
    int accepting = 0;
    socklen_t accepting_length = sizeof(accepting);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0 && address.sin_family == AF_INET &&
        ntohs(address.sin_port) == server->port() &&
        ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &accepting_length) == 0 && accepting == 1) {
      listening = fd;
    }
  }
  ASSERT_GE(listening, 0);
  int nodelay = 0;
  socklen_t length = sizeof(nodelay);
  ASSERT_EQ(::getsockopt(listening, IPPROTO_TCP, TCP_NODELAY, &nodelay, &length), 0);
  EXPECT_EQ(nodelay, 1);
  // The backlog shows as a listening socket's Send-Q in ss (iproute2).
  if (::access("/usr/bin/ss", X_OK) == 0 || ::access("/bin/ss", X_OK) == 0) {
    FILE* ss = ::popen(absl::StrCat("ss -ltnH 'sport = :", server->port(), "'").c_str(), "r");
    ASSERT_NE(ss, nullptr);
    char line[512] = {};
    const bool read = std::fgets(line, sizeof(line), ss) != nullptr;
    ::pclose(ss);
    ASSERT_TRUE(read);
    std::vector<std::string> columns = absl::StrSplit(line, ' ', absl::SkipEmpty());
    ASSERT_GE(columns.size(), 3u) << line;
    EXPECT_GT(std::atoi(columns[2].c_str()), 5) << line;
  }
}

// Without others waiting, an idle connection stays open past
// `idle_yield_after` and serves its next request.
TEST(PacedHttpServerTest, AnIdleConnectionIsKeptWhileNoOneWaits) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2);
  ASSERT_NE(server, nullptr);
  Connection client(server->port());
  ASSERT_TRUE(client.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(absl::StartsWith(client.ReadOneResponse(), "HTTP/1.1 200"));
  absl::SleepFor(absl::Milliseconds(800));
  EXPECT_FALSE(client.EndedWithin(absl::ZeroDuration()));
  ASSERT_TRUE(client.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_TRUE(absl::StartsWith(client.ReadOneResponse(), "HTTP/1.1 200"));
}

// A body refused from its headers stays unread. Closing a socket with unread
// bytes makes the kernel reset the connection, and a client still sending
// would lose the answer to that reset; the server reads and drops the rest
// of the body first (up to 8 MiB, 1 s).
TEST(PacedHttpServerTest, ARefusedBodyIsDrainedSoTheClientReadsTheAnswer) {
  std::unique_ptr<MetricsHttpServer> server = StartServer(/*threads=*/2);
  ASSERT_NE(server, nullptr);
  Connection client(server->port());
  ASSERT_TRUE(client.connected());
  // More than loopback's socket buffers hold, so most of it arrives after
  // the answer was written.
  const std::string body(6 << 20, 'x');
  ASSERT_TRUE(client.Send(absl::StrCat("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: ", body.size(),
                                       "\r\n\r\n")));
  bool body_sent = false;
  std::thread sender([&] { body_sent = client.Send(body); });
  const std::string answer = client.ReadAll();
  sender.join();
  EXPECT_TRUE(body_sent) << "the connection was reset while the client sent its body";
  EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 405")) << answer.substr(0, 200);
  EXPECT_TRUE(absl::StrContains(answer, "/metrics takes GET")) << answer;
}

// A REST request whose client closed its connection is not run (the check
// is what InferenceRest gives the batcher): the handler's check turns true
// once the client is gone, and is false while it waits.
TEST(PacedHttpServerTest, AHandlerSeesItsClientCloseTheConnection) {
  PacedHttpServer paced = MakePacedHttpServer(ConnectionPace{});
  absl::Notification handling, client_closed, handled;
  std::atomic<bool> gone_while_waiting{true}, gone_after_close{false};
  paced.http->Get("/wait", [&](const httplib::Request&, httplib::Response& response) {
    const std::function<bool()> gone = ClientGoneCheck();
    gone_while_waiting = gone();
    handling.Notify();
    client_closed.WaitForNotificationWithTimeout(absl::Seconds(10));
    for (const absl::Time give_up = absl::Now() + absl::Seconds(5); !gone() && absl::Now() < give_up;) {
      absl::SleepFor(absl::Milliseconds(5));  // the FIN crossing loopback
    }
    gone_after_close = gone();
    response.set_content("nobody reads this", "text/plain");
    handled.Notify();
  });
  const int port = paced.http->bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread listener([&] { paced.http->listen_after_bind(); });
  {
    Connection client(port);
    ASSERT_TRUE(client.connected());
    ASSERT_TRUE(client.Send("GET /wait HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_TRUE(handling.WaitForNotificationWithTimeout(absl::Seconds(10)));
    client.Close();
  }
  client_closed.Notify();
  EXPECT_TRUE(handled.WaitForNotificationWithTimeout(absl::Seconds(10)));
  paced.http->stop();
  paced.CloseConnections();
  listener.join();
  EXPECT_FALSE(gone_while_waiting.load());
  EXPECT_TRUE(gone_after_close.load());
  EXPECT_FALSE(ClientGoneCheck()());  // outside a handler: never gone
}

}  // namespace
}  // namespace quantd
