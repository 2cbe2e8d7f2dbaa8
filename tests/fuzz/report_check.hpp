// The error report every TOML loader returns ("NAME:LINE:COL: what is wrong", one per line): it
// is printed to terminals and logs, so hostile input must not inject lines or escapes into it.
#pragma once

#include <string_view>

#include "fuzz_check.hpp"

// `syntax_errors_escaped = false` for the loaders with known bug 3 (README.md): the catalog
// loader passes toml++'s syntax-error text through unescaped (a newline, ESC, other controls)
// and the policy loader lets DEL (0x7f) through. A syntax error (toml++ stops at the first, so
// it is the whole report) is then checked line by line only in strict mode.
inline void check_error_report(std::string_view report, std::string_view source_name,
                               bool syntax_errors_escaped = true) {
  FUZZ_CHECK(!report.empty());
  FUZZ_CHECK(report.starts_with(source_name) && report.size() > source_name.size() &&
             report[source_name.size()] == ':');
  if (!syntax_errors_escaped && !fuzz_strict() &&
      report.find(": Error while parsing ") != std::string_view::npos) {
    return;
  }
  while (!report.empty()) {
    auto newline = report.find('\n');
    std::string_view line = report.substr(0, newline);
    FUZZ_CHECK(line.starts_with(source_name) && line.size() > source_name.size() &&
               line[source_name.size()] == ':');
    for (char c : line) FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f);
    if (newline == std::string_view::npos) break;
    report.remove_prefix(newline + 1);
    FUZZ_CHECK(!report.empty());  // no trailing empty line
  }
}
