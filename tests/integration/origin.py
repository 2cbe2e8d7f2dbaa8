#!/usr/bin/env python3
"""A real HTTP/1.1 test origin for tokgate's integration tests (Python stdlib only).

Run standalone:

    python3 origin.py --https-port 0 --http-port 0 --cert-dir DIR

When both listeners are bound it prints one JSON line on stdout,
{"event": "ready", "https_port": N, "http_port": M}, then one JSON line per request it
starts handling ({"event": "request", ...}) so a test can tell when a request has reached it.

The HTTPS listener picks its certificate by SNI (ssl.SSLContext.sni_callback), from DIR:
  expired.test   -> expired.pem/.key   (validity entirely in the past)
  wrong.test     -> wrong.pem/.key     (valid only for other.example)
  untrusted.test -> untrusted.pem/.key (issued by a CA the proxy does not trust)
  anything else  -> good.pem/.key      (www.tiktok.com, example.org, splice.test, ...)

Endpoints (both listeners):
  GET  /bytes/N     N bytes of pattern_bytes(), Content-Length, header X-Sha256
  GET  /chunked/N   the same body, Transfer-Encoding: chunked, in uneven chunk sizes
  POST|PUT /sha256  hashes the request body (Content-Length or chunked), answers
                    {"sha256": hex, "length": n, "chunked": bool}
  GET  /whoami      JSON: sni, host header, request line, http version, peer, tls version, headers
  GET  /stall       never answers (gives up after 60 s, or when the peer closes)
  GET  /slow/MS     answers 200 after MS milliseconds

Bodies stream through a small buffer: nothing holds a whole body in memory.
"""

import argparse
import functools
import hashlib
import json
import select
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The body pattern: byte i of every body is _PATTERN[i % 251]. A prime period keeps the pattern
# out of phase with every power-of-two buffer size, so a misplaced or repeated buffer shows up.
PATTERN_PERIOD = 251
_PATTERN = bytes((i * 131 + 17) % 256 for i in range(PATTERN_PERIOD))
_PATTERN_BLOCK = _PATTERN * 1100  # 276,100 bytes: any slice of up to 256 KiB at any phase
MAX_SLICE = 256 * 1024
MAX_BODY = 1 << 30
STALL_SECONDS = 60.0
MAX_SLOW_MS = 60_000
# Chunk sizes for /chunked/N: deliberately uneven (1 byte, odd, just over a power of two, ...).
CHUNK_SIZES = (1, 17, 4093, 65536, 7, 131077, 300, 32767, 2, 200_003)


def pattern_chunks(n, chunk_size=MAX_SLICE):
    """Yields the first n bytes of the pattern in slices of at most chunk_size bytes."""
    offset = 0
    while offset < n:
        size = min(chunk_size, n - offset, MAX_SLICE)
        start = offset % PATTERN_PERIOD
        yield _PATTERN_BLOCK[start:start + size]
        offset += size


def pattern_bytes(n):
    return b"".join(pattern_chunks(n))


@functools.lru_cache(maxsize=64)
def pattern_sha256(n):
    digest = hashlib.sha256()
    for piece in pattern_chunks(n):
        digest.update(piece)
    return digest.hexdigest()


_stdout_lock = threading.Lock()


def emit(event):
    """One JSON line per event on stdout; the harness reads them to synchronise."""
    line = json.dumps(event, sort_keys=True)
    with _stdout_lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass


class BadRequestBody(Exception):
    pass


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "tokgate-test-origin/1"
    sys_version = ""
    timeout = 120  # per socket operation; bounds a silent client

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        if self.server.verbose:
            sys.stderr.write("origin: %s - %s\n" % (self.address_string(), format % args))

    # --- dispatch -----------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        emit({"event": "request", "method": self.command, "path": self.path,
              "scheme": self.server.scheme, "sni": self._sni(),
              "peer": "%s:%d" % self.client_address[:2]})
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        route = parts[0] if parts else ""
        arg = parts[1] if len(parts) > 1 else None
        try:
            if route == "sha256" and self.command in ("POST", "PUT"):
                return self._sha256()
            # Everything else ignores a request body, but must consume it to keep the
            # connection in sync.
            self._discard_body()
            if self.command not in ("GET", "HEAD"):
                return self._send_text(405, "method not allowed\n")
            if route == "bytes" and arg is not None:
                return self._bytes(arg, chunked=False)
            if route == "chunked" and arg is not None:
                return self._bytes(arg, chunked=True)
            if route == "whoami":
                return self._whoami()
            if route == "stall":
                return self._stall()
            if route == "slow" and arg is not None:
                return self._slow(arg)
            return self._send_text(404, "no such endpoint: %s\n" % path)
        except BadRequestBody as error:
            self.close_connection = True
            return self._send_text(400, "bad request body: %s\n" % error)

    # --- endpoints ----------------------------------------------------------------------------

    def _bytes(self, arg, chunked):
        n = self._parse_count(arg, MAX_BODY)
        if n is None:
            return self._send_text(400, "bad length\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Sha256", pattern_sha256(n))
        self.send_header("X-Length", str(n))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        if not chunked:
            for piece in pattern_chunks(n):
                self.wfile.write(piece)
            return
        offset = 0
        index = 0
        while offset < n:
            size = min(CHUNK_SIZES[index % len(CHUNK_SIZES)], n - offset)
            index += 1
            # A chunk extension now and then: a relay must pass or strip it, never choke on it.
            ext = b";note=odd" if index % 3 == 0 else b""
            self.wfile.write(b"%x%s\r\n" % (size, ext))
            start = offset
            remaining = size
            while remaining > 0:
                take = min(remaining, MAX_SLICE)
                phase = start % PATTERN_PERIOD
                self.wfile.write(_PATTERN_BLOCK[phase:phase + take])
                start += take
                remaining -= take
            self.wfile.write(b"\r\n")
            offset += size
        self.wfile.write(b"0\r\n\r\n")

    def _sha256(self):
        digest = hashlib.sha256()
        length = 0
        chunked = self._is_chunked()
        for piece in self._body_pieces():
            digest.update(piece)
            length += len(piece)
        self._send_json(200, {"sha256": digest.hexdigest(), "length": length, "chunked": chunked})

    def _whoami(self):
        tls_version = None
        cipher = None
        alpn = None
        session_reused = None
        if isinstance(self.connection, ssl.SSLSocket):
            tls_version = self.connection.version()
            cipher = (self.connection.cipher() or (None,))[0]
            alpn = self.connection.selected_alpn_protocol()
            session_reused = self.connection.session_reused
        self._send_json(200, {
            "scheme": self.server.scheme,
            "sni": self._sni(),
            "host": self.headers.get("Host"),
            "request_line": self.requestline,
            "method": self.command,
            "path": self.path,
            "http_version": self.request_version,
            "peer": "%s:%d" % self.client_address[:2],
            "tls_version": tls_version,
            "cipher": cipher,
            "alpn": alpn,
            "session_reused": session_reused,
            "headers": [[k, v] for k, v in self.headers.items()],
        })

    def _stall(self):
        # Never answer. Watch the connection so the thread ends as soon as the peer gives up;
        # every wait is bounded by the stall deadline.
        self.close_connection = True
        deadline = time.monotonic() + STALL_SECONDS
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                readable, _, _ = select.select([self.connection], [], [], min(left, 1.0))
                if readable and not self.connection.recv(65536):
                    return
            except (OSError, ValueError):
                return

    def _slow(self, arg):
        ms = self._parse_count(arg, MAX_SLOW_MS)
        if ms is None:
            return self._send_text(400, "bad delay\n")
        time.sleep(ms / 1000.0)
        self._send_text(200, "slept %d ms\n" % ms)

    # --- helpers ------------------------------------------------------------------------------

    def _sni(self):
        return self.server.sni_of(self.connection)

    @staticmethod
    def _parse_count(text, limit):
        if not text.isdigit() or len(text) > 12:
            return None
        value = int(text)
        return value if value <= limit else None

    def _is_chunked(self):
        codings = self.headers.get("Transfer-Encoding", "")
        return "chunked" in [c.strip().lower() for c in codings.split(",")]

    def _body_pieces(self):
        """Yields the request body in pieces of at most 64 KiB (Content-Length or chunked)."""
        if self._is_chunked():
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    raise BadRequestBody("chunk size line too long or truncated")
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BadRequestBody("bad chunk size %r" % size_text) from None
                if size < 0 or size > MAX_BODY:
                    raise BadRequestBody("chunk size out of range")
                if size == 0:
                    for _ in range(100):  # trailers, bounded
                        trailer = self.rfile.readline(8192)
                        if trailer in (b"\r\n", b"\n"):
                            return
                        if not trailer:
                            raise BadRequestBody("truncated trailers")
                    raise BadRequestBody("too many trailers")
                yield from self._read_exact(size)
                if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise BadRequestBody("chunk not followed by CRLF")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return
        if not length_text.strip().isdigit():
            raise BadRequestBody("bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            raise BadRequestBody("body too large")
        yield from self._read_exact(length)

    def _read_exact(self, size):
        while size > 0:
            piece = self.rfile.read(min(size, 65536))
            if not piece:
                raise BadRequestBody("body truncated (%d bytes missing)" % size)
            size -= len(piece)
            yield piece

    def _discard_body(self):
        for _ in self._body_pieces():
            pass

    def _send_json(self, status, value):
        body = (json.dumps(value, sort_keys=True) + "\n").encode()
        self._send_body(status, body, "application/json")

    def _send_text(self, status, text):
        self._send_body(status, text.encode(), "text/plain; charset=utf-8")

    def _send_body(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class OriginServer(ThreadingHTTPServer):
    """Plain or TLS. The TLS handshake runs in the connection's own thread, so a client that
    connects and never says hello (or a stalled request) cannot hold up the accept loop."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, tls_context=None, verbose=False):
        self.tls_context = tls_context
        self.scheme = "https" if tls_context is not None else "http"
        self.verbose = verbose
        super().__init__(address, OriginHandler)

    @staticmethod
    def sni_of(connection):
        """The server name the client sent (recorded by the SNI callback), or None."""
        return getattr(connection, "tokgate_sni", None)

    def finish_request(self, request, client_address):
        if self.tls_context is None:
            return super().finish_request(request, client_address)
        request.settimeout(10)
        try:
            connection = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            if self.verbose:
                sys.stderr.write("origin: handshake with %s:%d failed: %s\n"
                                 % (client_address[0], client_address[1], error))
            return None
        try:
            self.RequestHandlerClass(connection, client_address, self)
        except (ssl.SSLError, OSError):
            pass
        finally:
            try:
                connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            connection.close()
        return None

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)


def make_tls_context(cert_dir):
    """The good context answers every name; the callback swaps in another one by SNI."""
    def load(stem):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_dir / (stem + ".pem"), cert_dir / (stem + ".key"))
        context.set_alpn_protocols(["http/1.1"])
        return context

    by_name = {
        "expired.test": load("expired"),
        "wrong.test": load("wrong"),
        "untrusted.test": load("untrusted"),
    }
    good = load("good")

    def on_sni(tls_socket, server_name, _context):
        # tls_socket is the ssl.SSLSocket being handshaken: the name lives on it.
        tls_socket.tokgate_sni = server_name
        chosen = by_name.get((server_name or "").lower())
        if chosen is not None:
            tls_socket.context = chosen
        return None

    good.sni_callback = on_sni
    return good


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--https-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--cert-dir", type=Path, required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    tls_context = make_tls_context(args.cert_dir)
    https_server = OriginServer((args.host, args.https_port), tls_context, args.verbose)
    http_server = OriginServer((args.host, args.http_port), None, args.verbose)

    for server in (https_server, http_server):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
    emit({"event": "ready", "https_port": https_server.server_address[1],
          "http_port": http_server.server_address[1]})
    try:
        threading.Event().wait()  # until a signal ends the process
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
