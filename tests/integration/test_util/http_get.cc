#include "tests/integration/test_util/http_get.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace quantd::test_util {

absl::StatusOr<HttpResponse> HttpGet(const std::string& ipv4_host, int port,
                                     const std::string& path, absl::Duration timeout) {
  return HttpExchange(ipv4_host, port,
                      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", ipv4_host, ":", port,
                                   "\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"),
                      timeout);
}

absl::StatusOr<HttpResponse> HttpExchange(const std::string& ipv4_host, int port, const std::string& request,
                                          absl::Duration timeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  timeval tv = absl::ToTimeval(timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, ipv4_host.c_str(), &address.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("not an IPv4 address: ", ipv4_host));
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect ", ipv4_host, ":", port, ": ", std::strerror(errno)));
  }
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
  }
  std::string raw;
  char buffer[16384];
  while (true) {
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      // A server that answered without reading the whole request resets the
      // connection once it closes; what it answered has arrived.
      if (errno == ECONNRESET && !raw.empty()) break;
      return absl::DeadlineExceededError(absl::StrCat("recv: ", std::strerror(errno)));
    }
    raw.append(buffer, static_cast<size_t>(n));
  }
  size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos || raw.compare(0, 5, "HTTP/") != 0) {
    return absl::DataLossError(absl::StrCat("not an HTTP response: ", raw.substr(0, 200)));
  }
  HttpResponse response;
  response.headers = raw.substr(0, header_end);
  response.body = raw.substr(header_end + 4);
  size_t space = raw.find(' ');
  if (space == std::string::npos ||
      !absl::SimpleAtoi(raw.substr(space + 1, 3), &response.status_code)) {
    return absl::DataLossError(absl::StrCat("bad status line: ", raw.substr(0, 100)));
  }
  return response;
}

}  // namespace quantd::test_util
