#include "web-ui/block_page.hpp"

#include <gtest/gtest.h>

namespace tokgate::webui {
namespace {

BlockInfo hostile_info() {
  return BlockInfo{"Org <b>&</b>",
                   "No \"TikTok\" here",
                   "in-app-browser",
                   "block-<script>alert(1)</script>",
                   "evil.example\"><img src=x>",
                   "gateway"};
}

TEST(BlockPage, HtmlForBrowsersWithEverythingEscaped) {
  auto page = render_block_page(hostile_info(), "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8");
  EXPECT_EQ(page.content_type, "text/html; charset=utf-8");
  EXPECT_EQ(page.body.find("<script>"), std::string::npos);
  EXPECT_EQ(page.body.find("<img"), std::string::npos);
  EXPECT_NE(page.body.find("block-&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(page.body.find("Org &lt;b&gt;&amp;&lt;/b&gt;"), std::string::npos);
  EXPECT_NE(page.body.find("No &quot;TikTok&quot; here"), std::string::npos);
  EXPECT_NE(page.body.find("in-app-browser"), std::string::npos);
  // No external resources: the page must render on a device that trusts nothing yet.
  EXPECT_EQ(page.body.find("http://"), std::string::npos);
  EXPECT_EQ(page.body.find("https://"), std::string::npos);
}

TEST(BlockPage, JsonForApiClients) {
  for (const char* accept : {"", "application/json", "*/*"}) {
    auto page = render_block_page(hostile_info(), accept);
    EXPECT_EQ(page.content_type, "application/json") << accept;
    EXPECT_NE(page.body.find("\"error\":\"blocked\""), std::string::npos);
    EXPECT_NE(page.body.find("\"status\":451"), std::string::npos);
    EXPECT_NE(page.body.find("\"host\":\"evil.example\\\"><img src=x>\""), std::string::npos)
        << page.body;
  }
}

TEST(BlockPage, JsonEscapesControlCharacters) {
  EXPECT_EQ(json_escape("a\"b\\c\nd\x01"), "a\\\"b\\\\c\\nd\\u0001");
  EXPECT_EQ(html_escape("'<&>\""), "&#39;&lt;&amp;&gt;&quot;");
}

TEST(BlockPage, DefaultRuleIsNamed) {
  BlockInfo info = hostile_info();
  info.rule = "";
  auto page = render_block_page(info, "text/html");
  EXPECT_NE(page.body.find("(default)"), std::string::npos);
  EXPECT_NE(render_block_page(info, "").body.find("\"rule\":null"), std::string::npos);
}

}  // namespace
}  // namespace tokgate::webui
