// HAR 1.2 documents for captured exchanges: structure (every field the spec requires, checked
// on each document), redaction, body decoding and sizes, bounds, and hostile bytes.
#include "proxy/har.hpp"

#include <gtest/gtest.h>
#include <zlib.h>
#include <boost/json.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace tokgate::proxy {
namespace {

namespace json = boost::json;
using namespace std::chrono;

std::string gzip(std::string_view data) {
  z_stream stream{};
  EXPECT_EQ(deflateInit2(&stream, 9, Z_DEFLATED, 16 + MAX_WBITS, 9, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&stream, static_cast<uLong>(data.size())), '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&stream, Z_FINISH), Z_STREAM_END);
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

// 2026-12-01T13:45:44.039Z
system_clock::time_point started_at() {
  return sys_days{year{2026} / December / 1} + hours{13} + minutes{45} + seconds{44} +
         milliseconds{39};
}

const std::string kFeedJson = R"({"status_code":0,"aweme_list":[{"aweme_id":"7301"}]})";

// A TikTok feed request over h2 with the credentials and signatures the app sends.
HarExchange feed_exchange() {
  HarExchange exchange;
  exchange.started = started_at();
  exchange.method = "GET";
  exchange.url =
      "https://api16-normal-c-useast1a.tiktokv.com/aweme/v1/feed/"
      "?device_id=7123456789&aid=1233&flag";
  exchange.http_version = "h2";
  exchange.request_headers = {
      {":path", "/aweme/v1/feed/?device_id=7123456789&aid=1233&flag"},
      {"user-agent", "com.zhiliaoapp.musically/2023501030 (Linux; U; Android 13)"},
      {"cookie", "sessionid=secret-session-1; odin_tt=secret-odin"},
      {"Authorization", "Bearer secret-bearer"},
      {"X-Argus", "secret-argus"},
      {"x-gorgon", "secret-gorgon"},
      {"X-Tt-Trace-Id", "00-trace-01"},
      {"referer", "https://www.tiktok.com/@someone?lang=en&secret_ref=secret-referer"},
  };
  exchange.status = 200;
  exchange.status_text = "OK";
  exchange.response_body.bytes = gzip(kFeedJson);
  exchange.response_body.wire_size = exchange.response_body.bytes.size();
  exchange.response_headers = {
      {"content-type", "application/json; charset=utf-8"},
      {"content-encoding", "gzip"},
      {"set-cookie",
       "sid_tt=secret-sid; Path=/; Domain=.tiktokv.com; Expires=Wed, 01 Dec 2027 13:45:44 GMT; "
       "HttpOnly; Secure"},
      {"Set-Cookie", "odin_tt=secret-odin-2; max-age=3600"},
      {"x-tt-logid", "20261201134544"},
  };
  exchange.server_ip = "23.59.172.11";
  exchange.connection = "7";
  exchange.dns_ms = 1.5;
  exchange.connect_ms = 20;
  exchange.ssl_ms = 30.25;
  exchange.send_ms = 0.5;
  exchange.wait_ms = 60;
  exchange.receive_ms = 12.125;
  exchange.comment = "tokgate flow 7.s3, rule capture-app-api, category app-api";
  return exchange;
}

constexpr std::size_t kDecodeCap = 1024 * 1024;

// ---- a HAR 1.2 required-field check ----

// Records a failure unless `object` has `key` of `kind`; returns the member (or null).
const json::value* require(const json::object& object, std::string_view key, json::kind kind,
                           std::string_view where) {
  const auto* value = object.if_contains(key);
  if (value == nullptr) {
    ADD_FAILURE() << where << "." << key << " is missing";
    return nullptr;
  }
  const bool number_ok = kind == json::kind::double_ && value->is_number();
  if (value->kind() != kind && !number_ok) {
    ADD_FAILURE() << where << "." << key << " has kind " << json::to_string(value->kind());
    return nullptr;
  }
  return value;
}
void require_number(const json::object& o, std::string_view key, std::string_view where) {
  require(o, key, json::kind::double_, where);
}
void require_string(const json::object& o, std::string_view key, std::string_view where) {
  require(o, key, json::kind::string, where);
}

void require_name_value_list(const json::object& o, std::string_view key, std::string_view where) {
  const auto* list = require(o, key, json::kind::array, where);
  if (list == nullptr) return;
  for (const auto& item : list->as_array()) {
    ASSERT_TRUE(item.is_object()) << where << "." << key;
    require_string(item.as_object(), "name", key);
    require_string(item.as_object(), "value", key);
  }
}

void require_iso8601(const json::object& o, std::string_view key, std::string_view where) {
  const auto* value = require(o, key, json::kind::string, where);
  if (value == nullptr) return;
  const std::string_view text = value->as_string();
  // YYYY-MM-DDThh:mm:ss.sssZ
  ASSERT_EQ(text.size(), 24u) << text;
  for (std::size_t i : {4u, 7u}) EXPECT_EQ(text[i], '-') << text;
  EXPECT_EQ(text[10], 'T') << text;
  for (std::size_t i : {13u, 16u}) EXPECT_EQ(text[i], ':') << text;
  EXPECT_EQ(text[19], '.') << text;
  EXPECT_EQ(text[23], 'Z') << text;
}

// Every field HAR 1.2 requires of log, creator, entries, request, response, content, cache and
// timings, with its type.
void expect_har_1_2(const json::value& document) {
  ASSERT_TRUE(document.is_object());
  const auto* log_value = require(document.as_object(), "log", json::kind::object, "");
  ASSERT_NE(log_value, nullptr);
  const auto& log = log_value->as_object();
  const auto* version = require(log, "version", json::kind::string, "log");
  ASSERT_NE(version, nullptr);
  EXPECT_EQ(version->as_string(), "1.2");
  const auto* creator = require(log, "creator", json::kind::object, "log");
  ASSERT_NE(creator, nullptr);
  require_string(creator->as_object(), "name", "log.creator");
  require_string(creator->as_object(), "version", "log.creator");
  if (const auto* pages = log.if_contains("pages")) {
    EXPECT_TRUE(pages->is_array());
  }
  const auto* entries = require(log, "entries", json::kind::array, "log");
  ASSERT_NE(entries, nullptr);
  for (const auto& entry_value : entries->as_array()) {
    ASSERT_TRUE(entry_value.is_object());
    const auto& entry = entry_value.as_object();
    require_iso8601(entry, "startedDateTime", "entry");
    require_number(entry, "time", "entry");
    require(entry, "cache", json::kind::object, "entry");

    const auto* request_value = require(entry, "request", json::kind::object, "entry");
    ASSERT_NE(request_value, nullptr);
    const auto& request = request_value->as_object();
    for (auto key : {"method", "url", "httpVersion"}) require_string(request, key, "request");
    require(request, "cookies", json::kind::array, "request");
    require_name_value_list(request, "headers", "request");
    require_name_value_list(request, "queryString", "request");
    require_number(request, "headersSize", "request");
    require_number(request, "bodySize", "request");
    if (const auto* post = request.if_contains("postData")) {
      ASSERT_TRUE(post->is_object());
      require_string(post->as_object(), "mimeType", "postData");
      require(post->as_object(), "params", json::kind::array, "postData");
      require_string(post->as_object(), "text", "postData");
    }

    const auto* response_value = require(entry, "response", json::kind::object, "entry");
    ASSERT_NE(response_value, nullptr);
    const auto& response = response_value->as_object();
    require_number(response, "status", "response");
    for (auto key : {"statusText", "httpVersion", "redirectURL"}) {
      require_string(response, key, "response");
    }
    const auto* cookies = require(response, "cookies", json::kind::array, "response");
    if (cookies != nullptr) {
      for (const auto& cookie : cookies->as_array()) {
        require_string(cookie.as_object(), "name", "cookie");
        require_string(cookie.as_object(), "value", "cookie");
      }
    }
    require_name_value_list(response, "headers", "response");
    require_number(response, "headersSize", "response");
    require_number(response, "bodySize", "response");
    const auto* content = require(response, "content", json::kind::object, "response");
    ASSERT_NE(content, nullptr);
    require_number(content->as_object(), "size", "content");
    require_string(content->as_object(), "mimeType", "content");

    const auto* timings_value = require(entry, "timings", json::kind::object, "entry");
    ASSERT_NE(timings_value, nullptr);
    const auto& timings = timings_value->as_object();
    double sum = 0;
    for (auto key : {"send", "wait", "receive"}) {
      require_number(timings, key, "timings");
      if (const auto* v = timings.if_contains(key); v && v->is_number()) {
        EXPECT_GE(v->to_number<double>(), 0) << key;
        sum += v->to_number<double>();
      }
    }
    for (auto key : {"blocked", "dns", "connect"}) {
      if (const auto* v = timings.if_contains(key)) {
        ASSERT_TRUE(v->is_number()) << key;
        const double ms = v->to_number<double>();
        EXPECT_TRUE(ms == -1 || ms >= 0) << key;
        if (ms >= 0) sum += ms;
      }
    }
    // time is the sum of the phases that apply (ssl is inside connect).
    if (const auto* time = entry.if_contains("time"); time && time->is_number()) {
      EXPECT_NEAR(time->to_number<double>(), sum, 1e-6);
    }
  }
}

// Builds, checks the structure, and returns the document.
json::value har_of(const HarExchange& exchange, const HarRedaction& redaction = {},
                   std::size_t decode_cap = kDecodeCap) {
  const auto text = to_har(exchange, redaction, decode_cap);
  boost::system::error_code error;
  // Boost.JSON's parser rejects invalid UTF-8, so parsing also checks the encoding.
  auto document = json::parse(text, error);
  EXPECT_FALSE(error) << error.message();
  expect_har_1_2(document);
  return document;
}

const json::object& entry_of(const json::value& document) {
  return document.at("log").at("entries").at(0).as_object();
}

std::string header(const json::object& message, std::string_view name) {
  for (const auto& item : message.at("headers").as_array()) {
    if (item.at("name").as_string() == name) return std::string(item.at("value").as_string());
  }
  return "<absent>";
}

// ---- structure ----

TEST(Har, DocumentHasTheHar12Skeleton) {
  const auto document = har_of(feed_exchange());
  const auto& log = document.at("log").as_object();
  EXPECT_EQ(log.at("creator").at("name").as_string(), "tokgate");
  EXPECT_EQ(log.at("creator").at("version").as_string(), kHarCreatorVersion);
  EXPECT_TRUE(log.at("pages").as_array().empty());  // Firefox's importer requires the array
  ASSERT_EQ(log.at("entries").as_array().size(), 1u);

  const auto& entry = entry_of(document);
  EXPECT_EQ(entry.at("startedDateTime").as_string(), "2026-12-01T13:45:44.039Z");
  EXPECT_EQ(entry.at("serverIPAddress").as_string(), "23.59.172.11");
  EXPECT_EQ(entry.at("connection").as_string(), "7");
  EXPECT_EQ(entry.at("comment").as_string(),
            "tokgate flow 7.s3, rule capture-app-api, category app-api");
  EXPECT_FALSE(entry.contains("pageref"));

  const auto& request = entry.at("request").as_object();
  EXPECT_EQ(request.at("method").as_string(), "GET");
  EXPECT_EQ(request.at("httpVersion").as_string(), "HTTP/2");
  EXPECT_EQ(request.at("headersSize").as_int64(), -1);
  EXPECT_EQ(request.at("bodySize").to_number<int64_t>(), 0);
  EXPECT_FALSE(request.contains("postData"));  // a GET without a body

  const auto& response = entry.at("response").as_object();
  EXPECT_EQ(response.at("status").to_number<int>(), 200);
  EXPECT_EQ(response.at("statusText").as_string(), "OK");
  EXPECT_EQ(response.at("httpVersion").as_string(), "HTTP/2");
  EXPECT_EQ(response.at("redirectURL").as_string(), "");
  EXPECT_EQ(header(response, "x-tt-logid"), "20261201134544");
}

TEST(Har, HttpVersionsUseHarSpelling) {
  for (const auto& [given, expected] :
       std::vector<std::pair<std::string, std::string>>{{"h2", "HTTP/2"},
                                                        {"HTTP/2.0", "HTTP/2"},
                                                        {"HTTP/1.1", "HTTP/1.1"},
                                                        {"http/1.0", "HTTP/1.0"},
                                                        {"h3", "HTTP/3"}}) {
    auto exchange = feed_exchange();
    exchange.http_version = given;
    const auto document = har_of(exchange);
    EXPECT_EQ(entry_of(document).at("request").at("httpVersion").as_string(), expected) << given;
    EXPECT_EQ(entry_of(document).at("response").at("httpVersion").as_string(), expected) << given;
  }
}

TEST(Har, TimingsPutSslInsideConnectAndSumToTime) {
  const auto document = har_of(feed_exchange());
  const auto& entry = entry_of(document);
  const auto& timings = entry.at("timings").as_object();
  EXPECT_EQ(timings.at("blocked").to_number<double>(), -1);
  EXPECT_EQ(timings.at("dns").to_number<double>(), 1.5);
  EXPECT_EQ(timings.at("connect").to_number<double>(), 50.25);  // 20 TCP + 30.25 TLS
  EXPECT_EQ(timings.at("ssl").to_number<double>(), 30.25);
  EXPECT_EQ(timings.at("send").to_number<double>(), 0.5);
  EXPECT_EQ(timings.at("wait").to_number<double>(), 60);
  EXPECT_EQ(timings.at("receive").to_number<double>(), 12.125);
  EXPECT_DOUBLE_EQ(entry.at("time").to_number<double>(), 1.5 + 50.25 + 0.5 + 60 + 12.125);
}

TEST(Har, ReusedConnectionAndHostileTimings) {
  auto exchange = feed_exchange();
  exchange.dns_ms = exchange.connect_ms = exchange.ssl_ms = -1;  // a reused origin connection
  exchange.send_ms = std::numeric_limits<double>::quiet_NaN();
  exchange.wait_ms = -5;
  exchange.receive_ms = std::numeric_limits<double>::infinity();
  exchange.blocked_ms = 2.0004;
  const auto document = har_of(exchange);
  const auto& timings = entry_of(document).at("timings").as_object();
  EXPECT_EQ(timings.at("dns").to_number<double>(), -1);
  EXPECT_EQ(timings.at("connect").to_number<double>(), -1);
  EXPECT_EQ(timings.at("ssl").to_number<double>(), -1);
  EXPECT_EQ(timings.at("send").to_number<double>(), 0);
  EXPECT_EQ(timings.at("wait").to_number<double>(), 0);
  EXPECT_EQ(timings.at("receive").to_number<double>(), 0);
  EXPECT_EQ(timings.at("blocked").to_number<double>(), 2);  // rounded to microseconds
  EXPECT_EQ(entry_of(document).at("time").to_number<double>(), 2);
}

// ---- redaction ----

TEST(Har, RedactsCredentialsAndQueryValuesByDefault) {
  const auto text = to_har(feed_exchange(), {}, kDecodeCap);
  for (std::string_view secret :
       {"secret-session-1", "secret-odin", "secret-bearer", "secret-argus", "secret-gorgon",
        "secret-sid", "secret-odin-2", "7123456789", "secret-referer"}) {
    EXPECT_EQ(text.find(secret), std::string::npos) << secret << " leaked";
  }

  const auto document = har_of(feed_exchange());
  const auto& request = entry_of(document).at("request").as_object();
  EXPECT_EQ(request.at("url").as_string(),
            "https://api16-normal-c-useast1a.tiktokv.com/aweme/v1/feed/"
            "?device_id=REDACTED&aid=REDACTED&flag");
  EXPECT_EQ(header(request, "cookie"), "REDACTED");
  EXPECT_EQ(header(request, "Authorization"), "REDACTED");
  EXPECT_EQ(header(request, "X-Argus"), "REDACTED");
  EXPECT_EQ(header(request, "x-gorgon"), "REDACTED");
  EXPECT_EQ(header(request, ":path"), "/aweme/v1/feed/?device_id=REDACTED&aid=REDACTED&flag");
  EXPECT_EQ(header(request, "referer"),
            "https://www.tiktok.com/@someone?lang=REDACTED&secret_ref=REDACTED");
  // Software identifiers and trace ids stay.
  EXPECT_EQ(header(request, "user-agent"),
            "com.zhiliaoapp.musically/2023501030 (Linux; U; Android 13)");
  EXPECT_EQ(header(request, "X-Tt-Trace-Id"), "00-trace-01");

  const auto& query = request.at("queryString").as_array();
  ASSERT_EQ(query.size(), 3u);
  EXPECT_EQ(query[0].at("name").as_string(), "device_id");
  EXPECT_EQ(query[0].at("value").as_string(), "REDACTED");
  EXPECT_EQ(query[1].at("name").as_string(), "aid");
  EXPECT_EQ(query[2].at("name").as_string(), "flag");
  EXPECT_EQ(query[2].at("value").as_string(), "");

  const auto& cookies = request.at("cookies").as_array();
  ASSERT_EQ(cookies.size(), 2u);
  EXPECT_EQ(cookies[0].at("name").as_string(), "sessionid");
  EXPECT_EQ(cookies[0].at("value").as_string(), "REDACTED");
  EXPECT_EQ(cookies[1].at("name").as_string(), "odin_tt");

  const auto& response = entry_of(document).at("response").as_object();
  EXPECT_EQ(header(response, "set-cookie"), "REDACTED");
  EXPECT_EQ(header(response, "Set-Cookie"), "REDACTED");
  const auto& set_cookies = response.at("cookies").as_array();
  ASSERT_EQ(set_cookies.size(), 2u);
  EXPECT_EQ(set_cookies[0].at("name").as_string(), "sid_tt");
  EXPECT_EQ(set_cookies[0].at("value").as_string(), "REDACTED");
}

TEST(Har, FullCaptureKeepsEverything) {
  HarRedaction full;
  full.full = true;
  const auto document = har_of(feed_exchange(), full);
  const auto& request = entry_of(document).at("request").as_object();
  EXPECT_EQ(request.at("url").as_string(), feed_exchange().url);
  EXPECT_EQ(header(request, "cookie"), "sessionid=secret-session-1; odin_tt=secret-odin");
  EXPECT_EQ(header(request, "X-Argus"), "secret-argus");
  EXPECT_EQ(header(request, ":path"), "/aweme/v1/feed/?device_id=7123456789&aid=1233&flag");
  EXPECT_EQ(request.at("queryString").at(0).at("value").as_string(), "7123456789");
  EXPECT_EQ(request.at("cookies").at(0).at("value").as_string(), "secret-session-1");
  const auto& response = entry_of(document).at("response").as_object();
  EXPECT_EQ(response.at("cookies").at(0).at("value").as_string(), "secret-sid");
  EXPECT_TRUE(header(response, "set-cookie").starts_with("sid_tt=secret-sid;"));
}

TEST(Har, ExtraRedactedHeadersAreCaseInsensitive) {
  HarRedaction redaction;
  redaction.extra_headers = {"X-Device-Token"};
  EXPECT_TRUE(is_redacted_header("x-device-token", redaction));
  EXPECT_TRUE(is_redacted_header("X-DEVICE-TOKEN", redaction));
  EXPECT_TRUE(is_redacted_header("X-Khronos", redaction));
  EXPECT_TRUE(is_redacted_header("x-ss-req-ticket", redaction));
  EXPECT_FALSE(is_redacted_header("user-agent", redaction));
  EXPECT_FALSE(is_redacted_header("x-tt-trace-id", redaction));
  EXPECT_FALSE(is_redacted_header("cookies", redaction));  // whole names only
  for (const auto name : kRedactedHeaders) {
    EXPECT_TRUE(is_redacted_header(name, {})) << name;
    EXPECT_FALSE(is_redacted_header(name, {.full = true, .extra_headers = {}})) << name;
  }

  auto exchange = feed_exchange();
  exchange.request_headers.push_back({"x-device-token", "secret-device"});
  const auto text = to_har(exchange, redaction, kDecodeCap);
  EXPECT_EQ(text.find("secret-device"), std::string::npos);
}

TEST(Har, RedactUrl) {
  EXPECT_EQ(redact_url("https://h/p?a=1&b=&c"), "https://h/p?a=REDACTED&b=REDACTED&c");
  EXPECT_EQ(redact_url("/p?a=1#frag-token"), "/p?a=REDACTED");
  EXPECT_EQ(redact_url("https://h/p"), "https://h/p");
  EXPECT_EQ(redact_url("https://user:pw@h/p?x=1"), "https://REDACTED@h/p?x=REDACTED");
  EXPECT_EQ(redact_url("https://user:pw@h"), "https://REDACTED@h");
  // "://" and '@' inside the path or query are data, not a userinfo.
  EXPECT_EQ(redact_url("/go?to=https://u@h/"), "/go?to=REDACTED");
  EXPECT_EQ(redact_url("https://h/@someone"), "https://h/@someone");
  EXPECT_EQ(redact_url("https://h/p?"), "https://h/p?");
}

TEST(Har, RedirectUrlComesFromLocationRedacted) {
  auto exchange = feed_exchange();
  exchange.status = 302;
  exchange.response_headers.push_back({"Location", "https://h/next?ticket=secret-ticket"});
  const auto document = har_of(exchange);
  const auto& response = entry_of(document).at("response").as_object();
  EXPECT_EQ(response.at("redirectURL").as_string(), "https://h/next?ticket=REDACTED");
  EXPECT_EQ(header(response, "Location"), "https://h/next?ticket=REDACTED");
}

// ---- cookies ----

TEST(Har, SetCookieAttributes) {
  HarRedaction full;
  full.full = true;
  const auto document = har_of(feed_exchange(), full);
  const auto& cookies = entry_of(document).at("response").at("cookies").as_array();
  ASSERT_EQ(cookies.size(), 2u);
  const auto& sid = cookies[0].as_object();
  EXPECT_EQ(sid.at("path").as_string(), "/");
  EXPECT_EQ(sid.at("domain").as_string(), ".tiktokv.com");
  EXPECT_EQ(sid.at("expires").as_string(), "2027-12-01T13:45:44.000Z");
  EXPECT_TRUE(sid.at("httpOnly").as_bool());
  EXPECT_TRUE(sid.at("secure").as_bool());
  const auto& odin = cookies[1].as_object();
  EXPECT_EQ(odin.at("value").as_string(), "secret-odin-2");
  EXPECT_EQ(odin.at("expires").as_string(), "2026-12-01T14:45:44.000Z");  // started + max-age
  EXPECT_FALSE(odin.at("httpOnly").as_bool());
  EXPECT_FALSE(odin.contains("path"));
}

TEST(Har, CookieDatesInOtherFormatsAndGarbage) {
  auto exchange = feed_exchange();
  exchange.response_headers = {
      {"set-cookie", "a=1; expires=Sunday, 06-Nov-94 08:49:37 GMT"},  // RFC 850
      {"set-cookie", "b=2; expires=Sun Nov  6 08:49:37 1994"},        // asctime
      {"set-cookie", "c=3; expires=not a date; max-age=abc"},
      {"set-cookie", "d=4; expires=Wed, 31 Feb 2027 10:00:00 GMT"},  // no such day
      {"set-cookie", "e=5; max-age=-1"},
      {"set-cookie", "f=6; max-age=999999999999"},
  };
  const auto document = har_of(exchange, {.full = true, .extra_headers = {}});
  const auto& cookies = entry_of(document).at("response").at("cookies").as_array();
  ASSERT_EQ(cookies.size(), 6u);
  EXPECT_EQ(cookies[0].at("expires").as_string(), "1994-11-06T08:49:37.000Z");
  EXPECT_EQ(cookies[1].at("expires").as_string(), "1994-11-06T08:49:37.000Z");
  EXPECT_FALSE(cookies[2].as_object().contains("expires"));
  EXPECT_FALSE(cookies[3].as_object().contains("expires"));
  EXPECT_EQ(cookies[4].at("expires").as_string(), "2026-12-01T13:45:44.000Z");
  EXPECT_TRUE(cookies[5].at("expires").as_string().starts_with("21"));  // clamped to a century
}

// ---- bodies ----

TEST(Har, GzipBodyIsDecodedWithSizes) {
  const auto exchange = feed_exchange();
  const auto document = har_of(exchange);
  const auto& response = entry_of(document).at("response").as_object();
  const auto& content = response.at("content").as_object();
  const auto wire = static_cast<int64_t>(exchange.response_body.bytes.size());
  EXPECT_EQ(content.at("text").as_string(), kFeedJson);
  EXPECT_FALSE(content.contains("encoding"));
  EXPECT_EQ(content.at("size").to_number<int64_t>(), static_cast<int64_t>(kFeedJson.size()));
  EXPECT_EQ(content.at("compression").to_number<int64_t>(),
            static_cast<int64_t>(kFeedJson.size()) - wire);
  EXPECT_EQ(content.at("mimeType").as_string(), "application/json; charset=utf-8");
  EXPECT_EQ(response.at("bodySize").to_number<int64_t>(), wire);
  EXPECT_FALSE(content.contains("_tokgateTruncated"));
  EXPECT_FALSE(content.contains("comment"));
}

TEST(Har, IdentityBodyHasNoCompression) {
  auto exchange = feed_exchange();
  exchange.response_headers = {{"Content-Type", "text/plain"}};
  exchange.response_body = {.bytes = "plain text", .wire_size = 10, .truncated = false};
  const auto document = har_of(exchange);
  const auto& content = entry_of(document).at("response").at("content").as_object();
  EXPECT_EQ(content.at("text").as_string(), "plain text");
  EXPECT_EQ(content.at("size").to_number<int64_t>(), 10);
  EXPECT_FALSE(content.contains("compression"));
  EXPECT_EQ(content.at("mimeType").as_string(), "text/plain");
}

TEST(Har, BinaryBodyIsBase64) {
  auto exchange = feed_exchange();
  exchange.response_headers = {{"content-type", "application/x-protobuf"}};
  exchange.response_body.bytes = std::string("\x00\xff\xfe\x01", 4);
  exchange.response_body.wire_size = 4;
  const auto document = har_of(exchange);
  const auto& content = entry_of(document).at("response").at("content").as_object();
  EXPECT_EQ(content.at("encoding").as_string(), "base64");
  EXPECT_EQ(content.at("text").as_string(), "AP/+AQ==");
  EXPECT_EQ(content.at("size").to_number<int64_t>(), 4);
}

TEST(Har, Base64PaddingForEveryLength) {
  auto exchange = feed_exchange();
  exchange.response_headers = {};
  for (const auto& [bytes, expected] : std::vector<std::pair<std::string, std::string>>{
           {std::string("\xff", 1), "/w=="},
           {std::string("\xff\xee", 2), "/+4="},
           {std::string("\xff\xee\xdd", 3), "/+7d"},
           {std::string("\x80\x00\x00\x01\x02", 5), "gAAAAQI="}}) {
    exchange.response_body = {.bytes = bytes, .wire_size = bytes.size(), .truncated = false};
    const auto document = har_of(exchange);
    EXPECT_EQ(entry_of(document).at("response").at("content").at("text").as_string(), expected);
  }
}

TEST(Har, TruncatedCaptureDecodesThePrefixAndSaysSo) {
  std::string text;
  for (int i = 0; i < 5000; ++i) text += "row " + std::to_string(i) + "\n";
  const auto whole = gzip(text);
  auto exchange = feed_exchange();
  exchange.response_headers = {{"content-type", "text/plain"}, {"content-encoding", "gzip"}};
  exchange.response_body = {
      .bytes = whole.substr(0, whole.size() / 2), .wire_size = whole.size(), .truncated = true};
  const auto document = har_of(exchange);
  const auto& response = entry_of(document).at("response").as_object();
  const auto& content = response.at("content").as_object();
  EXPECT_TRUE(content.at("_tokgateTruncated").as_bool());
  const std::string_view decoded = content.at("text").as_string();
  EXPECT_GT(decoded.size(), 0u);
  EXPECT_LT(decoded.size(), text.size());
  EXPECT_TRUE(text.starts_with(decoded));
  EXPECT_EQ(content.at("size").to_number<std::size_t>(), decoded.size());
  EXPECT_FALSE(content.contains("compression"));
  EXPECT_EQ(response.at("bodySize").to_number<std::size_t>(), whole.size());
}

TEST(Har, TruncatedTextCutInsideACharacterStaysText) {
  auto exchange = feed_exchange();
  exchange.response_headers = {{"content-type", "text/plain; charset=utf-8"}};
  exchange.response_body = {.bytes = "caf\xc3", .wire_size = 6, .truncated = true};  // "café!"
  auto document = har_of(exchange);
  auto content = entry_of(document).at("response").at("content").as_object();
  EXPECT_EQ(content.at("text").as_string(), "caf");
  EXPECT_FALSE(content.contains("encoding"));

  // Whole bodies are not trimmed: an invalid last byte makes it binary.
  exchange.response_body.truncated = false;
  document = har_of(exchange);
  content = entry_of(document).at("response").at("content").as_object();
  EXPECT_EQ(content.at("encoding").as_string(), "base64");
}

TEST(Har, UndecodableBodyIsKeptRawWithTheReason) {
  auto exchange = feed_exchange();
  exchange.response_headers = {{"content-encoding", "gzip"}};
  exchange.response_body = {.bytes = "not gzip", .wire_size = 8, .truncated = false};
  auto document = har_of(exchange);
  auto content = entry_of(document).at("response").at("content").as_object();
  EXPECT_EQ(content.at("encoding").as_string(), "base64");
  EXPECT_EQ(content.at("text").as_string(), "bm90IGd6aXA=");
  EXPECT_EQ(content.at("size").to_number<int64_t>(), 8);
  EXPECT_TRUE(content.at("comment").as_string().starts_with(
      "kept as received (Content-Encoding: gzip): corrupt gzip data"))
      << content.at("comment").as_string();

  exchange.response_headers = {{"content-encoding", "compress"}};
  document = har_of(exchange);
  content = entry_of(document).at("response").at("content").as_object();
  EXPECT_EQ(content.at("comment").as_string(),
            "kept as received (Content-Encoding: compress): unsupported content coding "
            "\"compress\"");
}

TEST(Har, BodyDecodingPastTheCapIsKeptRaw) {
  const auto bomb = gzip(std::string(4 * 1024 * 1024, 'a'));
  auto exchange = feed_exchange();
  exchange.response_headers = {{"content-encoding", "gzip"}};
  exchange.response_body = {.bytes = bomb, .wire_size = bomb.size(), .truncated = false};
  const auto text = to_har(exchange, {}, 64 * 1024);
  EXPECT_LT(text.size(), 64 * 1024u);  // the raw bomb in base64, not 4 MiB of 'a'
  const auto document = har_of(exchange, {}, 64 * 1024);
  const auto& content = entry_of(document).at("response").at("content").as_object();
  EXPECT_EQ(content.at("size").to_number<std::size_t>(), bomb.size());
  EXPECT_TRUE(content.at("comment").as_string().ends_with("decoded body exceeds 65536 bytes"));
}

TEST(Har, RequestBodyBecomesPostData) {
  auto exchange = feed_exchange();
  exchange.method = "POST";
  const std::string form = R"({"event":"app_launch","ts":1764596744})";
  exchange.request_headers = {{"Content-Type", "application/json"}, {"Content-Encoding", "gzip"}};
  exchange.request_body.bytes = gzip(form);
  exchange.request_body.wire_size = exchange.request_body.bytes.size();
  const auto document = har_of(exchange);
  const auto& request = entry_of(document).at("request").as_object();
  const auto& post = request.at("postData").as_object();
  EXPECT_EQ(post.at("mimeType").as_string(), "application/json");
  EXPECT_EQ(post.at("text").as_string(), form);
  EXPECT_TRUE(post.at("params").as_array().empty());
  EXPECT_EQ(request.at("bodySize").to_number<std::size_t>(), exchange.request_body.bytes.size());

  exchange.request_headers = {{"Content-Type", "application/octet-stream"}};
  exchange.request_body = {
      .bytes = std::string("\x01\x02\xff", 3), .wire_size = 9000, .truncated = true};
  const auto binary = har_of(exchange);
  const auto& binary_request = entry_of(binary).at("request").as_object();
  const auto& binary_post = binary_request.at("postData").as_object();
  EXPECT_EQ(binary_post.at("text").as_string(), "AQL/");
  EXPECT_EQ(binary_post.at("_encoding").as_string(), "base64");
  EXPECT_TRUE(binary_post.at("_tokgateTruncated").as_bool());
  EXPECT_EQ(binary_request.at("bodySize").to_number<int64_t>(), 9000);
}

// ---- hostile bytes and bounds ----

TEST(Har, InvalidUtf8EverywhereStillMakesValidJson) {
  auto exchange = feed_exchange();
  const std::string bad =
      "a\xff\xfe z \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82";  // all ill-formed
  exchange.method = "GET" + bad;
  exchange.url = "https://h/p" + bad + "?q" + bad + "=v" + bad;
  exchange.status_text = bad;
  exchange.comment = bad;
  exchange.request_headers = {{"x-name" + bad, "value " + bad}, {"cookie", "n" + bad + "=v"}};
  exchange.response_headers = {{"content-type", bad}, {"set-cookie", bad + "=1; path=" + bad}};
  exchange.response_body = {.bytes = "ok", .wire_size = 2, .truncated = false};
  for (bool full : {false, true}) {
    const auto document = har_of(exchange, {.full = full, .extra_headers = {}});
    const auto& request = entry_of(document).at("request").as_object();
    const auto& value = request.at("headers").at(0).at("value").as_string();
    EXPECT_NE(std::string_view(value).find("\xef\xbf\xbd"), std::string_view::npos);
    EXPECT_TRUE(std::string_view(value).starts_with("value a"));
  }
  // Well-formed multi-byte text passes through untouched.
  exchange.request_headers = {{"x-text", "caf\xc3\xa9 \xe6\x8a\x96\xe9\x9f\xb3 \xf0\x9f\x8e\xb5"}};
  const auto document = har_of(exchange);
  EXPECT_EQ(header(entry_of(document).at("request").as_object(), "x-text"),
            "caf\xc3\xa9 \xe6\x8a\x96\xe9\x9f\xb3 \xf0\x9f\x8e\xb5");
}

TEST(Har, ControlCharactersAreEscaped) {
  auto exchange = feed_exchange();
  exchange.request_headers = {{"x-ctl", std::string("a\0b\"c\\d\ne", 9)}};
  const auto document = har_of(exchange);
  EXPECT_EQ(header(entry_of(document).at("request").as_object(), "x-ctl"),
            std::string("a\0b\"c\\d\ne", 9));
}

TEST(Har, HeaderListsAndValuesAreBounded) {
  auto exchange = feed_exchange();
  exchange.request_headers.clear();
  for (int i = 0; i < 5000; ++i) exchange.request_headers.push_back({"x-h", std::to_string(i)});
  exchange.request_headers.front().value = std::string(1024 * 1024, 'v');
  exchange.response_headers = exchange.request_headers;
  exchange.url = "https://h/" + std::string(1024 * 1024, 'p');
  const auto text = to_har(exchange, {}, kDecodeCap);
  EXPECT_LT(text.size(), 1024 * 1024u);
  const auto document = har_of(exchange);
  const auto& request = entry_of(document).at("request").as_object();
  EXPECT_LE(request.at("headers").as_array().size(), 512u);
  EXPECT_LE(request.at("headers").at(0).at("value").as_string().size(), 64 * 1024u);
  EXPECT_TRUE(request.at("comment").as_string().ends_with("headers not recorded (capture limit)"));
  EXPECT_LE(request.at("url").as_string().size(), 64 * 1024u);
}

TEST(Har, ManyQueryParametersAndCookiesAreBounded) {
  auto exchange = feed_exchange();
  exchange.url = "https://h/p?";
  std::string cookie;
  for (int i = 0; i < 3000; ++i) {
    exchange.url += "k" + std::to_string(i) + "=v&";
    cookie += "c" + std::to_string(i) + "=v; ";
  }
  exchange.request_headers = {{"cookie", cookie}};
  const auto document = har_of(exchange);
  const auto& request = entry_of(document).at("request").as_object();
  EXPECT_EQ(request.at("queryString").as_array().size(), 1024u);
  EXPECT_EQ(request.at("cookies").as_array().size(), 256u);
}

TEST(Har, EmptyExchangeIsStillAValidDocument) {
  HarExchange exchange;  // nothing known: epoch start, no headers, no body, status 0
  const auto document = har_of(exchange);
  const auto& entry = entry_of(document);
  EXPECT_EQ(entry.at("startedDateTime").as_string(), "1970-01-01T00:00:00.000Z");
  EXPECT_FALSE(entry.contains("serverIPAddress"));
  EXPECT_EQ(entry.at("response").at("content").at("text").as_string(), "");
  EXPECT_EQ(entry.at("time").to_number<double>(), 0);
}

}  // namespace
}  // namespace tokgate::proxy
