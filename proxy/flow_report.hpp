// `tokgate report`: reads flow-log files (JSON lines, docs/flow-log.md) and answers "where does
// this traffic go": flows, bytes and distinct origin IPs per destination country, per
// autonomous system, and per category × country. docs/report.md says how to read it.
//
// What counts:
// - Records of type "request" and "connection" only; a flow is one record (a request, or a
//   connection that carried no request of its own), so nothing is counted twice.
// - Bytes are bytes_up + bytes_down. A decrypted (bumped) connection's bytes are counted from
//   its request records; a "connection" record adds its bytes only when it was not bumped
//   (spliced, refused, or bumped absent), because a bumped connection's tunnel bytes are the
//   same bytes its requests already carry.
// - The country is the record's upstream_country, or, when the record has none and a GeoIp is
//   given, the lookup of its upstream_ip; otherwise the flow's country is unknown.
//
// Input is hostile: lines over 1 MiB, invalid JSON or UTF-8, non-objects are skipped and
// counted; fields of the wrong type are ignored and counted; the number of distinct keys and
// IPs tracked is bounded (flows beyond the bound are still counted, in an "other" row).
#pragma once

#include <cstdint>
#include <istream>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/geoip.hpp"

namespace tokgate::proxy {

struct ReportTally {
  uint64_t flows = 0;
  uint64_t bytes = 0;

  bool operator==(const ReportTally&) const = default;
};

struct ReportCountryRow {
  std::string country;  // "" = unknown
  ReportTally tally;
  uint64_t distinct_ips = 0;  // distinct upstream_ip values (valid addresses only)
};

struct ReportAsnRow {
  std::optional<uint32_t> asn;  // nullopt = unknown
  std::string as_org;           // the first name seen for this ASN
  ReportTally tally;
};

struct ReportCategoryRow {
  std::string category;  // "" = absent
  std::string country;   // "" = unknown
  ReportTally tally;
};

struct FlowReport {
  // Input accounting.
  uint64_t lines = 0;            // non-blank lines read
  uint64_t malformed_lines = 0;  // too long, not JSON, not an object
  uint64_t ignored_records = 0;  // other types, or filtered out by --category
  uint64_t invalid_fields = 0;   // counted records with a field of the wrong type or form
  std::string category_filter;   // "" = all categories

  ReportTally total;
  ReportTally unknown_country;
  bool distinct_ips_capped = false;  // more distinct IPs than tracked: counts are lower bounds

  // Sorted by flows, then bytes, descending; then by key.
  std::vector<ReportCountryRow> by_country;
  std::vector<ReportAsnRow> by_asn;
  std::vector<ReportCategoryRow> by_category;
  // Flows whose key arrived after the bound on distinct keys was reached.
  ReportTally asn_overflow;
  ReportTally category_overflow;
};

struct ReportInputStats {
  uint64_t lines = 0;
  uint64_t malformed_lines = 0;
  uint64_t first_malformed_line = 0;  // 1-based; 0 = none
  bool read_error = false;
};

class FlowReportBuilder {
 public:
  static constexpr std::size_t kMaxLineBytes = 1024 * 1024;
  static constexpr std::size_t kMaxKeys = 100'000;           // ASNs, category × country pairs
  static constexpr std::size_t kMaxDistinctIps = 1'000'000;  // over all countries
  static constexpr std::size_t kMaxLabelBytes = 64;          // category
  static constexpr std::size_t kMaxOrgBytes = 256;           // upstream_as_org

  // `category`: count only records of this category ("" = all). `geoip` (may be null, must
  // outlive the builder) fills in country and ASN for records that lack them.
  explicit FlowReportBuilder(std::string category = {}, const GeoIp* geoip = nullptr);

  // Reads JSON lines to the end of `in`.
  ReportInputStats add_stream(std::istream& in);
  // One line without its newline. Returns false when it was malformed.
  bool add_line(std::string_view line);

  FlowReport result() const;

 private:
  enum class LineOutcome { blank, counted, malformed };
  // `too_long`: the reader dropped a line over kMaxLineBytes (`line` is then empty).
  LineOutcome consume(std::string_view line, bool too_long);

  struct CountryAggregate {
    ReportTally tally;
    std::set<IpBytes> ips;
  };
  struct AsnAggregate {
    ReportTally tally;
    std::string as_org;
  };

  std::string category_filter_;
  const GeoIp* geoip_;
  FlowReport counters_;  // input accounting and totals; rows are built by result()
  std::size_t distinct_ips_ = 0;
  std::map<std::string, CountryAggregate> countries_;
  std::map<uint32_t, AsnAggregate> asns_;
  ReportTally unknown_asn_;
  std::map<std::pair<std::string, std::string>, ReportTally> categories_;
};

// All of `in` with default options.
FlowReport build_report(std::istream& in, std::string category = {}, const GeoIp* geoip = nullptr);

struct ReportView {
  bool country = true;
  bool asn = true;
  bool category = true;
  std::size_t top = 20;  // rows per section; the rest are summed in one "other" row; 0 = all
};

// Aligned text tables for a terminal; shares in percent.
std::string render_report_text(const FlowReport& report, const ReportView& view);
// One JSON object (with a trailing newline); shares as fractions 0..1, keys documented in
// docs/report.md.
std::string render_report_json(const FlowReport& report, const ReportView& view);

// `tokgate report ARGS...` (the arguments after "report"). Returns the exit code: 0 ok, 1 an
// input could not be read, 2 usage error.
int report_main(std::span<const std::string_view> args);

}  // namespace tokgate::proxy
