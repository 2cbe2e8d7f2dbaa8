// loadgen: the load client of bench/compare.py (issue 8). Speaks to an explicit proxy with
// CONNECT, or straight to the origin (--direct), over TLS that trusts ONLY --cacert: a completed
// handshake proves whose certificate the client saw, and the leaf's issuer is compared with the
// CA's subject on every handshake as well. No TLS session reuse (no cache, no tickets).
//
// Modes (one per row of docs/performance.md):
//   conn       one request per connection: CONNECT, full handshake, one GET, close
//   keepalive  HTTP/1.1 requests back to back on --connections kept-alive connections
//   h2         HTTP/2, --streams requests in flight on each of --connections connections
//   rate       open loop: --rate requests/s over a pool of kept-alive connections; latency is
//              measured from each request's scheduled send time (no coordinated omission)
//   idle       opens --connections intercepted connections (one request each), holds them idle
//              and reports the resident memory they cost the process --watch-pid
//
// Each mode has a setup phase (connections opened, one warm-up request each) and a measured
// phase of --duration seconds, after which new work stops and work in flight drains. With
// --watch-pid, the CPU time (utime+stime of that process and its descendants, from /proc) is
// sampled at the two ends of the measured phase, so cpu_ms_per_unit is the proxy's CPU per
// request (per connection in conn mode).
//
// Output: one JSON object on stdout. Exit status 0 when the run completed with no error and
// every handshake chained to --cacert; 1 otherwise; 2 for usage errors.
#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "web-ui/block_page.hpp"

namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using TlsStream = ssl::stream<tcp::socket>;
template <class T = void>
using awaitable = asio::awaitable<T>;
constexpr auto use_awaitable = asio::use_awaitable;
constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

constexpr std::size_t max_body_bytes = 256u << 20;
constexpr std::size_t max_connect_response_bytes = 16u << 10;
constexpr int max_parallel_opens = 32;  // idle mode: handshakes in flight while filling up

// --- options -----------------------------------------------------------------------------------

enum class Mode { conn, keepalive, h2, rate, idle };

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string text() const { return host + ":" + std::to_string(port); }
};

struct Options {
  Mode mode = Mode::keepalive;
  std::string mode_name = "keepalive";
  std::optional<Endpoint> proxy;         // absent with --direct
  Endpoint target;                       // name:port for CONNECT, SNI, Host and the hostname check
  std::string connect_ip = "127.0.0.1";  // --direct: the address the target name stands for
  std::string cacert;                    // the only trust anchor
  std::string path = "/";
  int connections = 4;
  int streams = 8;
  double duration = 3.0;
  double rate = 300.0;
  int warmup = 4;  // conn mode: connections before the measured phase
  int watch_pid = 0;
  double settle = 0.3;  // seconds before the final /proc sample (idle: before the RSS sample)
  double grace = 20.0;  // seconds past --duration before the run is abandoned
  double stall = 10.0;  // seconds without progress on one operation: the peer stalled
  std::uint64_t h2_per_connection = 0;  // h2: streams before a new connection (0: no limit)
  bool samples = false;                 // report every latency (microseconds), for merging runs
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(
      stderr,
      "loadgen: %s\n"
      "usage: loadgen --mode conn|keepalive|h2|rate|idle --target NAME:PORT --cacert FILE\n"
      "               (--proxy IP:PORT | --direct [--connect-ip IP])\n"
      "               [--path /p] [--connections N] [--streams N] [--duration S]\n"
      "               [--rate R] [--warmup N] [--watch-pid PID] [--settle S] [--grace S]\n"
      "               [--stall S] [--h2-streams-per-connection N] [--samples]\n",
      why.c_str());
  std::exit(2);
}

Endpoint parse_endpoint(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0)
    usage("expected HOST:PORT, got " + std::string(text));
  Endpoint e;
  e.host = std::string(text.substr(0, colon));
  const int port = std::atoi(std::string(text.substr(colon + 1)).c_str());
  if (port <= 0 || port > 65535) usage("bad port in " + std::string(text));
  e.port = static_cast<std::uint16_t>(port);
  return e;
}

Options parse_options(int argc, char** argv) {
  Options o;
  bool direct = false;
  bool have_target = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view name = argv[i];
    if (name == "--help" || name == "-h") usage("a load client for bench/compare.py");
    if (name == "--direct") {
      direct = true;
      continue;
    }
    if (name == "--samples") {
      o.samples = true;
      continue;
    }
    if (i + 1 >= argc) usage("missing value for " + std::string(name));
    const std::string value = argv[++i];
    if (name == "--mode") {
      o.mode_name = value;
      if (value == "conn")
        o.mode = Mode::conn;
      else if (value == "keepalive")
        o.mode = Mode::keepalive;
      else if (value == "h2")
        o.mode = Mode::h2;
      else if (value == "rate")
        o.mode = Mode::rate;
      else if (value == "idle")
        o.mode = Mode::idle;
      else
        usage("unknown mode " + value);
    } else if (name == "--proxy") {
      o.proxy = parse_endpoint(value);
    } else if (name == "--target") {
      o.target = parse_endpoint(value);
      have_target = true;
    } else if (name == "--connect-ip") {
      o.connect_ip = value;
    } else if (name == "--cacert") {
      o.cacert = value;
    } else if (name == "--path") {
      o.path = value;
    } else if (name == "--connections") {
      o.connections = std::max(1, std::atoi(value.c_str()));
    } else if (name == "--streams") {
      o.streams = std::max(1, std::atoi(value.c_str()));
    } else if (name == "--duration") {
      o.duration = std::max(0.05, std::atof(value.c_str()));
    } else if (name == "--rate") {
      o.rate = std::max(1.0, std::atof(value.c_str()));
    } else if (name == "--warmup") {
      o.warmup = std::max(0, std::atoi(value.c_str()));
    } else if (name == "--watch-pid") {
      o.watch_pid = std::atoi(value.c_str());
    } else if (name == "--settle") {
      o.settle = std::max(0.0, std::atof(value.c_str()));
    } else if (name == "--grace") {
      o.grace = std::max(1.0, std::atof(value.c_str()));
    } else if (name == "--stall") {
      o.stall = std::max(0.1, std::atof(value.c_str()));
    } else if (name == "--h2-streams-per-connection") {
      o.h2_per_connection = std::strtoull(value.c_str(), nullptr, 10);
    } else {
      usage("unknown option " + std::string(name));
    }
  }
  if (!have_target) usage("--target is required");
  if (o.cacert.empty()) usage("--cacert is required");
  if (direct == o.proxy.has_value()) usage("give exactly one of --proxy and --direct");
  return o;
}

// --- the watched process tree: CPU ticks and resident memory from /proc --------------------------

struct ProcSample {
  std::map<int, std::uint64_t> ticks;  // pid -> utime+stime
  std::uint64_t rss_kib = 0;
  std::uint64_t total_ticks() const {
    std::uint64_t sum = 0;
    for (const auto& [pid, t] : ticks) sum += t;
    return sum;
  }
};

struct StatLine {
  int ppid = 0;
  std::uint64_t ticks = 0;
};

std::optional<StatLine> read_stat(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const auto paren = line.rfind(')');  // the command name may hold spaces and parentheses
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(paren + 2));
  std::vector<std::string> f;
  for (std::string word; fields >> word && f.size() < 13;) f.push_back(word);
  if (f.size() < 13) return std::nullopt;
  // After the name: state(3) ppid(4) ... utime(14) stime(15); f[0] is field 3.
  return StatLine{std::atoi(f[1].c_str()), std::strtoull(f[11].c_str(), nullptr, 10) +
                                               std::strtoull(f[12].c_str(), nullptr, 10)};
}

std::uint64_t read_rss_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("VmRSS:")) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

// The process and all its descendants (Squid's helpers, for one), found by walking /proc.
ProcSample sample_tree(int root) {
  ProcSample sample;
  if (root <= 0) return sample;
  std::map<int, StatLine> all;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    const int pid = std::atoi(name.c_str());
    if (auto stat = read_stat(pid)) all.emplace(pid, *stat);
  }
  std::vector<int> todo{root};
  while (!todo.empty()) {
    const int pid = todo.back();
    todo.pop_back();
    const auto it = all.find(pid);
    if (it == all.end()) continue;
    sample.ticks[pid] = it->second.ticks;
    sample.rss_kib += read_rss_kib(pid);
    for (const auto& [child, stat] : all) {
      if (stat.ppid == pid) todo.push_back(child);
    }
  }
  return sample;
}

// CPU ticks spent between two samples; processes born in between count from zero.
std::uint64_t ticks_between(const ProcSample& before, const ProcSample& after) {
  std::uint64_t sum = 0;
  for (const auto& [pid, t] : after.ticks) {
    const auto it = before.ticks.find(pid);
    const std::uint64_t base = it == before.ticks.end() ? 0 : it->second;
    if (t > base) sum += t - base;
  }
  return sum;
}

// --- results -----------------------------------------------------------------------------------

struct Stats {
  bool measuring = false;
  std::uint64_t units = 0;        // requests (h2: streams; conn: connections) measured
  std::uint64_t connections = 0;  // TLS connections opened in the measured phase
  std::uint64_t reconnects = 0;   // the server ended a kept-alive connection
  std::uint64_t body_bytes = 0;
  std::vector<std::int64_t> latency_ns;
  std::map<std::string, std::uint64_t> errors;
  std::string first_error;
  // Interception proof, over every handshake (setup included).
  std::uint64_t handshakes = 0;
  std::uint64_t issuer_matches = 0;
  std::string leaf_issuer;
  std::string leaf_subject;
  std::string leaf_key;  // "EC 256", "RSA 2048": what the proxy's handshake had to sign with
  std::string alpn;

  void error(const std::string& kind, const std::string& what) {
    ++errors[kind];
    if (first_error.empty()) first_error = kind + ": " + what;
  }
  std::uint64_t error_total() const {
    std::uint64_t sum = 0;
    for (const auto& [kind, n] : errors) sum += n;
    return sum;
  }
  void completed(Clock::time_point since, std::uint64_t bytes) {
    if (!measuring) return;
    ++units;
    body_bytes += bytes;
    latency_ns.push_back(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count());
  }
};

// The project's JSON string escaper (web-ui/block_page.hpp), quoted.
std::string json_string(std::string_view s) {
  return "\"" + tokgate::webui::json_escape(s) + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// Nearest-rank percentile in milliseconds of a sorted vector.
double percentile_ms(const std::vector<std::int64_t>& sorted, double q) {
  if (sorted.empty()) return NAN;
  auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  rank = std::clamp<std::size_t>(rank, 1, sorted.size());
  return static_cast<double>(sorted[rank - 1]) / 1e6;
}

// --- small coroutine primitives ----------------------------------------------------------------

// A one-shot event: waiters wake when it is set (a timer that never expires, cancelled).
class Event {
 public:
  explicit Event(asio::any_io_executor ex) : timer_(ex, Clock::time_point::max()) {}
  void set() {
    set_ = true;
    timer_.cancel();
  }
  awaitable<void> wait() {
    while (!set_) co_await timer_.async_wait(use_nothrow);
  }

 private:
  asio::steady_timer timer_;
  bool set_ = false;
};

class WaitGroup {
 public:
  WaitGroup(asio::any_io_executor ex, int count) : event_(ex), count_(count) {
    if (count_ <= 0) event_.set();
  }
  void done() {
    if (--count_ == 0) event_.set();
  }
  awaitable<void> wait() { co_await event_.wait(); }

 private:
  Event event_;
  int count_;
};

awaitable<void> sleep_for(double seconds) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
  co_await timer.async_wait(use_nothrow);
}

// --- one TLS connection, through the proxy or direct --------------------------------------------

Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// Cancels the socket's pending operations when the guarded step makes no progress in time, so a
// stalled peer becomes a "stall" error of this run instead of a hang.
class StallGuard {
 public:
  StallGuard(tcp::socket& socket, double limit) : timer_(socket.get_executor(), seconds(limit)) {
    timer_.async_wait([&socket, state = state_](boost::system::error_code ec) {
      if (ec || !state->alive) return;
      state->fired = true;
      socket.cancel(ec);
    });
  }
  ~StallGuard() {
    state_->alive = false;
    timer_.cancel();
  }
  StallGuard(const StallGuard&) = delete;
  StallGuard& operator=(const StallGuard&) = delete;
  bool fired() const { return state_->fired; }

 private:
  struct State {
    bool alive = true;
    bool fired = false;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
  asio::steady_timer timer_;
};

struct Failure : std::runtime_error {
  Failure(std::string k, const std::string& what) : std::runtime_error(what), kind(std::move(k)) {}
  std::string kind;
};

std::string name_text(const X509_NAME* name) {
  BIO* bio = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(bio, name, 0, XN_FLAG_ONELINE);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  std::string text(data, static_cast<std::size_t>(len));
  BIO_free(bio);
  return text;
}

struct Shared {
  Options options;
  ssl::context tls{ssl::context::tls_client};
  X509* ca = nullptr;  // first certificate of --cacert: the issuer every leaf must name
  Stats stats;
  Clock::time_point deadline = Clock::time_point::max();
  asio::io_context* io = nullptr;
};

void configure_tls(Shared& shared) {
  const Options& o = shared.options;
  SSL_CTX* ctx = shared.tls.native_handle();
  // Trust only --cacert: no default paths, so the proxy's CA (or, direct, the origin's) is the
  // only way to a completed handshake.
  shared.tls.set_verify_mode(ssl::verify_peer);
  shared.tls.load_verify_file(o.cacert);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // No TLS session reuse: every connection pays the full handshake, as in the table.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  static constexpr unsigned char alpn_h2[] = {2, 'h', '2'};
  static constexpr unsigned char alpn_h1[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  if (o.mode == Mode::h2) {
    SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof alpn_h2);
  } else {
    SSL_CTX_set_alpn_protos(ctx, alpn_h1, sizeof alpn_h1);
  }
  FILE* f = std::fopen(o.cacert.c_str(), "r");
  if (f == nullptr) usage("cannot read " + o.cacert);
  shared.ca = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  if (shared.ca == nullptr) usage("no certificate in " + o.cacert);
}

// Checks the leaf the client just accepted: its issuer must be --cacert's subject.
void check_interception(Shared& shared, TlsStream& tls) {
  Stats& st = shared.stats;
  ++st.handshakes;
  SSL* ssl = tls.native_handle();
  X509* leaf = SSL_get1_peer_certificate(ssl);
  if (leaf == nullptr) throw Failure("interception", "no peer certificate");
  const bool match =
      X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(shared.ca)) == 0;
  if (st.leaf_issuer.empty()) {
    st.leaf_issuer = name_text(X509_get_issuer_name(leaf));
    st.leaf_subject = name_text(X509_get_subject_name(leaf));
    const EVP_PKEY* key = X509_get0_pubkey(leaf);
    if (key != nullptr) {
      const int id = EVP_PKEY_get_base_id(key);
      st.leaf_key = std::string(id == EVP_PKEY_EC    ? "EC"
                                : id == EVP_PKEY_RSA ? "RSA"
                                                     : "other") +
                    " " + std::to_string(EVP_PKEY_get_bits(key));
    }
  }
  X509_free(leaf);
  if (SSL_get_verify_result(ssl) != X509_V_OK) throw Failure("interception", "unverified peer");
  if (!match) throw Failure("interception", "leaf issuer is not the CA's subject");
  ++st.issuer_matches;
  const unsigned char* proto = nullptr;
  unsigned int proto_len = 0;
  SSL_get0_alpn_selected(ssl, &proto, &proto_len);
  const std::string alpn(reinterpret_cast<const char*>(proto), proto_len);
  if (st.alpn.empty()) st.alpn = alpn.empty() ? "none" : alpn;
  if (shared.options.mode == Mode::h2 && alpn != "h2") {
    throw Failure("alpn",
                  "the server did not select h2 (ALPN: " + (alpn.empty() ? "none" : alpn) + ")");
  }
}

awaitable<std::unique_ptr<TlsStream>> open_tls(Shared& shared) {
  const Options& o = shared.options;
  const auto ex = co_await asio::this_coro::executor;
  tcp::socket socket(ex);
  StallGuard guard(socket, o.stall);
  const Endpoint hop = o.proxy ? *o.proxy : Endpoint{o.connect_ip, o.target.port};
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(hop.host, ec);
  if (ec) throw Failure("connect", "not an IP address: " + hop.host);
  std::tie(ec) = co_await socket.async_connect(tcp::endpoint(address, hop.port), use_nothrow);
  if (guard.fired()) throw Failure("stall", "connect: no progress in time");
  if (ec) throw Failure("connect", ec.message());
  socket.set_option(tcp::no_delay(true), ec);
  if (o.proxy) {
    const std::string authority = o.target.text();
    const std::string request =
        "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n\r\n";
    std::tie(ec, std::ignore) =
        co_await asio::async_write(socket, asio::buffer(request), use_nothrow);
    if (ec) throw Failure("proxy_connect", ec.message());
    std::string response;
    std::size_t header_len = 0;
    std::tie(ec, header_len) = co_await asio::async_read_until(
        socket, asio::dynamic_buffer(response, max_connect_response_bytes), "\r\n\r\n",
        use_nothrow);
    if (guard.fired()) throw Failure("stall", "CONNECT: no answer in time");
    if (ec) throw Failure("proxy_connect", ec.message());
    if (!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"))) {
      throw Failure("proxy_connect", response.substr(0, response.find('\r')));
    }
    if (response.size() != header_len)
      throw Failure("proxy_connect", "bytes after the CONNECT answer");
  }
  auto tls = std::make_unique<TlsStream>(std::move(socket), shared.tls);
  SSL* ssl = tls->native_handle();
  SSL_set_tlsext_host_name(ssl, o.target.host.c_str());
  SSL_set1_host(ssl, o.target.host.c_str());
  {
    StallGuard handshake_guard(tls->next_layer(), o.stall);
    std::tie(ec) = co_await tls->async_handshake(ssl::stream_base::client, use_nothrow);
    if (handshake_guard.fired()) throw Failure("stall", "TLS handshake: no progress in time");
  }
  if (ec) {
    const long verify = SSL_get_verify_result(ssl);
    throw Failure(
        verify == X509_V_OK ? "tls" : "interception",
        ec.message() + (verify == X509_V_OK
                            ? std::string()
                            : std::string(" (") + X509_verify_cert_error_string(verify) + ")"));
  }
  check_interception(shared, *tls);
  if (shared.stats.measuring) ++shared.stats.connections;
  co_return tls;
}

// --- HTTP/1.1 ----------------------------------------------------------------------------------

struct H1Connection {
  std::unique_ptr<TlsStream> tls;
  beast::flat_buffer buffer;
};

// One GET on an open connection. Returns whether the connection may carry another request.
awaitable<bool> h1_request(Shared& shared, H1Connection& conn, Clock::time_point since) {
  const Options& o = shared.options;
  http::request<http::empty_body> request{http::verb::get, o.path, 11};
  request.set(http::field::host, o.target.text());
  request.set(http::field::user_agent, "tokgate-loadgen");
  StallGuard guard(conn.tls->next_layer(), o.stall);
  auto [ec, written] = co_await http::async_write(*conn.tls, request, use_nothrow);
  if (ec) throw Failure("http", "write: " + ec.message());
  http::response_parser<http::string_body> parser;
  parser.body_limit(max_body_bytes);
  std::size_t read = 0;
  std::tie(ec, read) = co_await http::async_read(*conn.tls, conn.buffer, parser, use_nothrow);
  if (guard.fired()) throw Failure("stall", "no response in time");
  if (ec) throw Failure("http", "read: " + ec.message());
  const auto& response = parser.get();
  if (response.result() != http::status::ok) {
    throw Failure("http_status",
                  std::to_string(response.result_int()) + " " + std::string(response.reason()));
  }
  shared.stats.completed(since, response.body().size());
  co_return response.keep_alive();
}

void record(Shared& shared, const std::exception& e) {
  if (const auto* f = dynamic_cast<const Failure*>(&e)) {
    shared.stats.error(f->kind, f->what());
  } else {
    shared.stats.error("other", e.what());
  }
}

// --- HTTP/2 (nghttp2, sans-I/O: the session's bytes are moved by this loop) ----------------------

class H2Session {
 public:
  H2Session(Shared& shared, std::unique_ptr<TlsStream> tls)
      : shared_(shared), tls_(std::move(tls)) {
    nghttp2_session_callbacks* callbacks = nullptr;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, &H2Session::on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &H2Session::on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &H2Session::on_close);
    nghttp2_session_client_new(&session_, callbacks, this);
    nghttp2_session_callbacks_del(callbacks);
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 24},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
    nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, 1 << 26);
  }
  ~H2Session() { nghttp2_session_del(session_); }
  H2Session(const H2Session&) = delete;
  H2Session& operator=(const H2Session&) = delete;

  std::uint64_t total() const { return total_; }  // streams opened on this connection

  // Keeps `concurrency` streams in flight until `count` have been sent or the deadline passed,
  // then waits for those in flight.
  awaitable<void> run(std::uint64_t count, int concurrency, Clock::time_point deadline) {
    std::uint64_t sent = 0;
    auto submit_more = [&] {
      while (static_cast<int>(streams_.size()) < concurrency && sent < count &&
             Clock::now() < deadline) {
        submit();
        ++sent;
      }
    };
    submit_more();
    std::array<std::uint8_t, 16384> input{};
    for (;;) {
      co_await flush();
      if (streams_.empty()) co_return;
      if (nghttp2_session_want_read(session_) == 0) throw Failure("h2", "session ended");
      StallGuard guard(tls_->next_layer(), shared_.options.stall);
      auto [ec, n] = co_await tls_->async_read_some(asio::buffer(input), use_nothrow);
      if (guard.fired()) {
        throw Failure("stall", "no progress in time with " + std::to_string(streams_.size()) +
                                   " streams open, after " + std::to_string(total_) +
                                   " on this connection");
      }
      if (ec) throw Failure("h2", "read: " + ec.message());
      const auto consumed = nghttp2_session_mem_recv(session_, input.data(), n);
      if (consumed < 0) throw Failure("h2", nghttp2_strerror(static_cast<int>(consumed)));
      submit_more();
    }
  }

 private:
  struct Stream {
    Clock::time_point since;
    int status = 0;
    std::uint64_t bytes = 0;
  };

  void submit() {
    const Options& o = shared_.options;
    authority_ = o.target.text();
    auto nv = [](std::string_view name, std::string_view value) {
      return nghttp2_nv{reinterpret_cast<std::uint8_t*>(const_cast<char*>(name.data())),
                        reinterpret_cast<std::uint8_t*>(const_cast<char*>(value.data())),
                        name.size(), value.size(), NGHTTP2_NV_FLAG_NONE};
    };
    const nghttp2_nv headers[] = {nv(":method", "GET"), nv(":scheme", "https"),
                                  nv(":authority", authority_), nv(":path", o.path),
                                  nv("user-agent", "tokgate-loadgen")};
    const int32_t id =
        nghttp2_submit_request(session_, nullptr, headers, std::size(headers), nullptr, nullptr);
    if (id < 0) throw Failure("h2", std::string("submit: ") + nghttp2_strerror(id));
    streams_.emplace(id, Stream{Clock::now()});
    ++total_;
  }

  awaitable<void> flush() {
    output_.clear();
    for (;;) {
      const std::uint8_t* data = nullptr;
      const auto n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) throw Failure("h2", nghttp2_strerror(static_cast<int>(n)));
      if (n == 0) break;
      output_.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
    }
    if (output_.empty()) co_return;
    auto [ec, written] = co_await asio::async_write(*tls_, asio::buffer(output_), use_nothrow);
    if (ec) throw Failure("h2", "write: " + ec.message());
  }

  static int on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name,
                       std::size_t name_len, const std::uint8_t* value, std::size_t value_len,
                       std::uint8_t, void* user) {
    auto* self = static_cast<H2Session*>(user);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    const std::string_view n(reinterpret_cast<const char*>(name), name_len);
    if (n != ":status") return 0;
    const auto it = self->streams_.find(frame->hd.stream_id);
    if (it != self->streams_.end()) {
      it->second.status =
          std::atoi(std::string(reinterpret_cast<const char*>(value), value_len).c_str());
    }
    return 0;
  }

  static int on_data(nghttp2_session*, std::uint8_t, int32_t stream_id, const std::uint8_t*,
                     std::size_t len, void* user) {
    auto* self = static_cast<H2Session*>(user);
    const auto it = self->streams_.find(stream_id);
    if (it != self->streams_.end()) it->second.bytes += len;
    return 0;
  }

  static int on_close(nghttp2_session*, int32_t stream_id, std::uint32_t error_code, void* user) {
    auto* self = static_cast<H2Session*>(user);
    const auto it = self->streams_.find(stream_id);
    if (it == self->streams_.end()) return 0;
    const Stream stream = it->second;
    self->streams_.erase(it);
    if (error_code != NGHTTP2_NO_ERROR) {
      self->shared_.stats.error("h2_stream",
                                std::string("reset: ") + nghttp2_http2_strerror(error_code));
    } else if (stream.status != 200) {
      self->shared_.stats.error("http_status", std::to_string(stream.status));
    } else {
      self->shared_.stats.completed(stream.since, stream.bytes);
    }
    return 0;
  }

  Shared& shared_;
  std::unique_ptr<TlsStream> tls_;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<int32_t, Stream> streams_;
  std::string output_;
  std::string authority_;
  std::uint64_t total_ = 0;  // streams opened on this connection
};

// --- the modes ---------------------------------------------------------------------------------

struct Phases {
  Phases(asio::any_io_executor ex, int workers)
      : setup(ex, workers), start(ex), finished(ex, workers) {}
  WaitGroup setup;     // every worker has its connection and one warm-up request done
  Event start;         // the measured phase began (deadline set)
  WaitGroup finished;  // every worker stopped and drained
};

// conn: a new connection (CONNECT + handshake) and one request each time, then close.
awaitable<void> one_connection(Shared& shared) {
  try {
    const auto since = Clock::now();
    H1Connection conn;
    conn.tls = co_await open_tls(shared);
    co_await h1_request(shared, conn, since);
    boost::system::error_code ignored;
    conn.tls->lowest_layer().shutdown(tcp::socket::shutdown_both, ignored);
    conn.tls->lowest_layer().close(ignored);
  } catch (const std::exception& e) {
    record(shared, e);
  }
}

awaitable<void> conn_worker(Shared& shared, Phases& phases, int& warmup_left) {
  while (warmup_left > 0) {
    --warmup_left;
    co_await one_connection(shared);
  }
  phases.setup.done();
  co_await phases.start.wait();
  while (Clock::now() < shared.deadline) co_await one_connection(shared);
  phases.finished.done();
}

// keepalive: requests back to back on one connection (reopened if the server ends it).
awaitable<void> keepalive_worker(Shared& shared, Phases& phases) {
  H1Connection conn;
  auto request = [&]() -> awaitable<void> {
    try {
      if (!conn.tls) {
        conn.buffer.clear();
        conn.tls = co_await open_tls(shared);
      }
      if (!co_await h1_request(shared, conn, Clock::now())) {
        conn.tls.reset();
        if (shared.stats.measuring) ++shared.stats.reconnects;
      }
    } catch (const std::exception& e) {
      record(shared, e);
      conn.tls.reset();
    }
  };
  co_await request();
  phases.setup.done();
  co_await phases.start.wait();
  while (Clock::now() < shared.deadline) {
    const bool failed_before = !conn.tls;
    co_await request();
    if (failed_before && !conn.tls) co_await sleep_for(0.05);  // do not spin on a dead proxy
  }
  phases.finished.done();
}

awaitable<void> h2_worker(Shared& shared, Phases& phases) {
  std::unique_ptr<H2Session> session;
  try {
    auto tls = co_await open_tls(shared);
    session = std::make_unique<H2Session>(shared, std::move(tls));
    co_await session->run(1, 1, Clock::time_point::max());
  } catch (const std::exception& e) {
    record(shared, e);
    session.reset();
  }
  phases.setup.done();
  co_await phases.start.wait();
  const std::uint64_t per_connection = shared.options.h2_per_connection;
  while (session && Clock::now() < shared.deadline) {
    try {
      if (per_connection > 0 && session->total() >= per_connection) {
        // A fresh connection, as when a server ends one after so many streams.
        auto tls = co_await open_tls(shared);
        session = std::make_unique<H2Session>(shared, std::move(tls));
        ++shared.stats.reconnects;
      }
      const std::uint64_t budget =
          per_connection > 0 ? per_connection - session->total() : UINT64_MAX;
      co_await session->run(budget, shared.options.streams, shared.deadline);
    } catch (const std::exception& e) {
      record(shared, e);
      session.reset();
    }
  }
  phases.finished.done();
}

// rate: a pool of kept-alive connections; requests wait for a free one (and that wait counts).
class Pool {
 public:
  explicit Pool(asio::any_io_executor ex) : ex_(ex) {}
  std::vector<std::unique_ptr<H1Connection>> all;

  awaitable<H1Connection*> acquire() {
    if (!idle_.empty()) {
      H1Connection* conn = idle_.back();
      idle_.pop_back();
      co_return conn;
    }
    auto waiter = std::make_shared<Waiter>(ex_);
    waiters_.push_back(waiter);
    co_await waiter->ready.wait();
    co_return waiter->conn;
  }
  void release(H1Connection* conn) {
    if (!waiters_.empty()) {
      auto waiter = waiters_.front();
      waiters_.pop_front();
      waiter->conn = conn;
      waiter->ready.set();
      return;
    }
    idle_.push_back(conn);
  }

 private:
  struct Waiter {
    explicit Waiter(asio::any_io_executor ex) : ready(ex) {}
    Event ready;
    H1Connection* conn = nullptr;
  };
  asio::any_io_executor ex_;
  std::vector<H1Connection*> idle_;
  std::deque<std::shared_ptr<Waiter>> waiters_;
};

awaitable<void> rate_request(Shared& shared, Pool& pool, Clock::time_point scheduled,
                             WaitGroup& done) {
  H1Connection* conn = co_await pool.acquire();
  try {
    if (!conn->tls) {
      conn->buffer.clear();
      conn->tls = co_await open_tls(shared);
    }
    if (!co_await h1_request(shared, *conn, scheduled)) {
      conn->tls.reset();
      ++shared.stats.reconnects;
    }
  } catch (const std::exception& e) {
    record(shared, e);
    conn->tls.reset();
  }
  pool.release(conn);
  done.done();
}

struct Outcome {
  ProcSample before;
  ProcSample after;
  double seconds = 0;
  std::uint64_t idle_connections = 0;
};

// Marks the start of the measured phase: samples /proc, resets nothing that proves interception.
void begin_measuring(Shared& shared, Outcome& outcome) {
  outcome.before = sample_tree(shared.options.watch_pid);
  shared.stats.measuring = true;
}

awaitable<void> end_measuring(Shared& shared, Outcome& outcome, Clock::time_point t0) {
  outcome.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  shared.stats.measuring = false;
  co_await sleep_for(shared.options.settle);  // the proxy finishes closing what just ended
  outcome.after = sample_tree(shared.options.watch_pid);
}

awaitable<void> run_workers(Shared& shared, Outcome& outcome) {
  const auto ex = co_await asio::this_coro::executor;
  const Options& o = shared.options;
  Phases phases(ex, o.connections);
  int warmup_left = o.warmup;
  for (int i = 0; i < o.connections; ++i) {
    switch (o.mode) {
      case Mode::conn:
        asio::co_spawn(ex, conn_worker(shared, phases, warmup_left), asio::detached);
        break;
      case Mode::keepalive:
        asio::co_spawn(ex, keepalive_worker(shared, phases), asio::detached);
        break;
      case Mode::h2:
        asio::co_spawn(ex, h2_worker(shared, phases), asio::detached);
        break;
      default:
        break;
    }
  }
  co_await phases.setup.wait();
  begin_measuring(shared, outcome);
  const auto t0 = Clock::now();
  shared.deadline = t0 + seconds(o.duration);
  phases.start.set();
  co_await phases.finished.wait();
  co_await end_measuring(shared, outcome, t0);
}

awaitable<void> run_rate(Shared& shared, Outcome& outcome) {
  const auto ex = co_await asio::this_coro::executor;
  const Options& o = shared.options;
  Pool pool(ex);
  {
    WaitGroup opened(ex, o.connections);
    for (int i = 0; i < o.connections; ++i) {
      pool.all.push_back(std::make_unique<H1Connection>());
      asio::co_spawn(
          ex,
          [&shared, &opened, conn = pool.all.back().get()]() -> awaitable<void> {
            try {
              conn->tls = co_await open_tls(shared);
              co_await h1_request(shared, *conn, Clock::now());
            } catch (const std::exception& e) {
              record(shared, e);
              conn->tls.reset();
            }
            opened.done();
          },
          asio::detached);
    }
    co_await opened.wait();
  }
  for (auto& conn : pool.all) pool.release(conn.get());
  const auto total = static_cast<std::uint64_t>(std::llround(o.rate * o.duration));
  WaitGroup done(ex, static_cast<int>(total));
  begin_measuring(shared, outcome);
  const auto t0 = Clock::now();
  const auto period = std::chrono::duration<double>(1.0 / o.rate);
  asio::steady_timer timer(ex);
  for (std::uint64_t i = 0; i < total; ++i) {
    const auto scheduled =
        t0 + std::chrono::duration_cast<Clock::duration>(period * static_cast<double>(i));
    timer.expires_at(scheduled);
    co_await timer.async_wait(use_nothrow);
    asio::co_spawn(ex, rate_request(shared, pool, scheduled, done), asio::detached);
  }
  co_await done.wait();
  co_await end_measuring(shared, outcome, t0);
}

// idle: N intercepted connections, one request each, then held while the memory is sampled.
awaitable<void> run_idle(Shared& shared, Outcome& outcome) {
  const auto ex = co_await asio::this_coro::executor;
  const Options& o = shared.options;
  std::vector<std::unique_ptr<H1Connection>> held;
  co_await sleep_for(o.settle);
  begin_measuring(shared, outcome);
  const auto t0 = Clock::now();
  int left = o.connections;
  const int openers = std::min(o.connections, max_parallel_opens);
  WaitGroup opened(ex, openers);
  for (int i = 0; i < openers; ++i) {
    asio::co_spawn(
        ex,
        [&]() -> awaitable<void> {
          while (left > 0) {
            --left;
            auto conn = std::make_unique<H1Connection>();
            try {
              const auto since = Clock::now();
              conn->tls = co_await open_tls(shared);
              co_await h1_request(shared, *conn, since);
              held.push_back(std::move(conn));
            } catch (const std::exception& e) {
              record(shared, e);
            }
          }
          opened.done();
        },
        asio::detached);
  }
  co_await opened.wait();
  outcome.idle_connections = held.size();
  // Idle: nothing moves while the process settles and the sample is taken.
  co_await end_measuring(shared, outcome, t0);
  held.clear();
}

awaitable<void> run(Shared& shared, Outcome& outcome) {
  switch (shared.options.mode) {
    case Mode::rate:
      co_await run_rate(shared, outcome);
      break;
    case Mode::idle:
      co_await run_idle(shared, outcome);
      break;
    default:
      co_await run_workers(shared, outcome);
      break;
  }
  shared.io->stop();
}

std::string report(const Shared& shared, const Outcome& outcome, bool abandoned) {
  const Options& o = shared.options;
  const Stats& st = shared.stats;
  auto latency = st.latency_ns;
  std::sort(latency.begin(), latency.end());
  double mean = NAN;
  if (!latency.empty()) {
    double sum = 0;
    for (const auto v : latency) sum += static_cast<double>(v);
    mean = sum / static_cast<double>(latency.size()) / 1e6;
  }
  const long clk_tck = ::sysconf(_SC_CLK_TCK);
  const std::uint64_t ticks = ticks_between(outcome.before, outcome.after);
  const double cpu_ms = static_cast<double>(ticks) * 1000.0 / static_cast<double>(clk_tck);
  const bool watched = o.watch_pid > 0 && !outcome.after.ticks.empty();
  const std::uint64_t units = st.units;  // conn mode: one request per connection
  std::ostringstream out;
  out << "{\"mode\":" << json_string(o.mode_name)
      << ",\"via\":" << json_string(o.proxy ? "proxy" : "direct")
      << ",\"target\":" << json_string(o.target.text()) << ",\"path\":" << json_string(o.path)
      << ",\"connections\":" << o.connections << ",\"streams\":" << o.streams
      << ",\"units\":" << units << ",\"requests\":" << st.units
      << ",\"tls_connections\":" << st.connections << ",\"reconnects\":" << st.reconnects
      << ",\"body_bytes\":" << st.body_bytes << ",\"seconds\":" << json_number(outcome.seconds)
      << ",\"units_per_s\":"
      << json_number(outcome.seconds > 0 ? static_cast<double>(units) / outcome.seconds : NAN);
  if (watched) {
    out << ",\"watch_pids\":" << outcome.after.ticks.size() << ",\"cpu_ticks\":" << ticks
        << ",\"clk_tck\":" << clk_tck << ",\"cpu_ms\":" << json_number(cpu_ms)
        << ",\"cpu_ms_per_unit\":"
        << json_number(units > 0 ? cpu_ms / static_cast<double>(units) : NAN)
        << ",\"rss_kib_before\":" << outcome.before.rss_kib
        << ",\"rss_kib_after\":" << outcome.after.rss_kib;
  }
  if (o.mode == Mode::idle) {
    const double delta =
        static_cast<double>(outcome.after.rss_kib) - static_cast<double>(outcome.before.rss_kib);
    out << ",\"idle_connections\":" << outcome.idle_connections << ",\"rss_kib_per_connection\":"
        << json_number(watched && outcome.idle_connections > 0
                           ? delta / static_cast<double>(outcome.idle_connections)
                           : NAN);
  }
  out << ",\"latency_ms\":{\"count\":" << latency.size() << ",\"mean\":" << json_number(mean)
      << ",\"p50\":" << json_number(percentile_ms(latency, 0.50))
      << ",\"p90\":" << json_number(percentile_ms(latency, 0.90))
      << ",\"p99\":" << json_number(percentile_ms(latency, 0.99))
      << ",\"p999\":" << json_number(percentile_ms(latency, 0.999)) << ",\"max\":"
      << json_number(latency.empty() ? NAN : static_cast<double>(latency.back()) / 1e6) << "}";
  if (o.samples) {
    out << ",\"latency_us\":[";
    for (std::size_t i = 0; i < st.latency_ns.size(); ++i) {
      out << (i == 0 ? "" : ",") << (st.latency_ns[i] + 500) / 1000;
    }
    out << "]";
  }
  out << ",\"errors\":{";
  bool first = true;
  for (const auto& [kind, n] : st.errors) {
    out << (first ? "" : ",") << json_string(kind) << ":" << n;
    first = false;
  }
  out << "},\"error_total\":" << st.error_total()
      << ",\"first_error\":" << json_string(st.first_error)
      << ",\"abandoned\":" << (abandoned ? "true" : "false");
  out << ",\"interception\":{\"handshakes\":" << st.handshakes
      << ",\"issuer_matches\":" << st.issuer_matches << ",\"proven\":"
      << (st.handshakes > 0 && st.handshakes == st.issuer_matches ? "true" : "false")
      << ",\"leaf_issuer\":" << json_string(st.leaf_issuer)
      << ",\"leaf_subject\":" << json_string(st.leaf_subject)
      << ",\"leaf_key\":" << json_string(st.leaf_key)
      << ",\"ca_subject\":" << json_string(name_text(X509_get_subject_name(shared.ca)))
      << ",\"alpn\":" << json_string(st.alpn) << "}}";
  return out.str();
}

}  // namespace

int main(int argc, char** argv) {
  Shared shared;
  shared.options = parse_options(argc, argv);
  try {
    configure_tls(shared);
  } catch (const std::exception& e) {
    usage(std::string("TLS setup: ") + e.what());
  }
  asio::io_context io(1);
  shared.io = &io;
  Outcome outcome;
  asio::co_spawn(io, run(shared, outcome), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "loadgen: %s\n", ex.what());
    }
  });
  // A bounded run: whatever is still going after duration + grace is abandoned and reported.
  const double limit =
      shared.options.duration + shared.options.grace +
      (shared.options.mode == Mode::idle ? shared.options.connections * 0.05 : 0.0);
  bool abandoned = false;
  asio::steady_timer watchdog(io, seconds(limit));
  watchdog.async_wait([&](boost::system::error_code ec) {
    if (ec) return;
    abandoned = true;
    io.stop();
  });
  io.run();
  if (abandoned) shared.stats.error("abandoned", "the run did not finish in time");
  std::printf("%s\n", report(shared, outcome, abandoned).c_str());
  std::fflush(stdout);
  const Stats& st = shared.stats;
  const bool proven = st.handshakes > 0 && st.handshakes == st.issuer_matches;
  // Abandoned coroutines still own sockets bound to `io`; leave without unwinding them.
  std::_Exit(st.error_total() == 0 && proven ? 0 : 1);
}
