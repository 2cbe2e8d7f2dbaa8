#include "policy/policy.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>

#include "policy/host_pattern.hpp"
#include "policy/net_types.hpp"
#include "policy/toml_reader.hpp"

namespace tokgate::embedded {
std::string_view profile_gateway_toml();  // generated from policy/profiles/gateway.toml
std::string_view profile_observe_toml();  // generated from policy/profiles/observe.toml
}  // namespace tokgate::embedded

namespace tokgate::policy {
namespace {

using namespace std::literals;

// The policy file's vocabulary, in one place (docs/policy.md describes each).
constexpr auto kSectionPolicy = "policy"sv;
constexpr auto kSectionIntercept = "intercept"sv;
constexpr auto kSectionClientGroups = "client_groups"sv;
constexpr auto kSectionRules = "rules"sv;

constexpr auto kKeyName = "name"sv;
constexpr auto kKeyOrganisation = "organisation"sv;
constexpr auto kKeyDefaultAction = "default_action"sv;
constexpr auto kKeyBlockMessage = "block_message"sv;
constexpr auto kKeyOnPinned = "on_pinned"sv;
constexpr auto kKeyPinnedMemory = "pinned_memory"sv;
constexpr auto kKeyPinnedTableSize = "pinned_table_size"sv;
constexpr auto kKeyMode = "mode"sv;
constexpr auto kKeyExempt = "exempt"sv;
constexpr auto kKeyAction = "action"sv;
constexpr auto kKeyMessage = "message"sv;
constexpr auto kKeyPrivacy = "privacy"sv;
constexpr auto kKeyMatch = "match"sv;
constexpr auto kKeyCategory = "category"sv;
constexpr auto kKeyHost = "host"sv;
constexpr auto kKeyPath = "path"sv;
constexpr auto kKeyMethod = "method"sv;
constexpr auto kKeyUserAgent = "user_agent"sv;
constexpr auto kKeyHeader = "header"sv;
constexpr auto kKeyClient = "client"sv;
constexpr auto kKeyEvidence = "evidence"sv;

constexpr auto kModeTargets = "targets"sv;
constexpr auto kModeAll = "all"sv;
constexpr auto kPinnedRefuse = "refuse"sv;
constexpr auto kPinnedSplice = "splice"sv;

constexpr auto kDefaultBlockMessage = "Access to this service is not permitted on this network."sv;

// Bounds: a policy is a few KiB written by an operator, but it is still input.
constexpr std::size_t kMaxPolicyBytes = 4 << 20;
constexpr std::size_t kMaxRules = 10'000;
constexpr std::size_t kMaxNameLength = 64;
constexpr std::size_t kMaxOrganisationLength = 200;
constexpr std::size_t kMaxMessageLength = 2'000;
constexpr std::size_t kMaxPatternLength = 1'024;
constexpr std::size_t kMaxTokenLength = 256;
constexpr int64_t kMaxPinnedTableSize = 10'000'000;
constexpr std::chrono::seconds kMinPinnedMemory{1};
constexpr std::chrono::seconds kMaxPinnedMemory{7 * 24 * 3600};

constexpr std::array<std::string_view, 2> kProfileNames = {"gateway", "observe"};

// ---- small text helpers

char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}
char upper(char c) {
  return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c;
}

std::string lowered(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), lower);
  return out;
}

bool iequals(std::string_view a, std::string_view lowered_b) {
  if (a.size() != lowered_b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lowered_b[i]) return false;
  }
  return true;
}

// Case-insensitive substring search; `needle` is already lower case.
bool icontains(std::string_view haystack, std::string_view needle) {
  if (needle.size() > haystack.size()) return false;
  const std::size_t last = haystack.size() - needle.size();
  for (std::size_t i = 0; i <= last; ++i) {
    if (lower(haystack[i]) != needle[0]) continue;
    std::size_t j = 1;
    while (j < needle.size() && lower(haystack[i + j]) == needle[j]) ++j;
    if (j == needle.size()) return true;
  }
  return false;
}

std::string_view trim_ows(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// RFC 9110 token characters (method and header names).
bool is_tchar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}
bool is_token(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), is_tchar);
}

// Rule, group and evidence names: what log lines, metrics labels and block pages can carry as is.
bool is_identifier(std::string_view text) {
  return !text.empty() && text.size() <= kMaxNameLength &&
         std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.';
         });
}

// "<integer><unit>" with unit s, m, h or d, e.g. "10m". No sign, fraction or spaces.
std::expected<std::chrono::seconds, std::string> parse_duration(std::string_view text) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) return std::unexpected("expected an integer followed by s, m, h or d"s);
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + digits, value);
  if (ec != std::errc{} || value > 1'000'000'000) return std::unexpected("number too large"s);
  auto unit = text.substr(digits);
  uint64_t factor = 0;
  if (unit == "s") {
    factor = 1;
  } else if (unit == "m") {
    factor = 60;
  } else if (unit == "h") {
    factor = 3600;
  } else if (unit == "d") {
    factor = 86400;
  } else if (unit.empty()) {
    return std::unexpected("missing unit (s, m, h or d)"s);
  } else {
    return std::unexpected("unknown unit " + quote(unit) + " (use s, m, h or d)");
  }
  return std::chrono::seconds(static_cast<int64_t>(value * factor));
}

std::vector<std::string_view> category_names() {
  std::vector<std::string_view> names;
  for (std::size_t i = 0; i < kCategoryCount; ++i) {
    names.push_back(to_string(static_cast<Category>(i)));
  }
  return names;
}

uint32_t category_bit(Category category) {
  auto index = static_cast<unsigned>(category);
  return index < kCategoryCount ? 1u << index : 0u;
}

// ---- glob: '*' any run of characters (including '/'), '?' exactly one character.

// Compiled into the literal pieces between the stars, so matching is a prefix test, a suffix
// test and one forward search per middle piece (the leftmost match of each piece is always
// the right one): O(subject length x longest piece), no backtracking, no allocation.
class Glob {
 public:
  static std::expected<Glob, std::string> compile(std::string_view pattern, bool fold_case) {
    if (pattern.empty()) return std::unexpected("empty pattern"s);
    if (pattern.size() > kMaxPatternLength) {
      return std::unexpected("pattern longer than " + std::to_string(kMaxPatternLength) +
                             " characters");
    }
    if (has_control_char(pattern)) return std::unexpected("control character in pattern"s);
    Glob glob;
    glob.fold_case_ = fold_case;
    std::string normal = fold_case ? lowered(pattern) : std::string(pattern);
    std::size_t start = 0;
    while (true) {
      auto star = normal.find('*', start);
      glob.pieces_.push_back(normal.substr(start, star - start));
      if (star == std::string::npos) break;
      start = star + 1;
    }
    return glob;
  }

  bool matches(std::string_view subject) const {
    const std::string& prefix = pieces_.front();
    if (pieces_.size() == 1) return subject.size() == prefix.size() && equal_at(subject, 0, prefix);
    const std::string& suffix = pieces_.back();
    if (subject.size() < prefix.size() + suffix.size()) return false;
    if (!equal_at(subject, 0, prefix)) return false;
    const std::size_t end = subject.size() - suffix.size();
    if (!equal_at(subject, end, suffix)) return false;
    std::size_t position = prefix.size();
    for (std::size_t i = 1; i + 1 < pieces_.size(); ++i) {
      const std::string& piece = pieces_[i];
      if (piece.empty()) continue;
      bool found = false;
      for (; position + piece.size() <= end; ++position) {
        if (equal_at(subject, position, piece)) {
          found = true;
          break;
        }
      }
      if (!found) return false;
      position += piece.size();
    }
    return true;
  }

 private:
  // subject[at, at + piece.size()) against a piece; the caller checked the bounds.
  bool equal_at(std::string_view subject, std::size_t at, const std::string& piece) const {
    for (std::size_t i = 0; i < piece.size(); ++i) {
      char c = fold_case_ ? lower(subject[at + i]) : subject[at + i];
      if (piece[i] != '?' && piece[i] != c) return false;
    }
    return true;
  }

  std::vector<std::string> pieces_;  // split at '*': prefix, middle pieces..., suffix
  bool fold_case_ = false;
};

struct HeaderCondition {
  std::string name;           // lower case
  std::optional<Glob> value;  // nullopt: presence is enough
};

enum class InterceptMode : uint8_t { targets, all };

struct Rule {
  std::string name;
  Action action = Action::allow;
  std::string message;        // the rule's, or the policy's block message for block and refuse
  bool full_capture = false;  // privacy = "full" on a log or capture rule
  uint32_t line = 0;

  // Conditions; an empty one is absent. Within a list any element may match; all present
  // conditions must hold.
  uint32_t categories = 0;  // bit per Category
  HostPatternSet hosts;
  std::vector<Cidr> clients;
  std::vector<Glob> paths;
  std::vector<std::string> methods;      // upper case
  std::vector<std::string> user_agents;  // lower case
  std::vector<HeaderCondition> headers;
  std::vector<std::string> evidence;

  // Only category, host and client: the connection stage can decide it from the name alone.
  bool connection_decidable() const {
    return paths.empty() && methods.empty() && user_agents.empty() && headers.empty() &&
           evidence.empty();
  }
};

bool client_matches(const Rule& rule, const std::optional<IpAddress>& client) {
  if (rule.clients.empty()) return true;
  if (!client) return false;
  return std::any_of(rule.clients.begin(), rule.clients.end(),
                     [&](const Cidr& cidr) { return cidr.contains(*client); });
}

bool header_matches(const HeaderCondition& condition, std::span<const HeaderView> headers) {
  for (const HeaderView& header : headers) {
    if (!iequals(header.name, condition.name)) continue;
    if (!condition.value || condition.value->matches(trim_ows(header.value))) return true;
  }
  return false;
}

// Cheapest conditions first; no allocation anywhere on this path.
bool request_matches(const Rule& rule, const RequestFacts& facts,
                     const Classification& classification) {
  if (rule.categories != 0 && (rule.categories & category_bit(classification.category)) == 0) {
    return false;
  }
  if (!client_matches(rule, facts.client)) return false;
  if (!rule.methods.empty() &&
      std::none_of(rule.methods.begin(), rule.methods.end(), [&](const std::string& method) {
        return method.size() == facts.method.size() &&
               std::equal(method.begin(), method.end(), facts.method.begin(),
                          [](char want, char got) { return want == upper(got); });
      })) {
    return false;
  }
  if (!rule.hosts.empty() && !rule.hosts.matches(facts.host)) return false;
  if (!rule.paths.empty() &&
      std::none_of(rule.paths.begin(), rule.paths.end(),
                   [&](const Glob& glob) { return glob.matches(facts.path); })) {
    return false;
  }
  if (!rule.user_agents.empty() &&
      std::none_of(rule.user_agents.begin(), rule.user_agents.end(),
                   [&](const std::string& token) { return icontains(facts.user_agent, token); })) {
    return false;
  }
  if (!rule.headers.empty() &&
      std::none_of(rule.headers.begin(), rule.headers.end(), [&](const HeaderCondition& header) {
        return header_matches(header, facts.headers);
      })) {
    return false;
  }
  if (!rule.evidence.empty() &&
      std::none_of(classification.evidence.begin(), classification.evidence.end(),
                   [&](const Evidence& seen) {
                     return std::find(rule.evidence.begin(), rule.evidence.end(), seen.signature) !=
                            rule.evidence.end();
                   })) {
    return false;
  }
  return true;
}

}  // namespace

// The parsed policy: immutable after parse, read by many threads at once.
class PolicyData {
 public:
  std::string source;
  std::string name;
  std::string organisation;
  std::string block_message{kDefaultBlockMessage};
  Action default_action = Action::allow;
  PinnedAction on_pinned = PinnedAction::refuse;
  std::chrono::seconds pinned_memory{600};
  std::size_t pinned_table_size = 10'000;
  InterceptMode mode = InterceptMode::targets;
  HostPatternSet exempt;
  std::vector<Rule> rules;

  std::string_view default_message() const {
    return default_action == Action::block ? std::string_view(block_message) : std::string_view();
  }
};

namespace {

std::optional<Action> action_value(TomlReader& loader, const toml::node& node,
                                   std::string_view what, std::span<const Action> allowed) {
  auto text = loader.string(node, what, kMaxNameLength);
  if (!text) return std::nullopt;
  std::vector<std::string_view> allowed_names;
  for (Action action : allowed) allowed_names.push_back(to_string(action));
  auto action = parse_action(*text);
  if (action && std::find(allowed.begin(), allowed.end(), *action) != allowed.end()) {
    return action;
  }
  if (action) {
    loader.error(node, what,
                 "action " + quote(*text) + " is not meaningful here (expected " +
                     join(allowed_names, " or ") + ")");
  } else {
    loader.error(
        node, what,
        "unknown action " + quote(*text) + " (expected " + join(allowed_names, " or ") + ")");
  }
  return std::nullopt;
}

// ---- [policy]

void load_policy_section(TomlReader& loader, PolicyData& data, const toml::table& table) {
  static constexpr std::array kKeys = {kKeyName,           kKeyOrganisation, kKeyDefaultAction,
                                       kKeyBlockMessage,   kKeyOnPinned,     kKeyPinnedMemory,
                                       kKeyPinnedTableSize};
  loader.unknown_keys(table, kKeys, "[policy]");
  if (const auto* node = table.get(kKeyName)) {
    if (auto text = loader.string(*node, "policy.name", kMaxNameLength)) {
      if (text->empty()) {
        loader.error(*node, "policy.name", "empty name");
      } else {
        data.name = *text;
      }
    }
  }
  if (const auto* node = table.get(kKeyOrganisation)) {
    if (auto text = loader.string(*node, "policy.organisation", kMaxOrganisationLength)) {
      data.organisation = *text;
    }
  }
  if (const auto* node = table.get(kKeyDefaultAction)) {
    static constexpr std::array kAllowed = {Action::allow, Action::log, Action::capture,
                                            Action::block};
    auto text = node->value<std::string_view>();
    if (text && (*text == to_string(Action::refuse) || *text == to_string(Action::splice))) {
      loader.error(*node, "policy.default_action",
                   quote(*text) +
                       " is not meaningful for a request (use allow, log, capture or block; "
                       "refuse or splice hosts with a rule)");
    } else if (auto action = action_value(loader, *node, "policy.default_action", kAllowed)) {
      data.default_action = *action;
    }
  }
  if (const auto* node = table.get(kKeyBlockMessage)) {
    if (auto text = loader.string(*node, "policy.block_message", kMaxMessageLength)) {
      if (text->empty()) {
        loader.error(*node, "policy.block_message", "empty message");
      } else {
        data.block_message = *text;
      }
    }
  }
  if (const auto* node = table.get(kKeyOnPinned)) {
    if (auto text = loader.string(*node, "policy.on_pinned", kMaxNameLength)) {
      if (*text == kPinnedRefuse) {
        data.on_pinned = PinnedAction::refuse;
      } else if (*text == kPinnedSplice) {
        data.on_pinned = PinnedAction::splice;
      } else {
        loader.error(*node, "policy.on_pinned",
                     "unknown value " + quote(*text) + " (expected refuse or splice)");
      }
    }
  }
  if (const auto* node = table.get(kKeyPinnedMemory)) {
    if (auto text = loader.string(*node, "policy.pinned_memory", kMaxNameLength)) {
      auto duration = parse_duration(*text);
      if (!duration) {
        loader.error(*node, "policy.pinned_memory",
                     "bad duration " + quote(*text) + ": " + duration.error());
      } else if (*duration < kMinPinnedMemory || *duration > kMaxPinnedMemory) {
        loader.error(*node, "policy.pinned_memory",
                     "duration " + quote(*text) + " is out of range (1s..7d)");
      } else {
        data.pinned_memory = *duration;
      }
    }
  }
  if (const auto* node = table.get(kKeyPinnedTableSize)) {
    if (auto size = loader.integer(*node, "policy.pinned_table_size", 1, kMaxPinnedTableSize)) {
      data.pinned_table_size = static_cast<std::size_t>(*size);
    }
  }
}

// ---- [intercept]

void load_intercept_section(TomlReader& loader, PolicyData& data, const toml::table& table) {
  static constexpr std::array kKeys = {kKeyMode, kKeyExempt};
  loader.unknown_keys(table, kKeys, "[intercept]");
  if (const auto* node = table.get(kKeyMode)) {
    if (auto text = loader.string(*node, "intercept.mode", kMaxNameLength)) {
      if (*text == kModeTargets) {
        data.mode = InterceptMode::targets;
      } else if (*text == kModeAll) {
        data.mode = InterceptMode::all;
      } else {
        loader.error(*node, "intercept.mode",
                     "unknown mode " + quote(*text) + " (expected targets or all)");
      }
    }
  }
  if (const auto* node = table.get(kKeyExempt)) {
    loader.strings(*node, "intercept.exempt", kMaxPatternLength,
                   [&](const toml::node& element, std::string_view text, const std::string& where) {
                     auto pattern = HostPattern::parse(text);
                     if (!pattern) {
                       loader.error(element, where,
                                    "bad host pattern " + quote(text) + ": " + pattern.error());
                     } else if (pattern->kind() == HostPattern::Kind::any) {
                       loader.error(element, where,
                                    "'*' would exempt every host, so no rule could ever act");
                     } else {
                       data.exempt.add(*pattern);
                     }
                   });
  }
}

// ---- [client_groups]

using ClientGroups = std::map<std::string, std::vector<Cidr>, std::less<>>;

ClientGroups load_client_groups(TomlReader& loader, const toml::table& table) {
  ClientGroups groups;
  for (auto&& [key, node] : table) {
    std::string group(key.str());
    std::string what = "client_groups." + group;
    if (!is_identifier(group)) {
      loader.error(key.source(), "bad group name " + quote(group) +
                                     " (letters, digits, '-', '_' and '.', at most 64)");
      continue;
    }
    std::vector<Cidr> cidrs;
    loader.strings(node, what, kMaxPatternLength,
                   [&](const toml::node& element, std::string_view text, const std::string& where) {
                     if (text.starts_with('@')) {
                       loader.error(element, where, "a group cannot contain a group");
                       return;
                     }
                     auto cidr = Cidr::parse(text);
                     if (!cidr) {
                       loader.error(element, where,
                                    "bad CIDR " + quote(text) +
                                        " (expected ADDRESS/PREFIX or an "
                                        "address)");
                       return;
                     }
                     cidrs.push_back(*cidr);
                   });
    groups.emplace(std::move(group), std::move(cidrs));
  }
  return groups;
}

// ---- [[rules]]

void load_match(TomlReader& loader, Rule& rule, const toml::table& table, const std::string& what,
                const ClientGroups& groups) {
  static constexpr std::array kKeys = {kKeyCategory,  kKeyHost,   kKeyPath,   kKeyMethod,
                                       kKeyUserAgent, kKeyHeader, kKeyClient, kKeyEvidence};
  loader.unknown_keys(table, kKeys, what);
  auto key_what = [&](std::string_view key) { return what + "." + std::string(key); };

  if (const auto* node = table.get(kKeyCategory)) {
    loader.strings(*node, key_what(kKeyCategory), kMaxNameLength,
                   [&](const toml::node& element, std::string_view text, const std::string& where) {
                     auto category = parse_category(text);
                     if (category) {
                       rule.categories |= category_bit(*category);
                       return;
                     }
                     std::string hint;
                     std::string dashed(text);
                     std::replace(dashed.begin(), dashed.end(), '_', '-');
                     if (auto near = parse_category(lowered(dashed))) {
                       hint = "; did you mean " + quote(to_string(*near)) + "?";
                     }
                     auto names = category_names();
                     loader.error(element, where,
                                  "unknown category " + quote(text) + " (expected " +
                                      join(names, " or ") + ")" + hint);
                   });
  }
  if (const auto* node = table.get(kKeyHost)) {
    loader.strings(*node, key_what(kKeyHost), kMaxPatternLength,
                   [&](const toml::node& element, std::string_view text, const std::string& where) {
                     auto pattern = HostPattern::parse(text);
                     if (!pattern) {
                       loader.error(element, where,
                                    "bad host pattern " + quote(text) + ": " + pattern.error());
                       return;
                     }
                     rule.hosts.add(*pattern);
                   });
  }
  if (const auto* node = table.get(kKeyPath)) {
    loader.strings(
        *node, key_what(kKeyPath), kMaxPatternLength,
        [&](const toml::node& element, std::string_view text, const std::string& where) {
          if (!text.starts_with('/') && !text.starts_with('*')) {
            loader.error(
                element, where,
                "path pattern " + quote(text) + " must start with '/' or '*' (paths always do)");
            return;
          }
          auto glob = Glob::compile(text, false);
          if (!glob) {
            loader.error(element, where, "bad path pattern " + quote(text) + ": " + glob.error());
            return;
          }
          rule.paths.push_back(std::move(*glob));
        });
  }
  if (const auto* node = table.get(kKeyMethod)) {
    loader.strings(*node, key_what(kKeyMethod), kMaxTokenLength,
                   [&](const toml::node& element, std::string_view text, const std::string& where) {
                     if (!is_token(text)) {
                       loader.error(element, where, "bad method " + quote(text));
                       return;
                     }
                     std::string method(text);
                     std::transform(method.begin(), method.end(), method.begin(), upper);
                     rule.methods.push_back(std::move(method));
                   });
  }
  if (const auto* node = table.get(kKeyUserAgent)) {
    loader.strings(*node, key_what(kKeyUserAgent), kMaxTokenLength,
                   [&](const toml::node&, std::string_view text, const std::string&) {
                     rule.user_agents.push_back(lowered(text));
                   });
  }
  if (const auto* node = table.get(kKeyHeader)) {
    loader.strings(*node, key_what(kKeyHeader), kMaxPatternLength,
                   [&](const toml::node& element, std::string_view text, const std::string& where) {
                     auto colon = text.find(':');
                     auto name = trim_ows(text.substr(0, colon));
                     if (!is_token(name)) {
                       loader.error(element, where,
                                    "bad header name " + quote(name) +
                                        " (expected \"Name\" or \"Name: "
                                        "value-pattern\")");
                       return;
                     }
                     HeaderCondition condition{lowered(name), std::nullopt};
                     if (colon != std::string_view::npos) {
                       auto value = trim_ows(text.substr(colon + 1));
                       if (value.empty()) {
                         loader.error(element, where,
                                      "empty value pattern after ':' (write just the name to test "
                                      "presence, or \"*\")");
                         return;
                       }
                       auto glob = Glob::compile(value, true);
                       if (!glob) {
                         loader.error(element, where,
                                      "bad value pattern " + quote(value) + ": " + glob.error());
                         return;
                       }
                       condition.value = std::move(*glob);
                     }
                     rule.headers.push_back(std::move(condition));
                   });
  }
  if (const auto* node = table.get(kKeyClient)) {
    loader.strings(
        *node, key_what(kKeyClient), kMaxPatternLength,
        [&](const toml::node& element, std::string_view text, const std::string& where) {
          if (text.starts_with('@')) {
            auto group = groups.find(text.substr(1));
            if (group == groups.end()) {
              std::vector<std::string_view> defined;
              for (const auto& [name, cidrs] : groups) defined.push_back(name);
              loader.error(element, where,
                           "unknown client group " + quote(text) +
                               (defined.empty() ? " (no [client_groups] defined)"
                                                : " (defined: " + join(defined, ", ") + ")"));
              return;
            }
            rule.clients.insert(rule.clients.end(), group->second.begin(), group->second.end());
            return;
          }
          auto cidr = Cidr::parse(text);
          if (!cidr) {
            loader.error(element, where,
                         "bad CIDR " + quote(text) +
                             " (expected ADDRESS/PREFIX, an address or "
                             "@group)");
            return;
          }
          rule.clients.push_back(*cidr);
        });
  }
  if (const auto* node = table.get(kKeyEvidence)) {
    loader.strings(*node, key_what(kKeyEvidence), kMaxNameLength,
                   [&](const toml::node& element, std::string_view text, const std::string& where) {
                     if (!is_identifier(text)) {
                       loader.error(element, where,
                                    "bad signature id " + quote(text) +
                                        " (catalog ids are letters, digits, '-', '_' and '.')");
                       return;
                     }
                     rule.evidence.emplace_back(text);
                   });
  }
}

struct RuleSite {
  std::string name;
  uint32_t line;
  bool matches_everything;
};

void load_rule(TomlReader& loader, PolicyData& data, const toml::table& table, std::size_t index,
               const ClientGroups& groups, std::vector<RuleSite>& seen) {
  static constexpr std::array kKeys = {kKeyName, kKeyAction, kKeyMessage, kKeyPrivacy, kKeyMatch};
  static constexpr std::array kActions = {Action::allow,  Action::log,    Action::block,
                                          Action::refuse, Action::splice, Action::capture};
  std::string what = "rules[" + std::to_string(index) + "]";
  Rule rule;
  rule.line = table.source().begin.line;
  bool valid = true;

  const toml::node* name_node = table.get(kKeyName);
  if (name_node == nullptr) {
    loader.error(table, what, "missing name (every rule needs a unique name)");
    valid = false;
  } else if (auto text = loader.string(*name_node, what + ".name", kMaxNameLength)) {
    if (!is_identifier(*text)) {
      loader.error(
          *name_node, what + ".name",
          "bad rule name " + quote(*text) + " (letters, digits, '-', '_' and '.', at most 64)");
      valid = false;
    } else {
      rule.name = *text;
      what += " (" + rule.name + ")";
    }
  } else {
    valid = false;
  }

  loader.unknown_keys(table, kKeys, what);

  const toml::node* action_node = table.get(kKeyAction);
  if (action_node == nullptr) {
    loader.error(table, what, "missing action");
    valid = false;
  } else if (auto action = action_value(loader, *action_node, what + ".action", kActions)) {
    rule.action = *action;
  } else {
    valid = false;
  }

  std::string message;
  if (const auto* node = table.get(kKeyMessage)) {
    if (auto text = loader.string(*node, what + ".message", kMaxMessageLength)) {
      if (text->empty()) {
        loader.error(*node, what + ".message", "empty message (leave the key out instead)");
      } else {
        message = *text;
      }
    }
  }

  // A researcher's own device may be recorded whole: privacy = "full" turns redaction off for
  // this rule's records and captures (query values, cookies, tokens). "redacted" is the default.
  if (const auto* node = table.get(kKeyPrivacy)) {
    if (auto text = loader.string(*node, what + ".privacy", kMaxNameLength)) {
      if (*text == "full") {
        rule.full_capture = true;
      } else if (*text != "redacted") {
        loader.error(*node, what + ".privacy",
                     "unknown privacy " + quote(*text) + " (redacted or full)");
      }
      if (rule.action != Action::capture && rule.action != Action::log) {
        loader.error(*node, what + ".privacy", "privacy applies to log and capture rules only");
      }
    }
  }

  // Only a rule written without conditions catches everything (not one whose conditions all
  // failed to parse: that would report every later rule as unreachable).
  const toml::node* match_node = table.get(kKeyMatch);
  const bool catch_all =
      match_node == nullptr || (match_node->is_table() && match_node->as_table()->empty());
  if (match_node != nullptr) {
    if (const auto* match = loader.table(*match_node, what + ".match")) {
      load_match(loader, rule, *match, what + ".match", groups);
    }
  }

  if (valid && rule.action == Action::splice && !rule.connection_decidable()) {
    loader.error(*action_node, what + ".action",
                 "a splice rule can only match category, host and client: a connection is "
                 "spliced before any path, method, user agent, header or evidence is seen");
  }
  if (!rule.name.empty()) {
    auto earlier = std::find_if(seen.begin(), seen.end(),
                                [&](const RuleSite& site) { return site.name == rule.name; });
    if (earlier != seen.end()) {
      loader.error(*name_node, what + ".name",
                   "duplicate rule name " + quote(rule.name) + " (first at line " +
                       std::to_string(earlier->line) + ")");
    }
  }
  auto earlier_catch_all = std::find_if(
      seen.begin(), seen.end(), [](const RuleSite& site) { return site.matches_everything; });
  if (earlier_catch_all != seen.end()) {
    loader.error(table, what,
                 "unreachable: rule " + quote(earlier_catch_all->name) + " (line " +
                     std::to_string(earlier_catch_all->line) + ") matches everything");
  }
  seen.push_back({rule.name, rule.line, catch_all});

  if (!message.empty()) {
    rule.message = std::move(message);
  } else if (rule.action == Action::block || rule.action == Action::refuse) {
    rule.message = data.block_message;
  }
  data.rules.push_back(std::move(rule));
}

void load_rules(TomlReader& loader, PolicyData& data, const toml::node& node,
                const ClientGroups& groups) {
  const auto* rules = node.as_array();
  if (rules == nullptr) {
    loader.error(node, kSectionRules,
                 "expected an array of tables ([[rules]]), got " + std::string(type_name(node)));
    return;
  }
  if (rules->size() > kMaxRules) {
    loader.error(node, kSectionRules, "more than " + std::to_string(kMaxRules) + " rules");
    return;
  }
  std::vector<RuleSite> seen;
  for (std::size_t i = 0; i < rules->size(); ++i) {
    const toml::node& element = *rules->get(i);
    const auto* table = element.as_table();
    if (table == nullptr) {
      loader.error(element, "rules[" + std::to_string(i) + "]",
                   "expected a table, got " + std::string(type_name(element)));
      continue;
    }
    load_rule(loader, data, *table, i, groups, seen);
  }
}

void load_document(TomlReader& loader, PolicyData& data, const toml::table& root) {
  static constexpr std::array kSections = {kSectionPolicy, kSectionIntercept, kSectionClientGroups,
                                           kSectionRules};
  for (auto&& [key, node] : root) {
    if (std::find(kSections.begin(), kSections.end(), key.str()) == kSections.end()) {
      loader.error(key.source(), "unknown section " + quote(key.str()) + " (expected " +
                                     join(kSections, " or ") + ")");
    }
  }
  // [policy] first: rules copy its block message.
  if (const auto* node = root.get(kSectionPolicy)) {
    if (const auto* table = loader.table(*node, kSectionPolicy)) {
      load_policy_section(loader, data, *table);
    }
  }
  if (const auto* node = root.get(kSectionIntercept)) {
    if (const auto* table = loader.table(*node, kSectionIntercept)) {
      load_intercept_section(loader, data, *table);
    }
  }
  ClientGroups groups;
  if (const auto* node = root.get(kSectionClientGroups)) {
    if (const auto* table = loader.table(*node, kSectionClientGroups)) {
      groups = load_client_groups(loader, *table);
    }
  }
  if (const auto* node = root.get(kSectionRules)) load_rules(loader, data, *node, groups);
}

std::string_view embedded_profile(std::string_view name) {
  if (name == "gateway") return embedded::profile_gateway_toml();
  if (name == "observe") return embedded::profile_observe_toml();
  return {};
}

}  // namespace

Policy::Policy(std::unique_ptr<PolicyData> data) : data_(std::move(data)) {}
Policy::~Policy() = default;

std::expected<std::shared_ptr<const Policy>, std::string> Policy::parse(
    std::string_view toml_text, std::string_view source_name) {
  TomlReader loader(source_name);
  if (toml_text.size() > kMaxPolicyBytes) {
    return std::unexpected(std::string(source_name) + ": larger than " +
                           std::to_string(kMaxPolicyBytes >> 20) + " MiB");
  }
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    // Loading a policy is not the data plane: toml++ reports syntax errors by exception.
    // It may quote the hostile bytes (control characters, DEL): escaped, on one line.
    loader.error(e.source(), escape(e.description(), false));
    return std::unexpected(loader.report());
  }
  auto data = std::make_unique<PolicyData>();
  data->source = source_name;
  load_document(loader, *data, root);
  if (loader.failed()) return std::unexpected(loader.report());
  if (data->name.empty()) data->name = source_name;
  return std::shared_ptr<const Policy>(new Policy(std::move(data)));
}

std::expected<std::shared_ptr<const Policy>, std::string> Policy::load_file(
    const std::filesystem::path& path) {
  const std::string name = path.string();
  std::FILE* file = std::fopen(name.c_str(), "rb");
  if (file == nullptr) {
    return std::unexpected(name + ": cannot read: " + std::strerror(errno));
  }
  std::string text;
  std::array<char, 64 * 1024> buffer;
  bool too_large = false;
  while (true) {
    std::size_t got = std::fread(buffer.data(), 1, buffer.size(), file);
    text.append(buffer.data(), got);
    if (text.size() > kMaxPolicyBytes) {
      too_large = true;
      break;
    }
    if (got < buffer.size()) break;
  }
  const bool read_error = std::ferror(file) != 0;
  const int read_errno = errno;
  std::fclose(file);
  if (too_large) {
    return std::unexpected(name + ": cannot read: larger than " +
                           std::to_string(kMaxPolicyBytes >> 20) + " MiB");
  }
  if (read_error) return std::unexpected(name + ": cannot read: " + std::strerror(read_errno));
  return parse(text, name);
}

std::expected<std::shared_ptr<const Policy>, std::string> Policy::profile(std::string_view name) {
  auto text = embedded_profile(name);
  if (text.empty()) {
    return std::unexpected("unknown profile " + quote(name) + " (expected " +
                           join(kProfileNames, " or ") + ")");
  }
  return parse(text, "profile:" + std::string(name));
}

std::vector<std::string_view> Policy::profile_names() {
  return {kProfileNames.begin(), kProfileNames.end()};
}

ConnectionDecision Policy::decide_connection(const Catalog& catalog,
                                             const RequestFacts& facts) const {
  const PolicyData& data = *data_;
  const Classification classification = catalog.classify_host(facts.host);
  ConnectionDecision decision;
  decision.category = classification.category;

  // Exempt hosts (banking, health) are never decrypted, whatever the rules say.
  if (data.exempt.matches(facts.host)) {
    decision.verdict = ConnectionVerdict::splice;
    return decision;
  }

  const bool target = is_target(classification.category);
  const auto default_verdict = [&] {
    return data.mode == InterceptMode::all || target ? ConnectionVerdict::intercept
                                                     : ConnectionVerdict::splice;
  };

  for (const Rule& rule : data.rules) {
    if (!rule.hosts.empty() && !rule.hosts.matches(facts.host)) continue;
    if (!client_matches(rule, facts.client)) continue;
    // The category condition is tested against the host's own category: a category only the
    // request can reveal (a page inside the in-app browser, a store listing on a shared store
    // host) is seen only on connections decrypted for another reason, or with mode = "all".
    if (rule.categories != 0 && (rule.categories & category_bit(classification.category)) == 0) {
      continue;
    }
    decision.rule = rule.name;
    decision.message = rule.message;
    if (!rule.connection_decidable()) {
      // Whether this rule applies depends on the requests: decrypt so the request stage sees them.
      decision.verdict = ConnectionVerdict::intercept;
      return decision;
    }
    switch (rule.action) {
      case Action::refuse:
        decision.verdict = ConnectionVerdict::refuse;
        break;
      case Action::splice:
        decision.verdict = ConnectionVerdict::splice;
        break;
      case Action::block:
      case Action::log:
      case Action::capture:
        // A 451 page or a record needs the decrypted request.
        decision.verdict = ConnectionVerdict::intercept;
        break;
      case Action::allow:
        decision.verdict = default_verdict();
        break;
    }
    return decision;
  }
  decision.verdict = default_verdict();
  return decision;
}

RequestDecision Policy::decide_request(const RequestFacts& facts,
                                       const Classification& classification) const {
  const PolicyData& data = *data_;
  for (const Rule& rule : data.rules) {
    if (!request_matches(rule, facts, classification)) continue;
    // Too late to splice a decrypted connection: the request goes through.
    Action action = rule.action == Action::splice ? Action::allow : rule.action;
    return {action, rule.name, rule.message, rule.full_capture};
  }
  return {data.default_action, {}, data.default_message(), false};
}

const std::string& Policy::name() const {
  return data_->name;
}
const std::string& Policy::organisation() const {
  return data_->organisation;
}
const std::string& Policy::source() const {
  return data_->source;
}
PinnedAction Policy::on_pinned() const {
  return data_->on_pinned;
}
std::chrono::seconds Policy::pinned_memory() const {
  return data_->pinned_memory;
}
std::size_t Policy::pinned_table_size() const {
  return data_->pinned_table_size;
}
std::size_t Policy::rule_count() const {
  return data_->rules.size();
}

}  // namespace tokgate::policy
