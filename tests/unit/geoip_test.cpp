// GeoIp against real .mmdb files built by tests/data/make_test_mmdb.pl (its header lists the
// networks), and the `tokgate report` aggregation (suite FlowReport).
#include "proxy/geoip.hpp"
#include "proxy/flow_report.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using tokgate::proxy::build_report;
using tokgate::proxy::FlowReport;
using tokgate::proxy::FlowReportBuilder;
using tokgate::proxy::GeoInfo;
using tokgate::proxy::GeoIp;
using tokgate::proxy::parse_ip;
using tokgate::proxy::render_report_json;
using tokgate::proxy::render_report_text;
using tokgate::proxy::report_main;
using tokgate::proxy::ReportView;

namespace {

std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Runs `command`, returns its exit status and what it printed (stdout and stderr).
std::pair<int, std::string> run(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  char buffer[4096];
  std::size_t got = 0;
  while ((got = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, got);
  return {::pclose(pipe), output};
}

// The test databases, built once for the whole binary.
class TestDatabases {
 public:
  static const TestDatabases& get() {
    static const TestDatabases instance;
    return instance;
  }
  bool ready() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  fs::path country() const { return dir_ / "country.mmdb"; }
  fs::path asn() const { return dir_ / "asn.mmdb"; }
  fs::path combined() const { return dir_ / "combined.mmdb"; }
  const fs::path& dir() const { return dir_; }

  ~TestDatabases() {
    std::error_code ignored;
    if (!dir_.empty()) fs::remove_all(dir_, ignored);
  }

 private:
  TestDatabases() {
    if (run("perl -MMaxMind::DB::Writer::Tree -e 1").first != 0) {
      error_ =
          "perl module MaxMind::DB::Writer::Tree is missing (Debian: "
          "libmaxmind-db-writer-perl): cannot build test databases";
      return;
    }
    std::string pattern = (fs::temp_directory_path() / "tokgate-geoip-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      error_ = "mkdtemp failed";
      return;
    }
    dir_ = pattern;
    const std::string script = TOKGATE_TEST_DATA "/make_test_mmdb.pl";
    auto [status, output] = run("perl " + shell_quote(script) + " " + shell_quote(dir_.string()));
    if (status != 0) {
      error_ = "make_test_mmdb.pl failed: " + output;
    } else if (!output.empty()) {
      error_ = "make_test_mmdb.pl printed on success: " + output;
    }
  }

  fs::path dir_;
  std::string error_;
};

class GeoIpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto& databases = TestDatabases::get();
    if (!databases.ready()) {
      // A missing module skips; a script that fails with the module present is a failure.
      if (databases.error().starts_with("perl module")) GTEST_SKIP() << databases.error();
      FAIL() << databases.error();
    }
  }
  const TestDatabases& databases() const { return TestDatabases::get(); }

  GeoIp open(const fs::path& country, const fs::path& asn) {
    auto geoip = GeoIp::open(country, asn);
    if (!geoip) ADD_FAILURE() << geoip.error();
    return geoip ? std::move(*geoip) : GeoIp{};
  }
  GeoIp open_both() { return open(databases().country(), databases().asn()); }
};

GeoInfo geo(std::string country, std::optional<uint32_t> asn, std::string org) {
  return GeoInfo{std::move(country), asn, std::move(org)};
}

const std::string kAlibaba = "Hangzhou Alibaba Advertising Co.,Ltd.";
const std::string kAkamai = "Akamai International B.V.";

TEST_F(GeoIpTest, FindsIpv4CountryAndAsnInSeparateDatabases) {
  const GeoIp geoip = open_both();
  ASSERT_FALSE(geoip.empty());
  EXPECT_EQ(geoip.lookup("198.51.100.7"), geo("CN", 37963, kAlibaba));
  EXPECT_EQ(geoip.lookup("198.51.100.0"), geo("CN", 37963, kAlibaba));
  EXPECT_EQ(geoip.lookup("203.0.113.255"), geo("US", 20940, kAkamai));
  EXPECT_EQ(geoip.lookup("127.0.0.2"), geo("CN", 37963, kAlibaba));
  EXPECT_EQ(geoip.lookup("127.0.0.3"), geo("US", 20940, kAkamai));
}

TEST_F(GeoIpTest, FallsBackToRegisteredCountry) {
  const GeoIp geoip = open_both();
  EXPECT_EQ(geoip.lookup("192.0.2.99"), geo("JP", 2497, "Internet Initiative Japan Inc."));
}

TEST_F(GeoIpTest, FindsIpv6) {
  const GeoIp geoip = open_both();
  EXPECT_EQ(geoip.lookup("2001:db8:1::5"), geo("CN", 45102, "Alibaba (US) Technology Co., Ltd."));
  EXPECT_EQ(geoip.lookup("2001:DB8:2:ffff::1"), geo("US", 16509, "Amazon.com, Inc."));
  EXPECT_EQ(geoip.lookup("::1"), geo("DE", 64512, "Test ASN v6"));
  EXPECT_EQ(geoip.lookup("0:0:0:0:0:0:0:1"), geo("DE", 64512, "Test ASN v6"));
}

TEST_F(GeoIpTest, FindsIpv4MappedAndIpv4InIpv6Tree) {
  const GeoIp geoip = open_both();
  EXPECT_EQ(geoip.lookup("::ffff:127.0.0.3"), geo("US", 20940, kAkamai));
  EXPECT_EQ(geoip.lookup("::ffff:7f00:2"), geo("CN", 37963, kAlibaba));
  EXPECT_EQ(geoip.lookup("::FFFF:198.51.100.1"), geo("CN", 37963, kAlibaba));
}

TEST_F(GeoIpTest, UnknownAddressesSayNothing) {
  const GeoIp geoip = open_both();
  for (const char* ip : {"127.0.0.1", "8.8.8.8", "198.51.101.1", "2001:db8:3::1", "::2",
                         "2606:4700::1111", "::ffff:8.8.8.8"}) {
    EXPECT_EQ(geoip.lookup(ip), GeoInfo{}) << ip;
  }
}

TEST_F(GeoIpTest, MalformedAddressesSayNothing) {
  const GeoIp geoip = open_both();
  const std::string long_text(300, '1');
  const std::string with_nul("127.0.0.2\0junk", 14);
  for (std::string_view ip : std::initializer_list<std::string_view>{
           "", "1.2.3", "::zz", long_text, "127.0.0.2 ", " 127.0.0.2", "[::1]", "::1%lo",
           "0x7f.0.0.2", "127.000.000.002", "127.0.0.2/32", "256.0.0.1", "1.2.3.4.5",
           "::1::", with_nul, "127.0.0.2:443", "localhost"}) {
    EXPECT_EQ(geoip.lookup(ip), GeoInfo{}) << ip;
  }
  EXPECT_EQ(parse_ip("1.2.3"), std::nullopt);
  EXPECT_EQ(parse_ip(long_text), std::nullopt);
  EXPECT_EQ(parse_ip(with_nul), std::nullopt);
}

TEST(GeoIpParse, Ipv4IsStoredAsMappedIpv6) {
  const auto v4 = parse_ip("1.2.3.4");
  const auto mapped = parse_ip("::ffff:1.2.3.4");
  ASSERT_TRUE(v4 && mapped);
  EXPECT_EQ(*v4, *mapped);
  EXPECT_EQ((*v4)[10], 0xff);
  EXPECT_EQ((*v4)[15], 4);
  const auto v6 = parse_ip("2001:db8::1");
  ASSERT_TRUE(v6);
  EXPECT_EQ((*v6)[0], 0x20);
  EXPECT_EQ((*v6)[15], 1);
  EXPECT_NE(parse_ip("::1.2.3.4"), v4);  // IPv4-compatible is not IPv4-mapped
}

TEST_F(GeoIpTest, CombinedDatabaseServesBothKindsFromEitherSlot) {
  const GeoIp as_country = open(databases().combined(), {});
  EXPECT_EQ(as_country.lookup("127.0.0.2"), geo("CN", 37963, kAlibaba));
  EXPECT_EQ(as_country.lookup("::1"), geo("DE", 64512, "Test ASN v6"));
  const GeoIp as_asn = open({}, databases().combined());
  EXPECT_EQ(as_asn.lookup("203.0.113.9"), geo("US", 20940, kAkamai));
  EXPECT_EQ(as_asn.lookup("192.0.2.1").country, "JP");
}

TEST_F(GeoIpTest, OneKindOfDatabaseGivesOneKindOfAnswer) {
  const GeoIp country_only = open(databases().country(), {});
  EXPECT_EQ(country_only.lookup("127.0.0.2"), geo("CN", std::nullopt, ""));
  const GeoIp asn_only = open({}, databases().asn());
  EXPECT_EQ(asn_only.lookup("127.0.0.2"), geo("", 37963, kAlibaba));
  // The ASN file in the country slot still answers for the AS, never for a country.
  const GeoIp swapped = open(databases().asn(), databases().country());
  EXPECT_EQ(swapped.lookup("127.0.0.3"), geo("US", 20940, kAkamai));
}

TEST_F(GeoIpTest, MissingFileIsAnErrorNamingIt) {
  const fs::path missing = databases().dir() / "no-such.mmdb";
  auto geoip = GeoIp::open(missing, {});
  ASSERT_FALSE(geoip);
  EXPECT_NE(geoip.error().find(missing.string()), std::string::npos) << geoip.error();
  auto in_asn_slot = GeoIp::open(databases().country(), missing);
  ASSERT_FALSE(in_asn_slot);
  EXPECT_NE(in_asn_slot.error().find(missing.string()), std::string::npos);
}

TEST_F(GeoIpTest, NonMmdbFilesAreErrors) {
  const fs::path text = databases().dir() / "not-a-db.mmdb";
  std::ofstream(text) << "this is not a MaxMind DB\n";
  const fs::path empty = databases().dir() / "empty.mmdb";
  std::ofstream{empty};
  // A real file cut short: its metadata (at the end) is gone.
  const fs::path truncated = databases().dir() / "truncated.mmdb";
  {
    std::ifstream in(databases().country(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  for (const fs::path& bad : {text, empty, truncated, databases().dir()}) {
    auto geoip = GeoIp::open(bad, {});
    ASSERT_FALSE(geoip) << bad;
    EXPECT_NE(geoip.error().find(bad.string()), std::string::npos) << geoip.error();
    // More than the file name: what was wrong with it.
    EXPECT_GT(geoip.error().size(), bad.string().size() + 20) << geoip.error();
  }
}

TEST(GeoIpEmpty, BothPathsEmptyGivesAnEmptyGeoIp) {
  auto geoip = GeoIp::open({}, {});
  ASSERT_TRUE(geoip) << geoip.error();
  EXPECT_TRUE(geoip->empty());
  EXPECT_EQ(geoip->lookup("127.0.0.2"), GeoInfo{});
  EXPECT_EQ(geoip->lookup("::1"), GeoInfo{});
  EXPECT_EQ(geoip->describe(), "no GeoIP database");
  EXPECT_TRUE(GeoIp{}.empty());
}

TEST_F(GeoIpTest, MovesKeepTheDatabases) {
  GeoIp first = open_both();
  GeoIp second = std::move(first);
  EXPECT_EQ(second.lookup("127.0.0.3").country, "US");
  GeoIp third;
  third = std::move(second);
  EXPECT_EQ(third.lookup("::1").asn, 64512u);
  EXPECT_FALSE(third.empty());
}

TEST_F(GeoIpTest, DescribeNamesTypesDatesAndFiles) {
  const GeoIp geoip = open_both();
  const std::string text = geoip.describe();
  EXPECT_NE(text.find("GeoLite2-Country"), std::string::npos) << text;
  EXPECT_NE(text.find("GeoLite2-ASN"), std::string::npos) << text;
  EXPECT_NE(text.find(databases().country().string()), std::string::npos) << text;
  // The writer stamps the build time: today, "built YYYY-MM-DD".
  const auto built = text.find("built ");
  ASSERT_NE(built, std::string::npos) << text;
  const std::string date = text.substr(built + 6, 10);
  EXPECT_TRUE(
      date.size() == 10 && date.starts_with("20") && date[4] == '-' && date[7] == '-' &&
      std::all_of(date.begin(), date.end(),
                  [](char c) { return c == '-' || std::isdigit(static_cast<unsigned char>(c)); }))
      << text;
}

TEST_F(GeoIpTest, ConcurrentLookupsAgree) {
  const GeoIp geoip = open_both();
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i) {
        const bool china = (i + t) % 2 == 0;
        const GeoInfo info = geoip.lookup(china ? "198.51.100.1" : "2001:db8:2::9");
        if (info.country != (china ? "CN" : "US")) ++wrong;
        if (info.asn != (china ? 37963u : 16509u)) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
}

// ---- FlowReport ----------------------------------------------------------------------

std::string record(std::string_view type, std::string_view fields) {
  return "{\"type\":\"" + std::string(type) + "\"" + (fields.empty() ? "" : ",") +
         std::string(fields) + "}\n";
}

FlowReport report_of(const std::string& text, std::string category = {},
                     const GeoIp* geoip = nullptr) {
  std::istringstream in(text);
  return build_report(in, std::move(category), geoip);
}

boost::json::value json_of(const FlowReport& report, const ReportView& view = {}) {
  return boost::json::parse(render_report_json(report, view));
}

const tokgate::proxy::ReportCountryRow* country_row(const FlowReport& report,
                                                    std::string_view country) {
  for (const auto& row : report.by_country) {
    if (row.country == country) return &row;
  }
  return nullptr;
}

// Three CN flows on two IPs, one US request, one spliced US connection, one bumped connection
// (its bytes belong to its requests), one flow of unknown country.
const std::string kMixedLog =
    record("request",
           R"("category":"app-api","upstream_ip":"198.51.100.1","upstream_country":"CN",)"
           R"("upstream_asn":37963,"upstream_as_org":"Hangzhou Alibaba Advertising Co.,Ltd.",)"
           R"("bytes_up":100,"bytes_down":900,"bumped":true)") +
    record("request",
           R"("category":"app-api","upstream_ip":"198.51.100.1","upstream_country":"CN",)"
           R"("upstream_asn":37963,"bytes_up":0,"bytes_down":1000,"bumped":true)") +
    record("request",
           R"("category":"media-cdn","upstream_ip":"198.51.100.2","upstream_country":"CN",)"
           R"("upstream_asn":37963,"bytes_down":3000)") +
    record("request", R"("category":"app-api","upstream_ip":"203.0.113.5","upstream_country":"US",)"
                      R"("upstream_asn":20940,"upstream_as_org":"Akamai International B.V.",)"
                      R"("bytes_up":500,"bytes_down":500,"bumped":true)") +
    record("connection",
           R"("category":"media-cdn","upstream_ip":"203.0.113.6","upstream_country":"US",)"
           R"("upstream_asn":20940,"bytes_up":1000,"bytes_down":3000,"bumped":false,)"
           R"("verdict":"splice")") +
    record("connection",
           R"("category":"app-api","upstream_ip":"198.51.100.1","upstream_country":"CN",)"
           R"("bytes_up":77777,"bytes_down":88888,"bumped":true,"error":"pinned")") +
    record("request", R"("category":"web","upstream_ip":"192.0.2.200","bytes_down":500)");

TEST(FlowReport, CountsFlowsBytesAndIpsPerCountry) {
  const FlowReport report = report_of(kMixedLog);
  EXPECT_EQ(report.lines, 7u);
  EXPECT_EQ(report.malformed_lines, 0u);
  EXPECT_EQ(report.invalid_fields, 0u);
  EXPECT_EQ(report.total.flows, 7u);
  // 1000 + 1000 + 3000 + 1000 + 4000 (spliced) + 0 (bumped connection) + 500.
  EXPECT_EQ(report.total.bytes, 10500u);
  EXPECT_EQ(report.unknown_country, (tokgate::proxy::ReportTally{1, 500}));

  ASSERT_EQ(report.by_country.size(), 3u);
  EXPECT_EQ(report.by_country[0].country, "CN");  // sorted by flows
  EXPECT_EQ(report.by_country[0].tally, (tokgate::proxy::ReportTally{4, 5000}));
  EXPECT_EQ(report.by_country[0].distinct_ips, 2u);
  EXPECT_EQ(report.by_country[1].country, "US");
  EXPECT_EQ(report.by_country[1].tally, (tokgate::proxy::ReportTally{2, 5000}));
  EXPECT_EQ(report.by_country[1].distinct_ips, 2u);
  EXPECT_EQ(report.by_country[2].country, "");
  EXPECT_EQ(report.by_country[2].distinct_ips, 1u);
}

TEST(FlowReport, BumpedConnectionBytesAreNotCountedTwice) {
  const std::string log =
      record("request", R"("upstream_country":"CN","bytes_up":10,"bytes_down":20,"bumped":true)") +
      record("connection", R"("upstream_country":"CN","bytes_up":10,"bytes_down":20,)"
                           R"("bumped":true)") +
      record("connection", R"("upstream_country":"US","bytes_up":5,"bytes_down":5,)"
                           R"("bumped":false)") +
      record("connection", R"("upstream_country":"DE","bytes_up":1,"bytes_down":2)");
  const FlowReport report = report_of(log);
  EXPECT_EQ(report.total, (tokgate::proxy::ReportTally{4, 30 + 10 + 3}));
  EXPECT_EQ(country_row(report, "CN")->tally, (tokgate::proxy::ReportTally{2, 30}));
  EXPECT_EQ(country_row(report, "US")->tally, (tokgate::proxy::ReportTally{1, 10}));
  EXPECT_EQ(country_row(report, "DE")->tally, (tokgate::proxy::ReportTally{1, 3}));
}

TEST(FlowReport, SkipsMalformedLinesAndKeepsGoing) {
  std::string log;
  log += "not json\n";
  log += "[1,2,3]\n";
  log += "{\"type\":\"request\",\"upstream_country\":\"CN\"\n";        // cut short
  log += "{\"type\":\"request\",\"upstream_as_org\":\"\xff\xfe\"}\n";  // invalid UTF-8
  log += "\n   \n\r\n";                                                // blank: not lines at all
  log += "{\"type\":\"request\"} trailing\n";
  log += record("summary", R"("flows":12)");  // another type: ignored, not malformed
  log += record("request", R"("upstream_country":"CN","bytes_down":7)");
  log += "{\"type\":\"request\",\"pad\":\"" + std::string(FlowReportBuilder::kMaxLineBytes, 'x') +
         "\",\"upstream_country\":\"US\"}\n";  // over 1 MiB
  log += "{\"type\":\"connection\",\"upstream_country\":\"US\",\"bumped\":false}\r\n";
  log += "{\"type\":\"request\",\"upstream_country\":\"DE\",\"bytes_up\":1}";  // no newline

  std::istringstream in(log);
  FlowReportBuilder builder;
  const auto stats = builder.add_stream(in);
  const FlowReport report = builder.result();
  EXPECT_EQ(stats.lines, 10u);
  EXPECT_EQ(stats.malformed_lines, 6u);
  EXPECT_EQ(stats.first_malformed_line, 1u);
  EXPECT_FALSE(stats.read_error);
  EXPECT_EQ(report.malformed_lines, 6u);
  EXPECT_FALSE(builder.add_line(std::string(FlowReportBuilder::kMaxLineBytes + 1, ' ')));
  EXPECT_TRUE(builder.add_line(""));
  EXPECT_EQ(report.ignored_records, 1u);
  EXPECT_EQ(report.total, (tokgate::proxy::ReportTally{3, 8}));
  ASSERT_NE(country_row(report, "US"), nullptr);
  EXPECT_EQ(country_row(report, "US")->tally.flows, 1u);
  ASSERT_NE(country_row(report, "DE"), nullptr);
}

TEST(FlowReport, FieldsOfTheWrongTypeAreIgnoredAndCounted) {
  const std::string log =
      record("request", R"("upstream_country":"China","bytes_up":"12","bytes_down":5)") +
      record("request", R"("upstream_country":"cn","upstream_asn":-5,"upstream_ip":"1.2.3")") +
      record("request", R"("upstream_asn":4294967296,"bumped":"yes","bytes_down":-1)") +
      record("connection", R"("category":42,"bytes_down":1.5e3,"upstream_country":null)") +
      record("request", R"("type2":1,"upstream_ip":"::ffff:198.51.100.1","upstream_country":"CN")");
  const FlowReport report = report_of(log);
  EXPECT_EQ(report.total.flows, 5u);
  EXPECT_EQ(report.total.bytes, 5u);
  // "China", "12", -5, "1.2.3", 4294967296, "yes", -1, 42, 1.5e3, null.
  EXPECT_EQ(report.invalid_fields, 10u);
  EXPECT_EQ(report.unknown_country.flows, 3u);
  ASSERT_NE(country_row(report, "CN"), nullptr);
  EXPECT_EQ(country_row(report, "CN")->tally.flows, 2u);  // "cn" is raised to "CN"
  EXPECT_EQ(country_row(report, "CN")->distinct_ips, 1u);
}

TEST(FlowReport, ByteSumsSaturate) {
  const std::string max = std::to_string(std::numeric_limits<uint64_t>::max());
  const std::string log = record("request", R"("bytes_up":)" + max + R"(,"bytes_down":)" + max) +
                          record("request", R"("bytes_down":)" + max);
  EXPECT_EQ(report_of(log).total.bytes, std::numeric_limits<uint64_t>::max());
}

TEST(FlowReport, DistinctKeysAreBoundedAndTheRestStillCounted) {
  FlowReportBuilder builder;
  const std::size_t extra = 5;
  for (std::size_t asn = 1; asn <= FlowReportBuilder::kMaxKeys + extra; ++asn) {
    ASSERT_TRUE(builder.add_line(R"({"type":"request","bytes_down":1,"upstream_asn":)" +
                                 std::to_string(asn) + "}"));
  }
  const FlowReport report = builder.result();
  EXPECT_EQ(report.total.flows, FlowReportBuilder::kMaxKeys + extra);
  EXPECT_EQ(report.by_asn.size(), FlowReportBuilder::kMaxKeys);
  EXPECT_EQ(report.asn_overflow, (tokgate::proxy::ReportTally{extra, extra}));
  ReportView view;
  view.top = 10;
  const auto json = json_of(report, view);
  EXPECT_EQ(json.at("by_asn").at("other").at("flows").to_number<uint64_t>(),
            FlowReportBuilder::kMaxKeys - 10 + extra);
}

TEST(FlowReport, AsnRowsKeepTheFirstOrganisationName) {
  const FlowReport report = report_of(kMixedLog);
  ASSERT_EQ(report.by_asn.size(), 3u);
  EXPECT_EQ(report.by_asn[0].asn, 37963u);
  EXPECT_EQ(report.by_asn[0].as_org, "Hangzhou Alibaba Advertising Co.,Ltd.");
  EXPECT_EQ(report.by_asn[0].tally, (tokgate::proxy::ReportTally{3, 5000}));
  EXPECT_EQ(report.by_asn[1].asn, 20940u);
  EXPECT_EQ(report.by_asn[2].asn, std::nullopt);  // the bumped connection and the web flow
  EXPECT_EQ(report.by_asn[2].tally, (tokgate::proxy::ReportTally{2, 500}));
}

TEST(FlowReport, CategoryFilterCountsOnlyThatCategory) {
  const FlowReport report = report_of(kMixedLog, "app-api");
  EXPECT_EQ(report.total, (tokgate::proxy::ReportTally{4, 3000}));
  EXPECT_EQ(report.ignored_records, 3u);
  EXPECT_EQ(report.category_filter, "app-api");
  EXPECT_EQ(country_row(report, "CN")->tally, (tokgate::proxy::ReportTally{3, 2000}));
  EXPECT_EQ(report.unknown_country.flows, 0u);
}

TEST(FlowReport, JsonHasSharesPerCountryAsnAndCategory) {
  const boost::json::value json = json_of(report_of(kMixedLog));
  const auto& root = json.as_object();
  EXPECT_EQ(root.at("total").at("flows").to_number<uint64_t>(), 7u);
  EXPECT_EQ(root.at("total").at("bytes").to_number<uint64_t>(), 10500u);
  EXPECT_NEAR(root.at("unknown_country").at("flows_share").to_number<double>(), 1.0 / 7, 1e-6);
  const auto& countries = root.at("by_country").at("rows").as_array();
  ASSERT_EQ(countries.size(), 3u);
  EXPECT_EQ(countries[0].at("country").as_string(), "CN");
  EXPECT_NEAR(countries[0].at("flows_share").to_number<double>(), 4.0 / 7, 1e-6);
  EXPECT_NEAR(countries[0].at("bytes_share").to_number<double>(), 5000.0 / 10500, 1e-6);
  EXPECT_EQ(countries[0].at("distinct_ips").to_number<uint64_t>(), 2u);
  EXPECT_FALSE(countries[2].as_object().contains("country"));  // unknown: absent, not null

  const auto& asns = root.at("by_asn").at("rows").as_array();
  EXPECT_EQ(asns[1].at("as_org").as_string(), "Akamai International B.V.");

  // app-api: 3 of its 4 flows go to CN.
  bool found = false;
  for (const auto& row : root.at("by_category").at("rows").as_array()) {
    const auto& item = row.as_object();
    if (item.at("category") == "app-api" && item.at("country") == "CN") {
      found = true;
      EXPECT_EQ(item.at("flows").to_number<uint64_t>(), 3u);
      EXPECT_NEAR(item.at("flows_share_of_category").to_number<double>(), 0.75, 1e-6);
      EXPECT_NEAR(item.at("flows_share").to_number<double>(), 3.0 / 7, 1e-6);
    }
  }
  EXPECT_TRUE(found);
}

TEST(FlowReport, TopLimitsRowsAndSumsTheRest) {
  std::string log;
  for (const char* country : {"CN", "CN", "CN", "US", "US", "DE", "FR"}) {
    log +=
        record("request", std::string(R"("bytes_down":10,"upstream_country":")") + country + "\"");
  }
  const FlowReport report = report_of(log);
  ReportView view;
  view.top = 2;
  view.asn = view.category = false;
  const auto json = json_of(report, view);
  const auto& section = json.at("by_country").as_object();
  EXPECT_EQ(section.at("rows").as_array().size(), 2u);
  EXPECT_EQ(section.at("other").at("rows").to_number<uint64_t>(), 2u);
  EXPECT_EQ(section.at("other").at("flows").to_number<uint64_t>(), 2u);
  EXPECT_FALSE(json.as_object().contains("by_asn"));

  const std::string text = render_report_text(report, view);
  EXPECT_NE(text.find("(2 more)"), std::string::npos) << text;
  EXPECT_EQ(text.find("DE"), std::string::npos) << text;
  view.top = 0;
  EXPECT_NE(render_report_text(report, view).find("FR"), std::string::npos);
}

TEST(FlowReport, TextTableIsAligned) {
  const std::string text = render_report_text(report_of(kMixedLog), ReportView{});
  EXPECT_NE(text.find("Total: 7 flows, 10.3 KiB (10500 bytes)"), std::string::npos) << text;
  EXPECT_NE(text.find("Unknown country: 14.3% of flows, 4.8% of bytes"), std::string::npos) << text;
  // In the country table, every line's "flows%" column ends where the header's does.
  std::istringstream lines(text.substr(text.find("By destination country")));
  std::string line;
  std::getline(lines, line);
  std::getline(lines, line);
  const auto header_end = line.find("flows%") + std::string("flows%").size();
  ASSERT_NE(header_end, std::string::npos);
  int rows = 0;
  while (std::getline(lines, line) && !line.empty()) {
    ++rows;
    ASSERT_GE(line.size(), header_end) << line;
    EXPECT_EQ(line[header_end - 1], '%') << line;
    EXPECT_EQ(line[header_end], ' ') << line;
  }
  EXPECT_EQ(rows, 3);
  // Cells split on runs of spaces: the CN row, whatever the widths.
  std::istringstream cn_row(text.substr(text.find("\nCN ") + 1));
  std::vector<std::string> cells;
  for (std::string cell; cells.size() < 7 && cn_row >> cell;) cells.push_back(cell);
  EXPECT_EQ(cells, (std::vector<std::string>{"CN", "4", "57.1%", "4.9", "KiB", "47.6%", "2"}))
      << text;
  EXPECT_NE(text.find("AS37963"), std::string::npos) << text;
  EXPECT_NE(text.find("(unknown)"), std::string::npos) << text;
}

TEST(FlowReport, ControlCharactersNeverReachTheTable) {
  const std::string log =
      record("request",
             R"("upstream_asn":1,"upstream_as_org":"Evil\u001b[2J\u0085Org","category":"a\nb")");
  const std::string text = render_report_text(report_of(log), ReportView{});
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  EXPECT_EQ(text.find("\xc2\x85"), std::string::npos);
  EXPECT_NE(text.find("Evil?[2J?Org"), std::string::npos) << text;
  EXPECT_NE(text.find("a?b"), std::string::npos) << text;
  const auto json = json_of(report_of(log));  // still one valid JSON document
  EXPECT_EQ(json.at("by_category").at("rows").at(0).at("category").as_string(), "a?b");
}

TEST(FlowReport, EmptyInputGivesZeroTotals) {
  const FlowReport report = report_of("");
  EXPECT_EQ(report.total.flows, 0u);
  const auto json = json_of(report);
  EXPECT_NEAR(json.at("unknown_country").at("flows_share").to_number<double>(), 0.0, 1e-6);
  EXPECT_NE(render_report_text(report, {}).find("Total: 0 flows"), std::string::npos);
}

class FlowReportGeoIp : public GeoIpTest {};

TEST_F(FlowReportGeoIp, LooksUpRecordsWithoutCountry) {
  const GeoIp geoip = open_both();
  const std::string log =
      record("request", R"("upstream_ip":"127.0.0.2","bytes_down":10)") +
      record("request", R"("upstream_ip":"::1","bytes_down":10)") +
      // The record's own country wins over today's database.
      record("request", R"("upstream_ip":"127.0.0.3","upstream_country":"GB","bytes_down":10)") +
      record("request", R"("upstream_ip":"127.0.0.1","bytes_down":10)");
  const FlowReport report = report_of(log, {}, &geoip);
  ASSERT_NE(country_row(report, "CN"), nullptr);
  ASSERT_NE(country_row(report, "DE"), nullptr);
  ASSERT_NE(country_row(report, "GB"), nullptr);
  EXPECT_EQ(country_row(report, "US"), nullptr);
  EXPECT_EQ(report.unknown_country.flows, 1u);
  ASSERT_FALSE(report.by_asn.empty());
  bool alibaba = false;
  for (const auto& row : report.by_asn) {
    if (row.asn == 37963u) alibaba = row.as_org == kAlibaba;
  }
  EXPECT_TRUE(alibaba);
}

// report_main, with real files and the real standard streams.
class FlowReportMain : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "tokgate-report-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  fs::path write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  int call(std::vector<std::string> args) {
    std::vector<std::string_view> views(args.begin(), args.end());
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    const int code = report_main(views);
    out_ = ::testing::internal::GetCapturedStdout();
    err_ = ::testing::internal::GetCapturedStderr();
    return code;
  }
  fs::path dir_;
  std::string out_, err_;
};

TEST_F(FlowReportMain, ReadsSeveralFilesAsJson) {
  const auto first = write("a.jsonl", kMixedLog);
  const auto second = write("b.jsonl", record("request", R"("upstream_country":"CN")") + "oops\n");
  ASSERT_EQ(call({"--json", "--by", "country", first.string(), second.string()}), 0) << err_;
  const auto json = boost::json::parse(out_);
  EXPECT_EQ(out_.find("E-"), std::string::npos) << "shares as plain decimals: " << out_;
  EXPECT_NE(out_.find(R"("flows_share":0.625,)"), std::string::npos) << out_;  // CN: 5 of 8
  EXPECT_EQ(json.at("total").at("flows").to_number<uint64_t>(), 8u);
  EXPECT_EQ(json.at("malformed_lines").to_number<uint64_t>(), 1u);
  EXPECT_FALSE(json.as_object().contains("by_asn"));
  EXPECT_EQ(err_,
            "tokgate report: " + second.string() + ": 1 malformed line skipped (first: line 2)\n");
}

TEST_F(FlowReportMain, TextWithOptions) {
  const auto file = write("a.jsonl", kMixedLog);
  ASSERT_EQ(call({"--category=app-api", "--top", "1", "--by=category", file.string()}), 0) << err_;
  EXPECT_NE(out_.find("Category: app-api"), std::string::npos) << out_;
  EXPECT_NE(out_.find("By category and destination country"), std::string::npos) << out_;
  EXPECT_EQ(out_.find("By destination country"), std::string::npos) << out_;
  EXPECT_NE(out_.find("(1 more)"), std::string::npos) << out_;
  EXPECT_TRUE(err_.empty()) << err_;
}

TEST_F(FlowReportMain, GeoIpOptionsFillInCountries) {
  const auto& databases = TestDatabases::get();
  if (!databases.ready()) GTEST_SKIP() << databases.error();
  const auto file = write("a.jsonl", record("request", R"("upstream_ip":"127.0.0.2")"));
  ASSERT_EQ(call({"--json", "--geoip-country", databases.country().string(), "--geoip-asn",
                  databases.asn().string(), file.string()}),
            0)
      << err_;
  const auto json = boost::json::parse(out_);
  EXPECT_EQ(json.at("by_country").at("rows").at(0).at("country").as_string(), "CN");
  EXPECT_EQ(json.at("by_asn").at("rows").at(0).at("asn").to_number<int64_t>(), 37963);
  EXPECT_NE(call({"--geoip-country", (dir_ / "none.mmdb").string(), file.string()}), 0);
  EXPECT_NE(err_.find("none.mmdb"), std::string::npos) << err_;
}

TEST_F(FlowReportMain, ErrorsNameTheFile) {
  const fs::path missing = dir_ / "missing.jsonl";
  EXPECT_EQ(call({missing.string()}), 1);
  EXPECT_TRUE(err_.starts_with("tokgate report: " + missing.string() + ": ")) << err_;
  EXPECT_TRUE(out_.empty()) << out_;
  EXPECT_EQ(call({dir_.string()}), 1);
  EXPECT_NE(err_.find("is a directory"), std::string::npos) << err_;
}

TEST_F(FlowReportMain, UsageErrors) {
  const auto file = write("a.jsonl", kMixedLog);
  EXPECT_EQ(call({}), 2);
  EXPECT_EQ(call({"--frobnicate", file.string()}), 2);
  EXPECT_NE(err_.find("--frobnicate"), std::string::npos) << err_;
  EXPECT_EQ(call({"--top", "many", file.string()}), 2);
  EXPECT_EQ(call({"--top"}), 2);
  EXPECT_EQ(call({"--by", "city", file.string()}), 2);
  EXPECT_EQ(call({"--json=yes", file.string()}), 2);
  EXPECT_EQ(call({"-", "-"}), 2);
  EXPECT_EQ(call({"--help"}), 0);
  EXPECT_NE(out_.find("usage: tokgate report"), std::string::npos);
}

}  // namespace
