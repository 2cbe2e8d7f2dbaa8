// One worker: one thread, one io_context, its own listening sockets (SO_REUSEPORT: the kernel
// spreads new connections over the workers) and its own TLS contexts. A connection lives on the
// worker that accepted it from accept to close, so nothing on the data path takes a lock.
#pragma once

#include <boost/asio/io_context.hpp>

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <thread>
#include <vector>

#include "proxy/asio_types.hpp"
#include "proxy/runtime.hpp"
#include "proxy/tls_contexts.hpp"

namespace tokgate::proxy {

class ClientSession;

// What arrives on a listener: explicit-proxy requests (CONNECT and absolute-form), the same
// preceded by a PROXY protocol header (behind a load balancer), or redirected connections
// (transparent gateway: REDIRECT or TPROXY).
enum class ListenerKind : uint8_t { explicit_proxy, proxy_protocol, transparent };
std::string_view to_string(ListenerKind kind);

// The whole HTTP answer (503, X-Tokgate-Error, Connection: close) to a connection turned away
// by the connection limit or the per-client limit.
std::string_view refusal_answer(LimitHit limit);

class Worker {
 public:
  // Log lines of refusals, at most one a second per limit on this worker; the line says how
  // many went unlogged since the last one.
  struct RefusalLog {
    std::chrono::steady_clock::time_point last{};
    uint64_t unlogged = 0;
  };

  Worker(Runtime& runtime, unsigned index);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Binds a listener (SO_REUSEPORT) and returns the bound endpoint; throws on failure.
  tcp::endpoint listen(const tcp::endpoint& endpoint,
                       ListenerKind kind = ListenerKind::explicit_proxy);
  void start();
  // Thread-safe: stop accepting, close idle connections, let in-flight requests finish.
  void begin_drain();
  // Thread-safe: stop the event loop now (after the drain deadline).
  void stop();
  void join();
  std::size_t active_sessions() const { return active_.load(std::memory_order_acquire); }

  Runtime& runtime() { return runtime_; }
  const Config& config() const { return runtime_.config; }
  TlsContexts& tls() { return tls_; }
  MetricsShard& metrics() { return runtime_.metrics->shard(index_ + 1); }
  asio::io_context& io() { return *io_; }
  bool draining() const { return draining_; }
  unsigned index() const { return index_; }

  // Session registry, used only on this worker's thread.
  std::list<ClientSession*>::iterator add_session(ClientSession* session);
  void remove_session(std::list<ClientSession*>::iterator it);
  // A refusal of a connection that a limit turned away, logged at most once a second per
  // `log` (a flood of refusals must not become a flood of log lines).
  void log_refusal(RefusalLog& log, LimitHit limit, const std::string& client);
  RefusalLog& client_limit_log() { return client_limit_log_; }

 private:
  struct Listener {
    tcp::acceptor acceptor;
    ListenerKind kind;
    std::string address;  // as bound: "0.0.0.0:8443"
  };
  awaitable<void> accept_loop(Listener& listener);
  // Turns an accepted connection away at once, before any session exists: a short 503 for an
  // explicit-proxy listener (one non-blocking send), a plain close for a transparent one (its
  // client speaks TLS or HTTP to someone else). Counted, and logged at most once a second.
  void refuse_at_accept(tcp::socket& socket, ListenerKind kind, LimitHit limit,
                        const std::string& client);

  RefusalLog connection_limit_log_;
  RefusalLog client_limit_log_;

  Runtime& runtime_;
  unsigned index_;
  // Destroyed first, explicitly (see ~Worker): its pending coroutine frames own sessions that
  // still use this worker's other members while they unwind.
  std::unique_ptr<asio::io_context> io_ = std::make_unique<asio::io_context>(1);
  TlsContexts tls_;
  std::list<Listener> acceptors_;
  std::list<ClientSession*> sessions_;
  std::atomic<std::size_t> active_{0};
  bool draining_ = false;
  std::thread thread_;
};

}  // namespace tokgate::proxy
