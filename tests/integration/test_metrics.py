"""The admin listener's /metrics, /healthz and /readyz (docs/metrics.md).

/metrics is parsed with a strict parser of the Prometheus text exposition format 0.0.4 (below):
HELP and TYPE for every family, every sample belonging to a declared family, families grouped,
no duplicate series, histograms with cumulative buckets ending in +Inf and _count equal to the
+Inf bucket. The families, their order, types and label sets are those docs/metrics.md lists.

Then the counters are watched while real traffic goes through: intercepted HTTP/1.1 and HTTP/2
requests, a block (451), a splice and a refusal, leaf certificates minted then served from the
cache, a client refusing our certificate, origins whose certificate is untrusted, expired or for
another name, policy reloads that succeed and fail, and flow log records. Where the flow log
has the same facts (requests by category/action/status, bytes, timings) the metrics are checked
against it exactly: both come from the same record.

Real parts only: tokgate, curl, h2origin.mjs and origin.py on loopback."""

import json
import math
import re
import signal
import time
import unittest
from pathlib import Path

from flowlog_schema import load_flow_log
from harness import (IntegrationTestCase, NodeOrigin, admin_get, curl, log_mark,
                     policy_run_args, wait_for_record, wait_until, write_file_replacing,
                     write_pattern_file)

HOST = "www.tiktok.com"
CURL_TIMEOUT = 20

# docs/metrics.md, "The metrics": every family, in the order /metrics writes them.
FAMILIES = (
    ("tokgate_build_info", "gauge"),
    ("tokgate_start_time_seconds", "gauge"),
    ("tokgate_workers", "gauge"),
    ("tokgate_connections_open", "gauge"),
    ("tokgate_connections_total", "counter"),
    ("tokgate_requests_total", "counter"),
    ("tokgate_bytes_total", "counter"),
    ("tokgate_handshake_failures_total", "counter"),
    ("tokgate_origin_handshakes_total", "counter"),
    ("tokgate_cert_cache_total", "counter"),
    ("tokgate_policy_reloads_total", "counter"),
    ("tokgate_policy_loaded_timestamp_seconds", "gauge"),
    ("tokgate_flow_log_records_total", "counter"),
    ("tokgate_flow_log_dropped_total", "counter"),
    ("tokgate_flow_log_write_errors_total", "counter"),
    ("tokgate_captures_total", "counter"),
    ("tokgate_captures_dropped_total", "counter"),
    ("tokgate_websocket_messages_total", "counter"),
    ("tokgate_limit_hits_total", "counter"),
    ("tokgate_upstream_connect_seconds", "histogram"),
    ("tokgate_upstream_tls_handshake_seconds", "histogram"),
    ("tokgate_request_duration_seconds", "histogram"),
)
CATEGORIES = {"none", "app-api", "in-app-browser", "media-cdn", "web", "analytics-sdk",
              "app-distribution", "auth", "live", "wechat", "bytedance-other"}
ACTIONS = {"allow", "log", "capture", "block", "refuse", "splice"}
STATUS_CLASSES = {"1xx", "2xx", "3xx", "4xx", "5xx", "none"}
VERDICTS = ("intercept", "splice", "refuse", "rejected", "error")
HANDSHAKE_REASONS = {
    "client": ("rejected-certificate", "timeout", "protocol", "no-shared-cipher", "other"),
    "origin": ("untrusted", "expired", "hostname-mismatch", "timeout", "protocol", "refused",
               "other"),
}
LIMITS = ("client-hello-size", "client-hello-timeout", "tls-handshake-client-timeout",
          "tls-handshake-origin-timeout", "proxy-header-timeout", "request-line-size",
          "request-header-size", "request-header-fields", "request-header-timeout",
          "idle-timeout", "body-stall", "response-header-timeout", "response-header-size",
          "connections", "connections-per-client", "h2-streams", "h2-continuations",
          "h2-control-flood", "h2-rapid-reset", "websocket-frame-size")
BUCKETS = ("0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
           "1", "2.5", "5", "10", "30", "+Inf")
# Every family but these exports all of its series from the start, zeros included.
SPARSE_FAMILIES = {"tokgate_requests_total"}
EXPECTED_SERIES = {
    "tokgate_connections_total": [{"verdict": v} for v in VERDICTS],
    "tokgate_bytes_total": [{"direction": d, "bumped": b} for d in ("up", "down")
                            for b in ("true", "false")],
    "tokgate_handshake_failures_total": [{"side": s, "reason": r}
                                         for s, reasons in HANDSHAKE_REASONS.items()
                                         for r in reasons],
    "tokgate_origin_handshakes_total": [{"resumed": "no"}, {"resumed": "yes"}],
    "tokgate_cert_cache_total": [{"result": "hit"}, {"result": "mint"}],
    "tokgate_policy_reloads_total": [{"result": "ok"}, {"result": "error"}],
    "tokgate_websocket_messages_total": [{"direction": "up"}, {"direction": "down"}],
    "tokgate_limit_hits_total": [{"limit": limit} for limit in LIMITS],
    "tokgate_request_duration_seconds": [{"stage": "first_byte"}, {"stage": "total"}],
}


# --- a strict parser of the text exposition format 0.0.4 ----------------------------------------

class ExpositionError(AssertionError):
    pass


METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE_LINE = re.compile(r"^(%s)(\{.*\})? (\S+)( -?\d+)?$" % METRIC_NAME)
LABEL_PAIR = re.compile(r'(%s)="((?:[^"\\\n]|\\[\\"n])*)"' % LABEL_NAME)
FLOAT = re.compile(r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|Inf|NaN)$")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_float(text, where):
    if not FLOAT.match(text):
        raise ExpositionError("%s: bad value %r" % (where, text))
    return float(text.replace("Inf", "inf").replace("NaN", "nan"))


def unescape_label(value):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_labels(text, where):
    """'{a="x",b="y"}' -> {"a": "x", "b": "y"}; strict about commas, quotes and escapes."""
    inner = text[1:-1]
    labels = {}
    position = 0
    while position < len(inner):
        match = LABEL_PAIR.match(inner, position)
        if not match:
            raise ExpositionError("%s: bad label syntax at %r" % (where, inner[position:]))
        name, value = match.group(1), unescape_label(match.group(2))
        if name in labels:
            raise ExpositionError("%s: label %s given twice" % (where, name))
        labels[name] = value
        position = match.end()
        if position < len(inner):
            if inner[position] != ",":
                raise ExpositionError("%s: expected ',' at %r" % (where, inner[position:]))
            position += 1
            if position == len(inner):  # a trailing comma is allowed by 0.0.4
                break
    return labels


class Family:
    def __init__(self, name):
        self.name = name
        self.help = None
        self.type = None
        self.samples = []  # (sample name, labels dict, value)

    def series(self, suffix=""):
        """{frozenset(labels.items()): value} of the samples named name+suffix."""
        return {frozenset(l.items()): v for n, l, v in self.samples if n == self.name + suffix}


def family_of(sample_name, families):
    """The declared family a sample name belongs to (histogram samples carry a suffix)."""
    if sample_name in families and families[sample_name].type != "histogram":
        return families[sample_name]
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample_name[:-len(suffix)] if sample_name.endswith(suffix) else None
        if base and base in families and families[base].type in ("histogram", "summary"):
            if families[base].type == "summary" and suffix == "_bucket":
                continue
            return families[base]
    return None


def parse_exposition(text):
    """Parses a /metrics body; returns {family name: Family} in order. Raises ExpositionError
    on anything the 0.0.4 text format does not allow or that makes the data inconsistent."""
    if not text.endswith("\n"):
        raise ExpositionError("the exposition must end with a line feed")
    families = {}
    finished = set()  # families whose samples are over: they may not start again
    current = None
    seen_series = set()
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = "line %d (%r)" % (number, line[:120])
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not re.fullmatch(METRIC_NAME, name):
                    raise ExpositionError("%s: bad metric name" % where)
                family = families.get(name)
                if family is None:
                    family = families[name] = Family(name)
                if current is not None and current is not family:
                    finished.add(current.name)
                if name in finished:
                    raise ExpositionError("%s: family %s is not contiguous" % (where, name))
                current = family
                if parts[1] == "HELP":
                    if family.help is not None:
                        raise ExpositionError("%s: second HELP for %s" % (where, name))
                    family.help = parts[3] if len(parts) > 3 else ""
                    if re.search(r"\\[^\\n]", family.help):
                        raise ExpositionError("%s: bad escape in HELP" % where)
                else:
                    if family.type is not None:
                        raise ExpositionError("%s: second TYPE for %s" % (where, name))
                    if family.samples:
                        raise ExpositionError("%s: TYPE after samples of %s" % (where, name))
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise ExpositionError("%s: bad TYPE" % where)
                    family.type = parts[3]
            continue  # any other comment is allowed
        match = SAMPLE_LINE.match(line)
        if not match:
            raise ExpositionError("%s: not a sample line" % where)
        sample_name, label_text, value_text = match.group(1), match.group(2), match.group(3)
        labels = parse_labels(label_text, where) if label_text else {}
        value = parse_float(value_text, where)
        family = family_of(sample_name, families)
        if family is None or family.type is None:
            raise ExpositionError("%s: sample of an undeclared family" % where)
        if family is not current:
            raise ExpositionError("%s: sample of %s outside its group" % (where, family.name))
        key = (sample_name, frozenset(labels.items()))
        if key in seen_series:
            raise ExpositionError("%s: duplicate series" % where)
        seen_series.add(key)
        if family.type == "histogram":
            if sample_name.endswith("_bucket") != ("le" in labels):
                raise ExpositionError("%s: le on a non-bucket or bucket without le" % where)
        elif "le" in labels:
            raise ExpositionError("%s: le label outside a histogram" % where)
        if family.type == "counter" and (value < 0 or math.isnan(value)):
            raise ExpositionError("%s: negative counter" % where)
        family.samples.append((sample_name, labels, value))
    for family in families.values():
        if family.type is None or family.help is None:
            raise ExpositionError("family %s lacks a TYPE or HELP line" % family.name)
        if family.type == "histogram":
            check_histogram(family)
    return families


def check_histogram(family):
    groups = {}
    for name, labels, value in family.samples:
        rest = frozenset((k, v) for k, v in labels.items() if k != "le")
        group = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name.endswith("_bucket"):
            group["buckets"].append((labels["le"], value))
        elif name.endswith("_sum"):
            group["sum"] = value
        else:
            group["count"] = value
    for rest, group in groups.items():
        where = "%s%s" % (family.name, dict(rest))
        buckets = group["buckets"]
        if not buckets or buckets[-1][0] != "+Inf":
            raise ExpositionError("%s: no +Inf bucket last" % where)
        bounds = [parse_float(le, where) for le, _ in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ExpositionError("%s: le bounds not strictly increasing: %r" % (where, bounds))
        counts = [v for _, v in buckets]
        if any(b < a for a, b in zip(counts, counts[1:])):
            raise ExpositionError("%s: buckets not cumulative: %r" % (where, counts))
        if group["count"] is None or group["sum"] is None:
            raise ExpositionError("%s: _sum or _count missing" % where)
        if group["count"] != counts[-1]:
            raise ExpositionError("%s: _count %r != +Inf bucket %r" % (where, group["count"],
                                                                     counts[-1]))
        if group["sum"] < 0:
            raise ExpositionError("%s: negative _sum" % where)


class Scrape:
    """One parsed /metrics answer, with lookups by name and labels (an absent series is 0 only
    for the families docs/metrics.md says may omit series)."""

    def __init__(self, families, text):
        self.families = families
        self.text = text

    def value(self, name, suffix="", **labels):
        family = self.families[name]
        key = frozenset(labels.items())
        series = family.series(suffix)
        if key not in series:
            if name in SPARSE_FAMILIES:
                return 0.0
            raise AssertionError("no series %s%s%s in /metrics" % (name, suffix, labels))
        return series[key]

    def total(self, name, suffix="", **labels):
        """Sum over every series of `name` whose labels include `labels`."""
        return sum(v for key, v in self.families[name].series(suffix).items()
                   if set(labels.items()) <= set(key))

    def requests(self):
        return {tuple(sorted(k)): v
                for k, v in self.families["tokgate_requests_total"].series().items()}


def scrape(proxy):
    status, headers, body = admin_get(proxy, "/metrics")
    if status != 200:
        raise AssertionError("/metrics answered %d: %r" % (status, body[:300]))
    text = body.decode("utf-8")
    return Scrape(parse_exposition(text), text), headers


def status_class(status):
    """docs/metrics.md: 1xx..5xx for a status in 100..599; none when absent or outside."""
    if status is None or not 100 <= status <= 599:
        return "none"
    return "%dxx" % (status // 100)


def read_flow_log(path):
    """The flow log's records, each checked against the documented schema (flowlog_schema)."""
    if not Path(path).exists():
        return []
    return load_flow_log(path, allow_partial_tail=True)


class ParserSelfTest(unittest.TestCase):
    """The parser rejects what it must (so a lenient parser cannot hide a broken /metrics)."""

    GOOD = ("# HELP a_total A counter.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n"
            "# HELP h Seconds.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\n"
            "h_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n")

    def test_parser(self):
        families = parse_exposition(self.GOOD)
        self.assertEqual(list(families), ["a_total", "h"])
        self.assertEqual(families["h"].series("_count"), {frozenset(): 2.0})
        bad = {
            "no final newline": self.GOOD[:-1],
            "undeclared": self.GOOD + "b 1\n",
            "no HELP": "# TYPE b gauge\nb 1\n",
            "duplicate series": self.GOOD.replace("a_total{x=\"1\"} 3\n",
                                                  "a_total{x=\"1\"} 3\na_total{x=\"1\"} 4\n"),
            "not cumulative": self.GOOD.replace("h_bucket{le=\"+Inf\"} 2",
                                                "h_bucket{le=\"+Inf\"} 0").replace(
                                                    "h_count 2", "h_count 0"),
            "count != +Inf": self.GOOD.replace("h_count 2", "h_count 3"),
            "no +Inf": self.GOOD.replace("h_bucket{le=\"+Inf\"} 2\n", ""),
            "bad label": self.GOOD.replace("{x=\"1\"}", "{x=1}"),
            "bad value": self.GOOD.replace("a_total{x=\"1\"} 3", "a_total{x=\"1\"} three"),
            "negative counter": self.GOOD.replace("a_total{x=\"1\"} 3", "a_total{x=\"1\"} -3"),
            "not grouped": self.GOOD + "a_total{x=\"2\"} 1\n",
            "bad TYPE": self.GOOD.replace("# TYPE a_total counter", "# TYPE a_total count"),
        }
        for name, text in bad.items():
            with self.assertRaises(ExpositionError, msg=name):
                parse_exposition(text)


class MetricsCase(IntegrationTestCase):
    """origin.py (SNI-selected certificates: expired, wrong name, untrusted CA) and a Node
    origin (h2 and HTTP/1.1) for the class; a proxy per test."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node = NodeOrigin(cls.pki, "both")
        cls.addClassCleanup(cls.node.stop)

    def fetch(self, proxy, path, version="--http1.1", host=HOST, port=None, cacert=None,
              expect=200, **kwargs):
        result = curl("https://%s:%d%s" % (host, port or self.node.port, path), proxy=proxy.url,
                      cacert=cacert or proxy.ca_pem, args=[version] + list(kwargs.pop("args", ())),
                      timeout=CURL_TIMEOUT, **kwargs)
        if expect is not None:
            self.assertEqual((result.returncode, result.status), (0, expect),
                             result.describe() + proxy.context())
        return result

    def settle(self, proxy, predicate, what, timeout=10.0):
        """Scrapes until predicate(scrape) holds (connections are counted when they close,
        a moment after the client has its answer); returns that scrape."""
        last = {}

        def attempt():
            last["scrape"] = scrape(proxy)[0]
            return last["scrape"] if predicate(last["scrape"]) else None
        try:
            return wait_until(attempt, timeout, what, interval=0.05)
        except AssertionError as error:
            raise AssertionError("%s\nlast /metrics:\n%s%s" % (
                error, last["scrape"].text if last else "", proxy.context()))

    def assert_deltas(self, before, after, name, expected, suffix=""):
        """after - before for every series of `name` whose labels are in `expected` (a dict of
        frozenset(labels) -> delta); every other series of the family must not have moved."""
        keys = set(before.families[name].series(suffix)) | set(after.families[name].series(suffix))
        keys |= set(expected)
        actual = {}
        for key in keys:
            delta = (after.families[name].series(suffix).get(key, 0.0)
                     - before.families[name].series(suffix).get(key, 0.0))
            if delta or key in expected:
                actual[key] = delta
        self.assertEqual({tuple(sorted(k)): v for k, v in actual.items()},
                         {tuple(sorted(k)): float(v) for k, v in expected.items()},
                         "deltas of %s%s" % (name, suffix))

    # --- format ------------------------------------------------------------------------------

    def test_exposition_format_and_health_endpoints(self):
        """/metrics is strict 0.0.4 text with the documented families (in order), types, series
        and buckets; /healthz answers 200 "ok" and /readyz 200."""
        started = time.time()
        proxy = self.start_tokgate(args=policy_run_args(profile="observe", intercept=[HOST],
                                                        extra=["--workers", "2"]))
        # Traffic first, so the histograms and the requests family have samples.
        self.fetch(proxy, "/bytes/1000/format")
        parsed, headers = scrape(proxy)
        self.assertEqual(headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual([(n, f.type) for n, f in parsed.families.items()], list(FAMILIES))
        for name, family in parsed.families.items():
            self.assertTrue(family.help.strip(), "empty HELP for %s" % name)
        for name, series in EXPECTED_SERIES.items():
            suffix = "_count" if parsed.families[name].type == "histogram" else ""
            self.assertEqual(sorted(map(sorted, (k for k in parsed.families[name].series(suffix)))),
                             sorted(sorted(s.items()) for s in series), name)
        for name in ("tokgate_upstream_connect_seconds", "tokgate_upstream_tls_handshake_seconds",
                     "tokgate_request_duration_seconds"):
            family = parsed.families[name]
            groups = {}
            for sample, labels, _ in family.samples:
                if sample.endswith("_bucket"):
                    rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                    groups.setdefault(rest, []).append(labels["le"])
            self.assertTrue(groups, name)
            for rest, les in groups.items():
                self.assertEqual(tuple(les), BUCKETS, (name, rest))
        for key in parsed.families["tokgate_requests_total"].series():
            labels = dict(key)
            self.assertEqual(set(labels), {"category", "action", "status_class"}, labels)
            self.assertIn(labels["category"], CATEGORIES)
            self.assertIn(labels["action"], ACTIONS)
            self.assertIn(labels["status_class"], STATUS_CLASSES)
        self.assertEqual(parsed.value("tokgate_requests_total", category="web", action="log",
                                      status_class="2xx"), 1.0)
        self.assertEqual(parsed.value("tokgate_workers"), 2.0)
        info = parsed.families["tokgate_build_info"].samples
        self.assertEqual(len(info), 1)
        self.assertEqual(set(info[0][1]), {"version"})
        self.assertTrue(info[0][1]["version"])
        self.assertEqual(info[0][2], 1.0)
        start = parsed.value("tokgate_start_time_seconds")
        self.assertTrue(started - 5 <= start <= time.time() + 1, (started, start))
        loaded = parsed.value("tokgate_policy_loaded_timestamp_seconds")
        self.assertTrue(started - 5 <= loaded <= time.time() + 1, (started, loaded))
        self.assertEqual(parsed.value("tokgate_request_duration_seconds", "_count",
                                      stage="total"), 1.0)

        status, _, body = admin_get(proxy, "/healthz")
        self.assertEqual((status, body.strip()), (200, b"ok"))
        status, _, body = admin_get(proxy, "/readyz")
        self.assertEqual(status, 200, body)

    # --- counters ----------------------------------------------------------------------------

    def test_request_counters_match_the_flow_log(self):
        """Intercepted HTTP/1.1 and HTTP/2 requests, a POST, a 404 and a block (451) move
        tokgate_requests_total by category/action/status_class, bytes_total, the intercept
        connections, the histograms' _count and flow_log_records_total, each by exactly what
        the flow log's records say."""
        work = self.scratch_dir("requests")
        policy = work / "policy.toml"
        policy.write_text(
            '[[rules]]\nname = "block-path"\naction = "block"\n'
            'match = { host = ["www.tiktok.com"], path = ["/blocked/*"] }\n\n'
            '[[rules]]\nname = "log-web"\naction = "log"\nmatch = { host = ["www.tiktok.com"] }\n')
        flow_log = work / "flows.jsonl"
        proxy = self.start_tokgate(args=policy_run_args(policy=policy,
                                                        extra=["--flow-log", flow_log]))
        before = scrape(proxy)[0]
        self.assertEqual(before.value("tokgate_flow_log_records_total"), 0.0)
        upload = write_pattern_file(work / "upload", 3000)

        self.fetch(proxy, "/bytes/1000/h1", "--http1.1")
        self.fetch(proxy, "/bytes/2000/h2", "--http2")
        self.fetch(proxy, "/sha256", "--http2", data_file=upload)
        self.fetch(proxy, "/status/404", "--http1.1", expect=404)
        self.fetch(proxy, "/blocked/page", "--http2", expect=451)
        self.fetch(proxy, "/blocked/page", "--http1.1", expect=451)
        clients = 6

        after = self.settle(
            proxy, lambda s: (s.value("tokgate_connections_total", verdict="intercept")
                              - before.value("tokgate_connections_total", verdict="intercept")
                              >= clients
                              and s.value("tokgate_flow_log_records_total") >= clients
                              and s.value("tokgate_connections_open") == 0),
            "%d intercepted connections closed and logged" % clients)
        records = read_flow_log(flow_log)
        context = json.dumps(records, indent=0)[:6000] + proxy.context()
        self.assertEqual(len(records), clients, context)
        self.assertTrue(all(r["type"] == "request" for r in records), context)

        self.assert_deltas(before, after, "tokgate_requests_total", {
            frozenset({"category": "web", "action": "log", "status_class": "2xx"}.items()): 3,
            frozenset({"category": "web", "action": "log", "status_class": "4xx"}.items()): 1,
            frozenset({"category": "web", "action": "block", "status_class": "4xx"}.items()): 2,
        })
        # The same, from the records themselves.
        by_labels = {}
        for r in records:
            key = (r["category"], r["action"], status_class(r.get("status")))
            by_labels[key] = by_labels.get(key, 0) + 1
        self.assertEqual(by_labels, {("web", "log", "2xx"): 3, ("web", "log", "4xx"): 1,
                                     ("web", "block", "4xx"): 2}, context)
        up = sum(r["bytes_up"] for r in records)
        down = sum(r["bytes_down"] for r in records)
        self.assertEqual(up, 3000, context)
        self.assertGreater(down, 3000, context)  # 1000 + 2000 + the JSON + the block pages
        self.assert_deltas(before, after, "tokgate_bytes_total", {
            frozenset({"direction": "up", "bumped": "true"}.items()): up,
            frozenset({"direction": "down", "bumped": "true"}.items()): down,
        })
        self.assert_deltas(before, after, "tokgate_connections_total", {
            frozenset({"verdict": "intercept"}.items()): clients})
        # Histograms observe the records' timings.
        for name, field, labels in (
                ("tokgate_upstream_connect_seconds", "connect_ms", {}),
                ("tokgate_upstream_tls_handshake_seconds", "tls_ms", {}),
                ("tokgate_request_duration_seconds", "first_byte_ms", {"stage": "first_byte"}),
                ("tokgate_request_duration_seconds", "total_ms", {"stage": "total"})):
            with self.subTest(histogram=name, **labels):
                observed = [r[field] for r in records if field in r]
                # Every connection connected upstream (even the blocked ones: the origin is
                # reached before a request is seen); block pages have no first_byte_ms.
                self.assertGreaterEqual(len(observed), 4 if field == "first_byte_ms" else clients,
                                        context)
                delta = (after.value(name, "_count", **labels)
                         - before.value(name, "_count", **labels))
                self.assertEqual(delta, len(observed), context)
                total = (after.value(name, "_sum", **labels)
                         - before.value(name, "_sum", **labels))
                self.assertAlmostEqual(total, sum(observed) / 1000, delta=0.0005 * len(observed))
                inf = (after.value(name, "_bucket", le="+Inf", **labels)
                       - before.value(name, "_bucket", le="+Inf", **labels))
                self.assertEqual(inf, len(observed))
        self.assertEqual(after.value("tokgate_flow_log_records_total"), clients)
        self.assertEqual(after.value("tokgate_flow_log_dropped_total"), 0.0)
        self.assertEqual(after.value("tokgate_flow_log_write_errors_total"), 0.0)
        # Nothing here failed a handshake, spliced or refused.
        self.assertEqual(after.total("tokgate_handshake_failures_total"), 0.0)

    def test_splice_and_refuse_counters(self):
        """A spliced connection counts as verdict splice, one flow {none, splice, ...} and
        unbumped bytes equal to its record's; a refused one as verdict refuse and one flow
        {none, refuse, 4xx} (the 403 answer to its CONNECT). The status_class of each is that
        of its record's status (docs/metrics.md: "the same values as the flow log's fields")."""
        work = self.scratch_dir("splice")
        flow_log = work / "flows.jsonl"
        proxy = self.start_tokgate(args=policy_run_args(
            profile="observe", intercept=[HOST], refuse=["refused.test"],
            extra=["--flow-log", flow_log]))
        before = scrape(proxy)[0]
        # example.org is no target: spliced, the origin's own certificate reaches curl.
        self.fetch(proxy, "/bytes/5000/spliced", host="example.org", cacert=self.pki.ca_cert)
        refused = self.fetch(proxy, "/bytes/10", host="refused.test", expect=None)
        self.assertNotEqual(refused.returncode, 0, refused.describe())
        after = self.settle(proxy, lambda s: s.value("tokgate_flow_log_records_total") >= 2
                            and s.value("tokgate_connections_open") == 0,
                            "two connection records")
        records = read_flow_log(flow_log)
        context = json.dumps(records) + proxy.context()
        spliced = [r for r in records if r.get("verdict") == "splice"]
        refusals = [r for r in records if r.get("verdict") == "refuse"]
        self.assertEqual((len(spliced), len(refusals), len(records)), (1, 1, 2), context)
        self.assertGreater(spliced[0]["bytes_down"], 5000, context)
        self.assertGreater(spliced[0]["bytes_up"], 0, context)
        self.assertEqual(refusals[0].get("status"), 403, context)
        self.assert_deltas(before, after, "tokgate_connections_total", {
            frozenset({"verdict": "splice"}.items()): 1,
            frozenset({"verdict": "refuse"}.items()): 1})
        self.assert_deltas(before, after, "tokgate_requests_total", {
            frozenset({"category": "none", "action": "splice",
                       "status_class": status_class(spliced[0].get("status"))}.items()): 1,
            frozenset({"category": "none", "action": "refuse",
                       "status_class": "4xx"}.items()): 1,
        })
        self.assert_deltas(before, after, "tokgate_bytes_total", {
            frozenset({"direction": "up", "bumped": "false"}.items()): spliced[0]["bytes_up"],
            frozenset({"direction": "down", "bumped": "false"}.items()): spliced[0]["bytes_down"],
        })
        # A splice needs no leaf certificate.
        self.assertEqual(after.total("tokgate_cert_cache_total"), 0.0)

    def test_cert_cache_mint_then_hit(self):
        """The first connection to a name mints its leaf; a second connection to it is a cache
        hit; another name mints again. No flow log configured: flow_log_records_total stays 0."""
        proxy = self.start_tokgate(args=policy_run_args(
            profile="observe", intercept=[HOST, "example.org"]))
        first = scrape(proxy)[0]
        self.assertEqual((first.value("tokgate_cert_cache_total", result="mint"),
                          first.value("tokgate_cert_cache_total", result="hit")), (0.0, 0.0))
        steps = (("--http1.1", HOST, (1, 0)), ("--http2", HOST, (1, 1)),
                 ("--http1.1", HOST, (1, 2)), ("--http2", "example.org", (2, 2)))
        for i, (version, host, (mint, hit)) in enumerate(steps):
            with self.subTest(step=i, host=host):
                self.fetch(proxy, "/bytes/10/cache-%d" % i, version, host=host)
                now = self.settle(proxy, lambda s: s.value(
                    "tokgate_connections_total", verdict="intercept") == i + 1,
                    "connection %d closed" % (i + 1))
                self.assertEqual((now.value("tokgate_cert_cache_total", result="mint"),
                                  now.value("tokgate_cert_cache_total", result="hit")),
                                 (mint, hit), now.text)
        self.assertEqual(now.value("tokgate_flow_log_records_total"), 0.0)

    def test_client_rejecting_our_certificate(self):
        """curl without our CA aborts the handshake with a certificate alert: counted as
        handshake_failures{side="client",reason="rejected-certificate"}, nothing else."""
        work = self.scratch_dir("pinned")
        flow_log = work / "flows.jsonl"
        proxy = self.start_tokgate(args=policy_run_args(
            profile="observe", intercept=[HOST], extra=["--flow-log", flow_log]))
        before = scrape(proxy)[0]
        # The system trust store does not hold tokgate's CA: curl refuses the leaf.
        result = curl("https://%s:%d/bytes/10/pinned" % (HOST, self.node.port), proxy=proxy.url,
                      timeout=CURL_TIMEOUT)
        self.assertEqual(result.returncode, 60, result.describe())
        after = self.settle(proxy, lambda s: s.value(
            "tokgate_connections_total", verdict="intercept") >= 1, "the connection closed")
        self.assert_deltas(before, after, "tokgate_handshake_failures_total", {
            frozenset({"side": "client", "reason": "rejected-certificate"}.items()): 1})
        self.assert_deltas(before, after, "tokgate_connections_total", {
            frozenset({"verdict": "intercept"}.items()): 1})
        records = wait_until(lambda: read_flow_log(flow_log) or None, 10, "the flow record")
        self.assertEqual(len(records), 1, records)
        self.assertEqual(records[0].get("error"), "pinned", records)
        # One flow record, but no request: requests_total does not move (docs/metrics.md).
        self.assertNotIn("action", records[0], records)
        self.assertEqual(after.total("tokgate_requests_total")
                         - before.total("tokgate_requests_total"), 0.0)

    def test_origin_untrusted_without_upstream_ca(self):
        """Without --upstream-ca the Node origin's certificate (from the test CA) is untrusted:
        502 to the client, handshake_failures{side="origin",reason="untrusted"} + 1 and a 5xx
        flow."""
        proxy = self.start_tokgate(args=["--resolve", "*:*:127.0.0.1", "--connect-ports",
                                         "1-65535", "--profile", "observe", "--intercept", HOST])
        before = scrape(proxy)[0]
        self.fetch(proxy, "/bytes/10/untrusted", expect=502)
        after = self.settle(proxy, lambda s: s.value(
            "tokgate_connections_total", verdict="intercept") >= 1, "the connection closed")
        self.assert_deltas(before, after, "tokgate_handshake_failures_total", {
            frozenset({"side": "origin", "reason": "untrusted"}.items()): 1})
        self.assert_deltas(before, after, "tokgate_requests_total", {
            frozenset({"category": "web", "action": "log", "status_class": "5xx"}.items()): 1})

    def test_origin_handshake_failure_reasons(self):
        """origin.py picks its certificate by SNI: a chain from an unknown CA, an expired
        certificate and one for another name count as untrusted, expired and
        hostname-mismatch (the test CA is trusted here, so nothing else explains them)."""
        proxy = self.start_tokgate(args=policy_run_args(
            profile="observe", intercept=["untrusted.test", "expired.test", "wrong.test"]))
        for host, reason in (("untrusted.test", "untrusted"), ("expired.test", "expired"),
                             ("wrong.test", "hostname-mismatch")):
            with self.subTest(host=host):
                before = scrape(proxy)[0]
                self.fetch(proxy, "/bytes/10", host=host, port=self.origin.https_port,
                           expect=502)
                after = self.settle(proxy, lambda s: s.value(
                    "tokgate_connections_total", verdict="intercept")
                    > before.value("tokgate_connections_total", verdict="intercept"),
                    "the connection to %s closed" % host)
                self.assert_deltas(before, after, "tokgate_handshake_failures_total", {
                    frozenset({"side": "origin", "reason": reason}.items()): 1})

    def test_policy_reload_counters(self):
        """SIGHUP with a valid policy file counts reloads{result="ok"} and moves the loaded
        timestamp; a broken file and SIGHUP count reloads{result="error"} and keep it. The file
        watch is off, so only the signals reload."""
        work = self.scratch_dir("reload")
        policy = work / "policy.toml"
        good = '[policy]\nname = "%s"\n\n[[rules]]\nname = "log-web"\naction = "log"\n' \
               'match = { category = ["web"] }\n'
        write_file_replacing(policy, good % "first")
        proxy = self.start_tokgate(args=policy_run_args(policy=policy),
                                   config_text="[policy]\nwatch = false\n")
        start = scrape(proxy)[0]
        self.assertEqual((start.value("tokgate_policy_reloads_total", result="ok"),
                          start.value("tokgate_policy_reloads_total", result="error")), (0, 0))
        loaded_at_start = start.value("tokgate_policy_loaded_timestamp_seconds")

        time.sleep(0.05)  # the timestamp has millisecond resolution
        write_file_replacing(policy, good % "second")
        mark = log_mark(proxy)
        proxy.process.send_signal(signal.SIGHUP)
        wait_for_record(proxy, start=mark, event="policy-reloaded", name="second")
        reloaded = self.settle(proxy, lambda s: s.value(
            "tokgate_policy_reloads_total", result="ok") >= 1, "reloads{ok} = 1")
        self.assertEqual((reloaded.value("tokgate_policy_reloads_total", result="ok"),
                          reloaded.value("tokgate_policy_reloads_total", result="error")), (1, 0))
        loaded_after_reload = reloaded.value("tokgate_policy_loaded_timestamp_seconds")
        self.assertGreater(loaded_after_reload, loaded_at_start)
        self.assertLessEqual(loaded_after_reload, time.time() + 1)

        write_file_replacing(policy, good.replace('action = "log"', 'action = "sometimes"')
                             % "broken")
        mark = log_mark(proxy)
        proxy.process.send_signal(signal.SIGHUP)
        wait_for_record(proxy, start=mark, event="policy-reload-failed")
        failed = self.settle(proxy, lambda s: s.value(
            "tokgate_policy_reloads_total", result="error") >= 1, "reloads{error} = 1")
        self.assertEqual((failed.value("tokgate_policy_reloads_total", result="ok"),
                          failed.value("tokgate_policy_reloads_total", result="error")), (1, 1))
        self.assertEqual(failed.value("tokgate_policy_loaded_timestamp_seconds"),
                         loaded_after_reload)
        # The policy in force ("second") still decides: the request is logged by its rule.
        mark = log_mark(proxy)
        self.fetch(proxy, "/bytes/10/after-failed-reload")
        wait_for_record(proxy, start=mark, event="request", rule="log-web")
        later = self.settle(proxy, lambda s: s.value(
            "tokgate_requests_total", category="web", action="log", status_class="2xx") >= 1,
            "the request counted")
        self.assertEqual(later.value("tokgate_policy_reloads_total", result="error"), 1)


if __name__ == "__main__":
    unittest.main()
