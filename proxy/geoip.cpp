#include "proxy/geoip.hpp"

#include <arpa/inet.h>
#include <maxminddb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <system_error>

#include "proxy/utf8.hpp"

namespace tokgate::proxy {

namespace {

// The longest textual IPv6 address ("ffff:...:255.255.255.255") is 45 characters.
constexpr std::size_t kMaxAddressText = INET6_ADDRSTRLEN - 1;

// Lookups go through the sockaddr form, not MMDB_lookup_string: that calls getaddrinfo,
// whose numeric parse accepts "1.2.3" and "0x7f.1" and would turn a typo into some other
// address.
sockaddr_storage to_sockaddr(const IpBytes& bytes) {
  sockaddr_storage storage{};
  in6_addr v6addr{};
  std::memcpy(&v6addr, bytes.data(), bytes.size());
  if (IN6_IS_ADDR_V4MAPPED(&v6addr)) {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
    v4->sin_family = AF_INET;
    std::memcpy(&v4->sin_addr, bytes.data() + 12, 4);
  } else {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
    v6->sin6_family = AF_INET6;
    v6->sin6_addr = v6addr;
  }
  return storage;
}

// A database is input like any other: cut strings to a bound, keep only valid UTF-8 and no
// control characters (they end up in JSON lines, terminals and HTML).
std::string clean_string(std::string_view raw) {
  std::string out;
  out.reserve(std::min(raw.size(), GeoIp::kMaxStringBytes));
  while (!raw.empty()) {
    std::size_t length = utf8_sequence_length(raw);
    std::string_view piece = length == 0 ? std::string_view("?") : raw.substr(0, length);
    if (length == 1 && (static_cast<unsigned char>(raw[0]) < 0x20 || raw[0] == 0x7F)) {
      piece = "?";
    }
    if (out.size() + piece.size() > GeoIp::kMaxStringBytes) break;
    out.append(piece);
    raw.remove_prefix(length == 0 ? 1 : length);
  }
  return out;
}

std::optional<std::string_view> string_at(MMDB_entry_s entry, const char* const* path) {
  MMDB_entry_data_s data{};
  if (MMDB_aget_value(&entry, &data, path) != MMDB_SUCCESS || !data.has_data) return std::nullopt;
  if (data.type != MMDB_DATA_TYPE_UTF8_STRING) return std::nullopt;
  return std::string_view(data.utf8_string, data.data_size);
}

std::optional<uint64_t> unsigned_at(MMDB_entry_s entry, const char* const* path) {
  MMDB_entry_data_s data{};
  if (MMDB_aget_value(&entry, &data, path) != MMDB_SUCCESS || !data.has_data) return std::nullopt;
  switch (data.type) {
    case MMDB_DATA_TYPE_UINT16:
      return data.uint16;
    case MMDB_DATA_TYPE_UINT32:
      return data.uint32;
    case MMDB_DATA_TYPE_UINT64:
      return data.uint64;
    case MMDB_DATA_TYPE_INT32:
      if (data.int32 >= 0) return static_cast<uint64_t>(data.int32);
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

// "CN": exactly two ASCII letters, upper-cased. Anything else is not a country code.
std::optional<std::string> country_at(MMDB_entry_s entry, const char* const* path) {
  auto code = string_at(entry, path);
  if (!code || code->size() != 2) return std::nullopt;
  std::string out;
  for (char c : *code) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (c < 'A' || c > 'Z') return std::nullopt;
    out.push_back(c);
  }
  return out;
}

std::optional<MMDB_entry_s> find_entry(const MMDB_s* db, const sockaddr_storage& address) {
  if (db == nullptr) return std::nullopt;
  int mmdb_error = MMDB_SUCCESS;
  // Reads the mapped file only: safe from several threads on one MMDB_s.
  const MMDB_lookup_result_s result =
      MMDB_lookup_sockaddr(db, reinterpret_cast<const sockaddr*>(&address), &mmdb_error);
  // An IPv6 address in an IPv4-only database is an error here, and simply unknown to us.
  if (mmdb_error != MMDB_SUCCESS || !result.found_entry) return std::nullopt;
  return result.entry;
}

void fill_country(const std::optional<MMDB_entry_s>& entry, GeoInfo& info) {
  static constexpr const char* kCountry[] = {"country", "iso_code", nullptr};
  static constexpr const char* kRegistered[] = {"registered_country", "iso_code", nullptr};
  if (!entry || !info.country.empty()) return;
  if (auto code = country_at(*entry, kCountry)) {
    info.country = std::move(*code);
  } else if (auto registered = country_at(*entry, kRegistered)) {
    info.country = std::move(*registered);
  }
}

void fill_asn(const std::optional<MMDB_entry_s>& entry, GeoInfo& info) {
  static constexpr const char* kNumber[] = {"autonomous_system_number", nullptr};
  static constexpr const char* kOrganisation[] = {"autonomous_system_organization", nullptr};
  if (!entry || info.asn) return;
  auto number = unsigned_at(*entry, kNumber);
  if (!number || *number > UINT32_MAX) return;
  info.asn = static_cast<uint32_t>(*number);
  if (auto org = string_at(*entry, kOrganisation)) info.as_org = clean_string(*org);
}

std::string describe_one(std::string_view role, const MMDB_s* db,
                         const std::filesystem::path& path) {
  const auto& meta = db->metadata;
  std::string text(role);
  text += ": ";
  text += meta.database_type != nullptr ? clean_string(meta.database_type) : "?";
  text += " (IPv";
  text += std::to_string(meta.ip_version);
  text += ")";
  constexpr uint64_t kEndOfYear9999 = 253402300799;
  if (meta.build_epoch <= kEndOfYear9999) {
    const auto seconds = static_cast<std::time_t>(meta.build_epoch);
    std::tm utc{};
    char date[32];
    if (gmtime_r(&seconds, &utc) != nullptr &&
        std::strftime(date, sizeof date, "%Y-%m-%d", &utc) != 0) {
      text += " built ";
      text += date;
    }
  }
  text += " from ";
  text += path.string();
  return text;
}

}  // namespace

std::optional<IpBytes> parse_ip(std::string_view text) {
  if (text.empty() || text.size() > kMaxAddressText) return std::nullopt;
  if (text.find('\0') != std::string_view::npos) return std::nullopt;
  std::array<char, kMaxAddressText + 1> terminated{};
  std::memcpy(terminated.data(), text.data(), text.size());

  IpBytes bytes{};
  if (text.find(':') == std::string_view::npos) {
    // glibc's inet_pton(AF_INET) takes exactly four decimal parts, no leading zeros.
    if (inet_pton(AF_INET, terminated.data(), bytes.data() + 12) != 1) return std::nullopt;
    bytes[10] = 0xff;
    bytes[11] = 0xff;
    return bytes;
  }
  if (inet_pton(AF_INET6, terminated.data(), bytes.data()) != 1) return std::nullopt;
  return bytes;
}

void GeoIp::Closer::operator()(MMDB_s* db) const {
  MMDB_close(db);
  delete db;
}

std::expected<GeoIp, std::string> GeoIp::open(const std::filesystem::path& country_db,
                                              const std::filesystem::path& asn_db) {
  auto open_one = [](const std::filesystem::path& path) -> std::expected<Database, std::string> {
    const std::string prefix = "GeoIP database " + path.string() + ": ";
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec) return std::unexpected(prefix + ec.message());
    if (!std::filesystem::exists(status)) return std::unexpected(prefix + "no such file");
    if (!std::filesystem::is_regular_file(status)) {
      return std::unexpected(prefix + "not a regular file");
    }
    // MMDB_open frees what it allocated when it fails: MMDB_close only after success.
    auto db = std::make_unique<MMDB_s>();
    errno = 0;
    const int rc = MMDB_open(path.c_str(), MMDB_MODE_MMAP, db.get());
    const int open_errno = errno;
    if (rc != MMDB_SUCCESS) {
      std::string message = prefix + MMDB_strerror(rc);
      if ((rc == MMDB_IO_ERROR || rc == MMDB_FILE_OPEN_ERROR) && open_errno != 0) {
        message += " (" + std::string(std::strerror(open_errno)) + ")";
      }
      return std::unexpected(message);
    }
    return Database(db.release());
  };

  GeoIp geoip;
  if (!country_db.empty()) {
    auto db = open_one(country_db);
    if (!db) return std::unexpected(db.error());
    geoip.country_db_ = std::move(*db);
    geoip.country_path_ = country_db;
  }
  if (!asn_db.empty()) {
    auto db = open_one(asn_db);
    if (!db) return std::unexpected(db.error());
    geoip.asn_db_ = std::move(*db);
    geoip.asn_path_ = asn_db;
  }
  return geoip;
}

GeoInfo GeoIp::lookup(std::string_view ip) const {
  GeoInfo info;
  if (empty()) return info;
  const auto bytes = parse_ip(ip);
  if (!bytes) return info;
  const sockaddr_storage address = to_sockaddr(*bytes);
  const auto in_country_db = find_entry(country_db_.get(), address);
  const auto in_asn_db = find_entry(asn_db_.get(), address);
  fill_country(in_country_db, info);
  fill_country(in_asn_db, info);
  fill_asn(in_asn_db, info);
  fill_asn(in_country_db, info);
  return info;
}

std::string GeoIp::describe() const {
  if (empty()) return "no GeoIP database";
  std::string text;
  if (country_db_) text = describe_one("country", country_db_.get(), country_path_);
  if (asn_db_) {
    if (!text.empty()) text += "; ";
    text += describe_one("asn", asn_db_.get(), asn_path_);
  }
  return text;
}

}  // namespace tokgate::proxy
