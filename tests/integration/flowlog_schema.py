"""A strict validator of tokgate's flow log (docs/flow-log.md is the contract), stdlib only.

    from flowlog_schema import validate_record, load_flow_log
    problems = validate_record(obj)      # [] when the object is a valid record
    records = load_flow_log(path)        # every line parsed and validated, or FlowLogError

What is checked, for one JSON object:
- only the documented fields; none is null; each has its documented type (a JSON integer for
  integers, never a bool or a float; a finite non-negative number for durations);
- strings are non-empty (a field that does not apply is absent, not ""), enums take only their
  documented values (type, mode, scheme, verdict, category, action, ua_class, client_alpn /
  server_alpn, client_tls / server_tls);
- ts is RFC 3339 UTC with milliseconds and a real date; flow is `C`, `C.N` or `C.sS` with C
  equal to conn (`C` for a connection record, `C.N` / `C.sS` for a request record; N >= 1, S a
  client stream: odd);
- client_ip is an IP address or `anon:` + 16 lower-case hex, and client_port is absent exactly
  when it is `anon:`; listener is ADDR:PORT; upstream_ip an IP address; ports in 1..65535;
- host is normalised (lower-case, no trailing dot); path has no query; error is a short code;
  error_reason is one line; evidence is a non-empty list of `kind:signature:matched`;
- consistency: a request record has host, port, scheme, method and path; ws_* fields only on
  WebSocket requests (scheme ws/wss); a verdict of intercept means bumped (unless the record
  carries an error: decided, then failed before decryption), splice/refuse not;
  plain http/ws is never bumped; the GeoIP fields and upstream_port need upstream_ip,
  upstream_as_org needs upstream_asn; user_agent and ua_class come together; a block answered
  with a status answered 451; capture only with action capture; first_byte_ms <= total_ms.
"""

import datetime
import ipaddress
import json
import math
import re
from pathlib import Path

# --- the vocabulary -------------------------------------------------------------------------

TYPES = ("request", "connection")
MODES = ("explicit", "transparent")
SCHEMES = ("https", "http", "wss", "ws")
VERDICTS = ("intercept", "splice", "refuse")
ALPNS = ("h2", "http/1.1")
TLS_VERSIONS = ("TLSv1.3", "TLSv1.2")
CATEGORIES = ("app-api", "in-app-browser", "media-cdn", "web", "analytics-sdk",
              "app-distribution", "auth", "live", "wechat", "bytedance-other", "none")
ACTIONS = ("allow", "log", "capture", "block", "refuse", "splice")
UA_CLASSES = ("tiktok-app", "tiktok-webview", "wechat", "browser", "cli", "other")
# The catalog's evidence kinds (docs/catalog.md: where a signature matched).
EVIDENCE_KINDS = ("host", "path", "query", "user-agent", "header", "body")

# Field name -> kind. Kinds: "string", "int", "port", "number", "bool", "strings", or a tuple of
# allowed string values.
FIELDS = {
    "ts": "string",
    "type": TYPES,
    "flow": "string",
    "conn": "int",
    "client_ip": "string",
    "client_port": "port",
    "listener": "string",
    "mode": MODES,
    "sni": "string",
    "host": "string",
    "port": "port",
    "scheme": SCHEMES,
    "method": "string",
    "path": "string",
    "query": "string",
    "status": "int",
    "bytes_up": "int",
    "bytes_down": "int",
    "connect_ms": "number",
    "tls_ms": "number",
    "first_byte_ms": "number",
    "total_ms": "number",
    "bumped": "bool",
    "verdict": VERDICTS,
    "client_alpn": ALPNS,
    "server_alpn": ALPNS,
    "client_tls": TLS_VERSIONS,
    "server_tls": TLS_VERSIONS,
    "category": CATEGORIES,
    "evidence": "strings",
    "rule": "string",
    "action": ACTIONS,
    "upstream_ip": "string",
    "upstream_port": "port",
    "upstream_country": "string",
    "upstream_asn": "int",
    "upstream_as_org": "string",
    "ua_class": UA_CLASSES,
    "user_agent": "string",
    "ws_messages_up": "int",
    "ws_messages_down": "int",
    "ws_close_code": "int",
    "capture": "string",
    "error": "string",
    "error_reason": "string",
}

# Present in every record: what is always known about a connection.
REQUIRED = ("ts", "type", "flow", "conn", "client_ip", "listener", "mode", "bumped")
# Present in every request record as well.
REQUIRED_REQUEST = ("host", "port", "scheme", "method", "path")
WEBSOCKET_FIELDS = ("ws_messages_up", "ws_messages_down", "ws_close_code")
GEO_FIELDS = ("upstream_country", "upstream_asn", "upstream_as_org")

TS_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$")
FLOW_RE = re.compile(r"^(0|[1-9]\d*)(?:\.(?:([1-9]\d*)|s([1-9]\d*)))?$")
ANON_RE = re.compile(r"^anon:[0-9a-f]{16}$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
METHOD_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
ERROR_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
EVIDENCE_RE = re.compile(r"^([a-z-]+):([A-Za-z0-9._-]+):(.+)$", re.S)
UINT32_MAX = 2 ** 32 - 1
UINT64_MAX = 2 ** 64 - 1


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _check_type(name, kind, value, problems):
    """True if `value` has the field's type (problems appended otherwise)."""
    if value is None:
        problems.append("%s: null (a field that does not apply must be absent)" % name)
        return False
    if isinstance(kind, tuple):
        if not isinstance(value, str) or value not in kind:
            problems.append("%s: %r is not one of %s" % (name, value, ", ".join(kind)))
            return False
        return True
    if kind == "string":
        if not isinstance(value, str):
            problems.append("%s: %r is not a string" % (name, value))
            return False
        if value == "":
            problems.append("%s: empty string (a field that does not apply must be absent)"
                            % name)
            return False
        return True
    if kind == "int":
        if not _is_int(value):
            problems.append("%s: %r is not an integer" % (name, value))
            return False
        if value < 0 or value > UINT64_MAX:
            problems.append("%s: %r is out of range" % (name, value))
            return False
        return True
    if kind == "port":
        if not _is_int(value) or not 1 <= value <= 65535:
            problems.append("%s: %r is not a port (an integer 1..65535)" % (name, value))
            return False
        return True
    if kind == "number":
        if not _is_number(value) or value < 0:
            problems.append("%s: %r is not a finite non-negative number" % (name, value))
            return False
        return True
    if kind == "bool":
        if not isinstance(value, bool):
            problems.append("%s: %r is not a boolean" % (name, value))
            return False
        return True
    if kind == "strings":
        if not isinstance(value, list) or not value:
            problems.append("%s: %r is not a non-empty array" % (name, value))
            return False
        bad = [v for v in value if not isinstance(v, str) or v == ""]
        if bad:
            problems.append("%s: elements that are not non-empty strings: %r" % (name, bad))
            return False
        return True
    raise AssertionError("unknown kind %r" % kind)


def _check_ts(value, problems):
    match = TS_RE.match(value)
    if not match:
        problems.append("ts: %r is not RFC 3339 UTC with milliseconds "
                        "(YYYY-MM-DDTHH:MM:SS.mmmZ)" % value)
        return
    year, month, day, hour, minute, second, _ = (int(g) for g in match.groups())
    try:
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError as error:
        problems.append("ts: %r is not a real time (%s)" % (value, error))


def _check_address(name, value, problems):
    """`ADDR:PORT` with ADDR an IP address (IPv6 in brackets)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        problems.append("%s: %r is not ADDR:PORT" % (name, value))
        return
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not _is_ip(host):
        problems.append("%s: %r: %r is not an IP address" % (name, value, host))


def validate_record(obj):
    """Returns the list of problems of one flow-log record (a parsed JSON object); [] if valid."""
    if not isinstance(obj, dict):
        return ["not a JSON object: %r" % (obj,)]
    problems = []
    ok = {}
    for name, value in obj.items():
        kind = FIELDS.get(name)
        if kind is None:
            problems.append("unknown field %r" % name)
            continue
        if _check_type(name, kind, value, problems):
            ok[name] = value
    for name in REQUIRED:
        if name not in obj:
            problems.append("%s: missing" % name)
    if ok.get("type") == "request":
        for name in REQUIRED_REQUEST:
            if name not in obj:
                problems.append("%s: missing (required on a request record)" % name)

    if "ts" in ok:
        _check_ts(ok["ts"], problems)

    # flow: C, C.N or C.sS, consistent with conn and type.
    if "flow" in ok:
        match = FLOW_RE.match(ok["flow"])
        if not match:
            problems.append("flow: %r is not C, C.N or C.sS" % ok["flow"])
        else:
            conn_part, nth, stream = match.groups()
            if "conn" in ok and int(conn_part) != ok["conn"]:
                problems.append("flow: %r does not belong to conn %r" % (ok["flow"], ok["conn"]))
            if ok.get("type") == "connection" and (nth or stream):
                problems.append("flow: %r on a connection record (must be C)" % ok["flow"])
            if ok.get("type") == "request" and not (nth or stream):
                problems.append("flow: %r on a request record (must be C.N or C.sS)"
                                % ok["flow"])
            if stream and int(stream) % 2 == 0:
                problems.append("flow: %r: stream %s is not a client-initiated (odd) stream"
                                % (ok["flow"], stream))

    # client_ip / client_port: anon:<16 hex> and no port, or an address and its port.
    if "client_ip" in ok:
        client = ok["client_ip"]
        if client.startswith("anon:"):
            if not ANON_RE.match(client):
                problems.append("client_ip: %r is not anon:<16 lower-case hex>" % client)
            if "client_port" in obj:
                problems.append("client_port: present with a pseudonymised client_ip")
        else:
            if not _is_ip(client):
                problems.append("client_ip: %r is neither an IP address nor anon:<16 hex>"
                                % client)
            if "client_port" not in obj:
                problems.append("client_port: missing (client_ip is not pseudonymised)")

    if "listener" in ok:
        _check_address("listener", ok["listener"], problems)
    if "upstream_ip" in ok and not _is_ip(ok["upstream_ip"]):
        problems.append("upstream_ip: %r is not an IP address" % ok["upstream_ip"])

    for name in ("host", "sni"):
        if name in ok:
            value = ok[name]
            if value != value.lower() or value.endswith(".") or any(c.isspace() for c in value):
                problems.append("%s: %r is not normalised (lower-case, no trailing dot, "
                                "no spaces)" % (name, value))
    if "method" in ok and not METHOD_RE.match(ok["method"]):
        problems.append("method: %r is not an HTTP method token" % ok["method"])
    if "path" in ok:
        path = ok["path"]
        if not (path.startswith("/") or path == "*"):
            problems.append("path: %r does not start with / (nor is it *)" % path)
        if "?" in path:
            problems.append("path: %r carries a query (it belongs in query)" % path)
    if "query" in ok and ok["query"].startswith("?"):
        problems.append("query: %r starts with ?" % ok["query"])
    if "status" in ok and not 100 <= ok["status"] <= 599:
        problems.append("status: %r is not an HTTP status" % ok["status"])
    if "upstream_country" in ok and not COUNTRY_RE.match(ok["upstream_country"]):
        problems.append("upstream_country: %r is not ISO 3166-1 alpha-2"
                        % ok["upstream_country"])
    if "upstream_asn" in ok and not 1 <= ok["upstream_asn"] <= UINT32_MAX:
        problems.append("upstream_asn: %r is not an AS number" % ok["upstream_asn"])
    if "ws_close_code" in ok and not 1000 <= ok["ws_close_code"] <= 4999:
        problems.append("ws_close_code: %r is not a WebSocket close code" % ok["ws_close_code"])
    if "error" in ok and not ERROR_RE.match(ok["error"]):
        problems.append("error: %r is not a short code (lower-case words joined by -)"
                        % ok["error"])
    for name in ("error_reason", "user_agent", "rule", "upstream_as_org"):
        if name in ok and ("\n" in ok[name] or "\r" in ok[name]):
            problems.append("%s: %r is not one line" % (name, ok[name]))
    for item in ok.get("evidence", []):
        match = EVIDENCE_RE.match(item)
        if not match:
            problems.append("evidence: %r is not kind:signature:matched" % item)
        elif match.group(1) not in EVIDENCE_KINDS:
            problems.append("evidence: %r: unknown kind %r" % (item, match.group(1)))

    # Consistency between fields.
    if ok.get("type") == "connection":
        for name in WEBSOCKET_FIELDS:
            if name in obj:
                problems.append("%s: on a connection record" % name)
    if any(name in obj for name in WEBSOCKET_FIELDS) and obj.get("scheme") not in ("ws", "wss"):
        problems.append("ws_* fields on a record whose scheme is %r (not ws/wss)"
                        % obj.get("scheme"))
    verdict, bumped = ok.get("verdict"), ok.get("bumped")
    # (A connection decided for interception can still fail before it is decrypted: an origin
    # that cannot be reached, a client that rejects our certificate. Then it says why.)
    if verdict == "intercept" and bumped is False and "error" not in obj:
        problems.append("bumped: false with verdict intercept and no error")
    if verdict in ("splice", "refuse") and bumped is True:
        problems.append("bumped: true with verdict %s" % verdict)
    if ok.get("scheme") in ("http", "ws") and bumped is True:
        problems.append("bumped: true on a plain %s request" % ok["scheme"])
    for name in GEO_FIELDS + ("upstream_port",):
        if name in obj and "upstream_ip" not in obj:
            problems.append("%s: present without upstream_ip" % name)
    if "upstream_ip" in obj and "upstream_port" not in obj:
        problems.append("upstream_port: missing with upstream_ip")
    if "upstream_as_org" in obj and "upstream_asn" not in obj:
        problems.append("upstream_as_org: present without upstream_asn")
    if ("user_agent" in obj) != ("ua_class" in obj):
        problems.append("user_agent and ua_class must come together")
    if "evidence" in obj and "category" not in obj:
        problems.append("evidence: present without category")
    if ok.get("action") == "block" and "status" in ok and ok["status"] != 451:
        problems.append("status: %r on a blocked request (must be 451)" % ok["status"])
    if "capture" in obj and obj.get("action") != "capture":
        problems.append("capture: present with action %r" % obj.get("action"))
    if "first_byte_ms" in ok and "total_ms" in ok and ok["first_byte_ms"] > ok["total_ms"] + 0.002:
        problems.append("first_byte_ms %r > total_ms %r" % (ok["first_byte_ms"], ok["total_ms"]))
    return problems


# --- the file -------------------------------------------------------------------------------

class FlowLogError(AssertionError):
    """A flow-log line that is not a valid record (an AssertionError: tests fail on it)."""


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError("duplicate key %r" % key)
        seen[key] = value
    return seen


def _no_constants(name):
    raise ValueError("%s is not JSON" % name)


def parse_line(line):
    """One line (bytes or str, without its newline) -> the parsed object; ValueError if it is
    not strict JSON (invalid UTF-8, duplicate keys, NaN/Infinity)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8")  # UnicodeDecodeError is a ValueError
    return json.loads(line, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def load_flow_log(path, allow_partial_tail=False):
    """Every record of a JSON flow-log file, each validated. Raises FlowLogError on the first
    line that is not one valid record (with its number and the problems). A last line without
    its newline is an error, unless `allow_partial_tail` (a file still being written: the line
    is left out)."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: "" for a complete file
    if tail:
        if not allow_partial_tail:
            raise FlowLogError("%s: last line has no newline: %r" % (path, tail[:300]))
    records = []
    for number, raw in enumerate(lines, 1):
        try:
            obj = parse_line(raw)
        except ValueError as error:
            raise FlowLogError("%s:%d: not strict JSON (%s): %r" % (path, number, error,
                                                                   raw[:500]))
        problems = validate_record(obj)
        if problems:
            raise FlowLogError("%s:%d: invalid record:\n  %s\n%s" % (
                path, number, "\n  ".join(problems), raw.decode("utf-8", "replace")[:2000]))
        records.append(obj)
    return records
