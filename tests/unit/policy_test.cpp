#include "policy/policy.hpp"

#include <gtest/gtest.h>

#include <unistd.h>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <new>
#include <string>
#include <vector>

#include "policy/catalog.hpp"

// Counts heap allocations so the test can show decide_request makes none. Replacing the global
// operator new is the portable way to see them; it only counts and forwards to malloc. Not
// under AddressSanitizer, which has its own operator new and checks new/free pairs.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kCountsAllocations = false;
namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace
#else
constexpr bool kCountsAllocations = true;
namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace

// g++ inlines these replacements and then reads `delete p` as free() of memory from `new`.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
#endif

namespace tokgate::policy {
namespace {

using namespace std::literals;

std::shared_ptr<const Policy> parse_ok(std::string_view text) {
  auto policy = Policy::parse(text, "test.toml");
  EXPECT_TRUE(policy.has_value()) << (policy ? "" : policy.error());
  if (!policy) return nullptr;
  return *policy;
}

std::string parse_error(std::string_view text) {
  auto policy = Policy::parse(text, "test.toml");
  EXPECT_FALSE(policy.has_value()) << "parsed, but an error was expected";
  return policy ? std::string() : policy.error();
}

// The facts of one request, with storage for its headers.
struct Request {
  std::string host = "example.org";
  std::string method = "GET";
  std::string path = "/";
  std::string user_agent = "Mozilla/5.0";
  std::vector<std::pair<std::string, std::string>> header_storage;
  std::vector<HeaderView> headers;
  std::optional<IpAddress> client = IpAddress::parse("10.1.2.3");

  RequestFacts facts() {
    headers.clear();
    for (const auto& [name, value] : header_storage) headers.push_back({name, value});
    RequestFacts f;
    f.host = host;
    f.port = 443;
    f.method = method;
    f.path = path;
    f.user_agent = user_agent;
    f.headers = headers;
    f.client = client;
    return f;
  }
};

Classification classified(Category category, std::vector<std::string_view> signatures = {}) {
  Classification c;
  c.category = category;
  for (auto signature : signatures) {
    c.evidence.push_back({EvidenceKind::host, signature, "x", category});
  }
  return c;
}

RequestDecision decide(const Policy& policy, Request request,
                       const Classification& classification = classified(Category::none)) {
  auto facts = request.facts();
  return policy.decide_request(facts, classification);
}

// ---------------------------------------------------------------- parsing

TEST(PolicyParse, EmptyDocumentHasDefaults) {
  auto policy = parse_ok("");
  ASSERT_TRUE(policy);
  EXPECT_EQ(policy->name(), "test.toml");
  EXPECT_EQ(policy->source(), "test.toml");
  EXPECT_EQ(policy->organisation(), "");
  EXPECT_EQ(policy->on_pinned(), PinnedAction::refuse);
  EXPECT_EQ(policy->pinned_memory(), std::chrono::seconds(600));
  EXPECT_EQ(policy->pinned_table_size(), 10000u);
  EXPECT_EQ(policy->rule_count(), 0u);
  auto decision = decide(*policy, Request{});
  EXPECT_EQ(decision.action, Action::allow);
  EXPECT_EQ(decision.rule, "");
  EXPECT_EQ(decision.message, "");
}

TEST(PolicyParse, EveryKey) {
  auto policy = parse_ok(R"(
[policy]
name = "site"
organisation = "Example Agency"
default_action = "log"
block_message = "Not here."
on_pinned = "splice"
pinned_memory = "2h"
pinned_table_size = 50

[intercept]
mode = "all"
exempt = ["*.bank.example", ".health.example", "pay.example"]

[client_groups]
staff = ["10.1.0.0/16", "2001:db8::/32"]
lab = ["192.0.2.7"]

[[rules]]
name = "one"
action = "refuse"
message = "No TikTok."
match = { category = ["app-api", "live"], host = ["*.tiktokv.com", "tiktok.com"], client = ["10.0.0.0/8", "@staff"] }

[[rules]]
name = "two"
action = "capture"
[rules.match]
path = ["/aweme/*", "/api/*/list"]
method = ["POST", "get"]
user_agent = ["musical_ly_"]
header = ["X-Gorgon", "X-Tt-Token: 00*"]
evidence = ["tiktok-webview-ua"]

[[rules]]
name = "three"
action = "allow"
)");
  ASSERT_TRUE(policy);
  EXPECT_EQ(policy->name(), "site");
  EXPECT_EQ(policy->organisation(), "Example Agency");
  EXPECT_EQ(policy->on_pinned(), PinnedAction::splice);
  EXPECT_EQ(policy->pinned_memory(), std::chrono::hours(2));
  EXPECT_EQ(policy->pinned_table_size(), 50u);
  EXPECT_EQ(policy->rule_count(), 3u);
}

TEST(PolicyParse, DurationUnits) {
  auto memory = [](std::string_view text) {
    auto policy = Policy::parse("[policy]\npinned_memory = \"" + std::string(text) + "\"\n", "t");
    return policy ? (*policy)->pinned_memory() : std::chrono::seconds(-1);
  };
  EXPECT_EQ(memory("1s"), std::chrono::seconds(1));
  EXPECT_EQ(memory("90s"), std::chrono::seconds(90));
  EXPECT_EQ(memory("10m"), std::chrono::minutes(10));
  EXPECT_EQ(memory("3h"), std::chrono::hours(3));
  EXPECT_EQ(memory("7d"), std::chrono::hours(7 * 24));
  EXPECT_EQ(memory("0s"), std::chrono::seconds(-1));
  EXPECT_EQ(memory("8d"), std::chrono::seconds(-1));
  EXPECT_EQ(memory("10"), std::chrono::seconds(-1));
  EXPECT_EQ(memory("10ms"), std::chrono::seconds(-1));
  EXPECT_EQ(memory("-1s"), std::chrono::seconds(-1));
  EXPECT_EQ(memory("1.5h"), std::chrono::seconds(-1));
  EXPECT_EQ(memory("99999999999999999999s"), std::chrono::seconds(-1));
}

struct ErrorCase {
  const char* label;
  const char* text;
  const char* expected;  // the whole error report
};

class PolicyErrors : public testing::TestWithParam<ErrorCase> {};

TEST_P(PolicyErrors, ReportsPosition) {
  EXPECT_EQ(parse_error(GetParam().text), GetParam().expected);
}

INSTANTIATE_TEST_SUITE_P(
    EachKind, PolicyErrors,
    testing::Values(
        ErrorCase{"syntax", "[policy]\nname = \"x\nx",
                  "test.toml:2:10: Error while parsing string: unescaped control characters other "
                  "than TAB "
                  "(U+0009) are explicitly prohibited"},
        ErrorCase{"unknown_section", "[polcy]\nname = \"x\"\n",
                  "test.toml:1:2: unknown section 'polcy' (expected policy, intercept, "
                  "client_groups or rules)"},
        ErrorCase{"unknown_policy_key", "[policy]\n  nmae = \"x\"\n",
                  "test.toml:2:3: unknown key 'nmae' in [policy] (expected name, organisation, "
                  "default_action, block_message, on_pinned, pinned_memory or "
                  "pinned_table_size)"},
        ErrorCase{"unknown_intercept_key", "[intercept]\nexempts = [\"a.example\"]\n",
                  "test.toml:2:1: unknown key 'exempts' in [intercept] (expected mode or exempt)"},
        ErrorCase{"unknown_rule_key",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\ncategory = [\"web\"]\n",
                  "test.toml:4:1: unknown key 'category' in rules[0] (r) (expected name, action, "
                  "message, privacy or match)"},
        ErrorCase{"unknown_match_key",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { hosts = [\"a.b\"] }\n",
                  "test.toml:4:11: unknown key 'hosts' in rules[0] (r).match (expected category, "
                  "host, path, method, user_agent, header, client or evidence)"},
        ErrorCase{"wrong_type", "[policy]\nname = 5\n",
                  "test.toml:2:8: policy.name: expected a string, got integer"},
        ErrorCase{"wrong_type_integer", "[policy]\npinned_table_size = \"5\"\n",
                  "test.toml:2:21: policy.pinned_table_size: expected an integer, got string"},
        ErrorCase{"table_size_range", "[policy]\npinned_table_size = 0\n",
                  "test.toml:2:21: policy.pinned_table_size: 0 is out of range (1..10000000)"},
        ErrorCase{"section_not_table", "policy = 3\n",
                  "test.toml:1:10: policy: expected a table, got integer"},
        ErrorCase{"rules_not_array", "[rules]\nname = \"r\"\n",
                  "test.toml:1:1: rules: expected an array of tables ([[rules]]), got table"},
        ErrorCase{"unknown_category",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { category = [\"web\", "
                  "\"app_api\"] }\n",
                  "test.toml:4:30: rules[0] (r).match.category[1]: unknown category 'app_api' "
                  "(expected none, app-api, in-app-browser, media-cdn, web, analytics-sdk, "
                  "app-distribution, auth, live, wechat or bytedance-other); did you mean "
                  "'app-api'?"},
        ErrorCase{"unknown_action", "[[rules]]\nname = \"r\"\naction = \"deny\"\n",
                  "test.toml:3:10: rules[0] (r).action: unknown action 'deny' (expected allow, "
                  "log, block, refuse, splice or capture)"},
        ErrorCase{"default_action_refuse", "[policy]\ndefault_action = \"refuse\"\n",
                  "test.toml:2:18: policy.default_action: 'refuse' is not meaningful for a "
                  "request (use allow, log, capture or block; refuse or splice hosts with a "
                  "rule)"},
        ErrorCase{"default_action_unknown", "[policy]\ndefault_action = \"drop\"\n",
                  "test.toml:2:18: policy.default_action: unknown action 'drop' (expected allow, "
                  "log, capture or block)"},
        ErrorCase{"bad_host_glob",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { host = [\"*tiktok.com\"] "
                  "}\n",
                  "test.toml:4:19: rules[0] (r).match.host[0]: bad host pattern '*tiktok.com': "
                  "'*' must be the whole pattern or its whole first label (\"*.example.com\")"},
        ErrorCase{"bad_exempt", "[intercept]\nexempt = [\"ok.example\", \"bad..example\"]\n",
                  "test.toml:2:25: intercept.exempt[1]: bad host pattern 'bad..example': not a "
                  "valid host name"},
        ErrorCase{"exempt_everything", "[intercept]\nexempt = [\"*\"]\n",
                  "test.toml:2:11: intercept.exempt[0]: '*' would exempt every host, so no rule "
                  "could ever act"},
        ErrorCase{"bad_mode", "[intercept]\nmode = \"some\"\n",
                  "test.toml:2:8: intercept.mode: unknown mode 'some' (expected targets or all)"},
        ErrorCase{
            "bad_cidr",
            "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { client = [\"10.0.0.0/33\"] "
            "}\n",
            "test.toml:4:21: rules[0] (r).match.client[0]: bad CIDR '10.0.0.0/33' (expected "
            "ADDRESS/PREFIX, an address or @group)"},
        ErrorCase{"bad_group_cidr", "[client_groups]\nstaff = [\"10.0.0.0/8\", \"nope\"]\n",
                  "test.toml:2:24: client_groups.staff[1]: bad CIDR 'nope' (expected "
                  "ADDRESS/PREFIX or an address)"},
        ErrorCase{"unknown_group",
                  "[client_groups]\nstaff = [\"10.0.0.0/8\"]\nlab = [\"192.0.2.0/24\"]\n[[rules]]\n"
                  "name = \"r\"\naction = \"block\"\nmatch = { client = [\"@staf\"] }\n",
                  "test.toml:7:21: rules[0] (r).match.client[0]: unknown client group '@staf' "
                  "(defined: lab, staff)"},
        ErrorCase{
            "unknown_group_none_defined",
            "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { client = [\"@staff\"] }\n",
            "test.toml:4:21: rules[0] (r).match.client[0]: unknown client group '@staff' "
            "(no [client_groups] defined)"},
        ErrorCase{"duplicate_names",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { host = [\"a.example\"] }"
                  "\n[[rules]]\nname = \"r\"\naction = \"log\"\n",
                  "test.toml:6:8: rules[1] (r).name: duplicate rule name 'r' (first at line 1)"},
        ErrorCase{"empty_list",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { category = [] }\n",
                  "test.toml:4:22: rules[0] (r).match.category: empty list (leave the key out "
                  "instead)"},
        ErrorCase{"empty_group", "[client_groups]\nstaff = []\n",
                  "test.toml:2:9: client_groups.staff: empty list (leave the key out instead)"},
        ErrorCase{"not_a_list",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { host = \"a.example\" }\n",
                  "test.toml:4:18: rules[0] (r).match.host: expected an array of strings, got "
                  "string"},
        ErrorCase{"bad_duration", "[policy]\npinned_memory = \"10 minutes\"\n",
                  "test.toml:2:17: policy.pinned_memory: bad duration '10 minutes': unknown unit "
                  "' minutes' (use s, m, h or d)"},
        ErrorCase{"bad_on_pinned", "[policy]\non_pinned = \"block\"\n",
                  "test.toml:2:13: policy.on_pinned: unknown value 'block' (expected refuse or "
                  "splice)"},
        ErrorCase{"missing_name_and_action", "[[rules]]\nmessage = \"hi\"\n",
                  "test.toml:1:1: rules[0]: missing name (every rule needs a unique name)\n"
                  "test.toml:1:1: rules[0]: missing action"},
        ErrorCase{"bad_rule_name", "[[rules]]\nname = \"two words\"\naction = \"log\"\n",
                  "test.toml:2:8: rules[0].name: bad rule name 'two words' (letters, digits, '-', "
                  "'_' and '.', at most 64)"},
        ErrorCase{"splice_with_request_condition",
                  "[[rules]]\nname = \"r\"\naction = \"splice\"\nmatch = { path = [\"/x\"] }\n",
                  "test.toml:3:10: rules[0] (r).action: a splice rule can only match category, "
                  "host and client: a connection is spliced before any path, method, user agent, "
                  "header or evidence is seen"},
        ErrorCase{"unreachable",
                  "[[rules]]\nname = \"all\"\naction = \"log\"\n[[rules]]\nname = \"later\"\n"
                  "action = \"block\"\n",
                  "test.toml:4:1: rules[1] (later): unreachable: rule 'all' (line 1) matches "
                  "everything"},
        ErrorCase{"bad_path",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { path = [\"aweme/*\"] }\n",
                  "test.toml:4:19: rules[0] (r).match.path[0]: path pattern 'aweme/*' must start "
                  "with '/' or '*' (paths always do)"},
        ErrorCase{"bad_header",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { header = [\"X Gorgon\", "
                  "\"X-Tt-Token:\"] }\n",
                  "test.toml:4:21: rules[0] (r).match.header[0]: bad header name 'X Gorgon' "
                  "(expected \"Name\" or \"Name: value-pattern\")\n"
                  "test.toml:4:33: rules[0] (r).match.header[1]: empty value pattern after ':' "
                  "(write just the name to test presence, or \"*\")"},
        ErrorCase{"bad_method",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { method = [\"GE T\"] }\n",
                  "test.toml:4:21: rules[0] (r).match.method[0]: bad method 'GE T'"},
        ErrorCase{"bad_evidence_id",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { evidence = [\"a b\"] }\n",
                  "test.toml:4:23: rules[0] (r).match.evidence[0]: bad signature id 'a b' "
                  "(catalog ids are letters, digits, '-', '_' and '.')"},
        ErrorCase{"empty_string",
                  "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = { user_agent = [\"\"] }\n",
                  "test.toml:4:25: rules[0] (r).match.user_agent[0]: empty string"},
        ErrorCase{"control_character", "[policy]\norganisation = \"a\\u0007b\"\n",
                  "test.toml:2:16: policy.organisation: control character in 'a\\x07b'"},
        ErrorCase{"match_not_table", "[[rules]]\nname = \"r\"\naction = \"block\"\nmatch = 1\n",
                  "test.toml:4:9: rules[0] (r).match: expected a table, got integer"}),
    [](const testing::TestParamInfo<ErrorCase>& param_info) {
      return std::string(param_info.param.label);
    });

TEST(PolicyParse, CollectsEveryErrorInOrder) {
  auto error = parse_error(R"([policy]
default_action = "splice"
pinned_memory = "soon"

[intercept]
mode = "everything"

[[rules]]
name = "a"
action = "blokc"
match = { category = ["webb"], host = ["ok.example", "**"] }

[[rules]]
name = "a"
action = "log"
match = { client = ["@nobody"] }
)");
  std::vector<std::string> lines;
  for (std::size_t start = 0; start <= error.size();) {
    auto end = error.find('\n', start);
    if (end == std::string::npos) end = error.size();
    lines.push_back(error.substr(start, end - start));
    start = end + 1;
  }
  ASSERT_EQ(lines.size(), 8u) << error;
  EXPECT_TRUE(lines[0].starts_with("test.toml:2:18: policy.default_action: 'splice'")) << error;
  EXPECT_TRUE(lines[1].starts_with("test.toml:3:17: policy.pinned_memory: bad duration 'soon'"));
  EXPECT_TRUE(lines[2].starts_with("test.toml:6:8: intercept.mode: unknown mode"));
  EXPECT_TRUE(lines[3].starts_with("test.toml:10:10: rules[0] (a).action: unknown action 'blokc'"));
  EXPECT_TRUE(lines[4].starts_with("test.toml:11:23: rules[0] (a).match.category[0]: unknown"));
  EXPECT_TRUE(lines[5].starts_with("test.toml:11:54: rules[0] (a).match.host[1]: bad host"));
  EXPECT_TRUE(lines[6].starts_with("test.toml:14:8: rules[1] (a).name: duplicate rule name"));
  EXPECT_TRUE(lines[7].starts_with("test.toml:16:21: rules[1] (a).match.client[0]: unknown"));
}

TEST(PolicyParse, InlineAndSubTableMatchAreTheSame) {
  auto inline_form = parse_ok(R"(
[[rules]]
name = "r"
action = "block"
match = { host = [".tiktok.com"], path = ["/api/*"] }
)");
  auto table_form = parse_ok(R"(
[[rules]]
name = "r"
action = "block"
[rules.match]
host = [".tiktok.com"]
path = ["/api/*"]
)");
  ASSERT_TRUE(inline_form && table_form);
  Request request;
  request.host = "www.tiktok.com";
  request.path = "/api/item/";
  EXPECT_EQ(decide(*inline_form, request).action, Action::block);
  EXPECT_EQ(decide(*table_form, request).action, Action::block);
  request.path = "/foryou";
  EXPECT_EQ(decide(*inline_form, request).action, Action::allow);
  EXPECT_EQ(decide(*table_form, request).action, Action::allow);
}

TEST(PolicyParse, EmptyMatchMatchesEverything) {
  auto policy = parse_ok("[[rules]]\nname = \"everything\"\naction = \"log\"\nmatch = {}\n");
  ASSERT_TRUE(policy);
  auto decision = decide(*policy, Request{});
  EXPECT_EQ(decision.action, Action::log);
  EXPECT_EQ(decision.rule, "everything");
}

TEST(PolicyLoad, FileAndErrors) {
  auto dir = std::filesystem::temp_directory_path() /
             ("tokgate_policy_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto good = dir / "good.toml";
  std::ofstream(good) << "[policy]\nname = \"from-file\"\n";
  auto loaded = Policy::load_file(good);
  ASSERT_TRUE(loaded.has_value()) << loaded.error();
  EXPECT_EQ((*loaded)->name(), "from-file");
  EXPECT_EQ((*loaded)->source(), good.string());

  auto bad = dir / "bad.toml";
  std::ofstream(bad) << "[policy]\nname = 1\n";
  auto failed = Policy::load_file(bad);
  ASSERT_FALSE(failed.has_value());
  EXPECT_EQ(failed.error(), bad.string() + ":2:8: policy.name: expected a string, got integer");

  auto missing = Policy::load_file(dir / "missing.toml");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error(),
            (dir / "missing.toml").string() + ": cannot read: No such file or directory");

  auto directory = Policy::load_file(dir);
  ASSERT_FALSE(directory.has_value());
  EXPECT_TRUE(directory.error().starts_with(dir.string() + ": cannot read: ")) << directory.error();
  std::filesystem::remove_all(dir);
}

TEST(PolicyParse, RefusesHugeInput) {
  std::string text(5 << 20, '#');
  auto policy = Policy::parse(text, "big.toml");
  ASSERT_FALSE(policy.has_value());
  EXPECT_EQ(policy.error(), "big.toml: larger than 4 MiB");
}

// ---------------------------------------------------------------- profiles

TEST(PolicyProfiles, BothParse) {
  EXPECT_EQ(Policy::profile_names(), (std::vector<std::string_view>{"gateway", "observe"}));
  for (auto name : Policy::profile_names()) {
    auto policy = Policy::profile(name);
    ASSERT_TRUE(policy.has_value()) << policy.error();
    EXPECT_EQ((*policy)->name(), name);
    EXPECT_EQ((*policy)->source(), "profile:" + std::string(name));
    EXPECT_GT((*policy)->rule_count(), 0u);
  }
  EXPECT_EQ(Policy::profile("gateway").value()->on_pinned(), PinnedAction::refuse);
  EXPECT_EQ(Policy::profile("observe").value()->on_pinned(), PinnedAction::splice);
}

TEST(PolicyProfiles, UnknownNameListsValidOnes) {
  auto policy = Policy::profile("strict");
  ASSERT_FALSE(policy.has_value());
  EXPECT_EQ(policy.error(), "unknown profile 'strict' (expected gateway or observe)");
}

TEST(PolicyProfiles, GatewayRequestStage) {
  auto gateway = Policy::profile("gateway").value();
  struct Case {
    Category category;
    Action action;
    std::string_view rule;
  };
  for (const auto& c : {
           Case{Category::app_api, Action::refuse, "refuse-tiktok-app"},
           Case{Category::live, Action::refuse, "refuse-tiktok-app"},
           Case{Category::auth, Action::refuse, "refuse-tiktok-app"},
           Case{Category::media_cdn, Action::refuse, "refuse-tiktok-embedded"},
           Case{Category::analytics_sdk, Action::refuse, "refuse-tiktok-embedded"},
           Case{Category::web, Action::block, "block-tiktok-pages"},
           Case{Category::app_distribution, Action::block, "block-tiktok-pages"},
           Case{Category::in_app_browser, Action::block, "block-tiktok-pages"},
           Case{Category::wechat, Action::refuse, "refuse-wechat"},
           Case{Category::bytedance_other, Action::allow, "bytedance-other"},  // splice -> allow
           Case{Category::none, Action::allow, ""},
       }) {
    auto decision = decide(*gateway, Request{}, classified(c.category));
    EXPECT_EQ(decision.action, c.action) << to_string(c.category);
    EXPECT_EQ(decision.rule, c.rule) << to_string(c.category);
  }
  Request article;
  article.host = "mp.weixin.qq.com";
  auto decision = decide(*gateway, article, classified(Category::wechat));
  EXPECT_EQ(decision.action, Action::block);
  EXPECT_EQ(decision.rule, "block-wechat-pages");
  EXPECT_EQ(decision.message, "TikTok and WeChat are not permitted on this network.");
}

TEST(PolicyProfiles, ObserveBlocksNothing) {
  auto observe = Policy::profile("observe").value();
  for (std::size_t i = 0; i < kCategoryCount; ++i) {
    auto category = static_cast<Category>(i);
    auto decision = decide(*observe, Request{}, classified(category));
    EXPECT_EQ(decision.action, is_target(category) ? Action::log : Action::allow)
        << to_string(category);
  }
}

// ---------------------------------------------------------------- request stage

TEST(PolicyRequest, EachConditionKind) {
  auto policy = parse_ok(R"(
[client_groups]
staff = ["10.1.0.0/16", "2001:db8::/32"]

[[rules]]
name = "by-category"
action = "block"
match = { category = ["app-api"] }

[[rules]]
name = "by-evidence"
action = "capture"
match = { evidence = ["tiktok-webview-ua", "other-id"] }

[[rules]]
name = "by-host"
action = "refuse"
match = { host = ["*.tiktokv.com", "tiktok.com"] }

[[rules]]
name = "by-path"
action = "log"
match = { path = ["/aweme/*", "/api/*/list", "/v?/x"] }

[[rules]]
name = "by-method"
action = "log"
match = { method = ["DELETE"] }

[[rules]]
name = "by-user-agent"
action = "log"
match = { user_agent = ["musical_ly_", "BytedanceWebview"] }

[[rules]]
name = "by-header"
action = "log"
match = { header = ["X-Gorgon", "X-Tt-Token: 00*", "Upgrade: mmtls"] }

[[rules]]
name = "by-client"
action = "log"
message = "Staff network"
match = { client = ["@staff", "192.0.2.9"] }
)");
  ASSERT_TRUE(policy);
  Request base;
  base.client = IpAddress::parse("198.51.100.1");

  auto rule_for = [&](Request request, Classification c = classified(Category::none)) {
    return std::string(decide(*policy, std::move(request), c).rule);
  };
  EXPECT_EQ(rule_for(base), "");
  EXPECT_EQ(rule_for(base, classified(Category::app_api)), "by-category");
  EXPECT_EQ(rule_for(base, classified(Category::web)), "");
  // Evidence counts even when another category won.
  EXPECT_EQ(rule_for(base, classified(Category::web, {"unrelated", "tiktok-webview-ua"})),
            "by-evidence");
  EXPECT_EQ(rule_for(base, classified(Category::web, {"unrelated"})), "");

  auto with = [&](auto change) {
    Request r = base;
    change(r);
    return rule_for(r);
  };
  EXPECT_EQ(with([](Request& r) { r.host = "api16-normal-c-useast1a.tiktokv.com"; }), "by-host");
  EXPECT_EQ(with([](Request& r) { r.host = "tiktok.com"; }), "by-host");
  EXPECT_EQ(with([](Request& r) { r.host = "tiktokv.com"; }), "");  // "*." is strictly below
  EXPECT_EQ(with([](Request& r) { r.host = "www.tiktok.com"; }), "");
  EXPECT_EQ(with([](Request& r) { r.host = "nottiktokv.com"; }), "");

  EXPECT_EQ(with([](Request& r) { r.path = "/aweme/v1/feed/"; }), "by-path");
  EXPECT_EQ(with([](Request& r) { r.path = "/aweme/"; }), "by-path");
  EXPECT_EQ(with([](Request& r) { r.path = "/aweme"; }), "");
  EXPECT_EQ(with([](Request& r) { r.path = "/AWEME/v1/"; }), "");  // paths are case-sensitive
  EXPECT_EQ(with([](Request& r) { r.path = "/api/a/b/list"; }), "by-path");  // '*' crosses '/'
  EXPECT_EQ(with([](Request& r) { r.path = "/api/list"; }), "");
  EXPECT_EQ(with([](Request& r) { r.path = "/api/x/list/more"; }), "");
  EXPECT_EQ(with([](Request& r) { r.path = "/v2/x"; }), "by-path");
  EXPECT_EQ(with([](Request& r) { r.path = "/v22/x"; }), "");

  EXPECT_EQ(with([](Request& r) { r.method = "DELETE"; }), "by-method");
  EXPECT_EQ(with([](Request& r) { r.method = "delete"; }), "by-method");
  EXPECT_EQ(with([](Request& r) { r.method = "DELETES"; }), "");

  EXPECT_EQ(with([](Request& r) {
              r.user_agent = "Mozilla/5.0 (iPhone) Mobile/15E148 MUSICAL_LY_34.3.1 JsSdk/2.0";
            }),
            "by-user-agent");
  EXPECT_EQ(with([](Request& r) { r.user_agent = "bytedancewebview/d8a21c6"; }), "by-user-agent");
  EXPECT_EQ(with([](Request& r) { r.user_agent = "musical_ly"; }), "");
  EXPECT_EQ(with([](Request& r) { r.user_agent = ""; }), "");

  EXPECT_EQ(with([](Request& r) { r.header_storage = {{"x-gorgon", "0404abcd"}}; }), "by-header");
  EXPECT_EQ(with([](Request& r) { r.header_storage = {{"X-GORGON", ""}}; }), "by-header");
  EXPECT_EQ(with([](Request& r) { r.header_storage = {{"X-Gorgonzola", "1"}}; }), "");
  EXPECT_EQ(with([](Request& r) {
              r.header_storage = {{"x-tt-token", " 00abc-1.0.0 "}};
            }),
            "by-header");
  EXPECT_EQ(with([](Request& r) { r.header_storage = {{"X-Tt-Token", "01abc"}}; }), "");
  EXPECT_EQ(with([](Request& r) {
              r.header_storage = {{"Accept", "*/*"}, {"X-Tt-Token", "01"}, {"X-Tt-Token", "00"}};
            }),
            "by-header");  // any header of that name
  EXPECT_EQ(with([](Request& r) { r.header_storage = {{"Upgrade", "MMTLS"}}; }), "by-header");
  EXPECT_EQ(with([](Request& r) { r.header_storage = {{"Upgrade", "websocket"}}; }), "");

  EXPECT_EQ(with([](Request& r) { r.client = IpAddress::parse("10.1.200.3"); }), "by-client");
  EXPECT_EQ(with([](Request& r) { r.client = IpAddress::parse("10.2.0.1"); }), "");
  EXPECT_EQ(with([](Request& r) { r.client = IpAddress::parse("2001:db8:ffff::1"); }), "by-client");
  EXPECT_EQ(with([](Request& r) { r.client = IpAddress::parse("2001:db9::1"); }), "");
  EXPECT_EQ(with([](Request& r) { r.client = IpAddress::parse("::ffff:10.1.0.1"); }), "by-client");
  EXPECT_EQ(with([](Request& r) { r.client = IpAddress::parse("192.0.2.9"); }), "by-client");
  EXPECT_EQ(with([](Request& r) { r.client = std::nullopt; }), "");

  Request staff = base;
  staff.client = IpAddress::parse("10.1.0.1");
  auto decision = decide(*policy, staff);
  EXPECT_EQ(decision.action, Action::log);
  EXPECT_EQ(decision.message, "Staff network");
}

TEST(PolicyRequest, AllConditionsMustHoldAndFirstMatchWins) {
  auto policy = parse_ok(R"(
[policy]
default_action = "block"
block_message = "Default says no."

[[rules]]
name = "post-to-api"
action = "refuse"
match = { host = [".tiktokv.com"], method = ["POST"], path = ["/aweme/*"] }

[[rules]]
name = "api"
action = "block"
message = "API blocked."
match = { host = [".tiktokv.com"] }

[[rules]]
name = "api-again"
action = "allow"
match = { host = [".tiktokv.com"] }

[[rules]]
name = "example"
action = "splice"
match = { host = ["example.org"] }
)");
  ASSERT_TRUE(policy);
  Request request;
  request.host = "api.tiktokv.com";
  request.method = "POST";
  request.path = "/aweme/v1/commit/";
  auto decision = decide(*policy, request);
  EXPECT_EQ(decision.action, Action::refuse);
  EXPECT_EQ(decision.rule, "post-to-api");
  EXPECT_EQ(decision.message, "Default says no.");  // refuse without a message: block_message

  request.method = "GET";  // one condition fails: the next rule
  decision = decide(*policy, request);
  EXPECT_EQ(decision.action, Action::block);
  EXPECT_EQ(decision.rule, "api");
  EXPECT_EQ(decision.message, "API blocked.");

  request.host = "example.org";  // splice at the request stage: too late, so allow
  decision = decide(*policy, request);
  EXPECT_EQ(decision.action, Action::allow);
  EXPECT_EQ(decision.rule, "example");
  EXPECT_EQ(decision.message, "");

  request.host = "elsewhere.example";
  decision = decide(*policy, request);
  EXPECT_EQ(decision.action, Action::block);
  EXPECT_EQ(decision.rule, "");
  EXPECT_EQ(decision.message, "Default says no.");
}

TEST(PolicyRequest, DefaultActions) {
  for (auto [text, action] :
       {std::pair{"allow", Action::allow}, std::pair{"log", Action::log},
        std::pair{"capture", Action::capture}, std::pair{"block", Action::block}}) {
    auto policy = parse_ok("[policy]\ndefault_action = \"" + std::string(text) + "\"\n");
    ASSERT_TRUE(policy);
    auto decision = decide(*policy, Request{});
    EXPECT_EQ(decision.action, action);
    EXPECT_EQ(decision.rule, "");
    EXPECT_EQ(decision.message, action == Action::block
                                    ? "Access to this service is not permitted on this network."
                                    : "");
  }
}

TEST(PolicyRequest, GlobEdgeCases) {
  auto policy = parse_ok(R"(
[[rules]]
name = "star"
action = "log"
match = { path = ["*"] , host = ["star.example"] }
[[rules]]
name = "pieces"
action = "log"
match = { path = ["/a*b*c", "*/end", "/x**y", "/q?"], host = ["pieces.example"] }
[[rules]]
name = "exact"
action = "log"
match = { path = ["/exact"], host = ["exact.example"] }
)");
  ASSERT_TRUE(policy);
  auto rule = [&](std::string host, std::string path) {
    Request r;
    r.host = std::move(host);
    r.path = std::move(path);
    return std::string(decide(*policy, r).rule);
  };
  EXPECT_EQ(rule("star.example", ""), "star");
  EXPECT_EQ(rule("star.example", "/anything/at/all"), "star");
  EXPECT_EQ(rule("pieces.example", "/abc"), "pieces");
  EXPECT_EQ(rule("pieces.example", "/aXbYc"), "pieces");
  EXPECT_EQ(rule("pieces.example", "/abcbc"), "pieces");
  EXPECT_EQ(rule("pieces.example", "/acb"), "");
  EXPECT_EQ(rule("pieces.example", "/ab"), "");
  EXPECT_EQ(rule("pieces.example", "/some/where/end"), "pieces");
  EXPECT_EQ(rule("pieces.example", "/end"), "pieces");
  EXPECT_EQ(rule("pieces.example", "end"), "");
  EXPECT_EQ(rule("pieces.example", "/xy"), "pieces");
  EXPECT_EQ(rule("pieces.example", "/x/y"), "pieces");
  EXPECT_EQ(rule("pieces.example", "/q"), "");
  EXPECT_EQ(rule("pieces.example", "/qq"), "pieces");
  EXPECT_EQ(rule("pieces.example", "/qqq"), "");
  EXPECT_EQ(rule("exact.example", "/exact"), "exact");
  EXPECT_EQ(rule("exact.example", "/exact/"), "");
  EXPECT_EQ(rule("exact.example", "/exac"), "");
  // A long hostile path against several pieces stays linear (the test would time out if not).
  std::string hostile = "/a" + std::string(1 << 20, 'b');
  EXPECT_EQ(rule("pieces.example", hostile), "");
}

TEST(PolicyRequest, NoAllocationAndSpeed) {
  auto gateway = Policy::profile("gateway").value();
  Request request;
  request.host = "www.example.org";
  request.path = "/some/page/with/a/longer/path";
  request.user_agent =
      "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0.0.0 Mobile Safari/537.36";
  request.header_storage = {{"Accept", "text/html"}, {"Accept-Language", "en"}};
  auto facts = request.facts();
  auto none = classified(Category::none, {"some-signature"});
  auto wechat = classified(Category::wechat);

  // Walks every rule (no match) and one that matches late.
  constexpr int kIterations = 200'000;
  std::size_t sink = 0;
  const uint64_t before = g_allocations.load();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kIterations; ++i) {
    sink += gateway->decide_request(facts, none).rule.size();
    sink += gateway->decide_request(facts, wechat).rule.size();
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  const uint64_t allocations = g_allocations.load() - before;
  if (kCountsAllocations) {
    EXPECT_EQ(allocations, 0u);
  }
  EXPECT_GT(sink, 0u);
  std::string counted = kCountsAllocations ? std::to_string(allocations) + " allocations"
                                           : std::string("allocations not counted under ASan");
  std::printf("[ perf     ] decide_request (gateway profile): %.1f ns per call, %s in %d calls\n",
              std::chrono::duration<double, std::nano>(elapsed).count() / (2.0 * kIterations),
              counted.c_str(), 2 * kIterations);
}

// ---------------------------------------------------------------- connection stage

constexpr std::string_view kTestCatalog = R"(
[catalog]
description = "policy tests"

[[signature]]
id = "test-app"
category = "app-api"
stage = 54
source = "test"
suffixes = ["tiktokv.com"]

[[signature]]
id = "test-web"
category = "web"
stage = 55
source = "test"
suffixes = ["tiktok.com"]

[[signature]]
id = "test-wechat"
category = "wechat"
stage = 20
source = "test"
suffixes = ["weixin.qq.com"]
)";

std::shared_ptr<const Catalog> test_catalog() {
  std::vector<CatalogSource> sources{{"test-catalog.toml", std::string(kTestCatalog)}};
  auto catalog = Catalog::compile(sources);
  EXPECT_TRUE(catalog.has_value()) << (catalog ? "" : catalog.error());
  return catalog ? *catalog : nullptr;
}

ConnectionDecision connect(const Policy& policy, const Catalog& catalog, std::string_view host,
                           std::string_view client = "10.9.9.9") {
  RequestFacts facts;
  facts.host = host;
  facts.port = 443;
  facts.client = IpAddress::parse(client);
  return policy.decide_connection(catalog, facts);
}

TEST(PolicyConnection, DefaultsByMode) {
  auto catalog = test_catalog();
  ASSERT_TRUE(catalog);
  auto targets = parse_ok("");
  auto all = parse_ok("[intercept]\nmode = \"all\"\n");
  ASSERT_TRUE(targets && all);

  auto d = connect(*targets, *catalog, "api16-normal-c-useast1a.tiktokv.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(d.category, Category::app_api);
  EXPECT_EQ(d.rule, "");
  d = connect(*targets, *catalog, "example.org");
  EXPECT_EQ(d.verdict, ConnectionVerdict::splice);
  EXPECT_EQ(d.category, Category::none);
  d = connect(*targets, *catalog, "nottiktok.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::splice);

  EXPECT_EQ(connect(*all, *catalog, "example.org").verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(connect(*all, *catalog, "www.tiktok.com").verdict, ConnectionVerdict::intercept);
}

TEST(PolicyConnection, RulesAndExempt) {
  auto catalog = test_catalog();
  ASSERT_TRUE(catalog);
  auto policy = parse_ok(R"(
[intercept]
exempt = [".bank.example", "api.tiktokv.com"]

[client_groups]
comms = ["10.5.0.0/16"]

[[rules]]
name = "comms-may-use-tiktok"
action = "splice"
match = { client = ["@comms"], category = ["app-api", "web"] }

[[rules]]
name = "refuse-app"
action = "refuse"
message = "No app."
match = { category = ["app-api"] }

[[rules]]
name = "wechat-logins"
action = "block"
match = { host = ["open.weixin.qq.com"], path = ["/connect/*"] }

[[rules]]
name = "log-wechat"
action = "log"
match = { category = ["wechat"] }

[[rules]]
name = "web-allowed"
action = "allow"
match = { category = ["web"] }

[[rules]]
name = "partner"
action = "allow"
match = { host = ["partner.example"] }

[[rules]]
name = "webview"
action = "block"
match = { user_agent = ["musical_ly_"] }
)");
  ASSERT_TRUE(policy);

  // Exempt wins over every rule, even a refuse.
  auto d = connect(*policy, *catalog, "api.tiktokv.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::splice);
  EXPECT_EQ(d.rule, "");
  EXPECT_EQ(d.category, Category::app_api);
  EXPECT_EQ(connect(*policy, *catalog, "online.bank.example").verdict, ConnectionVerdict::splice);

  d = connect(*policy, *catalog, "api16-normal-c-useast1a.tiktokv.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::refuse);
  EXPECT_EQ(d.rule, "refuse-app");
  EXPECT_EQ(d.message, "No app.");
  EXPECT_EQ(d.category, Category::app_api);

  // The client condition is decided at the connection stage.
  d = connect(*policy, *catalog, "api16-normal-c-useast1a.tiktokv.com", "10.5.1.1");
  EXPECT_EQ(d.verdict, ConnectionVerdict::splice);
  EXPECT_EQ(d.rule, "comms-may-use-tiktok");

  // A rule that needs the request (path) but whose host matches forces interception, before
  // the later category rule could decide.
  d = connect(*policy, *catalog, "open.weixin.qq.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(d.rule, "wechat-logins");
  EXPECT_EQ(d.category, Category::wechat);
  d = connect(*policy, *catalog, "short.weixin.qq.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(d.rule, "log-wechat");

  // allow: the mode's default (targets: a target host is decrypted, others spliced).
  d = connect(*policy, *catalog, "www.tiktok.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(d.rule, "web-allowed");
  d = connect(*policy, *catalog, "partner.example");
  EXPECT_EQ(d.verdict, ConnectionVerdict::splice);
  EXPECT_EQ(d.rule, "partner");

  // A rule with request conditions only (no host, category or client) matches every name at
  // the connection stage: the first such rule forces interception of everything not decided
  // earlier. That is what a User-Agent rule costs; docs/policy.md says so.
  d = connect(*policy, *catalog, "example.org");
  EXPECT_EQ(d.verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(d.rule, "webview");
}

TEST(PolicyConnection, ActionsToVerdicts) {
  auto catalog = test_catalog();
  ASSERT_TRUE(catalog);
  struct Case {
    std::string_view action;
    std::string_view mode;
    std::string_view host;
    ConnectionVerdict verdict;
  };
  for (const auto& c : {
           Case{"refuse", "targets", "example.org", ConnectionVerdict::refuse},
           Case{"splice", "targets", "www.tiktok.com", ConnectionVerdict::splice},
           Case{"splice", "all", "example.org", ConnectionVerdict::splice},
           Case{"block", "targets", "example.org", ConnectionVerdict::intercept},
           Case{"log", "targets", "example.org", ConnectionVerdict::intercept},
           Case{"capture", "targets", "example.org", ConnectionVerdict::intercept},
           Case{"allow", "targets", "example.org", ConnectionVerdict::splice},
           Case{"allow", "targets", "www.tiktok.com", ConnectionVerdict::intercept},
           Case{"allow", "all", "example.org", ConnectionVerdict::intercept},
       }) {
    auto policy = parse_ok("[intercept]\nmode = \"" + std::string(c.mode) +
                           "\"\n[[rules]]\nname = \"r\"\naction = \"" + std::string(c.action) +
                           "\"\nmatch = { host = [\"" + std::string(c.host) + "\"] }\n");
    ASSERT_TRUE(policy);
    auto d = connect(*policy, *catalog, c.host);
    EXPECT_EQ(d.verdict, c.verdict) << c.action << " " << c.mode << " " << c.host;
    EXPECT_EQ(d.rule, "r");
  }
}

TEST(PolicyConnection, GatewayProfile) {
  auto catalog = test_catalog();
  ASSERT_TRUE(catalog);
  auto gateway = Policy::profile("gateway").value();
  auto d = connect(*gateway, *catalog, "api16-normal-c-useast1a.tiktokv.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::refuse);
  EXPECT_EQ(d.rule, "refuse-tiktok-app");
  d = connect(*gateway, *catalog, "www.tiktok.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(d.rule, "block-tiktok-pages");
  d = connect(*gateway, *catalog, "mp.weixin.qq.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(d.rule, "block-wechat-pages");
  d = connect(*gateway, *catalog, "long.weixin.qq.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::refuse);
  EXPECT_EQ(d.rule, "refuse-wechat");
  d = connect(*gateway, *catalog, "example.org");
  EXPECT_EQ(d.verdict, ConnectionVerdict::splice);
  EXPECT_EQ(d.rule, "");
}

TEST(PolicyConnection, ObserveProfileKeepsAppsWorking) {
  auto catalog = test_catalog();
  ASSERT_TRUE(catalog);
  auto observe = Policy::profile("observe").value();
  auto d = connect(*observe, *catalog, "api16-normal-c-useast1a.tiktokv.com");
  EXPECT_EQ(d.verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(d.rule, "log-tiktok-app");
  EXPECT_EQ(connect(*observe, *catalog, "example.org").verdict, ConnectionVerdict::splice);
}

TEST(PolicyConnection, WithEmbeddedCatalog) {
  auto catalog = Catalog::compile(Catalog::embedded_sources());
  ASSERT_TRUE(catalog.has_value()) << catalog.error();
  auto gateway = Policy::profile("gateway").value();
  EXPECT_EQ(connect(*gateway, **catalog, "api16-normal-c-useast1a.tiktokv.com").verdict,
            ConnectionVerdict::refuse);
  EXPECT_EQ(connect(*gateway, **catalog, "www.tiktok.com").verdict, ConnectionVerdict::intercept);
  EXPECT_EQ(connect(*gateway, **catalog, "nottiktok.com").verdict, ConnectionVerdict::splice);
  EXPECT_EQ(connect(*gateway, **catalog, "www.google.com").verdict, ConnectionVerdict::splice);
}

TEST(PolicyPrivacy, FullCaptureOnlyWhereTheRuleSaysSo) {
  auto policy = parse_ok(R"([[rules]]
name = "mine"
action = "capture"
privacy = "full"
match = { path = ["/mine/*"] }

[[rules]]
name = "others"
action = "capture"
privacy = "redacted"
)");
  ASSERT_TRUE(policy);
  Request mine;
  mine.path = "/mine/x";
  Request other;
  other.path = "/other";
  EXPECT_TRUE(decide(*policy, mine).full_capture);
  EXPECT_EQ(decide(*policy, mine).rule, "mine");
  EXPECT_FALSE(decide(*policy, other).full_capture);
  EXPECT_EQ(decide(*policy, other).rule, "others");
}

TEST(PolicyPrivacy, ErrorsNameTheRule) {
  EXPECT_EQ(parse_error("[[rules]]\nname = \"r\"\naction = \"capture\"\nprivacy = \"all\"\n"),
            "test.toml:4:11: rules[0] (r).privacy: unknown privacy 'all' (redacted or full)");
  EXPECT_EQ(parse_error("[[rules]]\nname = \"r\"\naction = \"block\"\nprivacy = \"full\"\n"),
            "test.toml:4:11: rules[0] (r).privacy: privacy applies to log and capture rules only");
}

}  // namespace
}  // namespace tokgate::policy
