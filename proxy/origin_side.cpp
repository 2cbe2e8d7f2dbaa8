#include "proxy/origin_side.hpp"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <array>
#include <charconv>

#include "proxy/config.hpp"
#include "proxy/http_relay.hpp"
#include "proxy/metrics.hpp"
#include "proxy/resolver.hpp"
#include "proxy/tls_contexts.hpp"

namespace tokgate::proxy {

using namespace asio::experimental::awaitable_operators;

namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  std::ranges::transform(out, out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::optional<uint64_t> parse_length(std::string_view text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

void fail(OriginResponse& response, http::status status, std::string_view code,
          std::string reason) {
  response.failure = Failure{status, code, std::move(reason)};
  response.ready.notify();
}

}  // namespace

bool is_connection_specific(std::string_view name) {
  static constexpr std::array<std::string_view, 11> kNames = {"connection",
                                                              "keep-alive",
                                                              "proxy-connection",
                                                              "transfer-encoding",
                                                              "upgrade",
                                                              "te",
                                                              "host",
                                                              "http2-settings",
                                                              "trailer",
                                                              "proxy-authorization",
                                                              "proxy-authenticate"};
  return std::ranges::find(kNames, name) != kNames.end();
}

std::string last_chunk_with_trailers(const HeaderList& trailers) {
  std::string out = "0\r\n";
  for (const auto& field : trailers) {
    if (is_connection_specific(field.name) || field.name == "content-length" ||
        field.name.starts_with(':')) {
      continue;
    }
    out += field.name + ": " + field.value + "\r\n";
  }
  out += "\r\n";
  return out;
}

HeaderList end_to_end_fields(const http::fields& fields) {
  std::vector<std::string> named;  // fields the Connection header declares hop-by-hop
  for (auto it = fields.find(http::field::connection);
       it != fields.end() && it->name() == http::field::connection; ++it) {
    std::string_view value = it->value();
    while (!value.empty() && named.size() < 32) {
      auto comma = value.find(',');
      auto token = value.substr(0, comma);
      while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) {
        token.remove_prefix(1);
      }
      while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) {
        token.remove_suffix(1);
      }
      if (!token.empty()) named.push_back(lower(token));
      if (comma == std::string_view::npos) break;
      value.remove_prefix(comma + 1);
    }
  }
  HeaderList out;
  for (const auto& field : fields) {
    std::string name = lower(field.name_string());
    if (name == "content-length") continue;  // carried as OriginRequest/Response::content_length
    if (name == "te") {
      if (beast::iequals(field.value(), "trailers")) out.push_back({name, "trailers"});
      continue;
    }
    if (is_connection_specific(name) || std::ranges::find(named, name) != named.end()) continue;
    out.push_back({std::move(name), std::string(field.value())});
  }
  return out;
}

// --- the HTTP/1.1 pool ------------------------------------------------------------------------

OriginPool::OriginPool(asio::any_io_executor executor, const Config& config, TlsContexts& tls,
                       MetricsShard& metrics, std::string name, uint16_t port,
                       std::size_t max_connections)
    : executor_(std::move(executor)),
      config_(config),
      tls_(tls),
      metrics_(metrics),
      name_(std::move(name)),
      port_(port),
      max_connections_(std::max<std::size_t>(1, max_connections)),
      released_(executor_) {}

OriginPool::~OriginPool() {
  close_all();
}

void OriginPool::adopt(TlsStream& connection) {
  idle_.push_back(std::make_unique<OriginConnection>(connection));
  ++live_;
}

void OriginPool::close_all() {
  closed_ = true;
  error_code ignored;
  for (auto* connection : leased_) connection->stream->next_layer().cancel(ignored);
  for (auto& connection : idle_) connection->stream->next_layer().close(ignored);
  idle_.clear();
  released_.notify();
}

awaitable<std::expected<std::unique_ptr<OriginConnection>, Failure>> OriginPool::acquire(
    Deadline& deadline) {
  for (;;) {
    if (closed_ || deadline.expired()) {
      co_return std::unexpected(Failure{http::status::gateway_timeout, "upstream-timeout",
                                        "no connection to " + name_ + " became free in time"});
    }
    if (!idle_.empty()) {
      auto connection = std::move(idle_.back());
      idle_.pop_back();
      leased_.push_back(connection.get());
      co_return connection;
    }
    if (live_ < max_connections_) {
      ++live_;
      auto opened = co_await open(deadline);
      if (!opened) {
        --live_;
        released_.notify();
        co_return std::unexpected(opened.error());
      }
      ++opened_;
      co_return opened;
    }
    if (!co_await released_.wait()) {
      co_return std::unexpected(
          Failure{http::status::bad_gateway, "client-gone", "the request was cancelled"});
    }
  }
}

awaitable<std::expected<std::unique_ptr<OriginConnection>, Failure>> OriginPool::open(
    Deadline& deadline) {
  auto connection = std::make_unique<OriginConnection>(executor_, tls_.server_side());
  leased_.push_back(connection.get());  // from now on close_all() reaches it
  auto unlease = [&] { std::erase(leased_, connection.get()); };
  Resolver resolver(executor_, config_.resolve);
  deadline.set(config_.timeouts.connect, "connect");
  auto endpoints = co_await resolver.resolve(name_, port_);
  if (!endpoints) {
    unlease();
    co_return std::unexpected(endpoints.error());
  }
  auto connected = co_await connect_any(connection->stream->next_layer(), *endpoints, name_);
  if (!connected || closed_) {
    unlease();
    if (deadline.expired() || !connected) {
      co_return std::unexpected(deadline.expired()
                                    ? Failure{http::status::gateway_timeout, "upstream-timeout",
                                              "timed out connecting to " + name_}
                                    : connected.error());
    }
    co_return std::unexpected(
        Failure{http::status::bad_gateway, "client-gone", "the request was cancelled"});
  }
  error_code ignored;
  connection->stream->next_layer().set_option(tcp::no_delay(true), ignored);
  SSL* ssl = connection->stream->native_handle();
  static const std::vector<std::string> kOffer{"http/1.1"};
  prepare_server_side_tls(ssl, name_, kOffer);
  tls_.origin_sessions().offer(ssl, OriginSessionCache::key(name_, port_));
  deadline.set(config_.timeouts.tls_handshake, "server-tls-handshake");
  auto [ec] =
      co_await connection->stream->async_handshake(asio::ssl::stream_base::client, use_nothrow);
  if (ec) {
    unlease();
    co_return std::unexpected(deadline.expired()
                                  ? Failure{http::status::gateway_timeout, "upstream-timeout",
                                            "timed out in the TLS handshake with " + name_}
                                  : Failure{http::status::bad_gateway, "upstream-tls",
                                            name_ + ": " + describe_server_tls_failure(ssl, ec)});
  }
  metrics_.origin_handshake(SSL_session_reused(ssl) == 1);
  co_return connection;
}

void OriginPool::give_back(std::unique_ptr<OriginConnection> connection, bool reusable) {
  std::erase(leased_, connection.get());
  if (reusable && !closed_) {
    if (connection->buffer.size() == 0) connection->buffer.shrink_to_fit();  // idle: no room held
    idle_.push_back(std::move(connection));
  } else {
    error_code ignored;
    connection->stream->next_layer().close(ignored);
    --live_;
  }
  released_.notify();
}

// --- exchanges ----------------------------------------------------------------------------------

awaitable<void> forward_over_h1(OriginConnection& connection, OriginRequest& request,
                                OriginResponse& response, Deadline& deadline, const Config& config,
                                std::span<char> chunk, bool& reusable) {
  reusable = false;
  TlsStream& stream = *connection.stream;
  http::request<http::buffer_body> head;
  head.method_string(request.method);
  head.target(request.path);
  head.version(11);
  head.set(http::field::host, request.authority);
  for (const auto& field : request.fields) head.insert(field.name, field.value);
  if (request.content_length) {
    head.content_length(*request.content_length);
  } else if (request.has_body) {
    head.chunked(true);
  }
  head.body().data = nullptr;
  head.body().size = 0;
  head.body().more = request.has_body;
  http::request_serializer<http::buffer_body> serializer{head};
  deadline.set(config.timeouts.io_stall, "request-send");
  {
    auto [ec, n] = co_await http::async_write_header(stream, serializer, use_nothrow);
    if (ec) {
      fail(response, http::status::bad_gateway, "upstream-protocol",
           "cannot send the request to the origin: " + ec.message());
      co_return;
    }
  }

  // Bytes are copied out of the pipe before the write: the producer may append (and the pipe
  // move its storage) while the write is in flight.
  std::vector<uint8_t> upload(request.has_body ? chunk.size() : 0);
  auto send_body = [&]() -> awaitable<bool> {
    auto& body = head.body();
    while (request.has_body) {
      const bool readable = co_await request.body->wait_data();
      if (!readable) co_return false;
      if (request.body->drained()) break;
      const std::size_t n = request.body->read(upload);
      body.data = upload.data();
      body.size = n;
      body.more = true;
      deadline.set(config.timeouts.io_stall, "request-body");
      auto [ec, written] = co_await http::async_write(stream, serializer, use_nothrow);
      if (ec && ec != http::error::need_buffer) co_return false;
    }
    deadline.set(config.timeouts.response_header, "response-header");
    if (request.has_body && head.chunked() && !request.body->trailers().empty()) {
      // The serializer cannot send trailers: the last chunk is written here instead.
      const std::string last_chunk = last_chunk_with_trailers(request.body->trailers());
      auto [ec, n] = co_await asio::async_write(stream, asio::buffer(last_chunk), use_nothrow);
      co_return !ec;
    }
    body.data = nullptr;
    body.size = 0;
    body.more = false;
    auto [ec, n] = co_await http::async_write(stream, serializer, use_nothrow);
    co_return !ec;
  };

  std::optional<ResponseParser> parser;
  auto read_head = [&]() -> awaitable<std::optional<Failure>> {
    for (int interim = 0; interim < 8; ++interim) {
      parser.emplace();
      parser->header_limit(static_cast<std::uint32_t>(config.limits.response_header_bytes));
      parser->body_limit(boost::none);
      if (request.is_head) parser->skip(true);
      auto [ec, n] =
          co_await http::async_read_header(stream, connection.buffer, *parser, use_nothrow);
      if (ec) {
        if (deadline.expired()) {
          co_return Failure{http::status::gateway_timeout, "upstream-timeout",
                            "timed out waiting for the response from the origin"};
        }
        co_return Failure{http::status::bad_gateway, "upstream-protocol",
                          "no valid response from the origin: " + ec.message()};
      }
      if (parser->get().result_int() >= 200 || parser->get().result_int() == 101) {
        co_return std::nullopt;
      }
    }
    co_return Failure{http::status::bad_gateway, "upstream-protocol", "too many interim responses"};
  };

  bool sent = true;
  std::optional<Failure> head_failure;
  if (request.has_body) {
    std::tie(sent, head_failure) = co_await (send_body() && read_head());
  } else {
    sent = co_await send_body();
    if (sent) head_failure = co_await read_head();
  }
  if (head_failure || !parser) {
    if (!head_failure) {
      head_failure = Failure{http::status::bad_gateway, "upstream-protocol",
                             "the origin stopped reading the request"};
    }
    response.failure = std::move(head_failure);
    response.ready.notify();
    co_return;
  }
  auto& message = parser->get();
  response.status = message.result_int();
  response.fields = end_to_end_fields(message);
  if (auto length = parser->content_length()) response.content_length = *length;
  std::size_t head_field_count = 0;
  for (auto it = message.begin(); it != message.end(); ++it) ++head_field_count;
  response.head_ready = true;
  response.head_at = std::chrono::steady_clock::now();
  response.ready.notify();

  auto& body = message.body();
  uint64_t received = 0;
  if (!parser->is_done()) reserve_for_body(connection.buffer, *parser);
  while (!parser->is_done()) {
    deadline.set(config.timeouts.io_stall, "response-body");
    if (!co_await response.body->wait_space()) co_return;
    body.data = chunk.data();
    body.size = chunk.size();
    // Forwarded as soon as the origin pauses (see relay_body); read on while more is waiting.
    error_code read_error;
    do {
      auto [ec, n] =
          co_await http::async_read_some(stream, connection.buffer, *parser, use_nothrow);
      if (ec == http::error::need_buffer) break;
      if (ec) {
        read_error = ec;
        break;
      }
    } while (!parser->is_done() && body.size > 0 &&
             (connection.buffer.size() > 0 || input_waiting(stream)));
    const std::size_t got = chunk.size() - body.size;
    received += got;
    response.body->push({reinterpret_cast<const uint8_t*>(chunk.data()), got});
    if (read_error) {
      response.body_failure =
          Failure{http::status::bad_gateway, "server-body-failed",
                  deadline.expired() ? std::string("stalled") : read_error.message()};
      response.body->abort();
      co_return;
    }
  }
  // Chunked trailers land after the head's fields.
  HeaderList trailers;
  std::size_t index = 0;
  for (const auto& field : message) {
    if (index++ < head_field_count) continue;
    std::string name = lower(field.name_string());
    if (!is_connection_specific(name) && name != "content-length") {
      trailers.push_back({std::move(name), std::string(field.value())});
    }
  }
  response.body->finish(std::move(trailers));
  reusable = message.keep_alive() && !parser->need_eof() && sent;
}

namespace {
// RFC 6455 section 4.2.2: base64(SHA-1(key + GUID)).
std::string websocket_accept_for(std::string_view key) {
  std::string input(key);
  input += "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest);
  unsigned char encoded[4 * ((SHA_DIGEST_LENGTH + 2) / 3) + 1];
  const int n = EVP_EncodeBlock(encoded, digest, SHA_DIGEST_LENGTH);
  return std::string(reinterpret_cast<const char*>(encoded), static_cast<std::size_t>(n));
}

std::string new_websocket_key() {
  unsigned char nonce[16];
  RAND_bytes(nonce, sizeof nonce);
  unsigned char encoded[25];
  const int n = EVP_EncodeBlock(encoded, nonce, sizeof nonce);
  return std::string(reinterpret_cast<const char*>(encoded), static_cast<std::size_t>(n));
}
}  // namespace

awaitable<void> forward_websocket_over_h1(OriginConnection& connection, OriginRequest& request,
                                          OriginResponse& response, Deadline& deadline,
                                          const Config& config, std::span<char> chunk) {
  TlsStream& stream = *connection.stream;
  http::request<http::empty_body> head{http::verb::get, request.path, 11};
  head.set(http::field::host, request.authority);
  for (const auto& field : request.fields) {
    if (is_connection_specific(field.name) || field.name == "sec-websocket-key") continue;
    head.insert(field.name, field.value);
  }
  head.set(http::field::connection, "Upgrade");
  head.set(http::field::upgrade, "websocket");
  if (head[http::field::sec_websocket_version].empty()) {
    head.set(http::field::sec_websocket_version, "13");
  }
  const std::string key = new_websocket_key();
  head.set(http::field::sec_websocket_key, key);
  deadline.set(config.timeouts.io_stall, "request-send");
  {
    auto [ec, n] = co_await http::async_write(stream, head, use_nothrow);
    if (ec) {
      fail(response, http::status::bad_gateway, "upstream-protocol",
           "cannot send the WebSocket handshake to the origin: " + ec.message());
      co_return;
    }
  }
  deadline.set(config.timeouts.response_header, "response-header");
  http::response_parser<http::empty_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(config.limits.response_header_bytes));
  {
    auto [ec, n] = co_await http::async_read_header(stream, connection.buffer, parser, use_nothrow);
    if (ec) {
      fail(response, deadline.expired() ? http::status::gateway_timeout : http::status::bad_gateway,
           deadline.expired() ? "upstream-timeout" : "upstream-protocol",
           "no valid answer to the WebSocket handshake: " + ec.message());
      co_return;
    }
  }
  auto& answer = parser.get();
  if (answer.result_int() != 101) {
    // The origin declined (404, 426, ...): the client gets that status, without the body.
    response.status = answer.result_int();
    response.fields = end_to_end_fields(answer);
    response.content_length = 0;
    response.body->finish();
    response.head_ready = true;
    response.head_at = std::chrono::steady_clock::now();
    response.ready.notify();
    co_return;
  }
  if (answer[http::field::sec_websocket_accept] != websocket_accept_for(key)) {
    fail(response, http::status::bad_gateway, "upstream-protocol",
         "the origin's Sec-WebSocket-Accept does not match the handshake");
    co_return;
  }
  response.status = 200;
  for (auto name : {http::field::sec_websocket_protocol, http::field::sec_websocket_extensions}) {
    if (auto value = answer[name]; !value.empty()) {
      response.fields.push_back({lower(http::to_string(name)), std::string(value)});
    }
  }
  response.head_ready = true;
  response.head_at = std::chrono::steady_clock::now();
  response.ready.notify();

  // Frames the origin sent right behind its 101.
  if (connection.buffer.size() > 0) {
    auto pending = connection.buffer.data();
    response.body->push({static_cast<const uint8_t*>(pending.data()), pending.size()});
    connection.buffer.consume(connection.buffer.size());
  }
  std::vector<uint8_t> upload(chunk.size());
  auto up = [&]() -> awaitable<void> {
    for (;;) {
      const bool readable = co_await request.body->wait_data();
      if (!readable || request.body->drained()) break;
      const std::size_t n = request.body->read(upload);
      deadline.set(config.timeouts.idle, "websocket-idle");
      auto [ec, written] =
          co_await asio::async_write(stream, asio::buffer(upload.data(), n), use_nothrow);
      if (ec) break;
    }
    // The client is done; the origin ends its side after the close handshake (RFC 6455 7.1.1).
  };
  auto down = [&]() -> awaitable<void> {
    for (;;) {
      const bool writable = co_await response.body->wait_space();
      if (!writable) break;
      auto [ec, n] = co_await stream.async_read_some(asio::buffer(chunk), use_nothrow);
      if (ec) break;
      deadline.set(config.timeouts.idle, "websocket-idle");
      response.body->push({reinterpret_cast<const uint8_t*>(chunk.data()), n});
    }
    response.body->finish();
    if (!request.body->finished()) request.body->abort();
  };
  co_await (up() && down());
}

awaitable<void> forward_over_h2(H2Connection& origin, OriginRequest& request,
                                OriginResponse& response, Deadline& deadline,
                                const Config& config) {
  HeaderList head;
  head.reserve(request.fields.size() + 5);
  head.push_back({":method", request.method});
  if (!request.protocol.empty()) {
    // The origin says whether it takes extended CONNECT in its SETTINGS, which may still be on
    // their way when the client's stream arrives.
    deadline.set(config.timeouts.response_header, "response-header");
    const bool settled = co_await origin.wait_remote_settings();
    if (!settled || !origin.remote_allows_extended_connect()) {
      fail(response, http::status::bad_gateway, "upstream-protocol",
           "the origin does not accept WebSockets over HTTP/2 (RFC 8441)");
      co_return;
    }
    head.push_back({":protocol", request.protocol});
  }
  head.push_back({":scheme", "https"});
  head.push_back({":authority", request.authority});
  head.push_back({":path", request.path});
  for (const auto& field : request.fields) {
    if (field.name == "te" ? field.value == "trailers" : !is_connection_specific(field.name)) {
      head.push_back(field);
    }
  }
  if (request.content_length) {
    head.push_back({"content-length", std::to_string(*request.content_length)});
  }
  auto submitted = origin.submit_request(head, request.has_body ? request.body : nullptr);
  if (!submitted) {
    fail(response, http::status::bad_gateway, "upstream-protocol",
         "cannot send the request to the origin: " + submitted.error());
    co_return;
  }
  response.h2_stream = *submitted;
  H2Stream& stream = *response.h2_stream;
  stream.body_in.tap = request.response_tap;
  response.cancel = [&origin, &stream] { origin.reset_stream(stream, kH2Cancel); };
  deadline.set(config.timeouts.response_header, "response-header");
  while (!stream.head_complete && !stream.closed) {
    if (!co_await stream.event.wait()) break;
  }
  if (!stream.head_complete) {
    if (deadline.expired()) {
      fail(response, http::status::gateway_timeout, "upstream-timeout",
           "timed out waiting for the response from the origin");
    } else {
      fail(response, http::status::bad_gateway, "upstream-protocol",
           stream.error_code != 0 ? "the origin reset the stream (HTTP/2 error " +
                                        std::to_string(stream.error_code) + ")"
                                  : "the origin's connection ended: " + origin.end_reason());
    }
    origin.reset_stream(stream, kH2Cancel);
    co_return;
  }
  for (const auto& field : stream.head) {
    if (field.name == ":status") {
      response.status = static_cast<unsigned>(parse_length(field.value).value_or(0));
    } else if (field.name == "content-length") {
      response.content_length = parse_length(field.value);
    } else if (!field.name.starts_with(':') && !is_connection_specific(field.name)) {
      response.fields.push_back(field);
    }
  }
  if (response.status < 200 || response.status > 999) {
    fail(response, http::status::bad_gateway, "upstream-protocol",
         "the origin sent an invalid status");
    origin.reset_stream(stream, kH2ProtocolError);
    co_return;
  }
  response.body = &stream.body_in;
  response.head_ready = true;
  response.head_at = std::chrono::steady_clock::now();
  response.ready.notify();
  // The body arrives through nghttp2's callbacks; each DATA frame wakes us to push the stall
  // deadline forward.
  while (!stream.closed) {
    deadline.set(config.timeouts.io_stall, "response-body");
    if (!co_await stream.event.wait()) break;
  }
}

}  // namespace tokgate::proxy
