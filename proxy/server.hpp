// The process: one worker per core, the listeners, and the signals (SIGTERM/SIGINT drain
// in-flight requests, then exit).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>
#include <vector>

#include "proxy/runtime.hpp"
#include "proxy/worker.hpp"
#include "web-ui/admin_server.hpp"

namespace tokgate::proxy {

class Server {
 public:
  explicit Server(Runtime& runtime);
  ~Server();

  // Binds every listener on every worker; throws std::runtime_error naming the address.
  void bind();
  std::string policy_json() const;
  std::string evidence_json() const;
  std::string listeners_json() const;
  std::vector<std::pair<std::string, std::string>> listeners_;  // address, mode
  std::string admin_address_;
  // Reloads the policy and catalog; logs the outcome. Main thread.
  void reload(std::string_view why);
  // Binds the admin listener (loopback only until the web UI brings authentication).
  void bind_admin();
  // Runs until SIGTERM or SIGINT, then drains; returns the process exit code.
  int run();

 private:
  Runtime& runtime_;
  asio::io_context main_io_;
  // Made before any listener exists: a signal that arrives the moment we log "listening" is
  // queued, not lost (and does not kill the process with the default action).
  asio::signal_set signals_{main_io_, SIGINT, SIGTERM};
  asio::signal_set reload_signals_{main_io_, SIGHUP};
  asio::signal_set reopen_signals_{main_io_, SIGUSR1};
  std::unique_ptr<asio::steady_timer> watch_timer_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<webui::AdminServer> admin_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace tokgate::proxy
