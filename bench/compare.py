#!/usr/bin/env python3
"""tokgate, mitmproxy and Squid (ssl-bump) side by side, in one run, on loopback (issue 8).

Every proxy gets the same CA (made by `tokgate ca init`), the same nginx origin, the same load
client (bench/loadgen) and the same CPU pinning: the proxy alone on one CPU, the client and nginx
on the other. For each proxy and each row the load client runs a few seconds and reports the
proxy's CPU per unit of work (utime+stime of the proxy and its children, from /proc), its
throughput, latency percentiles, resident memory and errors. A run counts only when every TLS
handshake of it chained to the proxy CA alone and the leaf's issuer was that CA (the load client
trusts nothing else): interception is proven, not assumed.

    bench/compare.py [--tiny] [--proxies tokgate,mitmproxy,squid] [--tokgate BIN] [--loadgen BIN]
                     [--duration S] [--json FILE] [--perf FILE] [--keep]

Proxies whose program is missing are skipped with a note. Exit status: 0 when every run of every
proxy was error-free and proven intercepted (Squid's lack of HTTP/2 is reported, not failed);
1 otherwise; 77 when nginx or the load client is missing (ctest: skipped). Nothing here asserts
a time: a benchmark is not a test.
"""

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import pwd
import re
import shutil
import urllib.request
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "localhost"  # resolves to 127.0.0.1 from /etc/hosts for all three proxies
# The proxy alone on the first CPU this script may use, the client and nginx on the second.
_CPUS = sorted(os.sched_getaffinity(0))
PROXY_CPU = str(_CPUS[0])
CLIENT_CPU = str(_CPUS[1]) if len(_CPUS) > 1 else None
SKIP = 77
STARTUP_TIMEOUT = 30.0

_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
              "ALL_PROXY", "NO_PROXY")


def clean_env():
    return {k: v for k, v in os.environ.items() if k not in _PROXY_ENV}


def die_with_parent():
    """preexec_fn: the child gets SIGKILL when this script dies, even by SIGKILL (a ctest
    timeout), so no proxy or nginx outlives a run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def popen(cmd, **kwargs):
    return subprocess.Popen([str(c) for c in cmd], env=clean_env(), preexec_fn=die_with_parent,
                            **kwargs)


_GUARDIAN = """
import os, signal, sys, time
parent, target = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    time.sleep(0.5)
    try:
        os.kill(target, 0)
    except ProcessLookupError:
        sys.exit(0)
try:
    os.kill(target, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def guard(process):
    """For a child that changes user (Squid), which clears its parent-death signal: a watcher
    that kills it once this script is gone."""
    subprocess.Popen([sys.executable, "-c", _GUARDIAN, str(os.getpid()), str(process.pid)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)


def log(message):
    print("compare: " + message, file=sys.stderr, flush=True)


# --- the rows -------------------------------------------------------------------------------------

@dataclass
class Row:
    key: str
    title: str
    goal: float | None   # tokgate's goal, in the row's unit (None: the issue sets no figure)
    unit: str
    mitmproxy_ref: str   # the reference figures (another machine)
    squid_ref: str


ROWS = [
    Row("conn", "new intercepted connection + one small request", 0.6, "ms", "6.4 ms", "3.7 ms"),
    Row("keepalive", "small request on a kept-alive intercepted connection (HTTP/1.1)", 0.025, "ms",
        "1.38 ms", "0.10 ms"),
    Row("h2", "HTTP/2, 8 streams per connection", 0.02, "ms", "~1.5 ms", "no HTTP/2"),
    Row("bulk", "1 MiB response relayed", 1.0, "ms", "~5.3 ms", "~4.7 ms"),
    Row("idle", "memory per idle intercepted connection", 32.0, "KiB", "126 KiB", "182 KiB"),
    Row("latency", "latency added at 300 req/s, p50 / p99", 0.1, "ms", "+1.5 / +1.9 ms",
        "+0.24 / +0.32 ms"),
    # Traffic the policy does not target is spliced (TLS passed through untouched): it should
    # cost next to nothing. Each proxy is restarted told to splice everything for these rows.
    Row("splice_conn", "spliced connection + one small request", None, "ms", "", ""),
    Row("splice_bulk", "1 MiB relayed on a spliced connection", None, "ms", "", ""),
]
LATENCY_P99_GOAL = 0.3


@dataclass
class Plan:
    """How big each run is: the full comparison (~2-3 minutes) or --tiny (seconds)."""
    duration: float
    conn_connections: int = 4
    keepalive_connections: int = 8
    h2_connections: int = 4
    h2_streams: int = 8
    # A new h2 connection after this many streams, for every proxy alike (nginx's former default
    # http2_max_requests). It also keeps the h2 row clear of a tokgate stall after 1 MiB of
    # response bodies on one h2 connection (see docs/performance.md); the handshake it adds is
    # ~1/1000 of a connection's cost per stream.
    h2_streams_per_connection: int = 1000
    bulk_connections: int = 2
    idle_connections: int = 300
    rate: float = 300.0
    # The latency row alternates direct and proxied runs, so a neighbour's burst of CPU use
    # lands on both sides of the comparison rather than on one.
    rate_rounds: int = 5
    rate_duration: float = 1.0
    rate_connections: int = 8


def make_plan(args):
    if args.tiny:
        return Plan(duration=args.duration or 0.3, conn_connections=2, keepalive_connections=2,
                    h2_connections=1, bulk_connections=1, idle_connections=10, rate=100.0,
                    rate_rounds=1, rate_duration=0.5, rate_connections=2)
    return Plan(duration=args.duration or 3.0)


# --- processes ------------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, process, what, log_file=None):
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("%s exited (status %s) before listening%s" % (
                what, process.returncode, tail(log_file)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on port %d within %.0fs%s" % (
        what, port, STARTUP_TIMEOUT, tail(log_file)))


def tail(path, lines=20):
    if not path or not Path(path).exists():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    return "\n--- %s ---\n%s" % (path, "\n".join(text))


def pinned(cpu, cmd):
    """cmd pinned to one CPU, when there are two to keep proxy and client apart."""
    pin = CLIENT_CPU is not None and shutil.which("taskset") is not None
    return (["taskset", "-c", cpu] if pin else []) + [str(c) for c in cmd]


def stop(process, timeout=10.0):
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def run_quiet(cmd, **kwargs):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=60,
                          env=clean_env(), **kwargs)


def fill(template, path, **values):
    text = (HERE / template).read_text()
    for name, value in values.items():
        text = text.replace("@%s@" % name, str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise RuntimeError("%s: unfilled %s" % (template, ", ".join(sorted(set(left)))))
    path.write_text(text)
    return path


class Lab:
    """The shared pieces: a work directory, the origin's PKI, nginx, the proxy CA."""

    def __init__(self, args, plan):
        self.args = args
        self.plan = plan
        self.dir = Path(tempfile.mkdtemp(prefix="tokgate-bench-"))
        os.chmod(self.dir, 0o755)  # Squid drops to its own user and must reach its directory
        self.nginx = None
        self.origin_port = None

    def close(self):
        stop(self.nginx)
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log("kept %s" % self.dir)

    def make_origin_pki(self):
        d = self.dir / "origin"
        d.mkdir()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        run_quiet(["openssl", "req", "-x509", "-new", *ec, "-keyout", d / "ca.key", "-out",
                   d / "ca.pem", "-days", "30", "-subj", "/O=tokgate bench/CN=bench origin CA",
                   "-addext", "basicConstraints=critical,CA:TRUE",
                   "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        run_quiet(["openssl", "req", "-new", *ec, "-keyout", d / "leaf.key", "-out", d / "leaf.csr",
                   "-subj", "/O=tokgate bench/CN=%s" % HOST])
        ext = d / "leaf.ext"
        ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:%s,IP:127.0.0.1\n" % HOST)
        run_quiet(["openssl", "x509", "-req", "-in", d / "leaf.csr", "-CA", d / "ca.pem", "-CAkey",
                   d / "ca.key", "-CAcreateserial", "-days", "30", "-sha256", "-extfile", ext,
                   "-out", d / "leaf.pem"])
        self.origin_ca = d / "ca.pem"
        self.origin_cert = d / "leaf.pem"
        self.origin_key = d / "leaf.key"

    def make_proxy_ca(self):
        """One CA for all three proxies, made by tokgate (EC P-256)."""
        d = self.dir / "proxy-ca"
        run_quiet([self.args.tokgate, "ca", "init", "--dir", d])
        self.ca_dir = d
        self.ca_cert = d / "ca.pem"
        self.ca_key = d / "ca.key"

    def start_nginx(self):
        www = self.dir / "www"
        www.mkdir()
        (www / "small").write_bytes(b"x" * 128)
        (www / "1m").write_bytes(os.urandom(1 << 20))
        (self.dir / "nginx-tmp").mkdir()
        self.origin_port = free_port()
        conf = fill("nginx.conf.in", self.dir / "nginx.conf", DIR=self.dir,
                    PORT=self.origin_port, HOST=HOST, CERT=self.origin_cert, KEY=self.origin_key)
        error_log = self.dir / "nginx-error.log"
        self.nginx = popen(pinned(CLIENT_CPU, ["nginx", "-p", self.dir, "-c", conf,
                                               "-e", error_log]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.origin_port, self.nginx, "nginx", error_log)


# --- the proxies ----------------------------------------------------------------------------------

class Proxy:
    name = ""
    label = ""
    program = ""

    def __init__(self, lab, splice=False):
        self.lab = lab
        self.splice = splice  # pass TLS through untouched instead of intercepting it
        self.dir = lab.dir / (self.name + ("-splice" if splice else ""))
        self.dir.mkdir()
        self.port = None
        self.process = None
        self.log_file = self.dir / "proxy.log"

    def available(self):
        return shutil.which(self.program) is not None

    def version(self):
        return ""

    def command(self):
        raise NotImplementedError

    def prepare(self):
        pass

    def start(self):
        self.prepare()
        self.port = self.port or free_port()
        with open(self.log_file, "wb") as out:
            self.process = popen(pinned(PROXY_CPU, self.command()), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_ready()

    def wait_ready(self):
        wait_port(self.port, self.process, self.name, self.log_file)

    def stop(self):
        stop(self.process)


class Tokgate(Proxy):
    name = "tokgate"
    label = "tokgate"

    def available(self):
        return Path(self.lab.args.tokgate).is_file()

    def version(self):
        out = subprocess.run([self.lab.args.tokgate, "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def config(self):
        path = self.dir / "tokgate.toml"
        path.write_text("[limits]\nmax_connections_per_client = 100000\n")
        return path

    def start(self):
        # Port 0: the bound port is read from the "event=listening role=proxy" log line.
        self.port = None
        with open(self.log_file, "wb") as out:
            self.process = popen(
                # Without --intercept, localhost is not a target: the policy splices it.
                # Every benchmark client is 127.0.0.1: lift the per-client connection limit
                # (256 by default) above the idle row's connection count.
                pinned(PROXY_CPU, [self.lab.args.tokgate, "run", "--config", self.config(),
                                   "--listen", "127.0.0.1:0",
                                   "--admin", "127.0.0.1:0", "--ca-dir", self.lab.ca_dir,
                                   *([] if self.splice else ["--intercept", "*"]),
                                   "--upstream-ca", self.lab.origin_ca,
                                   "--resolve", "*:*:127.0.0.1", "--connect-ports", "1-65535",
                                   "--workers", "1", "--profile", "observe"]),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        pattern = re.compile(r"event=listening role=proxy\b[^\n]*? address=127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            match = pattern.search(self.log_file.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                break
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        if self.port is None:
            raise RuntimeError("tokgate did not start%s" % tail(self.log_file))
        self.wait_ready()

    def origin_handshakes(self):
        """(full, resumed) origin TLS handshakes so far, from the admin server's /metrics."""
        match = re.search(r"event=listening role=admin\b[^\n]*? address=127\.0\.0\.1:(\d+)",
                          self.log_file.read_text(errors="replace"))
        if not match:
            return None
        try:
            with urllib.request.urlopen("http://127.0.0.1:%s/metrics" % match.group(1),
                                        timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        counts = dict(re.findall(
            r'(?m)^tokgate_origin_handshakes_total\{resumed="(yes|no)"\} ([0-9.e+]+)$', text))
        return int(float(counts.get("no", 0))), int(float(counts.get("yes", 0)))


class Mitmproxy(Proxy):
    name = "mitmproxy"
    label = "mitmproxy"
    program = "mitmdump"

    def version(self):
        out = subprocess.run(["mitmdump", "--version"], capture_output=True, text=True)
        match = re.search(r"Mitmproxy: (\S+)", out.stdout)
        return "mitmproxy " + (match.group(1) if match else "?")

    def prepare(self):
        # mitmproxy reads its CA as key + certificate in one PEM, named so, in its confdir.
        conf = self.dir / "conf"
        conf.mkdir(exist_ok=True)
        combined = conf / "mitmproxy-ca.pem"
        combined.write_text(self.lab.ca_key.read_text() + self.lab.ca_cert.read_text())
        os.chmod(combined, 0o600)

    def command(self):
        return ["mitmdump", "--listen-host", "127.0.0.1", "--listen-port", self.port,
                "--set", "confdir=%s" % (self.dir / "conf"),
                "--set", "ssl_verify_upstream_trusted_ca=%s" % self.lab.origin_ca,
                "--set", "termlog_verbosity=warn", "--set", "flow_detail=0",
                *(["--ignore-hosts", ".*"] if self.splice else [])]


class Squid(Proxy):
    name = "squid"
    label = "Squid ssl-bump"
    program = "squid"

    def version(self):
        out = subprocess.run(["squid", "-v"], capture_output=True, text=True)
        match = re.search(r"Version (\S+)", out.stdout)
        return "Squid " + (match.group(1) if match else "?") + " ssl-bump"

    def certgen(self):
        for candidate in ("/usr/lib/squid/security_file_certgen",
                          "/usr/lib/squid/ssl_crtd", "/usr/lib64/squid/security_file_certgen"):
            if Path(candidate).is_file():
                return candidate
        return None

    def available(self):
        return super().available() and self.certgen() is not None

    def prepare(self):
        # The same CA: Squid signs its leaves with it (its helper gets key and cert per request).
        ca_cert = self.dir / "ca.pem"
        ca_key = self.dir / "ca.key"
        shutil.copy(self.lab.ca_cert, ca_cert)
        shutil.copy(self.lab.ca_key, ca_key)
        os.chmod(ca_key, 0o600)
        ssl_db = self.dir / "ssl_db"
        shutil.rmtree(ssl_db, ignore_errors=True)
        run_quiet([self.certgen(), "-c", "-s", ssl_db, "-M", "16MB"])
        user = ""
        if os.getuid() == 0:
            # Squid will not run as root: it drops to the proxy user, which must own its files.
            user = "cache_effective_user proxy"
            proxy = pwd.getpwnam("proxy")
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, proxy.pw_uid, proxy.pw_gid)
        self.port = free_port()
        self.conf = fill("squid.conf.in", self.dir / "squid.conf", PORT=self.port, DIR=self.dir,
                         CA_CERT=ca_cert, CA_KEY=ca_key, CERTGEN=self.certgen(),
                         ORIGIN_CA=self.lab.origin_ca, USER=user,
                         BUMP="splice" if self.splice else "bump")

    def command(self):
        # -N: no daemon and no kid processes; the helpers are its children (and counted).
        return ["squid", "-N", "-f", self.conf]

    def wait_ready(self):
        guard(self.process)
        wait_port(self.port, self.process, self.name, self.dir / "cache.log")


PROXIES = {"tokgate": Tokgate, "mitmproxy": Mitmproxy, "squid": Squid}


# --- running the load client ----------------------------------------------------------------------

def loadgen(lab, mode, *, proxy=None, pid=None, path="/small", connections=1, duration=None,
            extra=(), perf=None):
    """One loadgen run; returns its JSON (with "exit" added)."""
    plan = lab.plan
    cmd = [lab.args.loadgen, "--mode", mode, "--target", "%s:%d" % (HOST, lab.origin_port),
           "--path", path, "--connections", connections,
           "--duration", duration if duration is not None else plan.duration, *extra]
    if proxy is None:
        cmd += ["--direct", "--cacert", lab.origin_ca]
    else:
        # A spliced connection shows the origin's own certificate: the proof is then that its
        # issuer is the origin CA.
        cmd += ["--proxy", "127.0.0.1:%d" % proxy.port,
                "--cacert", lab.origin_ca if proxy.splice else lab.ca_cert]
    if pid:
        cmd += ["--watch-pid", pid]
    perf_process = None
    if perf:
        perf_process = popen(["perf", "record", "-F", "1999", "-p", pid, "-o", perf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = subprocess.run(pinned(CLIENT_CPU, cmd), capture_output=True, text=True,
                            timeout=(duration or plan.duration) + 120, env=clean_env(),
                            preexec_fn=die_with_parent)
    if perf_process:
        perf_process.send_signal(signal.SIGINT)
        perf_process.wait(timeout=60)
    try:
        data = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        data = {"error_total": 1, "errors": {"loadgen": 1},
                "first_error": "no report (exit %d): %s" % (result.returncode,
                                                             result.stderr[-500:]),
                "interception": {"proven": False}}
    data["exit"] = result.returncode
    return data


def run_proxy(lab, proxy, perf_file=None):
    plan = lab.plan
    pid = proxy.process.pid
    results = {}
    rows = [r for r in lab.args.rows.split(",") if r]

    def want(key):
        return not rows or key in rows

    # Warm up (not reported): the leaf for the name is minted, code paths and pools are hot.
    loadgen(lab, "conn", proxy=proxy, pid=pid, connections=1, duration=0.2, extra=["--warmup", 2])
    # Memory first, before the other rows leave freed memory behind for new connections to reuse.
    if want("idle"):
        results["idle"] = loadgen(lab, "idle", proxy=proxy, pid=pid,
                                  connections=plan.idle_connections, extra=["--settle", 1.0])
    if want("conn"):
        results["conn"] = loadgen(lab, "conn", proxy=proxy, pid=pid,
                                  connections=plan.conn_connections)
    if want("keepalive"):
        results["keepalive"] = loadgen(lab, "keepalive", proxy=proxy, pid=pid,
                                       connections=plan.keepalive_connections,
                                       perf=perf_file if isinstance(proxy, Tokgate) else None)
    if want("h2"):
        results["h2"] = loadgen(lab, "h2", proxy=proxy, pid=pid, connections=plan.h2_connections,
                                extra=["--streams", plan.h2_streams, "--h2-streams-per-connection",
                                       plan.h2_streams_per_connection])
    if want("bulk"):
        results["bulk"] = loadgen(lab, "keepalive", proxy=proxy, pid=pid, path="/1m",
                                  connections=plan.bulk_connections)
    # "Added" latency: the baseline is the same fixed-rate load straight to nginx, in rounds
    # alternating with the proxied ones.
    direct, proxied = [], []
    rate = ["--rate", plan.rate, "--samples"]
    for _ in range(plan.rate_rounds if want("latency") else 0):
        direct.append(loadgen(lab, "rate", connections=plan.rate_connections,
                              duration=plan.rate_duration, extra=rate))
        proxied.append(loadgen(lab, "rate", proxy=proxy, pid=pid,
                               connections=plan.rate_connections, duration=plan.rate_duration,
                               extra=rate))
    if want("latency"):
        results["latency_direct"] = merge_runs(direct)
        results["latency"] = merge_runs(proxied)
    return results


def run_spliced(lab, proxy):
    pid = proxy.process.pid
    plan = lab.plan
    loadgen(lab, "conn", proxy=proxy, pid=pid, connections=1, duration=0.2, extra=["--warmup", 2])
    return {"splice_conn": loadgen(lab, "conn", proxy=proxy, pid=pid,
                                   connections=plan.conn_connections),
            "splice_bulk": loadgen(lab, "keepalive", proxy=proxy, pid=pid, path="/1m",
                                   connections=plan.bulk_connections)}


def percentile(sorted_values, q):
    """Nearest rank, as loadgen computes it."""
    if not sorted_values:
        return None
    rank = min(max(1, math.ceil(q * len(sorted_values))), len(sorted_values))
    return sorted_values[rank - 1]


def merge_runs(runs):
    """One result from several runs of one kind (the latency rounds), latencies pooled."""
    merged = {"mode": runs[0].get("mode"), "via": runs[0].get("via"), "rounds": len(runs),
              "units": 0, "seconds": 0.0, "errors": {}, "error_total": 0, "first_error": "",
              "exit": max(r.get("exit", 1) for r in runs)}
    proof = {"handshakes": 0, "issuer_matches": 0, "proven": True}
    samples = []
    cpu_ms = 0.0
    for r in runs:
        merged["units"] += r.get("units", 0)
        merged["seconds"] += r.get("seconds") or 0.0
        for kind, n in r.get("errors", {}).items():
            merged["errors"][kind] = merged["errors"].get(kind, 0) + n
        merged["error_total"] += r.get("error_total", 1)
        merged["first_error"] = merged["first_error"] or r.get("first_error", "")
        seen = r.get("interception", {})
        proof["handshakes"] += seen.get("handshakes", 0)
        proof["issuer_matches"] += seen.get("issuer_matches", 0)
        proof["proven"] = proof["proven"] and seen.get("proven", False)
        for name in ("leaf_issuer", "leaf_subject", "leaf_key", "ca_subject", "alpn"):
            proof.setdefault(name, seen.get(name))
        samples += r.get("latency_us", [])
        cpu_ms += r.get("cpu_ms") or 0.0
    merged["interception"] = proof
    if merged["seconds"] > 0:
        merged["units_per_s"] = merged["units"] / merged["seconds"]
    if all("cpu_ms" in r for r in runs):
        merged["cpu_ms"] = cpu_ms
        merged["cpu_ms_per_unit"] = cpu_ms / merged["units"] if merged["units"] else None
    samples.sort()
    ms = [v / 1000.0 for v in samples]
    merged["latency_ms"] = {"count": len(ms), "mean": sum(ms) / len(ms) if ms else None,
                            "p50": percentile(ms, 0.50), "p90": percentile(ms, 0.90),
                            "p99": percentile(ms, 0.99), "p999": percentile(ms, 0.999),
                            "max": ms[-1] if ms else None}
    return merged


def no_h2(result):
    return result.get("errors", {}).get("alpn") and result["interception"].get("alpn") != "h2"


def run_ok(key, result):
    """Whether a run counts: no error, interception proven. Squid's h2 is a reported absence."""
    if key == "h2" and no_h2(result):
        return result["interception"].get("proven", False)
    return result.get("error_total", 1) == 0 and result["interception"].get("proven", False)


# --- the report -----------------------------------------------------------------------------------

def value_of(key, runs):
    """The row's figure for one proxy (lower is better), or None."""
    result = runs[key]
    if key == "h2" and no_h2(result):
        return None
    if key == "idle":
        return result.get("rss_kib_per_connection")
    if key == "latency":
        direct = runs.get("latency_direct")
        if not direct or not run_ok(key, direct):
            return None
        if result["latency_ms"]["p50"] is None or direct["latency_ms"]["p50"] is None:
            return None
        return (result["latency_ms"]["p50"] - direct["latency_ms"]["p50"],
                result["latency_ms"]["p99"] - direct["latency_ms"]["p99"])
    return result.get("cpu_ms_per_unit")


def fmt(key, value):
    if value is None:
        return "n/a"
    if key == "idle":
        return "%.0f KiB" % value
    if key == "latency":
        return "%+.2f / %+.2f ms" % value
    return ("%.3f ms" % value) if value < 1 else ("%.2f ms" % value)


def ratio(key, value, base):
    if value is None or base is None:
        return ""
    if key == "latency":
        value, base = value[0], base[0]  # p50
    if base <= 0 or value <= 0:
        return ""
    return " (%.1f×)" % (value / base)


def goal_text(row):
    if row.goal is None:
        return "next to nothing (no figure set)"
    if row.key == "latency":
        return "≤ +%.1f / +%.1f ms" % (row.goal, LATENCY_P99_GOAL)
    if row.key == "idle":
        return "≤ %.0f KiB" % row.goal
    return "≤ %g ms" % row.goal


def goal_met(row, value):
    if value is None or row.goal is None:
        return None
    if row.key == "latency":
        return value[0] <= row.goal and value[1] <= LATENCY_P99_GOAL
    return value <= row.goal


def report(lab, proxies, results, machine):
    out = []
    plan = lab.plan
    names = [p.name for p in proxies]
    labels = {p.name: p.version() or p.label for p in proxies}
    out.append("## Results (%s)" % ("tiny" if lab.args.tiny else "full"))
    out.append("")
    pinning = ("proxy pinned to CPU %s, load client and nginx to CPU %s" % (PROXY_CPU, CLIENT_CPU)
               if CLIENT_CPU is not None else "one CPU: no pinning")
    out.append("%s; %g s per row (latency: %d × %g s at %g req/s, alternating with the same load "
               "direct to nginx); %d idle connections; %s." % (
                   machine["date"], plan.duration, plan.rate_rounds, plan.rate_duration,
                   plan.rate, plan.idle_connections, pinning))
    out.append("Proxy CPU per unit = utime+stime of the proxy's process tree over the measured "
               "phase / units done. (N×) = N times tokgate's figure (latency: added p50).")
    out.append("")
    header = "| per unit of work, proxy CPU | " + " | ".join(labels[n] for n in names)
    out.append(header + " | tokgate goal |")
    out.append("|" + "---|" * (len(names) + 2))
    base_name = "tokgate" if "tokgate" in names else None
    for row in ROWS:
        cells = []
        base = None
        if base_name and row.key in results.get(base_name, {}):
            base = value_of(row.key, results[base_name])
        for name in names:
            result = results.get(name, {}).get(row.key)
            if result is None:
                cells.append("not run")
                continue
            if row.key == "h2" and no_h2(result):
                cells.append("no HTTP/2")
                continue
            if not run_ok(row.key, result):
                why = "interception not proven" if not result["interception"].get("proven") \
                    else "%d errors" % result.get("error_total", 0)
                cells.append("**not counted**: %s" % why)
                continue
            value = value_of(row.key, results[name])
            cells.append(fmt(row.key, value) + ("" if name == base_name else
                                                 ratio(row.key, value, base)))
        goal = goal_text(row)
        met = goal_met(row, base)
        if base_name and met is not None and run_ok(row.key, results[base_name][row.key]):
            goal += " — met" if met else " — **missed**"
        title = row.title.replace("300 req/s", "%g req/s" % plan.rate)
        out.append("| %s | %s | %s |" % (title, " | ".join(cells), goal))
    out.append("")
    out.append("Throughput, errors and proof of interception, per run:")
    out.append("")
    out.append("| proxy | row | units/s | units | proxy CPU ms | p50 / p99 ms | errors "
               "| handshakes (issuer = proxy CA; splice rows: origin CA) |")
    out.append("|---|---|---|---|---|---|---|---|")
    for name in names:
        for key in [row.key for row in ROWS] + ["latency_direct"]:
            r = results.get(name, {}).get(key)
            if r is None:
                continue
            lat = r.get("latency_ms", {})
            errors = ", ".join("%s %d" % kv for kv in sorted(r.get("errors", {}).items())) or "0"
            units = r.get("idle_connections", r.get("units", 0)) if key == "idle" \
                else r.get("units", 0)
            out.append("| %s | %s | %s | %s | %s | %s | %s | %d (%d) |" % (
                name, key.replace("latency_direct", "latency, direct to nginx"),
                num(r.get("units_per_s")), units, num(r.get("cpu_ms")),
                "%s / %s" % (num(lat.get("p50")), num(lat.get("p99"))), errors,
                r["interception"].get("handshakes", 0), r["interception"].get("issuer_matches", 0)))
    out.append("")
    proofs = [r["interception"] for n in names for r in results.get(n, {}).values()]
    leaves = {n: results[n]["keepalive"]["interception"] for n in names
              if "keepalive" in results.get(n, {})}
    out.append("Leaf seen by the client: %s; the proxy CA's subject: %s." % (
        "; ".join("%s: issuer %s, key %s" % (n, leaf.get("leaf_issuer"), leaf.get("leaf_key"))
                  for n, leaf in leaves.items()) or "-",
        proofs[0].get("ca_subject", "?") if proofs else "?"))
    return "\n".join(out)


def num(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.3g" % v if abs(v) < 100 else "%.0f" % v
    return str(v)


def machine_facts(args, proxies):
    facts = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "kernel": platform.release(), "cpus": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        match = re.search(r"Model name:\s*(.+)", lscpu)
        facts["cpu"] = match.group(1).strip() if match else "?"
    except OSError:
        facts["cpu"] = "?"
    facts["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    facts["versions"] = {p.name: p.version() for p in proxies}
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    facts["versions"]["nginx"] = nginx.stderr.strip()
    facts["versions"]["openssl"] = subprocess.run(["openssl", "version"], capture_output=True,
                                                  text=True).stdout.strip()
    return facts


def perf_summary(perf_file, lines=25):
    """Self time by shared object, then the top symbols, from a `perf record` of tokgate."""
    if not perf_file or not Path(perf_file).exists():
        return ""

    def report_lines(sort, limit):
        out = subprocess.run(["perf", "report", "-i", str(perf_file), "--stdio", "--no-children",
                              "--sort", sort, "--percent-limit", str(limit), "-g", "none"],
                             capture_output=True, text=True)
        body = []
        for line in out.stdout.splitlines():
            if line.strip() and not line.startswith("#"):
                body.append(re.sub(r"(\s+-)*\s*$", "", line))  # perf pads with empty columns
        return body

    by_dso = report_lines("dso", 1)
    by_symbol = report_lines("dso,symbol", 0.5)[:lines]
    return "By shared object:\n\n%s\n\nTop symbols:\n\n%s" % ("\n".join(by_dso),
                                                               "\n".join(by_symbol))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a fraction of a second per row")
    parser.add_argument("--proxies", default="tokgate,mitmproxy,squid")
    parser.add_argument("--tokgate", default=str(REPO / "build" / "tokgate"))
    parser.add_argument("--loadgen", default=str(REPO / "build" / "bench" / "loadgen"))
    parser.add_argument("--duration", type=float, default=None, help="seconds per row")
    parser.add_argument("--json", help="write every raw result to this file")
    parser.add_argument("--perf", help="perf record tokgate's keep-alive row into this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--rows", default="",
                        help="only these rows, comma-separated keys (conn,keepalive,h2,bulk,idle,"
                             "latency,splice_conn,splice_bulk); default all")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process and removes files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    for program in ("nginx", "openssl"):
        if not shutil.which(program):
            log("%s is missing: skipped" % program)
            return SKIP
    if args.perf and not shutil.which("perf"):
        log("perf is not installed (linux-perf): no profile")
        args.perf = None
    if not Path(args.loadgen).is_file():
        log("no load client at %s: skipped" % args.loadgen)
        return SKIP
    if CLIENT_CPU is None:
        log("one CPU: no pinning, proxy and client share it; CPU per unit is still measured")
    plan = make_plan(args)
    lab = Lab(args, plan)
    proxies = []
    results = {}
    notes = []
    status = 0
    try:
        wanted = [n.strip() for n in args.proxies.split(",") if n.strip()]
        for name in wanted:
            if name not in PROXIES:
                raise SystemExit("unknown proxy %s" % name)
            proxy = PROXIES[name](lab)
            if proxy.available():
                proxies.append(proxy)
            else:
                log("%s is not installed: not run" % name)
        if not any(isinstance(p, Tokgate) for p in proxies):
            log("tokgate binary not found at %s" % args.tokgate)
            return SKIP
        lab.make_origin_pki()
        lab.make_proxy_ca()
        lab.start_nginx()
        machine = machine_facts(args, proxies)
        started = time.monotonic()
        for proxy in proxies:
            log("running %s" % proxy.name)
            try:
                proxy.start()
                results[proxy.name] = run_proxy(lab, proxy, args.perf)
                if isinstance(proxy, Tokgate):
                    handshakes = proxy.origin_handshakes()
                    if handshakes:
                        notes.append("tokgate's origin handshakes in its intercepting run: %d full, "
                                     "%d resumed (a TLS session an earlier client connection left "
                                     "with the worker)." % handshakes)
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                log("%s: %s" % (proxy.name, e))
                status = 1
            finally:
                proxy.stop()
            if args.rows and not any(r.startswith("splice") for r in args.rows.split(",")):
                continue
            spliced = PROXIES[proxy.name](lab, splice=True)
            try:
                spliced.start()
                results.setdefault(proxy.name, {}).update(run_spliced(lab, spliced))
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                log("%s (splice): %s" % (proxy.name, e))
                status = 1
            finally:
                spliced.stop()
            for key, result in results.get(proxy.name, {}).items():
                if not run_ok(key, result):
                    log("%s %s: not counted: %s%s" % (
                        proxy.name, key, result.get("first_error") or "interception not proven",
                        tail(proxy.log_file, 8) if proxy.name == "tokgate" else ""))
                    status = 1
        machine["seconds"] = round(time.monotonic() - started, 1)
        print(report(lab, proxies, results, machine))
        for note in notes:
            print("\n" + note)
        print()
        print("Machine: %s, %s CPUs, Linux %s, load average at start %s; %s; run took %.0f s." % (
            machine["cpu"], machine["cpus"], machine["kernel"], " ".join(machine["loadavg"]),
            ", ".join(v for v in machine["versions"].values() if v), machine["seconds"]))
        if args.perf:
            summary = perf_summary(args.perf)
            if summary:
                print("\nperf, tokgate during the keep-alive row (self time, top symbols):\n")
                print(summary)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine, "plan": plan.__dict__,
                                                   "results": results},
                                                  indent=1))
    finally:
        for proxy in proxies:
            proxy.stop()
        lab.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
