"""The flow log (docs/flow-log.md): one record per request and per connection without one, each
checked field by field against the schema (flowlog_schema.py) and for its key values; query and
client privacy; Squid's access.log format; reopening on SIGUSR1/SIGHUP (logrotate); GeoIP fields
and `tokgate report` on them; and a stalled sink that must never stall traffic.

Real tokgate, real curl / wsclient.py / h2client.mjs, h2origin.mjs and origin.py on loopback."""

import fcntl
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import unittest

import wsclient
from flowlog_schema import FlowLogError, load_flow_log, parse_line, validate_record
from harness import (H2ORIGIN_SCRIPT, REPO_ROOT, STARTUP_TIMEOUT, IntegrationTestCase,
                     LineCollector, NodeOrigin, Tokgate, admin_get, clean_env, closed_port, curl,
                     describe_command, h2client, log_mark, node_binary, policy_run_args,
                     raw_exchange, tls_through_connect, tokgate_command, wait_for_record)

HOST = "www.tiktok.com"
REFUSED_HOST = "refused.tiktok.com"
FLOW_WAIT = 10.0
CURL_TIMEOUT = 20

# Blocks /blocked/* on TikTok hosts, logs /full/* with privacy = "full", logs the rest of the
# website with the default (redacted) privacy. Everything else: the defaults (targets mode).
POLICY = """\
[policy]
name = "flowlog-test"
default_action = "allow"

[[rules]]
name = "block-blocked"
action = "block"
match = { host = [".tiktok.com"], path = ["/blocked/*"] }

[[rules]]
name = "log-full"
action = "log"
privacy = "full"
match = { host = [".tiktok.com"], path = ["/full/*"] }

[[rules]]
name = "log-web"
action = "log"
match = { category = ["web"] }
"""


# --- reading the flow log -------------------------------------------------------------------

def matches(record, match):
    """Every key=value of `match` holds: equal, or a callable that accepts the value (a
    callable never accepts an absent field)."""
    for key, want in match.items():
        if key not in record:
            return False
        value = record[key]
        if callable(want):
            if not want(value):
                return False
        elif value != want:
            return False
    return True


def flows(log_path, /, **match):
    """The records of a JSON flow log (each validated: an invalid line fails the test) that
    match every key=value. A line still being written is left out."""
    if not os.path.exists(log_path):
        return []
    return [r for r in load_flow_log(log_path, allow_partial_tail=True) if matches(r, match)]


def wait_flows(log_path, count=1, /, timeout=FLOW_WAIT, context="", **match):
    """Waits until at least `count` records match; returns them all (the flow log is written by
    a thread of its own, after the client got its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = flows(log_path, **match)
        if len(found) >= count:
            return found
        if time.monotonic() >= deadline:
            shown = (open(log_path, errors="replace").read()[-6000:]
                     if os.path.exists(log_path) else "")
            raise AssertionError("timed out after %.0fs waiting for %d flow record(s) matching "
                                 "%r (found %d); flow log tail:\n%s%s" % (
                                     timeout, count, match, len(found), shown, context))
        time.sleep(0.02)


def wait_flow(log_path, /, timeout=FLOW_WAIT, context="", **match):
    """The one record matching every key=value (waits for it; fails if there are several)."""
    found = wait_flows(log_path, 1, timeout=timeout, context=context, **match)
    if len(found) != 1:
        raise AssertionError("expected one record matching %r, found %d:\n%s%s" % (
            match, len(found), "\n".join(json.dumps(r) for r in found), context))
    return found[0]


def is_h2_flow(flow):
    return re.fullmatch(r"\d+\.s\d+", flow) is not None


def curl_many(urls, proxy, cacert=None, args=(), timeout=CURL_TIMEOUT):
    """One curl run fetching several URLs (so it reuses its connection): a list of
    (http_code, local_port), one per URL."""
    cmd = ["curl", "-q", "-sS", "--max-time", str(timeout), "--proxy", proxy,
           "-w", "%{http_code} %{local_port}\\n"]
    if cacert:
        cmd += ["--cacert", str(cacert)]
    cmd += [str(a) for a in args]
    for url in urls:
        cmd += ["-o", os.devnull, url]
    result = subprocess.run(cmd, capture_output=True, timeout=timeout + 15, env=clean_env())
    lines = result.stdout.decode().split()
    pairs = [(int(lines[i]), int(lines[i + 1])) for i in range(0, len(lines) - 1, 2)]
    if result.returncode != 0 or len(pairs) != len(urls):
        raise AssertionError("curl failed (%d): %s\n%s" % (result.returncode, " ".join(cmd),
                                                           result.stderr.decode()[-2000:]))
    return pairs


class FlowLogCase(IntegrationTestCase):
    """Helpers shared by the classes: a proxy with a flow log of its own."""

    def start_logging_proxy(self, args=(), name=None, config_text=None, fmt=None):
        name = name or self.id().rsplit(".", 1)[-1]
        path = self.tmp / ("%s.flows" % name)
        extra = ["--flow-log", path]
        if fmt:
            extra += ["--flow-log-format", fmt]
        proxy = self.start_tokgate(name, list(args) + extra, config_text=config_text)
        return proxy, path

    def assert_common(self, record, proxy, context=""):
        """What every record of a loopback client says about the client and the listener."""
        self.assertEqual(record["client_ip"], "127.0.0.1", context)
        self.assertIsInstance(record.get("client_port"), int, context)
        self.assertEqual(record["listener"], "127.0.0.1:%d" % proxy.port, context)
        self.assertEqual(record["mode"], "explicit", context)


# --- 1. every kind of flow --------------------------------------------------------------------

class FlowKindsTest(FlowLogCase):
    """One proxy (policy POLICY, untrusted.test intercepted, refused.tiktok.com refused) shared
    by the class; each test finds its own records by path, host or SNI."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()  # origin.py: untrusted.test over HTTPS, and plain HTTP
        cls.node = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.node.stop)
        cls.plain_node = NodeOrigin(cls.pki, plain=True)
        cls.addClassCleanup(cls.plain_node.stop)
        cls.policy_path = cls.tmp / "policy.toml"
        cls.policy_path.write_text(POLICY)
        cls.log = cls.tmp / "kinds.flows"
        cls.proxy = Tokgate(cls.tmp / "kinds", policy_run_args(
            policy=cls.policy_path, intercept=["untrusted.test"], refuse=[REFUSED_HOST])
            + ["--flow-log", str(cls.log)])
        cls.addClassCleanup(cls.proxy.stop, signal.SIGKILL)

    def setUp(self):
        if self.proxy.process.poll() is not None:
            self.fail("the shared proxy is gone (an earlier test crashed it)" + self.context())

    def context(self, *parts):
        return "\n".join(str(p) for p in parts) + self.proxy.context()

    def url(self, path, host=HOST):
        return "https://%s:%d%s" % (host, self.node.port, path)

    def test_intercepted_http11_requests(self):
        pairs = curl_many([self.url("/whoami/h1-one?device_id=7&x=1"),
                           self.url("/whoami/h1-two")], self.proxy.url, self.proxy.ca_pem,
                          ["--http1.1"])
        self.assertEqual([code for code, _ in pairs], [200, 200], self.context())
        self.assertEqual(pairs[0][1], pairs[1][1], "curl did not reuse its connection")
        first = wait_flow(self.log, path="/whoami/h1-one")
        second = wait_flow(self.log, path="/whoami/h1-two")
        context = self.context(first, second)
        conn = first["conn"]
        self.assertEqual(first["flow"], "%d.1" % conn, context)
        self.assertEqual(second["flow"], "%d.2" % conn, context)
        self.assertEqual(second["conn"], conn, context)
        for record in (first, second):
            self.assert_common(record, self.proxy, context)
            self.assertEqual(record["client_port"], pairs[0][1], context)
            expected = {"type": "request", "sni": HOST, "host": HOST, "port": self.node.port,
                        "scheme": "https", "method": "GET", "status": 200, "bytes_up": 0,
                        "bumped": True, "verdict": "intercept", "client_alpn": "http/1.1",
                        "server_alpn": "http/1.1", "client_tls": "TLSv1.3",
                        "server_tls": "TLSv1.3", "category": "web", "rule": "log-web",
                        "action": "log", "upstream_ip": "127.0.0.1",
                        "upstream_port": self.node.port, "ua_class": "cli"}
            self.assertEqual({k: record.get(k) for k in expected}, expected, context)
            self.assertTrue(record["user_agent"].startswith("curl/"), context)
            self.assertGreater(record["bytes_down"], 0, context)
            self.assertIn("first_byte_ms", record, context)
            self.assertIn("total_ms", record, context)
            self.assertTrue(any(e.startswith("host:") for e in record.get("evidence", [])),
                            context)
        self.assertEqual(first["query"], "device_id=REDACTED&x=REDACTED", context)
        self.assertNotIn("query", second, context)
        # Connection costs belong to the first request; the second reused the connection.
        for name in ("connect_ms", "tls_ms"):
            self.assertIn(name, first, context)
            self.assertNotIn(name, second, context)

    def test_http2_on_both_legs(self):
        pairs = curl_many([self.url("/whoami/h2-one"), self.url("/bytes/1000/h2-two")],
                          self.proxy.url, self.proxy.ca_pem, ["--http2"])
        self.assertEqual([code for code, _ in pairs], [200, 200], self.context())
        first = wait_flow(self.log, path="/whoami/h2-one")
        second = wait_flow(self.log, path="/bytes/1000/h2-two")
        context = self.context(first, second)
        self.assertEqual(first["conn"], second["conn"], context)
        conn = first["conn"]
        self.assertEqual({first["flow"], second["flow"]}, {"%d.s1" % conn, "%d.s3" % conn},
                         context)
        for record in (first, second):
            self.assert_common(record, self.proxy, context)
            expected = {"type": "request", "scheme": "https", "host": HOST, "sni": HOST,
                        "status": 200, "bumped": True, "verdict": "intercept",
                        "client_alpn": "h2", "server_alpn": "h2", "client_tls": "TLSv1.3",
                        "server_tls": "TLSv1.3", "action": "log", "rule": "log-web"}
            self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        self.assertEqual(second["bytes_down"], 1000, context)
        # The upstream connection was opened once: one record carries its costs.
        self.assertEqual(sum("connect_ms" in r for r in (first, second)), 1, context)
        self.assertEqual(sum("tls_ms" in r for r in (first, second)), 1, context)

    @staticmethod
    def ws_counts(messages, payload, control_frames, control_bytes):
        """(messages, bytes) a record may carry for one direction: data messages and their
        payload, or those plus the control frames (the schema leaves it open)."""
        return {(messages, payload), (messages + control_frames, payload + control_bytes)}

    def test_websocket_http11_upgrade(self):
        with wsclient.connect_tls_via_proxy("127.0.0.1:%d" % self.proxy.port, HOST,
                                            self.node.port, "/chat/h1/ws",
                                            cafile=self.proxy.ca_pem) as ws:
            result = wsclient.echo_script(ws)
        self.assertEqual(result.close_code, 1000, self.context(result.as_dict()))
        record = wait_flow(self.log, path="/chat/h1/ws")
        context = self.context(record, result.as_dict())
        self.assert_common(record, self.proxy, context)
        self.assertEqual(record["flow"], "%d.1" % record["conn"], context)
        expected = {"type": "request", "method": "GET", "status": 101, "bumped": True,
                    "verdict": "intercept", "client_alpn": "http/1.1", "ws_close_code": 1000}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        self.assertIn((record.get("ws_messages_up"), record.get("bytes_up")), self.ws_counts(
            result.messages_sent, result.bytes_sent, result.control_frames_sent,
            result.control_bytes_sent), context)
        self.assertIn((record.get("ws_messages_down"), record.get("bytes_down")), self.ws_counts(
            result.messages_received, result.bytes_received, result.control_frames_received,
            result.control_bytes_received), context)
        self.assertEqual(result.messages_sent, 4, context)

    def test_websocket_plain_through_explicit_proxy(self):
        with wsclient.connect_plain_via_proxy("127.0.0.1:%d" % self.proxy.port, HOST,
                                              self.plain_node.port, "/chat/plain/ws") as ws:
            result = wsclient.echo_script(ws)
        self.assertEqual(result.close_code, 1000, self.context(result.as_dict()))
        record = wait_flow(self.log, path="/chat/plain/ws")
        context = self.context(record, result.as_dict())
        expected = {"type": "request", "method": "GET", "status": 101, "bumped": False,
                    "port": self.plain_node.port, "ws_close_code": 1000}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        self.assertIn((record.get("ws_messages_up"), record.get("bytes_up")), self.ws_counts(
            result.messages_sent, result.bytes_sent, result.control_frames_sent,
            result.control_bytes_sent), context)
        for name in ("sni", "client_alpn", "client_tls"):
            self.assertNotIn(name, record, context)

    def test_websocket_h2_extended_connect(self):
        run = h2client({"proxy": "127.0.0.1:%d" % self.proxy.port,
                        "connect": "%s:%d" % (HOST, self.node.port), "servername": HOST,
                        "ca": str(self.proxy.ca_pem), "alpn": ["h2"],
                        "websocket": {"path": "/chat/h2/ws"}}, self.scratch_dir("h2ws"),
                       timeout=30)
        report = run.websocket
        self.assertIsNotNone(report, self.context(run.describe()))
        self.assertEqual(report["status"], 200, self.context(run.describe()))
        self.assertEqual(report["close_code"], 1000, self.context(run.describe()))
        record = wait_flow(self.log, path="/chat/h2/ws")
        context = self.context(record, run.describe())
        self.assertTrue(is_h2_flow(record["flow"]), context)
        self.assertEqual(record["flow"].split(".")[0], str(record["conn"]), context)
        expected = {"type": "request", "scheme": "wss", "status": 200, "bumped": True,
                    "ws_close_code": 1000}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        sent = report["sent"]
        self.assertIn((record.get("ws_messages_up"), record.get("bytes_up")), self.ws_counts(
            sent["messages"], sent["bytes"], sent["control_frames"], sent["control_bytes"]),
            context)
        self.assertIn((record.get("ws_messages_down"), record.get("bytes_down")),
                      self.ws_counts(len(report["echoes"]), sent["bytes"], 2,
                                     len("ping-h2") + 2 + len("bye")), context)

    def test_spliced_connection(self):
        # example.org is nobody's target: spliced, the client sees the origin's certificate.
        result = curl("https://example.org:%d/bytes/5000/splice" % self.node.port,
                      proxy=self.proxy.url, cacert=self.pki.ca_cert, timeout=CURL_TIMEOUT)
        self.assertEqual(result.status, 200, result.describe() + self.proxy.context())
        record = wait_flow(self.log, type="connection", sni="example.org")
        context = self.context(record)
        self.assert_common(record, self.proxy, context)
        self.assertEqual(record["client_port"], result.info.get("local_port"), context)
        self.assertEqual(record["flow"], str(record["conn"]), context)
        expected = {"verdict": "splice", "bumped": False, "host": "example.org",
                    "port": self.node.port, "category": "none", "upstream_ip": "127.0.0.1",
                    "upstream_port": self.node.port}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        # Tunnel bytes: at least the ClientHello up, the certificate and 5000 bytes down.
        self.assertGreater(record["bytes_up"], 200, context)
        self.assertGreater(record["bytes_down"], 5000, context)
        for name in ("method", "path", "client_alpn", "server_alpn"):
            self.assertNotIn(name, record, context)

    def test_refused_connect(self):
        response = raw_exchange(self.proxy.port, b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                                % (REFUSED_HOST.encode(), self.node.port, REFUSED_HOST.encode(),
                                   self.node.port))
        self.assertIsNotNone(response, self.context())
        self.assertEqual(response.status, 403, self.context(response))
        record = wait_flow(self.log, type="connection", host=REFUSED_HOST)
        context = self.context(record)
        self.assert_common(record, self.proxy, context)
        self.assertEqual(record["flow"], str(record["conn"]), context)
        expected = {"verdict": "refuse", "bumped": False, "status": 403,
                    "port": self.node.port}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        self.assertIn("rule", record, context)
        # Refused by name: no origin was contacted.
        for name in ("upstream_ip", "upstream_port", "sni", "connect_ms"):
            self.assertNotIn(name, record, context)

    def test_refused_at_tls(self):
        # The CONNECT name is fine, the SNI is refused: the answer is a TLS alert.
        outcome, detail = tls_through_connect(self.proxy.port,
                                              "example.org:%d" % self.node.port, REFUSED_HOST,
                                              cafile=self.proxy.ca_pem)
        self.assertEqual(outcome, "tls", self.context(detail))
        self.assertRegex(str(detail), "(?i)access.denied|alert", self.context(detail))
        record = wait_flow(self.log, type="connection", sni=REFUSED_HOST)
        context = self.context(record)
        self.assert_common(record, self.proxy, context)
        expected = {"verdict": "refuse", "bumped": False, "host": "example.org",
                    "port": self.node.port}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        self.assertIn("rule", record, context)
        # No HTTP answer was sent: no status.
        self.assertNotIn("status", record, context)
        for name in ("client_alpn", "client_tls"):
            self.assertNotIn(name, record, context)

    def test_blocked_request_h1_and_h2(self):
        mark = self.node.mark()
        for version, alpn, label in (("--http1.1", "http/1.1", "h1"), ("--http2", "h2", "h2")):
            with self.subTest(version=version):
                path = "/blocked/%s" % label
                result = curl(self.url(path + "?token=abc"), proxy=self.proxy.url,
                              cacert=self.proxy.ca_pem, args=[version], timeout=CURL_TIMEOUT)
                self.assertEqual(result.status, 451, result.describe() + self.proxy.context())
                record = wait_flow(self.log, path=path)
                context = self.context(record)
                self.assert_common(record, self.proxy, context)
                expected = {"type": "request", "status": 451, "action": "block",
                            "rule": "block-blocked", "client_alpn": alpn, "bumped": True,
                            "verdict": "intercept", "category": "web",
                            "query": "token=REDACTED", "bytes_down": len(result.body)}
                self.assertEqual({k: record.get(k) for k in expected}, expected, context)
                if label == "h1":
                    self.assertEqual(record["flow"], "%d.1" % record["conn"], context)
                else:
                    self.assertTrue(is_h2_flow(record["flow"]), context)
        self.assertEqual([r for r in self.node.requests(mark) if "/blocked/" in r["path"]], [],
                         "a blocked request reached the origin")

    def test_upstream_connect_error(self):
        sock, port = closed_port()
        self.addCleanup(sock.close)
        # CONNECT to a closed port: 502 to the CONNECT, a connection record.
        response = raw_exchange(self.proxy.port, b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                                % (HOST.encode(), port, HOST.encode(), port))
        self.assertEqual(response.status, 502, self.context(response))
        record = wait_flow(self.log, type="connection", port=port)
        context = self.context(record)
        self.assert_common(record, self.proxy, context)
        expected = {"status": 502, "error": "upstream-connect", "bumped": False, "host": HOST}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        self.assertIn("error_reason", record, context)
        self.assertEqual(record["flow"], str(record["conn"]), context)
        # A plain http:// request to it: 502, a request record.
        result = curl("http://%s:%d/closed/plain" % (HOST, port), proxy=self.proxy.url,
                      timeout=CURL_TIMEOUT)
        self.assertEqual(result.status, 502, result.describe() + self.proxy.context())
        record = wait_flow(self.log, type="request", port=port)
        context = self.context(record)
        expected = {"status": 502, "error": "upstream-connect", "scheme": "http",
                    "path": "/closed/plain", "method": "GET", "bumped": False}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        self.assertIn("error_reason", record, context)

    def test_upstream_tls_error(self):
        # origin.py shows untrusted.test a certificate from a CA the proxy does not trust.
        result = curl("https://untrusted.test:%d/untrusted/x?k=v" % self.origin.https_port,
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem, timeout=CURL_TIMEOUT)
        self.assertEqual(result.status, 502, result.describe() + self.proxy.context())
        record = wait_flow(self.log, path="/untrusted/x")
        context = self.context(record)
        self.assert_common(record, self.proxy, context)
        expected = {"type": "request", "status": 502, "error": "upstream-tls", "bumped": True,
                    "verdict": "intercept", "host": "untrusted.test", "sni": "untrusted.test",
                    "client_alpn": "http/1.1", "query": "k=REDACTED"}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        self.assertRegex(record.get("error_reason", ""), "(?i)certificate|verify", context)
        # The origin's TLS never completed: no TLS version or ALPN on that leg.
        for name in ("server_tls", "server_alpn"):
            self.assertNotIn(name, record, context)

    def test_plain_http_through_explicit_proxy(self):
        result = curl("http://%s:%d/whoami/plain?a=1&b=2" % (HOST, self.origin.http_port),
                      proxy=self.proxy.url, timeout=CURL_TIMEOUT)
        self.assertEqual(result.status, 200, result.describe() + self.proxy.context())
        record = wait_flow(self.log, path="/whoami/plain")
        context = self.context(record)
        self.assert_common(record, self.proxy, context)
        self.assertEqual(record["client_port"], result.info.get("local_port"), context)
        self.assertEqual(record["flow"], "%d.1" % record["conn"], context)
        expected = {"type": "request", "scheme": "http", "host": HOST,
                    "port": self.origin.http_port, "method": "GET", "status": 200,
                    "bumped": False, "query": "a=REDACTED&b=REDACTED", "action": "log",
                    "rule": "log-web", "bytes_down": len(result.body),
                    "upstream_ip": "127.0.0.1", "upstream_port": self.origin.http_port}
        self.assertEqual({k: record.get(k) for k in expected}, expected, context)
        for name in ("sni", "client_alpn", "client_tls", "server_tls"):
            self.assertNotIn(name, record, context)

    def tearDown(self):
        # Whatever the test did, every line of the flow log is a valid record, and the proxy
        # is still there.
        if os.path.exists(self.log):
            load_flow_log(self.log, allow_partial_tail=True)
        if self.proxy.process.poll() is not None:
            raise AssertionError("tokgate exited during this test" + self.context())


# --- 2. privacy -------------------------------------------------------------------------------

class PrivacyTest(FlowLogCase):

    start_origin = False
    QUERY = "device_id=7123456789&aid=1233&flag&empty=&sig=s3cr3tv4lue"
    REDACTED = "device_id=REDACTED&aid=REDACTED&flag&empty=&sig=REDACTED"
    SECRETS = ("7123456789", "1233", "s3cr3tv4lue")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.node.stop)
        cls.policy_path = cls.tmp / "policy.toml"
        cls.policy_path.write_text(POLICY)

    def base_args(self):
        return self.intercept_args(HOST)

    def fetch(self, proxy, path, version="--http2"):
        result = curl("https://%s:%d%s" % (HOST, self.node.port, path), proxy=proxy.url,
                      cacert=proxy.ca_pem, args=[version], timeout=CURL_TIMEOUT)
        self.assertIn(result.status, (200, 404), result.describe() + proxy.context())
        return result

    def query_of(self, mode):
        args = self.base_args() + (["--query-privacy", mode] if mode else [])
        proxy, log = self.start_logging_proxy(args, name="query-%s" % (mode or "default"))
        self.fetch(proxy, "/whoami/q?" + self.QUERY)
        record = wait_flow(log, path="/whoami/q")
        return record, log.read_text(), proxy

    def test_query_redacted_by_default(self):
        record, text, proxy = self.query_of(None)
        self.assertEqual(record.get("query"), self.REDACTED, record)
        for secret in self.SECRETS:
            self.assertNotIn(secret, text, "a query value reached the flow log")

    def test_query_redact_explicitly(self):
        record, _, _ = self.query_of("redact")
        self.assertEqual(record.get("query"), self.REDACTED, record)

    def test_query_full(self):
        record, _, _ = self.query_of("full")
        self.assertEqual(record.get("query"), self.QUERY, record)

    def test_query_omit(self):
        record, text, _ = self.query_of("omit")
        self.assertNotIn("query", record, record)
        self.assertEqual(record["path"], "/whoami/q", record)
        for secret in self.SECRETS + ("device_id",):
            self.assertNotIn(secret, text, "omit left the query in the flow log")

    def test_rule_with_privacy_full(self):
        proxy, log = self.start_logging_proxy(
            policy_run_args(policy=self.policy_path, intercept=[HOST]), name="rule-full")
        self.fetch(proxy, "/full/page?" + self.QUERY, "--http1.1")
        self.fetch(proxy, "/whoami/other?" + self.QUERY, "--http1.1")
        self.fetch(proxy, "/full/h2?" + self.QUERY, "--http2")
        full = wait_flow(log, path="/full/page")
        other = wait_flow(log, path="/whoami/other")
        full_h2 = wait_flow(log, path="/full/h2")
        context = "\n%r\n%r\n%r%s" % (full, other, full_h2, proxy.context())
        self.assertEqual((full.get("rule"), full.get("query")), ("log-full", self.QUERY), context)
        self.assertEqual((full_h2.get("rule"), full_h2.get("query")), ("log-full", self.QUERY),
                         context)
        self.assertEqual((other.get("rule"), other.get("query")), ("log-web", self.REDACTED),
                         context)

    def pseudonymising_proxy(self, name, key_file):
        config = '[privacy]\nclient = "pseudonymise"\nclient_key_file = "%s"\n' % key_file
        return self.start_logging_proxy(self.base_args(), name=name, config_text=config)

    def anon_ids(self, proxy, log, count):
        ports = []
        for i in range(count):
            result = self.fetch(proxy, "/whoami/anon-%d" % i, "--http1.1")
            ports.append(result.info.get("local_port"))
        records = [wait_flow(log, path="/whoami/anon-%d" % i) for i in range(count)]
        context = "\n".join(json.dumps(r) for r in records) + proxy.context()
        self.assertEqual(len(set(ports)), count, "the requests shared a connection")
        self.assertEqual(len({r["conn"] for r in records}), count, context)
        for record in records:
            self.assertRegex(record["client_ip"], r"^anon:[0-9a-f]{16}$", context)
            self.assertNotIn("client_port", record, context)
        return [r["client_ip"] for r in records], log.read_text()

    def test_pseudonymised_clients(self):
        key_a = self.tmp / "client-key-a"
        key_a.write_bytes(os.urandom(32))
        key_a.chmod(0o600)
        proxy, log = self.pseudonymising_proxy("anon-a", key_a)
        ids, text = self.anon_ids(proxy, log, 2)
        self.assertEqual(ids[0], ids[1], "one client, one key: the pseudonym must be stable")
        self.assertNotIn('"client_ip":"127.0.0.1"', text)
        self.assertNotIn('"client_port"', text)
        # The same key in another process: the same pseudonym.
        proxy.stop()
        proxy_again, log_again = self.pseudonymising_proxy("anon-a-again", key_a)
        again, _ = self.anon_ids(proxy_again, log_again, 1)
        self.assertEqual(again[0], ids[0], "the same key gave another pseudonym")
        # Another key (created 0600 when missing): another pseudonym.
        key_b = self.tmp / "client-key-b"
        proxy_b, log_b = self.pseudonymising_proxy("anon-b", key_b)
        other, _ = self.anon_ids(proxy_b, log_b, 1)
        self.assertNotEqual(other[0], ids[0], "two keys gave the same pseudonym")
        self.assertTrue(key_b.exists(), "the missing client key file was not created")
        self.assertEqual(stat.S_IMODE(key_b.stat().st_mode), 0o600)
        self.assertGreaterEqual(key_b.stat().st_size, 32)


# --- 3. Squid's access.log format --------------------------------------------------------------

# Squid's native format: "%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt".
SQUID_LINE = re.compile(
    r"^(?P<time>\d+)\.(?P<millis>\d{3}) (?P<elapsed> *\d+) (?P<client>\S+) "
    r"(?P<result>[A-Z_]+)/(?P<status>\d{3}) (?P<bytes>\d+) (?P<method>\S+) (?P<url>\S+) "
    r"(?P<user>\S+) (?P<hierarchy>[A-Z_]+)/(?P<peer>\S+) (?P<type>\S+)$")


class SquidFormatTest(FlowLogCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.node.stop)
        cls.policy_path = cls.tmp / "policy.toml"
        cls.policy_path.write_text(POLICY)

    def test_squid_lines(self):
        started = time.time()
        proxy, log = self.start_logging_proxy(
            policy_run_args(policy=self.policy_path, refuse=[REFUSED_HOST]), fmt="squid")
        port = self.node.port
        ok = curl("https://%s:%d/whoami/squid?x=1" % (HOST, port), proxy=proxy.url,
                  cacert=proxy.ca_pem, timeout=CURL_TIMEOUT)
        blocked = curl("https://%s:%d/blocked/squid" % (HOST, port), proxy=proxy.url,
                       cacert=proxy.ca_pem, timeout=CURL_TIMEOUT)
        spliced = curl("https://example.org:%d/bytes/3000/squid" % port, proxy=proxy.url,
                       cacert=self.pki.ca_cert, timeout=CURL_TIMEOUT)
        refused = raw_exchange(proxy.port, b"CONNECT %s:%d HTTP/1.1\r\n\r\n"
                               % (REFUSED_HOST.encode(), port))
        sock, closed = closed_port()
        self.addCleanup(sock.close)
        failed = curl("http://%s:%d/closed" % (HOST, closed), proxy=proxy.url,
                      timeout=CURL_TIMEOUT)
        self.assertEqual((ok.status, blocked.status, spliced.status, refused.status,
                          failed.status), (200, 451, 200, 403, 502), proxy.context())

        def lines():
            text = log.read_text() if log.exists() else ""
            return [l for l in text.split("\n")[:-1]]
        deadline = time.monotonic() + FLOW_WAIT
        while len(lines()) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        found = lines()
        context = "\n".join(found) + proxy.context()
        self.assertEqual(len(found), 5, context)
        parsed = []
        for line in found:
            match = SQUID_LINE.match(line)
            self.assertIsNotNone(match, "not Squid's native layout: %r\n%s" % (line, context))
            fields = match.groupdict()
            self.assertGreaterEqual(len(fields["elapsed"]), 6,
                                    "elapsed is Squid's %%6tr: %r" % line)
            self.assertLessEqual(abs(int(fields["time"]) - started), 60, line)
            self.assertEqual(fields["client"], "127.0.0.1", line)
            self.assertEqual(fields["user"], "-", line)
            with self.assertRaises(ValueError, msg="a Squid line is not JSON"):
                parse_line(line)
            parsed.append(fields)

        def one(url_part):
            rows = [f for f in parsed if url_part in f["url"]]
            self.assertEqual(len(rows), 1, "%r in:\n%s" % (url_part, context))
            return rows[0]

        row = one("/whoami/squid")
        self.assertEqual((row["result"], row["status"], row["method"]),
                         ("TCP_MISS", "200", "GET"), context)
        self.assertEqual(row["url"], "https://%s:%d/whoami/squid?x=REDACTED" % (HOST, port))
        self.assertEqual((row["hierarchy"], row["peer"]), ("HIER_DIRECT", "127.0.0.1"), context)
        self.assertEqual(int(row["bytes"]), len(ok.body), context)
        row = one("/blocked/squid")
        self.assertEqual((row["result"], row["status"]), ("TCP_DENIED", "451"), context)
        row = one("example.org:%d" % port)
        self.assertEqual((row["method"], row["url"]), ("CONNECT", "example.org:%d" % port),
                         context)
        self.assertEqual(row["result"], "TCP_TUNNEL", context)
        self.assertEqual(row["status"], "200", "Squid logs a tunnel as TCP_TUNNEL/200\n" + context)
        self.assertGreater(int(row["bytes"]), 3000, context)
        row = one(REFUSED_HOST)
        self.assertEqual((row["result"], row["status"], row["method"]),
                         ("TCP_DENIED", "403", "CONNECT"), context)
        row = one("/closed")
        self.assertEqual((row["result"], row["status"]), ("NONE_NONE", "502"), context)


# --- 4. reopening (logrotate) ----------------------------------------------------------------

class ReopenTest(FlowLogCase):

    def get(self, proxy, tag):
        result = curl("http://%s:%d/whoami/%s" % (HOST, self.origin.http_port, tag),
                      proxy=proxy.url, timeout=CURL_TIMEOUT)
        self.assertEqual(result.status, 200, result.describe() + proxy.context())

    def rotate(self, proxy, log, rotated, sig):
        mark = log_mark(proxy)
        os.rename(log, rotated)
        proxy.process.send_signal(sig)  # not proxy.send_signal: the proxy must keep running
        if sig == signal.SIGUSR1:
            wait_for_record(proxy, start=mark, event="flow-log-reopen")
        deadline = time.monotonic() + FLOW_WAIT
        while not log.exists():
            if time.monotonic() > deadline:
                raise AssertionError("%s was not reopened after %s%s" % (log, sig.name,
                                                                       proxy.context()))
            time.sleep(0.02)

    def test_reopen_on_sigusr1_and_sighup(self):
        proxy, log = self.start_logging_proxy(self.intercept_args())
        rotated_1 = log.with_name(log.name + ".1")
        rotated_2 = log.with_name(log.name + ".2")
        batches = {"a": 3, "b": 4, "c": 2}
        for i in range(batches["a"]):
            self.get(proxy, "a%d" % i)
        wait_flows(log, batches["a"], path=lambda p: p.startswith("/whoami/a"))
        self.rotate(proxy, log, rotated_1, signal.SIGUSR1)
        for i in range(batches["b"]):
            self.get(proxy, "b%d" % i)
        wait_flows(log, batches["b"], path=lambda p: p.startswith("/whoami/b"))
        # SIGHUP reopens too (and reloads the policy).
        self.rotate(proxy, log, rotated_2, signal.SIGHUP)
        for i in range(batches["c"]):
            self.get(proxy, "c%d" % i)
        wait_flows(log, batches["c"], path=lambda p: p.startswith("/whoami/c"))
        time.sleep(0.3)  # anything late or duplicated would show up now
        files = {"a": rotated_1, "b": rotated_2, "c": log}
        all_flows = []
        for tag, path in files.items():
            records = load_flow_log(path)
            paths = sorted(r["path"] for r in records)
            self.assertEqual(paths, ["/whoami/%s%d" % (tag, i) for i in range(batches[tag])],
                             "%s holds the wrong records%s" % (path.name, proxy.context()))
            all_flows += [r["flow"] for r in records]
        self.assertEqual(len(all_flows), len(set(all_flows)), "a flow id repeats: %r"
                         % all_flows)
        self.assertIsNone(proxy.process.poll(), proxy.context())


# --- 5. GeoIP and the report -----------------------------------------------------------------

def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class GeoIpTest(FlowLogCase):
    """An origin of our own bound to every address (h2origin.mjs binds 127.0.0.1 by default,
    unreachable at 127.0.0.2), names pinned with --resolve to addresses the test databases
    know: cn → 127.0.0.2 (CN, AS37963), us → 127.0.0.3 (US, AS20940), v6 → ::1 (DE, AS64512),
    unknown → 127.0.0.1 (not in the data)."""

    start_origin = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.mmdb = cls.tmp / "mmdb"
        cls.mmdb.mkdir()
        result = subprocess.run(["perl", str(REPO_ROOT / "tests" / "data" / "make_test_mmdb.pl"),
                                 str(cls.mmdb)], capture_output=True, timeout=60,
                                env=clean_env())
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")
            if "Can't locate MaxMind" in stderr:
                raise unittest.SkipTest("perl MaxMind::DB::Writer is missing "
                                        "(libmaxmind-db-writer-perl): " + stderr[:200])
            raise AssertionError("make_test_mmdb.pl failed: %s" % stderr)
        cls.v6 = ipv6_loopback()
        host = "::" if cls.v6 else "0.0.0.0"
        cls.origin_process = subprocess.Popen(
            [node_binary(), str(H2ORIGIN_SCRIPT), "--port", "0", "--plain", "--host", host],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=clean_env())
        cls.addClassCleanup(cls._stop_origin)
        events = LineCollector(cls.origin_process.stdout, "geo-origin")
        ready = events.wait_for(lambda l: '"ready"' in l, STARTUP_TIMEOUT, "origin ready")
        cls.port = json.loads(ready)["port"]

    @classmethod
    def _stop_origin(cls):
        cls.origin_process.kill()
        cls.origin_process.wait(5)
        cls.origin_process.stdout.close()

    def geo_args(self, country=True, asn=True):
        port = self.port
        args = ["--profile", "observe",
                "--resolve", "cn.tiktok.com:%d:127.0.0.2" % port,
                "--resolve", "us.tiktok.com:%d:127.0.0.3" % port,
                "--resolve", "unknown.tiktok.com:%d:127.0.0.1" % port]
        if self.v6:
            args += ["--resolve", "v6.tiktok.com:%d:[::1]" % port]
        if country:
            args += ["--geoip-country", self.mmdb / "country.mmdb"]
        if asn:
            args += ["--geoip-asn", self.mmdb / "asn.mmdb"]
        return args

    def get(self, proxy, name, tag):
        result = curl("http://%s.tiktok.com:%d/whoami/%s" % (name, self.port, tag),
                      proxy=proxy.url, timeout=CURL_TIMEOUT)
        self.assertEqual(result.status, 200, result.describe() + proxy.context())

    EXPECTED = {
        "cn": ("127.0.0.2", "CN", 37963, "Hangzhou Alibaba Advertising Co.,Ltd."),
        "us": ("127.0.0.3", "US", 20940, "Akamai International B.V."),
        "v6": ("::1", "DE", 64512, "Test ASN v6"),
    }

    def test_geoip_fields_and_report(self):
        proxy, log = self.start_logging_proxy(self.geo_args())
        plan = [("cn", "cn-1"), ("cn", "cn-2"), ("us", "us-1"), ("unknown", "unknown-1")]
        if self.v6:
            plan.append(("v6", "v6-1"))
        for name, tag in plan:
            self.get(proxy, name, tag)
        records = {}
        for name, tag in plan:
            records[tag] = wait_flow(log, path="/whoami/%s" % tag)
        context = "\n".join(json.dumps(r) for r in records.values()) + proxy.context()
        for name, tag in plan:
            record = records[tag]
            self.assertEqual(record["host"], "%s.tiktok.com" % name, context)
            if name == "unknown":
                self.assertEqual(record.get("upstream_ip"), "127.0.0.1", context)
                for field in ("upstream_country", "upstream_asn", "upstream_as_org"):
                    self.assertNotIn(field, record, "an address outside the database got a "
                                     "%s\n%s" % (field, context))
                continue
            ip, country, asn, org = self.EXPECTED[name]
            self.assertEqual((record.get("upstream_ip"), record.get("upstream_port"),
                              record.get("upstream_country"), record.get("upstream_asn"),
                              record.get("upstream_as_org")),
                             (ip, self.port, country, asn, org), context)
        if not self.v6:
            sys.stderr.write("note: no IPv6 loopback here: the ::1 → DE case was left out\n")

        # The report, from the same file.
        total = len(plan)
        all_records = load_flow_log(log)
        self.assertEqual(len(all_records), total, context)
        result = tokgate_command("report", "--json", log)
        self.assertEqual(result.returncode, 0, describe_command(result))
        report = json.loads(result.stdout)
        described = json.dumps(report, indent=1) + "\n" + context
        total_bytes = sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in all_records)
        self.assertEqual(report["total"], {"flows": total, "bytes": total_bytes}, described)
        self.assertEqual(report["malformed_lines"], 0, described)

        def bytes_of(*tags):
            return sum(records[t]["bytes_up"] + records[t]["bytes_down"] for t in tags)

        by_country = {row.get("country"): row for row in report["by_country"]["rows"]}
        expected_countries = {"CN": (2, bytes_of("cn-1", "cn-2")), "US": (1, bytes_of("us-1")),
                              None: (1, bytes_of("unknown-1"))}
        if self.v6:
            expected_countries["DE"] = (1, bytes_of("v6-1"))
        self.assertEqual(set(by_country), set(expected_countries), described)
        for country, (count, nbytes) in expected_countries.items():
            row = by_country[country]
            self.assertEqual((row["flows"], row["bytes"], row["distinct_ips"]),
                             (count, nbytes, 1), described)
            self.assertAlmostEqual(row["flows_share"], count / total, places=4, msg=described)
            self.assertAlmostEqual(row["bytes_share"], nbytes / total_bytes, places=4,
                                   msg=described)
        self.assertEqual(report["unknown_country"]["flows"], 1, described)
        self.assertAlmostEqual(report["unknown_country"]["flows_share"], 1 / total, places=4,
                               msg=described)
        by_asn = {row.get("asn"): row for row in report["by_asn"]["rows"]}
        self.assertEqual(by_asn[37963]["flows"], 2, described)
        self.assertEqual(by_asn[37963]["as_org"], "Hangzhou Alibaba Advertising Co.,Ltd.",
                         described)
        self.assertEqual(by_asn[20940]["flows"], 1, described)
        self.assertAlmostEqual(by_asn[37963]["flows_share"], 2 / total, places=4, msg=described)
        categories = {(row.get("category"), row.get("country")): row
                      for row in report["by_category"]["rows"]}
        self.assertEqual(categories[("web", "CN")]["flows"], 2, described)
        self.assertAlmostEqual(categories[("web", "CN")]["flows_share_of_category"], 2 / total,
                               places=4, msg=described)

        # The tables for people.
        result = tokgate_command("report", log)
        self.assertEqual(result.returncode, 0, describe_command(result))
        text = result.stdout.decode()
        self.assertRegex(text, r"(?m)^CN\s+2\s+%.1f%%" % (200 / total), text)
        self.assertRegex(text, r"(?m)^US\s+1\s", text)
        self.assertRegex(text, r"(?m)^\(unknown\)\s+1\s", text)
        self.assertIn("AS37963", text)
        self.assertIn("Hangzhou Alibaba Advertising", text)
        self.assertIn("AS20940", text)

    def test_country_database_alone(self):
        # Only the country database: countries, and no AS fields.
        proxy, log = self.start_logging_proxy(self.geo_args(asn=False))
        self.get(proxy, "cn", "cn-only")
        record = wait_flow(log, path="/whoami/cn-only")
        self.assertEqual(record.get("upstream_country"), "CN", record)
        self.assertNotIn("upstream_asn", record, record)
        self.assertNotIn("upstream_as_org", record, record)


# --- 6. a stalled sink --------------------------------------------------------------------------

def metric_value(text, name):
    match = re.search(r"(?m)^%s(?:\{\})? (\d+(?:\.\d+)?(?:e\+?\d+)?)$" % re.escape(name), text)
    return float(match.group(1)) if match else None


class StalledSinkTest(FlowLogCase):
    """The flow log is a FIFO whose reader never reads: the pipe fills, the writer blocks, the
    queue fills; records are dropped and counted, and no request waits for them."""

    REQUESTS = 300
    PER_REQUEST_BOUND = 5.0    # a request that waited for the sink would hang forever
    TOTAL_BOUND = 60.0

    def test_stalled_fifo_never_stalls_traffic(self):
        fifo = self.tmp / "stalled.fifo"
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)  # closed after the proxy is killed (cleanups: LIFO)
        try:
            small_pipe = fcntl.fcntl(reader, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096) <= 4096
        except OSError:
            small_pipe = False  # the default 64 KiB pipe fills too, only later
        config = "[flow_log]\nqueue = 16\n"
        proxy = self.start_tokgate(args=self.intercept_args() + ["--flow-log", fifo],
                                   config_text=config)
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=self.PER_REQUEST_BOUND)
        self.addCleanup(conn.close)
        started = time.monotonic()
        slowest = 0.0
        statuses = []
        for i in range(self.REQUESTS):
            t0 = time.monotonic()
            try:
                conn.request("GET", "http://%s:%d/whoami/stall-%d" % (
                    HOST, self.origin.http_port, i))
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                raise AssertionError("request %d failed after %.1fs: %r%s" % (
                    i, time.monotonic() - t0, error, proxy.context()))
            statuses.append(response.status)
            slowest = max(slowest, time.monotonic() - t0)
            if response.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", proxy.port,
                                                  timeout=self.PER_REQUEST_BOUND)
            self.assertLess(time.monotonic() - started, self.TOTAL_BOUND,
                            "traffic slowed down behind the stalled flow log")
        self.assertEqual(statuses, [200] * self.REQUESTS, proxy.context())
        self.assertLess(slowest, self.PER_REQUEST_BOUND, proxy.context())

        def dropped():
            status, _, body = admin_get(proxy, "/metrics")
            self.assertEqual(status, 200, body[:500])
            return metric_value(body.decode(), "tokgate_flow_log_dropped_total")
        value = dropped()
        self.assertIsNotNone(value, "no tokgate_flow_log_dropped_total in /metrics")
        self.assertGreater(value, 0, "nothing counted as dropped%s" % proxy.context())
        self.assertLessEqual(value, self.REQUESTS, proxy.context())
        if small_pipe:
            # One keep-alive connection is one worker's lane: at most 16 queued, a batch of 16
            # in the blocked write and a 4 KiB pipe's worth of records were not dropped.
            self.assertGreaterEqual(value, self.REQUESTS // 2, proxy.context())

        # What did get into the pipe is whole records (read it now; the writer wakes up).
        data = b""
        deadline = time.monotonic() + 3.0
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.5:
            try:
                piece = os.read(reader, 65536)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            if not piece:
                break
            data += piece
            quiet_since = time.monotonic()
        lines = data.split(b"\n")[:-1]
        self.assertGreater(len(lines), 0, "nothing at all reached the FIFO")
        for number, line in enumerate(lines, 1):
            problems = validate_record(parse_line(line))
            self.assertEqual(problems, [], "line %d: %r" % (number, line[:500]))
        self.assertLess(len(lines), self.REQUESTS, "no record was dropped after all")
        self.assertIsNone(proxy.process.poll(), proxy.context())


# --- the validator itself ------------------------------------------------------------------------

class SchemaSelfTest(unittest.TestCase):
    """flowlog_schema on the documented example and on broken copies of it: when these fail,
    the fault is in the validator."""

    EXAMPLE = {
        "ts": "2026-12-01T13:45:44.039Z", "type": "request", "flow": "7.s3", "conn": 7,
        "client_ip": "10.0.0.23", "client_port": 51234, "listener": "0.0.0.0:8080",
        "mode": "explicit", "sni": "api16-normal-c-useast1a.tiktokv.com",
        "host": "api16-normal-c-useast1a.tiktokv.com", "port": 443, "scheme": "https",
        "method": "GET", "path": "/aweme/v1/feed/", "query": "device_id=REDACTED&aid=REDACTED",
        "status": 200, "bytes_up": 0, "bytes_down": 48213, "connect_ms": 21.4, "tls_ms": 38.0,
        "first_byte_ms": 103.2, "total_ms": 140.9, "bumped": True, "verdict": "intercept",
        "client_alpn": "h2", "server_alpn": "h2", "client_tls": "TLSv1.3",
        "server_tls": "TLSv1.3", "category": "app-api",
        "evidence": ["host:tiktok-app-backend:.tiktokv.com"], "rule": "log-tiktok-app",
        "action": "log", "upstream_ip": "23.59.172.11", "upstream_port": 443,
        "upstream_country": "US", "upstream_asn": 20940,
        "upstream_as_org": "Akamai International B.V.", "ua_class": "tiktok-app",
        "user_agent": "com.zhiliaoapp.musically/2023501030 (Linux; U; Android 13)"}

    def test_documented_example_is_valid(self):
        self.assertEqual(validate_record(dict(self.EXAMPLE)), [])

    def test_broken_records(self):
        cases = {
            "null": {"sni": None},
            "unknown field": {"colour": "red"},
            "bad enum": {"scheme": "ftp"},
            "bad category": {"category": "video"},
            "bad action": {"action": "deny"},
            "bad alpn": {"client_alpn": "h3"},
            "bad tls": {"server_tls": "TLSv1.1"},
            "bad ua_class": {"ua_class": "bot"},
            "bool as int": {"status": True},
            "float as int": {"bytes_down": 1.5},
            "string as int": {"conn": "7"},
            "ts without millis": {"ts": "2026-12-01T13:45:44Z"},
            "ts not UTC": {"ts": "2026-12-01T13:45:44.039+01:00"},
            "ts impossible": {"ts": "2026-02-30T13:45:44.039Z"},
            "flow of another conn": {"flow": "8.s3"},
            "even stream": {"flow": "7.s2"},
            "connection flow on a request": {"flow": "7"},
            "anon with port": {"client_ip": "anon:0123456789abcdef"},
            "short anon": {"client_ip": "anon:0123", "client_port": None},
            "empty string": {"rule": ""},
            "query in path": {"path": "/a?b=1"},
            "upper-case host": {"host": "WWW.tiktok.com"},
            "trailing dot": {"host": "www.tiktok.com."},
            "bad country": {"upstream_country": "China"},
            "negative ms": {"tls_ms": -1},
            "bad evidence": {"evidence": ["tiktok"]},
            "ws on https": {"ws_messages_up": 1},
            "intercept not bumped": {"bumped": False},
            "block not 451": {"action": "block"},
            "missing ts": {"ts": None},
        }
        for label, change in cases.items():
            with self.subTest(case=label):
                record = dict(self.EXAMPLE)
                for key, value in change.items():
                    if value is None and label in ("short anon", "missing ts"):
                        record.pop(key, None)
                    else:
                        record[key] = value
                self.assertNotEqual(validate_record(record), [], label)

    def test_pseudonymised_and_connection_records(self):
        record = dict(self.EXAMPLE, client_ip="anon:0123456789abcdef")
        del record["client_port"]
        self.assertEqual(validate_record(record), [])
        connection = {"ts": "2026-12-01T13:45:44.039Z", "type": "connection", "flow": "3",
                      "conn": 3, "client_ip": "::1", "client_port": 4000,
                      "listener": "[::1]:8080", "mode": "explicit", "host": "example.org",
                      "port": 443, "bumped": False, "verdict": "splice", "bytes_up": 10,
                      "bytes_down": 20}
        self.assertEqual(validate_record(connection), [])
        self.assertNotEqual(validate_record(dict(connection, flow="3.1")), [])
        self.assertNotEqual(validate_record(dict(connection, bumped=True)), [])

    def test_load_flow_log_rejects_bad_lines(self):
        import tempfile
        good = json.dumps(self.EXAMPLE)
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "flows")
            without_tls = json.dumps({k: v for k, v in self.EXAMPLE.items() if k != "tls_ms"})
            for label, text in (("duplicate key", good[:-1] + ', "conn": 7}\n'),
                                ("NaN", without_tls[:-1] + ', "tls_ms": NaN}\n'),
                                ("not JSON", good + "\nnot json\n"),
                                ("partial tail", good + "\n" + good[:40])):
                with self.subTest(case=label):
                    with open(path, "w") as f:
                        f.write(text)
                    with self.assertRaises(FlowLogError):
                        load_flow_log(path)
            with open(path, "w") as f:
                f.write(good + "\n" + good[:40])
            self.assertEqual(len(load_flow_log(path, allow_partial_tail=True)), 1)


if __name__ == "__main__":
    unittest.main()
