#include "policy/net_types.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace tokgate::policy {

IpAddress IpAddress::v4(std::array<uint8_t, 4> bytes) {
  IpAddress a;
  a.family_ = Family::v4;
  std::memcpy(a.bytes_.data(), bytes.data(), 4);
  return a;
}

IpAddress IpAddress::v6(std::array<uint8_t, 16> bytes) {
  IpAddress a;
  a.family_ = Family::v6;
  a.bytes_ = bytes;
  return a;
}

IpAddress IpAddress::loopback_v6() {
  std::array<uint8_t, 16> b{};
  b[15] = 1;
  return v6(b);
}

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  bool bracketed = false;
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
    bracketed = true;
  }
  // inet_pton stops at a NUL: "1.2.3.4\0junk" must not pass as 1.2.3.4.
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN ||
      text.find('\0') != std::string_view::npos) {
    return std::nullopt;
  }
  char buf[INET6_ADDRSTRLEN];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  std::array<uint8_t, 16> bytes{};
  if (!bracketed && inet_pton(AF_INET, buf, bytes.data()) == 1) {
    return v4({bytes[0], bytes[1], bytes[2], bytes[3]});
  }
  if (inet_pton(AF_INET6, buf, bytes.data()) == 1) return v6(bytes);
  return std::nullopt;
}

IpAddress IpAddress::unmapped() const {
  if (family_ != Family::v6) return *this;
  static constexpr uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(bytes_.data(), prefix, 12) != 0) return *this;
  return v4({bytes_[12], bytes_[13], bytes_[14], bytes_[15]});
}

std::string IpAddress::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(is_v4() ? AF_INET : AF_INET6, bytes_.data(), buf, sizeof buf);
  return buf;
}

std::optional<Endpoint> Endpoint::parse(std::string_view text) {
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  auto host = text.substr(0, colon);
  auto port_text = text.substr(colon + 1);
  // An unbracketed IPv6 address has more colons: refuse it, the port would be ambiguous.
  if (host.find(':') != std::string_view::npos && host.front() != '[') return std::nullopt;
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || end != port_text.data() + port_text.size() || port > 65535) {
    return std::nullopt;
  }
  auto address = IpAddress::parse(host);
  if (!address) return std::nullopt;
  return Endpoint{*address, static_cast<uint16_t>(port)};
}

std::string Endpoint::to_string() const {
  // Built with append: g++ 12 at -O3 reports a false -Wrestrict on "[" + string + "]".
  std::string text;
  if (!address.is_v4()) text.push_back('[');
  text.append(address.to_string());
  if (!address.is_v4()) text.push_back(']');
  text.push_back(':');
  text.append(std::to_string(port));
  return text;
}

std::optional<Cidr> Cidr::parse(std::string_view text) {
  auto slash = text.find('/');
  auto address = IpAddress::parse(text.substr(0, slash));
  if (!address) return std::nullopt;
  unsigned max_prefix = address->is_v4() ? 32 : 128;
  unsigned prefix = max_prefix;
  if (slash != std::string_view::npos) {
    auto p = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), prefix);
    if (p.empty() || ec != std::errc{} || end != p.data() + p.size() || prefix > max_prefix) {
      return std::nullopt;
    }
  }
  Cidr c;
  c.network_ = *address;
  c.prefix_ = prefix;
  return c;
}

bool Cidr::contains(const IpAddress& raw) const {
  // An IPv4 client may come as a.b.c.d or as ::ffff:a.b.c.d (dual-stack sockets); blocks may be
  // written either way too. A v4 block is matched against the unmapped address; a v6 block
  // against the v6 form, v4 addresses mapped (so "::ffff:10.0.0.0/104" and "::/0" both contain
  // 10.0.0.1).
  IpAddress address = raw.unmapped();
  const IpAddress& network = network_;
  const unsigned prefix = prefix_;
  if (network.is_v4() != address.is_v4()) {
    if (network.is_v4()) return false;
    const auto& v4 = address.bytes();
    address = IpAddress::v6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]});
  }
  const auto& a = address.bytes();
  const auto& n = network.bytes();
  unsigned full = prefix / 8;
  if (std::memcmp(a.data(), n.data(), full) != 0) return false;
  unsigned rest = prefix % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[full] & mask) == (n[full] & mask);
}

std::string Cidr::to_string() const {
  return network_.to_string() + "/" + std::to_string(prefix_);
}

}  // namespace tokgate::policy
