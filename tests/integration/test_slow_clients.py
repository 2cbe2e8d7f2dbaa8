"""Slow clients: slowhttptest's slowloris (-H) and slow-read (-X) attacks against the explicit
proxy listener, while a normal client keeps using the proxy.

Four attacks, each on a fresh tokgate whose `[timeouts] request_header` is 3 s:

- slowloris through the proxy (`-d`: absolute-form `GET http://...` requests whose header block
  never ends, one more header line every second): every connection must be cut by the header
  timeout (tokgate answers 408 and closes), so slowhttptest ends on its own with "No open
  connections left" long before its time limit; none is cut before the timeout could fire;
- slowloris on intercepted HTTPS (slowhttptest cannot do TLS through a proxy, so a loopback
  forwarder tunnels each of its connections through CONNECT; tokgate decrypts them);
- slow read through the proxy (a tiny TCP window, 32 bytes read every 2 s, 1 MiB responses,
  2 pipelined requests per connection): tokgate holds every connection (and its origin leg) and
  the back-pressure stays on those connections;
- slow read on intercepted HTTPS (same forwarder).

During each attack a normal client samples the proxy every 0.5 s: a plain-HTTP request through
the proxy and an intercepted HTTPS request (curl, a new connection each), each of which must
answer 200 within PROBE_TIMEOUT, every time. After the attack tokgate is alive, answers again,
and its open descriptors (/proc/PID/fd) return to the count before the attack.

Real parts only: tokgate, slowhttptest, curl, origin.py and h2origin.mjs on loopback. Needs the
Debian package slowhttptest; skipped without it."""

import os
import re
import shutil
import subprocess
import threading
import time
import unittest

from harness import (ConnectForwarder, IntegrationTestCase, NodeOrigin, curl, log_mark,
                     records_since, wait_until)

SLOWHTTPTEST = shutil.which("slowhttptest")

HEADER_TIMEOUT_S = 3
# One address opens every attack connection (and the prober's): the per-client connection limit
# (256 by default) is raised so that it is the header timeout that is tested here.
CONFIG = ('[timeouts]\nrequest_header = "%ds"\n[limits]\nmax_connections_per_client = 10000\n'
          % HEADER_TIMEOUT_S)

PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 5          # seconds curl may take for one probe request: "a few seconds"
FD_SLACK = 3               # descriptors over the pre-attack count still accepted afterwards
FD_SETTLE = 20.0           # seconds allowed for the descriptors to come back
SLOW_BODY = 1 << 20        # slow-read response size: far more than any socket buffer
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def open_fds(pid):
    """How many descriptors the process has open now (None once it is gone)."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Prober(threading.Thread):
    """The normal client: every PROBE_INTERVAL, one plain-HTTP and one intercepted HTTPS request
    through the proxy (curl, new connection each); every result is kept."""

    MAX_ROUNDS = 400   # bounds the loop whatever happens (an attack lasts < 40 s)

    def __init__(self, proxy, targets):
        super().__init__(daemon=True, name="prober")
        self.proxy = proxy
        self.targets = targets      # (kind, url, cacert or None)
        self.results = []           # (kind, seconds since start, curl exit, status, duration)
        self.failures = []          # descriptions of the bad ones
        self.stop_event = threading.Event()
        self.started_at = None
        self._lock = threading.Lock()

    def run(self):
        self.started_at = time.monotonic()
        next_round = self.started_at
        for _ in range(self.MAX_ROUNDS):
            if self.stop_event.is_set():
                return
            for kind, url, cacert in self.targets:
                began = time.monotonic()
                result = curl(url, proxy=self.proxy.url, cacert=cacert, timeout=PROBE_TIMEOUT)
                took = time.monotonic() - began
                with self._lock:
                    self.results.append((kind, began - self.started_at, result.returncode,
                                         result.status, took))
                    if result.returncode != 0 or result.status != 200:
                        self.failures.append("%s at +%.1fs after %.2fs: %s" % (
                            kind, began - self.started_at, took, result.describe()[:600]))
            next_round += PROBE_INTERVAL
            self.stop_event.wait(max(0.0, next_round - time.monotonic()))

    def count(self):
        with self._lock:
            return len(self.results)

    def finish(self):
        self.stop_event.set()
        self.join(PROBE_TIMEOUT * 2 + 15)


def parse_csv(path):
    """slowhttptest's CSV: `Seconds,Closed,Pending,Connected,Service Available` rows as dicts."""
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    header = [h.strip() for h in lines[0].split(",")]
    return [dict(zip(header, (int(v) for v in line.split(",")))) for line in lines[1:]]


@unittest.skipUnless(SLOWHTTPTEST, "slowhttptest is not installed (Debian package slowhttptest)")
class SlowClientsTest(IntegrationTestCase):
    """origin.py answers the prober (HTTP and HTTPS); h2origin.mjs (plain and TLS) is the target
    of the attacks, so the attacks and the prober never share an origin: what is measured is
    tokgate."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.plain_target = NodeOrigin(cls.pki, plain=True)
        cls.addClassCleanup(cls.plain_target.stop)
        cls.tls_target = NodeOrigin(cls.pki, mode="h1")
        cls.addClassCleanup(cls.tls_target.stop)

    def setUp(self):
        # "localhost" is intercepted so the forwarder's tunnels (CONNECT localhost:PORT) are
        # decrypted; www.tiktok.com (the prober's HTTPS target) is intercepted by the profile.
        self.proxy = self.start_tokgate(args=self.intercept_args("localhost"),
                                        config_text=CONFIG)
        self.pid = self.proxy.process.pid
        self.probe_targets = (
            ("http", "http://example.org:%d/whoami" % self.origin.http_port, None),
            ("https", "https://www.tiktok.com:%d/whoami" % self.origin.https_port,
             self.proxy.ca_pem),
        )

    # --- helpers ----------------------------------------------------------------------------

    def settled_fds(self):
        """The descriptor count once it stops moving (connections of earlier requests closed)."""
        previous = [None]

        def stable():
            now = open_fds(self.pid)
            same = now is not None and now == previous[0]
            previous[0] = now
            return now if same else None
        return wait_until(stable, 10.0, "a stable descriptor count", interval=0.3)

    def forwarder(self, target_port):
        """A loopback port whose connections are tunnelled through CONNECT localhost:PORT."""
        forwarder = ConnectForwarder(self.proxy.port, "localhost:%d" % target_port, timeout=60.0)
        self.addCleanup(forwarder.close)
        return forwarder

    def attack(self, name, mode_args, url, connections, seconds, through_proxy):
        """Runs slowhttptest against `url` (through the proxy with -d if `through_proxy`) while
        the prober samples; returns (csv rows, output text, descriptor samples, prober)."""
        # The prober must work before the attack, or its failures would say nothing.
        for kind, probe_url, cacert in self.probe_targets:
            result = curl(probe_url, proxy=self.proxy.url, cacert=cacert, timeout=PROBE_TIMEOUT)
            self.assertEqual((result.returncode, result.status), (0, 200),
                             "%s probe before the attack: %s%s" % (kind, result.describe(),
                                                                   self.proxy.context()))
        self.baseline_fds = self.settled_fds()
        stats = self.scratch_dir(name) / "stats"
        cmd = [SLOWHTTPTEST, *mode_args, "-c", str(connections), "-r", "100",
               "-l", str(seconds), "-p", "5", "-g", "-o", str(stats), "-u", url]
        if through_proxy:
            cmd += ["-d", "127.0.0.1:%d" % self.proxy.port]
        prober = Prober(self.proxy, self.probe_targets)
        prober.start()
        self.addCleanup(prober.finish)
        wait_until(lambda: prober.count() >= 2, PROBE_TIMEOUT * 2 + 5, "the first probes")
        output_path = self.scratch_dir(name) / "slowhttptest.out"
        fd_samples = []
        with open(output_path, "wb") as output:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, cwd=str(self.scratch_dir(name)))
            try:
                deadline = time.monotonic() + seconds + 30
                while process.poll() is None and time.monotonic() < deadline:
                    fd_samples.append(open_fds(self.pid))
                    time.sleep(0.25)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                    self.fail("slowhttptest did not end within %d s" % (seconds + 30))
        # One more second of probing after the attack ended.
        time.sleep(1.0)
        prober.finish()
        text = ANSI.sub("", output_path.read_text(errors="replace"))
        csv_path = stats.with_name(stats.name + ".csv")
        self.assertTrue(csv_path.is_file(), "no CSV from slowhttptest: %s\n%s" % (
            " ".join(cmd), text[-3000:]))
        rows = parse_csv(csv_path)
        self.assertTrue(rows, text[-3000:])
        context = "\ncmd: %s\nslowhttptest output tail:\n%s\ncsv:\n%s%s" % (
            " ".join(cmd), text[-1500:], csv_path.read_text()[-2000:], self.proxy.context())
        self.attack_context = context
        return rows, text, fd_samples, prober

    def assert_service_kept(self, prober, fd_samples):
        """The prober got 200 every time; tokgate is alive, answers, and its descriptors come
        back to the pre-attack count."""
        context = self.attack_context
        self.assertEqual(prober.failures, [], "the normal client was refused or stalled "
                         "during the attack" + context)
        # 0.5 s rounds over the whole attack: at least a handful per kind, or the prober itself
        # stalled (a probe that took longer than PROBE_TIMEOUT is a failure above).
        for kind, _, _ in self.probe_targets:
            done = [r for r in prober.results if r[0] == kind]
            self.assertGreaterEqual(len(done), 6, "%s probes: %r%s" % (kind, done, context))
        self.assertIsNone(self.proxy.process.poll(), "tokgate died" + context)
        self.assertNotIn(None, fd_samples, "tokgate went away during the attack" + context)
        settled = wait_until(
            lambda: (open_fds(self.pid) or 10 ** 9) <= self.baseline_fds + FD_SLACK and
            open_fds(self.pid), FD_SETTLE, "descriptors back to %d (+%d); now %s" % (
                self.baseline_fds, FD_SLACK, open_fds(self.pid)), interval=0.25)
        for kind, probe_url, cacert in self.probe_targets:
            result = curl(probe_url, proxy=self.proxy.url, cacert=cacert, timeout=PROBE_TIMEOUT)
            self.assertEqual((result.returncode, result.status), (0, 200),
                             "%s after the attack: %s%s" % (kind, result.describe(), context))
        return settled

    def assert_slowloris_cut(self, rows, text, connections, seconds, mark):
        context = self.attack_context
        # slowhttptest stops early only when the server closed every connection it had.
        self.assertTrue("No open connections left" in text,
                        "slowhttptest was not left without connections" + context)
        ended = re.search(r"Test ended on (\d+)\w* second", text)
        self.assertIsNotNone(ended, context)
        self.assertLess(int(ended.group(1)), seconds, context)
        # The attack took hold (most connections were open at once) ...
        self.assertGreaterEqual(max(r["Connected"] for r in rows), connections // 2, context)
        # ... and none was closed before the header timeout could fire: the timer cut them,
        # not a refusal at accept.
        early = [r for r in rows if r["Seconds"] < HEADER_TIMEOUT_S - 1]
        self.assertTrue(early, context)
        self.assertEqual([r["Closed"] for r in early], [0] * len(early), context)
        self.assertGreaterEqual(rows[-1]["Closed"], connections // 2, context)
        # tokgate says why: one 408 request-timeout per slowloris connection.
        timeouts = records_since(self.proxy, mark, event="request-failed",
                                 error="request-timeout")
        self.assertGreaterEqual(len(timeouts), connections * 9 // 10, context)
        self.assertEqual({r.get("status") for r in timeouts}, {"408"}, context)

    def assert_slow_read_held(self, rows, text, fd_samples, connections):
        context = self.attack_context
        self.assertTrue("Hit test time limit" in text,
                        "slowhttptest lost its connections before the time limit" + context)
        # Every slow reader got its connection and kept it: tokgate did not drop them (they do
        # make progress, 32 bytes at a time) ...
        self.assertGreaterEqual(max(r["Connected"] for r in rows), connections * 9 // 10,
                                context)
        # ... it held them (a client and an origin descriptor each) ...
        self.assertGreaterEqual(max(fd_samples), self.baseline_fds + connections * 9 // 10,
                                "descriptor samples %r%s" % (fd_samples, context))
        # ... and slowhttptest's own probe, through the proxy too, never found it unavailable.
        self.assertEqual([r["Seconds"] for r in rows if r["Service Available"] == 0], [],
                         context)

    # --- tests ------------------------------------------------------------------------------

    def test_slowloris_through_the_proxy_cut_by_header_timeout(self):
        """300 absolute-form requests whose header block grows by one line a second (so a
        per-read idle timer would never fire): all cut by the 3 s header timeout."""
        mark = log_mark(self.proxy)
        url = "http://example.org:%d/whoami" % self.plain_target.port
        rows, text, fds, prober = self.attack("slowloris-proxy", ["-H", "-i", "1", "-x", "24"],
                                              url, 300, 30, through_proxy=True)
        self.assert_slowloris_cut(rows, text, 300, 30, mark)
        self.assert_service_kept(prober, fds)

    def test_slowloris_on_intercepted_https(self):
        """The same inside decrypted tunnels: 100 TLS connections through CONNECT, each sending
        a never-ending header block after the handshake."""
        forwarder = self.forwarder(self.tls_target.port)
        mark = log_mark(self.proxy)
        url = "https://localhost:%d/whoami" % forwarder.port
        rows, text, fds, prober = self.attack("slowloris-tls", ["-H", "-i", "1", "-x", "24"],
                                              url, 100, 30, through_proxy=False)
        self.assert_slowloris_cut(rows, text, 100, 30, mark)
        self.assertEqual(set(forwarder.answers), {200}, self.attack_context)
        self.assert_service_kept(prober, fds)

    def test_slow_read_through_the_proxy(self):
        """300 connections reading 1 MiB responses 32 bytes every 2 s through a 512-1024 byte
        window, two pipelined requests each, for 20 s."""
        # 300, not more: tokgate holds two descriptors per slow reader (client and origin leg)
        # and does not raise its own descriptor limit, which is often 1024 outside systemd.
        url = "http://example.org:%d/bytes/%d" % (self.plain_target.port, SLOW_BODY)
        rows, text, fds, prober = self.attack(
            "slow-read-proxy", ["-X", "-w", "512", "-y", "1024", "-n", "2", "-z", "32", "-k", "2"],
            url, 300, 20, through_proxy=True)
        self.assert_slow_read_held(rows, text, fds, 300)
        self.assert_service_kept(prober, fds)

    def test_slow_read_on_intercepted_https(self):
        """100 slow readers inside decrypted tunnels for 15 s."""
        forwarder = self.forwarder(self.tls_target.port)
        url = "https://localhost:%d/bytes/%d" % (forwarder.port, SLOW_BODY)
        rows, text, fds, prober = self.attack(
            "slow-read-tls", ["-X", "-w", "512", "-y", "1024", "-n", "2", "-z", "32", "-k", "2"],
            url, 100, 15, through_proxy=False)
        self.assert_slow_read_held(rows, text, fds, 100)
        self.assert_service_kept(prober, fds)


if __name__ == "__main__":
    unittest.main()
