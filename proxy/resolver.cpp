#include "proxy/resolver.hpp"

#include <boost/asio/connect.hpp>

namespace tokgate::proxy {

namespace {
tcp::endpoint to_endpoint(const IpAddress& address, uint16_t port) {
  if (address.is_v4()) {
    asio::ip::address_v4::bytes_type b;
    std::copy_n(address.bytes().begin(), 4, b.begin());
    return {asio::ip::address_v4(b), port};
  }
  asio::ip::address_v6::bytes_type b;
  std::copy_n(address.bytes().begin(), 16, b.begin());
  return {asio::ip::address_v6(b), port};
}
}  // namespace

awaitable<std::expected<std::vector<tcp::endpoint>, Failure>> Resolver::resolve(
    const std::string& host, uint16_t port) {
  std::vector<tcp::endpoint> endpoints;
  if (auto literal = IpAddress::parse(host)) {
    endpoints.push_back(to_endpoint(*literal, port));
    co_return endpoints;
  }
  for (const auto& rule : overrides_) {
    if (!rule.matches(host, port)) continue;
    for (const auto& address : rule.addresses) endpoints.push_back(to_endpoint(address, port));
    co_return endpoints;
  }
  auto [ec, results] = co_await resolver_.async_resolve(
      host, std::to_string(port), tcp::resolver::numeric_service, use_nothrow);
  if (ec) {
    co_return std::unexpected(Failure{http::status::bad_gateway, "upstream-dns",
                                      "cannot resolve " + host + ": " + ec.message()});
  }
  for (const auto& entry : results) endpoints.push_back(entry.endpoint());
  if (endpoints.empty()) {
    co_return std::unexpected(
        Failure{http::status::bad_gateway, "upstream-dns", "no address for " + host});
  }
  co_return endpoints;
}

awaitable<std::expected<tcp::endpoint, Failure>> connect_any(
    tcp::socket& socket, const std::vector<tcp::endpoint>& endpoints, const std::string& host) {
  error_code last;
  for (const auto& endpoint : endpoints) {
    if (socket.is_open()) socket.close(last);
    auto [ec] = co_await socket.async_connect(endpoint, use_nothrow);
    if (!ec) {
      socket.set_option(tcp::no_delay(true), ec);
      co_return endpoint;
    }
    last = ec;
    if (ec == asio::error::operation_aborted) break;  // the deadline fired: stop trying
  }
  co_return std::unexpected(Failure{http::status::bad_gateway, "upstream-connect",
                                    "cannot connect to " + host + ": " + last.message()});
}

}  // namespace tokgate::proxy
