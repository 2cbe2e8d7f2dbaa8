"""The gateway profile (the default policy) end to end: the TikTok website is decrypted and
answered with a 451 block page, the app's back-end is refused by name (CONNECT name or SNI),
everything else is spliced untouched, and TikTok's in-app browser is recognised on a third-party
site by its User-Agent alone."""

import html
import json
import unittest

from harness import (TIKTOK_APP_HOST, TIKTOK_WEB_HOST, UA_CHROME_DESKTOP, UA_INSTAGRAM_IN_APP,
                     UA_SAFARI_IOS, UA_TIKTOK_IN_APP_IOS, IntegrationTestCase, RawConnection,
                     TlsHttp, cert_info, curl, host_is, log_mark, policy_run_args,
                     profile_rule_for, profile_settings, raw_exchange, records_since, s_client,
                     tls_through_connect, tunnel_connection, wait_for_record)

ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ACCEPT_JSON = "application/json"
UA_ANDROID_WEBVIEW = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP1A.240405.002; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36")

GATEWAY = profile_settings("gateway")
WEB_RULE = profile_rule_for("gateway", "web")[0]
APP_RULE = profile_rule_for("gateway", "app-api")[0]
IN_APP_RULE = profile_rule_for("gateway", "in-app-browser")[0]


class GatewayTestBase(IntegrationTestCase):
    """Helpers shared by the gateway tests."""

    def https_url(self, host, path):
        return "https://%s:%d%s" % (host, self.origin.https_port, path)

    def http_url(self, host, path):
        return "http://%s:%d%s" % (host, self.origin.http_port, path)

    def assert_not_at_origin(self, marker):
        paths = [r["path"] for r in self.origin.requests() if marker in r.get("path", "")]
        self.assertEqual(paths, [], "the origin saw a request the policy should have stopped")

    def assert_block_headers(self, status, headers, category, rule, context):
        self.assertEqual(status, 451, context)
        self.assertEqual(headers.get("x-tokgate-category"), category, context)
        if rule is None:
            self.assertNotIn("x-tokgate-rule", headers, context)
        else:
            self.assertEqual(headers.get("x-tokgate-rule"), rule, context)

    def assert_html_block_page(self, status, headers, body, category, rule, context):
        self.assert_block_headers(status, headers, category, rule, context)
        self.assertEqual(headers.get("content-type"), "text/html; charset=utf-8", context)
        text = body.decode("utf-8")
        self.assertIn("<html", text.lower(), context)
        for value in (GATEWAY["organisation"], GATEWAY["block_message"], category, rule):
            if value:
                self.assertIn(html.escape(value, quote=False), text, context)

    def assert_json_block_page(self, status, headers, body, category, rule, host, context):
        self.assert_block_headers(status, headers, category, rule, context)
        self.assertTrue(headers.get("content-type", "").startswith("application/json"), context)
        page = json.loads(body)
        expected = {"error": "blocked", "status": 451, "category": category, "rule": rule,
                    "host": host, "message": GATEWAY["block_message"],
                    "organisation": GATEWAY["organisation"], "policy": GATEWAY["name"]}
        for key, value in expected.items():
            self.assertIn(key, page, context)
            self.assertEqual(page[key], value, "%s: %s" % (key, context))
        return page


class GatewayProfileTest(GatewayTestBase):

    def setUp(self):
        # No --profile at all: gateway is the default.
        self.proxy = self.start_tokgate(args=policy_run_args())

    # --- (a) the website: decrypted, 451 ------------------------------------------------------

    def test_website_gets_html_block_page(self):
        mark = log_mark(self.proxy)
        result = curl(self.https_url(TIKTOK_WEB_HOST, "/whoami?gw-html"), proxy=self.proxy.url,
                      cacert=self.proxy.ca_pem, headers=["Accept: " + ACCEPT_HTML])
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assert_html_block_page(result.status, result.headers, result.body, "web", WEB_RULE,
                                    context)
        self.assertEqual(result.info.get("ssl_verify_result"), 0, "not our minted certificate")
        self.assert_not_at_origin("gw-html")
        wait_for_record(self.proxy, start=mark, event="connection", host=TIKTOK_WEB_HOST,
                        category="web", verdict="intercept")
        wait_for_record(self.proxy, start=mark, event="request", host=host_is(TIKTOK_WEB_HOST),
                        status="451", category="web", action="block", rule=WEB_RULE)

    def test_website_gets_json_block_page(self):
        result = curl(self.https_url(TIKTOK_WEB_HOST, "/api/item/detail/?gw-json"),
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem,
                      headers=["Accept: " + ACCEPT_JSON])
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assert_json_block_page(result.status, result.headers, result.body, "web", WEB_RULE,
                                    TIKTOK_WEB_HOST, context)
        self.assert_not_at_origin("gw-json")

    def test_two_blocked_requests_on_one_kept_alive_connection(self):
        conn = tunnel_connection(self.proxy.port, TIKTOK_WEB_HOST, self.origin.https_port,
                                 self.proxy.ca_pem)
        self.addCleanup(conn.close)
        first_socket = None
        for i, accept in enumerate((ACCEPT_HTML, ACCEPT_JSON)):
            conn.request("GET", "/whoami?gw-keepalive=%d" % i, headers={"Accept": accept})
            response = conn.getresponse()
            body = response.read()
            context = "request %d: %r%s" % (i, body[:300], self.proxy.context())
            self.assertEqual(response.status, 451, context)
            self.assertEqual(response.getheader("X-Tokgate-Category"), "web", context)
            self.assertIsNotNone(conn.sock, "the proxy closed the connection after a 451"
                                 + context)
            if first_socket is None:
                first_socket = conn.sock
            self.assertIs(conn.sock, first_socket, "a new connection was opened" + context)
        self.assert_not_at_origin("gw-keepalive")

    # --- (b) the app's back-end: refused by name --------------------------------------------

    def test_app_backend_connect_name_is_refused(self):
        mark = log_mark(self.proxy)
        authority = "%s:%d" % (TIKTOK_APP_HOST, self.origin.https_port)
        response = raw_exchange(self.proxy.port, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                                % (authority.encode(), authority.encode()))
        context = "response: %r%s" % (response and response.raw[:500], self.proxy.context())
        self.assertIsNotNone(response, "closed without an answer" + context)
        self.assertEqual(response.status, 403, context)
        self.assertEqual(response.header("x-tokgate-error"), "refused", context)
        wait_for_record(self.proxy, start=mark, event="connection", host=TIKTOK_APP_HOST,
                        category="app-api", rule=APP_RULE, verdict="refuse")

        # curl sees the refused CONNECT and never gets a tunnel.
        result = curl(self.https_url(TIKTOK_APP_HOST, "/aweme/v1/feed/?gw-app"),
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem)
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertTrue(result.header_blocks, result.describe())
        self.assertEqual(result.header_blocks[0]["status"], 403, result.describe())
        self.assert_not_at_origin("gw-app")

    def test_app_backend_sni_inside_allowed_connect_gets_tls_alert(self):
        mark = log_mark(self.proxy)
        # The CONNECT names an address (no category: would be spliced); the SNI is the app's.
        code, output, chain = s_client(self.proxy.port, "127.0.0.1", self.origin.https_port,
                                       self.proxy.ca_pem, servername=TIKTOK_APP_HOST)
        context = output[-2000:] + self.proxy.context()
        self.assertNotEqual(code, 0, context)
        self.assertEqual(chain, [], "a certificate was served: " + context)
        self.assertRegex(output.lower(), r"alert access denied|access_denied", context)
        wait_for_record(self.proxy, start=mark, event="connection", sni=TIKTOK_APP_HOST,
                        category="app-api", verdict="refuse")

        # Same with Python's ssl: the handshake fails with the access_denied alert.
        outcome, detail = tls_through_connect(self.proxy.port, "127.0.0.1:%d"
                                              % self.origin.https_port, TIKTOK_APP_HOST,
                                              cafile=self.proxy.ca_pem)
        if outcome == "ok":
            detail.close()
        self.assertEqual(outcome, "tls", "%s %r%s" % (outcome, detail, self.proxy.context()))
        self.assertIn("ACCESS_DENIED", str(detail).upper(), repr(detail))
        self.assertEqual([r for r in self.origin.requests() if r.get("sni") == TIKTOK_APP_HOST],
                         [], "the origin saw a request for the refused name")

    # --- (c) everything else: spliced untouched ---------------------------------------------

    def test_non_targets_are_spliced(self):
        test_ca_subject = cert_info(path=self.pki.ca_cert)["subject"]
        origin_fingerprint = cert_info(path=self.pki.cert_dir / "good.pem")["fingerprint"]
        for host in ("splice.test", "example.org"):
            with self.subTest(host=host):
                mark = log_mark(self.proxy)
                result = curl(self.https_url(host, "/whoami"), proxy=self.proxy.url,
                              cacert=self.pki.ca_cert)
                context = result.describe() + self.proxy.context()
                self.assertEqual(result.returncode, 0, context)
                self.assertEqual(result.status, 200, context)
                self.assertEqual(result.json()["sni"], host, context)
                self.assertNotIn("x-tokgate-category", result.headers, context)

                code, output, chain = s_client(self.proxy.port, host, self.origin.https_port,
                                               self.pki.ca_cert)
                self.assertEqual(code, 0, output + self.proxy.context())
                leaf = cert_info(pem=chain[0])
                self.assertEqual(leaf["issuer"], test_ca_subject, leaf)
                self.assertEqual(leaf["fingerprint"], origin_fingerprint, leaf)
                wait_for_record(self.proxy, start=mark, event="connection", host=host,
                                category="none", verdict="splice")

    def test_operator_refuse_override_wins_over_splice(self):
        proxy = self.start_tokgate("refuse-override", args=policy_run_args(
            refuse=["splice.test"]))
        result = curl(self.https_url("splice.test", "/whoami?gw-override"), proxy=proxy.url,
                      cacert=self.pki.ca_cert)
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertTrue(result.header_blocks, result.describe() + proxy.context())
        self.assertEqual(result.header_blocks[0]["status"], 403, result.describe())
        self.assertEqual(result.header_blocks[0]["headers"].get("x-tokgate-error"), "refused")
        self.assert_not_at_origin("gw-override")

    # --- (e) absolute-form http:// ------------------------------------------------------------

    def absolute_get(self, host, path, accept=ACCEPT_JSON, extra=b""):
        authority = ("%s:%d" % (host, self.origin.http_port)).encode()
        return b"GET http://%s%s HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\n%s\r\n" % (
            authority, path.encode(), authority, accept.encode(), extra)

    def test_absolute_form_website_is_blocked_without_origin(self):
        mark = log_mark(self.proxy)
        with RawConnection(self.proxy.port) as conn:
            conn.send(self.absolute_get(TIKTOK_WEB_HOST, "/whoami?gw-abs-1"))
            first = conn.read_response()
            conn.send(self.absolute_get(TIKTOK_WEB_HOST, "/whoami?gw-abs-2", ACCEPT_HTML))
            second = conn.read_response()
        context = "first: %r\nsecond: %r%s" % (first and first.raw[:400],
                                                second and second.raw[:400], self.proxy.context())
        self.assertIsNotNone(first, context)
        self.assert_json_block_page(first.status, first.headers, first.body, "web", WEB_RULE,
                                    TIKTOK_WEB_HOST, context)
        self.assertIsNotNone(second, "connection closed after a 451" + context)
        self.assert_html_block_page(second.status, second.headers, second.body, "web", WEB_RULE,
                                    context)
        self.assert_not_at_origin("gw-abs")
        wait_for_record(self.proxy, start=mark, event="request", status="451", category="web",
                        action="block")

    def test_absolute_form_app_backend_is_closed_without_response(self):
        mark = log_mark(self.proxy)
        with RawConnection(self.proxy.port) as conn:
            conn.send(self.absolute_get(TIKTOK_APP_HOST, "/aweme/v1/feed/?gw-abs-app"))
            response = conn.read_response()
        self.assertIsNone(response, "refuse must close without a response: %r%s" % (
            response and response.raw[:400], self.proxy.context()))
        self.assert_not_at_origin("gw-abs-app")
        record = wait_for_record(self.proxy, start=mark, event="request",
                                 host=host_is(TIKTOK_APP_HOST), action="refuse")
        self.assertEqual(record.get("category"), "app-api", record)


class GatewayInAppBrowserTest(GatewayTestBase):
    """(d) A third-party site decrypted by the operator (--intercept example.org): requests from
    TikTok's in-app browser are blocked, the same page in any other browser passes."""

    def setUp(self):
        self.proxy = self.start_tokgate(args=policy_run_args(intercept=["example.org"]))

    def get(self, user_agent, marker, extra_headers=()):
        headers = ["Accept: " + ACCEPT_HTML, "User-Agent: " + user_agent] + list(extra_headers)
        return curl(self.https_url("example.org", "/whoami?" + marker), proxy=self.proxy.url,
                    cacert=self.proxy.ca_pem, headers=headers)

    def test_tiktok_in_app_browser_is_blocked(self):
        mark = log_mark(self.proxy)
        result = self.get(UA_TIKTOK_IN_APP_IOS, "iab-tiktok")
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assert_html_block_page(result.status, result.headers, result.body, "in-app-browser",
                                    IN_APP_RULE, context)
        self.assert_not_at_origin("iab-tiktok")
        wait_for_record(self.proxy, start=mark, event="request", host=host_is("example.org"),
                        status="451", category="in-app-browser", action="block", rule=IN_APP_RULE)

    def test_android_webview_with_tiktok_package_header_is_blocked(self):
        result = self.get(UA_ANDROID_WEBVIEW, "iab-android",
                          ["X-Requested-With: com.zhiliaoapp.musically"])
        context = result.describe() + self.proxy.context()
        self.assert_block_headers(result.status, result.headers, "in-app-browser", IN_APP_RULE,
                                  context)
        self.assert_not_at_origin("iab-android")

    def test_other_browsers_pass(self):
        for name, user_agent in (("safari", UA_SAFARI_IOS), ("chrome", UA_CHROME_DESKTOP),
                                 ("instagram", UA_INSTAGRAM_IN_APP),
                                 ("android-webview", UA_ANDROID_WEBVIEW)):
            with self.subTest(browser=name):
                mark = log_mark(self.proxy)
                result = self.get(user_agent, "iab-" + name)
                context = result.describe() + self.proxy.context()
                self.assertEqual(result.returncode, 0, context)
                self.assertEqual(result.status, 200, context)
                seen = result.json()
                self.assertEqual(seen["path"], "/whoami?iab-" + name, context)
                self.assertEqual(dict((k.lower(), v) for k, v in seen["headers"])["user-agent"],
                                 user_agent)
                record = wait_for_record(self.proxy, start=mark, event="request",
                                         host=host_is("example.org"), status="200")
                self.assertEqual(record.get("category"), "none", record)
                self.assertIn(record.get("action"), ("allow", "log"), record)

    def test_in_app_and_plain_requests_on_one_connection(self):
        outcome, tls = tls_through_connect(self.proxy.port, "example.org:%d"
                                           % self.origin.https_port, "example.org",
                                           cafile=self.proxy.ca_pem)
        self.assertEqual(outcome, "ok", "%r%s" % (tls, self.proxy.context()))
        http = TlsHttp(tls)
        self.addCleanup(http.close)
        plan = [(UA_SAFARI_IOS, 200), (UA_TIKTOK_IN_APP_IOS, 451), (UA_CHROME_DESKTOP, 200),
                (UA_TIKTOK_IN_APP_IOS, 451)]
        for i, (user_agent, status) in enumerate(plan):
            response = http.request("example.org", "/whoami?iab-mixed=%d" % i,
                                    [("User-Agent", user_agent), ("Accept", ACCEPT_JSON)])
            context = "request %d: %r%s" % (i, response and response.raw[:300],
                                            self.proxy.context())
            self.assertIsNotNone(response, "connection closed" + context)
            self.assertEqual(response.status, status, context)
        at_origin = sorted(r["path"] for r in self.origin.requests()
                           if "iab-mixed" in r.get("path", ""))
        self.assertEqual(at_origin, ["/whoami?iab-mixed=0", "/whoami?iab-mixed=2"])


class GatewayLogTest(GatewayTestBase):
    """Every connection line carries category, rule and verdict."""

    def setUp(self):
        self.proxy = self.start_tokgate(args=policy_run_args(profile="gateway"))

    def test_connection_lines_carry_category_rule_verdict(self):
        mark = log_mark(self.proxy)
        curl(self.https_url(TIKTOK_WEB_HOST, "/whoami"), proxy=self.proxy.url,
             cacert=self.proxy.ca_pem)
        curl(self.https_url(TIKTOK_APP_HOST, "/whoami"), proxy=self.proxy.url,
             cacert=self.proxy.ca_pem)
        curl(self.https_url("splice.test", "/whoami"), proxy=self.proxy.url,
             cacert=self.pki.ca_cert)
        for host, category, verdict in ((TIKTOK_WEB_HOST, "web", "intercept"),
                                        (TIKTOK_APP_HOST, "app-api", "refuse"),
                                        ("splice.test", "none", "splice")):
            record = wait_for_record(self.proxy, start=mark, event="connection", host=host)
            for key in ("category", "rule", "verdict"):
                self.assertIn(key, record, record)
            self.assertEqual((record["category"], record["verdict"]), (category, verdict), record)
        self.assertEqual(records_since(self.proxy, mark, event="request",
                                       host=host_is("splice.test")), [],
                         "a spliced connection produced request lines")


if __name__ == "__main__":
    unittest.main()
