#include "proxy/proxy_protocol.hpp"

#include <algorithm>
#include <array>

namespace tokgate::proxy {
namespace {

// proxy-protocol.txt 2.1 and 2.2.
constexpr std::string_view v1_signature = "PROXY ";
constexpr std::array<uint8_t, 12> v2_signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                  0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
// The v1 line before its CRLF.
constexpr std::size_t max_v1_body = max_proxy_header_v1_size - 2;
constexpr std::size_t v2_fixed_size = 16;
constexpr uint8_t v2_version = 2;
constexpr uint8_t v2_command_local = 0;
constexpr uint8_t v2_command_proxy = 1;
constexpr uint8_t v2_family_unspec = 0;
constexpr uint8_t v2_family_inet = 1;
constexpr uint8_t v2_family_inet6 = 2;
constexpr uint8_t v2_family_unix = 3;
constexpr uint8_t v2_transport_unspec = 0;
constexpr uint8_t v2_transport_stream = 1;
constexpr uint8_t v2_transport_dgram = 2;
constexpr std::size_t v2_inet_block = 2 * 4 + 2 * 2;
constexpr std::size_t v2_inet6_block = 2 * 16 + 2 * 2;
constexpr std::size_t unix_path_size = 108;
constexpr std::size_t v2_unix_block = 2 * unix_path_size;
constexpr std::size_t tlv_header_size = 3;
constexpr std::size_t crc32c_size = 4;
constexpr std::size_t max_unique_id = 128;
constexpr std::size_t ssl_fixed_size = 1 + 4;  // client flags, verify result
// Longest IPv6 text: six groups and a dotted quad.
constexpr std::size_t max_ipv6_text = 45;

using Error = ProxyHeaderError;

// How a field, or the whole header, looks so far. In partial mode `need_more` means "a valid
// prefix": what was seen can still be completed.
enum class Scan : uint8_t { valid, need_more, invalid };

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decimal 0..65535, no sign, no leading zero. Every prefix of such a number is one itself, so
// the partial check is the full check (or nothing yet).
Scan scan_port(std::string_view text, bool partial, uint16_t& port) {
  if (text.empty()) return partial ? Scan::need_more : Scan::invalid;
  if (text.size() > 5 || (text.size() > 1 && text[0] == '0')) return Scan::invalid;
  uint32_t value = 0;
  for (char c : text) {
    if (!is_digit(c)) return Scan::invalid;
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) return Scan::invalid;
  port = static_cast<uint16_t>(value);
  return partial ? Scan::need_more : Scan::valid;
}

// Exactly four decimal octets 0..255 joined by single dots, no leading zeros.
Scan scan_ipv4(std::string_view text, bool partial, std::array<uint8_t, 4>& out) {
  const Scan more = partial ? Scan::need_more : Scan::invalid;
  std::size_t i = 0;
  std::size_t octets = 0;
  while (true) {
    std::size_t start = i;
    uint32_t value = 0;
    while (i < text.size() && is_digit(text[i]) && i - start < 3) {
      value = value * 10 + static_cast<uint32_t>(text[i] - '0');
      ++i;
    }
    std::size_t digits = i - start;
    if (digits == 0) return i == text.size() ? more : Scan::invalid;
    if ((digits > 1 && text[start] == '0') || value > 255) return Scan::invalid;
    out[octets++] = static_cast<uint8_t>(value);
    if (i == text.size()) {
      if (partial) return Scan::need_more;
      return octets == 4 ? Scan::valid : Scan::invalid;
    }
    if (text[i] != '.' || octets == 4) return Scan::invalid;
    ++i;
  }
}

// RFC 4291 2.2 text: 1-4 hex digits per group, at most one "::" standing for at least one
// group, optionally a dotted quad as the last 32 bits. No brackets, no zone.
Scan scan_ipv6(std::string_view text, bool partial, std::array<uint8_t, 16>& out) {
  const Scan more = partial ? Scan::need_more : Scan::invalid;
  if (text.size() > max_ipv6_text) return Scan::invalid;
  if (text.empty()) return more;
  std::array<uint16_t, 8> words{};
  std::size_t count = 0;
  bool has_gap = false;
  std::size_t gap_at = 0;  // words written before the "::"
  std::size_t i = 0;
  if (text[0] == ':') {
    if (text.size() == 1) return more;
    if (text[1] != ':') return Scan::invalid;
    has_gap = true;
    i = 2;
  }
  while (i < text.size()) {
    const std::size_t max_words = has_gap ? 7 : 8;
    std::size_t end = std::min(text.find(':', i), text.size());
    std::string_view token = text.substr(i, end - i);
    if (token.find('.') != std::string_view::npos) {
      // The dotted quad ends the address and fills two groups; without "::" it must be 7-8.
      if (end != text.size()) return Scan::invalid;
      if (has_gap ? count + 2 > max_words : count != 6) return Scan::invalid;
      std::array<uint8_t, 4> quad{};
      Scan tail = scan_ipv4(token, partial, quad);
      if (tail != Scan::valid) return tail;
      words[count++] = static_cast<uint16_t>(quad[0] << 8 | quad[1]);
      words[count++] = static_cast<uint16_t>(quad[2] << 8 | quad[3]);
      break;
    }
    if (token.empty() || token.size() > 4 || count + 1 > max_words) return Scan::invalid;
    uint32_t value = 0;
    for (char c : token) {
      int digit = hex_value(c);
      if (digit < 0) return Scan::invalid;
      value = value << 4 | static_cast<uint32_t>(digit);
    }
    words[count++] = static_cast<uint16_t>(value);
    if (end == text.size()) break;
    i = end + 1;
    if (i == text.size()) {
      // A single trailing ':' needs one more group after it.
      return partial && count + 1 <= max_words ? Scan::need_more : Scan::invalid;
    }
    if (text[i] == ':') {
      if (has_gap || count > 7) return Scan::invalid;
      has_gap = true;
      gap_at = count;
      ++i;
    }
  }
  if (partial) return Scan::need_more;
  if (!has_gap && count != 8) return Scan::invalid;
  // Groups after the "::" move to the end; the gap stays zero. Without a gap all 8 move.
  std::array<uint16_t, 8> expanded{};
  std::size_t after_gap = count - gap_at;
  std::copy_n(words.begin(), gap_at, expanded.begin());
  std::copy_n(words.begin() + static_cast<std::ptrdiff_t>(gap_at), after_gap,
              expanded.end() - static_cast<std::ptrdiff_t>(after_gap));
  for (std::size_t w = 0; w < 8; ++w) {
    out[2 * w] = static_cast<uint8_t>(expanded[w] >> 8);
    out[2 * w + 1] = static_cast<uint8_t>(expanded[w]);
  }
  return Scan::valid;
}

Scan scan_address(std::string_view text, bool partial, bool v6, IpAddress& out) {
  if (v6) {
    std::array<uint8_t, 16> bytes{};
    Scan scan = scan_ipv6(text, partial, bytes);
    if (scan == Scan::valid) out = IpAddress::v6(bytes);
    return scan;
  }
  std::array<uint8_t, 4> bytes{};
  Scan scan = scan_ipv4(text, partial, bytes);
  if (scan == Scan::valid) out = IpAddress::v4(bytes);
  return scan;
}

// The v1 line without "PROXY " and CRLF. `complete` when its CR has arrived; otherwise it may
// still grow and must be a valid prefix.
Scan scan_v1_fields(std::string_view rest, bool complete, ProxyHeader& header) {
  const bool partial = !complete;
  std::size_t space = rest.find(' ');
  std::string_view protocol = rest.substr(0, space);
  if (space == std::string_view::npos && partial) {
    for (std::string_view known : {"TCP4", "TCP6", "UNKNOWN"}) {
      if (known.starts_with(protocol)) return Scan::need_more;
    }
    return Scan::invalid;
  }
  if (protocol == "UNKNOWN") {
    // The receiver ignores anything after it until CRLF.
    header.command = ProxyHeader::Command::local;
    return complete ? Scan::valid : Scan::need_more;
  }
  if ((protocol != "TCP4" && protocol != "TCP6") || space == std::string_view::npos) {
    return Scan::invalid;
  }
  const bool v6 = protocol == "TCP6";

  IpAddress addresses[2];
  uint16_t ports[2] = {0, 0};
  std::size_t at = space + 1;
  for (std::size_t field = 0; field < 4; ++field) {
    const bool last = field == 3;
    std::size_t end = rest.find(' ', at);
    const bool reaches_end = end == std::string_view::npos;
    std::string_view text = rest.substr(at, reaches_end ? std::string_view::npos : end - at);
    if (!reaches_end && last) return Scan::invalid;  // a fifth field or a trailing space
    if (reaches_end && complete && !last) return Scan::invalid;
    const bool field_partial = reaches_end && partial;
    Scan scan = field < 2 ? scan_address(text, field_partial, v6, addresses[field])
                          : scan_port(text, field_partial, ports[field - 2]);
    if (scan != Scan::valid) return scan;
    if (reaches_end) break;
    at = end + 1;
  }
  header.command = ProxyHeader::Command::proxy;
  header.source = Endpoint{addresses[0], ports[0]};
  header.destination = Endpoint{addresses[1], ports[1]};
  return Scan::valid;
}

std::expected<ProxyHeader, Error> parse_v1(std::span<const uint8_t> bytes) {
  // The line ends at the first CR or LF; it must be a CRLF within 107 bytes.
  const std::size_t window = std::min(bytes.size(), max_v1_body + 1);
  std::size_t eol = 0;
  while (eol < window && bytes[eol] != '\r' && bytes[eol] != '\n') ++eol;
  bool complete = false;
  if (eol == window) {
    if (window > max_v1_body) return std::unexpected(Error::malformed);
  } else {
    if (bytes[eol] == '\n') return std::unexpected(Error::malformed);
    if (eol + 1 < bytes.size() && bytes[eol + 1] != '\n') return std::unexpected(Error::malformed);
    complete = true;
  }
  std::string_view body(reinterpret_cast<const char*>(bytes.data()), eol);
  ProxyHeader header;
  header.version = 1;
  header.length = eol + 2;
  switch (scan_v1_fields(body.substr(v1_signature.size()), complete, header)) {
    case Scan::invalid:
      return std::unexpected(Error::malformed);
    case Scan::need_more:
      return std::unexpected(Error::need_more);
    case Scan::valid:
      break;
  }
  if (eol + 2 > bytes.size()) return std::unexpected(Error::need_more);  // LF still to come
  return header;
}

// CRC32C (Castagnoli, reflected 0x82F63B78), as RFC 4960 appendix B specifies for SCTP.
constexpr std::array<uint32_t, 256> crc32c_table = [] {
  std::array<uint32_t, 256> table{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t crc = n;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0);
    table[n] = crc;
  }
  return table;
}();

uint32_t crc32c_update(uint32_t crc, std::span<const uint8_t> bytes) {
  for (uint8_t byte : bytes) crc = (crc >> 8) ^ crc32c_table[(crc ^ byte) & 0xff];
  return crc;
}

uint16_t read_u16(std::span<const uint8_t> bytes, std::size_t at) {
  return static_cast<uint16_t>(bytes[at] << 8 | bytes[at + 1]);
}

uint32_t read_u32(std::span<const uint8_t> bytes, std::size_t at) {
  return static_cast<uint32_t>(read_u16(bytes, at)) << 16 | read_u16(bytes, at + 2);
}

// Checks a TLV from its header alone (declared length against what the header has left),
// before its value arrives, so a lying length is refused early.
bool tlv_header_fits(uint8_t type, std::size_t length, std::size_t room) {
  if (length > room) return false;
  switch (type) {
    case pp2_type::crc32c:
      return length == crc32c_size;
    case pp2_type::unique_id:
      return length <= max_unique_id;
    case pp2_type::ssl:
      return length >= ssl_fixed_size;
    default:
      return true;
  }
}

// An SSL TLV's value: flags, verify result, then sub-TLVs that fill it exactly.
bool ssl_value_valid(std::span<const uint8_t> value) {
  std::size_t at = ssl_fixed_size;
  while (at < value.size()) {
    if (value.size() - at < tlv_header_size) return false;
    std::size_t length = read_u16(value, at + 1);
    if (length > value.size() - at - tlv_header_size) return false;
    at += tlv_header_size + length;
  }
  return true;
}

std::string unix_path(std::span<const uint8_t> field) {
  std::size_t size = field.size();
  while (size > 0 && field[size - 1] == 0) --size;
  return std::string(reinterpret_cast<const char*>(field.data()), size);
}

std::expected<ProxyHeader, Error> parse_v2(std::span<const uint8_t> bytes) {
  if (bytes.size() <= 12) return std::unexpected(Error::need_more);
  if (bytes[12] >> 4 != v2_version) return std::unexpected(Error::unsupported);
  const uint8_t command = bytes[12] & 0x0f;
  if (command != v2_command_local && command != v2_command_proxy) {
    return std::unexpected(Error::malformed);
  }
  if (bytes.size() <= 13) return std::unexpected(Error::need_more);
  const uint8_t family = bytes[13] >> 4;
  const uint8_t transport = bytes[13] & 0x0f;
  std::size_t address_block = 0;  // 0: the block is skipped, not read
  if (command == v2_command_proxy) {
    if (family > v2_family_unix || transport > v2_transport_dgram) {
      return std::unexpected(Error::malformed);
    }
    if (family != v2_family_unspec && transport != v2_transport_unspec) {
      if (transport == v2_transport_dgram) return std::unexpected(Error::unsupported);
      address_block = family == v2_family_inet    ? v2_inet_block
                      : family == v2_family_inet6 ? v2_inet6_block
                                                  : v2_unix_block;
    }
  }
  if (bytes.size() < v2_fixed_size) return std::unexpected(Error::need_more);
  const std::size_t total = v2_fixed_size + read_u16(bytes, 14);
  if (total > max_proxy_header_v2_size) return std::unexpected(Error::unsupported);
  if (total - v2_fixed_size < address_block) return std::unexpected(Error::malformed);

  ProxyHeader header;
  header.version = 2;
  header.length = total;
  header.command =
      command == v2_command_proxy ? ProxyHeader::Command::proxy : ProxyHeader::Command::local;
  if (address_block == 0) {
    // LOCAL, or an unspecified family or transport: the receiver ignores the whole block.
    if (bytes.size() < total) return std::unexpected(Error::need_more);
    return header;
  }

  // TLVs, checked as far as the bytes at hand go; the declared lengths are checked against
  // `total` even before the bytes arrive.
  const std::size_t available = std::min(bytes.size(), total);
  std::size_t at = v2_fixed_size + address_block;
  std::size_t crc_at = 0;  // offset of the CRC32C value, if any
  while (at < total) {
    if (total - at < tlv_header_size) return std::unexpected(Error::malformed);
    if (available < at + tlv_header_size) break;
    const uint8_t type = bytes[at];
    const std::size_t length = read_u16(bytes, at + 1);
    if (!tlv_header_fits(type, length, total - at - tlv_header_size)) {
      return std::unexpected(Error::malformed);
    }
    const std::size_t value_at = at + tlv_header_size;
    if (type == pp2_type::crc32c) {
      if (crc_at != 0) return std::unexpected(Error::malformed);
      crc_at = value_at;
    }
    if (type != pp2_type::noop && header.tlvs.size() == max_proxy_header_tlvs) {
      return std::unexpected(Error::unsupported);
    }
    if (available < value_at + length) break;
    auto value = bytes.subspan(value_at, length);
    if (type == pp2_type::ssl && !ssl_value_valid(value)) return std::unexpected(Error::malformed);
    if (type != pp2_type::noop) {
      header.tlvs.push_back(
          {type, std::string(reinterpret_cast<const char*>(value.data()), value.size())});
    }
    at = value_at + length;
  }
  if (bytes.size() < total) return std::unexpected(Error::need_more);

  if (crc_at != 0) {
    // The sum covers the whole header with the CRC32C value taken as zero.
    static constexpr std::array<uint8_t, crc32c_size> zeros{};
    uint32_t crc = crc32c_update(0xffffffffu, bytes.first(crc_at));
    crc = crc32c_update(crc, zeros);
    crc = crc32c_update(crc, bytes.subspan(crc_at + crc32c_size, total - crc_at - crc32c_size));
    if ((crc ^ 0xffffffffu) != read_u32(bytes, crc_at)) return std::unexpected(Error::malformed);
  }

  auto block = bytes.subspan(v2_fixed_size, address_block);
  if (family == v2_family_unix) {
    header.unix_source = unix_path(block.first(unix_path_size));
    header.unix_destination = unix_path(block.subspan(unix_path_size, unix_path_size));
  } else if (family == v2_family_inet) {
    header.source =
        Endpoint{IpAddress::v4({block[0], block[1], block[2], block[3]}), read_u16(block, 8)};
    header.destination =
        Endpoint{IpAddress::v4({block[4], block[5], block[6], block[7]}), read_u16(block, 10)};
  } else {
    std::array<uint8_t, 16> source{};
    std::array<uint8_t, 16> destination{};
    std::copy_n(block.begin(), 16, source.begin());
    std::copy_n(block.begin() + 16, 16, destination.begin());
    header.source = Endpoint{IpAddress::v6(source), read_u16(block, 32)};
    header.destination = Endpoint{IpAddress::v6(destination), read_u16(block, 34)};
  }
  return header;
}

// Whether `bytes` is a prefix of `signature`, or starts with all of it.
bool matches_signature(std::span<const uint8_t> bytes, std::span<const uint8_t> signature) {
  std::size_t n = std::min(bytes.size(), signature.size());
  return std::equal(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n),
                    signature.begin());
}

}  // namespace

std::optional<std::string_view> ProxyHeader::find_tlv(uint8_t type) const {
  for (const ProxyTlv& tlv : tlvs) {
    if (tlv.type == type) return tlv.value;
  }
  return std::nullopt;
}

std::string_view to_string(ProxyHeaderError error) {
  switch (error) {
    case ProxyHeaderError::need_more:
      return "need_more";
    case ProxyHeaderError::not_proxy_protocol:
      return "not_proxy_protocol";
    case ProxyHeaderError::malformed:
      return "malformed";
    case ProxyHeaderError::unsupported:
      return "unsupported";
  }
  return "unknown";
}

std::expected<ProxyHeader, ProxyHeaderError> parse_proxy_header(std::span<const uint8_t> bytes) {
  if (bytes.empty()) return std::unexpected(Error::need_more);
  const auto v1 =
      std::span(reinterpret_cast<const uint8_t*>(v1_signature.data()), v1_signature.size());
  if (matches_signature(bytes, v2_signature)) {
    return bytes.size() < v2_signature.size() ? std::unexpected(Error::need_more) : parse_v2(bytes);
  }
  if (matches_signature(bytes, v1)) {
    return bytes.size() < v1.size() ? std::unexpected(Error::need_more) : parse_v1(bytes);
  }
  return std::unexpected(Error::not_proxy_protocol);
}

}  // namespace tokgate::proxy
