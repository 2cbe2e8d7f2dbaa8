// The vocabulary shared by the catalog, the classifier, the policy and the proxy: categories,
// the facts of a request, the evidence found in it, and the actions a policy can take.
// Plain values and views only: the policy room never sees a socket.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "policy/net_types.hpp"

namespace tokgate::policy {

// One primary category per request (shared/reference/tiktok-traffic.md, "categories").
enum class Category : uint8_t {
  none,
  app_api,
  in_app_browser,
  media_cdn,
  web,
  analytics_sdk,
  app_distribution,
  auth,
  live,
  wechat,
  bytedance_other,
};
inline constexpr std::size_t kCategoryCount = 11;

// "app-api", "in-app-browser", ... (the names used in the catalog, policies, logs).
std::string_view to_string(Category category);
std::optional<Category> parse_category(std::string_view name);

// True for every category except none: what a TikTok/WeChat/ByteDance policy targets.
constexpr bool is_target(Category category) {
  return category != Category::none;
}

struct HeaderView {
  std::string_view name;  // as received (any case)
  std::string_view value;
};

// What the classifier and the policy may look at. Views into the caller's buffers: valid for
// the duration of one call. At the connection stage only `host`, `port` and `client` are set.
struct RequestFacts {
  std::string_view host;  // normalized (policy::normalize_host): lower-case, no port, no dot
  uint16_t port = 0;
  std::string_view method;      // "GET"; empty at the connection stage
  std::string_view path;        // without the query; empty at the connection stage
  std::string_view query;       // raw, without '?'
  std::string_view user_agent;  // empty if absent
  std::span<const HeaderView> headers;
  std::optional<IpAddress> client;
};

// One piece of evidence: what matched, which catalog entry it belongs to, and where.
enum class EvidenceKind : uint8_t { host, path, query, user_agent, header, body };
std::string_view to_string(EvidenceKind kind);

struct Evidence {
  EvidenceKind kind = EvidenceKind::host;
  std::string_view signature;  // catalog entry id, e.g. "tiktok-app-backend" (owned by the catalog)
  std::string_view matched;    // the token/suffix/header that matched (owned by the catalog)
  Category category = Category::none;  // what this piece of evidence alone suggests
};

struct Classification {
  Category category = Category::none;
  std::string_view decided_by;     // id of the catalog entry that gave the category ("" if none)
  std::vector<Evidence> evidence;  // everything seen, strongest first
};

// What a policy rule does with a connection or a request.
enum class Action : uint8_t { allow, log, block, refuse, splice, capture };
std::string_view to_string(Action action);
std::optional<Action> parse_action(std::string_view name);

// The connection-level verdict: relay untouched, refuse (TLS alert / 403), or decrypt.
enum class ConnectionVerdict : uint8_t { splice, refuse, intercept };
std::string_view to_string(ConnectionVerdict verdict);

}  // namespace tokgate::policy
