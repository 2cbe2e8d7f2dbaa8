"""Absolute-form requests (http://host:port/path to the proxy) on one kept-alive client
connection."""

import http.client
import json
import unittest

from harness import IntegrationTestCase, RawConnection, pattern_sha256


class KeepAliveTest(IntegrationTestCase):

    def setUp(self):
        self.proxy = self.start_tokgate(args=self.intercept_args("*.tiktok.com"))

    def url(self, host, path):
        return "http://%s:%d%s" % (host, self.origin.http_port, path)

    def request(self, host, path, method=b"GET", extra=b"", body=b""):
        authority = ("%s:%d" % (host, self.origin.http_port)).encode()
        head = b"%s http://%s%s HTTP/1.1\r\nHost: %s\r\n%s" % (
            method, authority, path.encode(), authority, extra)
        if body or method in (b"POST", b"PUT"):
            head += b"Content-Length: %d\r\n" % len(body)
        return head + b"\r\n" + body

    def test_two_requests_with_http_client(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=15)
        self.addCleanup(conn.close)
        seen = []
        first_socket = None
        for i in range(2):
            conn.request("GET", self.url("www.tiktok.com", "/whoami?n=%d" % i))
            response = conn.getresponse()
            body = response.read()
            self.assertEqual(response.status, 200, body[:300] + self.proxy.context().encode())
            seen.append(json.loads(body))
            if first_socket is None:
                first_socket = conn.sock
            self.assertIs(conn.sock, first_socket, "the proxy closed the client connection")
            self.assertIsNotNone(conn.sock, "the proxy closed the client connection")
        for i, whoami in enumerate(seen):
            # The origin gets origin-form, with the Host of the absolute URL.
            self.assertEqual(whoami["request_line"], "GET /whoami?n=%d HTTP/1.1" % i, whoami)
            self.assertEqual(whoami["host"], "www.tiktok.com:%d" % self.origin.http_port)

    def test_two_requests_raw_different_hosts(self):
        with RawConnection(self.proxy.port) as conn:
            conn.send(self.request("www.tiktok.com", "/whoami"))
            first = conn.read_response()
            conn.send(self.request("example.org", "/whoami"))
            second = conn.read_response()
        self.assertIsNotNone(first, self.proxy.context())
        self.assertIsNotNone(second, "connection closed after the first response"
                             + self.proxy.context())
        self.assertEqual((first.status, second.status), (200, 200), self.proxy.context())
        self.assertEqual(json.loads(first.body)["host"], "www.tiktok.com:%d" % self.origin.http_port)
        self.assertEqual(json.loads(second.body)["host"], "example.org:%d" % self.origin.http_port)

    def test_body_then_request_on_same_connection(self):
        payload = b"x" * 10000
        with RawConnection(self.proxy.port) as conn:
            conn.send(self.request("www.tiktok.com", "/sha256", method=b"POST", body=payload))
            first = conn.read_response()
            conn.send(self.request("www.tiktok.com", "/chunked/5000"))
            second = conn.read_response()
        self.assertIsNotNone(second, self.proxy.context())
        self.assertEqual(first.status, 200)
        self.assertEqual(json.loads(first.body)["length"], len(payload))
        self.assertEqual(second.status, 200)
        self.assertEqual(len(second.body), 5000)
        self.assertEqual(second.header("x-sha256"), pattern_sha256(5000))

    def test_pipelined_requests_answer_in_order(self):
        with RawConnection(self.proxy.port) as conn:
            conn.send(b"".join(self.request("www.tiktok.com", "/whoami?p=%d" % i)
                               for i in range(3)))
            responses = [conn.read_response() for _ in range(3)]
        self.assertTrue(all(responses), self.proxy.context())
        lines = [json.loads(r.body)["request_line"] for r in responses]
        self.assertEqual(lines, ["GET /whoami?p=%d HTTP/1.1" % i for i in range(3)])

    def test_connection_listed_headers_do_not_reach_origin(self):
        extra = b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nX-End-To-End: kept\r\n"
        response = None
        with RawConnection(self.proxy.port) as conn:
            conn.send(self.request("www.tiktok.com", "/whoami", extra=extra))
            response = conn.read_response()
        self.assertEqual(response.status, 200, self.proxy.context())
        names = {k.lower(): v for k, v in json.loads(response.body)["headers"]}
        self.assertNotIn("x-hop", names)
        self.assertNotIn("proxy-connection", names)
        self.assertEqual(names.get("x-end-to-end"), "kept")

    def test_client_close_is_honoured(self):
        with RawConnection(self.proxy.port) as conn:
            conn.send(self.request("www.tiktok.com", "/whoami", extra=b"Connection: close\r\n"))
            response = conn.read_response()
            self.assertEqual(response.status, 200)
            self.assertEqual(conn.read_until_closed(), b"", "data after a Connection: close reply")


if __name__ == "__main__":
    unittest.main()
