// Internal to the catalog (not part of the policy API): the compiled tables that catalog.cpp
// builds from the TOML files and classifier.cpp matches requests against. The format they come
// from is described in docs/catalog.md.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "policy/types.hpp"

namespace tokgate::policy {

// Bounds that keep the per-request state a few fixed-size bitsets on the stack.
inline constexpr std::size_t kMaxSignatures = 256;
inline constexpr std::size_t kMaxAtomsPerKind = 256;  // user_agent, headers, query each
inline constexpr std::size_t kMaxFamilies = 64;
inline constexpr std::size_t kMaxNameLength = 63;  // header and query parameter names

class SmallBits {
 public:
  void set(std::size_t i) { words_[i / 64] |= uint64_t{1} << (i % 64); }
  bool test(std::size_t i) const { return (words_[i / 64] >> (i % 64)) & 1U; }
  SmallBits& operator|=(const SmallBits& other) {
    for (std::size_t w = 0; w < words_.size(); ++w) words_[w] |= other.words_[w];
    return *this;
  }
  // Calls f(index) for every set bit, in increasing order.
  template <typename F>
  void for_each(F&& f) const {
    for (std::size_t w = 0; w < words_.size(); ++w) {
      for (uint64_t bits = words_[w]; bits != 0; bits &= bits - 1) {
        f(w * 64 + static_cast<std::size_t>(__builtin_ctzll(bits)));
      }
    }
  }

 private:
  std::array<uint64_t, kMaxAtomsPerKind / 64> words_{};
};
static_assert(kMaxSignatures <= kMaxAtomsPerKind);

// A "shape": literal text with a few placeholders, matched ASCII-case-insensitively, greedily
// and without backtracking (linear in the subject):
//   {n} one or more digits   {x} one or more hex digits   {v} a digit then digits and dots
//   {/} a '/' or the end of the subject
// A leading '*' lets the match start anywhere (otherwise at the start); a trailing '$' makes it
// end at the end of the subject (otherwise the rest is ignored). User-Agent tokens always match
// anywhere, on word boundaries: not preceded by a letter or digit, and, if the token ends with a
// letter or digit, not followed by one.
class Shape {
 public:
  enum class Use : uint8_t { first_label, path, user_agent };

  static std::expected<Shape, std::string> parse(std::string_view text, Use use);

  bool matches(std::string_view subject) const;
  // User-Agent tokens: a match that starts exactly at `pos`.
  bool matches_at(std::string_view subject, std::size_t pos) const;
  // The first literal piece, lower-cased: the User-Agent index key.
  const std::string& leading_literal() const { return pieces_.front().literal; }
  const std::string& text() const { return text_; }

 private:
  enum class PieceKind : uint8_t { literal, digits, hex, version, slash_or_end };
  struct Piece {
    PieceKind kind = PieceKind::literal;
    std::string literal;  // lower-cased
  };
  std::optional<std::size_t> match_pieces(std::string_view subject, std::size_t pos) const;

  std::string text_;
  std::vector<Piece> pieces_;
  std::size_t min_length_ = 0;   // no shorter subject can match
  std::string lead_;             // the leading literal (lower-cased) a match starts with, or ""
  bool single_literal_ = false;  // the shape is just lead_ (the common case): no piece walk
  bool anchored_start_ = true;
  bool anchored_end_ = false;
  bool word_bounded_ = false;
};

// "Name" (present) or "Name: value" (equal, case-insensitive, after trimming spaces).
struct HeaderAtom {
  std::string text;   // as written in the catalog
  std::string name;   // lower-cased
  std::string value;  // lower-cased
  bool has_value = false;
};

// "name" (present) or "name=value" (equal after percent-decoding, case-insensitive).
struct QueryAtom {
  std::string text;
  std::string name;
  std::string value;
  bool has_value = false;
};

struct Signature {
  std::string id;
  Category category = Category::none;
  int stage = 0;
  bool evidence_only = false;
  std::string source;
  std::string description;
  std::string origin;  // "NAME:LINE:COL" of its table, for messages
  std::size_t load_order = 0;
  uint64_t family_bit = 0;  // the family its hosts belong to (0: none)
  int within = -1;          // the family its host must belong to (-1: any host)
  std::vector<std::string> hosts;
  std::vector<std::string> suffixes;
  std::vector<Shape> first_label;
  std::vector<Shape> path;
  std::vector<uint16_t> user_agent;  // indexes into CatalogData::ua_atoms
  std::vector<uint16_t> headers;     // ... header_atoms
  std::vector<uint16_t> query;       // ... query_atoms
  std::vector<std::string> methods;

  bool has_host() const { return !hosts.empty() || !suffixes.empty(); }
  // Decided by the host name alone (what DNS blocklists can express).
  bool host_only() const {
    return has_host() && within < 0 && first_label.empty() && path.empty() && user_agent.empty() &&
           headers.empty() && query.empty() && methods.empty();
  }
};

class CatalogData {
 public:
  std::string version;
  std::vector<std::string> families;
  std::vector<Signature> signatures;  // in precedence order: stage, then load order
  std::vector<Shape> ua_atoms;
  std::vector<HeaderAtom> header_atoms;
  std::vector<QueryAtom> query_atoms;

  // Builds the lookup tables once `signatures` and the atoms are final (classifier.cpp).
  void build_tables();
  Classification classify(const RequestFacts& facts) const;

 private:
  struct HostKey {
    uint16_t signature;
    bool suffix;  // also matches below the name
  };
  struct HeaderName {
    std::string name;  // lower-cased
    uint64_t hash = 0;
    std::vector<uint16_t> atoms;
  };
  struct QueryName {
    std::string name;
    std::vector<uint16_t> atoms;
  };
  struct RequestState;

  void probe_host(std::string_view host, RequestState& state) const;
  void scan_user_agent(std::string_view user_agent, RequestState& state) const;
  void match_user_agent_at(std::string_view user_agent, std::size_t start, unsigned bigram,
                           RequestState& state) const;
  void scan_headers(std::span<const HeaderView> headers, RequestState& state) const;
  void scan_query(std::string_view query, RequestState& state) const;
  bool fires(std::size_t index, const RequestFacts& facts, const RequestState& state) const;
  void add_evidence(const Signature& signature, const RequestFacts& facts,
                    const RequestState& state, std::vector<Evidence>& out) const;

  // Host names and suffixes, hashed right to left so that one pass over a host yields the hash
  // of every suffix at its label boundary (O(length), not O(length x labels)).
  struct HostName {
    std::string name;
    uint64_t hash = 0;
    std::vector<HostKey> keys;
  };
  std::vector<HostName> host_names_;
  std::vector<int32_t> host_slots_;  // open addressing, power-of-two size, -1 = empty
  // The User-Agent index: a bitmap of the tokens' first two bytes, then for each token its
  // first (up to 16) literal bytes, so false starts ("AppleWebKit" for "AppName/") cost a compare.
  struct UaStart {
    uint16_t bigram;
    uint16_t atom;
    uint8_t prefix_length;
    std::array<unsigned char, 16> prefix;
  };
  std::array<uint64_t, 65536 / 64> ua_bigram_bits_{};
  std::vector<UaStart> ua_starts_;  // sorted by bigram
  std::vector<HeaderName> header_names_;
  std::vector<int32_t> header_slots_;  // open addressing, power-of-two size, -1 = empty
  std::vector<QueryName> query_names_;
  // Quick rejection of request header names (one bit per length and first byte) and of query
  // parameters (one bit per hashed first two bytes; catalog query names have at least two).
  std::array<uint64_t, 256> header_name_filter_{};
  std::array<uint64_t, 64> query_name_starts_{};
  // Per byte of a User-Agent: can a token start with it, and can a token start after it (a
  // word boundary: not a letter or digit, or anything if some token starts with neither).
  std::array<uint8_t, 256> ua_token_first_{};
  std::array<uint8_t, 256> ua_start_after_{};
  // Which signatures can fire at all is known from bits before any signature is looked at:
  // those whose host, User-Agent, header or query condition had a hit, those scoped to a family
  // the host belongs to, and the few with none of these conditions (always tested).
  SmallBits ungated_;
  std::vector<SmallBits> within_family_;  // per family: the signatures scoped to it
  // For each atom, the signatures that list it: a hit marks them in one step.
  std::vector<std::vector<uint16_t>> ua_atom_signatures_;
  std::vector<std::vector<uint16_t>> header_atom_signatures_;
  std::vector<std::vector<uint16_t>> query_atom_signatures_;
};

}  // namespace tokgate::policy
