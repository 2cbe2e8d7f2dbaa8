#include "proxy/proxy_protocol.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tokgate::proxy {

// Found by gtest through argument-dependent lookup, hence outside the unnamed namespace.
void PrintTo(ProxyHeaderError error, std::ostream* out) {
  *out << to_string(error);
}

namespace {

using namespace std::literals;
using Bytes = std::vector<uint8_t>;
using Error = ProxyHeaderError;
using Command = ProxyHeader::Command;

Bytes bytes_of(std::string_view text) {
  return Bytes(text.begin(), text.end());
}

std::expected<ProxyHeader, Error> parse(const Bytes& bytes) {
  return parse_proxy_header(bytes);
}

std::expected<ProxyHeader, Error> parse(std::string_view text) {
  return parse(bytes_of(text));
}

Error error_of(const std::expected<ProxyHeader, Error>& result) {
  EXPECT_FALSE(result.has_value());
  return result.has_value() ? Error::need_more : result.error();
}

Endpoint endpoint(std::string_view text) {
  auto parsed = Endpoint::parse(text);
  EXPECT_TRUE(parsed.has_value()) << text;
  return parsed.value_or(Endpoint{});
}

bool same_header(const ProxyHeader& a, const ProxyHeader& b) {
  return a.version == b.version && a.command == b.command && a.source == b.source &&
         a.destination == b.destination && a.unix_source == b.unix_source &&
         a.unix_destination == b.unix_destination && a.length == b.length && a.tlvs == b.tlvs;
}

// Bitwise CRC32C, written apart from the parser's table so a shared mistake cannot hide.
uint32_t reference_crc32c(const Bytes& bytes) {
  uint32_t crc = 0xffffffff;
  for (uint8_t byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0u);
  }
  return ~crc;
}

// --- Building v2 headers. ---

const Bytes v2_signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

void put_u16(Bytes& out, std::size_t value) {
  out.push_back(static_cast<uint8_t>(value >> 8));
  out.push_back(static_cast<uint8_t>(value));
}

// Sized up front: g++ 12 at -O3 reports a false -Wstringop-overflow on push_back then insert.
Bytes tlv(uint8_t type, std::string_view value) {
  Bytes out(3 + value.size());
  out[0] = type;
  out[1] = static_cast<uint8_t>(value.size() >> 8);
  out[2] = static_cast<uint8_t>(value.size());
  std::copy(value.begin(), value.end(), out.begin() + 3);
  return out;
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

// Signature, version/command, family, length, then `body` (address block and TLVs). With
// `crc`, a CRC32C TLV is appended and filled in.
Bytes v2(uint8_t version_command, uint8_t family, const Bytes& body, bool crc = false) {
  Bytes out = v2_signature;
  out.push_back(version_command);
  out.push_back(family);
  put_u16(out, body.size() + (crc ? 7 : 0));
  out.insert(out.end(), body.begin(), body.end());
  if (crc) {
    Bytes crc_tlv = tlv(pp2_type::crc32c, std::string(4, '\0'));
    out.insert(out.end(), crc_tlv.begin(), crc_tlv.end());
    uint32_t sum = reference_crc32c(out);
    for (int i = 0; i < 4; ++i) out[out.size() - 4 + i] = static_cast<uint8_t>(sum >> (24 - 8 * i));
  }
  return out;
}

constexpr uint8_t cmd_local = 0x20;
constexpr uint8_t cmd_proxy = 0x21;
constexpr uint8_t tcp4 = 0x11;
constexpr uint8_t udp4 = 0x12;
constexpr uint8_t tcp6 = 0x21;
constexpr uint8_t udp6 = 0x22;
constexpr uint8_t unix_stream = 0x31;
constexpr uint8_t unix_dgram = 0x32;

// 192.0.2.1:56324 -> 198.51.100.7:443
const Bytes ip4_block = {192, 0, 2, 1, 198, 51, 100, 7, 0xDC, 0x04, 0x01, 0xBB};

// [2001:db8::1]:40000 -> [2001:db8::2]:8443
Bytes ip6_block() {
  Bytes out = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
               0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
  put_u16(out, 40000);
  put_u16(out, 8443);
  return out;
}

Bytes unix_block(std::string_view source, std::string_view destination) {
  Bytes out(216, 0);
  std::copy(source.begin(), source.end(), out.begin());
  std::copy(destination.begin(), destination.end(), out.begin() + 108);
  return out;
}

Bytes ssl_value(std::initializer_list<Bytes> sub_tlvs) {
  Bytes out = {0x01, 0, 0, 0, 0};  // PP2_CLIENT_SSL, verified
  for (const Bytes& sub : sub_tlvs) out.insert(out.end(), sub.begin(), sub.end());
  return out;
}

std::string as_string(const Bytes& bytes) {
  return std::string(bytes.begin(), bytes.end());
}

// --- Valid headers of every form, used by the generic property tests too. ---

const std::vector<std::string> valid_v1 = {
    "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
    "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
    "PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n",
    "PROXY TCP6 2001:db8::1 ::1 40000 8443\r\n",
    "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    "65535 65535\r\n",
    "PROXY TCP6 ::ffff:192.0.2.1 2001:DB8:0:0:0:0:0:2 1 2\r\n",
    "PROXY TCP6 :: 1:2:3:4:5:6:7:: 0 0\r\n",
    "PROXY UNKNOWN\r\n",
    "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    "65535 65535\r\n",
};

std::vector<Bytes> valid_headers() {
  std::vector<Bytes> out;
  for (const std::string& line : valid_v1) out.push_back(bytes_of(line));
  out.push_back(v2(cmd_proxy, tcp4, ip4_block));
  out.push_back(
      v2(cmd_proxy, tcp4,
         concat({ip4_block, tlv(pp2_type::alpn, "h2"), tlv(pp2_type::authority, "www.example.com"),
                 tlv(pp2_type::noop, std::string(2, '\0')),
                 tlv(pp2_type::ssl, as_string(ssl_value({tlv(0x21, "TLSv1.3")})))}),
         true));
  out.push_back(v2(cmd_proxy, tcp6,
                   concat({ip6_block(), tlv(pp2_type::unique_id, "abc"), tlv(0xE0, "custom")})));
  out.push_back(v2(cmd_proxy, unix_stream,
                   concat({unix_block("/run/lb.sock", "/run/tokgate.sock"), tlv(0x01, "h2")})));
  out.push_back(v2(cmd_local, 0x00, {}));
  out.push_back(v2(cmd_local, tcp4, ip4_block));
  out.push_back(v2(cmd_proxy, 0x00, {}));
  return out;
}

// ===================================== Version 1 =====================================

TEST(ProxyProtocolV1, Tcp4) {
  std::string line = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
  auto header = parse(line + "GET / HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(header.has_value()) << to_string(header.error());
  EXPECT_EQ(header->version, 1);
  EXPECT_EQ(header->command, Command::proxy);
  EXPECT_EQ(header->source, endpoint("192.0.2.1:56324"));
  EXPECT_EQ(header->destination, endpoint("198.51.100.7:443"));
  EXPECT_EQ(header->length, line.size());
  EXPECT_FALSE(header->unix_source.has_value());
  EXPECT_TRUE(header->tlvs.empty());
}

TEST(ProxyProtocolV1, Tcp6) {
  auto header = parse("PROXY TCP6 2001:db8::1 ::1 40000 8443\r\n");
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(header->source, endpoint("[2001:db8::1]:40000"));
  EXPECT_EQ(header->destination, endpoint("[::1]:8443"));
}

TEST(ProxyProtocolV1, Tcp6Forms) {
  struct Case {
    std::string_view text;
    std::string_view address;
  };
  const Case cases[] = {
      {"::", "::"},
      {"::1", "::1"},
      {"1::", "1::"},
      {"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"},
      {"0001:0002:0003:0004:0005:0006:0007:0008", "1:2:3:4:5:6:7:8"},
      {"FFFF:abcd:ABCD::", "ffff:abcd:abcd::"},
      {"1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"},
      {"::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"},
      {"1::8", "1::8"},
      {"::ffff:192.0.2.1", "::ffff:192.0.2.1"},
      {"::192.0.2.1", "::c000:201"},
      {"1:2:3:4:5:6:192.0.2.1", "1:2:3:4:5:6:c000:201"},
      {"1::6:192.0.2.1", "1::6:c000:201"},
      {"0000:0000:0000:0000:0000:0000:255.255.255.255", "::255.255.255.255"},
  };
  for (const Case& c : cases) {
    auto header = parse("PROXY TCP6 " + std::string(c.text) + " ::1 1 2\r\n");
    ASSERT_TRUE(header.has_value()) << c.text;
    EXPECT_EQ(header->source->address, *IpAddress::parse(c.address)) << c.text;
  }
}

TEST(ProxyProtocolV1, Ports) {
  for (auto [text, port] : {std::pair{"0", 0}, {"1", 1}, {"80", 80}, {"65535", 65535}}) {
    auto header = parse("PROXY TCP4 1.2.3.4 5.6.7.8 " + std::string(text) + " " + text + "\r\n");
    ASSERT_TRUE(header.has_value()) << text;
    EXPECT_EQ(header->source->port, port);
    EXPECT_EQ(header->destination->port, port);
  }
}

TEST(ProxyProtocolV1, UnknownIsLocalAndIgnoresTheRestOfTheLine) {
  for (std::string_view line :
       {"PROXY UNKNOWN\r\n"sv, "PROXY UNKNOWN \r\n"sv, "PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"sv,
        "PROXY UNKNOWN garbage 999.1 -1 \x01\xff\0tail\r\n"sv}) {
    auto header = parse(line);
    ASSERT_TRUE(header.has_value()) << line;
    EXPECT_EQ(header->command, Command::local);
    EXPECT_EQ(header->version, 1);
    EXPECT_EQ(header->length, line.size());
    EXPECT_FALSE(header->source.has_value());
    EXPECT_FALSE(header->destination.has_value());
  }
}

TEST(ProxyProtocolV1, LineLengthLimitIs107) {
  std::string prefix = "PROXY UNKNOWN ";
  std::string longest = prefix + std::string(107 - prefix.size() - 2, 'x') + "\r\n";
  ASSERT_EQ(longest.size(), 107u);
  auto header = parse(longest);
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(header->length, 107u);

  std::string too_long = prefix + std::string(108 - prefix.size() - 2, 'x') + "\r\n";
  EXPECT_EQ(error_of(parse(too_long)), Error::malformed);
  // Refused once 106 bytes show no CR: the CRLF can no longer end within 107.
  EXPECT_EQ(error_of(parse(too_long.substr(0, 106))), Error::malformed);
  EXPECT_EQ(error_of(parse(too_long.substr(0, 105))), Error::need_more);
  // The CR as the 107th byte would put the LF at 108.
  EXPECT_EQ(error_of(parse(too_long.substr(0, 106) + "\r")), Error::malformed);
}

TEST(ProxyProtocolV1, Malformed) {
  const std::string_view lines[] = {
      // Line ends.
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n",
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\rX",
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\r\n",
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324\n443\r\n",
      "PROXY UNKNOWN\n",
      "PROXY UNKNOWN \n\r\n",
      "PROXY UNKNOWN \rx\r\n",
      // Keyword and separators.
      "PROXY \r\n",
      "PROXY TCP4\r\n",
      "PROXY TCP4 \r\n",
      "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY UNKNOWNX\r\n",
      "PROXY UNKNOWN4 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8\r\n",
      "PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
      // Ports.
      "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 0x50\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n",
      // IPv4.
      "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.00 5.6.7.8 1 2\r\n",
      "PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4444 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 .1.2.3 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n",
      "PROXY TCP4 16909060 5.6.7.8 1 2\r\n",
      "PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
      "PROXY TCP4 ::ffff:1.2.3.4 5.6.7.8 1 2\r\n",
      // IPv6.
      "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
      "PROXY TCP6 [::1] ::1 1 2\r\n",
      "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
      "PROXY TCP6 1::2::3 ::1 1 2\r\n",
      "PROXY TCP6 ::: ::1 1 2\r\n",
      "PROXY TCP6 :1 ::1 1 2\r\n",
      "PROXY TCP6 1: ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4::5:6:7:8 ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4:5:6:7:8:: ::1 1 2\r\n",
      "PROXY TCP6 12345:: ::1 1 2\r\n",
      "PROXY TCP6 g:: ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4:5:6:7:1.2.3.4 ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4:5:1.2.3.4 ::1 1 2\r\n",
      "PROXY TCP6 1:2:3:4:5:6::1.2.3.4 ::1 1 2\r\n",
      "PROXY TCP6 ::1.2.3.4:1 ::1 1 2\r\n",
      "PROXY TCP6 ::01.2.3.4 ::1 1 2\r\n",
      "PROXY TCP6 ::1.2.3 ::1 1 2\r\n",
      "PROXY TCP6 ::256.2.3.4 ::1 1 2\r\n",
      "PROXY TCP6 ::1 ::1. 1 2\r\n",
      // Bytes that are not text.
      "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n"sv,
      "PROXY TCP4 1.2.3.\xb4 5.6.7.8 1 2\r\n",
  };
  for (std::string_view line : lines) {
    EXPECT_EQ(error_of(parse(line)), Error::malformed) << line;
  }
}

TEST(ProxyProtocolV1, GarbageIsRefusedBeforeTheLineEnds) {
  // Each of these has no CR yet but can no longer become a valid line.
  const std::string_view prefixes[] = {
      "PROXY X",
      "PROXY TCP4 1.2.3.4x",
      "PROXY TCP4 01",
      "PROXY TCP4 256",
      "PROXY TCP4 1.2.3.4.",
      "PROXY TCP4  ",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
      "PROXY TCP4 1.2.3.4 5.6.7.8 0",  // "0" then more digits is never valid, but "0" is
      "PROXY TCP6 1.2.",
      "PROXY TCP6 1:2:3:4:5:6:7:8:",
      "PROXY TCP6 1::2::",
      "PROXY TCP6 1:2:3:4:5:6:7:1.",
      "PROXY TCP6 12345",
      "PROXY TCP4 1.2.3.4 5.6.7.8 65536",
  };
  for (std::string_view prefix : prefixes) {
    auto result = parse(prefix);
    if (prefix == "PROXY TCP4 1.2.3.4 5.6.7.8 0") {
      EXPECT_EQ(error_of(result), Error::need_more) << prefix;  // "0\r\n" may follow
      EXPECT_EQ(error_of(parse(std::string(prefix) + "1")), Error::malformed);
      continue;
    }
    EXPECT_EQ(error_of(result), Error::malformed) << prefix;
  }
}

TEST(ProxyProtocolV1, ValidPrefixesNeedMore) {
  const std::string_view prefixes[] = {
      "P",
      "PROX",
      "PROXY",
      "PROXY ",
      "PROXY T",
      "PROXY UNKNOWN",
      "PROXY UNKNOWN anything",
      "PROXY TCP6 ",
      "PROXY TCP6 :",
      "PROXY TCP6 ::",
      "PROXY TCP6 1:2:3:4:5:6:7:",
      "PROXY TCP6 1::2:3:4:5:6:",
      "PROXY TCP6 ::ffff:1.2.",
      "PROXY TCP6 1:2:3:4:5:6:1",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",
  };
  for (std::string_view prefix : prefixes) {
    EXPECT_EQ(error_of(parse(prefix)), Error::need_more) << prefix;
  }
}

// Compares the strict v1 address syntax with glibc's inet_pton, which follows the same rules
// (no leading zeros in dotted quads, 1-4 hex digits per group, one "::").
TEST(ProxyProtocolV1, AddressesAgreeWithInetPton) {
  std::mt19937 random(424242);
  const std::string_view alphabet = "0123456789abcdefABCDEF:.:..:g %[]";
  int accepted_v4 = 0;
  int accepted_v6 = 0;
  for (int round = 0; round < 40000; ++round) {
    std::string text;
    if (round % 2 == 0) {
      // A printed random address, then a few random edits.
      std::array<uint8_t, 16> raw{};
      for (uint8_t& byte : raw) byte = static_cast<uint8_t>(random() % 3 == 0 ? 0 : random());
      if (random() % 4 == 0) std::fill_n(raw.begin(), 10, 0), raw[10] = raw[11] = 0xff;
      const bool v6 = round % 4 == 0;
      char buf[INET6_ADDRSTRLEN] = {};
      inet_ntop(v6 ? AF_INET6 : AF_INET, raw.data(), buf, sizeof buf);
      text = buf;
      for (int edits = static_cast<int>(random() % 3); edits > 0 && !text.empty(); --edits) {
        std::size_t at = random() % text.size();
        char c = alphabet[random() % alphabet.size()];
        switch (random() % 3) {
          case 0:
            text[at] = c;
            break;
          case 1:
            text.insert(text.begin() + static_cast<std::ptrdiff_t>(at), c);
            break;
          default:
            text.erase(at, 1);
        }
      }
    } else {
      for (std::size_t n = random() % 24; n > 0; --n) text += alphabet[random() % alphabet.size()];
    }
    if (text.find_first_of(" \r\n") != std::string::npos) continue;

    std::array<uint8_t, 16> expected{};
    const bool pton_v4 = inet_pton(AF_INET, text.c_str(), expected.data()) == 1;
    auto header4 = parse("PROXY TCP4 " + text + " 1.2.3.4 1 2\r\n");
    ASSERT_EQ(header4.has_value(), pton_v4) << "TCP4 " << text;
    if (pton_v4) {
      ++accepted_v4;
      EXPECT_TRUE(std::equal(expected.begin(), expected.begin() + 4,
                             header4->source->address.bytes().begin()))
          << text;
    }

    const bool pton_v6 = inet_pton(AF_INET6, text.c_str(), expected.data()) == 1;
    auto header6 = parse("PROXY TCP6 " + text + " ::1 1 2\r\n");
    ASSERT_EQ(header6.has_value(), pton_v6) << "TCP6 " << text;
    if (pton_v6) {
      ++accepted_v6;
      EXPECT_EQ(header6->source->address.bytes(), expected) << text;
    }
  }
  // The generator must produce both outcomes, or the comparison proves little.
  EXPECT_GT(accepted_v4, 2000);
  EXPECT_GT(accepted_v6, 2000);
}

// ===================================== Version 2 =====================================

TEST(ProxyProtocolV2, Tcp4) {
  Bytes header_bytes = v2(cmd_proxy, tcp4, ip4_block);
  Bytes stream = concat({header_bytes, bytes_of("\x16\x03\x01")});
  auto header = parse(stream);
  ASSERT_TRUE(header.has_value()) << to_string(header.error());
  EXPECT_EQ(header->version, 2);
  EXPECT_EQ(header->command, Command::proxy);
  EXPECT_EQ(header->source, endpoint("192.0.2.1:56324"));
  EXPECT_EQ(header->destination, endpoint("198.51.100.7:443"));
  EXPECT_EQ(header->length, 28u);
  EXPECT_TRUE(header->tlvs.empty());
}

TEST(ProxyProtocolV2, Tcp6WithTlvs) {
  Bytes ssl = ssl_value({tlv(0x21, "TLSv1.3"), tlv(0x23, "TLS_AES_128_GCM_SHA256")});
  Bytes header_bytes =
      v2(cmd_proxy, tcp6,
         concat({ip6_block(), tlv(pp2_type::alpn, "h2"), tlv(pp2_type::authority, "example.com"),
                 tlv(pp2_type::noop, ""), tlv(pp2_type::unique_id, std::string(128, 'u')),
                 tlv(pp2_type::ssl, as_string(ssl)), tlv(pp2_type::netns, "blue"),
                 tlv(0xE0, std::string("\0\xff", 2)), tlv(pp2_type::noop, "pad")}));
  auto header = parse(header_bytes);
  ASSERT_TRUE(header.has_value()) << to_string(header.error());
  EXPECT_EQ(header->source, endpoint("[2001:db8::1]:40000"));
  EXPECT_EQ(header->destination, endpoint("[2001:db8::2]:8443"));
  EXPECT_EQ(header->length, header_bytes.size());
  const std::vector<ProxyTlv> expected = {
      {pp2_type::alpn, "h2"},
      {pp2_type::authority, "example.com"},
      {pp2_type::unique_id, std::string(128, 'u')},
      {pp2_type::ssl, as_string(ssl)},
      {pp2_type::netns, "blue"},
      {0xE0, std::string("\0\xff", 2)},
  };
  EXPECT_EQ(header->tlvs, expected);
  EXPECT_EQ(header->find_tlv(pp2_type::authority), "example.com");
  EXPECT_FALSE(header->find_tlv(pp2_type::noop).has_value());
  EXPECT_FALSE(header->find_tlv(pp2_type::crc32c).has_value());
}

TEST(ProxyProtocolV2, MappedAddressStaysV6) {
  Bytes block(36, 0);
  block[10] = block[11] = 0xff;
  block[12] = 192, block[13] = 0, block[14] = 2, block[15] = 1;
  auto header = parse(v2(cmd_proxy, tcp6, block));
  ASSERT_TRUE(header.has_value());
  EXPECT_FALSE(header->source->address.is_v4());
  EXPECT_EQ(header->source->address.unmapped(), *IpAddress::parse("192.0.2.1"));
}

TEST(ProxyProtocolV2, Crc32c) {
  EXPECT_EQ(reference_crc32c(bytes_of("123456789")), 0xE3069283u);  // the CRC-32C check value

  Bytes good =
      v2(cmd_proxy, tcp4, concat({ip4_block, tlv(pp2_type::authority, "a.example")}), true);
  auto header = parse(good);
  ASSERT_TRUE(header.has_value()) << to_string(header.error());
  ASSERT_EQ(header->tlvs.size(), 2u);
  EXPECT_EQ(header->tlvs[1].type, pp2_type::crc32c);

  // Any flipped bit after the fixed part, checksum included, is refused; only the CRC TLV's
  // type byte is spared, since changing it removes the check itself.
  const std::size_t crc_type_at = good.size() - 7;
  for (std::size_t at = 16; at < good.size(); ++at) {
    if (at == crc_type_at) continue;
    for (uint8_t bit : {0x01, 0x02, 0x80}) {
      Bytes bad = good;
      bad[at] ^= bit;
      EXPECT_EQ(error_of(parse(bad)), Error::malformed) << "byte " << at << " bit " << int(bit);
    }
  }

  // CRC computed with the value in the other byte order.
  Bytes swapped = good;
  std::reverse(swapped.end() - 4, swapped.end());
  EXPECT_EQ(error_of(parse(swapped)), Error::malformed);

  // A CRC32C TLV must be 4 bytes, even when its first 4 bytes hold the right sum, and the
  // length is refused as soon as the TLV header is seen.
  Bytes five =
      v2(cmd_proxy, tcp4, concat({ip4_block, tlv(pp2_type::crc32c, std::string(5, '\0'))}));
  uint32_t sum = reference_crc32c(five);
  for (int i = 0; i < 4; ++i) five[five.size() - 5 + i] = static_cast<uint8_t>(sum >> (24 - 8 * i));
  EXPECT_EQ(error_of(parse(five)), Error::malformed);
  five.resize(16 + 12 + 3);
  EXPECT_EQ(error_of(parse(five)), Error::malformed);
  // Only one CRC32C.
  EXPECT_EQ(error_of(parse(v2(cmd_proxy, tcp4, concat({ip4_block, tlv(pp2_type::crc32c, "abc")})))),
            Error::malformed);
  EXPECT_EQ(
      error_of(parse(v2(cmd_proxy, tcp4, concat({ip4_block, tlv(pp2_type::crc32c, "abcde")})))),
      Error::malformed);
  EXPECT_EQ(
      error_of(parse(v2(cmd_proxy, tcp4,
                        concat({ip4_block, tlv(pp2_type::crc32c, std::string(4, '\0'))}), true))),
      Error::malformed);
}

TEST(ProxyProtocolV2, UnixStream) {
  Bytes header_bytes = v2(cmd_proxy, unix_stream, unix_block("/run/lb.sock", "/run/tokgate.sock"));
  auto header = parse(header_bytes);
  ASSERT_TRUE(header.has_value()) << to_string(header.error());
  EXPECT_EQ(header->command, Command::proxy);
  EXPECT_EQ(header->length, 16u + 216u);
  EXPECT_EQ(header->unix_source, "/run/lb.sock");
  EXPECT_EQ(header->unix_destination, "/run/tokgate.sock");
  EXPECT_FALSE(header->source.has_value());
  EXPECT_FALSE(header->destination.has_value());

  // An abstract name keeps its leading NUL; an unnamed socket is empty; a full 108 bytes fits.
  std::string abstract("\0lb", 3);
  std::string full(108, 'p');
  auto other = parse(v2(cmd_proxy, unix_stream, unix_block(abstract, full)));
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(other->unix_source, abstract);
  EXPECT_EQ(other->unix_destination, full);
  auto unnamed = parse(v2(cmd_proxy, unix_stream, unix_block("", "")));
  ASSERT_TRUE(unnamed.has_value());
  EXPECT_EQ(unnamed->unix_source, "");

  // TLVs follow the 216-byte block.
  auto with_tlv = parse(
      v2(cmd_proxy, unix_stream, concat({unix_block("a", "b"), tlv(pp2_type::authority, "x")})));
  ASSERT_TRUE(with_tlv.has_value());
  EXPECT_EQ(with_tlv->find_tlv(pp2_type::authority), "x");

  // The block is 216 bytes, not 2 * sizeof(sockaddr_un) nor an IPv6 block.
  for (std::size_t size : {0u, 36u, 108u, 215u}) {
    EXPECT_EQ(error_of(parse(v2(cmd_proxy, unix_stream, Bytes(size, 'a')))), Error::malformed)
        << size;
  }
}

TEST(ProxyProtocolV2, LocalIgnoresTheBlock) {
  auto bare = parse(v2(cmd_local, 0x00, {}));
  ASSERT_TRUE(bare.has_value());
  EXPECT_EQ(bare->command, Command::local);
  EXPECT_EQ(bare->version, 2);
  EXPECT_EQ(bare->length, 16u);

  // The family is ignored, even an invalid one, and the block is skipped, TLVs and all.
  for (uint8_t family : {tcp4, tcp6, udp4, unix_stream, uint8_t{0xFF}, uint8_t{0x44}}) {
    Bytes block = concat({ip4_block, tlv(pp2_type::crc32c, "bad!"), Bytes{0x01}});
    auto header = parse(v2(cmd_local, family, block));
    ASSERT_TRUE(header.has_value()) << int(family);
    EXPECT_EQ(header->command, Command::local);
    EXPECT_EQ(header->length, 16 + block.size());
    EXPECT_FALSE(header->source.has_value());
    EXPECT_TRUE(header->tlvs.empty());
  }
}

TEST(ProxyProtocolV2, UnspecifiedFamilyOrTransportSkipsTheBlock) {
  for (uint8_t family :
       {uint8_t{0x00}, uint8_t{0x01}, uint8_t{0x02}, uint8_t{0x10}, uint8_t{0x20}, uint8_t{0x30}}) {
    for (const Bytes& block : {Bytes{}, Bytes(5, 0xAA), ip4_block}) {
      auto header = parse(v2(cmd_proxy, family, block));
      ASSERT_TRUE(header.has_value()) << int(family);
      EXPECT_EQ(header->command, Command::proxy);
      EXPECT_EQ(header->length, 16 + block.size());
      EXPECT_FALSE(header->source.has_value());
      EXPECT_FALSE(header->unix_source.has_value());
      EXPECT_TRUE(header->tlvs.empty());
    }
  }
}

TEST(ProxyProtocolV2, DatagramIsUnsupported) {
  EXPECT_EQ(error_of(parse(v2(cmd_proxy, udp4, ip4_block))), Error::unsupported);
  EXPECT_EQ(error_of(parse(v2(cmd_proxy, udp6, ip6_block()))), Error::unsupported);
  EXPECT_EQ(error_of(parse(v2(cmd_proxy, unix_dgram, unix_block("a", "b")))), Error::unsupported);
  // Known from the 14th byte.
  Bytes first14 = v2(cmd_proxy, udp4, ip4_block);
  first14.resize(14);
  EXPECT_EQ(error_of(parse(first14)), Error::unsupported);
}

TEST(ProxyProtocolV2, VersionAndCommand) {
  for (uint8_t version : {0x0, 0x1, 0x3, 0xF}) {
    Bytes header_bytes = v2(static_cast<uint8_t>(version << 4 | 1), tcp4, ip4_block);
    EXPECT_EQ(error_of(parse(header_bytes)), Error::unsupported) << int(version);
    header_bytes.resize(13);
    EXPECT_EQ(error_of(parse(header_bytes)), Error::unsupported) << int(version);
  }
  for (uint8_t command = 2; command < 16; ++command) {
    Bytes header_bytes = v2(static_cast<uint8_t>(0x20 | command), tcp4, ip4_block);
    EXPECT_EQ(error_of(parse(header_bytes)), Error::malformed) << int(command);
    header_bytes.resize(13);
    EXPECT_EQ(error_of(parse(header_bytes)), Error::malformed) << int(command);
  }
}

TEST(ProxyProtocolV2, UnassignedFamilyOrTransportIsMalformed) {
  for (int family = 0; family < 16; ++family) {
    for (int transport = 0; transport < 16; ++transport) {
      if (family <= 3 && transport <= 2) continue;
      Bytes header_bytes =
          v2(cmd_proxy, static_cast<uint8_t>(family << 4 | transport), ip6_block());
      EXPECT_EQ(error_of(parse(header_bytes)), Error::malformed) << family << "/" << transport;
    }
  }
}

TEST(ProxyProtocolV2, LengthMustCoverTheAddressBlock) {
  struct Case {
    uint8_t family;
    std::size_t block;
  };
  for (Case c : {Case{tcp4, 12}, Case{tcp6, 36}, Case{unix_stream, 216}}) {
    for (std::size_t size = 0; size < c.block; ++size) {
      Bytes header_bytes = v2(cmd_proxy, c.family, Bytes(size, 1));
      EXPECT_EQ(error_of(parse(header_bytes)), Error::malformed) << int(c.family) << " " << size;
      // Refused from the length field alone, before the block arrives.
      header_bytes.resize(16);
      EXPECT_EQ(error_of(parse(header_bytes)), Error::malformed) << int(c.family) << " " << size;
    }
  }
  // A TCP4 block announced as IPv6.
  EXPECT_EQ(error_of(parse(v2(cmd_proxy, tcp6, ip4_block))), Error::malformed);
}

TEST(ProxyProtocolV2, HeaderSizeCap) {
  // The largest accepted header: 16 + 12 + a NOOP padding it to max_proxy_header_v2_size.
  std::size_t padding = max_proxy_header_v2_size - 16 - 12 - 3;
  Bytes largest =
      v2(cmd_proxy, tcp4, concat({ip4_block, tlv(pp2_type::noop, std::string(padding, 0))}));
  ASSERT_EQ(largest.size(), max_proxy_header_v2_size);
  auto header = parse(largest);
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(header->length, max_proxy_header_v2_size);

  Bytes too_large =
      v2(cmd_proxy, tcp4, concat({ip4_block, tlv(pp2_type::noop, std::string(padding + 1, 0))}));
  EXPECT_EQ(error_of(parse(too_large)), Error::unsupported);
  too_large.resize(16);  // known from the length field
  EXPECT_EQ(error_of(parse(too_large)), Error::unsupported);

  // The largest length field, also for LOCAL whose block is otherwise not read.
  for (uint8_t command : {cmd_local, cmd_proxy}) {
    Bytes max_length = v2_signature;
    max_length.insert(max_length.end(), {command, tcp4, 0xFF, 0xFF});
    EXPECT_EQ(error_of(parse(max_length)), Error::unsupported);
  }
}

TEST(ProxyProtocolV2, TlvLayout) {
  auto with_tlvs = [](const Bytes& tlvs) { return v2(cmd_proxy, tcp4, concat({ip4_block, tlvs})); };
  // A value running past the header, by one byte or by a lot.
  Bytes overrun = with_tlvs(Bytes{pp2_type::alpn, 0x00, 0x03, 'h', '2'});
  EXPECT_EQ(error_of(parse(overrun)), Error::malformed);
  EXPECT_EQ(error_of(parse(with_tlvs(Bytes{pp2_type::alpn, 0xFF, 0xFF, 'h', '2'}))),
            Error::malformed);
  // ... refused from the TLV header, before the rest arrives.
  Bytes overrun_head = overrun;
  overrun_head.resize(16 + 12 + 3);
  EXPECT_EQ(error_of(parse(overrun_head)), Error::malformed);
  // A length field that ends the header inside a TLV: 1 or 2 stray bytes.
  EXPECT_EQ(error_of(parse(with_tlvs(Bytes{0x01}))), Error::malformed);
  EXPECT_EQ(error_of(parse(with_tlvs(Bytes{0x01, 0x00}))), Error::malformed);
  EXPECT_EQ(error_of(parse(with_tlvs(concat({tlv(1, "h2"), Bytes{0x00, 0x00}})))),
            Error::malformed);
  // Empty values are fine.
  auto empty = parse(with_tlvs(concat({tlv(pp2_type::alpn, ""), tlv(0xF0, "")})));
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->tlvs.size(), 2u);

  // UNIQUE_ID holds at most 128 bytes.
  EXPECT_TRUE(parse(with_tlvs(tlv(pp2_type::unique_id, std::string(128, 'x')))).has_value());
  EXPECT_EQ(error_of(parse(with_tlvs(tlv(pp2_type::unique_id, std::string(129, 'x'))))),
            Error::malformed);

  // SSL: 5 fixed bytes, then sub-TLVs filling the value exactly.
  EXPECT_TRUE(parse(with_tlvs(tlv(pp2_type::ssl, as_string(ssl_value({}))))).has_value());
  EXPECT_EQ(error_of(parse(with_tlvs(tlv(pp2_type::ssl, "abcd")))), Error::malformed);
  Bytes ssl_overrun = ssl_value({Bytes{0x21, 0x00, 0x09, 'T', 'L', 'S'}});
  EXPECT_EQ(error_of(parse(with_tlvs(tlv(pp2_type::ssl, as_string(ssl_overrun))))),
            Error::malformed);
  Bytes ssl_stray = ssl_value({tlv(0x22, "cn"), Bytes{0x21, 0x00}});
  EXPECT_EQ(error_of(parse(with_tlvs(tlv(pp2_type::ssl, as_string(ssl_stray))))), Error::malformed);
}

TEST(ProxyProtocolV2, TlvCountIsBounded) {
  auto with_count = [](std::size_t count, std::size_t noops) {
    Bytes body = ip4_block;
    for (std::size_t i = 0; i < count; ++i) body = concat({body, tlv(0xE1, "v")});
    for (std::size_t i = 0; i < noops; ++i) body = concat({body, tlv(pp2_type::noop, "")});
    return v2(cmd_proxy, tcp4, body);
  };
  auto at_limit = parse(with_count(max_proxy_header_tlvs, 200));
  ASSERT_TRUE(at_limit.has_value());
  EXPECT_EQ(at_limit->tlvs.size(), max_proxy_header_tlvs);
  EXPECT_EQ(error_of(parse(with_count(max_proxy_header_tlvs + 1, 0))), Error::unsupported);
}

// =================================== Both versions ===================================

TEST(ProxyProtocol, NotProxyProtocol) {
  const Bytes streams[] = {
      bytes_of("GET / HTTP/1.1\r\n"),
      bytes_of("CONNECT example.com:443 HTTP/1.1\r\n"),
      Bytes{0x16, 0x03, 0x01, 0x02, 0x00},
      bytes_of("PROXZ"),
      bytes_of("PROXYTCP4"),  // the space is part of the signature
      bytes_of("proxy TCP4 "),
      bytes_of(" PROXY TCP4"),
      bytes_of("\r\n\r\n"),  // HTTP's end of headers, then...
      bytes_of("\r\n\r\nX"),
      Bytes{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0B},
      Bytes{0x00},
  };
  for (const Bytes& stream : streams) {
    if (stream == bytes_of("\r\n\r\n")) {
      EXPECT_EQ(error_of(parse(stream)), Error::need_more);  // still a v2 signature prefix
      continue;
    }
    EXPECT_EQ(error_of(parse(stream)), Error::not_proxy_protocol) << as_string(stream);
  }
  EXPECT_EQ(error_of(parse(Bytes{})), Error::need_more);
}

TEST(ProxyProtocol, EveryStrictPrefixNeedsMore) {
  for (const Bytes& header_bytes : valid_headers()) {
    auto full = parse(header_bytes);
    ASSERT_TRUE(full.has_value()) << as_string(header_bytes);
    EXPECT_EQ(full->length, header_bytes.size());
    for (std::size_t size = 0; size < header_bytes.size(); ++size) {
      Bytes prefix(header_bytes.begin(), header_bytes.begin() + static_cast<std::ptrdiff_t>(size));
      EXPECT_EQ(error_of(parse(prefix)), Error::need_more)
          << as_string(header_bytes) << " cut at " << size;
    }
  }
}

TEST(ProxyProtocol, BytesAfterTheHeaderAreIgnored) {
  std::mt19937 random(99);
  for (const Bytes& header_bytes : valid_headers()) {
    auto alone = parse(header_bytes);
    ASSERT_TRUE(alone.has_value());
    for (int round = 0; round < 20; ++round) {
      Bytes stream = header_bytes;
      for (std::size_t n = random() % 300; n > 0; --n)
        stream.push_back(static_cast<uint8_t>(random()));
      auto followed = parse(stream);
      ASSERT_TRUE(followed.has_value());
      EXPECT_TRUE(same_header(*alone, *followed));
    }
  }
}

TEST(ProxyProtocol, SeedCorpusHasTheResultItsNameSays) {
  const std::filesystem::path corpus =
      std::filesystem::path(TOKGATE_TEST_DATA) / ".." / "fuzz" / "proxy_protocol";
  ASSERT_TRUE(std::filesystem::is_directory(corpus)) << corpus;
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(corpus)) {
    std::ifstream file(entry.path(), std::ios::binary);
    Bytes stream{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
    std::string expected = entry.path().extension().string().substr(1);
    auto result = parse(stream);
    std::string actual = result.has_value() ? "ok" : std::string(to_string(result.error()));
    EXPECT_EQ(actual, expected) << entry.path().filename();
    ++files;
  }
  EXPECT_GE(files, 20);
}

// Checks what must hold for any input: a header's length lies within the bytes; need_more only
// below the size cap and only if every shorter prefix needs more too; a verdict (header or
// error) never changes when more bytes follow.
void expect_consistent(const Bytes& stream, std::mt19937& random) {
  auto result = parse(stream);
  if (result.has_value()) {
    ASSERT_LE(result->length, stream.size());
    ASSERT_LE(result->length, max_proxy_header_size);
    ASSERT_TRUE(result->version == 1 || result->version == 2);
    ASSERT_LE(result->tlvs.size(), max_proxy_header_tlvs);
    auto exact =
        parse(Bytes(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(result->length)));
    ASSERT_TRUE(exact.has_value());
    ASSERT_TRUE(same_header(*result, *exact));
    if (result->length > 0) {
      Bytes shorter(stream.begin(),
                    stream.begin() + static_cast<std::ptrdiff_t>(result->length - 1));
      ASSERT_EQ(error_of(parse(shorter)), Error::need_more);
    }
  } else if (result.error() == Error::need_more) {
    ASSERT_LT(stream.size(), max_proxy_header_size);
    std::size_t cut = stream.empty() ? 0 : random() % stream.size();
    ASSERT_EQ(
        error_of(parse(Bytes(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(cut)))),
        Error::need_more);
    return;
  }
  Bytes longer = stream;
  for (std::size_t n = 1 + random() % 64; n > 0; --n)
    longer.push_back(static_cast<uint8_t>(random()));
  auto extended = parse(longer);
  ASSERT_EQ(extended.has_value(), result.has_value());
  if (result.has_value()) {
    ASSERT_TRUE(same_header(*result, *extended));
  } else {
    ASSERT_EQ(extended.error(), result.error());
  }
}

TEST(ProxyProtocol, RandomMutationsAreSafeAndConsistent) {
  std::mt19937 random(20260107);
  const std::vector<Bytes> seeds = valid_headers();
  int outcomes[5] = {};
  for (int round = 0; round < 30000; ++round) {
    Bytes stream = seeds[random() % seeds.size()];
    for (int changes = 1 + static_cast<int>(random() % 3); changes > 0; --changes) {
      std::size_t at = random() % stream.size();
      switch (random() % 5) {
        case 0:
          stream[at] ^= static_cast<uint8_t>(1u << (random() % 8));
          break;
        case 1:
          stream[at] = static_cast<uint8_t>(random());
          break;
        case 2:  // text-shaped bytes for v1
          stream[at] = static_cast<uint8_t>(" .:0123456789\r\nTCP"[random() % 18]);
          break;
        case 3:
          stream.insert(stream.begin() + static_cast<std::ptrdiff_t>(at),
                        static_cast<uint8_t>(random()));
          break;
        default:
          if (stream.size() > 1) stream.erase(stream.begin() + static_cast<std::ptrdiff_t>(at));
      }
    }
    if (random() % 4 == 0) stream.resize(random() % (stream.size() + 1));
    auto result = parse(stream);
    ++outcomes[result.has_value() ? 4 : static_cast<int>(result.error())];
    expect_consistent(stream, random);
    if (testing::Test::HasFatalFailure()) {
      ADD_FAILURE() << "round " << round << ": " << as_string(stream);
      return;
    }
  }
  // Mutations reach every outcome, or the loop tests little.
  for (int count : outcomes) EXPECT_GT(count, 100);
}

TEST(ProxyProtocol, RandomBytesAreSafe) {
  std::mt19937 random(31337);
  for (int round = 0; round < 20000; ++round) {
    Bytes stream(random() % 300);
    for (uint8_t& byte : stream) byte = static_cast<uint8_t>(random());
    // Often start with a signature, so the parsers behind it see random bytes.
    if (round % 3 == 0 && stream.size() >= 12)
      std::copy(v2_signature.begin(), v2_signature.end(), stream.begin());
    if (round % 3 == 1 && stream.size() >= 6) std::copy_n("PROXY ", 6, stream.begin());
    expect_consistent(stream, random);
    if (testing::Test::HasFatalFailure()) return;
  }
}

TEST(ProxyProtocol, ErrorNames) {
  EXPECT_EQ(to_string(Error::need_more), "need_more");
  EXPECT_EQ(to_string(Error::not_proxy_protocol), "not_proxy_protocol");
  EXPECT_EQ(to_string(Error::malformed), "malformed");
  EXPECT_EQ(to_string(Error::unsupported), "unsupported");
}

}  // namespace
}  // namespace tokgate::proxy
