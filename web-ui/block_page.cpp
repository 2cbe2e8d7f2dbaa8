#include "web-ui/block_page.hpp"

#include <cstdio>

namespace tokgate::webui {

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 16);
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string json_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 8);
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out;
}

namespace {

bool wants_html(std::string_view accept) {
  return accept.find("text/html") != std::string_view::npos ||
         accept.find("application/xhtml") != std::string_view::npos;
}

// Small, self-contained, no external resources: it must render on a phone that trusts nothing.
constexpr std::string_view kStyle =
    "body{margin:0;font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;"
    "background:#f4f5f7;color:#1d2430}"
    "main{max-width:34rem;margin:10vh auto;background:#fff;border-radius:12px;padding:2rem;"
    "box-shadow:0 1px 3px rgba(0,0,0,.12)}"
    "h1{font-size:1.35rem;margin:0 0 "
    ".75rem}.org{color:#5b6472;font-size:.9rem;margin-bottom:1.5rem}"
    ".badge{display:inline-block;background:#fde8e8;color:#9b1c1c;border-radius:999px;"
    "padding:.1rem .6rem;font-size:.8rem;font-weight:600;margin-bottom:1rem}"
    "dl{display:grid;grid-template-columns:auto 1fr;gap:.25rem 1rem;font-size:.9rem;"
    "color:#5b6472;margin:1.5rem 0 0}dd{margin:0;color:#1d2430;word-break:break-all}"
    "footer{font-size:.75rem;color:#8a93a0;margin-top:1.5rem}";

}  // namespace

BlockPage render_block_page(const BlockInfo& info, std::string_view accept) {
  if (!wants_html(accept)) {
    std::string body = "{\"error\":\"blocked\",\"status\":451";
    body += ",\"category\":\"" + json_escape(info.category) + "\"";
    // The default action has no rule: null, as `tokgate policy explain --json` says it.
    body += info.rule.empty() ? std::string(",\"rule\":null")
                              : ",\"rule\":\"" + json_escape(info.rule) + "\"";
    body += ",\"host\":\"" + json_escape(info.host) + "\"";
    body += ",\"message\":\"" + json_escape(info.message) + "\"";
    body += ",\"organisation\":\"" + json_escape(info.organisation) + "\"";
    body += ",\"policy\":\"" + json_escape(info.policy_name) + "\"}\n";
    return {"application/json", std::move(body)};
  }
  std::string body;
  body.reserve(2048);
  body +=
      "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
      "<title>Blocked by policy</title><style>";
  body += kStyle;
  body +=
      "</style></head><body><main><div class=\"badge\">451 Unavailable For Legal Reasons</div>"
      "<h1>This request was blocked</h1><div class=\"org\">";
  body += html_escape(info.organisation);
  body += "</div><p>";
  body += html_escape(info.message);
  body += "</p><dl><dt>Category</dt><dd>";
  body += html_escape(info.category);
  body += "</dd><dt>Rule</dt><dd>";
  body += html_escape(info.rule.empty() ? std::string_view("(default)") : info.rule);
  body += "</dd><dt>Host</dt><dd>";
  body += html_escape(info.host);
  body += "</dd><dt>Policy</dt><dd>";
  body += html_escape(info.policy_name);
  body += "</dd></dl><footer>tokgate</footer></main></body></html>\n";
  return {"text/html; charset=utf-8", std::move(body)};
}

}  // namespace tokgate::webui
