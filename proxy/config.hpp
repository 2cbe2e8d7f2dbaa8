// The proxy's configuration: one TOML file parsed once into an immutable, validated struct.
// Every value has a safe default, so an empty file (or no file) is a working configuration.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/net_types.hpp"
#include "proxy/privacy.hpp"

namespace tokgate::proxy {

// A curl-style --resolve override: HOST:PORT:ADDR[,ADDR...]. HOST may be "*" or "*.suffix"
// (any name strictly below suffix, on a label boundary), PORT may be "*".
struct ResolveOverride {
  std::string host_pattern;      // lower-case, no trailing dot; "*", "*.example.com" or exact
  std::optional<uint16_t> port;  // nullopt = any port
  std::vector<IpAddress> addresses;

  bool matches(std::string_view host, uint16_t port) const;
};

// Parses "HOST:PORT:ADDR[,ADDR]..." (IPv6 addresses in brackets: "[::1]").
std::expected<ResolveOverride, std::string> parse_resolve_override(std::string_view text);

struct PortRange {
  uint16_t first = 0;
  uint16_t last = 0;
  bool contains(uint16_t port) const { return port >= first && port <= last; }
};

struct Timeouts {
  std::chrono::milliseconds client_hello{10'000};     // CONNECT accepted -> full ClientHello
  std::chrono::milliseconds tls_handshake{10'000};    // each side
  std::chrono::milliseconds request_header{30'000};   // first byte -> end of request head
  std::chrono::milliseconds idle{300'000};            // keep-alive wait for the next request
  std::chrono::milliseconds connect{10'000};          // resolve + TCP connect to the server side
  std::chrono::milliseconds response_header{60'000};  // request sent -> response head
  std::chrono::milliseconds io_stall{120'000};        // no progress on a body or tunnel
  std::chrono::milliseconds drain{30'000};            // SIGTERM: wait for in-flight requests
  std::chrono::milliseconds proxy_header{5'000};      // accepted -> PROXY protocol header
};

struct Limits {
  std::size_t client_hello_bytes = 64 * 1024;
  std::size_t request_line_bytes = 32 * 1024;    // method + target + version (HTTP/2: :path)
  std::size_t request_header_bytes = 64 * 1024;  // HTTP/1.1 head; HTTP/2 header list
  std::size_t request_header_fields = 100;       // fields in one request head (not pseudo)
  std::size_t response_header_bytes = 64 * 1024;
  std::size_t relay_buffer_bytes = 64 * 1024;    // per direction, per connection
  std::size_t max_connections = 10'000;          // per process
  std::size_t max_connections_per_client = 256;  // per client address, over all workers
  std::size_t leaf_cache_entries = 10'000;
  std::size_t websocket_frame_bytes = 16 * 1024 * 1024;  // largest WebSocket frame payload
  // HTTP/2 toward clients.
  std::size_t h2_max_concurrent_streams = 128;  // SETTINGS_MAX_CONCURRENT_STREAMS
  std::size_t h2_max_continuations = 8;         // CONTINUATION frames per header block
  std::size_t h2_max_pending_acks = 1000;       // SETTINGS/PING acks queued, unread
  std::size_t h2_reset_burst = 1000;            // RST_STREAMs from the client: a burst of ...
  std::size_t h2_reset_rate = 33;               // ... then this many a second
};

struct Config {
  std::filesystem::path source;  // file the config came from; empty for the embedded default

  // [proxy]
  std::vector<Endpoint> listen{Endpoint{IpAddress::loopback_v4(), 8080}};
  // Transparent listeners: connections redirected by nftables/iptables REDIRECT or TPROXY; the
  // target comes from the original destination, the name from SNI or Host.
  std::vector<Endpoint> transparent_listen;
  // Explicit-proxy listeners behind a load balancer: every connection starts with a PROXY
  // protocol v1/v2 header giving the real client, and is refused without one.
  std::vector<Endpoint> proxy_protocol_listen;
  Endpoint admin{IpAddress::loopback_v4(), 8081};
  unsigned workers = 0;  // 0 = one per core
  std::vector<Cidr> allowed_clients{Cidr::loopback_v4(), Cidr::loopback_v6()};
  std::vector<PortRange> connect_ports{{443, 443}};
  // After binding every listener and opening every file that needs root, switch to this user
  // (and its groups). Empty: keep the identity tokgate was started with.
  std::string user;

  // [ca]
  std::filesystem::path ca_dir;   // empty = default_ca_dir()
  std::filesystem::path ca_cert;  // with ca_key: bring-your-own CA (overrides ca_dir)
  std::filesystem::path ca_key;

  // [upstream]
  bool system_trust = true;
  std::vector<std::filesystem::path> extra_ca_files;
  std::vector<ResolveOverride> resolve;

  // [intercept]: operator overrides applied before the policy at the connection stage
  // (e.g. decrypt one third-party site for a study). Globs: "*.x", ".x", "x", "*".
  std::vector<std::string> intercept_hosts;
  std::vector<std::string> refuse_hosts;

  // [policy]: a shipped profile, or a policy file (which wins); the catalog is the embedded
  // one unless catalog_dir holds overrides. Both reload on SIGHUP and, with watch, on change.
  std::string policy_profile = "gateway";
  std::filesystem::path policy_file;
  std::filesystem::path catalog_dir;
  bool policy_watch = true;

  // [admin]: who may use the admin listener off loopback (a token, or HTTP basic).
  std::string admin_token;
  std::string admin_user;
  std::string admin_password;

  // [flow_log]: one JSON line (or Squid line) per request; docs/flow-log.md.
  std::filesystem::path flow_log;  // "-" = stdout; empty = none
  std::string flow_log_format = "json";
  std::size_t flow_log_queue = 65536;

  // [privacy]
  QueryPrivacy query_privacy = QueryPrivacy::redact;
  bool pseudonymise_clients = false;
  std::filesystem::path client_key_file;    // default: <ca dir>/client-pseudonym.key
  std::vector<std::string> redact_headers;  // more header names to redact in captures

  // [capture]: HAR files for action capture, and the opt-in TLS key log.
  std::filesystem::path capture_dir;  // empty = <ca dir>/../captures
  std::size_t capture_body_bytes = 1024 * 1024;
  std::filesystem::path keylog_file;  // SSLKEYLOGFILE format; empty = off

  // [geoip]: MaxMind-format databases (GeoLite2, DB-IP Lite); empty = no lookups.
  std::filesystem::path geoip_country_db;
  std::filesystem::path geoip_asn_db;

  Timeouts timeouts;
  Limits limits;
};

// "$XDG_DATA_HOME/tokgate/ca", else "$HOME/.local/share/tokgate/ca", else "/var/lib/tokgate/ca".
std::filesystem::path default_ca_dir();

// The default configuration shipped inside the binary (text of proxy/default_config.toml).
std::string_view embedded_default_config();

// A plausible user name for [proxy] user / --user: 1..32 of [A-Za-z0-9._-], not starting with
// '-'. (Whether the user exists is checked at startup, not here.)
bool is_valid_user_name(std::string_view name);

// Parses TOML text. Errors read "NAME:LINE:COL: what is wrong", one per line, every error found.
std::expected<Config, std::string> parse_config(std::string_view toml_text,
                                                std::string_view source_name);
std::expected<Config, std::string> load_config_file(const std::filesystem::path& path);

}  // namespace tokgate::proxy
