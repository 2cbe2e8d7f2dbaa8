// Loading the catalog: TOML sources (embedded or from an override directory) are validated,
// every error collected with its NAME:LINE:COL, and compiled into CatalogData's tables.
// The format is described in docs/catalog.md and at the top of each policy/catalog/*.toml.
#include "policy/catalog.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "policy/catalog_data.hpp"
#include "policy/host_pattern.hpp"
#include "policy/toml_reader.hpp"

namespace tokgate::embedded {
std::string_view catalog_tiktok_toml();
std::string_view catalog_bytedance_other_toml();
std::string_view catalog_wechat_toml();
}  // namespace tokgate::embedded

namespace tokgate::policy {
namespace {

struct EmbeddedFile {
  std::string_view name;
  std::string_view (*text)();
};
// Load order: within one stage, signatures keep this file order, then their order in the file.
constexpr std::array<EmbeddedFile, 3> kEmbeddedFiles{{
    {"policy/catalog/tiktok.toml", &embedded::catalog_tiktok_toml},
    {"policy/catalog/bytedance_other.toml", &embedded::catalog_bytedance_other_toml},
    {"policy/catalog/wechat.toml", &embedded::catalog_wechat_toml},
}};

constexpr std::size_t kMaxCatalogFileBytes = 4 * 1024 * 1024;
constexpr int64_t kMaxStage = 999;

// Unlike policy::quote_verbatim(), echoes the text whole and unescaped: catalog messages have
// always shown host names and atoms in full.
std::string quote_verbatim(std::string_view s) {
  return "'" + std::string(s) + "'";
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

bool is_kebab(std::string_view s) {
  if (s.empty() || s.size() > 64 || s.front() == '-' || s.back() == '-') return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok || (c == '-' && s[i - 1] == '-')) return false;
  }
  return true;
}

bool is_tchar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_printable(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u >= 0x20 && u < 0x7f;
  });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_at_or_below(std::string_view host, std::string_view name) {
  if (host == name) return true;
  return host.size() > name.size() && host.ends_with(name) &&
         host[host.size() - name.size() - 1] == '.';
}

bool is_ip_literal(std::string_view name) {
  if (name.find(':') != std::string_view::npos) return true;
  auto last = name.substr(name.rfind('.') == std::string_view::npos ? 0 : name.rfind('.') + 1);
  return !last.empty() &&
         std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; });
}

uint64_t fnv1a(uint64_t h, std::string_view bytes) {
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

struct Located {
  std::string text;
  std::string origin;  // NAME:LINE:COL
};

// A signature while sources are still being read: names not yet resolved, positions kept.
struct Pending {
  Signature signature;
  std::size_t source_index = 0;
  toml::source_region where;
  std::string family;
  std::string within;
  toml::source_region within_where;
  std::vector<toml::source_region> host_where;    // parallel to signature.hosts
  std::vector<toml::source_region> suffix_where;  // parallel to signature.suffixes
};

class Compiler {
 public:
  void add(const CatalogSource& source) {
    readers_.emplace_back(source.name);
    std::size_t index = readers_.size() - 1;
    toml::table root;
    try {
      root = toml::parse(source.text, source.name);
    } catch (const toml::parse_error& e) {
      // Loading is not the data plane: toml++ reports syntax errors by exception.
      // It may quote the hostile bytes (control characters, DEL): escaped, on one line.
      error(index, e.source(), escape(e.description(), false));
      return;
    }
    for (auto&& [key, node] : root) {
      if (key == "catalog") {
        read_catalog_table(index, node);
      } else if (key == "shared") {
        read_shared_table(index, node);
      } else if (key == "signature") {
        const auto* tables = node.as_array();
        if (tables == nullptr) {
          error(index, node.source(), "'signature' must be an array of tables ([[signature]])");
          continue;
        }
        for (auto& element : *tables) read_signature(index, element);
      } else {
        error(index, key.source(),
              "unknown key " + quote_verbatim(key.str()) +
                  " (expected catalog, shared or [[signature]])");
      }
    }
  }

  std::expected<std::unique_ptr<CatalogData>, std::string> finish(
      std::span<const CatalogSource> sources) {
    auto data = std::make_unique<CatalogData>();
    resolve_families(*data);
    check_shared_and_duplicates();
    if (pending_.size() > kMaxSignatures) {
      const Pending& first_extra = pending_[kMaxSignatures];
      error(first_extra.source_index, first_extra.where,
            "too many signatures (" + std::to_string(pending_.size()) + ", at most " +
                std::to_string(kMaxSignatures) + ")");
    }
    if (std::any_of(readers_.begin(), readers_.end(),
                    [](const TomlReader& reader) { return reader.failed(); })) {
      return std::unexpected(report());
    }

    std::stable_sort(pending_.begin(), pending_.end(), [](const Pending& a, const Pending& b) {
      return std::tie(a.signature.stage, a.signature.load_order) <
             std::tie(b.signature.stage, b.signature.load_order);
    });
    for (auto& p : pending_) data->signatures.push_back(std::move(p.signature));
    data->ua_atoms = std::move(ua_atoms_);
    data->header_atoms = std::move(header_atoms_);
    data->query_atoms = std::move(query_atoms_);

    uint64_t h = 0xcbf29ce484222325ULL;
    for (const auto& source : sources) {
      h = fnv1a(h, source.name);
      h = fnv1a(h, std::string_view("\0", 1));
      h = fnv1a(h, source.text);
      h = fnv1a(h, std::string_view("\0", 1));
    }
    char digest[17];
    std::snprintf(digest, sizeof digest, "%016llx", static_cast<unsigned long long>(h));
    data->version = std::string(digest, 12);
    data->build_tables();
    return data;
  }

 private:
  void error(std::size_t source, const toml::source_region& where, std::string text) {
    readers_[source].error(where, std::move(text));
  }

  std::string origin(std::size_t source, const toml::source_region& where) const {
    return readers_[source].origin(where);
  }

  // Sources in load order, each one's errors by position.
  std::string report() const {
    std::string out;
    for (const auto& reader : readers_) {
      if (!reader.failed()) continue;
      if (!out.empty()) out += '\n';
      out += reader.report();
    }
    return out;
  }

  // Typed accessors: nullopt after reporting the error.
  std::optional<std::string_view> string(std::size_t src, const toml::node& node,
                                         std::string_view what) {
    const auto* value = node.as_string();
    if (value == nullptr) {
      error(src, node.source(),
            std::string(what) + ": expected a string, got " + type_name_with_article(node));
      return std::nullopt;
    }
    std::string_view text = value->get();
    if (!is_printable(text)) {
      error(src, node.source(),
            std::string(what) + ": only printable ASCII is allowed (no control characters)");
      return std::nullopt;
    }
    return text;
  }

  // Calls each(text, node) for every string of a non-empty array of strings.
  template <typename Each>
  void strings(std::size_t src, const toml::node& node, std::string_view what, Each&& each) {
    const auto* array = node.as_array();
    if (array == nullptr) {
      error(src, node.source(),
            std::string(what) + ": expected an array of strings, got " +
                type_name_with_article(node));
      return;
    }
    if (array->empty()) {
      error(src, node.source(), std::string(what) + ": empty list (leave the key out instead)");
      return;
    }
    std::vector<std::string> seen;
    for (auto& element : *array) {
      auto text = string(src, element, what);
      if (!text) continue;
      if (text->empty()) {
        error(src, element.source(), std::string(what) + ": empty string");
        continue;
      }
      std::string key = lower(*text);
      if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
        error(src, element.source(), std::string(what) + ": duplicate " + quote_verbatim(*text));
        continue;
      }
      seen.push_back(std::move(key));
      each(*text, element);
    }
  }

  void read_catalog_table(std::size_t src, const toml::node& node) {
    const auto* table = node.as_table();
    if (table == nullptr) {
      error(src, node.source(), "'catalog' must be a table");
      return;
    }
    for (auto&& [key, value] : *table) {
      if (key == "description") {
        string(src, value, "catalog.description");
      } else {
        error(src, key.source(), "unknown key " + quote_verbatim(key.str()) + " in [catalog]");
      }
    }
  }

  void read_shared_table(std::size_t src, const toml::node& node) {
    const auto* table = node.as_table();
    if (table == nullptr) {
      error(src, node.source(), "'shared' must be a table");
      return;
    }
    bool has_source = false;
    for (auto&& [key, value] : *table) {
      if (key == "suffixes") {
        strings(src, value, "shared.suffixes", [&](std::string_view text, const toml::node& at) {
          auto name = normalize_host(text);
          if (!name) {
            error(src, at.source(),
                  "shared.suffixes: " + quote_verbatim(text) + " is not a host name");
            return;
          }
          shared_.push_back({*name, origin(src, at.source())});
        });
      } else if (key == "source") {
        has_source = string(src, value, "shared.source").has_value();
      } else {
        error(src, key.source(), "unknown key " + quote_verbatim(key.str()) + " in [shared]");
      }
    }
    if (!has_source) error(src, node.source(), "[shared]: missing 'source'");
  }

  // Reported once, where the first atom over the limit is written.
  void check_atom_limit(std::size_t src, const toml::node& at, uint16_t index, const char* what) {
    if (index == kMaxAtomsPerKind) {
      error(src, at.source(),
            std::string("more than ") + std::to_string(kMaxAtomsPerKind) + " distinct " + what);
    }
  }

  uint16_t intern_ua(Shape shape) {
    for (std::size_t i = 0; i < ua_atoms_.size(); ++i) {
      if (ua_atoms_[i].text() == shape.text()) return static_cast<uint16_t>(i);
    }
    ua_atoms_.push_back(std::move(shape));
    return static_cast<uint16_t>(std::min(ua_atoms_.size() - 1, kMaxAtomsPerKind));
  }

  template <typename Atom>
  static uint16_t intern(std::vector<Atom>& atoms, Atom atom) {
    for (std::size_t i = 0; i < atoms.size(); ++i) {
      if (atoms[i].name == atom.name && atoms[i].has_value == atom.has_value &&
          atoms[i].value == atom.value) {
        return static_cast<uint16_t>(i);
      }
    }
    atoms.push_back(std::move(atom));
    return static_cast<uint16_t>(std::min(atoms.size() - 1, kMaxAtomsPerKind));
  }

  void read_host_list(std::size_t src, const toml::node& node, Pending& p, bool suffix) {
    std::string_view what = suffix ? "suffixes" : "hosts";
    strings(src, node, what, [&](std::string_view text, const toml::node& at) {
      if (text.find('*') != std::string_view::npos) {
        error(src, at.source(),
              std::string(what) + ": " + quote_verbatim(text) +
                  ": no wildcards; a suffix already matches every name below it");
        return;
      }
      auto name = normalize_host(text);
      if (!name) {
        error(src, at.source(),
              std::string(what) + ": " + quote_verbatim(text) + " is not a host name");
        return;
      }
      if (suffix && (is_ip_literal(*name) || name->find('.') == std::string::npos)) {
        error(src, at.source(),
              "suffixes: " + quote_verbatim(text) +
                  ": a suffix needs at least two labels and no address");
        return;
      }
      if (suffix) {
        p.signature.suffixes.push_back(*name);
        p.suffix_where.push_back(at.source());
      } else {
        p.signature.hosts.push_back(*name);
        p.host_where.push_back(at.source());
      }
    });
  }

  void read_shapes(std::size_t src, const toml::node& node, std::string_view what, Shape::Use use,
                   std::vector<Shape>& out) {
    strings(src, node, what, [&](std::string_view text, const toml::node& at) {
      if (use == Shape::Use::first_label && text.find('.') != std::string_view::npos) {
        error(src, at.source(), "first_label: " + quote_verbatim(text) + ": a label has no dots");
        return;
      }
      if (use == Shape::Use::path && text.front() != '/' && text.front() != '*') {
        error(src, at.source(), "path: " + quote_verbatim(text) + ": must start with '/' or '*'");
        return;
      }
      auto shape = Shape::parse(text, use);
      if (!shape) {
        error(src, at.source(),
              std::string(what) + ": " + quote_verbatim(text) + ": " + shape.error());
        return;
      }
      out.push_back(std::move(*shape));
    });
  }

  void read_signature(std::size_t src, const toml::node& node) {
    const auto* table = node.as_table();
    if (table == nullptr) {
      error(src, node.source(), "each [[signature]] must be a table");
      return;
    }
    Pending p;
    p.source_index = src;
    p.where = node.source();
    Signature& s = p.signature;
    s.origin = origin(src, node.source());
    s.load_order = load_order_++;
    bool has_id = false, has_category = false, has_stage = false, has_source = false;

    for (auto&& [key, value] : *table) {
      std::string_view k = key.str();
      if (k == "id") {
        if (auto text = string(src, value, "id")) {
          has_id = true;
          if (!is_kebab(*text)) {
            error(src, value.source(),
                  "id: " + quote_verbatim(*text) + " is not kebab-case (a-z, 0-9, -)");
          } else if (auto seen = ids_.find(std::string(*text)); seen != ids_.end()) {
            error(src, value.source(),
                  "id: duplicate " + quote_verbatim(*text) + " (first defined at " + seen->second +
                      ")");
          } else {
            ids_.emplace(std::string(*text), origin(src, value.source()));
          }
          s.id = std::string(*text);
        }
      } else if (k == "category") {
        if (auto text = string(src, value, "category")) {
          has_category = true;
          if (auto category = parse_category(*text)) {
            s.category = *category;
          } else {
            error(src, value.source(),
                  "category: unknown " + quote_verbatim(*text) +
                      " (app-api, in-app-browser, media-cdn, web, analytics-sdk, "
                      "app-distribution, auth, live, wechat, bytedance-other or none)");
          }
        }
      } else if (k == "stage") {
        has_stage = true;
        const auto* integer = value.as_integer();
        if (integer == nullptr || integer->get() < 0 || integer->get() > kMaxStage) {
          error(src, value.source(), "stage: expected an integer 0..999");
        } else {
          s.stage = static_cast<int>(integer->get());
        }
      } else if (k == "source") {
        if (auto text = string(src, value, "source")) {
          has_source = !trim(*text).empty();
          if (!has_source) error(src, value.source(), "source: empty");
          s.source = std::string(*text);
        } else {
          has_source = true;  // reported already
        }
      } else if (k == "description") {
        if (auto text = string(src, value, "description")) s.description = std::string(*text);
      } else if (k == "evidence_only") {
        if (const auto* flag = value.as_boolean()) {
          s.evidence_only = flag->get();
        } else {
          error(src, value.source(), "evidence_only: expected true or false");
        }
      } else if (k == "family" || k == "within") {
        if (auto text = string(src, value, k)) {
          if (!is_kebab(*text)) {
            error(src, value.source(),
                  std::string(k) + ": " + quote_verbatim(*text) + " is not kebab-case");
          } else if (k == "family") {
            p.family = std::string(*text);
          } else {
            p.within = std::string(*text);
            p.within_where = value.source();
          }
        }
      } else if (k == "hosts" || k == "suffixes") {
        read_host_list(src, value, p, k == "suffixes");
      } else if (k == "first_label") {
        read_shapes(src, value, k, Shape::Use::first_label, s.first_label);
      } else if (k == "path") {
        read_shapes(src, value, k, Shape::Use::path, s.path);
      } else if (k == "user_agent") {
        strings(src, value, k, [&](std::string_view text, const toml::node& at) {
          if (auto shape = Shape::parse(text, Shape::Use::user_agent)) {
            s.user_agent.push_back(intern_ua(std::move(*shape)));
            check_atom_limit(src, at, s.user_agent.back(), "User-Agent tokens");
          } else {
            error(src, at.source(), "user_agent: " + quote_verbatim(text) + ": " + shape.error());
          }
        });
      } else if (k == "headers") {
        strings(src, value, k, [&](std::string_view text, const toml::node& at) {
          if (auto atom = parse_header_atom(text)) {
            s.headers.push_back(intern(header_atoms_, std::move(*atom)));
            check_atom_limit(src, at, s.headers.back(), "header atoms");
          } else {
            error(src, at.source(), "headers: " + quote_verbatim(text) + ": " + atom.error());
          }
        });
      } else if (k == "query") {
        strings(src, value, k, [&](std::string_view text, const toml::node& at) {
          if (auto atom = parse_query_atom(text)) {
            s.query.push_back(intern(query_atoms_, std::move(*atom)));
            check_atom_limit(src, at, s.query.back(), "query atoms");
          } else {
            error(src, at.source(), "query: " + quote_verbatim(text) + ": " + atom.error());
          }
        });
      } else if (k == "methods") {
        strings(src, value, k, [&](std::string_view text, const toml::node& at) {
          bool ok = text.size() <= 20 && std::all_of(text.begin(), text.end(),
                                                     [](char c) { return c >= 'A' && c <= 'Z'; });
          if (!ok) {
            error(src, at.source(),
                  "methods: " + quote_verbatim(text) + " is not an upper-case method");
          } else {
            s.methods.emplace_back(text);
          }
        });
      } else {
        error(src, key.source(),
              "unknown key " + quote_verbatim(k) +
                  " in [[signature]] (id, category, stage, source, description, evidence_only, "
                  "family, within, hosts, suffixes, first_label, path, query, user_agent, "
                  "headers, methods)");
      }
    }

    for (auto [present, name] : {std::pair{has_id, "id"}, std::pair{has_category, "category"},
                                 std::pair{has_stage, "stage"}, std::pair{has_source, "source"}}) {
      if (!present) error(src, node.source(), std::string("[[signature]]: missing '") + name + "'");
    }
    bool has_evidence = s.has_host() || !s.first_label.empty() || !s.path.empty() ||
                        !s.query.empty() || !s.user_agent.empty() || !s.headers.empty();
    if (!has_evidence) {
      error(src, node.source(),
            "[[signature]] " + quote_verbatim(s.id) +
                ": no evidence (hosts, suffixes, first_label, path, query, user_agent or headers)");
    }
    if (!p.family.empty() && !s.has_host()) {
      error(src, node.source(),
            "[[signature]] " + quote_verbatim(s.id) + ": 'family' needs hosts or suffixes");
    }
    pending_.push_back(std::move(p));
  }

  static std::expected<HeaderAtom, std::string> parse_header_atom(std::string_view text) {
    HeaderAtom atom;
    atom.text = std::string(text);
    auto colon = text.find(':');
    std::string_view name = trim(text.substr(0, colon));
    if (name.empty() || !std::all_of(name.begin(), name.end(), is_tchar)) {
      return std::unexpected("expected \"Name\" or \"Name: value\" with a valid header name");
    }
    if (name.size() > kMaxNameLength) return std::unexpected("header name longer than 63 bytes");
    atom.name = lower(name);
    if (colon != std::string_view::npos) {
      std::string_view value = trim(text.substr(colon + 1));
      if (value.empty()) return std::unexpected("empty value after ':'");
      atom.value = lower(value);
      atom.has_value = true;
    }
    return atom;
  }

  static std::expected<QueryAtom, std::string> parse_query_atom(std::string_view text) {
    QueryAtom atom;
    atom.text = std::string(text);
    if (text.find_first_of("& #") != std::string_view::npos) {
      return std::unexpected("one parameter: no '&', '#' or spaces");
    }
    auto eq = text.find('=');
    std::string_view name = text.substr(0, eq);
    if (name.empty()) return std::unexpected("expected \"name\" or \"name=value\"");
    if (name.size() < 2) return std::unexpected("a parameter name needs at least two bytes");
    if (name.size() > kMaxNameLength) return std::unexpected("name longer than 63 bytes");
    if (name.find('%') != std::string_view::npos) {
      return std::unexpected("write the name decoded, without '%'");
    }
    atom.name = lower(name);
    if (eq != std::string_view::npos) {
      std::string_view value = text.substr(eq + 1);
      if (value.empty() || value.find('=') != std::string_view::npos) {
        return std::unexpected("expected one non-empty value after '='");
      }
      if (value.find('%') != std::string_view::npos) {
        return std::unexpected("write the value decoded, without '%'");
      }
      atom.value = lower(value);
      atom.has_value = true;
    }
    return atom;
  }

  void resolve_families(CatalogData& data) {
    for (auto& p : pending_) {
      if (p.family.empty()) continue;
      auto it = std::find(data.families.begin(), data.families.end(), p.family);
      if (it == data.families.end()) {
        if (data.families.size() == kMaxFamilies) {
          error(p.source_index, p.where, "too many families (at most 64)");
          continue;
        }
        data.families.push_back(p.family);
        it = data.families.end() - 1;
      }
      p.signature.family_bit = uint64_t{1} << (it - data.families.begin());
    }
    for (auto& p : pending_) {
      if (p.within.empty()) continue;
      auto it = std::find(data.families.begin(), data.families.end(), p.within);
      if (it == data.families.end()) {
        error(p.source_index, p.within_where,
              "within: no signature declares family " + quote_verbatim(p.within));
        continue;
      }
      p.signature.within = static_cast<int>(it - data.families.begin());
    }
  }

  // Shared infrastructure (CDNs, app stores, Tencent's estate) may only appear together with a
  // narrowing condition; and two host-only signatures must not list the same name, since the
  // later one could never decide.
  void check_shared_and_duplicates() {
    std::map<std::pair<std::string, bool>, std::string> host_only_names;
    for (auto& p : pending_) {
      const Signature& s = p.signature;
      bool narrowed = !s.first_label.empty() || !s.path.empty() || !s.query.empty() ||
                      !s.user_agent.empty() || !s.headers.empty() || !s.methods.empty();
      auto check = [&](const std::string& name, const toml::source_region& where, bool suffix) {
        if (!narrowed) {
          for (const auto& shared : shared_) {
            if (is_at_or_below(shared.text, name)) {
              error(p.source_index, where,
                    quote_verbatim(name) + " is shared infrastructure (" +
                        quote_verbatim(shared.text) + ", declared at " + shared.origin +
                        "): list exact names below it, or add a first_label/path/query/"
                        "user_agent/headers condition");
              return;
            }
          }
        }
        if (!s.host_only()) return;
        auto [it, inserted] =
            host_only_names.emplace(std::pair{name, suffix}, origin(p.source_index, where));
        if (!inserted) {
          error(p.source_index, where,
                quote_verbatim(name) + " is already listed at " + it->second +
                    " by another host-only signature");
        }
      };
      for (std::size_t i = 0; i < s.hosts.size(); ++i) check(s.hosts[i], p.host_where[i], false);
      for (std::size_t i = 0; i < s.suffixes.size(); ++i) {
        check(s.suffixes[i], p.suffix_where[i], true);
      }
    }
  }

  std::vector<TomlReader> readers_;  // one per source, in load order
  std::vector<Pending> pending_;
  std::map<std::string, std::string> ids_;  // id -> origin
  std::vector<Located> shared_;
  std::vector<Shape> ua_atoms_;
  std::vector<HeaderAtom> header_atoms_;
  std::vector<QueryAtom> query_atoms_;
  std::size_t load_order_ = 0;
};

std::expected<std::string, std::string> read_file(const std::filesystem::path& path) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) return std::unexpected(path.string() + ": " + ec.message());
  if (size > kMaxCatalogFileBytes) {
    return std::unexpected(path.string() + ": larger than 4 MiB");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::unexpected(path.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return std::unexpected(path.string() + ": read error");
  return std::move(text).str();
}

}  // namespace

Catalog::Catalog(std::unique_ptr<CatalogData> data) : data_(std::move(data)) {}
Catalog::~Catalog() = default;

std::expected<std::shared_ptr<const Catalog>, std::string> Catalog::compile(
    std::span<const CatalogSource> sources) {
  Compiler compiler;
  for (const auto& source : sources) compiler.add(source);
  auto data = compiler.finish(sources);
  if (!data) return std::unexpected(data.error());
  return std::shared_ptr<const Catalog>(new Catalog(std::move(*data)));
}

std::vector<CatalogSource> Catalog::embedded_sources() {
  std::vector<CatalogSource> sources;
  for (const auto& file : kEmbeddedFiles) {
    sources.push_back({std::string(file.name), std::string(file.text())});
  }
  return sources;
}

std::expected<std::vector<CatalogSource>, std::string> Catalog::sources_with_overrides(
    const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return std::unexpected("catalog directory " + dir.string() + ": not a directory");
  }
  std::vector<std::filesystem::path> files;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto& path = it->path();
    auto name = path.filename().string();
    if (path.extension() != ".toml" || name.starts_with('.')) continue;
    std::error_code type_ec;
    if (!std::filesystem::is_regular_file(path, type_ec)) continue;
    files.push_back(path);
  }
  if (ec) return std::unexpected("catalog directory " + dir.string() + ": " + ec.message());
  std::sort(files.begin(), files.end(),
            [](const auto& a, const auto& b) { return a.filename() < b.filename(); });

  auto sources = embedded_sources();
  std::string errors;
  for (const auto& path : files) {
    auto text = read_file(path);
    if (!text) {
      errors += (errors.empty() ? "" : "\n") + text.error();
      continue;
    }
    auto same_name = std::find_if(sources.begin(), sources.end(), [&](const CatalogSource& s) {
      return std::filesystem::path(s.name).filename() == path.filename();
    });
    if (same_name != sources.end()) {
      *same_name = {path.string(), std::move(*text)};
    } else {
      sources.push_back({path.string(), std::move(*text)});
    }
  }
  if (!errors.empty()) return std::unexpected(errors);
  return sources;
}

const std::string& Catalog::version() const {
  return data_->version;
}

std::size_t Catalog::entry_count() const {
  return data_->signatures.size();
}

std::vector<Catalog::HostEntry> Catalog::host_entries() const {
  std::vector<HostEntry> entries;
  for (const Signature& s : data_->signatures) {
    if (!s.host_only() || s.evidence_only || s.category == Category::none) continue;
    for (const auto& host : s.hosts) entries.push_back({host, false, s.category, s.id});
    for (const auto& suffix : s.suffixes) entries.push_back({suffix, true, s.category, s.id});
  }
  return entries;
}

}  // namespace tokgate::policy
