// The TLS ClientHello as the proxy sees it before deciding to splice, bump or refuse a
// connection: parsed from the first bytes of the client side, without consuming them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tokgate::proxy {

// Lists keep the client's order and GREASE values (RFC 8701), so fingerprints can be computed
// later; use is_grease() to skip them.
struct ClientHello {
  uint16_t record_version = 0;  // of the first record
  uint16_t legacy_version = 0;
  // host_name from the server_name extension, exactly as sent: case is kept, and so is a single
  // trailing dot (RFC 6066 forbids it, but clients given "example.com." send it). Only
  // letters, digits, '-', '_' and '.' pass the parser. Empty if the extension is absent.
  std::string sni;
  std::vector<std::string> alpn;  // protocol names, opaque bytes, never empty
  std::vector<uint16_t> cipher_suites;
  std::vector<uint16_t> extensions;  // extension types
  std::vector<uint16_t> supported_versions;
  std::vector<uint16_t> supported_groups;
  std::vector<uint16_t> signature_algorithms;
  std::vector<uint8_t> ec_point_formats;
  std::size_t total_bytes = 0;  // bytes of the stream (all records) that carried the hello
};

enum class ClientHelloError { need_more, not_tls, malformed, too_large };

std::string_view to_string(ClientHelloError error);

// GREASE values (RFC 8701) are 0x?a?a with both bytes equal.
constexpr bool is_grease(uint16_t value) {
  return (value & 0x0f0f) == 0x0a0a && (value >> 8) == (value & 0xff);
}

// Parses a ClientHello from the start of a TLS byte stream. The hello may span several
// handshake records, down to one byte each; they are reassembled. Only the first max_bytes of
// `bytes` are looked at, and bytes after the hello are ignored.
//   need_more: what we have is a valid prefix and fewer than max_bytes were seen;
//   too_large: the hello (with its record headers) cannot fit in max_bytes;
//   not_tls:   the stream does not start with a TLS handshake record (plain HTTP, SSLv2, ...);
//   malformed: any inconsistency: lengths that overrun or fall short, a non-handshake record
//              before the hello ends, a record holding bytes past the hello, a handshake
//              message other than ClientHello, duplicate extensions, an empty or invalid SNI,
//              an empty ALPN name, pre_shared_key not last, ...
// Allocates only in proportion to the hello itself and never reads outside `bytes`.
std::expected<ClientHello, ClientHelloError> parse_client_hello(std::span<const uint8_t> bytes,
                                                                std::size_t max_bytes = 64 * 1024);

}  // namespace tokgate::proxy
