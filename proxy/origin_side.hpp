// The origin side of an intercepted connection when its requests are multiplexed or translated:
// one request at a time in a protocol-neutral form, sent over the origin's HTTP/2 connection
// (many streams on one connection) or over a bounded pool of HTTP/1.1 connections to it.
#pragma once

#include <openssl/ssl.h>

#include <boost/beast/core/flat_buffer.hpp>

#include <chrono>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "proxy/asio_types.hpp"
#include "proxy/body_pipe.hpp"
#include "proxy/deadline.hpp"
#include "proxy/h2_connection.hpp"

namespace tokgate::proxy {

struct Config;
class TlsContexts;
class MetricsShard;

// A request as the origin should get it, whatever protocol the client spoke.
struct OriginRequest {
  std::string method;
  std::string authority;  // host[:port], the client's :authority or Host
  std::string path;       // origin-form
  HeaderList fields;      // end-to-end fields, lower-case names
  std::optional<uint64_t> content_length;
  bool has_body = false;
  bool is_head = false;
  BodyPipe* body = nullptr;  // null when has_body is false
  std::string protocol;      // RFC 8441 :protocol of an extended CONNECT ("websocket")
  std::function<void(std::span<const uint8_t>)> response_tap;  // sees the response body
};

// The origin's answer: the head once `ready` fires (or a failure), the body through `body`.
struct OriginResponse {
  OriginResponse(const asio::any_io_executor& executor, std::size_t body_capacity)
      : own_body(executor, body_capacity), ready(executor) {}

  unsigned status = 0;
  HeaderList fields;  // end-to-end fields, lower-case names
  std::optional<uint64_t> content_length;
  bool head_ready = false;
  std::chrono::steady_clock::time_point head_at{};  // when head_ready was set (first byte)
  std::optional<Failure> failure;                   // no response head will come
  std::optional<Failure> body_failure;              // the body stopped part-way (and why)
  BodyPipe* body = &own_body;
  BodyPipe own_body;
  Signal ready;
  std::shared_ptr<H2Stream> h2_stream;  // keeps an HTTP/2 origin stream alive
  std::function<void()> cancel;         // stop the origin exchange (client gone, timeout)
};

// Connection-specific fields (RFC 9113 8.2.2 / RFC 9110 7.6.1) are never relayed across a
// protocol boundary; this says whether `name` (lower case) is one. "te: trailers" is handled by
// the caller.
bool is_connection_specific(std::string_view name);

// The fields of a Beast head as an end-to-end HeaderList (lower-case names, hop-by-hop and
// connection-specific removed, Host dropped: it becomes :authority).
HeaderList end_to_end_fields(const http::fields& fields);

// The last chunk of a chunked HTTP/1.1 body carrying trailers (Beast's serializer cannot);
// fields that may not appear in a trailer are left out.
std::string last_chunk_with_trailers(const HeaderList& trailers);

// One TLS connection to the origin speaking HTTP/1.1.
struct OriginConnection {
  explicit OriginConnection(TlsStream& adopted) : stream(&adopted) {}
  OriginConnection(asio::any_io_executor executor, asio::ssl::context& context)
      : owned(std::in_place, executor, context), stream(&*owned) {}

  std::optional<TlsStream> owned;
  TlsStream* stream;
  beast::flat_buffer buffer;
};

// Up to `max_connections` HTTP/1.1 connections to one origin for one client connection, kept
// alive and reused; a request waits when all are busy.
class OriginPool {
 public:
  OriginPool(asio::any_io_executor executor, const Config& config, TlsContexts& tls,
             MetricsShard& metrics, std::string name, uint16_t port, std::size_t max_connections);
  ~OriginPool();
  OriginPool(const OriginPool&) = delete;
  OriginPool& operator=(const OriginPool&) = delete;

  // The connection the interception already opened (not owned: the caller keeps it alive).
  void adopt(TlsStream& connection);
  awaitable<std::expected<std::unique_ptr<OriginConnection>, Failure>> acquire(Deadline& deadline);
  void give_back(std::unique_ptr<OriginConnection> connection, bool reusable);
  // Cancels every connection's I/O, idle or in use; acquire() fails from now on.
  void close_all();
  // Wakes requests waiting for a free connection (their deadline passed: they give up).
  void wake_waiters() { released_.notify(); }
  std::size_t opened() const { return opened_; }

 private:
  awaitable<std::expected<std::unique_ptr<OriginConnection>, Failure>> open(Deadline& deadline);

  asio::any_io_executor executor_;
  const Config& config_;
  TlsContexts& tls_;
  MetricsShard& metrics_;
  std::string name_;
  uint16_t port_;
  std::size_t max_connections_;
  std::size_t live_ = 0;    // idle + leased + opening
  std::size_t opened_ = 0;  // new connections made (not counting the adopted one)
  std::vector<std::unique_ptr<OriginConnection>> idle_;
  std::vector<OriginConnection*> leased_;
  Signal released_;
  bool closed_ = false;
};

// One exchange over an HTTP/1.1 origin connection: the request (body from request.body) goes
// out, the response head is published through response.ready and its body is pushed into
// response.body. `reusable` says whether the connection may serve another request.
awaitable<void> forward_over_h1(OriginConnection& connection, OriginRequest& request,
                                OriginResponse& response, Deadline& deadline, const Config& config,
                                std::span<char> chunk, bool& reusable);

// An RFC 8441 WebSocket (extended CONNECT from an HTTP/2 client) carried to an HTTP/1.1 origin
// as an Upgrade: a 101 becomes the 200 the client waits for, then bytes flow both ways until
// either side ends. The connection is not reused.
awaitable<void> forward_websocket_over_h1(OriginConnection& connection, OriginRequest& request,
                                          OriginResponse& response, Deadline& deadline,
                                          const Config& config, std::span<char> chunk);

// One exchange over the origin's HTTP/2 connection (an extended CONNECT when request.protocol
// is set).
awaitable<void> forward_over_h2(H2Connection& origin, OriginRequest& request,
                                OriginResponse& response, Deadline& deadline, const Config& config);

}  // namespace tokgate::proxy
