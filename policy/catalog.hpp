// The traffic catalog: what TikTok, ByteDance and WeChat traffic looks like, as data (TOML files
// in policy/catalog/, embedded at build time, overridable from a directory), compiled once per
// load into lookup tables, and the classifier that applies it to a request.
#pragma once

#include <cstddef>
#include <expected>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "policy/types.hpp"

namespace tokgate::policy {

struct CatalogSource {
  std::string name;  // used in error messages: "policy/catalog/tiktok.toml" or a file path
  std::string text;  // TOML
};

class CatalogData;  // the compiled tables (catalog.cpp)

class Catalog {
 public:
  // Parses and compiles. Errors are "NAME:LINE:COL: what is wrong", one per line, all of them.
  static std::expected<std::shared_ptr<const Catalog>, std::string> compile(
      std::span<const CatalogSource> sources);
  // The catalog files embedded in the binary.
  static std::vector<CatalogSource> embedded_sources();
  // Every *.toml in dir, in name order; a file named like an embedded one replaces it, others add.
  static std::expected<std::vector<CatalogSource>, std::string> sources_with_overrides(
      const std::filesystem::path& dir);

  ~Catalog();
  Catalog(const Catalog&) = delete;
  Catalog& operator=(const Catalog&) = delete;

  // A short stable digest of the sources, e.g. "c1a2b3d4e5f6" (for logs, /status, explain).
  const std::string& version() const;
  std::size_t entry_count() const;

  // The full request stage: host, path, query, User-Agent, headers. Never allocates more than
  // the evidence vector; views in the result point into the catalog (which must outlive it).
  Classification classify(const RequestFacts& facts) const;
  // The connection stage: SNI or CONNECT host only.
  Classification classify_host(std::string_view normalized_host) const;

  // Host-level knowledge for DNS blocklists and PAC files: every domain suffix and exact host
  // name of the catalog with the category it gives. Shared-CDN exact names are included;
  // path/UA/header evidence cannot be expressed there and is not.
  struct HostEntry {
    std::string name;  // "tiktokv.com"
    bool include_subdomains = true;
    Category category = Category::none;
    std::string_view signature;  // catalog entry id
  };
  std::vector<HostEntry> host_entries() const;

 private:
  explicit Catalog(std::unique_ptr<CatalogData> data);
  std::unique_ptr<CatalogData> data_;
};

}  // namespace tokgate::policy
