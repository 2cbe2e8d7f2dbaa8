"""The status web UI (docs/web-ui.md) end to end, in a real browser.

One tokgate (a policy that blocks one TikTok path and logs the rest, a flow log so the UI's flow
feed is fed) and one Node origin are shared by the class. tests/ui/webui_e2e.mjs drives Debian's
Chromium through playwright-core once, making its own traffic with curl through the proxy, and
reports one JSON object per check; each test here asserts one of them against tokgate's own
truth (`tokgate ca show/export`, `tokgate policy explain --json`, the flow log, /api/status).
The safety tests (CSP, the admin API through the proxy's data path, methods, authentication off
loopback) use curl and raw sockets.

Screenshots of every page go to $TOKGATE_UI_SCREENSHOTS, else <dir of TOKGATE_BIN>/screenshots.
TOKGATE_UI_DUMP=FILE keeps the browser run's raw report (JSON lines) for a look by hand.
Needs tests/ui/node_modules (`npm ci --prefix tests/ui`) and /usr/bin/chromium, else the browser
tests are skipped (scripts/install-deps.sh installs both).
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

from harness import (REPO_ROOT, STARTUP_TIMEOUT, UA_TIKTOK_IN_APP_IOS, IntegrationTestCase,
                     LineCollector, NodeOrigin, Tokgate, admin_address, clean_env, curl,
                     node_binary, parse_log_line, policy_run_args, raw_exchange, split_host_port,
                     tokgate_binary, tokgate_command, wait_until)

UI_DIR = REPO_ROOT / "tests" / "ui"
E2E_SCRIPT = UI_DIR / "webui_e2e.mjs"
CHROMIUM = Path("/usr/bin/chromium")
E2E_TIMEOUT = 110  # seconds for the whole browser run

POLICY_NAME = "webui-e2e"
BLOCK_RULE = "block-tiktok-upload"
LOG_RULE = "log-tiktok"
POLICY = """\
[policy]
name = "%s"
default_action = "log"
block_message = "Uploads to TikTok are not permitted by the web UI test policy."

[[rules]]
name = "%s"
action = "block"
match = { host = [".tiktok.com"], path = ["/upload/*"] }

[[rules]]
name = "%s"
action = "log"
match = { host = [".tiktok.com"] }
""" % (POLICY_NAME, BLOCK_RULE, LOG_RULE)

TIKTOK_HOST = "www.tiktok.com"
OTHER_HOST = "example.org"          # no rule, category none: spliced
BLOCKED_PATH = "/upload/ui-blocked"
# Markup in a request: a path curl sends as is (it does not encode < > ' in a URL) and a
# User-Agent; the UI must show both as text.
XSS_MARKER = "ui-xss"
XSS_PATH = "/x/%s/<script>alert(1)</script><img/src='x'/onerror=alert(2)>" % XSS_MARKER
XSS_UA = ("Mozilla/5.0 <script>alert(3)</script><img src=x onerror=alert(4)>"
          "<svg onload=alert(5)>")
EXPLAIN = {"url": "https://www.tiktok.com/upload/explained-video",
           "ua": UA_TIKTOK_IN_APP_IOS, "headers": ["X-Gorgon: 0404abcd"]}

SCREENSHOTS = ("status.png", "flows-filtered.png", "flow-detail.png", "policy-explain.png",
               "ca.png", "ca-phone.png", "ca-via-proxy-phone.png")
CSP_REQUIRED = ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'",
                "base-uri 'none'")


def screenshot_dir():
    configured = os.environ.get("TOKGATE_UI_SCREENSHOTS")
    return Path(configured) if configured else tokgate_binary().resolve().parent / "screenshots"


def missing_browser_parts():
    """Why the browser run cannot happen here, or None."""
    if not (UI_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        return ("tests/ui/node_modules/playwright-core is missing "
                "(run `npm ci --prefix tests/ui`; scripts/install-deps.sh does)")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return "/usr/bin/chromium is missing (Debian package chromium; scripts/install-deps.sh)"
    if not (shutil.which("node") or shutil.which("nodejs")):
        return "node is missing"
    return None


def parse_count(text):
    digits = re.sub(r"[,\s]", "", text or "")
    return int(digits) if digits.isdigit() else None


def http_request(host, port, method, path, headers=None, timeout=10.0):
    """One request on a new connection: (status, headers lower-case, body)."""
    import http.client
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def ca_show_fingerprint(ca_dir):
    result = tokgate_command("ca", "show", "--dir", ca_dir)
    if result.returncode != 0:
        raise AssertionError("tokgate ca show failed: %r" % result.stderr[-1000:])
    text = result.stdout.decode()
    match = re.search(r"([0-9A-F]{2}(?::[0-9A-F]{2}){31})", text, re.I)
    if not match:
        raise AssertionError("no SHA-256 fingerprint in `tokgate ca show`: %s" % text)
    return match.group(1).upper(), text


def ca_export(ca_dir, fmt):
    result = tokgate_command("ca", "export", "--dir", ca_dir, "--format", fmt)
    if result.returncode != 0:
        raise AssertionError("tokgate ca export --format %s failed: %r" % (fmt, result.stderr))
    return result.stdout


class WebUiTest(IntegrationTestCase):
    start_origin = False
    results = {}
    run_output = ""

    @classmethod
    def setUpClass(cls):
        why = missing_browser_parts()
        if why:
            raise unittest.SkipTest(why)
        super().setUpClass()
        cls.origin = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.origin.stop)
        cls.policy_path = cls.tmp / "webui-policy.toml"
        cls.policy_path.write_text(POLICY)
        cls.flow_log = cls.tmp / "flows.jsonl"
        cls.proxy = Tokgate(cls.tmp / "proxy", policy_run_args(
            policy=cls.policy_path, extra=["--flow-log", cls.flow_log]))
        cls.addClassCleanup(cls._stop_proxy)
        cls.admin_host, cls.admin_port = admin_address(cls.proxy)
        cls.admin = "http://%s:%d" % (cls.admin_host, cls.admin_port)
        # curl trusts tokgate's CA (intercepted names) and the test CA (the spliced one).
        cls.bundle = cls.tmp / "curl-bundle.pem"
        cls.bundle.write_bytes(cls.proxy.ca_pem.read_bytes() + cls.pki.ca_cert.read_bytes())
        cls.shots = screenshot_dir()
        cls.shots.mkdir(parents=True, exist_ok=True)
        for name in SCREENSHOTS:
            (cls.shots / name).unlink(missing_ok=True)
        cls._run_browser()

    @classmethod
    def _stop_proxy(cls):
        died = cls.proxy.died_unexpectedly()
        cls.proxy.stop(signal.SIGKILL)
        if died:
            raise AssertionError("tokgate exited on its own during the web UI tests (status %s)%s"
                                 % (cls.proxy.process.returncode, cls.proxy.context()))

    @classmethod
    def _run_browser(cls):
        config = {
            "admin": cls.admin, "proxy": cls.proxy.url, "curl_cacert": str(cls.bundle),
            "tiktok": "%s:%d" % (TIKTOK_HOST, cls.origin.port),
            "other": "%s:%d" % (OTHER_HOST, cls.origin.port),
            "blocked_path": BLOCKED_PATH,
            "xss": {"path": XSS_PATH, "ua": XSS_UA, "marker": XSS_MARKER},
            "explain": EXPLAIN, "screenshots": str(cls.shots), "chromium": str(CHROMIUM),
            "timeout_ms": (E2E_TIMEOUT - 10) * 1000,
        }
        config_path = cls.tmp / "webui-e2e.json"
        config_path.write_text(json.dumps(config))
        env = clean_env(PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1", HOME=str(cls.tmp))
        started = time.monotonic()
        try:
            result = subprocess.run([node_binary(), str(E2E_SCRIPT), str(config_path)],
                                    capture_output=True, timeout=E2E_TIMEOUT, env=env,
                                    cwd=str(UI_DIR))
            stdout, stderr, code = result.stdout, result.stderr, result.returncode
        except subprocess.TimeoutExpired as expired:
            stdout, stderr, code = expired.stdout or b"", expired.stderr or b"", "timeout"
        cls.browser_seconds = time.monotonic() - started
        cls.results = {}
        for line in stdout.decode(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and "check" in item:
                cls.results[item["check"]] = item
        cls.raw_stdout = stdout.decode(errors="replace")
        if os.environ.get("TOKGATE_UI_DUMP"):
            Path(os.environ["TOKGATE_UI_DUMP"]).write_text(cls.raw_stdout)
        cls.run_output = "node exit %s after %.1fs\nstdout tail: %s\nstderr tail: %s" % (
            code, cls.browser_seconds, stdout.decode(errors="replace")[-3000:],
            stderr.decode(errors="replace")[-3000:])
        sys.stderr.write("\nweb UI browser run: node exit %s in %.1fs, %d checks reported\n"
                         % (code, cls.browser_seconds, len(cls.results)))

    # --- helpers ------------------------------------------------------------------------------

    def result(self, name):
        """The browser run's report for one check, failing on a missing or failed step."""
        item = self.results.get(name)
        self.assertIsNotNone(item, "the browser run reported no %r\n%s" % (name, self.run_output))
        self.assertNotIn("error", item, "step %r failed in the browser: %s\n%s"
                         % (name, item.get("error"), self.run_output))
        return item

    def context(self):
        return self.proxy.context()

    def api(self, path):
        status, headers, body = http_request(self.admin_host, self.admin_port, "GET", path)
        self.assertEqual(status, 200, "%s: %r" % (path, body[:500]))
        return json.loads(body)

    def flow_records(self):
        records = []
        if self.flow_log.exists():
            for line in self.flow_log.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        return records

    def flow_record(self, **match):
        """The first flow-log record whose fields equal every key=value (polled: the log is
        written by a thread of its own)."""
        def find():
            for record in self.flow_records():
                if all(record.get(k) == v for k, v in match.items()):
                    return record
            return None
        return wait_until(find, 10.0, "a flow-log record %r" % (match,), interval=0.1)

    # --- 1. the dashboard --------------------------------------------------------------------

    def test_1_dashboard_shows_the_proxy_facts(self):
        shown = self.result("dashboard")
        status = self.api("/api/status")
        fingerprint, show_text = ca_show_fingerprint(self.proxy.ca_dir)
        self.assertEqual(shown["http_status"], 200, shown)
        self.assertEqual(shown["nav"], {"nav-status": 1, "nav-flows": 1, "nav-policy": 1,
                                        "nav-ca": 1}, shown)
        self.assertTrue(shown["status_page_visible"], shown)
        self.assertEqual(shown["version"].strip(), status["version"], shown)
        self.assertRegex(shown["uptime"].strip(), r"^\d+[smhd]", shown)
        self.assertEqual(shown["policy_name"].strip(), POLICY_NAME, shown)
        self.assertEqual(shown["ca_fingerprint"].strip().upper(), fingerprint,
                         "UI vs `tokgate ca show`:\n%s" % show_text)
        self.assertEqual(status["ca"]["fingerprint"].upper(), fingerprint, status["ca"])
        self.assertTrue(shown["reload_error_hidden"], "a reload error is shown: %r" % shown)
        # The event stream (/api/events) is open: the page says "live", not "polling".
        self.assertEqual(shown["live_state"], "live", shown)

    # --- 2. live counters ----------------------------------------------------------------------

    def test_2_counters_move_with_traffic(self):
        shown = self.result("counters")
        statuses = [(c["url"], c["code"], c["status"]) for c in shown["curl"]]
        for url, code, status in statuses:
            self.assertEqual(code, 0, "curl failed: %r%s" % (statuses, self.context()))
            self.assertEqual(status, 451 if BLOCKED_PATH in url else 200, (url, statuses))
        self.assertIsNotNone(shown["before"], "requests-total never showed a number: %r" % shown)
        self.assertIsNotNone(shown["after"], shown)
        self.assertGreaterEqual(shown["after"], shown["expected_min"],
                                "requests-total did not move within %d ms: %r"
                                % (shown["waited_ms"], shown))
        self.assertEqual(shown["chart_points"], 120, "the rps chart's polyline: %r" % shown)
        self.assertGreater(shown["chart_nonzero_points"], 0, "the rps chart stayed flat: %r"
                           % shown)
        self.assertIsNotNone(parse_count(shown["open_connections"]), shown)
        self.assertEqual(parse_count(shown["pinning_failures"]), 0, shown)
        stats = self.api("/api/stats")
        self.assertGreaterEqual(stats["requests_total"], shown["after"], stats)

    # --- 3. flows table and filters --------------------------------------------------------------

    def blocked_row(self, rows):
        found = [r for r in rows if r["cells"].get("status", "").strip() == "451"]
        self.assertEqual(len(found), 1, "rows with status 451: %r" % rows)
        return found[0]

    def test_3a_blocked_flow_in_the_table(self):
        shown = self.result("flows_table")
        record = self.flow_record(path=BLOCKED_PATH, status=451)
        row = self.blocked_row(shown["rows"])
        self.assertEqual(row["seq"], shown["blocked_seq"])
        cells = {k: v.strip() for k, v in row["cells"].items()}
        self.assertEqual(cells.get("host"), TIKTOK_HOST, cells)
        self.assertEqual(cells.get("path"), BLOCKED_PATH, cells)
        self.assertEqual(cells.get("action"), "block", cells)
        self.assertEqual(cells.get("rule"), BLOCK_RULE, cells)
        self.assertEqual(cells.get("category"), record["category"], cells)
        self.assertEqual(cells.get("method"), "GET", cells)
        # The API's copy of that flow is the flow-log record plus its seq.
        api = self.api("/api/flows/%d" % row["seq"])
        for key in ("host", "path", "status", "rule", "action", "category", "flow"):
            self.assertEqual(api.get(key), record.get(key), key)
        # Newest first; the logged requests and the spliced connection are there too.
        seqs = [r["seq"] for r in shown["rows"]]
        self.assertEqual(seqs, sorted(seqs, reverse=True), seqs)
        hosts = {r["cells"].get("host", "").strip() for r in shown["rows"]}
        self.assertIn(OTHER_HOST, hosts, shown["rows"])
        logged = [r for r in shown["rows"] if r["cells"].get("rule", "").strip() == LOG_RULE]
        self.assertGreaterEqual(len(logged), 8, shown["rows"])
        for r in logged:
            self.assertEqual(r["cells"].get("action", "").strip(), "log", r)

    def test_3b_action_filter_shows_only_blocks(self):
        shown = self.result("filter_action")
        self.assertRegex(shown["hash"], r"^#/flows\?(.*&)?action=block(&|$)", shown)
        actions = [r["cells"].get("action", "").strip() for r in shown["rows"]]
        self.assertEqual(actions, ["block"], shown["rows"])
        self.assertFalse(shown["empty_shown"], shown)

    def test_3c_host_filter_narrows(self):
        shown = self.result("filter_host")
        all_rows = self.result("flows_table")["rows"]
        narrowed = shown["narrowed"]
        self.assertTrue(narrowed, "no rows for host %r" % shown["host"])
        self.assertLess(len(narrowed), len(all_rows), "the host filter removed nothing")
        for row in narrowed:
            self.assertIn(shown["host"], row["cells"].get("host", ""), row)
        # host=tiktok and action=block together: the blocked flow alone.
        self.assertEqual([r["cells"].get("path", "").strip() for r in shown["combined"]],
                         [BLOCKED_PATH], shown["combined"])
        params = dict(p.split("=", 1) for p in shown["hash"].split("?", 1)[1].split("&"))
        self.assertEqual(params.get("action"), "block", shown["hash"])
        self.assertEqual(params.get("host"), "tiktok", shown["hash"])

    def test_3d_reload_restores_filters_from_the_hash(self):
        shown = self.result("filter_reload")
        self.assertEqual(shown["hash"], shown["hash_before"], shown)
        self.assertEqual(shown["filters"]["action"], "block", shown)
        self.assertEqual(shown["filters"]["host"], "tiktok", shown)
        self.assertEqual([r["cells"].get("path", "").strip() for r in shown["rows"]],
                         [BLOCKED_PATH], shown["rows"])

    # --- 4. detail ---------------------------------------------------------------------------

    def test_4_row_click_opens_the_detail(self):
        shown = self.result("detail")
        record = self.flow_record(path=BLOCKED_PATH, status=451)
        self.assertTrue(shown["visible"], shown)
        self.assertRegex(shown["hash"], r"[?&]seq=%d(&|$)" % shown["seq"], shown)
        fields = shown["fields"]
        self.assertIsNotNone(fields, "no detail-fields in the panel: %r" % shown["text"])
        self.assertEqual(fields.get("seq"), str(shown["seq"]), fields)
        for key in ("host", "path", "rule", "action", "category", "method", "flow", "verdict",
                    "client_ip"):
            self.assertIn(key, record, record)
            self.assertEqual(fields.get(key), str(record[key]), "field %s: %r" % (key, fields))
        self.assertEqual(fields.get("status"), "451", fields)
        self.assertTrue(record.get("evidence"), record)
        for evidence in record["evidence"]:
            self.assertIn(evidence, fields.get("evidence", ""), fields)
        self.assertEqual(len(shown["evidence"] or []), len(record["evidence"]), shown["evidence"])
        for item, evidence in zip(shown["evidence"], record["evidence"]):
            self.assertEqual(item, evidence)

    # --- 5. explain -------------------------------------------------------------------------------

    def test_5_explain_matches_the_cli(self):
        shown = self.result("explain")
        args = ["policy", "explain", "--url", EXPLAIN["url"], "--ua", EXPLAIN["ua"],
                "--policy", self.policy_path, "--json"]
        for header in EXPLAIN["headers"]:
            args += ["--header", header]
        result = tokgate_command(*args)
        self.assertEqual(result.returncode, 0, result.stderr)
        cli = json.loads(result.stdout)
        self.assertTrue(shown["error_hidden"], shown)
        self.assertEqual(shown["category"].strip(), cli["category"], (shown, cli))
        self.assertEqual(shown["action"].strip(), cli["action"], (shown, cli))
        self.assertEqual(shown["rule"].strip(), cli["rule"], (shown, cli))
        self.assertEqual(shown["verdict"].strip(), cli["connection"]["verdict"], (shown, cli))
        self.assertEqual(len(shown["evidence"] or []), len(cli["evidence"]), (shown, cli))
        self.assertEqual((cli["action"], cli["rule"]), ("block", BLOCK_RULE), cli)
        self.assertEqual(shown["policy_page_name"].strip(), POLICY_NAME, shown)
        # The form's inputs are in the hash (a link to the answer).
        self.assertTrue(shown["hash"].startswith("#/policy?"), shown)
        self.assertIn("url=" + EXPLAIN["url"].replace(":", "%3A").replace("/", "%2F"),
                      shown["hash"], shown)
        # Reloading that link asks the question again and gets the same answer.
        reloaded = shown["reloaded"]
        self.assertNotIn("error", reloaded, reloaded)
        self.assertEqual((reloaded["url"], reloaded["ua"], reloaded["headers"]),
                         (EXPLAIN["url"], EXPLAIN["ua"], "\n".join(EXPLAIN["headers"])), reloaded)
        self.assertEqual((reloaded["category"].strip(), reloaded["rule"].strip(),
                          reloaded["action"].strip()),
                         (cli["category"], cli["rule"], cli["action"]), reloaded)

    # --- 6. the CA ------------------------------------------------------------------------------

    def test_6a_ca_downloads_equal_the_cli_export(self):
        shown = self.result("ca")
        pem = ca_export(self.proxy.ca_dir, "pem")
        der = ca_export(self.proxy.ca_dir, "der")
        fingerprint, _ = ca_show_fingerprint(self.proxy.ca_dir)
        self.assertEqual(shown["fingerprint"].strip().upper(), fingerprint, shown)
        self.assertNotIn("missing", shown["pem"], shown)
        self.assertNotIn("missing", shown["der"], shown)
        self.assertEqual(shown["pem"]["href"], "/ca.pem", shown["pem"])
        self.assertEqual(shown["der"]["href"], "/ca.crt", shown["der"])
        self.assertEqual(base64.b64decode(shown["pem"]["base64"]), pem, "PEM from the UI link")
        self.assertEqual(base64.b64decode(shown["der"]["base64"]), der, "DER from the UI link")
        self.assertTrue(pem.startswith(b"-----BEGIN CERTIFICATE-----"), pem[:60])
        self.assertEqual(der[:1], b"\x30", "DER starts with a SEQUENCE")
        phone = shown["phone"]
        self.assertLessEqual(phone["scroll_width"], phone["client_width"],
                             "the CA page scrolls sideways at 390 px: %r" % phone)

    def test_6b_ca_page_through_the_proxy(self):
        pem = ca_export(self.proxy.ca_dir, "pem")
        der = ca_export(self.proxy.ca_dir, "der")
        page = curl("http://tokgate/", proxy=self.proxy.url)
        self.assertEqual(page.returncode, 0, page.describe())
        self.assertEqual(page.status, 200, page.describe() + self.context())
        self.assertTrue(page.header("content-type", "").startswith("text/html"), page.describe())
        self.assertIn(b'href="/ca.pem"', page.body, page.body[:500])
        self.assertIn(b'data-testid="ca-pem"', page.body, page.body[:500])
        for path, expected in (("/ca.pem", pem), ("/ca.crt", der)):
            with self.subTest(path=path):
                got = curl("http://tokgate%s" % path, proxy=self.proxy.url)
                self.assertEqual(got.status, 200, got.describe())
                self.assertEqual(got.body, expected, got.describe())
        # Nothing else of the admin UI is reachable through the proxy.
        for path in ("/api/status", "/api/flows", "/metrics", "/status"):
            with self.subTest(path=path):
                got = curl("http://tokgate%s" % path, proxy=self.proxy.url)
                self.assertNotEqual(got.status, 200, got.describe())
                self.assertNotIn(b'"fingerprint"', got.body, got.describe())
                self.assertNotIn(b'"flows"', got.body, got.describe())

        shown = self.result("ca_via_proxy")
        self.assertEqual(shown["http_status"], 200, shown)
        self.assertTrue(shown["standalone"], "http://tokgate/ is not in standalone mode: %r"
                        % shown)
        self.assertEqual(shown["visible_pages"], ["/ca"], shown)
        self.assertEqual(shown["visible_nav"], ["nav-ca"], shown)
        self.assertTrue(shown["styled"], "style.css did not load through the proxy: %r" % shown)
        self.assertNotIn("error", shown["pem"], shown["pem"])
        self.assertEqual(base64.b64decode(shown["pem"]["base64"]), pem, "PEM via http://tokgate/")

    # --- 7. markup in traffic stays text ------------------------------------------------------------

    def assert_no_injection(self, dom, where):
        self.assertEqual(dom["scripts"], ["/app.js"], "%s: scripts in the page" % where)
        self.assertEqual(dom["imgs"], 0, "%s: an <img> was created" % where)
        self.assertEqual(dom["handlers"], [], "%s: elements with on* attributes" % where)

    def test_7_markup_in_a_flow_is_shown_as_text(self):
        shown = self.result("xss")
        self.assertEqual(shown["curl"]["code"], 0, shown["curl"])
        record = self.flow_record(user_agent=XSS_UA)
        self.assertIsNotNone(shown["seq"], "the flow with markup never showed up in the table: "
                             "%r\nflow log: %r" % (shown, record))
        # It arrived on the open page by the live feed (Clear had reset the hash first).
        self.assertEqual(shown["hash_after_clear"], "#/flows", shown)
        self.assertLess(shown["live_ms"], 10000, shown)
        path_cell = shown["row"]["cells"]["path"]
        self.assertIn("<script>alert(1)</script>", path_cell, shown["row"])
        self.assertEqual(path_cell.strip(), record["path"], (shown["row"], record))
        self.assertIn("<script>alert(3)</script>", shown["fields"]["user_agent"], shown["fields"])
        self.assertEqual(shown["fields"]["user_agent"], XSS_UA, shown["fields"])
        self.assertEqual(shown["fields"]["path"], record["path"], shown["fields"])
        self.assert_no_injection(shown["dom_after_table"], "flows table")
        self.assert_no_injection(shown["dom_after_detail"], "flow detail")
        self.assertEqual(shown["dialogs"], [], "a dialog fired")
        # With the CSP switched off in the browser, app.js alone keeps the data inert.
        no_csp = shown["no_csp"]
        self.assertEqual(no_csp["dialogs"], [], "a dialog fired without the CSP")
        self.assert_no_injection(no_csp["dom"], "flow detail without CSP")
        self.assertEqual((no_csp["fields"] or {}).get("user_agent"), XSS_UA, no_csp)

    # --- 8. safety -----------------------------------------------------------------------------

    def test_8a_csp_and_headers(self):
        status, headers, body = http_request(self.admin_host, self.admin_port, "GET", "/")
        self.assertEqual(status, 200, body[:300])
        csp = headers.get("content-security-policy", "")
        for directive in CSP_REQUIRED:
            self.assertIn(directive, csp, headers)
        self.assertNotIn("unsafe-inline", csp)
        self.assertNotIn("unsafe-eval", csp)
        self.assertEqual(headers.get("x-content-type-options"), "nosniff", headers)
        self.assertEqual(headers.get("referrer-policy"), "no-referrer", headers)
        self.assertNotIn(b"<script>", body, "an inline script in index.html")
        self.assertEqual(len(re.findall(rb"<script\b", body)), 1, "index.html loads app.js only")
        for path, kind in (("/app.js", "javascript"), ("/style.css", "text/css")):
            with self.subTest(path=path):
                status, headers, _ = http_request(self.admin_host, self.admin_port, "GET", path)
                self.assertEqual(status, 200)
                self.assertIn(kind, headers.get("content-type", ""), headers)
                self.assertEqual(headers.get("x-content-type-options"), "nosniff", headers)
        status, headers, _ = http_request(self.admin_host, self.admin_port, "GET", "/api/status")
        self.assertEqual(status, 200)
        self.assertIn("no-store", headers.get("cache-control", ""), headers)
        self.assertTrue(headers.get("content-type", "").startswith("application/json"), headers)

        seen = self.result("dashboard")
        self.assertNotIn("unsafe-inline", seen["csp"] or "", seen)
        self.assertIn("script-src 'self'", seen["csp"] or "", seen)

    def test_8b_browser_saw_no_csp_violation_or_error(self):
        log = self.result("browser_log")
        self.assertEqual(log["csp_violations"], [], "CSP violations")
        csp_console = [m for m in log["console"]
                       if "content security policy" in m["text"].lower()]
        self.assertEqual(csp_console, [], "CSP messages on the console")
        self.assertEqual(log["page_errors"], [], "uncaught exceptions in app.js")
        self.assertEqual(log["dialogs"], [], "dialogs")
        # Every request the admin pages made got an answer below 400 (a 404 also lands on the
        # console as an error a user sees in the developer tools).
        admin_pages = ("desktop", "phone")
        self.assertEqual([e for e in log["http_errors"] if e["label"] in admin_pages], [],
                         "requests answered with an error status")
        errors = [m for m in log["console"] if m["type"] == "error" and m["label"] in admin_pages]
        self.assertEqual(errors, [], "console errors")

    def test_8e_ca_page_through_the_proxy_makes_no_failing_request(self):
        # http://tokgate/ serves the CA page alone; nothing else of the admin UI is reachable
        # through the proxy, so the page has no business asking for the API there.
        log = self.result("browser_log")
        self.assertEqual([e for e in log["http_errors"] if e["label"] == "via-proxy"], [],
                         "requests of http://tokgate/ answered with an error status")
        self.assertEqual([m for m in log["console"]
                          if m["type"] == "error" and m["label"] == "via-proxy"], [],
                         "console errors on http://tokgate/")

    def test_8c_admin_listener_refused_through_the_data_path(self):
        for host in ("127.0.0.1", "localhost"):
            with self.subTest(via="absolute-form", host=host):
                got = curl("http://%s:%d/api/status" % (host, self.admin_port),
                           proxy=self.proxy.url)
                self.assertEqual(got.status, 403, got.describe() + self.context())
                self.assertNotIn(b"fingerprint", got.body, got.describe())
            with self.subTest(via="CONNECT", host=host):
                authority = ("%s:%d" % (host, self.admin_port)).encode()
                response = raw_exchange(self.proxy.port, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                                        % (authority, authority))
                self.assertIsNotNone(response, "closed without an answer")
                self.assertEqual(response.status, 403, response.raw[:500])
        # curl -p: CONNECT, then a plain request inside the tunnel.
        got = curl("http://127.0.0.1:%d/api/status" % self.admin_port, proxy=self.proxy.url,
                   args=["--proxytunnel"])
        self.assertNotEqual(got.returncode, 0, got.describe())
        self.assertEqual(got.header_blocks[0]["status"] if got.header_blocks else None, 403,
                         got.describe())

    def test_8d_api_answers_only_get_and_head(self):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                status, headers, _ = http_request(self.admin_host, self.admin_port, method,
                                                  "/api/status",
                                                  headers={"Content-Length": "0"})
                self.assertEqual(status, 405, method)
                self.assertIn("GET", headers.get("allow", ""), headers)
        status, headers, body = http_request(self.admin_host, self.admin_port, "HEAD",
                                             "/api/status")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"")

    # --- 9. screenshots ------------------------------------------------------------------------

    def test_9_screenshots(self):
        shots = self.result("screenshots")["files"]
        missing = []
        for name in SCREENSHOTS:
            path = self.shots / name
            if not path.is_file():
                missing.append(name)
                continue
            data = path.read_bytes()
            self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n", path)
            self.assertGreater(len(data), 5000, "%s is suspiciously small" % path)
            sys.stderr.write("screenshot: %s\n" % path)
        self.assertEqual(missing, [], "screenshots not written (reported: %r)" % shots)


class AdminOffLoopbackTest(unittest.TestCase):
    """An admin listener on a non-loopback address needs [admin] credentials (no browser)."""

    TOKEN = "webui-test-token-0123456789abcdef"

    @classmethod
    def setUpClass(cls):
        from harness import make_tempdir, remove_tree
        cls.tmp = make_tempdir("tokgate-webui-auth-")
        cls.addClassCleanup(remove_tree, cls.tmp)

    def start(self, name, config_text):
        """`tokgate run --config` (no --admin: the config's address counts); returns the
        process and its log collector."""
        workdir = self.tmp / name
        workdir.mkdir()
        config = workdir / "tokgate.toml"
        config.write_text(config_text)
        cmd = [str(tokgate_binary()), "run", "--config", str(config), "--listen", "127.0.0.1:0",
               "--ca-dir", str(workdir / "ca")]
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=clean_env(), cwd=str(workdir))
        log = LineCollector(process.stdout, "tokgate-%s" % name)

        def stop():
            if process.poll() is None:
                process.kill()
            process.wait(10)
            log.join(5)
            process.stdout.close()
        self.addCleanup(stop)
        return process, log

    def test_token_required_off_loopback(self):
        process, log = self.start("token", '[proxy]\nadmin = "0.0.0.0:0"\n\n[admin]\ntoken = "%s"\n'
                                  % self.TOKEN)
        line = log.wait_for(lambda l: (parse_log_line(l) or {}).get("role") == "admin"
                            and (parse_log_line(l) or {}).get("event") == "listening",
                            STARTUP_TIMEOUT, "event=listening role=admin")
        host, port = split_host_port(parse_log_line(line)["address"])
        self.assertEqual(host, "0.0.0.0", line)
        context = "\n".join(log.snapshot()[-20:])
        status, headers, _ = http_request("127.0.0.1", port, "GET", "/api/status")
        self.assertEqual(status, 401, context)
        status, _, _ = http_request("127.0.0.1", port, "GET", "/api/status",
                                    headers={"Authorization": "Bearer wrong-token-0123456789"})
        self.assertEqual(status, 401, context)
        status, _, _ = http_request("127.0.0.1", port, "GET", "/",
                                    headers={"Authorization": "Bearer wrong-token-0123456789"})
        self.assertEqual(status, 401, "the UI page itself without the token: " + context)
        status, _, body = http_request("127.0.0.1", port, "GET", "/api/status",
                                       headers={"Authorization": "Bearer " + self.TOKEN})
        self.assertEqual(status, 200, context)
        self.assertIn("version", json.loads(body))
        for path in ("/healthz", "/readyz"):
            with self.subTest(path=path):
                status, _, _ = http_request("127.0.0.1", port, "GET", path)
                self.assertEqual(status, 200, path + " must stay open for load balancers")
        self.assertIsNone(process.poll(), context)

    def test_basic_auth_off_loopback(self):
        process, log = self.start("basic", '[proxy]\nadmin = "0.0.0.0:0"\n\n[admin]\n'
                                  'user = "operator"\npassword = "correct-horse-battery"\n')
        line = log.wait_for(lambda l: (parse_log_line(l) or {}).get("role") == "admin"
                            and (parse_log_line(l) or {}).get("event") == "listening",
                            STARTUP_TIMEOUT, "event=listening role=admin")
        _, port = split_host_port(parse_log_line(line)["address"])
        context = "\n".join(log.snapshot()[-20:])
        good = "Basic " + base64.b64encode(b"operator:correct-horse-battery").decode()
        bad = "Basic " + base64.b64encode(b"operator:wrong-password-123").decode()
        status, headers, _ = http_request("127.0.0.1", port, "GET", "/")
        self.assertEqual(status, 401, context)
        # The browser asks for the password.
        self.assertTrue(headers.get("www-authenticate", "").lower().startswith("basic"), headers)
        status, _, _ = http_request("127.0.0.1", port, "GET", "/api/status",
                                    headers={"Authorization": bad})
        self.assertEqual(status, 401, context)
        for path in ("/", "/app.js", "/api/status", "/ca.pem"):
            with self.subTest(path=path):
                status, _, _ = http_request("127.0.0.1", port, "GET", path,
                                            headers={"Authorization": good})
                self.assertEqual(status, 200, context)
        status, _, _ = http_request("127.0.0.1", port, "GET", "/healthz")
        self.assertEqual(status, 200, context)

    def test_refuses_to_start_off_loopback_without_credentials(self):
        process, log = self.start("no-token", '[proxy]\nadmin = "0.0.0.0:0"\n')
        try:
            code = process.wait(STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        log.join(5)
        output = "\n".join(log.snapshot())
        self.assertIsNotNone(code, "tokgate started with an open admin listener on 0.0.0.0:\n"
                             + output)
        self.assertNotEqual(code, 0, output)
        self.assertIn("[admin]", output)
        self.assertNotIn("role=admin", output)


if __name__ == "__main__":
    unittest.main()
