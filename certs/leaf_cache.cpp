#include "certs/leaf_cache.hpp"

#include <algorithm>
#include <array>
#include <stdexcept>
#include <utility>
#include <vector>

namespace tokgate::certs {
namespace {

using Clock = std::chrono::system_clock;

// The readable part of a key: enough for any DNS name; the digest covers the whole request.
constexpr std::size_t max_key_name_bytes = 253;

std::string ascii_lower(std::string_view text) {
  std::string lower(text);
  for (char& c : lower) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return lower;
}

std::vector<std::string> sorted_lower(const std::vector<std::string>& names) {
  std::vector<std::string> sorted;
  sorted.reserve(names.size());
  for (const std::string& name : names) sorted.push_back(ascii_lower(name));
  std::ranges::sort(sorted);
  const auto duplicates = std::ranges::unique(sorted);
  sorted.erase(duplicates.begin(), duplicates.end());
  return sorted;
}

}  // namespace

LeafCertificate::LeafCertificate(X509Ptr certificate)
    : certificate_(std::move(certificate)),
      not_after_(to_time_point(X509_get0_notAfter(certificate_.get())).value_or(Clock::now())) {}

LeafCache::LeafCache(const LeafMinter& minter, std::size_t capacity)
    : minter_(minter),
      capacity_(std::max<std::size_t>(capacity, 1)),
      sha256_(EVP_MD_fetch(nullptr, "SHA2-256", nullptr)) {
  if (!sha256_) throw std::runtime_error("SHA-256 is unavailable: " + openssl_errors());
}

std::string LeafCache::cache_key(const LeafRequest& request) const {
  const std::string common_name = ascii_lower(request.common_name);
  EvpMdCtxPtr digest(EVP_MD_CTX_new());
  std::array<unsigned char, EVP_MAX_MD_SIZE> hash{};
  unsigned int hash_size = 0;
  // Every name and list is preceded by its length, so no two requests feed the same bytes.
  auto feed_size = [&digest](std::uint64_t size) {
    std::array<unsigned char, 8> bytes{};
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      bytes[i] = static_cast<unsigned char>(size >> (8 * i));
    }
    return EVP_DigestUpdate(digest.get(), bytes.data(), bytes.size()) == 1;
  };
  auto feed = [&](std::string_view text) {
    return feed_size(text.size()) && EVP_DigestUpdate(digest.get(), text.data(), text.size()) == 1;
  };
  bool ok =
      digest && EVP_DigestInit_ex(digest.get(), sha256_.get(), nullptr) == 1 && feed(common_name);
  for (const auto* list : {&request.dns_names, &request.ip_addresses}) {
    const std::vector<std::string> names = sorted_lower(*list);
    ok = ok && feed_size(names.size());
    for (const std::string& name : names) ok = ok && feed(name);
  }
  ok = ok && EVP_DigestFinal_ex(digest.get(), hash.data(), &hash_size) == 1;
  if (!ok) return {};  // an empty key is never stored: see get()

  std::string key(utf8_prefix(common_name, max_key_name_bytes));
  key += '\0';
  key.append(reinterpret_cast<const char*>(hash.data()), hash_size);
  return key;
}

std::expected<std::shared_ptr<const LeafCertificate>, std::string> LeafCache::get(
    const LeafRequest& request, bool* minted_out) {
  if (minted_out != nullptr) *minted_out = false;
  const std::string key = cache_key(request);
  if (key.empty()) return std::unexpected("cannot hash the leaf request: " + openssl_errors());

  std::lock_guard lock(mutex_);
  const Clock::time_point now = Clock::now();
  if (auto found = index_.find(key); found != index_.end()) {
    const auto entry = found->second;
    if (now < entry->renew_at) {
      recency_.splice(recency_.begin(), recency_, entry);
      hits_.fetch_add(1, std::memory_order_relaxed);
      return entry->leaf;
    }
    index_.erase(found);  // before its node: the index key views the node's string
    recency_.erase(entry);
  }

  misses_.fetch_add(1, std::memory_order_relaxed);
  if (minted_out != nullptr) *minted_out = true;
  auto minted = minter_.mint(request);
  if (!minted) {
    size_.store(recency_.size(), std::memory_order_relaxed);
    return std::unexpected(minted.error());
  }
  auto leaf = std::make_shared<const LeafCertificate>(std::move(*minted));
  // Renewing early only helps if a new leaf would live longer. A leaf with under two days to
  // live was capped by a CA about to expire: re-minting it on every get would gain nothing, so
  // it is renewed when it expires (and that mint fails, saying the CA has expired).
  const Clock::time_point renew_at = (leaf->not_after() - now > 2 * renew_before)
                                         ? leaf->not_after() - renew_before
                                         : leaf->not_after();

  if (recency_.size() >= capacity_) {
    index_.erase(recency_.back().key);
    recency_.pop_back();
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
  recency_.push_front(Entry{key, leaf, renew_at});
  index_.emplace(recency_.front().key, recency_.begin());
  size_.store(recency_.size(), std::memory_order_relaxed);
  return leaf;
}

}  // namespace tokgate::certs
