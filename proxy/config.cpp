#include "proxy/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <system_error>

#include "policy/host_pattern.hpp"
#include "policy/toml_reader.hpp"

namespace tokgate::embedded {
std::string_view default_config_toml();  // generated from proxy/default_config.toml
}  // namespace tokgate::embedded

namespace tokgate::proxy {
namespace {

using namespace std::literals;
using policy::escape;
using policy::quote;
using policy::type_name;

// The config's vocabulary, in one place.
constexpr auto kSectionProxy = "proxy"sv;
constexpr auto kSectionCa = "ca"sv;
constexpr auto kSectionUpstream = "upstream"sv;
constexpr auto kSectionIntercept = "intercept"sv;
constexpr auto kSectionPolicy = "policy"sv;
constexpr auto kSectionTimeouts = "timeouts"sv;
constexpr auto kSectionLimits = "limits"sv;
constexpr auto kSectionFlowLog = "flow_log"sv;
constexpr auto kSectionAdmin = "admin"sv;
constexpr auto kSectionPrivacy = "privacy"sv;
constexpr auto kSectionCapture = "capture"sv;
constexpr auto kSectionGeoip = "geoip"sv;

constexpr auto kKeyListen = "listen"sv;
constexpr auto kKeyTransparent = "transparent"sv;
constexpr auto kKeyProxyProtocol = "listen_proxy_protocol"sv;
constexpr auto kKeyAdmin = "admin"sv;
constexpr auto kKeyWorkers = "workers"sv;
constexpr auto kKeyAllowedClients = "allowed_clients"sv;
constexpr auto kKeyConnectPorts = "connect_ports"sv;
constexpr auto kKeyDir = "dir"sv;
constexpr auto kKeyCert = "cert"sv;
constexpr auto kKeyKey = "key"sv;
constexpr auto kKeySystemTrust = "system_trust"sv;
constexpr auto kKeyExtraCa = "extra_ca"sv;
constexpr auto kKeyResolve = "resolve"sv;
constexpr auto kKeyPath = "path"sv;
constexpr auto kKeyToken = "token"sv;
constexpr auto kKeyUser = "user"sv;
constexpr auto kKeyPassword = "password"sv;
constexpr auto kKeyFormat = "format"sv;
constexpr auto kKeyQueue = "queue"sv;
constexpr auto kKeyQuery = "query"sv;
constexpr auto kKeyClient = "client"sv;
constexpr auto kKeyClientKeyFile = "client_key_file"sv;
constexpr auto kKeyRedactHeaders = "redact_headers"sv;
constexpr auto kKeyBodyBytes = "body_bytes"sv;
constexpr auto kKeyKeylog = "keylog"sv;
constexpr auto kKeyCountryDb = "country_db"sv;
constexpr auto kKeyAsnDb = "asn_db"sv;
constexpr auto kKeyHosts = "hosts"sv;
constexpr auto kKeyRefuse = "refuse"sv;
constexpr auto kKeyProfile = "profile"sv;
constexpr auto kKeyFile = "file"sv;
constexpr auto kKeyCatalogDir = "catalog_dir"sv;
constexpr auto kKeyWatch = "watch"sv;
constexpr auto kKeyClientHello = "client_hello"sv;
constexpr auto kKeyTlsHandshake = "tls_handshake"sv;
constexpr auto kKeyRequestHeader = "request_header"sv;
constexpr auto kKeyIdle = "idle"sv;
constexpr auto kKeyConnect = "connect"sv;
constexpr auto kKeyResponseHeader = "response_header"sv;
constexpr auto kKeyIoStall = "io_stall"sv;
constexpr auto kKeyDrain = "drain"sv;
constexpr auto kKeyRelayBuffer = "relay_buffer"sv;
constexpr auto kKeyMaxConnections = "max_connections"sv;
constexpr auto kKeyLeafCache = "leaf_cache"sv;
constexpr auto kKeyProxyHeader = "proxy_header"sv;
constexpr auto kKeyRequestLine = "request_line"sv;
constexpr auto kKeyRequestHeaderFields = "request_header_fields"sv;
constexpr auto kKeyMaxConnectionsPerClient = "max_connections_per_client"sv;
constexpr auto kKeyWebsocketFrame = "websocket_frame"sv;
constexpr auto kKeyH2MaxConcurrentStreams = "h2_max_concurrent_streams"sv;
constexpr auto kKeyH2MaxContinuations = "h2_max_continuations"sv;
constexpr auto kKeyH2MaxPendingAcks = "h2_max_pending_acks"sv;
constexpr auto kKeyH2ResetBurst = "h2_reset_burst"sv;
constexpr auto kKeyH2ResetRate = "h2_reset_rate"sv;

constexpr auto kAnyPort = "any"sv;
constexpr unsigned kMaxWorkers = 1024;
constexpr std::size_t kMaxCount = 10'000'000;  // max_connections, leaf_cache
constexpr std::size_t kMaxResolveAddresses = 32;
constexpr std::size_t kMaxResolveEntryLength = 4096;
constexpr std::size_t kMaxConfigFileBytes = 4 << 20;  // a config is a few KiB; refuse absurd files

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;
constexpr std::size_t GiB = 1024 * MiB;

std::string format_size(std::size_t bytes) {
  if (bytes >= GiB && bytes % GiB == 0) return std::to_string(bytes / GiB) + "GiB";
  if (bytes >= MiB && bytes % MiB == 0) return std::to_string(bytes / MiB) + "MiB";
  if (bytes >= KiB && bytes % KiB == 0) return std::to_string(bytes / KiB) + "KiB";
  return std::to_string(bytes) + "B";
}

struct Unit {
  std::string_view suffix;
  uint64_t factor;
};
constexpr Unit kDurationUnits[] = {{"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}};
constexpr auto kDurationUnitList = "ms, s, m or h"sv;
constexpr uint64_t kMaxDurationMs = 24 * 3'600'000;
constexpr Unit kSizeUnits[] = {
    {"", 1},      {"B", 1},     {"KiB", KiB},      {"MiB", MiB},
    {"GiB", GiB}, {"KB", 1000}, {"MB", 1'000'000}, {"GB", 1'000'000'000}};
constexpr auto kSizeUnitList = "B, KiB, MiB, GiB, KB, MB or GB"sv;

// "<decimal integer><unit>", e.g. "250ms" or "64KiB". No sign, no fraction, no spaces.
std::expected<uint64_t, std::string> parse_quantity(std::string_view text,
                                                    std::span<const Unit> units,
                                                    std::string_view unit_list) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) {
    return std::unexpected("expected an integer followed by a unit (" + std::string(unit_list) +
                           ")");
  }
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + digits, value);
  if (ec != std::errc{}) return std::unexpected("number too large"s);
  auto suffix = text.substr(digits);
  auto unit = std::find_if(units.begin(), units.end(),
                           [suffix](const Unit& u) { return u.suffix == suffix; });
  if (unit == units.end()) {
    if (suffix.empty()) return std::unexpected("missing unit (" + std::string(unit_list) + ")");
    return std::unexpected("unknown unit " + quote(suffix) + " (use " + std::string(unit_list) +
                           ")");
  }
  if (value > UINT64_MAX / unit->factor) return std::unexpected("number too large"s);
  return value * unit->factor;
}

std::expected<PortRange, std::string> parse_port_range(std::string_view text) {
  auto parse_port = [](std::string_view digits) -> std::optional<uint16_t> {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || value == 0 ||
        value > 65535) {
      return std::nullopt;
    }
    return static_cast<uint16_t>(value);
  };
  auto dash = text.find('-');
  auto first = parse_port(text.substr(0, dash));
  auto last = dash == std::string_view::npos ? first : parse_port(text.substr(dash + 1));
  if (!first || !last) {
    return std::unexpected("bad port range " + quote(text) +
                           " (expected a port 1-65535 or \"FIRST-LAST\")");
  }
  if (*first > *last) return std::unexpected("empty port range " + quote(text));
  return PortRange{*first, *last};
}

// Walks the parsed document and fills a Config, collecting every error instead of stopping.
class Loader : public policy::TomlReader {
 public:
  Loader(std::string_view source_name, std::filesystem::path base_dir)
      : TomlReader(source_name), base_dir_(std::move(base_dir)) {}

  // Relative paths name files next to the config file.
  std::filesystem::path resolve_path(std::string_view text) const {
    std::filesystem::path path(text);
    if (path.is_relative() && !base_dir_.empty()) return base_dir_ / path;
    return path;
  }

  std::optional<std::filesystem::path> path(const toml::node& node, std::string_view what) {
    auto text = string(node, what);
    if (!text) return std::nullopt;
    if (text->empty()) {
      error(node, what, "empty path");
      return std::nullopt;
    }
    return resolve_path(*text);
  }

 private:
  std::filesystem::path base_dir_;
};

using Apply = void (*)(Loader&, Config&, const toml::node&, const std::string& what);

struct KeySpec {
  std::string_view name;
  Apply apply;
};

// ---- [proxy]

std::vector<Endpoint> endpoint_list(Loader& loader, const toml::node& node,
                                    const std::string& what) {
  std::vector<Endpoint> list;
  loader.each(node, what, [&](const toml::node& element, const std::string& where) {
    auto text = loader.string(element, where);
    if (!text) return;
    auto endpoint = Endpoint::parse(*text);
    if (!endpoint) {
      loader.error(element, where, "bad address " + quote(*text) + " (expected ADDR:PORT)");
    } else if (endpoint->port != 0 &&
               std::find(list.begin(), list.end(), *endpoint) != list.end()) {
      loader.error(element, where, "duplicate listener " + quote(*text));
    } else {
      list.push_back(*endpoint);
    }
  });
  return list;
}

template <std::vector<Endpoint> Config::*Field>
void apply_endpoints(Loader& loader, Config& config, const toml::node& node,
                     const std::string& what) {
  config.*Field = endpoint_list(loader, node, what);
}

void apply_listen(Loader& loader, Config& config, const toml::node& node, const std::string& what) {
  std::vector<Endpoint> listen = endpoint_list(loader, node, what);
  if (node.is_array() && node.as_array()->empty()) {
    loader.error(node, what, "needs at least one address");
  }
  config.listen = std::move(listen);
}

void apply_admin(Loader& loader, Config& config, const toml::node& node, const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  auto endpoint = Endpoint::parse(*text);
  if (!endpoint) {
    loader.error(node, what, "bad address " + quote(*text) + " (expected ADDR:PORT)");
    return;
  }
  config.admin = *endpoint;
}

void apply_workers(Loader& loader, Config& config, const toml::node& node,
                   const std::string& what) {
  if (auto value = loader.integer(node, what, 0, kMaxWorkers)) {
    config.workers = static_cast<unsigned>(*value);
  }
}

void apply_allowed_clients(Loader& loader, Config& config, const toml::node& node,
                           const std::string& what) {
  std::vector<Cidr> blocks;
  loader.each(node, what, [&](const toml::node& element, const std::string& where) {
    auto text = loader.string(element, where);
    if (!text) return;
    if (auto cidr = Cidr::parse(*text)) {
      blocks.push_back(*cidr);
    } else {
      loader.error(element, where, "bad CIDR " + quote(*text));
    }
  });
  if (node.is_array() && node.as_array()->empty()) {
    loader.error(node, what, "needs at least one CIDR (no client could connect)");
  }
  config.allowed_clients = std::move(blocks);
}

void apply_connect_ports(Loader& loader, Config& config, const toml::node& node,
                         const std::string& what) {
  // "any" alone, as a string or as the only element, allows every port.
  auto is_any = [](const toml::node& n) {
    return n.is_string() && n.as_string()->get() == kAnyPort;
  };
  if (is_any(node)) {
    config.connect_ports = {{1, 65535}};
    return;
  }
  const auto* elements = node.as_array();
  std::vector<PortRange> ranges;
  loader.each(node, what, [&](const toml::node& element, const std::string& where) {
    if (is_any(element)) {
      if (elements->size() != 1) loader.error(element, where, "\"any\" must be the only entry");
      ranges.push_back({1, 65535});
    } else if (element.is_integer()) {
      if (auto port = loader.integer(element, where, 1, 65535)) {
        ranges.push_back({static_cast<uint16_t>(*port), static_cast<uint16_t>(*port)});
      }
    } else if (element.is_string()) {
      auto range = parse_port_range(element.as_string()->get());
      if (range) {
        ranges.push_back(*range);
      } else {
        loader.error(element, where, range.error());
      }
    } else {
      loader.error(element, where,
                   "expected a port number or a \"FIRST-LAST\" string, got " +
                       std::string(type_name(element)));
    }
  });
  config.connect_ports = std::move(ranges);
}

void apply_user(Loader& loader, Config& config, const toml::node& node, const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  if (!is_valid_user_name(*text)) {
    loader.error(node, what,
                 "bad user name " + quote(*text) +
                     " (1 to 32 letters, digits, '.', '_' or '-', not starting with '-')");
    return;
  }
  config.user = std::string(*text);
}

constexpr KeySpec kProxyKeys[] = {
    {kKeyListen, apply_listen},
    {kKeyUser, apply_user},
    {kKeyTransparent, apply_endpoints<&Config::transparent_listen>},
    {kKeyProxyProtocol, apply_endpoints<&Config::proxy_protocol_listen>},
    {kKeyAdmin, apply_admin},
    {kKeyWorkers, apply_workers},
    {kKeyAllowedClients, apply_allowed_clients},
    {kKeyConnectPorts, apply_connect_ports},
};

// ---- [ca]

template <std::filesystem::path Config::*Field>
void apply_path(Loader& loader, Config& config, const toml::node& node, const std::string& what) {
  if (auto path = loader.path(node, what)) config.*Field = std::move(*path);
}

constexpr KeySpec kCaKeys[] = {
    {kKeyDir, apply_path<&Config::ca_dir>},
    {kKeyCert, apply_path<&Config::ca_cert>},
    {kKeyKey, apply_path<&Config::ca_key>},
};

// ---- [upstream]

void apply_system_trust(Loader& loader, Config& config, const toml::node& node,
                        const std::string& what) {
  if (auto value = loader.boolean(node, what)) config.system_trust = *value;
}

void apply_extra_ca(Loader& loader, Config& config, const toml::node& node,
                    const std::string& what) {
  std::vector<std::filesystem::path> files;
  loader.each(node, what, [&](const toml::node& element, const std::string& where) {
    if (auto path = loader.path(element, where)) files.push_back(std::move(*path));
  });
  config.extra_ca_files = std::move(files);
}

void apply_resolve(Loader& loader, Config& config, const toml::node& node,
                   const std::string& what) {
  std::vector<ResolveOverride> overrides;
  loader.each(node, what, [&](const toml::node& element, const std::string& where) {
    auto text = loader.string(element, where);
    if (!text) return;
    auto entry = parse_resolve_override(*text);
    if (entry) {
      overrides.push_back(std::move(*entry));
    } else {
      loader.error(element, where, "bad entry " + quote(*text) + ": " + entry.error());
    }
  });
  config.resolve = std::move(overrides);
}

constexpr KeySpec kUpstreamKeys[] = {
    {kKeySystemTrust, apply_system_trust},
    {kKeyExtraCa, apply_extra_ca},
    {kKeyResolve, apply_resolve},
};

// ---- [intercept]

template <std::vector<std::string> Config::*Field>
void apply_host_patterns(Loader& loader, Config& config, const toml::node& node,
                         const std::string& what) {
  std::vector<std::string> patterns;
  loader.each(node, what, [&](const toml::node& element, const std::string& where) {
    auto text = loader.string(element, where);
    if (!text) return;
    auto pattern = policy::HostPattern::parse(*text);
    if (pattern) {
      patterns.push_back(pattern->text());
    } else {
      loader.error(element, where, "bad host pattern " + quote(*text) + ": " + pattern.error());
    }
  });
  config.*Field = std::move(patterns);
}

constexpr KeySpec kInterceptKeys[] = {
    {kKeyHosts, apply_host_patterns<&Config::intercept_hosts>},
    {kKeyRefuse, apply_host_patterns<&Config::refuse_hosts>},
};

// ---- [policy]

void apply_profile(Loader& loader, Config& config, const toml::node& node,
                   const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  if (*text != "gateway" && *text != "observe") {
    loader.error(node, what, "unknown profile " + quote(*text) + " (gateway or observe)");
    return;
  }
  config.policy_profile = std::string(*text);
}

void apply_watch(Loader& loader, Config& config, const toml::node& node, const std::string& what) {
  if (auto value = loader.boolean(node, what)) config.policy_watch = *value;
}

constexpr KeySpec kPolicyKeys[] = {
    {kKeyProfile, apply_profile},
    {kKeyFile, apply_path<&Config::policy_file>},
    {kKeyCatalogDir, apply_path<&Config::catalog_dir>},
    {kKeyWatch, apply_watch},
};

// ---- [timeouts]

template <std::chrono::milliseconds Timeouts::*Field>
void apply_duration(Loader& loader, Config& config, const toml::node& node,
                    const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  auto ms = parse_quantity(*text, kDurationUnits, kDurationUnitList);
  if (!ms) {
    loader.error(node, what, "bad duration " + quote(*text) + ": " + ms.error());
  } else if (*ms == 0) {
    loader.error(node, what, "duration must be greater than zero");
  } else if (*ms > kMaxDurationMs) {
    loader.error(node, what, "duration " + quote(*text) + " is longer than 24h");
  } else {
    config.timeouts.*Field = std::chrono::milliseconds(*ms);
  }
}

constexpr KeySpec kTimeoutKeys[] = {
    {kKeyClientHello, apply_duration<&Timeouts::client_hello>},
    {kKeyTlsHandshake, apply_duration<&Timeouts::tls_handshake>},
    {kKeyRequestHeader, apply_duration<&Timeouts::request_header>},
    {kKeyIdle, apply_duration<&Timeouts::idle>},
    {kKeyConnect, apply_duration<&Timeouts::connect>},
    {kKeyResponseHeader, apply_duration<&Timeouts::response_header>},
    {kKeyIoStall, apply_duration<&Timeouts::io_stall>},
    {kKeyDrain, apply_duration<&Timeouts::drain>},
    {kKeyProxyHeader, apply_duration<&Timeouts::proxy_header>},
};

// ---- [limits]

// A size is a string with a unit ("64KiB") or a plain integer of bytes (string or TOML integer).
std::optional<std::size_t> size_value(Loader& loader, const toml::node& node,
                                      const std::string& what, std::size_t min, std::size_t max) {
  uint64_t bytes = 0;
  std::string shown;
  if (const auto* integer = node.as_integer()) {
    if (integer->get() < 0) {
      loader.error(node, what, "size must not be negative");
      return std::nullopt;
    }
    bytes = static_cast<uint64_t>(integer->get());
    shown = std::to_string(bytes);
  } else if (node.is_string()) {
    auto text = loader.string(node, what);
    if (!text) return std::nullopt;
    auto parsed = parse_quantity(*text, kSizeUnits, kSizeUnitList);
    if (!parsed) {
      loader.error(node, what, "bad size " + quote(*text) + ": " + parsed.error());
      return std::nullopt;
    }
    bytes = *parsed;
    shown = quote(*text);
  } else {
    loader.error(node, what,
                 "expected a size such as \"64KiB\", got " + std::string(type_name(node)));
    return std::nullopt;
  }
  if (bytes < min || bytes > max) {
    loader.error(
        node, what,
        "size " + shown + " is out of range (" + format_size(min) + ".." + format_size(max) + ")");
    return std::nullopt;
  }
  return static_cast<std::size_t>(bytes);
}

template <std::size_t Limits::*Field, std::size_t Min, std::size_t Max>
void apply_size(Loader& loader, Config& config, const toml::node& node, const std::string& what) {
  if (auto bytes = size_value(loader, node, what, Min, Max)) config.limits.*Field = *bytes;
}

template <std::size_t Limits::*Field, int64_t Min = 1, int64_t Max = kMaxCount>
void apply_count(Loader& loader, Config& config, const toml::node& node, const std::string& what) {
  if (auto value = loader.integer(node, what, Min, Max)) {
    config.limits.*Field = static_cast<std::size_t>(*value);
  }
}

constexpr KeySpec kLimitKeys[] = {
    {kKeyClientHello, apply_size<&Limits::client_hello_bytes, 1 * KiB, 1 * MiB>},
    {kKeyRequestLine, apply_size<&Limits::request_line_bytes, 256, 1 * GiB>},
    {kKeyRequestHeader, apply_size<&Limits::request_header_bytes, 1 * KiB, 1 * GiB>},
    {kKeyRequestHeaderFields, apply_count<&Limits::request_header_fields, 1, 100'000>},
    {kKeyResponseHeader, apply_size<&Limits::response_header_bytes, 1 * KiB, 1 * GiB>},
    {kKeyRelayBuffer, apply_size<&Limits::relay_buffer_bytes, 512, 1 * GiB>},
    {kKeyMaxConnections, apply_count<&Limits::max_connections>},
    {kKeyMaxConnectionsPerClient, apply_count<&Limits::max_connections_per_client>},
    {kKeyLeafCache, apply_count<&Limits::leaf_cache_entries>},
    // Control frames carry up to 125 bytes: a smaller limit would refuse a close frame.
    {kKeyWebsocketFrame, apply_size<&Limits::websocket_frame_bytes, 125, 1 * GiB>},
    {kKeyH2MaxConcurrentStreams, apply_count<&Limits::h2_max_concurrent_streams, 1, 65'535>},
    {kKeyH2MaxContinuations, apply_count<&Limits::h2_max_continuations, 0, 1'024>},
    {kKeyH2MaxPendingAcks, apply_count<&Limits::h2_max_pending_acks, 1, 1'000'000>},
    {kKeyH2ResetBurst, apply_count<&Limits::h2_reset_burst, 1, 1'000'000>},
    {kKeyH2ResetRate, apply_count<&Limits::h2_reset_rate, 1, 1'000'000>},
};

// ---- [admin]

template <std::string Config::*Field, std::size_t MinLength>
void apply_secret(Loader& loader, Config& config, const toml::node& node, const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  if (text->size() < MinLength || text->size() > 256) {
    loader.error(node, what,
                 "must be " + std::to_string(MinLength) + " to 256 characters");  // never echoed
    return;
  }
  if (std::ranges::any_of(*text, [](unsigned char c) { return c < 0x21 || c == 0x7f; })) {
    loader.error(node, what, "must be printable, without spaces");
    return;
  }
  config.*Field = std::string(*text);
}

constexpr KeySpec kAdminKeys[] = {
    {kKeyToken, apply_secret<&Config::admin_token, 16>},
    {kKeyUser, apply_secret<&Config::admin_user, 1>},
    {kKeyPassword, apply_secret<&Config::admin_password, 12>},
};

// ---- [flow_log], [privacy], [capture], [geoip]

void apply_flow_log_path(Loader& loader, Config& config, const toml::node& node,
                         const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  if (*text == "-" || text->empty()) {
    config.flow_log = std::string(*text);  // stdout, or none: not paths to resolve
  } else if (auto path = loader.path(node, what)) {
    config.flow_log = std::move(*path);
  }
}

void apply_flow_log_format(Loader& loader, Config& config, const toml::node& node,
                           const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  if (*text != "json" && *text != "squid") {
    loader.error(node, what, "unknown format " + quote(*text) + " (json or squid)");
    return;
  }
  config.flow_log_format = std::string(*text);
}

void apply_flow_log_queue(Loader& loader, Config& config, const toml::node& node,
                          const std::string& what) {
  if (auto value = loader.integer(node, what, 16, 16 * 1024 * 1024)) {
    config.flow_log_queue = static_cast<std::size_t>(*value);
  }
}

constexpr KeySpec kFlowLogKeys[] = {
    {kKeyPath, apply_flow_log_path},
    {kKeyFormat, apply_flow_log_format},
    {kKeyQueue, apply_flow_log_queue},
};

void apply_query_privacy(Loader& loader, Config& config, const toml::node& node,
                         const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  if (auto mode = parse_query_privacy(*text)) {
    config.query_privacy = *mode;
  } else {
    loader.error(node, what, "unknown query privacy " + quote(*text) + " (redact, full or omit)");
  }
}

void apply_client_privacy(Loader& loader, Config& config, const toml::node& node,
                          const std::string& what) {
  auto text = loader.string(node, what);
  if (!text) return;
  if (*text == "full") {
    config.pseudonymise_clients = false;
  } else if (*text == "pseudonymise") {
    config.pseudonymise_clients = true;
  } else {
    loader.error(node, what, "unknown client privacy " + quote(*text) + " (full or pseudonymise)");
  }
}

void apply_redact_headers(Loader& loader, Config& config, const toml::node& node,
                          const std::string& what) {
  std::vector<std::string> names;
  loader.each(node, what, [&](const toml::node& element, const std::string& where) {
    auto text = loader.string(element, where);
    if (!text) return;
    if (text->empty() || text->size() > 128 ||
        text->find_first_of(" \t:\r\n") != std::string_view::npos) {
      loader.error(element, where, "bad header name " + quote(*text));
      return;
    }
    std::string name(*text);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    names.push_back(std::move(name));
  });
  config.redact_headers = std::move(names);
}

constexpr KeySpec kPrivacyKeys[] = {
    {kKeyQuery, apply_query_privacy},
    {kKeyClient, apply_client_privacy},
    {kKeyClientKeyFile, apply_path<&Config::client_key_file>},
    {kKeyRedactHeaders, apply_redact_headers},
};

void apply_capture_body_bytes(Loader& loader, Config& config, const toml::node& node,
                              const std::string& what) {
  if (auto bytes = size_value(loader, node, what, 0, 1 * GiB)) config.capture_body_bytes = *bytes;
}

constexpr KeySpec kCaptureKeys[] = {
    {kKeyDir, apply_path<&Config::capture_dir>},
    {kKeyBodyBytes, apply_capture_body_bytes},
    {kKeyKeylog, apply_path<&Config::keylog_file>},
};

constexpr KeySpec kGeoipKeys[] = {
    {kKeyCountryDb, apply_path<&Config::geoip_country_db>},
    {kKeyAsnDb, apply_path<&Config::geoip_asn_db>},
};

// ---- the document

struct SectionSpec {
  std::string_view name;
  std::span<const KeySpec> keys;
};

constexpr SectionSpec kSections[] = {
    {kSectionProxy, kProxyKeys},       {kSectionCa, kCaKeys},
    {kSectionUpstream, kUpstreamKeys}, {kSectionIntercept, kInterceptKeys},
    {kSectionPolicy, kPolicyKeys},     {kSectionTimeouts, kTimeoutKeys},
    {kSectionLimits, kLimitKeys},      {kSectionFlowLog, kFlowLogKeys},
    {kSectionPrivacy, kPrivacyKeys},   {kSectionCapture, kCaptureKeys},
    {kSectionGeoip, kGeoipKeys},       {kSectionAdmin, kAdminKeys},
};

const toml::node* find(const toml::table& root, std::string_view section, std::string_view key) {
  const auto* table = root.get_as<toml::table>(section);
  return table == nullptr ? nullptr : table->get(key);
}

// Rules that involve more than one key.
void check_combinations(Loader& loader, const Config& config, const toml::table& root) {
  const auto* cert = find(root, kSectionCa, kKeyCert);
  const auto* key = find(root, kSectionCa, kKeyKey);
  if ((cert == nullptr) != (key == nullptr)) {
    const auto* given = cert != nullptr ? cert : key;
    loader.error(given->source(),
                 "[ca] cert and key must be given together (a CA of your own needs both)");
  }

  if (config.admin_user.empty() != config.admin_password.empty()) {
    const auto* given = find(root, kSectionAdmin, kKeyUser);
    if (given == nullptr) given = find(root, kSectionAdmin, kKeyPassword);
    if (given != nullptr) {
      loader.error(given->source(), "[admin] user and password go together");
    }
  }
  if (config.admin.port != 0 &&
      std::find(config.listen.begin(), config.listen.end(), config.admin) != config.listen.end()) {
    const auto* where = find(root, kSectionProxy, kKeyAdmin);
    if (where == nullptr) where = find(root, kSectionProxy, kKeyListen);
    if (where != nullptr) {
      loader.error(where->source(), "proxy.admin " + quote(config.admin.to_string()) +
                                        " is also a proxy.listen address");
    }
  }
}

void apply_document(Loader& loader, Config& config, const toml::table& root) {
  for (auto&& [section_key, section_node] : root) {
    auto section = std::find_if(std::begin(kSections), std::end(kSections),
                                [&](const SectionSpec& s) { return s.name == section_key.str(); });
    if (section == std::end(kSections)) {
      loader.error(section_key.source(), "unknown section " + quote(section_key.str()));
      continue;
    }
    const auto* table = section_node.as_table();
    if (table == nullptr) {
      loader.error(section_node, section_key.str(),
                   "expected a table ([" + std::string(section->name) + "]), got " +
                       std::string(type_name(section_node)));
      continue;
    }
    for (auto&& [key, node] : *table) {
      auto spec = std::find_if(section->keys.begin(), section->keys.end(),
                               [&](const KeySpec& k) { return k.name == key.str(); });
      if (spec == section->keys.end()) {
        loader.error(key.source(), "unknown key " + quote(key.str()) + " in [" +
                                       std::string(section->name) + "]");
        continue;
      }
      spec->apply(loader, config, node, std::string(section->name) + "." + std::string(key.str()));
    }
  }
  check_combinations(loader, config, root);
}

std::expected<Config, std::string> parse(std::string_view text, std::string_view source_name,
                                         std::filesystem::path base_dir) {
  Loader loader(source_name, std::move(base_dir));
  toml::table root;
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    // Config loading is not the data plane: toml++ reports syntax errors by exception.
    loader.error(e.source(), escape(e.description(), false));
    return std::unexpected(loader.report());
  }
  Config config;
  apply_document(loader, config, root);
  if (loader.failed()) return std::unexpected(loader.report());
  return config;
}

bool iequals(std::string_view a, std::string_view b) {
  auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [&](char x, char y) { return lower(x) == y; });
}

}  // namespace

bool is_valid_user_name(std::string_view name) {
  if (name.empty() || name.size() > 32 || name.front() == '-') return false;
  return std::ranges::all_of(name, [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

bool ResolveOverride::matches(std::string_view host, uint16_t request_port) const {
  if (port && *port != request_port) return false;
  if (host_pattern == "*") return true;
  if (host.ends_with('.')) host.remove_suffix(1);
  if (host_pattern.starts_with("*.")) {
    std::string_view suffix = std::string_view(host_pattern).substr(2);
    return host.size() > suffix.size() + 1 &&
           iequals(host.substr(host.size() - suffix.size()), suffix) &&
           host[host.size() - suffix.size() - 1] == '.';
  }
  return iequals(host, host_pattern);
}

std::expected<ResolveOverride, std::string> parse_resolve_override(std::string_view text) {
  if (text.size() > kMaxResolveEntryLength) return std::unexpected("entry too long"s);
  auto first_colon = text.find(':');
  auto second_colon =
      first_colon == std::string_view::npos ? first_colon : text.find(':', first_colon + 1);
  if (second_colon == std::string_view::npos) {
    return std::unexpected("expected HOST:PORT:ADDR[,ADDR...]"s);
  }
  auto host = text.substr(0, first_colon);
  auto port = text.substr(first_colon + 1, second_colon - first_colon - 1);
  auto addresses = text.substr(second_colon + 1);

  ResolveOverride entry;
  auto pattern = policy::HostPattern::parse(host);
  if (!pattern) return std::unexpected("bad host " + quote(host) + ": " + pattern.error());
  if (pattern->kind() == policy::HostPattern::Kind::at_or_below) {
    return std::unexpected("bad host " + quote(host) + ": use \"*.name\" or an exact name");
  }
  entry.host_pattern = pattern->text();

  if (port != "*") {
    auto range = parse_port_range(port);
    if (!range || range->first != range->last || port.find('-') != std::string_view::npos) {
      return std::unexpected("bad port " + quote(port) + " (expected 1-65535 or \"*\")");
    }
    entry.port = range->first;
  }

  while (true) {
    auto comma = addresses.find(',');
    auto item = addresses.substr(0, comma);
    auto address = IpAddress::parse(item);
    if (!address || item.find('\0') != std::string_view::npos) {
      return std::unexpected("bad address " + quote(item));
    }
    if (entry.addresses.size() == kMaxResolveAddresses) {
      return std::unexpected("more than " + std::to_string(kMaxResolveAddresses) + " addresses");
    }
    entry.addresses.push_back(*address);
    if (comma == std::string_view::npos) break;
    addresses.remove_prefix(comma + 1);
  }
  return entry;
}

std::filesystem::path default_ca_dir() {
  // Only absolute values count: the XDG spec says to ignore relative ones.
  const char* data_home = std::getenv("XDG_DATA_HOME");
  if (data_home != nullptr && data_home[0] == '/') {
    return std::filesystem::path(data_home) / "tokgate" / "ca";
  }
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] == '/') {
    return std::filesystem::path(home) / ".local" / "share" / "tokgate" / "ca";
  }
  return "/var/lib/tokgate/ca";
}

std::string_view embedded_default_config() {
  return embedded::default_config_toml();
}

std::expected<Config, std::string> parse_config(std::string_view toml_text,
                                                std::string_view source_name) {
  return parse(toml_text, source_name, {});
}

std::expected<Config, std::string> load_config_file(const std::filesystem::path& path) {
  const std::string name = path.string();
  auto cannot_read = [&](std::string_view reason) {
    return std::unexpected(name + ": cannot read: " + std::string(reason));
  };
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return cannot_read("is a directory");
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return cannot_read(std::strerror(errno));
  std::string text;
  char buffer[16 * 1024];
  bool too_large = false;
  while (true) {
    std::size_t n = std::fread(buffer, 1, sizeof buffer, file);
    text.append(buffer, n);
    if (text.size() > kMaxConfigFileBytes) {
      too_large = true;
      break;
    }
    if (n < sizeof buffer) break;
  }
  bool read_error = std::ferror(file) != 0;
  int read_errno = errno;
  std::fclose(file);
  if (too_large) return cannot_read("larger than " + format_size(kMaxConfigFileBytes));
  if (read_error) return cannot_read(std::strerror(read_errno));

  // Resolve against an absolute directory, so a later chdir cannot change what the paths mean.
  auto absolute = std::filesystem::absolute(path, ec);
  auto base_dir = ec ? path.parent_path() : absolute.parent_path();
  auto config = parse(text, name, base_dir);
  if (config) config->source = path;
  return config;
}

}  // namespace tokgate::proxy
