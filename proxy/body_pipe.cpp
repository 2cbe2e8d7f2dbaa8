#include "proxy/body_pipe.hpp"

#include <boost/asio/this_coro.hpp>

namespace tokgate::proxy {

awaitable<bool> Signal::wait() {
  co_await timer_.async_wait(use_nothrow);  // cancelled = notified
  auto state = co_await asio::this_coro::cancellation_state;
  co_return state.cancelled() == asio::cancellation_type::none;
}

awaitable<bool> BodyPipe::wait_space() {
  while (!aborted_ && space() == 0) {
    const bool woken = co_await space_signal_.wait();
    if (!woken) co_return false;
  }
  co_return !aborted_;
}

awaitable<bool> BodyPipe::wait_data() {
  while (!aborted_ && !finished_ && buffered() == 0) {
    const bool woken = co_await data_signal_.wait();
    if (!woken) co_return false;
  }
  co_return !aborted_;
}

}  // namespace tokgate::proxy
