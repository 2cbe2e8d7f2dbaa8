"""Interception, splicing and upstream verification through CONNECT, with real curl and
openssl s_client clients."""

import re
import unittest

from harness import IntegrationTestCase, admin_get, cert_info, curl, s_client

# Names the good origin certificate carries besides the SNI (see harness.GOOD_NAMES).
ORIGIN_EXTRA_NAMES = ("example.org", "api16-normal-c-useast1a.tiktokv.com")


class InterceptTest(IntegrationTestCase):

    def setUp(self):
        self.proxy = self.start_tokgate(args=self.intercept_args(
            "*.tiktok.com", "expired.test", "wrong.test", "untrusted.test"))

    def https_url(self, host, path="/whoami"):
        return "https://%s:%d%s" % (host, self.origin.https_port, path)

    def ca_subject(self, path):
        return cert_info(path=path)["subject"]

    # --- 1. interception ------------------------------------------------------------------------

    def test_intercepted_request_reaches_origin_with_sni(self):
        result = curl(self.https_url("www.tiktok.com"), proxy=self.proxy.url,
                      cacert=self.proxy.ca_pem)
        self.assertEqual(result.returncode, 0, result.describe() + self.proxy.context())
        self.assertEqual(result.status, 200, result.describe() + self.proxy.context())
        seen = result.json()
        self.assertEqual(seen["sni"], "www.tiktok.com", seen)
        self.assertEqual(seen["scheme"], "https")
        self.assertEqual(seen["host"], "www.tiktok.com:%d" % self.origin.https_port)
        self.assertRegex(seen["request_line"], r"^GET /whoami HTTP/1\.1$")
        # curl verified the chain against the tokgate CA only: the proxy's own certificate.
        self.assertEqual(result.info.get("ssl_verify_result"), 0, result.info)

    def test_intercepted_chain_is_issued_by_tokgate_ca(self):
        code, output, chain = s_client(self.proxy.port, "www.tiktok.com", self.origin.https_port,
                                       self.proxy.ca_pem)
        self.assertEqual(code, 0, output + self.proxy.context())
        self.assertIn("Verify return code: 0 (ok)", output)
        self.assertTrue(chain, output)
        leaf = cert_info(pem=chain[0])
        self.assertEqual(leaf["issuer"], self.ca_subject(self.proxy.ca_pem), leaf)
        self.assertNotEqual(leaf["issuer"], self.ca_subject(self.pki.ca_cert), leaf)
        # The minted leaf names the SNI and carries the origin certificate's other names.
        self.assertIn("www.tiktok.com", leaf["sans"], leaf)
        for name in ORIGIN_EXTRA_NAMES:
            self.assertIn(name, leaf["sans"], leaf)

    def test_intercepted_chain_does_not_verify_against_origin_ca(self):
        code, output, _ = s_client(self.proxy.port, "www.tiktok.com", self.origin.https_port,
                                   self.pki.ca_cert)
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Verify return code: 0 (ok)", output)

    # --- 2. splicing ----------------------------------------------------------------------------

    def test_spliced_name_sees_origin_certificate(self):
        result = curl(self.https_url("splice.test"), proxy=self.proxy.url, cacert=self.pki.ca_cert)
        self.assertEqual(result.returncode, 0, result.describe() + self.proxy.context())
        self.assertEqual(result.status, 200, result.describe())
        self.assertEqual(result.json()["sni"], "splice.test")

        code, output, chain = s_client(self.proxy.port, "splice.test", self.origin.https_port,
                                       self.pki.ca_cert)
        self.assertEqual(code, 0, output + self.proxy.context())
        self.assertIn("Verify return code: 0 (ok)", output)
        leaf = cert_info(pem=chain[0])
        origin_leaf = cert_info(path=self.pki.cert_dir / "good.pem")
        self.assertEqual(leaf["fingerprint"], origin_leaf["fingerprint"], leaf)
        self.assertEqual(leaf["issuer"], self.ca_subject(self.pki.ca_cert))

    def test_spliced_name_is_not_trusted_with_tokgate_ca(self):
        result = curl(self.https_url("splice.test"), proxy=self.proxy.url,
                      cacert=self.proxy.ca_pem)
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertEqual(result.returncode, 60, result.describe())  # peer cert cannot be verified

    # --- 4. origins that fail verification --------------------------------------------------------

    def assert_upstream_tls_failure(self, host, reason_pattern):
        result = curl(self.https_url(host, "/"), proxy=self.proxy.url, cacert=self.proxy.ca_pem)
        # The client handshake completes with a minted certificate; the request gets the 502.
        self.assertEqual(result.returncode, 0, result.describe() + self.proxy.context())
        self.assertEqual(result.status, 502, result.describe() + self.proxy.context())
        self.assertEqual(result.header("x-tokgate-error"), "upstream-tls", result.describe())
        self.assertTrue(result.header("content-type", "").startswith("text/plain"),
                        result.describe())
        body = result.body.decode(errors="replace")
        self.assertTrue(body.startswith("tokgate: "), body)
        self.assertRegex(body, re.compile(reason_pattern, re.I))
        return body

    def test_expired_origin_certificate(self):
        self.assert_upstream_tls_failure("expired.test", r"certificate has expired")

    def test_origin_certificate_for_another_name(self):
        self.assert_upstream_tls_failure("wrong.test", r"hostname mismatch")

    def test_origin_certificate_from_untrusted_ca(self):
        self.assert_upstream_tls_failure(
            "untrusted.test", r"unable to get local issuer certificate|self[- ]signed")

    def test_bad_origins_are_not_answered_by_origin(self):
        before = {(r["sni"], r["path"]) for r in self.origin.requests()}
        for host in ("expired.test", "wrong.test", "untrusted.test"):
            curl(self.https_url(host, "/whoami?never"), proxy=self.proxy.url,
                 cacert=self.proxy.ca_pem)
        after = {(r["sni"], r["path"]) for r in self.origin.requests()}
        self.assertFalse({p for p in after - before if p[1] == "/whoami?never"},
                         "a request reached an origin whose certificate failed verification")


def origin_handshakes(proxy, resumed):
    """tokgate_origin_handshakes_total{resumed=...} from /metrics."""
    status, _, body = admin_get(proxy, "/metrics")
    if status != 200:
        raise AssertionError("/metrics answered %d" % status)
    found = re.search(r'(?m)^tokgate_origin_handshakes_total\{resumed="%s"\} ([0-9.e+]+)$'
                      % resumed, body.decode())
    if not found:
        raise AssertionError("no tokgate_origin_handshakes_total{resumed=%s}" % resumed)
    return float(found.group(1))


class OriginSessionResumptionTest(IntegrationTestCase):
    """The origin handshake of a new client connection resumes a TLS session an earlier client
    connection to the same origin (name and port) left with the worker; one worker here so that
    every connection meets the same cache."""

    def setUp(self):
        self.proxy = self.start_tokgate(
            args=self.intercept_args("*.tiktok.com", "example.org", "expired.test") +
            ["--workers", "1"])

    def fetch(self, host):
        url = "https://%s:%d/whoami" % (host, self.origin.https_port)
        result = curl(url, proxy=self.proxy.url, cacert=self.proxy.ca_pem)
        self.assertEqual(result.status, 200, result.describe() + self.proxy.context())
        # The leaf is still minted from the origin's certificate on a resumed handshake.
        self.assertEqual(result.info.get("ssl_verify_result"), 0, result.info)
        seen = result.json()
        self.assertEqual(seen["sni"], host, seen)
        self.assertEqual(seen["tls_version"], "TLSv1.3", seen)
        return seen["session_reused"]

    def test_later_connections_resume_and_names_do_not_share(self):
        # Each curl is a new client connection (new CONNECT, new client handshake).
        self.assertEqual([self.fetch("www.tiktok.com") for _ in range(3)], [False, True, True])
        # Another name on the same origin server (which would accept the ticket): no session
        # is offered, since a resumed handshake is not verified against the new name.
        self.assertFalse(self.fetch("example.org"))
        self.assertTrue(self.fetch("example.org"))
        self.assertTrue(self.fetch("www.tiktok.com"))
        self.assertEqual((origin_handshakes(self.proxy, "no"), origin_handshakes(self.proxy, "yes")),
                         (2.0, 4.0))

    def test_verification_is_not_skipped_for_another_name(self):
        # Sessions for good names on the same server do not carry over to a name whose
        # certificate is expired: its handshake is a full one and fails verification.
        for _ in range(2):
            self.fetch("www.tiktok.com")
        result = curl("https://expired.test:%d/whoami" % self.origin.https_port,
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem)
        self.assertEqual(result.status, 502, result.describe())
        self.assertIn("certificate has expired", result.body.decode(errors="replace"))
        self.assertEqual((origin_handshakes(self.proxy, "no"), origin_handshakes(self.proxy, "yes")),
                         (1.0, 1.0))


if __name__ == "__main__":
    unittest.main()
