// Name resolution for the server side: IP literals directly, then the --resolve overrides (the
// lab and the tests point TikTok names at local origins with them), then the system resolver.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <expected>
#include <string>
#include <vector>

#include "proxy/asio_types.hpp"
#include "proxy/config.hpp"

namespace tokgate::proxy {

class Resolver {
 public:
  Resolver(const asio::any_io_executor& executor, const std::vector<ResolveOverride>& overrides)
      : resolver_(executor), overrides_(overrides) {}

  awaitable<std::expected<std::vector<tcp::endpoint>, Failure>> resolve(const std::string& host,
                                                                        uint16_t port);
  void cancel() { resolver_.cancel(); }

 private:
  tcp::resolver resolver_;
  const std::vector<ResolveOverride>& overrides_;
};

// Connects to the first endpoint that accepts, in order. The caller's deadline bounds the wait.
awaitable<std::expected<tcp::endpoint, Failure>> connect_any(
    tcp::socket& socket, const std::vector<tcp::endpoint>& endpoints, const std::string& host);

}  // namespace tokgate::proxy
