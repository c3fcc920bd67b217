#include "server/tls_identity.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <memory>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/test_util/subprocess.h"
#include "worker/clock.h"

namespace quantd {
namespace {

using ::testing::HasSubstr;

struct KeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
struct CertDeleter {
  void operator()(X509* cert) const { X509_free(cert); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyDeleter>;
using Cert = std::unique_ptr<X509, CertDeleter>;

Key NewKey() { return Key(EVP_EC_gen("P-256")); }

// A self-signed certificate named `cn`.
Cert SelfSigned(EVP_PKEY* key, const std::string& cn, long lifetime_seconds = 3600) {
  Cert cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), lifetime_seconds);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), key);
  EXPECT_GT(X509_sign(cert.get(), key, EVP_sha256()), 0);
  return cert;
}

// Written beside `path`, then renamed over it, as a Secret update swaps files.
void WriteCert(const std::string& path, X509* cert) {
  const std::string tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "w");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(PEM_write_X509(f, cert), 1);
  fclose(f);
  std::filesystem::rename(tmp, path);
}
void WriteKey(const std::string& path, EVP_PKEY* key) {
  const std::string tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "w");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr), 1);
  fclose(f);
  std::filesystem::rename(tmp, path);
}

std::string CommonName(X509_NAME* name) {
  char text[256] = "";
  X509_NAME_get_text_by_NID(name, NID_commonName, text, sizeof(text));
  return text;
}

class TlsIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test_util::MakeTempDir("tls_identity");
    files_ = TlsFiles{dir_ + "/tls.crt", dir_ + "/tls.key", ""};
    first_key_ = NewKey();
    ASSERT_NE(first_key_, nullptr);
    ASSERT_NO_FATAL_FAILURE(WriteCert(files_.cert, SelfSigned(first_key_.get(), "first").get()));
    ASSERT_NO_FATAL_FAILURE(WriteKey(files_.key, first_key_.get()));
    context_ = SSL_CTX_new(TLS_server_method());
  }
  void TearDown() override {
    SSL_CTX_free(context_);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // The certificate a new connection would be served, by its name.
  std::string Served(TlsIdentity& identity) {
    SSL* ssl = SSL_new(context_);
    std::string cn = identity.ApplyTo(ssl) ? CommonName(X509_get_subject_name(SSL_get_certificate(ssl))) : "refused";
    SSL_free(ssl);
    return cn;
  }

  std::string dir_;
  TlsFiles files_;
  Key first_key_;
  SSL_CTX* context_ = nullptr;
  worker::FakeClock clock_;
};

TEST_F(TlsIdentityTest, ARenewedCertificateIsServedOnceTheCheckIntervalHasPassed) {
  auto identity = TlsIdentity::Load(files_, absl::Seconds(60), &clock_);
  ASSERT_TRUE(identity.ok()) << identity.status();
  EXPECT_EQ(Served(**identity), "first");
  const absl::Time now = absl::Now();  // the certificates' dates are real ones
  EXPECT_LE(absl::AbsDuration((*identity)->certificate_expiry() - (now + absl::Hours(1))), absl::Seconds(5));

  Key second_key = NewKey();
  ASSERT_NO_FATAL_FAILURE(WriteCert(files_.cert, SelfSigned(second_key.get(), "second", 90 * 86400).get()));
  ASSERT_NO_FATAL_FAILURE(WriteKey(files_.key, second_key.get()));
  clock_.Advance(absl::Seconds(59));
  EXPECT_EQ(Served(**identity), "first") << "the files were looked at before the interval";
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Served(**identity), "second");
  EXPECT_EQ((*identity)->loads(), 2);
  EXPECT_LE(absl::AbsDuration((*identity)->certificate_expiry() - (now + absl::Hours(90 * 24))), absl::Seconds(5));
  // Unchanged files are not read again.
  clock_.Advance(absl::Seconds(60));
  EXPECT_EQ(Served(**identity), "second");
  EXPECT_EQ((*identity)->loads(), 2);
}

TEST_F(TlsIdentityTest, FilesThatDoNotLoadKeepTheLoadedCertificateInUse) {
  auto identity = TlsIdentity::Load(files_, absl::Seconds(1), &clock_);
  ASSERT_TRUE(identity.ok()) << identity.status();
  // The certificate renewed, its key not yet: the pair does not match.
  Key second_key = NewKey();
  ASSERT_NO_FATAL_FAILURE(WriteCert(files_.cert, SelfSigned(second_key.get(), "second").get()));
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Served(**identity), "first");
  // A file gone for a moment.
  std::filesystem::rename(files_.key, files_.key + ".away");
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Served(**identity), "first");
  std::filesystem::rename(files_.key + ".away", files_.key);
  // Then the key arrives.
  ASSERT_NO_FATAL_FAILURE(WriteKey(files_.key, second_key.get()));
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Served(**identity), "second");
  EXPECT_EQ((*identity)->loads(), 2);
}

TEST_F(TlsIdentityTest, TheClientCaIsGivenToEachConnectionAndReloadedToo) {
  Key ca_key = NewKey();
  const std::string ca_file = dir_ + "/ca.pem";
  ASSERT_NO_FATAL_FAILURE(WriteCert(ca_file, SelfSigned(ca_key.get(), "first CA").get()));
  files_.client_ca = ca_file;
  auto identity = TlsIdentity::Load(files_, absl::Seconds(1), &clock_);
  ASSERT_TRUE(identity.ok()) << identity.status();
  auto asked_for = [&] {
    SSL* ssl = SSL_new(context_);
    EXPECT_TRUE((*identity)->ApplyTo(ssl));
    STACK_OF(X509_NAME)* names = SSL_get_client_CA_list(ssl);
    std::string cn = sk_X509_NAME_num(names) == 1 ? CommonName(sk_X509_NAME_value(names, 0)) : "none";
    X509_STORE* verify_store = nullptr;  // what the client's certificate is checked against
    SSL_get0_verify_cert_store(ssl, &verify_store);
    EXPECT_NE(verify_store, nullptr);
    SSL_free(ssl);
    return cn;
  };
  EXPECT_EQ(asked_for(), "first CA");
  ASSERT_NO_FATAL_FAILURE(WriteCert(ca_file, SelfSigned(ca_key.get(), "second CA").get()));
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(asked_for(), "second CA");
}

TEST_F(TlsIdentityTest, LoadNamesTheFileThatFailed) {
  TlsFiles missing = files_;
  missing.cert = dir_ + "/nowhere.crt";
  auto identity = TlsIdentity::Load(missing, absl::Seconds(1), &clock_);
  EXPECT_EQ(identity.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(identity.status().message(), HasSubstr("nowhere.crt"));

  Key other = NewKey();
  ASSERT_NO_FATAL_FAILURE(WriteKey(files_.key, other.get()));
  identity = TlsIdentity::Load(files_, absl::Seconds(1), &clock_);
  EXPECT_EQ(identity.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(identity.status().message(), HasSubstr("does not match the certificate"));

  std::ofstream(files_.cert) << "not a certificate\n";
  identity = TlsIdentity::Load(files_, absl::Seconds(1), &clock_);
  EXPECT_THAT(identity.status().message(), HasSubstr("holds no PEM certificate"));
}

// A chain whose second certificate does not parse (a file caught half
// written) once loaded as the leaf alone, without a word: clients that need
// the intermediate then failed every handshake.
TEST_F(TlsIdentityTest, ADamagedCertificateInTheChainKeepsTheLoadedOne) {
  auto identity = TlsIdentity::Load(files_, absl::Seconds(1), &clock_);
  ASSERT_TRUE(identity.ok()) << identity.status();
  Key second_key = NewKey();
  const std::string leaf_file = dir_ + "/leaf.pem";
  ASSERT_NO_FATAL_FAILURE(WriteCert(leaf_file, SelfSigned(second_key.get(), "second").get()));
  ASSERT_NO_FATAL_FAILURE(WriteCert(dir_ + "/intermediate.pem", SelfSigned(second_key.get(), "intermediate").get()));
  std::stringstream leaf, intermediate;
  leaf << std::ifstream(leaf_file).rdbuf();
  intermediate << std::ifstream(dir_ + "/intermediate.pem").rdbuf();
  const std::string half = intermediate.str().substr(0, intermediate.str().size() / 2) + "\n-----END CERTIFICATE-----\n";
  std::ofstream(files_.cert) << leaf.str() << half;
  ASSERT_NO_FATAL_FAILURE(WriteKey(files_.key, second_key.get()));

  auto refused = TlsIdentity::Load(files_, absl::Seconds(1), &clock_);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("certificate 2 does not parse"));
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Served(**identity), "first");  // kept until the chain is whole

  std::ofstream(files_.cert) << leaf.str() << intermediate.str();
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Served(**identity), "second");
}

}  // namespace
}  // namespace quantd
