// `tokgate policy check|explain` and `tokgate catalog export`: the policy engine without any
// network, for operators ("why was this blocked?") and for scoring a labelled corpus.
#include "proxy/cli_policy.hpp"

#include <boost/json.hpp>
#include <boost/url/parse.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "policy/catalog.hpp"
#include "policy/catalog_export.hpp"
#include "policy/host_pattern.hpp"
#include "policy/policy.hpp"
#include "proxy/http_relay.hpp"

namespace tokgate::proxy {
namespace {

namespace json = boost::json;

constexpr int kOk = 0;
constexpr int kFailure = 1;
constexpr int kUsage = 2;
constexpr std::size_t kMaxBatchLine = 64 * 1024;

constexpr std::string_view kPolicyHelp = R"(Usage:
  tokgate policy check FILE
  tokgate policy explain --url URL [--method M] [--ua UA] [--header 'K: V']... [--client IP]
                         [--policy FILE | --profile NAME] [--catalog-dir DIR] [--json]
  tokgate policy explain --batch FILE|- [--policy FILE | --profile NAME] [--catalog-dir DIR]

check    validates a policy file; every error as FILE:LINE:COL: what is wrong (exit 2).
explain  shows the category, the evidence that matched, the rule and the action for a request,
         without any network. --batch reads JSON lines ({"url"} or {"host","path"}, and
         optional "method", "user_agent", "headers" {...}, "client", "id") and writes one JSON
         line per input line, "id" echoed.
The policy defaults to the gateway profile.
)";

constexpr std::string_view kCatalogHelp = R"(Usage:
  tokgate catalog export --format hosts|dnsmasq|rpz|pac [--category CAT]... [--proxy HOST:PORT]
                         [--sinkhole ADDR] [--catalog-dir DIR] [--out FILE]

The catalog's host names for DNS resolvers (hosts, dnsmasq, RPZ) and browsers (PAC), so a site
can layer a DNS block under the proxy. Paths, User-Agents and headers cannot be expressed there.
)";

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

int usage(std::string_view message) {
  std::cerr << "tokgate: " << message << "\n(see tokgate policy --help / tokgate catalog --help)\n";
  return kUsage;
}

std::expected<std::shared_ptr<const policy::Catalog>, std::string> load_catalog(
    const std::string& catalog_dir) {
  if (catalog_dir.empty()) return policy::Catalog::compile(policy::Catalog::embedded_sources());
  auto sources = policy::Catalog::sources_with_overrides(catalog_dir);
  if (!sources) return std::unexpected(sources.error());
  return policy::Catalog::compile(*sources);
}

// One request to explain, owning its strings (RequestFacts only views them).
struct ExplainRequest {
  std::string url;
  std::string host;
  uint16_t port = 443;
  std::string method = "GET";
  std::string path = "/";
  std::string query;
  std::string user_agent;
  std::vector<std::pair<std::string, std::string>> headers;
  std::optional<policy::IpAddress> client;
};

std::expected<void, std::string> set_url(ExplainRequest& request, std::string_view text) {
  auto url = boost::urls::parse_uri(text);
  if (!url || !url->has_authority())
    return std::unexpected("not an absolute URL: " + std::string(text));
  auto scheme = url->scheme_id();
  if (scheme != boost::urls::scheme::https && scheme != boost::urls::scheme::http) {
    return std::unexpected("only http:// and https:// URLs: " + std::string(text));
  }
  auto host = policy::normalize_host(url->host_address());
  if (!host) return std::unexpected("bad host in " + std::string(text));
  request.url = std::string(text);
  request.host = *host;
  request.port =
      url->has_port() ? url->port_number() : (scheme == boost::urls::scheme::https ? 443 : 80);
  // As the proxy sees it: decoded and dot segments resolved (explain must agree with it).
  request.path = normalized_path_for_policy(
      url->encoded_path().empty() ? std::string_view("/") : std::string_view(url->encoded_path()));
  request.query = url->has_query() ? std::string(url->encoded_query()) : std::string();
  return {};
}

std::expected<void, std::string> add_header(ExplainRequest& request, std::string_view line) {
  auto colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) {
    return std::unexpected("header must be 'Name: value': " + std::string(line));
  }
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  request.headers.emplace_back(std::string(line.substr(0, colon)), std::string(value));
  return {};
}

json::value evidence_json(const policy::Classification& classification) {
  json::array list;
  for (const auto& e : classification.evidence) {
    list.push_back(json::object{{"kind", policy::to_string(e.kind)},
                                {"signature", e.signature},
                                {"matched", e.matched},
                                {"category", policy::to_string(e.category)}});
  }
  return list;
}

json::object explain_json(const policy::Catalog& catalog, const policy::Policy& policy,
                          ExplainRequest& request) {
  std::vector<policy::HeaderView> views;
  for (const auto& [name, value] : request.headers) {
    views.push_back({name, value});
    if (request.user_agent.empty() && iequals(name, "user-agent")) {
      request.user_agent = value;
    }
  }
  if (!request.user_agent.empty() && std::ranges::none_of(request.headers, [](const auto& h) {
        return iequals(h.first, "user-agent");
      })) {
    views.push_back({"User-Agent", request.user_agent});
  }
  policy::RequestFacts facts;
  facts.host = request.host;
  facts.port = request.port;
  facts.method = request.method;
  facts.path = request.path;
  facts.query = request.query;
  facts.user_agent = request.user_agent;
  facts.headers = views;
  facts.client = request.client;
  auto classification = catalog.classify(facts);
  auto decision = policy.decide_request(facts, classification);
  policy::RequestFacts connection_facts;
  connection_facts.host = request.host;
  connection_facts.port = request.port;
  connection_facts.client = request.client;
  auto connection = policy.decide_connection(catalog, connection_facts);

  json::object out;
  out["url"] = request.url.empty() ? "https://" + request.host + request.path : request.url;
  out["host"] = request.host;
  out["category"] = policy::to_string(classification.category);
  out["decided_by"] = classification.decided_by.empty() ? json::value(nullptr)
                                                        : json::value(classification.decided_by);
  out["evidence"] = evidence_json(classification);
  out["rule"] = decision.rule.empty() ? json::value(nullptr) : json::value(decision.rule);
  out["action"] = policy::to_string(decision.action);
  out["message"] = decision.message;
  out["connection"] = json::object{
      {"verdict", policy::to_string(connection.verdict)},
      {"category", policy::to_string(connection.category)},
      {"rule", connection.rule.empty() ? json::value(nullptr) : json::value(connection.rule)}};
  out["policy"] = policy.name();
  out["catalog"] = catalog.version();
  return out;
}

void print_text(const json::object& result) {
  auto str = [&](std::string_view key) -> std::string {
    const auto* v = result.if_contains(key);
    if (v == nullptr || v->is_null()) return "(default)";
    return v->is_string() ? std::string(v->as_string()) : json::serialize(*v);
  };
  std::cout << "url:        " << str("url") << "\n";
  std::cout << "category:   " << str("category");
  if (!result.at("decided_by").is_null()) std::cout << "  (decided by " << str("decided_by") << ")";
  std::cout << "\n";
  const auto& evidence = result.at("evidence").as_array();
  if (evidence.empty()) std::cout << "evidence:   none\n";
  bool first = true;
  for (const auto& e : evidence) {
    const auto& o = e.as_object();
    auto text = [&](std::string_view key) { return std::string_view(o.at(key).as_string()); };
    std::cout << (first ? "evidence:   " : "            ") << text("kind") << " "
              << text("signature") << " '" << text("matched") << "' -> " << text("category")
              << "\n";
    first = false;
  }
  const auto& connection = result.at("connection").as_object();
  std::cout << "connection: " << std::string_view(connection.at("verdict").as_string())
            << "  (rule "
            << (connection.at("rule").is_null() ? std::string("(default)")
                                                : std::string(connection.at("rule").as_string()))
            << ")\n";
  std::cout << "request:    " << str("action") << "  (rule " << str("rule") << ")";
  if (!result.at("message").as_string().empty()) std::cout << "  \"" << str("message") << "\"";
  std::cout << "\n";
}

// One batch line → one explain request, or an error message.
std::expected<ExplainRequest, std::string> request_from_json(const json::object& line) {
  ExplainRequest request;
  auto get_string =
      [&](std::string_view key) -> std::expected<std::optional<std::string>, std::string> {
    const auto* v = line.if_contains(key);
    if (v == nullptr || v->is_null()) return std::optional<std::string>{};
    if (!v->is_string()) return std::unexpected("\"" + std::string(key) + "\" must be a string");
    return std::optional<std::string>(std::string(v->as_string()));
  };
  auto url = get_string("url");
  if (!url) return std::unexpected(url.error());
  if (*url) {
    if (auto ok = set_url(request, **url); !ok) return std::unexpected(ok.error());
  } else {
    auto host = get_string("host");
    if (!host) return std::unexpected(host.error());
    if (!*host) return std::unexpected("each line needs \"url\", or \"host\" and \"path\"");
    auto path = get_string("path");
    if (!path) return std::unexpected(path.error());
    std::string text = "https://" + **host + (*path ? **path : std::string("/"));
    if (auto ok = set_url(request, text); !ok) return std::unexpected(ok.error());
  }
  auto method = get_string("method");
  if (!method) return std::unexpected(method.error());
  if (*method) request.method = **method;
  auto ua = get_string("user_agent");
  if (!ua) return std::unexpected(ua.error());
  if (*ua) request.user_agent = **ua;
  auto client = get_string("client");
  if (!client) return std::unexpected(client.error());
  if (*client) {
    request.client = policy::IpAddress::parse(**client);
    if (!request.client) return std::unexpected("bad client address " + **client);
  }
  if (const auto* headers = line.if_contains("headers"); headers && !headers->is_null()) {
    if (!headers->is_object()) return std::unexpected("\"headers\" must be an object");
    for (const auto& [name, value] : headers->as_object()) {
      if (!value.is_string()) return std::unexpected("header values must be strings");
      request.headers.emplace_back(std::string(name), std::string(value.as_string()));
    }
  }
  return request;
}

int run_batch(const policy::Catalog& catalog, const policy::Policy& policy, std::istream& in) {
  std::string line;
  std::size_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json::object out;
    json::value id = nullptr;
    if (line.size() > kMaxBatchLine) {
      out["error"] = "line " + std::to_string(line_number) + ": longer than 64 KiB";
    } else {
      boost::system::error_code ec;
      json::value parsed = json::parse(line, ec);
      if (ec || !parsed.is_object()) {
        out["error"] = "line " + std::to_string(line_number) + ": not a JSON object";
      } else {
        if (const auto* v = parsed.as_object().if_contains("id")) id = *v;
        auto request = request_from_json(parsed.as_object());
        if (!request) {
          out["error"] = "line " + std::to_string(line_number) + ": " + request.error();
        } else {
          out = explain_json(catalog, policy, *request);
        }
      }
    }
    if (!id.is_null()) out["id"] = id;
    std::cout << json::serialize(out) << "\n";
  }
  std::cout.flush();
  return std::cout ? kOk : kFailure;
}

int policy_explain(std::span<const std::string_view> args) {
  ExplainRequest request;
  std::string policy_file, profile = "gateway", catalog_dir, batch;
  bool as_json = false;
  bool have_url = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view name = args[i];
    if (name == "--json") {
      as_json = true;
      continue;
    }
    if (name == "--help" || name == "-h") {
      std::cout << kPolicyHelp;
      return kOk;
    }
    if (i + 1 >= args.size()) return usage(std::string(name) + " needs a value");
    std::string_view value = args[++i];
    if (name == "--url") {
      if (auto ok = set_url(request, value); !ok) return usage(ok.error());
      have_url = true;
    } else if (name == "--method") {
      request.method = value;
    } else if (name == "--ua" || name == "--user-agent") {
      request.user_agent = value;
    } else if (name == "--header" || name == "-H") {
      if (auto ok = add_header(request, value); !ok) return usage(ok.error());
    } else if (name == "--client") {
      request.client = policy::IpAddress::parse(value);
      if (!request.client) return usage("bad client address " + std::string(value));
    } else if (name == "--policy") {
      policy_file = value;
    } else if (name == "--profile") {
      profile = value;
    } else if (name == "--catalog-dir") {
      catalog_dir = value;
    } else if (name == "--batch") {
      batch = value;
    } else {
      return usage("unknown option for 'policy explain': " + std::string(name));
    }
  }
  if (!have_url && batch.empty()) return usage("policy explain needs --url or --batch");
  auto catalog = load_catalog(catalog_dir);
  if (!catalog) {
    std::cerr << catalog.error() << "\n";
    return kUsage;
  }
  auto loaded = policy_file.empty() ? policy::Policy::profile(profile)
                                    : policy::Policy::load_file(policy_file);
  if (!loaded) {
    std::cerr << loaded.error() << "\n";
    return kUsage;
  }
  if (!batch.empty()) {
    if (batch == "-") return run_batch(**catalog, **loaded, std::cin);
    std::ifstream file(batch);
    if (!file) {
      std::cerr << "tokgate: " << batch << ": cannot read\n";
      return kFailure;
    }
    return run_batch(**catalog, **loaded, file);
  }
  auto result = explain_json(**catalog, **loaded, request);
  if (as_json) {
    std::cout << json::serialize(result) << "\n";
  } else {
    print_text(result);
  }
  return kOk;
}

int policy_check(std::span<const std::string_view> args) {
  if (args.size() != 1 || args[0].starts_with("--")) {
    if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
      std::cout << kPolicyHelp;
      return kOk;
    }
    return usage("policy check takes one FILE");
  }
  auto loaded = policy::Policy::load_file(std::string(args[0]));
  if (!loaded) {
    std::cerr << loaded.error() << "\n";
    return kUsage;
  }
  std::cout << args[0] << ": ok (policy \"" << (*loaded)->name() << "\", "
            << (*loaded)->rule_count() << " rules)\n";
  return kOk;
}

}  // namespace

std::expected<std::string, std::string> explain_request_json(
    const policy::Catalog& catalog, const policy::Policy& policy, std::string_view url,
    std::string_view method, std::string_view user_agent, std::span<const std::string> headers) {
  ExplainRequest request;
  if (auto ok = set_url(request, url); !ok) return std::unexpected(ok.error());
  if (!method.empty()) {
    if (method.size() > 32 ||
        std::ranges::any_of(method, [](char c) { return c < 'A' || c > 'Z'; })) {
      return std::unexpected("method must be upper-case letters, e.g. GET");
    }
    request.method = std::string(method);
  }
  request.user_agent = std::string(user_agent);
  for (const auto& line : headers) {
    if (auto ok = add_header(request, line); !ok) return std::unexpected(ok.error());
  }
  return json::serialize(explain_json(catalog, policy, request));
}

int run_policy_command(std::span<const std::string_view> args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kPolicyHelp;
    return args.empty() ? kUsage : kOk;
  }
  if (args[0] == "check") return policy_check(args.subspan(1));
  if (args[0] == "explain") return policy_explain(args.subspan(1));
  return usage("unknown policy action '" + std::string(args[0]) + "'");
}

int run_catalog_command(std::span<const std::string_view> args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kCatalogHelp;
    return args.empty() ? kUsage : kOk;
  }
  if (args[0] != "export") return usage("unknown catalog action '" + std::string(args[0]) + "'");
  std::optional<policy::ExportFormat> format;
  policy::ExportOptions options;
  std::string catalog_dir, out;
  for (std::size_t i = 1; i < args.size(); ++i) {
    std::string_view name = args[i];
    if (name == "--help" || name == "-h") {
      std::cout << kCatalogHelp;
      return kOk;
    }
    if (i + 1 >= args.size()) return usage(std::string(name) + " needs a value");
    std::string_view value = args[++i];
    if (name == "--format") {
      format = policy::parse_export_format(value);
      if (!format) return usage("--format must be hosts, dnsmasq, rpz or pac");
    } else if (name == "--category") {
      auto category = policy::parse_category(value);
      if (!category || *category == policy::Category::none) {
        return usage("unknown category '" + std::string(value) + "'");
      }
      options.categories.push_back(*category);
    } else if (name == "--proxy") {
      options.proxy = value;
    } else if (name == "--sinkhole") {
      if (!policy::IpAddress::parse(value)) return usage("--sinkhole needs an IP address");
      options.sinkhole = value;
    } else if (name == "--catalog-dir") {
      catalog_dir = value;
    } else if (name == "--out") {
      out = value;
    } else {
      return usage("unknown option for 'catalog export': " + std::string(name));
    }
  }
  if (!format) return usage("catalog export needs --format");
  auto catalog = load_catalog(catalog_dir);
  if (!catalog) {
    std::cerr << catalog.error() << "\n";
    return kUsage;
  }
  options.catalog_version = (*catalog)->version();
  std::string text = policy::export_catalog(**catalog, *format, options);
  if (out.empty()) {
    std::cout << text;
    std::cout.flush();
    return std::cout ? kOk : kFailure;
  }
  std::ofstream file(out, std::ios::trunc);
  file << text;
  if (!file) {
    std::cerr << "tokgate: " << out << ": cannot write\n";
    return kFailure;
  }
  return kOk;
}

}  // namespace tokgate::proxy
