// HTTP/1.1 message plumbing shared by the plain and the intercepted paths: hop-by-hop header
// removal, the proxy's own error responses, and body streaming through a fixed chunk (read the
// head, decide, then stream: nothing ever holds a whole body).
#pragma once

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <cstdint>
#include <span>
#include <string>

#include "proxy/asio_types.hpp"
#include "proxy/deadline.hpp"

namespace tokgate::proxy {

using RequestParser = http::request_parser<http::buffer_body>;
using ResponseParser = http::response_parser<http::buffer_body>;

// Removes the headers that describe one hop (RFC 9110 section 7.6.1) so they are not forwarded:
// Connection and every field it names, Keep-Alive, Proxy-Connection, Proxy-Authorization,
// Proxy-Authenticate, TE, Trailer, Upgrade. Transfer-Encoding stays: the serializer re-frames it.
void strip_hop_by_hop(http::fields& fields);

// The path as the policy should see it: percent-escapes decoded, dot segments removed, runs of
// '/' collapsed, so "/%61weme/./v1//feed" cannot slip past a rule for "/aweme/*". Only what the
// policy looks at is normalized; the request is forwarded as the client sent it.
std::string normalized_path_for_policy(std::string_view path);

// The proxy's own error response: one line of text and a machine-readable X-Tokgate-Error code.
http::response<http::string_body> failure_response(const Failure& failure, unsigned version,
                                                   bool keep_alive = false);

enum class BodyOutcome { done, read_failed, write_failed };
struct BodyResult {
  BodyOutcome outcome = BodyOutcome::done;
  error_code error;
};

// Streams the rest of a message from `in` to `out`: the head was parsed by `parser`. If
// `serializer` has not written the head yet, it leaves with the first body bytes (one send for
// a small message); the caller holds it back only when those bytes are already at hand, so a
// head is never delayed by a body that has yet to come. Every chunk moves the deadline forward
// by `stall`, so a body may take as long as it needs while it keeps moving.
// The first bytes of a body, kept for a HAR capture while it streams past.
struct BodyCapture {
  std::string bytes;
  std::size_t limit = 0;
  bool truncated = false;
  void add(const char* data, std::size_t size) {
    const std::size_t room = limit > bytes.size() ? limit - bytes.size() : 0;
    if (size > room) truncated = true;
    bytes.append(data, std::min(size, room));
  }
};

// Whether more input is waiting on `stream` right now: a body read then goes on
// filling the chunk (fewer, larger writes in bulk) instead of forwarding at once (which it does
// as soon as the input pauses, so a trickle is never held back).
inline bool input_waiting(TlsSocket& stream) {
  return stream.input_ready();
}
template <class Stream>
bool input_waiting(Stream&) {
  return false;
}

// Beast reads as much as the buffer has room for (at least 512 bytes) and never grows it for a
// body: a buffer left small by its head made a 1 MiB body ~2,000 reads (and as many SSL_read
// calls and scheduler turns). One TLS record's worth of room makes it one read per record; a
// body known to be smaller gets only what it needs (no 16 KiB allocation per small response).
template <bool isRequest>
void reserve_for_body(beast::flat_buffer& buffer,
                      const http::parser<isRequest, http::buffer_body>& parser) {
  constexpr std::size_t kBodyReadRoom = 16 * 1024 + 512;
  std::size_t room = std::min(kBodyReadRoom, buffer.max_size());
  if (auto remaining = parser.content_length_remaining()) {
    room = std::min<uint64_t>(room, buffer.size() + *remaining);
  }
  if (buffer.capacity() < room) buffer.reserve(room);
}

template <bool isRequest, class InStream, class OutStream>
awaitable<BodyResult> relay_body(InStream& in, beast::flat_buffer& in_buffer,
                                 http::parser<isRequest, http::buffer_body>& parser, OutStream& out,
                                 http::serializer<isRequest, http::buffer_body>& serializer,
                                 std::span<char> chunk, Deadline& deadline,
                                 std::chrono::milliseconds stall, uint64_t& bytes,
                                 BodyCapture* capture = nullptr) {
  auto& body = parser.get().body();
  if (!parser.is_done()) reserve_for_body(in_buffer, parser);
  while (!serializer.is_done()) {
    deadline.set(stall, isRequest ? "request-body" : "response-body");
    error_code read_error;
    if (!parser.is_done()) {
      body.data = chunk.data();
      body.size = chunk.size();
      do {
        auto [ec, n] = co_await http::async_read_some(in, in_buffer, parser, use_nothrow);
        if (ec == http::error::need_buffer) break;  // the chunk is full
        if (ec) {
          read_error = ec;
          break;
        }
      } while (!parser.is_done() && body.size > 0 && (in_buffer.size() > 0 || input_waiting(in)));
      body.size = chunk.size() - body.size;
      // A read may parse framing (a chunk header) and no body byte: nothing to write then; an
      // empty piece would even end a chunked body early ("0\r\n\r\n").
      if (body.size == 0 && !parser.is_done() && !read_error) {
        if (!serializer.is_header_done()) {
          auto [hec, hn] = co_await http::async_write_header(out, serializer, use_nothrow);
          if (hec) co_return BodyResult{BodyOutcome::write_failed, hec};
        }
        continue;
      }
      body.data = chunk.data();
      body.more = !parser.is_done();
      bytes += body.size;
      if (capture != nullptr) capture->add(chunk.data(), body.size);
      if (read_error) {
        // What arrived before the failure still reaches the other side.
        if (body.size > 0) {
          body.more = true;
          co_await http::async_write(out, serializer, use_nothrow);
        } else if (!serializer.is_header_done()) {
          co_await http::async_write_header(out, serializer, use_nothrow);
        }
        co_return BodyResult{BodyOutcome::read_failed, read_error};
      }
    } else {
      body.data = nullptr;
      body.size = 0;
      body.more = false;
    }
    auto [ec, n] = co_await http::async_write(out, serializer, use_nothrow);
    if (ec && ec != http::error::need_buffer) co_return BodyResult{BodyOutcome::write_failed, ec};
  }
  co_return BodyResult{};
}

}  // namespace tokgate::proxy
