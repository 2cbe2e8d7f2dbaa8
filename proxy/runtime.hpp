// What every worker shares for the life of the process: the configuration, the CA and leaf
// cache, the policy snapshot (swapped on reload) and the table of pinned hosts.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

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

// Open client connections per client address, over the whole process (all workers: the kernel
// spreads one client's connections over them, so a per-worker count would allow workers x the
// limit). Touched once when a connection is accepted and once when it closes, never per byte:
// a few shards each with a mutex and a map are cheap enough there.
class ClientConnectionTable {
 public:
  explicit ClientConnectionTable(std::size_t limit) : limit_(limit) {}

  // A counted connection; releases its count when destroyed.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept
        : table_(std::exchange(other.table_, nullptr)), address_(other.address_) {}
    Slot& operator=(Slot&& other) noexcept {
      if (this != &other) {
        release();
        table_ = std::exchange(other.table_, nullptr);
        address_ = other.address_;
      }
      return *this;
    }
    ~Slot() { release(); }
    explicit operator bool() const { return table_ != nullptr; }

   private:
    friend class ClientConnectionTable;
    Slot(ClientConnectionTable* table, const IpAddress& address)
        : table_(table), address_(address) {}
    void release() {
      if (table_ != nullptr) std::exchange(table_, nullptr)->release(address_);
    }
    ClientConnectionTable* table_ = nullptr;
    IpAddress address_;
  };

  // A slot for one more connection from `address`, or an empty one when it already has the
  // limit's worth open.
  Slot try_acquire(const IpAddress& address);
  std::size_t open_from(const IpAddress& address);
  std::size_t limit() const { return limit_; }

 private:
  struct AddressHash {
    std::size_t operator()(const IpAddress& address) const;
  };
  struct Shard {
    std::mutex mutex;
    std::unordered_map<IpAddress, std::size_t, AddressHash> open;
  };
  Shard& shard_of(const IpAddress& address);
  void release(const IpAddress& address);

  std::size_t limit_;
  std::array<Shard, 16> shards_;
};

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
  ClientConnectionTable client_connections{config.limits.max_connections_per_client};
  std::atomic<uint64_t> next_connection_id{1};
};

}  // namespace tokgate::proxy
