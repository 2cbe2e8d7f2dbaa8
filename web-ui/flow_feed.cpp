#include "web-ui/flow_feed.hpp"

#include <algorithm>

#include "web-ui/block_page.hpp"

namespace tokgate::webui {

namespace {

constexpr std::size_t kTopEntries = 10;

std::string quoted(std::string_view text) {
  return "\"" + json_escape(text) + "\"";
}

bool status_matches(const std::string& wanted, unsigned status) {
  if (wanted.empty()) return true;
  if (wanted.size() == 3 && wanted[1] == 'x' && wanted[2] == 'x') {
    return status / 100 == static_cast<unsigned>(wanted[0] - '0');
  }
  return std::to_string(status) == wanted;
}

}  // namespace

FlowFeed::FlowFeed(std::size_t capacity) : capacity_(std::max<std::size_t>(1, capacity)) {
  rate_.assign(kRateSeconds, 0);
}

void FlowFeed::count(std::unordered_map<std::string, Tally>& map, const std::string& key,
                     uint64_t bytes) {
  if (key.empty()) return;
  auto found = map.find(key);
  if (found == map.end()) {
    // Bounded: past the limit a new key replaces the smallest (a heavy hitter stays listed).
    if (map.size() >= kMaxTrackedKeys) {
      auto smallest = std::min_element(map.begin(), map.end(), [](const auto& a, const auto& b) {
        return a.second.flows < b.second.flows;
      });
      map.erase(smallest);
    }
    found = map.emplace(key, Tally{}).first;
  }
  found->second.flows += 1;
  found->second.bytes += bytes;
}

void FlowFeed::tick(std::chrono::steady_clock::time_point now) {
  const auto second = std::chrono::floor<std::chrono::seconds>(now);
  if (rate_second_ == std::chrono::steady_clock::time_point{}) rate_second_ = second;
  auto elapsed = std::chrono::duration_cast<std::chrono::seconds>(second - rate_second_).count();
  if (elapsed <= 0) return;
  const auto shift = static_cast<std::size_t>(std::min<int64_t>(elapsed, kRateSeconds));
  std::rotate(rate_.begin(), rate_.begin() + static_cast<std::ptrdiff_t>(shift), rate_.end());
  std::fill(rate_.end() - static_cast<std::ptrdiff_t>(shift), rate_.end(), 0);
  rate_second_ = second;
}

const std::string& FlowFeed::Entry::rendered() const {
  if (json.empty()) {
    json = proxy::to_json_line(record);
    // {"seq":N,...the record...}
    json.insert(1, "\"seq\":" + std::to_string(seq) + ",");
  }
  return json;
}

void FlowFeed::add(const proxy::FlowRecord& record) {
  Entry entry;
  entry.record = record;
  entry.record.har.reset();
  const uint64_t bytes = record.bytes_up.value_or(0) + record.bytes_down.value_or(0);

  std::lock_guard lock(mutex_);
  entry.seq = ++seq_;
  ring_.push_back(std::move(entry));
  while (ring_.size() > capacity_) ring_.pop_front();

  tick(std::chrono::steady_clock::now());
  if (record.type == proxy::FlowType::request) {
    ++requests_total_;
    ++rate_.back();
  }
  if (!record.action.empty()) {
    ++by_category_[record.category.empty() ? "none" : record.category][record.action];
  }
  if (record.error == "pinned") {
    ++client_failures_["rejected-certificate"];
  } else if (record.error == "client-tls") {
    ++client_failures_["other"];
  } else if (record.error == "upstream-tls") {
    ++origin_failures_["tls"];
  } else if (record.error == "upstream-timeout") {
    ++origin_failures_["timeout"];
  }
  count(hosts_, record.host, bytes);
  count(countries_, record.upstream_country, bytes);
  if (record.upstream_asn) {
    const std::string asn = std::to_string(*record.upstream_asn);
    count(asns_, asn, bytes);
    if (!record.upstream_as_org.empty() && asn_orgs_.size() < kMaxTrackedKeys) {
      asn_orgs_[asn] = record.upstream_as_org;
    }
  }
}

std::string FlowFeed::flows_json(const FlowFilter& filter) const {
  const std::size_t limit = std::clamp<std::size_t>(filter.limit, 1, capacity_);
  std::string out = "{\"flows\":[";
  std::lock_guard lock(mutex_);
  std::size_t shown = 0;
  for (auto it = ring_.rbegin(); it != ring_.rend() && shown < limit; ++it) {
    if (it->seq <= filter.after) break;
    const proxy::FlowRecord& record = it->record;
    if (!filter.category.empty() && record.category != filter.category) continue;
    if (!filter.action.empty() && record.action != filter.action) continue;
    if (!filter.host.empty() && record.host.find(filter.host) == std::string::npos) continue;
    if (!filter.client.empty() && record.client_ip != filter.client) continue;
    if (!status_matches(filter.status, record.status.value_or(0))) continue;
    if (shown++ > 0) out.push_back(',');
    out += it->rendered();
  }
  out += "],\"last\":" + std::to_string(seq_) + "}";
  return out;
}

std::optional<std::string> FlowFeed::flow_json(uint64_t seq, std::string* har_path) const {
  std::lock_guard lock(mutex_);
  if (ring_.empty() || seq < ring_.front().seq || seq > ring_.back().seq) return std::nullopt;
  const Entry& entry = ring_[seq - ring_.front().seq];
  if (har_path != nullptr) *har_path = entry.record.capture;
  return entry.rendered();
}

uint64_t FlowFeed::last_seq() const {
  std::lock_guard lock(mutex_);
  return seq_;
}

std::vector<std::string> FlowFeed::flows_after(uint64_t seq, std::size_t limit,
                                               uint64_t* last) const {
  std::vector<std::string> out;
  std::lock_guard lock(mutex_);
  *last = seq;
  for (const auto& entry : ring_) {
    if (entry.seq <= seq) continue;
    if (out.size() >= limit) break;
    out.push_back(entry.rendered());
    *last = entry.seq;
  }
  return out;
}

std::string FlowFeed::stats_json() const {
  auto top = [](const std::unordered_map<std::string, Tally>& map) {
    std::vector<std::pair<std::string, Tally>> rows(map.begin(), map.end());
    const std::size_t n = std::min(kTopEntries, rows.size());
    std::partial_sort(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(n), rows.end(),
                      [](const auto& a, const auto& b) {
                        return a.second.flows != b.second.flows ? a.second.flows > b.second.flows
                                                                : a.first < b.first;
                      });
    rows.resize(n);
    return rows;
  };
  auto counts = [](const std::map<std::string, uint64_t>& map) {
    std::string out = "{";
    for (const auto& [key, value] : map) {
      if (out.size() > 1) out.push_back(',');
      out += quoted(key) + ":" + std::to_string(value);
    }
    return out + "}";
  };

  std::lock_guard lock(mutex_);
  const_cast<FlowFeed*>(this)->tick(std::chrono::steady_clock::now());
  std::string out = "{\"requests_total\":" + std::to_string(requests_total_) + ",\"rps\":[";
  for (std::size_t i = 0; i < rate_.size(); ++i) {
    if (i > 0) out.push_back(',');
    out += std::to_string(rate_[i]);
  }
  out += "],\"by_category\":{";
  bool first = true;
  for (const auto& [category, actions] : by_category_) {
    if (!first) out.push_back(',');
    first = false;
    out += quoted(category) + ":" + counts(actions);
  }
  out += "},\"handshake_failures\":{\"client\":" + counts(client_failures_) +
         ",\"origin\":" + counts(origin_failures_) + "},\"top_hosts\":[";
  first = true;
  for (const auto& [host, tally] : top(hosts_)) {
    if (!first) out.push_back(',');
    first = false;
    out += "{\"host\":" + quoted(host) + ",\"flows\":" + std::to_string(tally.flows) +
           ",\"bytes\":" + std::to_string(tally.bytes) + "}";
  }
  out += "],\"top_countries\":[";
  first = true;
  for (const auto& [country, tally] : top(countries_)) {
    if (!first) out.push_back(',');
    first = false;
    out += "{\"country\":" + quoted(country) + ",\"flows\":" + std::to_string(tally.flows) +
           ",\"bytes\":" + std::to_string(tally.bytes) + "}";
  }
  out += "],\"top_asns\":[";
  first = true;
  for (const auto& [asn, tally] : top(asns_)) {
    if (!first) out.push_back(',');
    first = false;
    auto org = asn_orgs_.find(asn);
    out += "{\"asn\":" + asn + ",\"org\":" + quoted(org == asn_orgs_.end() ? "" : org->second) +
           ",\"flows\":" + std::to_string(tally.flows) +
           ",\"bytes\":" + std::to_string(tally.bytes) + "}";
  }
  out += "]}";
  return out;
}

}  // namespace tokgate::webui
