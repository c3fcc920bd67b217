#ifndef QUANTD_CLIENT_FILE_SHA256_H_
#define QUANTD_CLIENT_FILE_SHA256_H_

#include <memory>
#include <string>
#include <string_view>

namespace quantd::cli {

// Incremental lower-case hex SHA-256 (OpenSSL), for uploads and downloads.
class Sha256Hasher {
 public:
  Sha256Hasher();
  ~Sha256Hasher();
  void Update(std::string_view data);
  std::string HexDigest();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace quantd::cli

#endif  // QUANTD_CLIENT_FILE_SHA256_H_
