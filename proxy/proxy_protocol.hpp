// The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a load
// balancer in front of tokgate prepends to each connection to tell the real client address.
// Parsed from the first bytes of the client side, without sockets: the caller reads, asks
// whether it holds a complete header, and skips `length` bytes once it does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "policy/net_types.hpp"

namespace tokgate::proxy {

// A v1 line is at most 107 bytes with its CRLF (the spec's worst case).
inline constexpr std::size_t max_proxy_header_v1_size = 107;
// The v2 length field allows 16 + 65535 bytes; senders emit a few hundred at most (addresses,
// ALPN, SNI, TLS facts, a unique id). A larger header is refused as `unsupported`, so a caller
// never buffers more than this.
inline constexpr std::size_t max_proxy_header_v2_size = 4096;
// TLVs kept from one v2 header; more is refused as `unsupported`.
inline constexpr std::size_t max_proxy_header_tlvs = 64;
// parse_proxy_header() never answers need_more once it has seen this many bytes.
inline constexpr std::size_t max_proxy_header_size = max_proxy_header_v2_size;

// Registered v2 TLV types (proxy-protocol.txt 2.2).
namespace pp2_type {
inline constexpr uint8_t alpn = 0x01;
inline constexpr uint8_t authority = 0x02;  // the SNI the client sent
inline constexpr uint8_t crc32c = 0x03;
inline constexpr uint8_t noop = 0x04;
inline constexpr uint8_t unique_id = 0x05;
inline constexpr uint8_t ssl = 0x20;
inline constexpr uint8_t netns = 0x30;
}  // namespace pp2_type

struct ProxyTlv {
  uint8_t type = 0;
  std::string value;  // raw bytes
  auto operator<=>(const ProxyTlv&) const = default;
};

struct ProxyHeader {
  // local: use the real connection's endpoints (v2 LOCAL, v1 UNKNOWN). proxy: use the addresses
  // below, when present.
  enum class Command : uint8_t { local, proxy };

  int version = 0;  // 1 or 2
  Command command = Command::local;
  // TCP over IPv4 or IPv6, exactly as sent (a v4-mapped v6 address stays v6). Absent for
  // local, AF_UNIX and v2 PROXY with an unspecified family or transport: then the caller uses
  // the real connection's endpoints, or refuses the connection by its own policy.
  std::optional<Endpoint> source;
  std::optional<Endpoint> destination;
  // v2 AF_UNIX stream: the 108-byte sun_path fields with trailing NULs removed (an abstract
  // socket name keeps its leading NUL; an unnamed socket gives "").
  std::optional<std::string> unix_source;
  std::optional<std::string> unix_destination;
  std::size_t length = 0;  // bytes the header occupied: the caller's data starts here
  // v2 PROXY with a known family: the TLVs in order, except NOOP (padding). A CRC32C TLV has
  // been verified. SSL, UNIQUE_ID and CRC32C have their layout checked; values are not
  // otherwise interpreted.
  std::vector<ProxyTlv> tlvs;

  // The value of the first TLV of `type`, if any.
  std::optional<std::string_view> find_tlv(uint8_t type) const;
};

enum class ProxyHeaderError {
  need_more,           // a valid prefix of a header: read more (at most max_proxy_header_size)
  not_proxy_protocol,  // does not start with "PROXY " nor with the v2 signature
  malformed,           // a header that breaks the spec (or fails its CRC32C)
  unsupported,         // valid but refused: another v2 version, UDP, beyond the limits above
};

std::string_view to_string(ProxyHeaderError error);

// Parses the PROXY protocol header at the start of `bytes`; bytes after it are ignored.
//   v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" with single spaces, addresses strictly of
//       their family (dotted quad without leading zeros; IPv6 text with at most one "::" and an
//       optional dotted-quad tail, no brackets or zone), ports 0..65535 without sign or leading
//       zero, and CRLF within 107 bytes. "PROXY UNKNOWN" ignores the rest of its line.
//   v2: the 12-byte signature, version 2, command LOCAL (whole block skipped, family ignored)
//       or PROXY; families AF_INET, AF_INET6, AF_UNIX over STREAM (DGRAM is `unsupported`,
//       though the spec lets a receiver fall back to the real endpoints); a family or transport
//       of UNSPEC skips the block. The length must cover the address block; the TLVs after it
//       must fill the rest exactly.
// need_more is answered only while `bytes` can still be completed into a valid header, so
// garbage is refused as soon as it is seen (one exception: a v1 line whose fields are valid so
// far but too long to end within 107 bytes is refused when the 106th byte is not its CR).
// Never reads outside `bytes`; work and allocations are bounded by the limits above.
std::expected<ProxyHeader, ProxyHeaderError> parse_proxy_header(std::span<const uint8_t> bytes);

}  // namespace tokgate::proxy
