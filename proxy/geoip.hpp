// Country and autonomous-system lookups for origin addresses, from MaxMind DB (.mmdb) files:
// MaxMind GeoLite2-Country/City and GeoLite2-ASN, DB-IP Lite country and ASN, or any database
// with the same field names (a single file may carry both kinds). Feeds upstream_country,
// upstream_asn and upstream_as_org in the flow record (docs/flow-log.md).
//
// Threads: open() once, then lookup() from any number of threads at once. libmaxminddb only
// reads the memory-mapped file after MMDB_open, and lookup() keeps no state of its own.
#pragma once

#include <array>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

struct MMDB_s;

namespace tokgate::proxy {

// What the databases say about one address. An empty string or nullopt means the databases
// do not say (no database, no entry, malformed address): never a guess.
struct GeoInfo {
  std::string country;  // ISO 3166-1 alpha-2, upper case: "CN"
  std::optional<uint32_t> asn;
  std::string as_org;  // at most GeoIp::kMaxStringBytes, control characters replaced

  bool operator==(const GeoInfo&) const = default;
};

// An address as 16 bytes: IPv6 as is, IPv4 (and IPv4-mapped IPv6) as ::ffff:a.b.c.d.
using IpBytes = std::array<uint8_t, 16>;

// Strict numeric parse: "1.2.3.4", "2001:db8::1", "::ffff:1.2.3.4". Shorthand IPv4 ("1.2.3",
// "0x7f.1"), brackets, zone ids ("fe80::1%eth0") and anything over 45 characters fail.
std::optional<IpBytes> parse_ip(std::string_view text);

class GeoIp {
 public:
  // Strings taken from a database are cut to this many bytes (at a UTF-8 boundary).
  static constexpr std::size_t kMaxStringBytes = 256;

  // Either path may be empty (that database is not used); both empty gives an empty GeoIp
  // whose lookups say nothing. Each database is searched for both kinds of fields, the
  // country database first for the country and the ASN database first for the ASN. Errors
  // name the file and say what libmaxminddb (or the file system) reported.
  static std::expected<GeoIp, std::string> open(const std::filesystem::path& country_db,
                                                const std::filesystem::path& asn_db);

  GeoIp() = default;  // empty
  GeoIp(GeoIp&&) noexcept = default;
  GeoIp& operator=(GeoIp&&) noexcept = default;
  GeoIp(const GeoIp&) = delete;
  GeoIp& operator=(const GeoIp&) = delete;
  ~GeoIp() = default;

  // Any address parse_ip() accepts; IPv4-mapped IPv6 is looked up as IPv4 (so it is found in
  // IPv4-only databases too). Anything parse_ip() refuses finds nothing.
  GeoInfo lookup(std::string_view ip) const;

  // No database open.
  bool empty() const { return !country_db_ && !asn_db_; }

  // For the status page: "country: GeoLite2-Country (IPv6) built 2024-05-01 from FILE;
  // asn: ..." or "no GeoIP database".
  std::string describe() const;

 private:
  struct Closer {
    void operator()(MMDB_s* db) const;
  };
  using Database = std::unique_ptr<MMDB_s, Closer>;

  Database country_db_;
  Database asn_db_;
  std::filesystem::path country_path_;
  std::filesystem::path asn_path_;
};

}  // namespace tokgate::proxy
