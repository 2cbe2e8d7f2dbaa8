#include "web-ui/admin_server.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

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
    std::string_view target = request.target();
    if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
    const unsigned version = request.version();
    http::response<http::string_body> response;
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      response = make_response(http::status::method_not_allowed, "text/plain; charset=utf-8",
                               "method not allowed\n", version);
      response.set(http::field::allow, "GET, HEAD");
    } else if (target == "/healthz") {
      response = make_response(http::status::ok, "text/plain; charset=utf-8", "ok\n", version);
    } else if (target == "/readyz") {
      const bool ready = !content_.ready || content_.ready();
      response =
          make_response(ready ? http::status::ok : http::status::service_unavailable,
                        "text/plain; charset=utf-8", ready ? "ready\n" : "draining\n", version);
    } else if (target == "/metrics" && content_.metrics_text) {
      response = make_response(http::status::ok, "text/plain; version=0.0.4; charset=utf-8",
                               content_.metrics_text(), version);
    } else if (target == "/status") {
      response =
          make_response(http::status::ok, "application/json", content_.status_json(), version);
    } else if (target == "/ca.pem") {
      response =
          make_response(http::status::ok, "application/x-pem-file", content_.ca_pem, version);
      response.set(http::field::content_disposition, "attachment; filename=\"tokgate-ca.pem\"");
    } else if (target == "/ca.der" || target == "/ca.crt") {
      response =
          make_response(http::status::ok, "application/x-x509-ca-cert",
                        std::string(content_.ca_der.begin(), content_.ca_der.end()), version);
      response.set(http::field::content_disposition, "attachment; filename=\"tokgate-ca.crt\"");
    } else if (target == "/") {
      response = make_response(
          http::status::ok, "text/plain; charset=utf-8",
          "tokgate " + content_.version +
              "\n\nCA fingerprint (SHA-256): " + content_.ca_fingerprint +
              "\n\n/healthz   health\n/readyz    ready for traffic\n/metrics   Prometheus metrics\n"
              "/status    status (JSON)\n/ca.pem    CA certificate (PEM)\n"
              "/ca.crt    CA certificate (DER)\n",
          version);
    } else {
      response = make_response(http::status::not_found, "text/plain; charset=utf-8", "not found\n",
                               version);
    }
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

}  // namespace tokgate::webui
