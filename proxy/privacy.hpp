// What the evidence may say about people: query values, client addresses. Defaults keep what
// identifies software and servers and redact what identifies a person or a session
// (docs/flow-log.md, "Privacy").
#pragma once

#include <array>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace tokgate::proxy {

enum class QueryPrivacy : uint8_t { redact, full, omit };
std::string_view to_string(QueryPrivacy mode);
std::optional<QueryPrivacy> parse_query_privacy(std::string_view name);

// "a=1&b=&c" -> "a=REDACTED&b=&c" (names kept, non-empty values replaced); nullopt for omit.
// Names are kept as sent (percent-encoded), cut at 256 bytes each.
std::optional<std::string> apply_query_privacy(std::string_view query, QueryPrivacy mode);

// A keyed hash of client addresses: "anon:" + 16 hex digits of HMAC-SHA256(key, address), so
// one client stays one pseudonym for as long as the key is kept, and nobody without the key
// can test a guess.
class ClientPseudonymiser {
 public:
  // Reads the key file (at least 32 bytes); creates it with 32 random bytes, mode 0600, if it
  // does not exist. A key file readable by group or others is refused.
  static std::expected<ClientPseudonymiser, std::string> load_or_create(
      const std::filesystem::path& key_file);
  static ClientPseudonymiser from_key(std::string_view key);

  std::string pseudonym(std::string_view address) const;

 private:
  std::string key_;
};

}  // namespace tokgate::proxy
