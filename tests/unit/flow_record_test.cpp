// The flow record's formats, the privacy rules and the sink's promises (never block, count
// drops, reopen for logrotate).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "proxy/flow_record.hpp"
#include "proxy/flow_sink.hpp"
#include "proxy/privacy.hpp"

namespace tokgate::proxy {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

FlowRecord sample() {
  FlowRecord r;
  r.started = std::chrono::system_clock::time_point(std::chrono::milliseconds(1764596744039));
  r.flow = "7.s3";
  r.conn = 7;
  r.client_ip = "10.0.0.23";
  r.client_port = 51234;
  r.host = "api16-normal-c-useast1a.tiktokv.com";
  r.port = 443;
  r.scheme = "https";
  r.method = "GET";
  r.path = "/aweme/v1/feed/";
  r.query = "device_id=REDACTED";
  r.status = 200;
  r.bytes_up = 0;
  r.bytes_down = 48213;
  r.total_ms = 140.9;
  r.first_byte_ms = 0.0004;
  r.bumped = true;
  r.category = "app-api";
  r.evidence = {"host:tiktok-app-backend:.tiktokv.com"};
  r.action = "log";
  r.upstream_ip = "23.59.172.11";
  r.upstream_asn = 20940;
  return r;
}

std::filesystem::path temp_dir() {
  auto base = std::filesystem::temp_directory_path() /
              ("tokgate-flow-" + std::to_string(::getpid()) + "-" +
               std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::filesystem::create_directories(base);
  return base;
}

std::vector<std::string> lines_of(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(FlowRecordJson, FieldsTypesAndAbsence) {
  const auto value = json::parse(to_json_line(sample()));
  const auto& object = value.as_object();
  EXPECT_EQ(object.at("ts").as_string(), "2025-12-01T13:45:44.039Z");
  EXPECT_EQ(object.at("type").as_string(), "request");
  EXPECT_EQ(object.at("conn").as_int64(), 7);
  EXPECT_EQ(object.at("status").as_int64(), 200);
  EXPECT_EQ(object.at("bytes_up").as_int64(), 0);  // zero is a value, not absence
  EXPECT_DOUBLE_EQ(object.at("total_ms").to_number<double>(), 140.9);
  EXPECT_DOUBLE_EQ(object.at("first_byte_ms").to_number<double>(), 0.0);
  EXPECT_TRUE(object.at("bumped").as_bool());
  EXPECT_EQ(object.at("evidence").as_array().size(), 1u);
  EXPECT_EQ(object.at("upstream_asn").as_int64(), 20940);
  // Unknown is absent: never null, never guessed.
  for (auto absent : {"sni", "upstream_country", "connect_ms", "error", "capture", "rule"}) {
    EXPECT_FALSE(object.contains(absent)) << absent;
  }
}

TEST(FlowRecordJson, NumbersAreWrittenPlainly) {
  const std::string line = to_json_line(sample());
  EXPECT_NE(line.find("\"total_ms\":140.9,"), std::string::npos) << line;
  EXPECT_EQ(line.find('E'), line.find("E"));  // (no exponent form anywhere)
  EXPECT_EQ(line.find("e+"), std::string::npos) << line;
}

TEST(FlowRecordJson, HostileBytesStayOneValidLine) {
  FlowRecord r = sample();
  r.path = std::string("/a\"b\\c\nd\x01") + "\xff\xfe" + "\xc3\xa9" + "\xed\xa0\x80";
  r.user_agent = "Mozilla/5.0\r\n{\"forged\":true}";
  const std::string line = to_json_line(r);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const auto value = json::parse(line);
  const auto path = value.as_object().at("path").as_string();
  EXPECT_EQ(std::string(path), std::string("/a\"b\\c\nd\x01") + "\xef\xbf\xbd\xef\xbf\xbd" +
                                   "\xc3\xa9" + "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_FALSE(value.as_object().contains("forged"));
}

TEST(FlowRecordSquid, NativeAccessLogLine) {
  FlowRecord r = sample();
  EXPECT_EQ(to_squid_line(r),
            "1764596744.039    141 10.0.0.23 TCP_MISS/200 48213 GET "
            "https://api16-normal-c-useast1a.tiktokv.com/aweme/v1/feed/?device_id=REDACTED - "
            "HIER_DIRECT/23.59.172.11 -");
  r.action = "block";
  r.status = 451;
  EXPECT_NE(to_squid_line(r).find(" TCP_DENIED/451 "), std::string::npos);
  FlowRecord tunnel = sample();
  tunnel.type = FlowType::connection;
  tunnel.verdict = "splice";
  tunnel.status = 200;
  EXPECT_NE(to_squid_line(tunnel).find(" TCP_TUNNEL/200 48213 CONNECT "
                                       "api16-normal-c-useast1a.tiktokv.com:443 "),
            std::string::npos)
      << to_squid_line(tunnel);
  FlowRecord refused = sample();
  refused.type = FlowType::connection;
  refused.verdict = "refuse";
  refused.status.reset();
  EXPECT_NE(to_squid_line(refused).find(" TCP_DENIED/000 "), std::string::npos);
  FlowRecord spaced = sample();
  spaced.path = "/a b";
  EXPECT_NE(to_squid_line(spaced).find("/a%20b"), std::string::npos);
}

TEST(UserAgentClass, TikTokAppWebviewAndOthers) {
  EXPECT_EQ(classify_user_agent("com.zhiliaoapp.musically/2023501030 (Linux; U; Android 13)"),
            "tiktok-app");
  EXPECT_EQ(classify_user_agent("Mozilla/5.0 (Linux; Android 13; wv) AppleWebKit/537.36 "
                                "Chrome/119.0 Mobile Safari/537.36 musical_ly_2023501030 "
                                "BytedanceWebview/d8a21c6"),
            "tiktok-webview");
  EXPECT_EQ(classify_user_agent("Mozilla/5.0 (iPhone) MicroMessenger/8.0.40"), "wechat");
  EXPECT_EQ(classify_user_agent("Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"), "browser");
  EXPECT_EQ(classify_user_agent("curl/7.88.1"), "cli");
  EXPECT_EQ(classify_user_agent("SomethingElse/1"), "other");
  EXPECT_EQ(classify_user_agent(""), "");
}

TEST(QueryPrivacy, RedactKeepsNamesOnly) {
  EXPECT_EQ(apply_query_privacy("device_id=123&aid=1233&flag&empty=", QueryPrivacy::redact),
            "device_id=REDACTED&aid=REDACTED&flag&empty=");
  EXPECT_EQ(apply_query_privacy("a=1", QueryPrivacy::full), "a=1");
  EXPECT_EQ(apply_query_privacy("a=1", QueryPrivacy::omit), std::nullopt);
  EXPECT_EQ(apply_query_privacy("", QueryPrivacy::redact), "");
  EXPECT_EQ(apply_query_privacy(std::string(1000, 'n') + "=v", QueryPrivacy::redact)->size(),
            256u + 9u);
}

TEST(ClientPseudonym, StablePerKeyDifferentAcrossKeys) {
  auto a = ClientPseudonymiser::from_key(std::string(32, 'a'));
  auto b = ClientPseudonymiser::from_key(std::string(32, 'b'));
  EXPECT_EQ(a.pseudonym("10.0.0.1"), a.pseudonym("10.0.0.1"));
  EXPECT_NE(a.pseudonym("10.0.0.1"), a.pseudonym("10.0.0.2"));
  EXPECT_NE(a.pseudonym("10.0.0.1"), b.pseudonym("10.0.0.1"));
  EXPECT_EQ(a.pseudonym("10.0.0.1").size(), 5u + 16u);
  EXPECT_TRUE(a.pseudonym("10.0.0.1").starts_with("anon:"));
}

TEST(ClientPseudonym, KeyFileCreatedPrivateAndReused) {
  const auto dir = temp_dir();
  const auto key = dir / "client.key";
  auto first = ClientPseudonymiser::load_or_create(key);
  ASSERT_TRUE(first) << first.error();
  struct stat info {};
  ASSERT_EQ(::stat(key.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  auto second = ClientPseudonymiser::load_or_create(key);
  ASSERT_TRUE(second) << second.error();
  EXPECT_EQ(first->pseudonym("192.0.2.1"), second->pseudonym("192.0.2.1"));
  ::chmod(key.c_str(), 0644);
  auto exposed = ClientPseudonymiser::load_or_create(key);
  ASSERT_FALSE(exposed);
  EXPECT_NE(exposed.error().find("readable by group or others"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(FlowSink, WritesEveryRecordAndReopens) {
  const auto dir = temp_dir();
  const auto path = dir / "flows.jsonl";
  FlowSink::Options options;
  options.path = path;
  options.lanes = 2;
  auto sink = FlowSink::open(options);
  ASSERT_TRUE(sink) << sink.error();
  for (int i = 0; i < 100; ++i) EXPECT_TRUE((*sink)->submit(i % 2, sample()));
  // logrotate: rename, then ask for a reopen; new records land in the new file.
  for (int i = 0; i < 50 && (*sink)->written() < 100; ++i) std::this_thread::sleep_for(10ms);
  std::filesystem::rename(path, dir / "flows.jsonl.1");
  (*sink)->request_reopen();
  for (int i = 0; i < 20; ++i) EXPECT_TRUE((*sink)->submit(0, sample()));
  (*sink)->stop();
  EXPECT_EQ(lines_of(dir / "flows.jsonl.1").size(), 100u);
  EXPECT_EQ(lines_of(path).size(), 20u);
  EXPECT_EQ((*sink)->written(), 120u);
  EXPECT_EQ((*sink)->dropped(), 0u);
  for (const auto& line : lines_of(path)) EXPECT_NO_THROW(json::parse(line));
  std::filesystem::remove_all(dir);
}

TEST(FlowSink, StalledOutputDropsAndNeverBlocks) {
  ::signal(SIGPIPE, SIG_IGN);  // as tokgate does: a closed reader is EPIPE, not death
  const auto dir = temp_dir();
  const auto fifo = dir / "stalled";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A reader that never reads: the pipe fills, the writer thread blocks in write(2).
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  FlowSink::Options options;
  options.path = fifo;
  options.queue = 64;
  auto sink = FlowSink::open(options);
  ASSERT_TRUE(sink) << sink.error();
  const auto started = std::chrono::steady_clock::now();
  uint64_t accepted = 0;
  for (int i = 0; i < 20000; ++i) accepted += (*sink)->submit(0, sample()) ? 1 : 0;
  const auto spent = std::chrono::steady_clock::now() - started;
  EXPECT_GT((*sink)->dropped(), 0u);
  EXPECT_EQ(accepted + (*sink)->dropped(), 20000u);
  // Generous: 20000 submissions that never wait take milliseconds, a blocked one forever.
  EXPECT_LT(spent, 5s);
  ::close(reader);  // the blocked write fails with EPIPE; the writer thread can now finish
  (*sink)->stop();
  std::filesystem::remove_all(dir);
}

TEST(FlowSink, FifoWithoutReaderIsAnErrorNotAHang) {
  const auto dir = temp_dir();
  const auto fifo = dir / "nobody";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  FlowSink::Options options;
  options.path = fifo;
  auto sink = FlowSink::open(options);
  ASSERT_FALSE(sink);
  EXPECT_NE(sink.error().find("no reader"), std::string::npos) << sink.error();
  std::filesystem::remove_all(dir);
}

TEST(FlowSink, ObserversSeeRecordsWithoutAFile) {
  FlowSink::Options options;
  auto sink = FlowSink::open(options);
  ASSERT_TRUE(sink) << sink.error();
  std::atomic<int> seen{0};
  (*sink)->add_observer([&](const FlowRecord& record) {
    if (record.conn == 7) ++seen;
  });
  for (int i = 0; i < 10; ++i) (*sink)->submit(0, sample());
  (*sink)->stop();
  EXPECT_EQ(seen.load(), 10);
}

}  // namespace
}  // namespace tokgate::proxy
