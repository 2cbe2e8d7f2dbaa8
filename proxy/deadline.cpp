#include "proxy/deadline.hpp"

#include <boost/asio/this_coro.hpp>

namespace tokgate::proxy {

void Deadline::set(std::chrono::milliseconds budget, std::string_view phase) {
  deadline_ = clock::now() + budget;
  phase_ = phase;
  // Only a shorter deadline needs the timer moved; a later one is noticed when the timer fires.
  if (deadline_ < timer_.expiry()) timer_.expires_at(deadline_);
}

awaitable<void> Deadline::watch(const std::function<void()>& on_expire) {
  auto cancellation = co_await asio::this_coro::cancellation_state;
  for (;;) {
    timer_.expires_at(deadline_);
    co_await timer_.async_wait(use_nothrow);
    if (cancellation.cancelled() != asio::cancellation_type::none) co_return;
    if (clock::now() >= deadline_) {
      expired_ = true;
      deadline_ = clock::time_point::max();
      on_expire();
    }
  }
}

}  // namespace tokgate::proxy
