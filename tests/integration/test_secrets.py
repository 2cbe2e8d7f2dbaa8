"""Secrets never leak into anything tokgate writes or serves.

One scenario per admin credential kind (a bearer token; a user and password), each on a tokgate
whose admin listener is on 0.0.0.0 (off loopback, so the credential is required), with a flow
log, HAR capture (default redaction), --log-level debug, and a CA made by `tokgate ca init`.
Traffic carrying secrets everywhere a client puts them: Cookie, Authorization,
Proxy-Authorization, X-Tt-Token, X-Argus, query values, a Set-Cookie in the response; over
intercepted HTTP/1.1 and HTTP/2, plain HTTP (captured and not), a blocked request, an origin
that refuses the connection and a malformed request. Then the admin API (right and wrong
credentials), /metrics, /api/events, `tokgate policy explain`, `ca show` / `ca export`, a
SIGHUP reload and a SIGTERM stop. Every file the run produced (the process output, flow log,
HAR files, saved API answers, explain and ca output) is searched for the CA private key (PEM lines, base64 chunks and hex of the
private scalar), the admin token, password and basic credential, and every traffic secret.
None may be found; each file must be non-empty and the redaction markers must be there, so the
search means something.

Also: `tokgate ca init` writes the key 0600, and `tokgate run` refuses a CA key that group or
others can read, with an error naming the file and never quoting the key; a config whose
[admin] token or password is rejected is reported without the value; and the key search itself
finds the key in each form it looks for (so a clean result is not a blind one).

Not asserted: `policy explain` (CLI and /api/explain) prints back the URL it was given, query
values included; that is the operator's own input, so query values are not searched for in
those outputs.

Real parts only: tokgate, curl, openssl, h2origin.mjs on loopback."""

import base64
import http.client
import json
import re
import secrets
import signal
import socket
import stat
import subprocess
import time
import unittest

from harness import (STARTUP_TIMEOUT, IntegrationTestCase, NodeOrigin, RawConnection, Tokgate,
                     clean_env, closed_port, curl, log_mark, policy_run_args, run,
                     tokgate_binary, tokgate_command, wait_for_record, wait_until)

HOST = "www.tiktok.com"
CURL_TIMEOUT = 20

POLICY = """\
[policy]
name = "secrets"

[[rules]]
name = "block-blocked"
action = "block"
match = { host = ["www.tiktok.com"], path = ["/blocked/*"] }

[[rules]]
name = "capture-tiktok"
action = "capture"
match = { host = ["www.tiktok.com"] }
"""


def unique(tag):
    """A secret value: recognisable in a failure message, unguessable, unique to this run."""
    return "%s-%s" % (tag, secrets.token_hex(12))


class Secrets:
    """Every secret of one scenario, by name."""

    def __init__(self):
        self.values = {name: unique(name) for name in (
            "cookie-sid", "cookie-theme", "authorization", "proxy-password", "tt-token",
            "argus", "query-token", "query-session", "set-cookie")}
        v = self.values
        self.headers = (
            "Cookie: sid=%s; theme=%s" % (v["cookie-sid"], v["cookie-theme"]),
            "Authorization: Bearer %s" % v["authorization"],
            "Proxy-Authorization: Basic %s" % base64.b64encode(
                ("proxyuser:%s" % v["proxy-password"]).encode()).decode(),
            "X-Tt-Token: %s" % v["tt-token"],
            "X-Argus: %s" % v["argus"],
        )
        # The proxy credential as it travels, too.
        v["proxy-basic"] = self.headers[2].split()[-1]
        # The last parameter makes the origin answer with Set-Cookie: sessionid=SECRET; Path=/.
        self.query = ("token=%s&session_key=%s&header-set-cookie=sessionid%%3D%s%%3B%%20Path"
                      "%%3D%%2F" % (v["query-token"], v["query-session"], v["set-cookie"]))
        self.query_names = ("query-token", "query-session", "set-cookie")


def ca_key_needles(key_path):
    """Strings that only a copy of the CA private key can contain: the PEM body lines and
    16-character base64 windows that encode bytes of the private scalar, and 16-digit chunks of
    the scalar in hex (plain and colon-separated). Windows over the fixed PKCS#8 header or the
    public key are left out: those are not secret (the public key is in the certificate)."""
    pem = key_path.read_text()
    body_lines = [l for l in pem.splitlines() if l and not l.startswith("-----")]
    b64 = "".join(body_lines)
    der = base64.b64decode(b64)
    text = run(["openssl", "pkey", "-in", key_path, "-noout", "-text"]).stdout.decode()
    priv = re.search(r"priv:\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
    assert priv, "openssl did not print the private scalar:\n" + text
    scalar = bytes.fromhex(re.sub(r"[\s:]", "", priv.group(1)))
    scalar = scalar.lstrip(b"\0") if der.find(scalar) < 0 else scalar
    offset = der.find(scalar)
    assert offset > 0 and len(scalar) >= 16, "scalar not found in the key's DER"
    first_char = offset // 3 * 4
    last_char = (offset + len(scalar) + 2) // 3 * 4
    needles = []
    for k in range(first_char, last_char - 16 + 1, 4):
        needles.append(("CA key base64 [%d:%d]" % (k, k + 16), b64[k:k + 16], "b64"))
    line_at = 0
    for number, line in enumerate(body_lines):
        if line_at < last_char and line_at + len(line) > first_char:
            needles.append(("CA key PEM line %d" % (number + 1), line, "b64"))
        line_at += len(line)
    hexed = scalar.hex()
    for k in range(0, len(hexed) - 16 + 1, 8):
        needles.append(("CA key hex [%d:%d]" % (k, k + 16), hexed[k:k + 16], "hex"))
    needles.append(("CA key raw scalar", scalar, "raw"))
    return needles


def search_file(path, needles):
    """[(file, needle name)] for every needle found in the file. "b64" needles are also looked
    for with whitespace and JSON escapes (\\n, \\/) removed (a re-wrapped or JSON-quoted PEM);
    "hex" needles case-insensitively, also with whitespace, colons and \\n removed (a wrapped
    dump); "raw" as bytes."""
    data = path.read_bytes()
    text = data.decode("latin-1")
    squeezed = re.sub(r"\s+|\\[nr]|\\/", "", text)
    lowered = text.lower()
    lowered_squeezed = re.sub(r"[\s:]+|\\[nr]", "", lowered)
    found = []
    for name, needle, kind in needles:
        if kind == "raw":
            hit = needle in data
        elif kind == "hex":
            hit = needle in lowered or needle in lowered_squeezed
        elif kind == "b64":
            hit = needle in text or needle in squeezed
        else:
            hit = needle in text
        if hit:
            found.append((str(path), name))
    return found


def http_get(host, port, path, headers=None, timeout=10.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class SecretsTest(IntegrationTestCase):
    """One Node origin (h2 + HTTP/1.1 over TLS) and one plain; a tokgate per scenario."""

    start_origin = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.node.stop)
        cls.plain = NodeOrigin(cls.pki, plain=True)
        cls.addClassCleanup(cls.plain.stop)

    # --- the scenario ------------------------------------------------------------------------

    def init_ca(self, ca_dir):
        result = tokgate_command("ca", "init", "--dir", ca_dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        mode = stat.S_IMODE((ca_dir / "ca.key").stat().st_mode)
        self.assertEqual(mode, 0o600, "ca.key after `tokgate ca init`: %o" % mode)
        return ca_dir

    def start(self, work, admin_config):
        """tokgate with the capture policy, a flow log, debug logging and the admin listener on
        0.0.0.0 with `admin_config` ([admin] lines)."""
        ca_dir = self.init_ca(work / "ca")
        policy = work / "policy.toml"
        policy.write_text(POLICY)
        config = ("[proxy]\nadmin = \"0.0.0.0:0\"\n\n[admin]\n%s\n[policy]\nwatch = false\n"
                  % admin_config)
        proxy = Tokgate(work, policy_run_args(policy=policy, extra=[
            "--flow-log", work / "flows.jsonl", "--capture-dir", work / "captures",
            "--log-level", "debug", "--admin", "0.0.0.0:0"]), config_text=config, ca_dir=ca_dir)
        self.addCleanup(self.stop_and_save, proxy, work)
        record = wait_for_record(proxy, STARTUP_TIMEOUT, event="listening", role="admin")
        host, _, port = record["address"].rpartition(":")
        self.assertEqual(host, "0.0.0.0", record)
        self.admin_port = int(port)
        self.inputs = {proxy.config_path, policy, ca_dir / "ca.key"}
        return proxy

    @staticmethod
    def stop_and_save(proxy, work):
        proxy.stop(signal.SIGKILL)
        save_log(proxy, work)

    def traffic(self, proxy, secret):
        """Requests carrying every secret, through every path tokgate logs differently."""
        headers = secret.headers
        tls_base = "https://%s:%d" % (HOST, self.node.port)
        for version in ("--http1.1", "--http2"):
            url = "%s/set-headers/secret%s?%s" % (tls_base, version[1:], secret.query)
            result = curl(url, proxy=proxy.url, cacert=proxy.ca_pem, args=[version],
                          headers=headers, timeout=CURL_TIMEOUT)
            self.assertEqual(result.status, 200, result.describe() + proxy.context())
            self.assertIn(secret.values["set-cookie"], result.header("set-cookie", ""),
                          "the origin did not set the cookie: " + result.describe())
        # Blocked (451) with the same secrets.
        result = curl("%s/blocked/secret?%s" % (tls_base, secret.query), proxy=proxy.url,
                      cacert=proxy.ca_pem, headers=headers, timeout=CURL_TIMEOUT)
        self.assertEqual(result.status, 451, result.describe() + proxy.context())
        # Plain HTTP through the proxy: captured (www.tiktok.com) and only logged (example.org).
        for host in (HOST, "example.org"):
            url = "http://%s:%d/set-headers/secret-plain?%s" % (host, self.plain.port,
                                                                secret.query)
            result = curl(url, proxy=proxy.url, headers=headers, timeout=CURL_TIMEOUT)
            self.assertEqual(result.status, 200, result.describe() + proxy.context())
        # An origin that refuses the connection: a 502 and an error line.
        sock, port = closed_port()
        try:
            result = curl("http://example.org:%d/refused?%s" % (port, secret.query),
                          proxy=proxy.url, headers=headers, timeout=CURL_TIMEOUT)
            self.assertEqual(result.status, 502, result.describe() + proxy.context())
        finally:
            sock.close()
        # A malformed request (a header line without a colon) after the secrets: a 400.
        with RawConnection(proxy.port) as raw:
            raw.send(("GET http://example.org:%d/bad?%s HTTP/1.1\r\nHost: example.org\r\n%s\r\n"
                      "this line has no colon\r\n\r\n" % (self.plain.port, secret.query,
                                                           "\r\n".join(headers))).encode())
            response = raw.read_response()
        self.assertIsNotNone(response, proxy.context())
        self.assertEqual(response.status, 400, proxy.context())
        # Every captured flow is on disk before the API is read.
        wait_until(lambda: len(list((proxy.workdir / "captures").glob("*.har"))) >= 3, 10.0,
                   "3 HAR files")

    def admin(self, proxy, out_dir, auth_header, wrong_headers, secret):
        """The admin listener: every API answer with the right credential saved to a file;
        wrong and missing credentials refused."""
        out_dir.mkdir()
        good = {"Authorization": auth_header}
        for name, headers in [("none", {})] + wrong_headers:
            status, body = http_get("127.0.0.1", self.admin_port, "/api/status", headers)
            self.assertEqual(status, 401, "/api/status with %s credentials: %r" % (name, body))
            (out_dir / ("denied-%s.txt" % name)).write_bytes(body)
        explain = "/api/explain?url=%s&header=%s&header=%s" % (
            quote("%s://%s/@someone?%s" % ("https", HOST, secret.query)),
            quote(secret.headers[0]), quote(secret.headers[1]))
        paths = ["/api/status", "/api/stats", "/api/flows", "/status", "/metrics", "/ca.pem",
                 "/healthz", "/readyz", explain]
        for path in paths:
            status, body = http_get("127.0.0.1", self.admin_port, path, good)
            self.assertEqual(status, 200, "%s: %r" % (path, body[:300]))
            self.assertTrue(body, path)
            name = re.sub(r"[^a-z0-9]+", "-", path.split("?")[0].lower()).strip("-")
            (out_dir / ("%s.txt" % name)).write_bytes(body)
        # Every record in detail (with its HAR when it has one).
        flows = json.loads((out_dir / "api-flows.txt").read_bytes())["flows"]
        self.assertGreaterEqual(len(flows), 6, flows)
        for record in flows:
            status, body = http_get("127.0.0.1", self.admin_port, "/api/flows/%d" % record["seq"],
                                    good)
            self.assertEqual(status, 200, body[:300])
            (out_dir / ("api-flow-%d.txt" % record["seq"])).write_bytes(body)
        self.assertTrue(any('"har"' in p.read_text() for p in out_dir.glob("api-flow-*.txt")),
                        "no /api/flows/SEQ answer carried its HAR")
        # The live stream: a couple of seconds of it, with one more request happening.
        (out_dir / "api-events.txt").write_bytes(self.read_events(proxy, good, secret))

    def read_events(self, proxy, headers, secret, seconds=2.5):
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=seconds) as sock:
            sock.sendall(("GET /api/events HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % "\r\n".join(
                "%s: %s" % kv for kv in headers.items())).encode())
            time.sleep(0.3)
            url = "https://%s:%d/set-headers/during-events?%s" % (HOST, self.node.port,
                                                                  secret.query)
            curl(url, proxy=proxy.url, cacert=proxy.ca_pem, headers=secret.headers,
                 timeout=CURL_TIMEOUT)
            data = b""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    piece = sock.recv(65536)
                except socket.timeout:
                    break
                if not piece:
                    break
                data += piece
        self.assertIn(b"event: flow", data)
        self.assertIn(b"during-events", data)
        return data

    def explain_cli(self, work, secret):
        """`tokgate policy explain` with the secrets, text and JSON, saved."""
        url = "https://%s/@someone?%s" % (HOST, secret.query)
        for name, extra in (("explain.txt", []), ("explain.json", ["--json"])):
            args = ["policy", "explain", "--url", url, "--policy", work / "policy.toml"]
            for header in secret.headers:
                args += ["--header", header]
            result = tokgate_command(*args, *extra)
            self.assertEqual(result.returncode, 0, result.stderr)
            (work / name).write_bytes(result.stdout + result.stderr)

    def ca_commands(self, work):
        """`tokgate ca show` and `ca export` of the running CA, saved: they print the
        certificate, never the key."""
        ca_dir = work / "ca"
        for name, args in (("ca-show.txt", ["ca", "show", "--dir", ca_dir]),
                           ("ca-export.pem", ["ca", "export", "--dir", ca_dir, "--format",
                                              "pem"])):
            result = tokgate_command(*args)
            self.assertEqual(result.returncode, 0, result.stderr)
            (work / name).write_bytes(result.stdout + result.stderr)

    def reload_and_stop(self, proxy):
        mark = log_mark(proxy)
        proxy.process.send_signal(signal.SIGHUP)
        wait_for_record(proxy, 10.0, start=mark, event="policy-reloaded")
        self.assertEqual(proxy.stop(signal.SIGTERM), 0, proxy.context())

    def produced_files(self, work):
        """Every regular file under `work` except the inputs this test wrote (config, policy)
        and the CA key itself."""
        return sorted(p for p in work.rglob("*") if p.is_file() and p not in self.inputs)

    def check_files(self, work, secret, extra_needles):
        files = self.produced_files(work)
        names = [str(p.relative_to(work)) for p in files]
        empty = [n for n, p in zip(names, files) if p.stat().st_size == 0]
        self.assertEqual(empty, [], "empty files: the search would mean nothing")
        for required in ("tokgate.log", "flows.jsonl", "explain.txt", "explain.json",
                         "ca-show.txt", "ca-export.pem",
                         "api/api-status.txt", "api/metrics.txt", "api/api-events.txt"):
            self.assertIn(required, names)
        self.assertGreaterEqual(len([n for n in names if n.endswith(".har")]), 3, names)
        # The secrets' places were written, redacted: the search is not vacuous.
        flow_log = (work / "flows.jsonl").read_text()
        self.assertIn("token=REDACTED&session_key=REDACTED", flow_log)
        self.assertIn("/set-headers/secret-plain", flow_log)
        for har in work.glob("captures/*.har"):
            text = har.read_text()
            self.assertIn('"REDACTED"', text, har)
            self.assertRegex(text, r'(?i)"name": ?"cookie"', har)
        log = (work / "tokgate.log").read_text()
        self.assertIn("event=request ", log)
        self.assertIn("/set-headers/secret", log)

        needles = [(name, value, "text") for name, value in secret.values.items()]
        needles += extra_needles
        needles += ca_key_needles(work / "ca" / "ca.key")
        leaks = []
        for path in files:
            wanted = needles
            if path.name in ("explain.txt", "explain.json", "api-explain.txt"):
                # explain prints back the URL it was given, query included: the operator's
                # own input, not traffic (reported, not asserted; see the module docstring).
                wanted = [n for n in needles if n[0] not in secret.query_names]
            leaks += search_file(path, wanted)
        self.assertEqual(leaks, [], "secrets found in files tokgate produced or served")
        return names

    # --- tests -------------------------------------------------------------------------------

    def test_admin_token_scenario(self):
        work = self.scratch_dir("token")
        token = unique("admin-token")
        proxy = self.start(work, 'token = "%s"\n' % token)
        secret = Secrets()
        self.traffic(proxy, secret)
        self.admin(proxy, work / "api", "Bearer " + token,
                   [("wrong", {"Authorization": "Bearer " + unique("not-the-token")}),
                    ("basic", {"Authorization": "Basic " + base64.b64encode(
                        ("admin:" + token).encode()).decode()})], secret)
        self.explain_cli(work, secret)
        self.ca_commands(work)
        self.reload_and_stop(proxy)
        save_log(proxy, work)
        names = self.check_files(work, secret, [("admin token", token, "text")])
        print("\nsecrets (token): searched %d files: %s" % (len(names), ", ".join(names)))

    def test_admin_password_scenario(self):
        work = self.scratch_dir("password")
        password = unique("admin-password")
        credential = base64.b64encode(("operator:" + password).encode()).decode()
        proxy = self.start(work, 'user = "operator"\npassword = "%s"\n' % password)
        secret = Secrets()
        self.traffic(proxy, secret)
        wrong = base64.b64encode(("operator:" + unique("wrong")).encode()).decode()
        self.admin(proxy, work / "api", "Basic " + credential,
                   [("wrong", {"Authorization": "Basic " + wrong}),
                    ("bearer", {"Authorization": "Bearer " + password})], secret)
        self.explain_cli(work, secret)
        self.ca_commands(work)
        self.reload_and_stop(proxy)
        save_log(proxy, work)
        names = self.check_files(work, secret, [("admin password", password, "text"),
                                                ("admin basic credential", credential, "text")])
        print("\nsecrets (password): searched %d files: %s" % (len(names), ", ".join(names)))


def save_log(proxy, work):
    """Everything tokgate printed (stdout and stderr), as a file of the run."""
    (work / "tokgate.log").write_text("\n".join(proxy.log.snapshot()) + "\n")


def quote(text):
    from urllib.parse import quote as url_quote
    return url_quote(text, safe="")


class KeyAndCredentialTest(IntegrationTestCase):
    """The CA key is private: 0600 from `ca init`; a run refuses a key group or others can
    read. Rejected admin credentials are never echoed. And the key search finds the key."""

    start_origin = False

    def test_refuses_a_readable_ca_key(self):
        ca_dir = self.tmp / "ca"
        result = tokgate_command("ca", "init", "--dir", ca_dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        key = ca_dir / "ca.key"
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        needles = ca_key_needles(key)
        for mode in (0o644, 0o640, 0o604):
            with self.subTest(mode="%o" % mode):
                key.chmod(mode)
                try:
                    process = subprocess.run(
                        [str(tokgate_binary()), "run", "--ca-dir", str(ca_dir), "--listen",
                         "127.0.0.1:0", "--admin", "127.0.0.1:0"],
                        capture_output=True, timeout=STARTUP_TIMEOUT, env=clean_env(),
                        stdin=subprocess.DEVNULL, cwd=str(self.tmp))
                except subprocess.TimeoutExpired as expired:
                    self.fail("tokgate ran with a CA key of mode %o: %s" % (
                        mode, (expired.stderr or b"")[-2000:]))
                finally:
                    key.chmod(0o600)
                output = (process.stdout + process.stderr).decode(errors="replace")
                self.assertEqual(process.returncode, 1, output)
                self.assertNotIn("event=listening", output)
                # Clear: names the file, says what is wrong and how to fix it.
                self.assertIn(str(key), output)
                self.assertRegex(output, r"group or others|readable|permission|mode")
                self.assertIn("%04o" % mode, output)
                self.assertIn("chmod 600", output)
                scratch = self.tmp / ("refusal-%o.txt" % mode)
                scratch.write_text(output)
                self.assertEqual(search_file(scratch, needles), [], output)
        # Back to 0600, it starts (the refusal was about the mode, not the key).
        proxy = Tokgate(self.tmp / "ok", ["--connect-ports", "443"], ca_dir=ca_dir)
        self.addCleanup(proxy.stop, signal.SIGKILL)
        self.assertIsNone(proxy.process.poll(), proxy.context())

    def test_config_errors_never_echo_credentials(self):
        """A rejected [admin] token or password is reported by position and key, never by
        value."""
        token, password = 'token = "%s"\n', 'user = "op"\npassword = "%s"\n'
        cases = (
            ("token", token, unique("t")[:15]),                              # too short
            ("token", token, "%s %s" % (unique("t"), unique("u"))),          # a space
            ("password", password, unique("p")[:11]),                        # too short
            ("password", password, "%s %s" % (unique("p"), unique("q"))),    # a space
        )
        for number, (key, template, value) in enumerate(cases):
            with self.subTest(key=key, value=value):
                config = self.tmp / ("bad-%d.toml" % number)
                config.write_text("[admin]\n" + template % value)
                result = tokgate_command("run", "--config", config, "--listen", "127.0.0.1:0",
                                         "--admin", "127.0.0.1:0", "--ca-dir",
                                         self.tmp / "unused-ca", timeout=STARTUP_TIMEOUT)
                output = (result.stdout + result.stderr).decode(errors="replace")
                self.assertEqual(result.returncode, 2, output)
                self.assertIn("admin.%s" % key, output)
                self.assertNotIn(value, output)
                for word in value.split():
                    self.assertNotIn(word, output)

    def test_key_search_finds_copies_of_the_key(self):
        """The search itself: each kind of CA key needle is found in a copy of the key in that
        form (the PEM file, the PEM quoted in JSON, openssl's hex dump, the DER), and none in
        the certificate (public), so a clean result above means no copy was there."""
        ca_dir = self.tmp / "needles"
        result = tokgate_command("ca", "init", "--dir", ca_dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        key = ca_dir / "ca.key"
        needles = ca_key_needles(key)
        by_kind = {}
        for needle in needles:
            by_kind.setdefault(needle[2], []).append(needle)
        self.assertGreaterEqual(len(by_kind.get("b64", [])), 6, needles)
        self.assertGreaterEqual(len(by_kind.get("hex", [])), 6, needles)
        pem = key.read_text()
        copies = {
            "b64": [key, self.write("key.json", json.dumps({"key": pem}))],
            "hex": [self.write("key.txt", run(["openssl", "pkey", "-in", key, "-noout",
                                                "-text"]).stdout.decode())],
            "raw": [self.write("key.der", run(["openssl", "pkey", "-in", key, "-outform",
                                                "DER"]).stdout)],
        }
        for kind, paths in copies.items():
            for path in paths:
                with self.subTest(kind=kind, copy=path.name):
                    found = {name for _, name in search_file(path, by_kind[kind])}
                    self.assertEqual(found, {n[0] for n in by_kind[kind]})
        self.assertEqual(search_file(ca_dir / "ca.pem", needles), [])

    def write(self, name, content):
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

if __name__ == "__main__":
    unittest.main()
