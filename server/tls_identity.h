#ifndef QUANTD_SERVER_TLS_IDENTITY_H_
#define QUANTD_SERVER_TLS_IDENTITY_H_

// The HTTPS edge's certificate chain, key and client CA as last read from
// their files, read again once a file changes (looked at no more often than
// the check interval): a renewed certificate (a Kubernetes Secret updated by
// cert-manager) is served to new connections without a restart. Files that
// do not load (half written, a key that does not match the certificate)
// leave the loaded ones in use, and are reported once.

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/file_stamp.h"
#include "worker/clock.h"

struct ssl_st;  // OpenSSL's SSL

namespace quantd {

struct TlsFiles {
  std::string cert;       // PEM chain, leaf first
  std::string key;        // PEM private key of the leaf
  std::string client_ca;  // PEM CA(s) that client certificates must chain to; empty = none asked
};

class TlsIdentity {
 public:
  // Reads the files now; an error names the file that failed.
  static absl::StatusOr<std::unique_ptr<TlsIdentity>> Load(TlsFiles files, absl::Duration check_interval,
                                                           worker::Clock* clock);
  ~TlsIdentity();

  // Gives a new connection, before its handshake, the newest certificate,
  // key and client CA that loaded. False if OpenSSL refuses them.
  bool ApplyTo(ssl_st* ssl);

  // How many times the files have loaded (1 after Load).
  int loads() const;
  // When the loaded leaf certificate expires (its notAfter).
  absl::Time certificate_expiry() const;

  struct Material;  // what one load read (OpenSSL objects)

 private:
  TlsIdentity(TlsFiles files, absl::Duration check_interval, worker::Clock* clock);
  // The error of the files if they changed and did not load.
  absl::Status ReloadIfChanged() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TlsFiles files_;
  const absl::Duration check_interval_;
  worker::Clock* const clock_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Material> current_ ABSL_GUARDED_BY(mu_);
  std::vector<FileStamp> stamps_ ABSL_GUARDED_BY(mu_);  // of the files last tried
  absl::Time next_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int loads_ ABSL_GUARDED_BY(mu_) = 0;
  bool file_missing_ ABSL_GUARDED_BY(mu_) = false;  // reported once
};

}  // namespace quantd

#endif  // QUANTD_SERVER_TLS_IDENTITY_H_
