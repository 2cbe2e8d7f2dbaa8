// OriginSessionCache with real OpenSSL handshakes over in-memory BIO pairs: a client context
// wired to the cache, a server that issues sessions, and what the next handshake resumes.
#include "proxy/origin_sessions.hpp"

#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <string>
#include <thread>

namespace tokgate::proxy {
namespace {

struct SslFree {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
  void operator()(X509* cert) const { X509_free(cert); }
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;
using CtxPtr = std::unique_ptr<SSL_CTX, SslFree>;

// A self-signed P-256 certificate for origin.test, trusted by the client context.
struct Origin {
  std::unique_ptr<EVP_PKEY, SslFree> key{EVP_EC_gen("P-256")};
  std::unique_ptr<X509, SslFree> cert{X509_new()};
  CtxPtr server{SSL_CTX_new(TLS_server_method())};

  explicit Origin(int max_version = 0, int tickets = 2) {
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("origin.test"), -1, -1, 0);
    X509_set_issuer_name(cert.get(), name);
    X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name,
                                              const_cast<char*>("DNS:origin.test"));
    X509_add_ext(cert.get(), san, -1);
    X509_EXTENSION_free(san);
    X509_set_pubkey(cert.get(), key.get());
    X509_sign(cert.get(), key.get(), EVP_sha256());
    SSL_CTX_use_certificate(server.get(), cert.get());
    SSL_CTX_use_PrivateKey(server.get(), key.get());
    if (max_version != 0) SSL_CTX_set_max_proto_version(server.get(), max_version);
    SSL_CTX_set_num_tickets(server.get(), static_cast<size_t>(tickets));
  }
};

class OriginSessionsTest : public ::testing::Test {
 protected:
  void SetUp() override { make_client(OriginSessionCache::kDefaultMaxOrigins); }

  void make_client(std::size_t max_origins) {
    client_.reset(SSL_CTX_new(TLS_client_method()));
    cache_ = std::make_unique<OriginSessionCache>(max_origins);
    cache_->attach(client_.get());
    SSL_CTX_set_verify(client_.get(), SSL_VERIFY_PEER, nullptr);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(client_.get()), origin_->cert.get());
  }

  struct Result {
    bool offered = false;
    bool ok = false;
    bool resumed = false;
    bool has_peer = false;
    SslPtr client;  // kept so a test can look at its session
  };

  // One connection: handshake, one byte from the server (the client reads the tickets that
  // came before it), the same way the proxy's origin leg reads its first response.
  // An empty key: no offer, the connection is not tagged with any origin.
  Result connect(const std::string& key, const std::string& host = "origin.test",
                 bool read_tickets = true) {
    Result result;
    result.client.reset(SSL_new(client_.get()));
    SslPtr server(SSL_new(origin_->server.get()));
    SSL* c = result.client.get();
    SSL_set_tlsext_host_name(c, host.c_str());
    SSL_set1_host(c, host.c_str());
    if (!key.empty()) result.offered = cache_->offer(c, key);
    BIO* client_bio = nullptr;
    BIO* server_bio = nullptr;
    BIO_new_bio_pair(&client_bio, 0, &server_bio, 0);
    SSL_set_bio(c, client_bio, client_bio);
    SSL_set_bio(server.get(), server_bio, server_bio);
    SSL_set_connect_state(c);
    SSL_set_accept_state(server.get());
    for (int round = 0; round < 20; ++round) {
      const int client_done = SSL_do_handshake(c);
      const int server_done = SSL_do_handshake(server.get());
      if (client_done == 1 && server_done == 1) {
        result.ok = true;
        break;
      }
      if (client_done <= 0 && SSL_get_error(c, client_done) != SSL_ERROR_WANT_READ) break;
      if (server_done <= 0 && SSL_get_error(server.get(), server_done) != SSL_ERROR_WANT_READ) {
        break;
      }
    }
    if (result.ok && read_tickets) {
      EXPECT_EQ(SSL_write(server.get(), "x", 1), 1);
      char byte = 0;
      EXPECT_EQ(SSL_read(c, &byte, 1), 1);
    }
    result.resumed = SSL_session_reused(c) == 1;
    result.has_peer = SSL_get0_peer_certificate(c) != nullptr;
    return result;
  }

  std::unique_ptr<Origin> origin_ = std::make_unique<Origin>();
  CtxPtr client_;
  std::unique_ptr<OriginSessionCache> cache_;
  const std::string key_ = OriginSessionCache::key("origin.test", 443);
};

TEST_F(OriginSessionsTest, KeyNamesTheVerifiedNameAndPort) {
  EXPECT_EQ(OriginSessionCache::key("origin.test", 443), "origin.test 443");
  EXPECT_NE(OriginSessionCache::key("origin.test", 443),
            OriginSessionCache::key("origin.test", 8443));
  EXPECT_EQ(OriginSessionCache::key("2001:db8::1", 443), "2001:db8::1 443");
}

TEST_F(OriginSessionsTest, SecondConnectionResumesTheFirstOnesSession) {
  auto first = connect(key_);
  ASSERT_TRUE(first.ok);
  EXPECT_FALSE(first.offered);
  EXPECT_FALSE(first.resumed);
  EXPECT_EQ(cache_->origins(), 1U);
  EXPECT_EQ(cache_->sessions(), 2U);  // two TLS 1.3 tickets

  auto second = connect(key_);
  ASSERT_TRUE(second.ok);
  EXPECT_TRUE(second.offered);
  EXPECT_TRUE(second.resumed);
  // The minted leaf copies the origin's names: the certificate must be there when resumed.
  EXPECT_TRUE(second.has_peer);
  EXPECT_EQ(std::string(SSL_get_version(second.client.get())), "TLSv1.3");
}

TEST_F(OriginSessionsTest, AnotherOriginGetsNoSession) {
  ASSERT_TRUE(connect(key_).ok);
  auto other_port = connect(OriginSessionCache::key("origin.test", 8443));
  ASSERT_TRUE(other_port.ok);
  EXPECT_FALSE(other_port.offered);
  EXPECT_FALSE(other_port.resumed);
  EXPECT_EQ(cache_->origins(), 2U);
}

TEST_F(OriginSessionsTest, Tls13TicketIsOfferedOnlyOnce) {
  origin_ = std::make_unique<Origin>(0, 1);
  make_client(8);
  ASSERT_TRUE(connect(key_).ok);
  EXPECT_EQ(cache_->sessions(), 1U);
  // This connection takes the only ticket and reads none of its own.
  auto second = connect(key_, "origin.test", false);
  EXPECT_TRUE(second.resumed);
  EXPECT_EQ(cache_->sessions(), 0U);
  EXPECT_EQ(cache_->origins(), 0U);
  auto third = connect(key_);
  EXPECT_FALSE(third.offered);
  EXPECT_FALSE(third.resumed);
}

TEST_F(OriginSessionsTest, SessionsPerOriginAreBounded) {
  origin_ =
      std::make_unique<Origin>(0, static_cast<int>(OriginSessionCache::kSessionsPerOrigin) + 3);
  make_client(8);
  ASSERT_TRUE(connect(key_).ok);
  EXPECT_EQ(cache_->origins(), 1U);
  EXPECT_EQ(cache_->sessions(), OriginSessionCache::kSessionsPerOrigin);
  // Resumed connections each take one ticket and get new ones: the reserve stays full.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(connect(key_).resumed);
  EXPECT_EQ(cache_->sessions(), OriginSessionCache::kSessionsPerOrigin);
}

TEST_F(OriginSessionsTest, Tls12SessionIsKeptForReuse) {
  origin_ = std::make_unique<Origin>(TLS1_2_VERSION);
  make_client(8);
  ASSERT_TRUE(connect(key_).ok);
  for (int i = 0; i < 3; ++i) {
    auto again = connect(key_);
    ASSERT_TRUE(again.ok);
    EXPECT_TRUE(again.offered);
    EXPECT_TRUE(again.resumed);
    EXPECT_EQ(std::string(SSL_get_version(again.client.get())), "TLSv1.2");
  }
}

TEST_F(OriginSessionsTest, ExpiredSessionIsDropped) {
  // Tickets that live one second (the lifetime the server announces is the session's timeout).
  origin_ = std::make_unique<Origin>(0, 1);
  SSL_CTX_set_timeout(origin_->server.get(), 1);
  make_client(8);
  ASSERT_TRUE(connect(key_).ok);
  ASSERT_EQ(cache_->sessions(), 1U);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  auto second = connect(key_);
  EXPECT_FALSE(second.offered);
  EXPECT_FALSE(second.resumed);
}

TEST_F(OriginSessionsTest, LeastRecentlyUsedOriginIsForgotten) {
  make_client(2);
  ASSERT_TRUE(connect(OriginSessionCache::key("origin.test", 1)).ok);
  ASSERT_TRUE(connect(OriginSessionCache::key("origin.test", 2)).ok);
  ASSERT_TRUE(connect(OriginSessionCache::key("origin.test", 3)).ok);
  EXPECT_EQ(cache_->origins(), 2U);
  EXPECT_FALSE(connect(OriginSessionCache::key("origin.test", 1), "origin.test", false).offered);
  EXPECT_TRUE(connect(OriginSessionCache::key("origin.test", 3), "origin.test", false).offered);
}

TEST_F(OriginSessionsTest, ConnectionWithoutOfferIsNotFiled) {
  // A context attached to the cache, but a connection nobody offered for: nothing is kept.
  auto untagged = connect("");
  ASSERT_TRUE(untagged.ok);
  EXPECT_FALSE(untagged.offered);
  EXPECT_EQ(cache_->sessions(), 0U);
  EXPECT_EQ(cache_->origins(), 0U);
}

}  // namespace
}  // namespace tokgate::proxy
