"""TLS no weaker than the client's own (issue 9), on both legs, with real processes.

Toward origins: a matrix of bad origins made here with the openssl CLI (certificates) and
Python's ssl module (servers that speak only old protocols or weak suites, at SECLEVEL=0 so they
really offer them: each is first checked with a direct `openssl s_client`). tokgate must refuse
each with a 502 that says why, in the body and in the flow log, the origin must never see the
HTTP request, and tokgate must not come back with a weaker offer (one connection per attempt,
and every ClientHello it sends offers TLS >= 1.2 and forward-secret AEAD suites only).

Toward clients: `openssl s_client` through CONNECT: TLS 1.0/1.1, CBC-only, RSA key transport
and CCM suites refused; ECDHE-AEAD TLS 1.2 and every default TLS 1.3 suite accepted; no
compression (a hand-written ClientHello offering DEFLATE); client-initiated renegotiation
refused. The same floor holds when the host's openssl.cnf is loosened (OPENSSL_CONF).

Finally testssl.sh scans the intercepting listener and no finding may be MEDIUM or worse.
"""

import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import unittest
import warnings
from pathlib import Path
from unittest import mock

from harness import (ConnectForwarder, IntegrationTestCase, LineCollector, RawConnection,
                     Tokgate, admin_get, clean_env, curl, run, wait_until)

DOMAIN = "tls-origin.test"
SECONDS_PER_DAY = 86400

# --- what a modern client offers ------------------------------------------------------------------

TLS12 = 0x0303
TLS13 = 0x0304
# TLS 1.3 suites (all AEAD) except TLS_AES_128_CCM_8_SHA256 (0x1305, a 64-bit tag).
TLS13_SUITES = {0x1301, 0x1302, 0x1303, 0x1304}
# TLS 1.2 suites with forward secrecy (ECDHE, DHE) and AEAD (GCM, ChaCha20-Poly1305, CCM).
TLS12_FS_AEAD_SUITES = {0xC02B, 0xC02C, 0xC02F, 0xC030, 0xCCA8, 0xCCA9, 0xCCAA, 0x009E, 0x009F,
                        0xC0AC, 0xC0AD}
EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF
FALLBACK_SCSV = 0x5600  # RFC 7507: sent only by a client retrying with a lower version
# signature_algorithms entries hashed with MD5 or SHA-1.
WEAK_SIGALGS = {0x0101, 0x0102, 0x0103, 0x0201, 0x0202, 0x0203}
# x25519, x448, P-256/384/521, ffdhe2048..8192, and the hybrid post-quantum groups.
STRONG_GROUPS = {0x001D, 0x001E, 0x0017, 0x0018, 0x0019, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104,
                 0x11EC, 0x6399}


# --- the TLS wire, by hand ------------------------------------------------------------------------

def _u16_list(values):
    data = b"".join(struct.pack(">H", v) for v in values)
    return struct.pack(">H", len(data)) + data


def _u16s(data):
    return [struct.unpack(">H", data[i:i + 2])[0] for i in range(0, len(data) - 1, 2)]


def parse_client_hello(data):
    """The facts of a ClientHello (first handshake record of `data`), or None if it is not
    one: legacy version, suites, compression methods, extension types, supported_versions,
    signature_algorithms, supported_groups."""
    try:
        if len(data) < 9 or data[0] != 0x16:
            return None
        record = data[5:5 + struct.unpack(">H", data[3:5])[0]]
        if record[0] != 1:
            return None
        body = record[4:]
        pos = 2 + 32
        pos += 1 + body[pos]
        suites_length = struct.unpack(">H", body[pos:pos + 2])[0]
        suites = _u16s(body[pos + 2:pos + 2 + suites_length])
        pos += 2 + suites_length
        compression = list(body[pos + 1:pos + 1 + body[pos]])
        pos += 1 + body[pos]
        extensions = {}
        if pos < len(body):
            end = pos + 2 + struct.unpack(">H", body[pos:pos + 2])[0]
            pos += 2
            while pos + 4 <= end:
                kind, length = struct.unpack(">HH", body[pos:pos + 4])
                extensions[kind] = body[pos + 4:pos + 4 + length]
                pos += 4 + length
        return {
            "legacy_version": struct.unpack(">H", body[0:2])[0],
            "suites": suites,
            "compression": compression,
            "extensions": sorted(extensions),
            "versions": _u16s(extensions.get(43, b"\x00")[1:]),
            "sigalgs": _u16s(extensions.get(13, b"\x00\x00")[2:]),
            "groups": _u16s(extensions.get(10, b"\x00\x00")[2:]),
        }
    except (IndexError, struct.error):
        return None


def tls12_client_hello(server_name, suites, compression_methods):
    """A TLS 1.2 ClientHello (no supported_versions) with the given suites and compression
    methods, SNI, the usual groups and signature algorithms, and an empty renegotiation_info."""
    def extension(kind, data):
        return struct.pack(">HH", kind, len(data)) + data
    name = server_name.encode()
    extensions = (
        extension(0x0000, struct.pack(">HBH", len(name) + 3, 0, len(name)) + name)
        + extension(0x000A, _u16_list([0x001D, 0x0017, 0x0018]))
        + extension(0x000B, b"\x01\x00")
        + extension(0x000D, _u16_list([0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501]))
        + extension(0xFF01, b"\x00"))
    body = (struct.pack(">H", TLS12) + os.urandom(32) + b"\x00" + _u16_list(suites)
            + bytes([len(compression_methods)]) + bytes(compression_methods)
            + struct.pack(">H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


def read_server_hello(sock, timeout=10.0):
    """Reads records until a ServerHello or an alert: {"alert": (level, description)} or
    {"version", "suite", "compression", "extensions"}; None if the peer closed first."""
    sock.settimeout(timeout)
    buffer = b""
    handshake = b""
    while True:
        while len(buffer) < 5 or len(buffer) < 5 + struct.unpack(">H", buffer[3:5])[0]:
            try:
                piece = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                piece = b""
            if not piece:
                return None
            buffer += piece
        length = struct.unpack(">H", buffer[3:5])[0]
        kind, fragment, buffer = buffer[0], buffer[5:5 + length], buffer[5 + length:]
        if kind == 21:
            return {"alert": (fragment[0], fragment[1])}
        if kind != 22:
            continue
        handshake += fragment
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            break
    if handshake[0] != 2:
        raise AssertionError("first handshake message is not a ServerHello: %r" % handshake[:8])
    body = handshake[4:4 + int.from_bytes(handshake[1:4], "big")]
    pos = 2 + 32
    pos += 1 + body[pos]
    suite = struct.unpack(">H", body[pos:pos + 2])[0]
    compression = body[pos + 2]
    pos += 3
    extensions = []
    if pos < len(body):
        end = pos + 2 + struct.unpack(">H", body[pos:pos + 2])[0]
        pos += 2
        while pos + 4 <= end:
            kind, length = struct.unpack(">HH", body[pos:pos + 4])
            extensions.append(kind)
            pos += 4 + length
    return {"version": struct.unpack(">H", body[0:2])[0], "suite": suite,
            "compression": compression, "extensions": extensions}


# --- a PKI of good and bad origin certificates ---------------------------------------------------

_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = ${ENV::LEAF_SAN}

[self_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = ${ENV::LEAF_SAN}

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

_KEY_ARGS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa2048": ["-newkey", "rsa:2048"],
    "rsa1024": ["-newkey", "rsa:1024"],
}


def _asn1_time(epoch):
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(epoch))


class OriginPki:
    """A trusted root, an untrusted root and leaves made on demand, all with the openssl CLI."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / "newcerts").mkdir(parents=True)
        (self.root / "index.txt").write_text("")
        (self.root / "serial").write_text("1000\n")
        self.cnf = self.root / "openssl.cnf"
        self.cnf.write_text(_CNF.replace("{dir}", str(self.root)))
        self.ca_cert, self.ca_key = self._root_ca("ca", "tokgate TLS hardening root")
        self.untrusted_cert, self.untrusted_key = self._root_ca(
            "untrusted-ca", "tokgate TLS hardening UNTRUSTED root")

    def _openssl(self, *args, san="DNS:unused.invalid"):
        # ${ENV::LEAF_SAN} must be set whenever the config is read, even for a CA.
        return run(["openssl", *args], env=clean_env(LEAF_SAN=san))

    def _root_ca(self, stem, cn):
        cert, key = self.root / (stem + ".pem"), self.root / (stem + ".key")
        self._openssl("req", "-config", self.cnf, "-x509", "-new", *_KEY_ARGS["ec"], "-nodes",
                      "-keyout", key, "-out", cert, "-days", "3650", "-sha256",
                      "-subj", "/O=tokgate tests/CN=%s" % cn, "-extensions", "v3_ca")
        return cert, key

    def leaf(self, stem, names, key_type="ec", issuer="trusted", not_before=None, not_after=None,
             digest="sha256"):
        """Makes STEM.pem/.key for the DNS `names`; issuer "trusted", "untrusted" or "self"."""
        cert, key, csr = (self.root / (stem + ext) for ext in (".pem", ".key", ".csr"))
        san = ", ".join("DNS:%s" % n for n in names)
        now = time.time()
        if issuer == "self":
            self._openssl("req", "-config", self.cnf, "-x509", "-new", *_KEY_ARGS[key_type],
                          "-nodes", "-keyout", key, "-out", cert, "-days", "30",
                          "-" + digest, "-subj", "/O=tokgate tests/CN=%s" % names[0],
                          "-extensions", "self_leaf", san=san)
        else:
            ca_cert, ca_key = ((self.ca_cert, self.ca_key) if issuer == "trusted"
                               else (self.untrusted_cert, self.untrusted_key))
            self._openssl("req", "-config", self.cnf, "-new", *_KEY_ARGS[key_type], "-nodes",
                          "-keyout", key, "-out", csr, "-subj",
                          "/O=tokgate tests/CN=%s" % names[0], san=san)
            # `openssl ca` rather than `x509 -req`: it takes explicit dates (past or future).
            self._openssl("ca", "-config", self.cnf, "-name", "test_ca", "-batch", "-notext",
                          "-cert", ca_cert, "-keyfile", ca_key, "-in", csr, "-out", cert,
                          "-startdate", _asn1_time(not_before or now - SECONDS_PER_DAY),
                          "-enddate", _asn1_time(not_after or now + 30 * SECONDS_PER_DAY),
                          "-md", digest, "-extensions", "leaf", san=san)
        key.chmod(0o600)
        return cert, key


# --- an origin that speaks exactly what it is told, and counts ------------------------------------

class TlsOrigin:
    """A Python ssl server on loopback with one certificate and a fixed protocol range and
    cipher list (at SECLEVEL=0, so weak settings are really offered). It records every
    accepted connection, the ClientHello it carried (peeked before the handshake), the
    handshake's outcome, and any HTTP request, which it answers with 200 and its TLS facts."""

    def __init__(self, cert, key, minimum=ssl.TLSVersion.TLSv1_2,
                 maximum=ssl.TLSVersion.TLSv1_3, ciphers="DEFAULT", dh_params=None):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
            context.minimum_version = minimum
            context.maximum_version = maximum
        # Before the certificate: at the default level a weak key or a SHA-1 leaf cannot load.
        context.set_ciphers(ciphers + ":@SECLEVEL=0")
        if dh_params:
            context.load_dh_params(str(dh_params))
        context.load_cert_chain(str(cert), str(key))
        context.set_alpn_protocols(["http/1.1"])
        self.context = context
        self.accepted = 0
        self.hellos = []
        self.handshakes = []   # {"ok": bool, "version", "cipher"} or {"ok": False, "error"}
        self.requests = []     # request lines
        self._cond = threading.Condition()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._cond:
                self.accepted += 1
                self._cond.notify_all()
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    @staticmethod
    def _peek_hello(sock, timeout=5.0):
        """The first TLS record, left in the socket for the handshake to read."""
        deadline = time.monotonic() + timeout
        data = b""
        while time.monotonic() < deadline:
            try:
                data = sock.recv(16384, socket.MSG_PEEK)
            except OSError:
                break
            if not data or (len(data) >= 5 and
                            len(data) >= 5 + struct.unpack(">H", data[3:5])[0]):
                break
            time.sleep(0.01)
        return data

    def _note(self, attribute, value):
        with self._cond:
            getattr(self, attribute).append(value)
            self._cond.notify_all()

    def _serve(self, sock):
        sock.settimeout(10)
        tls = None
        try:
            self._note("hellos", parse_client_hello(self._peek_hello(sock)))
            try:
                tls = self.context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as error:
                self._note("handshakes", {"ok": False, "error": str(error)})
                return
            facts = {"ok": True, "version": tls.version(), "cipher": tls.cipher()[0]}
            self._note("handshakes", facts)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                piece = tls.recv(65536)
                if not piece:
                    break
                head += piece
            if b"\r\n\r\n" not in head:
                return
            self._note("requests", head.split(b"\r\n", 1)[0].decode("latin-1"))
            body = json.dumps(facts).encode()
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        except (ssl.SSLError, OSError):
            pass
        finally:
            (tls or sock).close()

    def wait(self, predicate, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("origin: timed out waiting for %s; %s"
                                         % (what, self.describe()))
                self._cond.wait(left)

    def snapshot(self):
        with self._cond:
            return {"accepted": self.accepted, "hellos": list(self.hellos),
                    "handshakes": list(self.handshakes), "requests": list(self.requests)}

    def reset(self):
        """Forgets what the direct openssl probe did."""
        with self._cond:
            self.accepted = 0
            self.hellos, self.handshakes, self.requests = [], [], []

    def describe(self):
        state = self.snapshot()
        state["hellos"] = [{k: v for k, v in h.items() if k != "extensions"} if h else h
                           for h in state["hellos"]]
        return json.dumps(state, default=str)[:3000]

    def close(self):
        self.listener.close()


# --- clients --------------------------------------------------------------------------------------

def openssl_client(args, input=b"", timeout=20):  # noqa: A002
    """`openssl s_client ARGS`; returns (exit status, stdout + stderr as text)."""
    result = subprocess.run(["openssl", "s_client", *[str(a) for a in args]], input=input,
                            capture_output=True, timeout=timeout, env=clean_env())
    return result.returncode, (result.stdout + b"\n" + result.stderr).decode(errors="replace")


def negotiated(output):
    """(protocol, cipher) from `s_client -brief` output; (None, None) without a handshake."""
    protocol = re.search(r"^Protocol version: (\S+)", output, re.M)
    cipher = re.search(r"^Ciphersuite: (\S+)", output, re.M)
    return (protocol.group(1) if protocol else None, cipher.group(1) if cipher else None)


def read_flow_log(path):
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # a line still being written
    return records


def wait_flow_record(log_path, timeout=10.0, **match):
    def find():
        for record in read_flow_log(log_path):
            if all(record.get(k) == v for k, v in match.items()):
                return record
        return None
    return wait_until(find, timeout, "flow-log record %r" % (match,))


def metric_value(proxy, name, **labels):
    """One sample of the admin /metrics page (0 when absent)."""
    status, _, body = admin_get(proxy, "/metrics")
    if status != 200:
        raise AssertionError("/metrics answered %d" % status)
    wanted = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in body.decode().splitlines():
        match = re.match(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        have = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if have == wanted:
            return float(match.group(3))
    return 0.0


class ModernOfferMixin:
    """Assertions on what tokgate offers an origin."""

    def assert_modern_offer(self, hello, context=""):
        self.assertIsNotNone(hello, "the origin saw no ClientHello" + context)
        self.assertEqual(hello["legacy_version"], TLS12, context)
        versions = hello["versions"] or [hello["legacy_version"]]
        self.assertTrue(set(versions) <= {TLS12, TLS13},
                        "offered versions %s%s" % ([hex(v) for v in versions], context))
        weak = [hex(s) for s in hello["suites"]
                if s not in TLS13_SUITES | TLS12_FS_AEAD_SUITES | {EMPTY_RENEGOTIATION_INFO_SCSV}]
        self.assertEqual(weak, [], "suites without forward secrecy or AEAD offered" + context)
        self.assertNotIn(FALLBACK_SCSV, hello["suites"], "a fallback ClientHello" + context)
        self.assertEqual(hello["compression"], [0], context)
        self.assertTrue(hello["sigalgs"], "no signature_algorithms" + context)
        self.assertEqual([hex(a) for a in hello["sigalgs"] if a in WEAK_SIGALGS], [],
                         "MD5/SHA-1 signatures accepted" + context)
        self.assertEqual([hex(g) for g in hello["groups"] if g not in STRONG_GROUPS], [],
                         "weak groups offered" + context)


# --- toward origins -------------------------------------------------------------------------------

class OriginSideTest(ModernOfferMixin, IntegrationTestCase):
    """tokgate as the TLS client of origins: one proxy for the class, one origin per test."""

    start_origin = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.opki = OriginPki(cls.tmp / "origin-pki")
        pki = cls.opki
        now = time.time()
        cls.certs = {
            # Every name of the domain: the protocol and suite cases use these.
            "good": pki.leaf("good", ["*.%s" % DOMAIN]),
            "good-rsa": pki.leaf("good-rsa", ["*.%s" % DOMAIN], key_type="rsa2048"),
            "expired": pki.leaf("expired", ["expired.%s" % DOMAIN],
                                not_before=now - 400 * SECONDS_PER_DAY,
                                not_after=now - 30 * SECONDS_PER_DAY),
            "not-yet-valid": pki.leaf("not-yet-valid", ["not-yet-valid.%s" % DOMAIN],
                                      not_before=now + 30 * SECONDS_PER_DAY,
                                      not_after=now + 400 * SECONDS_PER_DAY),
            "self-signed": pki.leaf("self-signed", ["self-signed.%s" % DOMAIN], issuer="self"),
            "wrong-name": pki.leaf("wrong-name", ["somewhere-else.example"]),
            "untrusted-root": pki.leaf("untrusted-root", ["untrusted-root.%s" % DOMAIN],
                                       issuer="untrusted"),
            "rsa1024": pki.leaf("rsa1024", ["rsa1024.%s" % DOMAIN], key_type="rsa1024"),
        }
        try:
            cls.certs["sha1"] = pki.leaf("sha1", ["sha1.%s" % DOMAIN], digest="sha1")
        except AssertionError as error:
            cls.sha1_unavailable = str(error)[:300]
        # DHE groups: RFC 7919 ffdhe2048, and 1024-bit DSA-style parameters (fast to make).
        cls.dh2048 = cls.tmp / "ffdhe2048.pem"
        run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
             "group:ffdhe2048", "-out", cls.dh2048])
        cls.dh1024 = cls.tmp / "dh1024.pem"
        run(["openssl", "dhparam", "-dsaparam", "-out", cls.dh1024, "1024"])

        cls.flow_log = cls.tmp / "flows.jsonl"
        cls.proxy = Tokgate(cls.tmp / "proxy", args=[
            "--resolve", "*:*:127.0.0.1", "--upstream-ca", pki.ca_cert,
            "--connect-ports", "1-65535", "--profile", "observe",
            "--intercept", "*.%s" % DOMAIN, "--flow-log", cls.flow_log])
        cls.addClassCleanup(cls.proxy.stop)

    sha1_unavailable = None

    def tearDown(self):
        if self.proxy.died_unexpectedly():
            self.fail("tokgate exited during the test" + self.proxy.context())

    def start_origin_server(self, cert_stem, **settings):
        cert, key = self.certs[cert_stem]
        origin = TlsOrigin(cert, key, **settings)
        self.addCleanup(origin.close)
        return origin

    def fetch(self, name, port, case):
        path = "/tls-hardening/%s" % case
        result = curl("https://%s:%d%s" % (name, port, path), proxy=self.proxy.url,
                      cacert=self.proxy.ca_pem)
        return path, result

    def check_speaks(self, origin, name, client_args, expect_protocol, expect_cipher=None,
                     expect_text=None):
        """The origin really speaks the weak setting: a direct s_client that allows it gets it."""
        _, output = openssl_client(["-connect", "127.0.0.1:%d" % origin.port,
                                    "-servername", name, "-brief", *client_args])
        protocol, cipher = negotiated(output)
        self.assertEqual(protocol, expect_protocol, "direct probe of the origin:\n" + output)
        if expect_cipher:
            self.assertRegex(cipher or "", expect_cipher, output)
        if expect_text:
            self.assertRegex(output, expect_text)
        origin.wait(lambda o: len(o.handshakes) >= 1, "the probe's handshake")
        origin.reset()

    def assert_refused(self, case, cert_stem, reason, **settings):
        """The origin (made of `cert_stem` and `settings`) gets one connection and one
        ClientHello, never a request; the client gets a 502 upstream-tls saying `reason`, and
        so does the flow log. Returns the origin for more checks."""
        name = "%s.%s" % (case, DOMAIN)
        origin = self.start_origin_server(cert_stem, **settings)
        return self.assert_origin_refused(origin, name, case, reason)

    def assert_origin_refused(self, origin, name, case, reason):
        path, result = self.fetch(name, origin.port, case)
        context = "\n%s\norigin: %s%s" % (result.describe(), origin.describe(),
                                          self.proxy.context())
        # The client's own handshake (with a minted leaf) succeeds; the request gets the 502.
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 502, context)
        self.assertEqual(result.header("x-tokgate-error"), "upstream-tls", context)
        body = result.body.decode(errors="replace")
        self.assertTrue(body.startswith("tokgate: %s: " % name), context)
        self.assertRegex(body, re.compile(reason, re.I), context)

        record = wait_flow_record(self.flow_log, path=path)
        self.assertEqual(record.get("status"), 502, record)
        self.assertEqual(record.get("error"), "upstream-tls", record)
        self.assertRegex(record.get("error_reason", ""), re.compile(reason, re.I), record)
        self.assertNotIn("server_tls", record, "a TLS session with the origin was recorded")

        # The origin saw one connection and the end of its (failed) handshake, then nothing:
        # no second, weaker attempt, and no request.
        origin.wait(lambda o: len(o.handshakes) >= 1, "the handshake's end")
        time.sleep(0.3)  # room for a retry, which must not come
        state = origin.snapshot()
        self.assertEqual(state["accepted"], 1, "connections at the origin" + context)
        self.assertEqual(len(state["hellos"]), 1, context)
        self.assert_modern_offer(state["hellos"][0], context)
        self.assertFalse(state["handshakes"][0]["ok"],
                         "the origin completed a handshake tokgate should refuse" + context)
        self.assertEqual(state["requests"], [], "the origin received the request" + context)
        return origin

    def assert_served(self, case, cert_stem, expect_version, expect_cipher, **settings):
        name = "%s.%s" % (case, DOMAIN)
        origin = self.start_origin_server(cert_stem, **settings)
        path, result = self.fetch(name, origin.port, case)
        context = "\n%s\norigin: %s%s" % (result.describe(), origin.describe(),
                                          self.proxy.context())
        self.assertEqual(result.returncode, 0, context)
        self.assertEqual(result.status, 200, context)
        seen = result.json()
        self.assertEqual(seen["version"], expect_version, context)
        self.assertEqual(seen["cipher"], expect_cipher, context)
        state = origin.snapshot()
        self.assertEqual(state["accepted"], 1, context)
        self.assertEqual(state["requests"], ["GET %s HTTP/1.1" % path], context)
        self.assert_modern_offer(state["hellos"][0], context)
        record = wait_flow_record(self.flow_log, path=path)
        self.assertEqual(record.get("status"), 200, record)
        self.assertEqual(record.get("server_tls"), expect_version, record)
        return state

    # --- controls: modern origins work, so each refusal below is about its one weakness ---

    def test_control_tls13_origin(self):
        self.assert_served("tls13", "good", "TLSv1.3", "TLS_AES_256_GCM_SHA384")

    def test_control_tls12_ecdhe_rsa_gcm_origin(self):
        self.assert_served("tls12-ecdhe-rsa", "good-rsa", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256",
                           maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")

    def test_control_tls12_dhe_2048_origin(self):
        self.assert_served("tls12-dhe2048", "good-rsa", "TLSv1.2", "DHE-RSA-AES128-GCM-SHA256",
                           maximum=ssl.TLSVersion.TLSv1_2, ciphers="DHE-RSA-AES128-GCM-SHA256",
                           dh_params=self.dh2048)

    # --- certificates ---

    def test_expired_leaf(self):
        self.assert_refused("expired", "expired", r"certificate has expired")

    def test_not_yet_valid_leaf(self):
        self.assert_refused("not-yet-valid", "not-yet-valid", r"certificate is not yet valid")

    def test_self_signed_leaf(self):
        self.assert_refused("self-signed", "self-signed", r"self[- ]signed certificate")

    def test_leaf_for_another_name(self):
        self.assert_refused("wrong-name", "wrong-name", r"hostname mismatch")

    def test_leaf_from_untrusted_root(self):
        self.assert_refused("untrusted-root", "untrusted-root",
                            r"unable to get local issuer certificate")

    def test_rsa_1024_leaf(self):
        self.assert_refused("rsa1024", "rsa1024", r"key too (weak|small)",
                            maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")

    def test_sha1_signed_leaf(self):
        if self.sha1_unavailable:
            self.skipTest("openssl cannot sign with SHA-1 here: %s" % self.sha1_unavailable)
        self.assert_refused("sha1", "sha1", r"digest algorithm too weak")

    # --- protocol versions and suites ---

    def test_tls10_only_origin(self):
        self.assert_legacy_version_refused("tls10", ssl.TLSVersion.TLSv1, "-tls1", "TLSv1")

    def test_tls11_only_origin(self):
        self.assert_legacy_version_refused("tls11", ssl.TLSVersion.TLSv1_1, "-tls1_1", "TLSv1.1")

    def assert_legacy_version_refused(self, case, version, flag, protocol):
        name = "%s.%s" % (case, DOMAIN)
        origin = self.start_origin_server("good", minimum=version, maximum=version)
        self.check_speaks(origin, name, [flag, "-cipher", "DEFAULT@SECLEVEL=0"], protocol)
        self.assert_origin_refused(origin, name, case, r"unsupported protocol|protocol version")

    def test_cbc_only_tls12_origin_with_ecdhe(self):
        self.assert_suites_refused("cbc-ecdhe", "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
                                   "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384",
                                   r"^ECDHE-RSA-AES\d+-SHA\d*$")

    def test_cbc_only_tls12_origin_with_rsa_key_transport(self):
        self.assert_suites_refused("cbc-rsa", "AES128-SHA:AES256-SHA:AES128-SHA256",
                                   r"^AES\d+-SHA\d*$")

    def test_rsa_key_transport_only_origin(self):
        # AEAD, but no forward secrecy.
        self.assert_suites_refused("rsa-kx", "AES128-GCM-SHA256:AES256-GCM-SHA384",
                                   r"^AES\d+-GCM-SHA\d+$")

    def assert_suites_refused(self, case, ciphers, cipher_pattern):
        name = "%s.%s" % (case, DOMAIN)
        origin = self.start_origin_server("good-rsa", maximum=ssl.TLSVersion.TLSv1_2,
                                          ciphers=ciphers)
        self.check_speaks(origin, name, ["-tls1_2", "-cipher", "ALL@SECLEVEL=0"], "TLSv1.2",
                          expect_cipher=cipher_pattern)
        self.assert_origin_refused(origin, name, case, r"handshake failure|no shared cipher")

    def test_weak_dhe_group_origin(self):
        case = "dh1024"
        name = "%s.%s" % (case, DOMAIN)
        origin = self.start_origin_server("good-rsa", maximum=ssl.TLSVersion.TLSv1_2,
                                          ciphers="DHE-RSA-AES128-GCM-SHA256",
                                          dh_params=self.dh1024)
        self.check_speaks(origin, name,
                          ["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256@SECLEVEL=0"],
                          "TLSv1.2", expect_text=r"Server Temp Key: DH, 1024 bits")
        self.assert_origin_refused(origin, name, case, r"dh key too small")


# --- toward clients -------------------------------------------------------------------------------

CLIENT_HOST = "example.org"  # a name of the harness's good origin certificate


class ClientSideTest(IntegrationTestCase):
    """tokgate as the TLS server of clients, in front of the harness's good origin."""

    def setUp(self):
        self.proxy = self.start_tokgate(args=self.intercept_args(CLIENT_HOST) + [
            "--flow-log", self.tmp / ("%s.jsonl" % self._testMethodName)])
        self.flow_log = self.tmp / ("%s.jsonl" % self._testMethodName)

    def through_proxy(self, *args, input=b"", timeout=20):  # noqa: A002
        return openssl_client(["-proxy", "127.0.0.1:%d" % self.proxy.port,
                               "-connect", "%s:%d" % (CLIENT_HOST, self.origin.https_port),
                               "-servername", CLIENT_HOST, "-CAfile", self.proxy.ca_pem,
                               "-verify_return_error", "-brief", *args],
                              input=input, timeout=timeout)

    def assert_refused(self, args, alert_pattern):
        code, output = self.through_proxy(*args)
        self.assertNotEqual(code, 0, output + self.proxy.context())
        self.assertEqual(negotiated(output), (None, None), output)
        self.assertRegex(output, alert_pattern, output + self.proxy.context())

    def test_tls10_and_tls11_clients_refused(self):
        before = metric_value(self.proxy, "tokgate_handshake_failures_total", side="client",
                              reason="protocol")
        for flag in ("-tls1", "-tls1_1"):
            with self.subTest(version=flag):
                self.assert_refused([flag, "-cipher", "DEFAULT@SECLEVEL=0"],
                                    r"alert protocol version")
        after = metric_value(self.proxy, "tokgate_handshake_failures_total", side="client",
                             reason="protocol")
        self.assertEqual(after - before, 2, self.proxy.context())
        # The flow log is written by its own thread: the second record may trail the metric.
        def failed():
            return [r for r in read_flow_log(self.flow_log) if r.get("error") == "client-tls"]
        wait_until(lambda: len(failed()) >= 2, 10, "two client-tls flow records")
        self.assertEqual(len(failed()), 2, read_flow_log(self.flow_log))

    def test_tls12_without_forward_secret_aead_refused(self):
        cases = {
            "cbc-ecdhe": "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:"
                         "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA",
            "cbc-rsa": "AES128-SHA:AES256-SHA:AES128-SHA256:AES256-SHA256",
            "rsa-kx-gcm": "AES128-GCM-SHA256:AES256-GCM-SHA384",  # AEAD without forward secrecy
            "dhe-rsa-gcm": "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384",
        }
        before = metric_value(self.proxy, "tokgate_handshake_failures_total", side="client",
                              reason="no-shared-cipher")
        for case, ciphers in cases.items():
            with self.subTest(case=case):
                self.assert_refused(["-tls1_2", "-cipher", ciphers + ":@SECLEVEL=0"],
                                    r"alert handshake failure")
        after = metric_value(self.proxy, "tokgate_handshake_failures_total", side="client",
                             reason="no-shared-cipher")
        self.assertEqual(after - before, len(cases), self.proxy.context())

    def test_tls13_ccm_suites_refused(self):
        for suite in ("TLS_AES_128_CCM_8_SHA256", "TLS_AES_128_CCM_SHA256"):
            with self.subTest(suite=suite):
                self.assert_refused(["-tls1_3", "-ciphersuites", suite],
                                    r"alert handshake failure")

    def test_modern_suites_accepted_and_carry_requests(self):
        accepted = [("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"),
                    ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"),
                    ("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"),
                    ("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"),
                    ("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"),
                    ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256")]
        for index, (flag, kind, suite) in enumerate(accepted):
            with self.subTest(suite=suite):
                path = "/whoami?suite=%d" % index
                request = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                           % (path, CLIENT_HOST)).encode()
                code, output = self.through_proxy(flag, kind, suite, "-ign_eof", input=request)
                context = output + self.proxy.context()
                self.assertEqual(code, 0, context)
                protocol = "TLSv1.2" if flag == "-tls1_2" else "TLSv1.3"
                self.assertEqual(negotiated(output), (protocol, suite), context)
                self.assertIn("HTTP/1.1 200", output, context)
                # The flow log redacts query values: the Nth /whoami record is this request's.
                record = self.whoami_records(index + 1)[index]
                self.assertEqual(record.get("client_tls"), protocol, record)
                self.assertEqual(record.get("status"), 200, record)

    def whoami_records(self, at_least):
        """The flow log's /whoami records, once there are `at_least` of them."""
        def enough():
            records = [r for r in read_flow_log(self.flow_log) if r.get("path") == "/whoami"]
            return records if len(records) >= at_least else None
        return wait_until(enough, 10, "%d /whoami flow records" % at_least)

    def raw_hello_through_connect(self, hello):
        raw = RawConnection(self.proxy.port)
        self.addCleanup(raw.close)
        authority = ("%s:%d" % (CLIENT_HOST, self.origin.https_port)).encode()
        raw.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
        answer = raw.read_response(connect=True)
        self.assertEqual(answer.status, 200, self.proxy.context())
        raw.send(hello)
        return read_server_hello(raw.sock)

    def test_compression_never_chosen(self):
        suites = [0xC02B, 0xC02C, 0xCCA9]
        hello = self.raw_hello_through_connect(
            tls12_client_hello(CLIENT_HOST, suites, [1, 0]))  # DEFLATE first, then null
        context = "ServerHello: %r%s" % (hello, self.proxy.context())
        self.assertIsNotNone(hello, context)
        self.assertNotIn("alert", hello, context)
        self.assertEqual(hello["compression"], 0, context)
        self.assertEqual(hello["version"], TLS12, context)
        self.assertIn(hello["suite"], suites, context)
        self.assertIn(0xFF01, hello["extensions"], "no secure renegotiation indication")

    def test_deflate_only_hello_refused(self):
        hello = self.raw_hello_through_connect(
            tls12_client_hello(CLIENT_HOST, [0xC02B, 0xC02C], [1]))
        context = "ServerHello: %r%s" % (hello, self.proxy.context())
        # A fatal alert, or the connection closed: never a ServerHello.
        self.assertTrue(hello is None or "alert" in hello, context)
        if hello is not None:
            self.assertEqual(hello["alert"][0], 2, context)

    def test_client_initiated_renegotiation_refused(self):
        request = ("GET /whoami HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % CLIENT_HOST).encode()
        for renegotiate in (False, True):
            with self.subTest(renegotiate=renegotiate):
                output = self.interactive_tls12(request, renegotiate)
                if not renegotiate:
                    # Control: the same session carries a request when nobody renegotiates.
                    self.assertIn("HTTP/1.1 200", output, output + self.proxy.context())
                    continue
                self.assertIn("RENEGOTIATING", output, output)
                self.assertRegex(output, r"no renegotiation", output)
                self.assertNotIn("HTTP/1.1 200", output, output + self.proxy.context())

    def interactive_tls12(self, request, renegotiate, timeout=10.0):
        """s_client on TLS 1.2 with its stdin kept open; optionally the R command (client
        renegotiation), then a request. Returns everything it printed."""
        cmd = ["openssl", "s_client", "-proxy", "127.0.0.1:%d" % self.proxy.port,
               "-connect", "%s:%d" % (CLIENT_HOST, self.origin.https_port),
               "-servername", CLIENT_HOST, "-CAfile", str(self.proxy.ca_pem), "-tls1_2"]
        process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=clean_env())
        try:
            lines = LineCollector(process.stdout, "s_client")
            lines.wait_for(lambda l: "Verify return code:" in l, timeout, "s_client handshake")
            if renegotiate:
                process.stdin.write(b"R\n")
                process.stdin.flush()
                lines.wait_for(lambda l: "RENEGOTIATING" in l, timeout, "RENEGOTIATING")
                try:
                    process.wait(timeout)  # a refused renegotiation ends the session
                except subprocess.TimeoutExpired:
                    pass
            if process.poll() is None:
                try:
                    process.stdin.write(request)
                    process.stdin.flush()
                    lines.wait_for(lambda l: l.startswith("HTTP/1.1 "), timeout, "a response")
                except (BrokenPipeError, AssertionError):
                    pass
            if process.poll() is not None:
                lines.wait_closed(timeout)  # its last words (the alert) may still be in the pipe
            return "\n".join(lines.snapshot())
        finally:
            process.kill()
            process.wait(5)
            process.stdout.close()
            process.stdin.close()


# --- the host's openssl.cnf cannot lower the floor ------------------------------------------------

LOOSE_OPENSSL_CNF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = loose
[loose]
MinProtocol = TLSv1
MaxProtocol = TLSv1.2
CipherString = ALL:@SECLEVEL=0
Ciphersuites = TLS_AES_128_CCM_8_SHA256:TLS_AES_128_GCM_SHA256
SignatureAlgorithms = ECDSA+SHA256:RSA-PSS+SHA256:RSA+SHA256:ECDSA+SHA1:RSA+SHA1
"""


class LooseSystemConfigTest(ModernOfferMixin, IntegrationTestCase):
    """An administrator's openssl.cnf that lowers the system default (SECLEVEL=0, TLS 1.0,
    CCM_8, SHA-1 signatures, no TLS 1.3) for some legacy program must not lower tokgate."""

    def setUp(self):
        cnf = self.tmp / "loose-openssl.cnf"
        cnf.write_text(LOOSE_OPENSSL_CNF)
        self.opki = OriginPki(self.tmp / ("pki-%s" % self._testMethodName))
        # Only tokgate reads the loose file; the test's own clients keep the system's.
        with mock.patch.dict(os.environ, {"OPENSSL_CONF": str(cnf)}):
            self.proxy = self.start_tokgate(args=[
                "--resolve", "*:*:127.0.0.1", "--upstream-ca", self.opki.ca_cert,
                "--upstream-ca", self.pki.ca_cert, "--connect-ports", "1-65535",
                "--profile", "observe", "--intercept", "*.%s" % DOMAIN,
                "--intercept", CLIENT_HOST])

    def test_origin_floor_holds(self):
        name = "rsa1024.%s" % DOMAIN
        cert, key = self.opki.leaf("rsa1024", [name], key_type="rsa1024")
        origin = TlsOrigin(cert, key, maximum=ssl.TLSVersion.TLSv1_2,
                           ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        self.addCleanup(origin.close)
        result = curl("https://%s:%d/loose" % (name, origin.port), proxy=self.proxy.url,
                      cacert=self.proxy.ca_pem)
        context = "\n%s\norigin: %s%s" % (result.describe(), origin.describe(),
                                          self.proxy.context())
        self.assertEqual(result.status, 502, context)
        self.assertRegex(result.body.decode(errors="replace"), r"key too (weak|small)", context)
        self.assertEqual(origin.snapshot()["requests"], [], context)
        hello = origin.snapshot()["hellos"][0]
        # The loose file was read (its signature list is what tokgate offers), yet no SHA-1,
        # no CCM_8, nothing below TLS 1.2, and TLS 1.3 is still offered.
        self.assertTrue(set(hello["sigalgs"]) <= {0x0403, 0x0804, 0x0401, 0x0203, 0x0201},
                        "OPENSSL_CONF was not read by tokgate: %r" % hello)
        self.assert_modern_offer(hello, context)
        self.assertIn(TLS13, hello["versions"], context)

    def test_client_floor_holds(self):
        origin_port = self.origin.https_port
        base = ["-proxy", "127.0.0.1:%d" % self.proxy.port,
                "-connect", "%s:%d" % (CLIENT_HOST, origin_port), "-servername", CLIENT_HOST,
                "-CAfile", self.proxy.ca_pem, "-brief"]
        for args in (["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"],
                     ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"],
                     ["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_8_SHA256"]):
            with self.subTest(args=args):
                code, output = openssl_client(base + args)
                self.assertNotEqual(code, 0, output + self.proxy.context())
                self.assertEqual(negotiated(output), (None, None), output)
        code, output = openssl_client(base + ["-tls1_3"])
        self.assertEqual(negotiated(output)[0], "TLSv1.3", output + self.proxy.context())


# --- testssl.sh -----------------------------------------------------------------------------------

def testssl_binary():
    return shutil.which("testssl") or shutil.which("testssl.sh")


# Findings testssl rates MEDIUM or worse that belong to a private interception CA by design,
# not to the TLS configuration; each is matched on its id and exact text, and printed.
PRIVATE_CA_FINDINGS = {
    # Leaves minted on the fly by a local CA carry no CRL or OCSP URI (nothing to publish
    # them at, and clients do not check revocation for a locally installed root).
    "cert_revocation": "Neither CRL nor OCSP URI provided",
}
BAD_SEVERITIES = ("MEDIUM", "HIGH", "CRITICAL")


@unittest.skipUnless(testssl_binary(), "testssl.sh is not installed (Debian package testssl.sh)")
class TestsslScanTest(IntegrationTestCase):
    """testssl.sh against the intercepting listener. testssl 3.0's --proxy sends
    `CONNECT host:port HTTP/1.0` with bare LF line ends, which tokgate answers with 400, so the
    scan goes through harness.ConnectForwarder instead: a loopback port whose every connection
    becomes a CONNECT on tokgate's explicit listener (CRLF). Every byte of every check still
    reaches tokgate's intercepting TLS server, with the SNI testssl sends."""

    def test_scan_has_no_medium_or_worse_finding(self):
        proxy = self.start_tokgate(args=self.intercept_args(CLIENT_HOST))
        forwarder = ConnectForwarder(proxy.port, "%s:%d" % (CLIENT_HOST, self.origin.https_port))
        self.addCleanup(forwarder.close)
        scratch = self.scratch_dir("testssl")
        report = scratch / "testssl.json"
        # Protocols, cipher categories, forward secrecy, server defaults and preferences, each
        # cipher per protocol, and the vulnerabilities: everything but the client simulation
        # and HTTP headers. tokgate's leaves live 30 days and are renewed a day before they
        # end, so expiry warnings start at 2 days left instead of testssl's 60/30 (meant for
        # certificates bought for a year).
        cmd = [testssl_binary(), "--quiet", "--color", "0", "--warnings", "off",
               "--nodns", "none", "--ip", "127.0.0.1", "--add-ca", str(proxy.ca_pem),
               "--connect-timeout", "10", "--openssl-timeout", "10",
               "--jsonfile", str(report), "-p", "-s", "-f", "-S", "-P", "-U",
               "%s:%d" % (CLIENT_HOST, forwarder.port)]
        started = time.monotonic()
        result = subprocess.run(cmd, capture_output=True, timeout=150, cwd=str(scratch),
                                env=clean_env(DAYS2WARN1="2", DAYS2WARN2="1"))
        output = result.stdout.decode(errors="replace")
        context = "\ntestssl exit %d after %.0fs\n%s\n%s%s" % (
            result.returncode, time.monotonic() - started, output[-6000:],
            result.stderr.decode(errors="replace")[-2000:], proxy.context())
        self.assertTrue(report.exists(), context)
        findings = json.loads(report.read_text())
        ids = {f["id"] for f in findings}
        # The scan really ran against the minted chain: these are always present.
        for required in ("TLS1_2", "TLS1_3", "cert_chain_of_trust", "BREACH", "PFS"):
            self.assertIn(required, ids, context)
        by_id = {f["id"]: f for f in findings}
        # Verified against tokgate's CA (--add-ca): the minted chain is complete and valid.
        self.assertEqual(by_id["cert_chain_of_trust"]["severity"], "OK",
                         by_id["cert_chain_of_trust"])
        for legacy in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
            self.assertRegex(by_id[legacy]["finding"], r"^not offered", by_id[legacy])

        shown = []
        bad = []
        for finding in findings:
            severity = finding.get("severity")
            if severity in ("LOW", "WARN") + BAD_SEVERITIES:
                shown.append("%-8s %s: %s" % (severity, finding["id"], finding["finding"]))
            if severity in BAD_SEVERITIES and \
                    PRIVATE_CA_FINDINGS.get(finding["id"]) != finding["finding"]:
                bad.append(finding)
        if shown:
            print("\ntestssl.sh findings of note (%s allowed by design: %s):\n  %s" % (
                len([f for f in findings if f.get("severity") in BAD_SEVERITIES]) - len(bad),
                ", ".join(sorted(PRIVATE_CA_FINDINGS)), "\n  ".join(shown)))
        self.assertEqual(bad, [], "testssl.sh findings MEDIUM or worse" + context)


if __name__ == "__main__":
    unittest.main()
