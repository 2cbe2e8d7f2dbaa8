#include "proxy/policy_state.hpp"

#include <algorithm>
#include <system_error>

namespace tokgate::proxy {

std::expected<std::shared_ptr<const PolicySnapshot>, std::string> load_policy_snapshot(
    const Config& config, uint64_t generation) {
  std::vector<policy::CatalogSource> sources;
  if (config.catalog_dir.empty()) {
    sources = policy::Catalog::embedded_sources();
  } else {
    auto with_overrides = policy::Catalog::sources_with_overrides(config.catalog_dir);
    if (!with_overrides) return std::unexpected(with_overrides.error());
    sources = std::move(*with_overrides);
  }
  auto catalog = policy::Catalog::compile(sources);
  if (!catalog) return std::unexpected(catalog.error());
  auto loaded = config.policy_file.empty() ? policy::Policy::profile(config.policy_profile)
                                           : policy::Policy::load_file(config.policy_file);
  if (!loaded) return std::unexpected(loaded.error());
  auto snapshot = std::make_shared<PolicySnapshot>();
  snapshot->catalog = std::move(*catalog);
  snapshot->policy = std::move(*loaded);
  snapshot->loaded_at = std::chrono::system_clock::now();
  snapshot->generation = generation;
  return snapshot;
}

PolicyState::PolicyState(std::shared_ptr<const PolicySnapshot> initial)
    : current_(std::move(initial)) {}

bool PolicyState::reload(const Config& config) {
  // What is on disk now is what this reload saw: the watcher must not reload it again.
  files_changed(config);
  auto loaded = load_policy_snapshot(config, generation_ + 1);
  std::lock_guard lock(error_mutex_);
  if (!loaded) {
    last_error_ = loaded.error();
    return false;
  }
  ++generation_;  // generations count the snapshots that took effect
  last_error_.clear();
  current_.store(std::move(*loaded));
  return true;
}

std::string PolicyState::last_error() const {
  std::lock_guard lock(error_mutex_);
  return last_error_;
}

bool PolicyState::files_changed(const Config& config) {
  // A fingerprint of what the watched files look like: name, size and modification time.
  std::string state;
  auto add = [&state](const std::filesystem::path& path) {
    std::error_code ec;
    auto size = std::filesystem::file_size(path, ec);
    auto time = std::filesystem::last_write_time(path, ec);
    state += path.string() + ":" + std::to_string(ec ? 0 : size) + ":" +
             std::to_string(ec ? 0 : time.time_since_epoch().count()) + ";";
  };
  if (!config.policy_file.empty()) add(config.policy_file);
  if (!config.catalog_dir.empty()) {
    std::error_code ec;
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(config.catalog_dir, ec)) {
      if (entry.path().extension() == ".toml" && files.size() < 1000) files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) add(file);
  }
  bool changed = !watched_state_.empty() && state != watched_state_;
  watched_state_ = std::move(state);
  return changed;
}

}  // namespace tokgate::proxy
