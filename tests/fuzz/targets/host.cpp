// Host names and addresses as they arrive from the network and from config/policy files:
// policy::normalize_host (SNI, CONNECT authority, Host header, absolute URI host), HostPattern
// and HostPatternSet (policy/catalog/config globs), punycode_encode, and IpAddress / Endpoint /
// Cidr parsing (policy/net_types.hpp). The input is one string fed to each of them.
//
// Beyond memory safety it checks what policy decisions rely on: the normal form is a fixed
// point, ASCII case and one trailing dot never change it, patterns round-trip through their
// text, a HostPatternSet agrees with the HostPattern it holds, and printed addresses parse back.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "policy/host_pattern.hpp"
#include "policy/net_types.hpp"

namespace {

using namespace tokgate::policy;

bool normal_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
         c == ':';
}

std::string ascii_upper(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

bool ascii_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

void check_normalize(std::string_view text) {
  auto normal = normalize_host(text);
  if (normal) {
    FUZZ_CHECK(!normal->empty());
    FUZZ_CHECK(normal->size() <= kMaxHostNameLength);
    for (char c : *normal) FUZZ_CHECK(normal_char(c));
    FUZZ_CHECK(normalize_host(*normal) == normal);
  }
  // Case: the same name whatever the ASCII case.
  FUZZ_CHECK(normalize_host(ascii_upper(text)) == normal);
  // One trailing dot on a name (not on an address in brackets or with colons) changes nothing.
  if (!text.empty() && ascii_alnum(text.back()) && text.front() != '[' &&
      text.find(':') == std::string_view::npos && text.size() < 1000) {
    FUZZ_CHECK(normalize_host(std::string(text) + ".") == normal);
  }
}

void check_pattern(std::string_view text) {
  auto pattern = HostPattern::parse(text);
  if (!pattern) {
    FUZZ_CHECK(!pattern.error().empty());
    return;
  }
  auto again = HostPattern::parse(pattern->text());
  FUZZ_CHECK(again && again->text() == pattern->text() && again->kind() == pattern->kind() &&
             again->name() == pattern->name());
  HostPatternSet set;
  set.add(*pattern);
  FUZZ_CHECK(!set.empty());
  const std::string& name = pattern->name();
  const std::string below = "x." + name;
  const std::string beside = "x" + name;  // "xtiktok.com" must never match "tiktok.com"
  switch (pattern->kind()) {
    case HostPattern::Kind::any:
      FUZZ_CHECK(pattern->matches("anything.example"));
      break;
    case HostPattern::Kind::exact:
      FUZZ_CHECK(pattern->matches(name) && !pattern->matches(below));
      break;
    case HostPattern::Kind::below:
      FUZZ_CHECK(!pattern->matches(name) && pattern->matches(below));
      break;
    case HostPattern::Kind::at_or_below:
      FUZZ_CHECK(pattern->matches(name) && pattern->matches(below));
      break;
  }
  for (const std::string& host : {name, below, beside, std::string("a.b.") + name}) {
    if (pattern->kind() != HostPattern::Kind::any) FUZZ_CHECK(!pattern->matches(beside));
    FUZZ_CHECK(set.matches(host) == pattern->matches(host));
  }
  if (auto normal = normalize_host(text)) {
    FUZZ_CHECK(set.matches(*normal) == pattern->matches(*normal));
  }
}

void check_addresses(std::string_view text) {
  if (auto address = IpAddress::parse(text)) {
    const std::string printed = address->to_string();
    FUZZ_CHECK(IpAddress::parse(printed) == address);
    FUZZ_CHECK(address->unmapped().unmapped() == address->unmapped());
    // An address literal is its own normal form as a host (how SNI/Host literals are seen).
    auto host = normalize_host(address->is_v4() ? printed : "[" + printed + "]");
    FUZZ_CHECK(host == printed);
  }
  if (auto endpoint = Endpoint::parse(text)) {
    FUZZ_CHECK(Endpoint::parse(endpoint->to_string()) == endpoint);
  }
  if (auto cidr = Cidr::parse(text)) {
    auto again = Cidr::parse(cidr->to_string());
    FUZZ_CHECK(again && again->to_string() == cidr->to_string());
    // A block contains the address it was written with, and anything else that is in it too
    // in its unmapped (v4) spelling.
    auto network = IpAddress::parse(text.substr(0, text.find('/')));
    FUZZ_CHECK(network.has_value());
    if (network->unmapped() == *network) {
      FUZZ_CHECK(cidr->contains(*network));
    } else {
      // A v4-mapped block ("::ffff:10.0.0.0/104") contains its own address (it once contained
      // nothing: contains() unmapped the address but not the block).
      FUZZ_CHECK(cidr->contains(*network));
    }
  }
}

void check_punycode(const uint8_t* data, std::size_t size) {
  // Three bytes per code point, folded into U+0000..U+10FFFF.
  std::u32string code_points;
  for (std::size_t i = 0; i + 3 <= size && code_points.size() < 256; i += 3) {
    uint32_t value = (uint32_t{data[i]} << 16) | (uint32_t{data[i + 1]} << 8) | data[i + 2];
    code_points.push_back(static_cast<char32_t>(value % 0x110000));
  }
  auto encoded = punycode_encode(code_points);
  if (!encoded) return;
  for (char c : *encoded) {
    FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
               static_cast<unsigned char>(c) < 0x80);
  }
  FUZZ_CHECK(encoded->size() >= code_points.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  check_normalize(text);
  check_pattern(text);
  check_addresses(text);
  check_punycode(data, size);
  return 0;
}
