#include "proxy/flow_record.hpp"

#include <array>
#include <cmath>
#include <ctime>

#include "proxy/utf8.hpp"

namespace tokgate::proxy {

namespace {

bool contains_token(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Squid puts no spaces inside a field: anything that could split the line becomes %XX.
std::string squid_field(std::string_view value) {
  if (value.empty()) return "-";
  std::string out;
  out.reserve(value.size());
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : value) {
    if (c <= ' ' || c >= 0x7f || c == '%') {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

}  // namespace

std::string_view to_string(FlowType type) {
  return type == FlowType::request ? "request" : "connection";
}

std::string format_timestamp(std::chrono::system_clock::time_point when) {
  const auto seconds = std::chrono::system_clock::to_time_t(when);
  const auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(when.time_since_epoch()).count() % 1000;
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  std::array<char, 40> buffer{};
  const auto n = std::strftime(buffer.data(), buffer.size(), "%Y-%m-%dT%H:%M:%S", &utc);
  std::string out(buffer.data(), n);
  std::array<char, 8> tail{};
  std::snprintf(tail.data(), tail.size(), ".%03dZ", static_cast<int>(millis < 0 ? 0 : millis));
  out += tail.data();
  return out;
}

std::string_view classify_user_agent(std::string_view user_agent) {
  if (user_agent.empty()) return "";
  // The app's own HTTP stack (okhttp/cronet with the package name) and its in-app browser (a
  // system WebView whose UA carries the app's tokens): shared/reference/tiktok-traffic.md.
  const bool tiktok_token =
      contains_token(user_agent, "musical_ly") || contains_token(user_agent, "BytedanceWebview") ||
      contains_token(user_agent, "TikTok ") || contains_token(user_agent, "trill_");
  const bool tiktok_app = contains_token(user_agent, "com.zhiliaoapp.musically") ||
                          contains_token(user_agent, "com.ss.android.ugc") ||
                          contains_token(user_agent, "com.ss.iphone.ugc") ||
                          contains_token(user_agent, "TikTok/") ||
                          contains_token(user_agent, "Aweme/");
  const bool browser_engine = contains_token(user_agent, "Mozilla/");
  if (tiktok_token && browser_engine) return "tiktok-webview";
  if (tiktok_app || tiktok_token) return "tiktok-app";
  if (contains_token(user_agent, "MicroMessenger")) return "wechat";
  if (browser_engine) return "browser";
  static constexpr std::array<std::string_view, 9> kTools = {
      "curl/",   "Wget/",       "python-requests", "Python-urllib", "Go-http-client",
      "okhttp/", "libwww-perl", "HTTPie/",         "nghttp2/"};
  for (auto tool : kTools) {
    if (user_agent.starts_with(tool) || contains_token(user_agent, tool)) return "cli";
  }
  return "other";
}

namespace {

// A JSON string: escaped, and always valid UTF-8 (bytes from the network that are not become
// U+FFFD), so a strict parser reads every line.
void append_json_string(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      const std::size_t length = utf8_sequence_length(text, i);
      if (length == 0) {
        out.append("\ufffd");
        ++i;
      } else {
        out.append(text.substr(i, length));
        i += length;
      }
      continue;
    }
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
          out.append("\\u00");
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 0xf]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out.push_back('"');
}

// One flat JSON object, fields in schema order; absent values leave no trace.
class JsonLine {
 public:
  void string(std::string_view key, std::string_view value) {
    if (value.empty()) return;
    name(key);
    append_json_string(out_, value);
  }
  template <class Integer>
  void integer(std::string_view key, const std::optional<Integer>& value) {
    if (value) integer(key, *value);
  }
  void integer(std::string_view key, uint64_t value) {
    name(key);
    out_ += std::to_string(value);
  }
  void milliseconds(std::string_view key, const std::optional<double>& value) {
    if (!value || !std::isfinite(*value)) return;
    name(key);
    std::array<char, 32> buffer{};
    std::snprintf(buffer.data(), buffer.size(), "%.3f", std::max(0.0, *value));
    std::string_view text(buffer.data());
    while (text.ends_with('0')) text.remove_suffix(1);
    if (text.ends_with('.')) text.remove_suffix(1);
    out_ += text;
  }
  void boolean(std::string_view key, const std::optional<bool>& value) {
    if (!value) return;
    name(key);
    out_ += *value ? "true" : "false";
  }
  void strings(std::string_view key, const std::vector<std::string>& values) {
    if (values.empty()) return;
    name(key);
    out_.push_back('[');
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (i > 0) out_.push_back(',');
      append_json_string(out_, values[i]);
    }
    out_.push_back(']');
  }
  std::string finish() {
    out_.push_back('}');
    return std::move(out_);
  }

 private:
  void name(std::string_view key) {
    out_.push_back(out_.empty() ? '{' : ',');
    out_.push_back('"');
    out_.append(key);
    out_.append("\":");
  }
  std::string out_;
};

}  // namespace

std::string to_json_line(const FlowRecord& r) {
  JsonLine line;
  line.string("ts", format_timestamp(r.started));
  line.string("type", to_string(r.type));
  line.string("flow", r.flow);
  line.integer("conn", r.conn);
  line.string("client_ip", r.client_ip);
  line.integer("client_port", r.client_port);
  line.string("listener", r.listener);
  line.string("mode", r.mode);
  line.string("sni", r.sni);
  line.string("host", r.host);
  line.integer("port", r.port);
  line.string("scheme", r.scheme);
  line.string("method", r.method);
  line.string("path", r.path);
  if (r.query) line.string("query", *r.query);
  line.integer("status", r.status);
  line.integer("bytes_up", r.bytes_up);
  line.integer("bytes_down", r.bytes_down);
  line.milliseconds("connect_ms", r.connect_ms);
  line.milliseconds("tls_ms", r.tls_ms);
  line.milliseconds("first_byte_ms", r.first_byte_ms);
  line.milliseconds("total_ms", r.total_ms);
  line.boolean("bumped", r.bumped);
  line.string("verdict", r.verdict);
  line.string("client_alpn", r.client_alpn);
  line.string("server_alpn", r.server_alpn);
  line.string("client_tls", r.client_tls);
  line.string("server_tls", r.server_tls);
  line.string("category", r.category);
  line.strings("evidence", r.evidence);
  line.string("rule", r.rule);
  line.string("action", r.action);
  line.string("upstream_ip", r.upstream_ip);
  line.integer("upstream_port", r.upstream_port);
  line.string("upstream_country", r.upstream_country);
  line.integer("upstream_asn", r.upstream_asn);
  line.string("upstream_as_org", r.upstream_as_org);
  line.string("ua_class", r.ua_class);
  line.string("user_agent", r.user_agent);
  line.integer("ws_messages_up", r.ws_messages_up);
  line.integer("ws_messages_down", r.ws_messages_down);
  line.integer("ws_close_code", r.ws_close_code);
  line.string("capture", r.capture);
  line.string("error", r.error);
  line.string("error_reason", r.error_reason);
  return line.finish();
}

std::string to_squid_line(const FlowRecord& r) {
  const auto since_epoch =
      std::chrono::duration_cast<std::chrono::milliseconds>(r.started.time_since_epoch()).count();
  std::string result;
  if (r.type == FlowType::connection && r.verdict == "splice") {
    result = "TCP_TUNNEL";
  } else if (r.action == "block" || r.action == "refuse" || r.verdict == "refuse") {
    result = "TCP_DENIED";
  } else if (!r.error.empty() && r.error.starts_with("upstream")) {
    result = "NONE_NONE";
  } else {
    result = "TCP_MISS";
  }
  std::string url;
  if (r.type == FlowType::connection) {
    url = r.host + ":" + std::to_string(r.port.value_or(0));
  } else {
    url = (r.scheme.empty() ? std::string("https") : r.scheme) + "://" + r.host;
    const bool default_port = !r.port ||
                              (*r.port == 443 && (r.scheme == "https" || r.scheme == "wss")) ||
                              (*r.port == 80 && (r.scheme == "http" || r.scheme == "ws"));
    if (!default_port) url += ":" + std::to_string(*r.port);
    url += r.path.empty() ? std::string("/") : r.path;
    if (r.query && !r.query->empty()) url += "?" + *r.query;
  }
  const std::string method = r.type == FlowType::connection ? "CONNECT" : r.method;
  const uint64_t bytes = r.bytes_down.value_or(0);
  std::array<char, 64> head{};
  std::snprintf(head.data(), head.size(), "%lld.%03lld %6lld ",
                static_cast<long long>(since_epoch / 1000),
                static_cast<long long>(since_epoch % 1000),
                static_cast<long long>(std::llround(r.total_ms.value_or(0.0))));
  std::string line = head.data();
  std::array<char, 8> status{};
  std::snprintf(status.data(), status.size(), "%03u", r.status.value_or(0) % 1000);
  line += squid_field(r.client_ip) + " " + result + "/" + status.data() + " " +
          std::to_string(bytes) + " " + squid_field(method) + " " + squid_field(url) + " - " +
          (r.upstream_ip.empty() ? std::string("HIER_NONE/-")
                                 : "HIER_DIRECT/" + squid_field(r.upstream_ip)) +
          " -";
  return line;
}

}  // namespace tokgate::proxy
