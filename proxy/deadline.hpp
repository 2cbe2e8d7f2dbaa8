// One coarse deadline per connection instead of a timer per operation: setting it is a store,
// and its single timer is re-armed only when it fires or when a phase shortens it. On expiry it
// cancels the connection's pending I/O; the session then sees operation_aborted, asks expired()
// and answers with the phase that ran out (e.g. a 504 for the response-header wait).
#pragma once

#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <string_view>

#include "proxy/asio_types.hpp"

namespace tokgate::proxy {

class Deadline {
 public:
  using clock = std::chrono::steady_clock;

  explicit Deadline(const asio::any_io_executor& executor) : timer_(executor) {}

  // Runs for the connection's lifetime, beside the connection's own flow (`flow || watch`),
  // so it ends, by cancellation, before the connection's state is destroyed. on_expire runs on
  // the connection's executor each time a deadline passes.
  awaitable<void> watch(const std::function<void()>& on_expire);

  void set(std::chrono::milliseconds budget, std::string_view phase);
  void clear() { deadline_ = clock::time_point::max(); }
  bool expired() const { return expired_; }
  std::string_view phase() const { return phase_; }
  // After handling an expiry (e.g. to send a 504), the connection may continue with a new phase.
  void rearm() { expired_ = false; }

 private:
  asio::steady_timer timer_;
  clock::time_point deadline_ = clock::time_point::max();
  std::string_view phase_;
  bool expired_ = false;
};

}  // namespace tokgate::proxy
