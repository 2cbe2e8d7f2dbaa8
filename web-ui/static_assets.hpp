// The web UI's files, embedded at build time (cmake/embed_file.cmake), and the security
// policy the pages are served with.
#pragma once

#include <string_view>

namespace tokgate::embedded {
std::string_view webui_index_html();
std::string_view webui_app_js();
std::string_view webui_style_css();
}  // namespace tokgate::embedded

namespace tokgate::webui {
// Only our own files; no inline script or style, no framing, no third party.
inline constexpr std::string_view kPageSecurityPolicy =
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
}  // namespace tokgate::webui
