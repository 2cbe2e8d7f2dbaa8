// The flow records of one client connection: what the connection and each of its requests
// leave as evidence (docs/flow-log.md). The record is filled from facts the session already
// holds; building it costs a few string copies per request, and the sink's thread does the
// formatting and the writing.
#include "proxy/client_session.hpp"
#include "proxy/privacy.hpp"
#include "proxy/runtime.hpp"
#include "proxy/worker.hpp"

namespace tokgate::proxy {

namespace {

constexpr std::size_t kMaxEvidence = 8;
constexpr std::size_t kMaxUserAgent = 512;
constexpr std::size_t kMaxQuery = 8 * 1024;
constexpr std::size_t kMaxPath = 8 * 1024;

std::string bounded(std::string_view text, std::size_t limit) {
  return std::string(text.substr(0, limit));
}

}  // namespace

double ClientSession::ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

void ClientSession::note_upstream(const tcp::socket& server) {
  error_code ec;
  auto endpoint = server.remote_endpoint(ec);
  if (ec) return;
  std::string address = endpoint.address().to_string();
  if (address == facts_.upstream_ip) return;  // looked up already
  facts_.upstream_ip = std::move(address);
  facts_.upstream_port = endpoint.port();
  GeoInfo geo = runtime_.geoip.lookup(facts_.upstream_ip);
  facts_.upstream_country = std::move(geo.country);
  facts_.upstream_asn = geo.asn;
  facts_.upstream_as_org = std::move(geo.as_org);
}

FlowRecord ClientSession::connection_record() const {
  FlowRecord record;
  record.type = FlowType::connection;
  record.started = facts_.started;
  record.flow = std::to_string(id_);
  record.conn = id_;
  record.client_ip = facts_.client_ip;
  record.client_port = facts_.client_port;
  record.listener = facts_.listener;
  record.mode = facts_.mode;
  record.sni = facts_.sni;
  record.host = facts_.host;
  record.port = facts_.port;
  record.verdict = facts_.verdict;
  record.bumped = facts_.bumped;
  // A connection that carries no request of its own is acted on as a whole.
  if (facts_.verdict == "splice" || facts_.verdict == "refuse") record.action = facts_.verdict;
  record.category = facts_.category;
  record.rule = facts_.rule;
  record.client_alpn = facts_.client_alpn;
  record.server_alpn = facts_.server_alpn;
  record.client_tls = facts_.client_tls;
  record.server_tls = facts_.server_tls;
  record.upstream_ip = facts_.upstream_ip;
  record.upstream_port = facts_.upstream_port;
  record.upstream_country = facts_.upstream_country;
  record.upstream_asn = facts_.upstream_asn;
  record.upstream_as_org = facts_.upstream_as_org;
  record.connect_ms = facts_.connect_ms;
  record.tls_ms = facts_.tls_ms;
  return record;
}

FlowRecord ClientSession::request_record(const RequestJudgement& judgement, std::string_view method,
                                         std::string_view target, std::string_view user_agent,
                                         std::string flow) {
  FlowRecord record = connection_record();
  record.type = FlowType::request;
  record.started = std::chrono::system_clock::now();
  record.flow = std::move(flow);
  // Connection costs belong to the first request that paid them.
  facts_.connect_ms.reset();
  facts_.tls_ms.reset();
  record.scheme = facts_.scheme;
  record.method = bounded(method, 32);
  record.host = judgement.host;
  record.path = bounded(judgement.path, kMaxPath);
  if (auto question = target.find('?'); question != std::string_view::npos) {
    const QueryPrivacy mode =
        judgement.decision.full_capture ? QueryPrivacy::full : config_.query_privacy;
    record.query = apply_query_privacy(bounded(target.substr(question + 1), kMaxQuery), mode);
  }
  record.category = policy::to_string(judgement.classification.category);
  for (const auto& item : judgement.classification.evidence) {
    if (record.evidence.size() >= kMaxEvidence) break;
    std::string text(policy::to_string(item.kind));
    text += ':';
    text += item.signature;
    text += ':';
    text += item.matched;
    record.evidence.push_back(std::move(text));
  }
  record.rule = judgement.decision.rule;
  record.action = policy::to_string(judgement.decision.action);
  record.user_agent = bounded(user_agent, kMaxUserAgent);
  record.ua_class = classify_user_agent(user_agent);
  ++facts_.requests;
  return record;
}

void ClientSession::emit(FlowRecord record) {
  MetricsShard& metrics = worker_.metrics();
  // A connection that failed before any request (no action) is counted by the connection and
  // handshake metrics, not as a request.
  if (record.type == FlowType::connection && record.action.empty()) {
    runtime_.submit_flow(worker_.index(), std::move(record));
    return;
  }
  const auto category = policy::parse_category(record.category).value_or(policy::Category::none);
  policy::Action action = policy::Action::allow;
  if (auto parsed = policy::parse_action(record.action)) {
    action = *parsed;
  } else if (record.verdict == "splice") {
    action = policy::Action::splice;
  } else if (record.verdict == "refuse") {
    action = policy::Action::refuse;
  }
  metrics.request(category, action, record.status.value_or(0), record.bytes_up.value_or(0),
                  record.bytes_down.value_or(0), record.bumped.value_or(false));
  if (record.connect_ms) metrics.observe(Histogram::upstream_connect, *record.connect_ms / 1000);
  if (record.tls_ms) metrics.observe(Histogram::upstream_tls_handshake, *record.tls_ms / 1000);
  if (record.first_byte_ms) {
    metrics.observe(Histogram::request_first_byte, *record.first_byte_ms / 1000);
  }
  if (record.total_ms && record.type == FlowType::request) {
    metrics.observe(Histogram::request_total, *record.total_ms / 1000);
  }
  if (record.ws_messages_up) metrics.websocket_messages(Direction::up, *record.ws_messages_up);
  if (record.ws_messages_down) {
    metrics.websocket_messages(Direction::down, *record.ws_messages_down);
  }
  runtime_.submit_flow(worker_.index(), std::move(record));
}

void ClientSession::finish_pending(std::optional<unsigned> status, uint64_t bytes_up,
                                   uint64_t bytes_down, std::string_view error,
                                   std::string_view reason) {
  if (!pending_) return;
  FlowRecord record = std::move(*pending_);
  pending_.reset();
  record.status = status;
  record.bytes_up = std::max(bytes_up, pending_bytes_up_);
  pending_bytes_up_ = 0;
  record.bytes_down = bytes_down;
  record.first_byte_ms = pending_first_byte_ms_;
  record.total_ms = ms_since(pending_started_);
  record.error = std::string(error);
  record.error_reason = bounded(reason, 512);
  emit(std::move(record));
}

}  // namespace tokgate::proxy
