"""Faults (issue 9): origins that reset, stall or speak garbage, clients that vanish, a name that
does not resolve, no file descriptors left, a broken CA at start, a flow log on a full disk.

After every fault the proxy must still serve another client normally (an intercepted curl
request answers 200), and the faulty exchange must end with a clear error: a status and a
one-line reason for the client where one can still be sent, and `error`/`error_reason` in its
flow-log record (docs/flow-log.md).

Already covered elsewhere, not repeated here: an origin refusing the TCP connection
(test_errors, test_flowlog) and the 502/504 answers themselves for an unresolvable name and an
origin that never answers (test_errors); this file adds their flow-log records.

Real tokgate, real curl, Python ssl clients and origins on loopback."""

import os
import re
import resource
import secrets
import socket
import ssl
import struct
import subprocess
import threading
import time
import unittest

from flowlog_schema import FlowLogError, load_flow_log, parse_line, validate_record
from harness import (IntegrationTestCase, admin_get, curl, h2client, log_mark, parse_log_line,
                     pattern_bytes, raw_exchange, tls_through_connect, tokgate_command,
                     wait_for_record)

HOST = "www.tiktok.com"
BODY_SIZE = 1_000_000          # what a faulty origin announces
HALF = 300_000                 # what it sends before it misbehaves
FLOW_WAIT = 10.0
CURL_TIMEOUT = 20
PAUSE_FIRST = 1000             # /pause/: bytes sent before the pause
PAUSE_TOTAL = 3000
CURL_OPERATION_TIMEDOUT = 28   # curl's exit code when --max-time ran out: the client hung

# Small timeouts so a stall ends within seconds; a small response header limit.
FAST_TIMEOUTS = """\
[timeouts]
io_stall = "2s"
response_header = "2s"

[limits]
response_header = "16KiB"
"""

# Timers far longer than a propagated close takes.
SLOW_TIMERS = """\
[timeouts]
io_stall = "6s"
response_header = "6s"
"""


# --- a misbehaving TLS origin -----------------------------------------------------------------

class FaultOrigin:
    """An HTTPS origin (HTTP/1.1 only, the PKI's good certificate) in a thread of this process.
    The first segment of the request path picks how it misbehaves (see HANDLERS). It records
    events (request, peer-closed, body progress) with their monotonic time, so a test can tell
    when tokgate dropped its side of a connection."""

    def __init__(self, pki):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(pki.cert_dir / "good.pem"), str(pki.cert_dir / "good.key"))
        self.context.set_alpn_protocols(["http/1.1"])
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._events = []
        self._cond = threading.Condition()
        self._sockets = set()
        self._closed = False
        self._gates = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _gate(self, path):
        with self._cond:
            return self._gates.setdefault(path, threading.Event())

    def release(self, path):
        """Lets a /pause/... response go on."""
        self._gate(path).set()

    # --- events ---------------------------------------------------------------------------

    def _emit(self, path, event, **fields):
        with self._cond:
            self._events.append(dict(fields, path=path, event=event, t=time.monotonic()))
            self._cond.notify_all()

    def wait_event(self, path, event, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self._events:
                    if item["path"] == path and item["event"] == event:
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("fault origin: no %s event for %s within %.0fs; events: %r"
                                         % (event, path, timeout, self._events[-20:]))
                self._cond.wait(left)

    # --- connections ------------------------------------------------------------------------

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        with self._cond:
            if self._closed:
                raw.close()
                return
            self._sockets.add(raw)
        raw.settimeout(30)
        tls = None
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
            data = b""
            while b"\r\n\r\n" not in data:
                piece = tls.recv(65536)
                if not piece or len(data) > 65536:
                    return
                data += piece
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("iso-8859-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self._emit(path, "request", method=method)
            handler = getattr(self, "_" + path.strip("/").split("/")[0].replace("-", "_"), None)
            if handler is None:
                tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            handler(tls, path, headers, rest)
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._sockets.discard(raw)
            (tls or raw).close()

    def _wait_peer_close(self, tls, path, timeout=30.0):
        """Reads (and discards) until tokgate closes or resets its side; records when."""
        tls.settimeout(timeout)
        how = "timeout"
        try:
            while True:
                if not tls.recv(65536):
                    how = "eof"
                    break
        except ssl.SSLError:
            how = "eof"           # closed without close_notify: as good as a close here
        except ConnectionResetError:
            how = "reset"
        except socket.timeout:
            how = "timeout"
        except OSError:
            how = "error"
        self._emit(path, "peer-closed", how=how)

    @staticmethod
    def _head(content_length=BODY_SIZE):
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % content_length)

    # --- the faults (one per first path segment) ---------------------------------------------

    def _reset_mid_body(self, tls, path, headers, rest):
        """Head and part of a Content-Length body, then an abortive close (RST)."""
        tls.sendall(self._head() + pattern_bytes(HALF))
        time.sleep(0.5)  # let tokgate relay what was sent before the reset can discard it
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._emit(path, "reset")

    def _stall_mid_body(self, tls, path, headers, rest):
        """Head and part of the body, then silence until tokgate gives up."""
        tls.sendall(self._head() + pattern_bytes(HALF))
        self._emit(path, "stalled")
        self._wait_peer_close(tls, path)

    def _pause(self, tls, path, headers, rest):
        """PAUSE_FIRST body bytes, then nothing until the test calls release(path), then the
        rest: bytes sent before a pause must reach the client during the pause."""
        tls.sendall(self._head(PAUSE_TOTAL) + pattern_bytes(PAUSE_FIRST))
        self._emit(path, "paused")
        if self._gate(path).wait(30):
            tls.sendall(pattern_bytes(PAUSE_TOTAL)[PAUSE_FIRST:])
        self._wait_peer_close(tls, path, timeout=10)

    def _stall_head(self, tls, path, headers, rest):
        """Reads the request and never answers."""
        self._wait_peer_close(tls, path)

    def _garbage(self, tls, path, headers, rest):
        """Random bytes instead of an HTTP response (never starting like one)."""
        junk = b"\x00\xff" + secrets.token_bytes(4094)
        tls.sendall(junk)
        self._wait_peer_close(tls, path, timeout=10)

    def _huge_header(self, tls, path, headers, rest):
        """A header block of about 64 KiB (the proxy under test allows 16 KiB)."""
        filler = b"".join(b"X-Filler-%04d: %s\r\n" % (i, b"a" * 100) for i in range(600))
        try:
            tls.sendall(b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 2\r\n\r\nok")
        except OSError:
            pass  # tokgate stopped reading: that is the point
        self._wait_peer_close(tls, path, timeout=10)

    FRAMINGS = {
        "bad-content-length": b"Content-Length: 12abc\r\n\r\nhello world!",
        "negative-content-length": b"Content-Length: -5\r\n\r\nhello",
        "content-length-and-chunked": (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                                       b"5\r\nhello\r\n0\r\n\r\n"),
        "two-content-lengths": b"Content-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        "bad-chunk-size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    }

    def _framing(self, tls, path, headers, rest):
        """/framing/NAME: a response whose body framing is invalid or ambiguous (FRAMINGS)."""
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" +
                    self.FRAMINGS[path.split("/")[2]])
        self._wait_peer_close(tls, path, timeout=10)

    def _sink(self, tls, path, headers, rest):
        """Reads a Content-Length request body; records how much arrived and how it ended."""
        expected = int(headers.get("content-length", "0"))
        received = len(rest)
        tls.settimeout(60)
        how = None
        try:
            while received < expected:
                piece = tls.recv(65536)
                if not piece:
                    how = "eof"
                    break
                received += len(piece)
        except ssl.SSLError:
            how = "eof"
        except ConnectionResetError:
            how = "reset"
        except socket.timeout:
            how = "timeout"
        if how is not None:
            self._emit(path, "peer-closed", how=how, received=received)
            return
        self._emit(path, "body-complete", received=received)
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def stop(self):
        with self._cond:
            self._closed = True
            sockets = list(self._sockets)
        self.listener.close()
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass


# --- reading the flow log ----------------------------------------------------------------------

def flow_records(log_path, **match):
    """Records of the JSON flow log (each validated against docs/flow-log.md) matching every
    key=value; a line still being written is left out."""
    if not os.path.exists(log_path):
        return []
    return [r for r in load_flow_log(log_path, allow_partial_tail=True)
            if all(k in r and r[k] == v for k, v in match.items())]


def wait_flow(log_path, context="", timeout=FLOW_WAIT, **match):
    """The one record matching every key=value (the writer is a thread: wait for it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = flow_records(log_path, **match)
        if found:
            if len(found) > 1:
                raise AssertionError("several records match %r: %r%s" % (match, found, context))
            return found[0]
        if time.monotonic() >= deadline:
            tail = open(log_path, errors="replace").read()[-4000:] if os.path.exists(
                log_path) else "(no flow log)"
            raise AssertionError("no flow record matching %r within %.0fs; flow log tail:\n%s%s"
                                 % (match, timeout, tail, context))
        time.sleep(0.05)


def metric(proxy, name):
    """The value of an unlabelled counter in /metrics (None if absent)."""
    status, _, body = admin_get(proxy, "/metrics")
    if status != 200:
        raise AssertionError("/metrics answered %d" % status)
    found = re.search(r"(?m)^%s(?:\{\})? ([0-9.e+]+)$" % re.escape(name), body.decode())
    return float(found.group(1)) if found else None


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the tests ---------------------------------------------------------------------------------

class FaultCase(IntegrationTestCase):
    """origin.py serves the normal requests; FaultOrigin the faulty ones."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.faulty = FaultOrigin(cls.pki)
        cls.addClassCleanup(cls.faulty.stop)

    def start_proxy(self, config_text=FAST_TIMEOUTS, args=None, name=None):
        name = name or self.id().rsplit(".", 1)[-1]
        log = self.tmp / ("%s.flows" % name)
        args = self.intercept_args("*") if args is None else args
        proxy = self.start_tokgate(name, list(args) + ["--flow-log", log],
                                   config_text=config_text)
        return proxy, log

    def fault_url(self, path):
        return "https://%s:%d%s" % (HOST, self.faulty.port, path)

    def context(self, proxy, *parts):
        return "\n" + "\n".join(str(p)[:3000] for p in parts) + proxy.context()

    def assert_serves_normally(self, proxy, log, tag):
        """Another client, after the fault: an intercepted request answers 200 and is recorded
        without an error."""
        path = "/whoami/after-%s" % tag
        result = curl("https://%s:%d%s" % (HOST, self.origin.https_port, path),
                      proxy=proxy.url, cacert=proxy.ca_pem, timeout=CURL_TIMEOUT)
        context = self.context(proxy, result.describe())
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 200, context)
        self.assertEqual(result.json()["sni"], HOST, context)
        record = wait_flow(log, context, path=path)
        self.assertEqual(record.get("status"), 200, context + "\n%r" % record)
        self.assertNotIn("error", record, context + "\n%r" % record)
        self.assertIsNone(proxy.process.poll(), context)

    def assert_error_record(self, record, proxy, codes, reason_pattern, status="absent"):
        """The record names an error code among `codes` and a one-line reason matching
        `reason_pattern`; `status` is the status it must carry (or "absent")."""
        context = self.context(proxy, record)
        self.assertIn(record.get("error"), codes, context)
        self.assertRegex(record.get("error_reason", ""), reason_pattern, context)
        self.assertNotIn("\n", record["error_reason"], context)
        if status == "absent":
            self.assertNotIn("status", record, context)
        else:
            self.assertEqual(record.get("status"), status, context)

    def assert_one_line_error(self, body, code, headers, context):
        """A proxy error answer: X-Tokgate-Error and a one-line `tokgate: reason` body."""
        self.assertEqual(headers.get("x-tokgate-error"), code, context)
        text = body.decode("utf-8", errors="replace")
        self.assertTrue(text.startswith("tokgate: "), context)
        self.assertEqual(text.rstrip("\n").count("\n"), 0, context)
        self.assertGreater(len(text.strip()), len("tokgate: "), context)
        return text.strip()[len("tokgate: "):]


class OriginFaultsTest(FaultCase):

    # --- reset mid-body ---------------------------------------------------------------------

    def test_origin_resets_mid_body_http1(self):
        proxy, log = self.start_proxy()
        path = "/reset-mid-body/h1"
        started = time.monotonic()
        result = curl(self.fault_url(path), proxy=proxy.url, cacert=proxy.ca_pem,
                      args=["--http1.1"], timeout=CURL_TIMEOUT)
        elapsed = time.monotonic() - started
        context = self.context(proxy, result.describe(), "elapsed %.2fs" % elapsed)
        # The head had gone out: the client sees 200 and a body cut short, and curl says so
        # (18: transfer closed with bytes remaining; 56: receive failure), never a timeout.
        self.assertEqual(result.status, 200, context)
        self.assertIn(result.returncode, (18, 56), context)
        self.assertLess(len(result.body), BODY_SIZE, context)
        self.assertEqual(result.body, pattern_bytes(len(result.body)), "corrupt prefix" + context)
        record = wait_flow(log, context, path=path)
        self.assert_error_record(record, proxy, ("server-body-failed", "upstream-protocol",
                                                 "upstream-reset"),
                                 r"(?i)reset|closed|truncat|end of stream", status=200)
        self.assertLess(record["bytes_down"], BODY_SIZE, record)
        self.assertEqual(record.get("client_alpn"), "http/1.1", record)
        self.assert_serves_normally(proxy, log, "reset-h1")

    def test_origin_fails_mid_body_h2_client(self):
        """An HTTP/2 client (h2client.mjs offering only h2: curl --http2 also offers http/1.1,
        and then tokgate follows the origin's http/1.1) in front of the HTTP/1.1-only origin,
        two streams at once: one whose origin resets mid-body, one whose origin stalls
        mid-body. Each stream must end in an error (RST_STREAM or a short body), never hang,
        and each record must say the upstream failed."""
        proxy, log = self.start_proxy()
        reset, stall = "/reset-mid-body/h2", "/stall-mid-body/h2"
        plan = {"proxy": "127.0.0.1:%d" % proxy.port, "connect": "%s:%d" % (HOST, self.faulty.port),
                "servername": HOST, "ca": str(proxy.ca_pem), "alpn": ["h2"],
                "requests": [{"path": reset}, {"path": stall}], "timeout_ms": 20000}
        started = time.monotonic()
        run = h2client(plan, self.scratch_dir("h2client"), timeout=40)
        elapsed = time.monotonic() - started
        context = self.context(proxy, run.describe(), "elapsed %.2fs" % elapsed)
        self.assertEqual(run.session.get("alpn"), "h2", context)
        self.assertEqual(len(run.responses), 2, context)
        for response, path in zip(run.responses, (reset, stall)):
            with self.subTest(path=path):
                self.assertEqual(response["status"], 200, context)
                self.assertLess(response["length"], BODY_SIZE, context)
                self.assertTrue(response["rst_code"] is not None or response["error"],
                                "the stream ended as if complete" + context)
                record = wait_flow(log, context, path=path)
                self.assertEqual(record.get("client_alpn"), "h2", record)
                self.assertEqual(record.get("server_alpn"), "http/1.1", record)
                self.assertLess(record["bytes_down"], BODY_SIZE, record)
                with self.subTest(check="the record names the origin's failure"):
                    # Not only that tokgate reset the client's stream afterwards.
                    self.assert_error_record(
                        record, proxy, ("server-body-failed", "upstream-protocol",
                                        "upstream-reset", "upstream-timeout"),
                        r"(?i)reset|closed|truncat" if path == reset else r"(?i)stall|timed? ?out",
                        status=200)
                if path == stall:
                    with self.subTest(check="what came before the stall was delivered"):
                        self.assertEqual(response["length"], HALF, context)
        self.assertLess(elapsed, 15.0, "the h2 client waited for its deadline" + context)
        self.assert_serves_normally(proxy, log, "fail-h2")

    # --- stalls -----------------------------------------------------------------------------

    def test_origin_stalls_mid_body(self):
        """io_stall (2 s here) ends a body that stops flowing; the origin connection is
        closed too."""
        proxy, log = self.start_proxy()
        path = "/stall-mid-body/x"
        started = time.monotonic()
        result = curl(self.fault_url(path), proxy=proxy.url, cacert=proxy.ca_pem,
                      args=["--http1.1"], timeout=CURL_TIMEOUT)
        elapsed = time.monotonic() - started
        context = self.context(proxy, result.describe(), "elapsed %.2fs" % elapsed)
        self.assertEqual(result.status, 200, context)
        self.assertNotEqual(result.returncode, CURL_OPERATION_TIMEDOUT, "client hung" + context)
        self.assertIn(result.returncode, (18, 56), context)
        self.assertLess(len(result.body), BODY_SIZE, context)
        self.assertEqual(result.body, pattern_bytes(len(result.body)), "corrupt prefix" + context)
        self.assertGreaterEqual(elapsed, 1.8, "ended before io_stall could" + context)
        self.assertLess(elapsed, 10.0, context)
        closed = self.faulty.wait_event(path, "peer-closed", timeout=10)
        stalled = self.faulty.wait_event(path, "stalled")
        self.assertIn(closed["how"], ("eof", "reset"), closed)
        self.assertLess(closed["t"] - stalled["t"], 10.0, "origin connection left open")
        record = wait_flow(log, context, path=path)
        self.assert_error_record(record, proxy, ("server-body-failed", "upstream-timeout"),
                                 r"(?i)stall|timed? ?out", status=200)
        self.assertEqual(record["bytes_down"], len(result.body), record)
        self.assert_serves_normally(proxy, log, "stall-body")
        with self.subTest(check="what came before the stall was delivered"):
            self.assertEqual(len(result.body), HALF, context)

    def test_bytes_before_a_pause_reach_the_client(self):
        """An origin that sends part of a body and pauses (a stream, a long poll): what it sent
        must reach the client during the pause, not wait for more bytes or for the end."""
        proxy, log = self.start_proxy(config_text=None)
        path = "/pause/x"
        kind, tls = tls_through_connect(proxy.port, "%s:%d" % (HOST, self.faulty.port), HOST,
                                        cafile=proxy.ca_pem)
        self.assertEqual(kind, "ok", "%r%s" % (tls, proxy.context()))
        self.addCleanup(tls.close)
        self.addCleanup(self.faulty.release, path)
        tls.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), HOST.encode()))
        self.faulty.wait_event(path, "paused")
        tls.settimeout(0.2)
        received = b""
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and (
                b"\r\n\r\n" not in received
                or len(received.partition(b"\r\n\r\n")[2]) < PAUSE_FIRST):
            try:
                piece = tls.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not piece:
                break
            received += piece
        head, _, body = received.partition(b"\r\n\r\n")
        context = self.context(proxy, "head %r, %d body bytes during the pause" % (head, len(body)))
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), context)
        # Then the rest arrives, whole.
        self.faulty.release(path)
        tls.settimeout(10)
        rest = body
        while len(rest) < PAUSE_TOTAL:
            piece = tls.recv(65536)
            if not piece:
                break
            rest += piece
        self.assertEqual(rest, pattern_bytes(PAUSE_TOTAL), context)
        self.assertEqual(body, pattern_bytes(PAUSE_FIRST),
                         "the bytes sent before the pause were held back" + context)
        self.assert_serves_normally(proxy, log, "pause")

    def test_origin_stalls_before_head(self):
        """response_header (2 s here) gives a 504; the record says upstream-timeout."""
        proxy, log = self.start_proxy()
        path = "/stall-head/x"
        started = time.monotonic()
        result = curl(self.fault_url(path), proxy=proxy.url, cacert=proxy.ca_pem,
                      timeout=CURL_TIMEOUT)
        elapsed = time.monotonic() - started
        context = self.context(proxy, result.describe(), "elapsed %.2fs" % elapsed)
        self.assertEqual(result.status, 504, context)
        reason = self.assert_one_line_error(result.body, "upstream-timeout", result.headers,
                                            context)
        self.assertGreaterEqual(elapsed, 1.8, context)
        self.assertLess(elapsed, 10.0, context)
        closed = self.faulty.wait_event(path, "peer-closed", timeout=10)
        self.assertIn(closed["how"], ("eof", "reset"), closed)
        record = wait_flow(log, context, path=path)
        self.assert_error_record(record, proxy, ("upstream-timeout",), r"(?i)timed? ?out",
                                 status=504)
        self.assertEqual(record["error_reason"], reason, "client and record disagree")
        self.assert_serves_normally(proxy, log, "stall-head")

    # --- not HTTP -----------------------------------------------------------------------------

    def fetch_502(self, proxy, log, path):
        """A request the origin answers with something that is not a valid response: 502 with
        X-Tokgate-Error upstream-protocol and a reason, and a matching record."""
        started = time.monotonic()
        result = curl(self.fault_url(path), proxy=proxy.url, cacert=proxy.ca_pem,
                      timeout=CURL_TIMEOUT)
        elapsed = time.monotonic() - started
        context = self.context(proxy, result.describe(), "elapsed %.2fs" % elapsed)
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 502, context)
        reason = self.assert_one_line_error(result.body, "upstream-protocol", result.headers,
                                            context)
        self.assertLess(elapsed, 5.0, "not answered at once" + context)
        record = wait_flow(log, context, path=path)
        self.assert_error_record(record, proxy, ("upstream-protocol",), r".", status=502)
        self.assertEqual(record["error_reason"], reason, "client and record disagree")
        return reason, record

    def test_origin_sends_garbage(self):
        proxy, log = self.start_proxy()
        reason, _ = self.fetch_502(proxy, log, "/garbage/x")
        self.assertRegex(reason, r"(?i)bad|invalid|response|version|method", reason)
        self.assert_serves_normally(proxy, log, "garbage")

    def test_response_header_block_over_the_limit(self):
        proxy, log = self.start_proxy()
        reason, _ = self.fetch_502(proxy, log, "/huge-header/x")
        self.assertRegex(reason, r"(?i)header.*(limit|large|long)", reason)
        self.assert_serves_normally(proxy, log, "huge-header")

    def test_invalid_or_ambiguous_response_framing(self):
        """Invalid Content-Length, Content-Length with chunked (the smuggling shape), two
        different Content-Lengths, a bad chunk size: never relayed as if valid."""
        proxy, log = self.start_proxy()
        for name in FaultOrigin.FRAMINGS:
            path = "/framing/%s" % name
            with self.subTest(framing=name):
                if name == "bad-chunk-size":
                    # The head is valid: the failure comes in the body, after the 200 went out.
                    result = curl(self.fault_url(path), proxy=proxy.url, cacert=proxy.ca_pem,
                                  args=["--http1.1"], timeout=CURL_TIMEOUT)
                    context = self.context(proxy, result.describe())
                    self.assertNotEqual(result.returncode, 0, context)
                    self.assertNotEqual(result.returncode, CURL_OPERATION_TIMEDOUT, context)
                    self.assertNotIn(b"hello", result.body, context)
                    record = wait_flow(log, context, path=path)
                    self.assert_error_record(record, proxy,
                                             ("server-body-failed", "upstream-protocol"), r".",
                                             status=record.get("status", "absent"))
                else:
                    reason, _ = self.fetch_502(proxy, log, path)
                    self.assertRegex(reason, r"(?i)length|encoding|chunk|bad|invalid", reason)
        self.assert_serves_normally(proxy, log, "framing")


class ClientFaultsTest(FaultCase):

    def post_then_vanish(self, proxy, path, reset):
        """CONNECT, TLS, a POST announcing 8 MiB, 2 MiB of it, then the client is gone (a
        FIN without close_notify, or a RST)."""
        kind, tls = tls_through_connect(proxy.port, "%s:%d" % (HOST, self.faulty.port), HOST,
                                        cafile=proxy.ca_pem)
        self.assertEqual(kind, "ok", "%r%s" % (tls, proxy.context()))
        total = 8 * 1024 * 1024
        tls.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n"
                    b"Content-Type: application/octet-stream\r\n\r\n" % (path.encode(),
                                                                         HOST.encode(), total))
        tls.sendall(pattern_bytes(2 * 1024 * 1024))
        self.faulty.wait_event(path, "request")
        time.sleep(0.3)  # let some of the body reach the origin
        if reset:
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone = time.monotonic()
        tls.close()
        return gone, total

    def test_client_disappears_mid_request_body(self):
        """io_stall and response_header are 6 s here: an origin connection closed within 3 s
        was closed because the client went, not by a timer."""
        proxy, log = self.start_proxy(config_text=SLOW_TIMERS)
        for reset in (False, True):
            path = "/sink/%s" % ("rst" if reset else "fin")
            with self.subTest(client_close="RST" if reset else "FIN"):
                gone, total = self.post_then_vanish(proxy, path, reset)
                closed = self.faulty.wait_event(path, "peer-closed", timeout=15)
                delay = closed["t"] - gone
                context = self.context(proxy, closed, "origin side closed %.2fs after the client"
                                       % delay)
                self.assertIn(closed["how"], ("eof", "reset"), context)
                self.assertLess(closed["received"], total, context)
                record = wait_flow(log, context, path=path)
                context += "\n%r" % record
                self.assertEqual(record.get("method"), "POST", context)
                self.assert_error_record(record, proxy, ("client-gone", "client-reset"),
                                         r"(?i)client", status="absent")
                with self.subTest(check="origin side closed promptly"):
                    self.assertLess(delay, 3.0, "origin connection kept open" + context)
                with self.subTest(check="bytes_up counts what was relayed"):
                    self.assertGreater(record.get("bytes_up", 0), 0, context)
                    self.assertLess(record.get("bytes_up", 0), total, context)
        self.assert_serves_normally(proxy, log, "client-gone")


class DnsFailureTest(FaultCase):

    def test_unresolvable_names_are_recorded(self):
        """Only www.tiktok.com is pinned to loopback: nonexistent.invalid goes to the system
        resolver and fails. The 502 itself is in test_errors; here, the records."""
        args = ["--resolve", "%s:*:127.0.0.1" % HOST, "--upstream-ca", self.pki.ca_cert,
                "--connect-ports", "1-65535", "--profile", "observe", "--intercept", "*"]
        proxy, log = self.start_proxy(args=args, config_text=None)
        bad = "nonexistent.invalid"
        # CONNECT: answered 502 before any TLS, a connection record.
        response = raw_exchange(proxy.port, b"CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n"
                                % (bad.encode(), bad.encode()))
        context = self.context(proxy, response and response.raw)
        self.assertEqual(response.status, 502, context)
        reason = self.assert_one_line_error(response.body, "upstream-dns", response.headers,
                                            context)
        self.assertIn(bad, reason, context)
        record = wait_flow(log, context, type="connection", host=bad)
        self.assert_error_record(record, proxy, ("upstream-dns",), re.escape(bad), status=502)
        self.assertEqual(record["port"], 443, record)
        # An absolute-form request: a request record.
        result = curl("http://%s/dns/plain" % bad, proxy=proxy.url, timeout=CURL_TIMEOUT)
        context = self.context(proxy, result.describe())
        self.assertEqual(result.status, 502, context)
        self.assertIn(bad.encode(), result.body, context)
        record = wait_flow(log, context, path="/dns/plain")
        self.assert_error_record(record, proxy, ("upstream-dns",), re.escape(bad), status=502)
        self.assertEqual(record.get("host"), bad, record)
        self.assert_serves_normally(proxy, log, "dns")


class DescriptorExhaustionTest(FaultCase):

    def test_out_of_file_descriptors(self):
        proxy, log = self.start_proxy(config_text=None)
        self.assert_serves_normally(proxy, log, "before")
        pid = proxy.process.pid
        in_use = len(os.listdir("/proc/%d/fd" % pid))
        limit = in_use + 16
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        mark = log_mark(proxy)
        idle = []
        try:
            for _ in range(limit + 24):
                idle.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=5))
            record = wait_for_record(proxy, timeout=10, start=mark, event="accept-failed")
            context = self.context(proxy, record, "fds in use %d, limit %d" % (in_use, limit))
            self.assertRegex(record.get("reason", ""), r"(?i)too many open files", context)
            self.assertEqual(record.get("level"), "warn", context)
            # Not spinning: 1 s of wall time costs well under a second of CPU (the accept loop
            # backs off instead of retrying at once).
            before = cpu_seconds(pid)
            time.sleep(1.0)
            spent = cpu_seconds(pid) - before
            self.assertLess(spent, 0.3, "%.2fs of CPU in 1s while out of descriptors%s"
                            % (spent, context))
            self.assertIsNone(proxy.process.poll(), context)
        finally:
            for sock in idle:
                sock.close()
        # The descriptors come back: the proxy accepts and serves again.
        self.assert_serves_normally(proxy, log, "after-exhaustion")


class CaFailureTest(FaultCase):
    """A CA that cannot be used at start, in ways that stop root too: exit non-zero at once,
    one error line naming the file, never a byte of the key."""

    start_origin = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.good = cls.tmp / "ca-good"
        cls.other = cls.tmp / "ca-other"
        for path in (cls.good, cls.other):
            result = tokgate_command("ca", "init", "--dir", path)
            if result.returncode != 0:
                raise AssertionError("tokgate ca init failed: %r" % result.stderr)
        cls.key_text = (cls.good / "ca.key").read_text() + (cls.other / "ca.key").read_text()

    def copy_ca(self, name, key=None, cert=None):
        """A CA directory with the good CA's files, `key`/`cert` bytes replacing its own."""
        path = self.scratch_dir(name)
        (path / "ca.pem").write_bytes(cert if cert is not None else
                                      (self.good / "ca.pem").read_bytes())
        key_path = path / "ca.key"
        key_path.write_bytes(key if key is not None else (self.good / "ca.key").read_bytes())
        key_path.chmod(0o600)
        return path

    def assert_fails_naming(self, ca_args, named):
        started = time.monotonic()
        result = tokgate_command("run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                                 *ca_args, timeout=15)
        elapsed = time.monotonic() - started
        output = (result.stdout + result.stderr).decode(errors="replace")
        context = "\nexit %d after %.2fs, args %r\noutput:\n%s" % (result.returncode, elapsed,
                                                                     ca_args, output)
        self.assertNotEqual(result.returncode, 0, context)
        self.assertLess(elapsed, 10.0, context)
        errors = [line for line in output.splitlines()
                  if (parse_log_line(line) or {}).get("level") == "error"
                  or (not parse_log_line(line) and line.strip())]
        self.assertEqual(len(errors), 1, "want exactly one error line" + context)
        self.assertIn(str(named), errors[0], context)
        self.assertNotIn("PRIVATE KEY", output, context)
        for line in self.key_text.splitlines():
            if line and not line.startswith("-----"):
                self.assertNotIn(line[:24], output, "key material in the output" + context)
        return errors[0]

    def test_unusable_ca_at_start(self):
        good_key = (self.good / "ca.key").read_bytes()
        lines = good_key.decode().splitlines()
        corrupt = "\n".join([lines[0]] + [l[::-1] for l in lines[1:-1]] + [lines[-1]]) + "\n"
        regular_file = self.tmp / "a-regular-file"
        regular_file.write_text("not a directory\n")
        key_dir = self.copy_ca("key-is-dir")
        (key_dir / "ca.key").unlink()
        (key_dir / "ca.key").mkdir()
        cases = {
            "ca dir is a regular file": (["--ca-dir", regular_file], regular_file),
            "ca dir under a regular file": (["--ca-dir", regular_file / "sub" / "ca"],
                                            regular_file / "sub" / "ca"),
            "ca dir under /proc": (["--ca-dir", "/proc/tokgate-nonexistent/ca"],
                                   "/proc/tokgate-nonexistent/ca"),
            "key file is a directory": (["--ca-dir", key_dir], key_dir / "ca.key"),
            "key truncated": (["--ca-dir", self.copy_ca("key-truncated", key=good_key[:100])],
                              self.tmp / "key-truncated" / "ca.key"),
            "key empty": (["--ca-dir", self.copy_ca("key-empty", key=b"")],
                          self.tmp / "key-empty" / "ca.key"),
            "key corrupt": (["--ca-dir", self.copy_ca("key-corrupt", key=corrupt.encode())],
                            self.tmp / "key-corrupt" / "ca.key"),
            "key of another CA": (["--ca-dir", self.copy_ca(
                "key-mismatch", key=(self.other / "ca.key").read_bytes())],
                self.tmp / "key-mismatch" / "ca.key"),
            "certificate truncated": (["--ca-dir", self.copy_ca(
                "cert-truncated", cert=(self.good / "ca.pem").read_bytes()[:300])],
                self.tmp / "cert-truncated" / "ca.pem"),
            "--ca-key is a directory": (["--ca-cert", self.good / "ca.pem", "--ca-key",
                                         key_dir / "ca.key"], key_dir / "ca.key"),
            "--ca-cert and --ca-key do not match": (["--ca-cert", self.good / "ca.pem",
                                                     "--ca-key", self.other / "ca.key"],
                                                    self.other / "ca.key"),
        }
        for label, (ca_args, named) in cases.items():
            with self.subTest(case=label):
                self.assert_fails_naming(ca_args, named)


class FlowLogDiskFullTest(FaultCase):

    def fetch_many(self, proxy, prefix, count):
        for i in range(count):
            result = curl("https://%s:%d/whoami/%s-%d" % (HOST, self.origin.https_port, prefix, i),
                          proxy=proxy.url, cacert=proxy.ca_pem, timeout=CURL_TIMEOUT)
            self.assertEqual(result.status, 200, result.describe() + proxy.context())

    def settle(self, proxy, predicate, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            values = {name: metric(proxy, name) for name in (
                "tokgate_flow_log_records_total", "tokgate_flow_log_dropped_total",
                "tokgate_flow_log_write_errors_total")}
            if predicate(values):
                return values
            if time.monotonic() >= deadline:
                raise AssertionError("metrics never showed %s: %r%s" % (what, values,
                                                                        proxy.context()))
            time.sleep(0.05)

    def test_dev_full_traffic_unaffected_and_counted(self):
        proxy = self.start_tokgate(args=self.intercept_args("*") + ["--flow-log", "/dev/full"])
        self.fetch_many(proxy, "devfull", 5)
        values = self.settle(proxy, lambda v: (v["tokgate_flow_log_dropped_total"] or 0) >= 5,
                             "5 records dropped")
        context = "\n%r%s" % (values, proxy.context())
        self.assertGreaterEqual(values["tokgate_flow_log_write_errors_total"], 1, context)
        self.assertEqual(values["tokgate_flow_log_dropped_total"], 5, context)
        self.assertEqual(values["tokgate_flow_log_records_total"], 0, context)
        self.assertIsNone(proxy.process.poll(), context)

    def test_dev_full_write_failure_is_logged(self):
        """An operator reading the log must learn that evidence is being lost (and why)."""
        proxy = self.start_tokgate(args=self.intercept_args("*") + ["--flow-log", "/dev/full"])
        self.fetch_many(proxy, "devfull-log", 2)
        self.settle(proxy, lambda v: (v["tokgate_flow_log_write_errors_total"] or 0) >= 1,
                    "a write error")
        time.sleep(0.5)
        logged = [r for r in proxy.records()
                  if r.get("level") in ("warn", "error") and "flow" in r.get("event", "")]
        self.assertTrue(logged, "no warn/error line about the flow log" + proxy.context())
        self.assertRegex(" ".join(str(v) for v in logged[0].values()),
                         r"(?i)no space left|ENOSPC", logged[0])

    def test_small_tmpfs_fills_then_recovers(self):
        mount_point = self.scratch_dir("tmpfs")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tokgate-faults",
                                  str(mount_point)], capture_output=True)
        if mounted.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: %s" % mounted.stderr.decode().strip())
        self.addCleanup(subprocess.run, ["umount", "-l", str(mount_point)], capture_output=True)
        log = mount_point / "flows.jsonl"
        proxy = self.start_tokgate(args=self.intercept_args("*") + ["--flow-log", log])
        # Fill the file system, then give one page back: room for a few records only.
        filler = mount_point / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                for _ in range(64):
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        os.truncate(filler, max(0, os.path.getsize(filler) - 4096))
        self.fetch_many(proxy, "full", 15)
        values = self.settle(proxy, lambda v: (v["tokgate_flow_log_write_errors_total"] or 0) >= 1,
                             "a write error")
        context = "\n%r%s" % (values, proxy.context())
        self.assertGreaterEqual(values["tokgate_flow_log_dropped_total"], 1, context)
        self.assertIsNone(proxy.process.poll(), context)
        # Space again: the next records are written, whole.
        filler.unlink()
        self.fetch_many(proxy, "recovered", 3)
        for i in range(3):
            path = "/whoami/recovered-%d" % i
            deadline = time.monotonic() + FLOW_WAIT
            while True:
                lines = log.read_bytes().split(b"\n")
                found = [l for l in lines if b'"path":"%s"' % path.encode() in l]
                if found or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(len(found), 1, "%s not logged after the disk recovered\n%r%s" % (
                path, log.read_bytes()[-3000:], context))
            try:
                problems = validate_record(parse_line(found[0]))
            except ValueError as error:
                problems = ["not one JSON object: %s" % error]
            self.assertEqual(problems, [], "the line holding %s after the disk recovered: %r%s"
                             % (path, found[0], context))
        # And no record was left half-written and glued to the next one.
        try:
            load_flow_log(log, allow_partial_tail=False)
        except FlowLogError as error:
            self.fail("the flow log holds a broken line after the disk filled: %s\n%r%s"
                      % (error, log.read_bytes()[-3000:], context))


if __name__ == "__main__":
    unittest.main()
