// The web UI's feed: a bounded window of records, filters, and live aggregates.
#include <gtest/gtest.h>

#include "web-ui/flow_feed.hpp"

namespace tokgate::webui {
namespace {

proxy::FlowRecord record(std::string host, std::string category, std::string action,
                         unsigned status) {
  proxy::FlowRecord r;
  r.started = std::chrono::system_clock::now();
  r.conn = 1;
  r.flow = "1.1";
  r.client_ip = "10.0.0.5";
  r.host = std::move(host);
  r.path = "/";
  r.category = std::move(category);
  r.action = std::move(action);
  r.status = status;
  r.bytes_down = 100;
  return r;
}

TEST(FlowFeed, KeepsABoundedWindowNewestFirst) {
  FlowFeed feed(3);
  for (int i = 0; i < 5; ++i)
    feed.add(record("h" + std::to_string(i) + ".test", "web", "log", 200));
  const std::string json = feed.flows_json({});
  EXPECT_EQ(json.find("h0.test"), std::string::npos);
  EXPECT_EQ(json.find("h1.test"), std::string::npos);
  EXPECT_LT(json.find("h4.test"), json.find("h2.test"));
  EXPECT_NE(json.find("\"last\":5"), std::string::npos) << json;
  EXPECT_TRUE(json.starts_with("{\"flows\":[{\"seq\":5,")) << json;
  std::string har;
  EXPECT_FALSE(feed.flow_json(1, &har));
  ASSERT_TRUE(feed.flow_json(4, &har));
  EXPECT_NE(feed.flow_json(4, &har)->find("h3.test"), std::string::npos);
}

TEST(FlowFeed, FiltersCombine) {
  FlowFeed feed;
  feed.add(record("www.tiktok.com", "web", "block", 451));
  feed.add(record("api.tiktokv.com", "app-api", "log", 200));
  feed.add(record("example.org", "none", "allow", 404));
  FlowFilter blocked;
  blocked.action = "block";
  EXPECT_NE(feed.flows_json(blocked).find("www.tiktok.com"), std::string::npos);
  EXPECT_EQ(feed.flows_json(blocked).find("api.tiktokv.com"), std::string::npos);
  FlowFilter host;
  host.host = "tiktok";
  host.status = "2xx";
  const auto json = feed.flows_json(host);
  EXPECT_NE(json.find("api.tiktokv.com"), std::string::npos);
  EXPECT_EQ(json.find("www.tiktok.com"), std::string::npos);
  FlowFilter after;
  after.after = 2;
  EXPECT_EQ(feed.flows_json(after).find("tiktok"), std::string::npos);
  uint64_t last = 0;
  EXPECT_EQ(feed.flows_after(1, 10, &last).size(), 2u);
  EXPECT_EQ(last, 3u);
}

TEST(FlowFeed, StatsCountActionsFailuresAndTopLists) {
  FlowFeed feed;
  for (int i = 0; i < 3; ++i) feed.add(record("www.tiktok.com", "web", "block", 451));
  auto geo = record("api.tiktokv.com", "app-api", "log", 200);
  geo.upstream_country = "US";
  geo.upstream_asn = 20940;
  geo.upstream_as_org = "Akamai \"Intl\"";
  feed.add(geo);
  auto pinned = record("api.tiktokv.com", "app-api", "", 0);
  pinned.type = proxy::FlowType::connection;
  pinned.error = "pinned";
  feed.add(pinned);
  const std::string stats = feed.stats_json();
  EXPECT_NE(stats.find("\"requests_total\":4"), std::string::npos) << stats;
  EXPECT_NE(stats.find("\"web\":{\"block\":3}"), std::string::npos) << stats;
  EXPECT_NE(stats.find("\"client\":{\"rejected-certificate\":1}"), std::string::npos) << stats;
  EXPECT_NE(stats.find("{\"host\":\"www.tiktok.com\",\"flows\":3,\"bytes\":300}"),
            std::string::npos)
      << stats;
  EXPECT_NE(stats.find("{\"country\":\"US\",\"flows\":1"), std::string::npos) << stats;
  EXPECT_NE(stats.find("{\"asn\":20940,\"org\":\"Akamai \\\"Intl\\\"\""), std::string::npos)
      << stats;
  EXPECT_NE(stats.find("\"rps\":["), std::string::npos);
}

TEST(FlowFeed, TopListsStayBounded) {
  FlowFeed feed(10);
  for (std::size_t i = 0; i < FlowFeed::kMaxTrackedKeys + 500; ++i) {
    feed.add(record("h" + std::to_string(i) + ".test", "none", "allow", 200));
  }
  for (int i = 0; i < 5; ++i) feed.add(record("heavy.test", "none", "allow", 200));
  EXPECT_NE(feed.stats_json().find("\"heavy.test\",\"flows\":5"), std::string::npos);
}

}  // namespace
}  // namespace tokgate::webui
