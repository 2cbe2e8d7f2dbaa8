#include "proxy/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <random>
#include <string>

namespace tokgate::proxy {
namespace {

using namespace std::chrono_literals;

Config parse_ok(std::string_view text) {
  auto config = parse_config(text, "t.toml");
  EXPECT_TRUE(config) << (config ? "" : config.error());
  return config.value_or(Config{});
}

std::string parse_error(std::string_view text) {
  auto config = parse_config(text, "t.toml");
  EXPECT_FALSE(config) << text;
  return config ? "" : config.error();
}

std::vector<std::string> to_strings(const std::vector<Endpoint>& endpoints) {
  std::vector<std::string> out;
  for (const auto& e : endpoints) out.push_back(e.to_string());
  return out;
}

void expect_defaults(const Config& c) {
  Config d;
  EXPECT_EQ(to_strings(c.listen), std::vector<std::string>{"127.0.0.1:8080"});
  EXPECT_EQ(c.admin.to_string(), "127.0.0.1:8081");
  EXPECT_EQ(c.workers, 0u);
  ASSERT_EQ(c.allowed_clients.size(), 2u);
  EXPECT_EQ(c.allowed_clients[0].to_string(), "127.0.0.0/8");
  EXPECT_EQ(c.allowed_clients[1].to_string(), "::1/128");
  ASSERT_EQ(c.connect_ports.size(), 1u);
  EXPECT_EQ(c.connect_ports[0].first, 443);
  EXPECT_EQ(c.connect_ports[0].last, 443);
  EXPECT_TRUE(c.ca_dir.empty());
  EXPECT_TRUE(c.ca_cert.empty());
  EXPECT_TRUE(c.ca_key.empty());
  EXPECT_TRUE(c.system_trust);
  EXPECT_TRUE(c.extra_ca_files.empty());
  EXPECT_TRUE(c.resolve.empty());
  EXPECT_TRUE(c.refuse_hosts.empty());
  EXPECT_EQ(c.timeouts.client_hello, 10s);
  EXPECT_EQ(c.timeouts.tls_handshake, 10s);
  EXPECT_EQ(c.timeouts.request_header, 30s);
  EXPECT_EQ(c.timeouts.idle, 5min);
  EXPECT_EQ(c.timeouts.connect, 10s);
  EXPECT_EQ(c.timeouts.response_header, 60s);
  EXPECT_EQ(c.timeouts.io_stall, 2min);
  EXPECT_EQ(c.timeouts.drain, 30s);
  EXPECT_EQ(c.limits.client_hello_bytes, 64u * 1024);
  EXPECT_EQ(c.limits.request_header_bytes, 64u * 1024);
  EXPECT_EQ(c.limits.response_header_bytes, 64u * 1024);
  EXPECT_EQ(c.limits.relay_buffer_bytes, 64u * 1024);
  EXPECT_EQ(c.limits.max_connections, 10'000u);
  EXPECT_EQ(c.limits.leaf_cache_entries, 10'000u);
  EXPECT_EQ(c.timeouts.proxy_header, 5s);
  EXPECT_EQ(c.limits.request_line_bytes, 32u * 1024);
  EXPECT_EQ(c.limits.request_header_fields, 100u);
  EXPECT_EQ(c.limits.max_connections_per_client, 256u);
  EXPECT_EQ(c.limits.websocket_frame_bytes, 16u * 1024 * 1024);
  EXPECT_EQ(c.limits.h2_max_concurrent_streams, 128u);
  EXPECT_EQ(c.limits.h2_max_continuations, 8u);
  EXPECT_EQ(c.limits.h2_max_pending_acks, 1000u);
  EXPECT_EQ(c.limits.h2_reset_burst, 1000u);
  EXPECT_EQ(c.limits.h2_reset_rate, 33u);
  EXPECT_TRUE(c.user.empty());
  // The struct's own defaults say the same.
  EXPECT_EQ(c.limits.max_connections, d.limits.max_connections);
  EXPECT_EQ(c.timeouts.idle, d.timeouts.idle);
  EXPECT_EQ(c.timeouts.proxy_header, d.timeouts.proxy_header);
  EXPECT_EQ(c.limits.request_line_bytes, d.limits.request_line_bytes);
  EXPECT_EQ(c.limits.request_header_fields, d.limits.request_header_fields);
  EXPECT_EQ(c.limits.max_connections_per_client, d.limits.max_connections_per_client);
  EXPECT_EQ(c.limits.websocket_frame_bytes, d.limits.websocket_frame_bytes);
  EXPECT_EQ(c.limits.h2_max_concurrent_streams, d.limits.h2_max_concurrent_streams);
  EXPECT_EQ(c.limits.h2_max_continuations, d.limits.h2_max_continuations);
  EXPECT_EQ(c.limits.h2_max_pending_acks, d.limits.h2_max_pending_acks);
  EXPECT_EQ(c.limits.h2_reset_burst, d.limits.h2_reset_burst);
  EXPECT_EQ(c.limits.h2_reset_rate, d.limits.h2_reset_rate);
}

TEST(Config, EmptyTextGivesDefaults) {
  auto c = parse_ok("");
  expect_defaults(c);
  EXPECT_TRUE(c.intercept_hosts.empty());
  EXPECT_TRUE(c.source.empty());
  expect_defaults(parse_ok("# only a comment\n\n[proxy]\n[limits]\n"));
}

TEST(Config, EmbeddedDefaultParsesAndMatchesStructDefaults) {
  auto config = parse_config(embedded_default_config(), "<embedded>");
  ASSERT_TRUE(config) << config.error();
  expect_defaults(*config);
  // The policy decides what is decrypted; the override lists ship empty.
  EXPECT_TRUE(config->intercept_hosts.empty());
  EXPECT_TRUE(config->refuse_hosts.empty());
  EXPECT_EQ(config->policy_profile, "gateway");
  EXPECT_TRUE(config->policy_watch);
}

TEST(Config, PolicySection) {
  auto c = parse_ok(R"(
[policy]
profile = "observe"
file = "policy.toml"
catalog_dir = "catalog"
watch = false
)");
  EXPECT_EQ(c.policy_profile, "observe");
  EXPECT_EQ(c.policy_file, "policy.toml");
  EXPECT_EQ(c.catalog_dir, "catalog");
  EXPECT_FALSE(c.policy_watch);
  auto bad = parse_config("[policy]\nprofile = \"strict\"\nwatch = 1\n", "t.toml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().find("t.toml:2:11: "), std::string::npos) << bad.error();
  EXPECT_NE(bad.error().find("unknown profile"), std::string::npos) << bad.error();
  EXPECT_NE(bad.error().find("t.toml:3:9: "), std::string::npos) << bad.error();
}

TEST(Config, EvidenceSections) {
  auto defaults = parse_ok("");
  EXPECT_TRUE(defaults.flow_log.empty());
  EXPECT_EQ(defaults.flow_log_format, "json");
  EXPECT_EQ(defaults.query_privacy, QueryPrivacy::redact);
  EXPECT_FALSE(defaults.pseudonymise_clients);
  EXPECT_EQ(defaults.capture_body_bytes, 1024u * 1024u);
  EXPECT_TRUE(defaults.keylog_file.empty());
  EXPECT_TRUE(defaults.geoip_country_db.empty());

  auto c = parse_ok(R"(
[flow_log]
path = "-"
format = "squid"
queue = 1000

[privacy]
query = "omit"
client = "pseudonymise"
client_key_file = "/srv/key"
redact_headers = ["X-Secret-Token"]

[capture]
dir = "/srv/captures"
body_bytes = "64KiB"
keylog = "/srv/keys.log"

[geoip]
country_db = "/srv/country.mmdb"
asn_db = "/srv/asn.mmdb"
)");
  EXPECT_EQ(c.flow_log, "-");
  EXPECT_EQ(c.flow_log_format, "squid");
  EXPECT_EQ(c.flow_log_queue, 1000u);
  EXPECT_EQ(c.query_privacy, QueryPrivacy::omit);
  EXPECT_TRUE(c.pseudonymise_clients);
  EXPECT_EQ(c.client_key_file, "/srv/key");
  EXPECT_EQ(c.redact_headers, std::vector<std::string>{"x-secret-token"});
  EXPECT_EQ(c.capture_dir, "/srv/captures");
  EXPECT_EQ(c.capture_body_bytes, 64u * 1024u);
  EXPECT_EQ(c.keylog_file, "/srv/keys.log");
  EXPECT_EQ(c.geoip_country_db, "/srv/country.mmdb");
  EXPECT_EQ(c.geoip_asn_db, "/srv/asn.mmdb");

  auto bad = parse_config(
      "[flow_log]\nformat = \"xml\"\nqueue = 1\n[privacy]\nquery = \"hide\"\n"
      "client = \"anon\"\nredact_headers = [\"a b\"]\n[capture]\nbody_bytes = \"lots\"\n",
      "t.toml");
  ASSERT_FALSE(bad);
  for (auto expected : {"t.toml:2:10: flow_log.format: unknown format 'xml' (json or squid)",
                        "t.toml:3:9: ", "t.toml:5:9: privacy.query: unknown query privacy 'hide'",
                        "t.toml:6:10: privacy.client: unknown client privacy 'anon'",
                        "t.toml:7:19: ", "bad header name 'a b'", "t.toml:9:14: "}) {
    EXPECT_NE(bad.error().find(expected), std::string::npos) << expected << "\n" << bad.error();
  }
}

TEST(Config, EveryKeySet) {
  auto c = parse_ok(R"(
[proxy]
listen = ["0.0.0.0:3128", "[::]:3128"]
admin = "[::1]:9000"
workers = 4
allowed_clients = ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]
connect_ports = [443, "8000-8999", "8443"]

[ca]
dir = "/srv/tokgate/ca"
cert = "/etc/tokgate/ca.crt"
key = "/etc/tokgate/ca.key"

[upstream]
system_trust = false
extra_ca = ["/etc/ssl/corp.pem", "relative.pem"]
resolve = ["*.tiktokv.com:443:127.0.0.1", "example.org:*:[::1],127.0.0.2"]

[intercept]
hosts = ["*.TikTok.com", ".tiktokv.com.", "exact.example"]
refuse = ["*"]

[timeouts]
client_hello = "250ms"
tls_handshake = "5s"
request_header = "1m"
idle = "1h"
connect = "3s"
response_header = "90s"
io_stall = "10m"
drain = "24h"

[limits]
client_hello = "16KiB"
request_header = "1MiB"
response_header = 131072
relay_buffer = "512B"
max_connections = 50000
leaf_cache = 1
)");
  EXPECT_EQ(to_strings(c.listen), (std::vector<std::string>{"0.0.0.0:3128", "[::]:3128"}));
  EXPECT_EQ(c.admin.to_string(), "[::1]:9000");
  EXPECT_EQ(c.workers, 4u);
  ASSERT_EQ(c.allowed_clients.size(), 3u);
  EXPECT_EQ(c.allowed_clients[2].to_string(), "fd00::/8");
  ASSERT_EQ(c.connect_ports.size(), 3u);
  EXPECT_EQ(c.connect_ports[1].first, 8000);
  EXPECT_EQ(c.connect_ports[1].last, 8999);
  EXPECT_TRUE(c.connect_ports[1].contains(8500));
  EXPECT_FALSE(c.connect_ports[1].contains(9000));
  EXPECT_EQ(c.connect_ports[2].first, 8443);
  EXPECT_EQ(c.connect_ports[2].last, 8443);
  EXPECT_EQ(c.ca_dir, "/srv/tokgate/ca");
  EXPECT_EQ(c.ca_cert, "/etc/tokgate/ca.crt");
  EXPECT_EQ(c.ca_key, "/etc/tokgate/ca.key");
  EXPECT_FALSE(c.system_trust);
  ASSERT_EQ(c.extra_ca_files.size(), 2u);
  EXPECT_EQ(c.extra_ca_files[1], "relative.pem") << "parse_config leaves relative paths alone";
  ASSERT_EQ(c.resolve.size(), 2u);
  EXPECT_EQ(c.resolve[0].host_pattern, "*.tiktokv.com");
  EXPECT_EQ(c.resolve[1].addresses.size(), 2u);
  EXPECT_EQ(c.intercept_hosts,
            (std::vector<std::string>{"*.tiktok.com", ".tiktokv.com", "exact.example"}));
  EXPECT_EQ(c.refuse_hosts, std::vector<std::string>{"*"});
  EXPECT_EQ(c.timeouts.client_hello, 250ms);
  EXPECT_EQ(c.timeouts.tls_handshake, 5s);
  EXPECT_EQ(c.timeouts.request_header, 1min);
  EXPECT_EQ(c.timeouts.idle, 1h);
  EXPECT_EQ(c.timeouts.connect, 3s);
  EXPECT_EQ(c.timeouts.response_header, 90s);
  EXPECT_EQ(c.timeouts.io_stall, 10min);
  EXPECT_EQ(c.timeouts.drain, 24h);
  EXPECT_EQ(c.limits.client_hello_bytes, 16u * 1024);
  EXPECT_EQ(c.limits.request_header_bytes, 1024u * 1024);
  EXPECT_EQ(c.limits.response_header_bytes, 131072u);
  EXPECT_EQ(c.limits.relay_buffer_bytes, 512u);
  EXPECT_EQ(c.limits.max_connections, 50'000u);
  EXPECT_EQ(c.limits.leaf_cache_entries, 1u);
}

// Issue 9: every limit has a key; the new ones, each set to something other than its default.
TEST(Config, LimitKeys) {
  auto c = parse_ok(R"(
[proxy]
user = "tokgate"

[timeouts]
proxy_header = "750ms"

[limits]
request_line = "2KiB"
request_header_fields = 20
max_connections_per_client = 3
websocket_frame = "125B"
h2_max_concurrent_streams = 4
h2_max_continuations = 0
h2_max_pending_acks = 10
h2_reset_burst = 5
h2_reset_rate = 1
)");
  EXPECT_EQ(c.user, "tokgate");
  EXPECT_EQ(c.timeouts.proxy_header, 750ms);
  EXPECT_EQ(c.limits.request_line_bytes, 2048u);
  EXPECT_EQ(c.limits.request_header_fields, 20u);
  EXPECT_EQ(c.limits.max_connections_per_client, 3u);
  EXPECT_EQ(c.limits.websocket_frame_bytes, 125u);
  EXPECT_EQ(c.limits.h2_max_concurrent_streams, 4u);
  EXPECT_EQ(c.limits.h2_max_continuations, 0u);
  EXPECT_EQ(c.limits.h2_max_pending_acks, 10u);
  EXPECT_EQ(c.limits.h2_reset_burst, 5u);
  EXPECT_EQ(c.limits.h2_reset_rate, 1u);
  // The upper ends of the ranges are accepted too.
  auto high = parse_ok(
      "[limits]\nrequest_line = \"1GiB\"\nrequest_header_fields = 100000\n"
      "websocket_frame = \"1GiB\"\nh2_max_concurrent_streams = 65535\n"
      "h2_max_continuations = 1024\nh2_max_pending_acks = 1000000\n"
      "max_connections_per_client = 10000000\n[timeouts]\nproxy_header = \"24h\"\n");
  EXPECT_EQ(high.limits.h2_max_concurrent_streams, 65535u);
  EXPECT_EQ(high.limits.max_connections_per_client, 10'000'000u);
  EXPECT_EQ(high.timeouts.proxy_header, 24h);
}

TEST(Config, BadLimitValuesReportTheirPosition) {
  auto error = parse_error(R"([limits]
request_line = "100B"
request_header_fields = 0
max_connections_per_client = -5
websocket_frame = "124B"
h2_max_concurrent_streams = 65536
h2_max_continuations = 1025
h2_max_pending_acks = 0
h2_reset_burst = "many"
h2_reset_rate = 0
[timeouts]
proxy_header = "0ms"
[proxy]
user = "-root"
)");
  EXPECT_EQ(error,
            "t.toml:2:16: limits.request_line: size '100B' is out of range (256B..1GiB)\n"
            "t.toml:3:25: limits.request_header_fields: 0 is out of range (1..100000)\n"
            "t.toml:4:30: limits.max_connections_per_client: -5 is out of range (1..10000000)\n"
            "t.toml:5:19: limits.websocket_frame: size '124B' is out of range (125B..1GiB)\n"
            "t.toml:6:29: limits.h2_max_concurrent_streams: 65536 is out of range (1..65535)\n"
            "t.toml:7:24: limits.h2_max_continuations: 1025 is out of range (0..1024)\n"
            "t.toml:8:23: limits.h2_max_pending_acks: 0 is out of range (1..1000000)\n"
            "t.toml:9:18: limits.h2_reset_burst: expected an integer, got string\n"
            "t.toml:10:17: limits.h2_reset_rate: 0 is out of range (1..1000000)\n"
            "t.toml:12:16: timeouts.proxy_header: duration must be greater than zero\n"
            "t.toml:14:8: proxy.user: bad user name '-root' (1 to 32 letters, digits, '.', '_' "
            "or '-', not starting with '-')");
  EXPECT_EQ(parse_error("[proxy]\nuser = \"\"\n").rfind("t.toml:2:8: proxy.user: bad user name", 0),
            0u);
  EXPECT_EQ(parse_error("[proxy]\nuser = 0\n"),
            "t.toml:2:8: proxy.user: expected a string, got integer");
  EXPECT_EQ(parse_error("[proxy]\nuser = \"a b\"\n").rfind("t.toml:2:8: proxy.user: ", 0), 0u);
  EXPECT_EQ(parse_error("[limits]\nwebsocket_frames = \"1MiB\"\n"),
            "t.toml:2:1: unknown key 'websocket_frames' in [limits]");
}

TEST(Config, UserNames) {
  for (std::string_view good : {"nobody", "tokgate", "_tokgate", "www-data", "a.b_c-1", "A",
                                "abcdefghijklmnopqrstuvwxyz012345"}) {
    EXPECT_TRUE(is_valid_user_name(good)) << good;
  }
  for (std::string_view bad :
       {"", "-x", "a b", "a:b", "a/b", "root\n", "\xc3\xa9", "abcdefghijklmnopqrstuvwxyz0123456"}) {
    EXPECT_FALSE(is_valid_user_name(bad)) << bad;
  }
}

TEST(Config, DottedKeysAndInlineTablesAreTheSame) {
  auto c = parse_ok("proxy.workers = 2\ntimeouts = { idle = \"7s\" }\n");
  EXPECT_EQ(c.workers, 2u);
  EXPECT_EQ(c.timeouts.idle, 7s);
}

TEST(Config, UnknownKeyIsAnErrorWithItsPosition) {
  EXPECT_EQ(parse_error("[proxy]\nworkers = 1\n\nlistne = [\"127.0.0.1:8080\"]\n"),
            "t.toml:4:1: unknown key 'listne' in [proxy]");
  EXPECT_EQ(parse_error("[limits]\n  relay_buffers = \"1MiB\"\n"),
            "t.toml:2:3: unknown key 'relay_buffers' in [limits]");
  EXPECT_EQ(parse_error("[proxy.extra]\n"), "t.toml:1:8: unknown key 'extra' in [proxy]");
}

TEST(Config, UnknownSectionIsAnError) {
  EXPECT_EQ(parse_error("[proxy]\n[intercpet]\nhosts = []\n"),
            "t.toml:2:2: unknown section 'intercpet'");
  EXPECT_EQ(parse_error("workers = 4\n"), "t.toml:1:1: unknown section 'workers'");
}

TEST(Config, SectionMustBeATable) {
  EXPECT_EQ(parse_error("proxy = 1\n"),
            "t.toml:1:9: proxy: expected a table ([proxy]), got integer");
  EXPECT_EQ(parse_error("[[limits]]\n"),
            "t.toml:1:1: limits: expected a table ([limits]), got array");
}

TEST(Config, WrongTypesAreErrors) {
  EXPECT_EQ(parse_error("[proxy]\nworkers = \"4\"\n"),
            "t.toml:2:11: proxy.workers: expected an integer, got string");
  EXPECT_EQ(parse_error("[proxy]\nlisten = \"127.0.0.1:8080\"\n"),
            "t.toml:2:10: proxy.listen: expected an array, got string");
  EXPECT_EQ(parse_error("[proxy]\nlisten = [\"127.0.0.1:1\", 8080]\n"),
            "t.toml:2:26: proxy.listen[1]: expected a string, got integer");
  EXPECT_EQ(parse_error("[upstream]\nsystem_trust = \"yes\"\n"),
            "t.toml:2:16: upstream.system_trust: expected true or false, got string");
  EXPECT_EQ(parse_error("[timeouts]\nidle = 300\n"),
            "t.toml:2:8: timeouts.idle: expected a string, got integer");
  EXPECT_EQ(parse_error("[limits]\nrelay_buffer = 1.5\n"),
            "t.toml:2:16: limits.relay_buffer: expected a size such as \"64KiB\", got float");
  EXPECT_EQ(parse_error("[ca]\ndir = 1979-05-27\n"),
            "t.toml:2:7: ca.dir: expected a string, got date");
  EXPECT_EQ(parse_error("[intercept]\nhosts = [[\"a.com\"]]\n"),
            "t.toml:2:10: intercept.hosts[0]: expected a string, got array");
}

TEST(Config, BadValuesReportTheirPosition) {
  EXPECT_EQ(parse_error("[proxy]\nallowed_clients = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n"),
            "t.toml:2:34: proxy.allowed_clients[1]: bad CIDR '10.0.0.0/33'");
  EXPECT_EQ(parse_error("[proxy]\nadmin = \"localhost:8081\"\n"),
            "t.toml:2:9: proxy.admin: bad address 'localhost:8081' (expected ADDR:PORT)");
  EXPECT_EQ(parse_error("[intercept]\nhosts = [\"*tiktok.com\"]\n"),
            "t.toml:2:10: intercept.hosts[0]: bad host pattern '*tiktok.com': '*' must be the "
            "whole pattern or its whole first label (\"*.example.com\")");
}

TEST(Config, ReportsEveryErrorSortedByPosition) {
  auto error = parse_error(R"([timeouts]
idle = "0s"
[proxy]
workers = -1
listne = []
[limits]
client_hello = "2MiB"
[bogus]
)");
  EXPECT_EQ(error,
            "t.toml:2:8: timeouts.idle: duration must be greater than zero\n"
            "t.toml:4:11: proxy.workers: -1 is out of range (0..1024)\n"
            "t.toml:5:1: unknown key 'listne' in [proxy]\n"
            "t.toml:7:16: limits.client_hello: size '2MiB' is out of range (1KiB..1MiB)\n"
            "t.toml:8:2: unknown section 'bogus'");
}

TEST(Config, SyntaxErrorsHaveAPosition) {
  auto error = parse_error("[proxy]\nworkers = \n");
  EXPECT_EQ(error.rfind("t.toml:2:", 0), 0u) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;

  error = parse_error("[proxy]\nworkers = 1\nworkers = 2\n");
  EXPECT_EQ(error.rfind("t.toml:3:", 0), 0u) << error;

  error = parse_error("a = \"\xff\"\n");
  EXPECT_EQ(error.rfind("t.toml:1:", 0), 0u) << error;
}

bool is_one_clean_line(std::string_view text) {
  return std::none_of(text.begin(), text.end(),
                      [](char c) { return static_cast<unsigned char>(c) < 0x20; });
}

TEST(Config, SyntaxErrorsAreEscaped) {
  auto error = parse_error("a = \"x\x01\"\n");
  EXPECT_EQ(error.rfind("t.toml:1:", 0), 0u) << error;
  EXPECT_TRUE(is_one_clean_line(error)) << error;
}

// Random byte flips in the shipped default: never a crash, every error well-formed.
TEST(Config, SurvivesMutatedInput) {
  const std::string original(embedded_default_config());
  std::mt19937 random(12345);
  std::uniform_int_distribution<std::size_t> position(0, original.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  int accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string text = original;
    for (int flips = 1 + round % 4; flips > 0; --flips) {
      text[position(random)] = static_cast<char>(byte(random));
    }
    auto config = parse_config(text, "t.toml");
    if (config) {
      ++accepted;
      continue;
    }
    std::string_view rest = config.error();
    while (!rest.empty()) {
      auto line = rest.substr(0, rest.find('\n'));
      EXPECT_EQ(line.rfind("t.toml:", 0), 0u) << line;
      EXPECT_TRUE(is_one_clean_line(line)) << line;
      rest.remove_prefix(std::min(rest.size(), line.size() + 1));
    }
  }
  EXPECT_GT(accepted, 0);  // flips inside comments are harmless
}

TEST(Config, Durations) {
  auto duration = [](std::string_view value) -> std::optional<std::chrono::milliseconds> {
    auto c = parse_config("[timeouts]\nidle = \"" + std::string(value) + "\"\n", "t.toml");
    if (!c) return std::nullopt;
    return c->timeouts.idle;
  };
  EXPECT_EQ(duration("1ms"), 1ms);
  EXPECT_EQ(duration("250ms"), 250ms);
  EXPECT_EQ(duration("10s"), 10s);
  EXPECT_EQ(duration("5m"), 5min);
  EXPECT_EQ(duration("1h"), 1h);
  EXPECT_EQ(duration("24h"), 24h);
  EXPECT_EQ(duration("1440m"), 24h);
  EXPECT_EQ(duration("86400000ms"), 24h);
  EXPECT_EQ(duration("0010s"), 10s);
  for (std::string_view bad : {"0s",
                               "0ms",
                               "86400001ms",
                               "25h",
                               "1441m",
                               "10",
                               "s",
                               "",
                               "1.5s",
                               "-1s",
                               "+1s",
                               "10 s",
                               " 10s",
                               "10s ",
                               "10S",
                               "10sec",
                               "1d",
                               "1h30m",
                               "99999999999999999999s",
                               "18446744073709551615h",
                               "5124095576030432h"}) {
    EXPECT_FALSE(duration(bad)) << "'" << bad << "'";
  }
  EXPECT_EQ(parse_error("[timeouts]\ndrain = \"10\"\n"),
            "t.toml:2:9: timeouts.drain: bad duration '10': missing unit (ms, s, m or h)");
  EXPECT_EQ(parse_error("[timeouts]\ndrain = \"25h\"\n"),
            "t.toml:2:9: timeouts.drain: duration '25h' is longer than 24h");
  EXPECT_EQ(parse_error("[timeouts]\ndrain = \"1d\"\n"),
            "t.toml:2:9: timeouts.drain: bad duration '1d': unknown unit 'd' (use ms, s, m or h)");
}

TEST(Config, Sizes) {
  auto size = [](std::string_view key, std::string_view value) -> std::optional<std::size_t> {
    auto c =
        parse_config("[limits]\n" + std::string(key) + " = " + std::string(value) + "\n", "t.toml");
    if (!c) return std::nullopt;
    if (key == "client_hello") return c->limits.client_hello_bytes;
    if (key == "request_header") return c->limits.request_header_bytes;
    return c->limits.relay_buffer_bytes;
  };
  EXPECT_EQ(size("relay_buffer", "\"512B\""), 512u);
  EXPECT_EQ(size("relay_buffer", "\"4096\""), 4096u);
  EXPECT_EQ(size("relay_buffer", "4096"), 4096u);
  EXPECT_EQ(size("relay_buffer", "\"64KiB\""), 65536u);
  EXPECT_EQ(size("relay_buffer", "\"64KB\""), 64000u);
  EXPECT_EQ(size("relay_buffer", "\"2MB\""), 2'000'000u);
  EXPECT_EQ(size("relay_buffer", "\"1GB\""), 1'000'000'000u);
  EXPECT_EQ(size("relay_buffer", "\"1GiB\""), 1024u * 1024 * 1024);
  EXPECT_EQ(size("request_header", "\"1GiB\""), 1024u * 1024 * 1024);
  EXPECT_EQ(size("client_hello", "\"1KiB\""), 1024u);
  EXPECT_EQ(size("client_hello", "\"1MiB\""), 1024u * 1024);
  EXPECT_EQ(size("client_hello", "1024"), 1024u);
  for (auto [key, bad] : std::initializer_list<std::pair<std::string_view, std::string_view>>{
           {"relay_buffer", "0"},
           {"relay_buffer", "\"0\""},
           {"relay_buffer", "\"0KiB\""},
           {"relay_buffer", "-1"},
           {"relay_buffer", "\"511B\""},
           {"relay_buffer", "\"1025MiB\""},
           {"relay_buffer", "\"2GB\""},
           {"relay_buffer", "\"1TiB\""},
           {"relay_buffer", "\"64kib\""},
           {"relay_buffer", "\"64 KiB\""},
           {"relay_buffer", "\"1.5MiB\""},
           {"relay_buffer", "\"KiB\""},
           {"relay_buffer", "\"\""},
           {"relay_buffer", "\"99999999999999999999\""},
           {"relay_buffer", "\"18014398509481984GiB\""},
           {"relay_buffer", "9223372036854775807"},
           {"relay_buffer", "true"},
           {"client_hello", "\"1KB\""},
           {"client_hello", "\"1025KiB\""},
           {"client_hello", "512"},
           {"request_header", "\"1023B\""},
       }) {
    EXPECT_FALSE(size(key, bad)) << key << " = " << bad;
  }
  EXPECT_EQ(parse_error("[limits]\nrelay_buffer = \"0\"\n"),
            "t.toml:2:16: limits.relay_buffer: size '0' is out of range (512B..1GiB)");
  EXPECT_EQ(parse_error("[limits]\nrelay_buffer = -5\n"),
            "t.toml:2:16: limits.relay_buffer: size must not be negative");
}

TEST(Config, Counts) {
  EXPECT_EQ(parse_ok("[limits]\nmax_connections = 1\n").limits.max_connections, 1u);
  EXPECT_EQ(parse_ok("[limits]\nleaf_cache = 10000000\n").limits.leaf_cache_entries, 10'000'000u);
  EXPECT_EQ(parse_error("[limits]\nmax_connections = 0\n"),
            "t.toml:2:19: limits.max_connections: 0 is out of range (1..10000000)");
  parse_error("[limits]\nleaf_cache = 10000001\n");
  parse_error("[limits]\nleaf_cache = \"10\"\n");
  parse_error("[limits]\nleaf_cache = -9223372036854775808\n");
  EXPECT_EQ(parse_ok("[proxy]\nworkers = 1024\n").workers, 1024u);
  parse_error("[proxy]\nworkers = 1025\n");
}

TEST(Config, ConnectPorts) {
  auto ports = [](std::string_view value) {
    return parse_ok("[proxy]\nconnect_ports = " + std::string(value) + "\n").connect_ports;
  };
  auto any = ports("[\"any\"]");
  ASSERT_EQ(any.size(), 1u);
  EXPECT_EQ(any[0].first, 1);
  EXPECT_EQ(any[0].last, 65535);
  EXPECT_EQ(ports("\"any\"").size(), 1u);
  EXPECT_TRUE(ports("[]").empty());
  auto mixed = ports("[443, \"1-1024\", \"65535\", 8080]");
  ASSERT_EQ(mixed.size(), 4u);
  EXPECT_EQ(mixed[1].first, 1);
  EXPECT_EQ(mixed[1].last, 1024);
  EXPECT_EQ(mixed[2].first, 65535);

  for (std::string_view bad :
       {"[0]", "[65536]", "[-443]", "[\"0-10\"]", "[\"10-0\"]", "[\"9-1\"]", "[\"1-65536\"]",
        "[\"a-b\"]", "[\"443-\"]", "[\"-443\"]", "[\"1--2\"]", "[\"1-2-3\"]", "[\" 443\"]", "[1.5]",
        "[true]", "[\"any\", 443]", "[443, \"any\"]", "443", "\"all\""}) {
    parse_error("[proxy]\nconnect_ports = " + std::string(bad) + "\n");
  }
  EXPECT_EQ(parse_error("[proxy]\nconnect_ports = [443, \"any\"]\n"),
            "t.toml:2:23: proxy.connect_ports[1]: \"any\" must be the only entry");
}

TEST(Config, ListenAndAdmin) {
  auto c = parse_ok("[proxy]\nlisten = [\"[::1]:8080\", \"127.0.0.1:0\", \"127.0.0.1:0\"]\n");
  EXPECT_EQ(to_strings(c.listen),
            (std::vector<std::string>{"[::1]:8080", "127.0.0.1:0", "127.0.0.1:0"}))
      << "port 0 (any free port) may repeat";
  EXPECT_EQ(parse_error("[proxy]\nlisten = []\n"),
            "t.toml:2:10: proxy.listen: needs at least one address");
  EXPECT_EQ(parse_error("[proxy]\nlisten = [\"127.0.0.1:80\", \"127.0.0.1:80\"]\n"),
            "t.toml:2:27: proxy.listen[1]: duplicate listener '127.0.0.1:80'");
  EXPECT_EQ(parse_error("[proxy]\nlisten = [\"::1:80\"]\n"),
            "t.toml:2:11: proxy.listen[0]: bad address '::1:80' (expected ADDR:PORT)");
  EXPECT_EQ(parse_error("[proxy]\nlisten = [\"127.0.0.1:8081\"]\n"),
            "t.toml:2:10: proxy.admin '127.0.0.1:8081' is also a proxy.listen address");
  EXPECT_EQ(parse_error("[proxy]\nadmin = \"127.0.0.1:8080\"\n"),
            "t.toml:2:9: proxy.admin '127.0.0.1:8080' is also a proxy.listen address");
  EXPECT_EQ(parse_error("[proxy]\nallowed_clients = []\n"),
            "t.toml:2:19: proxy.allowed_clients: needs at least one CIDR (no client could "
            "connect)");
}

TEST(Config, CaCertAndKeyComeTogether) {
  EXPECT_EQ(parse_error("[ca]\ncert = \"ca.crt\"\n"),
            "t.toml:2:8: [ca] cert and key must be given together (a CA of your own needs both)");
  EXPECT_EQ(parse_error("[ca]\ndir = \"x\"\nkey = \"ca.key\"\n"),
            "t.toml:3:7: [ca] cert and key must be given together (a CA of your own needs both)");
  EXPECT_EQ(parse_error("[ca]\ndir = \"\"\n"), "t.toml:2:7: ca.dir: empty path");
}

TEST(Config, ControlCharactersInStringsAreRefused) {
  EXPECT_EQ(parse_error("[proxy]\nadmin = \"127.0.0.1:80\\u0000\"\n"),
            "t.toml:2:9: proxy.admin: control character in '127.0.0.1:80\\x00'");
  parse_error("[ca]\ndir = \"a\\nb\"\n");
  parse_error("[intercept]\nhosts = [\"tiktok.com\\t\"]\n");
}

TEST(Config, ErrorsEchoHostileValuesOnOneLine) {
  auto error =
      parse_error("[intercept]\nhosts = [\"a\\u0085b\\\\'" + std::string(200, 'x') + "\"]\n");
  EXPECT_EQ(error.find('\n'), std::string::npos);
  EXPECT_NE(error.find("'a\\xc2\\x85b\\\\\\'xxx"), std::string::npos) << error;
  EXPECT_NE(error.find("...'"), std::string::npos) << error;
  EXPECT_LT(error.size(), 300u);
}

TEST(Config, UpstreamResolveAndInterceptErrors) {
  EXPECT_EQ(parse_error("[upstream]\nresolve = [\"example.org:443\"]\n"),
            "t.toml:2:12: upstream.resolve[0]: bad entry 'example.org:443': expected "
            "HOST:PORT:ADDR[,ADDR...]");
  EXPECT_EQ(parse_error("[intercept]\nrefuse = [\"ok.example\", \"a.*.com\"]\n"),
            "t.toml:2:25: intercept.refuse[1]: bad host pattern 'a.*.com': '*' must be the whole "
            "pattern or its whole first label (\"*.example.com\")");
}

// ---- files

class ConfigFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tokgate-config-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ / "etc");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path write(const std::string& name, std::string_view text) {
    auto path = dir_ / name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(ConfigFile, LoadsAndResolvesRelativePathsAgainstItsDirectory) {
  auto path = write("etc/tokgate.toml", R"([ca]
dir = "ca"
cert = "../certs/ca.crt"
key = "/abs/ca.key"
[upstream]
extra_ca = ["corp.pem", "/etc/ssl/other.pem"]
)");
  auto config = load_config_file(path);
  ASSERT_TRUE(config) << config.error();
  EXPECT_EQ(config->source, path);
  auto etc = std::filesystem::absolute(dir_ / "etc");
  EXPECT_EQ(config->ca_dir, etc / "ca");
  EXPECT_EQ(config->ca_cert, etc / "../certs/ca.crt");
  EXPECT_EQ(config->ca_key, "/abs/ca.key");
  ASSERT_EQ(config->extra_ca_files.size(), 2u);
  EXPECT_EQ(config->extra_ca_files[0], etc / "corp.pem");
  EXPECT_EQ(config->extra_ca_files[1], "/etc/ssl/other.pem");
  EXPECT_TRUE(config->ca_dir.is_absolute());
}

TEST_F(ConfigFile, ErrorsNameThePathAsGiven) {
  auto path = write("bad.toml", "[proxy]\n\nlistne = 1\n");
  auto config = load_config_file(path);
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(), path.string() + ":3:1: unknown key 'listne' in [proxy]");
}

TEST_F(ConfigFile, MissingFileDirectoryAndHugeFile) {
  auto missing = dir_ / "nope.toml";
  auto config = load_config_file(missing);
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(), missing.string() + ": cannot read: No such file or directory");

  config = load_config_file(dir_ / "etc");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(), (dir_ / "etc").string() + ": cannot read: is a directory");

  auto huge = write("huge.toml", std::string(5 << 20, '#'));
  config = load_config_file(huge);
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(), huge.string() + ": cannot read: larger than 4MiB");
}

TEST_F(ConfigFile, EmptyFileIsTheDefaults) {
  auto config = load_config_file(write("empty.toml", ""));
  ASSERT_TRUE(config) << config.error();
  expect_defaults(*config);
}

TEST_F(ConfigFile, TheShippedDefaultFileLoads) {
  auto config = load_config_file(write("default.toml", embedded_default_config()));
  ASSERT_TRUE(config) << config.error();
  expect_defaults(*config);
}

// ---- resolve overrides

ResolveOverride resolve_ok(std::string_view text) {
  auto entry = parse_resolve_override(text);
  EXPECT_TRUE(entry) << text << ": " << (entry ? "" : entry.error());
  return entry.value_or(ResolveOverride{});
}

TEST(ResolveOverride, ParsesWildcardsPortsAndAddressLists) {
  auto e = resolve_ok("*.TikTokv.com.:443:127.0.0.1");
  EXPECT_EQ(e.host_pattern, "*.tiktokv.com");
  EXPECT_EQ(e.port, 443);
  ASSERT_EQ(e.addresses.size(), 1u);
  EXPECT_EQ(e.addresses[0], IpAddress::loopback_v4());

  e = resolve_ok("example.org:*:[::1],127.0.0.2,[2001:db8::5]");
  EXPECT_EQ(e.host_pattern, "example.org");
  EXPECT_FALSE(e.port);
  ASSERT_EQ(e.addresses.size(), 3u);
  EXPECT_EQ(e.addresses[0], IpAddress::loopback_v6());
  EXPECT_EQ(e.addresses[1].to_string(), "127.0.0.2");
  EXPECT_EQ(e.addresses[2].to_string(), "2001:db8::5");

  e = resolve_ok("*:*:::1");
  EXPECT_EQ(e.host_pattern, "*");
  EXPECT_EQ(e.addresses[0], IpAddress::loopback_v6()) << "the last field may be bare IPv6";

  e = resolve_ok("bücher.de:65535:10.0.0.1");
  EXPECT_EQ(e.host_pattern, "xn--bcher-kva.de");
  EXPECT_EQ(e.port, 65535);
}

TEST(ResolveOverride, Matches) {
  auto wildcard = resolve_ok("*.tiktokv.com:443:127.0.0.1");
  EXPECT_TRUE(wildcard.matches("api16-normal-c-useast1a.tiktokv.com", 443));
  EXPECT_TRUE(wildcard.matches("A.B.TIKTOKV.COM.", 443));
  EXPECT_FALSE(wildcard.matches("tiktokv.com", 443)) << "strictly below";
  EXPECT_FALSE(wildcard.matches(".tiktokv.com", 443));
  EXPECT_FALSE(wildcard.matches("xtiktokv.com", 443));
  EXPECT_FALSE(wildcard.matches("tiktokv.com.evil.example", 443));
  EXPECT_FALSE(wildcard.matches("api.tiktokv.com", 80));
  EXPECT_FALSE(wildcard.matches("", 443));

  auto exact = resolve_ok("Example.org:*:127.0.0.1");
  EXPECT_TRUE(exact.matches("example.org", 1));
  EXPECT_TRUE(exact.matches("EXAMPLE.ORG.", 65535));
  EXPECT_FALSE(exact.matches("www.example.org", 443));
  EXPECT_TRUE(exact.matches("example.org.", 443));
  EXPECT_FALSE(exact.matches("example.or", 443));

  auto any = resolve_ok("*:8443:127.0.0.1");
  EXPECT_TRUE(any.matches("whatever.example", 8443));
  EXPECT_TRUE(any.matches("10.0.0.1", 8443));
  EXPECT_FALSE(any.matches("whatever.example", 443));
}

TEST(ResolveOverride, RefusesBadEntries) {
  std::string too_many = "a.example:443:";
  for (int i = 0; i < 33; ++i) too_many += (i ? ",10.0.0." : "10.0.0.") + std::to_string(i);
  for (const std::string& bad : std::vector<std::string>{"",
                                                         "example.org",
                                                         "example.org:443",
                                                         "example.org:443:",
                                                         ":443:127.0.0.1",
                                                         "example.org::127.0.0.1",
                                                         "example.org:0:127.0.0.1",
                                                         "example.org:65536:127.0.0.1",
                                                         "example.org:x:127.0.0.1",
                                                         "example.org:1-2:127.0.0.1",
                                                         "example.org:443:localhost",
                                                         "example.org:443:127.0.0.1,",
                                                         "example.org:443:,127.0.0.1",
                                                         "example.org:443:[::1",
                                                         "example.org:443:127.0.0.1 ",
                                                         ".example.org:443:127.0.0.1",
                                                         "a.*.org:443:127.0.0.1",
                                                         "*example.org:443:127.0.0.1",
                                                         "*.10.0.0.1:443:127.0.0.1",
                                                         "ex ample.org:443:1.2.3.4",
                                                         "[::1]:443:127.0.0.1",
                                                         too_many,
                                                         "a:443:" + std::string(5000, '1')}) {
    auto entry = parse_resolve_override(bad);
    EXPECT_FALSE(entry) << "'" << bad.substr(0, 100) << "'";
    if (!entry) {
      EXPECT_EQ(entry.error().find('\n'), std::string::npos);
    }
  }
  too_many.resize(too_many.rfind(','));
  EXPECT_EQ(resolve_ok(too_many).addresses.size(), 32u);
}

// ---- default_ca_dir

class Environment {
 public:
  explicit Environment(const char* name) : name_(name) {
    if (const char* value = std::getenv(name)) saved_ = value;
  }
  ~Environment() {
    if (saved_) {
      ::setenv(name_, saved_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  void set(const char* value) { ::setenv(name_, value, 1); }
  void unset() { ::unsetenv(name_); }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

TEST(DefaultCaDir, FollowsXdgThenHomeThenVarLib) {
  Environment xdg("XDG_DATA_HOME");
  Environment home("HOME");
  xdg.set("/data");
  home.set("/home/u");
  EXPECT_EQ(default_ca_dir(), "/data/tokgate/ca");
  xdg.set("relative/ignored");
  EXPECT_EQ(default_ca_dir(), "/home/u/.local/share/tokgate/ca");
  xdg.unset();
  EXPECT_EQ(default_ca_dir(), "/home/u/.local/share/tokgate/ca");
  home.set("");
  EXPECT_EQ(default_ca_dir(), "/var/lib/tokgate/ca");
  home.unset();
  EXPECT_EQ(default_ca_dir(), "/var/lib/tokgate/ca");
}

}  // namespace
}  // namespace tokgate::proxy
