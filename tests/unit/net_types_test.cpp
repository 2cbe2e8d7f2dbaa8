#include "policy/net_types.hpp"

#include <gtest/gtest.h>

#include <string>

namespace tokgate::proxy {
namespace {

std::string ip(std::string_view text) {
  auto address = IpAddress::parse(text);
  return address ? address->to_string() : "<invalid>";
}

std::string endpoint(std::string_view text) {
  auto parsed = Endpoint::parse(text);
  return parsed ? parsed->to_string() : "<invalid>";
}

TEST(IpAddress, ParsesAndPrintsV4) {
  auto a = IpAddress::parse("192.168.1.20");
  ASSERT_TRUE(a);
  EXPECT_TRUE(a->is_v4());
  EXPECT_EQ(a->family(), IpAddress::Family::v4);
  EXPECT_EQ(a->bytes()[0], 192);
  EXPECT_EQ(a->bytes()[3], 20);
  EXPECT_EQ(a->to_string(), "192.168.1.20");
  EXPECT_EQ(ip("0.0.0.0"), "0.0.0.0");
  EXPECT_EQ(ip("255.255.255.255"), "255.255.255.255");
  EXPECT_EQ(IpAddress::loopback_v4().to_string(), "127.0.0.1");
}

TEST(IpAddress, ParsesAndPrintsV6) {
  auto a = IpAddress::parse("2001:DB8:0:0:0:0:0:1");
  ASSERT_TRUE(a);
  EXPECT_FALSE(a->is_v4());
  EXPECT_EQ(a->family(), IpAddress::Family::v6);
  EXPECT_EQ(a->to_string(), "2001:db8::1");
  EXPECT_EQ(ip("[::1]"), "::1");
  EXPECT_EQ(ip("::"), "::");
  EXPECT_EQ(ip("fe80::1:2"), "fe80::1:2");
  EXPECT_EQ(IpAddress::loopback_v6().to_string(), "::1");
  EXPECT_EQ(*IpAddress::parse("[::1]"), IpAddress::loopback_v6());
}

TEST(IpAddress, V4MappedUnmapsToV4) {
  auto mapped = IpAddress::parse("::ffff:10.1.2.3");
  ASSERT_TRUE(mapped);
  EXPECT_FALSE(mapped->is_v4());
  EXPECT_EQ(mapped->to_string(), "::ffff:10.1.2.3");
  auto plain = mapped->unmapped();
  EXPECT_TRUE(plain.is_v4());
  EXPECT_EQ(plain.to_string(), "10.1.2.3");
  EXPECT_EQ(plain, *IpAddress::parse("10.1.2.3"));
  // Not mapped: unchanged.
  EXPECT_EQ(IpAddress::parse("::1")->unmapped(), IpAddress::loopback_v6());
  EXPECT_EQ(IpAddress::parse("::fffe:10.1.2.3")->unmapped().to_string(), "::fffe:a01:203");
  EXPECT_EQ(IpAddress::loopback_v4().unmapped(), IpAddress::loopback_v4());
}

TEST(IpAddress, RefusesBadInput) {
  for (std::string_view bad : {"",          "1.2.3",      "1.2.3.4.5", "256.1.1.1",    "01.2.3.4",
                               "127.1",     "0x7f.0.0.1", " 1.2.3.4",  "1.2.3.4 ",     "1.2.3.-4",
                               "localhost", "1::2::3",    "::g",       "12345::",      "[::1",
                               "::1]",      "[]",         "[",         "fe80::1%eth0", "::1/128",
                               "1.2.3.4:80"}) {
    EXPECT_FALSE(IpAddress::parse(bad)) << "'" << bad << "'";
  }
  EXPECT_FALSE(IpAddress::parse(std::string(1000, '1')));
  EXPECT_FALSE(IpAddress::parse(std::string(100, ':')));
}

// IpAddress::parse copies into a C string for inet_pton, so text after an embedded NUL is never
// looked at: "1.2.3.4\0junk" is accepted as 1.2.3.4. Enable once net_types.cpp refuses NULs.
TEST(IpAddress, RefusesEmbeddedNul) {
  EXPECT_FALSE(IpAddress::parse(std::string_view("1.2.3.4\0junk", 12)));
  EXPECT_FALSE(Endpoint::parse(std::string_view("1.2.3.4\0x:80", 12)));
}

TEST(IpAddress, RefusesBracketedIpv4) {
  EXPECT_FALSE(IpAddress::parse("[1.2.3.4]"));
  EXPECT_FALSE(Endpoint::parse("[1.2.3.4]:80"));
  EXPECT_TRUE(IpAddress::parse("[::1]"));
}

TEST(IpAddress, OrdersV4BeforeV6AndByBytes) {
  EXPECT_LT(*IpAddress::parse("10.0.0.1"), *IpAddress::parse("10.0.0.2"));
  EXPECT_LT(*IpAddress::parse("255.255.255.255"), *IpAddress::parse("::"));
  EXPECT_NE(*IpAddress::parse("::ffff:1.2.3.4"), *IpAddress::parse("1.2.3.4"));
}

TEST(Endpoint, ParsesAndPrints) {
  auto e = Endpoint::parse("127.0.0.1:8080");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->address, IpAddress::loopback_v4());
  EXPECT_EQ(e->port, 8080);
  EXPECT_EQ(e->to_string(), "127.0.0.1:8080");
  EXPECT_EQ(endpoint("[::1]:443"), "[::1]:443");
  EXPECT_EQ(endpoint("[2001:DB8::0:1]:65535"), "[2001:db8::1]:65535");
  EXPECT_EQ(endpoint("0.0.0.0:0"), "0.0.0.0:0");
  EXPECT_EQ(endpoint("[::ffff:1.2.3.4]:80"), "[::ffff:1.2.3.4]:80");
}

TEST(Endpoint, RefusesBadInput) {
  for (std::string_view bad :
       {"", ":", ":80", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:+80", "127.0.0.1:80x", "127.0.0.1: 80", "127.0.0.1:99999999999999999999",
        "::1:80", "[::1]", "[::1]:", "[::1]80", "[::1:80", "localhost:80", "1.2.3:80"}) {
    EXPECT_FALSE(Endpoint::parse(bad)) << "'" << bad << "'";
  }
}

TEST(Endpoint, Compares) {
  EXPECT_EQ(*Endpoint::parse("1.2.3.4:80"), *Endpoint::parse("1.2.3.4:80"));
  EXPECT_NE(*Endpoint::parse("1.2.3.4:80"), *Endpoint::parse("1.2.3.4:81"));
}

TEST(Cidr, ParsesPrintsAndContains) {
  auto block = Cidr::parse("10.0.0.0/8");
  ASSERT_TRUE(block);
  EXPECT_EQ(block->to_string(), "10.0.0.0/8");
  EXPECT_TRUE(block->contains(*IpAddress::parse("10.0.0.0")));
  EXPECT_TRUE(block->contains(*IpAddress::parse("10.255.255.255")));
  EXPECT_FALSE(block->contains(*IpAddress::parse("11.0.0.0")));
  EXPECT_FALSE(block->contains(*IpAddress::parse("9.255.255.255")));
  EXPECT_FALSE(block->contains(*IpAddress::parse("::a00:1"))) << "v6 never matches a v4 block";
}

TEST(Cidr, PrefixesNotOnAByteBoundary) {
  auto block = Cidr::parse("192.168.16.0/20");
  ASSERT_TRUE(block);
  EXPECT_TRUE(block->contains(*IpAddress::parse("192.168.31.255")));
  EXPECT_FALSE(block->contains(*IpAddress::parse("192.168.32.0")));
  EXPECT_FALSE(block->contains(*IpAddress::parse("192.168.15.255")));

  auto v6 = Cidr::parse("2001:db8::/127");
  ASSERT_TRUE(v6);
  EXPECT_TRUE(v6->contains(*IpAddress::parse("2001:db8::1")));
  EXPECT_FALSE(v6->contains(*IpAddress::parse("2001:db8::2")));
}

TEST(Cidr, BareAddressAndZeroPrefix) {
  auto host = Cidr::parse("192.0.2.7");
  ASSERT_TRUE(host);
  EXPECT_EQ(host->to_string(), "192.0.2.7/32");
  EXPECT_TRUE(host->contains(*IpAddress::parse("192.0.2.7")));
  EXPECT_FALSE(host->contains(*IpAddress::parse("192.0.2.8")));
  EXPECT_EQ(Cidr::parse("::1")->to_string(), "::1/128");

  auto all = Cidr::parse("0.0.0.0/0");
  ASSERT_TRUE(all);
  EXPECT_TRUE(all->contains(*IpAddress::parse("203.0.113.9")));
  EXPECT_FALSE(all->contains(*IpAddress::parse("::1")));
  EXPECT_TRUE(Cidr::parse("::/0")->contains(*IpAddress::parse("2001:db8::1")));
}

TEST(Cidr, V4MappedClientsMatchV4Blocks) {
  // A dual-stack socket reports v4 clients as ::ffff:a.b.c.d.
  EXPECT_TRUE(Cidr::loopback_v4().contains(*IpAddress::parse("::ffff:127.0.0.1")));
  EXPECT_FALSE(Cidr::loopback_v4().contains(*IpAddress::parse("::ffff:128.0.0.1")));
  EXPECT_TRUE(Cidr::loopback_v6().contains(IpAddress::loopback_v6()));
  EXPECT_FALSE(Cidr::loopback_v6().contains(IpAddress::loopback_v4()));
}

TEST(Cidr, V4MappedBlocksAreTheV4BlockTheyMap) {
  // Found by the host fuzz target: the block was compared mapped, the address unmapped.
  const auto block = Cidr::parse("::ffff:10.0.0.0/104");
  ASSERT_TRUE(block);
  EXPECT_TRUE(block->contains(*IpAddress::parse("10.0.0.1")));
  EXPECT_TRUE(block->contains(*IpAddress::parse("::ffff:10.255.0.1")));
  EXPECT_FALSE(block->contains(*IpAddress::parse("11.0.0.1")));
  EXPECT_FALSE(block->contains(*IpAddress::parse("2001:db8::1")));
  EXPECT_TRUE(Cidr::parse("::ffff:0.0.0.0/96")->contains(*IpAddress::parse("192.0.2.1")));
  // A v6 block wider than the mapped space contains the v4 addresses it covers.
  EXPECT_TRUE(Cidr::parse("::ffff:10.0.0.0/4")->contains(*IpAddress::parse("10.0.0.0")));
  EXPECT_TRUE(Cidr::parse("::/0")->contains(*IpAddress::parse("192.0.2.1")));
  EXPECT_FALSE(Cidr::parse("2001:db8::/32")->contains(*IpAddress::parse("192.0.2.1")));
}

TEST(Cidr, RefusesBadInput) {
  for (std::string_view bad : {"", "/8", "10.0.0.0/", "10.0.0.0/33", "::/129", "10.0.0.0/-1",
                               "10.0.0.0/+8", "10.0.0.0/8/8", "10.0.0.0/8 ", "10.0.0/8",
                               "10.0.0.0/99999999999", "10.0.0.0/x", "[::1]/128x"}) {
    EXPECT_FALSE(Cidr::parse(bad)) << "'" << bad << "'";
  }
}

}  // namespace
}  // namespace tokgate::proxy
