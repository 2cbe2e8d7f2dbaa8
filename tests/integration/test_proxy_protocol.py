"""tokgate behind a load balancer (issue 7): `--listen-proxy-protocol ADDR:PORT`.

Every connection to such a listener must start with a PROXY protocol header (v1 text or v2
binary, as HAProxy's `send-proxy` / `send-proxy-v2` write it); the header's source address is
the client: the allow list (`--allow-client`) and the flow log (`client_ip`, `client_port`) see
it, not the balancer's address. A connection without a valid header is closed without an answer
(logged `proxy-protocol-refused`), and a header that does not complete within its bounded wait
(~5 s) is dropped while other clients are served.

Real parts only, all on loopback: HAProxy (Debian's, TCP mode, round robin) in front of two
tokgate processes sharing one CA, curl as the client from 127.0.0.77 (so the real client address
is distinctive: HAProxy itself connects from 127.0.0.1), origin.py as the origin.
"""

import json
import shutil
import socket
import struct
import subprocess
import threading
import time
import unittest
from pathlib import Path

from harness import (STARTUP_TIMEOUT, RawConnection, IntegrationTestCase, Tokgate, cert_info,
                     clean_env, curl, log_mark, records_since, tls_client_context,
                     wait_for_record, wait_until)

CLIENT = "127.0.0.77"          # the real client: allowed, and what every record must show
OUTSIDER = "127.0.0.78"        # a real client outside the allow list
BALANCER = "127.0.0.1"         # HAProxy's own address towards tokgate
V6_CLIENT = "2001:db8:77::7"   # claimed in a hand-written v2 header (TCP over IPv6)
HEADER_WAIT = 5.0              # tokgate's bounded wait for a PROXY header
PP_MODE = "explicit+proxy-protocol"

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def v2_header(command, family=None, source=None, destination=None, tlvs=()):
    """A PROXY v2 header: command "LOCAL" or "PROXY"; family "TCP4"/"TCP6" with (ip, port)
    source and destination, then the (type, value) TLVs."""
    version_command = 0x20 | (0x1 if command == "PROXY" else 0x0)
    if family is None:
        return V2_SIGNATURE + struct.pack("!BBH", version_command, 0x00, 0)
    inet = socket.AF_INET if family == "TCP4" else socket.AF_INET6
    block = (socket.inet_pton(inet, source[0]) + socket.inet_pton(inet, destination[0])
             + struct.pack("!HH", source[1], destination[1]))
    for kind, value in tlvs:
        block += struct.pack("!BH", kind, len(value)) + value
    family_byte = 0x11 if family == "TCP4" else 0x21
    return V2_SIGNATURE + struct.pack("!BBH", version_command, family_byte, len(block)) + block


def read_flow_log(path):
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def closed_without_answer(conn, timeout):
    """Reads until the peer closes; returns (bytes received, seconds it took)."""
    started = time.monotonic()
    conn.sock.settimeout(timeout)
    try:
        data = conn.read_until_closed()
    except socket.timeout:
        raise AssertionError("the connection was still open after %.1fs" % timeout)
    return data, time.monotonic() - started


class HaproxyExited(AssertionError):
    pass


class Haproxy:
    """`haproxy -f CFG -db` (foreground) with a configuration written by the test, checked with
    `haproxy -c` first."""

    def __init__(self, workdir, config_text, ports):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "haproxy.cfg"
        self.config.write_text(config_text)
        check = subprocess.run(["haproxy", "-c", "-f", str(self.config)], capture_output=True,
                               timeout=30, env=clean_env())
        if check.returncode != 0:
            raise AssertionError("haproxy -c rejected the configuration:\n%s\n%s%s" % (
                config_text, check.stdout.decode(errors="replace"),
                check.stderr.decode(errors="replace")))
        self.output_path = self.workdir / "haproxy.out"
        self.output = open(self.output_path, "wb")
        self.process = subprocess.Popen(["haproxy", "-f", str(self.config), "-db"],
                                        stdin=subprocess.DEVNULL, stdout=self.output,
                                        stderr=subprocess.STDOUT, env=clean_env())
        try:
            for port in ports:
                wait_until(lambda p=port: self._accepts(p), STARTUP_TIMEOUT,
                           "haproxy listening on %d" % port, interval=0.05)
        except BaseException:
            self.stop()
            raise

    def _accepts(self, port):
        if self.process.poll() is not None:
            raise HaproxyExited("haproxy exited with %s: %s" % (
                self.process.returncode, self.output_path.read_text(errors="replace")[-2000:]))
        try:
            # From the test's client address: HAProxy passes the probe on to a tokgate, whose
            # records must all name that client.
            with socket.create_connection(("127.0.0.1", port), timeout=1,
                                          source_address=(CLIENT, 0)):
                return True
        except OSError:
            return False

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.output.close()

    def log_text(self):
        return self.output_path.read_text(errors="replace")[-3000:]


@unittest.skipUnless(shutil.which("haproxy"), "haproxy is not installed (apt-get install haproxy)")
class ProxyProtocolTest(IntegrationTestCase):

    def setUp(self):
        # Two tokgates, one CA (a pool behind a balancer presents one CA to its clients).
        name = self.id().rsplit(".", 1)[-1]
        self.ca_dir = self.scratch_dir(name) / "shared-ca"
        self.proxies = []
        self.flow_logs = []
        for index in (1, 2):
            flow_log = self.tmp / name / ("flows-t%d.jsonl" % index)
            args = ["--listen-proxy-protocol", "127.0.0.1:0",
                    "--allow-client", "%s/32" % CLIENT, "--allow-client", "2001:db8:77::/64",
                    "--resolve", "*:*:127.0.0.1", "--upstream-ca", self.pki.ca_cert,
                    "--connect-ports", "1-65535", "--profile", "observe",
                    "--intercept", "www.tiktok.com", "--flow-log", flow_log]
            proxy = Tokgate(self.tmp / name / ("t%d" % index), args, ca_dir=self.ca_dir)
            self.addCleanup(self._stop_checking_alive, proxy)
            record = wait_for_record(proxy, STARTUP_TIMEOUT, event="listening", role="proxy",
                                     mode=PP_MODE)
            proxy.pp_address = record["address"]
            proxy.pp_port = int(record["address"].rsplit(":", 1)[1])
            self.proxies.append(proxy)
            self.flow_logs.append(flow_log)
        self.ca_pem = self.ca_dir / "ca.pem"
        self.haproxy = None
        for attempt in range(3):
            # Free ports for the frontends; another process could take one first: try again.
            self.v2_port, self.v1_port = free_port(), free_port()
            try:
                self.haproxy = Haproxy(self.tmp / name / ("haproxy-%d" % attempt),
                                       self.haproxy_config(), (self.v2_port, self.v1_port))
                break
            except HaproxyExited:
                if attempt == 2:
                    raise
        self.addCleanup(self.haproxy.stop)

    def haproxy_config(self):
        t1, t2 = (p.pp_port for p in self.proxies)
        return "\n".join([
            "global",
            "    maxconn 200",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
            "frontend fe_v2",
            "    bind 127.0.0.1:%d" % self.v2_port,
            "    default_backend be_v2",
            "frontend fe_v1",
            "    bind 127.0.0.1:%d" % self.v1_port,
            "    default_backend be_v1",
            "backend be_v2",
            "    balance roundrobin",
            "    server t1 127.0.0.1:%d send-proxy-v2" % t1,
            "    server t2 127.0.0.1:%d send-proxy-v2" % t2,
            "backend be_v1",
            "    balance roundrobin",
            "    server t1 127.0.0.1:%d send-proxy" % t1,
            "    server t2 127.0.0.1:%d send-proxy" % t2,
            ""])

    def context(self):
        parts = [p.context() for p in self.proxies]
        for path in self.flow_logs:
            parts.append("\n--- %s:\n%s" % (path.name, "\n".join(
                json.dumps(r) for r in read_flow_log(path)[-20:])))
        parts.append("\n--- haproxy:\n" + self.haproxy.log_text())
        return "".join(parts)

    def wait_for_flows(self, paths, timeout=10.0):
        """Waits until the two flow logs together hold a request record for every path;
        returns {path: (tokgate index, record)}."""
        def collect():
            found = {}
            for index, log in enumerate(self.flow_logs):
                for record in read_flow_log(log):
                    if record.get("type") == "request" and record.get("path") in paths:
                        found[record["path"]] = (index, record)
            return found if len(found) == len(paths) else None
        try:
            return wait_until(collect, timeout, "flow records for %s" % sorted(paths), 0.05)
        except AssertionError as error:
            raise AssertionError(str(error) + self.context())

    def balanced_requests(self, port, tag):
        """Two plain HTTP requests (absolute form) and two CONNECTs (intercepted, verified with
        tokgate's CA) through HAProxy's frontend `port`, from CLIENT. Returns {path: curl
        result}."""
        proxy = "http://127.0.0.1:%d" % port
        results = {}
        for n in range(2):
            path = "/whoami/%s-http-%d" % (tag, n)
            result = curl("http://www.tiktok.com:%d%s" % (self.origin.http_port, path),
                          proxy=proxy, interface=CLIENT)
            self.assertEqual(result.status, 200, result.describe() + self.context())
            self.assertEqual(result.json()["path"], path, result.describe())
            results[path] = result
            path = "/whoami/%s-tls-%d" % (tag, n)
            result = curl("https://www.tiktok.com:%d%s" % (self.origin.https_port, path),
                          proxy=proxy, cacert=self.ca_pem, interface=CLIENT)
            self.assertEqual(result.returncode, 0, result.describe() + self.context())
            self.assertEqual(result.status, 200, result.describe() + self.context())
            self.assertEqual(result.json()["sni"], "www.tiktok.com", result.describe())
            results[path] = result
        return results

    def test_haproxy_v1_and_v2_round_robin_records_the_real_client(self):
        results = self.balanced_requests(self.v2_port, "v2")
        results.update(self.balanced_requests(self.v1_port, "v1"))
        # The intercepted leg carries a certificate of the pool's shared CA, not the origin's.
        ca_subject = cert_info(path=self.ca_pem)["subject"]
        for path, result in results.items():
            self.assertEqual(result.info.get("local_ip"), CLIENT, result.describe())
        found = self.wait_for_flows(set(results))
        served_by = {}
        for path, (index, record) in found.items():
            proxy = self.proxies[index]
            where = "%s in flows-t%d: %s%s" % (path, index + 1, json.dumps(record), self.context())
            self.assertEqual(record["client_ip"], CLIENT, where)
            self.assertNotEqual(record["client_ip"], BALANCER, where)
            # The header's source port is curl's own port: HAProxy passed it on, tokgate kept it.
            self.assertEqual(record["client_port"], results[path].info["local_port"], where)
            self.assertEqual(record["mode"], "explicit", where)
            self.assertEqual(record["listener"], proxy.pp_address, where)
            self.assertEqual(record["status"], 200, where)
            self.assertEqual(record["host"], "www.tiktok.com", where)
            self.assertEqual(record["upstream_ip"], "127.0.0.1", where)
            if "-tls-" in path:
                self.assertEqual(record["scheme"], "https", where)
                self.assertIs(record["bumped"], True, where)
                self.assertEqual(record["verdict"], "intercept", where)
                self.assertEqual(record["sni"], "www.tiktok.com", where)
                self.assertEqual(record["upstream_port"], self.origin.https_port, where)
            else:
                self.assertEqual(record["scheme"], "http", where)
                self.assertEqual(record["upstream_port"], self.origin.http_port, where)
            served_by.setdefault(path.split("/")[2].split("-")[0], set()).add(index)
        # Round robin: each frontend's four connections went to both tokgates.
        self.assertEqual(served_by, {"v2": {0, 1}, "v1": {0, 1}}, self.context())
        # No record anywhere names HAProxy's address as the client.
        for log in self.flow_logs:
            for record in read_flow_log(log):
                self.assertEqual(record.get("client_ip"), CLIENT,
                                 "%s: %s" % (log.name, json.dumps(record)))
        for proxy in self.proxies:
            self.assertEqual(proxy.records(event="proxy-protocol-refused"), [], proxy.context())
        # The certificate a client gets through the balancer is minted by the shared CA.
        with RawConnection(self.v2_port, source=CLIENT) as conn:
            authority = b"www.tiktok.com:%d" % self.origin.https_port
            conn.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
            answer = conn.read_response(connect=True)
            self.assertEqual(answer.status, 200, answer.raw)
            tls = tls_client_context(self.ca_pem).wrap_socket(conn.sock,
                                                              server_hostname="www.tiktok.com")
            leaf = cert_info(pem=tls.getpeercert(binary_form=True), inform="DER")
            tls.close()
        self.assertEqual(leaf["issuer"], ca_subject, leaf)
        self.assertIn("www.tiktok.com", leaf["sans"], leaf)

    def test_allow_list_sees_the_header_source(self):
        before = len(self.origin.requests())
        result = curl("http://www.tiktok.com:%d/whoami/outsider" % self.origin.http_port,
                      proxy="http://127.0.0.1:%d" % self.v2_port, interface=OUTSIDER)
        self.assertEqual(result.status, 403, result.describe() + self.context())
        self.assertEqual(result.header("x-tokgate-error"), "client-not-allowed",
                         result.describe())
        self.assertEqual(len(self.origin.requests()), before, "the request reached the origin")
        refusals = [r for p in self.proxies for r in p.records(event="client-not-allowed")]
        self.assertEqual([r.get("client") for r in refusals], [OUTSIDER], self.context())
        # And the allowed client through the same balancer is served (HAProxy's own 127.0.0.1
        # is not in the allow list: only the header's address can have let it through).
        result = curl("http://www.tiktok.com:%d/whoami/insider" % self.origin.http_port,
                      proxy="http://127.0.0.1:%d" % self.v2_port, interface=CLIENT)
        self.assertEqual(result.status, 200, result.describe() + self.context())

    def test_connection_without_header_is_closed_unanswered(self):
        proxy = self.proxies[0]
        before = len(self.origin.requests())
        probes = [
            ("not_proxy_protocol", b"GET http://www.tiktok.com:%d/whoami/no-header HTTP/1.1\r\n"
                                   b"Host: www.tiktok.com\r\n\r\n" % self.origin.http_port),
            ("not_proxy_protocol", b"CONNECT www.tiktok.com:%d HTTP/1.1\r\n\r\n"
                                   % self.origin.https_port),
            ("malformed", b"PROXY TCP4 127.0.0.77 127.0.0.1 99999 80\r\n"
                          b"GET http://www.tiktok.com:%d/whoami/bad-header HTTP/1.1\r\n"
                          b"Host: www.tiktok.com\r\n\r\n" % self.origin.http_port),
        ]
        for error, data in probes:
            mark = log_mark(proxy)
            with RawConnection(proxy.pp_port, source=CLIENT) as conn:
                conn.send(data)
                answer, took = closed_without_answer(conn, HEADER_WAIT + 5)
            self.assertEqual(answer, b"", "an answer to %r%s" % (data[:40], proxy.context()))
            self.assertLess(took, HEADER_WAIT - 1.5,
                            "garbage must be refused when seen, not after the header wait")
            record = wait_for_record(proxy, 5, start=mark, event="proxy-protocol-refused")
            self.assertEqual(record.get("error"), error, proxy.context())
            self.assertEqual(record.get("peer"), CLIENT, proxy.context())
        self.assertEqual(len(self.origin.requests()), before, "a request reached the origin")
        self.assertEqual([r for r in read_flow_log(self.flow_logs[0]) if r.get("path")], [],
                         "a refused connection produced a request record")

    def test_hand_written_headers(self):
        """v2 LOCAL keeps the connection's own address; v2 over IPv6 and v1 by hand are read
        exactly like HAProxy's; bytes after the header in the same packet are the request."""
        proxy = self.proxies[1]
        origin_port = self.origin.http_port

        def request(path):
            return (b"GET http://www.tiktok.com:%d%s HTTP/1.1\r\nHost: www.tiktok.com:%d\r\n"
                    b"Connection: close\r\n\r\n" % (origin_port, path.encode(), origin_port))

        cases = [
            # (path, header, the connection's real source, expected client_ip, client_port)
            ("/whoami/v2-local", v2_header("LOCAL"), CLIENT, CLIENT, None),
            ("/whoami/v2-tcp6", v2_header("PROXY", "TCP6", (V6_CLIENT, 40007),
                                          ("2001:db8::1", 443)), BALANCER, V6_CLIENT, 40007),
            # TLVs as balancers send them (the SNI as PP2_TYPE_AUTHORITY, 2000 bytes of NOOP
            # padding): a header longer than one read.
            ("/whoami/v2-tlvs", v2_header("PROXY", "TCP4", (CLIENT, 40004), ("127.0.0.1", 80),
                                          tlvs=[(0x02, b"www.tiktok.com"),
                                                (0x04, bytes(2000))]), BALANCER, CLIENT, 40004),
            ("/whoami/v1-tcp4", b"PROXY TCP4 %s 127.0.0.1 40001 8080\r\n" % CLIENT.encode(),
             BALANCER, CLIENT, 40001),
            ("/whoami/v1-tcp6", b"PROXY TCP6 %s 2001:db8::1 40006 8080\r\n"
             % V6_CLIENT.encode(), BALANCER, V6_CLIENT, 40006),
        ]
        for path, header, source, _, _ in cases:
            with RawConnection(proxy.pp_port, source=source) as conn:
                conn.send(header + request(path))
                response = conn.read_response()
            self.assertIsNotNone(response, "%s: closed without an answer%s" % (
                path, proxy.context()))
            self.assertEqual(response.status, 200, "%s: %r%s" % (path, response.raw[:300],
                                                                proxy.context()))
            self.assertEqual(json.loads(response.body)["path"], path)
        found = self.wait_for_flows({c[0] for c in cases})
        for path, _, source, client_ip, client_port in cases:
            index, record = found[path]
            where = "%s: %s%s" % (path, json.dumps(record), self.context())
            self.assertEqual(index, 1, where)
            self.assertEqual(record["client_ip"], client_ip, where)
            if client_port is not None:
                self.assertEqual(record["client_port"], client_port, where)

    def test_slow_header_is_dropped_while_others_are_served(self):
        proxy = self.proxies[0]
        mark = log_mark(proxy)
        full_v1 = b"PROXY TCP4 %s 127.0.0.1 40123 8080\r\n" % CLIENT.encode()
        outcomes = {}

        def trickle():
            # A header that keeps making progress, one byte every 0.4 s: the wait is a total
            # budget, not an idle timer, so progress must not extend it.
            with RawConnection(proxy.pp_port, source=CLIENT) as conn:
                started = time.monotonic()
                conn.sock.settimeout(0.4)
                data = b""
                for byte in full_v1[:-1]:
                    try:
                        conn.send(bytes([byte]))
                    except OSError:
                        break
                    try:
                        piece = conn.sock.recv(4096)
                    except socket.timeout:
                        continue
                    except OSError:
                        break
                    data += piece
                    if not piece:
                        break
                    if time.monotonic() - started > HEADER_WAIT + 10:
                        break
                outcomes["trickle"] = (data, time.monotonic() - started)

        def stall():
            # Half a v2 header, then nothing.
            with RawConnection(proxy.pp_port, source=CLIENT) as conn:
                started = time.monotonic()
                conn.send(v2_header("PROXY", "TCP4", (CLIENT, 40124), ("127.0.0.1", 80))[:20])
                try:
                    data, _ = closed_without_answer(conn, HEADER_WAIT + 10)
                except AssertionError:
                    data = None
                outcomes["stall"] = (data, time.monotonic() - started)

        threads = [threading.Thread(target=trickle, daemon=True),
                   threading.Thread(target=stall, daemon=True)]
        for thread in threads:
            thread.start()
        # While both wait, other clients get through the same tokgate (and the other one).
        time.sleep(0.3)
        for n in range(4):
            started = time.monotonic()
            result = curl("http://www.tiktok.com:%d/whoami/meanwhile-%d" % (
                self.origin.http_port, n), proxy="http://127.0.0.1:%d" % self.v2_port,
                interface=CLIENT, timeout=10)
            self.assertEqual(result.status, 200, result.describe() + self.context())
            self.assertLess(time.monotonic() - started, 3.0, "a request waited on the slow ones")
        for thread in threads:
            thread.join(HEADER_WAIT + 15)
        for name in ("trickle", "stall"):
            self.assertIn(name, outcomes, "the %s client never finished" % name)
            data, took = outcomes[name]
            self.assertEqual(data, b"", "%s: not closed unanswered (%r)%s" % (
                name, data, proxy.context()))
            self.assertGreater(took, HEADER_WAIT - 1.0, "%s dropped too early" % name)
            self.assertLess(took, HEADER_WAIT + 3.0, "%s held past the bounded wait" % name)
        refusals = records_since(proxy, mark, event="proxy-protocol-refused")
        self.assertEqual(len(refusals), 2, proxy.context())
        self.assertEqual({r.get("error") for r in refusals}, {"timeout"}, proxy.context())
        found = self.wait_for_flows({"/whoami/meanwhile-%d" % n for n in range(4)})
        self.assertEqual({r["client_ip"] for _, r in found.values()}, {CLIENT})


if __name__ == "__main__":
    unittest.main()


class SharedPortTest(IntegrationTestCase):
    """Several processes on one port (SO_REUSEPORT): a second tokgate binds the port the
    first holds, and the kernel spreads new connections over both."""

    def test_two_processes_share_one_port(self):
        port = free_port()
        logs = []
        proxies = []
        for index in (1, 2):
            flow_log = self.tmp / ("shared-flows-%d.jsonl" % index)
            proxy = Tokgate(self.tmp / ("shared-%d" % index),
                            ["--flow-log", flow_log, "--workers", "1"],
                            listen="127.0.0.1:%d" % port)
            self.addCleanup(proxy.stop)
            proxies.append(proxy)
            logs.append(flow_log)
        for proxy in proxies:
            self.assertEqual(proxy.port, port)
        # Plain requests to a closed port: each is answered 502 by whichever process got it.
        closed = free_port()
        for n in range(40):
            result = curl("http://127.0.0.1:%d/shared/%d" % (closed, n),
                          proxy="http://127.0.0.1:%d" % port)
            self.assertEqual(result.status, 502, result.describe())

        def counts():
            return [len(read_flow_log(path)) if path.exists() else 0 for path in logs]
        wait_until(lambda: sum(counts()) == 40, 10, "40 records over both flow logs")
        self.assertTrue(all(count > 0 for count in counts()),
                        "one process got every connection: %r" % counts())
