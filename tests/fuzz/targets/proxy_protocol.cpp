// parse_proxy_header() on the first bytes of a connection to a listen_proxy_protocol listener
// (proxy/proxy_protocol.hpp). Checks the streaming contract the session relies on: a header's
// length lies within the bytes and under the cap, its own bytes suffice and one fewer needs
// more, need_more only below max_proxy_header_size, and more bytes never change a verdict.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_check.hpp"
#include "proxy/proxy_protocol.hpp"

namespace {

using tokgate::proxy::max_proxy_header_size;
using tokgate::proxy::max_proxy_header_tlvs;
using tokgate::proxy::parse_proxy_header;
using tokgate::proxy::ProxyHeader;
using tokgate::proxy::ProxyHeaderError;

bool same(const ProxyHeader& a, const ProxyHeader& b) {
  return a.version == b.version && a.command == b.command && a.source == b.source &&
         a.destination == b.destination && a.unix_source == b.unix_source &&
         a.unix_destination == b.unix_destination && a.length == b.length && a.tlvs == b.tlvs;
}

bool same_outcome(const std::expected<ProxyHeader, ProxyHeaderError>& a,
                  const std::expected<ProxyHeader, ProxyHeaderError>& b) {
  if (a.has_value() != b.has_value()) return false;
  return a.has_value() ? same(*a, *b) : a.error() == b.error();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::span<const uint8_t> bytes(data, size);
  auto result = parse_proxy_header(bytes);
  if (result.has_value()) {
    const ProxyHeader& header = *result;
    FUZZ_CHECK(header.length > 0 && header.length <= size);
    FUZZ_CHECK(header.length <= max_proxy_header_size);
    FUZZ_CHECK(header.version == 1 || header.version == 2);
    FUZZ_CHECK(header.tlvs.size() <= max_proxy_header_tlvs);
    // Addresses only with PROXY, and never both an IP and a unix pair.
    if (header.command == ProxyHeader::Command::local) {
      FUZZ_CHECK(!header.source && !header.destination && header.tlvs.empty());
    }
    FUZZ_CHECK(header.source.has_value() == header.destination.has_value());
    FUZZ_CHECK(!(header.source && header.unix_source));
    if (header.source)
      FUZZ_CHECK(header.source->address.family() == header.destination->address.family());
    for (const auto& tlv : header.tlvs) FUZZ_CHECK(tlv.type != tokgate::proxy::pp2_type::noop);
    auto exact = parse_proxy_header(bytes.first(header.length));
    FUZZ_CHECK(exact.has_value() && same(*exact, header));
    auto shorter = parse_proxy_header(bytes.first(header.length - 1));
    FUZZ_CHECK(!shorter.has_value() && shorter.error() == ProxyHeaderError::need_more);
    // The printed endpoints parse back to themselves (they go into flow records and logs).
    if (header.source) {
      FUZZ_CHECK(tokgate::policy::Endpoint::parse(header.source->to_string()) == header.source);
      FUZZ_CHECK(tokgate::policy::Endpoint::parse(header.destination->to_string()) ==
                 header.destination);
    }
  } else if (result.error() == ProxyHeaderError::need_more) {
    FUZZ_CHECK(size < max_proxy_header_size);
    // Every prefix of a valid prefix is one too.
    auto half = parse_proxy_header(bytes.first(size / 2));
    FUZZ_CHECK(!half.has_value() && half.error() == ProxyHeaderError::need_more);
    return 0;
  }
  std::vector<uint8_t> longer(bytes.begin(), bytes.end());
  longer.insert(longer.end(), {'\r', '\n', 'P', 'R', 'O', 'X', 'Y', ' ', 0x0d, 0x0a, 0x00, 0x21});
  FUZZ_CHECK(same_outcome(parse_proxy_header(longer), result));
  return 0;
}
