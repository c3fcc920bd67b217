#include "server/tls_identity.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <ctime>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/base/log.h"

namespace quantd {

struct TlsIdentity::Material {
  X509* leaf = nullptr;
  STACK_OF(X509)* chain = nullptr;  // the rest of the certificate file
  EVP_PKEY* key = nullptr;
  X509_STORE* client_ca_store = nullptr;
  STACK_OF(X509_NAME)* client_ca_names = nullptr;  // sent in the handshake's certificate request
  absl::Time expiry;                                // the leaf's notAfter

  Material() = default;
  Material(const Material&) = delete;
  Material& operator=(const Material&) = delete;
  ~Material() {
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    X509_STORE_free(client_ca_store);
    sk_X509_NAME_pop_free(client_ca_names, X509_NAME_free);
  }
};

namespace {

// OpenSSL's reason for the last failure, and its error queue emptied.
std::string OpenSslReason() {
  const unsigned long code = ERR_peek_last_error();
  char text[256] = "no detail";
  if (code != 0) ERR_error_string_n(code, text, sizeof(text));
  ERR_clear_error();
  return text;
}

absl::StatusOr<std::unique_ptr<TlsIdentity::Material>> ReadMaterial(const TlsFiles& files) {
  auto material = std::make_unique<TlsIdentity::Material>();
  BIO* cert = BIO_new_file(files.cert.c_str(), "r");
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read certificate file ", files.cert, ": ", OpenSslReason()));
  }
  material->leaf = PEM_read_bio_X509(cert, nullptr, nullptr, nullptr);
  std::string damaged_chain;
  if (material->leaf != nullptr) {
    material->chain = sk_X509_new_null();
    while (X509* next = PEM_read_bio_X509(cert, nullptr, nullptr, nullptr)) sk_X509_push(material->chain, next);
    // The end of the file reads as "no start line"; anything else is a
    // certificate after the first that does not parse (a file caught half
    // written): served without it, clients could not build the chain.
    const unsigned long end = ERR_peek_last_error();
    if (end != 0 && !(ERR_GET_LIB(end) == ERR_LIB_PEM && ERR_GET_REASON(end) == PEM_R_NO_START_LINE)) {
      damaged_chain = OpenSslReason();
    }
  }
  BIO_free(cert);
  ERR_clear_error();
  if (material->leaf == nullptr || material->chain == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("certificate file ", files.cert, " holds no PEM certificate"));
  }
  if (!damaged_chain.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("certificate file ", files.cert, ": certificate ",
                                                   sk_X509_num(material->chain) + 2, " does not parse: ",
                                                   damaged_chain));
  }
  std::tm not_after = {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(material->leaf), &not_after) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("certificate file ", files.cert, ": unreadable expiry date"));
  }
  material->expiry = absl::FromTimeT(timegm(&not_after));
  BIO* key = BIO_new_file(files.key.c_str(), "r");
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read key file ", files.key, ": ", OpenSslReason()));
  }
  material->key = PEM_read_bio_PrivateKey(key, nullptr, nullptr, nullptr);
  BIO_free(key);
  if (material->key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("key file ", files.key, " holds no unencrypted PEM private key: ", OpenSslReason()));
  }
  if (X509_check_private_key(material->leaf, material->key) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("key file ", files.key, " does not match the certificate in ", files.cert));
  }
  if (!files.client_ca.empty()) {
    material->client_ca_store = X509_STORE_new();
    material->client_ca_names = SSL_load_client_CA_file(files.client_ca.c_str());
    if (material->client_ca_store == nullptr || material->client_ca_names == nullptr ||
        X509_STORE_load_file(material->client_ca_store, files.client_ca.c_str()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("client CA file ", files.client_ca, " holds no PEM certificate: ", OpenSslReason()));
    }
  }
  return material;
}

}  // namespace

TlsIdentity::TlsIdentity(TlsFiles files, absl::Duration check_interval, worker::Clock* clock)
    : files_(std::move(files)), check_interval_(check_interval), clock_(clock) {}

TlsIdentity::~TlsIdentity() = default;

absl::StatusOr<std::unique_ptr<TlsIdentity>> TlsIdentity::Load(TlsFiles files, absl::Duration check_interval,
                                                               worker::Clock* clock) {
  std::unique_ptr<TlsIdentity> identity(new TlsIdentity(std::move(files), check_interval, clock));
  absl::MutexLock lock(&identity->mu_);
  absl::Status loaded = identity->ReloadIfChanged();
  if (!loaded.ok()) return loaded;
  return identity;
}

absl::Status TlsIdentity::ReloadIfChanged() {
  const absl::Time now = clock_->Now();
  if (now < next_check_) return absl::OkStatus();
  next_check_ = now + check_interval_;
  std::vector<FileStamp> stamps;
  for (const auto& [path, what] : {std::pair<const std::string*, const char*>{&files_.cert, "certificate file"},
                                   {&files_.key, "key file"},
                                   {&files_.client_ca, "client CA file"}}) {
    if (path->empty()) continue;
    absl::StatusOr<FileStamp> stamp = StampOf(*path, what);
    if (!stamp.ok()) {
      // Missing for a moment while a Secret's files are swapped.
      if (!file_missing_ && current_ != nullptr) {
        LogLine(LogLevel::kWarning, absl::StrCat("quantd: HTTPS: ", stamp.status().message(),
                                                 "; keeping the loaded certificate"));
      }
      file_missing_ = true;
      return stamp.status();
    }
    stamps.push_back(*stamp);
  }
  file_missing_ = false;
  if (stamps == stamps_) return absl::OkStatus();
  stamps_ = std::move(stamps);  // files that fail to load are reported once, not at every check
  absl::StatusOr<std::unique_ptr<Material>> material = ReadMaterial(files_);
  if (!material.ok()) {
    if (current_ != nullptr) {
      LogLine(LogLevel::kError,
              absl::StrCat("quantd: HTTPS: ", material.status().message(), "; keeping the loaded certificate"));
    }
    return material.status();
  }
  const bool reload = current_ != nullptr;
  current_ = std::move(*material);
  ++loads_;
  if (reload) {
    LogLine(LogLevel::kInfo, absl::StrCat("quantd: HTTPS: reloaded ", files_.cert, ", ", files_.key,
                                          files_.client_ca.empty() ? "" : absl::StrCat(" and ", files_.client_ca)));
  }
  return absl::OkStatus();
}

bool TlsIdentity::ApplyTo(ssl_st* ssl) {
  std::shared_ptr<const Material> material;
  {
    absl::MutexLock lock(&mu_);
    (void)ReloadIfChanged();  // reported there; the loaded files stay in use
    material = current_;
  }
  if (SSL_use_cert_and_key(ssl, material->leaf, material->key, material->chain, /*override=*/1) != 1) {
    ERR_clear_error();
    return false;
  }
  if (material->client_ca_store != nullptr) {
    STACK_OF(X509_NAME)* names = SSL_dup_CA_list(material->client_ca_names);
    if (names == nullptr || SSL_set1_verify_cert_store(ssl, material->client_ca_store) != 1) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      ERR_clear_error();
      return false;
    }
    SSL_set_client_CA_list(ssl, names);  // takes them
  }
  return true;
}

absl::Time TlsIdentity::certificate_expiry() const {
  absl::MutexLock lock(&mu_);
  return current_->expiry;
}

int TlsIdentity::loads() const {
  absl::MutexLock lock(&mu_);
  return loads_;
}

}  // namespace quantd
