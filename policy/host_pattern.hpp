// Host names as policy sees them: one normal form (lower case, A-labels, no trailing dot), and
// patterns over that form that match on label boundaries only, so "tiktok.com" can never match
// "nottiktok.com" or "tiktok.com.evil.example". Pure code: no sockets, no resolver.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>

namespace tokgate::policy {

inline constexpr std::size_t kMaxHostNameLength = 253;  // RFC 1035, without the trailing dot
inline constexpr std::size_t kMaxLabelLength = 63;

// The normal form of a host name, or nullopt if it is not a valid one:
// - ASCII is lower-cased; one trailing dot is dropped;
// - UTF-8 labels become IDNA A-labels ("bücher" -> "xn--bcher-kva"), after mapping fullwidth
//   ASCII and the ideographic full stops to their ASCII forms (no other Unicode case folding or
//   normalisation is done);
// - labels must be 1..63 bytes of [a-z0-9-_] (underscore because real DNS names use it), the name
//   at most 253 bytes; invalid UTF-8, controls and invisible/space code points are refused;
// - an IPv4 literal must be a strict dotted quad; a name whose last label is numeric but is not
//   one ("127.1", "0x7f.0.0.1", "010.0.0.1") is refused, since resolvers read those as addresses;
// - an IPv6 literal, bracketed or not, comes back in canonical form (RFC 5952) without brackets.
std::optional<std::string> normalize_host(std::string_view host);

// RFC 3492 Punycode of one label's code points, without the "xn--" prefix. ASCII code points are
// copied as they are. nullopt if the encoding overflows (only for absurd inputs).
std::optional<std::string> punycode_encode(std::u32string_view code_points);

// One host pattern:
//   "tiktok.com"    exactly that host
//   "*.tiktok.com"  any host strictly below tiktok.com
//   ".tiktok.com"   tiktok.com and any host below it
//   "*"             every host
// The name part is normalised like a host. "*tiktok.com", "a.*.com", "**" and "" are refused, as
// is a wildcard on an IP literal.
class HostPattern {
 public:
  enum class Kind : uint8_t { exact, below, at_or_below, any };

  static std::expected<HostPattern, std::string> parse(std::string_view text);

  // `normalized_host` must come from normalize_host().
  bool matches(std::string_view normalized_host) const;

  // The pattern in normal form, e.g. "*.tiktok.com" for "*.TikTok.COM.".
  const std::string& text() const { return text_; }
  Kind kind() const { return kind_; }
  // The normalised name part ("tiktok.com"); empty for "*".
  const std::string& name() const { return name_; }

 private:
  Kind kind_ = Kind::exact;
  std::string name_;
  std::string text_;
};

// Many patterns answered in O(labels of the host): a hash set of exact names and a hash set of
// suffixes, probed at each label boundary of the host. No regex, no scan over the patterns.
class HostPatternSet {
 public:
  void add(const HostPattern& pattern);
  // `normalized_host` must come from normalize_host().
  bool matches(std::string_view normalized_host) const;
  bool empty() const { return !match_all_ && exact_.empty() && strictly_below_.empty(); }

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using NameSet = std::unordered_set<std::string, Hash, std::equal_to<>>;

  bool match_all_ = false;
  NameSet exact_;           // hosts matched as a whole ("x" and ".x")
  NameSet strictly_below_;  // suffixes matched after a label boundary ("*.x" and ".x")
};

}  // namespace tokgate::policy
