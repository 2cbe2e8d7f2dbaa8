"""Reloading the policy: SIGHUP and the file watch swap the policy for new requests without
dropping a connection; an invalid file is reported with FILE:LINE:COL and the old policy stays
in force; the admin /status shows what is in force. The main test runs a bounded load (4 client
threads on kept-alive tunnels) through seven reloads."""

import http.client
import re
import signal
import ssl
import sys
import threading
import time
import unittest

from harness import (TIKTOK_WEB_HOST, IntegrationTestCase, admin_status, curl, log_mark,
                     policy_run_args, records_since, tunnel_connection, wait_for_record,
                     write_file_replacing)

BLOCK_RULE = "block-blocked-path"

ALLOW_POLICY = """\
# Everything passes (and is logged).
[policy]
name = "%(name)s"
organisation = "tokgate reload tests"
default_action = "log"
"""

BLOCK_POLICY = """\
# Only /whoami/blocked/... is blocked.
[policy]
name = "%(name)s"
organisation = "tokgate reload tests"
default_action = "log"

[[rules]]
name = "block-blocked-path"
action = "block"
match = { path = ["/whoami/blocked/*"] }
"""

# Three errors: an unknown action (line 4), a path pattern without '/' (line 9), an unknown key
# (line 10).
INVALID_POLICY = """\
[policy]
name = "reload-broken"
organisation = "tokgate reload tests"
default_action = "explode"

[[rules]]
name = "broken-rule"
action = "block"
match = { path = ["no-leading-slash"] }
colour = "red"
"""
INVALID_LINES = (4, 9, 10)

LOAD_THREADS = 4
LOAD_MIN_REQUESTS = 100        # per thread, at least; they go on until the reloads are done
LOAD_MAX_REQUESTS = 2000       # per thread, at most
LOAD_DEADLINE = 60.0           # seconds, for the whole load
LOAD_PAUSE = 0.004             # between requests of one thread: leave the 2 cores some air


def policy_text(blocking, name):
    return (BLOCK_POLICY if blocking else ALLOW_POLICY) % {"name": name}


class LoadThread(threading.Thread):
    """One client: a kept-alive tunnel to www.tiktok.com, alternating a normal path and a path
    the block policy blocks, checking each answer."""

    def __init__(self, index, proxy, origin_port, stop):
        super().__init__(daemon=True, name="load-%d" % index)
        self.index = index
        self.proxy = proxy
        self.origin_port = origin_port
        self.stop = stop
        self.counts = {"requests": 0, "normal_200": 0, "blocked_path_200": 0,
                       "blocked_path_451": 0, "connections": 0}
        self.failures = []    # (request number, description)

    def run(self):
        deadline = time.monotonic() + LOAD_DEADLINE
        conn = None
        sock = None
        try:
            for i in range(LOAD_MAX_REQUESTS):
                if time.monotonic() > deadline:
                    self.failures.append((i, "load deadline passed"))
                    break
                if i >= LOAD_MIN_REQUESTS and self.stop.is_set():
                    break
                if conn is None:
                    conn = tunnel_connection(self.proxy.port, TIKTOK_WEB_HOST, self.origin_port,
                                             self.proxy.ca_pem)
                blocked_path = i % 2 == 1
                path = ("/whoami/blocked/t%d-%d" if blocked_path else "/whoami?t%d-%d") % (
                    self.index, i)
                try:
                    conn.request("GET", path, headers={"Accept": "application/json"})
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException, ssl.SSLError) as error:
                    self.failures.append((i, "%s: %r" % (path, error)))
                    conn.close()
                    conn = None
                    continue
                if conn.sock is not sock:
                    # http.client opens a new connection only after the previous one ended.
                    self.counts["connections"] += 1
                    sock = conn.sock
                self.counts["requests"] += 1
                status = response.status
                rule = response.getheader("X-Tokgate-Rule")
                if not blocked_path and status == 200:
                    self.counts["normal_200"] += 1
                elif blocked_path and status == 200:
                    self.counts["blocked_path_200"] += 1
                elif blocked_path and status == 451 and rule == BLOCK_RULE:
                    self.counts["blocked_path_451"] += 1
                else:
                    self.failures.append((i, "%s: status %d rule %r body %r" % (
                        path, status, rule, body[:200])))
                if conn.sock is None:
                    self.failures.append((i, "%s: the proxy closed the connection" % path))
                time.sleep(LOAD_PAUSE)
        except BaseException as error:  # noqa: B902 - reported by the test, not lost
            self.failures.append((-1, "load thread died: %r" % error))
        finally:
            if conn is not None:
                conn.close()


class ReloadTestBase(IntegrationTestCase):

    def sighup(self, proxy):
        proxy.process.send_signal(signal.SIGHUP)

    def start_with_policy(self, name, text, extra=()):
        path = self.tmp / ("%s.toml" % name)
        write_file_replacing(path, text)
        proxy = self.start_tokgate(name, args=policy_run_args(policy=path, extra=extra))
        return proxy, path

    def reload_to(self, proxy, path, blocking, name, signal_it=True):
        """Writes the policy, reloads (SIGHUP, or by letting the watch see it), and waits until
        that very policy is in force. Returns the policy-reloaded line."""
        mark = log_mark(proxy)
        write_file_replacing(path, policy_text(blocking, name))
        if signal_it:
            self.sighup(proxy)
        return wait_for_record(proxy, timeout=10.0, start=mark, event="policy-reloaded",
                               name=name)

    def status_in_force(self, proxy):
        """/status, checked against the log: its generation is that of the newest successful
        reload logged around the query (the file watch may reload a SIGHUP'd change again a
        moment later, so the newest is bracketed rather than assumed)."""
        def newest():
            lines = records_since(proxy, 0, event="policy-reloaded")
            return int(lines[-1]["generation"]) if lines else None
        before = newest()
        status = admin_status(proxy)
        after = newest()
        generation = status["policy"]["generation"]
        logged = {int(r["generation"]) for r in records_since(proxy, 0, event="policy-reloaded")}
        if before is not None:
            self.assertIn(generation, logged, status)
            self.assertTrue(before <= generation <= after, (before, generation, after, status))
        return status

    def probe(self, proxy, origin, expect_block, tunnel=None, tag=""):
        """Fresh connection (curl) and, if given, an old kept-alive tunnel: the blocked path
        answers 451 exactly when the block policy is in force; the normal path always 200."""
        url = "https://%s:%d" % (TIKTOK_WEB_HOST, origin.https_port)
        blocked = curl(url + "/whoami/blocked/probe%s" % tag, proxy=proxy.url,
                       cacert=proxy.ca_pem, headers=["Accept: application/json"])
        normal = curl(url + "/whoami?probe%s" % tag, proxy=proxy.url, cacert=proxy.ca_pem)
        self.assertEqual(normal.status, 200, normal.describe() + proxy.context())
        self.assertEqual(blocked.status, 451 if expect_block else 200,
                         blocked.describe() + proxy.context())
        if expect_block:
            self.assertEqual(blocked.header("x-tokgate-rule"), BLOCK_RULE, blocked.describe())
        if tunnel is not None:
            tunnel.request("GET", "/whoami/blocked/tunnel-probe%s" % tag)
            response = tunnel.getresponse()
            response.read()
            self.assertEqual(response.status, 451 if expect_block else 200,
                             "the long-lived tunnel does not follow the reload" + proxy.context())


class ReloadUnderLoadTest(ReloadTestBase):

    def test_reloads_under_load(self):
        proxy, path = self.start_with_policy("reload-load", policy_text(False, "step-0"))
        origin = self.origin
        tunnel = tunnel_connection(proxy.port, TIKTOK_WEB_HOST, origin.https_port, proxy.ca_pem)
        self.addCleanup(tunnel.close)
        self.probe(proxy, origin, False, tunnel, "-0")
        tunnel_socket = tunnel.sock

        stop = threading.Event()
        threads = [LoadThread(i, proxy, origin.https_port, stop) for i in range(LOAD_THREADS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        generations = []
        try:
            # Let the load get going, then reload under it.
            deadline = time.monotonic() + 10
            while sum(t.counts["requests"] for t in threads) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            steps = [(True, True), (False, True), (True, True)]          # (blocking, SIGHUP)
            for n, (blocking, signal_it) in enumerate(steps, start=1):
                record = self.reload_to(proxy, path, blocking, "step-%d" % n, signal_it)
                generations.append(int(record["generation"]))
                self.probe(proxy, origin, blocking, tunnel, "-%d" % n)

            # An invalid file: reported with FILE:LINE:COL, and the block policy stays.
            mark = log_mark(proxy)
            write_file_replacing(path, INVALID_POLICY)
            self.sighup(proxy)
            failed = wait_for_record(proxy, start=mark, event="policy-reload-failed")
            reason = failed.get("reason", "")
            for line in INVALID_LINES:
                self.assertRegex(reason, re.escape(str(path)) + ":%d:\\d+: " % line, failed)
            self.probe(proxy, origin, True, tunnel, "-invalid")
            status = self.status_in_force(proxy)
            self.assertEqual(status["policy"]["name"], "step-3", status)
            self.assertIn(str(path), status["policy"]["last_reload_error"], status)
            self.assertGreaterEqual(status["policy"]["generation"], generations[-1], status)

            record = self.reload_to(proxy, path, False, "step-4")
            generations.append(int(record["generation"]))
            self.probe(proxy, origin, False, tunnel, "-4")

            # The file watch alone (no signal).
            record = self.reload_to(proxy, path, True, "step-5", signal_it=False)
            self.assertEqual(record.get("trigger"), "file-changed", record)
            generations.append(int(record["generation"]))
            self.probe(proxy, origin, True, tunnel, "-5")

            record = self.reload_to(proxy, path, False, "step-6")
            generations.append(int(record["generation"]))
            self.probe(proxy, origin, False, tunnel, "-6")
            reloads_done = time.monotonic() - started
        finally:
            stop.set()
            for thread in threads:
                thread.join(LOAD_DEADLINE + 15)

        elapsed = time.monotonic() - started
        totals = {key: sum(t.counts[key] for t in threads) for key in threads[0].counts}
        failures = [(t.index, n, what) for t in threads for n, what in t.failures]
        sys.stderr.write(
            "\nreload under load: %d threads, %d requests in %.1fs (reloads took %.1fs): "
            "normal 200=%d, blocked-path 200=%d, blocked-path 451=%d, client connections=%d, "
            "failures=%d; generations %s\n" % (
                LOAD_THREADS, totals["requests"], elapsed, reloads_done, totals["normal_200"],
                totals["blocked_path_200"], totals["blocked_path_451"], totals["connections"],
                len(failures), generations))

        self.assertFalse(any(t.is_alive() for t in threads), "a load thread is stuck")
        self.assertEqual(failures, [], proxy.context())
        self.assertGreaterEqual(totals["requests"], LOAD_THREADS * LOAD_MIN_REQUESTS)
        self.assertEqual(totals["connections"], LOAD_THREADS,
                         "client connections were dropped and reopened")
        self.assertGreater(totals["blocked_path_451"], 0, "the block policy never applied")
        self.assertGreater(totals["blocked_path_200"], 0, "the allow policy never applied")
        self.assertEqual(generations, sorted(set(generations)), "generations not increasing")
        self.assertIs(tunnel.sock, tunnel_socket, "the probe tunnel was reopened")
        self.assertEqual(records_since(proxy, 0, event="request", status="502"), [])


class ReloadStatusTest(ReloadTestBase):

    def test_status_reports_policy_and_reloads(self):
        proxy, path = self.start_with_policy("reload-status", policy_text(True, "status-1"))
        status = admin_status(proxy)
        policy = status.get("policy")
        self.assertIsInstance(policy, dict, status)
        self.assertEqual(policy["name"], "status-1", status)
        self.assertEqual(policy["source"], str(path), status)
        self.assertEqual(policy["rules"], 1, status)
        self.assertIsInstance(policy["generation"], int, status)
        self.assertTrue(policy["catalog"], status)
        self.assertFalse(policy["last_reload_error"], status)
        self.assertIsInstance(status.get("pinned_hosts"), int, status)
        first_generation = policy["generation"]

        record = self.reload_to(proxy, path, False, "status-2")
        status = self.status_in_force(proxy)
        self.assertEqual(status["policy"]["name"], "status-2", status)
        self.assertEqual(status["policy"]["rules"], 0, status)
        self.assertGreaterEqual(status["policy"]["generation"], int(record["generation"]), status)
        self.assertGreater(status["policy"]["generation"], first_generation, status)

        mark = log_mark(proxy)
        write_file_replacing(path, INVALID_POLICY)
        self.sighup(proxy)
        wait_for_record(proxy, start=mark, event="policy-reload-failed")
        status = self.status_in_force(proxy)  # the generation of the last good reload
        self.assertEqual(status["policy"]["name"], "status-2", "a broken file replaced the policy")
        self.assertRegex(status["policy"]["last_reload_error"],
                         re.escape(str(path)) + r":\d+:\d+: ", status)

    def test_profile_status_and_sighup(self):
        proxy = self.start_tokgate("reload-profile", args=policy_run_args(profile="observe"))
        status = admin_status(proxy)
        self.assertEqual(status["policy"]["name"], "observe", status)
        self.assertIn("observe", status["policy"]["source"], status)
        mark = log_mark(proxy)
        self.sighup(proxy)
        record = wait_for_record(proxy, start=mark, event="policy-reloaded")
        self.assertEqual(record.get("name"), "observe", record)
        self.assertEqual(self.status_in_force(proxy)["policy"]["generation"],
                         int(record["generation"]))

    def test_policy_file_wins_over_profile(self):
        path = self.tmp / "wins.toml"
        write_file_replacing(path, policy_text(True, "file-wins"))
        for order, args in (("profile-last", policy_run_args(policy=path, extra=[
                                "--profile", "observe"])),
                            ("profile-first", policy_run_args(profile="observe", policy=path))):
            with self.subTest(order=order):
                proxy = self.start_tokgate("wins-" + order, args=args)
                self.assertEqual(admin_status(proxy)["policy"]["name"], "file-wins",
                                 proxy.context())
                proxy.stop()

    def test_invalid_policy_at_startup_is_a_usage_error(self):
        path = self.tmp / "invalid-at-start.toml"
        write_file_replacing(path, INVALID_POLICY)
        proxy = self.start_tokgate("invalid-start", args=policy_run_args(policy=path),
                                   wait=False)
        code = proxy.process.wait(20)
        proxy.exit_expected = True
        self.assertEqual(code, 2, proxy.context())
        output = "\n".join(proxy.log.snapshot())
        for line in INVALID_LINES:
            self.assertRegex(output, re.escape(str(path)) + ":%d:\\d+: " % line)


class CatalogReloadTest(ReloadTestBase):
    """--catalog-dir: a catalog file added there and a SIGHUP make a new host a target."""

    CATALOG = """\
[catalog]
description = "integration test additions"

[[signature]]
id = "test-lab-website"
category = "web"
stage = 55
description = "example.org treated as TikTok's website, for the reload test"
source = "tokgate integration tests"
hosts = ["example.org"]
"""

    def test_catalog_dir_reload(self):
        catalog_dir = self.scratch_dir("catalog-reload")
        proxy = self.start_tokgate("catalog-reload", args=policy_run_args(
            profile="gateway", catalog_dir=catalog_dir))
        url = "https://example.org:%d/whoami?catalog-reload" % self.origin.https_port
        result = curl(url, proxy=proxy.url, cacert=self.pki.ca_cert)
        self.assertEqual(result.status, 200, result.describe() + proxy.context())  # spliced
        version = admin_status(proxy)["policy"]["catalog"]

        mark = log_mark(proxy)
        write_file_replacing(catalog_dir / "test_additions.toml", self.CATALOG)
        self.sighup(proxy)
        wait_for_record(proxy, start=mark, event="policy-reloaded")
        self.assertNotEqual(admin_status(proxy)["policy"]["catalog"], version)
        result = curl(url, proxy=proxy.url, cacert=proxy.ca_pem,
                      headers=["Accept: application/json"])
        self.assertEqual(result.status, 451, result.describe() + proxy.context())
        self.assertEqual(result.header("x-tokgate-category"), "web", result.describe())


if __name__ == "__main__":
    unittest.main()
