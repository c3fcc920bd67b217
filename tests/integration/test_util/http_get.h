#ifndef QUANTD_TESTS_INTEGRATION_TEST_UTIL_HTTP_GET_H_
#define QUANTD_TESTS_INTEGRATION_TEST_UTIL_HTTP_GET_H_

// A minimal HTTP/1.0 client over a real TCP socket (for /metrics and the
// HTTP edge's handling of odd requests).

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quantd::test_util {

struct HttpResponse {
  int status_code = 0;
  std::string headers;  // raw header block
  std::string body;
};

absl::StatusOr<HttpResponse> HttpGet(const std::string& ipv4_host, int port,
                                     const std::string& path, absl::Duration timeout);

// Sends `raw_request` as it is (request line, headers, any body) and reads
// the response until the server closes the connection.
absl::StatusOr<HttpResponse> HttpExchange(const std::string& ipv4_host, int port, const std::string& raw_request,
                                          absl::Duration timeout);

}  // namespace quantd::test_util

#endif  // QUANTD_TESTS_INTEGRATION_TEST_UTIL_HTTP_GET_H_
