// The catalog's host-level knowledge in formats DNS resolvers and browsers read, so a site can
// layer a DNS block under the proxy: hosts, dnsmasq, RPZ, and a PAC file.
#pragma once

#include <expected>
#include <string>
#include <string_view>
#include <vector>

#include "policy/catalog.hpp"

namespace tokgate::policy {

enum class ExportFormat : uint8_t { hosts, dnsmasq, rpz, pac };
std::optional<ExportFormat> parse_export_format(std::string_view name);

struct ExportOptions {
  std::vector<Category> categories;      // empty = every target category
  std::string sinkhole = "0.0.0.0";      // hosts / dnsmasq answer
  std::string proxy = "127.0.0.1:8080";  // PAC: where targeted names go
  std::string catalog_version;           // written in the header comment
};

std::string export_catalog(const Catalog& catalog, ExportFormat format,
                           const ExportOptions& options);

}  // namespace tokgate::policy
