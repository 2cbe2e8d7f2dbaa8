// The operator's policy: ordered rules, first match wins, in TOML. Decides per connection
// (splice | refuse | intercept, from the host alone) and per request (allow | log | block |
// refuse | splice | capture). Immutable once parsed: the proxy swaps whole snapshots on reload.
#pragma once

#include <chrono>
#include <cstddef>
#include <expected>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "policy/catalog.hpp"
#include "policy/types.hpp"

namespace tokgate::policy {

struct ConnectionDecision {
  ConnectionVerdict verdict = ConnectionVerdict::splice;
  Category category = Category::none;  // of the host alone
  std::string_view rule;               // name of the rule that decided; "" = the default
  std::string_view message;            // the rule's message, if any
};

struct RequestDecision {
  Action action = Action::allow;
  std::string_view rule;      // "" = the default action
  std::string_view message;   // the rule's message, or the policy's block message
  bool full_capture = false;  // a log/capture rule with privacy = "full": nothing redacted
};

enum class PinnedAction : uint8_t { refuse, splice };

class PolicyData;

class Policy {
 public:
  // Errors are "NAME:LINE:COL: what is wrong", one per line, every error found.
  static std::expected<std::shared_ptr<const Policy>, std::string> parse(
      std::string_view toml_text, std::string_view source_name);
  static std::expected<std::shared_ptr<const Policy>, std::string> load_file(
      const std::filesystem::path& path);
  // The profiles shipped in the binary: "gateway" and "observe".
  static std::expected<std::shared_ptr<const Policy>, std::string> profile(std::string_view name);
  static std::vector<std::string_view> profile_names();

  ~Policy();
  Policy(const Policy&) = delete;
  Policy& operator=(const Policy&) = delete;

  // Connection stage, for one name (the proxy asks for the CONNECT host and for the SNI and
  // keeps the stricter verdict). `facts` has host, port and client only.
  ConnectionDecision decide_connection(const Catalog& catalog, const RequestFacts& facts) const;
  // Request stage: the request's facts and its classification.
  RequestDecision decide_request(const RequestFacts& facts,
                                 const Classification& classification) const;

  const std::string& name() const;          // [policy] name
  const std::string& organisation() const;  // shown on block pages
  const std::string& source() const;        // file path or "profile:gateway"
  PinnedAction on_pinned() const;
  std::chrono::seconds pinned_memory() const;  // how long a pinned host is remembered
  std::size_t pinned_table_size() const;
  std::size_t rule_count() const;

 private:
  explicit Policy(std::unique_ptr<PolicyData> data);
  std::unique_ptr<PolicyData> data_;
};

}  // namespace tokgate::policy
