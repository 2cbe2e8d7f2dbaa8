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

std::size_t ClientConnectionTable::AddressHash::operator()(const IpAddress& address) const {
  // FNV-1a over the meaningful bytes: client addresses are not chosen to collide here, and a
  // collision only costs a longer bucket.
  uint64_t hash = 1469598103934665603ull;
  const std::size_t length = address.is_v4() ? 4 : 16;
  for (std::size_t i = 0; i < length; ++i) {
    hash = (hash ^ address.bytes()[i]) * 1099511628211ull;
  }
  return static_cast<std::size_t>(hash);
}

ClientConnectionTable::Shard& ClientConnectionTable::shard_of(const IpAddress& address) {
  return shards_[AddressHash{}(address) % shards_.size()];
}

ClientConnectionTable::Slot ClientConnectionTable::try_acquire(const IpAddress& address) {
  Shard& shard = shard_of(address);
  std::lock_guard lock(shard.mutex);
  std::size_t& open = shard.open[address];
  if (open >= limit_) {
    if (open == 0) shard.open.erase(address);
    return {};
  }
  ++open;
  return Slot(this, address);
}

std::size_t ClientConnectionTable::open_from(const IpAddress& address) {
  Shard& shard = shard_of(address);
  std::lock_guard lock(shard.mutex);
  auto found = shard.open.find(address);
  return found == shard.open.end() ? 0 : found->second;
}

void ClientConnectionTable::release(const IpAddress& address) {
  Shard& shard = shard_of(address);
  std::lock_guard lock(shard.mutex);
  auto found = shard.open.find(address);
  if (found == shard.open.end()) return;
  if (--found->second == 0) shard.open.erase(found);  // the map holds active clients only
}

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
