#include "proxy/pinned_hosts.hpp"

namespace tokgate::proxy {

void PinnedHosts::remember(std::string_view host, std::chrono::seconds memory) {
  std::lock_guard lock(mutex_);
  if (auto it = index_.find(host); it != index_.end()) {
    auto entry = it->second;
    index_.erase(it);  // the key views the entry's string: erase it before the entry
    order_.erase(entry);
  }
  while (order_.size() >= capacity_) {
    index_.erase(std::string_view(order_.front().host));
    order_.pop_front();
  }
  order_.push_back(Entry{std::string(host), clock::now() + memory});
  index_.emplace(order_.back().host, std::prev(order_.end()));
}

bool PinnedHosts::contains(std::string_view host) {
  std::lock_guard lock(mutex_);
  auto it = index_.find(host);
  if (it == index_.end()) return false;
  if (clock::now() < it->second->expires) return true;
  auto entry = it->second;
  index_.erase(it);
  order_.erase(entry);
  return false;
}

std::size_t PinnedHosts::size() const {
  std::lock_guard lock(mutex_);
  return order_.size();
}

}  // namespace tokgate::proxy
