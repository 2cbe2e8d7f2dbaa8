#include "proxy/flow_sink.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "proxy/har.hpp"

namespace tokgate::proxy {

namespace {

std::expected<int, std::string> open_append(const std::filesystem::path& path) {
  // O_NONBLOCK for the open only: a FIFO nobody reads must fail now, not hang the start.
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0640);
  if (fd < 0) {
    const int error = errno;
    return std::unexpected(path.string() + ": cannot open the flow log: " +
                           (error == ENXIO ? std::string("a FIFO with no reader")
                                           : std::string(std::strerror(error))));
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

}  // namespace

std::string_view to_string(FlowLogFormat format) {
  return format == FlowLogFormat::json ? "json" : "squid";
}

FlowSink::FlowSink(Options options) : options_(std::move(options)) {
  const std::size_t lanes = std::max<std::size_t>(1, options_.lanes);
  lane_capacity_ = std::max<std::size_t>(16, options_.queue / lanes);
  for (std::size_t i = 0; i < lanes; ++i) lanes_.push_back(std::make_unique<Lane>());
}

std::expected<std::unique_ptr<FlowSink>, std::string> FlowSink::open(Options options) {
  std::unique_ptr<FlowSink> sink(new FlowSink(std::move(options)));
  if (sink->options_.path == "-") {
    sink->fd_ = STDOUT_FILENO;
  } else if (!sink->options_.path.empty()) {
    auto fd = open_append(sink->options_.path);
    if (!fd) return std::unexpected(fd.error());
    sink->fd_ = *fd;
    sink->owns_fd_ = true;
  }
  sink->thread_ = std::thread([raw = sink.get()] { raw->run(); });
  return sink;
}

FlowSink::~FlowSink() {
  stop();
  if (owns_fd_ && fd_ >= 0) ::close(fd_);
}

void FlowSink::wake() {
  signal_.fetch_add(1, std::memory_order_release);
  signal_.notify_one();
}

bool FlowSink::submit(std::size_t lane_index, FlowRecord record) {
  if (stopping_.load(std::memory_order_relaxed)) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  Lane& lane = *lanes_[lane_index % lanes_.size()];
  {
    std::lock_guard lock(lane.mutex);
    if (lane.pending.size() >= lane_capacity_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      if (options_.metrics != nullptr) options_.metrics->flow_log_dropped(1);
      return false;
    }
    lane.pending.push_back(std::move(record));
  }
  // Only a sleeping writer needs a wake-up (a system call); a busy one comes back for more.
  if (sleeping_.load(std::memory_order_seq_cst) && sleeping_.exchange(false)) wake();
  return true;
}

void FlowSink::add_observer(Observer observer) {
  std::lock_guard lock(observers_mutex_);
  observers_.push_back(std::move(observer));
}

void FlowSink::stop() {
  if (stopping_.exchange(true)) {
    if (thread_.joinable()) thread_.join();
    return;
  }
  wake();
  if (thread_.joinable()) thread_.join();
}

bool FlowSink::reopen_file() {
  if (!owns_fd_) return true;
  auto fd = open_append(options_.path);
  if (!fd) {
    write_errors_.fetch_add(1, std::memory_order_relaxed);
    return false;  // keep writing to the old file rather than lose records
  }
  ::close(fd_);
  fd_ = *fd;
  return true;
}

bool FlowSink::write_all(std::string_view bytes) {
  struct stat info {};
  const bool regular = ::fstat(fd_, &info) == 0 && S_ISREG(info.st_mode);
  const off_t start = regular ? ::lseek(fd_, 0, SEEK_END) : -1;
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = n < 0 ? errno : ENOSPC;
      write_errors_.fetch_add(1, std::memory_order_relaxed);
      if (done > 0) {
        if (start >= 0) {
          if (::ftruncate(fd_, start) != 0) {
            (void)::write(fd_, "\n", 1);  // at least end the broken line
          }
        } else {
          (void)::write(fd_, "\n", 1);
        }
      }
      last_write_errno_ = error;
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  return true;
}

void FlowSink::report_write_error(int error, std::size_t records) {
  dropped_since_report_ += records;
  const auto now = std::chrono::steady_clock::now();
  if (!options_.on_write_error || (last_error_report_ != std::chrono::steady_clock::time_point{} &&
                                   now - last_error_report_ < std::chrono::seconds(10))) {
    return;
  }
  last_error_report_ = now;
  options_.on_write_error(std::strerror(error), dropped_since_report_);
  dropped_since_report_ = 0;
}

// One HAR file per captured exchange, named so that a directory listing sorts by time:
// 20261201T134544Z-7.s3-www.tiktok.com.har. Hosts and flow ids are reduced to [a-z0-9.-].
void FlowSink::write_capture(FlowRecord& record) {
  std::shared_ptr<HarExchange> exchange = std::move(record.har);
  if (options_.capture_dir.empty()) return;
  const std::string stamp = format_timestamp(record.started);  // 2026-12-01T13:45:44.039Z
  std::string name;
  for (char c : stamp) {
    if (std::isdigit(static_cast<unsigned char>(c)) || c == 'T' || c == 'Z') name.push_back(c);
  }
  name += "-" + record.flow + "-" + record.host.substr(0, 128);
  for (auto& c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (!std::isalnum(u) && c != '.' && c != '-') c = '_';
  }
  const std::filesystem::path path = options_.capture_dir / (name + ".har");
  HarRedaction redaction;
  redaction.full = record.har_full;
  redaction.extra_headers = options_.redact_headers;
  const std::string text = to_har(*exchange, redaction, options_.capture_body_bytes);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0640);
  bool written = fd >= 0;
  if (fd >= 0) {
    std::string_view rest = text;
    while (!rest.empty()) {
      const ssize_t n = ::write(fd, rest.data(), rest.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        written = false;
        break;
      }
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    ::close(fd);
  }
  if (written) {
    record.capture = path.string();
    captures_written_.fetch_add(1, std::memory_order_relaxed);
    if (options_.metrics != nullptr) options_.metrics->captures(1);
  } else if (options_.metrics != nullptr) {
    options_.metrics->captures_dropped(1);
  }
}

void FlowSink::run() {
  std::vector<FlowRecord> batch;
  std::string text;
  for (;;) {
    const uint32_t seen = signal_.load(std::memory_order_acquire);
    if (reopen_.exchange(false, std::memory_order_relaxed)) reopen_file();
    bool any = false;
    for (auto& lane : lanes_) {
      {
        std::lock_guard lock(lane->mutex);
        batch.swap(lane->pending);
      }
      if (batch.empty()) continue;
      any = true;
      text.clear();
      std::vector<Observer> observers;
      {
        std::lock_guard lock(observers_mutex_);
        observers = observers_;
      }
      for (auto& record : batch) {
        if (record.har) write_capture(record);
        for (const auto& observer : observers) observer(record);
        if (fd_ < 0) continue;
        text +=
            options_.format == FlowLogFormat::json ? to_json_line(record) : to_squid_line(record);
        text.push_back('\n');
      }
      if (fd_ >= 0) {
        if (write_all(text)) {
          written_.fetch_add(batch.size(), std::memory_order_relaxed);
          if (options_.metrics != nullptr) options_.metrics->flow_log_records(batch.size());
        } else {
          dropped_.fetch_add(batch.size(), std::memory_order_relaxed);
          if (options_.metrics != nullptr) {
            options_.metrics->flow_log_write_errors(1);
            options_.metrics->flow_log_dropped(batch.size());
          }
          report_write_error(last_write_errno_, batch.size());
        }
      }
      batch.clear();
    }
    if (any) {
      // Let records gather for a moment: one pass then serves many requests, and the workers
      // need not wake this thread for each one.
      std::this_thread::sleep_for(kBatchPause);
      continue;
    }
    if (stopping_.load(std::memory_order_relaxed)) return;
    sleeping_.store(true, std::memory_order_seq_cst);
    if (has_pending()) {
      sleeping_.store(false, std::memory_order_relaxed);
      continue;
    }
    signal_.wait(seen, std::memory_order_acquire);
    sleeping_.store(false, std::memory_order_relaxed);
  }
}

bool FlowSink::has_pending() {
  for (auto& lane : lanes_) {
    std::lock_guard lock(lane->mutex);
    if (!lane->pending.empty()) return true;
  }
  return false;
}

}  // namespace tokgate::proxy
