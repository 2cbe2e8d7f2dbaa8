#include "proxy/server.hpp"

#include <boost/asio/signal_set.hpp>

#include <csignal>
#include <functional>
#include <stdexcept>
#include <thread>

#include "proxy/cli_policy.hpp"
#include "proxy/log.hpp"
#include "web-ui/block_page.hpp"

namespace tokgate::proxy {

namespace {
tcp::endpoint to_tcp(const Endpoint& endpoint) {
  auto address = asio::ip::make_address(endpoint.address.to_string());
  return {address, endpoint.port};
}
}  // namespace

Server::Server(Runtime& runtime) : runtime_(runtime) {
  signal(SIGPIPE, SIG_IGN);
  unsigned count = runtime.config.workers;
  if (count == 0) count = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < count; ++i) workers_.push_back(std::make_unique<Worker>(runtime, i));
}

Server::~Server() = default;

void Server::bind() {
  const Config& config = runtime_.config;
  auto bind_all = [&](const std::vector<Endpoint>& list, ListenerKind kind) {
    for (const auto& configured : list) {
      tcp::endpoint wanted = to_tcp(configured);
      tcp::endpoint bound;
      for (auto& worker : workers_) {
        try {
          // Port 0: the first worker picks the port, the others join it.
          bound = worker->listen(bound.port() != 0 ? bound : wanted, kind);
        } catch (const std::exception& e) {
          throw std::runtime_error("cannot listen on " + configured.to_string() + ": " + e.what());
        }
      }
      const Endpoint actual{configured.address, bound.port()};
      listeners_.push_back({actual.to_string(), std::string(to_string(kind))});
      runtime_.bound_listeners.push_back(actual);
      log::info("listening")
          .kv("role", "proxy")
          .kv("mode", to_string(kind))
          .kv("address", actual.to_string())
          .kv("workers", static_cast<unsigned>(workers_.size()));
    }
  };
  bind_all(config.listen, ListenerKind::explicit_proxy);
  bind_all(config.proxy_protocol_listen, ListenerKind::proxy_protocol);
  bind_all(config.transparent_listen, ListenerKind::transparent);
}

std::string Server::policy_json() const {
  auto snapshot = runtime_.policy.current();
  return ",\"policy\":{\"name\":\"" + webui::json_escape(snapshot->policy->name()) +
         "\",\"source\":\"" + webui::json_escape(snapshot->policy->source()) +
         "\",\"rules\":" + std::to_string(snapshot->policy->rule_count()) +
         ",\"generation\":" + std::to_string(snapshot->generation) + ",\"loaded_at\":\"" +
         format_timestamp(snapshot->loaded_at) + "\",\"catalog\":\"" +
         snapshot->catalog->version() + "\",\"last_reload_error\":\"" +
         webui::json_escape(runtime_.policy.last_error()) +
         "\"},\"pinned_hosts\":" + std::to_string(runtime_.pinned.size());
}

std::string Server::listeners_json() const {
  std::string out = ",\"listeners\":[";
  for (std::size_t i = 0; i < listeners_.size(); ++i) {
    if (i > 0) out.push_back(',');
    out += "{\"address\":\"" + webui::json_escape(listeners_[i].first) + "\",\"mode\":\"" +
           listeners_[i].second + "\"}";
  }
  out += "],\"admin\":\"" + webui::json_escape(admin_address_) + "\",\"ca\":{\"subject\":\"" +
         webui::json_escape(runtime_.ca.subject()) + "\",\"fingerprint\":\"" +
         runtime_.ca.fingerprint_sha256() + "\",\"not_after\":\"" +
         format_timestamp(runtime_.ca.not_after()) + "\"}";
  return out;
}

std::string Server::evidence_json() const {
  std::string out = ",\"flow_log\":";
  if (runtime_.flows) {
    const auto& flows = *runtime_.flows;
    out += "{\"path\":\"" + webui::json_escape(flows.options().path.string()) + "\",\"format\":\"" +
           std::string(to_string(flows.options().format)) +
           "\",\"written\":" + std::to_string(flows.written()) +
           ",\"dropped\":" + std::to_string(flows.dropped()) +
           ",\"write_errors\":" + std::to_string(flows.write_errors()) +
           ",\"captures\":" + std::to_string(flows.captures_written()) + ",\"capture_dir\":\"" +
           webui::json_escape(flows.options().capture_dir.string()) + "\"}";
  } else {
    out += "null";
  }
  out += ",\"geoip\":\"" + webui::json_escape(runtime_.geoip.describe()) + "\"";
  out += ",\"keylog\":" + std::string(runtime_.keylog ? "true" : "false");
  return out;
}

void Server::bind_admin() {
  const Config& config = runtime_.config;
  const Endpoint& configured = config.admin;
  const bool loopback =
      (configured.address.unmapped().is_v4() && configured.address.unmapped().bytes()[0] == 127) ||
      configured.address == IpAddress::loopback_v6();
  if (!loopback && config.admin_token.empty() && config.admin_user.empty()) {
    // Flows, captures and the policy are not for whoever reaches the port.
    throw std::runtime_error("admin address " + configured.to_string() +
                             " is not loopback: set [admin] token, or user and password");
  }
  webui::AdminContent content;
  content.token = config.admin_token;
  content.user = config.admin_user;
  content.password = config.admin_password;
  content.feed = runtime_.feed.get();
  if (runtime_.flows) content.capture_dir = runtime_.flows->options().capture_dir;
  content.open_connections = [this] {
    std::size_t active = 0;
    for (auto& worker : workers_) active += worker->active_sessions();
    return active;
  };
  content.explain =
      [this](const webui::ExplainQuery& query) -> std::expected<std::string, std::string> {
    auto snapshot = runtime_.policy.current();
    return explain_request_json(*snapshot->catalog, *snapshot->policy, query.url, query.method,
                                query.user_agent, query.headers);
  };
  content.version = "0.1.0";
  content.ca_pem = runtime_.ca.pem();
  content.ca_der = runtime_.ca.der();
  content.ca_fingerprint = runtime_.ca.fingerprint_sha256();
  content.metrics_text = [this] { return runtime_.metrics->render_prometheus(); };
  content.ready = [this] {
    return std::ranges::none_of(workers_, [](const auto& worker) { return worker->draining(); });
  };
  content.status_json = [this] {
    std::size_t active = 0;
    for (auto& worker : workers_) active += worker->active_sessions();
    auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
        std::chrono::steady_clock::now() - started_);
    return "{\"version\":\"0.1.0\",\"uptime_seconds\":" + std::to_string(uptime.count()) +
           ",\"workers\":" + std::to_string(workers_.size()) +
           ",\"open_connections\":" + std::to_string(active) +
           ",\"leaf_cache\":{\"size\":" + std::to_string(runtime_.leaf_cache.size()) +
           ",\"hits\":" + std::to_string(runtime_.leaf_cache.hits()) +
           ",\"mints\":" + std::to_string(runtime_.leaf_cache.misses()) + "}" + policy_json() +
           evidence_json() + listeners_json() + "}";
  };
  try {
    admin_ = std::make_unique<webui::AdminServer>(main_io_, to_tcp(configured), std::move(content));
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot listen on " + configured.to_string() + ": " + e.what());
  }
  admin_address_ = Endpoint{configured.address, admin_->local_endpoint().port()}.to_string();
  runtime_.bound_admin = Endpoint{configured.address, admin_->local_endpoint().port()};
  log::info("listening")
      .kv("role", "admin")
      .kv("address", Endpoint{configured.address, admin_->local_endpoint().port()}.to_string());
}

void Server::reload(std::string_view why) {
  if (runtime_.policy.reload(runtime_.config)) {
    runtime_.metrics->policy_reload_succeeded(std::chrono::system_clock::now());
    auto snapshot = runtime_.policy.current();
    log::info("policy-reloaded")
        .kv("trigger", why)
        .kv("name", snapshot->policy->name())
        .kv("source", snapshot->policy->source())
        .kv("rules", static_cast<uint64_t>(snapshot->policy->rule_count()))
        .kv("catalog", snapshot->catalog->version())
        .kv("generation", snapshot->generation);
  } else {
    // The old snapshot stays in force: a typo in the file must not open or close the gates.
    runtime_.metrics->policy_reload_failed();
    log::error("policy-reload-failed")
        .kv("trigger", why)
        .kv("reason", runtime_.policy.last_error());
  }
}

int Server::run() {
  auto& main_io = main_io_;
  auto& signals = signals_;
  for (auto& worker : workers_) worker->start();
  if (admin_) admin_->start();

  std::function<void(const error_code&, int)> on_reload_signal = [&](const error_code& ec, int) {
    if (ec) return;
    reload("SIGHUP");
    if (runtime_.flows) runtime_.flows->request_reopen();
    reload_signals_.async_wait(on_reload_signal);
  };
  reload_signals_.async_wait(on_reload_signal);
  // logrotate's postrotate: the flow log is reopened, nothing else changes.
  std::function<void(const error_code&, int)> on_reopen_signal = [&](const error_code& ec, int) {
    if (ec) return;
    if (runtime_.flows) runtime_.flows->request_reopen();
    log::info("flow-log-reopen").kv("trigger", "SIGUSR1");
    reopen_signals_.async_wait(on_reopen_signal);
  };
  reopen_signals_.async_wait(on_reopen_signal);
  std::function<void(const error_code&)> on_watch_tick;
  if (runtime_.config.policy_watch &&
      (!runtime_.config.policy_file.empty() || !runtime_.config.catalog_dir.empty())) {
    watch_timer_ = std::make_unique<asio::steady_timer>(main_io_);
    runtime_.policy.files_changed(runtime_.config);  // the state to compare against
    on_watch_tick = [&](const error_code& ec) {
      if (ec) return;
      if (runtime_.policy.files_changed(runtime_.config)) reload("file-changed");
      watch_timer_->expires_after(std::chrono::seconds(1));
      watch_timer_->async_wait(on_watch_tick);
    };
    watch_timer_->expires_after(std::chrono::seconds(1));
    watch_timer_->async_wait(on_watch_tick);
  }

  int received = 0;
  signals.async_wait([&](const error_code& ec, int number) {
    if (!ec) received = number;
    main_io.stop();  // the admin listener shares this loop: leave run() now
  });
  main_io.run();
  log::info("draining").kv("signal", received == SIGTERM ? "SIGTERM" : "SIGINT");
  for (auto& worker : workers_) worker->begin_drain();
  if (admin_) admin_->stop();
  if (watch_timer_) watch_timer_->cancel();

  // A second signal means "now".
  bool forced = false;
  main_io.restart();
  signals.async_wait([&](const error_code& ec, int) {
    if (!ec) forced = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + runtime_.config.timeouts.drain;
  for (;;) {
    std::size_t active = 0;
    for (auto& worker : workers_) active += worker->active_sessions();
    if (active == 0) break;
    if (forced || std::chrono::steady_clock::now() >= deadline) {
      log::warn("drain-incomplete").kv("connections", active);
      break;
    }
    main_io.run_for(std::chrono::milliseconds(20));
  }
  for (auto& worker : workers_) worker->stop();
  for (auto& worker : workers_) worker->join();
  log::info("stopped");
  return 0;
}

}  // namespace tokgate::proxy
