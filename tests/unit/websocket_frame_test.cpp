#include "proxy/websocket_relay.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace tokgate::proxy {
namespace {

using Bytes = std::vector<uint8_t>;
using namespace std::chrono_literals;

constexpr uint64_t kLimit = 16 * 1024 * 1024;
constexpr std::array<uint8_t, 4> kMaskKey = {0x37, 0xfa, 0x21, 0x3d};  // RFC 6455 5.7

constexpr uint8_t kContinuation = 0x0;
constexpr uint8_t kText = 0x1;
constexpr uint8_t kBinary = 0x2;
constexpr uint8_t kClose = 0x8;
constexpr uint8_t kPing = 0x9;
constexpr uint8_t kPong = 0xa;

struct Frame {
  uint8_t opcode = kText;
  Bytes payload{};
  bool fin = true;
  bool masked = false;
  uint8_t rsv = 0;  // RSV1..3 as the top bits of the first byte: 0x40, 0x20, 0x10
  // Length encoding: 0 for the shortest, or 126/127 to force the 16/64-bit forms.
  uint8_t length_form = 0;
};

Bytes payload_of(std::string_view text) {
  return Bytes(text.begin(), text.end());
}

Bytes close_payload(uint16_t code, std::string_view reason = "") {
  // Sized up front: growing a 2-byte vector by insert() trips a GCC 12 -Warray-bounds false alarm.
  Bytes payload(2 + reason.size());
  payload[0] = static_cast<uint8_t>(code >> 8);
  payload[1] = static_cast<uint8_t>(code);
  std::copy(reason.begin(), reason.end(), payload.begin() + 2);
  return payload;
}

// The header alone, for frames whose payload a test never sends.
Bytes header(uint8_t first_byte, uint64_t length, bool masked, uint8_t length_form = 0) {
  Bytes out = {first_byte};
  const uint8_t mask_bit = masked ? 0x80 : 0x00;
  if (length_form == 127 || (length_form == 0 && length > 0xffff)) {
    out.push_back(mask_bit | 127);
    for (int shift = 56; shift >= 0; shift -= 8)
      out.push_back(static_cast<uint8_t>(length >> shift));
  } else if (length_form == 126 || (length_form == 0 && length > 125)) {
    out.push_back(mask_bit | 126);
    out.push_back(static_cast<uint8_t>(length >> 8));
    out.push_back(static_cast<uint8_t>(length));
  } else {
    out.push_back(static_cast<uint8_t>(mask_bit | length));
  }
  if (masked) out.insert(out.end(), kMaskKey.begin(), kMaskKey.end());
  return out;
}

Bytes encode(const Frame& frame) {
  const uint8_t first = (frame.fin ? 0x80 : 0x00) | frame.rsv | frame.opcode;
  Bytes out = header(first, frame.payload.size(), frame.masked, frame.length_form);
  for (std::size_t i = 0; i < frame.payload.size(); ++i) {
    out.push_back(frame.masked ? static_cast<uint8_t>(frame.payload[i] ^ kMaskKey[i % 4])
                               : frame.payload[i]);
  }
  return out;
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

std::string feed_error(WebSocketFrameTracker& tracker, const Bytes& bytes) {
  auto fed = tracker.feed(bytes);
  return fed ? std::string() : fed.error();
}

std::string client_error(const Bytes& bytes, uint64_t limit = kLimit) {
  WebSocketFrameTracker tracker(true, limit);
  return feed_error(tracker, bytes);
}

std::string server_error(const Bytes& bytes, uint64_t limit = kLimit) {
  WebSocketFrameTracker tracker(false, limit);
  return feed_error(tracker, bytes);
}

bool same_counts(const WebSocketCounts& a, const WebSocketCounts& b) {
  return a.messages == b.messages && a.frames == b.frames && a.payload_bytes == b.payload_bytes &&
         a.control_frames == b.control_frames;
}

// --- Test vectors of RFC 6455 5.7 ---

TEST(WebSocketFrameTracker, RfcExamples) {
  WebSocketFrameTracker server(false, kLimit);
  // A single-frame unmasked text message, a fragmented one, an unmasked ping.
  const Bytes hello = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
  const Bytes fragmented = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
  const Bytes ping = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
  ASSERT_TRUE(server.feed(concat({hello, fragmented, ping})));
  EXPECT_EQ(server.counts().messages, 2u);
  EXPECT_EQ(server.counts().frames, 4u);
  EXPECT_EQ(server.counts().control_frames, 1u);
  EXPECT_EQ(server.counts().payload_bytes, 15u);
  EXPECT_FALSE(server.inside_frame());

  // A single-frame masked text message and a masked pong.
  WebSocketFrameTracker client(true, kLimit);
  const Bytes masked_hello = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
  const Bytes masked_pong = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
  ASSERT_TRUE(client.feed(concat({masked_hello, masked_pong})));
  EXPECT_EQ(client.counts().messages, 1u);
  EXPECT_EQ(client.counts().frames, 2u);
  EXPECT_EQ(client.counts().control_frames, 1u);
  EXPECT_EQ(client.counts().payload_bytes, 10u);

  // 256 bytes and 64 KiB binary messages: the 16-bit and 64-bit length forms.
  WebSocketFrameTracker lengths(false, kLimit);
  Bytes bin256 = {0x82, 0x7e, 0x01, 0x00};
  bin256.resize(4 + 256, 0xab);
  Bytes bin64k = {0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00};
  bin64k.resize(10 + 65536, 0xcd);
  ASSERT_TRUE(lengths.feed(concat({bin256, bin64k})));
  EXPECT_EQ(lengths.counts().messages, 2u);
  EXPECT_EQ(lengths.counts().payload_bytes, 256u + 65536u);
}

// --- Lengths ---

TEST(WebSocketFrameTracker, LengthForms) {
  for (std::size_t size : {0, 1, 125, 126, 127, 65535, 65536, 100000}) {
    WebSocketFrameTracker tracker(true, kLimit);
    Bytes payload(size, 0x5a);
    ASSERT_TRUE(tracker.feed(encode({.opcode = kBinary, .payload = payload, .masked = true})))
        << size;
    EXPECT_EQ(tracker.counts().messages, 1u) << size;
    EXPECT_EQ(tracker.counts().payload_bytes, size) << size;
    EXPECT_FALSE(tracker.inside_frame()) << size;
  }
}

TEST(WebSocketFrameTracker, NonMinimalLengthsAreAccepted) {
  WebSocketFrameTracker tracker(false, kLimit);
  ASSERT_TRUE(tracker.feed(encode({.payload = payload_of("hi"), .length_form = 126})));
  ASSERT_TRUE(tracker.feed(encode({.payload = payload_of("hi"), .length_form = 127})));
  EXPECT_EQ(tracker.counts().messages, 2u);
  EXPECT_EQ(tracker.counts().payload_bytes, 4u);
}

TEST(WebSocketFrameTracker, PartialFrameIsNotCounted) {
  WebSocketFrameTracker tracker(false, kLimit);
  Bytes frame = encode({.opcode = kBinary, .payload = Bytes(300, 1)});
  ASSERT_TRUE(tracker.feed(std::span(frame).first(1)));
  EXPECT_TRUE(tracker.inside_frame());
  ASSERT_TRUE(tracker.feed(std::span(frame).subspan(1, 103)));
  EXPECT_TRUE(tracker.inside_frame());
  EXPECT_EQ(tracker.counts().frames, 0u);
  EXPECT_EQ(tracker.counts().payload_bytes, 100u);
  ASSERT_TRUE(tracker.feed(std::span(frame).subspan(104)));
  EXPECT_FALSE(tracker.inside_frame());
  EXPECT_EQ(tracker.counts().frames, 1u);
  EXPECT_EQ(tracker.counts().payload_bytes, 300u);
}

// --- Masking (RFC 6455 5.1) ---

TEST(WebSocketFrameTracker, MaskingRules) {
  EXPECT_EQ(client_error(encode({.payload = payload_of("x"), .masked = false})),
            "unmasked frame from client");
  EXPECT_EQ(server_error(encode({.payload = payload_of("x"), .masked = true})),
            "masked frame from server");
  EXPECT_EQ(client_error(encode({.payload = payload_of("x"), .masked = true})), "");
  EXPECT_EQ(server_error(encode({.payload = payload_of("x"), .masked = false})), "");
  // Control frames too.
  EXPECT_EQ(client_error(encode({.opcode = kPing, .masked = false})), "unmasked frame from client");
  EXPECT_EQ(server_error(encode({.opcode = kPong, .masked = true})), "masked frame from server");
}

// --- Fragmentation ---

TEST(WebSocketFrameTracker, TextInThreeFramesIsOneMessage) {
  WebSocketFrameTracker tracker(true, kLimit);
  Bytes stream = concat({
      encode({.opcode = kText, .payload = payload_of("Hel"), .fin = false, .masked = true}),
      encode(
          {.opcode = kContinuation, .payload = payload_of("lo, "), .fin = false, .masked = true}),
      encode({.opcode = kContinuation, .payload = payload_of("world"), .masked = true}),
  });
  ASSERT_TRUE(tracker.feed(stream));
  EXPECT_EQ(tracker.counts().messages, 1u);
  EXPECT_EQ(tracker.counts().frames, 3u);
  EXPECT_EQ(tracker.counts().payload_bytes, 12u);
  EXPECT_EQ(tracker.counts().control_frames, 0u);
}

TEST(WebSocketFrameTracker, MessageCountsWhenItsFinFrameArrives) {
  WebSocketFrameTracker tracker(false, kLimit);
  ASSERT_TRUE(tracker.feed(encode({.opcode = kBinary, .payload = Bytes(10), .fin = false})));
  EXPECT_EQ(tracker.counts().messages, 0u);
  ASSERT_TRUE(tracker.feed(encode({.opcode = kContinuation, .payload = {}, .fin = false})));
  EXPECT_EQ(tracker.counts().messages, 0u);
  ASSERT_TRUE(tracker.feed(encode({.opcode = kContinuation, .payload = Bytes(5)})));
  EXPECT_EQ(tracker.counts().messages, 1u);
  EXPECT_EQ(tracker.counts().frames, 3u);
  // And a new message may start after it.
  ASSERT_TRUE(tracker.feed(encode({.opcode = kText, .payload = payload_of("next")})));
  EXPECT_EQ(tracker.counts().messages, 2u);
}

TEST(WebSocketFrameTracker, ControlFramesInsideAFragmentedMessage) {
  WebSocketFrameTracker tracker(false, kLimit);
  Bytes stream = concat({
      encode({.opcode = kText, .payload = payload_of("a"), .fin = false}),
      encode({.opcode = kPing, .payload = payload_of("p")}),
      encode({.opcode = kContinuation, .payload = payload_of("b"), .fin = false}),
      encode({.opcode = kPong, .payload = {}}),
      encode({.opcode = kClose, .payload = close_payload(1001, "bye")}),
      encode({.opcode = kContinuation, .payload = payload_of("c")}),
  });
  // The close frame may arrive inside the message, but no data frame may follow it.
  EXPECT_EQ(feed_error(tracker, stream), "data frame after close");
  EXPECT_EQ(tracker.counts().frames, 5u);
  EXPECT_EQ(tracker.counts().control_frames, 3u);
  EXPECT_EQ(tracker.counts().messages, 0u);
  EXPECT_TRUE(tracker.close_seen());
  EXPECT_EQ(tracker.close_code(), 1001);

  WebSocketFrameTracker clean(false, kLimit);
  Bytes interleaved = concat({
      encode({.opcode = kText, .payload = payload_of("a"), .fin = false}),
      encode({.opcode = kPing, .payload = payload_of("p")}),
      encode({.opcode = kContinuation, .payload = payload_of("b")}),
  });
  ASSERT_TRUE(clean.feed(interleaved));
  EXPECT_EQ(clean.counts().messages, 1u);
  EXPECT_EQ(clean.counts().frames, 3u);
  EXPECT_EQ(clean.counts().control_frames, 1u);
  EXPECT_EQ(clean.counts().payload_bytes, 3u);
}

// --- Control frames ---

TEST(WebSocketFrameTracker, PingPongClose) {
  WebSocketFrameTracker tracker(true, kLimit);
  Bytes stream = concat({
      encode({.opcode = kPing, .payload = Bytes(125, 7), .masked = true}),
      encode({.opcode = kPong, .payload = payload_of("pong"), .masked = true}),
  });
  ASSERT_TRUE(tracker.feed(stream));
  EXPECT_FALSE(tracker.close_seen());
  EXPECT_EQ(tracker.close_code(), std::nullopt);
  ASSERT_TRUE(tracker.feed(
      encode({.opcode = kClose, .payload = close_payload(1000, "done"), .masked = true})));
  EXPECT_TRUE(tracker.close_seen());
  EXPECT_EQ(tracker.close_code(), 1000);  // unmasked from the client's masked bytes
  EXPECT_EQ(tracker.counts().control_frames, 3u);
  EXPECT_EQ(tracker.counts().frames, 3u);
  EXPECT_EQ(tracker.counts().messages, 0u);
  EXPECT_EQ(tracker.counts().payload_bytes, 125u + 4u + 6u);
}

TEST(WebSocketFrameTracker, CloseCodes) {
  for (uint16_t code : {1000, 1001, 1011, 3000, 4999, 0xffff}) {
    WebSocketFrameTracker server(false, kLimit);
    ASSERT_TRUE(server.feed(encode({.opcode = kClose, .payload = close_payload(code)})));
    EXPECT_EQ(server.close_code(), code);
    WebSocketFrameTracker client(true, kLimit);
    ASSERT_TRUE(
        client.feed(encode({.opcode = kClose, .payload = close_payload(code), .masked = true})));
    EXPECT_EQ(client.close_code(), code);
  }
  WebSocketFrameTracker empty(false, kLimit);
  ASSERT_TRUE(empty.feed(encode({.opcode = kClose})));
  EXPECT_TRUE(empty.close_seen());
  EXPECT_EQ(empty.close_code(), std::nullopt);

  // The close code split across feeds, one byte at a time.
  WebSocketFrameTracker split(true, kLimit);
  Bytes close = encode({.opcode = kClose, .payload = close_payload(4321, "x"), .masked = true});
  for (uint8_t byte : close) ASSERT_TRUE(split.feed(std::span(&byte, 1)));
  EXPECT_EQ(split.close_code(), 4321);
}

TEST(WebSocketFrameTracker, CloseSeenOnlyWhenTheCloseFrameIsComplete) {
  WebSocketFrameTracker tracker(false, kLimit);
  Bytes close = encode({.opcode = kClose, .payload = close_payload(1000, "reason")});
  ASSERT_TRUE(tracker.feed(std::span(close).first(close.size() - 1)));
  EXPECT_FALSE(tracker.close_seen());
  ASSERT_TRUE(tracker.feed(std::span(close).last(1)));
  EXPECT_TRUE(tracker.close_seen());
}

// --- Every error ---

TEST(WebSocketFrameTracker, ReservedOpcodes) {
  for (uint8_t opcode : {0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf}) {
    static constexpr char kHex[] = "0123456789abcdef";
    EXPECT_EQ(server_error(encode({.opcode = opcode})),
              std::string("reserved opcode 0x") + kHex[opcode]);
  }
}

TEST(WebSocketFrameTracker, ReservedBits) {
  EXPECT_EQ(server_error(encode({.payload = payload_of("x"), .rsv = 0x20})),
            "reserved bit RSV2 or RSV3 set");
  EXPECT_EQ(server_error(encode({.payload = payload_of("x"), .rsv = 0x10})),
            "reserved bit RSV2 or RSV3 set");
  // RSV1 (permessage-deflate): on the first frame of a message only.
  EXPECT_EQ(server_error(encode({.payload = payload_of("x"), .rsv = 0x40})), "");
  EXPECT_EQ(server_error(concat({encode({.payload = payload_of("x"), .fin = false, .rsv = 0x40}),
                                 encode({.opcode = kContinuation, .payload = payload_of("y")})})),
            "");
  EXPECT_EQ(server_error(concat(
                {encode({.payload = payload_of("x"), .fin = false, .rsv = 0x40}),
                 encode({.opcode = kContinuation, .payload = payload_of("y"), .rsv = 0x40})})),
            "RSV1 set on a continuation frame");
  EXPECT_EQ(server_error(encode({.opcode = kPing, .rsv = 0x40})), "RSV1 set on a control frame");
}

TEST(WebSocketFrameTracker, ControlFrameRules) {
  EXPECT_EQ(server_error(encode({.opcode = kPing, .payload = Bytes(126)})),
            "control frame longer than 125 bytes");
  // Even when the length arrives in a longer form.
  EXPECT_EQ(server_error(encode({.opcode = kPong, .payload = Bytes(5), .length_form = 126})),
            "control frame longer than 125 bytes");
  EXPECT_EQ(server_error(encode({.opcode = kPing, .fin = false})), "fragmented control frame");
  EXPECT_EQ(server_error(encode({.opcode = kClose, .fin = false})), "fragmented control frame");
  EXPECT_EQ(server_error(encode({.opcode = kClose, .payload = Bytes(1)})),
            "close frame with a 1-byte payload");
}

TEST(WebSocketFrameTracker, FragmentationErrors) {
  EXPECT_EQ(server_error(encode({.opcode = kContinuation, .payload = payload_of("x")})),
            "continuation without a started message");
  // A message that ended cannot be continued.
  EXPECT_EQ(server_error(concat({encode({.payload = payload_of("x")}),
                                 encode({.opcode = kContinuation, .payload = payload_of("y")})})),
            "continuation without a started message");
  EXPECT_EQ(server_error(concat({encode({.payload = payload_of("x"), .fin = false}),
                                 encode({.opcode = kBinary, .payload = payload_of("y")})})),
            "new data frame inside a fragmented message");
  EXPECT_EQ(
      server_error(concat({encode({.opcode = kClose}), encode({.payload = payload_of("y")})})),
      "data frame after close");
  // Control frames after a close are not data: a pong answering a ping may still pass.
  EXPECT_EQ(server_error(concat({encode({.opcode = kClose}), encode({.opcode = kPong})})), "");
}

TEST(WebSocketFrameTracker, PayloadLimit) {
  EXPECT_EQ(server_error(header(0x82, 20971520, false), kLimit),
            "frame payload 20971520 exceeds limit 16777216");
  EXPECT_EQ(client_error(encode({.payload = Bytes(101), .masked = true}), 100),
            "frame payload 101 exceeds limit 100");
  EXPECT_EQ(client_error(encode({.payload = Bytes(100), .masked = true}), 100), "");
  // The limit applies to every frame, not to a message: three frames of 100 pass.
  Bytes fragmented = concat({
      encode({.opcode = kBinary, .payload = Bytes(100), .fin = false, .masked = true}),
      encode({.opcode = kContinuation, .payload = Bytes(100), .fin = false, .masked = true}),
      encode({.opcode = kContinuation, .payload = Bytes(100), .masked = true}),
  });
  EXPECT_EQ(client_error(fragmented, 100), "");
  // A limit of zero allows only empty frames.
  EXPECT_EQ(server_error(encode({.opcode = kPing}), 0), "");
  EXPECT_EQ(server_error(encode({.opcode = kPing, .payload = Bytes(1)}), 0),
            "frame payload 1 exceeds limit 0");
}

TEST(WebSocketFrameTracker, HugeLengthIsRejectedBeforeAnyPayload) {
  // Rejected as soon as the length is in, before the mask key and before any payload byte.
  WebSocketFrameTracker tracker(true, kLimit);
  Bytes head = header(0x82, uint64_t{1} << 40, true);
  auto fed = tracker.feed(std::span(head).first(10));
  ASSERT_FALSE(fed);
  EXPECT_EQ(fed.error(), "frame payload 1099511627776 exceeds limit 16777216");
  EXPECT_EQ(tracker.counts().payload_bytes, 0u);
  EXPECT_EQ(tracker.counts().frames, 0u);
}

TEST(WebSocketFrameTracker, TopBitOfA64BitLengthIsAnError) {
  EXPECT_EQ(server_error(header(0x82, uint64_t{1} << 63, false)),
            "64-bit payload length with the most significant bit set");
  // Even with no limit to speak of.
  EXPECT_EQ(server_error(header(0x82, ~uint64_t{0}, false), ~uint64_t{0}),
            "64-bit payload length with the most significant bit set");
}

TEST(WebSocketFrameTracker, ErrorsAreSticky) {
  WebSocketFrameTracker tracker(false, kLimit);
  EXPECT_EQ(feed_error(tracker, encode({.opcode = 0x3})), "reserved opcode 0x3");
  EXPECT_TRUE(tracker.failed());
  EXPECT_EQ(feed_error(tracker, encode({.payload = payload_of("fine")})), "reserved opcode 0x3");
  EXPECT_EQ(feed_error(tracker, {}), "reserved opcode 0x3");
  EXPECT_EQ(tracker.counts().frames, 0u);
}

TEST(WebSocketFrameTracker, ErrorAfterValidFrames) {
  WebSocketFrameTracker tracker(true, kLimit);
  Bytes stream = concat({encode({.payload = payload_of("ok"), .masked = true}),
                         encode({.opcode = kPing, .masked = true}),
                         encode({.payload = payload_of("bad"), .masked = false})});
  EXPECT_EQ(feed_error(tracker, stream), "unmasked frame from client");
  EXPECT_EQ(tracker.counts().frames, 2u);
  EXPECT_EQ(tracker.counts().messages, 1u);
}

// --- Splits ---

Bytes mixed_stream(bool masked) {
  return concat({
      encode({.opcode = kText, .payload = payload_of("Hel"), .fin = false, .masked = masked}),
      encode({.opcode = kPing, .payload = payload_of("are you there"), .masked = masked}),
      encode({.opcode = kContinuation, .payload = payload_of("lo"), .masked = masked}),
      encode({.opcode = kBinary, .payload = Bytes(300, 9), .masked = masked, .rsv = 0x40}),
      encode({.opcode = kBinary, .payload = Bytes(70000, 3), .masked = masked}),
      encode({.opcode = kBinary, .payload = {}, .masked = masked}),
      encode({.opcode = kPong, .payload = {}, .masked = masked}),
      encode({.opcode = kClose, .payload = close_payload(1000, "bye"), .masked = masked}),
  });
}

TEST(WebSocketFrameTracker, ByteByByteEqualsAllAtOnce) {
  for (bool from_client : {true, false}) {
    const Bytes stream = mixed_stream(from_client);
    WebSocketFrameTracker whole(from_client, kLimit);
    ASSERT_TRUE(whole.feed(stream));
    EXPECT_EQ(whole.counts().messages, 4u);
    EXPECT_EQ(whole.counts().frames, 8u);
    EXPECT_EQ(whole.counts().control_frames, 3u);
    EXPECT_EQ(whole.counts().payload_bytes, 3u + 13u + 2u + 300u + 70000u + 5u);
    EXPECT_EQ(whole.close_code(), 1000);

    WebSocketFrameTracker bytewise(from_client, kLimit);
    for (uint8_t byte : stream) ASSERT_TRUE(bytewise.feed(std::span(&byte, 1)));
    EXPECT_TRUE(same_counts(bytewise.counts(), whole.counts()));
    EXPECT_EQ(bytewise.close_code(), 1000);
    EXPECT_TRUE(bytewise.close_seen());

    std::mt19937 random(from_client ? 1 : 2);
    for (int round = 0; round < 20; ++round) {
      WebSocketFrameTracker chunked(from_client, kLimit);
      std::size_t offset = 0;
      while (offset < stream.size()) {
        std::size_t size = std::uniform_int_distribution<std::size_t>(0, 40)(random);
        size = std::min(size, stream.size() - offset);
        ASSERT_TRUE(chunked.feed(std::span(stream).subspan(offset, size)));
        offset += size;
      }
      EXPECT_TRUE(same_counts(chunked.counts(), whole.counts()));
      EXPECT_EQ(chunked.close_code(), 1000);
    }
  }
}

TEST(WebSocketFrameTracker, ErrorsAreTheSameByteByByte) {
  const Bytes bad_streams[] = {
      encode({.opcode = 0x7}),
      encode({.opcode = kPing, .payload = Bytes(126)}),
      header(0x82, uint64_t{1} << 63, false),
      header(0x82, 20971520, false),
      concat({encode({.payload = payload_of("x"), .fin = false}), encode({.payload = Bytes(3)})}),
  };
  for (const Bytes& stream : bad_streams) {
    const std::string expected = server_error(stream);
    ASSERT_FALSE(expected.empty());
    WebSocketFrameTracker bytewise(false, kLimit);
    std::string error;
    for (uint8_t byte : stream) {
      auto fed = bytewise.feed(std::span(&byte, 1));
      if (!fed) {
        error = fed.error();
        break;
      }
    }
    EXPECT_EQ(error, expected);
  }
}

// Whatever a stream holds, where it is split never changes what the tracker says about it.
TEST(WebSocketFrameTracker, SplitsNeverChangeTheOutcome) {
  std::mt19937 random(7);
  for (int round = 0; round < 1000; ++round) {
    const bool from_client = round % 2 == 0;
    Bytes stream = concat({
        encode(
            {.opcode = kText, .payload = payload_of("Hel"), .fin = false, .masked = from_client}),
        encode({.opcode = kPing, .payload = payload_of("ping"), .masked = from_client}),
        encode({.opcode = kContinuation, .payload = payload_of("lo"), .masked = from_client}),
        encode({.opcode = kBinary, .payload = Bytes(200, 9), .masked = from_client}),
        encode({.opcode = kClose, .payload = close_payload(1000), .masked = from_client}),
    });
    const int mutations = std::uniform_int_distribution<int>(0, 3)(random);
    for (int m = 0; m < mutations; ++m) {
      stream[std::uniform_int_distribution<std::size_t>(0, stream.size() - 1)(random)] =
          static_cast<uint8_t>(random());
    }
    WebSocketFrameTracker whole(from_client, 1000);
    const std::string whole_error = feed_error(whole, stream);

    WebSocketFrameTracker chunked(from_client, 1000);
    std::string chunked_error;
    for (std::size_t offset = 0; offset < stream.size() && chunked_error.empty();) {
      std::size_t size = std::uniform_int_distribution<std::size_t>(1, 16)(random);
      size = std::min(size, stream.size() - offset);
      auto fed = chunked.feed(std::span(stream).subspan(offset, size));
      if (!fed) chunked_error = fed.error();
      offset += size;
    }
    EXPECT_EQ(chunked_error, whole_error);
    EXPECT_TRUE(same_counts(chunked.counts(), whole.counts()));
    EXPECT_EQ(chunked.close_code(), whole.close_code());
    EXPECT_EQ(chunked.close_seen(), whole.close_seen());
  }
}

// Random bytes never crash it, and never let it count payload past a rejected header.
TEST(WebSocketFrameTracker, RandomInputIsHandled) {
  std::mt19937 random(42);
  for (int round = 0; round < 2000; ++round) {
    Bytes junk(std::uniform_int_distribution<std::size_t>(0, 64)(random));
    for (uint8_t& byte : junk) byte = static_cast<uint8_t>(random());
    WebSocketFrameTracker tracker(round % 2 == 0, 1000);
    auto fed = tracker.feed(junk);
    EXPECT_LE(tracker.counts().payload_bytes, junk.size());
    EXPECT_EQ(!fed, tracker.failed());
  }
}

// --- The relay, over loopback sockets ---

struct SocketPair {
  tcp::socket near;
  tcp::socket far;
};

SocketPair connected_pair(asio::io_context& context) {
  tcp::acceptor acceptor(context, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  tcp::socket near(context);
  near.connect(acceptor.local_endpoint());
  tcp::socket far = acceptor.accept();
  return {std::move(near), std::move(far)};
}

// The relay on its own thread; the endpoints talk to it with blocking calls.
template <class Stream>
struct RelayRun {
  asio::io_context& context;
  std::optional<WebSocketRelayResult> result;
  std::vector<char> buffer = std::vector<char>(8192);
  Deadline deadline{context.get_executor()};
  std::thread thread;

  RelayRun(asio::io_context& io, Stream& client, Stream& server, const Bytes& client_pending,
           const Bytes& server_pending, std::chrono::milliseconds idle, uint64_t limit)
      : context(io) {
    asio::co_spawn(context,
                   relay_websocket(client, server, client_pending, server_pending, buffer, deadline,
                                   idle, limit),
                   [this](std::exception_ptr error, WebSocketRelayResult relayed) {
                     if (!error) result = std::move(relayed);
                   });
    thread = std::thread([this] { context.run(); });
  }
  ~RelayRun() {
    if (thread.joinable()) thread.join();
  }
  const WebSocketRelayResult& finish() {
    thread.join();
    EXPECT_TRUE(result.has_value());
    static const WebSocketRelayResult none;
    return result ? *result : none;
  }
};

Bytes read_exactly(tcp::socket& socket, std::size_t size) {
  Bytes bytes(size);
  error_code ec;
  std::size_t n = asio::read(socket, asio::buffer(bytes), ec);
  EXPECT_FALSE(ec) << ec.message();
  bytes.resize(n);
  return bytes;
}

bool reads_end_of_stream(tcp::socket& socket) {
  uint8_t byte;
  error_code ec;
  socket.read_some(asio::buffer(&byte, 1), ec);
  return ec == asio::error::eof;
}

TEST(WebSocketRelay, RelaysFramesBothWaysOverTcp) {
  asio::io_context context;
  auto [client_app, proxy_client] = connected_pair(context);
  auto [proxy_server, server_app] = connected_pair(context);

  // Bytes the HTTP layer read past the 101 heads, on both sides.
  const Bytes client_pending = encode({.payload = payload_of("early"), .masked = true});
  const Bytes server_pending = encode({.opcode = kBinary, .payload = Bytes(200, 1)});
  RelayRun<tcp::socket> run(context, proxy_client, proxy_server, client_pending, server_pending,
                            10s, kLimit);

  const Bytes up = concat({
      encode({.opcode = kText, .payload = payload_of("Hel"), .fin = false, .masked = true}),
      encode({.opcode = kPing, .payload = payload_of("p"), .masked = true}),
      encode({.opcode = kContinuation, .payload = payload_of("lo"), .masked = true}),
      encode({.opcode = kBinary, .payload = Bytes(300, 7), .masked = true}),
  });
  const Bytes down = concat({
      encode({.opcode = kPong, .payload = payload_of("p")}),
      encode({.opcode = kBinary, .payload = Bytes(200000, 5)}),
  });
  std::thread server_writer([&] { asio::write(server_app, asio::buffer(down)); });
  asio::write(client_app, asio::buffer(up));
  EXPECT_EQ(read_exactly(server_app, client_pending.size() + up.size()),
            concat({client_pending, up}));
  EXPECT_EQ(read_exactly(client_app, server_pending.size() + down.size()),
            concat({server_pending, down}));
  server_writer.join();

  // The close handshake, then the server closes first and the client follows.
  const Bytes client_close =
      encode({.opcode = kClose, .payload = close_payload(1000), .masked = true});
  const Bytes server_close = encode({.opcode = kClose, .payload = close_payload(1000, "ok")});
  asio::write(client_app, asio::buffer(client_close));
  EXPECT_EQ(read_exactly(server_app, client_close.size()), client_close);
  asio::write(server_app, asio::buffer(server_close));
  server_app.shutdown(tcp::socket::shutdown_send);
  EXPECT_EQ(read_exactly(client_app, server_close.size()), server_close);
  EXPECT_TRUE(reads_end_of_stream(client_app));  // the half-close was passed on
  client_app.shutdown(tcp::socket::shutdown_send);
  EXPECT_TRUE(reads_end_of_stream(server_app));

  const WebSocketRelayResult& result = run.finish();
  EXPECT_EQ(result.error, "");
  EXPECT_EQ(result.up.messages, 3u);
  EXPECT_EQ(result.up.frames, 6u);
  EXPECT_EQ(result.up.control_frames, 2u);
  EXPECT_EQ(result.up.payload_bytes, 5u + 3u + 1u + 2u + 300u + 2u);
  EXPECT_EQ(result.down.messages, 2u);
  EXPECT_EQ(result.down.frames, 4u);
  EXPECT_EQ(result.down.control_frames, 2u);
  EXPECT_EQ(result.down.payload_bytes, 200u + 1u + 200000u + 4u);
  EXPECT_TRUE(result.close_seen_up);
  EXPECT_TRUE(result.close_seen_down);
  EXPECT_EQ(result.close_code_up, 1000);
  EXPECT_EQ(result.close_code_down, 1000);
}

TEST(WebSocketRelay, ViolationStopsBothDirectionsAndIsNotForwarded) {
  asio::io_context context;
  auto [client_app, proxy_client] = connected_pair(context);
  auto [proxy_server, server_app] = connected_pair(context);
  RelayRun<tcp::socket> run(context, proxy_client, proxy_server, {}, {}, 10s, kLimit);

  const Bytes good = encode({.payload = payload_of("fine"), .masked = true});
  asio::write(client_app, asio::buffer(good));
  EXPECT_EQ(read_exactly(server_app, good.size()), good);
  asio::write(client_app, asio::buffer(encode({.opcode = 0x3, .masked = true})));

  const WebSocketRelayResult& result = run.finish();  // ends without the server's help
  EXPECT_EQ(result.error, "client side: reserved opcode 0x3");
  EXPECT_EQ(result.up.messages, 1u);
  proxy_server.close();
  EXPECT_TRUE(reads_end_of_stream(server_app));  // nothing of the bad frame got through
}

TEST(WebSocketRelay, OversizedFrameFromTheServerIsRefused) {
  asio::io_context context;
  auto [client_app, proxy_client] = connected_pair(context);
  auto [proxy_server, server_app] = connected_pair(context);
  RelayRun<tcp::socket> run(context, proxy_client, proxy_server, {}, {}, 10s, 1000);
  asio::write(server_app, asio::buffer(header(0x82, 1001, false)));
  const WebSocketRelayResult& result = run.finish();
  EXPECT_EQ(result.error, "server side: frame payload 1001 exceeds limit 1000");
  proxy_client.close();
  EXPECT_TRUE(reads_end_of_stream(client_app));
}

TEST(WebSocketRelay, ViolationInPendingBytes) {
  asio::io_context context;
  auto [client_app, proxy_client] = connected_pair(context);
  auto [proxy_server, server_app] = connected_pair(context);
  const Bytes server_pending = encode({.payload = payload_of("x"), .masked = true});
  RelayRun<tcp::socket> run(context, proxy_client, proxy_server, {}, server_pending, 10s, kLimit);
  const WebSocketRelayResult& result = run.finish();
  EXPECT_EQ(result.error, "server side: masked frame from server");
}

TEST(WebSocketRelay, EndInsideAFrameIsReported) {
  asio::io_context context;
  auto [client_app, proxy_client] = connected_pair(context);
  auto [proxy_server, server_app] = connected_pair(context);
  RelayRun<tcp::socket> run(context, proxy_client, proxy_server, {}, {}, 10s, kLimit);
  Bytes frame = encode({.payload = payload_of("truncated"), .masked = true});
  frame.resize(frame.size() - 3);
  asio::write(client_app, asio::buffer(frame));
  client_app.shutdown(tcp::socket::shutdown_send);
  EXPECT_EQ(read_exactly(server_app, frame.size()), frame);  // forwarded as it came
  EXPECT_TRUE(reads_end_of_stream(server_app));
  server_app.shutdown(tcp::socket::shutdown_send);
  EXPECT_TRUE(reads_end_of_stream(client_app));
  const WebSocketRelayResult& result = run.finish();
  EXPECT_EQ(result.error, "client side ended inside a frame");
}

awaitable<void> relay_until_idle(tcp::socket& client, tcp::socket& server, Deadline& deadline,
                                 std::span<char> buffer, WebSocketRelayResult& result) {
  auto relay = relay_websocket(client, server, {}, {}, buffer, deadline, 50ms, kLimit);
  result = co_await std::move(relay);
}

TEST(WebSocketRelay, IdleTimeout) {
  using namespace asio::experimental::awaitable_operators;
  asio::io_context context;
  auto [client_app, proxy_client] = connected_pair(context);
  auto [proxy_server, server_app] = connected_pair(context);
  Deadline deadline(context.get_executor());
  std::vector<char> buffer(1024);
  WebSocketRelayResult result;
  // As the session does: the watch cancels the sockets' I/O when the deadline passes.
  std::function<void()> on_expire = [&] {
    error_code ignored;
    proxy_client.cancel(ignored);
    proxy_server.cancel(ignored);
  };
  auto relay = relay_until_idle(proxy_client, proxy_server, deadline, buffer, result);
  auto watch = deadline.watch(on_expire);
  asio::co_spawn(context, std::move(relay) || std::move(watch), asio::detached);
  context.run();
  EXPECT_EQ(result.error, "idle timeout");
}

// --- The relay over TLS, where there is no half-close ---

struct TlsFixture {
  asio::ssl::context server_tls{asio::ssl::context::tls_server};
  asio::ssl::context client_tls{asio::ssl::context::tls_client};

  TlsFixture() {
    // A throwaway self-signed certificate; the test clients do not verify it.
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* certificate = X509_new();
    X509_set_version(certificate, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(certificate), 1);
    X509_gmtime_adj(X509_getm_notBefore(certificate), -3600);
    X509_gmtime_adj(X509_getm_notAfter(certificate), 3600);
    X509_NAME* name = X509_get_subject_name(certificate);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
    X509_set_issuer_name(certificate, name);
    X509_set_pubkey(certificate, key);
    X509_sign(certificate, key, EVP_sha256());
    SSL_CTX_use_certificate(server_tls.native_handle(), certificate);
    SSL_CTX_use_PrivateKey(server_tls.native_handle(), key);
    X509_free(certificate);
    EVP_PKEY_free(key);
    client_tls.set_verify_mode(asio::ssl::verify_none);
  }
};

struct TlsPeers {
  TlsStream client_app, proxy_client, proxy_server, server_app;
};

awaitable<void> handshake_all(TlsPeers& peers) {
  using namespace asio::experimental::awaitable_operators;
  auto a = peers.client_app.async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
  auto b = peers.proxy_client.async_handshake(asio::ssl::stream_base::server, asio::use_awaitable);
  auto c = peers.proxy_server.async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
  auto d = peers.server_app.async_handshake(asio::ssl::stream_base::server, asio::use_awaitable);
  auto all = std::move(a) && std::move(b) && std::move(c) && std::move(d);
  co_await std::move(all);
}

// The relay, then what a session does after it: close the proxy's connections.
awaitable<void> relay_then_close(TlsPeers& peers, Deadline& deadline, std::span<char> buffer,
                                 WebSocketRelayResult& result) {
  auto relay = relay_websocket(peers.proxy_client, peers.proxy_server, {}, {}, buffer, deadline,
                               10s, kLimit);
  result = co_await std::move(relay);
  error_code ignored;
  peers.proxy_client.lowest_layer().close(ignored);
  peers.proxy_server.lowest_layer().close(ignored);
}

awaitable<Bytes> read_tls(TlsStream& stream, std::size_t size) {
  Bytes bytes(size);
  asio::mutable_buffer into(bytes.data(), bytes.size());
  auto [ec, n] = co_await asio::async_read(stream, into, use_nothrow);
  EXPECT_FALSE(ec) << ec.message();
  bytes.resize(n);
  co_return bytes;
}

awaitable<bool> tls_ends(TlsStream& stream) {
  uint8_t byte;
  asio::mutable_buffer into(&byte, 1);
  auto [ec, n] = co_await stream.async_read_some(into, use_nothrow);
  // A reset counts too: a TCP close with unread bytes (a TLS session ticket) turns into one.
  co_return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ||
      ec == asio::error::connection_reset;
}

awaitable<void> write_tls(TlsStream& stream, const Bytes& bytes) {
  asio::const_buffer out(bytes.data(), bytes.size());
  auto [ec, n] = co_await asio::async_write(stream, out, use_nothrow);
  EXPECT_FALSE(ec) << ec.message();
}

awaitable<void> tls_client_script(TlsPeers& peers, bool& ended) {
  const Bytes hello = encode({.payload = payload_of("Hello"), .masked = true});
  const Bytes close = encode({.opcode = kClose, .payload = close_payload(1000), .masked = true});
  const Bytes reply = encode({.payload = payload_of("Hi")});
  const Bytes close_reply = encode({.opcode = kClose, .payload = close_payload(1000)});
  auto write_hello = write_tls(peers.client_app, hello);
  co_await std::move(write_hello);
  auto read_reply = read_tls(peers.client_app, reply.size());
  Bytes got_reply = co_await std::move(read_reply);
  EXPECT_EQ(got_reply, reply);
  auto write_close = write_tls(peers.client_app, close);
  co_await std::move(write_close);
  auto read_close = read_tls(peers.client_app, close_reply.size());
  Bytes got_close = co_await std::move(read_close);
  EXPECT_EQ(got_close, close_reply);
  auto end = tls_ends(peers.client_app);
  ended = co_await std::move(end);
}

awaitable<void> tls_server_script(TlsPeers& peers, bool& ended) {
  const Bytes hello = encode({.payload = payload_of("Hello"), .masked = true});
  const Bytes close = encode({.opcode = kClose, .payload = close_payload(1000), .masked = true});
  const Bytes reply = encode({.payload = payload_of("Hi")});
  const Bytes close_reply = encode({.opcode = kClose, .payload = close_payload(1000)});
  auto read_hello = read_tls(peers.server_app, hello.size());
  Bytes got_hello = co_await std::move(read_hello);
  EXPECT_EQ(got_hello, hello);
  auto write_reply = write_tls(peers.server_app, reply);
  co_await std::move(write_reply);
  auto read_close = read_tls(peers.server_app, close.size());
  Bytes got_close = co_await std::move(read_close);
  EXPECT_EQ(got_close, close);
  // Answers the close and then waits, as a server that leaves the TCP close to its peer.
  auto write_close = write_tls(peers.server_app, close_reply);
  co_await std::move(write_close);
  auto end = tls_ends(peers.server_app);
  ended = co_await std::move(end);
}

awaitable<void> tls_close_handshake(TlsPeers& peers, Deadline& deadline, std::span<char> buffer,
                                    WebSocketRelayResult& result, bool& client_ended,
                                    bool& server_ended) {
  using namespace asio::experimental::awaitable_operators;
  co_await handshake_all(peers);
  auto relay = relay_then_close(peers, deadline, buffer, result);
  auto client = tls_client_script(peers, client_ended);
  auto server = tls_server_script(peers, server_ended);
  auto all = std::move(relay) && std::move(client) && std::move(server);
  co_await std::move(all);
}

TEST(WebSocketRelay, TlsStopsBothOnceTheCloseHandshakeIsDone) {
  TlsFixture tls;
  asio::io_context context;
  auto [client_near, client_far] = connected_pair(context);
  auto [server_near, server_far] = connected_pair(context);
  TlsPeers peers{TlsStream(std::move(client_near), tls.client_tls),
                 TlsStream(std::move(client_far), tls.server_tls),
                 TlsStream(std::move(server_near), tls.client_tls),
                 TlsStream(std::move(server_far), tls.server_tls)};
  Deadline deadline(context.get_executor());
  std::vector<char> buffer(4096);
  WebSocketRelayResult result;
  bool client_ended = false;
  bool server_ended = false;
  asio::co_spawn(context,
                 tls_close_handshake(peers, deadline, buffer, result, client_ended, server_ended),
                 [](std::exception_ptr error) { EXPECT_FALSE(error); });
  context.run();
  EXPECT_EQ(result.error, "");
  EXPECT_TRUE(result.close_seen_up);
  EXPECT_TRUE(result.close_seen_down);
  EXPECT_EQ(result.up.messages, 1u);
  EXPECT_EQ(result.up.frames, 2u);
  EXPECT_EQ(result.down.messages, 1u);
  EXPECT_EQ(result.down.control_frames, 1u);
  EXPECT_TRUE(client_ended);
  EXPECT_TRUE(server_ended);
}

awaitable<void> tls_client_leaves(TlsPeers& peers, Deadline& deadline, std::span<char> buffer,
                                  WebSocketRelayResult& result, bool& server_ended) {
  using namespace asio::experimental::awaitable_operators;
  co_await handshake_all(peers);
  auto relay = relay_then_close(peers, deadline, buffer, result);
  auto server = tls_ends(peers.server_app);
  // The client ends its connection without a close frame or close_notify.
  error_code ignored;
  peers.client_app.lowest_layer().shutdown(tcp::socket::shutdown_send, ignored);
  auto both = std::move(relay) && std::move(server);
  server_ended = co_await std::move(both);
}

TEST(WebSocketRelay, TlsReaderEndStopsBoth) {
  TlsFixture tls;
  asio::io_context context;
  auto [client_near, client_far] = connected_pair(context);
  auto [server_near, server_far] = connected_pair(context);
  TlsPeers peers{TlsStream(std::move(client_near), tls.client_tls),
                 TlsStream(std::move(client_far), tls.server_tls),
                 TlsStream(std::move(server_near), tls.client_tls),
                 TlsStream(std::move(server_far), tls.server_tls)};
  Deadline deadline(context.get_executor());
  std::vector<char> buffer(4096);
  WebSocketRelayResult result;
  bool server_ended = false;
  asio::co_spawn(context, tls_client_leaves(peers, deadline, buffer, result, server_ended),
                 [](std::exception_ptr error) { EXPECT_FALSE(error); });
  context.run();
  EXPECT_EQ(result.error, "");
  EXPECT_FALSE(result.close_seen_up);
  EXPECT_TRUE(server_ended);
}

}  // namespace
}  // namespace tokgate::proxy
