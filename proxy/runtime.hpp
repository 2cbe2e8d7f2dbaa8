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
#include "proxy/flow_sink.hpp"
#include "proxy/geoip.hpp"
#include "proxy/keylog.hpp"
#include "proxy/metrics.hpp"
#include "proxy/pinned_hosts.hpp"
#include "proxy/policy_state.hpp"
#include "proxy/privacy.hpp"
#include "web-ui/flow_feed.hpp"

namespace tokgate::proxy {

using policy::ConnectionVerdict;

struct Runtime {
  Runtime(Config config_in, certs::CertificateAuthority ca_in,
          std::shared_ptr<const PolicySnapshot> policy_in);
  // The sink's thread is stopped first: it still uses the feed and the metrics.
  ~Runtime() {
    if (flows) flows->stop();
  }
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

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

  // Evidence: set up by the CLI after construction, before the workers start.
  // Shard 0 for the main thread, shard i + 1 for worker i.
  std::unique_ptr<Metrics> metrics;
  // The web UI's window on the records (fed by the sink's thread).
  std::unique_ptr<webui::FlowFeed> feed;
  // Declared after what its thread uses (metrics, feed), so it is stopped before they go.
  std::unique_ptr<FlowSink> flows;  // null: no flow log
  std::optional<ClientPseudonymiser> pseudonymiser;
  std::unique_ptr<KeyLog> keylog;  // null unless [capture] keylog is set
  GeoIp geoip;  // empty: no lookups (read-only after start: shared by the workers)
  // Hands a finished record to the sinks; never blocks (a full sink drops and counts).
  void submit_flow(unsigned worker, FlowRecord record);

  // The addresses actually bound (a configured port 0 becomes a real one), set before the
  // workers start: no request may reach them through the data path.
  std::vector<Endpoint> bound_listeners;
  std::optional<Endpoint> bound_admin;

  std::atomic<std::size_t> open_connections{0};
  std::atomic<uint64_t> next_connection_id{1};
};

}  // namespace tokgate::proxy
