#include "proxy/cli.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "certs/certificate_authority.hpp"
#include "policy/host_pattern.hpp"
#include "proxy/cli_policy.hpp"
#include "proxy/config.hpp"
#include "proxy/flow_report.hpp"
#include "proxy/log.hpp"
#include "proxy/runtime.hpp"
#include "proxy/server.hpp"

namespace tokgate::proxy {
namespace {

constexpr int kOk = 0;
constexpr int kFailure = 1;
constexpr int kUsage = 2;

constexpr std::string_view kMainHelp =
    R"(tokgate - a TLS-intercepting proxy that recognises TikTok and WeChat traffic

Usage:
  tokgate run [options]          run the proxy (explicit proxy on 127.0.0.1:8080 by default)
  tokgate ca init [--dir DIR]    create a CA (ECDSA P-256; key file mode 0600)
  tokgate ca show [CA options]   print the CA's subject, SHA-256 fingerprint and validity
  tokgate ca export [CA options] --format pem|der [--out FILE]
  tokgate policy check FILE      validate a policy file (errors as FILE:LINE:COL: ...)
  tokgate policy explain --url URL [--ua UA] [--header 'K: V']... [--json] | --batch FILE|-
                                 category, evidence, rule and action for a request, offline
  tokgate catalog export --format hosts|dnsmasq|rpz|pac
                                 the catalog's host names for DNS blocklists and PAC files
  tokgate report [--json] [--by country|asn|category] FLOWLOG...
                                 share of flows and bytes per destination country, ASN and
                                 category, from flow logs (docs/report.md)
  tokgate --help | --version

Run `tokgate run --help` or `tokgate ca --help` for the options of each.
)";

constexpr std::string_view kRunHelp = R"(Usage: tokgate run [options]

  --config FILE            TOML configuration (default: the embedded default config)
  --listen ADDR:PORT       proxy listener, repeatable (replaces the configured list)
  --transparent ADDR:PORT  transparent listener for REDIRECT/TPROXY'd connections, repeatable
  --listen-proxy-protocol ADDR:PORT
                           explicit listener behind a load balancer: PROXY v1/v2 required
  --admin ADDR:PORT        admin listener (status, /healthz, CA download)
  --workers N              worker threads (0 = one per core)
  --ca-dir DIR             CA directory; a CA is created there if none exists
  --ca-cert FILE --ca-key FILE
                           bring your own CA (e.g. an intermediate of your PKI, chain after it)
  --upstream-ca FILE       extra trusted root for verifying origins, repeatable
  --resolve HOST:PORT:ADDR pin a name to an address, like curl; HOST may be * or *.suffix,
                           PORT may be *; repeatable
  --intercept GLOB         decrypt connections to these hosts, repeatable ("*.tiktok.com",
                           ".tiktok.com" = the name and below, "tiktok.com" = exactly)
  --refuse GLOB            refuse connections to these hosts, repeatable
  --allow-client CIDR      clients allowed to use the proxy, repeatable (replaces the list;
                           default loopback only)
  --connect-ports SPEC     ports CONNECT may reach: "443,8443", "1-65535" (default 443)
  --profile NAME           the shipped policy: gateway (default) or observe
  --policy FILE            a policy file of your own (see docs/policy.md)
  --catalog-dir DIR        catalog files overriding or extending the embedded catalog
  --log-level LEVEL        debug | info | warn | error (default info)
  --user NAME              after binding the listeners and opening its files as root, switch
                           to this user and its groups (like [proxy] user)

Evidence (docs/flow-log.md):
  --flow-log FILE|-        one JSON line per request and per unbumped connection
  --flow-log-format FMT    json (default) | squid (Squid's access.log line)
  --query-privacy MODE     redact (default: names kept, values hidden) | full | omit
  --capture-dir DIR        HAR files of requests whose action is capture
  --keylog FILE            TLS secrets of both legs in SSLKEYLOGFILE format (for Wireshark)
  --geoip-country FILE     MaxMind-format country database (GeoLite2, DB-IP Lite .mmdb)
  --geoip-asn FILE         MaxMind-format ASN database

The policy decides per connection (splice | refuse | intercept) and per request (allow | log |
block | refuse | capture); --intercept/--refuse are overrides applied before it. What is not
intercepted or refused is spliced: relayed byte for byte, never decrypted.
Signals: SIGHUP reloads the policy and catalog (an invalid one keeps the old) and reopens the
flow log; SIGUSR1 reopens the flow log (logrotate); SIGTERM/SIGINT stop accepting, finish
in-flight requests, exit.
)";

constexpr std::string_view kCaHelp = R"(Usage:
  tokgate ca init [--dir DIR]
  tokgate ca show [--dir DIR | --ca-cert FILE --ca-key FILE]
  tokgate ca export [--dir DIR | --ca-cert FILE --ca-key FILE] --format pem|der [--out FILE]

DIR defaults to the configured CA directory ($XDG_DATA_HOME/tokgate/ca or
~/.local/share/tokgate/ca).
)";

int usage_error(std::string_view message) {
  std::cerr << "tokgate: " << message << "\n(see tokgate --help)\n";
  return kUsage;
}

// Walks argv: "--name value" and "--name=value" both work.
class ArgReader {
 public:
  explicit ArgReader(std::span<const std::string_view> args) : args_(args) {}
  bool done() const { return index_ >= args_.size(); }
  std::string_view next() {
    pending_value_.reset();
    std::string_view arg = args_[index_++];
    if (arg.starts_with("--")) {
      if (auto eq = arg.find('='); eq != std::string_view::npos) {
        pending_value_ = arg.substr(eq + 1);
        return arg.substr(0, eq);
      }
    }
    return arg;
  }
  std::optional<std::string_view> value() {
    if (pending_value_) return std::exchange(pending_value_, std::nullopt);
    if (done()) return std::nullopt;
    return args_[index_++];
  }

 private:
  std::span<const std::string_view> args_;
  std::size_t index_ = 0;
  std::optional<std::string_view> pending_value_;
};

std::optional<std::vector<PortRange>> parse_port_spec(std::string_view spec) {
  std::vector<PortRange> ranges;
  while (!spec.empty()) {
    auto comma = spec.find(',');
    auto item = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
    auto dash = item.find('-');
    auto parse_port = [](std::string_view text) -> std::optional<uint16_t> {
      unsigned value = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
      if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || value == 0 ||
          value > 65535) {
        return std::nullopt;
      }
      return static_cast<uint16_t>(value);
    };
    auto first = parse_port(item.substr(0, dash));
    auto last = dash == std::string_view::npos ? first : parse_port(item.substr(dash + 1));
    if (!first || !last || *last < *first) return std::nullopt;
    ranges.push_back({*first, *last});
  }
  if (ranges.empty()) return std::nullopt;
  return ranges;
}

std::string format_time(std::chrono::system_clock::time_point point) {
  std::time_t t = std::chrono::system_clock::to_time_t(point);
  std::tm utc{};
  gmtime_r(&t, &utc);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

struct CaLocation {
  std::filesystem::path dir;
  std::filesystem::path cert;
  std::filesystem::path key;
};

std::expected<certs::CertificateAuthority, std::string> load_ca(const CaLocation& where) {
  if (!where.cert.empty()) return certs::CertificateAuthority::load_files(where.cert, where.key);
  return certs::CertificateAuthority::load_dir(where.dir.empty() ? default_ca_dir() : where.dir);
}

int run_ca(std::span<const std::string_view> args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kCaHelp;
    return args.empty() ? kUsage : kOk;
  }
  std::string_view action = args[0];
  ArgReader reader(args.subspan(1));
  CaLocation where;
  std::string format;
  std::filesystem::path out;
  while (!reader.done()) {
    auto name = reader.next();
    if (name == "--help" || name == "-h") {
      std::cout << kCaHelp;
      return kOk;
    }
    auto value = reader.value();
    if (!value) return usage_error(std::string(name) + " needs a value");
    if (name == "--dir") {
      where.dir = *value;
    } else if (name == "--ca-cert") {
      where.cert = *value;
    } else if (name == "--ca-key") {
      where.key = *value;
    } else if (name == "--format" && action == "export") {
      format = *value;
    } else if (name == "--out" && action == "export") {
      out = *value;
    } else {
      return usage_error("unknown option for 'ca " + std::string(action) +
                         "': " + std::string(name));
    }
  }
  if (where.cert.empty() != where.key.empty()) {
    return usage_error("--ca-cert and --ca-key go together");
  }
  if (action == "init") {
    if (!where.cert.empty()) return usage_error("ca init takes --dir only");
    auto dir = where.dir.empty() ? default_ca_dir() : where.dir;
    auto ca = certs::CertificateAuthority::create(dir);
    if (!ca) {
      std::cerr << "tokgate: " << ca.error() << "\n";
      return kFailure;
    }
    std::cout << "created CA in " << dir.string() << "\n"
              << "subject:     " << ca->subject() << "\n"
              << "fingerprint: SHA256 " << ca->fingerprint_sha256() << "\n";
    return kOk;
  }
  if (action != "show" && action != "export") {
    return usage_error("unknown ca action '" + std::string(action) + "'");
  }
  auto ca = load_ca(where);
  if (!ca) {
    std::cerr << "tokgate: " << ca.error() << "\n";
    return kFailure;
  }
  if (action == "show") {
    std::cout << "subject:     " << ca->subject() << "\n"
              << "fingerprint: SHA256 " << ca->fingerprint_sha256() << "\n"
              << "not before:  " << format_time(ca->not_before()) << "\n"
              << "not after:   " << format_time(ca->not_after()) << "\n";
    return kOk;
  }
  if (format != "pem" && format != "der") return usage_error("--format must be pem or der");
  std::string bytes;
  if (format == "pem") {
    bytes = ca->pem();
  } else {
    auto der = ca->der();
    bytes.assign(der.begin(), der.end());
  }
  if (out.empty()) {
    std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    std::cout.flush();
    return std::cout ? kOk : kFailure;
  }
  std::ofstream file(out, std::ios::binary | std::ios::trunc);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!file) {
    std::cerr << "tokgate: " << out.string() << ": cannot write\n";
    return kFailure;
  }
  return kOk;
}

// The account named by [proxy] user / --user.
struct TargetUser {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;  // its primary group
  std::string home;
};

std::expected<TargetUser, std::string> look_up_user(const std::string& name) {
  long size = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buffer(size > 0 ? static_cast<std::size_t>(size) : 16384);
  passwd entry{};
  passwd* found = nullptr;
  int error = 0;
  while ((error = ::getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found)) ==
             ERANGE &&
         buffer.size() < (1u << 20)) {
    buffer.resize(buffer.size() * 2);
  }
  if (found == nullptr) {
    return std::unexpected(error != 0
                               ? "cannot look up user '" + name + "': " + std::strerror(error)
                               : "no such user '" + name + "'");
  }
  return TargetUser{name, entry.pw_uid, entry.pw_gid, entry.pw_dir ? entry.pw_dir : ""};
}

// What tokgate writes after it has become `user` (docs/deploy-gateway.md, "Privileges"): the
// flow log is reopened on SIGUSR1/SIGHUP and HAR captures are created in the capture directory,
// so both are given to the user. (The key log and the CA are not: the key log is written
// through the descriptor opened as root, and the CA is read once, at start.)
void hand_over_files(const Runtime& runtime, const TargetUser& user) {
  std::vector<std::filesystem::path> paths;
  if (runtime.flows) {
    const auto& options = runtime.flows->options();
    if (!options.path.empty() && options.path != "-") paths.push_back(options.path);
    if (!options.capture_dir.empty()) paths.push_back(options.capture_dir);
  }
  for (const auto& path : paths) {
    if (::chown(path.c_str(), user.uid, user.gid) != 0) {
      log::warn("chown-failed")
          .kv("path", path.string())
          .kv("user", user.name)
          .kv("reason", std::strerror(errno));
    }
  }
}

// After the drop: what will need writing and cannot be is said now, not at the first rotation.
void check_still_writable(const Runtime& runtime, const TargetUser& user) {
  if (!runtime.flows) return;
  const auto& options = runtime.flows->options();
  auto warn_unless_writable = [&](const std::filesystem::path& path, std::string_view what) {
    if (::access(path.c_str(), W_OK) != 0) {
      log::warn("not-writable-after-drop")
          .kv("path", path.string())
          .kv("what", what)
          .kv("user", user.name)
          .kv("reason", std::strerror(errno));
    }
  };
  if (!options.path.empty() && options.path != "-") {
    warn_unless_writable(options.path, "flow log (reopened on SIGUSR1/SIGHUP)");
    // logrotate moves the file away: the reopen then creates a new one in the directory.
    auto dir = options.path.parent_path();
    warn_unless_writable(dir.empty() ? std::filesystem::path(".") : dir,
                         "flow log directory (a new file after rotation)");
  }
  if (!options.capture_dir.empty()) warn_unless_writable(options.capture_dir, "capture directory");
}

// Becomes `user` for good: its groups, its primary group, then its uid (all of real, effective,
// saved and filesystem ids, in every thread: glibc applies set*id to the whole process), and
// proves that root cannot be had back.
std::expected<void, std::string> drop_privileges(const TargetUser& user) {
  if (::initgroups(user.name.c_str(), user.gid) != 0) {
    return std::unexpected("initgroups(" + user.name + "): " + std::strerror(errno));
  }
  if (::setgid(user.gid) != 0) {
    return std::unexpected("setgid(" + std::to_string(user.gid) + "): " + std::strerror(errno));
  }
  if (::setuid(user.uid) != 0) {
    return std::unexpected("setuid(" + std::to_string(user.uid) + "): " + std::strerror(errno));
  }
  uid_t ruid = 0, euid = 0, suid = 0;
  gid_t rgid = 0, egid = 0, sgid = 0;
  ::getresuid(&ruid, &euid, &suid);
  ::getresgid(&rgid, &egid, &sgid);
  if (ruid != user.uid || euid != user.uid || suid != user.uid || rgid != user.gid ||
      egid != user.gid || sgid != user.gid) {
    return std::unexpected("the ids did not all change");
  }
  if (user.uid != 0 && (::setuid(0) == 0 || ::seteuid(0) == 0)) {
    return std::unexpected("root could be regained after the switch");
  }
  // Nothing exec'd from here may gain privileges (set-user-ID binaries, file capabilities).
  ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  return {};
}

// The flow log, the client pseudonymiser: opened before the first connection, so a bad path
// stops the start with a clear error instead of losing evidence later.
std::expected<void, std::string> open_evidence(Runtime& runtime) {
  const Config& config = runtime.config;
  const unsigned workers =
      config.workers != 0 ? config.workers : std::max(1u, std::thread::hardware_concurrency());
  runtime.metrics = std::make_unique<Metrics>(workers + 1, "0.1.0");
  runtime.metrics->set_workers(workers);
  runtime.metrics->policy_loaded(std::chrono::system_clock::now());
  if (!config.geoip_country_db.empty() || !config.geoip_asn_db.empty()) {
    auto geoip = GeoIp::open(config.geoip_country_db, config.geoip_asn_db);
    if (!geoip) return std::unexpected(geoip.error());
    runtime.geoip = std::move(*geoip);
    log::info("geoip").kv("databases", runtime.geoip.describe());
  }
  if (!config.keylog_file.empty()) {
    auto keylog = KeyLog::open(config.keylog_file);
    if (!keylog) return std::unexpected(keylog.error());
    runtime.keylog = std::move(*keylog);
    log::warn("keylog")
        .kv("path", config.keylog_file.string())
        .kv("note", "TLS secrets of every intercepted connection are written to this file");
  }
  if (config.pseudonymise_clients) {
    auto key_file = config.client_key_file;
    if (key_file.empty()) {
      key_file =
          (config.ca_dir.empty() ? default_ca_dir() : config.ca_dir) / "client-pseudonym.key";
    }
    auto pseudonymiser = ClientPseudonymiser::load_or_create(key_file);
    if (!pseudonymiser) return std::unexpected(pseudonymiser.error());
    runtime.pseudonymiser = std::move(*pseudonymiser);
  }
  // The sink runs even without a flow log file: HAR captures, metrics and (later) the UI's feed
  // read the records too, and a reloaded policy may start capturing at any time.
  std::filesystem::path capture_dir = config.capture_dir;
  if (capture_dir.empty()) {
    capture_dir =
        (config.ca_dir.empty() ? default_ca_dir() : config.ca_dir).parent_path() / "captures";
  }
  {
    std::error_code ec;
    std::filesystem::create_directories(capture_dir, ec);
    if (ec)
      return std::unexpected(capture_dir.string() +
                             ": cannot create the capture directory: " + ec.message());
    std::filesystem::permissions(capture_dir, std::filesystem::perms::owner_all, ec);
  }
  {
    FlowSink::Options options;
    options.path = config.flow_log;
    options.format = config.flow_log_format == "squid" ? FlowLogFormat::squid : FlowLogFormat::json;
    options.queue = config.flow_log_queue;
    options.lanes = workers;
    options.metrics = runtime.metrics.get();
    options.capture_dir = capture_dir;
    options.capture_body_bytes = config.capture_body_bytes;
    options.redact_headers = config.redact_headers;
    options.on_write_error = [path = config.flow_log.string()](const std::string& reason,
                                                               uint64_t dropped) {
      log::warn("flow-log-write-failed")
          .kv("path", path)
          .kv("reason", reason)
          .kv("records_dropped", dropped);
    };
    auto sink = FlowSink::open(std::move(options));
    if (!sink) return std::unexpected(sink.error());
    runtime.flows = std::move(*sink);
    runtime.feed = std::make_unique<webui::FlowFeed>();
    runtime.flows->add_observer(
        [feed = runtime.feed.get()](const FlowRecord& record) { feed->add(record); });
    log::info("flow-log")
        .kv("path", config.flow_log.empty() ? std::string("none") : config.flow_log.string())
        .kv("captures", capture_dir.string())
        .kv("format", config.flow_log_format)
        .kv("query", to_string(config.query_privacy))
        .kv("clients", config.pseudonymise_clients ? "pseudonymised" : "full");
  }
  return {};
}

int run_proxy(std::span<const std::string_view> args) {
  ArgReader reader(args);
  std::optional<std::filesystem::path> config_file;
  struct Override {
    std::string_view name;
    std::string_view value;
  };
  std::vector<Override> overrides;
  while (!reader.done()) {
    auto name = reader.next();
    if (name == "--help" || name == "-h") {
      std::cout << kRunHelp;
      return kOk;
    }
    auto value = reader.value();
    if (!value) return usage_error(std::string(name) + " needs a value");
    if (name == "--config") {
      config_file = *value;
    } else {
      overrides.push_back({name, *value});
    }
  }
  auto loaded = config_file ? load_config_file(*config_file)
                            : parse_config(embedded_default_config(), "<embedded default>");
  if (!loaded) {
    std::cerr << loaded.error() << "\n";
    return kUsage;
  }
  Config config = std::move(*loaded);
  bool listen_replaced = false;
  bool clients_replaced = false;
  for (const auto& [name, value] : overrides) {
    auto bad = [&](std::string_view what) {
      return usage_error(std::string(name) + " " + std::string(value) + ": " + std::string(what));
    };
    if (name == "--listen" || name == "--admin") {
      auto endpoint = Endpoint::parse(value);
      if (!endpoint) return bad("expected ADDR:PORT, e.g. 127.0.0.1:8080 or [::1]:8080");
      if (name == "--admin") {
        config.admin = *endpoint;
      } else {
        if (!listen_replaced) config.listen.clear();
        listen_replaced = true;
        config.listen.push_back(*endpoint);
      }
    } else if (name == "--transparent" || name == "--listen-proxy-protocol") {
      auto endpoint = Endpoint::parse(value);
      if (!endpoint) return bad("expected ADDR:PORT, e.g. 0.0.0.0:8443 or [::]:8443");
      (name == "--transparent" ? config.transparent_listen : config.proxy_protocol_listen)
          .push_back(*endpoint);
    } else if (name == "--workers") {
      unsigned workers = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), workers);
      if (ec != std::errc{} || end != value.data() + value.size() || workers > 1024) {
        return bad("expected a number of workers");
      }
      config.workers = workers;
    } else if (name == "--ca-dir") {
      config.ca_dir = value;
    } else if (name == "--ca-cert") {
      config.ca_cert = value;
    } else if (name == "--ca-key") {
      config.ca_key = value;
    } else if (name == "--upstream-ca") {
      config.extra_ca_files.emplace_back(value);
    } else if (name == "--resolve") {
      auto rule = parse_resolve_override(value);
      if (!rule) return bad(rule.error());
      config.resolve.push_back(std::move(*rule));
    } else if (name == "--intercept" || name == "--refuse") {
      auto pattern = policy::HostPattern::parse(value);
      if (!pattern) return bad(pattern.error());
      (name == "--intercept" ? config.intercept_hosts : config.refuse_hosts).emplace_back(value);
    } else if (name == "--allow-client") {
      auto cidr = Cidr::parse(value);
      if (!cidr) return bad("expected a CIDR such as 127.0.0.0/8");
      if (!clients_replaced) config.allowed_clients.clear();
      clients_replaced = true;
      config.allowed_clients.push_back(*cidr);
    } else if (name == "--connect-ports") {
      auto ports = parse_port_spec(value);
      if (!ports) return bad("expected ports or ranges such as 443,8443 or 1-65535");
      config.connect_ports = std::move(*ports);
    } else if (name == "--profile") {
      if (value != "gateway" && value != "observe") return bad("expected gateway or observe");
      config.policy_profile = value;  // a policy file, from the config or --policy, still wins
    } else if (name == "--policy") {
      config.policy_file = value;
    } else if (name == "--catalog-dir") {
      config.catalog_dir = value;
    } else if (name == "--flow-log") {
      config.flow_log = value;
    } else if (name == "--flow-log-format") {
      if (value != "json" && value != "squid") return bad("expected json or squid");
      config.flow_log_format = value;
    } else if (name == "--query-privacy") {
      auto mode = parse_query_privacy(value);
      if (!mode) return bad("expected redact, full or omit");
      config.query_privacy = *mode;
    } else if (name == "--capture-dir") {
      config.capture_dir = value;
    } else if (name == "--keylog") {
      config.keylog_file = value;
    } else if (name == "--geoip-country") {
      config.geoip_country_db = value;
    } else if (name == "--geoip-asn") {
      config.geoip_asn_db = value;
    } else if (name == "--user") {
      if (!is_valid_user_name(value)) return bad("expected a user name");
      config.user = value;
    } else if (name == "--log-level") {
      if (value == "debug")
        log::set_min_level(log::Level::debug);
      else if (value == "info")
        log::set_min_level(log::Level::info);
      else if (value == "warn")
        log::set_min_level(log::Level::warn);
      else if (value == "error")
        log::set_min_level(log::Level::error);
      else
        return bad("expected debug, info, warn or error");
    } else {
      return usage_error("unknown option for 'run': " + std::string(name));
    }
  }
  if (config.ca_cert.empty() != config.ca_key.empty()) {
    return usage_error("--ca-cert and --ca-key go together");
  }
  // The user to become after binding: known to exist (and reachable) before anything starts.
  std::optional<TargetUser> target_user;
  if (!config.user.empty()) {
    auto user = look_up_user(config.user);
    if (!user) {
      std::cerr << "tokgate: [proxy] user: " << user.error() << "\n";
      return kUsage;
    }
    if (::geteuid() != 0 && ::geteuid() != user->uid) {
      std::cerr << "tokgate: [proxy] user: cannot switch to '" << user->name << "' (uid "
                << user->uid << "): tokgate runs as uid " << ::geteuid() << ", not as root\n";
      return kUsage;
    }
    target_user = std::move(*user);
  }

  auto snapshot = load_policy_snapshot(config, 1);
  if (!snapshot) {
    std::cerr << snapshot.error() << "\n";
    return kUsage;
  }
  log::info("policy")
      .kv("name", (*snapshot)->policy->name())
      .kv("source", (*snapshot)->policy->source())
      .kv("rules", static_cast<uint64_t>((*snapshot)->policy->rule_count()))
      .kv("catalog", (*snapshot)->catalog->version())
      .kv("catalog_entries", static_cast<uint64_t>((*snapshot)->catalog->entry_count()));

  std::expected<certs::CertificateAuthority, std::string> ca = std::unexpected(std::string());
  if (!config.ca_cert.empty()) {
    ca = certs::CertificateAuthority::load_files(config.ca_cert, config.ca_key);
  } else {
    auto dir = config.ca_dir.empty() ? default_ca_dir() : config.ca_dir;
    bool created = false;
    ca = certs::CertificateAuthority::load_or_create(dir, &created);
    if (ca && created) {
      log::info("ca-created").kv("dir", dir.string()).kv("fingerprint", ca->fingerprint_sha256());
    }
  }
  if (!ca) {
    log::error("ca-unavailable").kv("reason", ca.error());
    return kFailure;
  }
  log::info("ca")
      .kv("subject", ca->subject())
      .kv("fingerprint", ca->fingerprint_sha256())
      .kv("not_after", format_time(ca->not_after()));

  try {
    Runtime runtime(std::move(config), std::move(*ca), std::move(*snapshot));
    if (auto evidence = open_evidence(runtime); !evidence) {
      log::error("startup-failed").kv("reason", evidence.error());
      return kFailure;
    }
    Server server(runtime);
    server.bind();
    server.bind_admin();
    // Every listener is bound and every file that needs root is open: root is no longer needed.
    if (target_user && ::geteuid() == 0) {
      hand_over_files(runtime, *target_user);
      if (auto dropped = drop_privileges(*target_user); !dropped) {
        log::error("privilege-drop-failed")
            .kv("user", target_user->name)
            .kv("reason", dropped.error());
        return kFailure;
      }
      log::info("privileges-dropped")
          .kv("user", target_user->name)
          .kv("uid", static_cast<uint64_t>(target_user->uid))
          .kv("gid", static_cast<uint64_t>(target_user->gid));
      check_still_writable(runtime, *target_user);
    } else if (target_user) {
      log::info("privileges").kv("user", target_user->name).kv("note", "already running as it");
    } else if (::geteuid() == 0) {
      log::warn("running-as-root")
          .kv("note", "set [proxy] user (or --user) to drop root once the listeners are bound");
    }
    return server.run();
  } catch (const std::exception& e) {
    log::error("startup-failed").kv("reason", e.what());
    return kFailure;
  }
}

}  // namespace

int run_cli(std::span<const std::string_view> args) {
  if (args.empty()) {
    std::cerr << kMainHelp;
    return kUsage;
  }
  std::string_view command = args[0];
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << kMainHelp;
    return kOk;
  }
  if (command == "--version") {
    std::cout << "tokgate 0.1.0\n";
    return kOk;
  }
  if (command == "run") return run_proxy(args.subspan(1));
  if (command == "ca") return run_ca(args.subspan(1));
  if (command == "policy") return run_policy_command(args.subspan(1));
  if (command == "catalog") return run_catalog_command(args.subspan(1));
  if (command == "report") return report_main(args.subspan(1));
  return usage_error("unknown command '" + std::string(command) + "'");
}

}  // namespace tokgate::proxy
