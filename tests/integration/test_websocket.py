"""WebSocket through tokgate (issue 4): the HTTP/1.1 Upgrade relayed on intercepted (CONNECT +
TLS) and on plain ws:// explicit-proxy connections, RFC 8441 extended CONNECT from an h2
client, classification at the handshake, and the websocket-closed record's counts. The echo
origin is h2origin.mjs; the clients are wsclient.py (HTTP/1.1) and h2client.mjs (h2)."""

import unittest

import wsclient
from harness import (IntegrationTestCase, NodeOrigin, h2client, host_is, log_mark,
                     policy_run_args, records_since, wait_for_record)

HOST = "www.tiktok.com"
# /webcast/ on a TikTok host is LIVE (catalog signature tiktok-live-path); any path ending in
# /ws is the origin's echo endpoint.
LIVE_PATH = "/webcast/im/ws"
WEB_PATH = "/ws"


def expected_counts(sent):
    """The (messages, bytes) pairs a websocket-closed record may carry for one direction:
    data messages and their payload bytes, or (if the proxy also counts control frames as
    messages) those plus the control frames. A fragmented message is one message either way."""
    return {(sent["messages"], sent["bytes"]),
            (sent["messages"] + sent["control_frames"], sent["bytes"] + sent["control_bytes"])}


class WebSocketCase(IntegrationTestCase):

    start_origin = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.origins = {"h1": NodeOrigin(cls.pki, "h1"), "both": NodeOrigin(cls.pki, "both"),
                       "plain": NodeOrigin(cls.pki, plain=True)}
        for origin in cls.origins.values():
            cls.addClassCleanup(origin.stop)

    def proxy_args(self):
        return self.intercept_args(HOST)

    def setUp(self):
        self.proxy = self.start_tokgate(args=self.proxy_args())

    @property
    def proxy_address(self):
        return "127.0.0.1:%d" % self.proxy.port

    def wss(self, mode, path):
        return wsclient.connect_tls_via_proxy(self.proxy_address, HOST, self.origins[mode].port,
                                              path, cafile=self.proxy.ca_pem)

    def ws(self, path):
        # Proxy-Connection as browsers send it to an explicit proxy: it must not reach the origin.
        return wsclient.connect_plain_via_proxy(self.proxy_address, HOST,
                                                self.origins["plain"].port, path,
                                                extra_headers=[("Proxy-Connection",
                                                                "keep-alive")])

    def assert_echoed(self, result, context):
        self.assertEqual(len(result.echoes), 4, context)
        for echo in result.echoes:
            self.assertTrue(echo["equal"], "%r\n%s" % (echo, context))
        self.assertEqual(result.pong, b"ping-1234", context)
        self.assertEqual(result.close_code, 1000, context)
        self.assertEqual(result.close_reason, "bye", context)
        self.assertTrue(result.closed_by_peer, "the connection stayed open after the close "
                        "handshake\n" + context)

    def assert_closed_record(self, mark, conn, up, down, context):
        """The websocket-closed record of connection `conn`: counts both ways. `up` and `down`
        are {messages, bytes, control_frames, control_bytes} of what each side sent."""
        record = wait_for_record(self.proxy, start=mark, event="websocket-closed", conn=conn)
        self.assertTrue(host_is(HOST)(record.get("host", "")), record)
        counts_up = (int(record["messages_up"]), int(record["bytes_up"]))
        counts_down = (int(record["messages_down"]), int(record["bytes_down"]))
        self.assertIn(counts_up, expected_counts(up), "%r\n%s" % (record, context))
        self.assertIn(counts_down, expected_counts(down), "%r\n%s" % (record, context))
        return record

    @staticmethod
    def sent_by_client(result):
        return {"messages": result.messages_sent, "bytes": result.bytes_sent,
                "control_frames": result.control_frames_sent,
                "control_bytes": result.control_bytes_sent}

    @staticmethod
    def sent_by_origin(result):
        return {"messages": result.messages_received, "bytes": result.bytes_received,
                "control_frames": result.control_frames_received,
                "control_bytes": result.control_bytes_received}

    def check_echo_over_http11(self, connect, origin, path, label):
        mark = log_mark(self.proxy)
        origin_mark = origin.mark()
        with connect() as ws:
            handshake = ws.handshake
            result = wsclient.echo_script(ws)
        context = "%s: %r %r%s" % (label, handshake, result.as_dict(), self.proxy.context())
        self.assert_echoed(result, context)
        # The origin saw an origin-form Upgrade with the right Host, and counted what we did.
        seen = origin.wait_for_event(start=origin_mark, event="request", path=path)
        self.assertEqual(seen["method"], "GET", seen)
        self.assertEqual(seen["host"], "%s:%d" % (HOST, origin.port), seen)
        self.assertEqual(seen["headers"].get("upgrade", "").lower(), "websocket", seen)
        self.assertNotIn("proxy-connection", seen["headers"], seen)
        closed = origin.wait_for_event(start=origin_mark, event="ws-closed", path=path)
        self.assertEqual((closed["messages_in"], closed["bytes_in"]),
                         (result.messages_sent, result.bytes_sent), closed)
        self.assertEqual(closed["close_code"], 1000, closed)
        # tokgate: the handshake is a request record with status 101, then websocket-closed.
        handshake_record = wait_for_record(self.proxy, start=mark, event="request", path=path,
                                           status="101")
        self.assert_closed_record(mark, handshake_record["conn"], self.sent_by_client(result),
                                  self.sent_by_origin(result), context)
        return handshake_record


class WebSocketRelayTest(WebSocketCase):

    def test_wss_echo_intercepted(self):
        for mode in ("h1", "both"):
            with self.subTest(origin=mode):
                record = self.check_echo_over_http11(lambda: self.wss(mode, LIVE_PATH),
                                                     self.origins[mode], LIVE_PATH,
                                                     "wss to %s origin" % mode)
                # Classified at the handshake: /webcast/ on a TikTok host is LIVE.
                self.assertEqual(record.get("category"), "live", record)

    def test_ws_plain_through_explicit_proxy(self):
        record = self.check_echo_over_http11(lambda: self.ws(LIVE_PATH), self.origins["plain"],
                                             LIVE_PATH, "plain ws://")
        self.assertEqual(record.get("category"), "live", record)

    def test_wss_other_category(self):
        # The same echo on a path that is not LIVE: classified as the host's category.
        record = self.check_echo_over_http11(lambda: self.wss("h1", WEB_PATH),
                                             self.origins["h1"], WEB_PATH, "wss /ws")
        self.assertEqual(record.get("category"), "web", record)

    def test_large_and_many_messages(self):
        # 200 messages each way, sizes across the 7-bit, 16-bit and 64-bit length forms, some
        # fragmented: every one comes back intact and the record counts them all.
        mark = log_mark(self.proxy)
        script = []
        for i in range(200):
            size = (0, 1, 125, 126, 65535, 65536, 300_000)[i % 7]
            payload = wsclient.binary_payload(size)
            kind = "fragmented" if i % 5 == 4 else ("text" if i % 2 else "binary")
            if kind != "binary":
                payload = (b"x" * size)
            script.append(wsclient.ScriptStep(kind, payload))
        script.append(wsclient.ScriptStep("close", b"done", 1000))
        with self.wss("h1", LIVE_PATH) as ws:
            result = wsclient.echo_script(ws, script)
        context = "%r%s" % ([e for e in result.echoes if not e["equal"]], self.proxy.context())
        self.assertEqual(len(result.echoes), 200, context)
        self.assertTrue(all(e["equal"] for e in result.echoes), context)
        self.assertEqual(result.close_code, 1000, context)
        handshake = wait_for_record(self.proxy, start=mark, event="request", path=LIVE_PATH,
                                    status="101")
        self.assert_closed_record(mark, handshake["conn"], self.sent_by_client(result),
                                  self.sent_by_origin(result), context)

    def test_extended_connect_over_h2(self):
        # RFC 8441: an h2 client (offering only h2) opens the WebSocket with extended
        # CONNECT; tokgate relays it to the origin (over h2 extended CONNECT or an HTTP/1.1
        # Upgrade) and the frames both ways.
        for mode in ("both", "h1"):
            with self.subTest(origin=mode):
                origin = self.origins[mode]
                origin_mark = origin.mark()
                mark = log_mark(self.proxy)
                run = h2client({
                    "proxy": self.proxy_address, "connect": "%s:%d" % (HOST, origin.port),
                    "servername": HOST, "ca": str(self.proxy.ca_pem), "alpn": ["h2"],
                    "websocket": {"path": LIVE_PATH}}, self.scratch_dir("h2ws"), timeout=30)
                context = run.describe() + self.proxy.context()
                self.assertEqual(run.session.get("alpn"), "h2", context)
                report = run.websocket
                self.assertIsNotNone(report, context)
                self.assertTrue(report["enable_connect_protocol"],
                                "tokgate did not send SETTINGS_ENABLE_CONNECT_PROTOCOL\n"
                                + context)
                self.assertEqual(report["status"], 200, context)
                self.assertEqual(len(report["echoes"]), 3, context)
                for echo in report["echoes"]:
                    self.assertTrue(echo["equal"], context)
                self.assertEqual(report["pong"], {"opcode": 10, "payload": "ping-h2"}, context)
                self.assertEqual(report["close_code"], 1000, context)
                seen = origin.wait_for_event(start=origin_mark, event="request", path=LIVE_PATH)
                if seen["protocol"] == "h2":
                    self.assertEqual((seen["method"], seen["protocol_pseudo"]),
                                     ("CONNECT", "websocket"), seen)
                else:
                    self.assertEqual(seen["method"], "GET", seen)
                    self.assertEqual(seen["headers"].get("upgrade", "").lower(), "websocket")
                    self.assertEqual(seen["host"], "%s:%d" % (HOST, origin.port), seen)
                closed = origin.wait_for_event(start=origin_mark, event="ws-closed",
                                               path=LIVE_PATH)
                self.assertEqual(closed["messages_in"], 3, closed)
                record = wait_for_record(self.proxy, start=mark, event="request",
                                         path=LIVE_PATH, client_proto="h2",
                                         status=lambda s: s in ("101", "200"))
                self.assertEqual(record.get("category"), "live", record)
                sent = report["sent"]
                down = {"messages": 3, "bytes": sent["bytes"], "control_frames": 2,
                        "control_bytes": len("ping-h2") + 2 + len("bye")}
                self.assert_closed_record(mark, record["conn"], {
                    "messages": sent["messages"], "bytes": sent["bytes"],
                    "control_frames": sent["control_frames"],
                    "control_bytes": sent["control_bytes"]}, down, context)

    def test_origin_refusing_the_upgrade(self):
        # The origin answers a non-WebSocket path with 404: the client gets that 404, not a
        # broken tunnel, and no websocket-closed record follows.
        mark = log_mark(self.proxy)
        with self.assertRaises(wsclient.HandshakeRefused) as caught:
            self.wss("h1", "/not-a-socket")
        self.assertEqual(caught.exception.response.status, 404, self.proxy.context())
        wait_for_record(self.proxy, start=mark, event="request", path="/not-a-socket",
                        status="404")
        self.assertEqual(records_since(self.proxy, mark, event="websocket-closed"), [])


POLICY = """\
[policy]
name = "ws-test"
organisation = "tokgate websocket tests"
default_action = "allow"

[[rules]]
name = "block-live"
action = "block"
match = { category = ["live"] }
"""


class WebSocketPolicyTest(WebSocketCase):
    """Classified at the handshake: a policy that blocks LIVE answers the Upgrade with a 451."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.policy_path = cls.tmp / "ws-policy.toml"
        cls.policy_path.write_text(POLICY)

    def proxy_args(self):
        return policy_run_args(policy=self.policy_path, intercept=[HOST])

    def test_live_websocket_blocked_at_handshake(self):
        for label, connect, origin in (
                ("wss", lambda: self.wss("h1", LIVE_PATH), self.origins["h1"]),
                ("ws", lambda: self.ws(LIVE_PATH), self.origins["plain"])):
            with self.subTest(route=label):
                origin_mark = origin.mark()
                mark = log_mark(self.proxy)
                with self.assertRaises(wsclient.HandshakeRefused) as caught:
                    connect().close()
                response = caught.exception.response
                context = "%r%s" % (response, self.proxy.context())
                self.assertEqual(response.status, 451, context)
                self.assertEqual(response.headers.get("x-tokgate-rule"), "block-live", context)
                self.assertEqual(response.headers.get("x-tokgate-category"), "live", context)
                self.assertEqual(origin.requests(origin_mark), [], "the blocked Upgrade "
                                 "reached the origin")
                wait_for_record(self.proxy, start=mark, event="request", path=LIVE_PATH,
                                status="451", action="block", rule="block-live")
                # A WebSocket that is not LIVE still opens.
                with (self.wss("h1", WEB_PATH) if label == "wss" else self.ws(WEB_PATH)) as ws:
                    result = wsclient.echo_script(ws)
                self.assert_echoed(result, "%r%s" % (result.as_dict(), self.proxy.context()))


class WebSocketToolsSelfTest(IntegrationTestCase):
    """The echo origin and both clients on their own (no proxy): when these fail, the fault is
    in the test tools, not in tokgate."""

    start_origin = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.origins = {"h1": NodeOrigin(cls.pki, "h1"), "both": NodeOrigin(cls.pki, "both"),
                       "plain": NodeOrigin(cls.pki, plain=True)}
        for origin in cls.origins.values():
            cls.addClassCleanup(origin.stop)

    def test_direct_echo(self):
        for mode in ("h1", "both", "plain"):
            with self.subTest(origin=mode):
                origin = self.origins[mode]
                with wsclient.connect_direct("127.0.0.1", origin.port, LIVE_PATH,
                                             tls=mode != "plain", cafile=self.pki.ca_cert,
                                             servername=HOST) as ws:
                    result = wsclient.echo_script(ws)
                self.assertTrue(all(e["equal"] for e in result.echoes), result.as_dict())
                self.assertEqual(result.pong, b"ping-1234")
                self.assertEqual(result.close_code, 1000)
                self.assertTrue(result.closed_by_peer)
                closed = origin.wait_for_event(event="ws-closed", path=LIVE_PATH)
                self.assertEqual(closed["bytes_in"], result.bytes_sent, closed)

    def test_direct_extended_connect(self):
        origin = self.origins["both"]
        run = h2client({"connect": "127.0.0.1:%d" % origin.port, "servername": HOST,
                        "authority": "%s:%d" % (HOST, origin.port), "ca": str(self.pki.ca_cert),
                        "websocket": {"path": LIVE_PATH}}, self.scratch_dir("direct"))
        report = run.websocket
        self.assertIsNotNone(report, run.describe())
        self.assertEqual(report["status"], 200, run.describe())
        self.assertTrue(all(e["equal"] for e in report["echoes"]), run.describe())
        self.assertEqual(report["close_code"], 1000, run.describe())
        self.assertTrue(report["ended_after_close"], run.describe())
        self.assertEqual(report["sent"]["messages"], 3)


if __name__ == "__main__":
    unittest.main()
