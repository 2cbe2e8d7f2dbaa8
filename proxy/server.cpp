#include "proxy/server.hpp"

#include <boost/asio/signal_set.hpp>

#include <csignal>
#include <stdexcept>
#include <thread>

#include "proxy/log.hpp"

namespace tokgate::proxy {

namespace {
tcp::endpoint to_tcp(const Endpoint& endpoint) {
  auto address = asio::ip::make_address(endpoint.address.to_string());
  return {address, endpoint.port};
}
}  // namespace

Server::Server(Runtime& runtime) : runtime_(runtime) {
  unsigned count = runtime.config.workers;
  if (count == 0) count = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < count; ++i) workers_.push_back(std::make_unique<Worker>(runtime, i));
}

Server::~Server() = default;

void Server::bind() {
  for (const auto& configured : runtime_.config.listen) {
    tcp::endpoint wanted = to_tcp(configured);
    tcp::endpoint bound;
    for (auto& worker : workers_) {
      try {
        // Port 0: the first worker picks the port, the others join it.
        bound = worker->listen(bound.port() != 0 ? bound : wanted);
      } catch (const std::exception& e) {
        throw std::runtime_error("cannot listen on " + configured.to_string() + ": " + e.what());
      }
    }
    log::info("listening")
        .kv("role", "proxy")
        .kv("address", Endpoint{configured.address, bound.port()}.to_string())
        .kv("workers", static_cast<unsigned>(workers_.size()));
  }
}

int Server::run() {
  asio::io_context main_io;
  asio::signal_set signals(main_io, SIGINT, SIGTERM);
  signal(SIGPIPE, SIG_IGN);
  for (auto& worker : workers_) worker->start();

  int received = 0;
  signals.async_wait([&](const error_code& ec, int number) {
    if (!ec) received = number;
  });
  main_io.run();
  log::info("draining").kv("signal", received == SIGTERM ? "SIGTERM" : "SIGINT");
  for (auto& worker : workers_) worker->begin_drain();

  // A second signal means "now".
  bool forced = false;
  main_io.restart();
  signals.async_wait([&](const error_code& ec, int) {
    if (!ec) forced = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + runtime_.config.timeouts.drain;
  for (;;) {
    std::size_t active = 0;
    for (auto& worker : workers_) active += worker->active_sessions();
    if (active == 0) break;
    if (forced || std::chrono::steady_clock::now() >= deadline) {
      log::warn("drain-incomplete").kv("connections", active);
      break;
    }
    main_io.run_for(std::chrono::milliseconds(20));
  }
  for (auto& worker : workers_) worker->stop();
  for (auto& worker : workers_) worker->join();
  log::info("stopped");
  return 0;
}

}  // namespace tokgate::proxy
