// The classifier: matches one request against the compiled catalog. Per request it probes the
// host once per label boundary, scans the User-Agent once (a bigram bitmap picks the few
// positions where a token can start), looks each header name up once and walks the query once;
// then it runs through the signatures in precedence order testing bits. Nothing here allocates
// except the evidence vector of the result.
#include <algorithm>
#include <array>

#include "policy/catalog.hpp"
#include "policy/catalog_data.hpp"

namespace tokgate::policy {
namespace {

// ASCII lower-casing by table: the User-Agent scan folds every byte.
constexpr std::array<unsigned char, 256> kFold = [] {
  std::array<unsigned char, 256> table{};
  for (int i = 0; i < 256; ++i) {
    table[i] = static_cast<unsigned char>(i >= 'A' && i <= 'Z' ? i + ('a' - 'A') : i);
  }
  return table;
}();

unsigned char fold(char c) {
  return kFold[static_cast<unsigned char>(c)];
}

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_hex(char c) {
  return is_digit(c) || (fold(c) >= 'a' && fold(c) <= 'f');
}
constexpr std::array<bool, 256> kAlnum = [] {
  std::array<bool, 256> table{};
  for (int i = 0; i < 256; ++i) {
    table[i] = (i >= '0' && i <= '9') || (i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z');
  }
  return table;
}();

bool is_alnum(char c) {
  return kAlnum[static_cast<unsigned char>(c)];
}

int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  return fold(c) - 'a' + 10;
}

// `lower` is already lower-case.
bool iequals(std::string_view text, std::string_view lower) {
  if (text.size() != lower.size()) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (fold(text[i]) != static_cast<unsigned char>(lower[i])) return false;
  }
  return true;
}

// Compares a raw query component with an expected (lower-case) text, decoding %XX on the fly.
bool decoded_iequals(std::string_view raw, std::string_view lower) {
  // Decoding only shortens: a shorter raw text cannot match, one of the same length has no
  // escape that could.
  if (raw.size() < lower.size()) return false;
  if (raw.size() == lower.size()) return iequals(raw, lower);
  std::size_t j = 0;
  for (std::size_t i = 0; i < raw.size(); ++i, ++j) {
    char c = raw[i];
    if (c == '%' && raw.size() - i > 2 && is_hex(raw[i + 1]) && is_hex(raw[i + 2])) {
      c = static_cast<char>(hex_value(raw[i + 1]) * 16 + hex_value(raw[i + 2]));
      i += 2;
    }
    if (j >= lower.size() || fold(c) != static_cast<unsigned char>(lower[j])) return false;
  }
  return j == lower.size();
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// FNV-1a over the lower-cased bytes: header names are compared case-insensitively.
uint64_t folded_hash(std::string_view s) {
  uint64_t h = kFnvBasis;
  for (char c : s) h = (h ^ fold(c)) * kFnvPrime;
  return h;
}

// FNV-1a over the bytes from last to first (see CatalogData::host_names_).
uint64_t reverse_hash(std::string_view s) {
  uint64_t h = kFnvBasis;
  for (std::size_t i = s.size(); i-- > 0;) {
    h = (h ^ static_cast<unsigned char>(s[i])) * kFnvPrime;
  }
  return h;
}

// Open-addressing slot table over `count` entries, load factor <= 1/4.
template <typename HashOf>
std::vector<int32_t> build_slots(std::size_t count, HashOf&& hash_of) {
  std::size_t slots = 16;
  while (slots < count * 4) slots *= 2;
  std::vector<int32_t> table(slots, -1);
  for (std::size_t i = 0; i < count; ++i) {
    std::size_t slot = hash_of(i) & (slots - 1);
    while (table[slot] >= 0) slot = (slot + 1) & (slots - 1);
    table[slot] = static_cast<int32_t>(i);
  }
  return table;
}

// The (length, first byte) filter key of a name of 1..kMaxNameLength bytes.
std::size_t name_key(std::string_view name) {
  return (name.size() & 63) << 8 | fold(name[0]);
}

template <std::size_t N>
bool filter_has(const std::array<uint64_t, N>& filter, std::size_t key) {
  return (filter[key / 64] >> (key % 64)) & 1U;
}

template <std::size_t N>
void filter_add(std::array<uint64_t, N>& filter, std::size_t key) {
  filter[key / 64] |= uint64_t{1} << (key % 64);
}

// The key of a query parameter's first two bytes (4096 values; letters never collide).
std::size_t query_start_key(unsigned char first, unsigned char second) {
  return (std::size_t{kFold[first]} & 63) << 6 | (std::size_t{kFold[second]} & 63);
}

bool is_at_or_below(std::string_view host, std::string_view name) {
  if (host == name) return true;
  return host.size() > name.size() && host.ends_with(name) &&
         host[host.size() - name.size() - 1] == '.';
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Shape

std::expected<Shape, std::string> Shape::parse(std::string_view text, Use use) {
  if (text.empty()) return std::unexpected("empty pattern");
  if (text.size() > 200) return std::unexpected("pattern longer than 200 bytes");
  Shape shape;
  shape.text_ = std::string(text);
  shape.word_bounded_ = use == Use::user_agent;
  std::string_view body = text;
  if (body.front() == '*') {
    if (use == Use::user_agent) {
      return std::unexpected("User-Agent tokens match anywhere already: drop the leading '*'");
    }
    shape.anchored_start_ = false;
    body.remove_prefix(1);
  }
  if (!body.empty() && body.back() == '$') {
    shape.anchored_end_ = true;
    body.remove_suffix(1);
  }
  bool has_literal = false;
  while (!body.empty()) {
    char c = body.front();
    if (c == '{') {
      auto close = body.find('}');
      if (close == std::string_view::npos) return std::unexpected("unclosed '{'");
      auto name = body.substr(1, close - 1);
      PieceKind kind;
      if (name == "n") {
        kind = PieceKind::digits;
      } else if (name == "x") {
        kind = PieceKind::hex;
      } else if (name == "v") {
        kind = PieceKind::version;
      } else if (name == "/") {
        kind = PieceKind::slash_or_end;
      } else {
        return std::unexpected("unknown placeholder '{" + std::string(name) +
                               "}' (expected {n}, {x}, {v} or {/})");
      }
      shape.pieces_.push_back({kind, {}});
      body.remove_prefix(close + 1);
      continue;
    }
    if (c == '*' || c == '$' || c == '}') {
      return std::unexpected(std::string("'") + c +
                             "' is only allowed as the first ('*') or last ('$') character");
    }
    auto u = static_cast<unsigned char>(c);
    bool printable = u > 0x20 && u < 0x7f;
    if (!printable && !(c == ' ' && use == Use::user_agent)) {
      return std::unexpected("pattern characters must be printable ASCII");
    }
    if (shape.pieces_.empty() || shape.pieces_.back().kind != PieceKind::literal) {
      shape.pieces_.push_back({PieceKind::literal, {}});
    }
    shape.pieces_.back().literal.push_back(static_cast<char>(fold(c)));
    has_literal = true;
    body.remove_prefix(1);
  }
  if (!has_literal) return std::unexpected("pattern has no literal text");
  if (use == Use::user_agent && (shape.pieces_.front().kind != PieceKind::literal ||
                                 shape.pieces_.front().literal.size() < 2)) {
    return std::unexpected("a User-Agent token must start with at least two literal characters");
  }
  for (const Piece& piece : shape.pieces_) {
    if (piece.kind == PieceKind::literal) {
      shape.min_length_ += piece.literal.size();
    } else if (piece.kind != PieceKind::slash_or_end) {
      shape.min_length_ += 1;
    }
  }
  if (shape.pieces_.front().kind == PieceKind::literal) {
    shape.lead_ = shape.pieces_.front().literal;
    shape.single_literal_ = shape.pieces_.size() == 1;
  }
  return shape;
}

std::optional<std::size_t> Shape::match_pieces(std::string_view s, std::size_t pos) const {
  for (const Piece& piece : pieces_) {
    switch (piece.kind) {
      case PieceKind::literal:
        if (s.size() - pos < piece.literal.size()) return std::nullopt;
        for (char expected : piece.literal) {
          if (fold(s[pos++]) != static_cast<unsigned char>(expected)) return std::nullopt;
        }
        break;
      case PieceKind::digits:
      case PieceKind::hex: {
        auto accept = piece.kind == PieceKind::digits ? is_digit : is_hex;
        std::size_t start = pos;
        while (pos < s.size() && accept(s[pos])) ++pos;
        if (pos == start) return std::nullopt;
        break;
      }
      case PieceKind::version:
        if (pos >= s.size() || !is_digit(s[pos])) return std::nullopt;
        while (pos < s.size() && (is_digit(s[pos]) || s[pos] == '.')) ++pos;
        break;
      case PieceKind::slash_or_end:
        if (pos == s.size()) break;
        if (s[pos] != '/') return std::nullopt;
        ++pos;
        break;
    }
  }
  return pos;
}

bool Shape::matches(std::string_view s) const {
  if (s.size() < min_length_) return false;
  // Callers guarantee s.size() - pos >= min_length_ >= lead_.size().
  auto try_at = [&](std::size_t pos) {
    for (std::size_t k = 0; k < lead_.size(); ++k) {
      if (fold(s[pos + k]) != static_cast<unsigned char>(lead_[k])) return false;
    }
    if (single_literal_) return !anchored_end_ || pos + lead_.size() == s.size();
    auto end = match_pieces(s, pos);
    return end && (!anchored_end_ || *end == s.size());
  };
  if (anchored_start_) return try_at(0);
  const std::size_t last_start = s.size() - min_length_;
  // A leading '/', '-', '.' ... has no case: memchr can jump to the candidates.
  const bool caseless_lead = !lead_.empty() && !(lead_[0] >= 'a' && lead_[0] <= 'z');
  for (std::size_t pos = 0; pos <= last_start; ++pos) {
    if (caseless_lead) {
      pos = s.find(lead_[0], pos);
      if (pos == std::string_view::npos || pos > last_start) return false;
    }
    if (try_at(pos)) return true;
  }
  return false;
}

bool Shape::matches_at(std::string_view s, std::size_t pos) const {
  if (pos > s.size() || s.size() - pos < min_length_) return false;
  if (word_bounded_ && pos > 0 && is_alnum(s[pos - 1])) return false;
  auto end = match_pieces(s, pos);
  if (!end) return false;
  if (anchored_end_ && *end != s.size()) return false;
  if (word_bounded_ && *end < s.size() && pieces_.back().kind == PieceKind::literal &&
      is_alnum(pieces_.back().literal.back()) && is_alnum(s[*end])) {
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Tables

void CatalogData::build_tables() {
  host_names_.clear();
  auto add_host_key = [&](const std::string& name, HostKey key) {
    auto it = std::find_if(host_names_.begin(), host_names_.end(),
                           [&](const HostName& n) { return n.name == name; });
    if (it == host_names_.end()) {
      host_names_.push_back({name, reverse_hash(name), {}});
      it = host_names_.end() - 1;
    }
    it->keys.push_back(key);
  };
  for (std::size_t i = 0; i < signatures.size(); ++i) {
    auto index = static_cast<uint16_t>(i);
    for (const auto& host : signatures[i].hosts) add_host_key(host, {index, false});
    for (const auto& suffix : signatures[i].suffixes) add_host_key(suffix, {index, true});
  }
  host_slots_ = build_slots(host_names_.size(), [&](std::size_t i) { return host_names_[i].hash; });

  ua_bigram_bits_ = {};
  ua_starts_.clear();
  ua_token_first_ = {};
  bool tokens_start_words = true;
  for (std::size_t i = 0; i < ua_atoms.size(); ++i) {
    const std::string& literal = ua_atoms[i].leading_literal();  // >= 2 bytes (Shape::parse)
    UaStart start{};
    start.bigram = static_cast<uint16_t>(static_cast<unsigned char>(literal[0]) << 8 |
                                         static_cast<unsigned char>(literal[1]));
    start.atom = static_cast<uint16_t>(i);
    start.prefix_length =
        static_cast<uint8_t>(std::min<std::size_t>(literal.size(), start.prefix.size()));
    std::copy_n(literal.begin(), start.prefix_length, start.prefix.begin());
    ua_bigram_bits_[start.bigram / 64] |= uint64_t{1} << (start.bigram % 64);
    if (!is_alnum(literal[0])) tokens_start_words = false;
    auto first = static_cast<unsigned char>(literal[0]);  // lower-cased
    ua_token_first_[first] = 1;
    if (first >= 'a' && first <= 'z') ua_token_first_[first - 'a' + 'A'] = 1;
    ua_starts_.push_back(start);
  }
  std::stable_sort(ua_starts_.begin(), ua_starts_.end(),
                   [](const UaStart& a, const UaStart& b) { return a.bigram < b.bigram; });
  for (std::size_t b = 0; b < 256; ++b) {
    ua_start_after_[b] = tokens_start_words && kAlnum[b] ? 0 : 1;
  }

  auto invert = [&](std::vector<uint16_t> Signature::*list, std::size_t atom_count) {
    std::vector<std::vector<uint16_t>> out(atom_count);
    for (std::size_t i = 0; i < signatures.size(); ++i) {
      for (uint16_t atom : signatures[i].*list) out[atom].push_back(static_cast<uint16_t>(i));
    }
    return out;
  };
  ungated_ = {};
  within_family_.assign(families.size(), {});
  for (std::size_t i = 0; i < signatures.size(); ++i) {
    const Signature& sig = signatures[i];
    if (sig.within >= 0) {
      within_family_[static_cast<std::size_t>(sig.within)].set(i);
    } else if (!sig.has_host() && sig.user_agent.empty() && sig.headers.empty() &&
               sig.query.empty()) {
      ungated_.set(i);
    }
  }
  ua_atom_signatures_ = invert(&Signature::user_agent, ua_atoms.size());
  header_atom_signatures_ = invert(&Signature::headers, header_atoms.size());
  query_atom_signatures_ = invert(&Signature::query, query_atoms.size());

  header_names_.clear();
  header_name_filter_ = {};
  for (std::size_t i = 0; i < header_atoms.size(); ++i) {
    const auto& atom = header_atoms[i];
    auto it = std::find_if(header_names_.begin(), header_names_.end(),
                           [&](const HeaderName& n) { return n.name == atom.name; });
    if (it == header_names_.end()) {
      header_names_.push_back({atom.name, folded_hash(atom.name), {}});
      it = header_names_.end() - 1;
    }
    it->atoms.push_back(static_cast<uint16_t>(i));
    filter_add(header_name_filter_, name_key(atom.name));
  }
  header_slots_ =
      build_slots(header_names_.size(), [&](std::size_t i) { return header_names_[i].hash; });

  query_names_.clear();
  query_name_starts_ = {};
  for (std::size_t i = 0; i < query_atoms.size(); ++i) {
    const auto& atom = query_atoms[i];
    filter_add(query_name_starts_, query_start_key(static_cast<unsigned char>(atom.name[0]),
                                                   static_cast<unsigned char>(atom.name[1])));
    auto it = std::find_if(query_names_.begin(), query_names_.end(),
                           [&](const QueryName& n) { return n.name == atom.name; });
    if (it == query_names_.end()) {
      query_names_.push_back({atom.name, {}});
      it = query_names_.end() - 1;
    }
    it->atoms.push_back(static_cast<uint16_t>(i));
  }
}

// ---------------------------------------------------------------------------------------------
// Per request

struct CatalogData::RequestState {
  uint64_t families = 0;
  std::string_view first_label;
  // By signature: its condition of that kind has a hit.
  SmallBits host_hits;
  SmallBits ua_signatures;
  SmallBits header_signatures;
  SmallBits query_signatures;
  // By atom, for the evidence.
  SmallBits ua_hits;
  SmallBits header_hits;
  SmallBits query_hits;
};

void CatalogData::probe_host(std::string_view host, RequestState& state) const {
  if (host.empty() || host_names_.empty()) return;
  const std::size_t mask = host_slots_.size() - 1;
  auto probe = [&](std::string_view key, uint64_t hash, bool whole) {
    for (std::size_t slot = hash & mask; host_slots_[slot] >= 0; slot = (slot + 1) & mask) {
      const HostName& known = host_names_[static_cast<std::size_t>(host_slots_[slot])];
      if (known.hash != hash || known.name != key) continue;
      for (const HostKey& entry : known.keys) {
        if (!whole && !entry.suffix) continue;
        state.host_hits.set(entry.signature);
        state.families |= signatures[entry.signature].family_bit;
      }
      return;
    }
  };
  uint64_t hash = kFnvBasis;
  for (std::size_t i = host.size(); i-- > 0;) {
    if (host[i] == '.') probe(host.substr(i + 1), hash, false);
    hash = (hash ^ static_cast<unsigned char>(host[i])) * kFnvPrime;
  }
  probe(host, hash, true);
}

void CatalogData::scan_user_agent(std::string_view ua, RequestState& state) const {
  if (ua.size() < 2 || ua_starts_.empty()) return;
  const auto* bytes = reinterpret_cast<const unsigned char*>(ua.data());
  const std::size_t size = ua.size();
  const uint64_t* bigrams = ua_bigram_bits_.data();
  // One pass, two table loads per byte: only a byte that can start a token, after a byte a
  // token can follow (tokens match on word boundaries), gets the bigram test, and the bigram
  // bitmap rejects almost all of those with one more load.
  unsigned can_start = 1;  // position 0 is a word start
  for (std::size_t i = 0; i + 1 < size; ++i) {
    const unsigned byte = bytes[i];
    const unsigned candidate = can_start & ua_token_first_[byte];
    can_start = ua_start_after_[byte];
    if (candidate == 0) continue;
    const unsigned key = static_cast<unsigned>(kFold[byte]) << 8 | kFold[bytes[i + 1]];
    if (((bigrams[key >> 6] >> (key & 63)) & 1U) != 0) match_user_agent_at(ua, i, key, state);
  }
}

void CatalogData::match_user_agent_at(std::string_view ua, std::size_t start, unsigned bigram,
                                      RequestState& state) const {
  const auto* bytes = reinterpret_cast<const unsigned char*>(ua.data());
  auto first = std::lower_bound(ua_starts_.begin(), ua_starts_.end(), bigram,
                                [](const UaStart& e, unsigned k) { return e.bigram < k; });
  for (auto it = first; it != ua_starts_.end() && it->bigram == bigram; ++it) {
    if (ua.size() - start < it->prefix_length) continue;
    bool same = true;
    for (std::size_t k = 2; k < it->prefix_length && same; ++k) {
      same = kFold[bytes[start + k]] == it->prefix[k];
    }
    if (!same || state.ua_hits.test(it->atom) || !ua_atoms[it->atom].matches_at(ua, start)) {
      continue;
    }
    state.ua_hits.set(it->atom);
    for (uint16_t signature : ua_atom_signatures_[it->atom]) state.ua_signatures.set(signature);
  }
}

void CatalogData::scan_headers(std::span<const HeaderView> headers, RequestState& state) const {
  if (header_names_.empty()) return;
  const std::size_t mask = header_slots_.size() - 1;
  for (const HeaderView& header : headers) {
    if (header.name.empty() || header.name.size() > kMaxNameLength ||
        !filter_has(header_name_filter_, name_key(header.name))) {
      continue;
    }
    uint64_t hash = folded_hash(header.name);
    for (std::size_t slot = hash & mask; header_slots_[slot] >= 0; slot = (slot + 1) & mask) {
      const HeaderName& known = header_names_[static_cast<std::size_t>(header_slots_[slot])];
      if (known.hash != hash || !iequals(header.name, known.name)) continue;
      std::string_view value = trim(header.value);
      for (uint16_t atom : known.atoms) {
        const HeaderAtom& a = header_atoms[atom];
        if (a.has_value && !iequals(value, a.value)) continue;
        state.header_hits.set(atom);
        for (uint16_t signature : header_atom_signatures_[atom]) {
          state.header_signatures.set(signature);
        }
      }
      break;
    }
  }
}

void CatalogData::scan_query(std::string_view query, RequestState& state) const {
  if (query.empty() || query_names_.empty()) return;
  const std::size_t size = query.size();
  std::size_t start = 0;
  while (start < size) {
    std::size_t end = query.find('&', start);
    if (end == std::string_view::npos) end = size;
    std::string_view param = query.substr(start, end - start);
    start = end + 1;
    // The first two bytes reject almost every parameter. An escape among them could hide a
    // name, so those take the full comparison.
    if (param.size() < 2) continue;
    auto b0 = static_cast<unsigned char>(param[0]);
    auto b1 = static_cast<unsigned char>(param[1]);
    if (b0 != '%' && b1 != '%' && !filter_has(query_name_starts_, query_start_key(b0, b1))) {
      continue;
    }
    auto eq = param.find('=');
    std::string_view name = param.substr(0, eq);
    bool has_value = eq != std::string_view::npos;
    std::string_view value = has_value ? param.substr(eq + 1) : std::string_view();
    for (const QueryName& known : query_names_) {
      if (!decoded_iequals(name, known.name)) continue;
      for (uint16_t atom : known.atoms) {
        const QueryAtom& a = query_atoms[atom];
        if (a.has_value && (!has_value || !decoded_iequals(value, a.value))) continue;
        state.query_hits.set(atom);
        for (uint16_t signature : query_atom_signatures_[atom]) {
          state.query_signatures.set(signature);
        }
      }
    }
  }
}

bool CatalogData::fires(std::size_t index, const RequestFacts& facts,
                        const RequestState& state) const {
  const Signature& s = signatures[index];
  if (s.has_host() && !state.host_hits.test(index)) return false;
  if (s.within >= 0 && ((state.families >> s.within) & 1U) == 0) return false;
  if (!s.methods.empty() &&
      std::find(s.methods.begin(), s.methods.end(), facts.method) == s.methods.end()) {
    return false;
  }
  if (!s.headers.empty() && !state.header_signatures.test(index)) return false;
  if (!s.user_agent.empty() && !state.ua_signatures.test(index)) return false;
  if (!s.query.empty() && !state.query_signatures.test(index)) return false;
  auto any_shape = [](const std::vector<Shape>& shapes, std::string_view subject) {
    return std::any_of(shapes.begin(), shapes.end(),
                       [&](const Shape& shape) { return shape.matches(subject); });
  };
  if (!s.first_label.empty() && !any_shape(s.first_label, state.first_label)) return false;
  if (!s.path.empty() && !any_shape(s.path, facts.path)) return false;
  return true;
}

// One piece of evidence per kind of condition: the first of the signature's alternatives that
// matched, the most specific kinds first.
void CatalogData::add_evidence(const Signature& s, const RequestFacts& facts,
                               const RequestState& state, std::vector<Evidence>& out) const {
  auto add = [&](EvidenceKind kind, std::string_view matched) {
    out.push_back({kind, s.id, matched, s.category});
  };
  for (const Shape& shape : s.path) {
    if (shape.matches(facts.path)) {
      add(EvidenceKind::path, shape.text());
      break;
    }
  }
  for (uint16_t atom : s.query) {
    if (state.query_hits.test(atom)) {
      add(EvidenceKind::query, query_atoms[atom].text);
      break;
    }
  }
  for (uint16_t atom : s.headers) {
    if (state.header_hits.test(atom)) {
      add(EvidenceKind::header, header_atoms[atom].text);
      break;
    }
  }
  for (uint16_t atom : s.user_agent) {
    if (state.ua_hits.test(atom)) {
      add(EvidenceKind::user_agent, ua_atoms[atom].text());
      break;
    }
  }
  for (const Shape& shape : s.first_label) {
    if (shape.matches(state.first_label)) {
      add(EvidenceKind::host, shape.text());
      break;
    }
  }
  if (s.has_host()) {
    auto exact = std::find(s.hosts.begin(), s.hosts.end(), facts.host);
    if (exact != s.hosts.end()) {
      add(EvidenceKind::host, *exact);
    } else {
      for (const auto& suffix : s.suffixes) {
        if (is_at_or_below(facts.host, suffix)) {
          add(EvidenceKind::host, suffix);
          break;
        }
      }
    }
  }
}

Classification CatalogData::classify(const RequestFacts& facts) const {
  Classification result;
  RequestState state;
  probe_host(facts.host, state);
  state.first_label = facts.host.substr(0, facts.host.find('.'));
  scan_user_agent(facts.user_agent, state);
  scan_headers(facts.headers, state);
  scan_query(facts.query, state);

  SmallBits candidates = ungated_;
  candidates |= state.host_hits;
  candidates |= state.ua_signatures;
  candidates |= state.header_signatures;
  candidates |= state.query_signatures;
  for (uint64_t f = state.families; f != 0; f &= f - 1) {
    candidates |= within_family_[static_cast<std::size_t>(__builtin_ctzll(f))];
  }

  SmallBits fired;
  std::size_t fired_count = 0;
  std::size_t decider = signatures.size();
  candidates.for_each([&](std::size_t i) {
    if (!fires(i, facts, state)) return;
    fired.set(i);
    ++fired_count;
    if (decider == signatures.size() && !signatures[i].evidence_only) decider = i;
  });
  if (fired_count == 0) return result;

  result.evidence.reserve(std::min<std::size_t>(fired_count * 2, 16));
  if (decider < signatures.size()) {
    result.category = signatures[decider].category;
    result.decided_by = signatures[decider].id;
    add_evidence(signatures[decider], facts, state, result.evidence);
  }
  fired.for_each([&](std::size_t i) {
    if (i != decider) add_evidence(signatures[i], facts, state, result.evidence);
  });
  return result;
}

// ---------------------------------------------------------------------------------------------
// Catalog's classification entry points

Classification Catalog::classify(const RequestFacts& facts) const {
  return data_->classify(facts);
}

Classification Catalog::classify_host(std::string_view normalized_host) const {
  RequestFacts facts;
  facts.host = normalized_host;
  return data_->classify(facts);
}

}  // namespace tokgate::policy
