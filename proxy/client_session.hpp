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
#include "proxy/body_pipe.hpp"
#include "proxy/client_hello.hpp"
#include "proxy/deadline.hpp"
#include "proxy/flow_record.hpp"
#include "proxy/http_relay.hpp"
#include "proxy/metrics.hpp"
#include "proxy/policy_state.hpp"
#include "proxy/runtime.hpp"

namespace tokgate::proxy {

class Worker;
enum class ListenerKind : uint8_t;
struct Runtime;
struct Config;
class H2Connection;
struct H2Stream;
struct OriginRequest;
struct OriginResponse;

IpAddress to_ip_address(const asio::ip::address& address);
// Host names from the network are normalized before any decision: case, trailing dot, IDNA.
std::optional<std::string> normalized(std::string_view host);

// The limit a connection's deadline enforces in `phase` (the name given to Deadline::set), for
// tokgate_limit_hits_total; nullopt for phases that are not a limit on the client (connect,
// our own goodbyes).
std::optional<LimitHit> limit_of_phase(std::string_view phase);

class ClientSession {
 public:
  // `listener`: the address of the listener that accepted it (for the records).
  // `slot`: this connection's count in the per-client table (empty for a PROXY protocol
  // listener: the real client is known only after the header).
  ClientSession(Worker& worker, tcp::socket socket, ListenerKind kind, const std::string& listener,
                ClientConnectionTable::Slot slot = {});
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
  awaitable<std::optional<std::expected<ClientHello, ClientHelloError>>> read_client_hello(
      std::vector<uint8_t>& bytes, const std::string& host);
  // Transparent gateway (client_session_transparent.cpp).
  awaitable<void> serve_transparent();
  awaitable<bool> read_proxy_header();
  std::vector<uint8_t> preread_;  // bytes read before the HTTP parser (a PROXY header's tail)
  void take_preread(beast::flat_buffer& buffer);
  awaitable<void> linger(tcp::socket& socket);
  awaitable<void> intercept(tcp::socket server, const ClientHello& hello,
                            std::span<const uint8_t> client_bytes, const Target& target);

  template <class ClientStream>
  awaitable<bool> read_request_head(ClientStream& client, beast::flat_buffer& buffer,
                                    RequestParser& parser, bool first);
  template <class ClientStream, class ServerStream>
  awaitable<std::expected<ExchangeResult, Failure>> exchange(
      ClientStream& client, beast::flat_buffer& client_buffer, RequestParser& request,
      ServerStream& server, beast::flat_buffer& server_buffer, bool& response_started);
  // After a 101 to a WebSocket handshake: relay the frames both ways until either side ends.
  template <class ClientStream, class ServerStream>
  awaitable<std::expected<ExchangeResult, Failure>> relay_upgraded(
      ClientStream& client, beast::flat_buffer& client_buffer, ServerStream& server,
      beast::flat_buffer& server_buffer, ResponseParser& response_parser, const std::string& method,
      const std::string& path, bool& response_started);
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

  // The request stage for every protocol: classification and the policy's decision. The views
  // in `decision` point into `snapshot`, which the judgement keeps alive.
  struct RequestJudgement {
    std::shared_ptr<const PolicySnapshot> snapshot;
    std::string host;  // normalized: the name the policy looked at
    std::string path;  // normalized, without the query
    policy::Classification classification;
    policy::RequestDecision decision;
  };
  RequestJudgement judge_request(std::string_view method, std::string_view host_header,
                                 std::string_view target, std::string_view user_agent,
                                 std::span<const policy::HeaderView> headers,
                                 const std::string& fallback_host, uint16_t port);

  // HTTP/2 on either leg (client_session_mux.cpp).
  struct MuxState;
  awaitable<void> serve_multiplexed(TlsStream& client, TlsStream& server, bool client_h2,
                                    bool server_h2, const std::optional<Failure>& server_failure,
                                    const std::string& name, uint16_t port);
  awaitable<void> serve_h2_stream(MuxState& mux, H2Stream& stream);
  awaitable<void> serve_h1_via_h2(MuxState& mux, TlsStream& client);
  awaitable<void> exchange_with_origin(MuxState& mux, OriginRequest& request,
                                       OriginResponse& response, Deadline& deadline,
                                       std::span<char> chunk);
  awaitable<void> respond_h2(MuxState& mux, H2Stream& stream, const OriginRequest& request,
                             OriginResponse& response);
  awaitable<void> answer_h2(H2Stream& stream, H2Connection& client, unsigned status,
                            const HeaderList& fields, std::string body);
  awaitable<void> answer_h2_failure(H2Stream& stream, H2Connection& client, const Failure& failure);

  // ---- evidence: the flow records of this connection (client_session_flow.cpp)
  // What is known of the connection, copied into each of its records.
  struct ConnectionFacts {
    std::chrono::system_clock::time_point started;
    std::string client_ip;  // after the privacy setting
    std::optional<uint16_t> client_port;
    std::string listener;
    std::string mode = "explicit";
    std::string scheme = "http";
    std::string sni;
    std::string host;
    std::optional<uint16_t> port;
    std::string verdict;
    bool bumped = false;
    std::string category;  // connection stage
    std::string rule;
    std::string client_alpn, server_alpn, client_tls, server_tls;
    std::string upstream_ip;
    std::optional<uint16_t> upstream_port;
    std::string upstream_country;
    std::optional<uint32_t> upstream_asn;
    std::string upstream_as_org;
    // Spent once, by the first request after the connection was made.
    std::optional<double> connect_ms, tls_ms;
    uint64_t requests = 0;
  };
  FlowRecord connection_record() const;
  // A request's record from what the request stage saw; `flow` is "C.N" or "C.sS".
  FlowRecord request_record(const RequestJudgement& judgement, std::string_view method,
                            std::string_view target, std::string_view user_agent, std::string flow);
  void emit(FlowRecord record);
  // The HTTP/1.1 request in flight: recorded when it ends, however it ends.
  void finish_pending(std::optional<unsigned> status, uint64_t bytes_up, uint64_t bytes_down,
                      std::string_view error = {}, std::string_view reason = {});
  void note_upstream(const tcp::socket& server);
  static double ms_since(std::chrono::steady_clock::time_point start);

  std::optional<Failure> check_request(const RequestParser& parser) const;
  Failure timeout_failure(std::string_view what) const;
  http::response<http::string_body> reserved_page(std::string_view path, unsigned version) const;
  std::optional<Failure> own_endpoint_failure(const std::vector<tcp::endpoint>& endpoints) const;
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
    bool full_capture = false;
  } label_;
  uint64_t id_;
  ListenerKind kind_;
  ConnectionFacts facts_;
  std::optional<FlowRecord> pending_;  // the HTTP/1.1 request being relayed
  std::chrono::steady_clock::time_point pending_started_{};
  std::optional<double> pending_first_byte_ms_;
  uint64_t pending_bytes_up_ = 0;  // request body bytes sent so far for pending_
  Deadline deadline_;
  Failure failure_;  // the error response being sent (see send_failure)
  bool idle_ = true;
  bool rejected_ = false;  // turned away before any verdict (client not allowed)
  bool closing_ = false;
  H2Connection* client_h2_ = nullptr;     // set while the client speaks HTTP/2 (for drain)
  tcp::socket* client_lowest_ = nullptr;  // whatever layer currently owns the client socket
  tcp::socket* server_lowest_ = nullptr;
  // The relay buffer: allocated when a body or tunnel needs it, freed while the connection
  // waits for its next request (an idle connection should cost next to nothing).
  std::span<char> relay_chunk();
  template <class... Buffers>
  void release_idle_memory(Buffers&... buffers);
  std::unique_ptr<char[]> chunk_;
  std::list<ClientSession*>::iterator registry_entry_;
  ClientConnectionTable::Slot client_slot_;
  // Request-line length and header count, checked once a head is parsed (431/414); sets
  // failure_ and counts the limit.
  std::optional<Failure> check_head_limits(const RequestParser& parser);
  void count_limit(LimitHit limit);
};

}  // namespace tokgate::proxy
