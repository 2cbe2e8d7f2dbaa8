// Addresses, endpoints and CIDR blocks as plain values: parsed and printed without sockets, so
// config and policy code can use them and their tests need no network.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tokgate::policy {

class IpAddress {
 public:
  enum class Family : uint8_t { v4, v6 };

  IpAddress() = default;
  static IpAddress v4(std::array<uint8_t, 4> bytes);
  static IpAddress v6(std::array<uint8_t, 16> bytes);
  static IpAddress loopback_v4() { return v4({127, 0, 0, 1}); }
  static IpAddress loopback_v6();
  // Accepts dotted IPv4 and RFC 4291 IPv6 text, IPv6 optionally in brackets.
  static std::optional<IpAddress> parse(std::string_view text);

  Family family() const { return family_; }
  bool is_v4() const { return family_ == Family::v4; }
  // 4 meaningful bytes for v4, 16 for v6.
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }
  // ::ffff:a.b.c.d becomes a.b.c.d; anything else is returned unchanged.
  IpAddress unmapped() const;
  std::string to_string() const;

  auto operator<=>(const IpAddress&) const = default;

 private:
  Family family_ = Family::v4;
  std::array<uint8_t, 16> bytes_{};
};

struct Endpoint {
  IpAddress address;
  uint16_t port = 0;

  // "1.2.3.4:80", "[::1]:8080"
  static std::optional<Endpoint> parse(std::string_view text);
  std::string to_string() const;
  auto operator<=>(const Endpoint&) const = default;
};

class Cidr {
 public:
  // "10.0.0.0/8", "::1/128", or a bare address (a /32 or /128).
  static std::optional<Cidr> parse(std::string_view text);
  static Cidr loopback_v4() { return *parse("127.0.0.0/8"); }
  static Cidr loopback_v6() { return *parse("::1/128"); }

  // v4-mapped v6 addresses match v4 blocks.
  bool contains(const IpAddress& address) const;
  std::string to_string() const;

 private:
  IpAddress network_;
  unsigned prefix_ = 0;
};

}  // namespace tokgate::policy

namespace tokgate::proxy {
using policy::Cidr;
using policy::Endpoint;
using policy::IpAddress;
}  // namespace tokgate::proxy
