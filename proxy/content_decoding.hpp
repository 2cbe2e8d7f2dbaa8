// Content-Encoding decoding for display (HAR capture, the web UI): gzip / x-gzip, deflate, br,
// zstd, identity, and chains of them. Every body is hostile: decoding streams through a bounded
// buffer and stops as soon as the output passes the caller's cap, so a decompression bomb costs
// at most max_output bytes plus one chunk. Declared sizes (gzip ISIZE, zstd frame content size)
// are never used to size anything, and zstd frames needing a window above 8 MiB are refused
// (RFC 9659 caps the window of the HTTP "zstd" coding at 8 MiB).
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <string>
#include <string_view>

namespace tokgate::proxy {

// Whether the body handed to decode_content is the whole message body or only its first bytes
// (a capture cap cut it): a prefix that ends mid-stream decodes to what it holds instead of
// failing as truncated.
enum class BodyExtent : uint8_t { whole, prefix };

// At most this many codings in one Content-Encoding chain; more is refused as hostile.
inline constexpr std::size_t kMaxContentCodings = 8;

// Decodes `body` per the Content-Encoding field value `content_encoding` (a comma-separated list,
// codings applied in order, so decoded in reverse; names are case-insensitive; "" and "identity"
// leave the body as is). An empty body decodes to an empty body under any known coding (HEAD, 204
// and 304 responses carry Content-Encoding without a body).
//
// Errors: "decoded body exceeds N bytes" when the output (or any intermediate stage of a chain)
// would pass max_output; "unsupported content coding \"x\"" naming the first unknown coding;
// "truncated <coding> stream", "corrupt <coding> data: ...", "trailing data after <coding>
// stream" for bad input; "too many content codings" past kMaxContentCodings.
std::expected<std::string, std::string> decode_content(std::string_view content_encoding,
                                                       std::string_view body,
                                                       std::size_t max_output,
                                                       BodyExtent extent = BodyExtent::whole);

// True when the field value names no coding other than "identity" (or is empty): the body on the
// wire is the representation itself.
bool is_identity_coding(std::string_view content_encoding);

}  // namespace tokgate::proxy
