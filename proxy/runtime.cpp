#include "proxy/runtime.hpp"

namespace tokgate::proxy {

std::string_view to_string(ConnectionVerdict verdict) {
  switch (verdict) {
    case ConnectionVerdict::splice:
      return "splice";
    case ConnectionVerdict::refuse:
      return "refuse";
    case ConnectionVerdict::intercept:
      return "intercept";
  }
  return "splice";
}

namespace {
policy::HostPatternSet compile(const std::vector<std::string>& globs) {
  policy::HostPatternSet set;
  // The config loader has validated every glob; an invalid one here would be a bug upstream.
  for (const auto& glob : globs) {
    if (auto pattern = policy::HostPattern::parse(glob)) set.add(std::move(*pattern));
  }
  return set;
}
}  // namespace

Runtime::Runtime(Config config_in, certs::CertificateAuthority ca_in)
    : config(std::move(config_in)),
      ca(std::move(ca_in)),
      minter(ca),
      leaf_cache(minter, config.limits.leaf_cache_entries),
      intercept_hosts(compile(config.intercept_hosts)),
      refuse_hosts(compile(config.refuse_hosts)) {}

ConnectionVerdict Runtime::decide_connection(std::string_view normalized_host) const {
  if (refuse_hosts.matches(normalized_host)) return ConnectionVerdict::refuse;
  if (intercept_hosts.matches(normalized_host)) return ConnectionVerdict::intercept;
  return ConnectionVerdict::splice;
}

}  // namespace tokgate::proxy
