#include "policy/types.hpp"

#include <array>

namespace tokgate::policy {
namespace {

// Indexed by the enum's value; the order must follow the enum declarations in types.hpp.
constexpr std::array<std::string_view, kCategoryCount> kCategoryNames{
    "none", "app-api",       "in-app-browser",   "media-cdn",
    "web",  "analytics-sdk", "app-distribution", "auth",
    "live", "wechat",        "bytedance-other",
};
constexpr std::array<std::string_view, 6> kEvidenceKindNames{"host",       "path",   "query",
                                                             "user-agent", "header", "body"};
constexpr std::array<std::string_view, 6> kActionNames{"allow",  "log",    "block",
                                                       "refuse", "splice", "capture"};
constexpr std::array<std::string_view, 3> kVerdictNames{"splice", "refuse", "intercept"};

template <typename Enum, std::size_t N>
std::string_view name_of(const std::array<std::string_view, N>& names, Enum value) {
  auto index = static_cast<std::size_t>(value);
  return index < N ? names[index] : std::string_view("?");
}

template <typename Enum, std::size_t N>
std::optional<Enum> parse_name(const std::array<std::string_view, N>& names,
                               std::string_view text) {
  for (std::size_t i = 0; i < N; ++i) {
    if (names[i] == text) return static_cast<Enum>(i);
  }
  return std::nullopt;
}

}  // namespace

std::string_view to_string(Category category) {
  return name_of(kCategoryNames, category);
}

std::optional<Category> parse_category(std::string_view name) {
  return parse_name<Category>(kCategoryNames, name);
}

std::string_view to_string(EvidenceKind kind) {
  return name_of(kEvidenceKindNames, kind);
}

std::string_view to_string(Action action) {
  return name_of(kActionNames, action);
}

std::optional<Action> parse_action(std::string_view name) {
  return parse_name<Action>(kActionNames, name);
}

std::string_view to_string(ConnectionVerdict verdict) {
  return name_of(kVerdictNames, verdict);
}

}  // namespace tokgate::policy
