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
  // Percent-escapes decoded once (as the origin will), then the segments resolved on the decoded
  // text: empty and "." segments dropped, ".." removes the one before it and never climbs above
  // the root. Doing it in that order means "/.//aweme", "/..//aweme" and "/a/../../aweme" all
  // become "/aweme".
  std::string decoded;
  if (auto parsed = boost::urls::parse_origin_form(path)) {
    decoded = parsed->path();
  } else {
    decoded = path.substr(0, path.find('?'));  // not a valid origin-form: match it as it came
  }
  std::vector<std::string_view> segments;
  std::string_view rest = decoded;
  bool trailing_slash = false;
  while (!rest.empty()) {
    const std::size_t slash = rest.find('/');
    const std::string_view segment = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    const bool last = slash == std::string_view::npos;
    if (segment.empty() || segment == ".") {
      trailing_slash = last || rest.empty();
      continue;
    }
    if (segment == "..") {
      if (!segments.empty()) segments.pop_back();
      trailing_slash = last || rest.empty();
      continue;
    }
    segments.push_back(segment);
    trailing_slash = !last && rest.empty();
  }
  std::string out;
  out.reserve(decoded.size() + 1);
  for (const auto& segment : segments) {
    out.push_back('/');
    out.append(segment);
  }
  if (out.empty() || trailing_slash) out.push_back('/');
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
