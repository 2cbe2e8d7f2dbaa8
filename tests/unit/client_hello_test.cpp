#include "proxy/client_hello.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace tokgate::proxy {

// Found by gtest through argument-dependent lookup, hence outside the unnamed namespace.
void PrintTo(ClientHelloError error, std::ostream* out) {
  *out << to_string(error);
}

namespace {

using Bytes = std::vector<uint8_t>;

// --- Fixtures: real ClientHellos captured on loopback (tests/data/clienthello/README.md). ---

Bytes read_fixture(std::string_view name) {
  std::string path = std::string(TOKGATE_TEST_DATA) + "/clienthello/" + std::string(name);
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file) << "cannot open " << path;
  return Bytes(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

struct Fixture {
  std::string_view file;
  std::string_view sni;
  std::vector<std::string> alpn;
  bool offers_tls13;
  std::size_t records;
};

std::ostream& operator<<(std::ostream& out, const Fixture& fixture) {
  return out << fixture.file;
}

const std::vector<std::string> openssl_long_alpn = {
    "h2",   "http/1.1",    "http/1.0", "spdy/3.1",    "spdy/3",      "spdy/2",
    "h2c",  "stun.turn",   "webrtc",   "c-webrtc",    "ftp",         "imap",
    "pop3", "managesieve", "coap",     "xmpp-client", "xmpp-server", "acme-tls/1",
    "mqtt", "dot",         "ntske/1",  "sunrpc"};

const Fixture fixtures[] = {
    {"curl_h2.bin", "www.tiktok.com", {"h2", "http/1.1"}, true, 1},
    {"curl_http11.bin", "www.tiktok.com", {"http/1.1"}, true, 1},
    {"curl_localhost.bin", "localhost", {"h2", "http/1.1"}, true, 1},
    {"openssl_tls13_alpn.bin", "www.tiktok.com", {"h2", "http/1.1"}, true, 1},
    {"openssl_tls12.bin", "www.tiktok.com", {}, false, 1},
    {"openssl_nosni.bin", "", {}, true, 1},
    {"openssl_split_records.bin", "www.tiktok.com", openssl_long_alpn, true, 2},
    {"chromium.bin", "www.tiktok.com", {"h2", "http/1.1"}, true, 1},
};

// Concatenates the fragments of a fixture's records: the bare handshake message.
Bytes handshake_message(const Bytes& stream) {
  Bytes message;
  for (std::size_t offset = 0; offset + 5 <= stream.size();) {
    std::size_t length = (stream[offset + 3] << 8) | stream[offset + 4];
    message.insert(message.end(), stream.begin() + offset + 5,
                   stream.begin() + std::min(stream.size(), offset + 5 + length));
    offset += 5 + length;
  }
  return message;
}

// Wraps a handshake message in handshake records of at most `fragment` bytes each.
Bytes to_records(const Bytes& message, std::size_t fragment, uint16_t version = 0x0301) {
  Bytes stream;
  for (std::size_t offset = 0; offset < message.size(); offset += fragment) {
    std::size_t length = std::min(fragment, message.size() - offset);
    stream.insert(stream.end(),
                  {22, static_cast<uint8_t>(version >> 8), static_cast<uint8_t>(version),
                   static_cast<uint8_t>(length >> 8), static_cast<uint8_t>(length)});
    stream.insert(stream.end(), message.begin() + offset, message.begin() + offset + length);
  }
  return stream;
}

std::size_t count_records(const Bytes& stream) {
  std::size_t count = 0;
  for (std::size_t offset = 0; offset + 5 <= stream.size(); ++count) {
    offset += 5 + ((stream[offset + 3] << 8) | stream[offset + 4]);
  }
  return count;
}

ClientHelloError error_of(const Bytes& stream, std::size_t max_bytes = 64 * 1024) {
  auto hello = parse_client_hello(stream, max_bytes);
  EXPECT_FALSE(hello.has_value());
  return hello ? ClientHelloError{} : hello.error();
}

void expect_same_hello(const ClientHello& actual, const ClientHello& expected) {
  EXPECT_EQ(actual.legacy_version, expected.legacy_version);
  EXPECT_EQ(actual.sni, expected.sni);
  EXPECT_EQ(actual.alpn, expected.alpn);
  EXPECT_EQ(actual.cipher_suites, expected.cipher_suites);
  EXPECT_EQ(actual.extensions, expected.extensions);
  EXPECT_EQ(actual.supported_versions, expected.supported_versions);
  EXPECT_EQ(actual.supported_groups, expected.supported_groups);
  EXPECT_EQ(actual.signature_algorithms, expected.signature_algorithms);
  EXPECT_EQ(actual.ec_point_formats, expected.ec_point_formats);
}

class RealClientHello : public testing::TestWithParam<Fixture> {
 protected:
  Bytes stream_ = read_fixture(GetParam().file);
};

TEST_P(RealClientHello, ParsesSniAndAlpn) {
  const Fixture& fixture = GetParam();
  ASSERT_EQ(count_records(stream_), fixture.records);
  auto hello = parse_client_hello(stream_);
  ASSERT_TRUE(hello) << to_string(hello.error());
  EXPECT_EQ(hello->sni, fixture.sni);
  EXPECT_EQ(hello->alpn, fixture.alpn);
  EXPECT_EQ(hello->total_bytes, stream_.size());
  EXPECT_EQ(hello->record_version, 0x0301);
  EXPECT_EQ(hello->legacy_version, 0x0303);
  EXPECT_FALSE(hello->cipher_suites.empty());
  EXPECT_FALSE(hello->supported_groups.empty());
  EXPECT_FALSE(hello->signature_algorithms.empty());
  bool has_sni_extension = std::ranges::count(hello->extensions, 0) == 1;
  EXPECT_EQ(has_sni_extension, !fixture.sni.empty());
  bool offers_tls13 = std::ranges::count(hello->supported_versions, 0x0304) == 1;
  EXPECT_EQ(offers_tls13, fixture.offers_tls13);
}

TEST_P(RealClientHello, EveryStrictPrefixNeedsMore) {
  for (std::size_t size = 0; size < stream_.size(); ++size) {
    auto hello = parse_client_hello(std::span(stream_).first(size));
    ASSERT_FALSE(hello) << "prefix " << size;
    ASSERT_EQ(hello.error(), ClientHelloError::need_more) << "prefix " << size;
  }
}

TEST_P(RealClientHello, BytesAfterTheHelloAreIgnored) {
  Bytes stream = stream_;
  // A TLS 1.3 middlebox-compatibility ChangeCipherSpec, then the start of early data.
  stream.insert(stream.end(), {20, 3, 3, 0, 1, 1, 23, 3, 3, 0x40, 0});
  auto hello = parse_client_hello(stream);
  ASSERT_TRUE(hello) << to_string(hello.error());
  EXPECT_EQ(hello->total_bytes, stream_.size());
}

TEST_P(RealClientHello, OneByteRecordsParseIdentically) {
  auto expected = parse_client_hello(stream_);
  ASSERT_TRUE(expected);
  Bytes message = handshake_message(stream_);
  Bytes stream = to_records(message, 1);
  auto hello = parse_client_hello(stream);
  ASSERT_TRUE(hello) << to_string(hello.error());
  expect_same_hello(*hello, *expected);
  EXPECT_EQ(hello->total_bytes, 6 * message.size());
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{5}, std::size_t{6},
                           std::size_t{7}, stream.size() / 2, stream.size() - 1}) {
    EXPECT_EQ(error_of(Bytes(stream.begin(), stream.begin() + size)), ClientHelloError::need_more)
        << "prefix " << size;
  }
}

TEST_P(RealClientHello, RandomRecordSplitsParseIdentically) {
  auto expected = parse_client_hello(stream_);
  ASSERT_TRUE(expected);
  Bytes message = handshake_message(stream_);
  std::mt19937 random(1234);
  for (int round = 0; round < 50; ++round) {
    Bytes stream;
    for (std::size_t offset = 0; offset < message.size();) {
      std::size_t length = std::min<std::size_t>(1 + random() % 300, message.size() - offset);
      Bytes part = to_records(Bytes(message.begin() + offset, message.begin() + offset + length),
                              length, 0x0303);
      stream.insert(stream.end(), part.begin(), part.end());
      offset += length;
    }
    auto hello = parse_client_hello(stream);
    ASSERT_TRUE(hello) << to_string(hello.error());
    expect_same_hello(*hello, *expected);
    EXPECT_EQ(hello->record_version, 0x0303);
    EXPECT_EQ(hello->total_bytes, stream.size());
  }
}

TEST_P(RealClientHello, MaxBytesIsExact) {
  Bytes message = handshake_message(stream_);
  ASSERT_TRUE(parse_client_hello(stream_, stream_.size()));
  EXPECT_EQ(error_of(stream_, stream_.size() - 1), ClientHelloError::too_large);
  // Known as soon as a record header, or the handshake header, says the hello cannot fit.
  if (GetParam().records == 1) {
    EXPECT_EQ(error_of(Bytes(stream_.begin(), stream_.begin() + 5), stream_.size() - 1),
              ClientHelloError::too_large);
  }
  Bytes split = to_records(message, 1);
  // After four 1-byte records, the rest needs at least itself plus one record header.
  std::size_t fewest = 4 * 6 + (message.size() - 4) + 5;
  Bytes handshake_header(split.begin(), split.begin() + 24);
  EXPECT_EQ(error_of(handshake_header, fewest - 1), ClientHelloError::too_large);
  EXPECT_EQ(error_of(handshake_header, fewest), ClientHelloError::need_more);
  EXPECT_EQ(error_of(Bytes(split.begin(), split.begin() + 18), fewest - 1),
            ClientHelloError::need_more);
  // The window is the first max_bytes, whatever else was read.
  EXPECT_EQ(error_of(split, split.size() - 1), ClientHelloError::too_large);
}

// Changing any single byte may make the hello invalid but must never crash, and what parses
// must stay within the stream.
TEST_P(RealClientHello, EverySingleByteMutationIsSafe) {
  for (std::size_t position = 0; position < stream_.size(); ++position) {
    for (uint8_t value : {0x00, 0x01, 0x7f, 0x80, 0xff}) {
      Bytes stream = stream_;
      stream[position] = value;
      auto hello = parse_client_hello(stream);
      if (hello) {
        EXPECT_LE(hello->total_bytes, stream.size());
      }
    }
  }
}

// Shortening any length field inside the handshake message leaves bytes the structure does not
// account for; lengthening one overruns its parent. Either way: malformed. (Not so for an ALPN
// name's length: the bytes after it can happen to read as further names, as they do in
// openssl_split_records.bin.)
TEST_P(RealClientHello, InnerLengthOffByOneIsMalformed) {
  Bytes message = handshake_message(stream_);
  // Offsets of the big-endian length fields (offset, width), located by walking the layout.
  std::vector<std::pair<std::size_t, std::size_t>> lengths;
  auto u16_at = [&](std::size_t at) { return std::size_t(message[at] << 8 | message[at + 1]); };
  std::size_t at = 4 + 2 + 32;
  lengths.emplace_back(at, 1);  // session id
  at += 1 + message[at];
  lengths.emplace_back(at, 2);  // cipher suites
  at += 2 + u16_at(at);
  lengths.emplace_back(at, 1);  // compression methods
  at += 1 + message[at];
  lengths.emplace_back(at, 2);  // extensions
  for (at += 2; at < message.size(); at += 4 + u16_at(at + 2)) {
    uint16_t type = u16_at(at);
    lengths.emplace_back(at + 2, 2);
    if (type == 0) lengths.insert(lengths.end(), {{at + 4, 2}, {at + 7, 2}});  // list, name
    if (type == 16) lengths.emplace_back(at + 4, 2);                           // ALPN list
    if (type == 10 || type == 13) lengths.emplace_back(at + 4, 2);
    if (type == 11 || type == 43) lengths.emplace_back(at + 4, 1);
  }
  ASSERT_EQ(at, message.size());
  ASSERT_GT(lengths.size(), 10u);
  for (auto [offset, width] : lengths) {
    for (int delta : {-1, +1}) {
      Bytes mutated = message;
      std::size_t low = offset + width - 1;
      // Adjust the field as a number, carrying into the high byte of a two-byte field.
      std::size_t value = width == 1 ? mutated[offset] : u16_at(offset);
      if (value == 0 && delta < 0) continue;
      value += delta;
      mutated[low] = static_cast<uint8_t>(value);
      if (width == 2) mutated[offset] = static_cast<uint8_t>(value >> 8);
      EXPECT_EQ(error_of(to_records(mutated, 1 << 14)), ClientHelloError::malformed)
          << "length at " << offset << " changed by " << delta;
    }
  }
}

std::string fixture_name(const testing::TestParamInfo<Fixture>& param_info) {
  return std::string(param_info.param.file.substr(0, param_info.param.file.find('.')));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RealClientHello, testing::ValuesIn(fixtures), fixture_name);

TEST(ClientHello, ChromiumUsesGreaseAndPostQuantumKeyShare) {
  Bytes stream = read_fixture("chromium.bin");
  auto hello = parse_client_hello(stream);
  ASSERT_TRUE(hello);
  EXPECT_GT(stream.size(), 1500u);  // more than one Ethernet frame
  EXPECT_TRUE(is_grease(hello->cipher_suites.front()));
  EXPECT_TRUE(is_grease(hello->extensions.front()));
  EXPECT_TRUE(is_grease(hello->supported_groups.front()));
  EXPECT_EQ(std::ranges::count(hello->supported_groups, 0x11ec), 1);  // X25519MLKEM768
  EXPECT_FALSE(is_grease(0x1301));
  EXPECT_FALSE(is_grease(0x0a1a));
}

TEST(ClientHello, OpensslTls12OffersNoSupportedVersions) {
  auto hello = parse_client_hello(read_fixture("openssl_tls12.bin"));
  ASSERT_TRUE(hello);
  EXPECT_TRUE(hello->supported_versions.empty());
  EXPECT_EQ(std::ranges::count(hello->extensions, 43), 0);
  EXPECT_FALSE(hello->ec_point_formats.empty());
}

// --- Not TLS. ---

Bytes bytes_of(std::string_view text) {
  return Bytes(text.begin(), text.end());
}

TEST(ClientHello, PlainHttpIsNotTls) {
  EXPECT_EQ(error_of(bytes_of("GET / HTTP/1.1\r\nHost: www.tiktok.com\r\n\r\n")),
            ClientHelloError::not_tls);
  EXPECT_EQ(error_of(bytes_of("CONNECT www.tiktok.com:443 HTTP/1.1\r\n")),
            ClientHelloError::not_tls);
  EXPECT_EQ(error_of(bytes_of("G")), ClientHelloError::not_tls);
  EXPECT_EQ(error_of(bytes_of("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")), ClientHelloError::not_tls);
}

TEST(ClientHello, SslV2HelloIsNotTls) {
  // SSLv2-compatible CLIENT-HELLO: 2-byte header with the top bit set, msg type 1, version 3.1.
  EXPECT_EQ(error_of({0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15}), ClientHelloError::not_tls);
}

TEST(ClientHello, OtherRecordsFirstAreNotTlsHandshakes) {
  EXPECT_EQ(error_of({21, 3, 3, 0, 2, 2, 40}), ClientHelloError::not_tls);  // alert
  EXPECT_EQ(error_of({23, 3, 3, 0, 1, 0}), ClientHelloError::not_tls);      // application data
  EXPECT_EQ(error_of({22, 4, 1}), ClientHelloError::not_tls);               // no TLS 4.x
  EXPECT_EQ(error_of({22}), ClientHelloError::need_more);
  EXPECT_EQ(error_of({}), ClientHelloError::need_more);
}

// --- Synthetic hellos: one field wrong at a time. ---

void append_u16(Bytes& out, std::size_t value) {
  out.push_back(static_cast<uint8_t>(value >> 8));
  out.push_back(static_cast<uint8_t>(value));
}

Bytes vector8(const Bytes& body) {
  Bytes out{static_cast<uint8_t>(body.size())};
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Bytes vector16(const Bytes& body) {
  Bytes out;
  append_u16(out, body.size());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Bytes extension(uint16_t type, const Bytes& data) {
  Bytes out;
  append_u16(out, type);
  return concat({out, vector16(data)});
}

Bytes sni_extension(std::string_view host) {
  return extension(0, vector16(concat({{0}, vector16(bytes_of(host))})));
}

Bytes alpn_extension(std::initializer_list<std::string_view> names) {
  Bytes list;
  for (std::string_view name : names) list = concat({list, vector8(bytes_of(name))});
  return extension(16, vector16(list));
}

struct HelloParts {
  uint16_t legacy_version = 0x0303;
  Bytes session_id = Bytes(32, 0x55);
  Bytes cipher_suites = {0x13, 0x01, 0xc0, 0x2f};
  Bytes compression_methods = {0};
  std::optional<Bytes> extensions =
      concat({sni_extension("www.tiktok.com"), alpn_extension({"h2", "http/1.1"}),
              extension(43, {4, 3, 4, 3, 3})});
};

Bytes hello_message(const HelloParts& parts) {
  Bytes body;
  append_u16(body, parts.legacy_version);
  body.insert(body.end(), 32, 0xaa);
  body = concat({body, vector8(parts.session_id), vector16(parts.cipher_suites),
                 vector8(parts.compression_methods)});
  if (parts.extensions) body = concat({body, vector16(*parts.extensions)});
  Bytes message = {1, static_cast<uint8_t>(body.size() >> 16)};
  append_u16(message, body.size() & 0xffff);
  return concat({message, body});
}

Bytes hello_with_extensions(std::initializer_list<Bytes> extensions) {
  HelloParts parts;
  parts.extensions = concat(extensions);
  return to_records(hello_message(parts), 1 << 14);
}

TEST(ClientHello, SyntheticHelloParses) {
  auto hello = parse_client_hello(to_records(hello_message({}), 1 << 14));
  ASSERT_TRUE(hello) << to_string(hello.error());
  EXPECT_EQ(hello->sni, "www.tiktok.com");
  EXPECT_EQ(hello->alpn, (std::vector<std::string>{"h2", "http/1.1"}));
  EXPECT_EQ(hello->supported_versions, (std::vector<uint16_t>{0x0304, 0x0303}));
  EXPECT_EQ(hello->extensions, (std::vector<uint16_t>{0, 16, 43}));
}

TEST(ClientHello, HelloWithoutExtensionsParses) {
  HelloParts parts;
  parts.legacy_version = 0x0301;
  parts.extensions.reset();
  auto hello = parse_client_hello(to_records(hello_message(parts), 1 << 14));
  ASSERT_TRUE(hello) << to_string(hello.error());
  EXPECT_EQ(hello->legacy_version, 0x0301);
  EXPECT_TRUE(hello->sni.empty());
  EXPECT_TRUE(hello->extensions.empty());
}

TEST(ClientHello, EmptyExtensionBlockParses) {
  HelloParts parts;
  parts.extensions = Bytes{};
  EXPECT_TRUE(parse_client_hello(to_records(hello_message(parts), 1 << 14)));
}

TEST(ClientHello, MalformedFixedFields) {
  auto malformed = [](const HelloParts& parts) {
    return error_of(to_records(hello_message(parts), 1 << 14));
  };
  HelloParts parts;
  parts.legacy_version = 0x0200;
  EXPECT_EQ(malformed(parts), ClientHelloError::malformed);
  parts = {};
  parts.session_id = Bytes(33, 1);
  EXPECT_EQ(malformed(parts), ClientHelloError::malformed);
  parts = {};
  parts.cipher_suites = {};
  EXPECT_EQ(malformed(parts), ClientHelloError::malformed);
  parts = {};
  parts.cipher_suites = {0x13, 0x01, 0xc0};
  EXPECT_EQ(malformed(parts), ClientHelloError::malformed);
  parts = {};
  parts.compression_methods = {};
  EXPECT_EQ(malformed(parts), ClientHelloError::malformed);
}

TEST(ClientHello, SniValidation) {
  auto sni_of = [](std::string_view host) -> std::expected<std::string, ClientHelloError> {
    auto hello = parse_client_hello(hello_with_extensions({sni_extension(host)}));
    if (!hello) return std::unexpected(hello.error());
    return hello->sni;
  };
  EXPECT_EQ(sni_of("www.tiktok.com"), "www.tiktok.com");
  EXPECT_EQ(sni_of("WWW.TikTok.COM"), "WWW.TikTok.COM");    // kept as sent
  EXPECT_EQ(sni_of("www.tiktok.com."), "www.tiktok.com.");  // trailing dot kept as sent
  EXPECT_EQ(sni_of("_dmarc.tiktok-cdn.com"), "_dmarc.tiktok-cdn.com");
  EXPECT_EQ(sni_of("localhost"), "localhost");
  std::string label63(63, 'a');
  std::string longest = label63 + "." + label63 + "." + label63 + "." + std::string(61, 'b');
  ASSERT_EQ(longest.size(), 253u);
  EXPECT_EQ(sni_of(longest), longest);
  for (std::string_view bad :
       {std::string_view(""), std::string_view("."), std::string_view(".tiktok.com"),
        std::string_view("www..tiktok.com"), std::string_view("tiktok.com.."),
        std::string_view("www.tiktok.com\0.evil", 20), std::string_view("www.tik\ttok.com"),
        std::string_view("www.tiktok.com\r\nX: y"),
        std::string_view("b\xc3\xbc"
                         "cher.de"),
        std::string_view("www.tiktok.com:443"), std::string_view("[::1]"),
        std::string_view("a b.com"), std::string_view("*.tiktok.com")}) {
    EXPECT_EQ(sni_of(bad), std::unexpected(ClientHelloError::malformed))
        << testing::PrintToString(bad);
  }
  EXPECT_EQ(sni_of(std::string(64, 'a') + ".com"), std::unexpected(ClientHelloError::malformed));
  EXPECT_EQ(sni_of(longest + "b"), std::unexpected(ClientHelloError::malformed));
}

TEST(ClientHello, SniListShapes) {
  Bytes host = vector16(bytes_of("www.tiktok.com"));
  auto sni_with_list = [](const Bytes& list) {
    return error_of(hello_with_extensions({extension(0, vector16(list))}));
  };
  // Only a non-host_name entry.
  EXPECT_EQ(sni_with_list(concat({{1}, host})), ClientHelloError::malformed);
  // Two host names.
  EXPECT_EQ(sni_with_list(concat({{0}, host, {0}, host})), ClientHelloError::malformed);
  // Empty list, and an empty extension body (valid only in a ServerHello).
  EXPECT_EQ(sni_with_list({}), ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({extension(0, {})})), ClientHelloError::malformed);
  // Bytes after the list inside the extension.
  EXPECT_EQ(
      error_of(hello_with_extensions({extension(0, concat({vector16(concat({{0}, host})), {0}}))})),
      ClientHelloError::malformed);
}

TEST(ClientHello, AlpnValidation) {
  auto hello = parse_client_hello(hello_with_extensions({alpn_extension({"h2"})}));
  ASSERT_TRUE(hello);
  EXPECT_EQ(hello->alpn, std::vector<std::string>{"h2"});
  EXPECT_EQ(error_of(hello_with_extensions({alpn_extension({"h2", ""})})),
            ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({alpn_extension({})})), ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({extension(16, {})})), ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({extension(16, {0, 3, 2, 'h', '2', 0})})),
            ClientHelloError::malformed);
}

TEST(ClientHello, ExtensionRules) {
  // Duplicates, of a known and of an unknown type.
  EXPECT_EQ(error_of(hello_with_extensions({sni_extension("a.com"), sni_extension("b.com")})),
            ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({extension(0x4469, {}), extension(0x4469, {})})),
            ClientHelloError::malformed);
  // pre_shared_key (41) must come last.
  EXPECT_TRUE(parse_client_hello(
      hello_with_extensions({sni_extension("a.com"), extension(41, {1, 2, 3})})));
  EXPECT_EQ(error_of(hello_with_extensions({extension(41, {1, 2, 3}), sni_extension("a.com")})),
            ClientHelloError::malformed);
  // Lists that must be non-empty and of whole elements.
  EXPECT_EQ(error_of(hello_with_extensions({extension(43, {0})})), ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({extension(43, {3, 3, 4, 3})})),
            ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({extension(10, {0, 0})})), ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({extension(13, {0, 1, 4})})),
            ClientHelloError::malformed);
  EXPECT_EQ(error_of(hello_with_extensions({extension(11, {0})})), ClientHelloError::malformed);
  // Unknown extensions are skipped but listed.
  auto hello = parse_client_hello(
      hello_with_extensions({extension(0xfe0d, {9, 9, 9}), extension(21, Bytes(100, 0))}));
  ASSERT_TRUE(hello);
  EXPECT_EQ(hello->extensions, (std::vector<uint16_t>{0xfe0d, 21}));
  // A truncated extension header.
  HelloParts parts;
  parts.extensions = Bytes{0, 0, 0};
  EXPECT_EQ(error_of(to_records(hello_message(parts), 1 << 14)), ClientHelloError::malformed);
}

TEST(ClientHello, RecordLayerRules) {
  Bytes message = hello_message({});
  Bytes stream = to_records(message, 1 << 14);
  // Bytes in the hello's last record after the hello.
  Bytes longer = message;
  longer.insert(longer.end(), {2, 0, 0, 0});
  EXPECT_EQ(error_of(to_records(longer, 1 << 14)), ClientHelloError::malformed);
  // A ChangeCipherSpec record between two fragments of the hello.
  Bytes first = to_records(Bytes(message.begin(), message.begin() + 10), 10);
  Bytes rest = to_records(Bytes(message.begin() + 10, message.end()), 1 << 14);
  EXPECT_TRUE(parse_client_hello(concat({first, rest})));
  EXPECT_EQ(error_of(concat({first, {20, 3, 3, 0, 1, 1}, rest})), ClientHelloError::malformed);
  // A zero-length handshake record, and one longer than 2^14.
  EXPECT_EQ(error_of(concat({{22, 3, 1, 0, 0}, stream})), ClientHelloError::malformed);
  EXPECT_EQ(error_of({22, 3, 1, 0x40, 0x01, 1}), ClientHelloError::malformed);
  // A later record with a version that is not 3.x.
  Bytes bad_version = concat({first, rest});
  bad_version[first.size() + 1] = 2;
  EXPECT_EQ(error_of(bad_version), ClientHelloError::malformed);
  // Another handshake message: a ServerHello.
  Bytes server_hello = message;
  server_hello[0] = 2;
  EXPECT_EQ(error_of(to_records(server_hello, 1 << 14)), ClientHelloError::malformed);
  // Found as soon as the handshake type is in.
  EXPECT_EQ(error_of(to_records(Bytes{2}, 1)), ClientHelloError::malformed);
  // A handshake length of zero, and one shorter than the body.
  Bytes empty_body = {1, 0, 0, 0};
  EXPECT_EQ(error_of(to_records(empty_body, 4)), ClientHelloError::malformed);
  Bytes short_length = message;
  short_length[3] -= 1;
  EXPECT_EQ(error_of(to_records(short_length, 1 << 14)), ClientHelloError::malformed);
}

TEST(ClientHello, TooLarge) {
  // A handshake header announcing 16 MiB is refused on its own, with a default max_bytes.
  EXPECT_EQ(error_of({22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff}), ClientHelloError::too_large);
  // The same, split into 1-byte records: refused once the fourth header byte arrives.
  Bytes split = to_records({1, 0xff, 0xff, 0xff}, 1);
  EXPECT_EQ(error_of(Bytes(split.begin(), split.begin() + 18)), ClientHelloError::need_more);
  EXPECT_EQ(error_of(split), ClientHelloError::too_large);
  // A hello that fits in 2^14 bytes but not in 1 KiB.
  HelloParts parts;
  parts.extensions = concat({sni_extension("www.tiktok.com"), extension(21, Bytes(2000, 0))});
  Bytes stream = to_records(hello_message(parts), 1 << 14);
  EXPECT_TRUE(parse_client_hello(stream));
  EXPECT_EQ(error_of(stream, 1024), ClientHelloError::too_large);
  EXPECT_EQ(error_of(Bytes(stream.begin(), stream.begin() + 100), 1024),
            ClientHelloError::too_large);
  EXPECT_EQ(error_of({}, 0), ClientHelloError::too_large);
  // A hello of more than 64 KiB, in full records: too_large with the default limit.
  parts.extensions = concat({extension(21, Bytes(65000, 0)), extension(22, Bytes(500, 0))});
  Bytes huge = to_records(hello_message(parts), 1 << 14);
  EXPECT_EQ(error_of(huge), ClientHelloError::too_large);
  EXPECT_TRUE(parse_client_hello(huge, huge.size()));
}

// --- Hostile input: random streams and random mutations of real hellos, fixed seed. ---

TEST(ClientHello, RandomBytesNeverCrash) {
  std::mt19937 random(20240601);
  for (int round = 0; round < 20000; ++round) {
    Bytes stream(random() % 400);
    for (uint8_t& byte : stream) byte = static_cast<uint8_t>(random());
    // Half the time, a plausible record header so the parser gets past the first checks.
    if (round % 2 == 0 && stream.size() >= 6) {
      stream[0] = 22;
      stream[1] = 3;
      stream[3] = 0;
      stream[4] = static_cast<uint8_t>(stream.size() - 5);
      stream[5] = 1;
    }
    auto hello = parse_client_hello(stream, 1 + random() % 1000);
    if (hello) {
      EXPECT_LE(hello->total_bytes, stream.size());
    }
  }
}

TEST(ClientHello, RandomMutationsOfRealHellosNeverCrash) {
  std::mt19937 random(7);
  std::vector<Bytes> streams;
  for (const Fixture& fixture : fixtures) streams.push_back(read_fixture(fixture.file));
  streams.push_back(to_records(handshake_message(streams.back()), 7));
  for (int round = 0; round < 20000; ++round) {
    Bytes stream = streams[random() % streams.size()];
    for (int changes = 1 + random() % 4; changes > 0; --changes) {
      stream[random() % stream.size()] = static_cast<uint8_t>(random());
    }
    if (random() % 4 == 0) stream.resize(random() % stream.size());
    auto hello = parse_client_hello(stream);
    if (hello) {
      EXPECT_LE(hello->total_bytes, stream.size());
    }
  }
}

TEST(ClientHello, ErrorNames) {
  EXPECT_EQ(to_string(ClientHelloError::need_more), "need_more");
  EXPECT_EQ(to_string(ClientHelloError::not_tls), "not_tls");
  EXPECT_EQ(to_string(ClientHelloError::malformed), "malformed");
  EXPECT_EQ(to_string(ClientHelloError::too_large), "too_large");
}

}  // namespace
}  // namespace tokgate::proxy
