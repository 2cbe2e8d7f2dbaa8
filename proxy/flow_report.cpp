#include "proxy/flow_report.hpp"

#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <tuple>

namespace tokgate::proxy {

namespace {

constexpr int kExitOk = 0;
constexpr int kExitInput = 1;
constexpr int kExitUsage = 2;

constexpr std::size_t kReadChunkBytes = 64 * 1024;
// Display cut for organisation names in the text table (the JSON keeps them whole).
constexpr std::size_t kMaxOrgColumn = 48;
constexpr std::size_t kMaxTop = 1'000'000;

uint64_t saturating_add(uint64_t a, uint64_t b) {
  return b > std::numeric_limits<uint64_t>::max() - a ? std::numeric_limits<uint64_t>::max()
                                                      : a + b;
}

void count_flow(ReportTally& tally, uint64_t bytes) {
  tally.flows = saturating_add(tally.flows, 1);
  tally.bytes = saturating_add(tally.bytes, bytes);
}

void add_tally(ReportTally& into, const ReportTally& from) {
  into.flows = saturating_add(into.flows, from.flows);
  into.bytes = saturating_add(into.bytes, from.bytes);
}

// Reads lines of at most kMaxLineBytes through a fixed buffer: a longer line is reported as
// too long and skipped to its end without being kept.
class LineReader {
 public:
  enum class Status { line, too_long, end };

  explicit LineReader(std::istream& in) : in_(in), buffer_(kReadChunkBytes) {}

  Status next(std::string& line) {
    line.clear();
    bool too_long = false;
    bool any = false;
    for (;;) {
      if (pos_ == end_ && !fill()) {
        if (!any) return Status::end;
        break;  // a last line without a newline
      }
      any = true;
      const char* start = buffer_.data() + pos_;
      const auto* newline = static_cast<const char*>(std::memchr(start, '\n', end_ - pos_));
      const std::size_t chunk = newline != nullptr ? newline - start : end_ - pos_;
      if (!too_long) {
        if (line.size() + chunk > FlowReportBuilder::kMaxLineBytes) {
          too_long = true;
          std::string().swap(line);
        } else {
          line.append(start, chunk);
        }
      }
      pos_ += chunk;
      if (newline != nullptr) {
        ++pos_;
        break;
      }
    }
    return too_long ? Status::too_long : Status::line;
  }

  bool read_error() const { return in_.bad(); }

 private:
  bool fill() {
    if (!in_) return false;
    in_.read(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
    pos_ = 0;
    end_ = static_cast<std::size_t>(in_.gcount());
    return end_ > 0;
  }

  std::istream& in_;
  std::vector<char> buffer_;
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
};

// Cuts valid UTF-8 to at most `max_bytes` at a character boundary, and replaces C0 and C1
// control characters (they would reach terminals) with '?'.
std::string clean_label(std::string_view text, std::size_t max_bytes) {
  if (text.size() > max_bytes) {
    std::size_t cut = max_bytes;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    text = text.substr(0, cut);
  }
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x20 || byte == 0x7F) {
      out.push_back('?');
    } else if (byte == 0xC2 && i + 1 < text.size() &&
               static_cast<unsigned char>(text[i + 1]) <= 0x9F) {
      out.push_back('?');  // U+0080..U+009F
      ++i;
    } else {
      out.push_back(static_cast<char>(byte));
    }
  }
  return out;
}

std::optional<uint64_t> as_unsigned(const boost::json::value& value) {
  if (value.is_uint64()) return value.get_uint64();
  if (value.is_int64() && value.get_int64() >= 0) return static_cast<uint64_t>(value.get_int64());
  return std::nullopt;
}

// "CN"; lower case is accepted and raised. Anything else is not a country code.
std::optional<std::string> as_country(std::string_view text) {
  if (text.size() != 2) return std::nullopt;
  std::string out;
  for (char c : text) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (c < 'A' || c > 'Z') return std::nullopt;
    out.push_back(c);
  }
  return out;
}

// Reads optional fields of one record, counting those present with the wrong type or form.
class FieldReader {
 public:
  explicit FieldReader(const boost::json::object& object) : object_(object) {}

  std::optional<std::string_view> string(std::string_view key) {
    const auto* value = object_.if_contains(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_string()) return invalid<std::string_view>();
    return std::string_view(value->get_string());
  }
  std::optional<uint64_t> number(std::string_view key, uint64_t max) {
    const auto* value = object_.if_contains(key);
    if (value == nullptr) return std::nullopt;
    auto number = as_unsigned(*value);
    if (!number || *number > max) return invalid<uint64_t>();
    return number;
  }
  std::optional<bool> boolean(std::string_view key) {
    const auto* value = object_.if_contains(key);
    if (value == nullptr) return std::nullopt;
    if (!value->is_bool()) return invalid<bool>();
    return value->get_bool();
  }
  void mark_invalid() { ++invalid_; }
  template <typename T>
  std::optional<T> invalid() {
    mark_invalid();
    return std::nullopt;
  }
  uint64_t invalid_count() const { return invalid_; }

 private:
  const boost::json::object& object_;
  uint64_t invalid_ = 0;
};

template <typename Row, typename Key>
void sort_rows(std::vector<Row>& rows, Key key) {
  std::sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
    if (a.tally.flows != b.tally.flows) return a.tally.flows > b.tally.flows;
    if (a.tally.bytes != b.tally.bytes) return a.tally.bytes > b.tally.bytes;
    return key(a) < key(b);
  });
}

double share(uint64_t part, uint64_t whole) {
  return whole == 0 ? 0.0 : static_cast<double>(part) / static_cast<double>(whole);
}

std::string percent(uint64_t part, uint64_t whole) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f%%", 100.0 * share(part, whole));
  return text;
}

std::string human_bytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  return text;
}

std::size_t display_width(std::string_view text) {
  // Code points, not bytes: close enough for names in Latin, Cyrillic and similar scripts.
  return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }));
}

std::string cut_for_display(std::string_view text, std::size_t max_width) {
  if (display_width(text) <= max_width) return std::string(text);
  std::size_t width = 0;
  std::size_t end = 0;
  while (end < text.size()) {
    if ((static_cast<unsigned char>(text[end]) & 0xC0) != 0x80) {
      if (width == max_width - 1) break;
      ++width;
    }
    ++end;
  }
  return std::string(text.substr(0, end)) + "\u2026";
}

struct Column {
  std::string_view title;
  bool right_aligned;
};

std::string format_table(std::span<const Column> columns,
                         const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& column : columns) widths.push_back(display_width(column.title));
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], display_width(row[i]));
    }
  }
  std::string out;
  auto emit = [&](auto cell_at) {
    std::string line;
    for (std::size_t i = 0; i < columns.size(); ++i) {
      const std::string_view cell = cell_at(i);
      const std::size_t pad = widths[i] - display_width(cell);
      if (i > 0) line += "  ";
      if (columns[i].right_aligned) line.append(pad, ' ');
      line += cell;
      if (!columns[i].right_aligned) line.append(pad, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  };
  emit([&](std::size_t i) { return columns[i].title; });
  for (const auto& row : rows) {
    emit([&](std::size_t i) { return i < row.size() ? std::string_view(row[i]) : ""; });
  }
  return out;
}

// The rows shown under `top`, and the sum of the rest plus the flows past the key bound.
struct OtherRows {
  std::size_t rows = 0;
  ReportTally tally;
  bool any() const { return rows > 0 || tally.flows > 0; }
};

template <typename Row>
std::pair<std::span<const Row>, OtherRows> split_top(const std::vector<Row>& rows, std::size_t top,
                                                     const ReportTally& overflow) {
  const std::size_t shown = top == 0 ? rows.size() : std::min(top, rows.size());
  OtherRows other;
  other.rows = rows.size() - shown;
  for (std::size_t i = shown; i < rows.size(); ++i) add_tally(other.tally, rows[i].tally);
  add_tally(other.tally, overflow);
  return {std::span<const Row>(rows.data(), shown), other};
}

std::string other_label(const OtherRows& other) {
  return other.rows > 0 ? "(" + std::to_string(other.rows) + " more)" : "(other)";
}

std::string country_label(std::string_view country) {
  return country.empty() ? "(unknown)" : std::string(country);
}

// Flows and bytes per category, over all its rows (for the share within a category).
std::map<std::string, ReportTally> category_totals(const FlowReport& report) {
  std::map<std::string, ReportTally> totals;
  for (const auto& row : report.by_category) add_tally(totals[row.category], row.tally);
  return totals;
}

// Writes the report's JSON by hand: Boost.JSON prints every double in exponent form
// ("3.9E-1"), and shares read better as plain decimals.
class JsonWriter {
 public:
  JsonWriter& open_object() { return open('{'); }
  JsonWriter& close_object() { return close('}'); }
  JsonWriter& open_array() { return open('['); }
  JsonWriter& close_array() { return close(']'); }
  JsonWriter& key(std::string_view name) {
    separate();
    out_ += boost::json::serialize(name);
    out_ += ':';
    need_comma_ = false;
    return *this;
  }
  JsonWriter& number(uint64_t value) { return raw(std::to_string(value)); }
  JsonWriter& boolean(bool value) { return raw(value ? "true" : "false"); }
  JsonWriter& text(std::string_view value) { return raw(boost::json::serialize(value)); }
  // A fraction with at most six decimals: 0.39, 1, 0.196667.
  JsonWriter& fraction(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.6f", value);
    std::string text = buffer;
    while (text.back() == '0') text.pop_back();
    if (text.back() == '.') text.pop_back();
    return raw(text);
  }
  JsonWriter& tally(const ReportTally& tally, const ReportTally& total) {
    key("flows").number(tally.flows).key("flows_share").fraction(share(tally.flows, total.flows));
    key("bytes").number(tally.bytes).key("bytes_share").fraction(share(tally.bytes, total.bytes));
    return *this;
  }
  std::string take() { return std::move(out_); }

 private:
  JsonWriter& open(char bracket) {
    separate();
    out_ += bracket;
    need_comma_ = false;
    return *this;
  }
  JsonWriter& close(char bracket) {
    out_ += bracket;
    need_comma_ = true;
    return *this;
  }
  JsonWriter& raw(std::string_view text) {
    separate();
    out_ += text;
    need_comma_ = true;
    return *this;
  }
  void separate() {
    if (need_comma_) out_ += ',';
  }

  std::string out_;
  bool need_comma_ = false;
};

// "other": the rows past --top and the flows past the key bound, summed.
void write_other(JsonWriter& json, const OtherRows& other, const ReportTally& total) {
  if (!other.any()) return;
  json.key("other").open_object().key("rows").number(other.rows).tally(other.tally, total);
  json.close_object();
}

constexpr std::string_view kUsage = R"(usage: tokgate report [options] FILE...

Reads flow-log files (JSON lines; FILE "-" is standard input) and shows where the traffic
goes: flows, bytes and distinct origin IPs per destination country, per autonomous system,
and per category and country (see docs/report.md).

options:
  --json                   one JSON object instead of tables
  --by country|asn|category
                           show only this section (may be repeated; default: all three)
  --category NAME          count only flows of this category (e.g. app-api)
  --top N                  rows per section, the rest summed in one row (default 20; 0 = all)
  --geoip-country FILE     .mmdb to look up the country of records that have none
  --geoip-asn FILE         .mmdb to look up the AS of records that have none
  -h, --help               this text
)";

int usage_error(std::string_view message) {
  std::cerr << "tokgate report: " << message << "\n(see tokgate report --help)\n";
  return kExitUsage;
}

std::optional<std::size_t> parse_count(std::string_view text, std::size_t max) {
  std::size_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || value > max) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

FlowReportBuilder::FlowReportBuilder(std::string category, const GeoIp* geoip)
    : category_filter_(std::move(category)), geoip_(geoip) {
  counters_.category_filter = category_filter_;
}

ReportInputStats FlowReportBuilder::add_stream(std::istream& in) {
  ReportInputStats stats;
  LineReader reader(in);
  std::string line;
  uint64_t line_number = 0;
  for (;;) {
    const auto status = reader.next(line);
    if (status == LineReader::Status::end) break;
    ++line_number;
    const LineOutcome outcome = consume(line, status == LineReader::Status::too_long);
    if (outcome == LineOutcome::blank) continue;
    ++stats.lines;
    if (outcome == LineOutcome::malformed) {
      ++stats.malformed_lines;
      if (stats.first_malformed_line == 0) stats.first_malformed_line = line_number;
    }
  }
  stats.read_error = reader.read_error();
  return stats;
}

bool FlowReportBuilder::add_line(std::string_view line) {
  return consume(line, line.size() > kMaxLineBytes) != LineOutcome::malformed;
}

FlowReportBuilder::LineOutcome FlowReportBuilder::consume(std::string_view line, bool too_long) {
  if (!too_long && line.find_first_not_of(" \t\r") == std::string_view::npos) {
    return LineOutcome::blank;
  }
  ++counters_.lines;
  boost::system::error_code ec;
  const boost::json::value parsed = too_long ? boost::json::value() : boost::json::parse(line, ec);
  if (too_long || ec || !parsed.is_object()) {
    ++counters_.malformed_lines;
    return LineOutcome::malformed;
  }
  FieldReader fields(parsed.get_object());

  const auto type = fields.string("type");
  const bool is_request = type == "request";
  if (!is_request && type != "connection") {
    ++counters_.ignored_records;
    return LineOutcome::counted;
  }

  std::string category;
  if (auto text = fields.string("category")) {
    if (text->size() <= kMaxLabelBytes) {
      category = clean_label(*text, kMaxLabelBytes);
    } else {
      fields.mark_invalid();
    }
  }
  if (!category_filter_.empty() && category != category_filter_) {
    ++counters_.ignored_records;
    return LineOutcome::counted;
  }

  constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();
  const auto bytes_up = fields.number("bytes_up", kMaxU64);
  const auto bytes_down = fields.number("bytes_down", kMaxU64);
  const auto bumped = fields.boolean("bumped");
  // A bumped connection's bytes are its requests' bytes (see the header).
  const bool count_bytes = is_request || bumped != true;
  const uint64_t bytes =
      count_bytes ? saturating_add(bytes_up.value_or(0), bytes_down.value_or(0)) : 0;

  std::optional<IpBytes> ip;
  const auto ip_text = fields.string("upstream_ip");
  if (ip_text) {
    ip = parse_ip(*ip_text);
    if (!ip) fields.mark_invalid();
  }

  std::string country;
  if (auto text = fields.string("upstream_country")) {
    if (auto code = as_country(*text)) {
      country = std::move(*code);
    } else {
      fields.mark_invalid();
    }
  }
  std::optional<uint32_t> asn;
  if (auto number = fields.number("upstream_asn", std::numeric_limits<uint32_t>::max())) {
    asn = static_cast<uint32_t>(*number);
  }
  std::string as_org;
  if (auto text = fields.string("upstream_as_org")) as_org = clean_label(*text, kMaxOrgBytes);

  if (geoip_ != nullptr && ip && (country.empty() || !asn)) {
    const GeoInfo found = geoip_->lookup(*ip_text);
    if (country.empty()) country = found.country;
    if (!asn && found.asn) {
      asn = found.asn;
      as_org = found.as_org;
    }
  }
  counters_.invalid_fields = saturating_add(counters_.invalid_fields, fields.invalid_count());

  count_flow(counters_.total, bytes);

  CountryAggregate& by_country = countries_[country];
  count_flow(by_country.tally, bytes);
  if (ip && !by_country.ips.contains(*ip)) {
    if (distinct_ips_ < kMaxDistinctIps) {
      by_country.ips.insert(*ip);
      ++distinct_ips_;
    } else {
      counters_.distinct_ips_capped = true;
    }
  }

  if (!asn) {
    count_flow(unknown_asn_, bytes);
  } else if (auto found = asns_.find(*asn); found != asns_.end()) {
    count_flow(found->second.tally, bytes);
    if (found->second.as_org.empty()) found->second.as_org = std::move(as_org);
  } else if (asns_.size() < kMaxKeys) {
    AsnAggregate& added = asns_[*asn];
    count_flow(added.tally, bytes);
    added.as_org = std::move(as_org);
  } else {
    count_flow(counters_.asn_overflow, bytes);
  }

  auto key = std::make_pair(std::move(category), std::move(country));
  if (auto found = categories_.find(key); found != categories_.end()) {
    count_flow(found->second, bytes);
  } else if (categories_.size() < kMaxKeys) {
    count_flow(categories_[std::move(key)], bytes);
  } else {
    count_flow(counters_.category_overflow, bytes);
  }
  return LineOutcome::counted;
}

FlowReport FlowReportBuilder::result() const {
  FlowReport report = counters_;
  // Unknown last among equals: known keys are what a reader looks for.
  for (const auto& [country, aggregate] : countries_) {
    report.by_country.push_back({country, aggregate.tally, aggregate.ips.size()});
    if (country.empty()) report.unknown_country = aggregate.tally;
  }
  sort_rows(report.by_country, [](const ReportCountryRow& row) {
    return std::pair(row.country.empty(), row.country);
  });

  for (const auto& [asn, aggregate] : asns_) {
    report.by_asn.push_back({asn, aggregate.as_org, aggregate.tally});
  }
  if (unknown_asn_.flows > 0) report.by_asn.push_back({std::nullopt, {}, unknown_asn_});
  sort_rows(report.by_asn, [](const ReportAsnRow& row) {
    return std::pair(!row.asn.has_value(), row.asn.value_or(0));
  });

  for (const auto& [key, tally] : categories_) {
    report.by_category.push_back({key.first, key.second, tally});
  }
  sort_rows(report.by_category, [](const ReportCategoryRow& row) {
    return std::tuple(row.category.empty(), row.category, row.country.empty(), row.country);
  });
  return report;
}

FlowReport build_report(std::istream& in, std::string category, const GeoIp* geoip) {
  FlowReportBuilder builder(std::move(category), geoip);
  builder.add_stream(in);
  return builder.result();
}

std::string render_report_text(const FlowReport& report, const ReportView& view) {
  const ReportTally& total = report.total;
  std::string out;
  out += "Flow records: " + std::to_string(total.flows) + " (request and connection) from " +
         std::to_string(report.lines) + " lines";
  auto count_of = [](uint64_t count, std::string_view what) {
    return std::to_string(count) + " " + std::string(what) + (count == 1 ? "" : "s");
  };
  if (report.malformed_lines > 0) {
    out += "; " + count_of(report.malformed_lines, "malformed line") + " skipped";
  }
  if (report.ignored_records > 0) {
    out += "; " + count_of(report.ignored_records, "other record") + " ignored";
  }
  if (report.invalid_fields > 0) {
    out += "; " + count_of(report.invalid_fields, "invalid field") + " ignored";
  }
  out += "\n";
  if (!report.category_filter.empty()) out += "Category: " + report.category_filter + "\n";
  out += "Total: " + std::to_string(total.flows) + " flows, " + human_bytes(total.bytes) + " (" +
         std::to_string(total.bytes) + " bytes)\n";
  out += "Unknown country: " + percent(report.unknown_country.flows, total.flows) + " of flows, " +
         percent(report.unknown_country.bytes, total.bytes) + " of bytes\n";
  if (total.flows == 0) return out;

  const std::string ips_suffix = report.distinct_ips_capped ? "+" : "";
  if (view.country) {
    static constexpr Column kColumns[] = {{"country", false}, {"flows", true},  {"flows%", true},
                                          {"bytes", true},    {"bytes%", true}, {"IPs", true}};
    std::vector<std::vector<std::string>> rows;
    auto [shown, other] = split_top(report.by_country, view.top, {});
    for (const auto& row : shown) {
      rows.push_back({country_label(row.country), std::to_string(row.tally.flows),
                      percent(row.tally.flows, total.flows), human_bytes(row.tally.bytes),
                      percent(row.tally.bytes, total.bytes),
                      std::to_string(row.distinct_ips) + ips_suffix});
    }
    if (other.any()) {
      rows.push_back({other_label(other), std::to_string(other.tally.flows),
                      percent(other.tally.flows, total.flows), human_bytes(other.tally.bytes),
                      percent(other.tally.bytes, total.bytes), "-"});
    }
    out += "\nBy destination country\n" + format_table(kColumns, rows);
  }
  if (view.asn) {
    static constexpr Column kColumns[] = {{"ASN", false},  {"organisation", false},
                                          {"flows", true}, {"flows%", true},
                                          {"bytes", true}, {"bytes%", true}};
    std::vector<std::vector<std::string>> rows;
    auto [shown, other] = split_top(report.by_asn, view.top, report.asn_overflow);
    for (const auto& row : shown) {
      rows.push_back({row.asn ? "AS" + std::to_string(*row.asn) : "(unknown)",
                      cut_for_display(row.as_org, kMaxOrgColumn), std::to_string(row.tally.flows),
                      percent(row.tally.flows, total.flows), human_bytes(row.tally.bytes),
                      percent(row.tally.bytes, total.bytes)});
    }
    if (other.any()) {
      rows.push_back({other_label(other), "", std::to_string(other.tally.flows),
                      percent(other.tally.flows, total.flows), human_bytes(other.tally.bytes),
                      percent(other.tally.bytes, total.bytes)});
    }
    out += "\nBy autonomous system\n" + format_table(kColumns, rows);
  }
  if (view.category) {
    // "of cat." is the share within the row's category: "62% of app-api flows go to CN".
    static constexpr Column kColumns[] = {{"category", false}, {"country", false}, {"flows", true},
                                          {"flows%", true},    {"of cat.", true},  {"bytes", true},
                                          {"bytes%", true},    {"of cat.", true}};
    std::vector<std::vector<std::string>> rows;
    const auto totals = category_totals(report);
    auto [shown, other] = split_top(report.by_category, view.top, report.category_overflow);
    for (const auto& row : shown) {
      const ReportTally& in_category = totals.at(row.category);
      rows.push_back({row.category.empty() ? "(none)" : row.category, country_label(row.country),
                      std::to_string(row.tally.flows), percent(row.tally.flows, total.flows),
                      percent(row.tally.flows, in_category.flows), human_bytes(row.tally.bytes),
                      percent(row.tally.bytes, total.bytes),
                      percent(row.tally.bytes, in_category.bytes)});
    }
    if (other.any()) {
      rows.push_back({other_label(other), "", std::to_string(other.tally.flows),
                      percent(other.tally.flows, total.flows), "", human_bytes(other.tally.bytes),
                      percent(other.tally.bytes, total.bytes), ""});
    }
    out += "\nBy category and destination country\n" + format_table(kColumns, rows);
  }
  return out;
}

std::string render_report_json(const FlowReport& report, const ReportView& view) {
  const ReportTally& total = report.total;
  JsonWriter json;
  json.open_object();
  json.key("lines").number(report.lines);
  json.key("malformed_lines").number(report.malformed_lines);
  json.key("ignored_records").number(report.ignored_records);
  json.key("invalid_fields").number(report.invalid_fields);
  if (!report.category_filter.empty()) json.key("category").text(report.category_filter);
  json.key("total").open_object().key("flows").number(total.flows);
  json.key("bytes").number(total.bytes).close_object();
  json.key("unknown_country").open_object().tally(report.unknown_country, total).close_object();
  json.key("distinct_ips_capped").boolean(report.distinct_ips_capped);

  if (view.country) {
    auto [shown, other] = split_top(report.by_country, view.top, {});
    json.key("by_country").open_object().key("rows").open_array();
    for (const auto& row : shown) {
      json.open_object();
      if (!row.country.empty()) json.key("country").text(row.country);
      json.tally(row.tally, total).key("distinct_ips").number(row.distinct_ips);
      json.close_object();
    }
    json.close_array();
    write_other(json, other, total);
    json.close_object();
  }
  if (view.asn) {
    auto [shown, other] = split_top(report.by_asn, view.top, report.asn_overflow);
    json.key("by_asn").open_object().key("rows").open_array();
    for (const auto& row : shown) {
      json.open_object();
      if (row.asn) json.key("asn").number(*row.asn);
      if (!row.as_org.empty()) json.key("as_org").text(row.as_org);
      json.tally(row.tally, total).close_object();
    }
    json.close_array();
    write_other(json, other, total);
    json.close_object();
  }
  if (view.category) {
    const auto totals = category_totals(report);
    auto [shown, other] = split_top(report.by_category, view.top, report.category_overflow);
    json.key("by_category").open_object().key("rows").open_array();
    for (const auto& row : shown) {
      const ReportTally& in_category = totals.at(row.category);
      json.open_object();
      if (!row.category.empty()) json.key("category").text(row.category);
      if (!row.country.empty()) json.key("country").text(row.country);
      json.tally(row.tally, total);
      json.key("flows_share_of_category").fraction(share(row.tally.flows, in_category.flows));
      json.key("bytes_share_of_category").fraction(share(row.tally.bytes, in_category.bytes));
      json.close_object();
    }
    json.close_array();
    write_other(json, other, total);
    json.close_object();
  }
  json.close_object();
  return json.take() + "\n";
}

int report_main(std::span<const std::string_view> args) {
  bool json = false;
  ReportView view;
  bool any_section = false;
  std::string category;
  std::filesystem::path country_db, asn_db;
  std::vector<std::string_view> files;

  bool options_done = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (options_done || arg == "-" || !arg.starts_with("-")) {
      files.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    std::optional<std::string_view> inline_value;
    if (auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto value = [&]() -> std::optional<std::string_view> {
      if (inline_value) return std::exchange(inline_value, std::nullopt);
      if (i + 1 >= args.size()) return std::nullopt;
      return args[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return kExitOk;
    }
    if (arg == "--json") {
      json = true;
    } else if (arg == "--by") {
      auto section = value();
      if (!section) return usage_error("--by needs country, asn or category");
      if (!any_section) view.country = view.asn = view.category = false;
      any_section = true;
      if (*section == "country") {
        view.country = true;
      } else if (*section == "asn") {
        view.asn = true;
      } else if (*section == "category") {
        view.category = true;
      } else {
        return usage_error("--by: unknown section \"" + std::string(*section) +
                           "\" (country, asn or category)");
      }
    } else if (arg == "--category") {
      auto name = value();
      if (!name || name->empty()) return usage_error("--category needs a category name");
      if (name->size() > FlowReportBuilder::kMaxLabelBytes) {
        return usage_error("--category: name too long");
      }
      category = *name;
    } else if (arg == "--top") {
      auto text = value();
      auto count = text ? parse_count(*text, kMaxTop) : std::nullopt;
      if (!count) return usage_error("--top needs a number from 0 to 1000000");
      view.top = *count;
    } else if (arg == "--geoip-country" || arg == "--geoip-asn") {
      auto path = value();
      if (!path || path->empty()) return usage_error(std::string(arg) + " needs a file");
      (arg == "--geoip-country" ? country_db : asn_db) = std::filesystem::path(*path);
    } else {
      return usage_error("unknown option " + std::string(arg));
    }
    if (inline_value) return usage_error(std::string(arg) + " takes no value");
  }
  if (files.empty()) return usage_error("no flow-log file given (use - for standard input)");
  if (std::count(files.begin(), files.end(), "-") > 1) {
    return usage_error("standard input (-) given more than once");
  }

  std::optional<GeoIp> geoip;
  if (!country_db.empty() || !asn_db.empty()) {
    auto opened = GeoIp::open(country_db, asn_db);
    if (!opened) {
      std::cerr << "tokgate report: " << opened.error() << "\n";
      return kExitInput;
    }
    geoip = std::move(*opened);
  }

  FlowReportBuilder builder(category, geoip ? &*geoip : nullptr);
  for (std::string_view file : files) {
    const std::string name = file == "-" ? "standard input" : std::string(file);
    auto fail = [&](std::string_view what) {
      std::cerr << "tokgate report: " << name << ": " << what << "\n";
      return kExitInput;
    };
    ReportInputStats stats;
    if (file == "-") {
      stats = builder.add_stream(std::cin);
    } else {
      std::error_code ec;
      const auto status = std::filesystem::status(std::filesystem::path(file), ec);
      if (ec) return fail(ec.message());
      if (std::filesystem::is_directory(status)) return fail("is a directory");
      std::ifstream in(std::filesystem::path(file), std::ios::binary);
      if (!in) return fail(std::strerror(errno));
      stats = builder.add_stream(in);
    }
    if (stats.read_error) return fail("read error");
    if (stats.malformed_lines > 0) {
      std::cerr << "tokgate report: " << name << ": " << stats.malformed_lines << " malformed line"
                << (stats.malformed_lines == 1 ? "" : "s") << " skipped (first: line "
                << stats.first_malformed_line << ")\n";
    }
  }

  const FlowReport report = builder.result();
  std::cout << (json ? render_report_json(report, view) : render_report_text(report, view));
  std::cout.flush();
  return std::cout ? kExitOk : kExitInput;
}

}  // namespace tokgate::proxy
