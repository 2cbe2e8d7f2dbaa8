"""Evasions a client might try against request rules: encoded paths, dot segments, doubled
slashes, and a Host header that differs from the SNI (domain fronting). The policy must see
through each; the request itself is forwarded as the client sent it."""

import unittest

from harness import IntegrationTestCase, curl

POLICY = """
[policy]
name = "evasion"
default_action = "allow"
[[rules]]
name = "block-feed"
action = "block"
match = { path = ["/whoami/aweme/*"] }
[[rules]]
name = "block-web"
action = "block"
match = { category = ["web"] }
"""


class EvasionTest(IntegrationTestCase):

    def setUp(self):
        policy = self.scratch_dir(self.id().rsplit(".", 1)[-1]) / "policy.toml"
        policy.write_text(POLICY)
        self.proxy = self.start_tokgate(args=[
            "--resolve", "*:*:127.0.0.1", "--upstream-ca", self.pki.ca_cert,
            "--connect-ports", "1-65535", "--policy", policy, "--intercept", "example.org"])

    def get(self, path, host="example.org", headers=()):
        url = "https://%s:%d%s" % (host, self.origin.https_port, path)
        return curl(url, proxy=self.proxy.url, cacert=self.proxy.ca_pem, headers=headers,
                    args=["--path-as-is"])

    def test_encoded_and_dotted_paths_are_normalized_for_the_policy(self):
        self.assertEqual(self.get("/whoami/other").status, 200)
        for path in ("/whoami/aweme/v1/feed", "/whoami/%61weme/v1/feed",
                     "/whoami/x/../aweme/v1/feed", "/whoami//aweme/v1/feed",
                     "/whoami/./aweme/v1/feed", "/whoami%2Faweme/v1/feed",
                     # found by the http_request fuzz target: dot segments next to "//"
                     "/.//whoami/aweme/v1/feed", "/..//whoami/aweme/v1/feed",
                     "/a/../../whoami/aweme/v1/feed", "/whoami/.//aweme/v1/feed",
                     "/whoami/aweme/./v1/../v1/feed"):
            with self.subTest(path=path):
                result = self.get(path)
                self.assertEqual(result.status, 451, result.describe() + self.proxy.context())
                self.assertEqual(result.header("x-tokgate-rule"), "block-feed")

    def test_host_header_fronting_is_classified_by_host(self):
        # SNI example.org (not a target), Host www.tiktok.com: the origin would act on the Host.
        result = self.get("/whoami", headers=["Host: www.tiktok.com"])
        self.assertEqual(result.status, 451, result.describe() + self.proxy.context())
        self.assertEqual(result.header("x-tokgate-category"), "web")


if __name__ == "__main__":
    unittest.main()
