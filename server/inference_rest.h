#ifndef QUANTD_SERVER_INFERENCE_REST_H_
#define QUANTD_SERVER_INFERENCE_REST_H_

// The Open Inference Protocol over HTTP/REST (KServe v2), on the HTTP port:
//   GET  /v2/health/live, /v2/health/ready             (open, like gRPC health)
//   GET  /v2                                           server metadata
//   GET  /v2/models/{m}[/versions/{v}]                 model metadata
//   GET  /v2/models/{m}[/versions/{v}]/ready
//   POST /v2/models/{m}[/versions/{v}]/infer           JSON, or the binary
//        tensor data extension (Inference-Header-Content-Length)
//   POST /v2/repository/index                          Triton's repository index
// Each call becomes the gRPC message and goes through InferenceCore, so both
// protocols run the same code. Errors are {"error": "..."} with the HTTP
// status of the gRPC code. No HTTP library here: the HTTP server hands over
// the parts of a request that matter.

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "server/auth.h"
#include "server/inference_core.h"

namespace quantd {

struct HttpCall {
  std::string method;  // "GET", "POST"
  std::string path;
  std::string authorization;  // the Authorization header
  // The Inference-Header-Content-Length header, when the body is a JSON
  // header followed by binary tensor data.
  std::string inference_header_length;
  std::string body;
  std::string remote;  // for the audit log
  // Whether the client has gone (closed its connection); may be null.
  std::function<bool()> client_gone;
};

struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

class InferenceRest {
 public:
  // `auth` may be the disabled authenticator; never null.
  InferenceRest(InferenceCore* core, Authenticator* auth) : core_(core), auth_(auth) {}

  // Whether `path` is one of ours (/v2 or below it).
  static bool Owns(const std::string& path);
  // The method the /v2 resource at `path` takes ("GET" or "POST"), or ""
  // where there is none.
  static std::string AllowedMethodFor(const std::string& path);
  // Blocks until the answer is ready (an inference waits for its pass).
  HttpReply Handle(const HttpCall& call);
  // For a request with a body, from its headers alone (before the body is
  // read): nullopt when the caller may send it (every /v2 resource that
  // takes a body needs the read role), else the refusal, audited. Handle
  // checks again.
  std::optional<HttpReply> RefuseBeforeBody(const std::string& method, const std::string& path,
                                            const std::string& authorization, const std::string& remote);

 private:
  // Triton's statistics extension over REST: GET /v2/models/stats (every
  // version served) and /v2/models/{m}[/versions/{v}]/stats.
  HttpReply StatsReply(const std::string& name, const std::string& version);

  InferenceCore* const core_;
  Authenticator* const auth_;
};

// The HTTP status for a gRPC-style code (INVALID_ARGUMENT 400, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...).
int HttpStatusForCode(absl::StatusCode code);

}  // namespace quantd

#endif  // QUANTD_SERVER_INFERENCE_REST_H_
