// The catalog as data: the embedded files compile, errors come back with NAME:LINE:COL, the
// override directory replaces and adds files, and the format's rules (stages, shared
// infrastructure, families, shapes) behave as docs/catalog.md says.
#include "policy/catalog.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace tokgate::policy {
namespace {

std::shared_ptr<const Catalog> embedded() {
  static auto catalog = [] {
    auto compiled = Catalog::compile(Catalog::embedded_sources());
    if (!compiled) ADD_FAILURE() << compiled.error();
    return compiled.value_or(nullptr);
  }();
  return catalog;
}

// Compiles one source; returns the error text ("" on success).
std::string compile_error(std::string_view text, std::string name = "test.toml") {
  std::vector<CatalogSource> sources{{std::move(name), std::string(text)}};
  auto compiled = Catalog::compile(sources);
  return compiled ? std::string() : compiled.error();
}

std::shared_ptr<const Catalog> compile_ok(std::vector<CatalogSource> sources) {
  auto compiled = Catalog::compile(sources);
  EXPECT_TRUE(compiled) << (compiled ? "" : compiled.error());
  return compiled.value_or(nullptr);
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    auto end = text.find('\n', start);
    out.push_back(text.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

bool has_line(const std::string& errors, std::string_view prefix, std::string_view contains) {
  auto all = lines(errors);
  return std::any_of(all.begin(), all.end(), [&](const std::string& line) {
    return line.starts_with(prefix) && line.find(contains) != std::string::npos;
  });
}

// ---------------------------------------------------------------------------------------------

TEST(Catalog, EmbeddedSourcesCompile) {
  auto sources = Catalog::embedded_sources();
  ASSERT_EQ(sources.size(), 3u);
  EXPECT_EQ(sources[0].name, "policy/catalog/tiktok.toml");
  EXPECT_EQ(sources[1].name, "policy/catalog/bytedance_other.toml");
  EXPECT_EQ(sources[2].name, "policy/catalog/wechat.toml");
  for (const auto& source : sources) EXPECT_GT(source.text.size(), 500u) << source.name;
  auto catalog = embedded();
  ASSERT_TRUE(catalog);
  EXPECT_GE(catalog->entry_count(), 50u);
}

TEST(Catalog, VersionIsAStableDigestOfTheSources) {
  auto catalog = embedded();
  ASSERT_TRUE(catalog);
  const std::string& version = catalog->version();
  ASSERT_EQ(version.size(), 12u);
  EXPECT_TRUE(std::all_of(version.begin(), version.end(),
                          [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }));
  auto again = compile_ok(Catalog::embedded_sources());
  ASSERT_TRUE(again);
  EXPECT_EQ(again->version(), version);

  auto sources = Catalog::embedded_sources();
  sources[2].text += "\n# one more comment\n";
  auto changed = compile_ok(sources);
  ASSERT_TRUE(changed);
  EXPECT_NE(changed->version(), version);
  sources = Catalog::embedded_sources();
  sources[2].name = "elsewhere/wechat.toml";
  auto renamed = compile_ok(sources);
  ASSERT_TRUE(renamed);
  EXPECT_NE(renamed->version(), version);
}

TEST(Catalog, HostEntriesHoldOnlyHostLevelFacts) {
  auto catalog = embedded();
  ASSERT_TRUE(catalog);
  auto entries = catalog->host_entries();
  auto find = [&](std::string_view name) -> const Catalog::HostEntry* {
    auto it = std::find_if(entries.begin(), entries.end(),
                           [&](const Catalog::HostEntry& e) { return e.name == name; });
    return it == entries.end() ? nullptr : &*it;
  };
  struct Expected {
    std::string_view name;
    bool include_subdomains;
    Category category;
    std::string_view signature;
  };
  for (const Expected& e : std::initializer_list<Expected>{
           {"tiktokv.com", true, Category::app_api, "tiktok-app-backend"},
           {"tiktok.com", true, Category::web, "tiktok-website"},
           {"tiktokcdn.com", true, Category::media_cdn, "tiktok-media-cdn"},
           {"ttlivecdn.com", true, Category::live, "tiktok-live-cdn"},
           {"push.tiktokv.us", false, Category::live, "tiktok-live-cdn"},
           {"business-api.tiktok.com", false, Category::analytics_sdk, "tiktok-business-api"},
           {"pangle.io", true, Category::analytics_sdk, "pangle"},
           {"p16-tiktokcdn-com.akamaized.net", false, Category::media_cdn,
            "tiktok-media-shared-cdn"},
           {"tiktokcdn.com.akamaized.net", true, Category::media_cdn, "tiktok-media-shared-cdn"},
           {"douyin.com", true, Category::bytedance_other, "douyin"},
           {"weixin.qq.com", true, Category::wechat, "wechat-core"},
           {"mmbiz.qpic.cn", false, Category::wechat, "wechat-cdn"},
       }) {
    const auto* entry = find(e.name);
    ASSERT_NE(entry, nullptr) << e.name;
    EXPECT_EQ(entry->include_subdomains, e.include_subdomains) << e.name;
    EXPECT_EQ(entry->category, e.category) << e.name;
    EXPECT_EQ(entry->signature, e.signature) << e.name;
  }
  // Shared infrastructure, conditional and evidence-only signatures are not host facts.
  for (std::string_view absent :
       {"akamaized.net", "fastly.net", "cloudfront.net", "bytefcdn-oversea.com", "apps.apple.com",
        "play.google.com", "uptodown.com", "qq.com", "qpic.cn", "com"}) {
    EXPECT_EQ(find(absent), nullptr) << absent;
  }
  for (const auto& entry : entries) {
    EXPECT_NE(entry.category, Category::none) << entry.name;
    EXPECT_NE(entry.signature, "tiktok-media-shared-cdn-unconfirmed");
  }
}

TEST(Catalog, CountsForTheRecord) {
  auto catalog = embedded();
  ASSERT_TRUE(catalog);
  auto entries = catalog->host_entries();
  auto suffixes = std::count_if(entries.begin(), entries.end(),
                                [](const auto& e) { return e.include_subdomains; });
  std::cout << "[ catalog  ] " << catalog->entry_count() << " signatures, " << entries.size()
            << " host-level names (" << suffixes << " suffixes), version " << catalog->version()
            << "\n";
  EXPECT_GE(suffixes, 80);
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(CatalogErrors, SyntaxErrorHasLineAndColumn) {
  auto error = compile_error("[[signature]]\nid = \"x\nsource = 1\n", "broken.toml");
  EXPECT_TRUE(error.starts_with("broken.toml:2:")) << error;
}

TEST(CatalogErrors, EveryErrorIsReportedWithItsPosition) {
  const std::string text = R"([[signature]]
id = "good-one"
category = "web"
stage = 10
source = "test"
suffixes = ["example.com"]

[[signature]]
id = "good-one"
category = "tiktok"
stage = 10
source = "test"
suffixes = ["ex*ample.com", "bad..name", "com", "1.2.3.4"]
colour = "blue"

[[signature]]
id = "Not_Kebab"
category = "web"
stage = 5000
source = "test"

[[signature]]
id = "no-source"
category = "auth"
stage = 10
hosts = []
path = ["relative", "/ok{q}", "/a*b", "*{n}"]
user_agent = ["*Token/", "x", "{n}abc"]
headers = ["Bad Header: v", "X-Empty:"]
query = ["a&b", "=v", "kk=v=w"]
methods = ["get"]
first_label = ["a.b"]

[[signature]]
id = "family-user"
category = "live"
stage = 10
source = "test"
within = "nobody"
path = ["/x/"]
)";
  auto error = compile_error(text, "cat.toml");
  ASSERT_FALSE(error.empty());
  EXPECT_TRUE(has_line(error, "cat.toml:8:1:", "'good-one': no evidence")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:9:6:", "duplicate 'good-one'")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:9:6:", "first defined at cat.toml:2:6")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:10:12:", "unknown 'tiktok'")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:13:13:", "no wildcards")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:13:29:", "not a host name")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:13:42:", "at least two labels")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:13:49:", "at least two labels and no address")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:14:1:", "unknown key 'colour'")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:17:6:", "not kebab-case")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:19:9:", "0..999")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:16:1:", "no evidence")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:22:1:", "missing 'source'")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:26:9:", "hosts: empty list")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:27:9:", "must start with '/' or '*'")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:27:21:", "unknown placeholder '{q}'")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:27:31:", "only allowed as the first")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:27:39:", "no literal text")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:28:15:", "drop the leading '*'")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:28:26:", "at least two literal")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:28:31:", "at least two literal")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:29:12:", "valid header name")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:29:29:", "empty value")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:30:10:", "no '&'")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:30:17:", "\"name\" or \"name=value\"")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:30:23:", "one non-empty value")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:31:12:", "upper-case method")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:32:16:", "a label has no dots")) << error;
  EXPECT_TRUE(has_line(error, "cat.toml:39:10:", "no signature declares family 'nobody'")) << error;
  // Sorted by position, one per line, every line "NAME:LINE:COL: what".
  auto all = lines(error);
  EXPECT_EQ(all.size(), 29u) << error;
  for (const auto& line : all) EXPECT_TRUE(line.starts_with("cat.toml:")) << line;
}

TEST(CatalogErrors, TypeErrors) {
  auto error = compile_error(R"([[signature]]
id = 7
category = "web"
stage = "early"
source = "s"
evidence_only = "yes"
suffixes = "example.com"
hosts = [1]
)",
                             "t.toml");
  EXPECT_TRUE(has_line(error, "t.toml:2:6:", "id: expected a string, got an integer")) << error;
  EXPECT_TRUE(has_line(error, "t.toml:4:9:", "stage: expected an integer")) << error;
  EXPECT_TRUE(has_line(error, "t.toml:6:17:", "true or false")) << error;
  EXPECT_TRUE(has_line(error, "t.toml:7:12:", "expected an array of strings, got a string"))
      << error;
  EXPECT_TRUE(has_line(error, "t.toml:8:10:", "expected a string, got an integer")) << error;

  EXPECT_TRUE(
      has_line(compile_error("signature = 3\n", "t.toml"), "t.toml:1:13:", "array of tables"));
  EXPECT_TRUE(
      has_line(compile_error("colour = 3\n", "t.toml"), "t.toml:1:1:", "unknown key 'colour'"));
  EXPECT_TRUE(has_line(compile_error("[catalog]\nname = \"x\"\n", "t.toml"),
                       "t.toml:2:1:", "unknown key 'name' in [catalog]"));
  EXPECT_TRUE(has_line(compile_error("[shared]\nsuffixes = [\"a.com\"]\n", "t.toml"),
                       "t.toml:1:1:", "missing 'source'"));
}

TEST(CatalogErrors, DuplicatesWithinListsAndAcrossHostOnlySignatures) {
  auto error = compile_error(R"([[signature]]
id = "a"
category = "web"
stage = 1
source = "s"
suffixes = ["example.com", "EXAMPLE.com"]

[[signature]]
id = "b"
category = "media-cdn"
stage = 2
source = "s"
suffixes = ["example.com"]

[[signature]]
id = "c"
category = "auth"
stage = 3
source = "s"
suffixes = ["example.com"]
path = ["/login"]
)",
                             "d.toml");
  EXPECT_TRUE(has_line(error, "d.toml:6:28:", "duplicate 'EXAMPLE.com'")) << error;
  EXPECT_TRUE(has_line(error, "d.toml:13:13:", "already listed at d.toml:6:13")) << error;
  EXPECT_EQ(lines(error).size(), 2u) << "a narrowed signature may reuse a host-only name\n"
                                     << error;
}

TEST(CatalogErrors, LimitsAreReportedWhereTheyAreCrossed) {
  std::string many;
  for (int i = 0; i < 257; ++i) {
    many += "[[signature]]\nid = \"s" + std::to_string(i) +
            "\"\ncategory = \"web\"\nstage = 1\nsource = \"s\"\nhosts = [\"h" + std::to_string(i) +
            ".example\"]\n";
  }
  // Signature 257 (index 256) starts at line 256 * 6 + 1.
  EXPECT_EQ(compile_error(many, "m.toml"), "m.toml:1537:1: too many signatures (257, at most 256)");

  std::string tokens = "[[signature]]\nid = \"t\"\ncategory = \"web\"\nstage = 1\nsource = \"s\"\n";
  tokens += "user_agent = [\n";
  for (int i = 0; i < 257; ++i) tokens += "  \"Token" + std::to_string(i) + "/\",\n";
  tokens += "]\n";
  EXPECT_EQ(compile_error(tokens, "u.toml"),
            "u.toml:263:3: more than 256 distinct User-Agent tokens");
}

TEST(CatalogErrors, DuplicateIdAcrossFiles) {
  std::vector<CatalogSource> sources{
      {"one.toml",
       "[[signature]]\nid = \"same\"\ncategory = \"web\"\nstage = 1\nsource = "
       "\"s\"\nhosts = [\"a.example\"]\n"},
      {"two.toml",
       "[[signature]]\nid = \"same\"\ncategory = \"web\"\nstage = 1\nsource = "
       "\"s\"\nhosts = [\"b.example\"]\n"},
  };
  auto compiled = Catalog::compile(sources);
  ASSERT_FALSE(compiled);
  EXPECT_EQ(compiled.error(), "two.toml:2:6: id: duplicate 'same' (first defined at one.toml:2:6)");
}

TEST(CatalogErrors, SharedInfrastructureNeedsANarrowingCondition) {
  const std::string shared = R"([shared]
source = "s"
suffixes = ["akamaized.net", "apps.apple.com"]
)";
  auto error = compile_error(shared + R"(
[[signature]]
id = "whole-cdn"
category = "media-cdn"
stage = 1
source = "s"
suffixes = ["akamaized.net", "apple.com", "p16-tiktokcdn-com.akamaized.net"]
hosts = ["apps.apple.com"]
)",
                             "s.toml");
  EXPECT_TRUE(has_line(error, "s.toml:10:13:", "shared infrastructure ('akamaized.net'")) << error;
  EXPECT_TRUE(
      has_line(error, "s.toml:10:30:", "'apple.com' is shared infrastructure ('apps.apple.com'"))
      << error;
  EXPECT_TRUE(has_line(error, "s.toml:11:10:", "'apps.apple.com' is shared")) << error;
  EXPECT_EQ(lines(error).size(), 3u) << "exact names below a shared suffix are fine\n" << error;

  EXPECT_EQ(compile_error(shared + R"(
[[signature]]
id = "store"
category = "app-distribution"
stage = 1
source = "s"
hosts = ["apps.apple.com"]
path = ["*/id835599320{/}"]
)"),
            "");
}

TEST(CatalogErrors, EmbeddedSharedListGuardsOverrides) {
  // An override that blocks a whole CDN or Tencent's estate is refused, naming the declaration.
  auto sources = Catalog::embedded_sources();
  sources.push_back({"local.toml", R"([[signature]]
id = "local-cdn"
category = "media-cdn"
stage = 53
source = "local"
suffixes = ["cloudfront.net"]

[[signature]]
id = "local-qq"
category = "wechat"
stage = 20
source = "local"
suffixes = ["qq.com"]
)"});
  auto compiled = Catalog::compile(sources);
  ASSERT_FALSE(compiled);
  EXPECT_TRUE(has_line(compiled.error(), "local.toml:6:13:", "policy/catalog/tiktok.toml:"))
      << compiled.error();
  EXPECT_TRUE(has_line(compiled.error(), "local.toml:13:13:", "policy/catalog/wechat.toml:"))
      << compiled.error();
}

// ---------------------------------------------------------------------------------------------
// The format's semantics

Classification classify(const Catalog& catalog, std::string_view host, std::string_view path = "",
                        std::string_view ua = "", std::string_view query = "") {
  RequestFacts facts;
  facts.host = host;
  facts.path = path;
  facts.user_agent = ua;
  facts.query = query;
  facts.method = "GET";
  return catalog.classify(facts);
}

TEST(CatalogFormat, StageDecidesNotFileOrder) {
  auto catalog = compile_ok({{"a.toml", R"([[signature]]
id = "late"
category = "web"
stage = 50
source = "s"
suffixes = ["example.com"]
)"},
                             {"b.toml", R"([[signature]]
id = "early"
category = "auth"
stage = 10
source = "s"
suffixes = ["example.com"]
first_label = ["login"]
)"}});
  ASSERT_TRUE(catalog);
  auto result = classify(*catalog, "login.example.com");
  EXPECT_EQ(result.category, Category::auth);
  EXPECT_EQ(result.decided_by, "early");
  ASSERT_EQ(result.evidence.size(), 3u);
  EXPECT_EQ(result.evidence[0].signature, "early");
  EXPECT_EQ(result.evidence[0].matched, "login");
  EXPECT_EQ(result.evidence[1].signature, "early");
  EXPECT_EQ(result.evidence[1].matched, "example.com");
  EXPECT_EQ(result.evidence[2].signature, "late");
  EXPECT_EQ(classify(*catalog, "www.example.com").decided_by, "late");
}

TEST(CatalogFormat, SameStageKeepsLoadOrder) {
  const char* first = R"([[signature]]
id = "first"
category = "web"
stage = 5
source = "s"
user_agent = ["Probe/"]
)";
  const char* second = R"([[signature]]
id = "second"
category = "live"
stage = 5
source = "s"
user_agent = ["Probe/"]
)";
  auto ab = compile_ok({{"a.toml", first}, {"b.toml", second}});
  auto ba = compile_ok({{"b.toml", second}, {"a.toml", first}});
  ASSERT_TRUE(ab && ba);
  EXPECT_EQ(classify(*ab, "x.example", "/", "Probe/1").decided_by, "first");
  EXPECT_EQ(classify(*ba, "x.example", "/", "Probe/1").decided_by, "second");
}

TEST(CatalogFormat, ConditionsAreAndedAlternativesOred) {
  auto catalog = compile_ok({{"c.toml", R"([[signature]]
id = "both"
category = "app-api"
stage = 1
source = "s"
headers = ["X-One", "X-Two: yes"]
query = ["aid=7", "flag"]
)"}});
  ASSERT_TRUE(catalog);
  auto run = [&](std::vector<HeaderView> headers, std::string_view query) {
    RequestFacts facts;
    facts.host = "h.example";
    facts.headers = headers;
    facts.query = query;
    return catalog->classify(facts).category;
  };
  EXPECT_EQ(run({{"x-one", "1"}}, "aid=7"), Category::app_api);
  EXPECT_EQ(run({{"X-TWO", "  YES "}}, "a=1&flag"), Category::app_api);
  EXPECT_EQ(run({{"X-Two", "no"}}, "aid=7"), Category::none);
  EXPECT_EQ(run({{"X-One", "1"}}, "aid=77"), Category::none);
  EXPECT_EQ(run({{"X-One", "1"}}, "aid%3D7"), Category::none);
  EXPECT_EQ(run({{"X-One", "1"}}, "a%69d=%37"), Category::app_api) << "percent-decoded";
  EXPECT_EQ(run({}, "aid=7"), Category::none);
}

TEST(CatalogFormat, FamiliesScopeRefinements) {
  auto catalog = compile_ok({{"f.toml", R"([[signature]]
id = "refine"
category = "auth"
stage = 1
source = "s"
within = "acme"
path = ["*/passport/"]

[[signature]]
id = "acme-hosts"
category = "web"
stage = 2
source = "s"
family = "acme"
suffixes = ["acme.example"]
)"}});
  ASSERT_TRUE(catalog);
  EXPECT_EQ(classify(*catalog, "www.acme.example", "/a/passport/b").category, Category::auth);
  EXPECT_EQ(classify(*catalog, "www.acme.example", "/a/b").category, Category::web);
  EXPECT_EQ(classify(*catalog, "other.example", "/a/passport/b").category, Category::none);
}

TEST(CatalogFormat, ShapesAndWordBoundaries) {
  auto catalog = compile_ok({{"s.toml", R"([[signature]]
id = "label"
category = "media-cdn"
stage = 1
source = "s"
suffixes = ["cdn.example"]
first_label = ["v{n}-web", "*-sso$", "exact$"]

[[signature]]
id = "path"
category = "wechat"
stage = 1
source = "s"
path = ["/mmtls/{x}$", "*/id42{/}", "/v{v}/x"]

[[signature]]
id = "agent"
category = "in-app-browser"
stage = 1
source = "s"
user_agent = ["trill_{v}", "AppName/app", "Lark/"]
)"}});
  ASSERT_TRUE(catalog);
  auto label = [&](std::string_view host) { return classify(*catalog, host).category; };
  EXPECT_EQ(label("v16-webapp.cdn.example"), Category::media_cdn);
  EXPECT_EQ(label("V9-WEB.cdn.example"), Category::media_cdn);
  EXPECT_EQ(label("v-web.cdn.example"), Category::none);
  EXPECT_EQ(label("xv16-web.cdn.example"), Category::none);
  EXPECT_EQ(label("biz-sso.cdn.example"), Category::media_cdn);
  EXPECT_EQ(label("biz-sso2.cdn.example"), Category::none);
  EXPECT_EQ(label("exact.cdn.example"), Category::media_cdn);
  EXPECT_EQ(label("exactly.cdn.example"), Category::none);
  EXPECT_EQ(label("v16-web.other.example"), Category::none);

  auto path = [&](std::string_view p) { return classify(*catalog, "h.example", p).category; };
  EXPECT_EQ(path("/mmtls/00ab12CD"), Category::wechat);
  EXPECT_EQ(path("/mmtls/00ab12cdz"), Category::none);
  EXPECT_EQ(path("/mmtls/"), Category::none);
  EXPECT_EQ(path("/us/app/x/id42"), Category::wechat);
  EXPECT_EQ(path("/us/app/x/id42/"), Category::wechat);
  EXPECT_EQ(path("/us/app/x/id421"), Category::none);
  EXPECT_EQ(path("/v1.2.3/x"), Category::wechat);
  EXPECT_EQ(path("/v.1/x"), Category::none);
  EXPECT_EQ(path(""), Category::none);

  auto agent = [&](std::string_view ua) {
    return classify(*catalog, "h.example", "/", ua).category;
  };
  EXPECT_EQ(agent("Mozilla/5.0 trill_34.9.0 JsSdk/2.0"), Category::in_app_browser);
  EXPECT_EQ(agent("trill_2023405030"), Category::in_app_browser);
  EXPECT_EQ(agent("Mozilla/5.0 thrill_34"), Category::none) << "word boundary before";
  EXPECT_EQ(agent("Mozilla/5.0 trill_x"), Category::none);
  EXPECT_EQ(agent("x AppName/app app_version/1"), Category::in_app_browser);
  EXPECT_EQ(agent("x APPNAME/APP"), Category::in_app_browser) << "any case";
  EXPECT_EQ(agent("x AppName/apple"), Category::none) << "word boundary after";
  EXPECT_EQ(agent("x AppName/app_go"), Category::in_app_browser);
  EXPECT_EQ(agent("Chrome/1 Lark/7.1"), Category::in_app_browser);
  EXPECT_EQ(agent("Chrome/1 SkyLark/7.1 LarkLocale/en"), Category::none);
}

TEST(CatalogFormat, VetoAndEvidenceOnly) {
  auto catalog = compile_ok({{"v.toml", R"([[signature]]
id = "note"
category = "none"
stage = 1
source = "s"
evidence_only = true
query = ["ref"]

[[signature]]
id = "crawler"
category = "none"
stage = 2
source = "s"
user_agent = ["GoodBot"]

[[signature]]
id = "anything"
category = "web"
stage = 3
source = "s"
user_agent = ["Mozilla/"]
)"}});
  ASSERT_TRUE(catalog);
  auto bot = classify(*catalog, "h.example", "/", "Mozilla/5.0 (compatible; GoodBot)", "ref=1");
  EXPECT_EQ(bot.category, Category::none);
  EXPECT_EQ(bot.decided_by, "crawler");
  ASSERT_EQ(bot.evidence.size(), 3u);
  EXPECT_EQ(bot.evidence[0].signature, "crawler");
  EXPECT_EQ(bot.evidence[1].signature, "note");
  EXPECT_EQ(bot.evidence[2].signature, "anything");
  auto browser = classify(*catalog, "h.example", "/", "Mozilla/5.0", "ref=1");
  EXPECT_EQ(browser.category, Category::web);
  EXPECT_EQ(browser.decided_by, "anything");
  ASSERT_EQ(browser.evidence.size(), 2u);
  EXPECT_EQ(browser.evidence[0].signature, "anything");
  EXPECT_EQ(browser.evidence[1].signature, "note");
  EXPECT_EQ(browser.evidence[1].kind, EvidenceKind::query);
  auto note_only = classify(*catalog, "h.example", "/", "curl/8", "ref=1");
  EXPECT_EQ(note_only.category, Category::none);
  EXPECT_EQ(note_only.decided_by, "");
  EXPECT_EQ(note_only.evidence.size(), 1u);
}

TEST(CatalogFormat, EmptyCatalogClassifiesNothing) {
  auto catalog = compile_ok({});
  ASSERT_TRUE(catalog);
  EXPECT_EQ(catalog->entry_count(), 0u);
  EXPECT_EQ(classify(*catalog, "www.tiktok.com", "/", "musical_ly_34.1").category, Category::none);
}

// ---------------------------------------------------------------------------------------------
// Override directory

class OverrideDir : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = std::filesystem::temp_directory_path() /
           ("tokgate-catalog-test-" + std::to_string(rd()) + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void write(const std::string& name, std::string_view text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  std::filesystem::path dir_;
};

TEST_F(OverrideDir, ReplacesByNameAndAddsOthersInNameOrder) {
  write("tiktok.toml", R"([[signature]]
id = "only-website"
category = "web"
stage = 55
source = "local"
suffixes = ["tiktok.com"]
)");
  write("zz-local.toml", R"([[signature]]
id = "local-new-domain"
category = "app-api"
stage = 54
source = "local capture"
suffixes = ["tiktok-new-backend.example"]
)");
  write("aa-local.toml", R"([[signature]]
id = "local-first"
category = "live"
stage = 52
source = "local"
hosts = ["live.partner.example"]
)");
  write("notes.txt", "not a catalog");
  write(".hidden.toml", "garbage = [");
  std::filesystem::create_directories(dir_ / "sub.toml");

  auto sources = Catalog::sources_with_overrides(dir_);
  ASSERT_TRUE(sources) << sources.error();
  ASSERT_EQ(sources->size(), 5u);
  EXPECT_EQ((*sources)[0].name, (dir_ / "tiktok.toml").string());
  EXPECT_EQ((*sources)[1].name, "policy/catalog/bytedance_other.toml");
  EXPECT_EQ((*sources)[2].name, "policy/catalog/wechat.toml");
  EXPECT_EQ((*sources)[3].name, (dir_ / "aa-local.toml").string());
  EXPECT_EQ((*sources)[4].name, (dir_ / "zz-local.toml").string());

  auto catalog = compile_ok(*sources);
  ASSERT_TRUE(catalog);
  EXPECT_NE(catalog->version(), embedded()->version());
  EXPECT_EQ(classify(*catalog, "api.tiktok-new-backend.example").category, Category::app_api);
  EXPECT_EQ(classify(*catalog, "live.partner.example").category, Category::live);
  EXPECT_EQ(classify(*catalog, "analytics.tiktok.com").category, Category::web)
      << "the replaced file's pixel signature is gone";
  EXPECT_EQ(classify(*catalog, "www.douyin.com").category, Category::bytedance_other);
}

TEST_F(OverrideDir, ANewDomainIsOneLineNoRecompile) {
  auto sources = Catalog::embedded_sources();
  const std::string line = "\"tiktokv.com\", ";
  auto at = sources[0].text.find(line);
  ASSERT_NE(at, std::string::npos);
  sources[0].text.insert(at + line.size(), "\"tiktokv-new.example\", ");
  write("tiktok.toml", sources[0].text);
  auto overridden = Catalog::sources_with_overrides(dir_);
  ASSERT_TRUE(overridden) << overridden.error();
  auto catalog = compile_ok(*overridden);
  ASSERT_TRUE(catalog);
  auto result = classify(*catalog, "api16-normal-c-useast1a.tiktokv-new.example");
  EXPECT_EQ(result.category, Category::app_api);
  EXPECT_EQ(result.decided_by, "tiktok-app-backend");
  EXPECT_EQ(classify(*embedded(), "api16-normal-c-useast1a.tiktokv-new.example").category,
            Category::none);
}

TEST_F(OverrideDir, ErrorsNameTheOverrideFile) {
  write("wechat.toml", "[[signature]]\nid = \"w\"\ncategory = \"wechat\"\nstage = 20\n");
  auto sources = Catalog::sources_with_overrides(dir_);
  ASSERT_TRUE(sources);
  auto compiled = Catalog::compile(*sources);
  ASSERT_FALSE(compiled);
  EXPECT_TRUE(compiled.error().starts_with((dir_ / "wechat.toml").string() + ":1:1:"))
      << compiled.error();
}

TEST_F(OverrideDir, MissingDirectoryIsAnError) {
  auto sources = Catalog::sources_with_overrides(dir_ / "nope");
  ASSERT_FALSE(sources);
  EXPECT_NE(sources.error().find("not a directory"), std::string::npos);
  auto empty = Catalog::sources_with_overrides(dir_);
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->size(), 3u);
}

}  // namespace
}  // namespace tokgate::policy
