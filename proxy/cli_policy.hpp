// `tokgate policy ...` and `tokgate catalog ...` (no network).
#pragma once

#include <expected>
#include <span>
#include <string>
#include <string_view>

#include "policy/catalog.hpp"
#include "policy/policy.hpp"

namespace tokgate::proxy {

int run_policy_command(std::span<const std::string_view> args);
int run_catalog_command(std::span<const std::string_view> args);

// What `policy explain --json` prints for one request (the web UI's explain form uses it).
// Headers are "Name: value" lines. An error says what is wrong with the input.
std::expected<std::string, std::string> explain_request_json(
    const policy::Catalog& catalog, const policy::Policy& policy, std::string_view url,
    std::string_view method, std::string_view user_agent, std::span<const std::string> headers);

}  // namespace tokgate::proxy
