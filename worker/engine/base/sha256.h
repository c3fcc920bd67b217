#ifndef QUANTD_WORKER_ENGINE_BASE_SHA256_H_
#define QUANTD_WORKER_ENGINE_BASE_SHA256_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace quantd::engine {

// Incremental SHA-256 (OpenSSL), hex-encoded lowercase digest.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view data);
  std::string HexDigest();  // Finalizes; call once.

 private:
  struct State;
  std::unique_ptr<State> state_;
};

std::string Sha256Hex(std::string_view data);
// Whether `s` is 64 lower-case hex digits: a digest as Sha256Hex writes it
// (artifact and blob ids).
bool IsSha256Hex(std::string_view s);
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_BASE_SHA256_H_
