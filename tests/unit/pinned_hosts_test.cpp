#include "proxy/pinned_hosts.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace tokgate::proxy {
namespace {

using namespace std::chrono_literals;

TEST(PinnedHosts, RemembersUntilExpiry) {
  PinnedHosts table(10);
  EXPECT_FALSE(table.contains("api.tiktokv.com"));
  table.remember("api.tiktokv.com", 1s);
  EXPECT_TRUE(table.contains("api.tiktokv.com"));
  EXPECT_FALSE(table.contains("tiktokv.com"));  // exact names, not suffixes
  table.remember("gone.example", 0s);
  EXPECT_FALSE(table.contains("gone.example"));  // expired at once
  EXPECT_EQ(table.size(), 1u);                   // and dropped when looked at
}

TEST(PinnedHosts, BoundedOldestFirst) {
  PinnedHosts table(3);
  for (const char* host : {"a.example", "b.example", "c.example", "d.example"}) {
    table.remember(host, 60s);
  }
  EXPECT_EQ(table.size(), 3u);
  EXPECT_FALSE(table.contains("a.example"));
  EXPECT_TRUE(table.contains("d.example"));
  // Remembering again refreshes an entry: it becomes the newest.
  table.remember("b.example", 60s);
  table.remember("e.example", 60s);
  EXPECT_TRUE(table.contains("b.example"));
  EXPECT_FALSE(table.contains("c.example"));
}

TEST(PinnedHosts, ZeroCapacityHoldsOne) {
  PinnedHosts table(0);
  table.remember("a.example", 60s);
  table.remember("b.example", 60s);
  EXPECT_EQ(table.size(), 1u);
  EXPECT_TRUE(table.contains("b.example"));
}

TEST(PinnedHosts, ConcurrentUseStaysBounded) {
  PinnedHosts table(50);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&table, t] {
      for (int i = 0; i < 2000; ++i) {
        std::string host = "h" + std::to_string((i * 7 + t) % 200) + ".example";
        table.remember(host, 60s);
        (void)table.contains(host);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_LE(table.size(), 50u);
}

}  // namespace
}  // namespace tokgate::proxy
