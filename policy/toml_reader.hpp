// Reading a TOML document into typed values, with every problem collected as
// "SOURCE:LINE:COL: what: message" instead of stopping at the first. Shared by the loaders of the
// proxy config, the policy and the catalog, so their errors read alike.
#pragma once

#include <toml++/toml.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tokgate::policy {

// Longest value echoed in an error.
constexpr std::size_t kMaxQuoted = 80;
// Most entries TomlReader::strings() accepts in one list.
constexpr std::size_t kMaxListEntries = 100'000;

// Makes text safe to print on one line: controls and non-ASCII bytes become \xNN; with
// `quotes`, quotes and backslashes are escaped too.
std::string escape(std::string_view text, bool quotes);

// Echoes a (possibly hostile) value in an error: quoted, escaped, one line, bounded.
std::string quote(std::string_view text);

bool has_control_char(std::string_view text);

// "table", "integer", ...
std::string_view type_name(const toml::node& node);
// "a table", "an integer", ...; every date and time kind is "a date/time".
std::string type_name_with_article(const toml::node& node);

// "a, b or c" with last_separator " or ".
std::string join(std::span<const std::string_view> items, std::string_view last_separator);

class TomlReader {
 public:
  explicit TomlReader(std::string_view source_name) : source_name_(source_name) {}

  void error(const toml::source_region& where, std::string message);
  void error(const toml::node& where, std::string_view what, std::string_view message);

  bool failed() const { return !errors_.empty(); }

  // Every error, ordered by position (stable), one "SOURCE:LINE:COL: text" a line.
  std::string report() const;

  // "SOURCE:LINE:COL" of `where`.
  std::string origin(const toml::source_region& where) const;

  // Typed accessors: nullopt/nullptr after reporting the problem.
  std::optional<std::string_view> string(
      const toml::node& node, std::string_view what,
      std::size_t max_length = std::numeric_limits<std::size_t>::max());
  std::optional<int64_t> integer(const toml::node& node, std::string_view what, int64_t min,
                                 int64_t max);
  std::optional<bool> boolean(const toml::node& node, std::string_view what);
  const toml::table* table(const toml::node& node, std::string_view what);
  const toml::array* array(const toml::node& node, std::string_view what);

  // Calls parse_one(element, "what[i]") for each element of an array.
  template <typename ParseOne>
  void each(const toml::node& node, std::string_view what, ParseOne&& parse_one) {
    const auto* elements = array(node, what);
    if (elements == nullptr) return;
    for (std::size_t i = 0; i < elements->size(); ++i) {
      parse_one(*elements->get(i), element_name(what, i));
    }
  }

  // Calls parse_one(element, text, "what[i]") for each non-empty string of a non-empty array of
  // at most kMaxListEntries.
  template <typename ParseOne>
  void strings(const toml::node& node, std::string_view what, std::size_t max_length,
               ParseOne&& parse_one) {
    const auto* elements = string_list(node, what);
    if (elements == nullptr) return;
    for (std::size_t i = 0; i < elements->size(); ++i) {
      const toml::node& element = *elements->get(i);
      std::string where = element_name(what, i);
      auto text = string(element, where, max_length);
      if (!text) continue;
      if (text->empty()) {
        error(element, where, "empty string");
        continue;
      }
      parse_one(element, *text, where);
    }
  }

  // Reports every key of `table` that `known` does not list.
  void unknown_keys(const toml::table& table, std::span<const std::string_view> known,
                    std::string_view where);

 private:
  struct Error {
    uint32_t line;
    uint32_t column;
    std::string text;
  };

  static std::string element_name(std::string_view what, std::size_t index);
  // The array under a strings() call, or nullptr after reporting why it cannot be one.
  const toml::array* string_list(const toml::node& node, std::string_view what);

  std::string source_name_;
  std::vector<Error> errors_;
};

}  // namespace tokgate::policy
