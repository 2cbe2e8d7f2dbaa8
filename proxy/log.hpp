// One line per event on stderr, logfmt after a timestamp and a level:
//   2026-11-22T02:34:42.123Z info event=listening role=proxy address=127.0.0.1:8080
// Values come from the network (hosts, paths), so every value is escaped: a hostile request can
// neither forge a second log line nor break a key=value parser.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace tokgate::proxy::log {

enum class Level { debug, info, warn, error };

void set_min_level(Level level);
bool enabled(Level level);

class Line {
 public:
  Line(Level level, std::string_view event);
  ~Line();
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;

  Line& kv(std::string_view key, std::string_view value);
  Line& kv(std::string_view key, const std::string& value) {
    return kv(key, std::string_view(value));
  }
  Line& kv(std::string_view key, const char* value) { return kv(key, std::string_view(value)); }
  Line& kv(std::string_view key, bool value) { return kv(key, value ? "true" : "false"); }
  template <class Integer>
  requires std::is_integral_v<Integer> Line& kv(std::string_view key, Integer value) {
    return kv_raw(key, std::to_string(value));
  }

 private:
  Line& kv_raw(std::string_view key, std::string_view value);
  bool enabled_;
  std::string text_;
};

inline Line debug(std::string_view event) {
  return Line(Level::debug, event);
}
inline Line info(std::string_view event) {
  return Line(Level::info, event);
}
inline Line warn(std::string_view event) {
  return Line(Level::warn, event);
}
inline Line error(std::string_view event) {
  return Line(Level::error, event);
}

}  // namespace tokgate::proxy::log
