"""Limits and timeouts (issue 9): each one set small in a config file, triggered by a real client
(raw sockets, curl, Python's TLS, hand-made HTTP/2 frames, the WebSocket client), then checked
three ways: what the client saw (408/414/431/502/503/504, GOAWAY, a close frame, a close, with a
reason), that tokgate_limit_hits_total moved by exactly the expected amount for that limit and
by nothing for every other one, and that a normal request still works afterwards.

docs/metrics.md ("tokgate_limit_hits_total limits") lists every limit with its config key."""

import re
import socket
import ssl
import threading
import time
import unittest

import wsclient
from harness import (IntegrationTestCase, NodeOrigin, RawConnection, admin_get, curl, log_mark,
                     records_since, wait_for_record, wait_until)
from test_http2 import (CANCEL, END_HEADERS, END_STREAM, H2_CONTINUATION, H2_GOAWAY, H2_HEADERS,
                        H2_PING, H2_RST_STREAM, H2_SETTINGS, RawH2, h2_frame, hpack_request)

HOST = "www.tiktok.com"  # intercepted in every test (--intercept)
LIMITS = ("client-hello-size", "client-hello-timeout", "tls-handshake-client-timeout",
          "tls-handshake-origin-timeout", "proxy-header-timeout", "request-line-size",
          "request-header-size", "request-header-fields", "request-header-timeout",
          "idle-timeout", "body-stall", "response-header-timeout", "response-header-size",
          "connections", "connections-per-client", "h2-streams", "h2-continuations",
          "h2-control-flood", "h2-rapid-reset", "websocket-frame-size")
PROTOCOL_ERROR, ENHANCE_YOUR_CALM, REFUSED_STREAM = 0x1, 0xB, 0x7
CLOSE_WAIT = 8.0  # the longest any test waits for tokgate to act on a limit of <= 1 s
_SAMPLE = re.compile(r'^tokgate_limit_hits_total\{limit="([a-z0-9-]+)"\} (\d+)$')


def metrics_text(proxy):
    status, _, body = admin_get(proxy, "/metrics")
    if status != 200:
        raise AssertionError("/metrics answered %d" % status)
    return body.decode()


def limit_hits(proxy):
    """{limit: count} from /metrics; every limit must be there, at 0 before its first hit."""
    hits = {}
    for line in metrics_text(proxy).splitlines():
        match = _SAMPLE.match(line)
        if match:
            hits[match.group(1)] = int(match.group(2))
    missing = set(LIMITS) - set(hits)
    if missing or len(hits) != len(LIMITS):
        raise AssertionError("limit series: missing %s, unknown %s" % (
            sorted(missing), sorted(set(hits) - set(LIMITS))))
    return hits


def metric_value(proxy, name, labels=""):
    pattern = re.compile(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)))
    for line in metrics_text(proxy).splitlines():
        match = pattern.match(line)
        if match:
            return float(match.group(1))
    raise AssertionError("no %s%s in /metrics" % (name, labels))


def closed_by_peer(sock, timeout=CLOSE_WAIT):
    """True once the peer closes (EOF or reset) within `timeout`; bytes it sends are dropped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, ssl.SSLError):
            return True
        except (socket.timeout, TimeoutError):
            return False
    return False


def client_hello(server_name, alpn=None):
    """A real TLS ClientHello from Python's OpenSSL (nothing sent anywhere)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class RawOrigin:
    """A plain-HTTP origin that misbehaves on purpose: `mode` "stall-body" answers a head and a
    little of the body, then goes silent; "big-head" answers with a header block of `size`
    bytes. Runs in a thread until stop(); every wait is bounded."""

    def __init__(self, mode, size=0):
        self.mode = mode
        self.size = size
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.connections = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            self.connections.append(conn)
            conn.settimeout(5)
            try:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    piece = conn.recv(4096)
                    if not piece:
                        break
                    head += piece
                if self.mode == "stall-body":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n"
                                 b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 1000)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * self.size +
                                 b"\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()
        for conn in self.connections:
            conn.close()


class LimitCase(IntegrationTestCase):
    """origin.py (HTTPS and HTTP) and the Node origin (HTTP/2 and HTTP/1.1) for the class; one
    tokgate per test, with the limit under test set small in its config file."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.h2origin = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.h2origin.stop)

    def start(self, config, args=()):
        proxy = self.start_tokgate(config_text=config,
                                   args=self.intercept_args(HOST) + list(args))
        self.hits_before = limit_hits(proxy)
        self.assertEqual(set(self.hits_before.values()), {0}, "fresh proxy: %r" % self.hits_before)
        return proxy

    def assert_hits(self, proxy, **expected):
        """tokgate_limit_hits_total moved by exactly `expected` (limit names with _ for -) since
        start(), and not at all for every other limit."""
        want = {name: 0 for name in LIMITS}
        for key, count in expected.items():
            want[key.replace("_", "-")] = count
        seen = {}

        def moved_as_expected():
            now = limit_hits(proxy)
            seen.clear()
            seen.update({name: now[name] - self.hits_before[name] for name in LIMITS})
            return seen == want
        try:
            wait_until(moved_as_expected, 5, "limit counters")
        except AssertionError:
            self.fail("limit hits %r, expected %r%s" % (
                {k: v for k, v in seen.items() if v}, {k: v for k, v in want.items() if v},
                proxy.context()))

    def assert_normal_request(self, proxy):
        """A plain proxied request still gets through, after whatever the test did."""
        result = curl("http://127.0.0.1:%d/whoami/after" % self.origin.http_port,
                      proxy=proxy.url, timeout=15)
        self.assertEqual((result.returncode, result.status), (0, 200),
                         result.describe() + proxy.context())

    def http_url(self, path):
        return "http://127.0.0.1:%d%s" % (self.origin.http_port, path)

    def https_url(self, path, port=None):
        return "https://%s:%d%s" % (HOST, port or self.origin.https_port, path)

    def h2_url(self, path):
        """On the Node origin, which speaks h2: curl --http2 gets h2 on both legs."""
        return "https://%s:%d%s" % (HOST, self.h2origin.port, path)

    def connect_tunnel(self, proxy, authority):
        """CONNECT `authority`; returns the socket once the 200 is read."""
        conn = RawConnection(proxy.port)
        conn.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority.encode(),
                                                                authority.encode()))
        response = conn.read_response(connect=True)
        self.assertIsNotNone(response, proxy.context())
        self.assertEqual(response.status, 200, proxy.context())
        self.assertEqual(conn.buffer, b"")
        return conn


class HandshakeLimitsTest(LimitCase):

    def test_client_hello_size(self):
        proxy = self.start('[limits]\nclient_hello = "1KiB"\n')
        # A genuine ClientHello made large by its ALPN list (10 names of 200 bytes).
        hello = client_hello(HOST, alpn=["%d%s" % (i, "p" * 199) for i in range(10)])
        self.assertGreater(len(hello), 2048)
        mark = log_mark(proxy)
        with self.connect_tunnel(proxy, "%s:%d" % (HOST, self.origin.https_port)) as conn:
            conn.send(hello)
            self.assertTrue(closed_by_peer(conn.sock), "still open" + proxy.context())
        wait_for_record(proxy, start=mark, event="bad-client-hello", error="too_large")
        self.assert_hits(proxy, client_hello_size=1)
        # A normal ClientHello (about 500 bytes) is fine under the same limit.
        result = curl(self.https_url("/whoami/hello"), proxy=proxy.url, cacert=proxy.ca_pem)
        self.assertEqual(result.status, 200, result.describe() + proxy.context())
        self.assert_normal_request(proxy)

    def test_client_hello_timeout(self):
        proxy = self.start('[timeouts]\nclient_hello = "500ms"\n')
        mark = log_mark(proxy)
        with self.connect_tunnel(proxy, "%s:%d" % (HOST, self.origin.https_port)) as conn:
            self.assertTrue(closed_by_peer(conn.sock), "still open" + proxy.context())
        wait_for_record(proxy, start=mark, event="client-hello-timeout")
        self.assert_hits(proxy, client_hello_timeout=1)
        self.assert_normal_request(proxy)

    def test_tls_handshake_client_timeout(self):
        proxy = self.start('[timeouts]\ntls_handshake = "1s"\n')
        mark = log_mark(proxy)
        with self.connect_tunnel(proxy, "%s:%d" % (HOST, self.origin.https_port)) as conn:
            # The ClientHello, and then nothing: the handshake is never finished.
            conn.send(client_hello(HOST, alpn=["http/1.1"]))
            self.assertTrue(closed_by_peer(conn.sock), "still open" + proxy.context())
        record = wait_for_record(proxy, start=mark, event="client-tls-failed")
        self.assertEqual(record.get("reason"), "timeout", record)
        self.assert_hits(proxy, tls_handshake_client_timeout=1)
        self.assertEqual(metric_value(proxy, "tokgate_handshake_failures_total",
                                      '{side="client",reason="timeout"}'), 1)
        self.assert_normal_request(proxy)

    def test_tls_handshake_origin_timeout(self):
        proxy = self.start('[timeouts]\ntls_handshake = "1s"\n')
        # An origin that accepts TCP (the kernel's backlog does) and never answers TLS.
        silent = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(silent.close)
        port = silent.getsockname()[1]
        result = curl(self.https_url("/whoami/silent", port), proxy=proxy.url,
                      cacert=proxy.ca_pem, timeout=20)
        context = result.describe() + proxy.context()
        self.assertEqual(result.status, 504, context)
        self.assertEqual(result.header("x-tokgate-error"), "upstream-timeout", context)
        self.assertIn(b"TLS handshake", result.body, context)
        self.assert_hits(proxy, tls_handshake_origin_timeout=1)
        self.assert_normal_request(proxy)

    def test_proxy_header_timeout(self):
        proxy = self.start('[timeouts]\nproxy_header = "500ms"\n',
                           args=["--listen-proxy-protocol", "127.0.0.1:0"])
        record = wait_for_record(proxy, event="listening", role="proxy",
                                 mode="explicit+proxy-protocol")
        port = int(record["address"].rpartition(":")[2])
        mark = log_mark(proxy)
        with RawConnection(port) as conn:  # a balancer that never sends its header
            self.assertTrue(closed_by_peer(conn.sock), "still open" + proxy.context())
        record = wait_for_record(proxy, start=mark, event="proxy-protocol-refused")
        self.assertEqual(record.get("error"), "timeout", record)
        self.assert_hits(proxy, proxy_header_timeout=1)
        # With its header, the same listener serves.
        with RawConnection(port) as conn:
            conn.send(b"PROXY TCP4 127.0.0.9 127.0.0.1 4000 80\r\nGET %s HTTP/1.1\r\n"
                      b"Host: x\r\nConnection: close\r\n\r\n" % self.http_url("/whoami/pp").encode())
            response = conn.read_response()
        self.assertEqual(response.status, 200, proxy.context())
        self.assert_normal_request(proxy)


class RequestLimitsTest(LimitCase):

    def raw_request(self, proxy, head):
        with RawConnection(proxy.port) as conn:
            conn.send(head)
            return conn.read_response()

    def assert_refused(self, proxy, response, status, code):
        context = "%r%s" % (response and response.raw[:600], proxy.context())
        self.assertIsNotNone(response, context)
        self.assertEqual(response.status, status, context)
        self.assertEqual(response.header("x-tokgate-error"), code, context)
        self.assertIn(b"limit", response.body, context)

    def test_request_line_size(self):
        proxy = self.start('[limits]\nrequest_line = "1KiB"\n')
        long_path = "/whoami/" + "a" * 2000
        response = self.raw_request(proxy, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
                                    % self.http_url(long_path).encode())
        self.assert_refused(proxy, response, 414, "request-line-too-long")
        # HTTP/2: the :path counts as the request line.
        result = curl(self.h2_url(long_path), proxy=proxy.url, cacert=proxy.ca_pem,
                      args=["--http2"])
        self.assertEqual(result.status, 414, result.describe() + proxy.context())
        self.assertEqual(result.info.get("http_version"), "2", result.describe())
        self.assertEqual(result.header("x-tokgate-error"), "request-line-too-long")
        self.assert_hits(proxy, request_line_size=2)
        short = curl(self.h2_url("/whoami/" + "a" * 900), proxy=proxy.url,
                     cacert=proxy.ca_pem, args=["--http2"])
        self.assertEqual(short.status, 200, short.describe() + proxy.context())
        self.assertEqual(short.info.get("http_version"), "2", short.describe())
        self.assert_normal_request(proxy)

    def test_request_header_size(self):
        proxy = self.start('[limits]\nrequest_header = "2KiB"\n')
        big = "X-Big: " + "b" * 3000
        response = self.raw_request(proxy, b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n"
                                    % (self.http_url("/whoami/big").encode(), big.encode()))
        self.assert_refused(proxy, response, 431, "request-header-too-large")
        # HTTP/2: the header list.
        result = curl(self.h2_url("/whoami/big"), proxy=proxy.url, cacert=proxy.ca_pem,
                      args=["--http2"], headers=[big])
        self.assertEqual(result.status, 431, result.describe() + proxy.context())
        self.assertEqual(result.info.get("http_version"), "2", result.describe())
        self.assertEqual(result.header("x-tokgate-error"), "request-header-too-large")
        self.assert_hits(proxy, request_header_size=2)
        self.assert_normal_request(proxy)

    def test_request_header_fields(self):
        proxy = self.start('[limits]\nrequest_header_fields = 10\n')
        fields = ["X-Field-%d: %d" % (i, i) for i in range(20)]
        response = self.raw_request(proxy, b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % (
            self.http_url("/whoami/many").encode(), "\r\n".join(fields).encode()))
        self.assert_refused(proxy, response, 431, "too-many-header-fields")
        result = curl(self.h2_url("/whoami/many"), proxy=proxy.url, cacert=proxy.ca_pem,
                      args=["--http2"], headers=fields)
        self.assertEqual(result.status, 431, result.describe() + proxy.context())
        self.assertEqual(result.info.get("http_version"), "2", result.describe())
        self.assertEqual(result.header("x-tokgate-error"), "too-many-header-fields")
        self.assert_hits(proxy, request_header_fields=2)
        # Nine fields of our own (curl adds a few) over HTTP/2 are fine.
        few = curl(self.h2_url("/whoami/few"), proxy=proxy.url, cacert=proxy.ca_pem,
                   args=["--http2"], headers=fields[:5])
        self.assertEqual(few.status, 200, few.describe() + proxy.context())
        self.assert_normal_request(proxy)

    def test_request_header_timeout(self):
        proxy = self.start('[timeouts]\nrequest_header = "1s"\n')
        # Slowloris: a head that never ends gets a 408 that says why.
        with RawConnection(proxy.port) as conn:
            conn.send(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"
                      % self.http_url("/whoami/slow").encode())
            response = conn.read_response()
        context = "%r%s" % (response and response.raw[:300], proxy.context())
        self.assertEqual(response.status, 408, context)
        self.assertEqual(response.header("x-tokgate-error"), "request-timeout", context)
        # A connection that never sends a byte is closed, silently.
        with RawConnection(proxy.port) as conn:
            self.assertTrue(closed_by_peer(conn.sock), "still open" + proxy.context())
        self.assert_hits(proxy, request_header_timeout=2)
        self.assert_normal_request(proxy)

    def test_idle_timeout(self):
        proxy = self.start('[timeouts]\nidle = "1s"\n')
        # HTTP/1.1 keep-alive: answered, then closed once idle for 1 s.
        with RawConnection(proxy.port) as conn:
            conn.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % self.http_url("/whoami/1").encode())
            self.assertEqual(conn.read_response().status, 200)
            self.assertTrue(closed_by_peer(conn.sock), "still open" + proxy.context())
        # HTTP/2: no stream for 1 s gets GOAWAY NO_ERROR.
        connection = RawH2(proxy.port, "%s:%d" % (HOST, self.origin.https_port), proxy.ca_pem)
        try:
            found, closed = connection.frames(CLOSE_WAIT)
        finally:
            connection.close()
        goaways = [f for f in found if f[0] == H2_GOAWAY]
        self.assertTrue(goaways and closed, "%r%s" % (found, proxy.context()))
        self.assertEqual(int.from_bytes(goaways[-1][3][4:8], "big"), 0)
        self.assert_hits(proxy, idle_timeout=2)
        self.assert_normal_request(proxy)

    def test_body_stall(self):
        proxy = self.start('[timeouts]\nio_stall = "1s"\n')
        # A request body that stops half-way: 408.
        with RawConnection(proxy.port) as conn:
            conn.send(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n%s"
                      % (self.http_url("/sha256/stalled").encode(), b"u" * 100))
            response = conn.read_response()
        context = "%r%s" % (response and response.raw[:300], proxy.context())
        self.assertEqual(response.status, 408, context)
        self.assertEqual(response.header("x-tokgate-error"), "request-body-timeout", context)
        # A response body that stops: the client gets what came, then the connection ends.
        origin = RawOrigin("stall-body")
        self.addCleanup(origin.stop)
        result = curl("http://127.0.0.1:%d/stalling" % origin.port, proxy=proxy.url, timeout=20)
        context = result.describe() + proxy.context()
        self.assertEqual(result.status, 200, context)
        self.assertEqual(result.returncode, 18, context)  # partial file
        self.assertEqual(len(result.body), 1000, context)
        self.assert_hits(proxy, body_stall=2)
        self.assert_normal_request(proxy)

    def test_response_header_timeout(self):
        proxy = self.start('[timeouts]\nresponse_header = "1s"\n')
        result = curl(self.http_url("/stall/forever"), proxy=proxy.url, timeout=20)
        context = result.describe() + proxy.context()
        self.assertEqual(result.status, 504, context)
        self.assertEqual(result.header("x-tokgate-error"), "upstream-timeout", context)
        self.assert_hits(proxy, response_header_timeout=1)
        self.assert_normal_request(proxy)

    def test_response_header_size(self):
        proxy = self.start('[limits]\nresponse_header = "1KiB"\n')
        origin = RawOrigin("big-head", size=3000)
        self.addCleanup(origin.stop)
        result = curl("http://127.0.0.1:%d/big-head" % origin.port, proxy=proxy.url)
        context = result.describe() + proxy.context()
        self.assertEqual(result.status, 502, context)
        self.assertEqual(result.header("x-tokgate-error"), "upstream-protocol", context)
        self.assertIn(b"exceeds the limit", result.body, context)
        self.assert_hits(proxy, response_header_size=1)
        self.assert_normal_request(proxy)


class ConnectionLimitsTest(LimitCase):

    def open_idle(self, port, count, source=None, proxy_header=None):
        conns = []
        for _ in range(count):
            conn = RawConnection(port, source=source)
            self.addCleanup(conn.close)
            if proxy_header:
                conn.send(proxy_header)
            conns.append(conn)
        return conns

    def assert_turned_away(self, proxy, port, code, source=None, proxy_header=None):
        with RawConnection(port, source=source) as conn:
            if proxy_header:
                conn.send(proxy_header)
            response = conn.read_response()
            context = "%r%s" % (response and response.raw[:300], proxy.context())
            self.assertIsNotNone(response, context)
            self.assertEqual(response.status, 503, context)
            self.assertEqual(response.header("x-tokgate-error"), code, context)
            self.assertEqual(response.header("connection"), "close", context)
            self.assertTrue(closed_by_peer(conn.sock), "still open" + proxy.context())

    def open_connections(self, proxy):
        return metric_value(proxy, "tokgate_connections_open")

    def test_max_connections(self):
        proxy = self.start('[limits]\nmax_connections = 3\n')
        conns = self.open_idle(proxy.port, 3)
        wait_until(lambda: self.open_connections(proxy) == 3, 5, "3 connections open")
        mark = log_mark(proxy)
        self.assert_turned_away(proxy, proxy.port, "too-many-connections")
        # A burst of refusals: every one counted, the log says so about once a second.
        for _ in range(10):
            self.assert_turned_away(proxy, proxy.port, "too-many-connections")
        self.assert_hits(proxy, connections=11)
        self.assertEqual(metric_value(proxy, "tokgate_connections_total",
                                      '{verdict="rejected"}'), 11)
        lines = records_since(proxy, mark, event="connection-limit")
        self.assertGreaterEqual(len(lines), 1, proxy.context())
        self.assertLessEqual(len(lines), 3, "refusals are logged at most once a second per "
                             "worker: %r" % lines)
        for conn in conns:
            conn.close()
        wait_until(lambda: self.open_connections(proxy) == 0, 10, "connections closed")
        self.assert_normal_request(proxy)

    def test_max_connections_per_client(self):
        config = ('[proxy]\nallowed_clients = ["127.0.0.0/8", "10.9.8.0/24"]\n'
                  '[limits]\nmax_connections_per_client = 2\n')
        proxy = self.start(config, args=["--listen-proxy-protocol", "127.0.0.1:0"])
        record = wait_for_record(proxy, event="listening", role="proxy",
                                 mode="explicit+proxy-protocol")
        pp_port = int(record["address"].rpartition(":")[2])
        mark = log_mark(proxy)
        # 127.0.0.1 has its two; a third from it is turned away, another address is not.
        mine = self.open_idle(proxy.port, 2)
        wait_until(lambda: self.open_connections(proxy) == 2, 5, "2 connections open")
        self.assert_turned_away(proxy, proxy.port, "too-many-client-connections")
        other = curl(self.http_url("/whoami/other-client"), proxy=proxy.url, interface="127.0.0.2")
        self.assertEqual(other.status, 200, other.describe() + proxy.context())
        # Behind a balancer the PROXY header's client is the one counted (not the balancer).
        header = b"PROXY TCP4 10.9.8.7 127.0.0.1 5000 80\r\n"
        self.open_idle(pp_port, 2, proxy_header=header)
        wait_until(lambda: self.open_connections(proxy) == 4, 5, "4 connections open")
        self.assert_turned_away(proxy, pp_port, "too-many-client-connections",
                                proxy_header=header)
        with RawConnection(pp_port) as conn:
            conn.send(b"PROXY TCP4 10.9.8.6 127.0.0.1 5000 80\r\nGET %s HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n" % self.http_url("/whoami/pp-other").encode())
            self.assertEqual(conn.read_response().status, 200, proxy.context())
        self.assert_hits(proxy, connections_per_client=2)
        lines = records_since(proxy, mark, event="client-connection-limit")
        self.assertEqual({line["client"] for line in lines} <= {"127.0.0.1", "10.9.8.7"}, True)
        self.assertGreaterEqual(len(lines), 1, proxy.context())
        for conn in mine:
            conn.close()
        wait_until(lambda: self.open_connections(proxy) <= 2, 10, "127.0.0.1's closed")
        self.assert_normal_request(proxy)


class Http2LimitsTest(LimitCase):
    """HTTP/2 floods and stream limits from hand-made frames (test_http2.RawH2), against the
    Node origin (which has /stall)."""

    def raw_h2(self, proxy):
        connection = RawH2(proxy.port, self.authority, proxy.ca_pem)
        self.addCleanup(connection.close)
        return connection

    @property
    def authority(self):
        return "%s:%d" % (HOST, self.h2origin.port)

    def goaway(self, connection, proxy, what):
        found, closed = connection.frames(CLOSE_WAIT)
        goaways = [f for f in found if f[0] == H2_GOAWAY]
        context = "%s: frames %r closed=%s%s" % (what, [f[:3] for f in found][-20:], closed,
                                                 proxy.context())
        self.assertTrue(goaways, context)
        self.assertTrue(closed, context)
        return int.from_bytes(goaways[-1][3][4:8], "big"), found

    def assert_h2_served(self, proxy):
        result = curl("https://%s/whoami/after" % self.authority, proxy=proxy.url,
                      cacert=proxy.ca_pem, args=["--http2"])
        self.assertEqual(result.status, 200, result.describe() + proxy.context())
        self.assertEqual(result.info.get("http_version"), "2", result.describe())

    def test_h2_concurrent_streams(self):
        proxy = self.start("[limits]\nh2_max_concurrent_streams = 4\n")
        connection = self.raw_h2(proxy)
        connection.frames(0.5)  # SETTINGS exchanged (and ours acknowledged)
        frames = b"".join(
            h2_frame(H2_HEADERS, END_STREAM | END_HEADERS, 1 + 2 * n,
                     hpack_request(self.authority, "/stall/stream-%d" % n)) for n in range(5))
        connection.send(frames)
        found, closed = connection.frames(CLOSE_WAIT)
        refused = [f for f in found if f[0] == H2_RST_STREAM and f[2] == 9 and
                   int.from_bytes(f[3][:4], "big") == REFUSED_STREAM]
        goaways = [f for f in found if f[0] == H2_GOAWAY and
                   int.from_bytes(f[3][4:8], "big") == PROTOCOL_ERROR]
        self.assertTrue(refused or goaways, "frames %r%s" % ([f[:3] for f in found],
                                                             proxy.context()))
        self.assert_hits(proxy, h2_streams=1)
        self.assert_h2_served(proxy)
        self.assert_normal_request(proxy)

    def test_h2_continuations(self):
        proxy = self.start("[limits]\nh2_max_continuations = 2\n")
        block = hpack_request(self.authority, "/whoami/continued")

        def split(pieces):
            size = len(block) // pieces + 1
            parts = [block[i:i + size] for i in range(0, len(block), size)]
            self.assertEqual(len(parts), pieces)
            frames = h2_frame(H2_HEADERS, END_STREAM, 1, parts[0])
            for index, part in enumerate(parts[1:], 1):
                frames += h2_frame(H2_CONTINUATION, END_HEADERS if index == pieces - 1 else 0,
                                   1, part)
            return frames
        # Two CONTINUATION frames: within the limit, answered.
        within = self.raw_h2(proxy)
        within.send(split(3))
        found, _ = within.frames(3)
        self.assertIn((H2_HEADERS, 1), [(f[0], f[2]) for f in found], proxy.context())
        # Three: GOAWAY ENHANCE_YOUR_CALM.
        over = self.raw_h2(proxy)
        over.send(split(4))
        code, _ = self.goaway(over, proxy, "3 CONTINUATION frames")
        self.assertEqual(code, ENHANCE_YOUR_CALM)
        self.assert_hits(proxy, h2_continuations=1)
        self.assert_h2_served(proxy)

    def test_h2_control_flood(self):
        proxy = self.start("[limits]\nh2_max_pending_acks = 20\n")
        # 300 PINGs and 300 SETTINGS, each on its own connection, sent at once and not read.
        for kind, flood in (("PING", h2_frame(H2_PING, 0, 0, b"12345678") * 300),
                            ("SETTINGS", h2_frame(H2_SETTINGS, 0, 0) * 300)):
            connection = self.raw_h2(proxy)
            connection.send(flood)
            code, _ = self.goaway(connection, proxy, "%s flood" % kind)
            self.assertEqual(code, ENHANCE_YOUR_CALM, kind)
        self.assert_hits(proxy, h2_control_flood=2)
        self.assert_h2_served(proxy)

    def test_h2_rapid_reset(self):
        proxy = self.start("[limits]\nh2_reset_burst = 10\nh2_reset_rate = 1\n")
        connection = self.raw_h2(proxy)
        frames = b""
        for n in range(50):
            stream = 1 + 2 * n
            frames += h2_frame(H2_HEADERS, END_STREAM | END_HEADERS, stream,
                               hpack_request(self.authority, "/stall/rapid-%d" % n))
            frames += h2_frame(H2_RST_STREAM, 0, stream, CANCEL.to_bytes(4, "big"))
        connection.send(frames)
        code, _ = self.goaway(connection, proxy, "rapid reset")
        self.assertEqual(code, ENHANCE_YOUR_CALM)  # ours, not nghttp2's looser backstop
        self.assert_hits(proxy, h2_rapid_reset=1)
        self.assert_h2_served(proxy)


class WebSocketLimitTest(LimitCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ws_origin = NodeOrigin(cls.pki, plain=True)
        cls.addClassCleanup(cls.ws_origin.stop)

    def test_websocket_frame_size(self):
        proxy = self.start('[limits]\nwebsocket_frame = "1KiB"\n')
        ws = wsclient.connect_plain_via_proxy("127.0.0.1:%d" % proxy.port, HOST,
                                              self.ws_origin.port, "/ws")
        with ws:
            ws.send_binary(b"s" * 1000)  # within the limit: echoed
            self.assertEqual(ws.recv_message(), (wsclient.OP_BINARY, b"s" * 1000))
            ws.send_binary(b"L" * 2000)
            frame = ws.recv_frame()
            context = "%r%s" % (frame, proxy.context())
            self.assertIsNotNone(frame, context)
            self.assertEqual(frame.opcode, wsclient.OP_CLOSE, context)
            self.assertEqual(int.from_bytes(frame.payload[:2], "big"), 1009, context)
            self.assertIn(b"limit", frame.payload[2:], context)
            self.assertTrue(ws.wait_closed(CLOSE_WAIT), "still open" + proxy.context())
        self.assert_hits(proxy, websocket_frame_size=1)
        self.assert_normal_request(proxy)


if __name__ == "__main__":
    unittest.main()
