// One HTTP/2 connection over TLS, framed by nghttp2 and driven by Asio on the connection's
// worker: a server session toward a client or a client session toward an origin. Bodies enter
// and leave through BodyPipes, and flow-control window is returned to the peer only when the
// other leg has taken the bytes, so a slow reader slows the writer instead of filling memory.
#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "proxy/asio_types.hpp"
#include "proxy/body_pipe.hpp"
#include "proxy/metrics.hpp"

struct nghttp2_session;

namespace tokgate::proxy {

// One stream as both legs see it. Shared between the connection and the coroutine handling the
// exchange; the connection lets go when nghttp2 closes the stream.
struct H2Stream {
  H2Stream(const asio::any_io_executor& executor, std::size_t body_capacity)
      : body_in(executor, body_capacity), event(executor) {}

  std::string_view header(std::string_view name) const {
    for (const auto& field : head) {
      if (field.name == name) return field.value;
    }
    return {};
  }

  int32_t id = 0;
  HeaderList head;  // as received: pseudo-header fields (":method", ":status", ...) first
  std::size_t head_bytes = 0;
  std::size_t head_fields = 0;  // regular (not pseudo-header) fields of the block being read
  // Server role: the request head went over a limit (size or field count). Decoding went on
  // (HPACK state is shared by the connection) but nothing more of it was kept; the handler
  // answers 431.
  std::optional<LimitHit> head_rejected;
  bool head_complete = false;
  bool closed = false;
  uint32_t error_code = 0;       // RST_STREAM / GOAWAY code the stream closed with (0 = clean)
  BodyPipe body_in;              // DATA received on this stream
  BodyPipe* body_out = nullptr;  // where the DATA we send comes from (owned by the other leg)
  Signal event;                  // head complete, stream closed

  // Internal to H2Connection.
  HeaderList pending_trailers;
  bool interim = false;
};

class H2Connection {
 public:
  enum class Role { server, client };
  struct Settings {
    uint32_t max_concurrent_streams = 128;
    uint32_t max_header_list_bytes = 64 * 1024;
    uint32_t max_header_fields = 256;  // regular fields in one header block
    uint32_t stream_window = 256 * 1024;
    uint32_t connection_window = 1024 * 1024;
    bool enable_connect_protocol = false;  // RFC 8441, server role
    std::chrono::milliseconds idle{std::chrono::seconds(60)};
    // The floods of the peer (server role: a client's; RFC 9113 section 10.5).
    uint32_t max_continuations = 8;    // CONTINUATION frames per header block (CVE-2024-27316)
    uint32_t max_pending_acks = 1000;  // SETTINGS/PING acks queued for a peer that does not read
    uint32_t reset_burst = 1000;       // RST_STREAMs received: a burst of this many ...
    uint32_t reset_rate = 33;          // ... then this many a second (CVE-2023-44487)
    // Where the limits a client hits are counted (server role); null: not counted.
    MetricsShard* metrics = nullptr;
  };
  // Server role: called when a request head is complete (from inside nghttp2's callbacks: it
  // must only schedule work).
  using RequestHandler = std::function<void(const std::shared_ptr<H2Stream>&)>;

  H2Connection(TlsStream& io, Role role, const Settings& settings, RequestHandler on_request = {});
  ~H2Connection();
  H2Connection(const H2Connection&) = delete;
  H2Connection& operator=(const H2Connection&) = delete;

  // Reads and writes until the connection ends: peer closed, GOAWAY done, idle, error, close().
  awaitable<void> run();

  // Client role: a new request; `body` null for none. The stream's body_in gets the response.
  std::expected<std::shared_ptr<H2Stream>, std::string> submit_request(const HeaderList& head,
                                                                       BodyPipe* body);
  // Server role: the response head for `stream`, with its body from `body` (null for none).
  bool submit_response(H2Stream& stream, const HeaderList& head, BodyPipe* body);
  void reset_stream(H2Stream& stream, uint32_t error_code);
  // The handler of `stream` is done with the pipe it lent (its DATA source).
  void release(H2Stream& stream);

  // GOAWAY: no new streams; the connection ends when the open ones are done.
  void shutdown_gracefully();
  void close();  // at once: every open stream fails

  bool usable() const { return !ended_ && !going_away_; }
  bool remote_allows_extended_connect() const;
  // Completes once the peer's first SETTINGS arrived (true) or the connection ended, or the
  // waiter was cancelled (false). An extended CONNECT must wait for them (RFC 8441 section 3).
  awaitable<bool> wait_remote_settings();
  std::size_t open_streams() const { return streams_.size(); }
  const std::string& end_reason() const { return end_reason_; }

 private:
  friend struct H2Callbacks;
  // Points at this connection until it is destroyed (see forget()).
  std::shared_ptr<H2Connection*> self_ = std::make_shared<H2Connection*>(this);

  awaitable<void> reader();
  awaitable<void> writer();
  awaitable<void> idle_watch();
  void notify_write() { write_signal_.notify(); }
  void attach_source(H2Stream& stream, BodyPipe* body);
  void forget(H2Stream& stream, uint32_t error_code);
  void end(std::string_view reason);
  void count(LimitHit limit) {
    if (settings_.metrics != nullptr && role_ == Role::server) settings_.metrics->limit_hit(limit);
  }
  // A RST_STREAM from the peer; false once the rapid-reset budget is spent.
  bool take_reset_token();

  TlsStream& io_;
  Role role_;
  Settings settings_;
  RequestHandler on_request_;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<int32_t, std::shared_ptr<H2Stream>> streams_;
  Signal write_signal_;
  Signal settings_signal_;  // the peer's first SETTINGS arrived, or the connection ended
  bool remote_settings_received_ = false;
  std::vector<uint8_t> out_;
  std::chrono::steady_clock::time_point last_active_;
  std::string end_reason_;
  bool ended_ = false;
  bool going_away_ = false;
  // Token bucket of the peer's RST_STREAMs (server role).
  double reset_tokens_ = 0;
  std::chrono::steady_clock::time_point reset_refilled_;
  bool reset_flooded_ = false;
};

// HTTP/2 error codes used by the proxy (RFC 9113 section 7).
inline constexpr uint32_t kH2NoError = 0x0;
inline constexpr uint32_t kH2ProtocolError = 0x1;
inline constexpr uint32_t kH2InternalError = 0x2;
inline constexpr uint32_t kH2RefusedStream = 0x7;
inline constexpr uint32_t kH2Cancel = 0x8;
inline constexpr uint32_t kH2EnhanceYourCalm = 0xb;

}  // namespace tokgate::proxy
