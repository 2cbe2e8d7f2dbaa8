"""A policy file of the operator's own (--policy FILE): rules by host, path glob, method, header
presence and value, client CIDR and @group, catalog evidence; first match wins; the request-stage
`refuse` closes the connection without a response; the default action applies when no rule
matches; the block page escapes what the operator wrote."""

import html
import json
import unittest

from harness import (IntegrationTestCase, RawConnection, TlsHttp, curl, log_mark,
                     origin_request_count, policy_run_args, raw_exchange, tls_through_connect,
                     wait_for_record)

ORGANISATION = 'Test <Org> & "Co"'
BLOCK_MESSAGE = "Blocked by the <b>test</b> policy & friends"
GORGON_MESSAGE = "Signed ByteDance clients are not allowed <here>"
LAB_CLIENT = "127.0.0.2"
BLOCKED_CLIENT = "127.0.0.3"

POLICY = """\
# A policy exercising every kind of condition. Rules are tried in order; first match wins.
[policy]
name = "custom-test"
organisation = %(organisation)s
default_action = "block"
block_message = %(block_message)s
on_pinned = "refuse"
pinned_memory = "10m"

[intercept]
mode = "all"

[client_groups]
lab = ["%(lab)s/32"]

# Connection stage: decided from the host name alone.
[[rules]]
name = "splice-test-host"
action = "splice"
match = { host = ["splice.test"] }

[[rules]]
name = "refuse-test-host"
action = "refuse"
match = { host = ["refused.test", "*.refused.test"] }

# Request stage.
[[rules]]
name = "refuse-path"
action = "refuse"
match = { path = ["/refuse/*"] }

[[rules]]
name = "lab-allow"
action = "log"
match = { client = ["@lab"] }

[[rules]]
name = "cidr-block"
action = "block"
match = { client = ["%(blocked)s/32", "10.0.0.0/8"] }

[[rules]]
name = "block-gorgon"
action = "block"
message = %(gorgon_message)s
match = { header = ["X-Gorgon"] }

[[rules]]
name = "block-strict-mode"
action = "block"
match = { header = ["X-Test-Mode: strict*"] }

[[rules]]
name = "block-post"
action = "block"
match = { method = ["POST", "PUT"], path = ["/sha256"] }

[[rules]]
name = "block-ad-click"
action = "block"
match = { evidence = ["tiktok-ad-click"] }

[[rules]]
name = "block-blocked-dir"
action = "block"
match = { path = ["/whoami/blocked/*"] }

[[rules]]
name = "allow-whoami"
action = "log"
match = { path = ["/whoami", "/whoami/*"], method = ["GET", "HEAD"] }

[[rules]]
name = "allow-bytes"
action = "allow"
match = { path = ["/bytes/*"] }
""" % {"organisation": json.dumps(ORGANISATION), "block_message": json.dumps(BLOCK_MESSAGE),
       "gorgon_message": json.dumps(GORGON_MESSAGE), "lab": LAB_CLIENT,
       "blocked": BLOCKED_CLIENT}


class CustomPolicyTest(IntegrationTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.policy_path = cls.tmp / "custom-policy.toml"
        cls.policy_path.write_text(POLICY)

    def setUp(self):
        self.proxy = self.start_tokgate(args=policy_run_args(
            policy=self.policy_path, extra=["--allow-client", "127.0.0.0/8"]))

    def url(self, path, host="example.org"):
        return "https://%s:%d%s" % (host, self.origin.https_port, path)

    def get(self, path, host="example.org", headers=(), interface=None, method=None,
            data_file=None):
        return curl(self.url(path, host), proxy=self.proxy.url, cacert=self.proxy.ca_pem,
                    headers=["Accept: application/json"] + list(headers), interface=interface,
                    method=method, data_file=data_file)

    def assert_blocked(self, result, rule, marker=None, category="none"):
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 451, context)
        self.assertEqual(result.header("x-tokgate-category"), category, context)
        if rule is None:
            self.assertIsNone(result.header("x-tokgate-rule"), context)
        else:
            self.assertEqual(result.header("x-tokgate-rule"), rule, context)
        page = result.json()
        if rule is None:  # the default action: no rule (null, or at least empty)
            self.assertIn(page["rule"], (None, ""), page)
        else:
            self.assertEqual(page["rule"], rule, page)
        self.assertEqual(page["organisation"], ORGANISATION, page)
        self.assertEqual(page["policy"], "custom-test", page)
        if marker:
            self.assertEqual([r for r in self.origin.requests() if marker in r.get("path", "")],
                             [], "a blocked request reached the origin")
        return page

    def assert_passed(self, result, path=None):
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 200, context)
        self.assertNotIn("x-tokgate-category", result.headers, context)
        if path is not None:
            self.assertEqual(result.json()["path"], path, context)

    # --- path, method, headers, evidence, default -----------------------------------------------

    def test_path_glob(self):
        mark = log_mark(self.proxy)
        page = self.assert_blocked(self.get("/whoami/blocked/deep/er?rules-path"),
                                   "block-blocked-dir", "rules-path")
        self.assertEqual(page["message"], BLOCK_MESSAGE)
        wait_for_record(self.proxy, start=mark, event="request", status="451", action="block",
                        rule="block-blocked-dir")
        self.assert_passed(self.get("/whoami/fine?rules-path-ok"), "/whoami/fine?rules-path-ok")

    def test_method(self):
        body = self.scratch_dir("rules-method") / "body"
        body.write_bytes(b"payload")
        self.assert_blocked(self.get("/sha256?rules-post", data_file=body), "block-post",
                            "rules-post")
        # Another method on a path the later whoami rule lets through only for GET/HEAD: the
        # default (block) answers, without a rule name.
        self.assert_blocked(self.get("/whoami?rules-delete", method="DELETE"), None,
                            "rules-delete")
        self.assert_passed(self.get("/whoami?rules-get"), "/whoami?rules-get")

    def test_header_presence_and_value(self):
        page = self.assert_blocked(self.get("/whoami?rules-gorgon",
                                            headers=["X-Gorgon: 0404b0d30000aaaa"]),
                                   "block-gorgon", "rules-gorgon")
        self.assertEqual(page["message"], GORGON_MESSAGE)
        self.assert_blocked(self.get("/whoami?rules-strict", headers=["X-Test-Mode: Strict-2"]),
                            "block-strict-mode", "rules-strict")
        self.assert_passed(self.get("/whoami?rules-lenient", headers=["X-Test-Mode: lenient"]),
                           "/whoami?rules-lenient")

    def test_catalog_evidence(self):
        self.assert_blocked(self.get("/whoami?utm_source=tiktok&rules-evidence"),
                            "block-ad-click", "rules-evidence")
        self.assert_blocked(self.get("/whoami?ttclid=E.C.P.abc&rules-evidence2"),
                            "block-ad-click", "rules-evidence2")
        self.assert_passed(self.get("/whoami?utm_source=newsletter"),
                           "/whoami?utm_source=newsletter")

    def test_default_action_when_nothing_matches(self):
        mark = log_mark(self.proxy)
        page = self.assert_blocked(self.get("/chunked/10?rules-default"), None, "rules-default")
        self.assertEqual(page["message"], BLOCK_MESSAGE)
        self.assert_passed(self.get("/bytes/10?rules-bytes"))
        record = wait_for_record(self.proxy, start=mark, event="request", status="451",
                                 action="block")
        self.assertIn(record.get("rule"), ("", None), record)

    def test_first_match_wins(self):
        # /whoami/blocked/ with X-Gorgon: both rules match, the earlier (block-gorgon) decides.
        self.assert_blocked(self.get("/whoami/blocked/x?rules-first",
                                     headers=["X-Gorgon: 0404"]), "block-gorgon", "rules-first")

    # --- clients: CIDR and @group ---------------------------------------------------------------

    def test_client_group_and_cidr(self):
        mark = log_mark(self.proxy)
        # The lab group's rule comes before every block rule: the lab passes even /blocked/.
        result = self.get("/whoami/blocked/lab?rules-lab", headers=["X-Gorgon: 0404"],
                          interface=LAB_CLIENT)
        self.assert_passed(result, "/whoami/blocked/lab?rules-lab")
        wait_for_record(self.proxy, start=mark, event="request", status="200", action="log",
                        rule="lab-allow")
        # A client in the blocked CIDR is blocked even on a path everyone else may use.
        self.assert_blocked(self.get("/whoami?rules-cidr", interface=BLOCKED_CLIENT),
                            "cidr-block", "rules-cidr")
        self.assert_passed(self.get("/whoami?rules-cidr-other", interface="127.0.0.1"),
                           "/whoami?rules-cidr-other")

    # --- the HTML page escapes the operator's text --------------------------------------------

    def test_html_block_page_escapes(self):
        result = curl(self.url("/whoami/blocked/html?rules-html"), proxy=self.proxy.url,
                      cacert=self.proxy.ca_pem, headers=["Accept: text/html"])
        context = result.describe() + self.proxy.context()
        self.assertEqual(result.status, 451, context)
        self.assertEqual(result.header("content-type"), "text/html; charset=utf-8", context)
        text = result.body.decode("utf-8")
        for raw in (ORGANISATION, BLOCK_MESSAGE):
            self.assertNotIn(raw, text, "unescaped operator text in the page")
            self.assertIn(html.escape(raw, quote=False).replace('"', ""),
                          text.replace("&quot;", "").replace("&#34;", "").replace('"', ""),
                          context)
        self.assertNotIn("<b>test</b>", text)
        self.assertIn("block-blocked-dir", text)

    # --- refuse at the request stage -------------------------------------------------------------

    def test_request_refuse_closes_without_response(self):
        mark = log_mark(self.proxy)
        result = self.get("/refuse/now?rules-refuse")
        context = result.describe() + self.proxy.context()
        self.assertNotEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 0, "an answer to a refused request: " + context)
        self.assertIn(result.returncode, (52, 56), context)  # empty reply / recv failure

        # Same by hand: a first request is answered, the refused one gets the connection closed.
        outcome, tls = tls_through_connect(self.proxy.port, "example.org:%d"
                                           % self.origin.https_port, "example.org",
                                           cafile=self.proxy.ca_pem)
        self.assertEqual(outcome, "ok", repr(tls))
        http = TlsHttp(tls)
        self.addCleanup(http.close)
        first = http.request("example.org", "/whoami?rules-refuse-before")
        self.assertEqual(first and first.status, 200, self.proxy.context())
        self.assertIsNone(http.request("example.org", "/refuse/x?rules-refuse2"),
                          "refused request got an answer")
        self.assertEqual(origin_request_count(self.origin, "/refuse/"), 0)
        wait_for_record(self.proxy, start=mark, event="request", action="refuse",
                        rule="refuse-path")

        # The absolute-form path gets the same.
        authority = ("example.org:%d" % self.origin.http_port).encode()
        response = raw_exchange(self.proxy.port, b"GET http://%s/refuse/abs HTTP/1.1\r\n"
                                b"Host: %s\r\n\r\n" % (authority, authority))
        self.assertIsNone(response, response and response.raw[:300])
        self.assertEqual(origin_request_count(self.origin, "/refuse/"), 0)

    # --- connection-stage rules of a custom policy -------------------------------------------

    def test_connection_stage_splice_and_refuse_rules(self):
        mark = log_mark(self.proxy)
        # mode = "all" decrypts everything, except what a splice rule names.
        result = curl(self.url("/whoami?rules-splice", "splice.test"), proxy=self.proxy.url,
                      cacert=self.pki.ca_cert)
        self.assert_passed(result, "/whoami?rules-splice")
        wait_for_record(self.proxy, start=mark, event="connection", host="splice.test",
                        verdict="splice", rule="splice-test-host")

        response = raw_exchange(self.proxy.port, b"CONNECT www.refused.test:%d HTTP/1.1\r\n"
                                b"Host: www.refused.test\r\n\r\n" % self.origin.https_port)
        self.assertIsNotNone(response, self.proxy.context())
        self.assertEqual(response.status, 403, response.raw[:300])
        self.assertEqual(response.header("x-tokgate-error"), "refused")
        wait_for_record(self.proxy, start=mark, event="connection", host="www.refused.test",
                        verdict="refuse", rule="refuse-test-host")

        # mode = "all": a host the catalog does not know is decrypted.
        result = self.get("/whoami?rules-all")
        self.assert_passed(result, "/whoami?rules-all")
        self.assertEqual(result.info.get("ssl_verify_result"), 0)
        wait_for_record(self.proxy, start=mark, event="connection", host="example.org",
                        verdict="intercept")

    def test_absolute_form_uses_the_same_rules(self):
        authority = ("example.org:%d" % self.origin.http_port).encode()
        with RawConnection(self.proxy.port) as conn:
            conn.send(b"GET http://%s/whoami/blocked/abs HTTP/1.1\r\nHost: %s\r\n"
                      b"Accept: application/json\r\n\r\n" % (authority, authority))
            blocked = conn.read_response()
            conn.send(b"GET http://%s/whoami?rules-abs HTTP/1.1\r\nHost: %s\r\n\r\n"
                      % (authority, authority))
            passed = conn.read_response()
        self.assertEqual(blocked and blocked.status, 451, self.proxy.context())
        self.assertEqual(blocked.header("x-tokgate-rule"), "block-blocked-dir")
        self.assertIsNotNone(passed, "closed after a 451 for a body-less request")
        self.assertEqual(passed.status, 200, passed.raw[:300])


if __name__ == "__main__":
    unittest.main()
