#!/usr/bin/env python3
"""Captures the raw TLS records that carry one real ClientHello.

Usage: capture.py OUT.bin [--timeout S] -- COMMAND ARGS...

Binds 127.0.0.1 on an ephemeral port, runs COMMAND with every "{port}" in its arguments
replaced by that port, accepts one connection, reads TLS records until they hold a complete
ClientHello handshake message (or the timeout passes), writes exactly those records to OUT.bin,
closes the connection and stops COMMAND. Nothing is ever sent to the client.
"""

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import time

RECORD_HEADER = 5
HANDSHAKE = 22


def hello_records_end(data):
    """Returns the length of the record prefix holding a whole ClientHello, or None."""
    offset = 0
    handshake = b""
    while offset + RECORD_HEADER <= len(data):
        content_type, _, length = struct.unpack("!BHH", data[offset:offset + RECORD_HEADER])
        if content_type != HANDSHAKE:
            raise ValueError("non-handshake record %d at offset %d" % (content_type, offset))
        end = offset + RECORD_HEADER + length
        if end > len(data):
            return None
        handshake += data[offset + RECORD_HEADER:end]
        offset = end
        if len(handshake) >= 4:
            body_length = int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= 4 + body_length:
                return offset
    return None


def read_hello(listener, deadline):
    """Accepts one connection; returns (bytes, end of hello) or (bytes, None) if not TLS."""
    listener.settimeout(max(deadline - time.monotonic(), 0.01))
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        sys.exit("no connection before the timeout")
    with connection:
        data = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                sys.exit("timed out after %d bytes" % len(data))
            connection.settimeout(remaining)
            chunk = connection.recv(65536)
            if not chunk:
                sys.exit("client closed after %d bytes" % len(data))
            data += chunk
            if data[0] != HANDSHAKE:
                return data, None
            end = hello_records_end(data)
            if end is not None:
                return data, end


def main():
    parser = argparse.ArgumentParser(usage="%(prog)s OUT.bin [--timeout S] -- COMMAND ARGS...")
    parser.add_argument("out")
    parser.add_argument("--timeout", type=float, default=10.0)
    if "--" not in sys.argv:
        parser.error("missing -- COMMAND")
    split = sys.argv.index("--")
    args = parser.parse_args(sys.argv[1:split])
    command = sys.argv[split + 1:]
    if not command:
        parser.error("missing COMMAND")

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    command = [part.replace("{port}", str(port)) for part in command]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + args.timeout
        while True:
            data, end = read_hello(listener, deadline)
            if end is not None:
                break
            # Browsers may open plain HTTP connections first (Chromium fetches network time).
            print("skipped a non-TLS connection: %r" % data[:16], file=sys.stderr)
        with open(args.out, "wb") as out:
            out.write(data[:end])
        print("%s: %d bytes" % (args.out, end))
    finally:
        # The child runs in its own session: stop exactly that process group.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()


if __name__ == "__main__":
    main()
