// Minted leaves, kept by name so minting happens once per name rather than once per connection.
// Bounded: at most `capacity` leaves, the least recently used evicted first.
#pragma once

#include "certs/leaf_minter.hpp"
#include "certs/openssl_ptr.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace tokgate::certs {

// One minted leaf, immutable and shared by every connection that shows it. Its key is the
// minter's leaf_key().
class LeafCertificate {
 public:
  explicit LeafCertificate(X509Ptr certificate);

  // Non-const because OpenSSL's setters (SSL_use_certificate) take X509*; they only up-ref it.
  X509* certificate() const { return certificate_.get(); }
  std::chrono::system_clock::time_point not_after() const { return not_after_; }

 private:
  X509Ptr certificate_;
  std::chrono::system_clock::time_point not_after_;
};

class LeafCache {
 public:
  // A leaf is minted afresh once it has less than this left to live.
  static constexpr std::chrono::hours renew_before{24};

  // `minter` must outlive the cache. A capacity of 0 is taken as 1.
  LeafCache(const LeafMinter& minter, std::size_t capacity);
  LeafCache(const LeafCache&) = delete;
  LeafCache& operator=(const LeafCache&) = delete;

  // The cached leaf for the request's names, minting it on a miss. Keyed by the lower-cased
  // common name plus a SHA-256 of the sorted, lower-cased alt names, so a server whose
  // certificate changes its names gets a new leaf. Thread-safe.
  // `minted`, if given, says whether this call minted (for the caller's per-thread metrics).
  std::expected<std::shared_ptr<const LeafCertificate>, std::string> get(const LeafRequest& request,
                                                                         bool* minted = nullptr);

  std::uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }
  // Mint attempts; failed ones count too.
  std::uint64_t misses() const { return misses_.load(std::memory_order_relaxed); }
  std::uint64_t evictions() const { return evictions_.load(std::memory_order_relaxed); }
  std::size_t size() const { return size_.load(std::memory_order_relaxed); }
  std::size_t capacity() const { return capacity_; }

 private:
  struct Entry {
    std::string key;
    std::shared_ptr<const LeafCertificate> leaf;
    std::chrono::system_clock::time_point renew_at;
  };

  std::string cache_key(const LeafRequest& request) const;

  const LeafMinter& minter_;
  const std::size_t capacity_;
  EvpMdPtr sha256_;  // fetched once; an implicit fetch per get() would take a global lock

  // One mutex over the whole cache, held while minting. A miss mints under it, so concurrent
  // misses for one name mint once and never see a half-made entry. The cost is that a mint
  // (0.1-0.2 ms) briefly delays other names; it happens once per name per renewal period.
  std::mutex mutex_;
  std::list<Entry> recency_;  // most recently used first
  // Views into Entry::key: list nodes never move, and an index entry is erased with its node.
  std::unordered_map<std::string_view, std::list<Entry>::iterator> index_;

  std::atomic<std::uint64_t> hits_{0};
  std::atomic<std::uint64_t> misses_{0};
  std::atomic<std::uint64_t> evictions_{0};
  std::atomic<std::size_t> size_{0};
};

}  // namespace tokgate::certs
