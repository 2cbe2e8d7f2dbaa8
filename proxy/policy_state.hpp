// The policy in force: catalog + policy, loaded together into one immutable snapshot and swapped
// atomically on reload (SIGHUP, or a watched file changing). A connection or request takes one
// snapshot and keeps it while it decides; an invalid reload keeps the old snapshot.
#pragma once

#include <atomic>
#include <chrono>
#include <expected>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "policy/catalog.hpp"
#include "policy/policy.hpp"
#include "proxy/config.hpp"

namespace tokgate::proxy {

struct PolicySnapshot {
  std::shared_ptr<const policy::Catalog> catalog;
  std::shared_ptr<const policy::Policy> policy;
  std::chrono::system_clock::time_point loaded_at;
  uint64_t generation = 0;
};

// Loads the catalog (embedded, or with the overrides of catalog_dir) and the policy (the file,
// else the profile). Errors keep their "file:line:col: what" form.
std::expected<std::shared_ptr<const PolicySnapshot>, std::string> load_policy_snapshot(
    const Config& config, uint64_t generation);

class PolicyState {
 public:
  explicit PolicyState(std::shared_ptr<const PolicySnapshot> initial);

  std::shared_ptr<const PolicySnapshot> current() const { return current_.load(); }

  // Loads anew; on success swaps and returns true; on failure keeps the old snapshot, records
  // the error (see last_error) and returns false. Called from the main thread only.
  bool reload(const Config& config);
  std::string last_error() const;

  // The files a watcher should poll, and their state now ("" if none changed since last call).
  bool files_changed(const Config& config);

 private:
  std::atomic<std::shared_ptr<const PolicySnapshot>> current_;
  mutable std::mutex error_mutex_;
  std::string last_error_;
  uint64_t generation_ = 1;
  std::string watched_state_;
};

}  // namespace tokgate::proxy
