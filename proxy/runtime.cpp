#include "proxy/runtime.hpp"

namespace tokgate::proxy {

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

Runtime::Runtime(Config config_in, certs::CertificateAuthority ca_in,
                 std::shared_ptr<const PolicySnapshot> policy_in)
    : config(std::move(config_in)),
      ca(std::move(ca_in)),
      minter(ca),
      leaf_cache(minter, config.limits.leaf_cache_entries),
      intercept_hosts(compile(config.intercept_hosts)),
      refuse_hosts(compile(config.refuse_hosts)),
      policy(policy_in),
      pinned(policy_in->policy->pinned_table_size()) {}

void Runtime::submit_flow(unsigned worker, FlowRecord record) {
  if (flows) flows->submit(worker, std::move(record));
}

policy::ConnectionDecision Runtime::decide_connection(const PolicySnapshot& snapshot,
                                                      const policy::RequestFacts& facts) {
  auto decision = snapshot.policy->decide_connection(*snapshot.catalog, facts);
  if (refuse_hosts.matches(facts.host)) {
    decision.verdict = ConnectionVerdict::refuse;
    decision.rule = "config:intercept.refuse";
    decision.message = {};
  } else if (intercept_hosts.matches(facts.host)) {
    decision.verdict = ConnectionVerdict::intercept;
    decision.rule = "config:intercept.hosts";
    decision.message = {};
  }
  if (decision.verdict == ConnectionVerdict::intercept && pinned.contains(facts.host)) {
    // Its clients rejected our certificate a moment ago: decrypting again only fails again.
    // Refusing is for hosts the policy targets; a third-party host decrypted only to look at
    // requests (mode "all") is spliced instead, so one pinning app cannot cut everyone off it.
    const bool refuse = snapshot.policy->on_pinned() == policy::PinnedAction::refuse &&
                        policy::is_target(decision.category);
    decision.verdict = refuse ? ConnectionVerdict::refuse : ConnectionVerdict::splice;
    decision.rule = "pinned";
  }
  return decision;
}

}  // namespace tokgate::proxy
