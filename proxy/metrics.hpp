// Metrics: per-thread counter shards summed into the Prometheus text exposition format.
//
// The data plane runs one worker thread per core; nothing there may take a lock or write a
// cache line another thread writes. So every recording thread owns one MetricsShard (one per
// worker, one for the main thread) and is its only writer: a shard's counters are relaxed
// atomics updated with a load and a store (no read-modify-write needed with one writer), and
// the admin thread sums all shards with relaxed loads when /metrics is scraped. Counters that
// sinks on threads of their own move (flow log, captures, policy reloads) live in Metrics
// itself as relaxed fetch_add atomics: they are rare and uncontended.
//
// docs/metrics.md lists every metric, its labels and meaning.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "policy/types.hpp"

namespace tokgate::proxy {

// How a client connection ended (tokgate_connections_total{verdict}): the policy's connection
// verdict, or `rejected` (turned away before a verdict: client not allowed, connection limit)
// or `error` (failed before a verdict: bad or slow ClientHello, reset).
enum class ConnectionOutcome : uint8_t { intercept, splice, refuse, rejected, error };
inline constexpr std::size_t kConnectionOutcomeCount = 5;
std::string_view to_string(ConnectionOutcome outcome);
ConnectionOutcome outcome_of(policy::ConnectionVerdict verdict);

// Why a TLS handshake with the client failed. `rejected_certificate` is the pinning signal: the
// client aborted with a certificate alert (bad_certificate, unknown_ca, ...) after seeing ours.
enum class ClientHandshakeFailure : uint8_t {
  rejected_certificate,
  timeout,
  protocol,
  no_shared_cipher,
  other,
};
inline constexpr std::size_t kClientHandshakeFailureCount = 5;
// "rejected-certificate", "timeout", "protocol", "no-shared-cipher", "other".
std::string_view to_string(ClientHandshakeFailure reason);

// Why a TLS handshake with (or the connection to) the origin failed.
enum class OriginHandshakeFailure : uint8_t {
  untrusted,
  expired,
  hostname_mismatch,
  timeout,
  protocol,
  refused,
  other,
};
inline constexpr std::size_t kOriginHandshakeFailureCount = 7;
// "untrusted", "expired", "hostname-mismatch", "timeout", "protocol", "refused", "other".
std::string_view to_string(OriginHandshakeFailure reason);

// up = client -> origin, down = origin -> client.
enum class Direction : uint8_t { up, down };
inline constexpr std::size_t kDirectionCount = 2;
std::string_view to_string(Direction direction);

enum class CertCacheResult : uint8_t { hit, mint };
inline constexpr std::size_t kCertCacheResultCount = 2;
std::string_view to_string(CertCacheResult result);

// Response status class: 1xx..5xx for 100..599; none for 0 (no response sent) and anything
// outside 100..599.
enum class StatusClass : uint8_t { s1xx, s2xx, s3xx, s4xx, s5xx, none };
inline constexpr std::size_t kStatusClassCount = 6;
StatusClass status_class_of(unsigned status);
std::string_view to_string(StatusClass status_class);

inline constexpr std::size_t kActionCount = 6;  // policy::Action

// A limit or timeout that turned a client (or an origin) away: tokgate_limit_hits_total{limit}.
// One count per time the limit acts (a connection refused, a request answered 408/431/414, a
// connection ended). docs/metrics.md lists the labels and the config key behind each.
enum class LimitHit : uint8_t {
  client_hello_size,             // [limits] client_hello
  client_hello_timeout,          // [timeouts] client_hello
  tls_handshake_client_timeout,  // [timeouts] tls_handshake, with the client
  tls_handshake_origin_timeout,  // [timeouts] tls_handshake, with the origin
  proxy_header_timeout,          // [timeouts] proxy_header
  request_line_size,             // [limits] request_line
  request_header_size,           // [limits] request_header (HTTP/1.1 head, HTTP/2 header list)
  request_header_fields,         // [limits] request_header_fields
  request_header_timeout,        // [timeouts] request_header (slowloris)
  idle_timeout,                  // [timeouts] idle (keep-alive, HTTP/2, tunnels, WebSockets)
  body_stall,                    // [timeouts] io_stall
  response_header_timeout,       // [timeouts] response_header
  response_header_size,          // [limits] response_header
  connections,                   // [limits] max_connections
  connections_per_client,        // [limits] max_connections_per_client
  h2_streams,                    // [limits] h2_max_concurrent_streams
  h2_continuations,              // [limits] h2_max_continuations
  h2_control_flood,              // [limits] h2_max_pending_acks (SETTINGS/PING)
  h2_rapid_reset,                // [limits] h2_reset_burst, h2_reset_rate
  websocket_frame_size,          // [limits] websocket_frame
};
inline constexpr std::size_t kLimitHitCount = 20;
// "client-hello-size", "client-hello-timeout", ... (the label values, in enum order).
std::string_view to_string(LimitHit limit);

// The latency histograms. request_first_byte and request_total are the two `stage` series of
// tokgate_request_duration_seconds.
enum class Histogram : uint8_t {
  upstream_connect,        // DNS + TCP connect to the origin
  upstream_tls_handshake,  // TLS handshake with the origin
  request_first_byte,      // request start -> first byte of the response head
  request_total,           // request start -> last byte to the client
};
inline constexpr std::size_t kHistogramCount = 4;

// Upper bounds (seconds, `le`) of the histogram buckets, shared by every histogram; +Inf is
// implied. From a loopback connect to a slow download: 0.5 ms .. 30 s.
inline constexpr std::array<double, 15> kHistogramBounds{
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};

// Escapes a label value for the exposition format: backslash, double quote and newline.
std::string escape_label_value(std::string_view value);

// The counters one thread records. Every method must be called by the owning thread only
// (one writer); reads from Metrics::render_prometheus() may come from any thread at any time.
// Methods never allocate, lock or fail; out-of-range enum values are ignored.
class alignas(64) MetricsShard {
 public:
  MetricsShard() = default;
  MetricsShard(const MetricsShard&) = delete;
  MetricsShard& operator=(const MetricsShard&) = delete;

  // Every accepted connection: connection_opened() once, then connection_closed() once (on any
  // shard: tokgate_connections_open is the sum over all shards).
  void connection_opened();
  void connection_closed(ConnectionOutcome outcome);
  void connection_closed(policy::ConnectionVerdict verdict);

  // One flow record's worth: an HTTP exchange, a WebSocket, or a connection that carries no
  // request of its own (spliced, refused). status 0 = no response sent. up/down are the body
  // (or tunnel, or WebSocket payload) bytes, added to tokgate_bytes_total.
  void request(policy::Category category, policy::Action action, unsigned status, uint64_t up,
               uint64_t down, bool bumped);
  // Bytes not reported through request() (e.g. a tunnel counted while it is still open).
  void bytes(uint64_t up, uint64_t down, bool bumped);

  void client_handshake_failed(ClientHandshakeFailure reason);
  void origin_handshake_failed(OriginHandshakeFailure reason);
  // An origin handshake that succeeded: resumed (a cached session) or full.
  void origin_handshake(bool resumed) { origin_handshakes_[resumed ? 1 : 0].add(1); }
  void cert_cache(CertCacheResult result);
  void websocket_messages(Direction direction, uint64_t count);
  void limit_hit(LimitHit limit);

  // Negative durations count as 0; NaN and infinities are ignored.
  void observe(Histogram which, double seconds);
  void observe(Histogram which, std::chrono::nanoseconds duration);

 private:
  friend class Metrics;

  // Written by one thread only, so a relaxed load + store is an exact increment and cheaper
  // than a locked fetch_add; readers see some recent value, never a torn one.
  class Counter {
   public:
    void add(uint64_t amount) {
      value_.store(value_.load(std::memory_order_relaxed) + amount, std::memory_order_relaxed);
    }
    uint64_t load() const { return value_.load(std::memory_order_relaxed); }

   private:
    std::atomic<uint64_t> value_{0};
  };

  struct HistogramCells {
    // Non-cumulative: buckets[i] counts observations in (bounds[i-1], bounds[i]]; the last one
    // is (30 s, +Inf). render_prometheus() accumulates, and derives _count from the total.
    std::array<Counter, kHistogramBounds.size() + 1> buckets;
    std::atomic<double> sum{0.0};
  };

  static constexpr std::size_t kRequestCells =
      policy::kCategoryCount * kActionCount * kStatusClassCount;

  Counter connections_opened_;
  std::array<Counter, kConnectionOutcomeCount> connections_closed_;
  std::array<Counter, kRequestCells> requests_;
  std::array<Counter, kDirectionCount * 2> bytes_;  // [direction][bumped]
  std::array<Counter, kClientHandshakeFailureCount> client_handshake_failures_;
  std::array<Counter, kOriginHandshakeFailureCount> origin_handshake_failures_;
  std::array<Counter, kCertCacheResultCount> cert_cache_;
  std::array<Counter, 2> origin_handshakes_;  // [resumed]
  std::array<Counter, kDirectionCount> websocket_messages_;
  std::array<Counter, kLimitHitCount> limit_hits_;
  std::array<HistogramCells, kHistogramCount> histograms_;
};

// All shards plus the process-wide counters. Create once at startup, before the workers; it
// outlives them. Shard addresses are stable for the object's lifetime.
class Metrics {
 public:
  static constexpr std::size_t kMaxShards = 4096;
  static constexpr std::size_t kMaxVersionBytes = 128;

  // shards: one per worker plus one for the main thread; must be in 1..kMaxShards
  // (std::invalid_argument otherwise: a wiring bug, not a runtime condition). tokgate_workers
  // defaults to shards - 1; see set_workers(). The version is cut to kMaxVersionBytes.
  Metrics(std::size_t shards, std::string version);
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  std::size_t shard_count() const { return shard_count_; }
  // std::out_of_range if index >= shard_count().
  MetricsShard& shard(std::size_t index);
  const MetricsShard& shard(std::size_t index) const;

  void set_workers(std::size_t workers);

  // From any thread (flow log writer, capture writer, policy reloader).
  void flow_log_records(uint64_t count);
  void flow_log_dropped(uint64_t count);
  void flow_log_write_errors(uint64_t count);
  void captures(uint64_t count);
  void captures_dropped(uint64_t count);
  // A policy reload: ok also sets tokgate_policy_loaded_timestamp_seconds to loaded_at.
  void policy_reload_succeeded(std::chrono::system_clock::time_point loaded_at);
  void policy_reload_failed();
  // The policy loaded at startup: sets the timestamp without counting a reload.
  void policy_loaded(std::chrono::system_clock::time_point loaded_at);

  // The whole exposition (text format 0.0.4), families in a fixed order. Serve it as
  // `Content-Type: text/plain; version=0.0.4; charset=utf-8`. Safe to call from any thread
  // while the shards are being written.
  std::string render_prometheus() const;

 private:
  // Written by threads other than the workers; kept off the shards' cache lines.
  struct alignas(64) SharedCounters {
    std::atomic<uint64_t> workers{0};
    std::atomic<uint64_t> flow_log_records{0};
    std::atomic<uint64_t> flow_log_dropped{0};
    std::atomic<uint64_t> flow_log_write_errors{0};
    std::atomic<uint64_t> captures{0};
    std::atomic<uint64_t> captures_dropped{0};
    std::atomic<uint64_t> policy_reloads_ok{0};
    std::atomic<uint64_t> policy_reloads_error{0};
    std::atomic<int64_t> policy_loaded_ms{-1};  // Unix ms; -1 = never loaded
  };

  std::size_t shard_count_;
  std::unique_ptr<MetricsShard[]> shards_;
  std::string version_;
  int64_t start_time_ms_;  // Unix ms
  SharedCounters shared_;
};

}  // namespace tokgate::proxy
