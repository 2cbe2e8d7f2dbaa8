"""Clients outside [proxy] allowed_clients get nothing: no response from the origin, no tunnel."""

import unittest

from harness import IntegrationTestCase, RawConnection, curl

OUTSIDER = "127.0.0.2"  # loopback, but outside 127.0.0.1/32


class ClientAccessTest(IntegrationTestCase):

    def setUp(self):
        self.proxy = self.start_tokgate(
            args=self.intercept_args("*.tiktok.com") + ["--allow-client", "127.0.0.1/32"])

    def assert_refused(self, result):
        context = result.describe() + self.proxy.context()
        self.assertNotEqual(result.status, 200, context)
        self.assertNotEqual(result.info.get("http_connect"), 200, context)
        if result.status:  # answered rather than closed: it must be the documented refusal
            self.assertEqual(result.status, 403, context)
            self.assertEqual(result.header("x-tokgate-error"), "client-not-allowed", context)

    def test_outsider_absolute_form_is_refused(self):
        before = len(self.origin.requests())
        result = curl("http://www.tiktok.com:%d/whoami" % self.origin.http_port,
                      proxy=self.proxy.url, interface=OUTSIDER)
        self.assert_refused(result)
        self.assertEqual(len(self.origin.requests()), before, "the request reached the origin")

    def test_outsider_connect_is_refused(self):
        before = len(self.origin.requests())
        result = curl("https://www.tiktok.com:%d/whoami" % self.origin.https_port,
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem, interface=OUTSIDER)
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assert_refused(result)
        self.assertEqual(len(self.origin.requests()), before, "the request reached the origin")

    def test_outsider_raw_connect_gets_no_tunnel(self):
        with RawConnection(self.proxy.port, source=OUTSIDER) as conn:
            try:
                conn.send(b"CONNECT www.tiktok.com:%d HTTP/1.1\r\nHost: www.tiktok.com:%d\r\n\r\n"
                          % (self.origin.https_port, self.origin.https_port))
                response = conn.read_response(connect=True)
            except (ConnectionResetError, BrokenPipeError):
                response = None
        if response is not None:
            self.assertEqual(response.status, 403, response.raw)
            self.assertEqual(response.header("x-tokgate-error"), "client-not-allowed")
            self.assertTrue(response.body.startswith(b"tokgate: "), response.body)

    def test_allowed_client_is_served(self):
        result = curl("http://www.tiktok.com:%d/whoami" % self.origin.http_port,
                      proxy=self.proxy.url, interface="127.0.0.1")
        self.assertEqual(result.status, 200, result.describe() + self.proxy.context())
        result = curl("https://www.tiktok.com:%d/whoami" % self.origin.https_port,
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem, interface="127.0.0.1")
        self.assertEqual(result.status, 200, result.describe() + self.proxy.context())
        self.assertEqual(result.json()["sni"], "www.tiktok.com")


if __name__ == "__main__":
    unittest.main()
