"""Shared helpers for tokgate's integration tests: real processes on loopback, stdlib only.

- shared_pki(): a test PKI made with the openssl CLI once per test process (removed at exit).
- Origin: tests/integration/origin.py as a subprocess (HTTPS with SNI-selected certs + HTTP).
- Tokgate: the real binary ($TOKGATE_BIN), started with ephemeral ports; the bound port is read
  from its "event=listening role=proxy" log line.
- curl(), raw_exchange(), s_client_leaf(), cert_info(): the client side.

Hermetic: every port is 0, every file lives in a temporary directory that is removed, every
process is killed in a cleanup even when a test fails, and every wait polls against a deadline.
"""

import atexit
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
ORIGIN_SCRIPT = HERE / "origin.py"

sys.path.insert(0, str(HERE))
from origin import pattern_bytes, pattern_chunks, pattern_sha256  # noqa: E402,F401

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
CURL_TIMEOUT = 30
LOG_TAIL_LINES = 60
MiB = 1024 * 1024

# Subprocesses must not pick up a proxy from the environment.
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
              "ALL_PROXY", "NO_PROXY")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_ENV}
    env.update(extra)
    return env


def tokgate_binary():
    """$TOKGATE_BIN (set by ctest), else build/tokgate in the source tree."""
    path = Path(os.environ.get("TOKGATE_BIN") or REPO_ROOT / "build" / "tokgate")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise AssertionError("tokgate binary not found at %s (set TOKGATE_BIN)" % path)
    return path


def make_tempdir(prefix="tokgate-it-"):
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


def wait_until(predicate, timeout, what, interval=0.02):
    """Polls predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def run(cmd, timeout=60, check=True, input=None, env=None):  # noqa: A002
    result = subprocess.run([str(c) for c in cmd], input=input, capture_output=True,
                            timeout=timeout, env=env or clean_env())
    if check and result.returncode != 0:
        raise AssertionError("command failed (%d): %s\nstdout: %s\nstderr: %s" % (
            result.returncode, " ".join(map(str, cmd)),
            result.stdout.decode(errors="replace")[-2000:],
            result.stderr.decode(errors="replace")[-2000:]))
    return result


# --- PKI ------------------------------------------------------------------------------------------

GOOD_NAMES = ("www.tiktok.com", "api16-normal-c-useast1a.tiktokv.com", "example.org",
              "splice.test", "localhost")

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[leaf_good]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {good_sans}

[leaf_wrong]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:other.example

[leaf_expired]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:expired.test

[leaf_untrusted]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:untrusted.test

[ca]
default_ca = test_ca
[test_ca]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
default_md = sha256
policy = policy_any
copy_extensions = none
unique_subject = no
[policy_any]
commonName = supplied
"""


@dataclass
class Pki:
    dir: Path
    ca_cert: Path          # the test root CA the proxy is told to trust (--upstream-ca)
    ca_key: Path
    untrusted_ca_cert: Path
    cert_dir: Path         # what origin.py --cert-dir wants: good/wrong/expired/untrusted .pem/.key


def _openssl(*args):
    return run(["openssl", *args], timeout=60)


def _generate_pki(root):
    root.mkdir(parents=True, exist_ok=True)
    certs = root / "origin-certs"
    certs.mkdir()
    (root / "newcerts").mkdir()
    (root / "index.txt").write_text("")
    (root / "serial").write_text("1000\n")
    good_sans = ", ".join(["DNS:%s" % n for n in GOOD_NAMES] + ["IP:127.0.0.1"])
    cnf = root / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF.replace("{good_sans}", good_sans).replace("{dir}", str(root)))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def make_ca(stem, cn):
        _openssl("req", "-config", cnf, "-x509", "-new", *ec, "-keyout", root / (stem + ".key"),
                 "-out", root / (stem + ".pem"), "-days", "3650", "-sha256",
                 "-subj", "/O=tokgate tests/CN=%s" % cn, "-extensions", "v3_ca")

    def make_csr(stem, cn):
        _openssl("req", "-config", cnf, "-new", *ec, "-keyout", certs / (stem + ".key"),
                 "-out", root / (stem + ".csr"), "-subj", "/O=tokgate tests/CN=%s" % cn)

    def sign(stem, ca_stem, section):
        _openssl("x509", "-req", "-in", root / (stem + ".csr"), "-CA", root / (ca_stem + ".pem"),
                 "-CAkey", root / (ca_stem + ".key"), "-set_serial", "0x" + secrets.token_hex(8),
                 "-days", "825", "-sha256", "-extfile", cnf, "-extensions", section,
                 "-out", certs / (stem + ".pem"))

    make_ca("test-ca", "tokgate integration test root CA")
    make_ca("untrusted-ca", "tokgate integration UNTRUSTED CA")
    for stem, cn in (("good", "www.tiktok.com"), ("wrong", "other.example"),
                     ("expired", "expired.test"), ("untrusted", "untrusted.test")):
        make_csr(stem, cn)
    sign("good", "test-ca", "leaf_good")
    sign("wrong", "test-ca", "leaf_wrong")
    sign("untrusted", "untrusted-ca", "leaf_untrusted")
    # `openssl x509 -req` (3.0) cannot back-date; `openssl ca` can, with explicit dates.
    _openssl("ca", "-config", cnf, "-name", "test_ca", "-batch", "-notext",
             "-cert", root / "test-ca.pem", "-keyfile", root / "test-ca.key",
             "-in", root / "expired.csr", "-out", certs / "expired.pem",
             "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
             "-extfile", cnf, "-extensions", "leaf_expired")
    for key in certs.glob("*.key"):
        key.chmod(0o600)
    return Pki(dir=root, ca_cert=root / "test-ca.pem", ca_key=root / "test-ca.key",
               untrusted_ca_cert=root / "untrusted-ca.pem", cert_dir=certs)


_pki_lock = threading.Lock()
_pki = None


def shared_pki():
    """The test PKI, generated on first use and shared by every test of this process."""
    global _pki
    with _pki_lock:
        if _pki is None:
            root = make_tempdir("tokgate-pki-")
            atexit.register(remove_tree, root)
            _pki = _generate_pki(root / "pki")
        return _pki


# --- log lines ------------------------------------------------------------------------------------

_LOGFMT_PAIR = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|[^ ]*)')


def parse_log_line(line):
    """Parses `TIMESTAMP LEVEL key=value key="quoted value" ...` into a dict (None if not one).

    The dict carries `ts` and `level` besides the logfmt pairs."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or not re.match(r"\d{4}-\d\d-\d\dT", parts[0]):
        return None
    record = {"ts": parts[0], "level": parts[1]}
    for key, value in _LOGFMT_PAIR.findall(parts[2] if len(parts) > 2 else ""):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r'\\(.)', r'\1', value[1:-1])
        record[key] = value
    return record


def split_host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class LineCollector:
    """Reads a process's output stream in a thread, keeping every line for later waits."""

    def __init__(self, stream, name, echo=False):
        self.lines = []
        self.closed = False
        self._cond = threading.Condition()
        self._name = name
        self._echo = echo
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream):
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if self._echo:
                    sys.stderr.write("[%s] %s\n" % (self._name, line))
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_closed(self, timeout):
        """Waits until the stream has ended and every line of it is kept (a process that has
        exited may still have lines in the pipe that this thread has not read yet)."""
        self._thread.join(timeout)
        return self.closed

    def wait_for(self, predicate, timeout, what, start=0):
        """Returns the first line at index >= start satisfying predicate; fails at the deadline
        or when the stream ends without one."""
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    if predicate(self.lines[index]):
                        return self.lines[index]
                    index += 1
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise AssertionError("%s: %s waiting for %s; last lines:\n%s" % (
                        self._name, "stream closed" if self.closed else "timed out", what,
                        "\n".join(self.lines[-LOG_TAIL_LINES:])))
                self._cond.wait(left)

    def snapshot(self):
        with self._cond:
            return list(self.lines)

    def join(self, timeout):
        self._thread.join(timeout)


def _verbose():
    return bool(os.environ.get("TOKGATE_TEST_VERBOSE"))


def _stop_process(process, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        except ProcessLookupError:
            pass
    return process.returncode


# --- the origin -----------------------------------------------------------------------------------

class Origin:
    """origin.py in its own process (so a stalled handler or a 64 MiB hash never competes with
    the test's own threads)."""

    def __init__(self, pki):
        self.process = subprocess.Popen(
            [sys.executable, str(ORIGIN_SCRIPT), "--https-port", "0", "--http-port", "0",
             "--cert-dir", str(pki.cert_dir)] + (["--verbose"] if _verbose() else []),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=None if _verbose() else subprocess.DEVNULL, env=clean_env())
        try:
            self.events = LineCollector(self.process.stdout, "origin")
            ready = json.loads(self.events.wait_for(lambda l: '"ready"' in l, STARTUP_TIMEOUT,
                                                    "origin ready"))
        except BaseException:
            self.stop()
            raise
        self.https_port = ready["https_port"]
        self.http_port = ready["http_port"]

    def requests(self):
        """Every request event so far, parsed."""
        return [json.loads(l) for l in self.events.snapshot() if '"request"' in l]

    def wait_for_request(self, path, timeout=10.0, start=0):
        line = self.events.wait_for(
            lambda l: '"request"' in l and json.loads(l).get("path") == path, timeout,
            "origin request %s" % path, start=start)
        return json.loads(line)

    def event_count(self):
        return len(self.events.snapshot())

    def stop(self):
        _stop_process(self.process, timeout=5)
        if self.process.stdout:
            self.process.stdout.close()


# --- tokgate ------------------------------------------------------------------------------------

class Tokgate:
    """One `tokgate run` process with ephemeral ports and its own CA directory."""

    def __init__(self, workdir, args=(), config_text=None, ca_dir=None, listen="127.0.0.1:0",
                 wait=True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_dir = Path(ca_dir) if ca_dir else self.workdir / "ca"
        self.config_path = None
        cmd = [str(tokgate_binary()), "run"]
        if config_text is not None:
            self.config_path = self.workdir / "tokgate.toml"
            self.config_path.write_text(config_text)
            cmd += ["--config", str(self.config_path)]
        cmd += ["--listen", listen, "--admin", "127.0.0.1:0", "--ca-dir", str(self.ca_dir)]
        cmd += [str(a) for a in args]
        self.cmd = cmd
        self.exit_expected = False
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=clean_env(),
                                        cwd=str(self.workdir))
        self.log = LineCollector(self.process.stdout, "tokgate", echo=_verbose())
        self.port = None
        if wait:
            try:
                self.wait_listening()
            except BaseException:
                self.stop(signal.SIGKILL)
                raise

    def wait_listening(self, timeout=STARTUP_TIMEOUT):
        def is_proxy_listening(line):
            record = parse_log_line(line)
            return bool(record and record.get("event") == "listening"
                        and record.get("role") == "proxy")
        line = self.log.wait_for(is_proxy_listening, timeout, "event=listening role=proxy")
        self.host, self.port = split_host_port(parse_log_line(line)["address"])
        return self.port

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def ca_pem(self):
        return self.ca_dir / "ca.pem"

    def records(self, **match):
        """Parsed log lines whose fields equal every key=value given."""
        out = []
        for line in self.log.snapshot():
            record = parse_log_line(line)
            if record and all(record.get(k) == v for k, v in match.items()):
                out.append(record)
        return out

    def log_tail(self, lines=LOG_TAIL_LINES):
        return "\n".join(self.log.snapshot()[-lines:])

    def context(self):
        """A message suffix for assertions: the command and the tail of the proxy's log."""
        code = self.process.poll()
        state = "running" if code is None else "EXITED with status %d" % code
        return "\n--- tokgate (%s): %s\n--- log tail:\n%s" % (state, " ".join(self.cmd),
                                                            self.log_tail())

    def send_signal(self, sig):
        """Sends a signal the test expects to end the process."""
        self.exit_expected = True
        self.process.send_signal(sig)

    def died_unexpectedly(self):
        return not self.exit_expected and self.process.poll() is not None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        self.exit_expected = True
        code = _stop_process(self.process, sig, timeout)
        self.log.join(5)
        if self.process.stdout:
            self.process.stdout.close()
        return code


# --- test-case base -------------------------------------------------------------------------------

class IntegrationTestCase(unittest.TestCase):
    """setUpClass makes a temp dir, the shared PKI and one origin (shared by the class's tests);
    start_tokgate() starts a proxy for one test, so a crash is pinned on the test that caused it.
    Everything started is stopped in class or test cleanups, whatever happens."""

    maxDiff = None
    start_origin = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = make_tempdir()
        cls.addClassCleanup(remove_tree, cls.tmp)
        cls.pki = shared_pki()
        cls.origin = None
        if cls.start_origin:
            cls.origin = Origin(cls.pki)
            cls.addClassCleanup(cls.origin.stop)

    def start_tokgate(self, name=None, args=(), config_text=None, wait=True):
        """A proxy for this test only. If it dies on its own during the test (a crash), the
        test fails even if every assertion passed."""
        name = name or self.id().rsplit(".", 1)[-1]
        proxy = Tokgate(self.tmp / name, args, config_text, wait=wait)
        self.addCleanup(self._stop_checking_alive, proxy)
        return proxy

    @staticmethod
    def _stop_checking_alive(proxy):
        died = proxy.died_unexpectedly()
        proxy.stop(signal.SIGKILL)
        if died:
            raise AssertionError("tokgate exited on its own during the test (status %s)%s"
                                 % (proxy.process.returncode, proxy.context()))

    def scratch_dir(self, name):
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @classmethod
    def intercept_args(cls, *intercept, connect_ports="1-65535"):
        """The usual arguments: every name resolves to loopback, the test CA is trusted, and the
        observe profile (block nothing) so proxy mechanics are tested apart from policy."""
        args = ["--resolve", "*:*:127.0.0.1", "--upstream-ca", cls.pki.ca_cert,
                "--connect-ports", connect_ports, "--profile", "observe"]
        for glob in intercept:
            args += ["--intercept", glob]
        return args


# --- curl -----------------------------------------------------------------------------------------

@dataclass
class CurlResult:
    returncode: int
    info: dict                       # curl's -w '%{json}'
    status: int                      # final response status (0 if none; CONNECT's excluded)
    headers: dict                    # final response headers, lower-case name -> last value
    header_blocks: list              # every header block (CONNECT response first, if any)
    body: bytes
    stderr: str
    cmd: list = field(default_factory=list)

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def json(self):
        return json.loads(self.body)

    def describe(self):
        return "curl exit %d, status %d, stderr: %s\ncmd: %s\nheaders: %s\nbody: %r" % (
            self.returncode, self.status, self.stderr.strip()[-1500:], " ".join(self.cmd),
            self.headers, self.body[:500])


def parse_header_blocks(raw):
    blocks = []
    current = None
    for line in raw.decode("iso-8859-1").split("\r\n"):
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            current = {"status": int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0,
                       "status_line": line, "headers": {}}
            blocks.append(current)
        elif current is not None and ":" in line:
            name, _, value = line.partition(":")
            current["headers"][name.strip().lower()] = value.strip()
    return blocks


def curl(url, proxy=None, cacert=None, args=(), timeout=CURL_TIMEOUT, output=None,
         data_file=None, method=None, headers=(), interface=None):
    """Runs one curl transfer and returns what it saw. Body goes to `output` (a path) if given,
    else into memory."""
    with tempfile.TemporaryDirectory(prefix="tokgate-curl-") as scratch:
        scratch = Path(scratch)
        body_path = Path(output) if output else scratch / "body"
        cmd = ["curl", "-q", "-sS", "--max-time", str(timeout), "-D", str(scratch / "headers"),
               "-o", str(body_path), "-w", "%{json}"]
        if proxy:
            cmd += ["--proxy", proxy]
        if cacert:
            cmd += ["--cacert", str(cacert)]
        if method:
            cmd += ["-X", method]
        for header in headers:
            cmd += ["-H", header]
        if data_file is not None:
            cmd += ["--data-binary", "@%s" % data_file]
        if interface:
            cmd += ["--interface", interface]
        cmd += [str(a) for a in args]
        cmd.append(url)
        result = subprocess.run(cmd, capture_output=True, timeout=timeout + 15, env=clean_env())
        try:
            info = json.loads(result.stdout.decode(errors="replace") or "{}")
        except ValueError:
            info = {}
        raw_headers = (scratch / "headers").read_bytes() if (scratch / "headers").exists() else b""
        blocks = parse_header_blocks(raw_headers)
        # Through a proxy, curl's -D output starts with the CONNECT answer: not the response.
        responses = blocks[1:] if info.get("http_connect") else blocks
        final = responses[-1] if responses else {"status": 0, "headers": {}}
        body = b"" if output else (body_path.read_bytes() if body_path.exists() else b"")
        return CurlResult(returncode=result.returncode, info=info, status=final["status"],
                          headers=final["headers"], header_blocks=blocks, body=body,
                          stderr=result.stderr.decode(errors="replace"), cmd=cmd)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            piece = f.read(1 << 20)
            if not piece:
                return digest.hexdigest()
            digest.update(piece)


def write_pattern_file(path, n):
    with open(path, "wb") as f:
        for piece in pattern_chunks(n):
            f.write(piece)
    return path


# --- raw sockets --------------------------------------------------------------------------------

@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict       # lower-case name -> last value
    body: bytes
    raw: bytes

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)


class RawConnection:
    """A client socket to the proxy for hand-written requests (absolute-form, CONNECT, junk)."""

    def __init__(self, port, host="127.0.0.1", timeout=15.0, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buffer = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        try:
            piece = self.sock.recv(65536)
        except ConnectionResetError:
            # A reset after the answer (a server closing with unread input) still leaves the
            # answer readable; treat the reset as the end of the stream.
            return False
        if not piece:
            return False
        self.buffer += piece
        return True

    def read_response(self, connect=False, head_only=False, max_bytes=4 * MiB):
        """Reads one response: the head, then a Content-Length or chunked body, or (without
        either) everything until the peer closes. A 2xx answer to CONNECT (connect=True) has no
        body: the tunnel starts after the head. Returns None if the peer closed first."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > max_bytes or not self._fill():
                if not self.buffer:
                    return None
                raise AssertionError("incomplete response head: %r" % self.buffer[:500])
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("iso-8859-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        tunnel = connect and 200 <= status < 300
        if not head_only and not tunnel and status not in (204, 304) and status >= 200:
            if "content-length" in headers:
                length = int(headers["content-length"])
                while len(self.buffer) < length:
                    if not self._fill():
                        raise AssertionError("body truncated: %d of %d" % (len(self.buffer), length))
                body, self.buffer = self.buffer[:length], self.buffer[length:]
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                body = self._read_chunked(max_bytes)
            else:
                body = self.read_until_closed(max_bytes)
        return RawResponse(status, parts[2] if len(parts) > 2 else "", headers, body,
                           head + b"\r\n\r\n" + body)

    def _read_chunked(self, max_bytes):
        body = b""
        while len(body) <= max_bytes:
            while b"\r\n" not in self.buffer:
                if not self._fill():
                    raise AssertionError("chunked body truncated")
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while b"\r\n\r\n" not in b"\r\n" + self.buffer:
                    if not self._fill():
                        raise AssertionError("trailers truncated")
                _, _, self.buffer = (b"\r\n" + self.buffer).partition(b"\r\n\r\n")
                return body
            while len(self.buffer) < size + 2:
                if not self._fill():
                    raise AssertionError("chunk truncated")
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2:]
        raise AssertionError("chunked body over %d bytes" % max_bytes)

    def read_until_closed(self, max_bytes=MiB):
        """Everything until the peer closes (or resets) the connection."""
        while len(self.buffer) <= max_bytes and self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data


def raw_exchange(port, data, timeout=15.0, source=None, connect=None):
    """Sends `data` on a new connection and reads one response (None if closed without one)."""
    if connect is None:
        connect = data.startswith(b"CONNECT ")
    with RawConnection(port, timeout=timeout, source=source) as conn:
        conn.send(data)
        return conn.read_response(connect=connect)


# --- openssl ------------------------------------------------------------------------------------

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def s_client(proxy_port, host, port, cafile, servername=None, timeout=30):
    """openssl s_client through the proxy (CONNECT); returns (exit status, output, chain PEMs)."""
    cmd = ["openssl", "s_client", "-proxy", "127.0.0.1:%d" % proxy_port,
           "-connect", "%s:%d" % (host, port), "-servername", servername or host,
           "-CAfile", str(cafile), "-verify_return_error", "-showcerts"]
    result = subprocess.run(cmd, input=b"", capture_output=True, timeout=timeout, env=clean_env())
    output = (result.stdout + b"\n" + result.stderr).decode(errors="replace")
    chain = [m.group(0) + b"\n" for m in _PEM_CERT.finditer(result.stdout)]
    return result.returncode, output, chain


def cert_info(pem=None, path=None, inform="PEM"):
    """Subject, issuer (RFC 2253), SANs and SHA-256 fingerprint of one certificate."""
    cmd = ["openssl", "x509", "-noout", "-inform", inform, "-nameopt", "RFC2253", "-subject",
           "-issuer", "-fingerprint", "-sha256", "-ext", "subjectAltName"]
    if path is not None:
        cmd += ["-in", str(path)]
    result = run(cmd, input=pem)
    text = result.stdout.decode()
    info = {"subject": None, "issuer": None, "fingerprint": None, "sans": []}
    for line in text.splitlines():
        if line.startswith("subject="):
            info["subject"] = line[len("subject="):].strip()
        elif line.startswith("issuer="):
            info["issuer"] = line[len("issuer="):].strip()
        elif "Fingerprint=" in line:
            info["fingerprint"] = line.split("=", 1)[1].strip().upper()
        elif "DNS:" in line or "IP Address:" in line:
            for item in line.split(","):
                item = item.strip()
                if item.startswith("DNS:"):
                    info["sans"].append(item[4:])
                elif item.startswith("IP Address:"):
                    info["sans"].append(item[len("IP Address:"):])
    return info


def closed_port():
    """A loopback port that refuses connections: bound but never listening, so no other process
    can take it while the returned socket is open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


# --- policy (issue 3): profiles, policy files, reloads, the admin status, TLS through CONNECT ---

# Names every policy test relies on (the catalog knows the first two).
TIKTOK_WEB_HOST = "www.tiktok.com"
TIKTOK_APP_HOST = "api16-normal-c-useast1a.tiktokv.com"

# User-Agents: TikTok's iOS in-app browser (WKWebView with the app's tokens), plain browsers, and
# another app's in-app browser that must not count as TikTok.
UA_TIKTOK_IN_APP_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 musical_ly_34.3.1 JsSdk/2.0 NetType/WIFI Channel/App Store "
    "ByteLocale/en Region/US isDarkMode/0 WKWebView/1 BytedanceWebview/d8a21c6")
UA_SAFARI_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1")
UA_CHROME_DESKTOP = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36")
UA_INSTAGRAM_IN_APP = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 Instagram 329.0.3.29.101 (iPhone15,2; iOS 17_4; en_US; en; "
    "scale=3.00; 1179x2556; 604543425)")


def policy_run_args(profile=None, policy=None, intercept=(), refuse=(), catalog_dir=None,
                    connect_ports="1-65535", extra=()):
    """`tokgate run` arguments for the policy tests: every name resolves to loopback, the test
    CA is trusted for origins, and the policy is the one given (a --profile NAME, a --policy
    FILE, or neither: the built-in default, gateway)."""
    args = ["--resolve", "*:*:127.0.0.1", "--upstream-ca", shared_pki().ca_cert,
            "--connect-ports", connect_ports]
    if profile:
        args += ["--profile", profile]
    if policy:
        args += ["--policy", policy]
    if catalog_dir:
        args += ["--catalog-dir", catalog_dir]
    for glob in intercept:
        args += ["--intercept", glob]
    for glob in refuse:
        args += ["--refuse", glob]
    return [str(a) for a in args] + [str(a) for a in extra]


def write_file_replacing(path, text):
    """Writes `text` to a temporary file next to `path`, then renames it over `path`: a watcher
    never sees a half-written file."""
    path = Path(path)
    scratch = path.with_name(".%s.%s.tmp" % (path.name, secrets.token_hex(4)))
    scratch.write_text(text)
    os.replace(scratch, path)
    return path


def log_mark(proxy):
    """The index of the next log line: pass it as `start` to wait for lines after now."""
    return len(proxy.log.snapshot())


def wait_for_record(proxy, timeout=10.0, start=0, what=None, **match):
    """Waits for a log line (from index `start`) whose logfmt fields equal every key=value given;
    returns it parsed."""
    line = proxy.log.wait_for(lambda l: _record_matches(parse_log_line(l), match), timeout,
                              what or " ".join("%s=%s" % (k, getattr(v, "__name__", v))
                                               for k, v in sorted(match.items())), start=start)
    return parse_log_line(line)


def _record_matches(record, match):
    """True if every field equals its value, or satisfies it when the value is a callable."""
    if not record:
        return False
    for key, want in match.items():
        value = record.get(key)
        if callable(want):
            if value is None or not want(value):
                return False
        elif value != want:
            return False
    return True


def host_is(name):
    """A log-field matcher: the host `name`, with or without a ":port" (the request line's host
    field carries the Host header's port on forwarded requests)."""
    def host_matches(value):
        return value == name or re.fullmatch(re.escape(name) + r":\d+", value) is not None
    host_matches.__name__ = "%s[:port]" % name
    return host_matches


def records_since(proxy, start, **match):
    """Parsed log lines from index `start` whose fields equal every key=value given."""
    out = []
    for line in proxy.log.snapshot()[start:]:
        record = parse_log_line(line)
        if _record_matches(record, match):
            out.append(record)
    return out


def admin_address(proxy, timeout=STARTUP_TIMEOUT):
    """(host, port) of the admin listener, from `event=listening role=admin address=...`."""
    record = wait_for_record(proxy, timeout, event="listening", role="admin")
    return split_host_port(record["address"])


def admin_get(proxy, path="/status", timeout=10.0):
    """GET on the admin listener: (status, headers dict lower-case, body bytes)."""
    import http.client
    host, port = admin_address(proxy)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def admin_status(proxy):
    """The admin /status JSON, parsed."""
    status, _, body = admin_get(proxy, "/status")
    if status != 200:
        raise AssertionError("/status answered %d: %r" % (status, body[:500]))
    return json.loads(body)


def tokgate_command(*args, input=None, timeout=30):  # noqa: A002
    """Runs `tokgate ARGS...` to completion (no network), with optional stdin bytes."""
    cmd = [str(tokgate_binary())] + [str(a) for a in args]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, env=clean_env(),
                              input=input if input is not None else b"")
    except subprocess.TimeoutExpired as expired:
        raise AssertionError("`%s` did not exit within %ds; stderr: %s" % (
            " ".join(cmd), timeout, (expired.stderr or b"").decode(errors="replace")[-2000:]))


def describe_command(result):
    return "exit %d\ncmd: %s\nstdout: %s\nstderr: %s" % (
        result.returncode, " ".join(map(str, result.args)),
        result.stdout.decode(errors="replace")[-3000:],
        result.stderr.decode(errors="replace")[-3000:])


def tls_client_context(cafile=None, verify=True, alpn=("http/1.1",)):
    import ssl
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(list(alpn))
    return context


def tunnel_connection(proxy_port, host, port, cafile, timeout=15.0):
    """http.client.HTTPSConnection to https://host:port through the proxy (CONNECT, then TLS
    with SNI host, verified against `cafile`). Keep-alive: reuse it for several requests."""
    import http.client
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=timeout,
                                       context=tls_client_context(cafile))
    conn.set_tunnel(host, port)
    return conn


def tls_through_connect(proxy_port, connect_authority, servername, cafile=None, verify=True,
                        timeout=15.0, alpn=("http/1.1",)):
    """CONNECT `connect_authority` through the proxy, then a TLS handshake with SNI
    `servername`. Returns ("ok", ssl socket) or ("connect", RawResponse) when the CONNECT was
    answered with a non-2xx, or ("tls", the ssl.SSLError/OSError) when the handshake failed."""
    import ssl
    raw = RawConnection(proxy_port, timeout=timeout)
    try:
        raw.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                 % (connect_authority.encode(), connect_authority.encode()))
        response = raw.read_response(connect=True)
        if response is None or not 200 <= response.status < 300:
            raw.close()
            return "connect", response
        if raw.buffer:
            raise AssertionError("bytes after the CONNECT answer: %r" % raw.buffer[:200])
        context = tls_client_context(cafile, verify, alpn)
        try:
            tls = context.wrap_socket(raw.sock, server_hostname=servername)
        except (ssl.SSLError, OSError) as error:
            raw.close()
            return "tls", error
        return "ok", tls
    except BaseException:
        raw.close()
        raise


class TlsHttp(RawConnection):
    """Hand-written HTTP/1.1 requests on an established TLS socket (from tls_through_connect),
    keeping unread bytes between responses so one connection can carry several requests."""

    def __init__(self, tls):  # noqa: D107 - wraps a connected socket instead of connecting
        self.sock = tls
        self.buffer = b""

    def _fill(self):
        import ssl
        try:
            piece = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return False
        except ssl.SSLError as error:
            if "EOF" in str(error):
                return False
            raise
        if not piece:
            return False
        self.buffer += piece
        return True

    def request(self, host, path, headers=(), method="GET", body=b""):
        """Sends one request (Host added; `headers` are (name, value) pairs) and reads its
        response; None if the peer closed without answering."""
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
        lines += ["%s: %s" % (k, v) for k, v in headers]
        if body or method in ("POST", "PUT"):
            lines.append("Content-Length: %d" % len(body))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return self.read_response()


def origin_request_count(origin, path_prefix=None):
    """How many requests the origin has started handling (optionally only those whose path
    starts with `path_prefix`)."""
    return len([r for r in origin.requests()
                if path_prefix is None or r.get("path", "").startswith(path_prefix)])


def profile_rule_for(profile, category):
    """(name, action) of the first rule of the shipped profile policy/profiles/PROFILE.toml that
    matches `category` by category alone (no other condition), or None: tests then follow a
    renamed rule instead of breaking on it."""
    import tomllib
    with open(REPO_ROOT / "policy" / "profiles" / ("%s.toml" % profile), "rb") as f:
        document = tomllib.load(f)
    for rule in document.get("rules", []):
        match = rule.get("match", {})
        if set(match) == {"category"} and category in match["category"]:
            return rule["name"], rule["action"]
    return None


def profile_settings(profile):
    """The [policy] table of the shipped profile policy/profiles/PROFILE.toml."""
    import tomllib
    with open(REPO_ROOT / "policy" / "profiles" / ("%s.toml" % profile), "rb") as f:
        return tomllib.load(f).get("policy", {})


# --- HTTP/2 and WebSocket (issue 4): the Node origin and client, memory, a CONNECT forwarder --

H2ORIGIN_SCRIPT = HERE / "h2origin.mjs"
H2CLIENT_SCRIPT = HERE / "h2client.mjs"


def node_binary():
    """The Node.js interpreter (Debian names it both node and nodejs)."""
    path = shutil.which("node") or shutil.which("nodejs")
    if not path:
        raise AssertionError("node not found (scripts/install-deps.sh installs nodejs)")
    return path


class NodeOrigin:
    """h2origin.mjs in its own process: an HTTPS origin speaking h2 only (mode "h2"), HTTP/1.1
    only ("h1") or both ("both"), with the PKI's good certificate; or cleartext HTTP/1.1
    (plain=True). Its stdout is one JSON event per line (ready, connection, request,
    request-end, response-end, ws-closed)."""

    def __init__(self, pki, mode="both", plain=False):
        self.mode = "plain" if plain else mode
        cmd = [node_binary(), str(H2ORIGIN_SCRIPT), "--port", "0"]
        if plain:
            cmd.append("--plain")
        else:
            cmd += ["--cert", str(pki.cert_dir / "good.pem"), "--key",
                    str(pki.cert_dir / "good.key"), "--mode", mode]
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=None if _verbose() else subprocess.DEVNULL, env=clean_env())
        try:
            self.log = LineCollector(self.process.stdout, "h2origin-%s" % self.mode)
            ready = json.loads(self.log.wait_for(lambda l: '"ready"' in l, STARTUP_TIMEOUT,
                                                 "h2origin ready"))
        except BaseException:
            self.stop()
            raise
        self.port = ready["port"]

    def mark(self):
        """The index of the next event: pass it as `start` to look only at later events."""
        return len(self.log.snapshot())

    def events(self, start=0, **match):
        """Parsed events from index `start` whose fields equal every key=value given."""
        out = []
        for line in self.log.snapshot()[start:]:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if all(event.get(k) == v for k, v in match.items()):
                out.append(event)
        return out

    def requests(self, start=0, **match):
        return self.events(start, event="request", **match)

    def connections(self, start=0):
        return self.events(start, event="connection")

    def wait_for_event(self, timeout=10.0, start=0, **match):
        def matches(line):
            try:
                event = json.loads(line)
            except ValueError:
                return False
            return all(event.get(k) == v for k, v in match.items())
        return json.loads(self.log.wait_for(matches, timeout, "h2origin event %r" % match,
                                            start=start))

    def stop(self):
        _stop_process(self.process, timeout=5)
        if self.process.stdout:
            self.process.stdout.close()


@dataclass
class H2ClientRun:
    returncode: int
    events: list
    stderr: str
    plan: dict

    def of(self, kind):
        return [e for e in self.events if e.get("event") == kind]

    @property
    def session(self):
        found = self.of("session")
        return found[0] if found else {}

    @property
    def responses(self):
        """Per-request results, in the order of the plan's requests."""
        return sorted(self.of("response"), key=lambda e: e["index"])

    @property
    def websocket(self):
        found = self.of("websocket")
        return found[0] if found else None

    @property
    def done(self):
        found = self.of("done")
        return found[0] if found else {}

    def describe(self):
        shown = json.dumps(self.events, sort_keys=True)
        return "h2client exit %d\nplan: %s\nevents: %s\nstderr: %s" % (
            self.returncode, json.dumps(self.plan)[:1500], shown[:6000], self.stderr[-2000:])


def h2client(plan, scratch, timeout=90):
    """Runs h2client.mjs with `plan` (a dict; see the script's header) and returns its events."""
    plan = dict(plan)
    plan.setdefault("timeout_ms", int(timeout * 1000) - 5000)
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    plan_path = scratch / ("h2client-plan-%s.json" % secrets.token_hex(4))
    plan_path.write_text(json.dumps(plan))
    result = subprocess.run([node_binary(), str(H2CLIENT_SCRIPT), str(plan_path)],
                            capture_output=True, timeout=timeout, env=clean_env())
    events = []
    for line in result.stdout.decode(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return H2ClientRun(result.returncode, events, result.stderr.decode(errors="replace"), plan)


def process_memory(pid):
    """{"rss": bytes, "hwm": bytes} of a live process, from /proc/PID/status (VmRSS, VmHWM);
    None once it is gone."""
    try:
        text = Path("/proc/%d/status" % pid).read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out["rss" if name == "VmRSS" else "hwm"] = int(value.split()[0]) * 1024
    return out if "rss" in out else None


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread, between start() and
    stop(); keeps the peak."""

    def __init__(self, pid, interval=0.1):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            memory = process_memory(self.pid)
            if memory:
                self.samples.append(memory["rss"])
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        return self.peak

    @property
    def peak(self):
        return max(self.samples) if self.samples else None


class ConnectForwarder:
    """A loopback listener for clients that cannot use a proxy (nghttp): every connection it
    accepts is tunnelled through `CONNECT target` on the proxy, then bytes are piped both ways.
    The CONNECT answers it got are kept in `answers` (status codes)."""

    def __init__(self, proxy_port, target, timeout=30.0):
        self.proxy_port = proxy_port
        self.target = target
        self.timeout = timeout
        self.answers = []
        self._sockets = []
        self._lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        with self._lock:
            self._sockets.append(client)
        try:
            server = RawConnection(self.proxy_port, timeout=self.timeout)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.append(server.sock)
        authority = self.target.encode()
        server.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
        try:
            response = server.read_response(connect=True)
        except (AssertionError, OSError):
            response = None
        self.answers.append(response.status if response else None)
        if response is None or not 200 <= response.status < 300:
            client.close()
            server.close()
            return
        if server.buffer:
            client.sendall(server.buffer)
        pumps = [threading.Thread(target=self._pump, args=(client, server.sock), daemon=True),
                 threading.Thread(target=self._pump, args=(server.sock, client), daemon=True)]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join(self.timeout * 4)
        client.close()
        server.close()

    @staticmethod
    def _pump(source, sink):
        try:
            source.settimeout(None)
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
