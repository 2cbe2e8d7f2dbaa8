"""SIGTERM drains: the listener closes at once, in-flight requests finish, the process exits 0."""

import signal
import socket
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

from harness import IntegrationTestCase, curl, wait_until

SLOW_MS = 4000


def connection_refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


class DrainTest(IntegrationTestCase):

    def setUp(self):
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.addCleanup(self.pool.shutdown, wait=True)

    def start_proxy(self, name, drain="10s"):
        return self.start_tokgate(name, args=self.intercept_args("*.tiktok.com"),
                                  config_text='[timeouts]\ndrain = "%s"\n' % drain)

    def slow_requests(self, proxy, tag):
        """Starts one absolute-form and one intercepted /slow request; returns their futures once
        the origin has both."""
        start = self.origin.event_count()
        http_path = "/slow/%d?%s=http" % (SLOW_MS, tag)
        https_path = "/slow/%d?%s=https" % (SLOW_MS, tag)
        futures = [
            self.pool.submit(curl, "http://www.tiktok.com:%d%s" % (self.origin.http_port, http_path),
                             proxy=proxy.url, timeout=30),
            self.pool.submit(curl, "https://www.tiktok.com:%d%s" % (self.origin.https_port,
                                                                    https_path),
                             proxy=proxy.url, cacert=proxy.ca_pem, timeout=30),
        ]
        self.origin.wait_for_request(http_path, timeout=15, start=start)
        self.origin.wait_for_request(https_path, timeout=15, start=start)
        return futures

    def test_in_flight_requests_finish_after_sigterm(self):
        proxy = self.start_proxy("drain")
        futures = self.slow_requests(proxy, "drain")
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)

        # The listener closes at once, while the slow requests are still in flight.
        wait_until(lambda: connection_refused(proxy.port), timeout=SLOW_MS / 1000 - 1,
                   what="the listener to close after SIGTERM")
        self.assertIsNone(proxy.process.poll(), "exited before in-flight requests finished")

        for future in futures:
            result = future.result(timeout=40)
            context = result.describe() + proxy.context()
            self.assertEqual(result.returncode, 0, context)
            self.assertEqual(result.status, 200, context)
            self.assertEqual(result.body, b"slept %d ms\n" % SLOW_MS, context)
        finished = time.monotonic()
        self.assertGreaterEqual(finished - signalled, SLOW_MS / 1000 - 1.5)

        try:
            code = proxy.process.wait(timeout=5)
        except Exception:  # noqa: BLE001 - reported below with the log
            code = None
        self.assertEqual(code, 0, "exit status after drain" + proxy.context())

    def test_drain_timeout_bounds_the_wait(self):
        proxy = self.start_proxy("drain-timeout", drain="1s")
        futures = self.slow_requests(proxy, "cut")
        signalled = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        try:
            code = proxy.process.wait(timeout=10)
        except Exception:  # noqa: BLE001
            code = None
        elapsed = time.monotonic() - signalled
        self.assertEqual(code, 0, proxy.context())
        self.assertLess(elapsed, SLOW_MS / 1000 - 0.5,
                        "waited %.1fs, longer than the 1s drain timeout" % elapsed)
        for future in futures:
            result = future.result(timeout=40)
            self.assertNotEqual(result.status, 200, result.describe())

    def test_idle_proxy_exits_promptly(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=sig.name):
                proxy = self.start_proxy("idle-" + sig.name)
                started = time.monotonic()
                proxy.send_signal(sig)
                try:
                    code = proxy.process.wait(timeout=5)
                except Exception:  # noqa: BLE001
                    code = None
                self.assertEqual(code, 0, proxy.context())
                self.assertLess(time.monotonic() - started, 5)


if __name__ == "__main__":
    unittest.main()
