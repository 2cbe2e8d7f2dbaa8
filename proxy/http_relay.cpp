#include "proxy/http_relay.hpp"

#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>

#include <array>
#include <string_view>
#include <vector>

namespace tokgate::proxy {

void strip_hop_by_hop(http::fields& fields) {
  // Fields named by Connection are hop-by-hop too; collect first, erasing invalidates the view.
  std::vector<std::string> named;
  for (auto it = fields.find(http::field::connection);
       it != fields.end() && it->name() == http::field::connection; ++it) {
    std::string_view value = it->value();
    while (!value.empty()) {
      auto comma = value.find(',');
      auto token = value.substr(0, comma);
      while (!token.empty() && (token.front() == ' ' || token.front() == '\t'))
        token.remove_prefix(1);
      while (!token.empty() && (token.back() == ' ' || token.back() == '\t'))
        token.remove_suffix(1);
      if (!token.empty() && named.size() < 32) named.emplace_back(token);
      if (comma == std::string_view::npos) break;
      value.remove_prefix(comma + 1);
    }
  }
  for (const auto& name : named) {
    // Never let a Connection token remove the framing headers: that would desynchronise us.
    if (beast::iequals(name, "transfer-encoding") || beast::iequals(name, "content-length") ||
        beast::iequals(name, "host")) {
      continue;
    }
    fields.erase(name);
  }
  static constexpr std::array kHopByHop = {
      http::field::connection,
      http::field::keep_alive,
      http::field::proxy_connection,
      http::field::proxy_authorization,
      http::field::proxy_authenticate,
      http::field::te,
      http::field::trailer,
      http::field::upgrade,
  };
  for (auto field : kHopByHop) fields.erase(field);
}

std::string normalized_path_for_policy(std::string_view path) {
  std::string decoded;
  auto parsed = boost::urls::parse_origin_form(path);
  if (parsed) {
    boost::urls::url url(*parsed);
    url.normalize_path();
    decoded = url.path();
  } else {
    decoded = path;  // not a valid origin-form path: match it as it came
  }
  std::string out;
  out.reserve(decoded.size());
  for (char c : decoded) {
    if (c == '/' && !out.empty() && out.back() == '/') continue;
    out.push_back(c);
  }
  if (out.empty()) out = "/";
  return out;
}

http::response<http::string_body> failure_response(const Failure& failure, unsigned version,
                                                   bool keep_alive) {
  http::response<http::string_body> response{failure.status, version};
  response.set(http::field::content_type, "text/plain; charset=utf-8");
  response.set(http::field::cache_control, "no-store");
  response.set("X-Tokgate-Error", failure.code);
  std::string line = "tokgate: " + failure.reason;
  // The reason may quote hostile input (a host name): keep it one printable line.
  for (char& c : line) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  response.body() = std::move(line) + "\n";
  response.keep_alive(keep_alive);
  response.prepare_payload();
  return response;
}

}  // namespace tokgate::proxy
