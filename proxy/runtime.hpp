// What every worker shares for the life of the process: the configuration, the CA and leaf
// cache, the policy snapshot (swapped on reload) and the table of pinned hosts.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "certs/certificate_authority.hpp"
#include "certs/leaf_cache.hpp"
#include "certs/leaf_minter.hpp"
#include "policy/host_pattern.hpp"
#include "policy/types.hpp"
#include "proxy/config.hpp"
#include "proxy/pinned_hosts.hpp"
#include "proxy/policy_state.hpp"

namespace tokgate::proxy {

using policy::ConnectionVerdict;

struct Runtime {
  Runtime(Config config_in, certs::CertificateAuthority ca_in,
          std::shared_ptr<const PolicySnapshot> policy_in);

  // The connection stage for one name: the operator's [intercept] overrides, the pinned
  // table, then the policy.
  policy::ConnectionDecision decide_connection(const PolicySnapshot& snapshot,
                                               const policy::RequestFacts& facts);

  const Config config;
  const certs::CertificateAuthority ca;
  const certs::LeafMinter minter;
  certs::LeafCache leaf_cache;
  policy::HostPatternSet intercept_hosts;
  policy::HostPatternSet refuse_hosts;
  PolicyState policy;
  PinnedHosts pinned;

  std::atomic<std::size_t> open_connections{0};
  std::atomic<uint64_t> next_connection_id{1};
};

}  // namespace tokgate::proxy
