"""Bodies cross the proxy byte for byte, both ways, whatever their framing: through
interception (CONNECT + TLS on both sides), through absolute-form http://, and spliced."""

import unittest

from harness import (MiB, IntegrationTestCase, curl, pattern_sha256, sha256_file,
                     write_pattern_file)

SIZES = (0, 1024, 64 * MiB)
TRANSFER_TIMEOUT = 90


class BodyIntegrityTest(IntegrationTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.upload_files = {}
        for n in SIZES:
            cls.upload_files[n] = write_pattern_file(cls.tmp / ("upload-%d.bin" % n), n)

    def setUp(self):
        self.proxy = self.start_tokgate(args=self.intercept_args("*.tiktok.com"))

    def routes(self):
        """(label, base URL, CA file the client trusts)."""
        return {
            "intercepted": ("https://www.tiktok.com:%d" % self.origin.https_port,
                            self.proxy.ca_pem),
            "absolute-form": ("http://www.tiktok.com:%d" % self.origin.http_port, None),
            "spliced": ("https://splice.test:%d" % self.origin.https_port, self.pki.ca_cert),
        }

    def check_downloads(self, route):
        base, cacert = self.routes()[route]
        out = self.scratch_dir("downloads-" + route) / "body"
        for n in SIZES:
            for kind in ("bytes", "chunked"):
                with self.subTest(route=route, kind=kind, n=n):
                    result = curl("%s/%s/%d" % (base, kind, n), proxy=self.proxy.url,
                                  cacert=cacert, output=out, timeout=TRANSFER_TIMEOUT)
                    context = result.describe() + self.proxy.context()
                    self.assertEqual(result.returncode, 0, context)
                    self.assertEqual(result.status, 200, context)
                    self.assertEqual(out.stat().st_size, n, context)
                    self.assertEqual(sha256_file(out), pattern_sha256(n), context)
                    self.assertEqual(result.header("x-sha256"), pattern_sha256(n), context)
                    if kind == "bytes":
                        self.assertEqual(result.header("content-length"), str(n), context)

    def check_uploads(self, route):
        base, cacert = self.routes()[route]
        for n in SIZES:
            for chunked in (False, True):
                with self.subTest(route=route, chunked=chunked, n=n):
                    headers = ["Content-Type: application/octet-stream"]
                    if chunked:
                        headers.append("Transfer-Encoding: chunked")
                    result = curl(base + "/sha256", proxy=self.proxy.url, cacert=cacert,
                                  method="PUT" if chunked else "POST", headers=headers,
                                  data_file=self.upload_files[n], timeout=TRANSFER_TIMEOUT)
                    context = result.describe() + self.proxy.context()
                    self.assertEqual(result.returncode, 0, context)
                    self.assertEqual(result.status, 200, context)
                    seen = result.json()
                    self.assertEqual(seen["length"], n, context)
                    self.assertEqual(seen["sha256"], pattern_sha256(n), context)

    def test_download_intercepted(self):
        self.check_downloads("intercepted")

    def test_download_absolute_form(self):
        self.check_downloads("absolute-form")

    def test_download_spliced(self):
        self.check_downloads("spliced")

    def test_upload_intercepted(self):
        self.check_uploads("intercepted")

    def test_upload_absolute_form(self):
        self.check_uploads("absolute-form")

    def test_upload_spliced(self):
        self.check_uploads("spliced")


if __name__ == "__main__":
    unittest.main()
