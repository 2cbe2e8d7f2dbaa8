// A connection that did not ask for a proxy: redirected to a transparent listener by the
// gateway's nftables/iptables REDIRECT (original destination from SO_ORIGINAL_DST) or TPROXY
// (the local address is the original destination). The name comes from the TLS SNI, or the
// Host header of a plain HTTP request; the connection goes to the address the client chose.
// Also: the PROXY protocol header of a connection from a load balancer.
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <boost/asio/write.hpp>

#include "proxy/client_session.hpp"
#include "proxy/log.hpp"
#include "proxy/proxy_protocol.hpp"
#include "proxy/runtime.hpp"
#include "proxy/worker.hpp"

namespace tokgate::proxy {

namespace {

constexpr std::size_t kProxyHeaderBytes = 4096;

// Where the client meant to go. REDIRECT rewrites the destination and keeps the original for
// SO_ORIGINAL_DST; TPROXY leaves it as the socket's local address.
tcp::endpoint original_destination(tcp::socket& socket) {
  error_code ec;
  const tcp::endpoint local = socket.local_endpoint(ec);
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  const bool v6 = local.address().is_v6();
  const int level = v6 ? SOL_IPV6 : SOL_IP;
  const int option = v6 ? IP6T_SO_ORIGINAL_DST : SO_ORIGINAL_DST;
  if (::getsockopt(socket.native_handle(), level, option, &address, &length) == 0) {
    if (address.ss_family == AF_INET) {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&address);
      asio::ip::address_v4::bytes_type bytes;
      std::memcpy(bytes.data(), &in->sin_addr, 4);
      return {asio::ip::address_v4(bytes), ntohs(in->sin_port)};
    }
    if (address.ss_family == AF_INET6) {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&address);
      asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), &in6->sin6_addr, 16);
      return {asio::ip::address_v6(bytes), ntohs(in6->sin6_port)};
    }
  }
  return local;
}

std::optional<std::string> host_header_of(std::span<const uint8_t> bytes) {
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  const auto end = text.find("\r\n\r\n");
  if (end == std::string_view::npos) return std::nullopt;
  text = text.substr(0, end + 2);
  std::size_t at = 0;
  while ((at = text.find("\r\n", at)) != std::string_view::npos) {
    at += 2;
    std::string_view line = text.substr(at, text.find("\r\n", at) - at);
    if (line.size() > 5 && (line[0] == 'H' || line[0] == 'h') &&
        (line.substr(0, 5) == "Host:" || line.substr(0, 5) == "host:" ||
         line.substr(0, 5) == "HOST:")) {
      std::string_view value = line.substr(5);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
        value.remove_prefix(1);
      }
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
        value.remove_suffix(1);
      }
      if (value.starts_with('[')) {
        const auto close = value.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        return normalized(value.substr(0, close + 1));
      }
      if (const auto colon = value.rfind(':'); colon != std::string_view::npos) {
        value = value.substr(0, colon);
      }
      return normalized(value);
    }
  }
  return std::nullopt;
}

}  // namespace

awaitable<bool> ClientSession::read_proxy_header() {
  deadline_.set(config_.timeouts.proxy_header, "proxy-header");
  std::vector<uint8_t> bytes;
  for (;;) {
    auto parsed = parse_proxy_header(bytes);
    if (parsed) {
      const ProxyHeader& header = *parsed;
      if (header.command == ProxyHeader::Command::proxy && header.source) {
        client_ip_ = header.source->address;
        client_endpoint_ =
            tcp::endpoint(asio::ip::make_address(client_ip_.to_string()), header.source->port);
        if (runtime_.pseudonymiser) {
          facts_.client_ip = runtime_.pseudonymiser->pseudonym(client_ip_.to_string());
        } else {
          facts_.client_ip = client_ip_.to_string();
          facts_.client_port = header.source->port;
        }
      }
      // (LOCAL: the balancer's own health check; the connection's own address stands.)
      preread_.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header.length), bytes.end());
      deadline_.clear();
      co_return true;
    }
    if (parsed.error() != ProxyHeaderError::need_more || bytes.size() >= kProxyHeaderBytes) {
      log::warn("proxy-protocol-refused")
          .kv("conn", id_)
          .kv("peer", client_ip_.to_string())
          .kv("error", to_string(parsed.error()));
      rejected_ = true;
      co_return false;  // nothing is answered: the peer is not speaking the protocol we expect
    }
    const std::size_t old_size = bytes.size();
    bytes.resize(std::min(kProxyHeaderBytes, old_size + 512));
    auto [ec, n] = co_await client_socket_.async_read_some(
        asio::buffer(bytes.data() + old_size, bytes.size() - old_size), use_nothrow);
    bytes.resize(old_size + n);
    if (ec) {
      log::warn("proxy-protocol-refused")
          .kv("conn", id_)
          .kv("peer", client_ip_.to_string())
          .kv("error", deadline_.expired() ? std::string("timeout") : ec.message());
      rejected_ = true;
      co_return false;
    }
  }
}

awaitable<void> ClientSession::serve_transparent() {
  auto executor = client_socket_.get_executor();
  const tcp::endpoint original = original_destination(client_socket_);
  const IpAddress original_ip = to_ip_address(original.address());
  Target target{original_ip.to_string(), original.port()};
  facts_.host = target.host;
  facts_.port = target.port;
  std::vector<tcp::endpoint> destination{original};
  if (auto own = own_endpoint_failure(destination)) {
    // Not redirected at all (someone connected to the listener itself): a loop.
    log::warn("transparent-loop").kv("conn", id_).kv("destination", original_ip.to_string());
    FlowRecord record = connection_record();
    record.error = own->code;
    record.error_reason = own->reason;
    emit(std::move(record));
    co_return;
  }

  // The first bytes say what this is: a TLS ClientHello (name from SNI) or HTTP (from Host).
  deadline_.set(config_.timeouts.client_hello, "client-hello");
  std::vector<uint8_t> first;
  std::optional<std::expected<ClientHello, ClientHelloError>> hello =
      co_await read_client_hello(first, target.host);
  if (!hello) co_return;

  tcp::socket server(executor);
  auto connect_original = [&]() -> awaitable<bool> {
    server_lowest_ = &server;
    deadline_.set(config_.timeouts.connect, "connect");
    const auto started = std::chrono::steady_clock::now();
    auto [ec] = co_await server.async_connect(original, use_nothrow);
    if (ec) {
      FlowRecord record = connection_record();
      record.error = "upstream-connect";
      record.error_reason = "cannot connect to " + original_ip.to_string() + ": " + ec.message();
      emit(std::move(record));
      co_return false;
    }
    facts_.connect_ms = ms_since(started);
    note_upstream(server);
    co_return true;
  };

  if (!*hello && hello->error() == ClientHelloError::not_tls) {
    // Plain HTTP: each request goes through the request policy, to the address it was for.
    facts_.scheme = "http";
    if (auto host = host_header_of(first)) facts_.host = *host;
    if (!co_await connect_original()) co_return;
    preread_ = std::move(first);
    log::info("connection")
        .kv("conn", id_)
        .kv("mode", "transparent")
        .kv("client", client_ip_.to_string())
        .kv("destination", original_ip.to_string())
        .kv("port", target.port)
        .kv("host", facts_.host)
        .kv("tls", false);
    const std::optional<Failure> no_failure;
    const std::string host = facts_.host;
    co_await serve_intercepted(client_socket_, server, no_failure, host, target.port);
    co_return;
  }
  if (!*hello) {
    log::warn("bad-client-hello")
        .kv("conn", id_)
        .kv("destination", original_ip.to_string())
        .kv("error", to_string(hello->error()));
    FlowRecord record = connection_record();
    record.error = "bad-client-hello";
    record.error_reason = std::string(to_string(hello->error()));
    emit(std::move(record));
    co_return;
  }

  // TLS: the SNI names the target (an IP literal when there is none).
  facts_.scheme = "https";
  std::optional<std::string> sni = (*hello)->sni.empty() ? std::nullopt : normalized((*hello)->sni);
  if (sni) target.host = *sni;
  facts_.host = target.host;
  facts_.sni = sni.value_or("");
  snapshot_ = runtime_.policy.current();
  policy::RequestFacts request_facts;
  request_facts.host = target.host;
  request_facts.port = target.port;
  request_facts.client = client_ip_;
  const policy::ConnectionDecision decision = runtime_.decide_connection(*snapshot_, request_facts);
  facts_.verdict = policy::to_string(decision.verdict);
  facts_.category = policy::to_string(decision.category);
  facts_.rule = decision.rule;
  log::info("connection")
      .kv("conn", id_)
      .kv("mode", "transparent")
      .kv("client", client_ip_.to_string())
      .kv("destination", original_ip.to_string())
      .kv("port", target.port)
      .kv("sni", facts_.sni)
      .kv("category", facts_.category)
      .kv("rule", decision.rule)
      .kv("verdict", facts_.verdict);
  switch (decision.verdict) {
    case ConnectionVerdict::refuse:
      co_await refuse_tls(**hello);
      break;
    case ConnectionVerdict::splice:
      if (!co_await connect_original()) co_return;
      co_await splice(server, first);
      break;
    case ConnectionVerdict::intercept:
      if (!co_await connect_original()) co_return;
      co_await intercept(std::move(server), **hello, first, target);
      break;
  }
}

}  // namespace tokgate::proxy
