#include "web-ui/admin_server.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/parse.hpp>

#include <charconv>
#include <fstream>

#include "web-ui/block_page.hpp"
#include "web-ui/flow_feed.hpp"
#include "web-ui/static_assets.hpp"

namespace tokgate::webui {

namespace beast = boost::beast;
namespace http = beast::http;
using namespace asio::experimental::awaitable_operators;
using proxy::use_nothrow;

namespace {
constexpr std::size_t kMaxConnections = 64;
constexpr std::size_t kMaxRequestHeader = 8 * 1024;
constexpr std::chrono::seconds kRequestTimeout{10};
constexpr int kMaxRequestsPerConnection = 100;
constexpr std::size_t kMaxStreams = 16;
constexpr std::size_t kMaxHarBytes = 16 * 1024 * 1024;

http::response<http::string_body> make_response(http::status status, std::string_view type,
                                                std::string body, unsigned version) {
  http::response<http::string_body> response{status, version};
  response.set(http::field::content_type, type);
  response.set(http::field::cache_control, "no-store");
  response.set("X-Content-Type-Options", "nosniff");
  response.set("Content-Security-Policy", "default-src 'none'");
  response.body() = std::move(body);
  response.prepare_payload();
  return response;
}

std::optional<uint64_t> number(std::string_view text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

std::string base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(std::max(n, 0)));
  return out;
}

struct StaticAsset {
  std::string_view content_type;
  std::string_view body;
};

// The UI: three files embedded at build time (web-ui/static/).
std::optional<StaticAsset> static_asset(std::string_view target) {
  if (target == "/" || target == "/index.html") {
    return StaticAsset{"text/html; charset=utf-8", embedded::webui_index_html()};
  }
  if (target == "/app.js") {
    return StaticAsset{"text/javascript; charset=utf-8", embedded::webui_app_js()};
  }
  if (target == "/style.css")
    return StaticAsset{"text/css; charset=utf-8", embedded::webui_style_css()};
  return std::nullopt;
}
}  // namespace

AdminServer::AdminServer(asio::io_context& io, const tcp::endpoint& endpoint, AdminContent content)
    : io_(io), acceptor_(io), content_(std::move(content)) {
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(tcp::acceptor::reuse_address(true));
  acceptor_.bind(endpoint);
  acceptor_.listen();
}

void AdminServer::start() {
  asio::co_spawn(io_, accept_loop(), asio::detached);
}

void AdminServer::stop() {
  stopping_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
}

proxy::awaitable<void> AdminServer::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow);
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) continue;
    if (*open_ >= kMaxConnections) continue;  // the socket closes as it goes out of scope
    asio::co_spawn(io_, serve(std::move(socket)), asio::detached);
  }
}

bool AdminServer::authorized(std::string_view authorization) const {
  if (content_.token.empty() && content_.user.empty()) return true;
  auto equal = [](std::string_view a, std::string_view b) {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
  };
  if (!content_.token.empty() && authorization.starts_with("Bearer ")) {
    return equal(authorization.substr(7), content_.token);
  }
  if (!content_.user.empty() && authorization.starts_with("Basic ")) {
    const std::string expected = base64(content_.user + ":" + content_.password);
    return equal(authorization.substr(6), expected);
  }
  return false;
}

// Server-Sent Events: stats once a second, each new flow as it comes (polled every 250 ms from
// the feed: the feed never waits on us). Ends when the client goes, a write stalls or the
// server stops.
proxy::awaitable<void> AdminServer::stream_events(tcp::socket& socket, unsigned version) {
  struct Release {
    std::shared_ptr<std::size_t> count;
    ~Release() { --*count; }
  } release{streams_};
  ++*release.count;
  http::response<http::empty_body> head{http::status::ok, version};
  head.set(http::field::content_type, "text/event-stream");
  head.set(http::field::cache_control, "no-store");
  head.set("X-Content-Type-Options", "nosniff");
  head.set("Content-Security-Policy", "default-src 'none'");
  head.keep_alive(false);
  http::response_serializer<http::empty_body> serializer{head};
  asio::steady_timer timer(io_);
  timer.expires_after(kRequestTimeout);
  auto wrote = co_await (http::async_write_header(socket, serializer, use_nothrow) ||
                         timer.async_wait(use_nothrow));
  if (wrote.index() == 1 || std::get<0>(std::get<0>(wrote))) co_return;
  uint64_t last = content_.feed != nullptr ? content_.feed->last_seq() : 0;
  auto next_stats = std::chrono::steady_clock::now();
  std::string chunk;
  while (!stopping_) {
    chunk.clear();
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_stats) {
      chunk += "event: stats\ndata: " + stats_text() + "\n\n";
      next_stats = now + std::chrono::seconds(1);
    }
    if (content_.feed != nullptr) {
      for (const auto& flow : content_.feed->flows_after(last, 200, &last)) {
        chunk += "event: flow\ndata: " + flow + "\n\n";
      }
    }
    if (!chunk.empty()) {
      timer.expires_after(kRequestTimeout);
      auto sent = co_await (asio::async_write(socket, asio::buffer(chunk), use_nothrow) ||
                            timer.async_wait(use_nothrow));
      if (sent.index() == 1 || std::get<0>(std::get<0>(sent))) co_return;
    }
    timer.expires_after(std::chrono::milliseconds(250));
    co_await timer.async_wait(use_nothrow);
  }
}

std::string AdminServer::stats_text() const {
  std::string stats = content_.feed != nullptr ? content_.feed->stats_json() : std::string("{}");
  const std::size_t open = content_.open_connections ? content_.open_connections() : 0;
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  stats.insert(1, "\"time\":" + std::to_string(now) + ",\"open_connections\":" +
                      std::to_string(open) + (stats.size() > 2 ? "," : ""));
  return stats;
}

proxy::awaitable<void> AdminServer::serve(tcp::socket socket) {
  struct Release {
    std::shared_ptr<std::size_t> count;
    ~Release() { --*count; }
  } release{open_};
  ++*release.count;
  beast::flat_buffer buffer(kMaxRequestHeader + 1024);
  asio::steady_timer timer(io_);
  for (int served = 0; served < kMaxRequestsPerConnection; ++served) {
    http::request_parser<http::empty_body> parser;
    parser.header_limit(kMaxRequestHeader);
    timer.expires_after(kRequestTimeout);
    auto outcome = co_await (http::async_read(socket, buffer, parser, use_nothrow) ||
                             timer.async_wait(use_nothrow));
    if (outcome.index() == 1) co_return;  // timed out
    auto [ec, n] = std::get<0>(outcome);
    if (ec) co_return;
    const auto& request = parser.get();
    const std::string_view full_target = request.target();
    std::string_view target = full_target;
    if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
    const unsigned version = request.version();
    http::response<http::string_body> response;
    auto text = [&](http::status status, std::string body) {
      return make_response(status, "text/plain; charset=utf-8", std::move(body), version);
    };
    auto json = [&](http::status status, std::string body) {
      return make_response(status, "application/json", std::move(body), version);
    };
    const bool open_endpoint = target == "/healthz" || target == "/readyz";
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      response = text(http::status::method_not_allowed, "method not allowed\n");
      response.set(http::field::allow, "GET, HEAD");
    } else if (!open_endpoint && !authorized(request[http::field::authorization])) {
      response = text(http::status::unauthorized, "authorization required\n");
      response.set(http::field::www_authenticate,
                   content_.user.empty() ? "Bearer realm=\"tokgate\""
                                         : "Basic realm=\"tokgate\", charset=\"UTF-8\"");
    } else if (target == "/healthz") {
      response = text(http::status::ok, "ok\n");
    } else if (target == "/readyz") {
      const bool ready = !content_.ready || content_.ready();
      response = text(ready ? http::status::ok : http::status::service_unavailable,
                      ready ? "ready\n" : "draining\n");
    } else if (target == "/metrics" && content_.metrics_text) {
      response = make_response(http::status::ok, "text/plain; version=0.0.4; charset=utf-8",
                               content_.metrics_text(), version);
    } else if (target == "/status" || target == "/api/status") {
      response = json(http::status::ok, content_.status_json());
    } else if (target == "/api/stats") {
      response = json(http::status::ok, stats_text());
    } else if (target == "/api/flows") {
      FlowFilter filter;
      if (auto url = boost::urls::parse_origin_form(full_target)) {
        for (auto param : url->params()) {
          const std::string value = std::string(param.value).substr(0, 256);
          if (param.key == "category") filter.category = value;
          if (param.key == "action") filter.action = value;
          if (param.key == "host") filter.host = value;
          if (param.key == "client") filter.client = value;
          if (param.key == "status") filter.status = value;
          if (param.key == "limit") filter.limit = number(value).value_or(200);
          if (param.key == "after") filter.after = number(value).value_or(0);
        }
      }
      response = json(http::status::ok, content_.feed != nullptr
                                            ? content_.feed->flows_json(filter)
                                            : std::string("{\"flows\":[],\"last\":0}"));
    } else if (target.starts_with("/api/flows/")) {
      std::string har_path;
      auto seq = number(target.substr(std::string_view("/api/flows/").size()));
      std::optional<std::string> record;
      if (seq && content_.feed != nullptr) record = content_.feed->flow_json(*seq, &har_path);
      if (!record) {
        response = json(http::status::not_found,
                        "{\"error\":\"no such flow (it may have left "
                        "the window of recent flows)\"}");
      } else {
        std::string har = read_capture(har_path);
        if (!har.empty()) {
          record->pop_back();  // the closing brace
          *record += ",\"har\":" + har + "}";
        }
        response = json(http::status::ok, std::move(*record));
      }
    } else if (target == "/api/explain" && content_.explain) {
      ExplainQuery query;
      if (auto url = boost::urls::parse_origin_form(full_target)) {
        for (auto param : url->params()) {
          std::string value = std::string(param.value).substr(0, 8192);
          if (param.key == "url") query.url = std::move(value);
          if (param.key == "method" && !value.empty()) query.method = std::move(value);
          if (param.key == "ua") query.user_agent = std::move(value);
          if (param.key == "header" && query.headers.size() < 64 && !value.empty()) {
            query.headers.push_back(std::move(value));
          }
        }
      }
      auto answer = content_.explain(query);
      response = answer ? json(http::status::ok, std::move(*answer))
                        : json(http::status::bad_request,
                               "{\"error\":\"" + json_escape(answer.error()) + "\"}");
    } else if (target == "/api/events") {
      if (*streams_ >= kMaxStreams) {
        response = text(http::status::service_unavailable, "too many live streams\n");
      } else {
        co_await stream_events(socket, version);
        co_return;
      }
    } else if (target == "/ca.pem") {
      response =
          make_response(http::status::ok, "application/x-pem-file", content_.ca_pem, version);
      response.set(http::field::content_disposition, "attachment; filename=\"tokgate-ca.pem\"");
    } else if (target == "/ca.der" || target == "/ca.crt") {
      response =
          make_response(http::status::ok, "application/x-x509-ca-cert",
                        std::string(content_.ca_der.begin(), content_.ca_der.end()), version);
      response.set(http::field::content_disposition, "attachment; filename=\"tokgate-ca.crt\"");
    } else if (auto asset = static_asset(target)) {
      response =
          make_response(http::status::ok, asset->content_type, std::string(asset->body), version);
      response.set("Content-Security-Policy", kPageSecurityPolicy);
      response.set(http::field::cache_control, "no-cache");
    } else {
      response = text(http::status::not_found, "not found\n");
    }
    response.set("Referrer-Policy", "no-referrer");
    response.keep_alive(request.keep_alive());
    if (request.method() == http::verb::head) {
      http::response_serializer<http::string_body> serializer{response};
      serializer.split(true);
      timer.expires_after(kRequestTimeout);
      auto write = co_await (http::async_write_header(socket, serializer, use_nothrow) ||
                             timer.async_wait(use_nothrow));
      if (write.index() == 1 || std::get<0>(std::get<0>(write))) co_return;
    } else {
      timer.expires_after(kRequestTimeout);
      auto write = co_await (http::async_write(socket, response, use_nothrow) ||
                             timer.async_wait(use_nothrow));
      if (write.index() == 1 || std::get<0>(std::get<0>(write))) co_return;
    }
    if (!response.keep_alive()) co_return;
  }
}

std::string AdminServer::read_capture(const std::string& path) const {
  if (path.empty() || content_.capture_dir.empty()) return {};
  // Only files of the capture directory (the path comes from our own record, but still).
  const auto file = std::filesystem::path(path).lexically_normal();
  const auto dir = content_.capture_dir.lexically_normal();
  if (file.parent_path() != dir || file.extension() != ".har") return {};
  std::ifstream in(file, std::ios::binary);
  if (!in) return {};
  std::string text;
  text.resize(kMaxHarBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxHarBytes || text.empty() || text.front() != '{') return {};
  return text;
}

}  // namespace tokgate::webui
