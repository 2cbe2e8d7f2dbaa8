#include "proxy/client_session.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/asio/write.hpp>
#include <boost/url/parse.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>

#include "certs/openssl_ptr.hpp"
#include "policy/host_pattern.hpp"
#include "proxy/h2_connection.hpp"
#include "proxy/har.hpp"
#include "proxy/log.hpp"
#include "proxy/resolver.hpp"
#include "proxy/runtime.hpp"
#include "proxy/tls_contexts.hpp"
#include "proxy/tunnel.hpp"
#include "proxy/websocket_relay.hpp"
#include "proxy/worker.hpp"
#include "web-ui/block_page.hpp"
#include "web-ui/static_assets.hpp"

namespace tokgate::proxy {

using namespace asio::experimental::awaitable_operators;
using std::chrono::milliseconds;

namespace {

// What went wrong with an origin's TLS, for the metrics: the verification result says most.
OriginHandshakeFailure origin_failure_reason(SSL* ssl, const error_code& ec) {
  switch (SSL_get_verify_result(ssl)) {
    case X509_V_OK:
      break;
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return OriginHandshakeFailure::expired;
    case X509_V_ERR_HOSTNAME_MISMATCH:
      return OriginHandshakeFailure::hostname_mismatch;
    default:
      return OriginHandshakeFailure::untrusted;
  }
  if (ec == asio::error::connection_refused || ec == asio::error::connection_reset ||
      ec == asio::error::eof) {
    return OriginHandshakeFailure::refused;
  }
  return ec.category() == asio::error::get_ssl_category() ? OriginHandshakeFailure::protocol
                                                          : OriginHandshakeFailure::other;
}

// A fatal TLS alert record, access_denied (49): "the sender decided not to proceed".
constexpr uint8_t kAccessDeniedAlert[] = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31};
// How long we keep trying to deliver our own error responses and TLS close_notify.
constexpr milliseconds kGoodbyeBudget{2'000};
// http://tokgate/ is answered by the proxy itself: the CA page (docs/web-ui.md).
constexpr std::string_view kReservedName = "tokgate";
// Lingering close: how long, and how much, we read and discard after our FIN.
constexpr milliseconds kLingerBudget{1'000};
constexpr std::size_t kLingerBytes = 1024 * 1024;

bool is_allowed_method(http::verb verb) {
  switch (verb) {
    case http::verb::get:
    case http::verb::head:
    case http::verb::post:
    case http::verb::put:
    case http::verb::delete_:
    case http::verb::options:
    case http::verb::patch:
      return true;
    default:
      return false;
  }
}

std::string bracketed(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

bool is_disconnect(const error_code& ec) {
  return ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == asio::ssl::error::stream_truncated ||
         ec == http::error::end_of_stream || ec == http::error::partial_message;
}

// RFC 6455 section 4.1: GET with "Upgrade: websocket" and "Connection: upgrade".
bool is_websocket_upgrade(const http::request<http::buffer_body>& request) {
  if (request.method() != http::verb::get) return false;
  bool connection_upgrade = false;
  for (const auto& token : http::token_list{request[http::field::connection]}) {
    if (beast::iequals(token, "upgrade")) connection_upgrade = true;
  }
  if (!connection_upgrade) return false;
  std::string_view upgrade = request[http::field::upgrade];
  for (std::size_t at = 0; at + 9 <= upgrade.size(); ++at) {
    if (beast::iequals(upgrade.substr(at, 9), "websocket")) return true;
  }
  return false;
}

ConnectionVerdict stricter(ConnectionVerdict a, ConnectionVerdict b) {
  auto rank = [](ConnectionVerdict v) {
    switch (v) {
      case ConnectionVerdict::refuse:
        return 2;
      case ConnectionVerdict::intercept:
        return 1;
      case ConnectionVerdict::splice:
        return 0;
    }
    return 0;
  };
  return rank(a) >= rank(b) ? a : b;
}

}  // namespace

IpAddress to_ip_address(const asio::ip::address& address) {
  if (address.is_v4()) {
    auto b = address.to_v4().to_bytes();
    return IpAddress::v4({b[0], b[1], b[2], b[3]});
  }
  auto b = address.to_v6().to_bytes();
  std::array<uint8_t, 16> bytes;
  std::copy(b.begin(), b.end(), bytes.begin());
  return IpAddress::v6(bytes).unmapped();
}

std::optional<LimitHit> limit_of_phase(std::string_view phase) {
  struct Entry {
    std::string_view phase;
    LimitHit limit;
  };
  // Every phase a client (or an origin) can make us wait in; "connect" and our own goodbyes
  // ("send-error", "linger", "tls-shutdown", "refuse") are not limits on anyone.
  static constexpr Entry kPhases[] = {
      {"client-hello", LimitHit::client_hello_timeout},
      {"client-tls-handshake", LimitHit::tls_handshake_client_timeout},
      {"server-tls-handshake", LimitHit::tls_handshake_origin_timeout},
      {"proxy-header", LimitHit::proxy_header_timeout},
      {"first-request", LimitHit::request_header_timeout},
      {"request-header", LimitHit::request_header_timeout},
      {"idle", LimitHit::idle_timeout},
      {"tunnel-idle", LimitHit::idle_timeout},
      {"websocket-idle", LimitHit::idle_timeout},
      {"request-send", LimitHit::body_stall},
      {"request-body", LimitHit::body_stall},
      {"response-send", LimitHit::body_stall},
      {"response-body", LimitHit::body_stall},
      {"send-block-page", LimitHit::body_stall},
      {"reserved-page", LimitHit::body_stall},
      {"response-header", LimitHit::response_header_timeout},
  };
  for (const Entry& entry : kPhases) {
    if (entry.phase == phase) return entry.limit;
  }
  return std::nullopt;
}

// Host names from the network are normalized before any decision: case, trailing dot, IDNA.
std::optional<std::string> normalized(std::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return policy::normalize_host(host);
}

ClientSession::ClientSession(Worker& worker, tcp::socket socket, ListenerKind kind,
                             const std::string& listener, ClientConnectionTable::Slot slot)
    : worker_(worker),
      runtime_(worker.runtime()),
      config_(worker.config()),
      client_socket_(std::move(socket)),
      id_(runtime_.next_connection_id.fetch_add(1, std::memory_order_relaxed)),
      kind_(kind),
      deadline_(client_socket_.get_executor()) {
  error_code ec;
  client_endpoint_ = client_socket_.remote_endpoint(ec);
  client_ip_ = to_ip_address(client_endpoint_.address());
  client_socket_.set_option(tcp::no_delay(true), ec);
  facts_.started = std::chrono::system_clock::now();
  facts_.mode = kind == ListenerKind::transparent ? "transparent" : "explicit";
  if (runtime_.pseudonymiser) {
    facts_.client_ip = runtime_.pseudonymiser->pseudonym(client_ip_.to_string());
  } else {
    facts_.client_ip = client_ip_.to_string();
    facts_.client_port = client_endpoint_.port();
  }
  facts_.listener = listener;
  client_lowest_ = &client_socket_;
  client_slot_ = std::move(slot);
  registry_entry_ = worker_.add_session(this);
  runtime_.open_connections.fetch_add(1, std::memory_order_relaxed);
  worker_.metrics().connection_opened();
}

ClientSession::~ClientSession() {
  // A request cut short by the connection's end still leaves its record.
  finish_pending(std::nullopt, 0, 0, "client-gone", "the connection ended mid-request");
  ConnectionOutcome outcome = ConnectionOutcome::error;
  if (rejected_) {
    outcome = ConnectionOutcome::rejected;
  } else if (facts_.verdict == "intercept" || (facts_.verdict.empty() && facts_.requests > 0)) {
    outcome = ConnectionOutcome::intercept;  // (plain HTTP through the proxy is seen whole too)
  } else if (facts_.verdict == "splice") {
    outcome = ConnectionOutcome::splice;
  } else if (facts_.verdict == "refuse") {
    outcome = ConnectionOutcome::refuse;
  }
  worker_.metrics().connection_closed(outcome);
  worker_.remove_session(registry_entry_);
  runtime_.open_connections.fetch_sub(1, std::memory_order_relaxed);
}

awaitable<void> ClientSession::run(std::unique_ptr<ClientSession> self) {
  ClientSession* session = self.get();
  // The watch ends (cancelled) when the flow ends, before `self` goes: no dangling timer.
  // (The callback is built outside the co_await expression: GCC 12 destroys class-type
  // temporaries of a co_await full-expression twice.)
  std::function<void()> on_expire = [session] {
    // Every per-connection timeout ends here, once per expiry: the one place to count them.
    if (auto limit = limit_of_phase(session->deadline_.phase())) session->count_limit(*limit);
    session->cancel_io();
  };
  co_await (session->flow() || session->deadline_.watch(on_expire));
}

void ClientSession::count_limit(LimitHit limit) {
  worker_.metrics().limit_hit(limit);
}

void ClientSession::close_if_idle() {
  closing_ = true;
  if (client_h2_ != nullptr) {
    client_h2_->shutdown_gracefully();  // GOAWAY: open streams finish, no new ones
  } else if (idle_) {
    cancel_io();
  }
}

void ClientSession::cancel_io() {
  error_code ignored;
  if (client_lowest_ != nullptr) client_lowest_->cancel(ignored);
  if (server_lowest_ != nullptr) server_lowest_->cancel(ignored);
}

// True when `address` is one of this host's: binding to it works only then (without
// IP_TRANSPARENT).
bool is_local_address(const asio::ip::address& address) {
  asio::ip::udp::socket probe(asio::system_executor{});
  error_code ec;
  probe.open(address.is_v6() ? asio::ip::udp::v6() : asio::ip::udp::v4(), ec);
  if (ec) return false;
  probe.bind({address, 0}, ec);
  return !ec;
}

// The proxy's own listeners (a loop) and its admin listener are never a target: the admin API
// must not be reachable by whoever can use the proxy (mitmproxy's CVE-2025-23217).
std::optional<Failure> ClientSession::own_endpoint_failure(
    const std::vector<tcp::endpoint>& endpoints) const {
  auto is = [](const Endpoint& own, const tcp::endpoint& endpoint) {
    if (own.port != endpoint.port()) return false;
    const IpAddress address = to_ip_address(endpoint.address());
    if (own.address == address || endpoint.address().is_loopback()) return true;
    const bool wildcard =
        std::ranges::all_of(own.address.bytes(), [](uint8_t b) { return b == 0; }) ||
        own.address.unmapped() == IpAddress::v4({0, 0, 0, 0});
    // A wildcard listener is us only at an address of this host: another host on the same
    // port (an origin on 8443) is a real target.
    return wildcard && is_local_address(endpoint.address());
  };
  const Endpoint& admin = runtime_.bound_admin ? *runtime_.bound_admin : config_.admin;
  const auto& listeners =
      runtime_.bound_listeners.empty() ? config_.listen : runtime_.bound_listeners;
  for (const auto& endpoint : endpoints) {
    if (is(admin, endpoint)) {
      return Failure{http::status::forbidden, "admin-not-proxied",
                     "the admin interface is not reachable through the proxy"};
    }
    if (std::ranges::any_of(listeners, [&](const Endpoint& own) { return is(own, endpoint); })) {
      return Failure{http::status::forbidden, "loop", "refusing to connect to the proxy itself"};
    }
  }
  return std::nullopt;
}

http::response<http::string_body> ClientSession::reserved_page(std::string_view path,
                                                               unsigned version) const {
  http::response<http::string_body> response{http::status::ok, version >= 10 ? version : 11};
  std::string_view type = "text/plain; charset=utf-8";
  if (path.empty() || path == "/" || path == "/index.html") {
    type = "text/html; charset=utf-8";
    response.body() = embedded::webui_index_html();
  } else if (path == "/app.js") {
    type = "text/javascript; charset=utf-8";
    response.body() = embedded::webui_app_js();
  } else if (path == "/style.css") {
    type = "text/css; charset=utf-8";
    response.body() = embedded::webui_style_css();
  } else if (path == "/ca.json") {
    // The fingerprint to compare before trusting (the admin UI shows the same).
    type = "application/json";
    response.body() = "{\"fingerprint\":\"" + runtime_.ca.fingerprint_sha256() +
                      "\",\"subject\":\"" + webui::json_escape(runtime_.ca.subject()) +
                      "\",\"not_after\":\"" + format_timestamp(runtime_.ca.not_after()) + "\"}";
  } else if (path == "/ca.pem") {
    type = "application/x-pem-file";
    response.body() = runtime_.ca.pem();
    response.set(http::field::content_disposition, "attachment; filename=\"tokgate-ca.pem\"");
  } else if (path == "/ca.crt" || path == "/ca.der") {
    type = "application/x-x509-ca-cert";
    const auto der = runtime_.ca.der();
    response.body().assign(der.begin(), der.end());
    response.set(http::field::content_disposition, "attachment; filename=\"tokgate-ca.crt\"");
  } else {
    response.result(http::status::not_found);
    response.body() = "only the CA is served here: /, /ca.pem, /ca.crt, /ca.json\n";
  }
  response.set(http::field::content_type, type);
  response.set(http::field::cache_control, "no-store");
  response.set("X-Content-Type-Options", "nosniff");
  response.set("Content-Security-Policy", webui::kPageSecurityPolicy);
  response.set("Referrer-Policy", "no-referrer");
  response.prepare_payload();
  return response;
}

Failure ClientSession::timeout_failure(std::string_view what) const {
  return Failure{http::status::gateway_timeout, "upstream-timeout",
                 "timed out waiting for " + std::string(what)};
}

awaitable<void> ClientSession::flow() {
  // Behind a load balancer the real client comes first, in a PROXY header: it is the one the
  // allow list, the policy and the records see.
  if (kind_ == ListenerKind::proxy_protocol) {
    if (!co_await read_proxy_header()) co_return;
    client_slot_ = runtime_.client_connections.try_acquire(client_ip_);
    if (!client_slot_) {
      // The balancer's connection carries one client that already has its share open.
      count_limit(LimitHit::connections_per_client);
      worker_.log_refusal(worker_.client_limit_log(), LimitHit::connections_per_client,
                          client_ip_.to_string());
      rejected_ = true;
      const std::string_view answer = refusal_answer(LimitHit::connections_per_client);
      deadline_.set(kGoodbyeBudget, "send-error");
      co_await asio::async_write(client_socket_, asio::buffer(answer.data(), answer.size()),
                                 use_nothrow);
      co_await linger(client_socket_);
      co_return;
    }
  }
  const IpAddress& client_ip = client_ip_;
  bool allowed = std::ranges::any_of(config_.allowed_clients,
                                     [&](const Cidr& cidr) { return cidr.contains(client_ip); });
  if (!allowed) {
    log::warn("client-not-allowed").kv("conn", id_).kv("client", client_ip.to_string());
    rejected_ = true;
    if (kind_ == ListenerKind::transparent) {
      // It did not ask for a proxy and may be mid-TLS: an HTTP answer would be noise. Closed,
      // and recorded.
      FlowRecord record = connection_record();
      record.error = "client-not-allowed";
      record.error_reason = "client " + client_ip.to_string() + " may not use this gateway";
      emit(std::move(record));
      co_return;
    }
    failure_ = Failure{http::status::forbidden, "client-not-allowed",
                       "client " + client_ip.to_string() + " may not use this proxy"};
    co_await send_failure(client_socket_, 11);
    co_return;
  }
  if (kind_ == ListenerKind::transparent) {
    facts_.mode = "transparent";
    co_await serve_transparent();
  } else {
    co_await serve_explicit();
  }
  if (client_socket_.is_open()) co_await linger(client_socket_);
}

std::span<char> ClientSession::relay_chunk() {
  if (!chunk_) chunk_ = std::make_unique_for_overwrite<char[]>(config_.limits.relay_buffer_bytes);
  return {chunk_.get(), config_.limits.relay_buffer_bytes};
}

template <class... Buffers>
void ClientSession::release_idle_memory(Buffers&... buffers) {
  chunk_.reset();
  ((buffers.size() == 0 ? buffers.shrink_to_fit() : void()), ...);
}

// Bytes a first step read past what it needed belong to the HTTP parser.
void ClientSession::take_preread(beast::flat_buffer& buffer) {
  if (preread_.empty()) return;
  auto space = buffer.prepare(preread_.size());
  std::memcpy(space.data(), preread_.data(), preread_.size());
  buffer.commit(preread_.size());
  preread_.clear();
}

// Closing a socket with unread input makes the kernel send RST, and a RST can destroy our last
// words (an error page, a GOAWAY) in the client's receive queue before it reads them. So: FIN
// first, then read and discard what the client still sends, for a moment, as servers do.
awaitable<void> ClientSession::linger(tcp::socket& socket) {
  error_code ec;
  socket.shutdown(tcp::socket::shutdown_send, ec);
  if (ec) co_return;
  deadline_.rearm();
  deadline_.set(kLingerBudget, "linger");
  std::array<char, 4096> discard;
  std::size_t drained = 0;
  while (drained < kLingerBytes) {
    auto [rec, n] = co_await socket.async_read_some(asio::buffer(discard), use_nothrow);
    if (rec) break;
    drained += n;
  }
}

std::optional<Failure> ClientSession::check_request(const RequestParser& parser) const {
  const auto& request = parser.get();
  if (!is_allowed_method(request.method())) {
    return Failure{http::status::method_not_allowed, "method-not-allowed",
                   "method " + std::string(request.method_string()) + " is not allowed"};
  }
  return std::nullopt;
}

std::optional<Failure> ClientSession::check_head_limits(const RequestParser& parser) {
  const auto& request = parser.get();
  // "METHOD SP target SP HTTP/1.1": what the client sent, give or take the line end.
  const std::size_t line = request.method_string().size() + request.target().size() + 10;
  if (line > config_.limits.request_line_bytes) {
    count_limit(LimitHit::request_line_size);
    return Failure{http::status::uri_too_long, "request-line-too-long",
                   "request line of " + std::to_string(line) + " bytes exceeds the limit of " +
                       std::to_string(config_.limits.request_line_bytes)};
  }
  const auto fields = static_cast<std::size_t>(std::distance(request.begin(), request.end()));
  if (fields > config_.limits.request_header_fields) {
    count_limit(LimitHit::request_header_fields);
    return Failure{http::status::request_header_fields_too_large, "too-many-header-fields",
                   std::to_string(fields) + " header fields exceed the limit of " +
                       std::to_string(config_.limits.request_header_fields)};
  }
  return std::nullopt;
}

template <class ClientStream>
awaitable<void> ClientSession::send_failure(ClientStream& client, unsigned version,
                                            bool keep_alive) {
  const Failure& failure = failure_;
  log::warn("request-failed")
      .kv("conn", id_)
      .kv("status", static_cast<unsigned>(failure.status))
      .kv("error", failure.code)
      .kv("reason", failure.reason);
  if (pending_) {
    finish_pending(static_cast<unsigned>(failure.status), 0, 0, failure.code, failure.reason);
  } else {
    FlowRecord record = connection_record();
    record.status = static_cast<unsigned>(failure.status);
    record.error = failure.code;
    record.error_reason = failure.reason.substr(0, 512);
    record.total_ms =
        std::chrono::duration<double, std::milli>(std::chrono::system_clock::now() - facts_.started)
            .count();
    emit(std::move(record));
  }
  auto response = failure_response(failure, version >= 10 ? version : 11, keep_alive);
  deadline_.rearm();
  deadline_.set(kGoodbyeBudget, "send-error");
  co_await http::async_write(client, response, use_nothrow);
}

namespace {
// Completes when `stream` has input to read (or failed): TLS bytes OpenSSL already holds count.
awaitable<std::tuple<error_code>> wait_readable(TlsStream& stream) {
  if (!stream.read_would_block()) co_return std::tuple<error_code>{};
  stream.release_buffers_while_idle();
  auto [ec] = co_await stream.next_layer().async_wait(tcp::socket::wait_read, use_nothrow);
  if (!ec) stream.note_readable();
  co_return std::tuple<error_code>{ec};
}
awaitable<std::tuple<error_code>> wait_readable(tcp::socket& socket) {
  auto [ec] = co_await socket.async_wait(tcp::socket::wait_read, use_nothrow);
  co_return std::tuple<error_code>{ec};
}
}  // namespace

template <class ClientStream>
awaitable<bool> ClientSession::read_request_head(ClientStream& client, beast::flat_buffer& buffer,
                                                 RequestParser& parser, bool first) {
  parser.header_limit(static_cast<std::uint32_t>(config_.limits.request_header_bytes));
  parser.body_limit(boost::none);  // bodies stream through a fixed chunk: no size limit needed
  if (!first && (closing_ || worker_.draining())) co_return false;
  if (buffer.size() == 0) {
    // Waiting for a request that may never come is the idle phase; once bytes arrive, the
    // head must complete within the request-header budget (slowloris).
    idle_ = true;
    // A new connection's first request is due within the header budget (a client that opens
    // connections and sends nothing is a slowloris too); later ones may idle.
    if (first) {
      deadline_.set(config_.timeouts.request_header, "first-request");
    } else {
      deadline_.set(config_.timeouts.idle, "idle");
    }
    if (!first) {
      // Readiness first, then a buffer: an idle connection holds none while it waits.
      auto [wait_error] = co_await wait_readable(client);
      if (wait_error) {
        idle_ = false;
        co_return false;
      }
    }
    auto [ec, n] = co_await client.async_read_some(
        buffer.prepare(std::min<std::size_t>(4096, buffer.max_size())), use_nothrow);
    idle_ = false;
    if (ec) co_return false;  // closed, reset, drained or idle: nothing to answer
    buffer.commit(n);
  }
  idle_ = false;
  deadline_.set(config_.timeouts.request_header, "request-header");
  auto [ec, n] = co_await http::async_read_header(client, buffer, parser, use_nothrow);
  if (!ec) {
    if (auto failure = check_head_limits(parser)) {
      failure_ = *failure;
      co_await send_failure(client, 11);
      co_return false;
    }
    co_return true;
  }
  if (deadline_.expired()) {
    failure_ = Failure{http::status::request_timeout, "request-timeout",
                       "request header not received in time"};
    co_await send_failure(client, 11);
  } else if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
    count_limit(LimitHit::request_header_size);
    failure_ = Failure{http::status::request_header_fields_too_large, "request-header-too-large",
                       "request header exceeds the limit of " +
                           std::to_string(config_.limits.request_header_bytes) + " bytes"};
    co_await send_failure(client, 11);
  } else if (!is_disconnect(ec) && ec != asio::error::operation_aborted) {
    failure_ =
        Failure{http::status::bad_request, "bad-request", "malformed request: " + ec.message()};
    co_await send_failure(client, 11);
  }
  co_return false;
}

namespace {
// The name part of a Host header ("example.com:8080", "[::1]:80"), normalized.
std::optional<std::string> host_of(std::string_view host_header) {
  if (host_header.starts_with('[')) {
    auto close = host_header.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    return normalized(host_header.substr(0, close + 1));
  }
  if (auto colon = host_header.rfind(':'); colon != std::string_view::npos) {
    host_header = host_header.substr(0, colon);
  }
  return normalized(host_header);
}
}  // namespace

ClientSession::RequestJudgement ClientSession::judge_request(
    std::string_view method, std::string_view host_header, std::string_view target,
    std::string_view user_agent, std::span<const policy::HeaderView> headers,
    const std::string& fallback_host, uint16_t port) {
  RequestJudgement judgement;
  judgement.snapshot = runtime_.policy.current();
  // Classify by the Host the origin will act on (it may differ from the SNI: domain fronting);
  // without one, by the name we connected to.
  std::optional<std::string> host = host_of(host_header);
  judgement.host = host ? *host : fallback_host;
  auto question = target.find('?');
  judgement.path = normalized_path_for_policy(target.substr(0, question));
  policy::RequestFacts facts;
  facts.host = judgement.host;
  facts.port = port;
  facts.method = method;
  facts.path = judgement.path;
  facts.query =
      question == std::string_view::npos ? std::string_view{} : target.substr(question + 1);
  facts.user_agent = user_agent;
  facts.headers = headers;
  facts.client = client_ip_;
  judgement.classification = judgement.snapshot->catalog->classify(facts);
  judgement.decision = judgement.snapshot->policy->decide_request(facts, judgement.classification);
  return judgement;
}

template <class ClientStream>
awaitable<ClientSession::PolicyOutcome> ClientSession::apply_request_policy(ClientStream& client,
                                                                            RequestParser& parser,
                                                                            const std::string& host,
                                                                            uint16_t port) {
  auto& request = parser.get();
  header_views_.clear();
  for (const auto& field : request) {
    if (header_views_.size() >= 256) break;  // the parser's header limit bounds this anyway
    header_views_.push_back({field.name_string(), field.value()});
  }
  RequestJudgement judgement =
      judge_request(request.method_string(), request[http::field::host], request.target(),
                    request[http::field::user_agent], header_views_, host, port);
  snapshot_ = judgement.snapshot;
  // A request left unrecorded (its connection died) is recorded now rather than lost.
  finish_pending(std::nullopt, 0, 0, "client-gone", "the connection ended mid-request");
  pending_ = request_record(judgement, request.method_string(), request.target(),
                            request[http::field::user_agent],
                            std::to_string(id_) + "." + std::to_string(facts_.requests + 1));
  pending_started_ = std::chrono::steady_clock::now();
  pending_first_byte_ms_.reset();
  pending_bytes_up_ = 0;
  const policy::Classification& classification = judgement.classification;
  const policy::RequestDecision& decision = judgement.decision;
  struct {
    std::string_view host;
    std::string_view method;
    std::string_view path;
  } facts{judgement.host, request.method_string(), judgement.path};
  label_.category = classification.category;
  label_.action = decision.action;
  label_.rule = decision.rule;
  label_.host.assign(facts.host);
  label_.full_capture = decision.full_capture;

  if (decision.action == policy::Action::block) {
    const auto& policy = *snapshot_->policy;
    webui::BlockInfo info{
        policy.organisation(), decision.message, policy::to_string(classification.category),
        decision.rule,         facts.host,       policy.name()};
    auto page = webui::render_block_page(info, request[http::field::accept]);
    http::response<http::string_body> response{http::status::unavailable_for_legal_reasons,
                                               request.version()};
    response.set(http::field::content_type, page.content_type);
    response.set(http::field::cache_control, "no-store");
    response.set("X-Tokgate-Category", policy::to_string(classification.category));
    if (!decision.rule.empty()) response.set("X-Tokgate-Rule", decision.rule);
    response.body() = std::move(page.body);
    // Nothing of a body-less request is left unread: the connection can go on.
    const bool keep_alive = request.keep_alive() && parser.is_done() && !closing_;
    response.keep_alive(keep_alive);
    response.prepare_payload();
    log::info("request")
        .kv("conn", id_)
        .kv("method", facts.method)
        .kv("host", facts.host)
        .kv("path", facts.path)
        .kv("status", 451)
        .kv("category", policy::to_string(classification.category))
        .kv("action", "block")
        .kv("rule", decision.rule);
    deadline_.set(config_.timeouts.io_stall, "send-block-page");
    const uint64_t page_bytes = response.body().size();
    auto [ec, n] = co_await http::async_write(client, response, use_nothrow);
    finish_pending(451, 0, page_bytes);
    co_return ec || !keep_alive ? PolicyOutcome::close : PolicyOutcome::answered;
  }
  if (decision.action == policy::Action::refuse) {
    log::info("request")
        .kv("conn", id_)
        .kv("method", facts.method)
        .kv("host", facts.host)
        .kv("path", facts.path)
        .kv("category", policy::to_string(classification.category))
        .kv("action", "refuse")
        .kv("rule", decision.rule);
    finish_pending(std::nullopt, 0, 0);
    co_return PolicyOutcome::close;
  }
  co_return PolicyOutcome::forward;
}

awaitable<void> ClientSession::serve_explicit() {
  auto executor = client_socket_.get_executor();
  beast::flat_buffer client_buffer(config_.limits.request_header_bytes + 16 * 1024);
  take_preread(client_buffer);
  beast::flat_buffer server_buffer(config_.limits.response_header_bytes + 16 * 1024);
  std::optional<tcp::socket> server;
  Target server_target;
  for (bool first = true;; first = false) {
    if (!first) release_idle_memory(client_buffer, server_buffer);
    RequestParser parser;
    if (!co_await read_request_head(client_socket_, client_buffer, parser, first)) co_return;
    auto& request = parser.get();
    const unsigned version = request.version();

    if (request.method() == http::verb::connect) {
      auto authority = boost::urls::parse_authority(request.target());
      std::optional<std::string> host;
      if (authority && authority->has_port() && authority->port_number() != 0) {
        host = normalized(authority->host_address());
      }
      if (!host) {
        failure_ = Failure{
            http::status::bad_request, "bad-request",
            "CONNECT needs host:port, got '" + std::string(request.target().substr(0, 200)) + "'"};
        co_await send_failure(client_socket_, version);
        co_return;
      }
      server.reset();
      const Target target{*host, authority->port_number()};
      co_await serve_connect(target, client_buffer);
      co_return;
    }
    if (auto failure = check_request(parser)) {
      failure_ = *failure;
      co_await send_failure(client_socket_, version);
      co_return;
    }
    auto url = boost::urls::parse_absolute_uri(request.target());
    std::optional<std::string> host;
    if (url && url->scheme_id() == boost::urls::scheme::http && url->has_authority()) {
      host = normalized(url->host_address());
    }
    if (!host || (url->has_port() && url->port_number() == 0)) {
      failure_ = Failure{http::status::bad_request, "bad-request",
                         "a proxy request needs an absolute http:// URI; use CONNECT "
                         "for https"};
      co_await send_failure(client_socket_, version);
      co_return;
    }
    Target target{*host, url->has_port() ? url->port_number() : uint16_t{80}};
    if (target.host == kReservedName) {
      // http://tokgate/: the CA and how to install it, for a device that trusts nothing yet.
      auto response = reserved_page(url->encoded_path(), version);
      const bool keep_alive = request.keep_alive() && parser.is_done() && !closing_;
      response.keep_alive(keep_alive);
      log::info("reserved-page").kv("conn", id_).kv("path", std::string(url->encoded_path()));
      deadline_.set(config_.timeouts.io_stall, "reserved-page");
      auto [ec, n] = co_await http::async_write(client_socket_, response, use_nothrow);
      if (ec || !keep_alive) co_return;
      continue;
    }
    std::string origin_form = url->encoded_path().empty() ? "/" : std::string(url->encoded_path());
    if (url->has_query()) origin_form += "?" + std::string(url->encoded_query());
    request.target(origin_form);
    request.set(
        http::field::host,
        bracketed(target.host) + (target.port == 80 ? "" : ":" + std::to_string(target.port)));
    facts_.scheme = "http";
    facts_.host = target.host;
    facts_.port = target.port;
    facts_.verdict.clear();
    facts_.bumped = false;

    auto outcome = co_await apply_request_policy(client_socket_, parser, target.host, target.port);
    if (outcome == PolicyOutcome::close) co_return;
    if (outcome == PolicyOutcome::answered) continue;

    if (!server || server_target.host != target.host || server_target.port != target.port) {
      server.emplace(executor);
      server_lowest_ = &*server;
      server_target = target;
      Resolver resolver(executor, config_.resolve);
      deadline_.set(config_.timeouts.connect, "connect");
      const auto connect_started = std::chrono::steady_clock::now();
      auto endpoints = co_await resolver.resolve(target.host, target.port);
      std::expected<tcp::endpoint, Failure> connected = std::unexpected(Failure{});
      if (endpoints) {
        if (auto own = own_endpoint_failure(*endpoints)) endpoints = std::unexpected(*own);
      }
      if (endpoints) {
        connected = co_await connect_any(*server, *endpoints, target.host);
      } else {
        connected = std::unexpected(endpoints.error());
      }
      if (!connected) {
        failure_ =
            deadline_.expired() ? timeout_failure("connect to " + target.host) : connected.error();
        // Nothing of this request is left unread: the client may go on to its next request.
        const bool keep_alive =
            request.keep_alive() && parser.is_done() && !closing_ && !worker_.draining();
        co_await send_failure(client_socket_, version, keep_alive);
        server.reset();
        server_lowest_ = nullptr;
        if (!keep_alive) co_return;
        continue;
      }
      if (pending_) pending_->connect_ms = ms_since(connect_started);
      note_upstream(*server);
      server_buffer.clear();
    }
    if (pending_) {
      pending_->upstream_ip = facts_.upstream_ip;
      pending_->upstream_port = facts_.upstream_port;
      pending_->upstream_country = facts_.upstream_country;
      pending_->upstream_asn = facts_.upstream_asn;
      pending_->upstream_as_org = facts_.upstream_as_org;
    }
    bool response_started = false;
    auto result = co_await exchange(client_socket_, client_buffer, parser, *server, server_buffer,
                                    response_started);
    if (!result) {
      if (!response_started) {
        failure_ = result.error();
        co_await send_failure(client_socket_, version);
      }
      finish_pending(std::nullopt, 0, 0, result.error().code, result.error().reason);
      co_return;
    }
    if (!result->server_reusable) {
      server.reset();
      server_lowest_ = nullptr;
    }
    if (!result->client_keep_alive) co_return;
  }
}

// Resolves and connects the server side of a CONNECT; on failure answers the client (502/504,
// or 403 for a loop back to ourselves) and returns false.
awaitable<bool> ClientSession::connect_server(tcp::socket& server, const Target& target) {
  auto executor = client_socket_.get_executor();
  const unsigned version = 11;
  // Connect to the server side first: an unreachable origin gets a clear 502/504 on the
  // CONNECT itself instead of a tunnel that dies.
  server_lowest_ = &server;
  Resolver resolver(executor, config_.resolve);
  deadline_.set(config_.timeouts.connect, "connect");
  const auto connect_started = std::chrono::steady_clock::now();
  auto endpoints = co_await resolver.resolve(target.host, target.port);
  if (!endpoints) {
    failure_ = deadline_.expired() ? timeout_failure("DNS for " + target.host) : endpoints.error();
    co_await send_failure(client_socket_, version);
    co_return false;
  }
  if (auto own = own_endpoint_failure(*endpoints)) {
    failure_ = *own;
    co_await send_failure(client_socket_, version);
    co_return false;
  }
  auto connected = co_await connect_any(server, *endpoints, target.host);
  if (!connected) {
    failure_ =
        deadline_.expired() ? timeout_failure("connect to " + target.host) : connected.error();
    co_await send_failure(client_socket_, version);
    co_return false;
  }
  facts_.connect_ms = ms_since(connect_started);
  note_upstream(server);
  co_return true;
}

awaitable<void> ClientSession::serve_connect(const Target& target,
                                             beast::flat_buffer& client_buffer) {
  auto executor = client_socket_.get_executor();
  const unsigned version = 11;
  if (!std::ranges::any_of(config_.connect_ports,
                           [&](const PortRange& r) { return r.contains(target.port); })) {
    failure_ = Failure{http::status::forbidden, "port-not-allowed",
                       "CONNECT to port " + std::to_string(target.port) + " is not allowed"};
    co_await send_failure(client_socket_, version);
    co_return;
  }
  facts_.host = target.host;
  facts_.port = target.port;
  facts_.scheme = "https";
  // Decide on the CONNECT name first: a refused name costs no connection to the origin.
  snapshot_ = runtime_.policy.current();
  policy::RequestFacts facts;
  facts.host = target.host;
  facts.port = target.port;
  facts.client = client_ip_;
  policy::ConnectionDecision decision = runtime_.decide_connection(*snapshot_, facts);
  // A pinned host is refused the way pinning clients understand: a TLS alert after their
  // ClientHello (and without bothering the origin).
  const bool pinned_refusal =
      decision.verdict == ConnectionVerdict::refuse && decision.rule == "pinned";
  facts_.category = policy::to_string(decision.category);
  facts_.rule = decision.rule;
  facts_.verdict = policy::to_string(decision.verdict);  // may still change with the SNI
  if (decision.verdict == ConnectionVerdict::refuse && !pinned_refusal) {
    facts_.verdict = "refuse";
    log::info("connection")
        .kv("conn", id_)
        .kv("client", client_ip_.to_string())
        .kv("host", target.host)
        .kv("port", target.port)
        .kv("category", policy::to_string(decision.category))
        .kv("rule", decision.rule)
        .kv("verdict", "refuse");
    failure_ = Failure{http::status::forbidden, "refused",
                       "connections to " + target.host + " are refused by policy"};
    co_await send_failure(client_socket_, version);
    co_return;
  }

  tcp::socket server(executor);
  if (!pinned_refusal && !co_await connect_server(server, target)) co_return;
  static constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection established\r\n\r\n";
  deadline_.set(config_.timeouts.client_hello, "client-hello");
  auto [wec, written] =
      co_await asio::async_write(client_socket_, asio::buffer(kEstablished), use_nothrow);
  if (wec) co_return;

  // Peek: read the ClientHello into our own buffer; the bytes are then replayed to whichever
  // side needs them (the origin when splicing, our TLS server when intercepting).
  std::vector<uint8_t> hello_bytes;
  hello_bytes.reserve(std::max<std::size_t>(client_buffer.size(), 2048));
  auto leftover = client_buffer.data();
  hello_bytes.insert(hello_bytes.end(), static_cast<const uint8_t*>(leftover.data()),
                     static_cast<const uint8_t*>(leftover.data()) + leftover.size());
  client_buffer.consume(client_buffer.size());
  client_buffer.shrink_to_fit();  // the CONNECT is done with: the tunnel holds no 4 KiB for it
  std::optional<std::expected<ClientHello, ClientHelloError>> read =
      co_await read_client_hello(hello_bytes, target.host);
  if (!read) co_return;
  std::expected<ClientHello, ClientHelloError> hello = std::move(*read);
  if (!hello) {
    if (hello.error() == ClientHelloError::not_tls) {
      // Not TLS (plain HTTP or another protocol through CONNECT): nothing to peek at.
      log::info("connection")
          .kv("conn", id_)
          .kv("host", target.host)
          .kv("verdict", "splice")
          .kv("tls", false);
      facts_.verdict = "splice";
      facts_.scheme.clear();
      co_await splice(server, hello_bytes);
    } else {
      log::warn("bad-client-hello")
          .kv("conn", id_)
          .kv("host", target.host)
          .kv("error", to_string(hello.error()));
      FlowRecord record = connection_record();
      record.error = "bad-client-hello";
      record.error_reason = std::string(to_string(hello.error()));
      emit(std::move(record));
    }
    co_return;
  }

  std::optional<std::string> sni = hello->sni.empty() ? std::nullopt : normalized(hello->sni);
  // Decide on both names: a client cannot dodge a rule by sending a different SNI. (A pinned
  // refusal is already the strictest verdict: it stands, and ends in refuse_tls below.)
  if (sni && *sni != target.host) {
    facts.host = *sni;
    auto by_sni = runtime_.decide_connection(*snapshot_, facts);
    if (stricter(by_sni.verdict, decision.verdict) != decision.verdict) decision = by_sni;
  }
  const ConnectionVerdict verdict = decision.verdict;
  facts_.sni = sni.value_or("");
  facts_.verdict = policy::to_string(verdict);
  facts_.category = policy::to_string(decision.category);
  facts_.rule = decision.rule;
  log::info("connection")
      .kv("conn", id_)
      .kv("client", client_ip_.to_string())
      .kv("host", target.host)
      .kv("port", target.port)
      .kv("sni", sni.value_or(""))
      .kv("category", policy::to_string(decision.category))
      .kv("rule", decision.rule)
      .kv("verdict", policy::to_string(verdict));
  switch (verdict) {
    case ConnectionVerdict::splice:
      co_await splice(server, hello_bytes);
      break;
    case ConnectionVerdict::refuse:
      co_await refuse_tls(*hello);
      break;
    case ConnectionVerdict::intercept:
      co_await intercept(std::move(server), *hello, hello_bytes, target);
      break;
  }
}

awaitable<void> ClientSession::splice(tcp::socket& server, std::span<const uint8_t> client_bytes) {
  uint64_t up = client_bytes.size();
  uint64_t down = 0;
  deadline_.set(config_.timeouts.idle, "tunnel-idle");
  if (!client_bytes.empty()) {
    auto [ec, n] = co_await asio::async_write(
        server, asio::buffer(client_bytes.data(), client_bytes.size()), use_nothrow);
    if (ec) co_return;
  }
  co_await (tunnel_one_way(client_socket_, server, up, deadline_, config_.timeouts.idle) &&
            tunnel_one_way(server, client_socket_, down, deadline_, config_.timeouts.idle));
  log::info("tunnel-closed").kv("conn", id_).kv("bytes_up", up).kv("bytes_down", down);
  FlowRecord record = connection_record();
  record.status = 200;  // the CONNECT was answered "200 Connection established"
  record.bytes_up = up;
  record.bytes_down = down;
  record.total_ms =
      std::chrono::duration<double, std::milli>(std::chrono::system_clock::now() - facts_.started)
          .count();
  emit(std::move(record));
}

// Reads until `bytes` hold a whole ClientHello (or show they are not one); nullopt when the
// client went away or was too slow.
awaitable<std::optional<std::expected<ClientHello, ClientHelloError>>>
ClientSession::read_client_hello(std::vector<uint8_t>& bytes, const std::string& host) {
  const std::size_t limit = config_.limits.client_hello_bytes;
  std::expected<ClientHello, ClientHelloError> hello = std::unexpected(ClientHelloError::need_more);
  for (;;) {
    if (!bytes.empty()) hello = parse_client_hello(bytes, limit);
    if (!hello && hello.error() == ClientHelloError::too_large) {
      count_limit(LimitHit::client_hello_size);
    }
    if (hello || hello.error() != ClientHelloError::need_more) {
      // The bytes stay with the connection until its handshake: not the 16 KiB read buffer.
      bytes.shrink_to_fit();
      co_return hello;
    }
    std::size_t old_size = bytes.size();
    bytes.resize(std::min(limit, old_size + 16 * 1024));
    auto [ec, n] = co_await client_socket_.async_read_some(
        asio::buffer(bytes.data() + old_size, bytes.size() - old_size), use_nothrow);
    bytes.resize(old_size + n);
    if (ec) {
      if (deadline_.expired()) log::warn("client-hello-timeout").kv("conn", id_).kv("host", host);
      co_return std::nullopt;
    }
  }
}

awaitable<void> ClientSession::refuse_tls(const ClientHello& hello) {
  (void)hello;
  deadline_.set(kGoodbyeBudget, "refuse");
  FlowRecord record = connection_record();
  record.total_ms =
      std::chrono::duration<double, std::milli>(std::chrono::system_clock::now() - facts_.started)
          .count();
  if (facts_.rule == "pinned") {
    record.error = "pinned";
    record.error_reason = "the host's clients rejected our certificate recently";
  }
  emit(std::move(record));
  co_await asio::async_write(client_socket_, asio::buffer(kAccessDeniedAlert), use_nothrow);
  error_code ignored;
  client_socket_.shutdown(tcp::socket::shutdown_both, ignored);
}

awaitable<void> ClientSession::intercept(tcp::socket server_socket, const ClientHello& hello,
                                         std::span<const uint8_t> client_bytes,
                                         const Target& target) {
  std::optional<std::string> sni = hello.sni.empty() ? std::nullopt : normalized(hello.sni);
  const std::string name = sni.value_or(target.host);

  // The origin gets the protocols the client offered; if it refuses them all, a second
  // connection offers the one we can translate to.
  std::optional<TlsStream> server_stream;
  server_stream.emplace(std::move(server_socket), worker_.tls().server_side());
  error_code sec;
  const auto tls_started = std::chrono::steady_clock::now();
  for (int attempt = 0;; ++attempt) {
    TlsStream& attempt_stream = *server_stream;
    server_lowest_ = &attempt_stream.next_layer();
    auto offer = server_side_alpn_offer(hello.alpn, attempt > 0);
    prepare_server_side_tls(attempt_stream.native_handle(), name, offer);
    worker_.tls().origin_sessions().offer(attempt_stream.native_handle(),
                                          OriginSessionCache::key(name, target.port));
    deadline_.set(config_.timeouts.tls_handshake, "server-tls-handshake");
    std::tie(sec) =
        co_await attempt_stream.async_handshake(asio::ssl::stream_base::client, use_nothrow);
    const bool refused_protocols = sec && sec.category() == asio::error::get_ssl_category() &&
                                   ERR_GET_REASON(static_cast<unsigned long>(sec.value())) ==
                                       SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL;
    if (!refused_protocols || attempt > 0 || deadline_.expired()) break;
    tcp::socket retry_socket(client_socket_.get_executor());
    server_lowest_ = &retry_socket;
    Resolver resolver(client_socket_.get_executor(), config_.resolve);
    deadline_.set(config_.timeouts.connect, "connect");
    auto endpoints = co_await resolver.resolve(target.host, target.port);
    if (!endpoints) break;
    auto connected = co_await connect_any(retry_socket, *endpoints, target.host);
    if (!connected) break;
    note_upstream(retry_socket);
    server_stream.emplace(std::move(retry_socket), worker_.tls().server_side());
  }
  TlsStream& server = *server_stream;
  server_lowest_ = &server.next_layer();
  std::optional<Failure> server_failure;
  certs::X509Ptr origin_certificate;
  std::string origin_protocol = "http/1.1";
  if (sec) {
    server_failure =
        deadline_.expired()
            ? timeout_failure("TLS handshake with " + name)
            : Failure{http::status::bad_gateway, "upstream-tls",
                      name + ": " + describe_server_tls_failure(server.native_handle(), sec)};
    worker_.metrics().origin_handshake_failed(
        deadline_.expired() ? OriginHandshakeFailure::timeout
                            : origin_failure_reason(server.native_handle(), sec));
    deadline_.rearm();
    log::warn("server-tls-failed")
        .kv("conn", id_)
        .kv("host", name)
        .kv("reason", server_failure->reason);
  } else {
    facts_.tls_ms = ms_since(tls_started);
    facts_.server_tls = SSL_get_version(server.native_handle());
    worker_.metrics().origin_handshake(SSL_session_reused(server.native_handle()) == 1);
    origin_certificate.reset(SSL_get1_peer_certificate(server.native_handle()));
    const unsigned char* selected = nullptr;
    unsigned selected_length = 0;
    SSL_get0_alpn_selected(server.native_handle(), &selected, &selected_length);
    if (selected_length > 0) {
      origin_protocol.assign(reinterpret_cast<const char*>(selected), selected_length);
    }
  }
  std::string alpn_choice = client_side_alpn_choice(hello.alpn, origin_protocol);

  bool minted = false;
  auto leaf = runtime_.leaf_cache.get(leaf_request_for(name, origin_certificate.get()), &minted);
  worker_.metrics().cert_cache(minted ? CertCacheResult::mint : CertCacheResult::hit);
  if (!leaf) {
    log::error("leaf-mint-failed").kv("conn", id_).kv("host", name).kv("reason", leaf.error());
    co_return;
  }
  TlsStream client(std::move(client_socket_), worker_.tls().client_side());
  client_lowest_ = &client.next_layer();
  std::vector<X509*> chain;
  for (const auto& cert : runtime_.ca.chain_to_send()) chain.push_back(cert.get());
  if (!prepare_client_side_tls(client.native_handle(), (*leaf)->certificate(),
                               runtime_.minter.leaf_key(), chain, &alpn_choice)) {
    log::error("client-tls-setup-failed").kv("conn", id_).kv("host", name);
    co_return;
  }
  deadline_.set(config_.timeouts.tls_handshake, "client-tls-handshake");
  auto [cec, used] = co_await client.async_handshake(
      asio::ssl::stream_base::server, asio::buffer(client_bytes.data(), client_bytes.size()),
      use_nothrow);
  if (cec) {
    const bool pinned = !deadline_.expired() && is_certificate_rejection(cec);
    if (pinned) {
      // The client refused our certificate: it pins (or does not trust our CA). Remember the
      // host so the next connections get the policy's on_pinned choice at once.
      runtime_.pinned.remember(name, snapshot_->policy->pinned_memory());
    }
    log::warn("client-tls-failed")
        .kv("conn", id_)
        .kv("client", client_ip_.to_string())
        .kv("host", name)
        .kv("pinned", pinned)
        .kv("on_pinned",
            snapshot_->policy->on_pinned() == policy::PinnedAction::refuse ? "refuse" : "splice")
        .kv("reason", deadline_.expired() ? std::string("timeout") : cec.message());
    worker_.metrics().client_handshake_failed(
        pinned                ? ClientHandshakeFailure::rejected_certificate
        : deadline_.expired() ? ClientHandshakeFailure::timeout
        : ERR_GET_REASON(static_cast<unsigned long>(cec.value())) == SSL_R_NO_SHARED_CIPHER
            ? ClientHandshakeFailure::no_shared_cipher
            : ClientHandshakeFailure::protocol);
    FlowRecord record = connection_record();
    record.error = pinned ? "pinned" : "client-tls";
    record.error_reason = pinned ? "the client rejected our certificate (pinning or an "
                                   "untrusted CA): " +
                                       cec.message()
                                 : (deadline_.expired() ? std::string("timeout") : cec.message());
    emit(std::move(record));
    co_return;
  }
  const bool client_h2 = alpn_choice == "h2";
  const bool server_h2 = !server_failure && origin_protocol == "h2";
  facts_.bumped = true;
  facts_.client_tls = SSL_get_version(client.native_handle());
  facts_.client_alpn = client_h2 ? "h2" : "http/1.1";
  if (!server_failure) facts_.server_alpn = origin_protocol;
  log::info("intercepted")
      .kv("conn", id_)
      .kv("host", name)
      .kv("client_alpn", client_h2 ? "h2" : "http/1.1")
      .kv("server_alpn", server_failure ? "none" : origin_protocol);
  if (client_h2 || server_h2) {
    co_await serve_multiplexed(client, server, client_h2, server_h2, server_failure, name,
                               target.port);
  } else {
    co_await serve_intercepted(client, server, server_failure, name, target.port);
  }

  // Tell the client we are done (close_notify), within a small budget; the server side is
  // simply closed, as a browser would.
  deadline_.rearm();
  deadline_.set(kGoodbyeBudget, "tls-shutdown");
  co_await client.async_shutdown(use_nothrow);
  co_await linger(client.next_layer());
}

template <class ClientStream, class ServerStream>
awaitable<void> ClientSession::serve_intercepted(ClientStream& client, ServerStream& server,
                                                 const std::optional<Failure>& server_failure,
                                                 const std::string& name, uint16_t port) {
  beast::flat_buffer client_buffer(config_.limits.request_header_bytes + 16 * 1024);
  take_preread(client_buffer);
  beast::flat_buffer server_buffer(config_.limits.response_header_bytes + 16 * 1024);
  for (bool first = true;; first = false) {
    if (!first) {
      release_idle_memory(client_buffer, server_buffer);
      if constexpr (std::is_same_v<ServerStream, TlsStream>) server.release_buffers_while_idle();
    }
    RequestParser parser;
    if (!co_await read_request_head(client, client_buffer, parser, first)) co_return;
    auto& request = parser.get();
    if (auto failure = check_request(parser)) {
      failure_ = *failure;
      co_await send_failure(client, request.version());
      co_return;
    }
    std::string_view target = request.target();
    if (!target.starts_with('/') && target != "*") {
      auto url = boost::urls::parse_absolute_uri(target);
      if (!url) {
        failure_ = Failure{http::status::bad_request, "bad-request", "bad request target"};
        co_await send_failure(client, request.version());
        co_return;
      }
      std::string origin_form =
          url->encoded_path().empty() ? "/" : std::string(url->encoded_path());
      if (url->has_query()) origin_form += "?" + std::string(url->encoded_query());
      request.target(origin_form);
    }
    auto outcome = co_await apply_request_policy(client, parser, name, port);
    if (outcome == PolicyOutcome::close) co_return;
    if (outcome == PolicyOutcome::answered) continue;
    // The origin failed verification: a request the policy lets through gets the 502 that
    // says why (never a silent bypass).
    if (server_failure) {
      failure_ = *server_failure;
      co_await send_failure(client, request.version());
      co_return;
    }
    bool response_started = false;
    auto result =
        co_await exchange(client, client_buffer, parser, server, server_buffer, response_started);
    if (!result) {
      if (!response_started) {
        failure_ = result.error();
        co_await send_failure(client, request.version());
      }
      finish_pending(std::nullopt, 0, 0, result.error().code, result.error().reason);
      co_return;
    }
    // The server side of an intercepted connection is fixed: when it goes, so does the client's.
    if (!result->client_keep_alive || !result->server_reusable) co_return;
  }
}

template <class ClientStream, class ServerStream>
awaitable<std::expected<ClientSession::ExchangeResult, Failure>> ClientSession::relay_upgraded(
    ClientStream& client, beast::flat_buffer& client_buffer, ServerStream& server,
    beast::flat_buffer& server_buffer, ResponseParser& response_parser, const std::string& method,
    const std::string& path, bool& response_started) {
  auto& response = response_parser.get();
  strip_hop_by_hop(response);
  response.set(http::field::connection, "Upgrade");
  response.set(http::field::upgrade, "websocket");
  http::response<http::empty_body> switching(std::move(response.base()));
  deadline_.set(config_.timeouts.io_stall, "response-send");
  response_started = true;
  auto [wec, wn] = co_await http::async_write(client, switching, use_nothrow);
  log::info("request")
      .kv("conn", id_)
      .kv("method", method)
      .kv("host", label_.host)
      .kv("path", path)
      .kv("status", 101)
      .kv("category", policy::to_string(label_.category))
      .kv("action", policy::to_string(label_.action))
      .kv("rule", label_.rule)
      .kv("client_proto", "http/1.1")
      .kv("server_proto", "http/1.1")
      .kv("upgrade", "websocket");
  if (wec) co_return ExchangeResult{false, false};
  // Bytes read past either head already belong to the WebSocket.
  auto client_bytes = client_buffer.data();
  auto server_bytes = server_buffer.data();
  std::span<const uint8_t> client_pending(static_cast<const uint8_t*>(client_bytes.data()),
                                          client_bytes.size());
  std::span<const uint8_t> server_pending(static_cast<const uint8_t*>(server_bytes.data()),
                                          server_bytes.size());
  std::span<char> buffer = relay_chunk();
  deadline_.set(config_.timeouts.idle, "websocket-idle");
  idle_ = false;
  WebSocketRelayResult result =
      co_await relay_websocket(client, server, client_pending, server_pending, buffer, deadline_,
                               config_.timeouts.idle, config_.limits.websocket_frame_bytes);
  if (result.frame_too_large) {
    count_limit(LimitHit::websocket_frame_size);
    if (result.client_at_frame_boundary) {
      // The client learns why: close 1009 (message too big), RFC 6455 section 7.4.1.
      const std::string close = websocket_close_frame(
          1009, "frame over the limit of " + std::to_string(config_.limits.websocket_frame_bytes) +
                    " bytes");
      deadline_.rearm();
      deadline_.set(kGoodbyeBudget, "send-error");
      co_await asio::async_write(client, asio::buffer(close), use_nothrow);
    }
  }
  auto line = log::info("websocket-closed");
  line.kv("conn", id_)
      .kv("host", label_.host)
      .kv("path", path)
      .kv("category", policy::to_string(label_.category))
      .kv("messages_up", result.up.messages)
      .kv("messages_down", result.down.messages)
      .kv("bytes_up", result.up.data_bytes())
      .kv("control_frames_up", result.up.control_frames)
      .kv("bytes_down", result.down.data_bytes())
      .kv("control_frames_down", result.down.control_frames)
      .kv("frames_up", result.up.frames)
      .kv("frames_down", result.down.frames);
  if (result.close_code_up) line.kv("close_code_up", *result.close_code_up);
  if (result.close_code_down) line.kv("close_code_down", *result.close_code_down);
  if (!result.error.empty()) line.kv("error", result.error);
  if (pending_) {
    pending_->scheme = facts_.scheme == "https" ? "wss" : "ws";
    pending_->ws_messages_up = result.up.messages;
    pending_->ws_messages_down = result.down.messages;
    if (result.close_code_up) {
      pending_->ws_close_code = *result.close_code_up;
    } else if (result.close_code_down) {
      pending_->ws_close_code = *result.close_code_down;
    }
  }
  finish_pending(101, result.up.data_bytes(), result.down.data_bytes(),
                 result.error.empty() ? "" : "websocket", result.error);
  co_return ExchangeResult{false, false};
}

template <class ClientStream, class ServerStream>
awaitable<std::expected<ClientSession::ExchangeResult, Failure>> ClientSession::exchange(
    ClientStream& client, beast::flat_buffer& client_buffer, RequestParser& request_parser,
    ServerStream& server, beast::flat_buffer& server_buffer, bool& response_started) {
  const auto started = std::chrono::steady_clock::now();
  auto& request = request_parser.get();
  const bool client_wants_keep_alive = request.keep_alive();
  const bool is_head = request.method() == http::verb::head;
  const unsigned client_version = request.version();
  const std::string method(request.method_string());
  std::string path(request.target());
  if (auto q = path.find('?'); q != std::string::npos) path.resize(q);  // queries stay out of logs

  // A member, so that a request that fails half-way is still recorded with what went up.
  uint64_t& request_bytes = pending_bytes_up_;
  request_bytes = 0;
  uint64_t response_bytes = 0;
  // Action capture: the exchange as the client saw it, for a HAR file.
  std::shared_ptr<HarExchange> har;
  BodyCapture request_capture;
  BodyCapture response_capture;
  if (pending_ && label_.action == policy::Action::capture) {
    har = std::make_shared<HarExchange>();
    har->started = pending_->started;
    har->method = method;
    std::string_view host_header = request[http::field::host];
    har->url = (facts_.scheme.empty() ? std::string("https") : facts_.scheme) + "://" +
               std::string(host_header.empty() ? std::string_view(label_.host) : host_header) +
               std::string(request.target());
    har->http_version = client_version == 10 ? "HTTP/1.0" : "HTTP/1.1";
    for (const auto& field : request) {
      har->request_headers.push_back(
          {std::string(field.name_string()), std::string(field.value())});
    }
    har->server_ip = facts_.upstream_ip;
    har->connection = std::to_string(id_);
    request_capture.limit = config_.capture_body_bytes;
    response_capture.limit = config_.capture_body_bytes;
  }
  auto attach_capture = [&](unsigned status_sent) {
    if (!har || !pending_) return;
    har->request_body = {std::move(request_capture.bytes), request_bytes,
                         request_capture.truncated};
    har->response_body = {std::move(response_capture.bytes), response_bytes,
                          response_capture.truncated};
    if (har->status == 0) har->status = status_sent;
    if (pending_->connect_ms) har->connect_ms = *pending_->connect_ms;
    if (pending_->tls_ms) har->ssl_ms = *pending_->tls_ms;
    const double total = ms_since(pending_started_);
    har->wait_ms = pending_first_byte_ms_.value_or(total);
    har->receive_ms = std::max(0.0, total - har->wait_ms);
    har->comment = "tokgate flow " + pending_->flow + ", rule " + std::string(label_.rule) +
                   ", category " + std::string(policy::to_string(label_.category));
    pending_->har = std::move(har);
    pending_->har_full = label_.full_capture;
  };
  // A WebSocket handshake keeps its Upgrade (and nothing else the Connection header names).
  const bool websocket_upgrade = is_websocket_upgrade(request);
  strip_hop_by_hop(request);
  if (websocket_upgrade) {
    request.set(http::field::connection, "Upgrade");
    request.set(http::field::upgrade, "websocket");
  }
  request.version(11);
  request.body().data = nullptr;
  request.body().size = 0;
  request.body().more = true;
  http::request_serializer<http::buffer_body> request_serializer{request};
  deadline_.set(config_.timeouts.io_stall, "request-send");
  {
    auto [ec, n] = co_await http::async_write_header(server, request_serializer, use_nothrow);
    if (ec) {
      co_return std::unexpected(Failure{http::status::bad_gateway, "upstream-protocol",
                                        "cannot send the request to the server: " + ec.message()});
    }
  }

  std::span<char> chunk = relay_chunk();
  std::optional<ResponseParser> response_parser;

  bool request_body_stalled = false;
  auto send_request_body = [&]() -> awaitable<BodyResult> {
    auto result = co_await relay_body(
        client, client_buffer, request_parser, server, request_serializer, chunk, deadline_,
        config_.timeouts.io_stall, request_bytes, har ? &request_capture : nullptr);
    if (result.outcome == BodyOutcome::read_failed) {
      // (The deadline that expired was the body's: relay_body sets it before every read.)
      request_body_stalled = deadline_.expired() && deadline_.phase() == "request-body";
      // The client is gone: stop waiting for the answer nobody will read (the response head
      // read running alongside), and let the origin see the connection end now.
      error_code ignored;
      beast::get_lowest_layer(server).cancel(ignored);
    }
    deadline_.set(config_.timeouts.response_header, "response-header");
    co_return result;
  };
  auto read_response_head = [&]() -> awaitable<std::optional<Failure>> {
    for (int interim = 0;; ++interim) {
      response_parser.emplace();
      response_parser->header_limit(
          static_cast<std::uint32_t>(config_.limits.response_header_bytes));
      response_parser->body_limit(boost::none);
      if (is_head) response_parser->skip(true);
      auto [ec, n] =
          co_await http::async_read_header(server, server_buffer, *response_parser, use_nothrow);
      if (ec) {
        if (deadline_.expired()) co_return timeout_failure("the response from the server");
        if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
          count_limit(LimitHit::response_header_size);
          co_return Failure{http::status::bad_gateway, "upstream-protocol",
                            "response header exceeds the limit of " +
                                std::to_string(config_.limits.response_header_bytes) + " bytes"};
        }
        if (is_disconnect(ec)) {
          co_return Failure{http::status::bad_gateway, "upstream-protocol",
                            "the server closed the connection without a response"};
        }
        co_return Failure{http::status::bad_gateway, "upstream-protocol",
                          "bad response from the server: " + ec.message()};
      }
      auto& head = response_parser->get();
      unsigned status = head.result_int();
      if (status == 101) {
        if (websocket_upgrade && beast::iequals(head[http::field::upgrade], "websocket")) {
          co_return std::nullopt;
        }
        co_return Failure{http::status::bad_gateway, "upstream-protocol",
                          "the origin switched to a protocol other than the WebSocket asked for"};
      }
      if (status >= 200) co_return std::nullopt;
      if (interim >= 8) {
        co_return Failure{http::status::bad_gateway, "upstream-protocol",
                          "too many interim responses"};
      }
      // 1xx (100 Continue, 103 Early Hints): pass it on to an HTTP/1.1 client, then read on.
      if (client_version >= 11) {
        strip_hop_by_hop(head);
        head.body().data = nullptr;
        head.body().more = false;
        http::response_serializer<http::buffer_body> interim_serializer{head};
        auto [wec, wn] = co_await http::async_write_header(client, interim_serializer, use_nothrow);
        if (wec) {
          co_return Failure{http::status::bad_gateway, "client-gone", "client went away"};
        }
      }
    }
  };

  BodyResult request_result;
  std::optional<Failure> head_failure;
  if (request_parser.is_done()) {
    request_result = co_await send_request_body();
    if (request_result.outcome == BodyOutcome::done) head_failure = co_await read_response_head();
  } else {
    // The body goes up while we wait for the response head: an origin may answer early
    // (100 Continue, or an error before reading the body).
    std::tie(request_result, head_failure) = co_await (send_request_body() && read_response_head());
  }
  if (request_result.outcome == BodyOutcome::read_failed) {
    if (request_body_stalled) {
      // The client is still there but its body stalled (counted as body-stall when the
      // deadline fired): it gets a 408 that says so, as for a stalled head.
      deadline_.rearm();
      co_return std::unexpected(Failure{http::status::request_timeout, "request-body-timeout",
                                        "no request body bytes for " +
                                            std::to_string(config_.timeouts.io_stall.count()) +
                                            " ms"});
    }
    // The client stopped sending its body: nobody is left to answer.
    response_started = true;
    co_return std::unexpected(
        Failure{http::status::bad_request, "client-gone", "client stopped sending the body"});
  }
  if (head_failure) co_return std::unexpected(*head_failure);
  pending_first_byte_ms_ = ms_since(pending_started_);
  if (request_result.outcome == BodyOutcome::write_failed && !response_parser) {
    co_return std::unexpected(Failure{http::status::bad_gateway, "upstream-protocol",
                                      "the server stopped reading the request body"});
  }

  auto& response = response_parser->get();
  const unsigned status = response.result_int();
  if (har) {
    har->status = status;
    har->status_text = std::string(response.reason());
    for (const auto& field : response) {
      har->response_headers.push_back(
          {std::string(field.name_string()), std::string(field.value())});
    }
  }
  if (status == 101) {
    co_return co_await relay_upgraded(client, client_buffer, server, server_buffer,
                                      *response_parser, method, path, response_started);
  }
  const bool server_reusable = response.keep_alive() && !response_parser->need_eof() &&
                               request_result.outcome == BodyOutcome::done;
  bool client_keep_alive = client_wants_keep_alive && request_parser.is_done() &&
                           request_result.outcome == BodyOutcome::done && !closing_ &&
                           !worker_.draining();
  strip_hop_by_hop(response);
  if (response_parser->need_eof() && !is_head) {
    // The server delimits this body by closing: re-frame it as chunked for an HTTP/1.1 client.
    if (client_version >= 11) {
      response.chunked(true);
    } else {
      client_keep_alive = false;
    }
  }
  response.version(11);
  response.keep_alive(client_keep_alive);
  response.body().data = nullptr;
  response.body().more = true;
  http::response_serializer<http::buffer_body> response_serializer{response};
  deadline_.set(config_.timeouts.io_stall, "response-send");
  response_started = true;
  // A body already received with the head leaves with it, in one send (relay_body writes the
  // head then); otherwise the head goes now, whatever the body does next.
  error_code wec;
  if (!response_parser->is_done() && server_buffer.size() == 0) {
    auto [hec, hn] = co_await http::async_write_header(client, response_serializer, use_nothrow);
    wec = hec;
  }
  BodyResult response_result;
  if (wec) {
    response_result = BodyResult{BodyOutcome::write_failed, wec};
  } else {
    response_result = co_await relay_body(
        server, server_buffer, *response_parser, client, response_serializer, chunk, deadline_,
        config_.timeouts.io_stall, response_bytes, har ? &response_capture : nullptr);
  }
  const auto elapsed =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - started);
  auto line = log::info("request");
  line.kv("conn", id_)
      .kv("method", method)
      .kv("host", label_.host)
      .kv("path", path)
      .kv("status", status)
      .kv("request_bytes", request_bytes)
      .kv("response_bytes", response_bytes)
      .kv("ms", elapsed.count())
      .kv("category", policy::to_string(label_.category))
      .kv("action", policy::to_string(label_.action))
      .kv("rule", label_.rule)
      .kv("client_proto", "http/1.1")
      .kv("server_proto", "http/1.1");
  if (response_result.outcome != BodyOutcome::done) {
    const std::string_view error = response_result.outcome == BodyOutcome::read_failed
                                       ? "server-body-failed"
                                       : "client-body-failed";
    const std::string reason =
        deadline_.expired() ? std::string("stalled") : response_result.error.message();
    line.kv("error", error).kv("reason", reason);
    attach_capture(status);
    finish_pending(status, request_bytes, response_bytes, error, reason);
    co_return ExchangeResult{false, false};
  }
  attach_capture(status);
  finish_pending(status, request_bytes, response_bytes);
  co_return ExchangeResult{client_keep_alive, server_reusable};
}

// The HTTP/1.1 steps client_session_mux.cpp reuses for an HTTP/1.1 client of an HTTP/2 origin.
template awaitable<bool> ClientSession::read_request_head(TlsStream&, beast::flat_buffer&,
                                                          RequestParser&, bool);
template awaitable<ClientSession::PolicyOutcome> ClientSession::apply_request_policy(
    TlsStream&, RequestParser&, const std::string&, uint16_t);
template awaitable<void> ClientSession::send_failure(TlsStream&, unsigned, bool);
// Plain HTTP through the transparent listener (client_session_transparent.cpp).
template awaitable<void> ClientSession::serve_intercepted(tcp::socket&, tcp::socket&,
                                                          const std::optional<Failure>&,
                                                          const std::string&, uint16_t);

}  // namespace tokgate::proxy
