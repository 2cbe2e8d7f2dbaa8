// parse_client_hello() on the first bytes of a client connection, as ClientSession peeks them
// (proxy/client_hello.hpp). Besides memory safety it checks the contract the session relies on
// to decide when to stop reading: need_more only below the limit, a hello's own bytes suffice
// and one byte fewer needs more, and bytes after a verdict never change it.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_check.hpp"
#include "proxy/client_hello.hpp"

namespace {

using tokgate::proxy::ClientHello;
using tokgate::proxy::ClientHelloError;
using tokgate::proxy::parse_client_hello;

bool same(const ClientHello& a, const ClientHello& b) {
  return a.record_version == b.record_version && a.legacy_version == b.legacy_version &&
         a.sni == b.sni && a.alpn == b.alpn && a.cipher_suites == b.cipher_suites &&
         a.extensions == b.extensions && a.supported_versions == b.supported_versions &&
         a.supported_groups == b.supported_groups &&
         a.signature_algorithms == b.signature_algorithms &&
         a.ec_point_formats == b.ec_point_formats && a.total_bytes == b.total_bytes;
}

bool sni_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

// The same outcome: equal hellos, or the same error.
bool same_outcome(const std::expected<ClientHello, ClientHelloError>& a,
                  const std::expected<ClientHello, ClientHelloError>& b) {
  if (a.has_value() != b.has_value()) return false;
  return a.has_value() ? same(*a, *b) : a.error() == b.error();
}

void check(std::span<const uint8_t> bytes, std::size_t max_bytes) {
  auto result = parse_client_hello(bytes, max_bytes);
  if (result.has_value()) {
    const ClientHello& hello = *result;
    FUZZ_CHECK(hello.total_bytes > 0);
    FUZZ_CHECK(hello.total_bytes <= bytes.size());
    FUZZ_CHECK(hello.total_bytes <= max_bytes);
    for (char c : hello.sni) FUZZ_CHECK(sni_char(c));
    for (const auto& name : hello.alpn) FUZZ_CHECK(!name.empty());
    // Exactly the hello's bytes give the same hello; one fewer is a prefix still waiting.
    auto exact = parse_client_hello(bytes.first(hello.total_bytes), max_bytes);
    FUZZ_CHECK(exact.has_value() && same(*exact, hello));
    auto shorter = parse_client_hello(bytes.first(hello.total_bytes - 1), max_bytes);
    FUZZ_CHECK(!shorter.has_value() && shorter.error() == ClientHelloError::need_more);
  } else if (result.error() == ClientHelloError::need_more) {
    FUZZ_CHECK(bytes.size() < max_bytes);
    return;
  }
  // A verdict stands whatever follows it.
  std::vector<uint8_t> longer(bytes.begin(), bytes.end());
  longer.insert(longer.end(), {0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00});
  FUZZ_CHECK(same_outcome(parse_client_hello(longer, max_bytes), result));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::span<const uint8_t> bytes(data, size);
  check(bytes, 64 * 1024);  // the default limits.client_hello_bytes
  // A tight limit exercises too_large: half the input, so both sides of it are reached.
  if (size > 1) check(bytes, size / 2);
  return 0;
}
