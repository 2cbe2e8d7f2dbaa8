// Short names for the Asio/Beast types the data plane uses, and the completion token that turns
// I/O errors into values: on the data plane a failed read is an outcome, not an exception.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/status.hpp>

#include <string>
#include <string_view>

#include "proxy/tls_socket.hpp"

namespace tokgate::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
// The data plane's TLS connection (proxy/tls_socket.hpp: no idle buffers, one send per write).
using TlsStream = TlsSocket;

template <class T = void>
using awaitable = asio::awaitable<T>;

inline constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

// Why a request could not be served: becomes the client's error response and a log line.
struct Failure {
  http::status status = http::status::bad_gateway;
  std::string_view code;  // stable machine-readable name: "upstream-tls", "bad-request", ...
  std::string reason;     // one line for a human
};

}  // namespace tokgate::proxy
