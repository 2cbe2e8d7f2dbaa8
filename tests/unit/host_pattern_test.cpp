#include "policy/host_pattern.hpp"

#include <gtest/gtest.h>

#include <iterator>
#include <random>
#include <string>

namespace tokgate::policy {
namespace {

std::string norm(std::string_view host) {
  return normalize_host(host).value_or("<invalid>");
}

TEST(NormalizeHost, LowerCasesAndDropsOneTrailingDot) {
  EXPECT_EQ(norm("WWW.TikTok.COM"), "www.tiktok.com");
  EXPECT_EQ(norm("www.tiktok.com."), "www.tiktok.com");
  EXPECT_EQ(norm("a"), "a");
  EXPECT_EQ(norm("_dmarc.Example.org"), "_dmarc.example.org");
  EXPECT_EQ(norm("api16-normal-c-useast1a.tiktokv.com"), "api16-normal-c-useast1a.tiktokv.com");
}

TEST(NormalizeHost, RefusesMalformedNames) {
  for (std::string_view bad : {"", ".", "..", "a..b", ".a", "a.com..", "a b.com", "a/b.com",
                               "a@b.com", "a%2e.com", "tiktok.com\n", "a,b", "a\\b", "a\tb"}) {
    EXPECT_FALSE(normalize_host(bad)) << "'" << bad << "'";
  }
  EXPECT_FALSE(normalize_host(std::string_view("tiktok.com\0.evil", 16)));
}

TEST(NormalizeHost, EnforcesLabelAndNameLengths) {
  std::string label63(63, 'a');
  EXPECT_EQ(norm(label63 + ".com"), label63 + ".com");
  EXPECT_FALSE(normalize_host(std::string(64, 'a') + ".com"));

  // 4 labels of 63 + 3 dots = 255 bytes: too long. Trim to exactly 253.
  std::string name = label63 + "." + label63 + "." + label63 + "." + label63;
  EXPECT_FALSE(normalize_host(name));
  name.resize(253);
  EXPECT_EQ(norm(name), name);
  EXPECT_EQ(norm(name + "."), name);  // the trailing dot does not count
  EXPECT_FALSE(normalize_host(name + "a"));
  EXPECT_FALSE(normalize_host(std::string(100'000, 'a')));
}

TEST(NormalizeHost, ConvertsUnicodeLabelsToALabels) {
  EXPECT_EQ(norm("bücher.de"), "xn--bcher-kva.de");
  EXPECT_EQ(norm("münchen.de"), "xn--mnchen-3ya.de");
  EXPECT_EQ(norm("www.münchen.de."), "www.xn--mnchen-3ya.de");
  EXPECT_EQ(norm("MÜNCHEN.de"), "xn--mnchen-psa.de") << "only ASCII is case-folded";
  EXPECT_EQ(norm("xn--mnchen-3ya.de"), "xn--mnchen-3ya.de");
  EXPECT_EQ(norm("例え.テスト"), "xn--r8jz45g.xn--zckzah");
}

TEST(NormalizeHost, MapsFullwidthAsciiAndIdeographicDots) {
  EXPECT_EQ(norm("ＴｉｋＴｏｋ.com"), "tiktok.com");
  EXPECT_EQ(norm("tiktok。com"), "tiktok.com");
  EXPECT_EQ(norm("tiktok．com"), "tiktok.com");
  EXPECT_EQ(norm("tiktok｡com"), "tiktok.com");
}

TEST(NormalizeHost, RefusesInvalidUtf8AndInvisibleCodePoints) {
  for (std::string_view bad : {
           "\xff.com",              // not UTF-8 at all
           "\xc3.com",              // truncated sequence
           "b\xc3",                 // truncated at the end
           "\xc0\xaf.com",          // overlong '/'
           "\xe0\x80\xaf.com",      // overlong, 3 bytes
           "\xed\xa0\x80.com",      // surrogate
           "\xf4\x90\x80\x80.com",  // above U+10FFFF
           "tik\u200btok.com",      // zero-width space
           "tik\u00adtok.com",      // soft hyphen
           "tik\u00a0tok.com",      // no-break space
           "tik\ufefftok.com",      // BOM
           "tik\ue000tok.com",      // private use
           "a\u0085.com",           // C1 control
           "\ufffe.com",            // non-character
       }) {
    EXPECT_FALSE(normalize_host(bad)) << bad;
  }
}

TEST(NormalizeHost, IpLiterals) {
  EXPECT_EQ(norm("192.168.1.10"), "192.168.1.10");
  EXPECT_EQ(norm("0.0.0.0"), "0.0.0.0");
  EXPECT_EQ(norm("255.255.255.255."), "255.255.255.255");
  EXPECT_EQ(norm("[::1]"), "::1");
  EXPECT_EQ(norm("::1"), "::1");
  EXPECT_EQ(norm("[2001:DB8:0:0::1]"), "2001:db8::1");
  EXPECT_EQ(norm("[::FFFF:1.2.3.4]"), "::ffff:1.2.3.4");
  // Forms a resolver would read as an address but that are not a plain dotted quad.
  for (std::string_view bad :
       {"127.1", "2130706433", "0x7f.0.0.1", "127.0.0.0x1", "010.0.0.1", "256.1.1.1", "1.2.3.4.5",
        "1.2.3", "a.1", "[::1", "::1]", "[]", "[1.2.3.4]", "[fe80::1%eth0]", "1:2", ":::"}) {
    EXPECT_FALSE(normalize_host(bad)) << bad;
  }
  // A numeric label is fine anywhere but last.
  EXPECT_EQ(norm("1.2.3.4.nip.io"), "1.2.3.4.nip.io");
  EXPECT_EQ(norm("0x7f.example"), "0x7f.example");
}

// Random names from an alphabet of interesting pieces: never a crash; any result is in normal
// form (normalising it again changes nothing) and within the length limits.
TEST(NormalizeHost, ResultsAreIdempotentAndBounded) {
  const std::string_view pieces[] = {"a",      "Z",    "0",  "9",   ".",       "-",  "_",    ":",
                                     "[",      "]",    "x",  "ü",   "ｔ",      "。", "\xff", "\xc3",
                                     "\u200b", "xn--", "0x", "255", "1.2.3.4", "::", "例"};
  std::mt19937 random(7);
  std::uniform_int_distribution<std::size_t> pick(0, std::size(pieces) - 1);
  int valid = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string host;
    for (int n = 1 + round % 12; n > 0; --n) host += pieces[pick(random)];
    auto once = normalize_host(host);
    if (!once) continue;
    ++valid;
    EXPECT_LE(once->size(), kMaxHostNameLength);
    for (char c : *once) {
      EXPECT_TRUE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                  c == '.' || c == ':')
          << host << " -> " << *once;
    }
    EXPECT_EQ(normalize_host(*once), once) << host;
  }
  EXPECT_GT(valid, 1000);
}

// RFC 3492 section 7.1 sample strings. The RFC's outputs carry mixed-case annotations; ours are
// those strings with basic code points as given and digits in lower case.
TEST(Punycode, Rfc3492Samples) {
  struct Sample {
    std::u32string_view input;
    std::string_view output;
  };
  const Sample samples[] = {
      {U"ليهمابتكلموشعربي؟", "egbpdaj6bu4bxfgehfvwxn"},               // (A) Arabic
      {U"他们为什么不说中文", "ihqwcrb4cv8a8dqg056pqjye"},            // (B)
      {U"他們爲什麽不說中文", "ihqwctvzc91f659drss3x8bo0yb"},         // (C)
      {U"Pročprostěnemluvíčesky", "Proprostnemluvesky-uyb24dma41a"},  // (D) Czech
      {U"למההםפשוטלאמדבריםעברית", "4dbcagdahymbxekheh6e0a7fei0b"},    // (E) Hebrew
      {U"なぜみんな日本語を話してくれないのか", "n8jok5ay5dzabd5bym9f0cm5685rrjetr6pdxa"},  // (G)
      {U"почемужеонинеговорятпорусски", "b1abfaaepdrnnbgefbadotcwatmq2g4l"},  // (I) Russian
      {U"PorquénopuedensimplementehablarenEspañol",
       "PorqunopuedensimplementehablarenEspaol-fmd56a"},      // (J) Spanish
      {U"3年B組金八先生", "3B-ww4c5e180e575a65lsy2b"},        // (L)
      {U"MajiでKoiする5秒前", "MajiKoi5-783gue6qz075azm5e"},  // (P)
      {U"でっかい", "n8jn5ep"},                               // (R)
      {U"bücher", "bcher-kva"},
      {U"münchen", "mnchen-3ya"},
      {U"abc", "abc-"},
      {U"", ""},
  };
  for (const auto& s : samples) {
    auto out = punycode_encode(s.input);
    ASSERT_TRUE(out);
    EXPECT_EQ(*out, s.output);
  }
}

TEST(Punycode, RfcSamplesThroughNormalizeHost) {
  EXPECT_EQ(norm("ليهمابتكلموشعربي؟"), "xn--egbpdaj6bu4bxfgehfvwxn");
  EXPECT_EQ(norm("Pročprostěnemluvíčesky"), "xn--proprostnemluvesky-uyb24dma41a");
  EXPECT_EQ(norm("почемужеонинеговорятпорусски.рф"),
            "xn--b1abfaaepdrnnbgefbadotcwatmq2g4l.xn--p1ai");
  // (J) encodes to 45 + 4 bytes: fits. 64 code points never fit.
  EXPECT_EQ(norm("PorquénopuedensimplementehablarenEspañol"),
            "xn--porqunopuedensimplementehablarenespaol-fmd56a");
  EXPECT_FALSE(normalize_host("ü" + std::string(63, 'a')));
  // 62 code points, but the A-label is longer than 63 bytes.
  EXPECT_FALSE(normalize_host("ü" + std::string(61, 'a')));
}

TEST(Punycode, HugeCodePointsDoNotOverflow) {
  std::u32string many(1000, U'\U0010FFFD');
  many += U'\u0100';
  auto out = punycode_encode(many);
  ASSERT_TRUE(out);
  EXPECT_FALSE(out->empty());
}

HostPattern pattern(std::string_view text) {
  auto p = HostPattern::parse(text);
  EXPECT_TRUE(p) << text << ": " << (p ? "" : p.error());
  return p.value_or(*HostPattern::parse("invalid.invalid"));
}

TEST(HostPattern, ExactMatchesOnlyThatHost) {
  auto p = pattern("tiktok.com");
  EXPECT_EQ(p.kind(), HostPattern::Kind::exact);
  EXPECT_TRUE(p.matches("tiktok.com"));
  EXPECT_FALSE(p.matches("www.tiktok.com"));
  EXPECT_FALSE(p.matches("nottiktok.com"));
  EXPECT_FALSE(p.matches("tiktok.com.evil.example"));
}

TEST(HostPattern, StarDotMatchesStrictlyBelow) {
  auto p = pattern("*.tiktok.com");
  EXPECT_EQ(p.kind(), HostPattern::Kind::below);
  EXPECT_EQ(p.name(), "tiktok.com");
  EXPECT_TRUE(p.matches("www.tiktok.com"));
  EXPECT_TRUE(p.matches("a.b.c.tiktok.com"));
  EXPECT_FALSE(p.matches("tiktok.com"));
  EXPECT_FALSE(p.matches("nottiktok.com"));
  EXPECT_FALSE(p.matches("www.nottiktok.com"));
  EXPECT_FALSE(p.matches("tiktok.com.evil.example"));
  EXPECT_FALSE(p.matches("www.tiktok.co"));
  EXPECT_FALSE(p.matches("om"));
  EXPECT_FALSE(p.matches(""));
}

TEST(HostPattern, LeadingDotMatchesHostAndBelow) {
  auto p = pattern(".tiktok.com");
  EXPECT_EQ(p.kind(), HostPattern::Kind::at_or_below);
  EXPECT_TRUE(p.matches("tiktok.com"));
  EXPECT_TRUE(p.matches("vm.tiktok.com"));
  EXPECT_FALSE(p.matches("nottiktok.com"));
  EXPECT_FALSE(p.matches("xtiktok.com"));
  EXPECT_FALSE(p.matches("tiktok.com.evil.example"));
  EXPECT_FALSE(p.matches("tiktok.comx"));
}

TEST(HostPattern, StarMatchesEverything) {
  auto p = pattern("*");
  EXPECT_EQ(p.kind(), HostPattern::Kind::any);
  EXPECT_EQ(p.text(), "*");
  EXPECT_TRUE(p.matches("anything.example"));
  EXPECT_TRUE(p.matches("10.0.0.1"));
}

TEST(HostPattern, TextIsNormalised) {
  EXPECT_EQ(pattern("*.TikTok.COM.").text(), "*.tiktok.com");
  EXPECT_EQ(pattern(".Bücher.de").text(), ".xn--bcher-kva.de");
  EXPECT_EQ(pattern("[::1]").text(), "::1");
  EXPECT_EQ(pattern("10.0.0.1").text(), "10.0.0.1");
  EXPECT_FALSE(pattern("*.bücher.de").matches(*normalize_host("www.BÜCHER.de")))
      << "non-ASCII is not case-folded";
  EXPECT_TRUE(pattern("*.bücher.de").matches(*normalize_host("WWW.bücher.de.")));
}

TEST(HostPattern, RefusesBadPatterns) {
  for (std::string_view bad :
       {"",        "*tiktok.com", "a.*.com",         "**",           "*.",
        ".",       "*.*.com",     "*.com*",          "..tiktok.com", "tik*tok.com",
        "*..com",  "tiktok..com", " tiktok.com",     "*.10.0.0.1",   ".10.0.0.1",
        "*.[::1]", "*.127.1",     "tiktok.com/path", "*.",           "*.\xff"}) {
    auto p = HostPattern::parse(bad);
    EXPECT_FALSE(p) << "'" << bad << "' parsed as '" << (p ? p->text() : "") << "'";
    if (!p) {
      EXPECT_FALSE(p.error().empty());
    }
  }
}

TEST(HostPatternSet, MatchesLikeItsPatterns) {
  HostPatternSet set;
  EXPECT_TRUE(set.empty());
  EXPECT_FALSE(set.matches("tiktok.com"));
  set.add(pattern("*.tiktokv.com"));
  set.add(pattern(".tiktok.com"));
  set.add(pattern("exact.example"));
  EXPECT_FALSE(set.empty());

  EXPECT_TRUE(set.matches("api16-normal-c-useast1a.tiktokv.com"));
  EXPECT_FALSE(set.matches("tiktokv.com"));
  EXPECT_TRUE(set.matches("tiktok.com"));
  EXPECT_TRUE(set.matches("www.tiktok.com"));
  EXPECT_TRUE(set.matches("exact.example"));
  EXPECT_FALSE(set.matches("www.exact.example"));
  EXPECT_FALSE(set.matches("example"));
  EXPECT_FALSE(set.matches("nottiktok.com"));
  EXPECT_FALSE(set.matches("tiktok.com.evil.example"));
  EXPECT_FALSE(set.matches("com"));
  EXPECT_FALSE(set.matches(""));
  EXPECT_FALSE(set.matches("."));

  set.add(pattern("*"));
  EXPECT_TRUE(set.matches("anything.else"));
}

TEST(HostPatternSet, AgreesWithPatternsOneByOne) {
  const char* patterns[] = {"*.a.example", ".b.example", "c.example", "*.d.a.example"};
  const char* hosts[] = {"a.example", "x.a.example", "b.example",   "x.b.example",
                         "c.example", "x.c.example", "d.a.example", "y.d.a.example",
                         "example",   "xa.example"};
  HostPatternSet set;
  for (const char* p : patterns) set.add(pattern(p));
  for (const char* host : hosts) {
    bool any = false;
    for (const char* p : patterns) any = any || pattern(p).matches(host);
    EXPECT_EQ(set.matches(host), any) << host;
  }
}

}  // namespace
}  // namespace tokgate::policy
