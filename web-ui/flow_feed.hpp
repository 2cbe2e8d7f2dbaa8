// What the web UI shows of the traffic: the recent flow records (a bounded ring) and running
// aggregates (requests per second, actions per category, top hosts, countries and ASNs,
// handshake failures). Fed by the flow sink's thread, read by the admin server's: one mutex,
// held for microseconds on either side, never on a worker's path.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "proxy/flow_record.hpp"

namespace tokgate::webui {

struct FlowFilter {
  std::string category;
  std::string action;
  std::string host;    // substring
  std::string client;  // exact client_ip
  std::string status;  // "404" or "4xx"
  std::size_t limit = 200;
  uint64_t after = 0;  // only records with seq > after
};

class FlowFeed {
 public:
  static constexpr std::size_t kDefaultCapacity = 1000;
  static constexpr std::size_t kMaxTrackedKeys = 4096;  // per top list
  static constexpr std::size_t kRateSeconds = 120;

  explicit FlowFeed(std::size_t capacity = kDefaultCapacity);

  // From the sink's thread: one record, finished.
  void add(const proxy::FlowRecord& record);

  // JSON texts for the admin API (docs/web-ui.md).
  std::string flows_json(const FlowFilter& filter) const;
  // One record, or nullopt if it has left the ring. `har_path` gets its capture file, if any.
  std::optional<std::string> flow_json(uint64_t seq, std::string* har_path) const;
  std::string stats_json() const;
  uint64_t last_seq() const;
  // The records after `seq`, oldest first, at most `limit` (for the live stream).
  std::vector<std::string> flows_after(uint64_t seq, std::size_t limit, uint64_t* last) const;

 private:
  // The record is kept and rendered as JSON only when someone asks (most are never shown).
  struct Entry {
    uint64_t seq = 0;
    proxy::FlowRecord record;  // without its HAR exchange (the capture file has it)
    mutable std::string json;  // the flow-log object with "seq" added, once rendered
    const std::string& rendered() const;
  };
  struct Tally {
    uint64_t flows = 0;
    uint64_t bytes = 0;
  };
  void tick(std::chrono::steady_clock::time_point now);
  static void count(std::unordered_map<std::string, Tally>& map, const std::string& key,
                    uint64_t bytes);

  mutable std::mutex mutex_;
  std::size_t capacity_;
  std::deque<Entry> ring_;
  uint64_t seq_ = 0;
  uint64_t requests_total_ = 0;
  // Requests per second: the last kRateSeconds seconds, one bucket each.
  std::vector<uint64_t> rate_;
  std::chrono::steady_clock::time_point rate_second_{};
  std::map<std::string, std::map<std::string, uint64_t>> by_category_;  // category -> action -> n
  std::map<std::string, uint64_t> client_failures_, origin_failures_;
  std::unordered_map<std::string, Tally> hosts_, countries_, asns_;
  std::unordered_map<std::string, std::string> asn_orgs_;
};

}  // namespace tokgate::webui
