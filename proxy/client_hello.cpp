#include "proxy/client_hello.hpp"

#include <bitset>

namespace tokgate::proxy {
namespace {

// RFC 8446 5.1 and 4; RFC 6066 3; RFC 7301 3.1.
constexpr uint8_t content_type_handshake = 22;
constexpr uint8_t handshake_type_client_hello = 1;
constexpr std::size_t record_header_size = 5;
constexpr std::size_t handshake_header_size = 4;
constexpr std::size_t max_record_fragment = 1 << 14;

constexpr uint16_t ext_server_name = 0;
constexpr uint16_t ext_supported_groups = 10;
constexpr uint16_t ext_ec_point_formats = 11;
constexpr uint16_t ext_signature_algorithms = 13;
constexpr uint16_t ext_alpn = 16;
constexpr uint16_t ext_pre_shared_key = 41;
constexpr uint16_t ext_supported_versions = 43;
constexpr uint8_t server_name_type_host_name = 0;

// Reads big-endian integers and length-prefixed vectors from a span. Every read checks the
// remaining size first and, on failure, returns false with nothing consumed.
class Reader {
 public:
  Reader() = default;
  explicit Reader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  bool empty() const { return bytes_.empty(); }
  std::size_t size() const { return bytes_.size(); }

  bool read_bytes(std::size_t count, std::span<const uint8_t>& out) {
    if (count > bytes_.size()) return false;
    out = bytes_.first(count);
    bytes_ = bytes_.subspan(count);
    return true;
  }

  // An unsigned big-endian integer of `size` bytes (1 to 3).
  bool read_uint(std::size_t size, uint32_t& out) {
    std::span<const uint8_t> raw;
    if (!read_bytes(size, raw)) return false;
    out = 0;
    for (uint8_t byte : raw) out = (out << 8) | byte;
    return true;
  }

  bool read_u8(uint8_t& out) { return read_narrow(1, out); }
  bool read_u16(uint16_t& out) { return read_narrow(2, out); }

  // A vector whose length is given by a `length_size`-byte prefix.
  bool read_vector(std::size_t length_size, Reader& out) {
    Reader saved = *this;
    uint32_t length = 0;
    std::span<const uint8_t> body;
    if (!read_uint(length_size, length) || !read_bytes(length, body)) {
      *this = saved;
      return false;
    }
    out = Reader(body);
    return true;
  }

  // A vector that must be non-empty, with a length a multiple of `element_size`.
  bool read_list(std::size_t length_size, std::size_t element_size, Reader& out) {
    return read_vector(length_size, out) && !out.empty() && out.size() % element_size == 0;
  }

 private:
  template <typename T>
  bool read_narrow(std::size_t size, T& out) {
    uint32_t value = 0;
    if (!read_uint(size, value)) return false;
    out = static_cast<T>(value);
    return true;
  }

  std::span<const uint8_t> bytes_;
};

std::string as_string(std::span<const uint8_t> bytes) {
  return {bytes.begin(), bytes.end()};
}

// A DNS name in ASCII: labels of 1 to 63 letters, digits, '-' or '_' ('_' is not valid in host
// names but real ones carry it), 253 characters at most, plus at most one trailing dot.
bool is_valid_host_name(std::string_view name) {
  if (name.ends_with('.')) name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return false;
  std::size_t label_size = 0;
  for (char c : name) {
    if (c == '.') {
      if (label_size == 0) return false;
      label_size = 0;
      continue;
    }
    bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_';
    if (!allowed || ++label_size > 63) return false;
  }
  return label_size > 0;
}

// RFC 6066 left room for other name types, but none was ever defined and their encoding is
// unspecified; like OpenSSL we accept only host_name, and exactly one of it.
bool parse_server_name(Reader data, ClientHello& hello) {
  Reader list;
  uint8_t name_type = 0;
  Reader name;
  std::span<const uint8_t> raw;
  if (!data.read_vector(2, list) || !data.empty()) return false;
  if (!list.read_u8(name_type) || name_type != server_name_type_host_name) return false;
  if (!list.read_vector(2, name) || !list.empty()) return false;
  name.read_bytes(name.size(), raw);
  std::string host = as_string(raw);
  if (!is_valid_host_name(host)) return false;
  hello.sni = std::move(host);
  return true;
}

bool parse_alpn(Reader data, ClientHello& hello) {
  Reader list;
  if (!data.read_vector(2, list) || !data.empty() || list.empty()) return false;
  while (!list.empty()) {
    uint8_t length = 0;
    std::span<const uint8_t> raw;
    if (!list.read_u8(length) || length == 0 || !list.read_bytes(length, raw)) return false;
    hello.alpn.push_back(as_string(raw));
  }
  return true;
}

// A non-empty list of 16-bit values with a `length_size`-byte length prefix.
bool parse_u16_list(Reader data, std::size_t length_size, std::vector<uint16_t>& out) {
  Reader list;
  if (!data.read_list(length_size, 2, list) || !data.empty()) return false;
  out.reserve(list.size() / 2);
  uint16_t value = 0;
  while (list.read_u16(value)) out.push_back(value);
  return true;
}

bool parse_ec_point_formats(Reader data, ClientHello& hello) {
  Reader list;
  if (!data.read_list(1, 1, list) || !data.empty()) return false;
  hello.ec_point_formats.reserve(list.size());
  uint8_t value = 0;
  while (list.read_u8(value)) hello.ec_point_formats.push_back(value);
  return true;
}

bool parse_extension(uint16_t type, Reader data, ClientHello& hello) {
  switch (type) {
    case ext_server_name:
      return parse_server_name(data, hello);
    case ext_alpn:
      return parse_alpn(data, hello);
    case ext_supported_versions:
      return parse_u16_list(data, 1, hello.supported_versions);
    case ext_supported_groups:
      return parse_u16_list(data, 2, hello.supported_groups);
    case ext_signature_algorithms:
      return parse_u16_list(data, 2, hello.signature_algorithms);
    case ext_ec_point_formats:
      return parse_ec_point_formats(data, hello);
    default:
      return true;
  }
}

bool parse_extensions(Reader extensions, ClientHello& hello) {
  // 8 KiB on the stack: duplicate detection in constant time, whatever the extension count.
  std::bitset<65536> seen;
  hello.extensions.reserve(extensions.size() / 4);  // an upper bound: 4 bytes per extension
  while (!extensions.empty()) {
    uint16_t type = 0;
    Reader data;
    if (!extensions.read_u16(type) || !extensions.read_vector(2, data)) return false;
    if (seen.test(type)) return false;
    seen.set(type);
    // RFC 8446 4.2.11: pre_shared_key must be the last extension.
    if (type == ext_pre_shared_key && !extensions.empty()) return false;
    hello.extensions.push_back(type);
    if (!parse_extension(type, data, hello)) return false;
  }
  return true;
}

// The ClientHello body, after the handshake header (RFC 8446 4.1.2, RFC 5246 7.4.1.2).
bool parse_body(Reader body, ClientHello& hello) {
  std::span<const uint8_t> random;
  Reader session_id;
  Reader cipher_suites;
  Reader compression_methods;
  if (!body.read_u16(hello.legacy_version) || (hello.legacy_version >> 8) != 3) return false;
  if (!body.read_bytes(32, random)) return false;
  if (!body.read_vector(1, session_id) || session_id.size() > 32) return false;
  if (!body.read_list(2, 2, cipher_suites)) return false;
  hello.cipher_suites.reserve(cipher_suites.size() / 2);
  uint16_t suite = 0;
  while (cipher_suites.read_u16(suite)) hello.cipher_suites.push_back(suite);
  if (!body.read_list(1, 1, compression_methods)) return false;
  // Before TLS 1.3 a hello may end here, without an extensions block.
  if (body.empty()) return true;
  Reader extensions;
  if (!body.read_vector(2, extensions) || !body.empty()) return false;
  return parse_extensions(extensions, hello);
}

}  // namespace

std::string_view to_string(ClientHelloError error) {
  switch (error) {
    case ClientHelloError::need_more:
      return "need_more";
    case ClientHelloError::not_tls:
      return "not_tls";
    case ClientHelloError::malformed:
      return "malformed";
    case ClientHelloError::too_large:
      return "too_large";
  }
  return "unknown";
}

std::expected<ClientHello, ClientHelloError> parse_client_hello(std::span<const uint8_t> bytes,
                                                                std::size_t max_bytes) {
  const std::span<const uint8_t> window = bytes.first(std::min(bytes.size(), max_bytes));
  // Running out of window means waiting for more, unless the window is all we may ever see.
  const auto starved = [&] {
    return std::unexpected(bytes.size() >= max_bytes ? ClientHelloError::too_large
                                                     : ClientHelloError::need_more);
  };

  // Decide "is this TLS at all" from the first two bytes, as soon as they arrive.
  if (!window.empty() && window[0] != content_type_handshake) {
    return std::unexpected(ClientHelloError::not_tls);
  }
  if (window.size() >= 2 && window[1] != 3) return std::unexpected(ClientHelloError::not_tls);

  ClientHello hello;
  // The handshake message so far: a view of the first record's fragment while there is only
  // one record, else `joined`, the concatenated fragments.
  std::span<const uint8_t> message;
  std::vector<uint8_t> joined;
  std::size_t message_size = 0;  // header included; 0 until the header is complete
  std::size_t offset = 0;        // into the stream: end of the last complete record
  while (message_size == 0 || message.size() < message_size) {
    Reader header(window.subspan(offset));
    uint8_t content_type = 0;
    uint16_t version = 0;
    uint16_t length = 0;
    if (!header.read_u8(content_type) || !header.read_u16(version) || !header.read_u16(length)) {
      return starved();
    }
    if (content_type != content_type_handshake || (version >> 8) != 3 || length == 0 ||
        length > max_record_fragment) {
      return std::unexpected(ClientHelloError::malformed);
    }
    if (offset == 0) hello.record_version = version;
    if (offset + record_header_size + length > max_bytes) {
      return std::unexpected(ClientHelloError::too_large);
    }
    std::span<const uint8_t> fragment;
    if (!header.read_bytes(length, fragment)) return starved();
    offset += record_header_size + length;

    if (message.empty()) {
      message = fragment;
    } else {
      if (joined.empty()) joined.assign(message.begin(), message.end());
      joined.insert(joined.end(), fragment.begin(), fragment.end());
      message = joined;
    }

    if (message[0] != handshake_type_client_hello) {
      return std::unexpected(ClientHelloError::malformed);
    }
    if (message_size == 0 && message.size() >= handshake_header_size) {
      Reader handshake(message.subspan(1));
      uint32_t body_size = 0;
      handshake.read_uint(3, body_size);
      message_size = handshake_header_size + body_size;
      // The fewest stream bytes that could still carry the rest: full records, one header each.
      std::size_t missing = message_size - std::min(message_size, message.size());
      std::size_t records = (missing + max_record_fragment - 1) / max_record_fragment;
      if (offset + missing + records * record_header_size > max_bytes) {
        return std::unexpected(ClientHelloError::too_large);
      }
    }
  }
  // The record that ends the hello must end with it: a client sends nothing else before the
  // server answers, and bytes the parser skipped could be read differently by the server.
  if (message.size() != message_size) return std::unexpected(ClientHelloError::malformed);

  if (!parse_body(Reader(message.subspan(handshake_header_size)), hello)) {
    return std::unexpected(ClientHelloError::malformed);
  }
  hello.total_bytes = offset;
  return hello;
}

}  // namespace tokgate::proxy
