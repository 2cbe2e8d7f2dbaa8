#include "proxy/har.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>

#include "proxy/content_decoding.hpp"
#include "proxy/utf8.hpp"

namespace tokgate::proxy {
namespace {

namespace json = boost::json;
using namespace std::chrono;

// Bounds on what one document may hold besides the bodies (which the caller's caps bound).
constexpr std::size_t kMaxUrlBytes = 64 * 1024;
constexpr std::size_t kMaxShortTextBytes = 1024;  // method, status text, version, IP, mime type
constexpr std::size_t kMaxCommentBytes = 4096;
constexpr std::size_t kMaxHeaders = 512;                 // per message
constexpr std::size_t kMaxHeaderBytes = 256 * 1024;      // names + values, per message
constexpr std::size_t kMaxHeaderValueBytes = 64 * 1024;  // one value
constexpr std::size_t kMaxQueryParameters = 1024;
constexpr std::size_t kMaxCookies = 256;             // per message
constexpr std::size_t kMaxCookieBytes = 256 * 1024;  // Cookie / Set-Cookie text parsed, per message

constexpr std::string_view kRedacted = "REDACTED";

char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) {
  return std::ranges::equal(a, b, [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// ---- UTF-8 (proxy/utf8.hpp) ----

json::string short_text(std::string_view text) {
  return json::string(valid_utf8(text, kMaxShortTextBytes));
}

// ---- encodings and numbers ----

std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t group = static_cast<unsigned char>(bytes[i]) << 16 |
                           static_cast<unsigned char>(bytes[i + 1]) << 8 |
                           static_cast<unsigned char>(bytes[i + 2]);
    out += kAlphabet[group >> 18 & 63];
    out += kAlphabet[group >> 12 & 63];
    out += kAlphabet[group >> 6 & 63];
    out += kAlphabet[group & 63];
  }
  if (const auto rest = bytes.size() - i; rest != 0) {
    uint32_t group = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) group |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += kAlphabet[group >> 18 & 63];
    out += kAlphabet[group >> 12 & 63];
    out += rest == 2 ? kAlphabet[group >> 6 & 63] : '=';
    out += '=';
  }
  return out;
}

// Whole numbers as JSON integers (Boost.JSON writes every double in exponent form).
json::value number(double value) {
  if (value == std::trunc(value) && std::fabs(value) < 1e15) {
    return static_cast<std::int64_t>(value);
  }
  return value;
}

double round_ms(double value) {
  return std::round(value * 1000.0) / 1000.0;
}

// "2026-12-01T13:45:44.039Z"
std::string iso8601(sys_time<milliseconds> time) {
  const auto day = floor<days>(time);
  const year_month_day date{day};
  const hh_mm_ss clock{time - day};
  char text[40];
  std::snprintf(
      text, sizeof text, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", static_cast<int>(date.year()),
      static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
      static_cast<int>(clock.hours().count()), static_cast<int>(clock.minutes().count()),
      static_cast<int>(clock.seconds().count()), static_cast<int>(clock.subseconds().count()));
  return text;
}

std::string http_version(std::string_view version) {
  if (iequals(version, "h2") || iequals(version, "HTTP/2") || iequals(version, "HTTP/2.0")) {
    return "HTTP/2";
  }
  if (iequals(version, "h3") || iequals(version, "HTTP/3") || iequals(version, "HTTP/3.0")) {
    return "HTTP/3";
  }
  if (iequals(version, "HTTP/1.1") || iequals(version, "http/1.1")) return "HTTP/1.1";
  if (iequals(version, "HTTP/1.0")) return "HTTP/1.0";
  return valid_utf8(version, kMaxShortTextBytes);
}

// ---- headers ----

// Headers whose values are URLs that may carry query values.
bool carries_url(std::string_view name) {
  return iequals(name, ":path") || iequals(name, "referer") || iequals(name, "location") ||
         iequals(name, "content-location");
}

// The first value of header `name`, or "".
std::string_view header_value(const std::vector<HarHeader>& headers, std::string_view name) {
  for (std::size_t i = 0; i < headers.size() && i < kMaxHeaders; ++i) {
    if (iequals(headers[i].name, name)) return headers[i].value;
  }
  return {};
}

// All values of a list-valued header joined as one field value (RFC 9110 5.3).
std::string joined_header(const std::vector<HarHeader>& headers, std::string_view name) {
  std::string joined;
  for (std::size_t i = 0; i < headers.size() && i < kMaxHeaders; ++i) {
    if (!iequals(headers[i].name, name)) continue;
    if (!joined.empty()) joined += ", ";
    joined += headers[i].value.substr(0, kMaxShortTextBytes);
    if (joined.size() > kMaxShortTextBytes) break;
  }
  return joined;
}

struct HeadersJson {
  json::array headers;
  std::size_t dropped = 0;
};

HeadersJson headers_json(const std::vector<HarHeader>& headers, const HarRedaction& redaction) {
  HeadersJson out;
  std::size_t budget = kMaxHeaderBytes;
  for (const auto& header : headers) {
    if (out.headers.size() == kMaxHeaders || budget == 0) {
      ++out.dropped;
      continue;
    }
    auto name = valid_utf8(header.name, std::min(kMaxShortTextBytes, budget));
    budget -= name.size();
    std::string value;
    if (is_redacted_header(header.name, redaction)) {
      value = kRedacted;
    } else if (!redaction.full && carries_url(header.name)) {
      value = redact_url(std::string_view(header.value).substr(0, kMaxHeaderValueBytes));
    } else {
      value = header.value.substr(0, kMaxHeaderValueBytes);
    }
    value = valid_utf8(value, std::min(kMaxHeaderValueBytes, budget));
    budget -= value.size();
    out.headers.push_back(json::object{{"name", std::move(name)}, {"value", std::move(value)}});
  }
  return out;
}

// ---- cookies ----

json::array request_cookies(const std::vector<HarHeader>& headers, bool redact_values) {
  json::array cookies;
  std::size_t budget = kMaxCookieBytes;
  for (std::size_t i = 0; i < headers.size() && i < kMaxHeaders && budget != 0; ++i) {
    if (!iequals(headers[i].name, "cookie")) continue;
    std::string_view rest =
        std::string_view(headers[i].value).substr(0, std::min(kMaxHeaderValueBytes, budget));
    budget -= rest.size();
    while (!rest.empty() && cookies.size() < kMaxCookies) {
      const auto semicolon = rest.find(';');
      const auto pair = trim(rest.substr(0, semicolon));
      rest = semicolon == std::string_view::npos ? std::string_view() : rest.substr(semicolon + 1);
      if (pair.empty()) continue;
      const auto equals = pair.find('=');
      const auto name = trim(pair.substr(0, equals));
      const auto value =
          equals == std::string_view::npos ? std::string_view() : trim(pair.substr(equals + 1));
      cookies.push_back(
          json::object{{"name", valid_utf8(name, kMaxShortTextBytes)},
                       {"value", redact_values ? std::string(kRedacted)
                                               : valid_utf8(value, kMaxHeaderValueBytes)}});
    }
  }
  return cookies;
}

// RFC 6265 5.1.1, the cookie-date algorithm, simplified to whole tokens: a time hh:mm:ss, a day of
// month, a month name, a year, in any order between delimiters.
std::optional<sys_seconds> parse_cookie_date(std::string_view text) {
  constexpr std::array<std::string_view, 12> kMonths = {"jan", "feb", "mar", "apr", "may", "jun",
                                                        "jul", "aug", "sep", "oct", "nov", "dec"};
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  const auto is_delimiter = [&](char c) {
    return !(is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == ':' ||
             static_cast<unsigned char>(c) >= 0x80);
  };
  const auto to_int = [&](std::string_view digits) {
    int value = 0;
    for (char c : digits) value = value * 10 + (c - '0');
    return value;
  };
  std::optional<int> hour, minute, second, day, month, year;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_delimiter(text[i])) ++i;
    std::size_t end = i;
    while (end < text.size() && !is_delimiter(text[end])) ++end;
    const auto token = text.substr(i, end - i);
    i = end;
    if (token.empty()) continue;
    const bool all_digits = std::ranges::all_of(token, is_digit);
    if (!hour && token.size() <= 8 && std::ranges::count(token, ':') == 2) {
      const auto first = token.find(':');
      const auto last = token.rfind(':');
      const auto h = token.substr(0, first);
      const auto m = token.substr(first + 1, last - first - 1);
      const auto s = token.substr(last + 1);
      const auto ok = [&](std::string_view part) {
        return !part.empty() && part.size() <= 2 && std::ranges::all_of(part, is_digit);
      };
      if (ok(h) && ok(m) && ok(s)) {
        hour = to_int(h), minute = to_int(m), second = to_int(s);
        continue;
      }
    }
    if (!day && all_digits && token.size() <= 2) {
      day = to_int(token);
      continue;
    }
    if (!month && token.size() >= 3) {
      const auto it = std::ranges::find_if(
          kMonths, [&](std::string_view name) { return iequals(token.substr(0, 3), name); });
      if (it != kMonths.end()) {
        month = static_cast<int>(it - kMonths.begin()) + 1;
        continue;
      }
    }
    if (!year && all_digits && token.size() >= 2 && token.size() <= 4) {
      year = to_int(token);
      if (*year >= 70 && *year <= 99) *year += 1900;
      if (*year >= 0 && *year <= 69) *year += 2000;
    }
  }
  if (!hour || !day || !month || !year) return std::nullopt;
  if (*year < 1601 || *hour > 23 || *minute > 59 || *second > 59) return std::nullopt;
  const year_month_day date{std::chrono::year{*year},
                            std::chrono::month{static_cast<unsigned>(*month)},
                            std::chrono::day{static_cast<unsigned>(*day)}};
  if (!date.ok()) return std::nullopt;
  return sys_days{date} + hours{*hour} + minutes{*minute} + seconds{*second};
}

json::object set_cookie_json(std::string_view field, bool redact_value, sys_seconds started) {
  const auto semicolon = field.find(';');
  const auto pair = trim(field.substr(0, semicolon));
  std::string_view attributes =
      semicolon == std::string_view::npos ? std::string_view() : field.substr(semicolon + 1);
  const auto equals = pair.find('=');
  const auto name = trim(pair.substr(0, equals));
  const auto value =
      equals == std::string_view::npos ? std::string_view() : trim(pair.substr(equals + 1));
  json::object cookie{
      {"name", valid_utf8(name, kMaxShortTextBytes)},
      {"value", redact_value ? std::string(kRedacted) : valid_utf8(value, kMaxHeaderValueBytes)}};

  std::optional<sys_seconds> expires;
  std::optional<sys_seconds> max_age_expires;  // Max-Age wins over Expires (RFC 6265 5.3)
  bool http_only = false, secure = false;
  while (!attributes.empty()) {
    const auto next = attributes.find(';');
    const auto attribute = trim(attributes.substr(0, next));
    attributes = next == std::string_view::npos ? std::string_view() : attributes.substr(next + 1);
    const auto eq = attribute.find('=');
    const auto key = trim(attribute.substr(0, eq));
    const auto argument =
        eq == std::string_view::npos ? std::string_view() : trim(attribute.substr(eq + 1));
    if (iequals(key, "path") && !argument.empty()) {
      cookie["path"] = valid_utf8(argument, kMaxShortTextBytes);
    } else if (iequals(key, "domain") && !argument.empty()) {
      cookie["domain"] = valid_utf8(argument, kMaxShortTextBytes);
    } else if (iequals(key, "expires")) {
      expires = parse_cookie_date(argument);
    } else if (iequals(key, "max-age") && !argument.empty() && argument.size() <= 12) {
      const bool negative = argument.front() == '-';
      const auto digits = negative ? argument.substr(1) : argument;
      if (!digits.empty() &&
          std::ranges::all_of(digits, [](char c) { return c >= '0' && c <= '9'; })) {
        // A delta <= 0 means "expired now"; beyond a century is clamped to keep a 4-digit year.
        constexpr long long kCentury = 100LL * 366 * 24 * 3600;
        const auto delta = negative ? 0 : std::min(std::stoll(std::string(digits)), kCentury);
        max_age_expires = started + seconds{delta};
      }
    } else if (iequals(key, "httponly")) {
      http_only = true;
    } else if (iequals(key, "secure")) {
      secure = true;
    }
  }
  if (max_age_expires) expires = max_age_expires;
  if (expires) cookie["expires"] = iso8601(time_point_cast<milliseconds>(*expires));
  cookie["httpOnly"] = http_only;
  cookie["secure"] = secure;
  return cookie;
}

json::array response_cookies(const std::vector<HarHeader>& headers, bool redact_values,
                             sys_seconds started) {
  json::array cookies;
  std::size_t budget = kMaxCookieBytes;
  for (std::size_t i = 0;
       i < headers.size() && i < kMaxHeaders && cookies.size() < kMaxCookies && budget != 0; ++i) {
    if (!iequals(headers[i].name, "set-cookie")) continue;
    const std::string_view field =
        std::string_view(headers[i].value).substr(0, std::min(kMaxHeaderValueBytes, budget));
    budget -= field.size();
    if (trim(field).empty()) continue;
    cookies.push_back(set_cookie_json(field, redact_values, started));
  }
  return cookies;
}

// ---- URL ----

json::array query_string(std::string_view url, bool redact_values) {
  json::array parameters;
  url = url.substr(0, std::min(url.find('#'), kMaxUrlBytes));
  const auto question = url.find('?');
  if (question == std::string_view::npos) return parameters;
  std::string_view query = url.substr(question + 1);
  while (!query.empty() && parameters.size() < kMaxQueryParameters) {
    const auto ampersand = query.find('&');
    const auto piece = query.substr(0, ampersand);
    query = ampersand == std::string_view::npos ? std::string_view() : query.substr(ampersand + 1);
    if (piece.empty()) continue;
    const auto equals = piece.find('=');
    std::string value;
    if (equals != std::string_view::npos) {
      value = redact_values ? std::string(kRedacted)
                            : valid_utf8(piece.substr(equals + 1), kMaxUrlBytes);
    }
    parameters.push_back(json::object{{"name", valid_utf8(piece.substr(0, equals), kMaxUrlBytes)},
                                      {"value", std::move(value)}});
  }
  return parameters;
}

// ---- bodies ----

// A capture cut can split the last character of a text body; dropping those 1-3 bytes keeps the
// body text instead of turning all of it into base64.
void drop_cut_character(std::string& text) {
  if (is_valid_utf8(text)) return;
  for (std::size_t cut = 1; cut <= 3 && cut < text.size(); ++cut) {
    const auto lead = static_cast<unsigned char>(text[text.size() - cut]);
    if (lead < 0xc2 || lead > 0xf4) continue;  // not the start of a multi-byte character
    if (is_valid_utf8(std::string_view(text).substr(0, text.size() - cut))) {
      text.resize(text.size() - cut);
    }
    return;
  }
}

struct RenderedBody {
  std::string text;
  bool base64 = false;
  std::size_t size = 0;  // decoded size
  std::optional<int64_t> compression;
  std::string comment;
};

RenderedBody render_body(const HarMessageBody& body, std::string_view content_encoding,
                         std::size_t max_decoded_body) {
  RenderedBody out;
  const uint64_t wire_size = std::max<uint64_t>(body.wire_size, body.bytes.size());
  std::string decoded;
  bool kept_raw = false;  // still content-encoded: always base64, whatever the bytes look like
  if (is_identity_coding(content_encoding)) {
    decoded = body.bytes;
  } else {
    auto result = decode_content(content_encoding, body.bytes, max_decoded_body,
                                 body.truncated ? BodyExtent::prefix : BodyExtent::whole);
    if (result) {
      decoded = std::move(*result);
      // Bytes saved by the coding; unknown when only a prefix of the body was captured.
      if (!body.truncated) {
        out.compression = static_cast<int64_t>(decoded.size()) - static_cast<int64_t>(wire_size);
      }
    } else {
      decoded = body.bytes;
      kept_raw = true;
      out.comment =
          valid_utf8("kept as received (Content-Encoding: " + std::string(content_encoding) +
                         "): " + result.error(),
                     kMaxCommentBytes);
    }
  }
  if (body.truncated && !kept_raw) drop_cut_character(decoded);
  out.size = decoded.size();
  if (!kept_raw && is_valid_utf8(decoded)) {
    out.text = std::move(decoded);
  } else {
    out.text = base64(decoded);
    out.base64 = true;
  }
  return out;
}

uint64_t body_size(const HarMessageBody& body) {
  return std::max<uint64_t>(body.wire_size, body.bytes.size());
}

json::object post_data(const HarExchange& exchange, std::size_t max_decoded_body) {
  const auto& headers = exchange.request_headers;
  auto rendered = render_body(exchange.request_body, joined_header(headers, "content-encoding"),
                              max_decoded_body);
  json::object data{{"mimeType", short_text(header_value(headers, "content-type"))},
                    {"params", json::array()},
                    {"text", std::move(rendered.text)}};
  // HAR 1.2 has no encoding for postData; custom fields start with '_'.
  if (rendered.base64) data["_encoding"] = "base64";
  if (exchange.request_body.truncated) data["_tokgateTruncated"] = true;
  if (rendered.base64 && rendered.comment.empty()) rendered.comment = "binary body, base64";
  if (!rendered.comment.empty()) data["comment"] = std::move(rendered.comment);
  return data;
}

json::object content(const HarExchange& exchange, std::size_t max_decoded_body) {
  const auto& headers = exchange.response_headers;
  auto rendered = render_body(exchange.response_body, joined_header(headers, "content-encoding"),
                              max_decoded_body);
  json::object data{{"size", rendered.size}};
  if (rendered.compression) data["compression"] = *rendered.compression;
  data["mimeType"] = short_text(header_value(headers, "content-type"));
  data["text"] = std::move(rendered.text);
  if (rendered.base64) data["encoding"] = "base64";
  if (exchange.response_body.truncated) data["_tokgateTruncated"] = true;
  if (!rendered.comment.empty()) data["comment"] = std::move(rendered.comment);
  return data;
}

void note_dropped_headers(json::object& message, std::size_t dropped) {
  if (dropped == 0) return;
  message["comment"] = std::to_string(dropped) + " headers not recorded (capture limit)";
}

json::object request_json(const HarExchange& exchange, const HarRedaction& redaction,
                          std::size_t max_decoded_body) {
  const std::string_view url = std::string_view(exchange.url).substr(0, kMaxUrlBytes);
  auto headers = headers_json(exchange.request_headers, redaction);
  json::object request{
      {"method", short_text(exchange.method)},
      {"url", valid_utf8(redaction.full ? std::string(url) : redact_url(url), kMaxUrlBytes)},
      {"httpVersion", http_version(exchange.http_version)},
      {"cookies",
       request_cookies(exchange.request_headers, is_redacted_header("cookie", redaction))},
      {"headers", std::move(headers.headers)},
      {"queryString", query_string(url, !redaction.full)},
  };
  if (!exchange.request_body.bytes.empty() || exchange.request_body.wire_size != 0) {
    request["postData"] = post_data(exchange, max_decoded_body);
  }
  request["headersSize"] = -1;
  request["bodySize"] = body_size(exchange.request_body);
  note_dropped_headers(request, headers.dropped);
  return request;
}

json::object response_json(const HarExchange& exchange, const HarRedaction& redaction,
                           std::size_t max_decoded_body) {
  const auto started = floor<seconds>(exchange.started);
  auto headers = headers_json(exchange.response_headers, redaction);
  const auto location =
      std::string_view(header_value(exchange.response_headers, "location")).substr(0, kMaxUrlBytes);
  json::object response{
      {"status", exchange.status},
      {"statusText", short_text(exchange.status_text)},
      {"httpVersion", http_version(exchange.http_version)},
      {"cookies", response_cookies(exchange.response_headers,
                                   is_redacted_header("set-cookie", redaction), started)},
      {"headers", std::move(headers.headers)},
      {"content", content(exchange, max_decoded_body)},
      {"redirectURL",
       valid_utf8(redaction.full ? std::string(location) : redact_url(location), kMaxUrlBytes)},
      {"headersSize", -1},
      {"bodySize", body_size(exchange.response_body)},
  };
  note_dropped_headers(response, headers.dropped);
  return response;
}

// HAR timings: -1 for a phase that does not apply; connect includes ssl (HAR 1.2, "timings");
// time is the sum of the phases that apply.
json::object timings_json(const HarExchange& exchange, double& total) {
  const auto optional_phase = [](double ms) {
    return std::isfinite(ms) && ms >= 0 ? round_ms(ms) : -1.0;
  };
  const auto required_phase = [](double ms) {
    return std::isfinite(ms) && ms >= 0 ? round_ms(ms) : 0.0;
  };
  const double blocked = optional_phase(exchange.blocked_ms);
  const double dns = optional_phase(exchange.dns_ms);
  const double tcp = optional_phase(exchange.connect_ms);
  const double ssl = optional_phase(exchange.ssl_ms);
  const double connect = tcp < 0 && ssl < 0 ? -1.0 : std::max(tcp, 0.0) + std::max(ssl, 0.0);
  const double send = required_phase(exchange.send_ms);
  const double wait = required_phase(exchange.wait_ms);
  const double receive = required_phase(exchange.receive_ms);
  total = round_ms(std::max(blocked, 0.0) + std::max(dns, 0.0) + std::max(connect, 0.0) + send +
                   wait + receive);
  return json::object{{"blocked", number(blocked)}, {"dns", number(dns)},
                      {"connect", number(connect)}, {"send", number(send)},
                      {"wait", number(wait)},       {"receive", number(receive)},
                      {"ssl", number(ssl)}};
}

}  // namespace

bool is_redacted_header(std::string_view name, const HarRedaction& redaction) {
  if (redaction.full) return false;
  const auto matches = [&](std::string_view listed) { return iequals(name, listed); };
  return std::ranges::any_of(kRedactedHeaders, matches) ||
         std::ranges::any_of(redaction.extra_headers, matches);
}

std::string redact_url(std::string_view url) {
  url = url.substr(0, url.find('#'));
  std::string out;
  out.reserve(url.size());

  // Userinfo ("scheme://user:password@host") is a credential.
  // Only an absolute URL has one: "://" inside a path or query is data.
  if (const auto scheme_end = url.find("://");
      scheme_end != std::string_view::npos && scheme_end < url.find_first_of("/?")) {
    const auto authority_start = scheme_end + 3;
    const auto authority_end = std::min(url.find_first_of("/?", authority_start), url.size());
    const auto at = url.substr(authority_start, authority_end - authority_start).rfind('@');
    if (at != std::string_view::npos) {
      out.append(url.substr(0, authority_start)).append(kRedacted);
      url.remove_prefix(authority_start + at);  // keeps the '@'
    }
  }

  const auto question = url.find('?');
  out.append(url.substr(0, question));
  if (question == std::string_view::npos) return out;
  out += '?';
  std::string_view query = url.substr(question + 1);
  while (true) {
    const auto ampersand = query.find('&');
    const auto piece = query.substr(0, ampersand);
    const auto equals = piece.find('=');
    out.append(piece.substr(0, equals));
    if (equals != std::string_view::npos) out.append("=").append(kRedacted);
    if (ampersand == std::string_view::npos) break;
    out += '&';
    query.remove_prefix(ampersand + 1);
  }
  return out;
}

std::string to_har(const HarExchange& exchange, const HarRedaction& redaction,
                   std::size_t max_decoded_body) {
  double total_ms = 0;
  auto timings = timings_json(exchange, total_ms);
  json::object entry{
      {"startedDateTime", iso8601(floor<milliseconds>(exchange.started))},
      {"time", number(total_ms)},
      {"request", request_json(exchange, redaction, max_decoded_body)},
      {"response", response_json(exchange, redaction, max_decoded_body)},
      {"cache", json::object()},
      {"timings", std::move(timings)},
  };
  if (!exchange.server_ip.empty()) entry["serverIPAddress"] = short_text(exchange.server_ip);
  if (!exchange.connection.empty()) entry["connection"] = short_text(exchange.connection);
  if (!exchange.comment.empty()) entry["comment"] = valid_utf8(exchange.comment, kMaxCommentBytes);

  const json::object document{
      {"log",
       json::object{{"version", "1.2"},
                    {"creator", json::object{{"name", "tokgate"}, {"version", kHarCreatorVersion}}},
                    {"pages", json::array()},
                    {"entries", json::array{std::move(entry)}}}}};
  return json::serialize(document);
}

}  // namespace tokgate::proxy
