#!/usr/bin/env python3
"""A minimal RFC 6455 WebSocket client for tokgate's integration tests (Python 3 stdlib only).

Two ways through tokgate's explicit proxy:
  connect_tls_via_proxy()    CONNECT host:port, TLS (SNI, verified against a CA file, ALPN
                             http/1.1), then `GET /path` with the Upgrade headers (wss://)
  connect_plain_via_proxy()  `GET http://host:port/path HTTP/1.1` (absolute-form) with the
                             Upgrade headers, sent to the proxy itself (ws://)
Both return a WebSocket, or raise HandshakeRefused carrying the non-101 answer.

WebSocket sends masked frames (text, binary, fragmented, ping, pong, close) and reads frames;
echo_script() runs the standard exchange against an echo server and returns what it saw.

Standalone, for a look by hand:
    python3 wsclient.py --proxy 127.0.0.1:8080 --cafile ca.pem wss://www.tiktok.com:443/ws
    python3 wsclient.py --proxy 127.0.0.1:8080 ws://www.tiktok.com:80/ws
prints the echo script's result as JSON.
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
MAX_HEAD = 64 * 1024
MAX_FRAME = 64 * 1024 * 1024


class WebSocketError(Exception):
    pass


@dataclass
class HandshakeResponse:
    status: int
    reason: str
    headers: dict          # lower-case name -> last value
    body: bytes = b""


class HandshakeRefused(WebSocketError):
    """The server (or the proxy) answered the Upgrade with something other than 101."""

    def __init__(self, response):
        super().__init__("handshake answered %d %s: %r" % (response.status, response.reason,
                                                            response.body[:200]))
        self.response = response


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    masked: bool = False


def accept_key(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def mask_payload(key, data):
    """XOR with the 4-byte key, as one big-integer operation (fast for large payloads)."""
    if not data:
        return b""
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(opcode, payload, fin=True, mask=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_payload(key, payload)


class WebSocket:
    """One open WebSocket on a connected (plain or TLS) socket."""

    def __init__(self, sock, buffer=b"", handshake=None):
        self.sock = sock
        self.buffer = buffer
        self.handshake = handshake
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- sending ------------------------------------------------------------------------------

    def send_frame(self, opcode, payload, fin=True):
        self.sock.sendall(encode_frame(opcode, payload, fin))

    def send_text(self, text):
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data):
        self.send_frame(OP_BINARY, bytes(data))

    def send_fragmented(self, opcode, payload, pieces=3):
        """One message in `pieces` frames: the first with `opcode`, then continuations."""
        cuts = [len(payload) * i // pieces for i in range(pieces + 1)]
        for i in range(pieces):
            self.send_frame(opcode if i == 0 else OP_CONTINUATION,
                            payload[cuts[i]:cuts[i + 1]], fin=i == pieces - 1)

    def send_ping(self, payload=b""):
        self.send_frame(OP_PING, payload)

    def send_pong(self, payload=b""):
        self.send_frame(OP_PONG, payload)

    def send_close(self, code=1000, reason=""):
        self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode("utf-8"))

    # --- receiving ----------------------------------------------------------------------------

    def _fill(self):
        try:
            piece = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            piece = b""
        except ssl.SSLError as error:
            if "EOF" not in str(error):
                raise
            piece = b""
        if not piece:
            self.eof = True
            return False
        self.buffer += piece
        return True

    def _need(self, n):
        while len(self.buffer) < n:
            if not self._fill():
                return False
        return True

    def recv_frame(self, timeout=10.0):
        """The next frame; None if the peer closed the connection first. Raises
        socket.timeout when nothing complete arrives within `timeout`."""
        self.sock.settimeout(timeout)
        if not self._need(2):
            return None
        b0, b1 = self.buffer[0], self.buffer[1]
        length = b1 & 0x7F
        offset = 2
        if length == 126:
            if not self._need(4):
                return None
            length = struct.unpack("!H", self.buffer[2:4])[0]
            offset = 4
        elif length == 127:
            if not self._need(10):
                return None
            length = struct.unpack("!Q", self.buffer[2:10])[0]
            offset = 10
        if length > MAX_FRAME:
            raise WebSocketError("frame of %d bytes" % length)
        masked = bool(b1 & 0x80)
        key = b""
        if masked:
            if not self._need(offset + 4):
                return None
            key = self.buffer[offset:offset + 4]
            offset += 4
        if not self._need(offset + length):
            return None
        payload = self.buffer[offset:offset + length]
        self.buffer = self.buffer[offset + length:]
        if masked:
            payload = mask_payload(key, payload)
        return Frame(bool(b0 & 0x80), b0 & 0x0F, payload, masked)

    def recv_message(self, timeout=10.0):
        """The next data message as (opcode, payload), fragments joined; control frames that
        arrive in between are returned instead, as (opcode, payload), without joining. None at
        the end of the connection."""
        opcode = None
        parts = []
        while True:
            frame = self.recv_frame(timeout)
            if frame is None:
                return None
            if frame.opcode >= 0x8:
                return frame.opcode, frame.payload
            if opcode is None:
                opcode = frame.opcode
            parts.append(frame.payload)
            if frame.fin:
                return opcode, b"".join(parts)

    def wait_closed(self, timeout=5.0):
        """True if the peer closes the connection within `timeout` (no more frames read)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.sock.settimeout(max(0.05, deadline - time.monotonic()))
                if not self._fill():
                    return True
            except (socket.timeout, TimeoutError):
                return False
        return False


# --- the opening handshake ------------------------------------------------------------------

def _read_head(sock, buffer=b""):
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise WebSocketError("response head over %d bytes" % MAX_HEAD)
        try:
            piece = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            piece = b""
        if not piece:
            raise WebSocketError("connection closed before a response head: %r" % buffer[:300])
        buffer += piece
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise WebSocketError("bad status line %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HandshakeResponse(int(parts[1]), parts[2] if len(parts) > 2 else "", headers), rest


def _read_refusal_body(sock, response, rest, limit=MAX_HEAD):
    """The body of a non-101 answer, as far as Content-Length says (bounded)."""
    try:
        length = min(int(response.headers.get("content-length", "0")), limit)
    except ValueError:
        length = 0
    body = rest
    try:
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
    except OSError:
        pass
    response.body = body[:length] if length else body
    return response


def handshake(sock, request_target, host_header, extra_headers=(), protocols=()):
    """Sends the Upgrade request and checks the 101 (RFC 6455 4.1). Returns a WebSocket."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET %s HTTP/1.1" % request_target, "Host: %s" % host_header,
             "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: %s" % key,
             "Sec-WebSocket-Version: 13"]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: %s" % ", ".join(protocols))
    lines += ["%s: %s" % (k, v) for k, v in extra_headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1"))
    response, rest = _read_head(sock)
    if response.status != 101:
        raise HandshakeRefused(_read_refusal_body(sock, response, rest))
    if response.headers.get("upgrade", "").lower() != "websocket":
        raise WebSocketError("101 without Upgrade: websocket: %r" % response.headers)
    if "upgrade" not in response.headers.get("connection", "").lower():
        raise WebSocketError("101 without Connection: Upgrade: %r" % response.headers)
    if response.headers.get("sec-websocket-accept") != accept_key(key):
        raise WebSocketError("wrong Sec-WebSocket-Accept: %r" % response.headers)
    return WebSocket(sock, rest, response)


def _proxy_socket(proxy, timeout):
    host, _, port = proxy.rpartition(":")
    return socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                    timeout=timeout)


def connect_tls_via_proxy(proxy, host, port, path="/ws", cafile=None, servername=None,
                          timeout=15.0, extra_headers=(), protocols=()):
    """wss:// through the explicit proxy `proxy` ("HOST:PORT"): CONNECT, TLS verified against
    `cafile` with SNI `servername` (default `host`), then the Upgrade."""
    sock = _proxy_socket(proxy, timeout)
    try:
        authority = "%s:%d" % (host, port)
        sock.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                     % (authority.encode(), authority.encode()))
        response, rest = _read_head(sock)
        if not 200 <= response.status < 300:
            raise HandshakeRefused(_read_refusal_body(sock, response, rest))
        if rest:
            raise WebSocketError("bytes after the CONNECT answer: %r" % rest[:200])
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        # HTTP/1.1 only: the Upgrade mechanism does not exist in h2.
        context.set_alpn_protocols(["http/1.1"])
        tls = context.wrap_socket(sock, server_hostname=servername or host)
        sock = tls
        return handshake(tls, path, authority, extra_headers, protocols)
    except BaseException:
        sock.close()
        raise


def connect_plain_via_proxy(proxy, host, port, path="/ws", timeout=15.0, extra_headers=(),
                            protocols=()):
    """ws:// through the explicit proxy: the Upgrade request in absolute-form."""
    sock = _proxy_socket(proxy, timeout)
    try:
        authority = "%s:%d" % (host, port)
        return handshake(sock, "http://%s%s" % (authority, path), authority, extra_headers,
                         protocols)
    except BaseException:
        sock.close()
        raise


def connect_direct(host, port, path="/ws", tls=False, cafile=None, servername=None,
                   timeout=15.0):
    """Straight to the server (no proxy): for checking the origin itself."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if tls:
            context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            context.set_alpn_protocols(["http/1.1"])
            sock = context.wrap_socket(sock, server_hostname=servername or host)
        return handshake(sock, path, "%s:%d" % (servername or host, port))
    except BaseException:
        sock.close()
        raise


# --- the standard echo exchange ----------------------------------------------------------------

def binary_payload(n):
    return bytes((i * 7 + 3) % 256 for i in range(n))


@dataclass
class ScriptStep:
    kind: str               # text | binary | fragmented | ping | close
    payload: bytes = b""
    code: int = 1000


def default_script():
    """Text (with non-ASCII), a 70,000-byte binary message (64-bit length), a small binary
    message (16-bit length), a text message in three fragments, a ping, then close 1000."""
    return [
        ScriptStep("text", "hello through tokgate ✓".encode("utf-8")),
        ScriptStep("binary", binary_payload(70000)),
        ScriptStep("binary", binary_payload(300)),
        ScriptStep("fragmented", b"one message, three frames, through the proxy"),
        ScriptStep("ping", b"ping-1234"),
        ScriptStep("close", b"bye", 1000),
    ]


@dataclass
class EchoResult:
    echoes: list = field(default_factory=list)   # dicts: kind, sent, opcode, received, equal
    pong: bytes = None
    close_code: int = None
    close_reason: str = None
    closed_by_peer: bool = False
    # What this side sent, to compare with the proxy's counts: data messages and their payload
    # bytes; control frames (ping, close) and their payload bytes.
    messages_sent: int = 0
    bytes_sent: int = 0
    control_frames_sent: int = 0
    control_bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    control_frames_received: int = 0
    control_bytes_received: int = 0

    def as_dict(self):
        out = dict(self.__dict__)
        out["pong"] = self.pong.decode("utf-8", "replace") if self.pong is not None else None
        return out


def echo_script(ws, script=None, timeout=10.0):
    """Runs the script against an echo server; returns an EchoResult."""
    result = EchoResult()
    for step in script or default_script():
        if step.kind in ("text", "binary", "fragmented"):
            opcode = OP_BINARY if step.kind == "binary" else OP_TEXT
            if step.kind == "fragmented":
                ws.send_fragmented(opcode, step.payload, 3)
            else:
                ws.send_frame(opcode, step.payload)
            result.messages_sent += 1
            result.bytes_sent += len(step.payload)
            answer = ws.recv_message(timeout)
            if answer is None:
                result.echoes.append({"kind": step.kind, "sent": len(step.payload),
                                      "opcode": None, "received": None, "equal": False})
                continue
            got_opcode, payload = answer
            result.messages_received += 1
            result.bytes_received += len(payload)
            result.echoes.append({"kind": step.kind, "sent": len(step.payload),
                                  "opcode": got_opcode, "received": len(payload),
                                  "equal": got_opcode == opcode and payload == step.payload})
        elif step.kind == "ping":
            ws.send_ping(step.payload)
            result.control_frames_sent += 1
            result.control_bytes_sent += len(step.payload)
            answer = ws.recv_message(timeout)
            if answer and answer[0] == OP_PONG:
                result.pong = answer[1]
                result.control_frames_received += 1
                result.control_bytes_received += len(answer[1])
        elif step.kind == "close":
            reason = step.payload.decode("utf-8")
            ws.send_close(step.code, reason)
            result.control_frames_sent += 1
            result.control_bytes_sent += 2 + len(step.payload)
            answer = ws.recv_message(timeout)
            if answer and answer[0] == OP_CLOSE:
                result.control_frames_received += 1
                result.control_bytes_received += len(answer[1])
                if len(answer[1]) >= 2:
                    result.close_code = struct.unpack("!H", answer[1][:2])[0]
                    result.close_reason = answer[1][2:].decode("utf-8", "replace")
            result.closed_by_peer = ws.wait_closed(timeout)
        else:
            raise ValueError("unknown step %r" % step.kind)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--proxy", required=True, help="HOST:PORT of tokgate's explicit proxy")
    parser.add_argument("--cafile", help="CA the wss:// server certificate is verified against")
    parser.add_argument("--servername", help="SNI (default: the URL's host)")
    parser.add_argument("url", help="ws://host:port/path or wss://host:port/path")
    args = parser.parse_args()
    url = urlsplit(args.url)
    path = (url.path or "/") + ("?" + url.query if url.query else "")
    try:
        if url.scheme == "wss":
            ws = connect_tls_via_proxy(args.proxy, url.hostname, url.port or 443, path,
                                       args.cafile, args.servername)
        elif url.scheme == "ws":
            ws = connect_plain_via_proxy(args.proxy, url.hostname, url.port or 80, path)
        else:
            parser.error("the URL must be ws:// or wss://")
    except HandshakeRefused as refused:
        print(json.dumps({"handshake": refused.response.status,
                          "headers": refused.response.headers,
                          "body": refused.response.body.decode("utf-8", "replace")}))
        return 1
    with ws:
        result = echo_script(ws)
    print(json.dumps({"handshake": 101, **result.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
