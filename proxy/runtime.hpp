// What every worker shares for the life of the process: the configuration, the CA, the leaf
// cache and the connection-level host lists. Immutable after start-up except for counters and
// the leaf cache, which is thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "certs/certificate_authority.hpp"
#include "certs/leaf_cache.hpp"
#include "certs/leaf_minter.hpp"
#include "policy/host_pattern.hpp"
#include "proxy/config.hpp"

namespace tokgate::proxy {

// The connection-level decision: splice (relay bytes untouched), refuse (close with a TLS alert
// or a 403), or intercept (decrypt with a minted certificate).
enum class ConnectionVerdict { splice, refuse, intercept };
std::string_view to_string(ConnectionVerdict verdict);

struct Runtime {
  Runtime(Config config_in, certs::CertificateAuthority ca_in);

  // Host lists from [intercept]; the policy engine replaces this decision in its own issue.
  ConnectionVerdict decide_connection(std::string_view normalized_host) const;

  const Config config;
  const certs::CertificateAuthority ca;
  const certs::LeafMinter minter;
  certs::LeafCache leaf_cache;
  policy::HostPatternSet intercept_hosts;
  policy::HostPatternSet refuse_hosts;

  std::atomic<std::size_t> open_connections{0};
  std::atomic<uint64_t> next_connection_id{1};
};

}  // namespace tokgate::proxy
