// What tokgate does with an HTTP/1 request head from a client (proxy/client_session.cpp
// read_request_head, serve_explicit, the intercepted loop, judge_request and exchange):
//  1. Beast's http::request_parser<buffer_body> (proxy::RequestParser) with tokgate's limits,
//     header_limit = limits.request_header_bytes (64 KiB by default, 1 KiB at least) and no body
//     limit, fed the input whole and again in small pieces as a slow client sends it;
//  2. the request target: a CONNECT authority (boost::urls::parse_authority), an absolute URI
//     (parse_absolute_uri) rewritten to origin-form, the Host header's name, each normalised
//     with policy::normalize_host, and the path the policy sees (normalized_path_for_policy);
//  3. strip_hop_by_hop() on the head before it is forwarded, the Connection token list, the
//     proxy's own error response quoting the target (failure_response);
//  4. the body after the head, streamed through a fixed chunk as relay_body() does.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>

#include "fuzz_check.hpp"
#include "policy/host_pattern.hpp"
#include "proxy/http_relay.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tokgate::proxy::RequestParser;

constexpr std::size_t kDefaultHeaderLimit = 64 * 1024;  // limits.request_header_bytes default
constexpr std::size_t kSmallestHeaderLimit = 1024;      // the least the config accepts

// The outcome of reading a head: the error, or the head's fields as text.
struct HeadResult {
  beast::error_code error;
  std::string head;  // method, target, version and fields, for comparing two reads
  std::size_t consumed = 0;
};

std::string describe(const http::request<http::buffer_body>& request) {
  std::string out(request.method_string());
  out += ' ';
  out += request.target();
  out += ' ';
  out += std::to_string(request.version());
  for (const auto& field : request) {
    out += '\n';
    out += field.name_string();
    out += ": ";
    out += field.value();
  }
  return out;
}

// Feeds `bytes` to the parser `step` bytes at a time (everything at once if step == 0), like
// async_read_header does as data arrives: each put() sees all the unconsumed bytes so far.
// The end of the input is the client closing the connection.
HeadResult read_head(RequestParser& parser, std::string_view bytes, std::size_t header_limit,
                     std::size_t step) {
  parser.header_limit(static_cast<std::uint32_t>(header_limit));
  parser.body_limit(boost::none);
  HeadResult result;
  std::size_t offset = 0;
  std::size_t available = step == 0 ? bytes.size() : std::min(step, bytes.size());
  while (!parser.is_header_done()) {
    beast::error_code ec;
    offset += parser.put(asio::buffer(bytes.data() + offset, available - offset), ec);
    if (ec == http::error::need_more) {
      if (available == bytes.size()) {
        // What Beast's read does at EOF: nothing yet is end_of_stream, else put_eof().
        if (parser.got_some()) {
          parser.put_eof(ec);
          result.error = ec ? ec : http::error::partial_message;
        } else {
          result.error = http::error::end_of_stream;
        }
        break;
      }
      available = std::min(bytes.size(), available + step);
      continue;
    }
    if (ec) {
      result.error = ec;
      break;
    }
  }
  result.consumed = offset;
  if (!result.error) result.head = describe(parser.get());
  return result;
}

// host_of() in client_session.cpp: the name part of a Host header ("example.com:8080",
// "[::1]:80"), normalised. (That function is file-local there; this follows it step by step.)
std::optional<std::string> host_of(std::string_view host_header) {
  if (host_header.starts_with('[')) {
    auto close = host_header.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    return tokgate::policy::normalize_host(host_header.substr(0, close + 1));
  }
  if (auto colon = host_header.rfind(':'); colon != std::string_view::npos) {
    host_header = host_header.substr(0, colon);
  }
  return tokgate::policy::normalize_host(host_header);
}

void check_normal_host(const std::optional<std::string>& host) {
  if (!host) return;
  FUZZ_CHECK(!host->empty() && host->size() <= tokgate::policy::kMaxHostNameLength);
  FUZZ_CHECK(tokgate::policy::normalize_host(*host) == host);
}

void check_policy_path(std::string_view target) {
  const std::string_view path = target.substr(0, target.find('?'));
  const std::string normal = tokgate::proxy::normalized_path_for_policy(path);
  FUZZ_CHECK(!normal.empty());
  FUZZ_CHECK(normal.find("//") == std::string::npos);
  if (path.starts_with('/')) FUZZ_CHECK(normal.starts_with('/'));
  // Not a fixed point by design: escapes are decoded once, as the origin decodes them, so
  // "/%2561weme" is "/%61weme" and only a second pass would make it "/aweme".
  if (path.find('%') == std::string_view::npos) {
    FUZZ_CHECK(tokgate::proxy::normalized_path_for_policy(normal) == normal);
  }
  if (!path.starts_with('/')) return;
  const std::string ended = normal + "/";
  // No dot segment is left for a rule to miss (the fuzzer once found "/.//aweme" kept "/./").
  FUZZ_CHECK(ended.find("/./") == std::string::npos && ended.find("/../") == std::string::npos);
}

// The target as serve_explicit and the intercepted loop handle it.
void handle_target(http::request<http::buffer_body>& request) {
  const std::string target(request.target());
  if (request.method() == http::verb::connect) {
    auto authority = boost::urls::parse_authority(target);
    if (authority && authority->has_port() && authority->port_number() != 0) {
      const std::string address = authority->host_address();  // decoded, owned
      std::string_view host = address;
      if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      check_normal_host(tokgate::policy::normalize_host(host));
    }
    // The 400 for a bad CONNECT quotes the target.
    tokgate::proxy::Failure failure{http::status::bad_request, "bad-request",
                                    "CONNECT needs host:port, got '" + target.substr(0, 200) + "'"};
    auto response = tokgate::proxy::failure_response(failure, request.version());
    const std::string& body = response.body();
    FUZZ_CHECK(!body.empty() && body.back() == '\n');
    for (std::size_t i = 0; i + 1 < body.size(); ++i) {
      FUZZ_CHECK(static_cast<unsigned char>(body[i]) >= 0x20 && body[i] != 0x7f);
    }
    std::ostringstream wire;
    wire << response;
    FUZZ_CHECK(!wire.str().empty());
    return;
  }
  if (!target.starts_with('/') && target != "*") {
    auto url = boost::urls::parse_absolute_uri(target);
    if (!url) return;
    if (url->scheme_id() == boost::urls::scheme::http && url->has_authority()) {
      check_normal_host(tokgate::policy::normalize_host(url->host_address()));
    }
    std::string origin_form = url->encoded_path().empty() ? "/" : std::string(url->encoded_path());
    if (url->has_query()) origin_form += "?" + std::string(url->encoded_query());
    request.target(origin_form);
  }
  check_policy_path(request.target());
}

void check_strip_hop_by_hop(http::request<http::buffer_body>& request) {
  const auto count = [&](http::field field) { return request.count(field); };
  const std::size_t hosts = count(http::field::host);
  const std::size_t lengths = count(http::field::content_length);
  const std::size_t encodings = count(http::field::transfer_encoding);
  for (const auto& token : http::token_list{request[http::field::connection]}) (void)token;
  tokgate::proxy::strip_hop_by_hop(request);
  for (auto field :
       {http::field::connection, http::field::keep_alive, http::field::proxy_connection,
        http::field::proxy_authorization, http::field::proxy_authenticate, http::field::te,
        http::field::trailer, http::field::upgrade}) {
    FUZZ_CHECK(count(field) == 0);
  }
  // The framing and the Host are never removed: that would desynchronise client and origin.
  FUZZ_CHECK(count(http::field::host) == hosts);
  FUZZ_CHECK(count(http::field::content_length) == lengths);
  FUZZ_CHECK(count(http::field::transfer_encoding) == encodings);
}

// relay_body's reading half: the body through a fixed chunk until the parser is done.
void read_body(RequestParser& parser, std::string_view rest) {
  std::array<char, 512> chunk;
  auto& body = parser.get().body();
  std::size_t offset = 0;
  uint64_t total = 0;
  for (int round = 0; round < 100000 && !parser.is_done(); ++round) {
    body.data = chunk.data();
    body.size = chunk.size();
    beast::error_code ec;
    std::size_t used = parser.put(asio::buffer(rest.data() + offset, rest.size() - offset), ec);
    offset += used;
    total += chunk.size() - body.size;
    if (ec == http::error::need_buffer) continue;
    if (ec == http::error::need_more) {
      parser.put_eof(ec);
      break;
    }
    if (ec) break;
    if (used == 0 && body.size == chunk.size()) break;
  }
  if (parser.is_done()) {
    if (auto length = parser.content_length(); length && !parser.chunked()) {
      FUZZ_CHECK(total <= rest.size());
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);

  // A slow client (7 bytes at a time) and a tight limit must read the same head as one read.
  RequestParser whole;
  HeadResult at_once = read_head(whole, bytes, kDefaultHeaderLimit, 0);
  {
    RequestParser trickled;
    HeadResult slow = read_head(trickled, bytes, kDefaultHeaderLimit, 7);
    // Which error may differ (Beast validates a truncated last line only when it sees it
    // whole), whether there is one may not.
    if (!slow.error != !at_once.error) {
      std::fprintf(stderr, "at once: '%s', 7 bytes at a time: '%s'\n",
                   at_once.error.message().c_str(), slow.error.message().c_str());
    }
    FUZZ_CHECK(!slow.error == !at_once.error);
    if (!at_once.error) FUZZ_CHECK(slow.head == at_once.head && slow.consumed == at_once.consumed);
    RequestParser tight;
    HeadResult small = read_head(tight, bytes, kSmallestHeaderLimit, 0);
    if (!small.error) FUZZ_CHECK(small.head == at_once.head);
  }
  if (at_once.error) return 0;

  auto& request = whole.get();
  (void)request.keep_alive();
  (void)request.method_string();
  if (auto ua = request[http::field::user_agent]; !ua.empty()) (void)ua.size();
  check_normal_host(host_of(request[http::field::host]));
  handle_target(request);
  check_strip_hop_by_hop(request);
  read_body(whole, bytes.substr(at_once.consumed));
  return 0;
}
