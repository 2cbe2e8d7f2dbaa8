// The OpenSSL contexts of one worker, and the per-connection TLS set-up on both sides.
// Each worker owns its contexts: OpenSSL 3 takes locks on a context shared between threads.
#pragma once

#include <boost/asio/ssl/context.hpp>

#include <span>
#include <string>
#include <string_view>

#include "certs/leaf_minter.hpp"
#include "proxy/asio_types.hpp"
#include "proxy/config.hpp"
#include "proxy/keylog.hpp"
#include "proxy/origin_sessions.hpp"

namespace tokgate::proxy {

class TlsContexts {
 public:
  // Throws std::runtime_error at start-up if a trust file cannot be loaded.
  // With a key log, both contexts report their session secrets to it.
  explicit TlsContexts(const Config& config, KeyLog* keylog = nullptr);

  // We are the TLS server toward clients (modern suites, TLS 1.2-1.3, ALPN chosen per connection).
  asio::ssl::context& client_side() { return client_side_; }
  // We are the TLS client toward origins: verification on, TLS >= 1.2, AEAD suites only.
  asio::ssl::context& server_side() { return server_side_; }
  // The origins' sessions of server_side(), resumed across client connections.
  OriginSessionCache& origin_sessions() { return origin_sessions_; }

 private:
  OriginSessionCache origin_sessions_;  // declared first: outlives the contexts
  asio::ssl::context client_side_;
  asio::ssl::context server_side_;
};

// Server side of one connection: SNI, hostname (or IP) verification, and the ALPN offer.
void prepare_server_side_tls(SSL* ssl, const std::string& verify_name,
                             std::span<const std::string> alpn_offer);

// Client side of one connection: our minted leaf, the chain to send, and the ALPN protocol the
// server side negotiated (selected only if the client offered it; empty = none).
bool prepare_client_side_tls(SSL* ssl, X509* leaf, EVP_PKEY* leaf_key, std::span<X509* const> chain,
                             const std::string* alpn_choice);

// True when the client's side of our handshake failed the way certificate pinning fails: an
// alert about our certificate (unknown CA, bad or unsupported certificate, access denied), or
// the client closing while our certificate was on its way.
bool is_certificate_rejection(const error_code& ec);

// Why the server side's handshake failed, in words a client can act on.
std::string describe_server_tls_failure(SSL* ssl, const error_code& ec);

// The names the minted leaf should carry: the name the client asked for, then the DNS names
// and IP addresses of the origin's certificate, so the client sees what it would have seen.
certs::LeafRequest leaf_request_for(const std::string& requested_name, X509* origin_certificate);

// The protocols to offer the origin for a client that offered `client_alpn`: its own choices
// among h2 and http/1.1 (HTTP/1.1 when it offered none); with `retry`, the other ones.
std::vector<std::string> server_side_alpn_offer(std::span<const std::string> client_alpn,
                                                bool retry = false);

// The protocol to speak with the client once the origin chose `origin_protocol` ("h2",
// "http/1.1"): the same when the client offered it, else the one the client offered (the proxy
// translates); empty when the client offered no ALPN.
std::string client_side_alpn_choice(std::span<const std::string> client_alpn,
                                    std::string_view origin_protocol);

}  // namespace tokgate::proxy
