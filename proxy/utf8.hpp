// UTF-8 from the network or a file, made safe for JSON, logs and HTML: one definition of "well
// formed" for every writer (flow log, HAR, GeoIP strings, report).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tokgate::proxy {

// Length of the well-formed UTF-8 sequence starting at text[i] (Unicode table 3-7: no overlong
// forms, no surrogates, nothing above U+10FFFF), or 0 when the bytes there are ill-formed.
std::size_t utf8_sequence_length(std::string_view text, std::size_t i = 0);

bool is_valid_utf8(std::string_view text);

// `text` cut to at most max_bytes (on a character boundary), each ill-formed byte replaced by
// `replacement` (U+FFFD by default).
std::string valid_utf8(std::string_view text, std::size_t max_bytes,
                       std::string_view replacement = "\xef\xbf\xbd");

}  // namespace tokgate::proxy
