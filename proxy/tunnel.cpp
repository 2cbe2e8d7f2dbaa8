#include "proxy/tunnel.hpp"

#include <boost/asio/write.hpp>

#include <memory>
#include <span>
#include <vector>

namespace tokgate::proxy {

namespace {

constexpr std::size_t kScratchBytes = 64 * 1024;

// One per worker thread: a read and its immediate write never yield in between, so every tunnel
// of the thread can use it in turn.
std::span<char> scratch() {
  thread_local const std::unique_ptr<char[]> buffer =
      std::make_unique_for_overwrite<char[]>(kScratchBytes);
  return {buffer.get(), kScratchBytes};
}

void stop_both(tcp::socket& from, tcp::socket& to) {
  error_code ignored;
  from.cancel(ignored);
  to.cancel(ignored);
}

}  // namespace

awaitable<void> tunnel_one_way(tcp::socket& from, tcp::socket& to, uint64_t& bytes,
                               Deadline& deadline, std::chrono::milliseconds idle) {
  error_code ec;
  from.non_blocking(true, ec);
  if (!ec) to.non_blocking(true, ec);
  if (ec) {
    stop_both(from, to);
    co_return;
  }
  bool maybe_more = false;  // the last read filled the buffer: read again before waiting
  for (;;) {
    if (!maybe_more) {
      auto [wait_error] = co_await from.async_wait(tcp::socket::wait_read, use_nothrow);
      if (wait_error) {
        stop_both(from, to);
        co_return;
      }
    }
    std::span<char> buffer = scratch();
    const std::size_t n = from.read_some(asio::buffer(buffer.data(), buffer.size()), ec);
    if (ec == asio::error::would_block) {
      maybe_more = false;
      continue;
    }
    if (ec) {
      if (ec == asio::error::eof) {
        error_code ignored;
        to.shutdown(tcp::socket::shutdown_send, ignored);
      } else {
        stop_both(from, to);
      }
      co_return;
    }
    maybe_more = n == buffer.size();
    bytes += n;
    deadline.set(idle, "tunnel-idle");
    std::size_t written = to.write_some(asio::buffer(buffer.data(), n), ec);
    if (ec == asio::error::would_block) {
      written = 0;
    } else if (ec) {
      stop_both(from, to);
      co_return;
    }
    if (written < n) {
      // The peer is slow: these bytes need a home of their own while they wait.
      std::vector<char> backlog(buffer.begin() + static_cast<std::ptrdiff_t>(written),
                                buffer.begin() + static_cast<std::ptrdiff_t>(n));
      auto [write_error, ignored] =
          co_await asio::async_write(to, asio::buffer(backlog), use_nothrow);
      if (write_error) {
        stop_both(from, to);
        co_return;
      }
    }
  }
}

}  // namespace tokgate::proxy
