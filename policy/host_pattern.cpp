#include "policy/host_pattern.hpp"

#include <arpa/inet.h>  // inet_pton/inet_ntop: pure text <-> bytes conversions, no sockets

#include <algorithm>
#include <array>
#include <cstring>

namespace tokgate::policy {
namespace {

// Longest input that could still become a 253-byte name: an A-label is never shorter than its
// code point count, and a code point takes at most 4 bytes of UTF-8 (+ trailing dot, brackets).
constexpr std::size_t kMaxInputBytes = 4 * kMaxHostNameLength + 3;

bool is_ascii_label_char(char32_t c) {
  return (c >= U'a' && c <= U'z') || (c >= U'0' && c <= U'9') || c == U'-' || c == U'_';
}

// Code points never allowed in a label: C1 controls and the spaces, joiners, fillers, variation
// selectors, private-use and non-characters that make a name look like another one. IDNA forbids
// or drops all of these; we refuse them so two spellings can never reach the same policy.
struct CodePointRange {
  char32_t first;
  char32_t last;
};
constexpr std::array<CodePointRange, 21> kRefusedCodePoints{{
    {0x0080, 0x00A0},    {0x00AD, 0x00AD}, {0x034F, 0x034F}, {0x061C, 0x061C}, {0x115F, 0x1160},
    {0x1680, 0x1680},    {0x17B4, 0x17B5}, {0x180B, 0x180F}, {0x2000, 0x200F}, {0x2028, 0x202F},
    {0x205F, 0x206F},    {0x3000, 0x3000}, {0x3164, 0x3164}, {0xE000, 0xF8FF}, {0xFDD0, 0xFDEF},
    {0xFE00, 0xFE0F},    {0xFEFF, 0xFEFF}, {0xFFA0, 0xFFA0}, {0xFFF0, 0xFFFF}, {0xE0000, 0xE0FFF},
    {0xF0000, 0x10FFFF},
}};

bool is_refused_non_ascii(char32_t c) {
  if ((c & 0xFFFE) == 0xFFFE) return true;  // U+xxFFFE and U+xxFFFF are non-characters
  return std::any_of(kRefusedCodePoints.begin(), kRefusedCodePoints.end(),
                     [c](const CodePointRange& r) { return c >= r.first && c <= r.last; });
}

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool decode_utf8(std::string_view text, std::u32string& out) {
  std::size_t i = 0;
  while (i < text.size()) {
    auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x80) {
      out.push_back(byte);
      ++i;
      continue;
    }
    std::size_t extra = 0;
    char32_t c = 0;
    char32_t min = 0;
    if ((byte & 0xE0) == 0xC0) {
      extra = 1, c = byte & 0x1F, min = 0x80;
    } else if ((byte & 0xF0) == 0xE0) {
      extra = 2, c = byte & 0x0F, min = 0x800;
    } else if ((byte & 0xF8) == 0xF0) {
      extra = 3, c = byte & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (extra >= text.size() - i) return false;
    for (std::size_t k = 1; k <= extra; ++k) {
      auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      c = (c << 6) | (next & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return false;
    out.push_back(c);
    i += extra + 1;
  }
  return true;
}

// The small part of UTS 46 mapping that costs nothing: ASCII case, fullwidth ASCII and the
// ideographic full stops that browsers treat as dots.
char32_t map_code_point(char32_t c) {
  if (c == 0x3002 || c == 0xFF61) return U'.';
  if (c >= 0xFF01 && c <= 0xFF5E) c -= 0xFEE0;
  if (c >= U'A' && c <= U'Z') c += U'a' - U'A';
  return c;
}

bool append_label(std::u32string_view label, std::string& out) {
  if (label.empty() || label.size() > kMaxLabelLength) return false;
  bool ascii = true;
  for (char32_t c : label) {
    if (c < 0x80) {
      if (!is_ascii_label_char(c)) return false;
    } else {
      if (is_refused_non_ascii(c)) return false;
      ascii = false;
    }
  }
  if (ascii) {
    for (char32_t c : label) out.push_back(static_cast<char>(c));
    return true;
  }
  auto encoded = punycode_encode(label);
  if (!encoded || encoded->size() + 4 > kMaxLabelLength) return false;
  out += "xn--";
  out += *encoded;
  return true;
}

bool is_all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool is_hex_number(std::string_view s) {
  if (s.size() < 2 || s[0] != '0' || s[1] != 'x') return false;
  return std::all_of(s.begin() + 2, s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string_view last_label(std::string_view name) {
  auto dot = name.rfind('.');
  return dot == std::string_view::npos ? name : name.substr(dot + 1);
}

bool is_strict_dotted_quad(std::string_view name) {
  int parts = 0;
  while (true) {
    auto dot = name.find('.');
    auto part = name.substr(0, dot);
    if (!is_all_digits(part) || part.size() > 3 || (part.size() > 1 && part[0] == '0')) {
      return false;
    }
    int value = 0;
    for (char c : part) value = value * 10 + (c - '0');
    if (value > 255 || ++parts > 4) return false;
    if (dot == std::string_view::npos) break;
    name.remove_prefix(dot + 1);
  }
  return parts == 4;
}

std::optional<std::string> canonical_ipv6(std::string_view text) {
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  if (text.find('\0') != std::string_view::npos) return std::nullopt;
  char buffer[INET6_ADDRSTRLEN] = {};
  std::memcpy(buffer, text.data(), text.size());
  unsigned char bytes[16];
  if (inet_pton(AF_INET6, buffer, bytes) != 1) return std::nullopt;
  char printed[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(AF_INET6, bytes, printed, sizeof printed) == nullptr) return std::nullopt;
  return std::string(printed);
}

// On a normalised name: an IPv6 literal has colons, an IPv4 one a numeric last label.
bool is_ip_literal(std::string_view name) {
  return name.find(':') != std::string_view::npos || is_all_digits(last_label(name));
}

bool is_strictly_below(std::string_view host, std::string_view suffix) {
  return host.size() > suffix.size() && host.ends_with(suffix) &&
         host[host.size() - suffix.size() - 1] == '.';
}

// RFC 3492 section 5 parameters.
constexpr uint32_t kBase = 36;
constexpr uint32_t kTMin = 1;
constexpr uint32_t kTMax = 26;
constexpr uint32_t kSkew = 38;
constexpr uint32_t kDamp = 700;
constexpr uint32_t kInitialBias = 72;
constexpr uint32_t kInitialN = 0x80;
constexpr uint32_t kMaxInt = UINT32_MAX;

char punycode_digit(uint32_t d) {
  return static_cast<char>(d < 26 ? 'a' + d : '0' + (d - 26));
}

// RFC 3492 section 6.1.
uint32_t adapt_bias(uint32_t delta, uint32_t num_points, bool first_time) {
  delta = first_time ? delta / kDamp : delta / 2;
  delta += delta / num_points;
  uint32_t k = 0;
  while (delta > ((kBase - kTMin) * kTMax) / 2) {
    delta /= kBase - kTMin;
    k += kBase;
  }
  return k + (kBase - kTMin + 1) * delta / (delta + kSkew);
}

}  // namespace

std::optional<std::string> punycode_encode(std::u32string_view input) {
  if (input.size() >= kMaxInt) return std::nullopt;
  std::string out;
  for (char32_t c : input) {
    if (c < kInitialN) out.push_back(static_cast<char>(c));
  }
  const auto basic_count = static_cast<uint32_t>(out.size());
  uint32_t handled = basic_count;
  if (basic_count > 0) out.push_back('-');

  uint32_t n = kInitialN;
  uint32_t delta = 0;
  uint32_t bias = kInitialBias;
  const auto total = static_cast<uint32_t>(input.size());
  while (handled < total) {
    // The smallest code point not handled yet.
    uint32_t m = kMaxInt;
    for (char32_t c : input) {
      if (c >= n && c < m) m = c;
    }
    if (m - n > (kMaxInt - delta) / (handled + 1)) return std::nullopt;
    delta += (m - n) * (handled + 1);
    n = m;
    for (char32_t c : input) {
      if (c < n && ++delta == 0) return std::nullopt;
      if (c != n) continue;
      uint32_t q = delta;
      for (uint32_t k = kBase;; k += kBase) {
        uint32_t t = k <= bias ? kTMin : (k >= bias + kTMax ? kTMax : k - bias);
        if (q < t) break;
        out.push_back(punycode_digit(t + (q - t) % (kBase - t)));
        q = (q - t) / (kBase - t);
      }
      out.push_back(punycode_digit(q));
      bias = adapt_bias(delta, handled + 1, handled == basic_count);
      delta = 0;
      ++handled;
    }
    ++delta;
    ++n;
  }
  return out;
}

std::optional<std::string> normalize_host(std::string_view host) {
  if (host.empty() || host.size() > kMaxInputBytes) return std::nullopt;
  if (host.front() == '[') {
    if (host.size() < 2 || host.back() != ']') return std::nullopt;
    return canonical_ipv6(host.substr(1, host.size() - 2));
  }
  if (host.find(':') != std::string_view::npos) return canonical_ipv6(host);

  std::u32string code_points;
  code_points.reserve(host.size());
  if (!decode_utf8(host, code_points)) return std::nullopt;
  for (char32_t& c : code_points) c = map_code_point(c);
  if (code_points.back() == U'.') code_points.pop_back();
  if (code_points.empty()) return std::nullopt;

  std::string out;
  out.reserve(host.size());
  std::u32string_view rest = code_points;
  while (true) {
    auto dot = rest.find(U'.');
    if (!append_label(rest.substr(0, dot), out)) return std::nullopt;
    if (dot == std::u32string_view::npos) break;
    out.push_back('.');
    rest.remove_prefix(dot + 1);
  }
  if (out.size() > kMaxHostNameLength) return std::nullopt;

  auto tld = last_label(out);
  if ((is_all_digits(tld) || is_hex_number(tld)) && !is_strict_dotted_quad(out)) {
    return std::nullopt;
  }
  return out;
}

std::expected<HostPattern, std::string> HostPattern::parse(std::string_view text) {
  if (text.empty()) return std::unexpected("empty host pattern");
  HostPattern pattern;
  if (text == "*") {
    pattern.kind_ = Kind::any;
    pattern.text_.push_back('*');  // not `= "*"`: g++ 12 -O2 -fsanitize warns (-Wrestrict)
    return pattern;
  }
  std::string_view name_text = text;
  std::string_view prefix;
  if (text.starts_with("*.")) {
    pattern.kind_ = Kind::below;
    prefix = "*.";
  } else if (text.starts_with('.')) {
    pattern.kind_ = Kind::at_or_below;
    prefix = ".";
  }
  name_text.remove_prefix(prefix.size());
  if (name_text.find('*') != std::string_view::npos) {
    return std::unexpected(
        "'*' must be the whole pattern or its whole first label (\"*.example.com\")");
  }
  auto name = normalize_host(name_text);
  if (!name) return std::unexpected("not a valid host name");
  if (pattern.kind_ != Kind::exact && is_ip_literal(*name)) {
    return std::unexpected("a wildcard cannot apply to an IP address");
  }
  pattern.name_ = std::move(*name);
  pattern.text_ = std::string(prefix) + pattern.name_;
  return pattern;
}

bool HostPattern::matches(std::string_view host) const {
  switch (kind_) {
    case Kind::any:
      return true;
    case Kind::exact:
      return host == name_;
    case Kind::below:
      return is_strictly_below(host, name_);
    case Kind::at_or_below:
      return host == name_ || is_strictly_below(host, name_);
  }
  return false;
}

void HostPatternSet::add(const HostPattern& pattern) {
  switch (pattern.kind()) {
    case HostPattern::Kind::any:
      match_all_ = true;
      break;
    case HostPattern::Kind::exact:
      exact_.insert(pattern.name());
      break;
    case HostPattern::Kind::below:
      strictly_below_.insert(pattern.name());
      break;
    case HostPattern::Kind::at_or_below:
      exact_.insert(pattern.name());
      strictly_below_.insert(pattern.name());
      break;
  }
}

bool HostPatternSet::matches(std::string_view host) const {
  if (match_all_) return true;
  if (exact_.contains(host)) return true;
  if (strictly_below_.empty()) return false;
  for (auto dot = host.find('.'); dot != std::string_view::npos; dot = host.find('.', dot + 1)) {
    if (strictly_below_.contains(host.substr(dot + 1))) return true;
  }
  return false;
}

}  // namespace tokgate::policy
