"""The command line: `tokgate ca ...`, `--help`, config errors and exit statuses."""

import re
import stat
import subprocess
import unittest

from harness import IntegrationTestCase, cert_info, clean_env, run, tokgate_binary

FINGERPRINT = re.compile(r"\b([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31})\b")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def tokgate(*args, timeout=30):
    """Runs the binary to completion. A command that should exit but serves instead is killed at
    the timeout and reported as such."""
    cmd = [str(tokgate_binary())] + [str(a) for a in args]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, env=clean_env(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as expired:
        raise AssertionError("`%s` did not exit within %ds; stderr: %s" % (
            " ".join(cmd), timeout, (expired.stderr or b"").decode(errors="replace")[-2000:]))


def describe(result):
    return "exit %d\nstdout: %s\nstderr: %s" % (
        result.returncode, result.stdout.decode(errors="replace")[-2000:],
        result.stderr.decode(errors="replace")[-2000:])


class CaCommandTest(IntegrationTestCase):
    start_origin = False

    def init_ca(self, name):
        ca_dir = self.tmp / name
        result = tokgate("ca", "init", "--dir", ca_dir)
        self.assertEqual(result.returncode, EXIT_OK, describe(result))
        return ca_dir

    def test_init_creates_ca_with_private_key_mode_0600(self):
        ca_dir = self.init_ca("init")
        self.assertTrue((ca_dir / "ca.pem").is_file())
        key_mode = stat.S_IMODE((ca_dir / "ca.key").stat().st_mode)
        self.assertEqual(key_mode, 0o600, oct(key_mode))
        text = run(["openssl", "x509", "-in", ca_dir / "ca.pem", "-noout", "-ext",
                    "basicConstraints"]).stdout.decode()
        self.assertIn("CA:TRUE", text)
        key = run(["openssl", "pkey", "-in", ca_dir / "ca.key", "-noout"], check=False)
        self.assertEqual(key.returncode, 0, key.stderr)

    def test_init_twice_keeps_the_existing_ca(self):
        ca_dir = self.init_ca("twice")
        before = cert_info(path=ca_dir / "ca.pem")["fingerprint"]
        tokgate("ca", "init", "--dir", ca_dir)  # refusing (exit 1) or a no-op are both fine
        self.assertEqual(cert_info(path=ca_dir / "ca.pem")["fingerprint"], before,
                         "a second `ca init` replaced the CA")

    def test_show_prints_subject_fingerprint_and_validity(self):
        ca_dir = self.init_ca("show")
        info = cert_info(path=ca_dir / "ca.pem")
        result = tokgate("ca", "show", "--dir", ca_dir)
        self.assertEqual(result.returncode, EXIT_OK, describe(result))
        out = result.stdout.decode()
        fingerprints = [f.upper() for f in FINGERPRINT.findall(out)]
        self.assertEqual(fingerprints, [info["fingerprint"]], out)
        common_name = re.search(r"CN=([^,]+)", info["subject"]).group(1)
        self.assertIn(common_name, out)
        self.assertRegex(out, r"(?i)not ?before")
        self.assertRegex(out, r"(?i)not ?after")

    def test_show_with_explicit_cert_and_key(self):
        ca_dir = self.init_ca("explicit")
        result = tokgate("ca", "show", "--ca-cert", ca_dir / "ca.pem", "--ca-key", ca_dir / "ca.key")
        self.assertEqual(result.returncode, EXIT_OK, describe(result))
        self.assertIn(cert_info(path=ca_dir / "ca.pem")["fingerprint"],
                      result.stdout.decode().upper())

    def test_export_pem_and_der(self):
        ca_dir = self.init_ca("export")
        shown = FINGERPRINT.findall(tokgate("ca", "show", "--dir", ca_dir).stdout.decode())
        self.assertEqual(len(shown), 1)
        shown = shown[0].upper()

        pem = tokgate("ca", "export", "--dir", ca_dir, "--format", "pem")
        self.assertEqual(pem.returncode, EXIT_OK, describe(pem))
        self.assertIn(b"-----BEGIN CERTIFICATE-----", pem.stdout)
        self.assertNotIn(b"PRIVATE KEY", pem.stdout)
        self.assertEqual(cert_info(pem=pem.stdout)["fingerprint"], shown)

        der_file = self.tmp / "export" / "ca.der"
        der = tokgate("ca", "export", "--dir", ca_dir, "--format", "der", "--out", der_file)
        self.assertEqual(der.returncode, EXIT_OK, describe(der))
        self.assertEqual(cert_info(path=der_file, inform="DER")["fingerprint"], shown)

        der_stdout = tokgate("ca", "export", "--dir", ca_dir, "--format", "der")
        self.assertEqual(der_stdout.returncode, EXIT_OK, describe(der_stdout))
        self.assertEqual(der_stdout.stdout, der_file.read_bytes())

        pem_file = self.tmp / "export" / "ca-out.pem"
        result = tokgate("ca", "export", "--dir", ca_dir, "--format", "pem", "--out", pem_file)
        self.assertEqual(result.returncode, EXIT_OK, describe(result))
        self.assertEqual(cert_info(path=pem_file)["fingerprint"], shown)

    def test_show_without_a_ca_fails(self):
        empty = self.tmp / "empty"
        empty.mkdir()
        result = tokgate("ca", "show", "--dir", empty)
        self.assertEqual(result.returncode, EXIT_FAILURE, describe(result))
        self.assertTrue(result.stderr.strip(), "no error message")

    def test_export_bad_format_is_usage_error(self):
        ca_dir = self.init_ca("badformat")
        result = tokgate("ca", "export", "--dir", ca_dir, "--format", "pkcs99")
        self.assertEqual(result.returncode, EXIT_USAGE, describe(result))

    def test_run_creates_ca_in_ca_dir(self):
        proxy = self.start_tokgate("run-creates", args=["--connect-ports", "1-65535"])
        self.assertTrue(proxy.ca_pem.is_file(), proxy.context())
        key_mode = stat.S_IMODE((proxy.ca_dir / "ca.key").stat().st_mode)
        self.assertEqual(key_mode, 0o600, oct(key_mode))
        self.assertEqual(proxy.stop(), 0, proxy.context())


class HelpAndUsageTest(unittest.TestCase):

    def test_help(self):
        for args in (["--help"], ["run", "--help"]):
            with self.subTest(args=args):
                result = tokgate(*args)
                self.assertEqual(result.returncode, EXIT_OK, describe(result))
                self.assertTrue(result.stdout.strip(), "help goes to stdout")
        self.assertIn(b"--listen", tokgate("run", "--help").stdout)
        self.assertIn(b"run", tokgate("--help").stdout)

    def test_unknown_option_is_usage_error(self):
        result = tokgate("run", "--no-such-option")
        self.assertEqual(result.returncode, EXIT_USAGE, describe(result))
        self.assertTrue(result.stderr.strip())

    def test_unknown_subcommand_is_usage_error(self):
        result = tokgate("frobnicate")
        self.assertEqual(result.returncode, EXIT_USAGE, describe(result))


class ConfigErrorTest(IntegrationTestCase):
    start_origin = False

    def run_config(self, name, text):
        path = self.tmp / name
        path.write_text(text)
        result = tokgate("run", "--config", path, "--listen", "127.0.0.1:0", "--admin",
                         "127.0.0.1:0", "--ca-dir", self.tmp / (name + "-ca"), timeout=20)
        return path, result

    def test_unknown_key_is_reported_with_position(self):
        path, result = self.run_config("unknown-key.toml",
                                       '[timeouts]\nidle = "5s"\nresponse_hedaer = "1s"\n')
        self.assertEqual(result.returncode, EXIT_USAGE, describe(result))
        self.assertRegex(result.stderr.decode(), re.escape(str(path)) + r":3:\d+: ")
        self.assertIn("response_hedaer", result.stderr.decode())

    def test_unknown_section_is_reported(self):
        path, result = self.run_config("unknown-section.toml", '\n[intercpet]\nhosts = ["x"]\n')
        self.assertEqual(result.returncode, EXIT_USAGE, describe(result))
        self.assertRegex(result.stderr.decode(), re.escape(str(path)) + r":2:\d+: ")

    def test_every_error_is_reported(self):
        path, result = self.run_config(
            "two-errors.toml", '[timeouts]\nbogus_one = "1s"\n[limits]\nbogus_two = "1KiB"\n')
        self.assertEqual(result.returncode, EXIT_USAGE, describe(result))
        stderr = result.stderr.decode()
        self.assertRegex(stderr, re.escape(str(path)) + r":2:\d+: ")
        self.assertRegex(stderr, re.escape(str(path)) + r":4:\d+: ")

    def test_bad_duration_is_reported_with_position(self):
        path, result = self.run_config("bad-duration.toml", '[timeouts]\nidle = "soon"\n')
        self.assertEqual(result.returncode, EXIT_USAGE, describe(result))
        self.assertRegex(result.stderr.decode(), re.escape(str(path)) + r":2:\d+: ")

    def test_toml_syntax_error_is_reported_with_position(self):
        path, result = self.run_config("syntax.toml", '[timeouts]\nidle = "5s\n')
        self.assertEqual(result.returncode, EXIT_USAGE, describe(result))
        self.assertRegex(result.stderr.decode(), re.escape(str(path)) + r":2:\d+: ")

    def test_valid_config_runs(self):
        proxy = self.start_tokgate("valid", args=["--connect-ports", "1-65535"], config_text=(
            '[timeouts]\nidle = "5s"\nresponse_header = "2s"\n'
            '[limits]\nrequest_header = "64KiB"\n'
            '[intercept]\nhosts = ["*.tiktok.com"]\nrefuse = ["refused.test"]\n'))
        self.assertIsNotNone(proxy.port)
        self.assertEqual(proxy.stop(), 0, proxy.context())


if __name__ == "__main__":
    unittest.main()
