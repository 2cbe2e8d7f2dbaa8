"""tokgate as a transparent gateway (issue 7): `--transparent ADDR:PORT`.

Three network namespaces made by the test (random suffix, always removed):

    client (10.77.1.2 + .3, fd77:1::2)
        -- gateway (10.77.1.1 | 10.77.2.1, fd77:1::1 | fd77:2::1)
            -- origin (10.77.2.2 + .3, fd77:2::2 + ::3)

The client's default routes go through the gateway, which forwards. On the gateway, nftables
REDIRECTs the client's TCP 80/443/8443 to the origin's first addresses (10.77.2.2, fd77:2::2) to
tokgate's transparent listeners (0.0.0.0:8443 and [::]:8443: SO_ORIGINAL_DST gives the original
destination), and TPROXYs TCP 443 to the origin's second addresses (10.77.2.3, fd77:2::3) to the
same listeners (the socket's local address is the original destination). The client never
names a proxy: curl connects to the origin's address, the name comes from the TLS SNI (or the
Host header on port 80), and tokgate connects to the address the client chose (the gateway has
no name resolution for these names at all).

The origin is h2origin.mjs (HTTPS on 443 and 8443, both h2 and HTTP/1.1, with the test PKI's
certificate for www.tiktok.com, example.org and api16-normal-c-useast1a.tiktokv.com) plus its
cleartext HTTP mode on port 80. The policy intercepts www.tiktok.com (logging it, with one path
blocked), splices example.org and refuses the TikTok app's API host. Only 10.77.1.2 and
fd77:1::2 are allowed clients (10.77.1.3 is the outsider). One tokgate serves the whole class;
every test checks that it is still running.
"""

import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from harness import (STARTUP_TIMEOUT, LineCollector, CurlResult, cert_info, clean_env,
                     make_tempdir, node_binary, parse_header_blocks, parse_log_line,
                     remove_tree, shared_pki, split_host_port, tokgate_binary, wait_until,
                     H2ORIGIN_SCRIPT)

CLIENT4, CLIENT6 = "10.77.1.2", "fd77:1::2"
OUTSIDER4 = "10.77.1.3"       # also the client namespace's, but outside --allow-client
GW_CLIENT_SIDE4, GW_CLIENT_SIDE6 = "10.77.1.1", "fd77:1::1"
GW_ORIGIN_SIDE4, GW_ORIGIN_SIDE6 = "10.77.2.1", "fd77:2::1"
ORIGIN4, ORIGIN6 = "10.77.2.2", "fd77:2::2"            # reached through REDIRECT
TPROXY_ORIGIN4, TPROXY_ORIGIN6 = "10.77.2.3", "fd77:2::3"  # reached through TPROXY
LISTEN_PORT = 8443

WEB_HOST = "www.tiktok.com"
SPLICE_HOST = "example.org"
REFUSE_HOST = "api16-normal-c-useast1a.tiktokv.com"

POLICY = """\
[policy]
name = "transparent-test"

[[rules]]
name = "splice-example"
action = "splice"
match = { host = ["example.org"] }

[[rules]]
name = "refuse-app"
action = "refuse"
match = { host = ["api16-normal-c-useast1a.tiktokv.com"] }

[[rules]]
name = "block-path"
action = "block"
match = { host = ["www.tiktok.com"], path = ["/blocked/*"] }

[[rules]]
name = "log-tiktok"
action = "log"
match = { host = ["www.tiktok.com"] }
"""

REDIRECT_RULES = """\
table inet tokgate_redirect {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "veth-gw-c" ip daddr %(o4)s tcp dport { 80, 443, %(port)d } redirect to :%(port)d
        iifname "veth-gw-c" ip6 daddr %(o6)s tcp dport { 80, 443, %(port)d } redirect to :%(port)d
    }
}
""" % {"o4": ORIGIN4, "o6": ORIGIN6, "port": LISTEN_PORT}

TPROXY_RULES = """\
table inet tokgate_tproxy {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        iifname "veth-gw-c" ip daddr %(o4)s tcp dport 443 tproxy ip to :%(port)d meta mark set 0x77 accept
        iifname "veth-gw-c" ip6 daddr %(o6)s tcp dport 443 tproxy ip6 to :%(port)d meta mark set 0x77 accept
    }
}
""" % {"o4": TPROXY_ORIGIN4, "o6": TPROXY_ORIGIN6, "port": LISTEN_PORT}

PROBE = """\
import socket
try:
    socket.create_connection((%r, %d), timeout=3).close()
    print("connected")
except OSError as error:
    print(type(error).__name__)
"""

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def ip(*args, check=True, timeout=20):
    result = subprocess.run(["ip", *[str(a) for a in args]], capture_output=True,
                            timeout=timeout, env=clean_env())
    if check and result.returncode != 0:
        raise AssertionError("ip %s failed (%d): %s" % (
            " ".join(map(str, args)), result.returncode,
            result.stderr.decode(errors="replace")))
    return result


def in_ns(ns, *cmd, check=True, timeout=20, input=None):  # noqa: A002
    result = subprocess.run(["ip", "netns", "exec", ns, *[str(c) for c in cmd]],
                            capture_output=True, timeout=timeout, env=clean_env(), input=input)
    if check and result.returncode != 0:
        raise AssertionError("in %s: %s failed (%d): %s%s" % (
            ns, " ".join(map(str, cmd)), result.returncode,
            result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")))
    return result


def bracket(address):
    return "[%s]" % address if ":" in address else address


def same_ip(text, address):
    """`text` is `address` (a Node peer may be v4-mapped: ::ffff:10.77.2.1)."""
    return text == address or text == "::ffff:" + address


class NsProcess:
    """A long-running process inside a namespace (`ip netns exec` execs it, so the PID is the
    program's own); its stdout+stderr lines are collected."""

    def __init__(self, ns, cmd, name):
        self.name = name
        self.cmd = ["ip", "netns", "exec", ns] + [str(c) for c in cmd]
        self.process = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=clean_env())
        self.log = LineCollector(self.process.stdout, name)
        self.exit_expected = False

    def stop(self):
        self.exit_expected = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.join(5)
        self.process.stdout.close()

    def tail(self, lines=40):
        return "\n".join(self.log.snapshot()[-lines:])


class NsOrigin(NsProcess):
    """h2origin.mjs in the origin namespace, bound to every address (`--host ::`, dual stack)."""

    def __init__(self, ns, port, pki=None):
        cmd = [node_binary(), H2ORIGIN_SCRIPT, "--port", port, "--host", "::"]
        if pki is None:
            cmd.append("--plain")
        else:
            cmd += ["--cert", pki.cert_dir / "good.pem", "--key", pki.cert_dir / "good.key",
                    "--mode", "both"]
        super().__init__(ns, cmd, "origin:%d" % port)
        try:
            self.log.wait_for(lambda l: '"ready"' in l, STARTUP_TIMEOUT, "h2origin ready")
        except BaseException:
            self.stop()
            raise

    def events(self, **match):
        out = []
        for line in self.log.snapshot():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if all(event.get(k) == v for k, v in match.items()):
                out.append(event)
        return out

    def connection_of(self, request):
        found = self.events(event="connection", connection=request["connection"])
        return found[0] if found else None


class TransparentGatewayTest(unittest.TestCase):

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for tool in ("ip", "nft", "curl", "openssl"):
            if not shutil.which(tool):
                raise unittest.SkipTest("%s is not installed" % tool)
        cls.tmp = make_tempdir("tokgate-transparent-")
        cls.addClassCleanup(remove_tree, cls.tmp)
        cls.pki = shared_pki()
        suffix = secrets.token_hex(3)
        cls.client_ns, cls.gw_ns, cls.origin_ns = (
            "tg-%s-%s" % (role, suffix) for role in ("client", "gw", "origin"))
        for ns in (cls.client_ns, cls.gw_ns, cls.origin_ns):
            result = ip("netns", "add", ns, check=False)
            if result.returncode != 0:
                error = result.stderr.decode(errors="replace")
                if "permission" in error.lower() or "not permitted" in error.lower():
                    raise unittest.SkipTest("cannot create network namespaces here: %s"
                                            % error.strip())
                raise AssertionError("ip netns add %s failed: %s" % (ns, error))
            cls.addClassCleanup(ip, "netns", "del", ns, check=False)
        cls._build_network()
        cls._start_origins()
        cls._start_tokgate()

    @classmethod
    def _build_network(cls):
        c, g, o = cls.client_ns, cls.gw_ns, cls.origin_ns
        # The veth pairs are made inside the gateway namespace: no name ever exists outside.
        ip("-n", g, "link", "add", "veth-gw-c", "type", "veth", "peer", "name", "veth-c",
           "netns", c)
        ip("-n", g, "link", "add", "veth-gw-o", "type", "veth", "peer", "name", "veth-o",
           "netns", o)
        for ns, dev, addresses in (
                (c, "veth-c", ["%s/24" % CLIENT4, "%s/64" % CLIENT6, "%s/24" % OUTSIDER4]),
                (g, "veth-gw-c", ["%s/24" % GW_CLIENT_SIDE4, "%s/64" % GW_CLIENT_SIDE6]),
                (g, "veth-gw-o", ["%s/24" % GW_ORIGIN_SIDE4, "%s/64" % GW_ORIGIN_SIDE6]),
                (o, "veth-o", ["%s/24" % ORIGIN4, "%s/64" % ORIGIN6, "%s/24" % TPROXY_ORIGIN4,
                               "%s/64" % TPROXY_ORIGIN6])):
            for address in addresses:
                extra = ["nodad"] if ":" in address else []
                ip("-n", ns, "addr", "add", address, "dev", dev, *extra)
            ip("-n", ns, "link", "set", dev, "up")
        for ns in (c, g, o):
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", c, "route", "add", "default", "via", GW_CLIENT_SIDE4)
        ip("-n", c, "-6", "route", "add", "default", "via", GW_CLIENT_SIDE6)
        ip("-n", o, "route", "add", "default", "via", GW_ORIGIN_SIDE4)
        ip("-n", o, "-6", "route", "add", "default", "via", GW_ORIGIN_SIDE6)
        in_ns(g, "sysctl", "-w", "net.ipv4.ip_forward=1")
        in_ns(g, "sysctl", "-w", "net.ipv6.conf.all.forwarding=1")
        in_ns(g, "nft", "-f", "-", input=REDIRECT_RULES.encode())
        # TPROXY: the diverted packets are delivered locally through a policy route.
        tproxy = in_ns(g, "nft", "-f", "-", input=TPROXY_RULES.encode(), check=False)
        cls.tproxy_error = None
        if tproxy.returncode != 0:
            cls.tproxy_error = tproxy.stderr.decode(errors="replace").strip()
        else:
            ip("-n", g, "rule", "add", "fwmark", "0x77", "lookup", "177")
            ip("-n", g, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "177")
            ip("-n", g, "-6", "rule", "add", "fwmark", "0x77", "lookup", "177")
            ip("-n", g, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "177")
        # The plain path works before tokgate is in the picture: the client reaches the origin's
        # network through the gateway (nothing listens yet: refused, not unreachable).
        probe = in_ns(c, sys.executable, "-c", PROBE % (ORIGIN4, 9), check=False)
        if probe.stdout.strip() != b"ConnectionRefusedError":
            raise AssertionError("the namespaces do not route: %r %r" % (probe.stdout,
                                                                          probe.stderr))

    @classmethod
    def _start_origins(cls):
        cls.origin = NsOrigin(cls.origin_ns, 443, cls.pki)
        cls.addClassCleanup(cls.origin.stop)
        cls.plain_origin = NsOrigin(cls.origin_ns, 80)
        cls.addClassCleanup(cls.plain_origin.stop)
        # An origin whose port is the transparent listener's port (alternative HTTPS ports
        # such as 8443 are common): redirected to tokgate like 443.
        cls.alt_origin = NsOrigin(cls.origin_ns, LISTEN_PORT, cls.pki)
        cls.addClassCleanup(cls.alt_origin.stop)

    @classmethod
    def _start_tokgate(cls):
        work = cls.tmp / "tokgate"
        work.mkdir()
        cls.ca_dir = work / "ca"
        cls.flow_log = work / "flows.jsonl"
        policy = work / "policy.toml"
        policy.write_text(POLICY)
        cmd = [tokgate_binary(), "run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
               "--ca-dir", cls.ca_dir,
               "--transparent", "0.0.0.0:%d" % LISTEN_PORT,
               "--transparent", "[::]:%d" % LISTEN_PORT,
               "--upstream-ca", cls.pki.ca_cert, "--policy", policy,
               "--allow-client", "%s/32" % CLIENT4, "--allow-client", "%s/128" % CLIENT6,
               "--flow-log", cls.flow_log]
        cls.tokgate = NsProcess(cls.gw_ns, cmd, "tokgate")
        cls.addClassCleanup(cls.tokgate.stop)
        listening = []

        def transparent_listening():
            listening[:] = [parse_log_line(l) for l in cls.tokgate.log.snapshot()]
            listening[:] = [r for r in listening if r and r.get("event") == "listening"]
            if cls.tokgate.process.poll() is not None:
                raise AssertionError("tokgate exited:\n" + cls.tokgate.tail())
            return len([r for r in listening if r.get("mode") == "transparent"]) == 2 and any(
                r.get("role") == "admin" for r in listening)
        wait_until(transparent_listening, STARTUP_TIMEOUT, "tokgate's transparent listeners")
        cls.listening = listening
        cls.admin = split_host_port([r for r in listening if r["role"] == "admin"][0]["address"])
        cls.tokgate_ca = cls.ca_dir / "ca.pem"

    def tearDown(self):
        if self.tokgate.process.poll() is not None:
            self.fail("tokgate exited during the test (status %s)%s" % (
                self.tokgate.process.returncode, self.context()))

    # --- helpers --------------------------------------------------------------------------

    def context(self):
        records = "\n".join(json.dumps(r) for r in self.flow_records()[-15:])
        return "\n--- tokgate (%s):\n%s\n--- flow log tail:\n%s" % (
            "running" if self.tokgate.process.poll() is None else "EXITED",
            self.tokgate.tail(), records)

    def client_curl(self, url, resolve=None, cacert=None, args=(), timeout=15):
        """curl in the client namespace. Returns a CurlResult; `certs` holds the PEM chain
        curl saw (its %{certs})."""
        with tempfile.TemporaryDirectory(prefix="tokgate-ns-curl-") as scratch:
            scratch = Path(scratch)
            cmd = ["curl", "-q", "-sS", "--max-time", str(timeout), "-D", scratch / "headers",
                   "-o", scratch / "body", "-w", "%{json}\n@@certs@@\n%{certs}"]
            if resolve:
                cmd += ["--resolve", resolve]
            if cacert:
                cmd += ["--cacert", cacert]
            cmd += [*args, url]
            result = in_ns(self.client_ns, *cmd, check=False, timeout=timeout + 15)
            out = result.stdout.decode(errors="replace")
            info_text, _, certs = out.partition("\n@@certs@@\n")
            try:
                info = json.loads(info_text or "{}")
            except ValueError:
                info = {}
            raw = (scratch / "headers").read_bytes() if (scratch / "headers").exists() else b""
            blocks = parse_header_blocks(raw)
            final = blocks[-1] if blocks else {"status": 0, "headers": {}}
            body = (scratch / "body").read_bytes() if (scratch / "body").exists() else b""
            curl_result = CurlResult(returncode=result.returncode, info=info,
                                     status=final["status"], headers=final["headers"],
                                     header_blocks=blocks, body=body,
                                     stderr=result.stderr.decode(errors="replace"),
                                     cmd=["ip", "netns", "exec", self.client_ns] +
                                     [str(c) for c in cmd])
            curl_result.certs = _PEM_CERT.findall(certs)
            return curl_result

    def flow_records(self):
        try:
            text = self.flow_log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_for_flow(self, what, timeout=10.0, **match):
        def find():
            for record in self.flow_records():
                if all(record.get(k) == v for k, v in match.items()):
                    return record
            return None
        try:
            return wait_until(find, timeout, "flow record %s (%r)" % (what, match), 0.05)
        except AssertionError as error:
            raise AssertionError(str(error) + self.context())

    def leaf_of(self, result):
        self.assertTrue(result.certs, "curl showed no certificate: " + result.describe())
        return cert_info(pem=result.certs[0].encode())

    def assert_transparent_record(self, record, client, upstream, upstream_port,
                                  check_listener=True):
        where = json.dumps(record) + self.context()
        self.assertEqual(record["mode"], "transparent", where)
        self.assertEqual(record["client_ip"], client, where)
        self.assertEqual(record["upstream_ip"], upstream, where)
        self.assertEqual(record["upstream_port"], upstream_port, where)
        self.assertEqual(record["port"], upstream_port, where)
        if check_listener:  # (TPROXY: test_tproxy_record_names_the_listener)
            self.assertIn(record["listener"], ("0.0.0.0:%d" % LISTEN_PORT,
                                               "[::]:%d" % LISTEN_PORT,
                                               "%s:%d" % (GW_CLIENT_SIDE4, LISTEN_PORT),
                                               "[%s]:%d" % (GW_CLIENT_SIDE6, LISTEN_PORT)),
                          where)

    def intercepted(self, origin_address, client_address, tag, check_listener=True):
        """One HTTPS request for www.tiktok.com to `origin_address`: decrypted by tokgate with
        a certificate of its CA, forwarded to that very address, recorded."""
        path = "/whoami/%s" % tag
        result = self.client_curl("https://%s%s" % (WEB_HOST, path),
                                  resolve="%s:443:%s" % (WEB_HOST, bracket(origin_address)),
                                  cacert=self.tokgate_ca)
        self.assertEqual(result.status, 200, result.describe() + self.context())
        seen = result.json()
        self.assertEqual((seen["path"], seen["sni"]), (path, WEB_HOST), result.describe())
        leaf = self.leaf_of(result)
        self.assertEqual(leaf["issuer"], cert_info(path=self.tokgate_ca)["subject"], leaf)
        self.assertIn(WEB_HOST, leaf["sans"], leaf)
        # The origin got it from tokgate on the gateway, not from the client routed past it.
        request = self.origin.events(event="request", path=path)
        self.assertEqual(len(request), 1, self.origin.tail())
        connection = self.origin.connection_of(request[0])
        peer = connection["peer"].rsplit(":", 1)[0]
        gateway = GW_ORIGIN_SIDE6 if ":" in origin_address else GW_ORIGIN_SIDE4
        self.assertTrue(same_ip(peer, gateway), connection)
        record = self.wait_for_flow(path, type="request", path=path)
        where = json.dumps(record) + self.context()
        self.assert_transparent_record(record, client_address, origin_address, 443,
                                       check_listener)
        self.assertEqual(record["client_port"], result.info["local_port"], where)
        self.assertEqual(record["sni"], WEB_HOST, where)
        self.assertEqual(record["host"], WEB_HOST, where)
        self.assertEqual(record["scheme"], "https", where)
        self.assertEqual(record["verdict"], "intercept", where)
        self.assertIs(record["bumped"], True, where)
        self.assertEqual((record["rule"], record["action"], record["status"]),
                         ("log-tiktok", "log", 200), where)
        return record

    # --- the tests ------------------------------------------------------------------------

    def test_listeners_are_reported(self):
        transparent = sorted(r["address"] for r in self.listening
                             if r.get("mode") == "transparent")
        self.assertEqual(transparent, sorted(["0.0.0.0:%d" % LISTEN_PORT,
                                              "[::]:%d" % LISTEN_PORT]), self.context())
        result = in_ns(self.gw_ns, "curl", "-sS", "--max-time", "10",
                       "http://127.0.0.1:%d/status" % self.admin[1])
        status = json.loads(result.stdout)
        listeners = {(l["address"], l["mode"]) for l in status["listeners"]}
        self.assertIn(("0.0.0.0:%d" % LISTEN_PORT, "transparent"), listeners, status)
        self.assertIn(("[::]:%d" % LISTEN_PORT, "transparent"), listeners, status)

    def test_redirected_https_is_intercepted_ipv4(self):
        self.intercepted(ORIGIN4, CLIENT4, "redirect-v4")

    def test_redirected_https_is_intercepted_ipv6(self):
        self.intercepted(ORIGIN6, CLIENT6, "redirect-v6")

    def test_blocked_path_gets_the_451_page(self):
        for origin_address, client_address in ((ORIGIN4, CLIENT4), (ORIGIN6, CLIENT6)):
            path = "/blocked/%s" % ("v6" if ":" in origin_address else "v4")
            result = self.client_curl(
                "https://%s%s" % (WEB_HOST, path), cacert=self.tokgate_ca,
                resolve="%s:443:%s" % (WEB_HOST, bracket(origin_address)))
            self.assertEqual(result.status, 451, result.describe() + self.context())
            page = result.json()  # curl is an API client: the JSON block page
            self.assertEqual((page["error"], page["rule"], page["host"]),
                             ("blocked", "block-path", WEB_HOST), page)
            self.assertEqual(self.origin.events(event="request", path=path), [],
                             "the blocked request reached the origin")
            record = self.wait_for_flow(path, type="request", path=path)
            self.assert_transparent_record(record, client_address, origin_address, 443)
            self.assertEqual((record["action"], record["rule"], record["status"]),
                             ("block", "block-path", 451), json.dumps(record))

    def test_spliced_name_keeps_the_origin_certificate(self):
        good = cert_info(path=self.pki.cert_dir / "good.pem")
        for origin_address, client_address in ((ORIGIN4, CLIENT4), (ORIGIN6, CLIENT6)):
            before = len(self.origin.events(event="connection", sni=SPLICE_HOST))
            path = "/whoami/splice-%s" % ("v6" if ":" in origin_address else "v4")
            result = self.client_curl(
                "https://%s%s" % (SPLICE_HOST, path), cacert=self.pki.ca_cert,
                resolve="%s:443:%s" % (SPLICE_HOST, bracket(origin_address)))
            self.assertEqual(result.status, 200, result.describe() + self.context())
            self.assertEqual(result.json()["sni"], SPLICE_HOST)
            leaf = self.leaf_of(result)
            self.assertEqual(leaf["fingerprint"], good["fingerprint"], leaf)
            self.assertEqual(leaf["issuer"], cert_info(path=self.pki.ca_cert)["subject"], leaf)
            connections = self.origin.events(event="connection", sni=SPLICE_HOST)
            self.assertEqual(len(connections), before + 1, self.origin.tail())
            gateway = GW_ORIGIN_SIDE6 if ":" in origin_address else GW_ORIGIN_SIDE4
            self.assertTrue(same_ip(connections[-1]["peer"].rsplit(":", 1)[0], gateway),
                            connections[-1])
            record = self.wait_for_flow(path, type="connection", sni=SPLICE_HOST,
                                        client_port=result.info["local_port"])
            where = json.dumps(record) + self.context()
            self.assert_transparent_record(record, client_address, origin_address, 443)
            self.assertEqual((record["verdict"], record["rule"]), ("splice", "splice-example"),
                             where)
            self.assertIs(record["bumped"], False, where)
            self.assertGreater(record["bytes_up"], 0, where)
            self.assertGreater(record["bytes_down"], 0, where)
            self.assertNotIn("path", record, where)

    def test_no_sni_goes_to_the_address_untouched(self):
        """Without SNI the name is the IP literal the client connected to: not a target of the
        policy, so spliced, to that address."""
        good = cert_info(path=self.pki.cert_dir / "good.pem")
        path = "/whoami/no-sni"
        result = self.client_curl("https://%s%s" % (ORIGIN4, path), args=["-k"])
        self.assertEqual(result.status, 200, result.describe() + self.context())
        self.assertIsNone(result.json()["sni"], result.describe())
        self.assertEqual(self.leaf_of(result)["fingerprint"], good["fingerprint"])
        record = self.wait_for_flow(path, type="connection",
                                    client_port=result.info["local_port"])
        where = json.dumps(record) + self.context()
        self.assert_transparent_record(record, CLIENT4, ORIGIN4, 443)
        self.assertEqual((record["host"], record["verdict"]), (ORIGIN4, "splice"), where)
        self.assertNotIn("sni", record, where)

    def test_refused_name_gets_a_tls_alert(self):
        before = len(self.origin.events(event="connection"))
        result = self.client_curl("https://%s/whoami/refused" % REFUSE_HOST,
                                  resolve="%s:443:%s" % (REFUSE_HOST, ORIGIN4),
                                  cacert=self.tokgate_ca)
        self.assertEqual(result.returncode, 35, result.describe())  # TLS handshake failed
        self.assertIn("alert", result.stderr, result.describe())
        self.assertEqual(result.status, 0, result.describe())
        record = self.wait_for_flow("refused", type="connection", sni=REFUSE_HOST,
                                    client_port=result.info.get("local_port"))
        where = json.dumps(record) + self.context()
        self.assertEqual((record["mode"], record["client_ip"], record["verdict"], record["rule"]),
                         ("transparent", CLIENT4, "refuse", "refuse-app"), where)
        self.assertIs(record["bumped"], False, where)
        self.assertNotIn("upstream_ip", record, where)  # never connected
        time.sleep(0.2)
        self.assertEqual(len(self.origin.events(event="connection")), before,
                         "a refused connection reached the origin")

    def test_plain_http_by_host_header(self):
        for origin_address, client_address in ((ORIGIN4, CLIENT4), (ORIGIN6, CLIENT6)):
            family = "v6" if ":" in origin_address else "v4"
            resolve = "%s:80:%s" % (WEB_HOST, bracket(origin_address))
            path = "/whoami/plain-%s" % family
            result = self.client_curl("http://%s%s" % (WEB_HOST, path), resolve=resolve)
            self.assertEqual(result.status, 200, result.describe() + self.context())
            self.assertEqual((result.json()["path"], result.json()["host"]), (path, WEB_HOST))
            request = self.plain_origin.events(event="request", path=path)
            self.assertEqual(len(request), 1, self.plain_origin.tail())
            gateway = GW_ORIGIN_SIDE6 if ":" in origin_address else GW_ORIGIN_SIDE4
            peer = self.plain_origin.connection_of(request[0])["peer"].rsplit(":", 1)[0]
            self.assertTrue(same_ip(peer, gateway), peer)
            record = self.wait_for_flow(path, type="request", path=path)
            where = json.dumps(record) + self.context()
            self.assert_transparent_record(record, client_address, origin_address, 80)
            self.assertEqual((record["scheme"], record["host"], record["action"],
                              record["status"]), ("http", WEB_HOST, "log", 200), where)
            self.assertEqual(record["client_port"], result.info["local_port"], where)
            self.assertNotIn("sni", record, where)

            blocked = "/blocked/plain-%s" % family
            result = self.client_curl("http://%s%s" % (WEB_HOST, blocked), resolve=resolve)
            self.assertEqual(result.status, 451, result.describe() + self.context())
            self.assertEqual(result.json()["rule"], "block-path", result.describe())
            self.assertEqual(self.plain_origin.events(event="request", path=blocked), [])
            record = self.wait_for_flow(blocked, type="request", path=blocked)
            self.assert_transparent_record(record, client_address, origin_address, 80)
            self.assertEqual((record["action"], record["status"]), ("block", 451),
                             json.dumps(record))

    def test_direct_connection_to_the_listener_is_a_loop(self):
        for gateway, client_address in ((GW_CLIENT_SIDE4, CLIENT4), (GW_CLIENT_SIDE6, CLIENT6)):
            for scheme in ("http", "https"):
                url = "%s://%s:%d/whoami/loop" % (scheme, bracket(gateway), LISTEN_PORT)
                result = self.client_curl(url, args=["-k"], timeout=10)
                self.assertNotEqual(result.returncode, 0, result.describe())
                self.assertNotEqual(result.returncode, 28, "held open: " + result.describe())
                self.assertEqual(result.status, 0, "answered: " + result.describe())
                match = {"client_port": result.info["local_port"]} if result.info.get(
                    "local_port") else {"host": gateway}
                record = self.wait_for_flow("loop", type="connection", error="loop", **match)
                where = json.dumps(record) + self.context()
                self.assertEqual((record["mode"], record["client_ip"], record["host"],
                                  record["port"]),
                                 ("transparent", client_address, gateway, LISTEN_PORT), where)
                self.assertNotIn("upstream_ip", record, where)
        loops = [parse_log_line(l) for l in self.tokgate.log.snapshot()]
        loops = [r for r in loops if r and r.get("event") == "transparent-loop"]
        self.assertGreaterEqual(len(loops), 4, self.context())
        self.assertEqual(self.origin.events(event="request", path="/whoami/loop"), [])
        # Still serving.
        self.intercepted(ORIGIN4, CLIENT4, "after-loop")

    def test_remote_origin_on_the_listener_port_is_not_a_loop(self):
        """Only a connection to the gateway itself is a loop: a client going to a remote origin
        on port 8443 (the listener's port number) is redirected like any other."""
        for origin_address, client_address in ((ORIGIN4, CLIENT4), (ORIGIN6, CLIENT6)):
            path = "/whoami/alt-port-%s" % ("v6" if ":" in origin_address else "v4")
            result = self.client_curl(
                "https://%s:%d%s" % (WEB_HOST, LISTEN_PORT, path), cacert=self.tokgate_ca,
                resolve="%s:%d:%s" % (WEB_HOST, LISTEN_PORT, bracket(origin_address)))
            self.assertEqual(result.status, 200, result.describe() + self.context())
            self.assertEqual(len(self.alt_origin.events(event="request", path=path)), 1)
            record = self.wait_for_flow(path, type="request", path=path)
            self.assert_transparent_record(record, client_address, origin_address, LISTEN_PORT)
            self.assertNotIn("error", record, json.dumps(record))

    def test_client_outside_the_allow_list(self):
        """--allow-client applies to transparent clients too; the refusal is recorded as a
        transparent connection of that client, and nothing reaches the origin."""
        before = len(self.origin.events(event="connection"))
        plain_before = len(self.plain_origin.events(event="connection"))
        tls = self.client_curl("https://%s/whoami/outsider" % WEB_HOST, cacert=self.tokgate_ca,
                               resolve="%s:443:%s" % (WEB_HOST, ORIGIN4),
                               args=["--interface", OUTSIDER4])
        self.assertNotEqual(tls.returncode, 0, tls.describe())
        self.assertEqual(tls.status, 0, tls.describe())
        plain = self.client_curl("http://%s/whoami/outsider" % WEB_HOST,
                                 resolve="%s:80:%s" % (WEB_HOST, ORIGIN4),
                                 args=["--interface", OUTSIDER4])
        # A transparent client did not ask for a proxy (and may be mid-TLS): it is closed
        # without an HTTP answer, and recorded.
        self.assertNotEqual(plain.returncode, 0, plain.describe())
        self.assertEqual(plain.status, 0, plain.describe())
        time.sleep(0.2)
        self.assertEqual(len(self.origin.events(event="connection")), before)
        self.assertEqual(len(self.plain_origin.events(event="connection")), plain_before)
        for result in (tls, plain):
            record = self.wait_for_flow("outsider", type="connection",
                                        client_port=result.info["local_port"])
            where = json.dumps(record) + self.context()
            self.assertEqual((record["client_ip"], record["error"]),
                             (OUTSIDER4, "client-not-allowed"), where)
            self.assertNotIn("upstream_ip", record, where)
            self.assertEqual(record["mode"], "transparent", where)

    def test_tproxy_diverted_https_is_intercepted(self):
        if self.tproxy_error:
            self.skipTest("nftables TPROXY is not available in this kernel: %s"
                          % self.tproxy_error)
        self.intercepted(TPROXY_ORIGIN4, CLIENT4, "tproxy-v4", check_listener=False)
        self.intercepted(TPROXY_ORIGIN6, CLIENT6, "tproxy-v6", check_listener=False)

    def test_tproxy_record_names_the_listener(self):
        """The flow log's `listener` is "the proxy listener that accepted the connection": under
        TPROXY the socket's local address is the origin's, which is no listener of tokgate's."""
        if self.tproxy_error:
            self.skipTest("nftables TPROXY is not available in this kernel: %s"
                          % self.tproxy_error)
        path = "/whoami/tproxy-listener"
        result = self.client_curl("https://%s%s" % (WEB_HOST, path), cacert=self.tokgate_ca,
                                  resolve="%s:443:%s" % (WEB_HOST, TPROXY_ORIGIN4))
        self.assertEqual(result.status, 200, result.describe() + self.context())
        record = self.wait_for_flow(path, type="request", path=path)
        self.assertEqual(record["upstream_ip"], TPROXY_ORIGIN4, json.dumps(record))
        self.assertIn(record["listener"], ("0.0.0.0:%d" % LISTEN_PORT,
                                           "%s:%d" % (GW_CLIENT_SIDE4, LISTEN_PORT)),
                      json.dumps(record))


if __name__ == "__main__":
    unittest.main()
