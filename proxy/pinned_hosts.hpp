// Hosts whose clients rejected our certificate (certificate pinning), remembered for a while so
// the policy's on_pinned choice (refuse fast, or splice untouched) applies to the next
// connections instead of letting the app retry into the same failure. Bounded in size: the
// oldest entry goes first. Shared by the workers; touched once per intercepted connection.
#pragma once

#include <chrono>
#include <cstddef>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace tokgate::proxy {

class PinnedHosts {
 public:
  using clock = std::chrono::steady_clock;

  explicit PinnedHosts(std::size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

  void remember(std::string_view host, std::chrono::seconds memory);
  bool contains(std::string_view host);
  std::size_t size() const;

 private:
  struct Entry {
    std::string host;
    clock::time_point expires;
  };
  std::size_t capacity_;
  mutable std::mutex mutex_;
  std::list<Entry> order_;  // oldest first
  std::unordered_map<std::string_view, std::list<Entry>::iterator> index_;
};

}  // namespace tokgate::proxy
