// HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/) for the `capture` action: one
// exchange becomes one HAR document that Chrome's and Firefox's devtools open with "Import HAR".
// Pure code: values in, JSON text out, no I/O. The input owns its values because the data plane
// hands it to the capture writer's thread.
//
// Privacy (docs/flow-log.md, "Privacy"): unless the capturing rule says `full`, the values of the
// headers in kRedactedHeaders (and the configured extras) become "REDACTED", cookie values
// become "REDACTED", and query values in the URL, queryString and URL-bearing headers (:path,
// Referer, Location, Content-Location) become "REDACTED". Bodies are kept: capturing them is the
// point of the action.
//
// Bounds: bodies are decoded up to the caller's cap and otherwise kept raw; every string is cut
// to a fixed size and made valid UTF-8 (invalid bytes become U+FFFD), header and cookie lists are
// capped, so one document costs O(body cap) memory whatever the exchange held.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tokgate::proxy {

// creator.version in every HAR document; kept equal to the project VERSION in CMakeLists.txt.
inline constexpr std::string_view kHarCreatorVersion = "0.1.0";

struct HarHeader {
  std::string name, value;
};

struct HarMessageBody {
  std::string bytes;       // the first bytes as received, still content-encoded
  uint64_t wire_size = 0;  // the whole body's size on the wire (>= bytes.size())
  bool truncated = false;  // the capture cap cut `bytes` short of wire_size
};

struct HarExchange {
  std::chrono::system_clock::time_point started;
  std::string method, url;
  std::string http_version;  // "HTTP/1.1", "HTTP/1.0", "h2", "h3" (HAR says "HTTP/2", "HTTP/3")
  std::vector<HarHeader> request_headers;
  HarMessageBody request_body;
  unsigned status = 0;
  std::string status_text;
  std::vector<HarHeader> response_headers;
  HarMessageBody response_body;
  std::string server_ip;
  std::string connection;  // the connection id, e.g. "7"
  // Milliseconds; -1 = does not apply (e.g. a reused origin connection has no dns/connect/ssl).
  // connect_ms is the TCP connect alone: HAR's `connect` includes the TLS handshake, so the
  // document reports connect_ms + ssl_ms there.
  double blocked_ms = -1, dns_ms = -1, connect_ms = -1, ssl_ms = -1;
  double send_ms = 0, wait_ms = 0, receive_ms = 0;
  std::string comment;  // e.g. "tokgate flow 7.s3, rule capture-app-api, category app-api"
};

struct HarRedaction {
  bool full = false;                       // the rule asked for unredacted captures
  std::vector<std::string> extra_headers;  // [privacy] redact_headers, on top of the defaults
};

// Headers whose values identify a person or a session, or sign requests with them: the
// credentials every client sends, and the TikTok app's session token and request signatures.
// Lower-case; matched case-insensitively.
inline constexpr std::array<std::string_view, 12> kRedactedHeaders = {
    "cookie",     "set-cookie", "authorization",   "proxy-authorization",
    "x-tt-token", "x-argus",    "x-gorgon",        "x-khronos",
    "x-ladon",    "x-ss-stub",  "x-ss-req-ticket", "x-bd-kmsv",
};

// True when the value of header `name` must be replaced by "REDACTED" under `redaction`: always
// false with `full`; otherwise when `name` is in kRedactedHeaders or in `extra_headers`
// (case-insensitive). Shared by the flow log and the web UI.
bool is_redacted_header(std::string_view name, const HarRedaction& redaction);

// `url` (absolute URL, or origin-form path) with every query parameter value replaced by
// "REDACTED" (names kept, a parameter without '=' kept as is), the fragment dropped and any
// userinfo replaced by "REDACTED". Returns `url` unchanged when it has none of these.
std::string redact_url(std::string_view url);

// The HAR document (UTF-8 JSON) for one exchange: log.version "1.2", creator tokgate, an empty
// pages list (Firefox requires the array), one entry. Bodies are decoded per Content-Encoding up
// to max_decoded_body bytes; a body that fails to decode (or decodes larger) is kept raw in base64
// with a comment saying why.
std::string to_har(const HarExchange& exchange, const HarRedaction& redaction,
                   std::size_t max_decoded_body);

}  // namespace tokgate::proxy
