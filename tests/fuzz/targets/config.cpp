// The proxy config loader, proxy::parse_config(text, name) (proxy/config.hpp): what
// `tokgate run --config FILE` and `tokgate config check` do with the file's text. The same input
// also goes to parse_resolve_override(), the "HOST:PORT:ADDR[,ADDR]" syntax of upstream.resolve
// and --resolve.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "policy/host_pattern.hpp"
#include "proxy/config.hpp"
#include "report_check.hpp"

namespace {

constexpr std::string_view kName = "fuzz.toml";

void check_resolve(std::string_view text) {
  auto entry = tokgate::proxy::parse_resolve_override(text);
  if (!entry) {
    FUZZ_CHECK(!entry.error().empty());
    return;
  }
  FUZZ_CHECK(!entry->addresses.empty());
  const uint16_t port = entry->port.value_or(443);
  const std::string& pattern = entry->host_pattern;
  // The override applies to the names its pattern says, and only on its port.
  if (pattern.starts_with("*.")) {
    const std::string name = pattern.substr(2);
    FUZZ_CHECK(entry->matches("a." + name, port) && !entry->matches(name, port));
    FUZZ_CHECK(!entry->matches("a" + name, port));
  } else if (pattern != "*") {
    FUZZ_CHECK(entry->matches(pattern, port) && !entry->matches("a." + pattern, port));
  }
  if (entry->port) FUZZ_CHECK(!entry->matches("a.example", static_cast<uint16_t>(port + 1)));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The shipped default must load: proves the build (clang + libstdc++'s std::expected) works.
  auto config = tokgate::proxy::parse_config(tokgate::proxy::embedded_default_config(), kName);
  if (!config) {
    std::fprintf(stderr, "embedded default config does not load: %s\n", config.error().c_str());
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = tokgate::proxy::parse_config(text, kName);
  if (config) {
    const auto& c = *config;
    FUZZ_CHECK(!c.listen.empty() || !c.transparent_listen.empty() ||
               !c.proxy_protocol_listen.empty());
    for (const auto& range : c.connect_ports) FUZZ_CHECK(range.first <= range.last);
    for (const auto& pattern : c.intercept_hosts) FUZZ_CHECK(!pattern.empty());
    for (const auto& pattern : c.refuse_hosts) FUZZ_CHECK(!pattern.empty());
    FUZZ_CHECK(c.limits.request_header_bytes > 0 && c.limits.client_hello_bytes > 0);
  } else {
    check_error_report(config.error(), kName);
  }
  check_resolve(text);
  return 0;
}
