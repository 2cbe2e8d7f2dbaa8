// The flow record: the one data structure everything downstream of a connection reads (the
// flow log, metrics, HAR capture, the report, the web UI). docs/flow-log.md is its schema.
// Owning values only: a record leaves the worker that made it for the sink's thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tokgate::proxy {

struct HarExchange;

enum class FlowType : uint8_t { request, connection };
std::string_view to_string(FlowType type);

struct FlowRecord {
  FlowType type = FlowType::request;
  std::chrono::system_clock::time_point started{};
  std::string flow;  // "C", "C.N", "C.sS"
  uint64_t conn = 0;

  std::string client_ip;  // already pseudonymised when the privacy setting says so
  std::optional<uint16_t> client_port;
  std::string listener;
  std::string mode;  // "explicit" | "transparent"

  std::string sni;
  std::string host;
  std::optional<uint16_t> port;
  std::string scheme;
  std::string method;
  std::string path;
  std::optional<std::string> query;  // already redacted per privacy; nullopt = omit
  std::optional<unsigned> status;
  std::optional<uint64_t> bytes_up;
  std::optional<uint64_t> bytes_down;

  std::optional<double> connect_ms;
  std::optional<double> tls_ms;
  std::optional<double> first_byte_ms;
  std::optional<double> total_ms;

  std::optional<bool> bumped;
  std::string verdict;
  std::string client_alpn, server_alpn;
  std::string client_tls, server_tls;

  std::string category;
  std::vector<std::string> evidence;  // "kind:signature:matched"
  std::string rule;
  std::string action;

  std::string upstream_ip;
  std::optional<uint16_t> upstream_port;
  std::string upstream_country;
  std::optional<uint32_t> upstream_asn;
  std::string upstream_as_org;

  std::string ua_class;
  std::string user_agent;

  std::optional<uint64_t> ws_messages_up, ws_messages_down;
  std::optional<unsigned> ws_close_code;

  std::string capture;  // HAR file path, set by the sink once the file is written
  // Action capture: the exchange itself, written as a HAR file by the sink's thread.
  std::shared_ptr<HarExchange> har;
  bool har_full = false;  // the rule said privacy = "full": nothing redacted
  std::string error;
  std::string error_reason;
};

// One JSON object, no newline. Empty strings and unset optionals are left out.
std::string to_json_line(const FlowRecord& record);
// Squid's native access.log line, no newline (docs/flow-log.md, "Squid format").
std::string to_squid_line(const FlowRecord& record);

// "tiktok-app", "tiktok-webview", "wechat", "browser", "cli", "other"; "" when no User-Agent.
std::string_view classify_user_agent(std::string_view user_agent);

// RFC 3339 UTC with milliseconds: "2026-12-01T13:45:44.039Z".
std::string format_timestamp(std::chrono::system_clock::time_point when);

}  // namespace tokgate::proxy
