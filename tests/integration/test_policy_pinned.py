"""Certificate pinning: a client that rejects the minted certificate (here curl without the
tokgate CA: "unknown ca", or a client that hangs up mid-handshake) marks the host as pinned; the
next connections to it get the policy's on_pinned choice (gateway: refuse with a TLS alert;
observe: splice, so the client sees the origin's own certificate) until pinned_memory passes."""

import socket
import ssl
import time
import unittest

from harness import (TIKTOK_WEB_HOST, IntegrationTestCase, admin_status, cert_info, curl,
                     log_mark, policy_run_args, s_client, tls_through_connect, wait_for_record,
                     wait_until)

CURL_TLS_HANDSHAKE_FAILED = 35   # SSL connect error: the TLS alert
CURL_PEER_NOT_VERIFIED = 60      # the client rejects the certificate it was shown

SHORT_MEMORY_POLICY = """\
[policy]
name = "pinned-short"
organisation = "tokgate tests"
default_action = "allow"
on_pinned = "refuse"
pinned_memory = "%ds"

[[rules]]
name = "log-web"
action = "log"
match = { category = ["web"] }
"""
SHORT_MEMORY = 2


class PinnedTestBase(IntegrationTestCase):

    def url(self, marker):
        return "https://%s:%d/whoami?%s" % (TIKTOK_WEB_HOST, self.origin.https_port, marker)

    def origin_saw(self, marker):
        return [r for r in self.origin.requests() if marker in r.get("path", "")]

    def fail_as_pinned_client(self, proxy, marker, on_pinned):
        """curl without the tokgate CA (its system trust store only): it rejects our certificate.
        Returns the parsed client-tls-failed log line."""
        mark = log_mark(proxy)
        result = curl(self.url(marker), proxy=proxy.url)
        context = result.describe() + proxy.context()
        self.assertEqual(result.returncode, CURL_PEER_NOT_VERIFIED, context)
        record = wait_for_record(proxy, start=mark, event="client-tls-failed",
                                 host=TIKTOK_WEB_HOST)
        self.assertEqual(record.get("pinned"), "true", record)
        self.assertEqual(record.get("on_pinned"), on_pinned, record)
        self.assertEqual(self.origin_saw(marker), [])
        return record

    def assert_refused_by_pin(self, proxy, marker, tls_alert_only=False):
        """The next connection, from a client that would trust us, is refused at once, with
        nothing at the origin: by a TLS alert (the contract: curl exit 35), or, unless
        `tls_alert_only`, by a 403 "refused" answer to the CONNECT."""
        mark = log_mark(proxy)
        started = time.monotonic()
        result = curl(self.url(marker), proxy=proxy.url, cacert=proxy.ca_pem)
        elapsed = time.monotonic() - started
        context = result.describe() + proxy.context()
        self.assertEqual(result.status, 0, context)
        self.assertNotEqual(result.returncode, 0, context)
        self.assertLess(elapsed, 5.0, "refusal was not fast")
        self.assertEqual(self.origin_saw(marker), [])
        record = wait_for_record(proxy, start=mark, event="connection", host=TIKTOK_WEB_HOST,
                                 verdict="refuse")
        self.assertEqual(record.get("rule"), "pinned", record)
        if result.returncode != CURL_TLS_HANDSHAKE_FAILED:
            connect = result.header_blocks[0] if result.header_blocks else {"headers": {}}
            self.assertFalse(tls_alert_only,
                             "expected a TLS alert (curl exit 35), the contract's refusal of a "
                             "pinned host; got " + context)
            self.assertEqual(result.info.get("http_connect"), 403, context)
            self.assertEqual(connect["headers"].get("x-tokgate-error"), "refused", context)

    def assert_intercepted(self, proxy, marker):
        result = curl(self.url(marker), proxy=proxy.url, cacert=proxy.ca_pem)
        context = result.describe() + proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assertIn(result.status, (200, 451), context)
        self.assertEqual(result.info.get("ssl_verify_result"), 0, context)


class GatewayPinnedTest(PinnedTestBase):

    def setUp(self):
        self.proxy = self.start_tokgate(args=policy_run_args(profile="gateway"))

    def test_rejected_certificate_then_refused(self):
        self.fail_as_pinned_client(self.proxy, "pin-gw-1", "refuse")
        self.assert_refused_by_pin(self.proxy, "pin-gw-2")
        # openssl sees the alert and no certificate.
        code, output, chain = s_client(self.proxy.port, TIKTOK_WEB_HOST, self.origin.https_port,
                                       self.proxy.ca_pem)
        self.assertNotEqual(code, 0, output)
        self.assertEqual(chain, [], output)
        self.assertEqual(admin_status(self.proxy).get("pinned_hosts"), 1)
        # A CONNECT to an address with the pinned name only in the SNI: a TLS alert.
        outcome, detail = tls_through_connect(self.proxy.port, "127.0.0.1:%d"
                                              % self.origin.https_port, TIKTOK_WEB_HOST,
                                              cafile=self.proxy.ca_pem)
        if outcome == "ok":
            detail.close()
        self.assertEqual(outcome, "tls", "%s %r%s" % (outcome, detail, self.proxy.context()))
        self.assertIn("ACCESS_DENIED", str(detail).upper(), repr(detail))

    def test_pinned_host_refused_with_tls_alert(self):
        """The contract: the next connections to a pinned host get a TLS alert (curl exit 35),
        as a transparent proxy would have to answer, even when the CONNECT names the host."""
        self.fail_as_pinned_client(self.proxy, "pin-gw-alert-1", "refuse")
        self.assert_refused_by_pin(self.proxy, "pin-gw-alert-2", tls_alert_only=True)

    def test_client_closing_mid_handshake_counts_as_pinned(self):
        mark = log_mark(self.proxy)
        # A client that sends its ClientHello, reads the server's first flight and hangs up
        # (what an app does when its pinning check fails without sending an alert).
        sock = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=15)
        try:
            authority = ("%s:%d" % (TIKTOK_WEB_HOST, self.origin.https_port)).encode()
            sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
            head = b""
            while b"\r\n\r\n" not in head:
                piece = sock.recv(4096)
                self.assertTrue(piece, "closed before the CONNECT answer")
                head += piece
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            context = ssl.create_default_context()
            tls = context.wrap_bio(incoming, outgoing, server_hostname=TIKTOK_WEB_HOST)
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            sock.sendall(outgoing.read())
            self.assertTrue(sock.recv(65536), "no server flight")
        finally:
            sock.close()
        record = wait_for_record(self.proxy, start=mark, event="client-tls-failed",
                                 host=TIKTOK_WEB_HOST)
        self.assertEqual(record.get("pinned"), "true", record)
        self.assert_refused_by_pin(self.proxy, "pin-gw-close")

    def test_other_hosts_are_not_affected(self):
        self.fail_as_pinned_client(self.proxy, "pin-gw-other", "refuse")
        # example.org is spliced as before; a different TikTok name is still intercepted.
        result = curl("https://example.org:%d/whoami" % self.origin.https_port,
                      proxy=self.proxy.url, cacert=self.pki.ca_cert)
        self.assertEqual(result.status, 200, result.describe())
        result = curl("https://tiktok.com:%d/whoami?pin-gw-apex" % self.origin.https_port,
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem)
        # tiktok.com is not among the origin certificate's names, so the origin side fails
        # verification: what matters is that we intercepted (our certificate, a proxy answer).
        self.assertEqual(result.returncode, 0, result.describe() + self.proxy.context())
        self.assertEqual(result.info.get("ssl_verify_result"), 0, result.describe())


class ObservePinnedTest(PinnedTestBase):

    def setUp(self):
        self.proxy = self.start_tokgate(args=policy_run_args(profile="observe"))

    def test_rejected_certificate_then_spliced(self):
        self.fail_as_pinned_client(self.proxy, "pin-obs-1", "splice")
        mark = log_mark(self.proxy)
        # Spliced: the client sees the origin's own certificate, trusted through the test CA.
        result = curl(self.url("pin-obs-2"), proxy=self.proxy.url, cacert=self.pki.ca_cert)
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 200, context)
        self.assertEqual(result.json()["sni"], TIKTOK_WEB_HOST)
        record = wait_for_record(self.proxy, start=mark, event="connection", host=TIKTOK_WEB_HOST,
                                 verdict="splice")
        self.assertEqual(record.get("rule"), "pinned", record)
        code, output, chain = s_client(self.proxy.port, TIKTOK_WEB_HOST, self.origin.https_port,
                                       self.pki.ca_cert)
        self.assertEqual(code, 0, output + self.proxy.context())
        self.assertEqual(cert_info(pem=chain[0])["fingerprint"],
                         cert_info(path=self.pki.cert_dir / "good.pem")["fingerprint"])
        # ... and so a client trusting only the tokgate CA now fails to verify.
        result = curl(self.url("pin-obs-3"), proxy=self.proxy.url, cacert=self.proxy.ca_pem)
        self.assertEqual(result.returncode, CURL_PEER_NOT_VERIFIED, result.describe())


class PinnedMemoryExpiryTest(PinnedTestBase):

    def test_interception_resumes_after_pinned_memory(self):
        policy = self.tmp / "pinned-short.toml"
        policy.write_text(SHORT_MEMORY_POLICY % SHORT_MEMORY)
        proxy = self.start_tokgate(args=policy_run_args(policy=policy))
        self.assert_intercepted(proxy, "pin-exp-0")
        self.fail_as_pinned_client(proxy, "pin-exp-1", "refuse")
        pinned_at = time.monotonic()
        self.assert_refused_by_pin(proxy, "pin-exp-2")
        self.assertLess(time.monotonic() - pinned_at, SHORT_MEMORY,
                        "too slow to observe the pin before it expires")
        self.assertEqual(admin_status(proxy).get("pinned_hosts"), 1)
        # The memory is a deadline: wait it out (no event to wait for), then poll.
        time.sleep(max(0.0, pinned_at + SHORT_MEMORY + 0.2 - time.monotonic()))
        attempts = []

        def intercepted_again():
            result = curl(self.url("pin-exp-3"), proxy=proxy.url, cacert=proxy.ca_pem)
            attempts.append(result.returncode)
            return result.returncode == 0 and result.status == 200
        try:
            wait_until(intercepted_again, 8.0, "interception to resume after pinned_memory",
                       interval=0.3)
        except AssertionError as error:
            raise AssertionError("%s; curl exits: %s%s" % (error, attempts, proxy.context()))
        self.assertEqual(len(self.origin_saw("pin-exp-3")), 1)


if __name__ == "__main__":
    unittest.main()
