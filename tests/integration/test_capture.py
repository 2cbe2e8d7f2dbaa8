"""Evidence on disk: HAR captures of `capture` rules and the TLS key log.

HAR (docs/flow-log.md, docs/policy.md): a request whose rule says `action = "capture"` is written
to `--capture-dir` as one HAR 1.2 document, and its flow record's `capture` field names the file.
Checked here, for HTTP/1.1 and HTTP/2 clients: every field HAR 1.2 requires (a strict checker,
below), the response body equal to what the origin sent, a POST body in postData, a gzip / br /
deflate response shown decoded (content.size = decoded length, bodySize = wire length), a body
over `[capture] body_bytes` cut and marked, and the privacy defaults (Cookie, Set-Cookie,
Authorization, X-Tt-Token, X-Argus and query values REDACTED) that a rule with
`privacy = "full"` turns off.

Key log: `--keylog FILE` writes NSS key log lines (mode 0600) for both legs; tshark, given the
file, decrypts a loopback capture of the proxy's traffic and shows the request paths (HTTP/1.1
and HTTP/2) on the origin leg and on the client leg.

Real parts only: tokgate, curl, h2origin.mjs, tshark, on loopback."""

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
import unittest
from datetime import datetime, timedelta, timezone
from pathlib import Path

from harness import (IntegrationTestCase, NodeOrigin, Tokgate, admin_get, clean_env, curl,
                     pattern_bytes, pattern_sha256, policy_run_args, wait_until,
                     write_pattern_file)

from flowlog_schema import load_flow_log

HOST = "www.tiktok.com"
CURL_TIMEOUT = 20
CAP_BYTES = 64 * 1024

# Rules, first match wins: a "nocapture" path is only logged; a request carrying
# X-Capture-Privacy: full is captured unredacted; every other request to HOST is captured with
# the privacy defaults.
CAPTURE_POLICY = """\
[policy]
name = "capture-tests"

[[rules]]
name = "log-only"
action = "log"
match = { host = ["www.tiktok.com"], path = ["*/nocapture"] }

[[rules]]
name = "capture-full"
action = "capture"
privacy = "full"
match = { host = ["www.tiktok.com"], header = ["X-Capture-Privacy: full"] }

[[rules]]
name = "capture-redacted"
action = "capture"
match = { host = ["www.tiktok.com"] }
"""

# Secrets a request carries in the places the privacy defaults hide (each value unique, so a
# leak is found by a plain substring search of the file).
SECRET_HEADERS = (
    ("Cookie", "sid=COOKIE-SECRET-1; theme=COOKIE-SECRET-2"),
    ("Authorization", "Bearer AUTH-SECRET-3"),
    ("X-Tt-Token", "TT-SECRET-4"),
    ("X-Argus", "ARGUS-SECRET-5"),
)
QUERY_SECRETS = (("device_id", "QUERY-SECRET-6"), ("aid", "QUERY-SECRET-7"))
SET_COOKIE_SECRET = "SETCOOKIE-SECRET-8"
ALL_SECRETS = ("COOKIE-SECRET-1", "COOKIE-SECRET-2", "AUTH-SECRET-3", "TT-SECRET-4",
               "ARGUS-SECRET-5", "QUERY-SECRET-6", "QUERY-SECRET-7", SET_COOKIE_SECRET)
VISIBLE_HEADER = ("X-Visible", "kept-as-sent")

HTTP_VERSIONS = (("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2"))


# --- a strict HAR 1.2 checker ------------------------------------------------------------------

ISO_8601 = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

# Keys HAR 1.2 defines for each object (required ones first); any other key must be a custom
# field, whose name starts with "_".
HAR_KEYS = {
    "log": ({"version", "creator", "entries"}, {"browser", "pages", "comment"}),
    "creator": ({"name", "version"}, {"comment"}),
    "entry": ({"startedDateTime", "time", "request", "response", "cache", "timings"},
              {"pageref", "serverIPAddress", "connection", "comment"}),
    "request": ({"method", "url", "httpVersion", "cookies", "headers", "queryString",
                 "headersSize", "bodySize"}, {"postData", "comment"}),
    "response": ({"status", "statusText", "httpVersion", "cookies", "headers", "content",
                  "redirectURL", "headersSize", "bodySize"}, {"comment"}),
    "cookie": ({"name", "value"}, {"path", "domain", "expires", "httpOnly", "secure", "comment"}),
    "pair": ({"name", "value"}, {"comment"}),
    "postData": ({"mimeType"}, {"params", "text", "comment"}),
    "param": ({"name"}, {"value", "fileName", "contentType", "comment"}),
    "content": ({"size", "mimeType"}, {"compression", "text", "encoding", "comment"}),
    "cache": (set(), {"beforeRequest", "afterRequest", "comment"}),
    "timings": ({"send", "wait", "receive"}, {"blocked", "dns", "connect", "ssl", "comment"}),
}


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class HarChecker:
    """Collects every violation of HAR 1.2 in one document (so one failure shows them all)."""

    def __init__(self):
        self.problems = []

    def fail(self, where, what):
        self.problems.append("%s: %s" % (where, what))

    def object(self, value, kind, where):
        if not isinstance(value, dict):
            self.fail(where, "expected an object, got %r" % (value,))
            return False
        required, optional = HAR_KEYS[kind]
        for key in sorted(required - set(value)):
            self.fail(where, "missing required %r" % key)
        for key in sorted(set(value) - required - optional):
            if not key.startswith("_"):
                self.fail(where, "key %r is neither HAR 1.2 nor a custom '_' field" % key)
        return True

    def string(self, value, where, nonempty=False):
        if not isinstance(value, str):
            self.fail(where, "expected a string, got %r" % (value,))
        elif nonempty and not value:
            self.fail(where, "empty string")

    def size(self, value, where):
        """headersSize / bodySize: an integer, -1 when unknown."""
        if not is_int(value) or value < -1:
            self.fail(where, "expected an integer >= -1, got %r" % (value,))

    def pairs(self, value, kind, where):
        if not isinstance(value, list):
            self.fail(where, "expected a list, got %r" % (value,))
            return
        for i, item in enumerate(value):
            w = "%s[%d]" % (where, i)
            if self.object(item, kind, w):
                self.string(item.get("name"), w + ".name")
                self.string(item.get("value"), w + ".value")
                if kind == "cookie":
                    for flag in ("httpOnly", "secure"):
                        if flag in item and not isinstance(item[flag], bool):
                            self.fail(w + "." + flag, "expected a boolean")
                    if "expires" in item and not ISO_8601.match(str(item["expires"])):
                        self.fail(w + ".expires", "not ISO 8601: %r" % item["expires"])

    def message_common(self, message, where):
        self.string(message.get("httpVersion"), where + ".httpVersion", nonempty=True)
        self.pairs(message.get("cookies"), "cookie", where + ".cookies")
        self.pairs(message.get("headers"), "pair", where + ".headers")
        self.size(message.get("headersSize"), where + ".headersSize")
        self.size(message.get("bodySize"), where + ".bodySize")

    def request(self, request, where):
        if not self.object(request, "request", where):
            return
        self.string(request.get("method"), where + ".method", nonempty=True)
        self.string(request.get("url"), where + ".url", nonempty=True)
        if isinstance(request.get("url"), str) and not re.match(r"^https?://[^/]+",
                                                                request["url"]):
            self.fail(where + ".url", "not an absolute URL: %r" % request["url"])
        self.message_common(request, where)
        self.pairs(request.get("queryString"), "pair", where + ".queryString")
        if "postData" in request:
            post = request["postData"]
            w = where + ".postData"
            if self.object(post, "postData", w):
                self.string(post.get("mimeType"), w + ".mimeType")
                # HAR 1.2: text and params are mutually exclusive in meaning, one of them given.
                if "text" not in post and "params" not in post:
                    self.fail(w, "neither text nor params")
                if "text" in post:
                    self.string(post["text"], w + ".text")
                if "params" in post:
                    if not isinstance(post["params"], list):
                        self.fail(w + ".params", "expected a list")
                    else:
                        for i, param in enumerate(post["params"]):
                            if self.object(param, "param", "%s.params[%d]" % (w, i)):
                                self.string(param.get("name"), "%s.params[%d].name" % (w, i))

    def response(self, response, where):
        if not self.object(response, "response", where):
            return
        status = response.get("status")
        if not is_int(status) or not 0 <= status <= 999:
            self.fail(where + ".status", "expected an integer status, got %r" % (status,))
        self.string(response.get("statusText"), where + ".statusText")
        self.message_common(response, where)
        self.string(response.get("redirectURL"), where + ".redirectURL")
        content = response.get("content")
        w = where + ".content"
        if self.object(content, "content", w):
            if not is_int(content.get("size")) or content["size"] < 0:
                self.fail(w + ".size", "expected an integer >= 0, got %r" % content.get("size"))
            self.string(content.get("mimeType"), w + ".mimeType")
            if "compression" in content and not is_int(content["compression"]):
                self.fail(w + ".compression", "expected an integer")
            if "text" in content:
                self.string(content["text"], w + ".text")
            if "encoding" in content:
                if content["encoding"] != "base64":
                    self.fail(w + ".encoding", "unknown encoding %r" % content["encoding"])
                else:
                    try:
                        base64.b64decode(content.get("text", ""), validate=True)
                    except ValueError as error:
                        self.fail(w + ".text", "not base64: %s" % error)

    def timings(self, timings, total, where):
        if not self.object(timings, "timings", where):
            return
        for key in ("send", "wait", "receive"):
            if not is_number(timings.get(key)) or timings[key] < 0:
                self.fail(where + "." + key, "required, a number >= 0; got %r" % timings.get(key))
        for key in ("blocked", "dns", "connect", "ssl"):
            if key in timings:
                value = timings[key]
                if not is_number(value) or (value < 0 and value != -1):
                    self.fail(where + "." + key, "a number >= 0 or -1; got %r" % (value,))
        ssl_ms = timings.get("ssl", -1)
        if is_number(ssl_ms) and ssl_ms >= 0:
            connect = timings.get("connect", -1)
            # HAR 1.2: "ssl ... If this field is defined then the time is also included in the
            # connect field".
            if not is_number(connect) or connect < ssl_ms - 0.001:
                self.fail(where + ".connect", "%r does not include ssl %r" % (connect, ssl_ms))
        phases = [timings.get(k, -1) for k in ("blocked", "dns", "connect", "send", "wait",
                                                 "receive")]
        if all(is_number(p) for p in phases) and is_number(total):
            expected = sum(p for p in phases if p != -1)
            if abs(total - expected) > 0.01:
                self.fail("entry.time", "%r is not the sum of the timings (%r)" % (total,
                                                                                  expected))

    def document(self, doc):
        if not isinstance(doc, dict) or set(doc) != {"log"}:
            self.fail("document", "expected exactly {\"log\": ...}, got keys %r" % (
                list(doc) if isinstance(doc, dict) else doc,))
            return self.problems
        log = doc["log"]
        if not self.object(log, "log", "log"):
            return self.problems
        if log.get("version") != "1.2":
            self.fail("log.version", "expected '1.2', got %r" % log.get("version"))
        if self.object(log.get("creator"), "creator", "log.creator"):
            self.string(log["creator"].get("name"), "log.creator.name", nonempty=True)
            self.string(log["creator"].get("version"), "log.creator.version", nonempty=True)
        # Optional in HAR 1.2, but Firefox refuses a document without it: tokgate writes [].
        if not isinstance(log.get("pages"), list):
            self.fail("log.pages", "expected a list, got %r" % (log.get("pages"),))
        entries = log.get("entries")
        if not isinstance(entries, list) or not entries:
            self.fail("log.entries", "expected a non-empty list")
            return self.problems
        for i, entry in enumerate(entries):
            w = "log.entries[%d]" % i
            if not self.object(entry, "entry", w):
                continue
            started = entry.get("startedDateTime")
            if not isinstance(started, str) or not ISO_8601.match(started):
                self.fail(w + ".startedDateTime", "not ISO 8601: %r" % (started,))
            else:
                try:
                    datetime.fromisoformat(started.replace("Z", "+00:00"))
                except ValueError as error:
                    self.fail(w + ".startedDateTime", "not a date: %s" % error)
            if not is_number(entry.get("time")) or entry["time"] < 0:
                self.fail(w + ".time", "expected a number >= 0, got %r" % (entry.get("time"),))
            self.request(entry.get("request"), w + ".request")
            self.response(entry.get("response"), w + ".response")
            self.object(entry.get("cache"), "cache", w + ".cache")
            self.timings(entry.get("timings"), entry.get("time"), w + ".timings")
            for key in ("serverIPAddress", "connection", "comment", "pageref"):
                if key in entry:
                    self.string(entry[key], w + "." + key)
        return self.problems


def har_problems(doc):
    return HarChecker().document(doc)


def content_bytes(content):
    """The body a HAR content (or postData) object holds, as bytes."""
    text = content.get("text", "")
    if content.get("encoding") == "base64" or content.get("_encoding") == "base64":
        return base64.b64decode(text, validate=True)
    return text.encode("utf-8")


def header_values(headers, name):
    return [h["value"] for h in headers if h["name"].lower() == name.lower()]


def read_flow_log(path):
    """Every record of the flow log so far, each checked against the documented schema
    (flowlog_schema); a last line still being written is left for the next read."""
    if not Path(path).exists():
        return []
    return load_flow_log(path, allow_partial_tail=True)


class CaptureCase(IntegrationTestCase):
    """One Node origin (h2 and HTTP/1.1) for the class; a proxy per test, with CAPTURE_POLICY,
    a capture directory and a flow log of its own."""

    start_origin = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.node.stop)
        cls.policy_path = cls.tmp / "capture-policy.toml"
        cls.policy_path.write_text(CAPTURE_POLICY)

    def setUp(self):
        self.test_started = datetime.now(timezone.utc)

    def start_capturing(self, config_text=None):
        name = self.id().rsplit(".", 1)[-1]
        self.capture_dir = self.tmp / name / "captures"
        self.flow_log = self.tmp / name / "flows.jsonl"
        self.proxy = self.start_tokgate(name, args=policy_run_args(
            policy=self.policy_path,
            extra=["--capture-dir", self.capture_dir, "--flow-log", self.flow_log]),
            config_text=config_text)
        return self.proxy

    def url(self, path, host=HOST):
        return "https://%s:%d%s" % (host, self.node.port, path)

    def fetch(self, version, path, headers=(), args=(), **kwargs):
        result = curl(self.url(path), proxy=self.proxy.url, cacert=self.proxy.ca_pem,
                      args=[version] + list(args), headers=headers, timeout=CURL_TIMEOUT, **kwargs)
        self.assertEqual(result.returncode, 0, result.describe() + self.proxy.context())
        return result

    def flow_record(self, path, timeout=10.0):
        """The flow record of the request to `path` (tests use unique paths)."""
        def find():
            found = [r for r in read_flow_log(self.flow_log)
                     if r.get("type") == "request" and r.get("path") == path]
            return found or None
        found = wait_until(find, timeout, "flow record for %s in %s" % (path, self.flow_log))
        self.assertEqual(len(found), 1, found)
        return found[0]

    def captured(self, path):
        """(flow record, HAR document) of a captured request to `path`, after checking that the
        record names the HAR file and the file passes the strict HAR 1.2 checker."""
        record = self.flow_record(path)
        context = "record: %s%s" % (json.dumps(record), self.proxy.context())
        self.assertEqual(record.get("action"), "capture", context)
        self.assertIn("capture", record, context)
        har_path = Path(record["capture"])
        self.assertTrue(har_path.is_absolute(), context)
        self.assertEqual(har_path.parent.resolve(), self.capture_dir.resolve(), context)
        self.assertTrue(har_path.is_file(), context)
        # <time>-<flow>-<host>.har, the time being the record's ts without separators.
        stamp = re.sub(r"[^0-9TZ]", "", record["ts"])
        self.assertEqual(har_path.name, "%s-%s-%s.har" % (stamp, record["flow"], record["host"]),
                         context)
        text = har_path.read_text(encoding="utf-8")
        doc = json.loads(text)
        problems = har_problems(doc)
        self.assertEqual(problems, [], "HAR 1.2 violations in %s:\n%s\n%s" % (
            har_path, "\n".join(problems), text[:3000]))
        self.assertEqual(len(doc["log"]["entries"]), 1, text[:3000])
        entry = doc["log"]["entries"][0]
        self.assertEqual(doc["log"]["creator"]["name"], "tokgate")
        # The entry starts when the flow does.
        self.assertEqual(entry["startedDateTime"], record["ts"], context)
        started = datetime.fromisoformat(entry["startedDateTime"].replace("Z", "+00:00"))
        self.assertTrue(self.test_started - timedelta(seconds=2) <= started
                        <= datetime.now(timezone.utc) + timedelta(seconds=2),
                        (started, self.test_started))
        self.assertEqual(entry["request"]["method"], record["method"], context)
        self.assertEqual(entry["response"]["status"], record["status"], context)
        return record, entry, text

    def captures_tagged(self, path, tag, timeout=10.0):
        """Flow records of captured requests to `path` whose HAR holds `tag` (an X-Tag request
        header: tests POST several bodies to the same path)."""
        return wait_until(lambda: [r for r in read_flow_log(self.flow_log)
                                   if r.get("path") == path and r.get("capture")
                                   and tag in Path(r["capture"]).read_text()] or None,
                          timeout, "capture of %s %s" % (path, tag))

    def capture_files(self):
        return sorted(p.name for p in self.capture_dir.glob("*.har"))

    def metric(self, name):
        status, _, body = admin_get(self.proxy, "/metrics")
        self.assertEqual(status, 200)
        match = re.search(r"^%s (\S+)$" % re.escape(name), body.decode(), re.M)
        self.assertIsNotNone(match, "%s not in /metrics" % name)
        return float(match.group(1))

    # --- tests -------------------------------------------------------------------------------

    def test_get_captured_as_har_h1_and_h2(self):
        """A GET over HTTP/1.1 and over HTTP/2 becomes one strict HAR 1.2 file each, named in the
        flow record, holding the origin's exact body; a request of a `log` rule writes none."""
        self.start_capturing()
        for version, har_version in HTTP_VERSIONS:
            with self.subTest(version=version):
                tag = version.strip("-").replace(".", "")
                path = "/bytes/3000/get-%s" % tag
                result = self.fetch(version, path + "?alpha=1&beta")
                self.assertEqual(result.status, 200, result.describe())
                record, entry, text = self.captured(path)
                context = text[:3000]
                request, response = entry["request"], entry["response"]
                self.assertEqual(record["rule"], "capture-redacted", record)
                self.assertEqual(request["httpVersion"], har_version, context)
                self.assertEqual(response["httpVersion"], har_version, context)
                self.assertEqual(request["url"], "https://%s:%d%s?alpha=REDACTED&beta" % (
                    HOST, self.node.port, path), context)
                self.assertEqual(request["queryString"], [
                    {"name": "alpha", "value": "REDACTED"}, {"name": "beta", "value": ""}],
                    context)
                self.assertNotIn("postData", request, context)
                self.assertEqual(request["bodySize"], 0, context)
                self.assertEqual(response["status"], 200, context)
                if har_version == "HTTP/1.1":
                    self.assertEqual(response["statusText"], "OK", context)
                body = content_bytes(response["content"])
                # The origin's pattern, byte for byte, as the client also got it.
                self.assertEqual(hashlib.sha256(body).hexdigest(), pattern_sha256(3000), context)
                self.assertEqual(body, result.body)
                self.assertEqual(header_values(response["headers"], "x-sha256"),
                                 [pattern_sha256(3000)], context)
                self.assertEqual(response["content"]["size"], 3000, context)
                self.assertEqual(response["content"]["mimeType"], "application/octet-stream")
                self.assertEqual(response["bodySize"], 3000, context)
                self.assertNotIn("_tokgateTruncated", response["content"], context)
                self.assertEqual(entry.get("serverIPAddress"), "127.0.0.1", context)
                self.assertIn(record["flow"], entry.get("comment", ""), context)

        # A request decided by a `log` rule: recorded, not captured.
        before = self.capture_files()
        self.fetch("--http2", "/bytes/10/nocapture")
        record = self.flow_record("/bytes/10/nocapture")
        self.assertEqual(record.get("action"), "log", record)
        self.assertNotIn("capture", record)
        self.assertEqual(self.capture_files(), before)
        self.assertEqual(len(before), 2, before)
        # Every HAR written is counted.
        self.assertEqual(self.metric("tokgate_captures_total"), 2.0)
        self.assertEqual(self.metric("tokgate_captures_dropped_total"), 0.0)

    def test_post_body_lands_in_post_data(self):
        """A POST body, binary (base64) or text, is in postData, whole; bodySize is its length;
        the response content is the origin's answer about that very body."""
        self.start_capturing()
        scratch = self.scratch_dir("bodies")
        binary = write_pattern_file(scratch / "binary", 5000)
        text_body = json.dumps({"note": "text body, caf\u00e9", "n": list(range(50))}).encode()
        (scratch / "text").write_bytes(text_body)
        cases = (("binary", binary, pattern_bytes(5000), "application/octet-stream"),
                 ("text", scratch / "text", text_body, "application/json"))
        for version, har_version in HTTP_VERSIONS:
            for kind, file, sent, mime in cases:
                with self.subTest(version=version, kind=kind):
                    # /sha256 answers {"sha256", "length"} of the body it read.
                    path = "/sha256"
                    tag = "%s-%s" % (kind, version.strip("-"))
                    result = self.fetch(version, path, data_file=file,
                                        headers=["Content-Type: " + mime, "X-Tag: " + tag])
                    self.assertEqual(result.status, 200, result.describe())
                    answer = result.json()
                    self.assertEqual(answer["sha256"], hashlib.sha256(sent).hexdigest())
                    records = self.captures_tagged(path, tag)
                    self.assertEqual(len(records), 1, records)
                    doc = json.loads(Path(records[0]["capture"]).read_text())
                    self.assertEqual(har_problems(doc), [])
                    entry = doc["log"]["entries"][0]
                    request = entry["request"]
                    context = json.dumps(entry)[:3000]
                    self.assertEqual(request["method"], "POST", context)
                    self.assertEqual(request["httpVersion"], har_version, context)
                    self.assertIn("postData", request, context)
                    post = request["postData"]
                    self.assertEqual(post["mimeType"], mime, context)
                    self.assertEqual(content_bytes(post), sent, context)
                    if kind == "text":
                        self.assertEqual(post["text"], text_body.decode("utf-8"), context)
                    self.assertEqual(request["bodySize"], len(sent), context)
                    self.assertNotIn("_tokgateTruncated", post, context)
                    self.assertEqual(records[0]["bytes_up"], len(sent), records[0])
                    content = entry["response"]["content"]
                    self.assertEqual(json.loads(content_bytes(content))["sha256"],
                                     hashlib.sha256(sent).hexdigest(), context)
                    self.assertEqual(content["mimeType"], "application/json", context)

    def test_encoded_response_shown_decoded(self):
        """A gzip / br / deflate response is shown decoded: content.size is the decoded length
        and the text the origin's pattern; bodySize is the length on the wire, which is also
        what the client received (the proxy does not re-encode)."""
        self.start_capturing()
        n = 40000
        # (version, coding, chunked: no content-length, HTTP/1.1 chunked framing)
        cases = (("--http1.1", "gzip", False), ("--http2", "gzip", False),
                 ("--http2", "br", False), ("--http1.1", "deflate", False),
                 ("--http1.1", "gzip", True))
        for version, coding, chunked in cases:
            with self.subTest(version=version, coding=coding, chunked=chunked):
                path = "/encoded/%d/%s-%s%s" % (n, coding, version.strip("-"),
                                                "-chunked" if chunked else "")
                result = self.fetch(version, path + "?coding=" + coding
                                    + ("&chunked=1" if chunked else ""))
                self.assertEqual(result.status, 200, result.describe())
                if chunked:
                    self.assertIsNone(result.header("content-length"), result.describe())
                wire = int(result.header("x-encoded-length"))
                self.assertEqual(len(result.body), wire, "curl got the encoded bytes")
                self.assertEqual(hashlib.sha256(result.body).hexdigest(),
                                 result.header("x-encoded-sha256"))
                self.assertLess(wire, n)
                record, entry, text = self.captured(path)
                response = entry["response"]
                content = response["content"]
                context = text[:3000]
                self.assertEqual(header_values(response["headers"], "content-encoding"),
                                 [coding], context)
                body = content_bytes(content)
                self.assertEqual(len(body), n, context)
                self.assertEqual(hashlib.sha256(body).hexdigest(), pattern_sha256(n), context)
                self.assertEqual(content["size"], n, context)
                self.assertEqual(response["bodySize"], wire, context)
                if "compression" in content:
                    self.assertEqual(content["compression"], n - wire, context)
                self.assertNotIn("_tokgateTruncated", content, context)
                self.assertEqual(record["bytes_down"], wire, record)

    def test_body_over_cap_truncated_and_marked(self):
        """With [capture] body_bytes = "64KiB", a 200 000-byte response (and a 100 000-byte
        request body) is cut to its first 64 KiB in the HAR and marked _tokgateTruncated, while
        bodySize keeps the real length and the client still gets every byte."""
        self.start_capturing(config_text='[capture]\nbody_bytes = "64KiB"\n')
        upload = write_pattern_file(self.scratch_dir("upload") / "upload", 100000)
        for version, har_version in HTTP_VERSIONS:
            with self.subTest(version=version, direction="down"):
                path = "/bytes/200000/cap-%s" % version.strip("-")
                result = self.fetch(version, path)
                self.assertEqual(result.status, 200, result.describe())
                self.assertEqual(hashlib.sha256(result.body).hexdigest(), pattern_sha256(200000))
                record, entry, text = self.captured(path)
                response = entry["response"]
                content = response["content"]
                context = json.dumps({k: v for k, v in content.items() if k != "text"})
                self.assertIs(content.get("_tokgateTruncated"), True, context)
                self.assertEqual(content_bytes(content), pattern_bytes(CAP_BYTES), context)
                self.assertEqual(content["size"], CAP_BYTES, context)
                self.assertEqual(response["bodySize"], 200000, context)
                self.assertEqual(record["bytes_down"], 200000, record)
            with self.subTest(version=version, direction="up"):
                tag = "up-%s" % version.strip("-")
                result = self.fetch(version, "/sha256", data_file=upload,
                                    headers=["Content-Type: application/octet-stream",
                                             "X-Tag: " + tag])
                self.assertEqual(result.status, 200, result.describe())
                self.assertEqual(result.json()["length"], 100000)
                found = self.captures_tagged("/sha256", tag)
                self.assertEqual(len(found), 1, found)
                doc = json.loads(Path(found[0]["capture"]).read_text())
                self.assertEqual(har_problems(doc), [])
                request = doc["log"]["entries"][0]["request"]
                post = request["postData"]
                context = json.dumps({k: v for k, v in post.items() if k != "text"})
                self.assertIs(post.get("_tokgateTruncated"), True, context)
                self.assertEqual(content_bytes(post), pattern_bytes(CAP_BYTES), context)
                self.assertEqual(request["bodySize"], 100000, context)

    def secret_request(self, version, path, full):
        headers = ["%s: %s" % pair for pair in SECRET_HEADERS] + ["%s: %s" % VISIBLE_HEADER]
        if full:
            headers.append("X-Capture-Privacy: full")
        set_cookie = "sessionid%%3D%s%%3B%%20Path%%3D%%2F%%3B%%20HttpOnly" % SET_COOKIE_SECRET
        query = ("&".join("%s=%s" % pair for pair in QUERY_SECRETS) + "&header-set-cookie="
                 + set_cookie)
        result = self.fetch(version, "%s?%s" % (path, query), headers=headers)
        self.assertEqual(result.status, 200, result.describe())
        self.assertEqual(result.header("set-cookie"),
                         "sessionid=%s; Path=/; HttpOnly" % SET_COOKIE_SECRET)
        return self.captured(path)

    def test_redaction_by_default(self):
        """Without privacy = "full": Cookie, Authorization, X-Tt-Token, X-Argus and Set-Cookie
        values, cookie values and query values are REDACTED (names kept); no secret appears
        anywhere in the HAR file or the flow log; other headers are kept as sent."""
        self.start_capturing()
        for version, _ in HTTP_VERSIONS:
            with self.subTest(version=version):
                path = "/set-headers/redacted-%s" % version.strip("-")
                record, entry, text = self.secret_request(version, path, full=False)
                request, response = entry["request"], entry["response"]
                context = text[:4000]
                self.assertEqual(record["rule"], "capture-redacted", record)
                for name, _ in SECRET_HEADERS:
                    self.assertEqual(header_values(request["headers"], name), ["REDACTED"],
                                     "%s\n%s" % (name, context))
                self.assertEqual(header_values(request["headers"], VISIBLE_HEADER[0]),
                                 [VISIBLE_HEADER[1]], context)
                self.assertEqual(header_values(request["headers"], "user-agent"),
                                 [self.curl_user_agent()], context)
                self.assertEqual(request["cookies"], [{"name": "sid", "value": "REDACTED"},
                                                      {"name": "theme", "value": "REDACTED"}],
                                 context)
                self.assertEqual(request["queryString"], [
                    {"name": "device_id", "value": "REDACTED"},
                    {"name": "aid", "value": "REDACTED"},
                    {"name": "header-set-cookie", "value": "REDACTED"}], context)
                self.assertEqual(request["url"], "https://%s:%d%s?device_id=REDACTED&aid=REDACTED"
                                 "&header-set-cookie=REDACTED" % (HOST, self.node.port, path),
                                 context)
                self.assertEqual(header_values(response["headers"], "set-cookie"), ["REDACTED"],
                                 context)
                self.assertEqual(len(response["cookies"]), 1, context)
                self.assertEqual(response["cookies"][0]["name"], "sessionid", context)
                self.assertEqual(response["cookies"][0]["value"], "REDACTED", context)
                for secret in ALL_SECRETS:
                    self.assertNotIn(secret, text, "%s leaked into the HAR" % secret)
                self.assertEqual(record.get("query"),
                                 "device_id=REDACTED&aid=REDACTED&header-set-cookie=REDACTED",
                                 record)
        flow_log_text = self.flow_log.read_text()
        for secret in ALL_SECRETS:
            self.assertNotIn(secret, flow_log_text, "%s leaked into the flow log" % secret)

    def test_privacy_full_rule_keeps_values(self):
        """A rule with privacy = "full" captures the exchange as sent: header values, cookies,
        query values and Set-Cookie, in the HAR and in the flow record's query."""
        self.start_capturing()
        for version, _ in HTTP_VERSIONS:
            with self.subTest(version=version):
                path = "/set-headers/full-%s" % version.strip("-")
                record, entry, text = self.secret_request(version, path, full=True)
                request, response = entry["request"], entry["response"]
                context = text[:4000]
                self.assertEqual(record["rule"], "capture-full", record)
                for name, value in SECRET_HEADERS:
                    self.assertEqual(header_values(request["headers"], name), [value],
                                     "%s\n%s" % (name, context))
                self.assertEqual(request["cookies"], [
                    {"name": "sid", "value": "COOKIE-SECRET-1"},
                    {"name": "theme", "value": "COOKIE-SECRET-2"}], context)
                set_cookie_raw = "sessionid%%3D%s%%3B%%20Path%%3D%%2F%%3B%%20HttpOnly" % (
                    SET_COOKIE_SECRET)
                query = ("device_id=QUERY-SECRET-6&aid=QUERY-SECRET-7&header-set-cookie="
                         + set_cookie_raw)
                self.assertEqual(request["url"], "https://%s:%d%s?%s" % (
                    HOST, self.node.port, path, query), context)
                self.assertEqual(request["queryString"][:2], [
                    {"name": "device_id", "value": "QUERY-SECRET-6"},
                    {"name": "aid", "value": "QUERY-SECRET-7"}], context)
                self.assertEqual(header_values(response["headers"], "set-cookie"),
                                 ["sessionid=%s; Path=/; HttpOnly" % SET_COOKIE_SECRET], context)
                cookie = response["cookies"][0]
                self.assertEqual((cookie["name"], cookie["value"], cookie.get("path"),
                                  cookie.get("httpOnly")),
                                 ("sessionid", SET_COOKIE_SECRET, "/", True), context)
                self.assertEqual(record.get("query"), query, record)

    @staticmethod
    def curl_user_agent():
        version = subprocess.run(["curl", "--version"], capture_output=True, text=True,
                                 env=clean_env()).stdout.split()[1]
        return "curl/" + version


class HarCheckerSelfTest(unittest.TestCase):
    """The checker itself: a minimal valid document passes, and each kind of violation is
    caught (so the capture tests cannot pass on a checker that accepts anything)."""

    @staticmethod
    def valid():
        return {"log": {"version": "1.2", "creator": {"name": "t", "version": "1"},
                        "pages": [], "entries": [{
                            "startedDateTime": "2026-12-01T13:45:44.039Z", "time": 3.5,
                            "request": {"method": "GET", "url": "https://h/p?q=1",
                                        "httpVersion": "HTTP/2", "cookies": [], "headers": [],
                                        "queryString": [{"name": "q", "value": "1"}],
                                        "headersSize": -1, "bodySize": 0},
                            "response": {"status": 200, "statusText": "", "httpVersion": "HTTP/2",
                                         "cookies": [], "headers": [],
                                         "content": {"size": 0, "mimeType": ""},
                                         "redirectURL": "", "headersSize": -1, "bodySize": 0},
                            "cache": {},
                            "timings": {"blocked": -1, "dns": -1, "connect": 2, "ssl": 1.5,
                                        "send": 0, "wait": 1, "receive": 0.5}}]}}

    def test_checker(self):
        self.assertEqual(har_problems(self.valid()), [])
        mutations = {
            "version": lambda d: d["log"].update(version="1.1"),
            "no creator": lambda d: d["log"].pop("creator"),
            "date": lambda d: d["log"]["entries"][0].update(startedDateTime="yesterday"),
            "no cache": lambda d: d["log"]["entries"][0].pop("cache"),
            "no queryString": lambda d: d["log"]["entries"][0]["request"].pop("queryString"),
            "no redirectURL": lambda d: d["log"]["entries"][0]["response"].pop("redirectURL"),
            "content size": lambda d: d["log"]["entries"][0]["response"]["content"].update(
                size="0"),
            "bodySize": lambda d: d["log"]["entries"][0]["response"].update(bodySize=-2),
            "wait": lambda d: d["log"]["entries"][0]["timings"].update(wait=-1),
            "dns": lambda d: d["log"]["entries"][0]["timings"].update(dns=-3),
            "time": lambda d: d["log"]["entries"][0].update(time=99),
            "ssl outside connect": lambda d: d["log"]["entries"][0]["timings"].update(ssl=5),
            "unknown key": lambda d: d["log"]["entries"][0].update(extra=1),
            "base64": lambda d: d["log"]["entries"][0]["response"]["content"].update(
                text="!!", encoding="base64"),
        }
        for name, mutate in mutations.items():
            doc = self.valid()
            mutate(doc)
            self.assertNotEqual(har_problems(doc), [], name)


# --- the key log -------------------------------------------------------------------------------

NSS_LINE = re.compile(
    r"^(CLIENT_RANDOM|CLIENT_EARLY_TRAFFIC_SECRET|CLIENT_HANDSHAKE_TRAFFIC_SECRET|"
    r"SERVER_HANDSHAKE_TRAFFIC_SECRET|CLIENT_TRAFFIC_SECRET_0|SERVER_TRAFFIC_SECRET_0|"
    r"EARLY_EXPORTER_SECRET|EXPORTER_SECRET) ([0-9a-f]{64}) ([0-9a-f]{32,128})$")
TLS13_LABELS = {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"}


class Tshark:
    """tshark writing a loopback capture; start() returns only once packets reach the file."""

    def __init__(self, pcap, capture_filter):
        self.pcap = Path(pcap)
        self.filter = capture_filter
        self.process = None

    def start(self, probe_port, timeout=15.0):
        tshark = shutil.which("tshark")
        if not tshark:
            raise unittest.SkipTest("tshark is not installed")
        self.process = subprocess.Popen(
            [tshark, "-i", "lo", "-f", self.filter, "-w", str(self.pcap), "-q"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=clean_env())
        # Probe TCP connections to a captured port until the file grows past its header: the
        # capture is live then, whatever tshark prints.
        deadline = time.monotonic() + timeout
        baseline = None
        while True:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace")
                lines = [l.strip() for l in error.splitlines()
                         if l.strip() and not l.startswith("Running as user")]
                raise unittest.SkipTest(
                    "tshark cannot capture on lo (not root / no capture permission; CI runs as "
                    "root), exit %s: %s" % (self.process.returncode, " ".join(lines)[:400]))
            size = self.pcap.stat().st_size if self.pcap.exists() else None
            if size is not None:
                if baseline is None:
                    baseline = size
                elif size > baseline:
                    return
                try:
                    socket.create_connection(("127.0.0.1", probe_port), timeout=2).close()
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise unittest.SkipTest("tshark started but captured nothing on lo within "
                                        "%.0fs (no capture permission?)" % timeout)
            time.sleep(0.1)

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(2)  # SIGINT: tshark finishes the file
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()

    def read(self, display_filter, fields, keylog=None, decode_as=()):
        cmd = ["tshark", "-r", str(self.pcap), "-n"]
        if keylog is not None:
            cmd += ["-o", "tls.keylog_file:%s" % keylog]
        for port in decode_as:
            cmd += ["-d", "tcp.port==%d,tls" % port]
        cmd += ["-Y", display_filter, "-T", "fields", "-E", "separator=|"]
        for name in fields:
            cmd += ["-e", name]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=clean_env())
        if result.returncode != 0:
            raise AssertionError("%s failed (%d): %s" % (" ".join(cmd), result.returncode,
                                                         result.stderr[-2000:]))
        return [line.split("|") for line in result.stdout.splitlines() if line.strip()]


class KeyLogCase(IntegrationTestCase):

    start_origin = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.node.stop)

    def test_keylog_decrypts_both_legs(self):
        """tshark with tokgate's key log decrypts a loopback capture: the HTTP/1.1 and HTTP/2
        request paths show on the origin leg and on the client leg; without the key log they
        do not. The file is mode 0600 and every line is an NSS key log line, with secrets for
        every ClientHello in the capture (both legs)."""
        work = self.scratch_dir("keylog")
        keylog = work / "keys.log"
        pcap = work / "capture.pcapng"
        proxy = self.start_tokgate(args=policy_run_args(
            profile="observe", intercept=[HOST], extra=["--keylog", keylog]))
        port = self.node.port
        tshark = Tshark(pcap, "tcp port %d or tcp port %d" % (port, proxy.port))
        self.addCleanup(tshark.stop)
        tshark.start(probe_port=port)

        paths = {"--http1.1": "/bytes/100/keylog-h1", "--http2": "/bytes/100/keylog-h2"}
        for version, path in paths.items():
            result = curl("https://%s:%d%s" % (HOST, port, path), proxy=proxy.url,
                          cacert=proxy.ca_pem, args=[version], timeout=CURL_TIMEOUT)
            self.assertEqual((result.returncode, result.status), (0, 200),
                             result.describe() + proxy.context())
        # Let the last packets reach the file before stopping.
        time.sleep(0.5)
        tshark.stop()

        mode = stat.S_IMODE(keylog.stat().st_mode)
        self.assertEqual(mode, 0o600, "key log mode %o" % mode)
        lines = keylog.read_text().splitlines()
        self.assertTrue(lines, "the key log is empty")
        bad = [line for line in lines if not NSS_LINE.match(line)]
        self.assertEqual(bad, [], "lines not in NSS key log format")
        labels_by_random = {}
        for line in lines:
            label, random, _ = NSS_LINE.match(line).groups()
            labels_by_random.setdefault(random, set()).add(label)
        # Two client connections, each with a client leg and an origin leg: four TLS 1.3
        # sessions, each with its four traffic secrets.
        self.assertGreaterEqual(len(labels_by_random), 4, labels_by_random)
        for random, labels in labels_by_random.items():
            self.assertTrue(TLS13_LABELS <= labels, (random, labels))

        # Every ClientHello in the capture, on either leg, has its secrets in the file.
        hellos = tshark.read("tls.handshake.type == 1", ["tcp.dstport", "tls.handshake.random"],
                             decode_as=[port])
        by_port = {}
        for dstport, random in hellos:
            by_port.setdefault(int(dstport), []).append(random.replace(":", "").lower())
        self.assertEqual(len(by_port.get(port, [])), 2, hellos)
        self.assertEqual(len(by_port.get(proxy.port, [])), 2, hellos)
        for randoms in by_port.values():
            for random in randoms:
                self.assertIn(random, labels_by_random, "no secrets for ClientHello %s" % random)

        def seen(keylog_file, display_filter, field):
            rows = tshark.read(display_filter, ["tcp.dstport", field], keylog=keylog_file,
                               decode_as=[port])
            out = {}
            for dstport, value in rows:
                for item in value.split(","):
                    out.setdefault(item, set()).add(int(dstport))
            return out

        h1 = seen(keylog, "http.request", "http.request.uri")
        h2 = seen(keylog, "http2.headers.path", "http2.headers.path")
        # The origin leg (to the origin's port) and the client leg (inside the CONNECT tunnel to
        # the proxy's port) are both decrypted.
        self.assertEqual(h1.get(paths["--http1.1"]), {port, proxy.port}, h1)
        self.assertEqual(h2.get(paths["--http2"]), {port, proxy.port}, h2)
        # Negative control: without the key log nothing inside TLS is readable.
        empty = work / "empty.log"
        empty.write_text("")
        self.assertNotIn(paths["--http1.1"], seen(empty, "http.request", "http.request.uri"))
        self.assertNotIn(paths["--http2"], seen(empty, "http2.headers.path",
                                                "http2.headers.path"))

    def test_keylog_readable_by_others_is_refused(self):
        """An existing key log readable by group or others is refused at start (it holds every
        session key); a fresh one is created 0600 even under a permissive umask."""
        work = self.scratch_dir("keylog-mode")
        loose = work / "loose.log"
        loose.write_text("")
        loose.chmod(0o644)
        proxy = Tokgate(work / "refused", policy_run_args(
            profile="observe", intercept=[HOST], extra=["--keylog", loose]), wait=False)
        self.addCleanup(proxy.stop)
        try:
            code = proxy.process.wait(15)
        except subprocess.TimeoutExpired:
            self.fail("tokgate started with a key log readable by others" + proxy.context())
        proxy.log.join(5)
        self.assertNotEqual(code, 0, proxy.context())
        self.assertIn(str(loose), proxy.log_tail(), proxy.context())
        self.assertEqual(loose.read_text(), "")

        fresh = work / "fresh.log"
        old_umask = os.umask(0)
        try:
            proxy = self.start_tokgate("fresh", args=policy_run_args(
                profile="observe", intercept=[HOST], extra=["--keylog", fresh]))
        finally:
            os.umask(old_umask)
        result = curl("https://%s:%d/bytes/10/fresh" % (HOST, self.node.port), proxy=proxy.url,
                      cacert=proxy.ca_pem, timeout=CURL_TIMEOUT)
        self.assertEqual(result.status, 200, result.describe() + proxy.context())
        self.assertEqual(stat.S_IMODE(fresh.stat().st_mode), 0o600)
        self.assertTrue(fresh.read_text().strip())


if __name__ == "__main__":
    unittest.main()
