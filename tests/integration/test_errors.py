"""Every documented error answer: status, X-Tokgate-Error code, plain-text one-line body."""

import time
import unittest

from harness import IntegrationTestCase, RawConnection, closed_port, curl, raw_exchange, s_client

CONFIG = """\
[timeouts]
response_header = "1s"
"""


class ErrorResponsesTest(IntegrationTestCase):

    def setUp(self):
        # Only these names resolve to loopback; anything else goes to the system resolver.
        self.proxy = self.start_tokgate(args=[
            "--resolve", "*.tiktok.com:*:127.0.0.1", "--resolve", "refused.test:*:127.0.0.1",
            "--resolve", "splice.test:*:127.0.0.1", "--upstream-ca", self.pki.ca_cert,
            "--connect-ports", "1-65535", "--intercept", "*.tiktok.com",
            "--refuse", "refused.test", "--refuse", "*.blocked.example", "--profile", "observe",
        ], config_text=CONFIG)

    def start_default_ports_proxy(self):
        return self.start_tokgate(self.id().rsplit(".", 1)[-1] + "-default-ports", args=[
            "--resolve", "*:*:127.0.0.1", "--upstream-ca", self.pki.ca_cert, "--profile", "observe"])

    def assert_error(self, response, status, code, proxy=None):
        proxy = proxy or self.proxy
        context = "response: %r%s" % (response and response.raw[:800], proxy.context())
        self.assertIsNotNone(response, "connection closed without a response" + context)
        self.assertEqual(response.status, status, context)
        self.assertEqual(response.header("x-tokgate-error"), code, context)
        self.assertEqual(response.header("content-type"), "text/plain; charset=utf-8", context)
        body = response.body.decode("utf-8", errors="replace")
        self.assertTrue(body.startswith("tokgate: "), context)
        self.assertEqual(body.rstrip("\n").count("\n"), 0, "body is not one line" + context)
        return body

    def assert_curl_error(self, result, status, code):
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.status, status, context)
        self.assertEqual(result.header("x-tokgate-error"), code, context)
        self.assertTrue(result.body.startswith(b"tokgate: "), context)

    def connect(self, authority, proxy=None):
        proxy = proxy or self.proxy
        return raw_exchange(proxy.port, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                            % (authority.encode(), authority.encode()))

    def get(self, url, method=b"GET"):
        host = url.split("/")[2].encode()
        return raw_exchange(self.proxy.port, b"%s %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                            % (method, url.encode(), host))

    # --- 400 ------------------------------------------------------------------------------------

    def test_malformed_request_line(self):
        for junk in (b"NOT A REQUEST LINE\r\n\r\n", b"GET /\r\n\r\n",
                     b"\x00\x01\x02 garbage \xff\r\n\r\n", b"GET http://x/ HTTP/1.1 extra\r\n\r\n"):
            with self.subTest(junk=junk):
                self.assert_error(raw_exchange(self.proxy.port, junk), 400, "bad-request")

    # --- 405 ------------------------------------------------------------------------------------

    def test_trace_and_unknown_methods(self):
        url = "http://www.tiktok.com:%d/whoami" % self.origin.http_port
        for method in (b"TRACE", b"BREW"):
            with self.subTest(method=method):
                self.assert_error(self.get(url, method), 405, "method-not-allowed")

    def test_trace_with_curl(self):
        result = curl("http://www.tiktok.com:%d/whoami" % self.origin.http_port,
                      proxy=self.proxy.url, method="TRACE")
        self.assert_curl_error(result, 405, "method-not-allowed")

    def test_trace_inside_intercepted_tunnel(self):
        result = curl("https://www.tiktok.com:%d/whoami" % self.origin.https_port,
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem, method="TRACE")
        self.assert_curl_error(result, 405, "method-not-allowed")

    # --- 403 ------------------------------------------------------------------------------------

    def test_connect_port_outside_default_connect_ports(self):
        proxy = self.start_default_ports_proxy()
        response = self.connect("www.tiktok.com:22", proxy)
        self.assert_error(response, 403, "port-not-allowed", proxy)
        response = self.connect("www.tiktok.com:%d" % self.origin.https_port, proxy)
        self.assert_error(response, 403, "port-not-allowed", proxy)

    def test_connect_to_refused_host(self):
        for authority in ("refused.test:%d" % self.origin.https_port,
                          "deep.down.blocked.example:443"):
            with self.subTest(authority=authority):
                self.assert_error(self.connect(authority), 403, "refused")

    def test_refused_sni_inside_allowed_connect(self):
        """CONNECT names an address, the ClientHello names a refused host: refused by SNI."""
        before = len(self.origin.requests())
        code, output, _ = s_client(self.proxy.port, "127.0.0.1", self.origin.https_port,
                                   self.pki.ca_cert, servername="refused.test")
        self.assertNotEqual(code, 0, output + self.proxy.context())
        self.assertIn("no peer certificate available", output)
        self.assertFalse([r for r in self.origin.requests()[before:] if r["sni"] == "refused.test"])

    # --- 502 ------------------------------------------------------------------------------------

    def test_connect_to_closed_port(self):
        holder, port = closed_port()
        self.addCleanup(holder.close)
        body = self.assert_error(self.connect("www.tiktok.com:%d" % port), 502, "upstream-connect")
        self.assertIn("tokgate: ", body)

    def test_absolute_form_to_closed_port(self):
        holder, port = closed_port()
        self.addCleanup(holder.close)
        self.assert_error(self.get("http://www.tiktok.com:%d/" % port), 502, "upstream-connect")

    def test_unresolvable_name(self):
        self.assert_error(self.connect("nonexistent.invalid:443"), 502, "upstream-dns")
        self.assert_error(self.get("http://nonexistent.invalid/"), 502, "upstream-dns")

    # --- 504 ------------------------------------------------------------------------------------

    def test_origin_never_answers_absolute_form(self):
        started = time.monotonic()
        response = self.get("http://www.tiktok.com:%d/stall" % self.origin.http_port)
        elapsed = time.monotonic() - started
        self.assert_error(response, 504, "upstream-timeout")
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 10.0)

    def test_origin_never_answers_intercepted(self):
        started = time.monotonic()
        result = curl("https://www.tiktok.com:%d/stall" % self.origin.https_port,
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem)
        elapsed = time.monotonic() - started
        self.assert_curl_error(result, 504, "upstream-timeout")
        self.assertLess(elapsed, 10.0)

    # --- the connection survives a plain error ------------------------------------------------------

    def test_error_then_next_request_on_same_connection(self):
        """A 502 for one absolute-form request does not poison the client connection."""
        holder, port = closed_port()
        self.addCleanup(holder.close)
        with RawConnection(self.proxy.port) as conn:
            conn.send(b"GET http://www.tiktok.com:%d/ HTTP/1.1\r\nHost: www.tiktok.com:%d\r\n\r\n"
                      % (port, port))
            first = conn.read_response()
            self.assert_error(first, 502, "upstream-connect")
            self.assertNotEqual(first.header("connection", "").lower(), "close", first.raw[:500])
            conn.send(b"GET http://www.tiktok.com:%d/whoami HTTP/1.1\r\nHost: www.tiktok.com:%d"
                      b"\r\n\r\n" % (self.origin.http_port, self.origin.http_port))
            second = conn.read_response()
            self.assertIsNotNone(second, self.proxy.context())
            self.assertEqual(second.status, 200, second.raw[:500])


if __name__ == "__main__":
    unittest.main()
