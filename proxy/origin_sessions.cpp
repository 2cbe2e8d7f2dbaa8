#include "proxy/origin_sessions.hpp"

#include <ctime>

namespace tokgate::proxy {
namespace {

// The cache a context files its sessions in.
int cache_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

void free_origin(void*, void* origin, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<std::string*>(origin);
}

// The origin a connection's sessions belong to (owned by the SSL).
int origin_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_origin);
  return index;
}

bool usable(const SSL_SESSION* session) {
  if (SSL_SESSION_is_resumable(session) != 1) return false;
  // The server's ticket lifetime bounds it as well (RFC 8446 4.6.1: no longer than that).
  long lifetime = SSL_SESSION_get_timeout(session);
  const unsigned long hint = SSL_SESSION_get_ticket_lifetime_hint(session);
  if (hint > 0 && hint < static_cast<unsigned long>(lifetime)) lifetime = static_cast<long>(hint);
  return SSL_SESSION_get_time(session) + lifetime > static_cast<long>(std::time(nullptr));
}

}  // namespace

OriginSessionCache::OriginSessionCache(std::size_t max_origins)
    : max_origins_(max_origins == 0 ? 1 : max_origins) {}

OriginSessionCache::~OriginSessionCache() {
  for (auto& entry : lru_) {
    for (SSL_SESSION* session : entry.sessions) SSL_SESSION_free(session);
  }
}

void OriginSessionCache::attach(SSL_CTX* context) {
  SSL_CTX_set_ex_data(context, cache_index(), this);
  // Client mode with no internal store: OpenSSL hands each new session to on_new_session and
  // keeps no list of its own (a client-side internal cache is never looked up anyway).
  SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(context, &OriginSessionCache::on_new_session);
}

std::string OriginSessionCache::key(std::string_view verify_name, uint16_t port) {
  std::string origin(verify_name);
  origin.push_back(' ');
  origin.append(std::to_string(port));
  return origin;
}

bool OriginSessionCache::offer(SSL* ssl, std::string_view origin) {
  delete static_cast<std::string*>(SSL_get_ex_data(ssl, origin_index()));
  SSL_set_ex_data(ssl, origin_index(), new std::string(origin));

  auto found = index_.find(origin);
  if (found == index_.end()) return false;
  auto entry = found->second;
  auto& sessions = entry->sessions;
  while (!sessions.empty() && !usable(sessions.back())) {
    SSL_SESSION_free(sessions.back());
    sessions.pop_back();
  }
  if (sessions.empty()) {
    forget(entry);
    return false;
  }
  SSL_SESSION* session = sessions.back();
  if (SSL_SESSION_get_protocol_version(session) == TLS1_3_VERSION) {
    sessions.pop_back();
    const bool set = SSL_set_session(ssl, session) == 1;
    SSL_SESSION_free(session);  // the connection holds its own reference now
    if (sessions.empty())
      forget(entry);
    else
      lru_.splice(lru_.begin(), lru_, entry);
    return set;
  }
  // A TLS 1.2 session stays here; the connection gets a copy (see on_new_session).
  SSL_SESSION* copy = SSL_SESSION_dup(session);
  const bool set = copy != nullptr && SSL_set_session(ssl, copy) == 1;
  if (copy != nullptr) SSL_SESSION_free(copy);
  lru_.splice(lru_.begin(), lru_, entry);
  return set;
}

std::size_t OriginSessionCache::sessions() const {
  std::size_t count = 0;
  for (const auto& entry : lru_) count += entry.sessions.size();
  return count;
}

int OriginSessionCache::on_new_session(SSL* ssl, SSL_SESSION* session) {
  auto* cache =
      static_cast<OriginSessionCache*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), cache_index()));
  auto* origin = static_cast<const std::string*>(SSL_get_ex_data(ssl, origin_index()));
  if (cache == nullptr || origin == nullptr || SSL_SESSION_is_resumable(session) != 1) return 0;
  // A copy: OpenSSL marks a connection's current session unresumable when the connection ends
  // without a close_notify (most origin connections are simply closed), and that would reach
  // the session filed here too.
  SSL_SESSION* copy = SSL_SESSION_dup(session);
  if (copy != nullptr) cache->store(*origin, copy);
  return 0;  // OpenSSL keeps and releases its own reference
}

void OriginSessionCache::store(const std::string& origin, SSL_SESSION* session) {
  auto found = index_.find(origin);
  Lru::iterator entry;
  if (found != index_.end()) {
    entry = found->second;
    lru_.splice(lru_.begin(), lru_, entry);
  } else {
    lru_.push_front(Entry{origin, {}});
    entry = lru_.begin();
    index_.emplace(entry->origin, entry);
    if (index_.size() > max_origins_) forget(std::prev(lru_.end()));
  }
  entry->sessions.push_back(session);
  if (entry->sessions.size() > kSessionsPerOrigin) {
    SSL_SESSION_free(entry->sessions.front());
    entry->sessions.erase(entry->sessions.begin());
  }
}

void OriginSessionCache::forget(Lru::iterator entry) {
  for (SSL_SESSION* session : entry->sessions) SSL_SESSION_free(session);
  index_.erase(entry->origin);
  lru_.erase(entry);
}

}  // namespace tokgate::proxy
