#include "proxy/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>

namespace tokgate::proxy::log {
namespace {

std::atomic<Level> min_level{Level::info};

constexpr std::string_view level_name(Level level) {
  switch (level) {
    case Level::debug:
      return "debug";
    case Level::info:
      return "info";
    case Level::warn:
      return "warn";
    case Level::error:
      return "error";
  }
  return "info";
}

void append_timestamp(std::string& out) {
  auto now = std::chrono::system_clock::now();
  auto seconds = std::chrono::system_clock::to_time_t(now);
  auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char buf[32];
  auto n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &utc);
  out.append(buf, n);
  char ms[8];
  std::snprintf(ms, sizeof ms, ".%03dZ", static_cast<int>(millis.count()));
  out.append(ms);
}

bool needs_quotes(std::string_view value) {
  if (value.empty()) return true;
  for (unsigned char c : value) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f) return true;
  }
  return false;
}

void append_escaped(std::string& out, std::string_view value) {
  if (!needs_quotes(value)) {
    out.append(value);
    return;
  }
  out.push_back('"');
  for (unsigned char c : value) {
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char hex[8];
          std::snprintf(hex, sizeof hex, "\\x%02x", c);
          out.append(hex);
        } else {
          out.push_back(static_cast<char>(c));  // UTF-8 passes through
        }
    }
  }
  out.push_back('"');
}

}  // namespace

void set_min_level(Level level) {
  min_level.store(level, std::memory_order_relaxed);
}

bool enabled(Level level) {
  return static_cast<int>(level) >= static_cast<int>(min_level.load(std::memory_order_relaxed));
}

Line::Line(Level level, std::string_view event) : enabled_(enabled(level)) {
  if (!enabled_) return;
  text_.reserve(256);
  append_timestamp(text_);
  text_.push_back(' ');
  text_.append(level_name(level));
  text_.append(" event=");
  append_escaped(text_, event);
}

Line& Line::kv(std::string_view key, std::string_view value) {
  if (!enabled_) return *this;
  text_.push_back(' ');
  text_.append(key);
  text_.push_back('=');
  append_escaped(text_, value);
  return *this;
}

Line& Line::kv_raw(std::string_view key, std::string_view value) {
  if (!enabled_) return *this;
  text_.push_back(' ');
  text_.append(key);
  text_.push_back('=');
  text_.append(value);
  return *this;
}

Line::~Line() {
  if (!enabled_) return;
  text_.push_back('\n');
  // One write per line: lines from different workers never interleave mid-line.
  const char* p = text_.data();
  std::size_t left = text_.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) break;  // stderr gone: logging must never take the proxy down
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace tokgate::proxy::log
