#include "proxy/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <utility>

namespace tokgate::proxy {
namespace {

static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<double>::is_always_lock_free);
static_assert(std::atomic<int64_t>::is_always_lock_free);
static_assert(std::ranges::is_sorted(kHistogramBounds));

// Indexed by the enum's value; the order must follow the enum declarations in metrics.hpp.
constexpr std::array<std::string_view, kConnectionOutcomeCount> kOutcomeNames{
    "intercept", "splice", "refuse", "rejected", "error"};
constexpr std::array<std::string_view, kClientHandshakeFailureCount> kClientFailureNames{
    "rejected-certificate", "timeout", "protocol", "no-shared-cipher", "other"};
constexpr std::array<std::string_view, kOriginHandshakeFailureCount> kOriginFailureNames{
    "untrusted", "expired", "hostname-mismatch", "timeout", "protocol", "refused", "other"};
constexpr std::array<std::string_view, kDirectionCount> kDirectionNames{"up", "down"};
constexpr std::array<std::string_view, kCertCacheResultCount> kCertCacheNames{"hit", "mint"};
constexpr std::array<std::string_view, kLimitHitCount> kLimitNames{
    "client-hello-size",
    "client-hello-timeout",
    "tls-handshake-client-timeout",
    "tls-handshake-origin-timeout",
    "proxy-header-timeout",
    "request-line-size",
    "request-header-size",
    "request-header-fields",
    "request-header-timeout",
    "idle-timeout",
    "body-stall",
    "response-header-timeout",
    "response-header-size",
    "connections",
    "connections-per-client",
    "h2-streams",
    "h2-continuations",
    "h2-control-flood",
    "h2-rapid-reset",
    "websocket-frame-size",
};
static_assert(static_cast<std::size_t>(LimitHit::websocket_frame_size) + 1 == kLimitHitCount);
constexpr std::array<std::string_view, kStatusClassCount> kStatusClassNames{"1xx", "2xx", "3xx",
                                                                            "4xx", "5xx", "none"};

template <typename Enum, std::size_t N>
std::string_view name_of(const std::array<std::string_view, N>& names, Enum value) {
  auto index = static_cast<std::size_t>(value);
  return index < N ? names[index] : std::string_view("?");
}

template <typename Enum>
constexpr std::size_t index_of(Enum value) {
  return static_cast<std::size_t>(value);
}

std::size_t request_cell(std::size_t category, std::size_t action, std::size_t status_class) {
  return (category * kActionCount + action) * kStatusClassCount + status_class;
}

int64_t unix_ms(std::chrono::system_clock::time_point when) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(when.time_since_epoch()).count();
}

struct Label {
  std::string_view name;
  std::string_view value;
};

// Appends families and samples in the text format. Names and label names are our constants;
// label values are escaped.
class TextWriter {
 public:
  explicit TextWriter(std::size_t expected_bytes) { text_.reserve(expected_bytes); }

  void family(std::string_view name, std::string_view type, std::string_view help) {
    text_ += "# HELP ";
    text_ += name;
    text_ += ' ';
    for (char c : help) {
      if (c == '\\') {
        text_ += "\\\\";
      } else if (c == '\n') {
        text_ += "\\n";
      } else {
        text_ += c;
      }
    }
    text_ += "\n# TYPE ";
    text_ += name;
    text_ += ' ';
    text_ += type;
    text_ += '\n';
  }

  void sample(std::string_view name, std::initializer_list<Label> labels, uint64_t value) {
    begin_sample(name, labels);
    char digits[24];
    auto [end, error] = std::to_chars(std::begin(digits), std::end(digits), value);
    text_.append(digits, error == std::errc{} ? end : digits);
    text_ += '\n';
  }

  void sample(std::string_view name, std::initializer_list<Label> labels, double value) {
    begin_sample(name, labels);
    append_double(value);
    text_ += '\n';
  }

  void append_double(double value) {
    if (std::isnan(value)) {
      text_ += "NaN";
    } else if (std::isinf(value)) {
      text_ += value > 0 ? "+Inf" : "-Inf";
    } else {
      char digits[32];
      auto [end, error] = std::to_chars(std::begin(digits), std::end(digits), value);
      text_.append(digits, error == std::errc{} ? end : digits);
    }
  }

  std::string take() { return std::move(text_); }

 private:
  void begin_sample(std::string_view name, std::initializer_list<Label> labels) {
    text_ += name;
    if (labels.size() == 0) {
      text_ += ' ';
      return;
    }
    char separator = '{';
    for (const Label& label : labels) {
      text_ += separator;
      separator = ',';
      text_ += label.name;
      text_ += "=\"";
      text_ += escape_label_value(label.value);
      text_ += '"';
    }
    text_ += "} ";
  }

  std::string text_;
};

// The le label of each finite bucket, formatted once.
std::array<std::string, kHistogramBounds.size()> format_bounds() {
  std::array<std::string, kHistogramBounds.size()> names;
  for (std::size_t i = 0; i < kHistogramBounds.size(); ++i) {
    char digits[32];
    // Fixed notation ("0.0005", not "5e-04"): what people write in le="..." matchers.
    auto [end, error] = std::to_chars(std::begin(digits), std::end(digits), kHistogramBounds[i],
                                      std::chars_format::fixed);
    names[i].assign(digits, error == std::errc{} ? end : digits);
  }
  return names;
}

}  // namespace

std::string_view to_string(ConnectionOutcome outcome) {
  return name_of(kOutcomeNames, outcome);
}

ConnectionOutcome outcome_of(policy::ConnectionVerdict verdict) {
  switch (verdict) {
    case policy::ConnectionVerdict::splice:
      return ConnectionOutcome::splice;
    case policy::ConnectionVerdict::refuse:
      return ConnectionOutcome::refuse;
    case policy::ConnectionVerdict::intercept:
      return ConnectionOutcome::intercept;
  }
  return ConnectionOutcome::error;
}

std::string_view to_string(ClientHandshakeFailure reason) {
  return name_of(kClientFailureNames, reason);
}

std::string_view to_string(OriginHandshakeFailure reason) {
  return name_of(kOriginFailureNames, reason);
}

std::string_view to_string(Direction direction) {
  return name_of(kDirectionNames, direction);
}

std::string_view to_string(CertCacheResult result) {
  return name_of(kCertCacheNames, result);
}

StatusClass status_class_of(unsigned status) {
  if (status < 100 || status > 599) return StatusClass::none;
  return static_cast<StatusClass>(status / 100 - 1);
}

std::string_view to_string(StatusClass status_class) {
  return name_of(kStatusClassNames, status_class);
}

std::string_view to_string(LimitHit limit) {
  return name_of(kLimitNames, limit);
}

std::string escape_label_value(std::string_view value) {
  std::string escaped;
  escaped.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\':
        escaped += "\\\\";
        break;
      case '"':
        escaped += "\\\"";
        break;
      case '\n':
        escaped += "\\n";
        break;
      default:
        escaped += c;
    }
  }
  return escaped;
}

// --- MetricsShard ---

void MetricsShard::connection_opened() {
  connections_opened_.add(1);
}

void MetricsShard::connection_closed(ConnectionOutcome outcome) {
  // An out-of-range outcome still closes the connection, or the open gauge would drift.
  std::size_t index = index_of(outcome);
  connections_closed_[index < kConnectionOutcomeCount ? index : index_of(ConnectionOutcome::error)]
      .add(1);
}

void MetricsShard::connection_closed(policy::ConnectionVerdict verdict) {
  connection_closed(outcome_of(verdict));
}

void MetricsShard::request(policy::Category category, policy::Action action, unsigned status,
                           uint64_t up, uint64_t down, bool bumped) {
  std::size_t category_index = index_of(category);
  std::size_t action_index = index_of(action);
  if (category_index < policy::kCategoryCount && action_index < kActionCount) {
    requests_[request_cell(category_index, action_index, index_of(status_class_of(status)))].add(1);
  }
  bytes(up, down, bumped);
}

void MetricsShard::bytes(uint64_t up, uint64_t down, bool bumped) {
  std::size_t bumped_index = bumped ? 1 : 0;
  if (up != 0) bytes_[index_of(Direction::up) * 2 + bumped_index].add(up);
  if (down != 0) bytes_[index_of(Direction::down) * 2 + bumped_index].add(down);
}

void MetricsShard::client_handshake_failed(ClientHandshakeFailure reason) {
  if (index_of(reason) < kClientHandshakeFailureCount) {
    client_handshake_failures_[index_of(reason)].add(1);
  }
}

void MetricsShard::origin_handshake_failed(OriginHandshakeFailure reason) {
  if (index_of(reason) < kOriginHandshakeFailureCount) {
    origin_handshake_failures_[index_of(reason)].add(1);
  }
}

void MetricsShard::cert_cache(CertCacheResult result) {
  if (index_of(result) < kCertCacheResultCount) cert_cache_[index_of(result)].add(1);
}

void MetricsShard::websocket_messages(Direction direction, uint64_t count) {
  if (index_of(direction) < kDirectionCount) websocket_messages_[index_of(direction)].add(count);
}

void MetricsShard::limit_hit(LimitHit limit) {
  if (index_of(limit) < kLimitHitCount) limit_hits_[index_of(limit)].add(1);
}

void MetricsShard::observe(Histogram which, double seconds) {
  if (index_of(which) >= kHistogramCount || !std::isfinite(seconds)) return;
  seconds = std::max(seconds, 0.0);
  HistogramCells& cells = histograms_[index_of(which)];
  // First bound >= seconds: `le` is inclusive. Past the last bound: the +Inf bucket.
  auto bucket = static_cast<std::size_t>(std::ranges::lower_bound(kHistogramBounds, seconds) -
                                         kHistogramBounds.begin());
  cells.buckets[bucket].add(1);
  cells.sum.store(cells.sum.load(std::memory_order_relaxed) + seconds, std::memory_order_relaxed);
}

void MetricsShard::observe(Histogram which, std::chrono::nanoseconds duration) {
  observe(which, std::chrono::duration<double>(duration).count());
}

// --- Metrics ---

Metrics::Metrics(std::size_t shards, std::string version)
    : shard_count_(shards),
      version_(std::move(version)),
      start_time_ms_(unix_ms(std::chrono::system_clock::now())) {
  if (shards == 0 || shards > kMaxShards) {
    throw std::invalid_argument("metrics: shard count must be in 1.." + std::to_string(kMaxShards));
  }
  shards_ = std::make_unique<MetricsShard[]>(shards);
  if (version_.size() > kMaxVersionBytes) version_.resize(kMaxVersionBytes);
  shared_.workers.store(shards - 1, std::memory_order_relaxed);
}

MetricsShard& Metrics::shard(std::size_t index) {
  if (index >= shard_count_) throw std::out_of_range("metrics: no such shard");
  return shards_[index];
}

const MetricsShard& Metrics::shard(std::size_t index) const {
  if (index >= shard_count_) throw std::out_of_range("metrics: no such shard");
  return shards_[index];
}

void Metrics::set_workers(std::size_t workers) {
  shared_.workers.store(workers, std::memory_order_relaxed);
}

void Metrics::flow_log_records(uint64_t count) {
  shared_.flow_log_records.fetch_add(count, std::memory_order_relaxed);
}

void Metrics::flow_log_dropped(uint64_t count) {
  shared_.flow_log_dropped.fetch_add(count, std::memory_order_relaxed);
}

void Metrics::flow_log_write_errors(uint64_t count) {
  shared_.flow_log_write_errors.fetch_add(count, std::memory_order_relaxed);
}

void Metrics::captures(uint64_t count) {
  shared_.captures.fetch_add(count, std::memory_order_relaxed);
}

void Metrics::captures_dropped(uint64_t count) {
  shared_.captures_dropped.fetch_add(count, std::memory_order_relaxed);
}

void Metrics::policy_reload_succeeded(std::chrono::system_clock::time_point loaded_at) {
  shared_.policy_reloads_ok.fetch_add(1, std::memory_order_relaxed);
  policy_loaded(loaded_at);
}

void Metrics::policy_reload_failed() {
  shared_.policy_reloads_error.fetch_add(1, std::memory_order_relaxed);
}

void Metrics::policy_loaded(std::chrono::system_clock::time_point loaded_at) {
  shared_.policy_loaded_ms.store(unix_ms(loaded_at), std::memory_order_relaxed);
}

std::string Metrics::render_prometheus() const {
  // Sums one counter over all shards.
  auto total = [this](auto&& counter_of) {
    uint64_t sum = 0;
    for (std::size_t i = 0; i < shard_count_; ++i) sum += counter_of(shards_[i]).load();
    return sum;
  };
  auto relaxed = [](const std::atomic<uint64_t>& value) {
    return value.load(std::memory_order_relaxed);
  };

  TextWriter out(16 * 1024);

  out.family("tokgate_build_info", "gauge", "Build information; the value is always 1.");
  out.sample("tokgate_build_info", {{"version", version_}}, uint64_t{1});

  out.family("tokgate_start_time_seconds", "gauge", "Unix time the process started.");
  out.sample("tokgate_start_time_seconds", {}, static_cast<double>(start_time_ms_) / 1000.0);

  out.family("tokgate_workers", "gauge", "Worker threads (one event loop each).");
  out.sample("tokgate_workers", {}, relaxed(shared_.workers));

  // Closed before opened: a connection opened and closed between the two reads then shows up
  // in opened only. Relaxed loads give no order across cells, so clamp the rare transient dip.
  uint64_t closed = 0;
  for (std::size_t outcome = 0; outcome < kConnectionOutcomeCount; ++outcome) {
    closed +=
        total([outcome](const MetricsShard& s) -> auto& { return s.connections_closed_[outcome]; });
  }
  uint64_t opened = total([](const MetricsShard& s) -> auto& { return s.connections_opened_; });
  out.family("tokgate_connections_open", "gauge", "Client connections currently open.");
  out.sample("tokgate_connections_open", {}, opened > closed ? opened - closed : uint64_t{0});

  out.family("tokgate_connections_total", "counter",
             "Client connections closed, by connection verdict (rejected and error: before a "
             "verdict).");
  for (std::size_t outcome = 0; outcome < kConnectionOutcomeCount; ++outcome) {
    out.sample("tokgate_connections_total", {{"verdict", kOutcomeNames[outcome]}},
               total([outcome](const MetricsShard& s) -> auto& {
                 return s.connections_closed_[outcome];
               }));
  }

  out.family("tokgate_requests_total", "counter",
             "Flows (HTTP exchanges, WebSockets, spliced or refused connections) by category, "
             "action and response status class. Absent series are zero.");
  for (std::size_t category = 0; category < policy::kCategoryCount; ++category) {
    for (std::size_t action = 0; action < kActionCount; ++action) {
      for (std::size_t status = 0; status < kStatusClassCount; ++status) {
        std::size_t cell = request_cell(category, action, status);
        uint64_t count =
            total([cell](const MetricsShard& s) -> auto& { return s.requests_[cell]; });
        if (count == 0) continue;  // 396 combinations: only the ones seen
        out.sample("tokgate_requests_total",
                   {{"category", policy::to_string(static_cast<policy::Category>(category))},
                    {"action", policy::to_string(static_cast<policy::Action>(action))},
                    {"status_class", kStatusClassNames[status]}},
                   count);
      }
    }
  }

  out.family("tokgate_bytes_total", "counter",
             "Body, tunnel and WebSocket payload bytes relayed; up = client to origin, "
             "bumped = decrypted.");
  for (std::size_t direction = 0; direction < kDirectionCount; ++direction) {
    for (std::size_t bumped = 0; bumped < 2; ++bumped) {
      std::size_t cell = direction * 2 + bumped;
      out.sample(
          "tokgate_bytes_total",
          {{"direction", kDirectionNames[direction]}, {"bumped", bumped != 0 ? "true" : "false"}},
          total([cell](const MetricsShard& s) -> auto& { return s.bytes_[cell]; }));
    }
  }

  out.family("tokgate_handshake_failures_total", "counter",
             "TLS handshakes that failed, by side and reason. side=client, "
             "reason=rejected-certificate: the client refused our certificate (likely pinning).");
  for (std::size_t reason = 0; reason < kClientHandshakeFailureCount; ++reason) {
    out.sample("tokgate_handshake_failures_total",
               {{"side", "client"}, {"reason", kClientFailureNames[reason]}},
               total([reason](const MetricsShard& s) -> auto& {
                 return s.client_handshake_failures_[reason];
               }));
  }
  for (std::size_t reason = 0; reason < kOriginHandshakeFailureCount; ++reason) {
    out.sample("tokgate_handshake_failures_total",
               {{"side", "origin"}, {"reason", kOriginFailureNames[reason]}},
               total([reason](const MetricsShard& s) -> auto& {
                 return s.origin_handshake_failures_[reason];
               }));
  }

  out.family("tokgate_origin_handshakes_total", "counter",
             "TLS handshakes with origins that succeeded; resumed=yes: with a session kept from "
             "an earlier connection (no certificate chain sent or verified).");
  for (std::size_t resumed = 0; resumed < 2; ++resumed) {
    out.sample(
        "tokgate_origin_handshakes_total", {{"resumed", resumed == 1 ? "yes" : "no"}},
        total([resumed](const MetricsShard& s) -> auto& { return s.origin_handshakes_[resumed]; }));
  }

  out.family("tokgate_cert_cache_total", "counter",
             "Leaf certificate lookups: hit = from the cache, mint = newly signed.");
  for (std::size_t result = 0; result < kCertCacheResultCount; ++result) {
    out.sample("tokgate_cert_cache_total", {{"result", kCertCacheNames[result]}},
               total([result](const MetricsShard& s) -> auto& { return s.cert_cache_[result]; }));
  }

  out.family("tokgate_policy_reloads_total", "counter", "Policy reloads (SIGHUP, admin API).");
  out.sample("tokgate_policy_reloads_total", {{"result", "ok"}},
             relaxed(shared_.policy_reloads_ok));
  out.sample("tokgate_policy_reloads_total", {{"result", "error"}},
             relaxed(shared_.policy_reloads_error));

  out.family("tokgate_policy_loaded_timestamp_seconds", "gauge",
             "Unix time the policy in force was loaded; absent before the first load.");
  if (int64_t loaded_ms = shared_.policy_loaded_ms.load(std::memory_order_relaxed);
      loaded_ms >= 0) {
    out.sample("tokgate_policy_loaded_timestamp_seconds", {},
               static_cast<double>(loaded_ms) / 1000.0);
  }

  struct Plain {
    std::string_view name;
    std::string_view help;
    const std::atomic<uint64_t>& value;
  };
  for (const Plain& counter : {
           Plain{"tokgate_flow_log_records_total", "Flow log records written.",
                 shared_.flow_log_records},
           Plain{"tokgate_flow_log_dropped_total",
                 "Flow log records dropped (queue full or disk stalled).",
                 shared_.flow_log_dropped},
           Plain{"tokgate_flow_log_write_errors_total", "Failed writes to the flow log file.",
                 shared_.flow_log_write_errors},
           Plain{"tokgate_captures_total", "Flows written to HAR captures.", shared_.captures},
           Plain{"tokgate_captures_dropped_total",
                 "Flows that should have been captured but were dropped (limits, queue full).",
                 shared_.captures_dropped},
       }) {
    out.family(counter.name, "counter", counter.help);
    out.sample(counter.name, {}, relaxed(counter.value));
  }

  out.family("tokgate_websocket_messages_total", "counter",
             "WebSocket messages relayed; up = client to origin.");
  for (std::size_t direction = 0; direction < kDirectionCount; ++direction) {
    out.sample("tokgate_websocket_messages_total", {{"direction", kDirectionNames[direction]}},
               total([direction](const MetricsShard& s) -> auto& {
                 return s.websocket_messages_[direction];
               }));
  }

  out.family("tokgate_limit_hits_total", "counter",
             "Times a limit or timeout acted (a connection refused or ended, a request "
             "answered 408, 414 or 431), by limit; docs/metrics.md names the config key of each.");
  for (std::size_t limit = 0; limit < kLimitHitCount; ++limit) {
    out.sample("tokgate_limit_hits_total", {{"limit", kLimitNames[limit]}},
               total([limit](const MetricsShard& s) -> auto& { return s.limit_hits_[limit]; }));
  }

  static const std::array<std::string, kHistogramBounds.size()> kBoundNames = format_bounds();
  // One histogram series: cumulative buckets, then _sum and _count (= the +Inf bucket, so the
  // two always agree even while observations land during the scrape).
  auto histogram_series = [&](std::string_view family, Histogram which, Label extra) {
    std::size_t index = index_of(which);
    std::string bucket_name = std::string(family) + "_bucket";
    uint64_t cumulative = 0;
    for (std::size_t bucket = 0; bucket <= kHistogramBounds.size(); ++bucket) {
      cumulative += total([ index, bucket ](const MetricsShard& s) -> auto& {
        return s.histograms_[index].buckets[bucket];
      });
      std::string_view le =
          bucket < kHistogramBounds.size() ? std::string_view(kBoundNames[bucket]) : "+Inf";
      if (extra.name.empty()) {
        out.sample(bucket_name, {{"le", le}}, cumulative);
      } else {
        out.sample(bucket_name, {extra, {"le", le}}, cumulative);
      }
    }
    double sum = 0;
    for (std::size_t i = 0; i < shard_count_; ++i) {
      sum += shards_[i].histograms_[index].sum.load(std::memory_order_relaxed);
    }
    std::string sum_name = std::string(family) + "_sum";
    std::string count_name = std::string(family) + "_count";
    if (extra.name.empty()) {
      out.sample(sum_name, {}, sum);
      out.sample(count_name, {}, cumulative);
    } else {
      out.sample(sum_name, {extra}, sum);
      out.sample(count_name, {extra}, cumulative);
    }
  };

  out.family("tokgate_upstream_connect_seconds", "histogram",
             "DNS resolution and TCP connect to the origin.");
  histogram_series("tokgate_upstream_connect_seconds", Histogram::upstream_connect, {});
  out.family("tokgate_upstream_tls_handshake_seconds", "histogram",
             "TLS handshake with the origin.");
  histogram_series("tokgate_upstream_tls_handshake_seconds", Histogram::upstream_tls_handshake, {});
  out.family("tokgate_request_duration_seconds", "histogram",
             "Request start to the first byte of the response head (stage=first_byte) and to "
             "the last byte sent to the client (stage=total).");
  histogram_series("tokgate_request_duration_seconds", Histogram::request_first_byte,
                   {"stage", "first_byte"});
  histogram_series("tokgate_request_duration_seconds", Histogram::request_total,
                   {"stage", "total"});

  return out.take();
}

}  // namespace tokgate::proxy
