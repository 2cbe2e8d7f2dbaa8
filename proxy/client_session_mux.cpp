// The intercepted connection when HTTP/2 is on either leg: every client stream (or, for an
// HTTP/1.1 client of an HTTP/2 origin, every request) becomes one exchange through the request
// policy, then over the origin's HTTP/2 connection or the pool of HTTP/1.1 connections to it.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/beast/http.hpp>

#include <charconv>
#include <unordered_map>

#include "proxy/client_session.hpp"
#include "proxy/h2_connection.hpp"
#include "proxy/har.hpp"
#include "proxy/log.hpp"
#include "proxy/origin_side.hpp"
#include "proxy/runtime.hpp"
#include "proxy/websocket_relay.hpp"
#include "proxy/worker.hpp"
#include "web-ui/block_page.hpp"

namespace tokgate::proxy {

using namespace asio::experimental::awaitable_operators;

namespace {

constexpr std::size_t kExchangeChunk = 16 * 1024;
// A request or response body between the legs holds at most this much (plus one HTTP/2 window
// where the producer is an HTTP/2 peer: its window is what bounds it).
constexpr std::size_t kPipeCapacity = 256 * 1024;
constexpr std::size_t kOriginConnectionsPerClient = 6;

H2Connection::Settings h2_settings(const Config& config, bool toward_client,
                                   MetricsShard* metrics = nullptr) {
  auto clamp32 = [](std::size_t value) {
    return static_cast<uint32_t>(std::min<std::size_t>(value, UINT32_MAX));
  };
  H2Connection::Settings settings;
  settings.max_header_list_bytes = clamp32(toward_client ? config.limits.request_header_bytes
                                                         : config.limits.response_header_bytes);
  settings.idle = config.timeouts.idle;
  settings.enable_connect_protocol = toward_client;  // RFC 8441 WebSockets
  if (toward_client) {
    // The client's limits ([limits] in the config); the origin side keeps the defaults.
    const Limits& limits = config.limits;
    settings.max_concurrent_streams = clamp32(limits.h2_max_concurrent_streams);
    settings.max_header_fields = clamp32(limits.request_header_fields);
    settings.max_continuations = clamp32(limits.h2_max_continuations);
    settings.max_pending_acks = clamp32(limits.h2_max_pending_acks);
    settings.reset_burst = clamp32(limits.h2_reset_burst);
    settings.reset_rate = clamp32(limits.h2_reset_rate);
    settings.metrics = metrics;
  }
  return settings;
}

std::optional<uint64_t> parse_length(std::string_view text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

}  // namespace

struct ClientSession::MuxState {
  explicit MuxState(const asio::any_io_executor& executor) : handlers_done(executor) {}

  std::string name;
  uint16_t port = 0;
  const std::optional<Failure>* server_failure = nullptr;
  H2Connection* client = nullptr;
  H2Connection* origin_h2 = nullptr;
  std::optional<OriginPool> pool;
  std::unordered_map<int32_t, std::shared_ptr<H2Stream>> streams;  // being handled
  std::size_t handlers = 0;
  Signal handlers_done;
  std::string_view server_proto;
};

awaitable<void> ClientSession::serve_multiplexed(TlsStream& client, TlsStream& server,
                                                 bool client_h2, bool server_h2,
                                                 const std::optional<Failure>& server_failure,
                                                 const std::string& name, uint16_t port) {
  auto executor = client.get_executor();
  MuxState mux(executor);
  mux.name = name;
  mux.port = port;
  mux.server_failure = &server_failure;
  mux.server_proto = server_h2 ? "h2" : "http/1.1";
  // Exchanges keep their own deadlines; the connection's own only guards the goodbye.
  deadline_.clear();

  std::optional<H2Connection> origin_h2;
  if (server_h2) {
    origin_h2.emplace(server, H2Connection::Role::client, h2_settings(config_, false));
    mux.origin_h2 = &*origin_h2;
  } else if (!server_failure) {
    mux.pool.emplace(executor, config_, worker_.tls(), worker_.metrics(), name, port,
                     kOriginConnectionsPerClient);
    mux.pool->adopt(server);
  }

  if (!client_h2) {
    // An HTTP/1.1 client of an HTTP/2 origin: its requests, one after another, as streams.
    auto origin_part = [&]() -> awaitable<void> { co_await origin_h2->run(); };
    co_await (serve_h1_via_h2(mux, client) || origin_part());
    origin_h2->close();
    co_return;
  }

  H2Connection::RequestHandler on_request = [this, &mux,
                                             executor](const std::shared_ptr<H2Stream>& stream) {
    const int32_t id = stream->id;
    mux.streams.emplace(id, stream);
    ++mux.handlers;
    asio::co_spawn(executor, serve_h2_stream(mux, *stream), [&mux, id](std::exception_ptr error) {
      if (error) log::error("stream-failed").kv("stream", id);
      mux.streams.erase(id);
      if (--mux.handlers == 0) mux.handlers_done.notify();
    });
  };
  H2Connection client_connection(client, H2Connection::Role::server,
                                 h2_settings(config_, true, &worker_.metrics()), on_request);
  mux.client = &client_connection;
  client_h2_ = &client_connection;
  if (closing_ || worker_.draining()) client_connection.shutdown_gracefully();

  auto client_part = [&]() -> awaitable<void> {
    co_await client_connection.run();
    if (origin_h2) {
      // The origin learns at once that every stream it is still sending is unwanted.
      origin_h2->close();
      error_code ignored;
      server.next_layer().shutdown(tcp::socket::shutdown_both, ignored);
    }
  };
  auto origin_part = [&]() -> awaitable<void> {
    if (!origin_h2) co_return;
    co_await origin_h2->run();
    // The origin went away: the client finishes what it has and reconnects for more.
    client_connection.shutdown_gracefully();
  };
  co_await (client_part() && origin_part());
  client_h2_ = nullptr;
  if (mux.pool) mux.pool->close_all();
  client_connection.close();
  while (mux.handlers > 0) {
    if (!co_await mux.handlers_done.wait()) break;
  }
  log::info("h2-closed")
      .kv("conn", id_)
      .kv("host", name)
      .kv("reason", client_connection.end_reason())
      .kv("origin_connections", mux.pool ? mux.pool->opened() + 1 : 1);
}

awaitable<void> ClientSession::answer_h2(H2Stream& stream, H2Connection& client, unsigned status,
                                         const HeaderList& fields, std::string body) {
  BodyPipe pipe(client_socket_.get_executor(), body.size() + 1);
  pipe.push({reinterpret_cast<const uint8_t*>(body.data()), body.size()});
  pipe.finish();
  HeaderList head;
  head.push_back({":status", std::to_string(status)});
  for (const auto& field : fields) head.push_back(field);
  head.push_back({"content-length", std::to_string(body.size())});
  if (!client.submit_response(stream, head, &pipe)) co_return;
  // The pipe is the stream's DATA source: it must live until the stream is done.
  while (!stream.closed) {
    if (!co_await stream.event.wait()) break;
  }
  client.release(stream);
}

// The proxy's own error for one stream: logged, and answered as text that says why.
awaitable<void> ClientSession::answer_h2_failure(H2Stream& stream, H2Connection& client,
                                                 const Failure& failure) {
  log::warn("request-failed")
      .kv("conn", id_)
      .kv("stream", stream.id)
      .kv("status", static_cast<unsigned>(failure.status))
      .kv("error", failure.code)
      .kv("reason", failure.reason);
  HeaderList fields{{"content-type", "text/plain; charset=utf-8"},
                    {"x-tokgate-error", std::string(failure.code)}};
  std::string body = failure.reason + "\n";
  co_await answer_h2(stream, client, static_cast<unsigned>(failure.status), fields,
                     std::move(body));
}

awaitable<void> ClientSession::serve_h2_stream(MuxState& mux, H2Stream& stream) {
  H2Connection& client = *mux.client;
  auto executor = client_socket_.get_executor();
  std::string_view method = stream.header(":method");
  std::string_view authority = stream.header(":authority");
  if (authority.empty()) authority = stream.header("host");
  std::string_view path = stream.header(":path");
  std::vector<policy::HeaderView> views;
  for (const auto& field : stream.head) {
    if (!field.name.starts_with(':')) views.push_back({field.name, field.value});
  }
  RequestJudgement judgement = judge_request(method, authority, path, stream.header("user-agent"),
                                             views, mux.name, mux.port);
  const auto category = policy::to_string(judgement.classification.category);
  const auto stream_started = std::chrono::steady_clock::now();
  FlowRecord record = request_record(judgement, method, path, stream.header("user-agent"),
                                     std::to_string(id_) + ".s" + std::to_string(stream.id));
  // Every way out of this function records the stream exactly once.
  bool recorded = false;
  auto record_done = [&](std::optional<unsigned> status, uint64_t up, uint64_t down,
                         std::string_view error = {}, std::string_view reason = {}) {
    if (recorded) return;
    recorded = true;
    record.status = status;
    record.bytes_up = up;
    record.bytes_down = down;
    record.total_ms = ms_since(stream_started);
    record.error = std::string(error);
    record.error_reason = std::string(reason.substr(0, 512));
    emit(std::move(record));
  };
  auto describe = [&](log::Line& line, unsigned status, std::string_view action) {
    line.kv("conn", id_)
        .kv("stream", stream.id)
        .kv("method", method)
        .kv("host", judgement.host)
        .kv("path", judgement.path)
        .kv("status", status)
        .kv("category", category)
        .kv("action", action)
        .kv("rule", judgement.decision.rule)
        .kv("client_proto", "h2")
        .kv("server_proto", mux.server_proto);
  };

  if (stream.closed) {
    // Reset by the client before it could be served (a rapid-reset flood looks like this):
    // recorded, never sent on.
    auto line = log::info("request");
    describe(line, 0, policy::to_string(judgement.decision.action));
    line.kv("error", "client-reset");
    record_done(std::nullopt, 0, 0, "client-reset", "reset by the client before it was served");
    co_return;
  }
  // The request head's limits, as for HTTP/1.1: 431 for its size or field count, 414 for the
  // request line's part (the :path).
  std::optional<Failure> head_failure;
  if (stream.head_rejected) {
    count_limit(*stream.head_rejected);
    head_failure =
        *stream.head_rejected == LimitHit::request_header_size
            ? Failure{http::status::request_header_fields_too_large, "request-header-too-large",
                      "request header list exceeds the limit of " +
                          std::to_string(config_.limits.request_header_bytes) + " bytes"}
            : Failure{http::status::request_header_fields_too_large, "too-many-header-fields",
                      "more than " + std::to_string(config_.limits.request_header_fields) +
                          " header fields"};
  } else if (method.size() + path.size() + 10 > config_.limits.request_line_bytes) {
    count_limit(LimitHit::request_line_size);
    head_failure = Failure{http::status::uri_too_long, "request-line-too-long",
                           ":path of " + std::to_string(path.size()) +
                               " bytes exceeds the request line limit of " +
                               std::to_string(config_.limits.request_line_bytes)};
  }
  if (head_failure) {
    const Failure failure = *head_failure;
    {
      auto line = log::info("request");
      describe(line, static_cast<unsigned>(failure.status),
               policy::to_string(judgement.decision.action));
      line.kv("error", failure.code);
    }
    record_done(static_cast<unsigned>(failure.status), 0, failure.reason.size() + 1, failure.code,
                failure.reason);
    co_await answer_h2_failure(stream, client, failure);
    co_return;
  }
  if (judgement.decision.action == policy::Action::block) {
    const auto& policy = *judgement.snapshot->policy;
    webui::BlockInfo info{policy.organisation(),
                          judgement.decision.message,
                          category,
                          judgement.decision.rule,
                          judgement.host,
                          policy.name()};
    auto page = webui::render_block_page(info, stream.header("accept"));
    HeaderList fields{{"content-type", page.content_type},
                      {"cache-control", "no-store"},
                      {"x-tokgate-category", std::string(category)}};
    if (!judgement.decision.rule.empty()) {
      fields.push_back({"x-tokgate-rule", std::string(judgement.decision.rule)});
    }
    {
      auto line = log::info("request");
      describe(line, 451, "block");
    }
    record_done(451, 0, page.body.size());
    co_await answer_h2(stream, client, 451, fields, std::move(page.body));
    co_return;
  }
  if (judgement.decision.action == policy::Action::refuse) {
    {
      auto line = log::info("request");
      describe(line, 0, "refuse");
    }
    record_done(std::nullopt, 0, 0);
    client.reset_stream(stream, kH2RefusedStream);
    co_return;
  }

  auto fail_with = [&](const Failure& failure) -> awaitable<void> {
    record_done(static_cast<unsigned>(failure.status), 0, failure.reason.size() + 1, failure.code,
                failure.reason);
    co_await answer_h2_failure(stream, client, failure);
  };
  if (*mux.server_failure) {
    const Failure failure = **mux.server_failure;
    co_await fail_with(failure);
    co_return;
  }
  const bool websocket = method == "CONNECT" && stream.header(":protocol") == "websocket";
  if (method == "CONNECT" && !websocket) {
    const Failure failure{http::status::method_not_allowed, "method-not-allowed",
                          "CONNECT inside an intercepted connection is not relayed"};
    co_await fail_with(failure);
    co_return;
  }
  // A stream for another origin (a browser coalescing connections) is sent back to open its
  // own: RFC 9110 section 15.5.20.
  if (judgement.host != mux.name) {
    const Failure failure{http::status::misdirected_request, "misdirected",
                          "this connection serves " + mux.name + " only"};
    co_await fail_with(failure);
    co_return;
  }

  OriginRequest request;
  request.method = method;
  request.authority = authority;
  request.path = path;
  for (const auto& field : stream.head) {
    if (field.name.starts_with(':')) continue;
    if (field.name == "content-length") {
      request.content_length = parse_length(field.value);
      continue;
    }
    request.fields.push_back(field);
  }
  request.has_body = !stream.body_in.drained();
  request.is_head = method == "HEAD";
  request.body = request.has_body ? &stream.body_in : nullptr;
  OriginResponse response(executor, kPipeCapacity);
  // A WebSocket (RFC 8441): its frames are counted as they pass, each way.
  const uint64_t max_frame = config_.limits.websocket_frame_bytes;
  WebSocketFrameTracker frames_up(true, max_frame);
  WebSocketFrameTracker frames_down(false, max_frame);
  if (websocket) {
    request.protocol = "websocket";
    stream.body_in.tap = [&](std::span<const uint8_t> bytes) {
      if (!frames_up.feed(bytes)) stream.body_in.abort();
    };
    request.response_tap = [&](std::span<const uint8_t> bytes) {
      if (!frames_down.feed(bytes)) response.body->abort();
    };
    response.own_body.tap = request.response_tap;
  }
  // Action capture: the exchange as the client saw it, for a HAR file.
  std::shared_ptr<HarExchange> har;
  BodyCapture request_capture;
  BodyCapture response_capture;
  if (judgement.decision.action == policy::Action::capture && !websocket) {
    har = std::make_shared<HarExchange>();
    har->started = record.started;
    har->method = std::string(method);
    har->url = "https://" + std::string(authority) + std::string(path);
    har->http_version = "h2";
    for (const auto& field : stream.head) {
      if (!field.name.starts_with(':')) har->request_headers.push_back({field.name, field.value});
    }
    har->server_ip = facts_.upstream_ip;
    har->connection = std::to_string(id_);
    request_capture.limit = config_.capture_body_bytes;
    response_capture.limit = config_.capture_body_bytes;
    auto already = stream.body_in.peek();  // what arrived before this handler ran
    request_capture.add(reinterpret_cast<const char*>(already.data()), already.size());
    stream.body_in.tap = [&](std::span<const uint8_t> bytes) {
      request_capture.add(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    };
    request.response_tap = [&](std::span<const uint8_t> bytes) {
      response_capture.add(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    };
    response.own_body.tap = request.response_tap;
  }
  Deadline deadline(executor);
  // A relay chunk only for an HTTP/1.1 origin (an HTTP/2 origin's body comes through pipes),
  // left uninitialised: it was a 16 KiB memset per stream.
  std::unique_ptr<char[]> chunk_storage;
  std::span<char> chunk;
  if (mux.origin_h2 == nullptr) {
    chunk_storage = std::make_unique_for_overwrite<char[]>(kExchangeChunk);
    chunk = {chunk_storage.get(), kExchangeChunk};
  }
  std::function<void()> on_expire = [&] {
    if (auto limit = limit_of_phase(deadline.phase())) count_limit(*limit);
    if (response.cancel) response.cancel();
    stream.body_in.abort();
    if (response.head_ready) response.body->abort();
    response.ready.notify();
    if (mux.pool) mux.pool->wake_waiters();
  };
  const auto started = std::chrono::steady_clock::now();
  auto exchange = [&]() -> awaitable<void> {
    co_await (exchange_with_origin(mux, request, response, deadline, chunk) &&
              respond_h2(mux, stream, request, response));
  };
  co_await (exchange() || deadline.watch(on_expire));
  // The taps point into this frame: nothing may call them once it is gone.
  stream.body_in.tap = nullptr;
  if (response.body != nullptr) response.body->tap = nullptr;
  client.release(stream);
  if (response.h2_stream && mux.origin_h2 != nullptr) mux.origin_h2->release(*response.h2_stream);

  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  auto line = log::info("request");
  describe(line,
           response.failure ? static_cast<unsigned>(response.failure->status) : response.status,
           policy::to_string(judgement.decision.action));
  line.kv("request_bytes", stream.body_in.total())
      .kv("response_bytes", response.body->total())
      .kv("ms", elapsed.count());
  // A client may close as soon as it has content-length bytes, before END_STREAM reaches it:
  // that response was delivered whole, whatever the stream's end says.
  const bool body_complete = response.content_length &&
                             response.body->total() == *response.content_length &&
                             response.body->buffered() == 0;
  if (stream.error_code != 0 && !body_complete) {
    line.kv("error", "stream-reset").kv("h2_error", stream.error_code);
  }
  if (websocket && response.status == 200) {
    stream.body_in.tap = nullptr;
    auto closed = log::info("websocket-closed");
    closed.kv("conn", id_)
        .kv("stream", stream.id)
        .kv("host", judgement.host)
        .kv("path", judgement.path)
        .kv("category", category)
        .kv("messages_up", frames_up.counts().messages)
        .kv("messages_down", frames_down.counts().messages)
        .kv("bytes_up", frames_up.counts().data_bytes())
        .kv("control_frames_up", frames_up.counts().control_frames)
        .kv("bytes_down", frames_down.counts().data_bytes())
        .kv("control_frames_down", frames_down.counts().control_frames)
        .kv("frames_up", frames_up.counts().frames)
        .kv("frames_down", frames_down.counts().frames);
    if (frames_up.close_code()) closed.kv("close_code_up", *frames_up.close_code());
    if (frames_down.close_code()) closed.kv("close_code_down", *frames_down.close_code());
    if (frames_up.failed() || frames_down.failed()) closed.kv("error", "websocket-framing");
    // (An over-long frame aborts the stream: the client sees it reset.)
    if (frames_up.limit_exceeded() || frames_down.limit_exceeded()) {
      count_limit(LimitHit::websocket_frame_size);
    }
  }

  if (response.head_ready) {
    record.first_byte_ms =
        std::chrono::duration<double, std::milli>(response.head_at - stream_started).count();
  }
  std::string error;
  std::string reason;
  if (response.failure) {
    error = response.failure->code;
    reason = response.failure->reason;
  } else if (response.body_failure) {
    error = response.body_failure->code;
    reason = response.body_failure->reason;
  } else if (stream.error_code != 0 && !body_complete) {
    error = "stream-reset";
    reason = "HTTP/2 error code " + std::to_string(stream.error_code);
  }
  uint64_t up = stream.body_in.total();
  uint64_t down = response.body->total();
  if (websocket && response.status == 200) {
    record.scheme = "wss";
    record.ws_messages_up = frames_up.counts().messages;
    record.ws_messages_down = frames_down.counts().messages;
    if (frames_up.close_code()) {
      record.ws_close_code = *frames_up.close_code();
    } else if (frames_down.close_code()) {
      record.ws_close_code = *frames_down.close_code();
    }
    up = frames_up.counts().data_bytes();
    down = frames_down.counts().data_bytes();
    if (error.empty() && (frames_up.failed() || frames_down.failed())) error = "websocket-framing";
  }
  if (har) {
    har->status =
        response.failure ? static_cast<unsigned>(response.failure->status) : response.status;
    for (const auto& field : response.fields) {
      har->response_headers.push_back({field.name, field.value});
    }
    if (response.content_length) {
      har->response_headers.push_back({"content-length", std::to_string(*response.content_length)});
    }
    har->request_body = {std::move(request_capture.bytes), up, request_capture.truncated};
    har->response_body = {std::move(response_capture.bytes), down, response_capture.truncated};
    if (record.connect_ms) har->connect_ms = *record.connect_ms;
    if (record.tls_ms) har->ssl_ms = *record.tls_ms;
    const double total = ms_since(stream_started);
    har->wait_ms = record.first_byte_ms.value_or(total);
    har->receive_ms = std::max(0.0, total - har->wait_ms);
    har->comment =
        "tokgate flow " + record.flow + ", rule " + record.rule + ", category " + record.category;
    record.har = std::move(har);
    record.har_full = judgement.decision.full_capture;
  }
  record_done(response.failure ? static_cast<unsigned>(response.failure->status) : response.status,
              up, down, error, reason);
}

awaitable<void> ClientSession::exchange_with_origin(MuxState& mux, OriginRequest& request,
                                                    OriginResponse& response, Deadline& deadline,
                                                    std::span<char> chunk) {
  if (mux.origin_h2 != nullptr) {
    co_await forward_over_h2(*mux.origin_h2, request, response, deadline, config_);
    co_return;
  }
  if (!mux.pool) {
    response.failure = Failure{http::status::bad_gateway, "upstream-protocol", "no origin"};
    response.ready.notify();
    co_return;
  }
  auto leased = co_await mux.pool->acquire(deadline);
  if (!leased) {
    response.failure = leased.error();
    response.ready.notify();
    co_return;
  }
  OriginConnection& connection = **leased;
  response.cancel = [&connection] {
    error_code ignored;
    connection.stream->next_layer().cancel(ignored);
  };
  bool reusable = false;
  if (!request.protocol.empty()) {
    co_await forward_websocket_over_h1(connection, request, response, deadline, config_, chunk);
  } else {
    co_await forward_over_h1(connection, request, response, deadline, config_, chunk, reusable);
  }
  response.cancel = nullptr;
  mux.pool->give_back(std::move(*leased), reusable && !deadline.expired());
}

awaitable<void> ClientSession::respond_h2(MuxState& mux, H2Stream& stream,
                                          const OriginRequest& request, OriginResponse& response) {
  H2Connection& client = *mux.client;
  while (!response.head_ready && !response.failure && !stream.closed) {
    co_await (response.ready.wait() || stream.event.wait());
  }
  if (stream.closed) {
    // The client gave up (RST_STREAM or the connection): stop the origin side too.
    if (response.cancel) response.cancel();
    if (request.body != nullptr) request.body->abort();
    response.body->abort();
    co_return;
  }
  if (response.failure) {
    const Failure failure = *response.failure;
    co_await answer_h2_failure(stream, client, failure);
    co_return;
  }
  HeaderList head;
  head.reserve(response.fields.size() + 2);
  head.push_back({":status", std::to_string(response.status)});
  for (const auto& field : response.fields) {
    if (!is_connection_specific(field.name)) head.push_back(field);
  }
  if (response.content_length) {
    head.push_back({"content-length", std::to_string(*response.content_length)});
  }
  const bool no_body = request.is_head || response.status == 204 || response.status == 304;
  if (!client.submit_response(stream, head, no_body ? nullptr : response.body)) {
    if (response.cancel) response.cancel();
    response.body->abort();
    co_return;
  }
  while (!stream.closed) {
    if (!co_await stream.event.wait()) break;
  }
  client.release(stream);
  if (stream.error_code != 0) {
    if (response.cancel) response.cancel();
    response.body->abort();
  }
}

awaitable<void> ClientSession::serve_h1_via_h2(MuxState& mux, TlsStream& client) {
  auto executor = client.get_executor();
  beast::flat_buffer client_buffer(config_.limits.request_header_bytes + 16 * 1024);
  std::span<char> chunk = relay_chunk();
  for (bool first = true;; first = false) {
    RequestParser parser;
    if (!co_await read_request_head(client, client_buffer, parser, first)) co_return;
    auto& request = parser.get();
    const unsigned version = request.version();
    if (auto failure = check_request(parser)) {
      failure_ = *failure;
      co_await send_failure(client, version);
      co_return;
    }
    std::string_view target = request.target();
    if (!target.starts_with('/')) {
      failure_ = Failure{http::status::bad_request, "bad-request", "bad request target"};
      co_await send_failure(client, version);
      co_return;
    }
    auto outcome = co_await apply_request_policy(client, parser, mux.name, mux.port);
    if (outcome == PolicyOutcome::close) co_return;
    if (outcome == PolicyOutcome::answered) continue;

    const auto started = std::chrono::steady_clock::now();
    const bool client_wants_keep_alive = request.keep_alive();
    OriginRequest forward;
    forward.method = request.method_string();
    forward.authority = request[http::field::host];
    if (forward.authority.empty()) forward.authority = mux.name;
    forward.path = request.target();
    forward.fields = end_to_end_fields(request);
    if (auto length = parser.content_length()) forward.content_length = *length;
    forward.has_body = !parser.is_done();
    forward.is_head = request.method() == http::verb::head;
    BodyPipe request_body(executor, kPipeCapacity);
    forward.body = forward.has_body ? &request_body : nullptr;
    OriginResponse response(executor, kPipeCapacity);
    std::string path(request.target());
    if (auto question = path.find('?'); question != std::string::npos) path.resize(question);

    auto feed_request_body = [&]() -> awaitable<bool> {
      auto& body = parser.get().body();
      while (!parser.is_done()) {
        if (!co_await request_body.wait_space()) co_return false;
        body.data = chunk.data();
        body.size = chunk.size();
        deadline_.set(config_.timeouts.io_stall, "request-body");
        auto [ec, n] = co_await http::async_read(client, client_buffer, parser, use_nothrow);
        if (ec && ec != http::error::need_buffer) {
          request_body.abort();
          co_return false;
        }
        request_body.push(
            {reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size() - body.size});
      }
      request_body.finish();
      co_return true;
    };
    bool client_keep_alive = false;
    bool response_started = false;
    auto write_response = [&]() -> awaitable<bool> {
      while (!response.head_ready && !response.failure) {
        if (!co_await response.ready.wait()) co_return false;
      }
      if (response.failure) co_return false;
      response_started = true;
      http::response<http::buffer_body> out{static_cast<http::status>(response.status), 11};
      for (const auto& field : response.fields) out.insert(field.name, field.value);
      const bool no_body = forward.is_head || response.status == 204 || response.status == 304;
      client_keep_alive = client_wants_keep_alive && !closing_ && !worker_.draining();
      if (response.content_length) {
        out.content_length(*response.content_length);
      } else if (!no_body) {
        if (version >= 11) {
          out.chunked(true);
        } else {
          client_keep_alive = false;  // the body ends when the connection does
        }
      }
      out.keep_alive(client_keep_alive);
      auto& body = out.body();
      body.data = nullptr;
      body.size = 0;
      body.more = !no_body;
      http::response_serializer<http::buffer_body> serializer{out};
      if (no_body) serializer.split(false);
      deadline_.set(config_.timeouts.io_stall, "response-send");
      auto [hec, hn] = co_await http::async_write_header(client, serializer, use_nothrow);
      if (hec) co_return false;
      // Copied out of the pipe first: the origin's DATA may land (and move the pipe's storage)
      // while the write is in flight.
      std::vector<uint8_t> download(no_body ? 0 : kExchangeChunk * 4);
      while (!no_body) {
        const bool readable = co_await response.body->wait_data();
        if (!readable) co_return false;
        if (response.body->drained()) break;
        body.data = download.data();
        body.size = response.body->read(download);
        body.more = true;
        deadline_.set(config_.timeouts.io_stall, "response-send");
        auto [ec, n] = co_await http::async_write(client, serializer, use_nothrow);
        if (ec && ec != http::error::need_buffer) co_return false;
      }
      if (out.chunked() && !response.body->trailers().empty()) {
        const std::string last_chunk = last_chunk_with_trailers(response.body->trailers());
        auto [ec, n] = co_await asio::async_write(client, asio::buffer(last_chunk), use_nothrow);
        co_return !ec;
      }
      body.data = nullptr;
      body.size = 0;
      body.more = false;
      auto [ec, n] = co_await http::async_write(client, serializer, use_nothrow);
      co_return !ec;
    };
    auto origin_exchange = [&]() -> awaitable<void> {
      co_await forward_over_h2(*mux.origin_h2, forward, response, deadline_, config_);
    };
    // A client that stops reading (or goes) ends the origin's stream too, at once.
    auto relay_response = [&]() -> awaitable<bool> {
      const bool done = co_await write_response();
      if (!done) {
        if (response.cancel) response.cancel();
        response.body->abort();
        request_body.abort();
      }
      co_return done;
    };
    bool fed = true;
    bool written = false;
    if (forward.has_body) {
      std::tie(fed, written) =
          co_await (feed_request_body() && origin_exchange() && relay_response());
    } else {
      written = co_await (origin_exchange() && relay_response());
    }
    if (response.h2_stream) mux.origin_h2->release(*response.h2_stream);
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
    log::info("request")
        .kv("conn", id_)
        .kv("method", forward.method)
        .kv("host", label_.host)
        .kv("path", path)
        .kv("status",
            response.failure ? static_cast<unsigned>(response.failure->status) : response.status)
        .kv("request_bytes", request_body.total())
        .kv("response_bytes", response.body->total())
        .kv("ms", elapsed.count())
        .kv("category", policy::to_string(label_.category))
        .kv("action", policy::to_string(label_.action))
        .kv("rule", label_.rule)
        .kv("client_proto", "http/1.1")
        .kv("server_proto", "h2");
    if (response.head_ready) {
      pending_first_byte_ms_ =
          std::chrono::duration<double, std::milli>(response.head_at - pending_started_).count();
    }
    if (!(response.failure && !response_started)) {
      // (A failure before the response is recorded by send_failure, with its status.)
      finish_pending(
          response.failure ? static_cast<unsigned>(response.failure->status) : response.status,
          request_body.total(), response.body->total(),
          response.failure ? std::string_view(response.failure->code)
          : written        ? std::string_view()
                           : std::string_view("client-gone"));
    }
    if (response.failure && !response_started) {
      failure_ = *response.failure;
      co_await send_failure(client, version);
      co_return;
    }
    if (!fed || !written || !client_keep_alive || !mux.origin_h2->usable()) co_return;
  }
}

}  // namespace tokgate::proxy
