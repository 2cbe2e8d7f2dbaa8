"""Bring-your-own CA: an enterprise runs tokgate with an intermediate CA from its own PKI
(`--ca-cert FILE --ca-key FILE`). Clients trust only the enterprise root, so the proxy must send
the intermediate after each minted leaf; a CA key readable by others is refused at start."""

import subprocess
import unittest

from harness import (IntegrationTestCase, clean_env, curl, make_tempdir, remove_tree, run,
                     tokgate_binary)

_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[root_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[intermediate_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_enterprise_pki(root):
    """An enterprise root and an intermediate signed by it; returns (root.pem, chain.pem, key)."""
    cnf = root / "pki.cnf"
    cnf.write_text(_CNF)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-config", cnf, "-x509", "-new", *ec, "-keyout", root / "root.key",
         "-out", root / "root.pem", "-days", "3650", "-subj", "/O=Example Corp/CN=Example Root",
         "-extensions", "root_ca"])
    run(["openssl", "req", "-config", cnf, "-new", *ec, "-keyout", root / "intermediate.key",
         "-out", root / "intermediate.csr", "-subj", "/O=Example Corp/CN=Example Proxy CA"])
    run(["openssl", "x509", "-req", "-in", root / "intermediate.csr", "-CA", root / "root.pem",
         "-CAkey", root / "root.key", "-set_serial", "0x1234", "-days", "1000",
         "-extfile", cnf, "-extensions", "intermediate_ca", "-out", root / "intermediate.pem"])
    # The operator's file: the intermediate first, then the rest of its chain (here the root).
    chain = root / "chain.pem"
    chain.write_bytes((root / "intermediate.pem").read_bytes() + (root / "root.pem").read_bytes())
    key = root / "intermediate.key"
    key.chmod(0o600)
    return root / "root.pem", chain, key


class BringYourOwnCaTest(IntegrationTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.enterprise = make_tempdir("tokgate-byo-")
        cls.addClassCleanup(remove_tree, cls.enterprise)
        cls.root_pem, cls.chain_pem, cls.key = make_enterprise_pki(cls.enterprise)

    def test_client_trusting_only_the_root_accepts_the_minted_leaf(self):
        proxy = self.start_tokgate(args=self.intercept_args("*.tiktok.com") +
                                   ["--ca-cert", self.chain_pem, "--ca-key", self.key])
        url = "https://www.tiktok.com:%d/whoami" % self.origin.https_port
        result = curl(url, proxy=proxy.url, cacert=self.root_pem)
        self.assertEqual(result.returncode, 0, result.describe() + proxy.context())
        self.assertEqual(result.status, 200, result.describe())
        self.assertEqual(result.json()["sni"], "www.tiktok.com")

        # What the client received: leaf, then the intermediate; never the root.
        shown = subprocess.run(
            ["openssl", "s_client", "-proxy", "127.0.0.1:%d" % proxy.port,
             "-connect", "www.tiktok.com:%d" % self.origin.https_port,
             "-servername", "www.tiktok.com", "-CAfile", str(self.root_pem), "-showcerts",
             "-verify_return_error"],
            input=b"", capture_output=True, timeout=30, env=clean_env())
        text = shown.stdout.decode(errors="replace")
        self.assertIn("Verify return code: 0 (ok)", text, text + proxy.context())
        self.assertIn("CN = Example Proxy CA", text)
        self.assertEqual(text.count("-----BEGIN CERTIFICATE-----"), 2, text)

    def test_group_readable_key_is_refused_at_start(self):
        loose = self.scratch_dir("loose") / "intermediate.key"
        loose.write_bytes(self.key.read_bytes())
        loose.chmod(0o640)
        workdir = self.scratch_dir("loose-run")
        result = subprocess.run(
            [str(tokgate_binary()), "run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
             "--ca-cert", str(self.chain_pem), "--ca-key", str(loose)],
            capture_output=True, timeout=30, env=clean_env(), cwd=str(workdir))
        self.assertEqual(result.returncode, 1, result.stderr)
        stderr = result.stderr.decode(errors="replace")
        self.assertIn(str(loose), stderr)
        # The refusal must never quote the key.
        key_lines = [l for l in self.key.read_text().splitlines() if not l.startswith("-----")]
        for line in key_lines:
            self.assertNotIn(line, stderr)


if __name__ == "__main__":
    unittest.main()
