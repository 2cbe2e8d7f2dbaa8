"""The observe profile: nothing is blocked; TikTok traffic is decrypted and every request is
logged with its category and action=log; everything else is spliced untouched."""

import unittest

from harness import (TIKTOK_APP_HOST, TIKTOK_WEB_HOST, UA_SAFARI_IOS, UA_TIKTOK_IN_APP_IOS,
                     IntegrationTestCase, RawConnection, cert_info, curl, host_is, log_mark,
                     policy_run_args, profile_rule_for, records_since, s_client, tunnel_connection,
                     wait_for_record)

WEB_RULE = profile_rule_for("observe", "web")[0]
APP_RULE = profile_rule_for("observe", "app-api")[0]
IN_APP_RULE = profile_rule_for("observe", "in-app-browser")[0]


class ObserveProfileTest(IntegrationTestCase):

    def setUp(self):
        self.proxy = self.start_tokgate(args=policy_run_args(profile="observe",
                                                             intercept=["example.org"]))

    def https_url(self, host, path):
        return "https://%s:%d%s" % (host, self.origin.https_port, path)

    def assert_passed(self, host, path, category, rule, user_agent=None):
        mark = log_mark(self.proxy)
        headers = ["User-Agent: " + user_agent] if user_agent else []
        result = curl(self.https_url(host, path), proxy=self.proxy.url, cacert=self.proxy.ca_pem,
                      headers=headers)
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 200, context)
        self.assertEqual(result.json()["path"], path, context)  # answered by the origin
        self.assertEqual(result.json()["sni"], host, context)
        self.assertEqual(result.info.get("ssl_verify_result"), 0, "not our minted certificate")
        wait_for_record(self.proxy, start=mark, event="connection", host=host,
                        verdict="intercept")
        record = wait_for_record(self.proxy, start=mark, event="request", host=host_is(host),
                                 status="200", category=category, action="log")
        self.assertEqual(record.get("rule"), rule, record)
        return record

    def test_website_is_logged_not_blocked(self):
        self.assert_passed(TIKTOK_WEB_HOST, "/whoami?observe-web", "web", WEB_RULE)

    def test_app_backend_is_logged_not_refused(self):
        self.assert_passed(TIKTOK_APP_HOST, "/whoami/aweme/v1/feed/?observe-app", "app-api",
                           APP_RULE)

    def test_in_app_browser_is_logged(self):
        self.assert_passed("example.org", "/whoami?observe-iab", "in-app-browser", IN_APP_RULE,
                           user_agent=UA_TIKTOK_IN_APP_IOS)
        # The same site in Safari: category none, the default action.
        mark = log_mark(self.proxy)
        result = curl(self.https_url("example.org", "/whoami?observe-safari"),
                      proxy=self.proxy.url, cacert=self.proxy.ca_pem,
                      headers=["User-Agent: " + UA_SAFARI_IOS])
        self.assertEqual(result.status, 200, result.describe() + self.proxy.context())
        record = wait_for_record(self.proxy, start=mark, event="request",
                                 host=host_is("example.org"), status="200")
        self.assertEqual(record.get("category"), "none", record)

    def test_absolute_form_website_is_forwarded_and_logged(self):
        mark = log_mark(self.proxy)
        authority = ("%s:%d" % (TIKTOK_WEB_HOST, self.origin.http_port)).encode()
        with RawConnection(self.proxy.port) as conn:
            conn.send(b"GET http://%s/whoami?observe-abs HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (authority, authority))
            response = conn.read_response()
        self.assertIsNotNone(response, self.proxy.context())
        self.assertEqual(response.status, 200, response.raw[:400])
        self.assertNotIn("x-tokgate-category", response.headers)
        wait_for_record(self.proxy, start=mark, event="request", host=host_is(TIKTOK_WEB_HOST),
                        status="200", category="web", action="log", rule=WEB_RULE)

    def test_non_targets_are_spliced(self):
        mark = log_mark(self.proxy)
        result = curl(self.https_url("splice.test", "/whoami?observe-splice"),
                      proxy=self.proxy.url, cacert=self.pki.ca_cert)
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 200, context)
        code, output, chain = s_client(self.proxy.port, "splice.test", self.origin.https_port,
                                       self.pki.ca_cert)
        self.assertEqual(code, 0, output + self.proxy.context())
        self.assertEqual(cert_info(pem=chain[0])["issuer"],
                         cert_info(path=self.pki.ca_cert)["subject"])
        wait_for_record(self.proxy, start=mark, event="connection", host="splice.test",
                        category="none", verdict="splice")
        self.assertEqual(records_since(self.proxy, mark, event="request",
                                       host=host_is("splice.test")), [])

    def test_nothing_is_blocked_on_one_tunnel(self):
        """Ten TikTok web requests on one kept-alive tunnel: all reach the origin."""
        conn = tunnel_connection(self.proxy.port, TIKTOK_WEB_HOST, self.origin.https_port,
                                 self.proxy.ca_pem)
        self.addCleanup(conn.close)
        for i in range(10):
            conn.request("GET", "/whoami?observe-many=%d" % i,
                         headers={"User-Agent": UA_TIKTOK_IN_APP_IOS,
                                  "X-Gorgon": "0404" + "0" * 48})
            response = conn.getresponse()
            body = response.read()
            self.assertEqual(response.status, 200, body[:300] + self.proxy.context().encode())
        seen = [r for r in self.origin.requests() if "observe-many" in r.get("path", "")]
        self.assertEqual(len(seen), 10, seen)


if __name__ == "__main__":
    unittest.main()
