#include "proxy/websocket_relay.hpp"

#include <algorithm>
#include <utility>

namespace tokgate::proxy {

namespace {

// RFC 6455 5.2.
constexpr uint8_t kFin = 0x80;
constexpr uint8_t kRsv1 = 0x40;
constexpr uint8_t kRsv2 = 0x20;
constexpr uint8_t kRsv3 = 0x10;
constexpr uint8_t kOpcodeMask = 0x0f;
constexpr uint8_t kMasked = 0x80;
constexpr uint8_t kLengthMask = 0x7f;
constexpr uint8_t kLength16 = 126;
constexpr uint8_t kLength64 = 127;
constexpr uint64_t kMaxControlPayload = 125;
constexpr std::size_t kMaskKeySize = 4;

// RFC 6455 5.2 and 11.8.
constexpr uint8_t kContinuation = 0x0;
constexpr uint8_t kText = 0x1;
constexpr uint8_t kBinary = 0x2;
constexpr uint8_t kClose = 0x8;
constexpr uint8_t kPing = 0x9;
constexpr uint8_t kPong = 0xa;

bool is_control(uint8_t opcode) {
  return (opcode & 0x08) != 0;
}

bool is_known(uint8_t opcode) {
  switch (opcode) {
    case kContinuation:
    case kText:
    case kBinary:
    case kClose:
    case kPing:
    case kPong:
      return true;
    default:
      return false;
  }
}

}  // namespace

WebSocketFrameTracker::WebSocketFrameTracker(bool from_client, uint64_t max_frame_payload)
    : from_client_(from_client), max_frame_payload_(max_frame_payload) {}

std::expected<void, std::string> WebSocketFrameTracker::fail(std::string message) {
  error_ = std::move(message);
  return std::unexpected(error_);
}

std::expected<void, std::string> WebSocketFrameTracker::feed(std::span<const uint8_t> bytes) {
  if (!error_.empty()) return std::unexpected(error_);
  std::size_t i = 0;
  while (i < bytes.size()) {
    if (in_payload_) {
      // Payload passes uncopied; only a close frame's first two bytes (its code) are kept.
      const uint64_t take = std::min<uint64_t>(payload_remaining_, bytes.size() - i);
      if (opcode_ == kClose) {
        for (uint64_t k = 0; k < take; ++k) {
          const uint64_t offset = payload_length_ - payload_remaining_ + k;
          if (offset >= close_code_bytes_.size()) break;
          uint8_t byte = bytes[i + k];
          if (from_client_) byte ^= header_[header_needed_ - kMaskKeySize + offset];
          close_code_bytes_[offset] = byte;
        }
      }
      counts_.payload_bytes += take;
      if (is_control(opcode_)) counts_.control_payload_bytes += take;
      payload_remaining_ -= take;
      i += take;
      if (payload_remaining_ == 0) finish_frame();
      continue;
    }
    header_[header_size_++] = bytes[i++];
    if (header_size_ == 2) {
      if (auto checked = check_first_two_bytes(); !checked) return checked;
    }
    if (header_size_ == length_end_) {
      if (auto checked = check_payload_length(); !checked) return checked;
    }
    if (header_size_ == header_needed_) start_payload();
  }
  return {};
}

std::expected<void, std::string> WebSocketFrameTracker::check_first_two_bytes() {
  const uint8_t first = header_[0];
  const uint8_t second = header_[1];
  fin_ = (first & kFin) != 0;
  opcode_ = first & kOpcodeMask;
  const bool rsv1 = (first & kRsv1) != 0;
  const bool masked = (second & kMasked) != 0;
  const uint8_t length7 = second & kLengthMask;

  if ((first & (kRsv2 | kRsv3)) != 0) return fail("reserved bit RSV2 or RSV3 set");
  if (!is_known(opcode_)) {
    static constexpr char kHex[] = "0123456789abcdef";
    return fail(std::string("reserved opcode 0x") + kHex[opcode_]);
  }
  if (is_control(opcode_)) {
    if (!fin_) return fail("fragmented control frame");
    if (length7 > kMaxControlPayload) return fail("control frame longer than 125 bytes");
    if (rsv1) return fail("RSV1 set on a control frame");
    if (opcode_ == kClose && length7 == 1) return fail("close frame with a 1-byte payload");
  } else {
    if (close_seen_) return fail("data frame after close");
    if (opcode_ == kContinuation) {
      if (!in_message_) return fail("continuation without a started message");
      if (rsv1) return fail("RSV1 set on a continuation frame");
    } else if (in_message_) {
      return fail("new data frame inside a fragmented message");
    }
  }
  if (from_client_ && !masked) return fail("unmasked frame from client");
  if (!from_client_ && masked) return fail("masked frame from server");

  length_end_ = length7 == kLength16 ? 4 : length7 == kLength64 ? 10 : 2;
  header_needed_ = length_end_ + (masked ? kMaskKeySize : 0);
  payload_length_ = length7;
  return {};
}

std::expected<void, std::string> WebSocketFrameTracker::check_payload_length() {
  if (length_end_ > 2) {
    payload_length_ = 0;
    for (std::size_t k = 2; k < length_end_; ++k)
      payload_length_ = payload_length_ << 8 | header_[k];
    if (length_end_ == 10 && (header_[2] & 0x80) != 0) {
      return fail("64-bit payload length with the most significant bit set");
    }
  }
  // Refused from the header alone: not one byte of an oversized payload is forwarded.
  if (payload_length_ > max_frame_payload_) {
    limit_exceeded_ = true;
    return fail("frame payload " + std::to_string(payload_length_) + " exceeds limit " +
                std::to_string(max_frame_payload_));
  }
  return {};
}

void WebSocketFrameTracker::start_payload() {
  payload_remaining_ = payload_length_;
  if (payload_remaining_ > 0) {
    in_payload_ = true;
  } else {
    finish_frame();
  }
}

void WebSocketFrameTracker::finish_frame() {
  ++counts_.frames;
  if (is_control(opcode_)) {
    ++counts_.control_frames;
    if (opcode_ == kClose) {
      close_seen_ = true;
      if (payload_length_ >= 2) {
        close_code_ = static_cast<uint16_t>(close_code_bytes_[0] << 8 | close_code_bytes_[1]);
      }
    }
  } else if (fin_) {
    ++counts_.messages;
    in_message_ = false;
  } else {
    in_message_ = true;
  }
  header_size_ = 0;
  length_end_ = 2;
  header_needed_ = 2;
  in_payload_ = false;
}

std::string websocket_close_frame(uint16_t code, std::string_view reason) {
  reason = reason.substr(0, 123);  // a control frame's payload is at most 125 bytes
  std::string frame;
  frame.push_back(static_cast<char>(0x88));  // FIN, opcode close
  frame.push_back(static_cast<char>(2 + reason.size()));
  frame.push_back(static_cast<char>(code >> 8));
  frame.push_back(static_cast<char>(code & 0xff));
  frame.append(reason);
  return frame;
}

}  // namespace tokgate::proxy
