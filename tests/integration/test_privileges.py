"""Dropping root after binding (issue 9): started as root with [proxy] user = "nobody", tokgate
binds its listeners (a port below 1024 among them) and opens its files as root, then runs as
nobody in every thread (all four uid and gid fields, nobody's groups only), and still
intercepts, reloads its policy on SIGHUP, reopens its flow log on SIGUSR1 (a new file after
logrotate moved the old one away) and writes HAR captures. An unknown user stops the start
with a clear message; root without a user gets a warning. Skipped unless run as root."""

import grp
import json
import os
import pwd
import signal
import socket
import stat
import unittest
from pathlib import Path

from harness import (IntegrationTestCase, curl, log_mark, parse_log_line, tokgate_command,
                     wait_for_record, wait_until, write_file_replacing)

HOST = "www.tiktok.com"
USER = "nobody"
LOW_PORT = 81

POLICY = """\
[policy]
name = "%(name)s"
organisation = "tokgate privilege tests"
default_action = "log"

[[rules]]
name = "capture-captured"
action = "capture"
match = { path = ["/whoami/captured/*"] }
%(extra)s"""

BLOCK_RULE = """
[[rules]]
name = "block-after-reload"
action = "block"
match = { path = ["/whoami/blocked/*"] }
"""


def status_ids(status_text, field):
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return [int(v) for v in line.split(":", 1)[1].split()]
    raise AssertionError("no %s line in %r" % (field, status_text[:500]))


def low_port_free():
    """True if 127.0.0.1:81 can be bound now (then tokgate, still root, can bind it too)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", LOW_PORT))
        return True
    except OSError:
        return False
    finally:
        probe.close()


@unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0,
                     "needs root: tokgate drops root only when it has it")
class PrivilegeDropTest(IntegrationTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            cls.user = pwd.getpwnam(USER)
        except KeyError:
            raise unittest.SkipTest("no user %r on this system" % USER)
        # nobody must reach the policy file (reloads) and the flow log directory (rotation),
        # as on a real install: the test's directory is made searchable.
        os.chmod(cls.tmp, 0o755)

    def start_as_nobody(self, name, extra_args=()):
        work = self.tmp / name
        work.mkdir(mode=0o755)
        logs = work / "logs"
        logs.mkdir()
        # The operator gives the log directory to the user (logrotate creates files there).
        os.chown(logs, self.user.pw_uid, self.user.pw_gid)
        policy = work / "policy.toml"
        policy.write_text(POLICY % {"name": "before-reload", "extra": ""})
        policy.chmod(0o644)
        config = ('[proxy]\nuser = "%s"\n[policy]\nwatch = false\n'
                  '[flow_log]\npath = "%s"\n[capture]\ndir = "%s"\n'
                  % (USER, logs / "flow.log", work / "captures"))
        args = self.intercept_args(HOST) + ["--policy", policy]
        args += list(extra_args)
        proxy = self.start_tokgate(name, args=args, config_text=config)
        return proxy, work, policy

    def test_runs_as_nobody_and_keeps_working(self):
        low = low_port_free()
        extra = ["--listen", "127.0.0.1:%d" % LOW_PORT] if low else []
        proxy, work, policy = self.start_as_nobody("nobody", extra)
        dropped = wait_for_record(proxy, event="privileges-dropped")
        self.assertEqual((dropped["user"], int(dropped["uid"]), int(dropped["gid"])),
                         (USER, self.user.pw_uid, self.user.pw_gid))
        lines = proxy.log.snapshot()
        self.assertFalse([l for l in lines if "running-as-root" in l], proxy.context())
        self.assertFalse([l for l in lines if "not-writable-after-drop" in l], proxy.context())

        # Every thread: real, effective, saved and file-system ids are nobody's, and the
        # supplementary groups are nobody's own.
        expected_groups = sorted(set(os.getgrouplist(USER, self.user.pw_gid)))
        pid = proxy.process.pid
        tasks = sorted(os.listdir("/proc/%d/task" % pid))
        self.assertGreater(len(tasks), 1, "workers and the flow sink are threads")
        for task in tasks:
            text = Path("/proc/%d/task/%s/status" % (pid, task)).read_text()
            self.assertEqual(status_ids(text, "Uid"), [self.user.pw_uid] * 4, (task, text))
            self.assertEqual(status_ids(text, "Gid"), [self.user.pw_gid] * 4, (task, text))
            self.assertEqual(sorted(status_ids(text, "Groups")), expected_groups, (task, text))
            cap_eff = [l for l in text.splitlines() if l.startswith("CapEff:")][0]
            self.assertEqual(int(cap_eff.split()[1], 16), 0, (task, cap_eff))

        # The flow log and the capture directory were handed over before the drop.
        flow_log = work / "logs" / "flow.log"
        self.assertEqual(flow_log.stat().st_uid, self.user.pw_uid)
        self.assertEqual((work / "captures").stat().st_uid, self.user.pw_uid)
        self.assertTrue(stat.S_ISDIR((work / "captures").stat().st_mode))

        # Interception and captures still work.
        origin = "%s:%d" % (HOST, self.origin.https_port)
        result = curl("https://%s/whoami/captured/1" % origin, proxy=proxy.url,
                      cacert=proxy.ca_pem)
        self.assertEqual(result.status, 200, result.describe() + proxy.context())
        har = wait_until(lambda: list((work / "captures").rglob("*.har")), 10, "a HAR capture")
        self.assertEqual(har[0].stat().st_uid, self.user.pw_uid)
        wait_until(lambda: "/whoami/captured/" in flow_log.read_text(), 10, "a flow record")

        # SIGHUP: the policy is re-read as nobody, and the new rule applies.
        mark = log_mark(proxy)
        write_file_replacing(policy, POLICY % {"name": "after-reload", "extra": BLOCK_RULE})
        policy.chmod(0o644)
        proxy.process.send_signal(signal.SIGHUP)
        reloaded = wait_for_record(proxy, start=mark, event="policy-reloaded")
        self.assertEqual(reloaded["name"], "after-reload", proxy.context())
        blocked = curl("https://%s/whoami/blocked/1" % origin, proxy=proxy.url,
                       cacert=proxy.ca_pem)
        self.assertEqual(blocked.status, 451, blocked.describe() + proxy.context())

        # SIGUSR1 after logrotate moved the file: a new flow.log, nobody's, gets the records.
        rotated = work / "logs" / "flow.log.1"
        os.rename(flow_log, rotated)
        mark = log_mark(proxy)
        proxy.process.send_signal(signal.SIGUSR1)
        wait_for_record(proxy, start=mark, event="flow-log-reopen")
        after = curl("https://%s/whoami/after-rotate" % origin, proxy=proxy.url,
                     cacert=proxy.ca_pem)
        self.assertEqual(after.status, 200, after.describe() + proxy.context())
        wait_until(lambda: flow_log.exists() and "/whoami/after-rotate" in flow_log.read_text(),
                   10, "the record in the reopened flow log")
        self.assertEqual(flow_log.stat().st_uid, self.user.pw_uid)
        records = [json.loads(l) for l in flow_log.read_text().splitlines() if l.startswith("{")]
        self.assertTrue(any("after-rotate" in r.get("path", "") for r in records), records)
        self.assertNotIn("/whoami/after-rotate", rotated.read_text())

        # The low port was bound as root, before the drop, and serves as nobody.
        if not low:
            self.skipTest("127.0.0.1:%d is taken: the low-port part was not run" % LOW_PORT)
        events = [parse_log_line(l) or {} for l in proxy.log.snapshot()]
        bound_at = [i for i, e in enumerate(events) if e.get("event") == "listening" and
                    e.get("address") == "127.0.0.1:%d" % LOW_PORT]
        dropped_at = [i for i, e in enumerate(events) if e.get("event") == "privileges-dropped"]
        self.assertTrue(bound_at and dropped_at and bound_at[0] < dropped_at[0], proxy.context())
        via_low = curl("http://127.0.0.1:%d/whoami/low-port" % self.origin.http_port,
                       proxy="http://127.0.0.1:%d" % LOW_PORT)
        self.assertEqual(via_low.status, 200, via_low.describe() + proxy.context())

    def test_unknown_user_stops_the_start(self):
        work = self.tmp / "unknown"
        work.mkdir()
        result = tokgate_command("run", "--user", "no-such-user-tokgate", "--listen",
                                 "127.0.0.1:0", "--admin", "127.0.0.1:0", "--ca-dir", work / "ca",
                                 timeout=20)
        output = (result.stdout + result.stderr).decode(errors="replace")
        self.assertEqual(result.returncode, 2, output)
        self.assertIn("no such user 'no-such-user-tokgate'", output)
        self.assertNotIn("event=listening", output)
        # The same from the config file.
        config = work / "tokgate.toml"
        config.write_text('[proxy]\nuser = "no-such-user-tokgate"\n')
        result = tokgate_command("run", "--config", config, "--listen", "127.0.0.1:0",
                                 "--admin", "127.0.0.1:0", "--ca-dir", work / "ca", timeout=20)
        output = (result.stdout + result.stderr).decode(errors="replace")
        self.assertEqual(result.returncode, 2, output)
        self.assertIn("no such user 'no-such-user-tokgate'", output)
        self.assertNotIn("event=listening", output)
        # A malformed name is a usage error at once.
        result = tokgate_command("run", "--user", "-x", "--listen", "127.0.0.1:0", timeout=20)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn(b"--user -x: expected a user name", result.stderr)

    def test_root_without_user_is_warned_about(self):
        proxy = self.start_tokgate("as-root", args=self.intercept_args(HOST))
        record = wait_for_record(proxy, event="running-as-root")
        self.assertEqual(record["level"], "warn", record)
        self.assertEqual(status_ids(Path("/proc/%d/status" % proxy.process.pid).read_text(),
                                    "Uid"), [0, 0, 0, 0])
        self.assertFalse([l for l in proxy.log.snapshot() if "privileges-dropped" in l])
        result = curl("http://127.0.0.1:%d/whoami/root" % self.origin.http_port, proxy=proxy.url)
        self.assertEqual(result.status, 200, result.describe() + proxy.context())


if __name__ == "__main__":
    unittest.main()
