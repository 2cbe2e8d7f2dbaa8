// A message body between the two legs of one exchange when they do not share a framing (HTTP/2
// on one side, or many streams at once): a bounded byte queue with a producer that waits for
// space and a consumer that waits for data. Both ends run on the same worker thread, so there
// are no locks; waiting is a timer that a notify cancels.
#pragma once

#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "proxy/asio_types.hpp"

namespace tokgate::proxy {

struct HeaderField {
  std::string name;  // lower case
  std::string value;
};
using HeaderList = std::vector<HeaderField>;

// Wakes every coroutine waiting on it. Waiters re-check their condition in a loop: a notify
// with nobody waiting is not remembered (and need not be: one thread, no lost wake-ups).
class Signal {
 public:
  explicit Signal(const asio::any_io_executor& executor) : timer_(executor) {
    timer_.expires_at(asio::steady_timer::time_point::max());
  }
  // False when the waiting coroutine itself was cancelled (e.g. the losing side of `||`).
  // (Coroutines are defined out of line, in body_pipe.cpp: GCC 12 may lay out the frame of an
  // inline coroutine differently in different translation units.)
  awaitable<bool> wait();
  void notify() { timer_.cancel(); }

 private:
  asio::steady_timer timer_;
};

class BodyPipe {
 public:
  BodyPipe(const asio::any_io_executor& executor, std::size_t capacity)
      : data_signal_(executor), space_signal_(executor), capacity_(capacity) {}
  BodyPipe(const BodyPipe&) = delete;
  BodyPipe& operator=(const BodyPipe&) = delete;

  // --- producer side ---
  std::size_t space() const { return buffered() >= capacity_ ? 0 : capacity_ - buffered(); }
  // Appends bytes. An HTTP/2 producer may overshoot the capacity by what the flow-control
  // window allowed; the window is what bounds it.
  void push(std::span<const uint8_t> bytes) {
    if (aborted_ || finished_) {
      if (on_consumed) on_consumed(bytes.size());  // discarded: give the window back
      return;
    }
    if (offset_ > 0 && offset_ >= data_.size() / 2) {
      data_.erase(data_.begin(), data_.begin() + static_cast<std::ptrdiff_t>(offset_));
      offset_ = 0;
    }
    if (tap) tap(bytes);
    data_.insert(data_.end(), bytes.begin(), bytes.end());
    total_ += bytes.size();
    wake_consumer();
  }
  void finish(HeaderList trailers = {}) {
    if (finished_ || aborted_) return;
    finished_ = true;
    trailers_ = std::move(trailers);
    wake_consumer();
  }
  // The exchange failed: both ends stop, buffered bytes are dropped (and their window returned).
  void abort() {
    if (aborted_) return;
    aborted_ = true;
    const std::size_t dropped = buffered();
    data_.clear();
    offset_ = 0;
    if (dropped > 0 && on_consumed) on_consumed(dropped);
    wake_consumer();
    space_signal_.notify();
  }
  // True when there is space, false when the pipe was aborted.
  awaitable<bool> wait_space();

  // --- consumer side ---
  std::size_t buffered() const { return data_.size() - offset_; }
  std::span<const uint8_t> peek() const { return {data_.data() + offset_, buffered()}; }
  void consume(std::size_t n) {
    n = std::min(n, buffered());
    offset_ += n;
    if (offset_ == data_.size()) {
      data_.clear();
      offset_ = 0;
    }
    if (on_consumed && n > 0) on_consumed(n);
    space_signal_.notify();
  }
  std::size_t read(std::span<uint8_t> out) {
    const std::size_t n = std::min(out.size(), buffered());
    if (n > 0) std::memcpy(out.data(), data_.data() + offset_, n);
    consume(n);
    return n;
  }
  bool finished() const { return finished_; }
  bool drained() const { return finished_ && buffered() == 0; }
  bool aborted() const { return aborted_; }
  // True when there is data or the body is complete, false when the pipe was aborted.
  awaitable<bool> wait_data();
  const HeaderList& trailers() const { return trailers_; }
  uint64_t total() const { return total_; }

  // Sees every byte as it enters (WebSocket frame accounting).
  std::function<void(std::span<const uint8_t>)> tap;
  // Hooks for an HTTP/2 end: resume a deferred DATA source, give flow-control window back.
  std::function<void()> on_data;
  std::function<void(std::size_t)> on_consumed;

 private:
  void wake_consumer() {
    data_signal_.notify();
    if (on_data) on_data();
  }

  std::vector<uint8_t> data_;
  std::size_t offset_ = 0;
  Signal data_signal_;
  Signal space_signal_;
  std::size_t capacity_;
  uint64_t total_ = 0;
  HeaderList trailers_;
  bool finished_ = false;
  bool aborted_ = false;
};

}  // namespace tokgate::proxy
