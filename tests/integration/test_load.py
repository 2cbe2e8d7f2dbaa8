"""Many requests: 200 sequential on one reused client connection, and 50 concurrent clients."""

import subprocess
import unittest
from concurrent.futures import ThreadPoolExecutor

from harness import IntegrationTestCase, clean_env, curl, pattern_sha256

SEQUENTIAL = 200
CONCURRENT = 50
BODY = 1000


class LoadTest(IntegrationTestCase):

    def setUp(self):
        self.proxy = self.start_tokgate(args=self.intercept_args("*.tiktok.com"))

    def run_sequential(self, base, cacert, name):
        """One curl process, SEQUENTIAL transfers; curl reuses its connection to the proxy (or
        its tunnel) when the proxy keeps it alive."""
        config = self.scratch_dir(name) / "urls.curlrc"
        with open(config, "w") as f:
            for i in range(SEQUENTIAL):
                f.write('url = "%s/bytes/%d?i=%d"\noutput = "/dev/null"\n' % (base, BODY, i))
        cmd = ["curl", "-q", "-sS", "--max-time", "120", "--proxy", self.proxy.url,
               "-w", "%{http_code} %{num_connects} %{size_download}\\n", "-K", str(config)]
        if cacert:
            cmd += ["--cacert", str(cacert)]
        result = subprocess.run(cmd, capture_output=True, timeout=150, env=clean_env())
        context = "curl exit %d: %s%s" % (result.returncode, result.stderr.decode()[-1000:],
                                          self.proxy.context())
        self.assertEqual(result.returncode, 0, context)
        lines = result.stdout.decode().split()
        rows = [lines[i:i + 3] for i in range(0, len(lines), 3)]
        self.assertEqual(len(rows), SEQUENTIAL, context)
        statuses = [row[0] for row in rows]
        self.assertEqual(statuses, ["200"] * SEQUENTIAL, context)
        self.assertEqual({row[2] for row in rows}, {str(BODY)}, context)
        connects = sum(int(row[1]) for row in rows)
        self.assertEqual(connects, 1, "client connections opened for %d requests: %d%s"
                         % (SEQUENTIAL, connects, context))

    def test_sequential_intercepted_on_one_connection(self):
        self.run_sequential("https://www.tiktok.com:%d" % self.origin.https_port,
                            self.proxy.ca_pem, "seq-intercepted")

    def test_sequential_absolute_form_on_one_connection(self):
        self.run_sequential("http://www.tiktok.com:%d" % self.origin.http_port, None,
                            "seq-absolute")

    def test_concurrent_clients(self):
        def one(i):
            if i % 2:
                url = "https://www.tiktok.com:%d/bytes/%d?c=%d" % (self.origin.https_port, BODY, i)
                return curl(url, proxy=self.proxy.url, cacert=self.proxy.ca_pem, timeout=60)
            url = "http://www.tiktok.com:%d/bytes/%d?c=%d" % (self.origin.http_port, BODY, i)
            return curl(url, proxy=self.proxy.url, timeout=60)

        with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
            results = list(pool.map(one, range(CONCURRENT)))
        failures = [r.describe() for r in results
                    if r.returncode != 0 or r.status != 200 or len(r.body) != BODY]
        self.assertFalse(failures, "%d of %d failed:\n%s%s" % (
            len(failures), CONCURRENT, "\n".join(failures[:5]), self.proxy.context()))
        for r in results:
            self.assertEqual(r.header("x-sha256"), pattern_sha256(BODY))


if __name__ == "__main__":
    unittest.main()
