// `tokgate policy ...` and `tokgate catalog ...` (no network).
#pragma once

#include <span>
#include <string_view>

namespace tokgate::proxy {

int run_policy_command(std::span<const std::string_view> args);
int run_catalog_command(std::span<const std::string_view> args);

}  // namespace tokgate::proxy
