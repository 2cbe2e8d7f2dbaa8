// WebSocket (RFC 6455) after the upgrade: a sans-I/O frame tracker that validates the framing of
// one direction and counts what passes, and a relay coroutine that moves bytes both ways between
// two upgraded streams, feeding each direction's tracker. Payloads are never buffered or
// unmasked: the relay forwards bytes as they arrive, and the tracker holds at most one frame
// header (14 bytes) plus the two bytes of a close code.
#pragma once

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "proxy/asio_types.hpp"
#include "proxy/deadline.hpp"

namespace tokgate::proxy {

struct WebSocketCounts {
  uint64_t messages = 0;        // complete data messages (a fragmented one counts once, at FIN)
  uint64_t frames = 0;          // complete frames, data and control
  uint64_t payload_bytes = 0;   // payload of all frames, counted as it passes
  uint64_t control_frames = 0;  // complete close, ping and pong frames
  uint64_t control_payload_bytes = 0;  // the part of payload_bytes in control frames
  uint64_t data_bytes() const { return payload_bytes - control_payload_bytes; }
};

// Validates and counts the frames of one direction of a WebSocket connection. Feed it the bytes
// as they pass, split anywhere. The first violation is sticky: every later feed returns it.
//
// Checked: RSV2/RSV3 clear; RSV1 (permessage-deflate) only on the first frame of a data message;
// no reserved opcode; control frames unfragmented, at most 125 bytes, and a close payload never
// 1 byte; masking as RFC 6455 5.1 demands of the direction; continuation frames only inside a
// fragmented message and new data messages only outside one; no data frame after a close; a
// 64-bit length without its top bit; every frame's payload within the limit, checked from the
// header, before any of its payload passes.
// Left to the endpoints: UTF-8 of text (it may be compressed), the close code's range, and
// non-minimal length encodings (harmless to a relay that only counts).
class WebSocketFrameTracker {
 public:
  // from_client: frames must be masked (RFC 6455 5.1); from the server they must not be.
  WebSocketFrameTracker(bool from_client, uint64_t max_frame_payload);

  std::expected<void, std::string> feed(std::span<const uint8_t> bytes);

  const WebSocketCounts& counts() const { return counts_; }
  // A complete close frame has passed.
  bool close_seen() const { return close_seen_; }
  // The status code of that close frame, when it carried one.
  std::optional<uint16_t> close_code() const { return close_code_; }
  // Part of a frame has passed but not all of it: a stream ending now was cut inside a frame.
  bool inside_frame() const { return header_size_ > 0 || in_payload_; }
  bool failed() const { return !error_.empty(); }
  // The failure was a frame over the payload limit (not a framing violation).
  bool limit_exceeded() const { return limit_exceeded_; }

 private:
  std::expected<void, std::string> fail(std::string message);
  std::expected<void, std::string> check_first_two_bytes();
  std::expected<void, std::string> check_payload_length();
  void start_payload();
  void finish_frame();

  bool from_client_;
  uint64_t max_frame_payload_;

  // The header of the current frame, while it is being read.
  std::array<uint8_t, 14> header_{};
  std::size_t header_size_ = 0;    // bytes of it held so far
  std::size_t length_end_ = 2;     // where its payload length ends (2, 4 or 10)
  std::size_t header_needed_ = 2;  // its full size, known once the first 2 bytes are in

  // The current frame, once its header is complete.
  uint8_t opcode_ = 0;
  bool fin_ = false;
  bool in_payload_ = false;
  uint64_t payload_length_ = 0;
  uint64_t payload_remaining_ = 0;
  std::array<uint8_t, 2> close_code_bytes_{};  // first payload bytes of a close frame, unmasked

  bool in_message_ = false;  // a fragmented data message has started and not yet ended
  bool close_seen_ = false;
  std::optional<uint16_t> close_code_;
  std::string error_;
  bool limit_exceeded_ = false;
  WebSocketCounts counts_;
};

// A close frame from the server side to the client (unmasked): status `code` and a short
// reason (at most 123 bytes are used).
std::string websocket_close_frame(uint16_t code, std::string_view reason);

struct WebSocketRelayResult {
  WebSocketCounts up;    // client side to server side
  WebSocketCounts down;  // server side to client side
  bool close_seen_up = false;
  bool close_seen_down = false;
  std::optional<uint16_t> close_code_up;
  std::optional<uint16_t> close_code_down;
  // Empty if the relay ended cleanly; otherwise the first reason it did not, prefixed with the
  // side: a framing violation ("client side: reserved opcode 0x3"), an I/O error, "idle
  // timeout", or a stream cut inside a frame.
  std::string error;
  // A frame over the payload limit stopped the relay (from either side).
  bool frame_too_large = false;
  // The client side is between two frames of ours: a close frame can still be sent to it.
  bool client_at_frame_boundary = true;
};

namespace websocket_relay_detail {

inline constexpr std::string_view kIdlePhase = "websocket-idle";

// One direction's handle for being stopped by the other. The stop goes to the operation, not to
// the socket: socket.cancel() misses a TLS read that is between two reads of its socket (after a
// record, before the next), while a TLS operation remembers a cancellation of its own at any step.
struct Pump {
  asio::cancellation_signal cancel;  // bound to each read and write of this direction
  bool reading = false;              // waiting on its reader, no write of its own under way
};

// Shared by the two directions of one relay.
struct RelayState {
  Pump up;
  Pump down;
  bool stopping = false;  // one direction stopped both: aborted I/O from now on is expected
  std::string error;
  // What has reached the client ends between two frames (a close frame may follow).
  bool client_at_frame_boundary = true;
};

// Stops the other direction once it has nothing to finish: at once if it is waiting to read, or
// after the write it has under way.
inline void stop_other(RelayState& state, Pump& other) {
  state.stopping = true;
  if (other.reading) other.cancel.emit(asio::cancellation_type::terminal);
}

// Stops both directions at once, whatever they are doing; the first reason is kept.
inline void stop_both(RelayState& state, Pump& other, std::string& reason) {
  if (state.error.empty()) state.error = std::move(reason);
  state.stopping = true;
  other.cancel.emit(asio::cancellation_type::terminal);
}

// A plain socket can pass a half-close on; a TLS stream cannot (close_notify ends both ways).
template <class Stream>
constexpr bool can_half_close = requires(Stream& stream, error_code& ec) {
  stream.shutdown(tcp::socket::shutdown_send, ec);
};

inline bool is_end_of_stream(const error_code& ec) {
  // A TLS peer that closes TCP without close_notify is common and, here, harmless.
  return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated;
}

inline std::string io_error(bool client_side, std::string_view operation, const error_code& ec,
                            const Deadline& deadline) {
  if (ec == asio::error::operation_aborted && deadline.expired()) return "idle timeout";
  std::string message = client_side ? "client side " : "server side ";
  message += operation;
  message += ": ";
  message += ec.message();
  return message;
}

// One direction: forwards `pending`, then reads `from` and writes `to` until `from` ends, the
// other direction stops this one, or something fails (which stops both). `tracker` watches
// this direction, `reverse` the other one.
template <class From, class To>
awaitable<void> pump(From& from, To& to, std::span<const uint8_t> pending, std::span<char> buffer,
                     WebSocketFrameTracker& tracker, const WebSocketFrameTracker& reverse,
                     RelayState& state, Deadline& deadline, std::chrono::milliseconds idle,
                     bool from_client) {
  // Without half-close, a finished close handshake is the end of the connection.
  constexpr bool half_close = can_half_close<From> && can_half_close<To>;
  Pump& self = from_client ? state.up : state.down;
  Pump& other = from_client ? state.down : state.up;
  auto token = asio::bind_cancellation_slot(self.cancel.slot(), use_nothrow);
  std::span<const uint8_t> chunk = pending;
  bool from_ended = false;
  for (;;) {
    if (!chunk.empty()) {
      // Validate before forwarding: bytes of an invalid stream never reach the other side.
      auto fed = tracker.feed(chunk);
      if (!fed) {
        std::string reason = from_client ? "client side: " : "server side: ";
        reason += fed.error();
        stop_both(state, other, reason);
        co_return;
      }
      deadline.set(idle, kIdlePhase);
      asio::const_buffer out(chunk.data(), chunk.size());
      auto [ec, written] = co_await asio::async_write(to, out, token);
      if (state.stopping) co_return;
      if (ec) {
        std::string reason = io_error(!from_client, "write", ec, deadline);
        stop_both(state, other, reason);
        co_return;
      }
      deadline.set(idle, kIdlePhase);
      if (!from_client) state.client_at_frame_boundary = !tracker.inside_frame();
      chunk = {};
    }
    if (state.stopping) co_return;
    if (from_ended) {
      if (tracker.inside_frame() && state.error.empty()) {
        state.error =
            from_client ? "client side ended inside a frame" : "server side ended inside a frame";
      }
      if constexpr (half_close) {
        error_code ignored;
        to.shutdown(tcp::socket::shutdown_send, ignored);
      } else {
        stop_other(state, other);
      }
      co_return;
    }
    if constexpr (!half_close) {
      if (tracker.close_seen() && reverse.close_seen()) {
        stop_other(state, other);
        co_return;
      }
    }
    asio::mutable_buffer in(buffer.data(), buffer.size());
    self.reading = true;
    auto [ec, n] = co_await from.async_read_some(in, token);
    self.reading = false;
    if (state.stopping) co_return;
    chunk = {reinterpret_cast<const uint8_t*>(buffer.data()), n};
    if (ec) {
      if (!is_end_of_stream(ec)) {
        std::string reason = io_error(from_client, "read", ec, deadline);
        stop_both(state, other, reason);
        co_return;
      }
      from_ended = true;  // forward what came with the end, then pass the end on
    }
  }
}

}  // namespace websocket_relay_detail

// Relays an upgraded WebSocket connection between the client side and the server side until
// both directions have ended, or one fails or breaks the framing (which stops both, and
// `error` says why). The pending spans are bytes already read past the HTTP heads; they are
// validated and forwarded first, and must stay valid until the relay ends. `buffer` is split
// into one half per direction. Each move of bytes re-arms `deadline` for `idle`; when it
// expires the session cancels the sockets' I/O and the relay ends with "idle timeout".
//
// When one direction ends, what it read is forwarded first; then a plain socket half-closes
// the other side's connection and the other direction runs on. A TLS stream has no half-close,
// so there the relay stops both directions when either reader ends or once close frames have
// passed both ways. The streams are left open: closing them (and TLS close_notify) is the
// caller's.
template <class ClientStream, class ServerStream>
awaitable<WebSocketRelayResult> relay_websocket(ClientStream& client, ServerStream& server,
                                                std::span<const uint8_t> client_pending,
                                                std::span<const uint8_t> server_pending,
                                                std::span<char> buffer, Deadline& deadline,
                                                std::chrono::milliseconds idle,
                                                uint64_t max_frame_payload) {
  using namespace asio::experimental::awaitable_operators;
  WebSocketRelayResult result;
  const std::size_t half = buffer.size() / 2;
  if (half == 0) {
    result.error = "relay buffer too small";
    co_return result;
  }
  WebSocketFrameTracker up(true, max_frame_payload);
  WebSocketFrameTracker down(false, max_frame_payload);
  websocket_relay_detail::RelayState state;
  deadline.set(idle, websocket_relay_detail::kIdlePhase);
  auto up_pump =
      websocket_relay_detail::pump(client, server, client_pending, buffer.subspan(0, half), up,
                                   down, state, deadline, idle, true);
  auto down_pump =
      websocket_relay_detail::pump(server, client, server_pending, buffer.subspan(half, half), down,
                                   up, state, deadline, idle, false);
  auto both = std::move(up_pump) && std::move(down_pump);
  co_await std::move(both);
  result.up = up.counts();
  result.down = down.counts();
  result.close_seen_up = up.close_seen();
  result.close_seen_down = down.close_seen();
  result.close_code_up = up.close_code();
  result.close_code_down = down.close_code();
  result.error = std::move(state.error);
  result.frame_too_large = up.limit_exceeded() || down.limit_exceeded();
  result.client_at_frame_boundary = state.client_at_frame_boundary;
  co_return result;
}

}  // namespace tokgate::proxy
