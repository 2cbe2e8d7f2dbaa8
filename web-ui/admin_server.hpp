// The admin listener (default 127.0.0.1:8081): health, a status summary and the CA download.
// It runs on the main thread's event loop, apart from the workers, so a busy data plane never
// hides the health endpoint and the admin port never slows the data plane.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <expected>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "proxy/asio_types.hpp"

namespace tokgate::webui {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

class FlowFeed;

// A request for /api/explain, as the query gave it.
struct ExplainQuery {
  std::string url;
  std::string method = "GET";
  std::string user_agent;
  std::vector<std::string> headers;  // "Name: value"
};

struct AdminContent {
  std::string version;
  std::string ca_pem;
  std::vector<uint8_t> ca_der;
  std::string ca_fingerprint;
  // Called on each /status and /api/status request; returns a JSON object.
  std::function<std::string()> status_json;
  // Prometheus text for /metrics; /readyz answers 503 while this says no (draining).
  std::function<std::string()> metrics_text;
  std::function<bool()> ready;
  std::function<std::size_t()> open_connections;
  // The same engine as `tokgate policy explain --json`: the JSON, or an error to show.
  std::function<std::expected<std::string, std::string>(const ExplainQuery&)> explain;
  // Recent flows and live aggregates; null = the UI shows none.
  const FlowFeed* feed = nullptr;
  std::filesystem::path capture_dir;  // HAR files served with their flow
  // Access: empty = none needed (loopback only, checked at start-up).
  std::string token;  // Authorization: Bearer TOKEN
  std::string user;   // with password: HTTP basic
  std::string password;
};

class AdminServer {
 public:
  AdminServer(asio::io_context& io, const tcp::endpoint& endpoint, AdminContent content);
  tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }
  void start();
  void stop();

 private:
  proxy::awaitable<void> accept_loop();
  proxy::awaitable<void> serve(tcp::socket socket);
  proxy::awaitable<void> stream_events(tcp::socket& socket, unsigned version);
  bool authorized(std::string_view authorization) const;
  std::string stats_text() const;
  std::string read_capture(const std::string& path) const;

  asio::io_context& io_;
  tcp::acceptor acceptor_;
  AdminContent content_;
  // Shared with each connection's frame, which may be destroyed after this object when the
  // event loop is torn down.
  std::shared_ptr<std::size_t> open_ = std::make_shared<std::size_t>(0);
  std::shared_ptr<std::size_t> streams_ = std::make_shared<std::size_t>(0);
  bool stopping_ = false;
};

}  // namespace tokgate::webui
