// Tests for certs/: the CA files and their checks, the leaves and the leaf cache. Foreign CAs
// (RSA, intermediate, expired, non-CA) are built here with the OpenSSL API.
#include "certs/certificate_authority.hpp"
#include "certs/leaf_cache.hpp"
#include "certs/leaf_minter.hpp"
#include "certs/openssl_ptr.hpp"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

namespace tokgate::certs {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::system_clock;
using namespace std::chrono_literals;

constexpr auto one_day = std::chrono::hours(24);

// True if text has the shape: each 'X' in shape stands for one upper-case hex digit.
bool matches_shape(std::string_view text, std::string_view shape) {
  if (text.size() != shape.size()) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const bool hex_digit = (text[i] >= '0' && text[i] <= '9') || (text[i] >= 'A' && text[i] <= 'F');
    if (shape[i] == 'X' ? !hex_digit : text[i] != shape[i]) return false;
  }
  return true;
}

mode_t file_mode(const fs::path& path) {
  struct stat info {};
  EXPECT_EQ(::stat(path.c_str(), &info), 0) << path;
  return info.st_mode & 07777;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_text(const fs::path& path, const std::string& text, mode_t mode) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
  }
  ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
}

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(size));
}

std::string pem_of(X509* certificate) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), certificate);
  return bio_text(bio.get());
}

std::string pem_of(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  return bio_text(bio.get());
}

EvpPkeyPtr make_ec_key() {
  return EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
}
EvpPkeyPtr make_rsa_key(std::size_t bits) {
  return EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", bits));
}

struct CertSpec {
  std::string common_name{};
  EVP_PKEY* key = nullptr;  // the subject's key
  X509* issuer = nullptr;   // nullptr: self-signed
  EVP_PKEY* issuer_key = nullptr;
  const char* basic_constraints = "critical,CA:TRUE";
  const char* key_usage = "critical,keyCertSign,cRLSign";
  long not_before_days = -1;
  long not_after_days = 365;
};

X509Ptr make_cert(const CertSpec& spec) {
  X509Ptr certificate(X509_new());
  X509_set_version(certificate.get(), X509_VERSION_3);
  set_random_serial(certificate.get());
  X509NamePtr name(X509_NAME_new());
  X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1,
                             -1, 0);
  X509_set_subject_name(certificate.get(), name.get());
  X509* issuer = spec.issuer != nullptr ? spec.issuer : certificate.get();
  X509_set_issuer_name(certificate.get(),
                       spec.issuer != nullptr ? X509_get_subject_name(spec.issuer) : name.get());
  X509_gmtime_adj(X509_getm_notBefore(certificate.get()), spec.not_before_days * 86400);
  X509_gmtime_adj(X509_getm_notAfter(certificate.get()), spec.not_after_days * 86400);
  X509_set_pubkey(certificate.get(), spec.key);
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer, certificate.get(), nullptr, nullptr, 0);
  std::vector<std::pair<int, const char*>> extensions = {
      {NID_subject_key_identifier, "hash"}, {NID_authority_key_identifier, "keyid:always"}};
  if (spec.basic_constraints != nullptr) {
    extensions.emplace_back(NID_basic_constraints, spec.basic_constraints);
  }
  if (spec.key_usage != nullptr) extensions.emplace_back(NID_key_usage, spec.key_usage);
  for (const auto& [nid, value] : extensions) {
    X509ExtensionPtr extension(X509V3_EXT_nconf_nid(nullptr, &context, nid, value));
    EXPECT_TRUE(extension) << OBJ_nid2sn(nid) << ": " << openssl_errors();
    X509_add_ext(certificate.get(), extension.get(), -1);
  }
  const bool signed_ok =
      X509_sign(certificate.get(), spec.issuer_key != nullptr ? spec.issuer_key : spec.key,
                EVP_sha256()) > 0;
  EXPECT_TRUE(signed_ok) << openssl_errors();
  return certificate;
}

// Verifies leaf up to `root` (trusted), with `untrusted` as the chain a server would send.
// A purpose of 0 checks the chain only (to verify a CA certificate itself).
std::string verify(X509* leaf, X509* root, const std::vector<X509Ptr>& untrusted = {},
                   int purpose = X509_PURPOSE_SSL_SERVER) {
  X509StorePtr store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), root);
  X509StackPtr chain(sk_X509_new_null());
  for (const X509Ptr& certificate : untrusted) sk_X509_push(chain.get(), certificate.get());
  X509StoreCtxPtr context(X509_STORE_CTX_new());
  X509_STORE_CTX_init(context.get(), store.get(), leaf, chain.get());
  // Strict mode also checks RFC 5280 details: AKI/SKI present, CA basicConstraints critical.
  X509_STORE_CTX_set_flags(context.get(), X509_V_FLAG_X509_STRICT);
  if (purpose != 0) X509_STORE_CTX_set_purpose(context.get(), purpose);
  const int result = X509_verify_cert(context.get());
  // The stack does not own its certificates: `untrusted` does. Empty it before it is freed.
  while (sk_X509_num(chain.get()) > 0) sk_X509_pop(chain.get());
  if (result == 1) return "ok";
  return X509_verify_cert_error_string(X509_STORE_CTX_get_error(context.get()));
}

using SslCtxPtr = std::unique_ptr<SSL_CTX, OpensslDeleter<&SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, OpensslDeleter<&SSL_free>>;

// A TLS handshake in memory (a BIO pair, no socket): a server showing leaf + chain, a client
// trusting only `root` and checking `host`. Returns "ok" or what went wrong.
std::string tls_handshake(X509* leaf, EVP_PKEY* key, const std::vector<X509Ptr>& chain, X509* root,
                          const char* host) {
  SslCtxPtr server_context(SSL_CTX_new(TLS_server_method()));
  SslCtxPtr client_context(SSL_CTX_new(TLS_client_method()));
  if (SSL_CTX_use_certificate(server_context.get(), leaf) != 1 ||
      SSL_CTX_use_PrivateKey(server_context.get(), key) != 1 ||
      SSL_CTX_check_private_key(server_context.get()) != 1) {
    return "server setup: " + openssl_errors();
  }
  for (const X509Ptr& certificate : chain) {
    SSL_CTX_add1_chain_cert(server_context.get(), certificate.get());
  }
  X509_STORE_add_cert(SSL_CTX_get_cert_store(client_context.get()), root);
  SSL_CTX_set_verify(client_context.get(), SSL_VERIFY_PEER, nullptr);
  SslPtr server(SSL_new(server_context.get()));
  SslPtr client(SSL_new(client_context.get()));
  SSL_set1_host(client.get(), host);
  BIO* client_end = nullptr;
  BIO* server_end = nullptr;
  BIO_new_bio_pair(&client_end, 0, &server_end, 0);
  SSL_set_bio(client.get(), client_end, client_end);
  SSL_set_bio(server.get(), server_end, server_end);
  SSL_set_connect_state(client.get());
  SSL_set_accept_state(server.get());
  bool client_done = false;
  bool server_done = false;
  for (int round = 0; round < 20 && !(client_done && server_done); ++round) {
    for (auto [ssl, done] : {std::pair{client.get(), &client_done}, {server.get(), &server_done}}) {
      if (*done) continue;
      const int result = SSL_do_handshake(ssl);
      if (result == 1) {
        *done = true;
      } else if (const int error = SSL_get_error(ssl, result); error != SSL_ERROR_WANT_READ) {
        return std::string(ssl == client.get() ? "client" : "server") +
               " failed: " + X509_verify_cert_error_string(SSL_get_verify_result(client.get())) +
               "; " + openssl_errors();
      }
    }
  }
  if (!client_done || !server_done) return "handshake did not finish";
  return SSL_get_verify_result(client.get()) == X509_V_OK ? "ok" : "not verified";
}

std::vector<std::string> alt_names(X509* certificate) {
  std::vector<std::string> names;
  GeneralNamesPtr decoded(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate, NID_subject_alt_name, nullptr, nullptr)));
  for (int i = 0; decoded && i < sk_GENERAL_NAME_num(decoded.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(decoded.get(), i);
    int type = 0;
    const auto* value = static_cast<const ASN1_STRING*>(GENERAL_NAME_get0_value(name, &type));
    const std::string bytes(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                            static_cast<std::size_t>(ASN1_STRING_length(value)));
    names.push_back((type == GEN_DNS ? "DNS:" : "IP:") +
                    (type == GEN_DNS ? bytes : std::to_string(bytes.size()) + "bytes"));
  }
  return names;
}

std::string common_name_of(X509* certificate) {
  char text[256] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(certificate), NID_commonName, text, sizeof text);
  return text;
}

bool extension_is_critical(X509* certificate, int nid) {
  const int index = X509_get_ext_by_NID(certificate, nid, -1);
  return index >= 0 && X509_EXTENSION_get_critical(X509_get_ext(certificate, index)) == 1;
}

Clock::time_point not_before_of(X509* certificate) {
  return *to_time_point(X509_get0_notBefore(certificate));
}
Clock::time_point not_after_of(X509* certificate) {
  return *to_time_point(X509_get0_notAfter(certificate));
}

// A temporary directory per test. Every error a test sees goes through expect_error(), and at
// the end no error may quote a line of any key file the test made.
class CertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "tokgate-certs-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }

  void TearDown() override {
    for (const fs::path& key : keys_) remember_key_text(read_text(key));
    for (const std::string& error : errors_) {
      for (const std::string& line : key_lines_) {
        EXPECT_EQ(error.find(line), std::string::npos) << "key text in error: " << error;
      }
    }
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  template <typename T>
  std::string expect_error(const std::expected<T, std::string>& result) {
    EXPECT_FALSE(result.has_value());
    if (result.has_value()) return {};
    errors_.push_back(result.error());
    return result.error();
  }

  CertificateAuthority create_ca(const std::string& name) {
    auto ca = CertificateAuthority::create(dir_ / name);
    EXPECT_TRUE(ca) << ca.error();
    keys_.push_back(dir_ / name / "ca.key");
    return std::move(*ca);
  }

  // Writes a bring-your-own CA: `certificates` into one PEM file, `key` with `key_mode`.
  std::pair<fs::path, fs::path> write_foreign_ca(const std::string& name,
                                                 const std::vector<X509*>& certificates,
                                                 EVP_PKEY* key, mode_t key_mode = 0600) {
    std::string pem;
    for (X509* certificate : certificates) pem += pem_of(certificate);
    const fs::path cert_path = dir_ / (name + ".pem");
    const fs::path key_path = dir_ / (name + ".key");
    write_text(cert_path, pem, 0644);
    write_text(key_path, pem_of(key), key_mode);
    keys_.push_back(key_path);
    return {cert_path, key_path};
  }

  void remember_key_text(const std::string& pem) {
    std::istringstream lines(pem);
    for (std::string line; std::getline(lines, line);) {
      if (line.size() >= 16 && line.rfind("-----", 0) != 0) key_lines_.push_back(line);
    }
  }

  fs::path dir_;
  std::vector<fs::path> keys_;
  std::vector<std::string> key_lines_;
  std::vector<std::string> errors_;
};

// --- CertificateAuthority ---------------------------------------------------------------------

TEST_F(CertsTest, CreateWritesKeyPrivateAndCertificatePublic) {
  const fs::path ca_dir = dir_ / "new" / "ca";
  const mode_t old_umask = ::umask(0);  // the modes must not depend on the umask
  CertificateAuthority ca = create_ca("new/ca");
  ::umask(old_umask);

  EXPECT_EQ(file_mode(ca_dir), 0700u);
  EXPECT_EQ(file_mode(ca_dir / "ca.key"), 0600u);
  EXPECT_EQ(file_mode(ca_dir / "ca.pem"), 0644u);
  EXPECT_EQ(read_text(ca_dir / "ca.pem"), ca.pem());

  X509* certificate = ca.certificate();
  EXPECT_EQ(X509_get_version(certificate), X509_VERSION_3);
  EXPECT_EQ(X509_self_signed(certificate, 1), 1);
  EXPECT_EQ(X509_check_ca(certificate), 1);
  EXPECT_TRUE(extension_is_critical(certificate, NID_basic_constraints));
  EXPECT_TRUE(extension_is_critical(certificate, NID_key_usage));
  EXPECT_EQ(X509_get_pathlen(certificate), 0);
  EXPECT_EQ(X509_get_key_usage(certificate), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_NE(X509_get0_subject_key_id(certificate), nullptr);
  EXPECT_NE(X509_get0_authority_key_id(certificate), nullptr);
  const ASN1_INTEGER* serial = X509_get0_serialNumber(certificate);
  EXPECT_NE(ASN1_STRING_type(serial), V_ASN1_NEG_INTEGER);
  EXPECT_GE(ASN1_STRING_length(serial), 8);
  EXPECT_EQ(EVP_PKEY_get_base_id(ca.private_key()), EVP_PKEY_EC);
  EXPECT_EQ(EVP_PKEY_get_bits(ca.private_key()), 256);
  EXPECT_TRUE(matches_shape(ca.subject(), "CN=tokgate CA XXXXXXXX,O=tokgate")) << ca.subject();
  EXPECT_LT(ca.not_before(), Clock::now());
  EXPECT_GT(ca.not_after(), Clock::now() + 9 * 365 * one_day);
  EXPECT_LT(ca.not_after(), Clock::now() + 11 * 365 * one_day);
  EXPECT_TRUE(ca.chain_to_send().empty());  // a root is never sent
  EXPECT_EQ(verify(certificate, certificate, {}, 0), "ok");
}

TEST_F(CertsTest, CreateRefusesToOverwrite) {
  create_ca("ca");
  const std::string key_before = read_text(dir_ / "ca" / "ca.key");
  const std::string error = expect_error(CertificateAuthority::create(dir_ / "ca"));
  EXPECT_NE(error.find("refusing to overwrite"), std::string::npos) << error;
  EXPECT_NE(error.find((dir_ / "ca").string()), std::string::npos) << error;
  EXPECT_EQ(read_text(dir_ / "ca" / "ca.key"), key_before);

  // A key alone (say, a create that died halfway) is not overwritten either.
  fs::create_directory(dir_ / "half");
  write_text(dir_ / "half" / "ca.key", "precious", 0600);
  expect_error(CertificateAuthority::create(dir_ / "half"));
  EXPECT_EQ(read_text(dir_ / "half" / "ca.key"), "precious");
  EXPECT_FALSE(fs::exists(dir_ / "half" / "ca.pem"));
}

TEST_F(CertsTest, CustomCommonNameAndTwoInstallsDiffer) {
  auto first = CertificateAuthority::create(dir_ / "a", "Lab CA");
  auto second = CertificateAuthority::create(dir_ / "b", "Lab CA");
  ASSERT_TRUE(first && second);
  keys_ = {dir_ / "a" / "ca.key", dir_ / "b" / "ca.key"};
  EXPECT_EQ(first->subject().rfind("CN=Lab CA ", 0), 0u) << first->subject();
  EXPECT_NE(first->subject(), second->subject());
  EXPECT_NE(first->fingerprint_sha256(), second->fingerprint_sha256());

  // An over-long name is cut so that name + suffix fit the 64-byte limit.
  auto long_name = CertificateAuthority::create(dir_ / "c", std::string(200, 'x'));
  ASSERT_TRUE(long_name) << long_name.error();
  keys_.push_back(dir_ / "c" / "ca.key");
  EXPECT_EQ(common_name_of(long_name->certificate()).size(), 64u);
}

TEST_F(CertsTest, LoadDirRoundTrips) {
  CertificateAuthority created = create_ca("ca");
  auto loaded = CertificateAuthority::load_dir(dir_ / "ca");
  ASSERT_TRUE(loaded) << loaded.error();
  EXPECT_EQ(loaded->fingerprint_sha256(), created.fingerprint_sha256());
  EXPECT_TRUE(matches_shape(loaded->fingerprint_sha256(),
                            "XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:"
                            "XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX:XX"))
      << loaded->fingerprint_sha256();
  EXPECT_EQ(loaded->subject(), created.subject());
  EXPECT_EQ(loaded->der(), created.der());
  EXPECT_EQ(loaded->pem(), created.pem());
  EXPECT_EQ(loaded->not_before(), created.not_before());
  EXPECT_EQ(loaded->not_after(), created.not_after());
  EXPECT_EQ(EVP_PKEY_eq(loaded->private_key(), created.private_key()), 1);
  EXPECT_TRUE(loaded->chain_to_send().empty());
  EXPECT_GT(created.der().size(), 300u);
}

TEST_F(CertsTest, LoadOrCreateCreatesOnceThenLoads) {
  bool created = false;
  auto first = CertificateAuthority::load_or_create(dir_ / "ca", &created);
  ASSERT_TRUE(first) << first.error();
  keys_.push_back(dir_ / "ca" / "ca.key");
  EXPECT_TRUE(created);
  auto second = CertificateAuthority::load_or_create(dir_ / "ca", &created);
  ASSERT_TRUE(second) << second.error();
  EXPECT_FALSE(created);
  EXPECT_EQ(first->fingerprint_sha256(), second->fingerprint_sha256());
}

TEST_F(CertsTest, KeyReadableByOthersIsRefused) {
  create_ca("ca");
  const fs::path key_path = dir_ / "ca" / "ca.key";
  for (const mode_t mode : {0644, 0640, 0604, 0660}) {
    ASSERT_EQ(::chmod(key_path.c_str(), mode), 0);
    const std::string error = expect_error(CertificateAuthority::load_dir(dir_ / "ca"));
    EXPECT_NE(error.find(key_path.string()), std::string::npos) << error;
    EXPECT_NE(error.find("chmod 600"), std::string::npos) << error;
  }
  ASSERT_EQ(::chmod(key_path.c_str(), 0400), 0);  // owner-only read is fine
  EXPECT_TRUE(CertificateAuthority::load_dir(dir_ / "ca"));
}

TEST_F(CertsTest, KeyNotMatchingCertificateIsRefused) {
  create_ca("a");
  create_ca("b");
  const std::string error =
      expect_error(CertificateAuthority::load_files(dir_ / "a" / "ca.pem", dir_ / "b" / "ca.key"));
  EXPECT_NE(error.find("does not match"), std::string::npos) << error;
  EXPECT_NE(error.find((dir_ / "b" / "ca.key").string()), std::string::npos) << error;
}

TEST_F(CertsTest, NonCaCertificateIsRefused) {
  EvpPkeyPtr key = make_ec_key();
  X509Ptr not_ca = make_cert({.common_name = "server",
                              .key = key.get(),
                              .basic_constraints = "critical,CA:FALSE",
                              .key_usage = "critical,digitalSignature"});
  const auto [cert_path, key_path] = write_foreign_ca("server", {not_ca.get()}, key.get());
  const std::string error = expect_error(CertificateAuthority::load_files(cert_path, key_path));
  EXPECT_NE(error.find("not a CA"), std::string::npos) << error;
  EXPECT_NE(error.find(cert_path.string()), std::string::npos) << error;

  // A CA whose keyUsage forbids signing certificates is refused too.
  X509Ptr no_cert_sign =
      make_cert({.common_name = "crl only", .key = key.get(), .key_usage = "critical,cRLSign"});
  const auto [cert2, key2] = write_foreign_ca("crl", {no_cert_sign.get()}, key.get());
  EXPECT_NE(expect_error(CertificateAuthority::load_files(cert2, key2)).find("keyCertSign"),
            std::string::npos);
}

TEST_F(CertsTest, ExpiredCaIsRefused) {
  EvpPkeyPtr key = make_ec_key();
  X509Ptr expired = make_cert(
      {.common_name = "old", .key = key.get(), .not_before_days = -400, .not_after_days = -1});
  const auto [cert_path, key_path] = write_foreign_ca("old", {expired.get()}, key.get());
  EXPECT_NE(expect_error(CertificateAuthority::load_files(cert_path, key_path)).find("expired"),
            std::string::npos);
}

TEST_F(CertsTest, UnreadableFilesAreRefusedWithoutQuotingThem) {
  CertificateAuthority ca = create_ca("ca");
  const fs::path key_path = dir_ / "ca" / "ca.key";
  const fs::path cert_path = dir_ / "ca" / "ca.pem";
  const std::string key_text = read_text(key_path);

  // Swapped arguments: the key file as certificate and the certificate (0644) as key.
  EXPECT_NE(expect_error(CertificateAuthority::load_files(key_path, cert_path)).find("chmod 600"),
            std::string::npos);
  const fs::path private_cert = dir_ / "cert-as-key";
  write_text(private_cert, read_text(cert_path), 0600);
  expect_error(CertificateAuthority::load_files(key_path, private_cert));

  // A damaged key: one base64 line changed.
  std::string damaged = key_text;
  damaged[damaged.find('\n') + 5] ^= 0x01;
  write_text(dir_ / "damaged.key", damaged, 0600);
  expect_error(CertificateAuthority::load_files(cert_path, dir_ / "damaged.key"));

  // A key with the PEM armour stripped, and an encrypted key (which must not prompt).
  std::string bare = key_text.substr(key_text.find('\n') + 1);
  bare = bare.substr(0, bare.find("-----"));
  write_text(dir_ / "bare.key", bare, 0600);
  expect_error(CertificateAuthority::load_files(cert_path, dir_ / "bare.key"));
  BioPtr encrypted(BIO_new(BIO_s_mem()));
  static char passphrase[] = "secret";
  PEM_write_bio_PKCS8PrivateKey(encrypted.get(), ca.private_key(), EVP_aes_128_cbc(), passphrase,
                                sizeof passphrase - 1, nullptr, nullptr);
  write_text(dir_ / "encrypted.key", bio_text(encrypted.get()), 0600);
  const std::string error =
      expect_error(CertificateAuthority::load_files(cert_path, dir_ / "encrypted.key"));
  EXPECT_NE(error.find("encrypted"), std::string::npos) << error;

  // Not a regular file, missing files, an empty certificate file.
  EXPECT_NE(expect_error(CertificateAuthority::load_files(cert_path, dir_)).find("regular"),
            std::string::npos);
  expect_error(CertificateAuthority::load_files(dir_ / "missing.pem", key_path));
  write_text(dir_ / "empty.pem", "", 0644);
  EXPECT_NE(expect_error(CertificateAuthority::load_files(dir_ / "empty.pem", key_path))
                .find("no PEM certificate"),
            std::string::npos);
  // The key text lines and the damaged variant must not show up in any error.
  remember_key_text(damaged);
}

TEST_F(CertsTest, RsaCaIsAcceptedAndSignsLeaves) {
  EvpPkeyPtr key = make_rsa_key(2048);
  X509Ptr root = make_cert({.common_name = "RSA root", .key = key.get()});
  const auto [cert_path, key_path] = write_foreign_ca("rsa", {root.get()}, key.get());
  auto ca = CertificateAuthority::load_files(cert_path, key_path);
  ASSERT_TRUE(ca) << ca.error();
  EXPECT_TRUE(ca->chain_to_send().empty());
  LeafMinter minter(*ca);
  auto leaf = minter.mint({.common_name = "rsa.example"});
  ASSERT_TRUE(leaf) << leaf.error();
  EXPECT_EQ(X509_get_signature_nid(leaf->get()), NID_sha256WithRSAEncryption);
  EXPECT_EQ(verify(leaf->get(), root.get()), "ok");
  EXPECT_EQ(
      tls_handshake(leaf->get(), minter.leaf_key(), ca->chain_to_send(), root.get(), "rsa.example"),
      "ok");

  EvpPkeyPtr weak = make_rsa_key(1024);
  X509Ptr weak_root = make_cert({.common_name = "weak", .key = weak.get()});
  const auto [weak_cert, weak_key] = write_foreign_ca("weak", {weak_root.get()}, weak.get());
  EXPECT_NE(expect_error(CertificateAuthority::load_files(weak_cert, weak_key)).find("2048"),
            std::string::npos);
}

TEST_F(CertsTest, IntermediateCaSendsItselfButNotTheRoot) {
  EvpPkeyPtr root_key = make_ec_key();
  EvpPkeyPtr intermediate_key = make_ec_key();
  X509Ptr root = make_cert({.common_name = "Test Root", .key = root_key.get()});
  X509Ptr intermediate = make_cert({.common_name = "Test Intermediate",
                                    .key = intermediate_key.get(),
                                    .issuer = root.get(),
                                    .issuer_key = root_key.get(),
                                    .basic_constraints = "critical,CA:TRUE,pathlen:0"});
  ASSERT_EQ(verify(intermediate.get(), root.get(), {}, 0), "ok");
  const auto [cert_path, key_path] =
      write_foreign_ca("intermediate", {intermediate.get(), root.get()}, intermediate_key.get());

  auto ca = CertificateAuthority::load_files(cert_path, key_path);
  ASSERT_TRUE(ca) << ca.error();
  ASSERT_EQ(ca->chain_to_send().size(), 1u);
  EXPECT_EQ(X509_cmp(ca->chain_to_send()[0].get(), intermediate.get()), 0);
  EXPECT_EQ(X509_cmp(ca->certificate(), intermediate.get()), 0);

  LeafMinter minter(*ca);
  auto leaf = minter.mint({.common_name = "www.example.org", .dns_names = {"example.org"}});
  ASSERT_TRUE(leaf) << leaf.error();
  EXPECT_EQ(verify(leaf->get(), root.get(), ca->chain_to_send()), "ok");
  EXPECT_EQ(
      tls_handshake(leaf->get(), minter.leaf_key(), ca->chain_to_send(), root.get(), "example.org"),
      "ok");
  // Without the intermediate the chain cannot be built: it really is needed.
  EXPECT_NE(verify(leaf->get(), root.get()), "ok");
}

// --- LeafMinter -------------------------------------------------------------------------------

TEST_F(CertsTest, LeafVerifiesAndCarriesEveryValidName) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  const LeafRequest request{
      .common_name = "Example.COM",
      .dns_names = {"example.com", "WWW.example.com.", "*.cdn.example.com", "1.2.3.4.nip.io",
                    "bad name", "", "*.com", "a*.example.com", std::string(300, 'a'),
                    "x." + std::string(64, 'b') + ".com", "10.0.0.1"},
      .ip_addresses = {"192.0.2.7", "2001:DB8::1", "[::1]", "not-an-ip", "1.2.3", "1.2.3.4x",
                       "192.0.2.7"}};
  auto leaf = minter.mint(request);
  ASSERT_TRUE(leaf) << leaf.error();
  X509* certificate = leaf->get();

  EXPECT_EQ(verify(certificate, ca.certificate()), "ok");
  for (const char* host :
       {"example.com", "www.example.com", "img.cdn.example.com", "1.2.3.4.nip.io", "EXAMPLE.com"}) {
    EXPECT_EQ(X509_check_host(certificate, host, 0, 0, nullptr), 1) << host;
  }
  for (const char* host : {"cdn.example.com", "other.com", "a.b.cdn.example.com"}) {
    EXPECT_NE(X509_check_host(certificate, host, 0, 0, nullptr), 1) << host;
  }
  for (const char* ip : {"192.0.2.7", "2001:db8::1", "::1", "10.0.0.1"}) {
    EXPECT_EQ(X509_check_ip_asc(certificate, ip, 0), 1) << ip;
  }
  EXPECT_NE(X509_check_ip_asc(certificate, "1.2.3.4", 0), 1);
  const std::vector<std::string> expected_names = {
      "DNS:example.com",    "DNS:www.example.com", "DNS:*.cdn.example.com",
      "DNS:1.2.3.4.nip.io", "IP:4bytes",           "IP:4bytes",
      "IP:16bytes",         "IP:16bytes"};
  EXPECT_EQ(alt_names(certificate), expected_names);
  EXPECT_EQ(common_name_of(certificate), "example.com");

  EXPECT_EQ(X509_get_version(certificate), X509_VERSION_3);
  EXPECT_EQ(X509_check_ca(certificate), 0);
  EXPECT_TRUE(extension_is_critical(certificate, NID_basic_constraints));
  EXPECT_TRUE((X509_get_extended_key_usage(certificate) & XKU_SSL_SERVER) != 0);
  EXPECT_EQ(X509_get_extended_key_usage(certificate), static_cast<uint32_t>(XKU_SSL_SERVER));
  EXPECT_EQ(X509_get_key_usage(certificate), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_TRUE(extension_is_critical(certificate, NID_key_usage));
  EXPECT_EQ(X509_get_signature_nid(certificate), NID_ecdsa_with_SHA256);
  EXPECT_NE(X509_get0_subject_key_id(certificate), nullptr);
  ASSERT_NE(X509_get0_authority_key_id(certificate), nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(certificate),
                                  X509_get0_subject_key_id(ca.certificate())),
            0);
  EXPECT_EQ(
      X509_NAME_cmp(X509_get_issuer_name(certificate), X509_get_subject_name(ca.certificate())), 0);

  const auto now = Clock::now();
  EXPECT_LT(not_before_of(certificate), now - 23h);
  EXPECT_GT(not_after_of(certificate), now + 29 * one_day);
  EXPECT_LE(not_after_of(certificate), now + 30 * one_day + 1s);
  EXPECT_EQ(EVP_PKEY_eq(X509_get0_pubkey(certificate), minter.leaf_key()), 1);
}

TEST_F(CertsTest, EveryLeafSharesTheMinterKeyAndHasItsOwnSerial) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  EXPECT_EQ(EVP_PKEY_get_base_id(minter.leaf_key()), EVP_PKEY_EC);
  EXPECT_EQ(EVP_PKEY_get_bits(minter.leaf_key()), 256);
  EXPECT_NE(EVP_PKEY_eq(minter.leaf_key(), ca.private_key()), 1);
  std::set<std::string> serials;
  for (const char* name : {"a.example", "b.example", "c.example", "a.example"}) {
    auto leaf = minter.mint({.common_name = name});
    ASSERT_TRUE(leaf) << leaf.error();
    EXPECT_EQ(EVP_PKEY_eq(X509_get0_pubkey(leaf->get()), minter.leaf_key()), 1);
    BignumPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf->get()), nullptr));
    char* hex = BN_bn2hex(serial.get());
    serials.insert(hex);
    OPENSSL_free(hex);
  }
  EXPECT_EQ(serials.size(), 4u);
}

TEST_F(CertsTest, CommonNameFallsBackAndIsCut) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  auto empty_cn = minter.mint({.dns_names = {"first.example", "second.example"}});
  ASSERT_TRUE(empty_cn) << empty_cn.error();
  EXPECT_EQ(common_name_of(empty_cn->get()), "first.example");

  auto ip_only = minter.mint({.ip_addresses = {"192.0.2.1"}});
  ASSERT_TRUE(ip_only) << ip_only.error();
  EXPECT_EQ(common_name_of(ip_only->get()), "192.0.2.1");
  EXPECT_EQ(X509_check_ip_asc(ip_only->get(), "192.0.2.1", 0), 1);

  // Not a DNS name: kept as text but cut to 64 bytes, without splitting a UTF-8 character.
  std::string long_name = "Ünïcödé org ";
  while (long_name.size() < 100) long_name += "é";
  auto long_cn = minter.mint({.common_name = long_name, .dns_names = {"x.example"}});
  ASSERT_TRUE(long_cn) << long_cn.error();
  X509_NAME_ENTRY* entry = X509_NAME_get_entry(X509_get_subject_name(long_cn->get()), 0);
  const ASN1_STRING* value = X509_NAME_ENTRY_get_data(entry);
  EXPECT_LE(ASN1_STRING_length(value), 64);
  EXPECT_GE(ASN1_STRING_length(value), 63);
  EXPECT_EQ(alt_names(long_cn->get()), std::vector<std::string>{"DNS:x.example"});

  auto bad_utf8 = minter.mint({.common_name = "\xff\xfe bad", .dns_names = {"y.example"}});
  ASSERT_TRUE(bad_utf8) << bad_utf8.error();
  EXPECT_EQ(common_name_of(bad_utf8->get()), "y.example");
}

TEST_F(CertsTest, RequestWithoutValidNamesFails) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  const std::string error = expect_error(minter.mint(
      {.common_name = "bad\nname", .dns_names = {"", "a b"}, .ip_addresses = {"999.1.1.1"}}));
  EXPECT_NE(error.find("bad?name"), std::string::npos) << error;  // control bytes masked
  expect_error(minter.mint({}));
}

TEST_F(CertsTest, AltNamesAreCappedWithCommonNameFirst) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  LeafRequest request{.common_name = "zz-main.example"};
  for (int i = 0; i < 500; ++i) request.dns_names.push_back("h" + std::to_string(i) + ".example");
  request.ip_addresses = {"192.0.2.1"};
  auto leaf = minter.mint(request);
  ASSERT_TRUE(leaf) << leaf.error();
  const auto names = alt_names(leaf->get());
  ASSERT_EQ(names.size(), LeafMinter::max_names);
  EXPECT_EQ(names.front(), "DNS:zz-main.example");
  EXPECT_EQ(names.back(), "DNS:h98.example");
  EXPECT_EQ(verify(leaf->get(), ca.certificate()), "ok");
}

TEST_F(CertsTest, LeafNeverOutlivesItsCa) {
  EvpPkeyPtr key = make_ec_key();
  X509Ptr short_root = make_cert({.common_name = "Short", .key = key.get(), .not_after_days = 10});
  const auto [cert_path, key_path] = write_foreign_ca("short", {short_root.get()}, key.get());
  auto ca = CertificateAuthority::load_files(cert_path, key_path);
  ASSERT_TRUE(ca) << ca.error();
  LeafMinter minter(*ca);
  auto leaf = minter.mint({.common_name = "short.example"});
  ASSERT_TRUE(leaf) << leaf.error();
  EXPECT_EQ(not_after_of(leaf->get()), ca->not_after());
  EXPECT_EQ(verify(leaf->get(), short_root.get()), "ok");
}

TEST_F(CertsTest, MinterOutlivesTheCaObjectAndMintsFromManyThreads) {
  std::optional<LeafMinter> minter;
  std::string root_pem;
  {
    CertificateAuthority ca = create_ca("ca");
    root_pem = ca.pem();
    minter.emplace(ca);
  }
  BioPtr bio(BIO_new_mem_buf(root_pem.data(), static_cast<int>(root_pem.size())));
  X509Ptr root(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  std::vector<std::thread> threads;
  std::atomic<int> verified{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        auto leaf = minter->mint(
            {.common_name = "t" + std::to_string(t) + "-" + std::to_string(i) + ".example"});
        if (leaf && verify(leaf->get(), root.get()) == "ok") ++verified;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(verified.load(), 100);
}

TEST_F(CertsTest, LeafServesARealTlsHandshake) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  LeafCache cache(minter, 4);
  auto leaf = cache.get({.common_name = "api.example.net", .dns_names = {"api.example.net"}});
  ASSERT_TRUE(leaf) << leaf.error();
  EXPECT_EQ(tls_handshake((*leaf)->certificate(), minter.leaf_key(), ca.chain_to_send(),
                          ca.certificate(), "api.example.net"),
            "ok");
  // The client checks the name: another host fails.
  EXPECT_NE(tls_handshake((*leaf)->certificate(), minter.leaf_key(), ca.chain_to_send(),
                          ca.certificate(), "other.example.net"),
            "ok");
}

// --- LeafCache --------------------------------------------------------------------------------

TEST_F(CertsTest, CacheHitReturnsTheSameLeaf) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  LeafCache cache(minter, 10);
  const LeafRequest request{.common_name = "Example.com", .dns_names = {"b.example", "a.example"}};
  auto first = cache.get(request);
  ASSERT_TRUE(first) << first.error();
  auto second = cache.get(request);
  ASSERT_TRUE(second) << second.error();
  EXPECT_EQ(first->get(), second->get());
  EXPECT_EQ((*first)->certificate(), (*second)->certificate());
  EXPECT_EQ(cache.hits(), 1u);
  EXPECT_EQ(cache.misses(), 1u);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(verify((*first)->certificate(), ca.certificate()), "ok");
  EXPECT_GT((*first)->not_after(), Clock::now() + 29 * one_day);

  // Same names in another order and case: the same leaf.
  auto reordered =
      cache.get({.common_name = "EXAMPLE.COM", .dns_names = {"A.example", "b.example"}});
  ASSERT_TRUE(reordered);
  EXPECT_EQ(reordered->get(), first->get());
  // The server's certificate gained a name: a new leaf that carries it.
  auto changed = cache.get(
      {.common_name = "example.com", .dns_names = {"a.example", "b.example", "c.example"}});
  ASSERT_TRUE(changed);
  EXPECT_NE(changed->get(), first->get());
  EXPECT_EQ(X509_check_host((*changed)->certificate(), "c.example", 0, 0, nullptr), 1);
  EXPECT_EQ(cache.misses(), 2u);
  EXPECT_EQ(cache.size(), 2u);

  // A failed mint is reported and not cached.
  expect_error(cache.get({.common_name = "not a name"}));
  EXPECT_EQ(cache.size(), 2u);
}

TEST_F(CertsTest, CacheEvictsTheLeastRecentlyUsed) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  LeafCache cache(minter, 2);
  auto a = cache.get({.common_name = "a.example"});
  auto b = cache.get({.common_name = "b.example"});
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(cache.get({.common_name = "a.example"}));  // a is now the most recent
  ASSERT_TRUE(cache.get({.common_name = "c.example"}));  // evicts b
  EXPECT_EQ(cache.evictions(), 1u);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.misses(), 3u);

  auto a_again = cache.get({.common_name = "a.example"});
  ASSERT_TRUE(a_again);
  EXPECT_EQ(a_again->get(), a->get());
  EXPECT_EQ(cache.misses(), 3u);
  auto b_again = cache.get({.common_name = "b.example"});  // re-minted, evicts c
  ASSERT_TRUE(b_again);
  EXPECT_NE(b_again->get(), b->get());
  EXPECT_EQ(cache.misses(), 4u);
  EXPECT_EQ(cache.evictions(), 2u);
  // An evicted leaf stays valid for whoever still holds it.
  EXPECT_EQ(verify((*b)->certificate(), ca.certificate()), "ok");

  LeafCache tiny(minter, 0);  // taken as 1
  EXPECT_EQ(tiny.capacity(), 1u);
}

TEST_F(CertsTest, ConcurrentGetsMintEachNameOnce) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  LeafCache cache(minter, 16);
  constexpr int thread_count = 8;
  constexpr int gets_per_thread = 200;
  const std::vector<std::string> names = {"a.example", "b.example", "c.example", "d.example",
                                          "e.example"};
  std::mutex seen_mutex;
  std::map<std::string, std::set<const LeafCertificate*>> seen;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([&, t] {
      std::map<std::string, std::set<const LeafCertificate*>> local;
      for (int i = 0; i < gets_per_thread; ++i) {
        const std::string& name = names[static_cast<std::size_t>(i + t) % names.size()];
        auto leaf = cache.get({.common_name = name, .dns_names = {name}});
        if (!leaf) {
          ++failures;
          continue;
        }
        local[name].insert(leaf->get());
      }
      std::lock_guard lock(seen_mutex);
      for (auto& [name, leaves] : local) seen[name].insert(leaves.begin(), leaves.end());
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(cache.misses(), 5u);
  EXPECT_EQ(cache.hits(), static_cast<uint64_t>(thread_count * gets_per_thread - 5));
  EXPECT_EQ(cache.evictions(), 0u);
  EXPECT_EQ(cache.size(), 5u);
  ASSERT_EQ(seen.size(), 5u);
  for (const auto& [name, leaves] : seen) EXPECT_EQ(leaves.size(), 1u) << name;
}

// Prints the cost of a mint and of a cache hit; asserts nothing about time.
TEST_F(CertsTest, TimingOfMintAndCacheHit) {
  CertificateAuthority ca = create_ca("ca");
  LeafMinter minter(ca);
  const LeafRequest request{.common_name = "www.example.com",
                            .dns_names = {"www.example.com", "example.com", "*.example.com"}};
  constexpr int mints = 200;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < mints; ++i) ASSERT_TRUE(minter.mint(request));
  const double mint_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() /
      mints;

  LeafCache cache(minter, 100);
  ASSERT_TRUE(cache.get(request));
  constexpr int hits = 20000;
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < hits; ++i) ASSERT_TRUE(cache.get(request));
  const double hit_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() /
      hits;
  std::cout << "[ timing   ] mint: " << mint_us << " us; cache hit: " << hit_us << " us\n";
  RecordProperty("mint_us", std::to_string(mint_us));
  RecordProperty("cache_hit_us", std::to_string(hit_us));
  EXPECT_EQ(cache.hits(), static_cast<uint64_t>(hits));
}

}  // namespace
}  // namespace tokgate::certs
