// The command line: `tokgate run|ca ...`. Exit codes: 0 ok, 1 runtime failure, 2 usage or
// configuration error.
#pragma once

#include <span>
#include <string_view>

namespace tokgate::proxy {

int run_cli(std::span<const std::string_view> args);

}  // namespace tokgate::proxy
