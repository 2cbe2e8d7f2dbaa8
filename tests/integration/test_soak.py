"""A bounded soak: steady mixed load, client churn and policy reloads for TOKGATE_SOAK_SECONDS
(default 60; bench/soak.sh runs it for longer outside CI).

Load (each client checks every answer):
- ka: intercepted HTTPS, HTTP/1.1 keep-alive (http.client through CONNECT), bodies of 0 B to
  200 KB checked by length, a new connection every 25 requests, and now and then a path the
  policy blocks (451 from the rule soak-block);
- nc: intercepted HTTPS, a new connection (CONNECT + handshake) for every request;
- h2: intercepted HTTPS over HTTP/2, curl --http2 with several URLs per run;
- plain: absolute-form plain HTTP, keep-alive, GETs of chunked and sized bodies and POSTs whose
  body the origin hashes;
- churn: connections abandoned on purpose at every stage (after accept, after CONNECT, after the
  TLS handshake, mid-response), the error paths where leaks hide;
- admin: /api/stats and /metrics once a second, as the web UI and Prometheus would.

Every RELOAD_INTERVAL seconds a new valid policy file (observe.toml with a block rule and a new
name) is written and tokgate gets SIGHUP; once, halfway, the file is invalid and the old policy
must stay in force (/api/status keeps its name and reports the error, the block rule still
blocks). RSS and open descriptors of tokgate are sampled every second.

Printed: requests done per client, errors by kind, connections, reloads, RSS and descriptor
samples. Asserted: no error of any kind; every request in the flow log exactly once (across the
flow-log reopen that SIGHUP does); RSS flat after warm-up (bound explained at RSS_*); descriptors
and open connections back to their pre-load values; every reload counted in
tokgate_policy_reloads_total.

Real parts only: tokgate, curl, Python http.client/ssl, origin.py and h2origin.mjs on loopback."""

import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import threading
import time
import unittest
from collections import Counter

from flowlog_schema import load_flow_log
from harness import (REPO_ROOT, IntegrationTestCase, NodeOrigin, RawConnection, admin_get,
                     admin_status, clean_env, log_mark, pattern_sha256, policy_run_args,
                     process_memory, tls_client_context, tunnel_connection, wait_for_record,
                     wait_until, write_file_replacing)

SOAK_SECONDS = float(os.environ.get("TOKGATE_SOAK_SECONDS") or 60)
RELOAD_INTERVAL = 3.0
PAUSE = 0.01                  # between two operations of one client: leave the 2 cores some air
CLIENT_TIMEOUT = 20.0         # per socket operation of a client
HOST = "www.tiktok.com"       # a target of the observe profile: intercepted
BLOCK_RULE = "soak-block"
MiB = 1024 * 1024

# RSS bound. The warm-up is the first 20% of the soak (relay buffers, the leaf cache and the
# malloc arenas of the workers fill up there); its value is the median of its second half. The
# median of the last quarter may exceed it by max(RSS_ABS_SLACK, RSS_REL_SLACK x warm-up).
# Measured on the 2-core CI machine: tokgate sits near 20 MiB under this load and its RSS moves
# by less than 0.5 MiB once warm (how many 64 KiB relay buffers are live at a sample, what
# malloc keeps cached), so 5 MiB is ten times the noise. Between the end of the warm-up and the
# last quarter (about 40 s of the default 60) the load opens some 5 000 client connections,
# does 9 000 requests and 12 reloads: a leak of 1 KiB per connection, 0.6 KiB per request, one
# relay buffer per hundred connections or one 450 KiB policy + catalog per reload breaks the
# bound. bench/soak.sh's 10-minute run is ten times as sensitive with the same bound.
RSS_WARMUP_SHARE = 0.2
RSS_ABS_SLACK = 5 * MiB
RSS_REL_SLACK = 0.15
FD_TOLERANCE = 3              # descriptors the end may differ from the pre-load count


def observe_profile_text():
    return (REPO_ROOT / "policy" / "profiles" / "observe.toml").read_text()


def soak_policy(generation):
    """The shipped observe profile, renamed soak-N, with one block rule in front of its rules."""
    text = observe_profile_text()
    renamed, count = re.subn(r'(?m)^name = "observe"$', 'name = "soak-%d"' % generation, text)
    assert count == 1, "observe.toml has no `name = \"observe\"` line any more"
    block = ('[[rules]]\nname = "%s"\naction = "block"\n'
             'match = { host = ["%s"], path = ["/blocked/*"] }\n\n' % (BLOCK_RULE, HOST))
    index = renamed.index("[[rules]]")
    return renamed[:index] + block + renamed[index:]


def invalid_policy():
    """A policy that does not load: an unknown default action (line of `default_action`)."""
    text, count = re.subn(r'(?m)^default_action = "allow"$', 'default_action = "sometimes"',
                          soak_policy(0))
    assert count == 1, "observe.toml has no `default_action = \"allow\"` line any more"
    return text


def open_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def settle(read, good, timeout=20.0, interval=0.25):
    """Reads until `good(value)` or the timeout; returns the last value read either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if good(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def stable_reading():
    """A `good` for settle(): true once two readings in a row are equal."""
    previous = []

    def same(value):
        result = bool(previous) and previous[-1] == value and value is not None
        previous.append(value)
        return result
    return same


def metric_value(text, name, **labels):
    """One sample of the Prometheus text (None if absent)."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if "{" in key:
            metric, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(",")))
        else:
            metric, got = key, ""
        if metric == name and got == want:
            return float(value)
    return None


class Client(threading.Thread):
    """One load client: run_once() until stopped; counts requests, records every error by
    kind (`name:what`) with a few examples."""

    def __init__(self, name, soak):
        super().__init__(daemon=True, name=name)
        self.soak = soak
        self.requests = 0
        self.errors = Counter()
        self.examples = []
        self.iterations = 0

    def error(self, kind, detail):
        self.errors["%s:%s" % (self.name, kind)] += 1
        if len(self.examples) < 5:
            self.examples.append("%s:%s %s" % (self.name, kind, detail))

    def run(self):
        deadline = time.monotonic() + SOAK_SECONDS + 60
        while not self.soak.stop.is_set() and time.monotonic() < deadline:
            self.iterations += 1
            try:
                self.run_once()
            except (OSError, http.client.HTTPException, ssl.SSLError, ValueError,
                    subprocess.SubprocessError, AssertionError) as error:
                self.error(type(error).__name__, repr(error)[:300])
                self.reset()
            time.sleep(PAUSE)
        self.reset()

    def reset(self):
        pass

    def check(self, condition, kind, detail):
        if not condition:
            self.error(kind, detail)
        return condition


class KeepAliveClient(Client):
    """Intercepted HTTPS, HTTP/1.1 keep-alive: 25 requests per connection."""
    SIZES = (0, 1, 1000, 65536, 200_000)

    def __init__(self, soak):
        super().__init__("ka", soak)
        self.conn = None
        self.on_conn = 0

    def reset(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def run_once(self):
        if self.conn is None or self.on_conn >= 25:
            self.reset()
            self.conn = tunnel_connection(self.soak.proxy.port, HOST, self.soak.node.port,
                                          self.soak.proxy.ca_pem, timeout=CLIENT_TIMEOUT)
            self.on_conn = 0
        self.on_conn += 1
        i = self.iterations
        if i % 10 == 0:
            self.conn.request("GET", "/blocked/ka-%d" % i, headers={"Accept": "application/json"})
            response = self.conn.getresponse()
            response.read()
            self.requests += 1
            self.check((response.status, response.getheader("X-Tokgate-Rule")) ==
                       (451, BLOCK_RULE), "not-blocked",
                       "%s %s" % (response.status, response.getheaders()))
            return
        size = self.SIZES[i % len(self.SIZES)]
        self.conn.request("GET", "/bytes/%d/ka-%d" % (size, i))
        response = self.conn.getresponse()
        body = response.read()
        self.requests += 1
        self.check(response.status == 200, "status-%d" % response.status, body[:200])
        self.check(len(body) == size, "length", "%d != %d" % (len(body), size))


class NewConnectionClient(Client):
    """Intercepted HTTPS, one connection (CONNECT + handshake) per request."""

    def __init__(self, soak):
        super().__init__("nc", soak)

    def run_once(self):
        conn = tunnel_connection(self.soak.proxy.port, HOST, self.soak.node.port,
                                 self.soak.proxy.ca_pem, timeout=CLIENT_TIMEOUT)
        try:
            conn.request("GET", "/whoami/nc-%d" % self.iterations)
            response = conn.getresponse()
            body = response.read()
            self.requests += 1
            self.check(response.status == 200, "status-%d" % response.status, body[:200])
            self.check(b'"sni"' in body, "body", body[:200])
        finally:
            conn.close()


class Http2Client(Client):
    """Intercepted HTTPS over HTTP/2: curl --http2, five requests per run on one connection."""
    SIZES = (0, 512, 70_000, 10, 300_000)

    def __init__(self, soak):
        super().__init__("h2", soak)

    def run_once(self):
        base = "https://%s:%d" % (HOST, self.soak.node.port)
        cmd = ["curl", "-q", "-sS", "--http2", "--max-time", str(int(CLIENT_TIMEOUT)),
               "--proxy", self.soak.proxy.url, "--cacert", str(self.soak.proxy.ca_pem),
               "-w", "%{http_code} %{http_version} %{size_download}\\n"]
        for j, size in enumerate(self.SIZES):
            cmd += ["-o", "/dev/null", "%s/bytes/%d/h2-%d-%d" % (base, size, self.iterations, j)]
        result = subprocess.run(cmd, capture_output=True, timeout=CLIENT_TIMEOUT + 10,
                                env=clean_env())
        lines = result.stdout.decode(errors="replace").split()
        done = [tuple(lines[k:k + 3]) for k in range(0, len(lines) - 2, 3)]
        for (code, version, size), want in zip(done, self.SIZES):
            if code != "000":
                self.requests += 1
            self.check((code, version, size) == ("200", "2", str(want)), "transfer",
                       "%s %s %s (want %d)" % (code, version, size, want))
        self.check(result.returncode == 0 and len(done) == len(self.SIZES),
                   "curl-exit-%d" % result.returncode, result.stderr[-300:])


class PlainClient(Client):
    """Absolute-form plain HTTP through the proxy, keep-alive, 20 requests per connection:
    sized and chunked GETs and hashed POSTs."""

    def __init__(self, soak):
        super().__init__("plain", soak)
        self.conn = None
        self.on_conn = 0
        self.base = "http://example.org:%d" % soak.origin.http_port

    def reset(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def run_once(self):
        if self.conn is None or self.on_conn >= 20:
            self.reset()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.soak.proxy.port,
                                                   timeout=CLIENT_TIMEOUT)
            self.on_conn = 0
        self.on_conn += 1
        i = self.iterations
        kind = i % 3
        if kind == 2:
            body = os.urandom(1000 + (i % 7) * 3000)
            self.conn.request("POST", "%s/sha256/plain-%d" % (self.base, i), body=body)
            response = self.conn.getresponse()
            answer = response.read()
            self.requests += 1
            if self.check(response.status == 200, "status-%d" % response.status, answer[:200]):
                self.check(b'"%s"' % hashlib.sha256(body).hexdigest().encode() in answer,
                           "sha256", answer[:200])
            return
        size = 5000 + (i % 11) * 7000
        route = "chunked" if kind == 1 else "bytes"
        self.conn.request("GET", "%s/%s/%d/plain-%d" % (self.base, route, size, i))
        response = self.conn.getresponse()
        body = response.read()
        self.requests += 1
        self.check(response.status == 200, "status-%d" % response.status, body[:200])
        self.check(len(body) == size and response.getheader("X-Sha256") == pattern_sha256(size),
                   "body", "%d bytes" % len(body))


class ChurnClient(Client):
    """Connections abandoned on purpose, cycling through the stages a client can vanish at.
    Only a failure before the deliberate abort is an error."""

    def __init__(self, soak):
        super().__init__("churn", soak)
        self.abandoned = Counter()

    def connect(self):
        raw = RawConnection(self.soak.proxy.port, timeout=CLIENT_TIMEOUT)
        authority = ("%s:%d" % (HOST, self.soak.node.port)).encode()
        raw.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
        response = raw.read_response(connect=True)
        if not self.check(response is not None and response.status == 200, "connect",
                          response and response.status):
            raw.close()
            return None
        return raw

    def run_once(self):
        stage = ("accept", "connect", "handshake", "mid-response", "plain-mid-response")[
            self.iterations % 5]
        self.abandoned[stage] += 1
        if stage == "accept":
            socket.create_connection(("127.0.0.1", self.soak.proxy.port), CLIENT_TIMEOUT).close()
            return
        if stage == "plain-mid-response":
            with RawConnection(self.soak.proxy.port, timeout=CLIENT_TIMEOUT) as raw:
                raw.send(b"GET http://example.org:%d/bytes/4000000/churn-%d HTTP/1.1\r\n"
                         b"Host: example.org:%d\r\n\r\n" % (self.soak.origin.http_port,
                                                           self.iterations,
                                                           self.soak.origin.http_port))
                self.check(raw.sock.recv(1000), "no-bytes", "plain response never started")
            return
        raw = self.connect()
        if raw is None or stage == "connect":
            if raw:
                raw.close()
            return
        context = tls_client_context(self.soak.proxy.ca_pem)
        tls = context.wrap_socket(raw.sock, server_hostname=HOST)
        try:
            if stage == "mid-response":
                tls.sendall(b"GET /bytes/4000000/churn-%d HTTP/1.1\r\nHost: %s\r\n\r\n"
                            % (self.iterations, HOST.encode()))
                self.check(tls.recv(1000), "no-bytes", "TLS response never started")
        finally:
            tls.close()


class SoakTest(IntegrationTestCase):

    def test_soak(self):
        self.node = NodeOrigin(self.pki, "both")
        self.addCleanup(self.node.stop)
        work = self.scratch_dir("soak")
        self.policy_path = work / "policy.toml"
        write_file_replacing(self.policy_path, soak_policy(1))
        flow_log = work / "flows.jsonl"
        # The file watch is off: only our SIGHUPs reload, so the counters can be checked exactly.
        self.proxy = self.start_tokgate(
            args=policy_run_args(policy=self.policy_path, extra=["--flow-log", flow_log]),
            config_text="[policy]\nwatch = false\n")
        proxy = self.proxy
        pid = proxy.process.pid
        self.stop = threading.Event()

        # Warm-up request so the lazily made state exists before the baseline.
        conn = tunnel_connection(proxy.port, HOST, self.node.port, proxy.ca_pem)
        conn.request("GET", "/whoami/warm")
        self.assertEqual(conn.getresponse().status, 200, proxy.context())
        conn.close()
        fd_baseline = settle(lambda: open_fds(pid), stable_reading())

        clients = [KeepAliveClient(self), NewConnectionClient(self), Http2Client(self),
                   PlainClient(self), ChurnClient(self)]
        reload_log = {"ok": 0, "error": 0, "failures": [], "names": []}
        rss, fds = [], []
        admin_errors = Counter()

        started = time.monotonic()
        for client in clients:
            client.start()
        reloader = threading.Thread(target=self.reload_loop, args=(reload_log, started),
                                    daemon=True)
        reloader.start()
        # The sampler is this thread: RSS, descriptors, and the admin endpoints, once a second.
        next_sample = started
        while time.monotonic() - started < SOAK_SECONDS:
            memory = process_memory(pid)
            rss.append(memory["rss"] if memory else None)
            fds.append(open_fds(pid))
            for path in ("/api/stats", "/metrics"):
                try:
                    status, _, _ = admin_get(proxy, path)
                    if status != 200:
                        admin_errors["admin:%s:%d" % (path, status)] += 1
                except (OSError, http.client.HTTPException) as error:
                    admin_errors["admin:%s:%s" % (path, type(error).__name__)] += 1
            if proxy.process.poll() is not None:
                break
            next_sample += 1.0
            time.sleep(max(0.0, next_sample - time.monotonic()))
        self.stop.set()
        for client in clients:
            client.join(CLIENT_TIMEOUT * 2 + 10)
        reloader.join(30)
        elapsed = time.monotonic() - started
        self.assertIsNone(proxy.process.poll(), "tokgate died during the soak" + proxy.context())
        self.assertFalse(any(c.is_alive() for c in clients), "a client is stuck")

        # --- settle: every connection closed, descriptors back (polled, asserted after the
        # report is printed) -----------------------------------------------------------------
        def open_connections():
            _, _, body = admin_get(proxy, "/metrics")
            return metric_value(body.decode(), "tokgate_connections_open")
        open_end = settle(open_connections, lambda v: v == 0)
        fd_end = settle(lambda: open_fds(pid),
                        lambda v: v is not None and abs(v - fd_baseline) <= FD_TOLERANCE)
        _, _, metrics_body = admin_get(proxy, "/metrics")
        metrics = metrics_body.decode()

        # --- report ----------------------------------------------------------------------------
        errors = Counter(admin_errors)
        for client in clients:
            errors.update(client.errors)
        requests = {c.name: c.requests for c in clients}
        connections = sum(metric_value(metrics, "tokgate_connections_total", verdict=v) or 0
                          for v in ("intercept", "splice", "refuse", "rejected", "error"))
        known_rss = [r for r in rss if r]
        warm_end = max(2, int(len(known_rss) * RSS_WARMUP_SHARE))
        warm_rss = statistics.median(known_rss[warm_end // 2:warm_end])
        last_rss = statistics.median(known_rss[-max(1, len(known_rss) // 4):])
        rss_limit = warm_rss + max(RSS_ABS_SLACK, RSS_REL_SLACK * warm_rss)
        report = [
            "soak: %.0f s, requests %d %s, client connections %d (churn %s)" % (
                elapsed, sum(requests.values()), requests, connections,
                dict(clients[-1].abandoned)),
            "soak: errors %s %s" % (dict(errors) or "none",
                                    [e for c in clients for e in c.examples][:10]),
            "soak: reloads ok %d, failed %d; policy names %s..%s" % (
                reload_log["ok"], reload_log["error"], reload_log["names"][:1],
                reload_log["names"][-1:]),
            "soak: RSS MiB start %.1f, warm-up %.1f, last quarter %.1f, end %.1f, max %.1f, "
            "limit %.1f" % (known_rss[0] / MiB, warm_rss / MiB, last_rss / MiB,
                            known_rss[-1] / MiB, max(known_rss) / MiB, rss_limit / MiB),
            "soak: RSS MiB per second %s" % " ".join("%.1f" % (r / MiB) for r in known_rss),
            "soak: fds baseline %d, start %s, max %s, end %d; per second %s" % (
                fd_baseline, fds[0], max(f for f in fds if f), fd_end,
                " ".join(str(f) for f in fds)),
        ]
        print("\n" + "\n".join(report), flush=True)
        context = "\n" + "\n".join(report) + proxy.context()

        # --- assertions ------------------------------------------------------------------------
        self.assertEqual(dict(errors), {}, context)
        self.assertEqual(reload_log["failures"], [], context)
        self.assertEqual(open_end, 0, "tokgate_connections_open after the load" + context)
        for client in clients[:-1]:
            self.assertGreater(client.requests, 10, "%s barely ran%s" % (client.name, context))
        # Reloads: each counted once, by result; the failed one kept the policy's generation.
        # One reload per RELOAD_INTERVAL plus its confirmation; the invalid one takes a slot.
        expected_reloads = int(SOAK_SECONDS / RELOAD_INTERVAL * 0.8) - 2
        self.assertGreaterEqual(reload_log["ok"], expected_reloads, context)
        self.assertEqual(reload_log["error"], 1, context)
        self.assertEqual(
            (metric_value(metrics, "tokgate_policy_reloads_total", result="ok"),
             metric_value(metrics, "tokgate_policy_reloads_total", result="error")),
            (float(reload_log["ok"]), 1.0), context)
        status = admin_status(proxy)["policy"]
        self.assertEqual((status["name"], status["generation"], status["last_reload_error"]),
                         (reload_log["names"][-1], 1 + reload_log["ok"], ""), context)
        # The flow log: strict schema, nothing dropped, every request of every client exactly
        # once (SIGHUP reopens the file on every reload).
        self.assertEqual(metric_value(metrics, "tokgate_flow_log_dropped_total"), 0, context)
        self.assertEqual(metric_value(metrics, "tokgate_flow_log_write_errors_total"), 0, context)
        records = wait_until(lambda: self.flow_records_complete(flow_log, requests), 15.0,
                             "every request in the flow log")
        tagged = Counter()
        for record in records:
            match = re.search(r"/(ka|nc|h2|plain)-\d", record.get("path", ""))
            if record.get("type") == "request" and match:
                tagged[match.group(1)] += 1
        self.assertEqual(dict(tagged), {k: v for k, v in requests.items() if k != "churn"},
                         context)
        # RSS and descriptors.
        if os.environ.get("TOKGATE_SANITIZED") != "1":
            # Under ASan the allocator's quarantine keeps freed memory on purpose.
            self.assertLessEqual(last_rss, rss_limit, "RSS grew after warm-up" + context)
        self.assertLessEqual(abs(fd_end - fd_baseline), FD_TOLERANCE, context)

    @staticmethod
    def flow_records_complete(path, requests):
        """The records once every client request is in (None while some are missing)."""
        records = load_flow_log(path, allow_partial_tail=True)
        want = sum(v for k, v in requests.items() if k != "churn")
        got = sum(1 for r in records if r.get("type") == "request"
                  and re.search(r"/(ka|nc|h2|plain)-\d", r.get("path", "")))
        return records if got >= want else None

    def reload_loop(self, log, started):
        """A valid policy every RELOAD_INTERVAL; once, halfway, an invalid one first. Each reload
        is confirmed by its log line and /api/status."""
        proxy = self.proxy
        generation = 1
        invalid_done = False
        deadline = started + SOAK_SECONDS + 30
        while not self.stop.wait(RELOAD_INTERVAL) and time.monotonic() < deadline:
            try:
                if not invalid_done and time.monotonic() - started >= SOAK_SECONDS / 2:
                    invalid_done = True
                    mark = log_mark(proxy)
                    write_file_replacing(self.policy_path, invalid_policy())
                    proxy.process.send_signal(signal.SIGHUP)
                    record = wait_for_record(proxy, 10.0, start=mark,
                                             event="policy-reload-failed")
                    log["error"] += 1
                    status = admin_status(proxy)["policy"]
                    if status["name"] != "soak-%d" % generation or str(
                            self.policy_path) not in status["last_reload_error"]:
                        log["failures"].append("after the invalid policy: %r (log %r)"
                                               % (status, record))
                    if self.stop.wait(RELOAD_INTERVAL):
                        break
                generation += 1
                name = "soak-%d" % generation
                mark = log_mark(proxy)
                write_file_replacing(self.policy_path, soak_policy(generation))
                proxy.process.send_signal(signal.SIGHUP)
                wait_for_record(proxy, 10.0, start=mark, event="policy-reloaded", name=name)
                log["ok"] += 1
                log["names"].append(name)
                status = admin_status(proxy)["policy"]
                if (status["name"], status["last_reload_error"]) != (name, ""):
                    log["failures"].append("after %s: %r" % (name, status))
            except AssertionError as error:
                log["failures"].append(str(error)[:1500])
                return


if __name__ == "__main__":
    unittest.main()
