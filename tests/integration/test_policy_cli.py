"""The policy engine without a network: `tokgate policy check`, `tokgate policy explain` (text,
--json, --batch from a file and from stdin) and `tokgate catalog export` (hosts, dnsmasq, RPZ,
PAC evaluated with node when it is installed)."""

import json
import re
import shutil
import subprocess
import unittest

from harness import (REPO_ROOT, TIKTOK_APP_HOST, UA_SAFARI_IOS, UA_TIKTOK_IN_APP_IOS,
                     IntegrationTestCase, clean_env, describe_command, profile_rule_for,
                     tokgate_command)

EXIT_OK, EXIT_USAGE = 0, 2

GOOD_POLICY = """\
[policy]
name = "cli-good"
organisation = "CLI tests"
default_action = "allow"
block_message = "no"
on_pinned = "splice"
pinned_memory = "90s"

[intercept]
mode = "targets"
exempt = [".bank.example"]

[client_groups]
lab = ["10.1.0.0/16", "2001:db8::/32"]

[[rules]]
name = "block-signed"
action = "block"
message = "signed clients are blocked"
match = { header = ["X-Gorgon"], client = ["@lab"] }

[[rules]]
name = "log-tiktok"
action = "log"
match = { category = ["web", "app-api"] }
"""

# Errors on lines 4 (unknown action), 8 (unknown category), 14 (path without '/'),
# 15 (unknown key), 18 (duplicate rule name), 20 (unknown client group).
BAD_POLICY = """\
[policy]
name = "cli-bad"
organisation = "CLI tests"
default_action = "explode"

[[rules]]
name = "one"
match = { category = ["tiktok_web"] }
action = "block"

[[rules]]
name = "two"
action = "log"
match = { path = ["no-slash"] }
colour = "red"

[[rules]]
name = "one"
action = "allow"
match = { client = ["@nobody"] }
"""
BAD_POLICY_LINES = (4, 8, 14, 15, 18, 20)

SYNTAX_ERROR_POLICY = """\
[policy]
name = "cli-syntax"
default_action = "allow
"""

WEB_RULE = profile_rule_for("gateway", "web")[0]
APP_RULE = profile_rule_for("gateway", "app-api")[0]
IN_APP_RULE = profile_rule_for("gateway", "in-app-browser")[0]
OBSERVE_WEB_RULE = profile_rule_for("observe", "web")[0]

PAC_HARNESS = r"""
// The PAC helpers a browser defines (enough of them for a generated PAC file).
function dnsDomainIs(host, domain) {
  return host.length >= domain.length && host.substring(host.length - domain.length) === domain;
}
function shExpMatch(str, pattern) {
  var re = new RegExp('^' + pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&')
                                   .replace(/\*/g, '.*').replace(/\?/g, '.') + '$');
  return re.test(str);
}
function isPlainHostName(host) { return host.indexOf('.') === -1; }
function localHostOrDomainIs(host, hostdom) {
  return host === hostdom || hostdom.lastIndexOf(host + '.', 0) === 0;
}
function isInNet(host, pattern, mask) { return false; }
function isResolvable(host) { return false; }
function dnsResolve(host) { return null; }
function myIpAddress() { return '127.0.0.1'; }
function dnsDomainLevels(host) { return host.split('.').length - 1; }
function weekdayRange() { return true; }
function dateRange() { return true; }
function timeRange() { return true; }
function alert() {}

const fs = require('fs');
const pac = fs.readFileSync(process.argv[2], 'utf8');
eval(pac);
const hosts = JSON.parse(process.argv[3]);
const out = {};
for (const host of hosts) out[host] = FindProxyForURL('https://' + host + '/', host);
process.stdout.write(JSON.stringify(out));
"""


def explain(*args, input=None):  # noqa: A002
    return tokgate_command("policy", "explain", *args, input=input)


class PolicyCheckTest(IntegrationTestCase):
    start_origin = False

    def write(self, name, text):
        path = self.tmp / name
        path.write_text(text)
        return path

    def test_good_file(self):
        path = self.write("good.toml", GOOD_POLICY)
        result = tokgate_command("policy", "check", path)
        self.assertEqual(result.returncode, EXIT_OK, describe_command(result))
        self.assertIn("ok", result.stdout.decode().lower(), describe_command(result))
        self.assertEqual(result.stderr.strip(), b"", describe_command(result))

    def test_shipped_profiles_check(self):
        profiles = sorted((REPO_ROOT / "policy" / "profiles").glob("*.toml"))
        self.assertTrue(profiles, "no shipped profiles")
        self.assertIn("gateway.toml", [p.name for p in profiles])
        self.assertIn("observe.toml", [p.name for p in profiles])
        for path in profiles:
            with self.subTest(profile=path.name):
                result = tokgate_command("policy", "check", path)
                self.assertEqual(result.returncode, EXIT_OK, describe_command(result))
                self.assertIn("ok", result.stdout.decode().lower())

    def test_every_error_with_position(self):
        path = self.write("bad.toml", BAD_POLICY)
        result = tokgate_command("policy", "check", path)
        context = describe_command(result)
        self.assertEqual(result.returncode, EXIT_USAGE, context)
        lines = [l for l in result.stderr.decode().splitlines() if l.strip()]
        position = re.compile(re.escape(str(path)) + r":(\d+):(\d+): \S")
        reported = set()
        for line in lines:
            match = position.match(line)
            if match:
                reported.add(int(match.group(1)))
                self.assertGreater(int(match.group(2)), 0, line)
        for line_number in BAD_POLICY_LINES:
            self.assertIn(line_number, reported, "no error reported for line %d\n%s"
                          % (line_number, context))
        self.assertNotIn(b"ok", result.stdout.lower(), context)
        stderr = result.stderr.decode()
        for word in ("explode", "tiktok_web", "no-slash", "colour", "@nobody"):
            self.assertIn(word, stderr, context)
        self.assertIn("app-api", stderr, "the category error lists the known ones")

    def test_syntax_error(self):
        path = self.write("syntax.toml", SYNTAX_ERROR_POLICY)
        result = tokgate_command("policy", "check", path)
        self.assertEqual(result.returncode, EXIT_USAGE, describe_command(result))
        self.assertRegex(result.stderr.decode(), re.escape(str(path)) + r":3:\d+: ")

    def test_missing_file(self):
        result = tokgate_command("policy", "check", self.tmp / "does-not-exist.toml")
        self.assertNotEqual(result.returncode, EXIT_OK, describe_command(result))
        self.assertIn(b"does-not-exist.toml", result.stderr)

    def test_usage_errors(self):
        for args in (("policy", "check"), ("policy", "frobnicate"),
                     ("policy", "explain"), ("policy", "explain", "--url", "not a url"),
                     ("catalog", "export", "--format", "bind9"),
                     ("catalog", "export", "--format", "hosts", "--category", "tiktok")):
            with self.subTest(args=args):
                result = tokgate_command(*args)
                self.assertEqual(result.returncode, EXIT_USAGE, describe_command(result))
                self.assertTrue(result.stderr.strip(), describe_command(result))

    def test_help(self):
        for args in (("policy", "--help"), ("catalog", "--help")):
            with self.subTest(args=args):
                result = tokgate_command(*args)
                self.assertEqual(result.returncode, EXIT_OK, describe_command(result))
                self.assertTrue(result.stdout.strip())
        self.assertIn(b"--profile", tokgate_command("run", "--help").stdout)
        self.assertIn(b"--policy", tokgate_command("run", "--help").stdout)


class PolicyExplainTest(IntegrationTestCase):
    start_origin = False

    def explain_json(self, *args):
        result = explain(*args, "--json")
        context = describe_command(result)
        self.assertEqual(result.returncode, EXIT_OK, context)
        lines = [l for l in result.stdout.decode().splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, "--json prints one object\n" + context)
        out = json.loads(lines[0])
        for key in ("category", "evidence", "rule", "action", "host", "decided_by", "message",
                    "connection"):
            self.assertIn(key, out, context)
        for key in ("verdict", "category", "rule"):
            self.assertIn(key, out["connection"], context)
        for evidence in out["evidence"]:
            self.assertEqual(set(evidence) >= {"kind", "signature", "matched", "category"}, True,
                             evidence)
        return out

    def test_in_app_browser_on_third_party_site(self):
        out = self.explain_json("--url", "https://shop.example.com/product/42?utm_source=x",
                                "--ua", UA_TIKTOK_IN_APP_IOS)
        self.assertEqual(out["category"], "in-app-browser", out)
        self.assertEqual(out["host"], "shop.example.com", out)
        self.assertEqual((out["rule"], out["action"]), (IN_APP_RULE, "block"), out)
        kinds = {(e["kind"].replace("_", "-"), e["category"]) for e in out["evidence"]}
        self.assertIn(("user-agent", "in-app-browser"), kinds, out)
        self.assertTrue(any("musical_ly" in e["matched"] or "Bytedance" in e["matched"]
                            for e in out["evidence"]), out)
        # The host alone is nothing: the connection stage would splice it (targets mode).
        self.assertEqual(out["connection"]["verdict"], "splice", out)
        self.assertEqual(out["connection"]["category"], "none", out)

        plain = self.explain_json("--url", "https://shop.example.com/product/42",
                                  "--ua", UA_SAFARI_IOS)
        self.assertEqual((plain["category"], plain["rule"], plain["action"]),
                         ("none", None, "allow"), plain)

    def test_website_profile_page(self):
        out = self.explain_json("--url", "https://www.tiktok.com/@someuser")
        self.assertEqual(out["category"], "web", out)
        self.assertEqual((out["rule"], out["action"]), (WEB_RULE, "block"), out)
        self.assertTrue(out["message"], out)
        self.assertTrue(out["decided_by"], out)
        self.assertIn("host", {e["kind"] for e in out["evidence"]}, out)
        self.assertEqual(out["connection"]["verdict"], "intercept", out)
        self.assertEqual(out["connection"]["category"], "web", out)

        observe = self.explain_json("--url", "https://www.tiktok.com/@someuser",
                                    "--profile", "observe")
        self.assertEqual((observe["rule"], observe["action"]), (OBSERVE_WEB_RULE, "log"), observe)

    def test_app_api(self):
        out = self.explain_json("--url", "https://%s/aweme/v1/feed/?aid=1233" % TIKTOK_APP_HOST,
                                "--ua", "com.zhiliaoapp.musically/2023405020 (Linux; U; "
                                "Android 14; en_US; Pixel 8; Build/AP1A; Cronet/TTNetVersion)")
        self.assertEqual(out["category"], "app-api", out)
        self.assertEqual(out["rule"], APP_RULE, out)
        self.assertEqual(out["action"], "refuse", out)
        self.assertEqual(out["connection"]["verdict"], "refuse", out)
        self.assertEqual(out["connection"]["rule"], APP_RULE, out)

    def test_look_alike_is_none(self):
        for url in ("https://nottiktok.com/", "https://tiktok.com.evil.example/",
                    "https://www.google.com/search?q=tiktok"):
            with self.subTest(url=url):
                out = self.explain_json("--url", url)
                self.assertEqual(out["category"], "none", out)
                self.assertIsNone(out["rule"], out)
                self.assertEqual(out["action"], "allow", out)
                self.assertIsNone(out["connection"]["rule"], out)
                self.assertEqual(out["connection"]["verdict"], "splice", out)
                self.assertFalse([e for e in out["evidence"] if e["category"] != "none"], out)

    def test_headers_client_and_policy_file(self):
        path = self.tmp / "explain-policy.toml"
        path.write_text(GOOD_POLICY)
        args = ("--url", "https://example.com/x", "--policy", path)
        signed = self.explain_json(*args, "--header", "X-Gorgon: 0404abcd", "--client",
                                   "10.1.2.3")
        self.assertEqual((signed["rule"], signed["action"]), ("block-signed", "block"), signed)
        self.assertEqual(signed["message"], "signed clients are blocked", signed)
        outside = self.explain_json(*args, "--header", "X-Gorgon: 0404abcd", "--client",
                                    "192.0.2.1")
        self.assertEqual((outside["rule"], outside["action"]), (None, "allow"), outside)
        web = self.explain_json("--url", "https://www.tiktok.com/", "--policy", path,
                                "--method", "POST")
        self.assertEqual((web["rule"], web["action"]), ("log-tiktok", "log"), web)

    def test_text_output(self):
        result = explain("--url", "https://example.org/landing", "--ua", UA_TIKTOK_IN_APP_IOS)
        context = describe_command(result)
        self.assertEqual(result.returncode, EXIT_OK, context)
        text = result.stdout.decode()
        self.assertIn("in-app-browser", text, context)
        self.assertIn(IN_APP_RULE, text, context)
        self.assertIn("block", text, context)
        self.assertIn("example.org", text, context)
        with self.assertRaises(ValueError):
            json.loads(text)

    # --- batch ----------------------------------------------------------------------------------

    BATCH = [
        {"id": 1, "url": "https://www.tiktok.com/@user"},
        {"id": "two", "host": TIKTOK_APP_HOST, "path": "/aweme/v1/feed/"},
        {"id": 3, "url": "https://example.org/", "user_agent": UA_TIKTOK_IN_APP_IOS},
        {"id": 4, "url": "https://example.org/", "headers": {"User-Agent": UA_SAFARI_IOS}},
        {"id": 5, "path": "/no/host/or/url"},
        {"id": 6, "url": "https://nottiktok.com/", "method": "POST", "client": "10.1.2.3"},
        {"id": 7, "url": "https://example.net/", "client": "not-an-ip"},
    ]
    EXPECTED = {1: "web", "two": "app-api", 3: "in-app-browser", 4: "none", 6: "none"}
    BAD_IDS = (5, 7)

    def check_batch(self, stdout, extra_bad_lines=0):
        lines = [l for l in stdout.decode().splitlines() if l.strip()]
        self.assertEqual(len(lines), len(self.BATCH) + extra_bad_lines, stdout)
        outputs = [json.loads(l) for l in lines]
        by_id = {}
        for out in outputs:
            if "id" in out:
                by_id[out["id"]] = out
        self.assertEqual([o.get("id") for o in outputs if "id" in o],
                         [line["id"] for line in self.BATCH], "ids not echoed in order")
        for key, category in self.EXPECTED.items():
            self.assertNotIn("error", by_id[key], by_id[key])
            self.assertEqual(by_id[key]["category"], category, by_id[key])
        for key in self.BAD_IDS:
            self.assertIn("error", by_id[key], by_id[key])
            self.assertTrue(by_id[key]["error"], by_id[key])
        self.assertIsNone(by_id[6]["rule"], by_id[6])
        return outputs

    def test_batch_file(self):
        path = self.tmp / "batch.jsonl"
        lines = [json.dumps(line) for line in self.BATCH]
        lines.insert(4, "{this is not json")
        lines.insert(2, "")  # blank lines are skipped
        path.write_text("\n".join(lines) + "\n")
        result = explain("--batch", path)
        self.assertEqual(result.returncode, EXIT_OK, describe_command(result))
        outputs = self.check_batch(result.stdout, extra_bad_lines=1)
        self.assertTrue(any("error" in o and "id" not in o for o in outputs), outputs)

    def test_batch_stdin(self):
        data = "".join(json.dumps(line) + "\n" for line in self.BATCH).encode()
        result = explain("--batch", "-", "--profile", "observe", input=data)
        self.assertEqual(result.returncode, EXIT_OK, describe_command(result))
        outputs = self.check_batch(result.stdout)
        web = [o for o in outputs if o.get("id") == 1][0]
        self.assertEqual((web["rule"], web["action"]), (OBSERVE_WEB_RULE, "log"), web)

    def test_batch_many_lines(self):
        """A labelled corpus of 2,000 lines goes through in one process."""
        data = "".join(json.dumps({"id": i, "host": "api%d-normal-c-useast1a.tiktokv.com" % i,
                                   "path": "/aweme/v1/feed/"}) + "\n"
                       for i in range(2000)).encode()
        result = explain("--batch", "-", input=data)
        self.assertEqual(result.returncode, EXIT_OK, describe_command(result))
        outputs = [json.loads(l) for l in result.stdout.decode().splitlines()]
        self.assertEqual([o["id"] for o in outputs], list(range(2000)))
        self.assertEqual({o["category"] for o in outputs}, {"app-api"})


class CatalogExportTest(IntegrationTestCase):
    start_origin = False

    def export(self, *args):
        result = tokgate_command("catalog", "export", *args)
        self.assertEqual(result.returncode, EXIT_OK, describe_command(result))
        return result.stdout.decode()

    def test_hosts(self):
        text = self.export("--format", "hosts")
        entries = {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            self.assertGreaterEqual(len(fields), 2, line)
            self.assertRegex(fields[0], r"^(0\.0\.0\.0|127\.0\.0\.1|::|::1|[0-9.]+)$", line)
            for name in fields[1:]:
                self.assertRegex(name, r"^[a-z0-9.-]+$", line)
                entries[name] = fields[0]
        self.assertIn("tiktokv.com", entries)
        # A hosts file matches exact names: the domain itself is listed (subdomains cannot be).
        self.assertIn("tiktok.com", entries)
        self.assertNotIn("nottiktok.com", entries)
        self.assertNotIn("apps.apple.com", entries, "a shared store host in a blocklist")
        sinkholed = self.export("--format", "hosts", "--sinkhole", "127.0.0.9")
        first = [l for l in sinkholed.splitlines() if l.strip() and not l.startswith("#")][0]
        self.assertTrue(first.startswith("127.0.0.9"), first)

    def test_dnsmasq(self):
        text = self.export("--format", "dnsmasq")
        self.assertRegex(text, r"(?m)^address=/tiktokv\.com/")
        self.assertRegex(text, r"(?m)^address=/tiktok\.com/")
        self.assertNotIn("/nottiktok.com/", text)
        for line in text.splitlines():
            if line.strip() and not line.startswith("#"):
                self.assertRegex(line, r"^(address|server|local)=/[a-z0-9.-]+/", line)

    def test_rpz(self):
        text = self.export("--format", "rpz")
        self.assertRegex(text, r"(?m)\bSOA\b")
        self.assertRegex(text, r"(?m)^\$TTL\s+\d+|\bIN\s+SOA\b|\bSOA\b")
        self.assertRegex(text, r"(?m)^\*\.tiktokv\.com\.?\s+(\d+\s+)?(IN\s+)?CNAME\s+\.\s*$")
        self.assertRegex(text, r"(?m)^tiktokv\.com\.?\s+(\d+\s+)?(IN\s+)?CNAME\s+\.\s*$")
        self.assertNotRegex(text, r"(?m)^(\*\.)?nottiktok\.com")
        checkzone = shutil.which("named-checkzone")
        if checkzone:
            path = self.tmp / "rpz.zone"
            path.write_text(text)
            result = subprocess.run([checkzone, "rpz.test", str(path)], capture_output=True,
                                    env=clean_env(), timeout=30)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_category_filter(self):
        text = self.export("--format", "dnsmasq", "--category", "app-api")
        self.assertIn("/tiktokv.com/", text)
        self.assertNotRegex(text, r"/(www\.)?tiktok\.com/")
        both = self.export("--format", "dnsmasq", "--category", "app-api", "--category", "web")
        self.assertIn("/tiktokv.com/", both)
        self.assertIn("/tiktok.com/", both)
        wechat = self.export("--format", "dnsmasq", "--category", "wechat")
        self.assertNotIn("tiktok", wechat)
        self.assertTrue([l for l in wechat.splitlines() if l.startswith("address=")], wechat)

    def test_out_file(self):
        path = self.tmp / "export.hosts"
        result = tokgate_command("catalog", "export", "--format", "hosts", "--out", path)
        self.assertEqual(result.returncode, EXIT_OK, describe_command(result))
        self.assertIn("tiktokv.com", path.read_text())
        self.assertNotIn(b"tiktokv.com", result.stdout)

    def test_pac(self):
        text = self.export("--format", "pac", "--proxy", "127.0.0.1:3128")
        self.assertIn("function FindProxyForURL", text)
        self.assertIn("PROXY 127.0.0.1:3128", text)
        node = shutil.which("node") or shutil.which("nodejs")
        if not node:
            self.skipTest("node is not installed: the PAC file is not evaluated")
        pac = self.tmp / "tokgate.pac"
        pac.write_text(text)
        script = self.tmp / "pac-eval.js"
        script.write_text(PAC_HARNESS)
        hosts = ["www.tiktok.com", "tiktok.com", TIKTOK_APP_HOST, "v16-webapp.tiktok.com",
                 "nottiktok.com", "tiktok.com.evil.example", "example.org", "localhost"]
        result = subprocess.run([node, str(script), str(pac), json.dumps(hosts)],
                                capture_output=True, env=clean_env(), timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        answers = json.loads(result.stdout)
        for host in ("www.tiktok.com", "tiktok.com", TIKTOK_APP_HOST, "v16-webapp.tiktok.com"):
            self.assertIn("PROXY 127.0.0.1:3128", answers[host], (host, answers))
        for host in ("nottiktok.com", "tiktok.com.evil.example", "example.org", "localhost"):
            self.assertEqual(answers[host].strip(), "DIRECT", (host, answers))


if __name__ == "__main__":
    unittest.main()
