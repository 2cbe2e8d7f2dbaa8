#include "policy/toml_reader.hpp"

#include <algorithm>
#include <tuple>

namespace tokgate::policy {

std::string escape(std::string_view text, bool quotes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (quotes && (c == '\\' || c == '\'')) {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c >= 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += ch;
    }
  }
  return out;
}

std::string quote(std::string_view text) {
  std::string out = "'" + escape(text.substr(0, kMaxQuoted), true);
  if (text.size() > kMaxQuoted) out += "...";
  out += '\'';
  return out;
}

bool has_control_char(std::string_view text) {
  return std::any_of(text.begin(), text.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

std::string_view type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string type_name_with_article(const toml::node& node) {
  if (node.is_date() || node.is_time() || node.is_date_time() ||
      node.type() == toml::node_type::none) {
    return "a date/time";
  }
  std::string name(type_name(node));
  return (name.front() == 'a' || name.front() == 'i' ? "an " : "a ") + name;
}

std::string join(std::span<const std::string_view> items, std::string_view last_separator) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? last_separator : std::string_view(", ");
    out += items[i];
  }
  return out;
}

void TomlReader::error(const toml::source_region& where, std::string message) {
  errors_.push_back({where.begin.line, where.begin.column, std::move(message)});
}

void TomlReader::error(const toml::node& where, std::string_view what, std::string_view message) {
  error(where.source(), std::string(what) + ": " + std::string(message));
}

std::string TomlReader::report() const {
  std::vector<const Error*> sorted;
  for (const auto& e : errors_) sorted.push_back(&e);
  std::stable_sort(sorted.begin(), sorted.end(), [](const Error* a, const Error* b) {
    return std::tie(a->line, a->column) < std::tie(b->line, b->column);
  });
  std::string out;
  for (const Error* e : sorted) {
    if (!out.empty()) out += '\n';
    out += source_name_ + ":" + std::to_string(e->line) + ":" + std::to_string(e->column) + ": " +
           e->text;
  }
  return out;
}

std::string TomlReader::origin(const toml::source_region& where) const {
  return source_name_ + ":" + std::to_string(where.begin.line) + ":" +
         std::to_string(where.begin.column);
}

std::optional<std::string_view> TomlReader::string(const toml::node& node, std::string_view what,
                                                   std::size_t max_length) {
  const auto* value = node.as_string();
  if (value == nullptr) {
    error(node, what, "expected a string, got " + std::string(type_name(node)));
    return std::nullopt;
  }
  std::string_view text = value->get();
  if (has_control_char(text)) {
    error(node, what, "control character in " + quote(text));
    return std::nullopt;
  }
  if (text.size() > max_length) {
    error(node, what, "longer than " + std::to_string(max_length) + " characters");
    return std::nullopt;
  }
  return text;
}

std::optional<int64_t> TomlReader::integer(const toml::node& node, std::string_view what,
                                           int64_t min, int64_t max) {
  const auto* value = node.as_integer();
  if (value == nullptr) {
    error(node, what, "expected an integer, got " + std::string(type_name(node)));
    return std::nullopt;
  }
  if (value->get() < min || value->get() > max) {
    error(node, what,
          std::to_string(value->get()) + " is out of range (" + std::to_string(min) + ".." +
              std::to_string(max) + ")");
    return std::nullopt;
  }
  return value->get();
}

std::optional<bool> TomlReader::boolean(const toml::node& node, std::string_view what) {
  const auto* value = node.as_boolean();
  if (value == nullptr) {
    error(node, what, "expected true or false, got " + std::string(type_name(node)));
    return std::nullopt;
  }
  return value->get();
}

const toml::table* TomlReader::table(const toml::node& node, std::string_view what) {
  const auto* value = node.as_table();
  if (value == nullptr) {
    error(node, what, "expected a table, got " + std::string(type_name(node)));
  }
  return value;
}

const toml::array* TomlReader::array(const toml::node& node, std::string_view what) {
  const auto* value = node.as_array();
  if (value == nullptr) {
    error(node, what, "expected an array, got " + std::string(type_name(node)));
  }
  return value;
}

void TomlReader::unknown_keys(const toml::table& table, std::span<const std::string_view> known,
                              std::string_view where) {
  for (auto&& [key, node] : table) {
    if (std::find(known.begin(), known.end(), key.str()) == known.end()) {
      error(key.source(), "unknown key " + quote(key.str()) + " in " + std::string(where) +
                              " (expected " + join(known, " or ") + ")");
    }
  }
}

std::string TomlReader::element_name(std::string_view what, std::size_t index) {
  return std::string(what) + "[" + std::to_string(index) + "]";
}

const toml::array* TomlReader::string_list(const toml::node& node, std::string_view what) {
  const auto* elements = node.as_array();
  if (elements == nullptr) {
    error(node, what, "expected an array of strings, got " + std::string(type_name(node)));
    return nullptr;
  }
  if (elements->empty()) {
    error(node, what, "empty list (leave the key out instead)");
    return nullptr;
  }
  if (elements->size() > kMaxListEntries) {
    error(node, what, "more than " + std::to_string(kMaxListEntries) + " entries");
    return nullptr;
  }
  return elements;
}

}  // namespace tokgate::policy
