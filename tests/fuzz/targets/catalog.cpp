// The catalog loader, policy::Catalog::compile() (policy/catalog.hpp), on one catalog file as
// an override directory would supply it (catalog_dir). A catalog that compiles is then used the
// way the proxy and `tokgate catalog export` use it: classify requests and hosts, list host
// entries, and export them as hosts, dnsmasq, RPZ and PAC.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "policy/catalog.hpp"
#include "policy/catalog_export.hpp"
#include "policy/host_pattern.hpp"
#include "report_check.hpp"

namespace {

using namespace tokgate::policy;

constexpr std::string_view kName = "fuzz.toml";

struct Sample {
  std::string_view host;
  std::string_view method;
  std::string_view path;
  std::string_view query;
  std::string_view user_agent;
};

constexpr std::array<Sample, 6> kSamples{{
    {"api16-normal-c-useast1a.tiktokv.com", "GET", "/aweme/v1/feed/",
     "aid=1233&app_name=musical_ly",
     "com.zhiliaoapp.musically/2023009040 (Linux; U; Android 13; en_US) Cronet/TTNetVersion:5"},
    {"p16-sign-va.tiktokcdn.com", "GET", "/obj/tos-maliva-p-0068/abc", "x-expires=1700000000",
     "okhttp/3.12.13.20"},
    {"play.google.com", "GET", "/store/apps/details", "id=com.zhiliaoapp.musically", "Mozilla/5.0"},
    {"mp.weixin.qq.com", "POST", "/mp/getappmsgext", "__biz=MzA", "Mozilla/5.0 MicroMessenger/8.0"},
    {"www.example.com", "GET", "/", "", "Mozilla/5.0 (Linux; Android 12) musical_ly_2022803040"},
    {"a.b.c.d.e.f.g.example", "PUT", "//x/../y", "a&b=&=c", ""},
}};

void exercise(const Catalog& catalog) {
  FUZZ_CHECK(!catalog.version().empty());
  (void)catalog.entry_count();
  const std::array<HeaderView, 3> headers{
      {{"X-Tt-Token", "abc"}, {"sdk-version", "2"}, {"Accept", "*/*"}}};
  for (const Sample& sample : kSamples) {
    RequestFacts facts;
    facts.host = sample.host;
    facts.port = 443;
    facts.method = sample.method;
    facts.path = sample.path;
    facts.query = sample.query;
    facts.user_agent = sample.user_agent;
    facts.headers = headers;
    Classification full = catalog.classify(facts);
    Classification host_only = catalog.classify_host(sample.host);
    if (full.category != Category::none) FUZZ_CHECK(!full.decided_by.empty());
    (void)host_only;
  }
  auto entries = catalog.host_entries();
  for (const auto& entry : entries) {
    // Exported names must be names: they are written into DNS zone files and PAC scripts.
    FUZZ_CHECK(!entry.name.empty());
    auto normal = normalize_host(entry.name);
    FUZZ_CHECK(normal && *normal == entry.name);
  }
  for (auto format :
       {ExportFormat::hosts, ExportFormat::dnsmasq, ExportFormat::rpz, ExportFormat::pac}) {
    ExportOptions options;
    options.catalog_version = catalog.version();
    std::string out = export_catalog(catalog, format, options);
    FUZZ_CHECK(!out.empty());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The shipped catalog must compile: proves the build works.
  auto catalog = Catalog::compile(Catalog::embedded_sources());
  if (!catalog) {
    std::fprintf(stderr, "embedded catalog does not compile: %s\n", catalog.error().c_str());
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::vector<CatalogSource> sources{
      CatalogSource{std::string(kName), std::string(reinterpret_cast<const char*>(data), size)}};
  auto catalog = Catalog::compile(sources);
  if (!catalog) {
    check_error_report(catalog.error(), kName);
    return 0;
  }
  exercise(**catalog);
  return 0;
}
