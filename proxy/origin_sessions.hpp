// Origins' TLS sessions, kept by one worker across client connections, so that the origin
// handshake of the next intercepted connection to the same origin is a resumption: no
// certificate chain to receive, parse and verify, which is most of what a full origin
// handshake costs the proxy. OpenSSL only; no sockets.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tokgate::proxy {

class OriginSessionCache {
 public:
  // Origins (name and port) remembered; the least recently used is forgotten beyond that.
  // A session holds the origin's certificate chain (~5-15 KiB), hence the bound.
  static constexpr std::size_t kDefaultMaxOrigins = 1024;
  // Sessions kept per origin. A TLS 1.3 server sends two tickets after a full handshake and
  // one after a resumption, and each ticket is used once: connections opened together would
  // find the cache empty and do full handshakes unless some are kept in reserve.
  static constexpr std::size_t kSessionsPerOrigin = 8;

  explicit OriginSessionCache(std::size_t max_origins = kDefaultMaxOrigins);
  ~OriginSessionCache();
  OriginSessionCache(const OriginSessionCache&) = delete;
  OriginSessionCache& operator=(const OriginSessionCache&) = delete;

  // Files the sessions of connections made with `context` here; they may arrive at any time
  // after the handshake (TLS 1.3 tickets). One cache per context; the cache outlives it.
  void attach(SSL_CTX* context);

  // Before the handshake of `ssl` (made with an attached context): the sessions it receives are
  // filed under `origin`, and a session cached for `origin` is offered. A TLS 1.3 ticket is
  // offered once (RFC 8446 C.4: reusing one would let an observer link the connections); a
  // TLS 1.2 session stays until it expires. Returns whether a session was offered.
  //
  // `origin` must name what the session's certificate was verified against (see key()):
  // a resumed handshake is not verified again.
  bool offer(SSL* ssl, std::string_view origin);

  // The cache key of an origin: the name verified (host name, or IP literal) and the port.
  static std::string key(std::string_view verify_name, uint16_t port);

  std::size_t origins() const { return index_.size(); }
  std::size_t sessions() const;

 private:
  struct Entry {
    std::string origin;
    std::vector<SSL_SESSION*> sessions;  // oldest first
  };
  using Lru = std::list<Entry>;  // most recently used first

  static int on_new_session(SSL* ssl, SSL_SESSION* session);
  void store(const std::string& origin, SSL_SESSION* session);
  void forget(Lru::iterator entry);

  std::size_t max_origins_;
  Lru lru_;
  std::unordered_map<std::string_view, Lru::iterator> index_;  // views into lru_'s strings
};

}  // namespace tokgate::proxy
