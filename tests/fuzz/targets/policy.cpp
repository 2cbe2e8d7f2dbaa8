// The policy loader, policy::Policy::parse(text, name) (policy/policy.hpp): what a policy file
// (config [policy] file, `tokgate policy check FILE`, SIGHUP reload) goes through. A policy that
// loads is then asked for decisions at both stages against the embedded catalog, the way the
// proxy asks: a policy that parses must never fail when used.
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "fuzz_check.hpp"
#include "policy/catalog.hpp"
#include "policy/host_pattern.hpp"
#include "policy/policy.hpp"
#include "report_check.hpp"

namespace {

using namespace tokgate::policy;

constexpr std::string_view kName = "fuzz.toml";

std::shared_ptr<const Catalog> g_catalog;

struct Sample {
  std::string_view host;
  std::string_view path;
  std::string_view query;
  std::string_view user_agent;
  const char* client;
};

// Requests of every shape the catalog knows, and one it does not.
constexpr std::array<Sample, 6> kSamples{{
    {"api16-normal-c-useast1a.tiktokv.com", "/aweme/v1/feed/", "aid=1233&version_code=300904",
     "com.zhiliaoapp.musically/2023009040 (Linux; U; Android 13; en_US)", "10.1.2.3"},
    {"www.tiktok.com", "/@someone/video/7200000000000000000", "", "Mozilla/5.0", "192.168.7.9"},
    {"analytics.tiktok.com", "/i18n/pixel/events.js", "sdkid=ABC", "Mozilla/5.0", "2001:db8::7"},
    {"mp.weixin.qq.com", "/s/abcdef", "", "Mozilla/5.0 MicroMessenger/8.0.40", "127.0.0.1"},
    {"www.example.com", "/", "q=1", "curl/7.88.1", "::ffff:10.0.0.1"},
    {"xn--bcher-kva.example", "/index.html", "", "", "172.16.0.1"},
}};

void exercise(const Policy& policy) {
  (void)policy.name();
  (void)policy.organisation();
  (void)policy.source();
  (void)policy.on_pinned();
  (void)policy.pinned_memory();
  (void)policy.pinned_table_size();
  (void)policy.rule_count();
  const std::array<HeaderView, 2> headers{{{"Accept", "text/html"}, {"X-Tt-Logid", "2023"}}};
  for (const Sample& sample : kSamples) {
    RequestFacts facts;
    facts.host = sample.host;
    facts.port = 443;
    facts.client = IpAddress::parse(sample.client);
    auto connection = policy.decide_connection(*g_catalog, facts);
    (void)to_string(connection.verdict);
    facts.method = "GET";
    facts.path = sample.path;
    facts.query = sample.query;
    facts.user_agent = sample.user_agent;
    facts.headers = headers;
    Classification classification = g_catalog->classify(facts);
    auto request = policy.decide_request(facts, classification);
    (void)to_string(request.action);
    // Every category, even one the catalog did not give this request.
    for (std::size_t c = 0; c < kCategoryCount; ++c) {
      Classification forced;
      forced.category = static_cast<Category>(c);
      (void)policy.decide_request(facts, forced);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The shipped catalog and profiles must load: proves the build (clang + libstdc++'s
  // std::expected) works.
  auto catalog = Catalog::compile(Catalog::embedded_sources());
  if (!catalog) {
    std::fprintf(stderr, "embedded catalog does not compile: %s\n", catalog.error().c_str());
    std::abort();
  }
  g_catalog = *catalog;
  for (auto name : Policy::profile_names()) {
    auto profile = Policy::profile(name);
    if (!profile) {
      std::fprintf(stderr, "profile %.*s does not load: %s\n", static_cast<int>(name.size()),
                   name.data(), profile.error().c_str());
      std::abort();
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto policy = Policy::parse(text, kName);
  if (!policy) {
    check_error_report(policy.error(), kName);
    return 0;
  }
  FUZZ_CHECK(*policy != nullptr);
  exercise(**policy);
  return 0;
}
