// Where flow records go: a file (or stdout) written by a thread of its own. Producers (the
// workers) never wait: each has its own lane, bounded; a full lane drops the record and counts
// it. A stalled disk or a slow pipe therefore costs records, never a connection's time.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "proxy/flow_record.hpp"
#include "proxy/metrics.hpp"

namespace tokgate::proxy {

enum class FlowLogFormat : uint8_t { json, squid };
std::string_view to_string(FlowLogFormat format);

class FlowSink {
 public:
  struct Options {
    std::filesystem::path path;  // "-" = stdout; empty = no file (observers only)
    FlowLogFormat format = FlowLogFormat::json;
    std::size_t queue = 65536;   // records waiting, over all lanes
    std::size_t lanes = 1;       // one per producing thread
    Metrics* metrics = nullptr;  // records written, dropped, write errors
    // HAR files for records that carry an exchange (action capture).
    std::filesystem::path capture_dir;
    std::size_t capture_body_bytes = 1024 * 1024;  // decoded body shown, per message
    std::vector<std::string> redact_headers;
    // Told (on the writer thread, at most every 10 s) when the file cannot be written: a full
    // disk must show in the log, not only in a counter.
    std::function<void(const std::string& reason, uint64_t records_dropped)> on_write_error;
  };
  // Called on the writer thread for every record, written or not (the UI's live feed, metrics
  // that need the whole record). Must not block.
  using Observer = std::function<void(const FlowRecord&)>;

  // Opens the file (append, created 0640); a FIFO without a reader is an error, not a hang.
  static std::expected<std::unique_ptr<FlowSink>, std::string> open(Options options);
  ~FlowSink();
  FlowSink(const FlowSink&) = delete;
  FlowSink& operator=(const FlowSink&) = delete;

  // Never blocks on I/O. False when the record was dropped (lane full or sink stopped).
  bool submit(std::size_t lane, FlowRecord record);
  // Thread-safe and async-signal-friendly (sets a flag): the writer reopens the file before its
  // next write, for logrotate.
  void request_reopen() {
    reopen_.store(true, std::memory_order_relaxed);
    wake();
  }
  void add_observer(Observer observer);
  // Writes what is queued, then stops the thread. Idempotent.
  void stop();

  uint64_t written() const { return written_.load(std::memory_order_relaxed); }
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  uint64_t write_errors() const { return write_errors_.load(std::memory_order_relaxed); }
  uint64_t captures_written() const { return captures_written_.load(std::memory_order_relaxed); }
  const Options& options() const { return options_; }

 private:
  struct alignas(64) Lane {
    std::mutex mutex;  // taken by its one producer and, briefly, by the writer to swap
    std::vector<FlowRecord> pending;
  };

  explicit FlowSink(Options options);
  // How long the writer lets records gather after a busy pass.
  static constexpr std::chrono::microseconds kBatchPause{1000};
  void wake();
  void run();
  bool has_pending();
  bool reopen_file();
  // Writes a batch whole or not at all: a failed batch is cut back off a regular file, so a
  // full disk never leaves half a line for the next record to be glued to.
  bool write_all(std::string_view bytes);
  void report_write_error(int error, std::size_t records);
  void write_capture(FlowRecord& record);

  Options options_;
  std::size_t lane_capacity_ = 0;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::mutex observers_mutex_;
  std::vector<Observer> observers_;
  int fd_ = -1;
  bool owns_fd_ = false;
  std::atomic<uint32_t> signal_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> reopen_{false};
  std::atomic<bool> sleeping_{false};  // the writer waits for a wake-up (see submit)
  std::atomic<uint64_t> written_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> write_errors_{0};
  std::atomic<uint64_t> captures_written_{0};
  std::chrono::steady_clock::time_point last_error_report_{};
  uint64_t dropped_since_report_ = 0;
  int last_write_errno_ = 0;
  std::thread thread_;
};

}  // namespace tokgate::proxy
