// One client connection, from accept to close: the explicit-proxy HTTP/1.1 loop, CONNECT
// tunnels, the ClientHello peek, and then splice, refuse or intercept.
#pragma once

#include <boost/beast/core/flat_buffer.hpp>

#include <list>
#include <memory>
#include <optional>
#include <string>

#include "policy/net_types.hpp"
#include "policy/types.hpp"
#include "proxy/asio_types.hpp"
#include "proxy/client_hello.hpp"
#include "proxy/deadline.hpp"
#include "proxy/http_relay.hpp"
#include "proxy/policy_state.hpp"

namespace tokgate::proxy {

class Worker;
struct Runtime;
struct Config;

class ClientSession {
 public:
  ClientSession(Worker& worker, tcp::socket socket);
  ~ClientSession();
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;

  // Owns the session for the life of its coroutine.
  static awaitable<void> run(std::unique_ptr<ClientSession> self);

  // Drain: a connection waiting for its next request is closed now; one mid-request closes
  // after its response.
  void close_if_idle();

 private:
  struct Target {
    std::string host;  // normalized name or IP literal, no brackets
    uint16_t port = 0;
  };
  struct ExchangeResult {
    bool client_keep_alive = false;
    bool server_reusable = false;
  };

  awaitable<void> flow();
  awaitable<void> serve_explicit();
  awaitable<void> serve_connect(const Target& target, beast::flat_buffer& client_buffer);
  awaitable<bool> connect_server(tcp::socket& server, const Target& target);
  awaitable<void> splice(tcp::socket& server, std::span<const uint8_t> client_bytes);
  awaitable<void> refuse_tls(const ClientHello& hello);
  awaitable<void> intercept(tcp::socket server, const ClientHello& hello,
                            std::span<const uint8_t> client_bytes, const Target& target);

  template <class ClientStream>
  awaitable<bool> read_request_head(ClientStream& client, beast::flat_buffer& buffer,
                                    RequestParser& parser, bool first);
  template <class ClientStream, class ServerStream>
  awaitable<std::expected<ExchangeResult, Failure>> exchange(
      ClientStream& client, beast::flat_buffer& client_buffer, RequestParser& request,
      ServerStream& server, beast::flat_buffer& server_buffer, bool& response_started);
  enum class PolicyOutcome { forward, answered, close };
  // The request stage: classify, decide, and answer a blocked request with a 451 page.
  template <class ClientStream>
  awaitable<PolicyOutcome> apply_request_policy(ClientStream& client, RequestParser& parser,
                                                const std::string& host, uint16_t port);
  template <class ClientStream>
  awaitable<void> send_failure(ClientStream& client, unsigned version,
                               bool keep_alive = false);  // sends failure_
  template <class ClientStream, class ServerStream>
  awaitable<void> serve_intercepted(ClientStream& client, ServerStream& server,
                                    const std::optional<Failure>& server_failure,
                                    const std::string& name, uint16_t port);

  std::optional<Failure> check_request(const RequestParser& parser) const;
  Failure timeout_failure(std::string_view what) const;
  void cancel_io();

  Worker& worker_;
  Runtime& runtime_;
  const Config& config_;
  tcp::socket client_socket_;
  tcp::endpoint client_endpoint_;
  IpAddress client_ip_;
  // The policy in force, taken per connection and again per request (reloads apply to the
  // next request; the views in decisions point into it).
  std::shared_ptr<const PolicySnapshot> snapshot_;
  std::vector<policy::HeaderView> header_views_;  // reused for every request's facts
  // What the request stage decided for the request being relayed (for its log line).
  struct RequestLabel {
    policy::Category category = policy::Category::none;
    policy::Action action = policy::Action::allow;
    std::string_view rule;
    std::string host;  // normalized: the name the policy looked at
  } label_;
  uint64_t id_;
  Deadline deadline_;
  Failure failure_;  // the error response being sent (see send_failure)
  bool idle_ = true;
  bool closing_ = false;
  tcp::socket* client_lowest_ = nullptr;  // whatever layer currently owns the client socket
  tcp::socket* server_lowest_ = nullptr;
  std::unique_ptr<char[]> chunk_;  // relay buffer, one per connection
  std::list<ClientSession*>::iterator registry_entry_;
};

}  // namespace tokgate::proxy
