#include "proxy/worker.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "proxy/client_session.hpp"
#include "proxy/log.hpp"

namespace tokgate::proxy {

Worker::Worker(Runtime& runtime, unsigned index)
    : runtime_(runtime), index_(index), tls_(runtime.config, runtime.keylog.get()) {}

Worker::~Worker() {
  stop();
  join();
  // Sessions still open after the drain deadline unwind now, while the registry they
  // remove themselves from, the TLS contexts and the acceptors still exist.
  for (auto& listener : acceptors_) {
    error_code ignored;
    listener.acceptor.close(ignored);
  }
  io_.reset();
}

std::string_view to_string(ListenerKind kind) {
  switch (kind) {
    case ListenerKind::explicit_proxy:
      return "explicit";
    case ListenerKind::proxy_protocol:
      return "explicit+proxy-protocol";
    case ListenerKind::transparent:
      return "transparent";
  }
  return "explicit";
}

tcp::endpoint Worker::listen(const tcp::endpoint& endpoint, ListenerKind kind) {
  auto& listener = acceptors_.emplace_back(Listener{tcp::acceptor(*io_), kind, {}});
  auto& acceptor = listener.acceptor;
  acceptor.open(endpoint.protocol());
  if (kind == ListenerKind::transparent) {
    // TPROXY hands us connections addressed to other hosts; REDIRECT does not need it. Without
    // CAP_NET_ADMIN this fails, and only REDIRECT works: said once, at start.
    const int on = 1;
    const int level = endpoint.address().is_v6() ? SOL_IPV6 : SOL_IP;
    const int option = endpoint.address().is_v6() ? IPV6_TRANSPARENT : IP_TRANSPARENT;
    if (::setsockopt(acceptor.native_handle(), level, option, &on, sizeof on) != 0 && index_ == 0) {
      log::info("transparent-without-tproxy")
          .kv("address", endpoint.address().to_string())
          .kv("reason", "IP_TRANSPARENT needs CAP_NET_ADMIN; REDIRECT still works");
    }
  }
  acceptor.set_option(tcp::acceptor::reuse_address(true));
  // Every worker binds the same address; the kernel spreads connections over them.
  acceptor.set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true));
  if (endpoint.address().is_v6()) acceptor.set_option(asio::ip::v6_only(true));
  acceptor.bind(endpoint);
  acceptor.listen(asio::socket_base::max_listen_connections);
  const tcp::endpoint bound = acceptor.local_endpoint();
  listener.address = (bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                              : bound.address().to_string()) +
                     ":" + std::to_string(bound.port());
  return bound;
}

void Worker::start() {
  for (auto& listener : acceptors_) {
    asio::co_spawn(*io_, accept_loop(listener), asio::detached);
  }
  thread_ = std::thread([this] {
    for (;;) {
      try {
        io_->run();
        return;
      } catch (const std::exception& e) {
        // A bug surfaced as an exception: log it and keep the worker's other connections going.
        log::error("worker-exception").kv("worker", index_).kv("what", e.what());
      }
    }
  });
}

void Worker::begin_drain() {
  asio::post(*io_, [this] {
    draining_ = true;
    for (auto& listener : acceptors_) {
      error_code ignored;
      listener.acceptor.close(ignored);
    }
    for (ClientSession* session : sessions_) session->close_if_idle();
  });
}

void Worker::stop() {
  io_->stop();
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

std::list<ClientSession*>::iterator Worker::add_session(ClientSession* session) {
  active_.fetch_add(1, std::memory_order_acq_rel);
  sessions_.push_front(session);
  return sessions_.begin();
}

void Worker::remove_session(std::list<ClientSession*>::iterator it) {
  sessions_.erase(it);
  active_.fetch_sub(1, std::memory_order_acq_rel);
}

std::string_view refusal_answer(LimitHit limit) {
  auto answer_for = [](std::string_view code, std::string_view reason) {
    return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "X-Tokgate-Error: " +
           std::string(code) + "\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: " +
           std::to_string(reason.size()) + "\r\n\r\n" + std::string(reason);
  };
  static const std::string kTooManyConnections =
      answer_for("too-many-connections", "too many connections: try again later\n");
  static const std::string kTooManyFromClient = answer_for(
      "too-many-client-connections", "too many connections from your address: close some\n");
  return limit == LimitHit::connections_per_client ? kTooManyFromClient : kTooManyConnections;
}

void Worker::log_refusal(RefusalLog& log, LimitHit limit, const std::string& client) {
  const auto now = std::chrono::steady_clock::now();
  if (log.last != std::chrono::steady_clock::time_point{} &&
      now - log.last < std::chrono::seconds(1)) {
    ++log.unlogged;
    return;
  }
  const bool per_client = limit == LimitHit::connections_per_client;
  log::warn(per_client ? "client-connection-limit" : "connection-limit")
      .kv("worker", index_)
      .kv("client", client)
      .kv("limit", per_client ? runtime_.config.limits.max_connections_per_client
                              : runtime_.config.limits.max_connections)
      .kv("refused_unlogged", log.unlogged);
  log.last = now;
  log.unlogged = 0;
}

void Worker::refuse_at_accept(tcp::socket& socket, ListenerKind kind, LimitHit limit,
                              const std::string& client) {
  MetricsShard& shard = metrics();
  shard.limit_hit(limit);
  // Counted as a connection turned away before a verdict, as docs/metrics.md says.
  shard.connection_opened();
  shard.connection_closed(ConnectionOutcome::rejected);
  log_refusal(limit == LimitHit::connections_per_client ? client_limit_log_ : connection_limit_log_,
              limit, client);
  const int fd = socket.native_handle();
  if (kind != ListenerKind::transparent) {
    const std::string_view answer = refusal_answer(limit);
    // One try, never waiting: a fresh socket's send buffer is empty, so it goes out whole.
    [[maybe_unused]] auto sent =
        ::send(fd, answer.data(), answer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  // FIN, then discard what the client already sent: closing with unread input would send a
  // RST, which can destroy the answer before the client reads it.
  ::shutdown(fd, SHUT_WR);
  char discard[4096];
  for (int i = 0; i < 16 && ::recv(fd, discard, sizeof discard, MSG_DONTWAIT) > 0; ++i) {
  }
  error_code ignored;
  socket.close(ignored);
}

awaitable<void> Worker::accept_loop(Listener& listener) {
  tcp::acceptor& acceptor = listener.acceptor;
  asio::steady_timer backoff(*io_);
  while (!draining_) {
    auto [ec, socket] = co_await acceptor.async_accept(use_nothrow);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      // Out of file descriptors or memory: pause accepting briefly instead of spinning; the
      // connections we already have keep working and free descriptors as they close.
      log::warn("accept-failed").kv("worker", index_).kv("reason", ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(use_nothrow);
      continue;
    }
    error_code peer_error;
    const tcp::endpoint peer = socket.remote_endpoint(peer_error);
    if (peer_error) {
      error_code ignored;
      socket.close(ignored);  // already gone
      continue;
    }
    const IpAddress client = to_ip_address(peer.address());
    if (runtime_.open_connections.load(std::memory_order_relaxed) >=
        runtime_.config.limits.max_connections) {
      refuse_at_accept(socket, listener.kind, LimitHit::connections, client.to_string());
      continue;
    }
    // Behind a load balancer every connection comes from the balancer: the real client is
    // known (and counted) only after the PROXY header, in the session.
    ClientConnectionTable::Slot slot;
    if (listener.kind != ListenerKind::proxy_protocol) {
      slot = runtime_.client_connections.try_acquire(client);
      if (!slot) {
        refuse_at_accept(socket, listener.kind, LimitHit::connections_per_client,
                         client.to_string());
        continue;
      }
    }
    auto session = std::make_unique<ClientSession>(*this, std::move(socket), listener.kind,
                                                   listener.address, std::move(slot));
    asio::co_spawn(*io_, ClientSession::run(std::move(session)), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::error("session-exception").kv("what", ex.what());
      }
    });
  }
}

}  // namespace tokgate::proxy
