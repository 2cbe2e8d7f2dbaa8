// The page a client gets when policy blocks its request (HTTP 451): HTML for browsers, JSON for
// API clients, chosen by the request's Accept header. Every field may come from the network or
// from an operator's file, so all of it is escaped.
#pragma once

#include <string>
#include <string_view>

namespace tokgate::webui {

struct BlockInfo {
  std::string_view organisation;
  std::string_view message;
  std::string_view category;
  std::string_view rule;
  std::string_view host;
  std::string_view policy_name;
};

struct BlockPage {
  std::string content_type;
  std::string body;
};

BlockPage render_block_page(const BlockInfo& info, std::string_view accept);

std::string html_escape(std::string_view text);
std::string json_escape(std::string_view text);  // without the surrounding quotes

}  // namespace tokgate::webui
