#include "policy/catalog_export.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>

#include "policy/host_pattern.hpp"
#include "policy/net_types.hpp"

namespace tokgate::policy {
namespace {

using namespace std::literals;

struct Name {
  std::string name;  // normal form
  bool include_subdomains = false;
};

// Orders names the way DNS does (by labels from the right), so a domain and its subdomains sit
// together: "tiktok.com" < "analytics.tiktok.com" < "tiktokcdn.com".
std::string dns_order_key(std::string_view name) {
  std::string key;
  key.reserve(name.size() + 1);
  std::size_t end = name.size();
  while (true) {
    auto dot = name.rfind('.', end - 1);
    std::size_t start = dot == std::string_view::npos ? 0 : dot + 1;
    key.append(name.substr(start, end - start));
    key.push_back('\0');  // below every name character: a parent sorts before its children
    if (dot == std::string_view::npos || dot == 0) break;
    end = dot;
  }
  return key;
}

bool is_ip_literal(std::string_view name) {
  return IpAddress::parse(name).has_value();
}

// True if `name` is `suffix` or lies below it on a label boundary.
bool at_or_below(std::string_view name, std::string_view suffix) {
  if (name == suffix) return true;
  return name.size() > suffix.size() && name.ends_with(suffix) &&
         name[name.size() - suffix.size() - 1] == '.';
}

// The selected host entries, normalised, deduplicated and sorted. A name given both exactly
// and with its subdomains keeps the wider form.
std::vector<Name> select_names(const Catalog& catalog, const ExportOptions& options) {
  uint32_t wanted = 0;
  if (options.categories.empty()) {
    for (std::size_t i = 0; i < kCategoryCount; ++i) {
      if (is_target(static_cast<Category>(i))) wanted |= 1u << i;
    }
  } else {
    for (Category category : options.categories) {
      if (static_cast<std::size_t>(category) < kCategoryCount) {
        wanted |= 1u << static_cast<unsigned>(category);
      }
    }
  }
  std::vector<std::pair<std::string, Name>> keyed;
  for (const Catalog::HostEntry& entry : catalog.host_entries()) {
    if (static_cast<std::size_t>(entry.category) >= kCategoryCount ||
        (wanted & (1u << static_cast<unsigned>(entry.category))) == 0) {
      continue;
    }
    // Only real DNS names: the formats below cannot hold anything else, and an odd catalog
    // entry must not produce a line a resolver misreads.
    auto name = normalize_host(entry.name);
    if (!name || name->empty() || is_ip_literal(*name)) continue;
    auto key = dns_order_key(*name);
    keyed.push_back({std::move(key), Name{std::move(*name), entry.include_subdomains}});
  }
  std::sort(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) {
    // Same name: the subdomain-including form first, so unique() keeps it.
    return std::tie(a.first, b.second.include_subdomains) <
           std::tie(b.first, a.second.include_subdomains);
  });
  keyed.erase(std::unique(keyed.begin(), keyed.end(),
                          [](const auto& a, const auto& b) { return a.first == b.first; }),
              keyed.end());
  std::vector<Name> names;
  names.reserve(keyed.size());
  for (auto& [key, name] : keyed) names.push_back(std::move(name));
  return names;
}

// Drops names a kept subdomain-including name already covers (formats that match subdomains
// need only the widest name). The input is in DNS order, so a covering name comes first.
std::vector<Name> without_covered(std::vector<Name> names) {
  std::vector<Name> kept;
  constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  std::size_t covering = kNone;  // index in `kept` of the domain enclosing the current name
  for (auto& name : names) {
    if (covering != kNone && at_or_below(name.name, kept[covering].name)) continue;
    covering = kNone;
    kept.push_back(std::move(name));
    if (kept.back().include_subdomains) covering = kept.size() - 1;
  }
  return kept;
}

// Text the caller passed in (sinkhole, proxy, version) goes into generated files: keep it on
// one line and free of anything the target syntax would read as structure.
std::string sanitized(std::string_view text, std::string_view extra_forbidden) {
  std::string out;
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x21 || u >= 0x7f || extra_forbidden.find(c) != std::string_view::npos) continue;
    out.push_back(c);
  }
  return out;
}

std::string category_list(const ExportOptions& options) {
  std::string out;
  if (options.categories.empty()) return "every target category";
  for (Category category : options.categories) {
    if (!out.empty()) out += ", ";
    out += to_string(category);
  }
  return out;
}

// The header every format starts with; `comment` is the format's comment prefix.
std::string header(std::string_view comment, std::string_view format, const ExportOptions& options,
                   std::size_t count, std::span<const std::string_view> notes) {
  std::string version = sanitized(options.catalog_version, ""sv);
  if (version.empty()) version = "unknown";
  std::string out;
  auto line = [&](std::string_view text) {
    out += comment;
    if (!text.empty()) {
      out += ' ';
      out += text;
    }
    out += '\n';
  };
  line("Generated by `tokgate catalog export` (" + std::string(format) + " format) from catalog " +
       version + ".");
  line("Categories: " + category_list(options) + ". Names: " + std::to_string(count) + ".");
  line("Do not edit: regenerate it when the catalog changes.");
  for (auto note : notes) line(note);
  line("");
  return out;
}

std::string export_hosts(const Catalog& catalog, const ExportOptions& options) {
  auto names = select_names(catalog, options);
  std::string sinkhole = sanitized(options.sinkhole, "#"sv);
  if (sinkhole.empty()) sinkhole = "0.0.0.0";
  static constexpr std::array kNotes = {
      "A hosts file matches exact names only: it cannot block subdomains. Each domain below is"sv,
      "listed by its own name; hosts under it that are not listed are NOT blocked. Use the"sv,
      "dnsmasq or RPZ export to block whole domains."sv,
  };
  std::string out = header("#", "hosts", options, names.size(), kNotes);
  for (const auto& name : names) out += sinkhole + ' ' + name.name + '\n';
  return out;
}

std::string export_dnsmasq(const Catalog& catalog, const ExportOptions& options) {
  auto names = without_covered(select_names(catalog, options));
  std::string sinkhole = sanitized(options.sinkhole, "/"sv);
  if (sinkhole.empty()) sinkhole = "0.0.0.0";
  static constexpr std::array kNotes = {
      "address=/NAME/ADDR answers for NAME and every name below it. The catalog's exact"sv,
      "host names (single hosts, such as TikTok's names on shared CDNs) are included too: they"sv,
      "name one host, so also covering the names below them blocks nothing else."sv,
      "Names covered by a listed parent domain are left out."sv,
  };
  std::string out = header("#", "dnsmasq", options, names.size(), kNotes);
  for (const auto& name : names) out += "address=/" + name.name + '/' + sinkhole + '\n';
  return out;
}

std::string export_rpz(const Catalog& catalog, const ExportOptions& options) {
  auto names = without_covered(select_names(catalog, options));
  static constexpr std::array kNotes = {
      "A DNS Response Policy Zone: load it as a zone of type primary and name it in the"sv,
      "resolver's response-policy (BIND) or rpz (Unbound, Knot, PowerDNS) setting. Every name"sv,
      "answers NXDOMAIN (CNAME .); a domain's subdomains are covered by its *.NAME line."sv,
      "The SOA serial is fixed at 1 so the output is reproducible: raise it yourself if"sv,
      "secondaries transfer this zone."sv,
  };
  std::string out = header(";", "rpz", options, names.size(), kNotes);
  out +=
      "$TTL 300\n"
      "@ IN SOA localhost. hostmaster.localhost. 1 3600 600 604800 300\n"
      "@ IN NS localhost.\n"
      "\n";
  for (const auto& name : names) {
    out += name.name + " CNAME .\n";
    if (name.include_subdomains) out += "*." + name.name + " CNAME .\n";
  }
  return out;
}

// A PAC file every engine runs (ES3 subset: var, for, indexOf; no let/const/Set): two lookup
// tables, and a walk up the host's labels, so each lookup costs one probe per label whatever
// the number of names, and "nottiktok.com" can never match "tiktok.com".
std::string export_pac(const Catalog& catalog, const ExportOptions& options) {
  auto names = without_covered(select_names(catalog, options));
  std::string proxy = sanitized(options.proxy, "\"'\\;"sv);
  if (proxy.empty()) proxy = "127.0.0.1:8080";
  static constexpr std::array kNotes = {
      "Sends the catalog's names (and the names below its domains) to the tokgate proxy and"sv,
      "everything else DIRECT. There is no DIRECT fallback for those names: if the proxy is"sv,
      "down they fail rather than bypass it."sv,
  };
  std::string out = header("//", "pac", options, names.size(), kNotes);
  auto table = [&](std::string_view variable, bool include_subdomains) {
    out += "var ";
    out += variable;
    out += " = {";
    bool first = true;
    for (const auto& name : names) {
      if (name.include_subdomains != include_subdomains) continue;
      out += first ? "\n  \"" : ",\n  \"";
      out += name.name;  // normal form: [a-z0-9-_.] only, nothing to escape
      out += "\": 1";
      first = false;
    }
    out += first ? "};\n" : "\n};\n";
  };
  table("TOKGATE_DOMAINS", true);  // the name and every name below it
  table("TOKGATE_HOSTS", false);   // exactly that name
  out += "var TOKGATE_PROXY = \"PROXY " + proxy + "\";\n";
  out +=
      "\n"
      "function FindProxyForURL(url, host) {\n"
      "  var name = String(host).toLowerCase();\n"
      "  if (name.charAt(name.length - 1) === \".\") name = name.substring(0, name.length - 1);\n"
      "  var has = Object.prototype.hasOwnProperty;\n"
      "  if (has.call(TOKGATE_HOSTS, name)) return TOKGATE_PROXY;\n"
      "  for (;;) {\n"
      "    if (has.call(TOKGATE_DOMAINS, name)) return TOKGATE_PROXY;\n"
      "    var dot = name.indexOf(\".\");\n"
      "    if (dot < 0) return \"DIRECT\";\n"
      "    name = name.substring(dot + 1);\n"
      "  }\n"
      "}\n";
  return out;
}

}  // namespace

std::optional<ExportFormat> parse_export_format(std::string_view name) {
  if (name == "hosts") return ExportFormat::hosts;
  if (name == "dnsmasq") return ExportFormat::dnsmasq;
  if (name == "rpz") return ExportFormat::rpz;
  if (name == "pac") return ExportFormat::pac;
  return std::nullopt;
}

std::string export_catalog(const Catalog& catalog, ExportFormat format,
                           const ExportOptions& options) {
  switch (format) {
    case ExportFormat::hosts:
      return export_hosts(catalog, options);
    case ExportFormat::dnsmasq:
      return export_dnsmasq(catalog, options);
    case ExportFormat::rpz:
      return export_rpz(catalog, options);
    case ExportFormat::pac:
      return export_pac(catalog, options);
  }
  return {};
}

}  // namespace tokgate::policy
