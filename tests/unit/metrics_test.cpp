#include "proxy/metrics.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <charconv>
#include <cmath>
#include <expected>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace tokgate::proxy {
namespace {

using policy::Action;
using policy::Category;
using policy::ConnectionVerdict;

// --- A strict parser for the Prometheus text format (0.0.4), stricter than Prometheus where
// our output never needs the leeway: no blank lines, no free comments, no timestamps. ---

using Labels = std::map<std::string, std::string>;

struct Sample {
  std::string name;
  std::string family;
  Labels labels;
  double value = 0;
};

struct Family {
  std::string type;
  std::string help;
  bool has_help = false;
  bool has_samples = false;
};

// Canonical key of a series: name{a="x",b="y"} with labels sorted by name, values unescaped.
std::string series_key(std::string_view name, const Labels& labels) {
  std::string key(name);
  if (labels.empty()) return key;
  char separator = '{';
  for (const auto& [label, value] : labels) {
    key += separator;
    separator = ',';
    key += label + "=\"" + value + "\"";
  }
  return key + "}";
}

struct Exposition {
  std::map<std::string, Family> families;
  std::vector<Sample> samples;  // in order
  std::map<std::string, double> series;

  bool has(std::string_view name, const Labels& labels = {}) const {
    return series.contains(series_key(name, labels));
  }
  // NaN when absent, so a comparison with an expected number fails visibly.
  double value(std::string_view name, const Labels& labels = {}) const {
    auto found = series.find(series_key(name, labels));
    return found == series.end() ? std::nan("") : found->second;
  }
  std::size_t count_samples(std::string_view name) const {
    std::size_t count = 0;
    for (const Sample& sample : samples) count += sample.name == name ? 1 : 0;
    return count;
  }
};

bool is_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool is_label_name(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

std::expected<double, std::string> parse_value(std::string_view text) {
  if (text == "+Inf") return INFINITY;
  if (text == "-Inf") return -INFINITY;
  if (text == "NaN") return std::nan("");
  if (text.empty() || text.find_first_not_of("0123456789.eE+-") != std::string_view::npos) {
    return std::unexpected("bad value '" + std::string(text) + "'");
  }
  double value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size()) {
    return std::unexpected("bad value '" + std::string(text) + "'");
  }
  return value;
}

// Parses `{name="value",...}` at the start of `rest`; leaves `rest` after the '}'.
std::expected<Labels, std::string> parse_labels(std::string_view& rest) {
  Labels labels;
  rest.remove_prefix(1);  // '{'
  while (true) {
    std::size_t equals = rest.find('=');
    if (equals == std::string_view::npos) return std::unexpected("label without '='");
    std::string name(rest.substr(0, equals));
    if (!is_label_name(name)) return std::unexpected("bad label name '" + name + "'");
    rest.remove_prefix(equals + 1);
    if (rest.empty() || rest[0] != '"') return std::unexpected("label value not quoted");
    rest.remove_prefix(1);
    std::string value;
    while (true) {
      if (rest.empty()) return std::unexpected("unterminated label value");
      char c = rest[0];
      rest.remove_prefix(1);
      if (c == '"') break;
      if (c == '\\') {
        if (rest.empty()) return std::unexpected("dangling backslash");
        char escaped = rest[0];
        rest.remove_prefix(1);
        if (escaped == '\\') {
          value += '\\';
        } else if (escaped == '"') {
          value += '"';
        } else if (escaped == 'n') {
          value += '\n';
        } else {
          return std::unexpected("bad escape in label value");
        }
      } else {
        value += c;
      }
    }
    if (!labels.emplace(name, value).second) {
      return std::unexpected("label '" + name + "' twice");
    }
    if (rest.empty()) return std::unexpected("unterminated label set");
    if (rest[0] == '}') {
      rest.remove_prefix(1);
      return labels;
    }
    if (rest[0] != ',') return std::unexpected("expected ',' or '}' after a label");
    rest.remove_prefix(1);
  }
}

// The family a sample belongs to: its own name, or a histogram's name for _bucket/_sum/_count.
std::expected<std::string, std::string> family_of(const std::map<std::string, Family>& families,
                                                  const std::string& name) {
  if (auto found = families.find(name); found != families.end()) {
    if (found->second.type == "histogram") {
      return std::unexpected("histogram sample without suffix: " + name);
    }
    return name;
  }
  for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
    if (!name.ends_with(suffix)) continue;
    std::string base = name.substr(0, name.size() - suffix.size());
    auto found = families.find(base);
    if (found != families.end() && found->second.type == "histogram") return base;
  }
  return std::unexpected("sample before its TYPE: " + name);
}

// Histogram invariants: per series, buckets ascending in le, cumulative, ending at +Inf, and
// _count equal to the +Inf bucket, _sum present.
std::expected<void, std::string> check_histograms(const Exposition& exposition) {
  struct Series {
    std::vector<std::pair<double, double>> buckets;  // (le, count) in order of appearance
    std::optional<double> count, sum;
  };
  std::map<std::string, Series> all;
  for (const Sample& sample : exposition.samples) {
    if (exposition.families.at(sample.family).type != "histogram") continue;
    Labels labels = sample.labels;
    if (sample.name == sample.family + "_bucket") {
      auto le = labels.find("le");
      if (le == labels.end()) return std::unexpected("bucket without le: " + sample.name);
      auto bound = parse_value(le->second);
      if (!bound) return std::unexpected(bound.error());
      labels.erase(le);
      all[series_key(sample.family, labels)].buckets.emplace_back(*bound, sample.value);
    } else if (sample.name == sample.family + "_count") {
      all[series_key(sample.family, labels)].count = sample.value;
    } else {
      all[series_key(sample.family, labels)].sum = sample.value;
    }
  }
  for (const auto& [key, series] : all) {
    if (series.buckets.empty() || !std::isinf(series.buckets.back().first)) {
      return std::unexpected(key + ": no +Inf bucket");
    }
    for (std::size_t i = 1; i < series.buckets.size(); ++i) {
      if (!(series.buckets[i].first > series.buckets[i - 1].first)) {
        return std::unexpected(key + ": le not ascending");
      }
      if (series.buckets[i].second < series.buckets[i - 1].second) {
        return std::unexpected(key + ": buckets not cumulative");
      }
    }
    if (!series.count || *series.count != series.buckets.back().second) {
      return std::unexpected(key + ": _count missing or != +Inf bucket");
    }
    if (!series.sum) return std::unexpected(key + ": _sum missing");
  }
  return {};
}

std::expected<Exposition, std::string> parse_exposition(std::string_view text) {
  if (text.empty() || !text.ends_with('\n')) return std::unexpected("must end with a newline");
  Exposition exposition;
  std::string current_family;
  std::size_t line_number = 0;
  while (!text.empty()) {
    std::size_t newline = text.find('\n');
    std::string_view line = text.substr(0, newline);
    text.remove_prefix(newline + 1);
    ++line_number;
    auto fail = [line_number](const std::string& why) {
      return std::unexpected("line " + std::to_string(line_number) + ": " + why);
    };
    if (line.empty()) return fail("blank line");

    if (line.starts_with('#')) {
      bool help = line.starts_with("# HELP ");
      if (!help && !line.starts_with("# TYPE ")) return fail("not HELP or TYPE");
      std::string_view rest = line.substr(7);
      std::size_t space = rest.find(' ');
      if (space == std::string_view::npos) return fail("HELP/TYPE without text");
      std::string name(rest.substr(0, space));
      std::string_view argument = rest.substr(space + 1);
      if (!is_metric_name(name)) return fail("bad metric name '" + name + "'");
      Family& family = exposition.families[name];
      if (family.has_samples) return fail("HELP/TYPE after samples of " + name);
      if (help) {
        if (family.has_help) return fail("second HELP for " + name);
        for (std::size_t i = 0; i < argument.size(); ++i) {
          if (argument[i] != '\\') continue;
          if (i + 1 >= argument.size() || (argument[i + 1] != '\\' && argument[i + 1] != 'n')) {
            return fail("bad escape in HELP");
          }
          ++i;
        }
        family.has_help = true;
        family.help = argument;
      } else {
        if (!family.type.empty()) return fail("second TYPE for " + name);
        static const std::set<std::string_view> kTypes{"counter", "gauge", "histogram", "summary",
                                                       "untyped"};
        if (!kTypes.contains(argument)) return fail("bad type '" + std::string(argument) + "'");
        family.type = argument;
      }
      continue;
    }

    Sample sample;
    std::size_t name_end = line.find_first_of("{ ");
    if (name_end == std::string_view::npos) return fail("sample without value");
    sample.name = line.substr(0, name_end);
    if (!is_metric_name(sample.name)) return fail("bad metric name '" + sample.name + "'");
    std::string_view rest = line.substr(name_end);
    if (rest.starts_with('{')) {
      auto labels = parse_labels(rest);
      if (!labels) return fail(labels.error());
      sample.labels = std::move(*labels);
    }
    if (!rest.starts_with(' ')) return fail("expected one space before the value");
    rest.remove_prefix(1);
    auto value = parse_value(rest);  // the whole rest: a timestamp would make this fail
    if (!value) return fail(value.error());
    sample.value = *value;

    auto family_name = family_of(exposition.families, sample.name);
    if (!family_name) return fail(family_name.error());
    sample.family = *family_name;
    Family& family = exposition.families.at(sample.family);
    if (!family.has_help) return fail("no HELP for " + sample.family);
    if (sample.family != current_family && family.has_samples) {
      return fail("samples of " + sample.family + " not contiguous");
    }
    current_family = sample.family;
    family.has_samples = true;
    if (family.type == "counter" && !(sample.value >= 0)) return fail("negative counter");

    std::string key = series_key(sample.name, sample.labels);
    if (!exposition.series.emplace(key, sample.value).second) {
      return fail("duplicate series " + key);
    }
    exposition.samples.push_back(std::move(sample));
  }
  for (const auto& [name, family] : exposition.families) {
    if (family.type.empty()) return std::unexpected("HELP without TYPE: " + name);
    if (!family.has_help) return std::unexpected("TYPE without HELP: " + name);
  }
  if (auto histograms = check_histograms(exposition); !histograms) {
    return std::unexpected(histograms.error());
  }
  return exposition;
}

Exposition scrape(const Metrics& metrics) {
  std::string text = metrics.render_prometheus();
  auto parsed = parse_exposition(text);
  EXPECT_TRUE(parsed.has_value()) << parsed.error() << "\n" << text;
  return parsed.value_or(Exposition{});
}

// --- The parser itself: it must reject what Prometheus would reject (or what we never emit).

TEST(MetricsParser, AcceptsAWellFormedExposition) {
  auto parsed = parse_exposition(
      "# HELP a_total A \\\\ thing\\n.\n# TYPE a_total counter\n"
      "a_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3\na_total{x=\"2\"} 4\n"
      "# HELP h Latency.\n# TYPE h histogram\n"
      "h_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.75\nh_count 2\n");
  ASSERT_TRUE(parsed.has_value()) << parsed.error();
  EXPECT_EQ(parsed->value("a_total", {{"x", "1"}, {"y", "q\"\\\n"}}), 3);
  EXPECT_EQ(parsed->value("h_count"), 2);
}

TEST(MetricsParser, RejectsMalformedExpositions) {
  const char* const kBad[] = {
      "# HELP a A.\n# TYPE a counter\na 1",                     // no final newline
      "a 1\n",                                                  // no TYPE
      "# HELP a A.\n# TYPE a counter\na 1\na 2\n",              // duplicate series
      "# HELP a A.\n# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n",  // label twice
      "# HELP a A.\n# TYPE a counter\na{x=\"\\t\"} 1\n",        // bad escape
      "# HELP a A.\n# TYPE a counter\na{x=\"1} 1\n",            // unterminated
      "# HELP a A.\n# TYPE a counter\na 1 1700000000\n",        // timestamp
      "# HELP a A.\n# TYPE a counter\na one\n",                 // bad value
      "# HELP a A.\n# TYPE a counter\na -1\n",                  // negative counter
      "# HELP a A.\n# TYPE a counter\n# TYPE a gauge\na 1\n",   // TYPE twice
      "# HELP a A.\n# TYPE a counter\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{x=\"1\"} 1\n",
      "# TYPE a counter\na 1\n",                  // no HELP
      "# HELP a A.\n# TYPE a counter\n\na 1\n",   // blank line
      "# HELP 1a A.\n# TYPE 1a counter\n1a 1\n",  // bad name
      "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
      "h_sum 1\nh_count 1\n",  // not cumulative
      "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",  // no +Inf
      "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
  };
  for (const char* text : kBad) {
    EXPECT_FALSE(parse_exposition(text).has_value()) << text;
  }
}

// --- The metrics.

TEST(Metrics, FreshRegistryExposesEveryFamilyAndParses) {
  Metrics metrics(3, "0.1.0");
  Exposition exposition = scrape(metrics);

  const std::map<std::string, std::string> kFamilies{
      {"tokgate_build_info", "gauge"},
      {"tokgate_start_time_seconds", "gauge"},
      {"tokgate_workers", "gauge"},
      {"tokgate_connections_open", "gauge"},
      {"tokgate_connections_total", "counter"},
      {"tokgate_requests_total", "counter"},
      {"tokgate_bytes_total", "counter"},
      {"tokgate_handshake_failures_total", "counter"},
      {"tokgate_origin_handshakes_total", "counter"},
      {"tokgate_cert_cache_total", "counter"},
      {"tokgate_policy_reloads_total", "counter"},
      {"tokgate_policy_loaded_timestamp_seconds", "gauge"},
      {"tokgate_flow_log_records_total", "counter"},
      {"tokgate_flow_log_dropped_total", "counter"},
      {"tokgate_flow_log_write_errors_total", "counter"},
      {"tokgate_captures_total", "counter"},
      {"tokgate_captures_dropped_total", "counter"},
      {"tokgate_websocket_messages_total", "counter"},
      {"tokgate_limit_hits_total", "counter"},
      {"tokgate_upstream_connect_seconds", "histogram"},
      {"tokgate_upstream_tls_handshake_seconds", "histogram"},
      {"tokgate_request_duration_seconds", "histogram"},
  };
  ASSERT_EQ(exposition.families.size(), kFamilies.size());
  for (const auto& [name, type] : kFamilies) {
    ASSERT_TRUE(exposition.families.contains(name)) << name;
    EXPECT_EQ(exposition.families.at(name).type, type) << name;
  }

  EXPECT_EQ(exposition.value("tokgate_build_info", {{"version", "0.1.0"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_workers"), 2);  // shards - 1 (main thread's shard)
  double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_NEAR(exposition.value("tokgate_start_time_seconds"), now, 60);
  EXPECT_EQ(exposition.value("tokgate_connections_open"), 0);
  EXPECT_EQ(exposition.value("tokgate_connections_total", {{"verdict", "rejected"}}), 0);
  EXPECT_EQ(exposition.value("tokgate_handshake_failures_total",
                             {{"side", "client"}, {"reason", "rejected-certificate"}}),
            0);
  EXPECT_EQ(exposition.value("tokgate_handshake_failures_total",
                             {{"side", "origin"}, {"reason", "hostname-mismatch"}}),
            0);
  // Zero request series are omitted (there are 396 combinations); absent means 0.
  EXPECT_EQ(exposition.count_samples("tokgate_requests_total"), 0u);
  // Before the first load there is no timestamp (0 would read as "loaded in 1970").
  EXPECT_EQ(exposition.count_samples("tokgate_policy_loaded_timestamp_seconds"), 0u);
  EXPECT_EQ(exposition.count_samples("tokgate_request_duration_seconds_bucket"),
            2 * (kHistogramBounds.size() + 1));
  EXPECT_EQ(exposition.value("tokgate_request_duration_seconds_count", {{"stage", "total"}}), 0);

  metrics.set_workers(7);
  EXPECT_EQ(scrape(metrics).value("tokgate_workers"), 7);
}

TEST(Metrics, OnlyNonZeroRequestSeriesAreEmitted) {
  Metrics metrics(2, "t");
  metrics.shard(0).request(Category::app_api, Action::block, 451, 10, 20, true);
  metrics.shard(1).request(Category::app_api, Action::block, 451, 0, 5, true);
  metrics.shard(1).request(Category::wechat, Action::splice, 0, 100, 200, false);
  Exposition exposition = scrape(metrics);

  EXPECT_EQ(exposition.count_samples("tokgate_requests_total"), 2u);
  EXPECT_EQ(
      exposition.value("tokgate_requests_total",
                       {{"category", "app-api"}, {"action", "block"}, {"status_class", "4xx"}}),
      2);
  EXPECT_EQ(
      exposition.value("tokgate_requests_total",
                       {{"category", "wechat"}, {"action", "splice"}, {"status_class", "none"}}),
      1);
  EXPECT_EQ(exposition.value("tokgate_bytes_total", {{"direction", "up"}, {"bumped", "true"}}), 10);
  EXPECT_EQ(exposition.value("tokgate_bytes_total", {{"direction", "down"}, {"bumped", "true"}}),
            25);
  EXPECT_EQ(exposition.value("tokgate_bytes_total", {{"direction", "up"}, {"bumped", "false"}}),
            100);
  EXPECT_EQ(exposition.value("tokgate_bytes_total", {{"direction", "down"}, {"bumped", "false"}}),
            200);
}

TEST(Metrics, StatusClasses) {
  EXPECT_EQ(status_class_of(0), StatusClass::none);
  EXPECT_EQ(status_class_of(99), StatusClass::none);
  EXPECT_EQ(status_class_of(100), StatusClass::s1xx);
  EXPECT_EQ(status_class_of(101), StatusClass::s1xx);
  EXPECT_EQ(status_class_of(200), StatusClass::s2xx);
  EXPECT_EQ(status_class_of(304), StatusClass::s3xx);
  EXPECT_EQ(status_class_of(451), StatusClass::s4xx);
  EXPECT_EQ(status_class_of(599), StatusClass::s5xx);
  EXPECT_EQ(status_class_of(600), StatusClass::none);
  EXPECT_EQ(status_class_of(999), StatusClass::none);
  EXPECT_EQ(to_string(StatusClass::s5xx), "5xx");
  EXPECT_EQ(to_string(StatusClass::none), "none");
}

TEST(Metrics, EnumNames) {
  EXPECT_EQ(to_string(ClientHandshakeFailure::rejected_certificate), "rejected-certificate");
  EXPECT_EQ(to_string(ClientHandshakeFailure::no_shared_cipher), "no-shared-cipher");
  EXPECT_EQ(to_string(OriginHandshakeFailure::hostname_mismatch), "hostname-mismatch");
  EXPECT_EQ(to_string(OriginHandshakeFailure::refused), "refused");
  EXPECT_EQ(to_string(ConnectionOutcome::rejected), "rejected");
  EXPECT_EQ(to_string(CertCacheResult::mint), "mint");
  EXPECT_EQ(to_string(Direction::down), "down");
  EXPECT_EQ(outcome_of(ConnectionVerdict::intercept), ConnectionOutcome::intercept);
  EXPECT_EQ(outcome_of(ConnectionVerdict::splice), ConnectionOutcome::splice);
  EXPECT_EQ(outcome_of(ConnectionVerdict::refuse), ConnectionOutcome::refuse);
}

TEST(Metrics, OpenConnectionsAreSummedAcrossShards) {
  Metrics metrics(3, "t");
  for (int i = 0; i < 5; ++i) metrics.shard(0).connection_opened();
  metrics.shard(1).connection_opened();
  // Closed on other shards than the one that opened them: the sum is still right.
  metrics.shard(2).connection_closed(ConnectionVerdict::intercept);
  metrics.shard(2).connection_closed(ConnectionOutcome::rejected);
  metrics.shard(1).connection_closed(ConnectionOutcome::error);
  Exposition exposition = scrape(metrics);
  EXPECT_EQ(exposition.value("tokgate_connections_open"), 3);
  EXPECT_EQ(exposition.value("tokgate_connections_total", {{"verdict", "intercept"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_connections_total", {{"verdict", "rejected"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_connections_total", {{"verdict", "error"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_connections_total", {{"verdict", "splice"}}), 0);
}

TEST(Metrics, HandshakeFailuresCertCacheAndWebSockets) {
  Metrics metrics(2, "t");
  MetricsShard& shard = metrics.shard(1);
  shard.client_handshake_failed(ClientHandshakeFailure::rejected_certificate);
  shard.client_handshake_failed(ClientHandshakeFailure::rejected_certificate);
  shard.client_handshake_failed(ClientHandshakeFailure::timeout);
  shard.origin_handshake_failed(OriginHandshakeFailure::expired);
  shard.origin_handshake_failed(static_cast<OriginHandshakeFailure>(200));  // ignored
  shard.cert_cache(CertCacheResult::mint);
  shard.cert_cache(CertCacheResult::hit);
  shard.cert_cache(CertCacheResult::hit);
  shard.origin_handshake(false);
  shard.origin_handshake(true);
  shard.origin_handshake(true);
  shard.origin_handshake(true);
  shard.websocket_messages(Direction::up, 3);
  shard.websocket_messages(Direction::down, 40);
  Exposition exposition = scrape(metrics);
  EXPECT_EQ(exposition.value("tokgate_handshake_failures_total",
                             {{"side", "client"}, {"reason", "rejected-certificate"}}),
            2);
  EXPECT_EQ(exposition.value("tokgate_handshake_failures_total",
                             {{"side", "client"}, {"reason", "timeout"}}),
            1);
  EXPECT_EQ(exposition.value("tokgate_handshake_failures_total",
                             {{"side", "origin"}, {"reason", "expired"}}),
            1);
  EXPECT_EQ(exposition.count_samples("tokgate_handshake_failures_total"),
            kClientHandshakeFailureCount + kOriginHandshakeFailureCount);
  EXPECT_EQ(exposition.value("tokgate_cert_cache_total", {{"result", "hit"}}), 2);
  EXPECT_EQ(exposition.value("tokgate_cert_cache_total", {{"result", "mint"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_origin_handshakes_total", {{"resumed", "no"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_origin_handshakes_total", {{"resumed", "yes"}}), 3);
  EXPECT_EQ(exposition.value("tokgate_websocket_messages_total", {{"direction", "up"}}), 3);
  EXPECT_EQ(exposition.value("tokgate_websocket_messages_total", {{"direction", "down"}}), 40);
}

// Issue 9: one series per limit, all there (at 0) before the first hit, summed over shards.
TEST(Metrics, LimitHitsArePreDeclaredAndCounted) {
  const std::vector<std::string> kLimits{"client-hello-size",
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
                                         "websocket-frame-size"};
  ASSERT_EQ(kLimits.size(), kLimitHitCount);
  for (std::size_t i = 0; i < kLimitHitCount; ++i) {
    EXPECT_EQ(to_string(static_cast<LimitHit>(i)), kLimits[i]);
  }
  EXPECT_EQ(to_string(static_cast<LimitHit>(kLimitHitCount)), "?");

  Metrics metrics(3, "t");
  Exposition fresh = scrape(metrics);
  EXPECT_EQ(fresh.count_samples("tokgate_limit_hits_total"), kLimitHitCount);
  for (const auto& limit : kLimits) {
    EXPECT_EQ(fresh.value("tokgate_limit_hits_total", {{"limit", limit}}), 0) << limit;
  }
  metrics.shard(1).limit_hit(LimitHit::request_header_timeout);
  metrics.shard(2).limit_hit(LimitHit::request_header_timeout);
  metrics.shard(2).limit_hit(LimitHit::h2_rapid_reset);
  metrics.shard(0).limit_hit(LimitHit::connections_per_client);
  metrics.shard(0).limit_hit(static_cast<LimitHit>(kLimitHitCount));  // ignored
  Exposition after = scrape(metrics);
  EXPECT_EQ(after.value("tokgate_limit_hits_total", {{"limit", "request-header-timeout"}}), 2);
  EXPECT_EQ(after.value("tokgate_limit_hits_total", {{"limit", "h2-rapid-reset"}}), 1);
  EXPECT_EQ(after.value("tokgate_limit_hits_total", {{"limit", "connections-per-client"}}), 1);
  EXPECT_EQ(after.value("tokgate_limit_hits_total", {{"limit", "websocket-frame-size"}}), 0);
  EXPECT_EQ(after.count_samples("tokgate_limit_hits_total"), kLimitHitCount);
}

TEST(Metrics, SinkAndPolicyCounters) {
  Metrics metrics(1, "t");
  metrics.flow_log_records(5);
  metrics.flow_log_records(2);
  metrics.flow_log_dropped(3);
  metrics.flow_log_write_errors(1);
  metrics.captures(4);
  metrics.captures_dropped(6);
  metrics.policy_loaded(
      std::chrono::system_clock::time_point(std::chrono::milliseconds(1'000'500)));
  EXPECT_EQ(scrape(metrics).value("tokgate_policy_loaded_timestamp_seconds"), 1000.5);
  metrics.policy_reload_failed();
  metrics.policy_reload_succeeded(
      std::chrono::system_clock::time_point(std::chrono::seconds(1'764'596'744)));
  Exposition exposition = scrape(metrics);
  EXPECT_EQ(exposition.value("tokgate_flow_log_records_total"), 7);
  EXPECT_EQ(exposition.value("tokgate_flow_log_dropped_total"), 3);
  EXPECT_EQ(exposition.value("tokgate_flow_log_write_errors_total"), 1);
  EXPECT_EQ(exposition.value("tokgate_captures_total"), 4);
  EXPECT_EQ(exposition.value("tokgate_captures_dropped_total"), 6);
  EXPECT_EQ(exposition.value("tokgate_policy_reloads_total", {{"result", "ok"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_policy_reloads_total", {{"result", "error"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_policy_loaded_timestamp_seconds"), 1764596744);
  EXPECT_EQ(exposition.value("tokgate_workers"), 0);
}

TEST(Metrics, HistogramBucketsAreCumulativeWithCountAndSum) {
  Metrics metrics(2, "t");
  MetricsShard& first = metrics.shard(0);
  for (double seconds : {0.0, 0.0005, 0.0007, 0.3, 30.0, 31.0, -1.0}) {
    first.observe(Histogram::upstream_connect, seconds);
  }
  first.observe(Histogram::upstream_connect, std::nan(""));  // ignored
  first.observe(Histogram::upstream_connect, INFINITY);      // ignored
  metrics.shard(1).observe(Histogram::upstream_connect, 2.0);
  metrics.shard(1).observe(Histogram::upstream_connect, std::chrono::milliseconds(150));
  metrics.shard(1).observe(Histogram::request_total, 0.02);

  Exposition exposition = scrape(metrics);
  // le is inclusive: 0.0005 lands in le="0.0005"; -1 counts as 0.
  const std::map<std::string, double> kExpected{
      {"0.0005", 3}, {"0.001", 4}, {"0.0025", 4}, {"0.005", 4}, {"0.01", 4}, {"0.025", 4},
      {"0.05", 4},   {"0.1", 4},   {"0.25", 5},   {"0.5", 6},   {"1", 6},    {"2.5", 7},
      {"5", 7},      {"10", 7},    {"30", 8},     {"+Inf", 9},
  };
  ASSERT_EQ(exposition.count_samples("tokgate_upstream_connect_seconds_bucket"), kExpected.size());
  for (const auto& [le, count] : kExpected) {
    EXPECT_EQ(exposition.value("tokgate_upstream_connect_seconds_bucket", {{"le", le}}), count)
        << "le=" << le;
  }
  EXPECT_EQ(exposition.value("tokgate_upstream_connect_seconds_count"), 9);
  EXPECT_NEAR(exposition.value("tokgate_upstream_connect_seconds_sum"),
              0.0005 + 0.0007 + 0.3 + 30 + 31 + 2 + 0.15, 1e-9);

  EXPECT_EQ(exposition.value("tokgate_request_duration_seconds_bucket",
                             {{"stage", "total"}, {"le", "0.01"}}),
            0);
  EXPECT_EQ(exposition.value("tokgate_request_duration_seconds_bucket",
                             {{"stage", "total"}, {"le", "0.025"}}),
            1);
  EXPECT_EQ(exposition.value("tokgate_request_duration_seconds_count", {{"stage", "total"}}), 1);
  EXPECT_EQ(exposition.value("tokgate_request_duration_seconds_count", {{"stage", "first_byte"}}),
            0);
  EXPECT_EQ(exposition.value("tokgate_upstream_tls_handshake_seconds_count"), 0);
}

TEST(Metrics, LabelValuesAreEscaped) {
  EXPECT_EQ(escape_label_value("plain-1.0"), "plain-1.0");
  EXPECT_EQ(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");

  const std::string version = "1.0 \"beta\"\\x\nnext";
  Metrics metrics(1, version);
  std::string text = metrics.render_prometheus();
  EXPECT_NE(text.find("tokgate_build_info{version=\"1.0 \\\"beta\\\"\\\\x\\nnext\"} 1\n"),
            std::string::npos)
      << text;
  Exposition exposition = scrape(metrics);
  EXPECT_EQ(exposition.value("tokgate_build_info", {{"version", version}}), 1);
}

TEST(Metrics, VersionIsBounded) {
  Metrics metrics(1, std::string(10'000, 'v'));
  Exposition exposition = scrape(metrics);
  EXPECT_EQ(exposition.value("tokgate_build_info",
                             {{"version", std::string(Metrics::kMaxVersionBytes, 'v')}}),
            1);
}

TEST(Metrics, ShardCountAndIndexAreChecked) {
  EXPECT_THROW(Metrics(0, "t"), std::invalid_argument);
  EXPECT_THROW(Metrics(Metrics::kMaxShards + 1, "t"), std::invalid_argument);
  Metrics metrics(2, "t");
  EXPECT_EQ(metrics.shard_count(), 2u);
  EXPECT_THROW(metrics.shard(2), std::out_of_range);
  // Stable, distinct and on their own cache lines.
  MetricsShard* first = &metrics.shard(0);
  MetricsShard* second = &metrics.shard(1);
  EXPECT_EQ(first, &metrics.shard(0));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(second) % 64, 0u);
  EXPECT_GE(reinterpret_cast<uintptr_t>(second) - reinterpret_cast<uintptr_t>(first), 64u);
}

// One writer thread per shard, as the workers do, while another thread scrapes. The totals
// must add up exactly, and every scrape along the way must parse with counters never going
// backwards.
TEST(Metrics, CountsFromSeveralThreadsAddUpExactly) {
  constexpr std::size_t kThreads = 4;
  constexpr unsigned kIterations = 20'000;
  constexpr unsigned kStatuses[] = {0, 101, 200, 302, 404, 503};
  Metrics metrics(kThreads, "t");

  // What iteration i of any thread records.
  auto category_of = [](unsigned i) { return static_cast<Category>(i % policy::kCategoryCount); };
  auto action_of = [](unsigned i) { return static_cast<Action>((i / 7) % kActionCount); };
  auto status_of = [&](unsigned i) { return kStatuses[(i / 3) % std::size(kStatuses)]; };
  auto outcome_of_iteration = [](unsigned i) {
    return static_cast<ConnectionOutcome>(i % kConnectionOutcomeCount);
  };

  std::atomic<bool> writers_done{false};
  std::vector<std::string> scrape_errors;
  std::size_t scrapes = 0;
  std::thread scraper([&] {
    double last_requests = 0;
    double last_connect_count = 0;
    while (!writers_done.load()) {
      auto parsed = parse_exposition(metrics.render_prometheus());
      ++scrapes;
      if (!parsed) {
        scrape_errors.push_back(parsed.error());
        continue;
      }
      double requests = 0;
      for (const Sample& sample : parsed->samples) {
        if (sample.name == "tokgate_requests_total") requests += sample.value;
      }
      double connect_count = parsed->value("tokgate_upstream_connect_seconds_count");
      if (requests < last_requests) scrape_errors.push_back("requests went backwards");
      if (connect_count < last_connect_count) scrape_errors.push_back("count went backwards");
      last_requests = requests;
      last_connect_count = connect_count;
    }
  });

  std::vector<std::thread> writers;
  for (std::size_t t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      MetricsShard& shard = metrics.shard(t);
      for (unsigned i = 0; i < kIterations; ++i) {
        shard.connection_opened();
        shard.request(category_of(i), action_of(i), status_of(i), i % 7, i % 13, i % 2 == 0);
        shard.observe(Histogram::upstream_connect, static_cast<double>(i % 50) / 1000.0);
        if (i % 10 == 0)
          shard.client_handshake_failed(ClientHandshakeFailure::rejected_certificate);
        if (i % 100 != 0) shard.connection_closed(outcome_of_iteration(i));  // 1% stay open
      }
    });
  }
  for (std::thread& writer : writers) writer.join();
  writers_done.store(true);
  scraper.join();
  EXPECT_TRUE(scrape_errors.empty()) << scrape_errors.front();
  EXPECT_GT(scrapes, 0u);

  // The expected totals, computed independently of the metrics code.
  std::map<std::string, double> requests;
  std::map<ConnectionOutcome, double> closed;
  double up_bumped = 0, up_plain = 0, down_bumped = 0, down_plain = 0, still_open = 0;
  double connect_sum = 0;
  for (unsigned i = 0; i < kIterations; ++i) {
    requests[series_key(
        "tokgate_requests_total",
        {{"category", std::string(policy::to_string(category_of(i)))},
         {"action", std::string(policy::to_string(action_of(i)))},
         {"status_class", std::string(to_string(status_class_of(status_of(i))))}})] += kThreads;
    (i % 2 == 0 ? up_bumped : up_plain) += (i % 7) * kThreads;
    (i % 2 == 0 ? down_bumped : down_plain) += (i % 13) * kThreads;
    connect_sum += static_cast<double>(i % 50) / 1000.0 * kThreads;
    if (i % 100 != 0) {
      closed[outcome_of_iteration(i)] += kThreads;
    } else {
      still_open += kThreads;
    }
  }

  Exposition exposition = scrape(metrics);
  std::size_t request_series = 0;
  for (const Sample& sample : exposition.samples) {
    if (sample.name != "tokgate_requests_total") continue;
    ++request_series;
    auto expected = requests.find(series_key(sample.name, sample.labels));
    ASSERT_NE(expected, requests.end()) << series_key(sample.name, sample.labels);
    EXPECT_EQ(sample.value, expected->second) << expected->first;
  }
  EXPECT_EQ(request_series, requests.size());
  EXPECT_EQ(exposition.value("tokgate_bytes_total", {{"direction", "up"}, {"bumped", "true"}}),
            up_bumped);
  EXPECT_EQ(exposition.value("tokgate_bytes_total", {{"direction", "up"}, {"bumped", "false"}}),
            up_plain);
  EXPECT_EQ(exposition.value("tokgate_bytes_total", {{"direction", "down"}, {"bumped", "true"}}),
            down_bumped);
  EXPECT_EQ(exposition.value("tokgate_bytes_total", {{"direction", "down"}, {"bumped", "false"}}),
            down_plain);
  EXPECT_EQ(exposition.value("tokgate_connections_open"), still_open);
  for (const auto& [outcome, count] : closed) {
    EXPECT_EQ(exposition.value("tokgate_connections_total",
                               {{"verdict", std::string(to_string(outcome))}}),
              count);
  }
  EXPECT_EQ(exposition.value("tokgate_handshake_failures_total",
                             {{"side", "client"}, {"reason", "rejected-certificate"}}),
            kThreads * kIterations / 10);
  EXPECT_EQ(exposition.value("tokgate_upstream_connect_seconds_count"), kThreads * kIterations);
  EXPECT_NEAR(exposition.value("tokgate_upstream_connect_seconds_sum"), connect_sum, 1e-6);
  // i % 50 ms <= 1 ms for i % 50 in {0, 1}: 2 of every 50 observations.
  EXPECT_EQ(exposition.value("tokgate_upstream_connect_seconds_bucket", {{"le", "0.001"}}),
            kThreads * kIterations * 2 / 50);
}

}  // namespace
}  // namespace tokgate::proxy
