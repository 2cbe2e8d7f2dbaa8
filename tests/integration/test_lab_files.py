"""The docker lab, the gateway's nftables rules and the systemd unit, checked without a Docker
engine (none is needed, and none runs in CI).

- docker/compose.yaml: structure (services, profiles, builds, mounts, networks, the TikTok
  aliases, health checks, the wiring between services and their config files), and
  `docker compose config -q` / `docker-compose config -q` when a binary exists.
- docker/Dockerfile: stages, base images, the build and runtime package lists (against
  scripts/install-deps.sh and `ldd tokgate`), user, ports, volumes, health check, entrypoint;
  the build context it gets (Dockerfile.dockerignore) is enough to configure the build.
- Scripts: `bash -n` (and shellcheck when installed), `node --check`; the health check script
  against small servers on loopback.
- docker/lab/make-lab-pki.sh makes a CA and a leaf valid for every lab name (openssl verify).
- docker/lab/origin.mjs answers every lab name on loopback (curl --resolve).
- The lab itself on loopback: the real tokgate with the lab's configuration, the lab origin and
  docker/lab/client.sh, whose every request must end as the lab policy says; the admin token
  that Prometheus uses; the transparent and PROXY-protocol configurations; HAProxy with the
  lab's haproxy.cfg in front of tokgate (when haproxy is installed).
- nftables files: `nft -c -f` (needs CAP_NET_ADMIN: CI runs as root) and a real load, twice, in
  a throwaway network namespace; the gateway entrypoint's substitutions match the files.
- docker/systemd/tokgate.service: keys, and `systemd-analyze verify` when available.
- Relative links of docker/README.md and docs/deploy-gateway.md point at files that exist.

Optional tools are skipped with a message naming the Debian package that brings them.
"""

import configparser
import fnmatch
import http.client
import http.server
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from harness import clean_env, make_tempdir, remove_tree, wait_until  # noqa: E402

REPO = HERE.parent.parent
DOCKER = REPO / "docker"
LAB = DOCKER / "lab"
LAB_CONFIG = LAB / "config"
NFT_DIR = DOCKER / "nftables"
COMPOSE_FILE = DOCKER / "compose.yaml"

try:
    import yaml  # python3-yaml
except ImportError:  # pragma: no cover - depends on the machine
    yaml = None

NO_YAML = "PyYAML is missing: add python3-yaml to scripts/install-deps.sh"

DEFAULT_SERVICES = {"lab-pki", "ca-init", "origin", "tokgate", "client"}
PROFILE_SERVICES = {
    "transparent": {"tokgate-gw", "client-transparent"},
    "scale": {"tokgate-1", "tokgate-2", "tokgate-3", "haproxy", "prometheus", "client-scale"},
}
TOKGATE_SERVICES = {"tokgate", "tokgate-gw", "tokgate-1", "tokgate-2", "tokgate-3"}
REPLICAS = ("tokgate-1", "tokgate-2", "tokgate-3")
TIKTOK_NAMES = {"api16-normal-c-useast1a.tiktokv.com", "www.tiktok.com", "v16-webapp.tiktok.com",
                "analytics.tiktok.com", "mon.byteoversea.com"}
# Packages of the slim image's own that tokgate links (never listed in the Dockerfile).
SLIM_BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6"}
# Libraries of an instrumented build (TOKGATE_SANITIZE=ON), not of a release image.
SANITIZER_PACKAGE = re.compile(r"^lib(asan|ubsan|lsan|tsan)\d*$")


def run(cmd, timeout=60, env=None, cwd=None, check=False):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout,
                            env=env or clean_env(), cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError("command failed (%d): %s\nstdout: %s\nstderr: %s" % (
            result.returncode, " ".join(map(str, cmd)), result.stdout.decode(errors="replace")[-3000:],
            result.stderr.decode(errors="replace")[-3000:]))
    return result


def text_of(result):
    return (result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")).strip()


def lab_names():
    """LAB_NAMES of make-lab-pki.sh: every name the lab origin answers for."""
    text = (LAB / "make-lab-pki.sh").read_text()
    block = re.search(r"^LAB_NAMES=\((.*?)^\)", text, re.S | re.M)
    assert block, "LAB_NAMES=( ... ) not found in make-lab-pki.sh"
    names = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def load_toml(name):
    with open(LAB_CONFIG / name, "rb") as f:
        return tomllib.load(f)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tokgate_binary_or_skip(test):
    path = Path(os.environ.get("TOKGATE_BIN") or REPO / "build" / "tokgate")
    if not (path.is_file() and os.access(path, os.X_OK)):
        test.skipTest("no tokgate binary (set TOKGATE_BIN or build build/tokgate)")
    return path


# --- Dockerfile parsing -------------------------------------------------------------------------

def dockerfile_stages(path):
    """[(stage name, base image, [(INSTRUCTION, argument text)])], continuations joined."""
    lines = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not pending:
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            lines.append(line)
    stages = []
    args = {}
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
            continue
        if instruction == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append((name, image, []))
            continue
        stages[-1][2].append((instruction, rest.strip()))
    return stages


def apt_packages(instructions):
    """Package names given to `apt-get install` in a stage's RUN instructions."""
    packages = []
    for instruction, text in instructions:
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", text):
            words = command.split()
            if "apt-get" in words and "install" in words:
                start = words.index("install") + 1
                packages += [w for w in words[start:] if not w.startswith("-")
                             and "=" not in w]
    return packages


def install_deps_group(group):
    """The packages listed after `# <group>` in scripts/install-deps.sh, up to the next comment."""
    text = (REPO / "scripts" / "install-deps.sh").read_text()
    body = re.search(r"^packages=\((.*?)^\)", text, re.S | re.M).group(1)
    packages, current = {}, None
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("#"):
            current = line.lstrip("# ").split(":")[0].strip()
            packages[current] = []
        elif line and current:
            packages[current] += line.split()
    return packages.get(group, [])


def dockerignore_allows(patterns, path):
    """Docker's rule: the last pattern that matches decides; `!` patterns re-include."""
    allowed = True
    candidates = [path]
    parts = path.split("/")
    candidates += ["/".join(parts[:i]) for i in range(1, len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if any(fnmatch.fnmatchcase(c, body) for c in candidates):
            allowed = negate
    return allowed


def dockerignore_patterns(path):
    return [l.strip() for l in path.read_text().splitlines()
            if l.strip() and not l.strip().startswith("#")]


# --- compose helpers ---------------------------------------------------------------------------

def load_compose():
    with open(COMPOSE_FILE) as f:
        return yaml.safe_load(f)


def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def networks_of(service):
    networks = service.get("networks") or {}
    if isinstance(networks, list):
        return {name: {} for name in networks}
    return {name: (value or {}) for name, value in networks.items()}


def volume_entries(service):
    out = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((entry.get("source"), entry.get("target"), entry.get("type")))
        else:
            parts = entry.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else None, None))
    return out


@unittest.skipIf(yaml is None, NO_YAML)
class ComposeFileTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.compose = load_compose()
        cls.services = cls.compose["services"]

    def test_services_and_profiles(self):
        by_profile = {}
        for name, service in self.services.items():
            profiles = service.get("profiles") or []
            self.assertLessEqual(len(profiles), 1, name)
            by_profile.setdefault(profiles[0] if profiles else None, set()).add(name)
        self.assertEqual(by_profile.get(None), DEFAULT_SERVICES)
        for profile, expected in PROFILE_SERVICES.items():
            self.assertEqual(by_profile.get(profile), expected, profile)
        self.assertEqual(set(by_profile) - {None}, set(PROFILE_SERVICES))

    def test_every_service_has_an_image_or_a_build_that_exists(self):
        for name, service in self.services.items():
            with self.subTest(service=name):
                self.assertTrue(service.get("image") or service.get("build"))
                build = service.get("build")
                if not build:
                    continue
                context = (DOCKER / build["context"]).resolve()
                self.assertEqual(context, REPO, "the build context is the repository root")
                dockerfile = context / build.get("dockerfile", "Dockerfile")
                self.assertTrue(dockerfile.is_file(), dockerfile)
                if "target" in build:
                    stage_names = [s[0] for s in dockerfile_stages(dockerfile)]
                    self.assertIn(build["target"], stage_names)

    def test_bind_mounts_exist_and_named_volumes_are_declared(self):
        declared = set((self.compose.get("volumes") or {}).keys())
        used = set()
        for name, service in self.services.items():
            for source, target, _ in volume_entries(service):
                with self.subTest(service=name, source=source):
                    self.assertTrue(target and target.startswith("/"), target)
                    if source.startswith((".", "/")):
                        self.assertTrue((DOCKER / source).exists(),
                                        "%s mounts %s, which does not exist" % (name, source))
                    else:
                        self.assertIn(source, declared)
                        used.add(source)
        self.assertEqual(declared, used, "declared volumes nobody mounts")

    def test_tokgate_mounts_its_ca_and_config_dirs(self):
        for name in TOKGATE_SERVICES:
            with self.subTest(service=name):
                mounts = {t: s for s, t, _ in volume_entries(self.services[name])}
                self.assertEqual(mounts.get("/var/lib/tokgate/ca"), "tokgate-ca")
                self.assertEqual(mounts.get("/etc/tokgate"), "./lab/config")
                config = self.config_file_of(name)
                self.assertTrue((LAB_CONFIG / config).is_file(), config)

    def config_file_of(self, name):
        command = self.services[name].get("command") or []
        if "--config" in command:
            return Path(command[command.index("--config") + 1]).name
        return "tokgate.toml"  # the image's ENTRYPOINT

    def test_networks_and_addresses(self):
        declared = self.compose["networks"]
        subnets = {}
        for net, spec in declared.items():
            config = spec["ipam"]["config"][0]
            subnets[net] = (ipaddress.ip_network(config["subnet"]),
                            ipaddress.ip_network(config["ip_range"]))
            self.assertTrue(subnets[net][1].subnet_of(subnets[net][0]))
        seen = {}
        for name, service in self.services.items():
            if service.get("network_mode") == "none":
                self.assertNotIn("networks", service, name)
                continue
            networks = networks_of(service)
            self.assertTrue(networks, "%s is on no network" % name)
            for net, spec in networks.items():
                self.assertIn(net, declared, name)
                if "ipv4_address" in spec:
                    address = ipaddress.ip_address(spec["ipv4_address"])
                    subnet, dynamic = subnets[net]
                    self.assertIn(address, subnet, name)
                    self.assertNotIn(address, dynamic,
                                     "%s: fixed addresses must be outside ip_range" % name)
                    self.assertNotIn(address, seen, "%s and %s" % (name, seen.get(address)))
                    seen[address] = name

    def test_origin_answers_as_every_lab_name(self):
        origin = self.services["origin"]
        aliases = set(networks_of(origin)["internet"]["aliases"])
        self.assertTrue(TIKTOK_NAMES <= aliases)
        self.assertEqual(aliases, set(lab_names()) - {"origin", "localhost"},
                         "compose aliases and make-lab-pki.sh's LAB_NAMES must agree")
        # The transparent client resolves the same names to the lab's "public" address, which
        # the gateway's lab-internet.nft maps to the origin.
        origin_ip = networks_of(origin)["internet"]["ipv4_address"]
        internet = (LAB / "lab-internet.nft").read_text()
        public = re.search(r"(?m)^define PUBLIC = (\S+)$", internet).group(1)
        self.assertEqual(re.search(r"(?m)^define ORIGIN = (\S+)$", internet).group(1), origin_ip)
        hosts = {}
        for entry in self.services["client-transparent"]["extra_hosts"]:
            host, _, ip = entry.partition(":")
            hosts[host] = ip
        self.assertEqual(set(hosts), aliases)
        self.assertEqual(set(hosts.values()), {public})
        self.assertTrue(ipaddress.ip_address(public) in ipaddress.ip_network("203.0.113.0/24"),
                        "a documentation address, routed nowhere")
        gw = self.services["tokgate-gw"]
        self.assertEqual(env_of(gw)["EXTRA_NFT"], "/lab/lab-internet.nft")
        self.assertIn(("./lab", "/lab"), [(s, t) for s, t, _ in volume_entries(gw)])

    def test_depends_on(self):
        conditions = {"service_started", "service_healthy", "service_completed_successfully"}
        for name, service in self.services.items():
            depends = service.get("depends_on") or {}
            if isinstance(depends, list):
                depends = {d: {"condition": "service_started"} for d in depends}
            for other, spec in depends.items():
                with self.subTest(service=name, depends_on=other):
                    self.assertIn(other, self.services)
                    self.assertIn(spec["condition"], conditions)
                    if not self.services[name].get("profiles"):
                        self.assertFalse(self.services[other].get("profiles"),
                                         "a default service cannot wait for a profile's")
                    if spec["condition"] == "service_healthy":
                        health = self.services[other].get("healthcheck") or {}
                        self.assertTrue(health.get("test") and not health.get("disable"),
                                        "%s waits for %s to be healthy: it needs a healthcheck"
                                        % (name, other))

    def test_tokgate_health_checks_use_healthz_on_the_admin_port(self):
        for name in TOKGATE_SERVICES:
            with self.subTest(service=name):
                config = load_toml(self.config_file_of(name))
                test = self.services[name]["healthcheck"]["test"]
                self.assertEqual(test[0], "CMD")
                self.assertEqual(test[1], "/usr/local/bin/tokgate-healthcheck")
                self.assertEqual(port_of(test[2]), port_of(config["proxy"]["admin"]))
                self.assertTrue(test[2].startswith("127.0.0.1:"))
        self.assertTrue(self.services["origin"]["healthcheck"]["test"])

    def test_ports_are_published_on_loopback_only(self):
        for name, service in self.services.items():
            for port in service.get("ports") or []:
                with self.subTest(service=name, port=port):
                    self.assertTrue(str(port).startswith("127.0.0.1:"))

    def test_tokgate_containers_are_hardened(self):
        for name in TOKGATE_SERVICES:
            with self.subTest(service=name):
                service = self.services[name]
                self.assertEqual(service.get("cap_drop"), ["ALL"])
                self.assertIn("no-new-privileges:true", service.get("security_opt") or [])
                self.assertTrue(service.get("read_only"))
                self.assertGreaterEqual(int(str(service["stop_grace_period"]).rstrip("s")), 31,
                                        "longer than tokgate's default drain (30 s)")
        self.assertEqual(set(self.services["tokgate"].get("cap_add") or []), set())

    def test_every_lab_config_allows_the_lab_network(self):
        lan = ipaddress.ip_network(
            self.compose["networks"]["lan"]["ipam"]["config"][0]["subnet"])
        for name in TOKGATE_SERVICES:
            config = load_toml(self.config_file_of(name))
            allowed = [ipaddress.ip_network(c) for c in config["proxy"]["allowed_clients"]]
            with self.subTest(service=name):
                self.assertTrue(any(lan.subnet_of(a) for a in allowed if a.version == 4))
                self.assertNotIn(ipaddress.ip_network("0.0.0.0/0"), allowed)

    def test_explicit_client_wiring(self):
        client = env_of(self.services["client"])
        self.assertEqual(client["TOKGATE_PROXY"], "http://tokgate:%d"
                         % port_of(load_toml("tokgate.toml")["proxy"]["listen"][0]))
        self.assertIn("lan", networks_of(self.services["client"]))
        self.assertIn("lan", networks_of(self.services["tokgate"]))

    def test_transparent_profile_wiring(self):
        gw = self.services["tokgate-gw"]
        client = self.services["client-transparent"]
        config = load_toml(self.config_file_of("tokgate-gw"))
        self.assertEqual(gw["build"]["target"], "gateway")
        self.assertIn("NET_ADMIN", gw["cap_add"])
        gw_env = env_of(gw)
        lan = self.compose["networks"]["lan"]["ipam"]["config"][0]["subnet"]
        self.assertEqual(gw_env["LAN_CIDR"], lan)
        self.assertEqual(int(gw_env["TRANSPARENT_PORT"]),
                         port_of(config["proxy"]["transparent"][0]))
        gw_ip = networks_of(gw)["lan"]["ipv4_address"]
        client_env = env_of(client)
        self.assertEqual(client_env["TOKGATE_PROXY"], "", "the transparent client sets no proxy")
        self.assertEqual(client_env["LAB_GATEWAY"], gw_ip)
        self.assertEqual(client_env["CA_PROXY"],
                         "http://%s:%d" % (gw_ip, port_of(config["proxy"]["listen"][0])))
        self.assertIn("NET_ADMIN", client["cap_add"])
        self.assertEqual(set(networks_of(client)), {"lan"},
                         "the transparent client reaches the origins only through the gateway")
        mounts = {t: s for s, t, _ in volume_entries(gw)}
        self.assertEqual(mounts.get("/etc/tokgate-nftables"), "./nftables")

    def test_scale_profile_wiring(self):
        replica_config = load_toml(self.config_file_of("tokgate-1"))
        pp_port = port_of(replica_config["proxy"]["listen_proxy_protocol"][0])
        admin_port = port_of(replica_config["proxy"]["admin"])
        for name in REPLICAS:
            self.assertEqual(self.config_file_of(name), "replica.toml")
        # HAProxy: one server per replica, on the PROXY-protocol port, with send-proxy-v2.
        cfg = (DOCKER / "haproxy" / "haproxy.cfg").read_text()
        servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+)", cfg, re.M)
        self.assertEqual(servers, [(r, "%s:%d" % (r, pp_port)) for r in REPLICAS])
        self.assertRegex(cfg, r"(?m)^\s*default-server\s.*\bsend-proxy-v2\b")
        self.assertRegex(cfg, r"(?m)^\s*default-server\s.*\bcheck port %d\b" % admin_port)
        self.assertRegex(cfg, r"(?m)^\s*mode tcp$")
        haproxy = self.services["haproxy"]
        self.assertIn("./haproxy/haproxy.cfg", [s for s, _, _ in volume_entries(haproxy)])
        # Prometheus: scrapes each replica's admin port with the lab's bearer token.
        prometheus = self.services["prometheus"]
        mounts = {t: s for s, t, _ in volume_entries(prometheus)}
        with open(DOCKER / mounts["/etc/prometheus/prometheus.yml"]) as f:
            prom = yaml.safe_load(f)
        job = prom["scrape_configs"][0]
        self.assertEqual(job["metrics_path"], "/metrics")
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        self.assertEqual(targets, ["%s:%d" % (r, admin_port) for r in REPLICAS])
        auth = job["authorization"]
        self.assertEqual(auth.get("type", "Bearer"), "Bearer")
        token_file = mounts[auth["credentials_file"]]
        token = (DOCKER / token_file).read_text().strip()
        self.assertEqual(token, replica_config["admin"]["token"])
        self.assertGreaterEqual(len(token), 16)
        scale_client = env_of(self.services["client-scale"])
        self.assertEqual(scale_client["TOKGATE_PROXY"], "http://haproxy:8080")
        self.assertRegex(cfg, r"(?m)^\s*bind :8080$")

    def test_compose_cli_validates_the_file(self):
        """`docker compose config -q` (Compose v2) or Debian's docker-compose (v1.29)."""
        profiles = ["--profile", "transparent", "--profile", "scale"]
        docker = shutil.which("docker")
        if docker and run([docker, "compose", "version"], timeout=30).returncode == 0:
            result = run([docker, "compose", "-f", COMPOSE_FILE, *profiles, "config", "-q"],
                         timeout=60)
            self.assertEqual(result.returncode, 0, text_of(result))
            return
        legacy = shutil.which("docker-compose")
        if not legacy:
            self.skipTest("no `docker compose` nor docker-compose binary (Debian package "
                          "docker-compose) to validate compose.yaml with")
        version = text_of(run([legacy, "version", "--short"], timeout=30))
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "compose.yaml"
            text = COMPOSE_FILE.read_text()
            if version.startswith("1."):
                # Compose v1 predates the top-level `name` of the Compose spec; the rest of
                # the file is checked by its schema as it is.
                text = re.sub(r"(?m)^name: .*\n", "", text)
            path.write_text(text)
            result = run([legacy, "-f", path, "--project-directory", DOCKER, *profiles,
                          "config", "-q"], timeout=60)
        self.assertEqual(result.returncode, 0, text_of(result))


class LabConfigTest(unittest.TestCase):
    """The lab's tokgate configs (docker/lab/config/), as TOML."""

    def test_admin_listeners_have_credentials(self):
        for name in ("tokgate.toml", "gateway.toml", "replica.toml"):
            config = load_toml(name)
            with self.subTest(config=name):
                self.assertTrue(config["proxy"]["admin"].startswith("0.0.0.0:"))
                self.assertGreaterEqual(len(config["admin"]["token"]), 16)
                self.assertEqual(config["upstream"]["extra_ca"], ["/lab-pki/lab-ca.crt"])
                self.assertEqual(config["ca"]["dir"], "/var/lib/tokgate/ca")
                self.assertEqual(config["policy"]["file"], "policy.toml")
                # The token Prometheus sends (docker/prometheus/admin-token).
                self.assertEqual(config["admin"]["token"],
                                 (DOCKER / "prometheus" / "admin-token").read_text().strip())

    def test_lab_policy_checks(self):
        binary = tokgate_binary_or_skip(self)
        result = run([binary, "policy", "check", LAB_CONFIG / "policy.toml"])
        self.assertEqual(result.returncode, 0, text_of(result))


class DockerfileTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.stages = {name: (image, instructions)
                      for name, image, instructions in dockerfile_stages(DOCKER / "Dockerfile")}

    def instructions(self, stage, kind):
        return [text for instruction, text in self.stages[stage][1] if instruction == kind]

    def test_stages_and_base_images(self):
        self.assertEqual(list(self.stages), ["build", "runtime", "gateway"])
        self.assertEqual(self.stages["build"][0], "debian:bookworm")
        self.assertEqual(self.stages["runtime"][0], "debian:bookworm-slim")
        self.assertEqual(self.stages["gateway"][0], "runtime")

    def test_build_stage_has_the_build_packages_of_install_deps(self):
        # Minus ccache (one build, nothing to cache) and GoogleTest (no tests in the image).
        wanted = set(install_deps_group("build")) - {"ccache", "libgtest-dev"}
        self.assertTrue(wanted, "no '# build' group found in scripts/install-deps.sh")
        have = set(apt_packages(self.stages["build"][1]))
        self.assertEqual(wanted - have, set())
        self.assertNotIn("libgtest-dev", have, "tests are not built in the image")
        build = " ".join(self.instructions("build", "RUN"))
        for flag in ("-G Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DTOKGATE_TESTS=OFF"):
            self.assertIn(flag, build)

    def test_runtime_stage_installs_exactly_the_linked_libraries(self):
        listed = set(apt_packages(self.stages["runtime"][1]))
        self.assertIn("ca-certificates", listed, "upstream verification needs the system store")
        self.assertFalse({p for p in listed if p.endswith("-dev")})
        binary = tokgate_binary_or_skip(self)
        if not (shutil.which("ldd") and shutil.which("dpkg")):
            self.skipTest("ldd or dpkg missing")
        if os.environ.get("TOKGATE_SANITIZED") == "1":
            # The image ships the plain build; an ASan build links more (libasan, libubsan, and
            # Boost.Container, which --as-needed drops only from the plain link).
            self.skipTest("the runtime image's libraries are checked against the plain build")
        needed = set()
        for line in text_of(run(["ldd", binary], check=True)).splitlines():
            match = re.search(r"=>\s+(/\S+)", line)
            if not match:
                continue
            path = match.group(1)
            owner = None
            for candidate in (os.path.realpath(path), path):
                result = run(["dpkg", "-S", candidate])
                if result.returncode == 0:
                    owner = result.stdout.decode().split(":")[0].strip()
                    break
            self.assertIsNotNone(owner, "no package owns %s" % path)
            needed.add(owner)
        needed = {p for p in needed if not SANITIZER_PACKAGE.match(p)}
        self.assertEqual(needed - SLIM_BASE_PACKAGES - listed, set(),
                         "libraries tokgate links that the runtime image lacks")
        self.assertEqual(listed - needed - {"ca-certificates"}, set(),
                         "packages the runtime image installs that tokgate does not link")

    def test_runtime_user_ports_volumes_health_and_entrypoint(self):
        user = self.instructions("runtime", "USER")[-1]
        self.assertNotIn(user.split(":")[0], ("root", "0"))
        self.assertEqual(self.instructions("runtime", "EXPOSE"), ["8080 8081"])
        self.assertEqual(json.loads(self.instructions("runtime", "VOLUME")[0]),
                         ["/var/lib/tokgate/ca", "/etc/tokgate"])
        health = self.instructions("runtime", "HEALTHCHECK")[0]
        self.assertIn('CMD ["/usr/local/bin/tokgate-healthcheck", "127.0.0.1:8081"]', health)
        self.assertIn("docker/healthcheck.sh /usr/local/bin/tokgate-healthcheck",
                      " ".join(self.instructions("runtime", "COPY")))
        self.assertEqual(json.loads(self.instructions("runtime", "ENTRYPOINT")[0]),
                         ["/usr/local/bin/tokgate", "run", "--config", "/etc/tokgate/tokgate.toml"])
        # The user's uid must match what the tmpfs options and docs say.
        self.assertIn("--uid 10001", " ".join(self.instructions("runtime", "RUN")))

    def test_gateway_stage(self):
        self.assertEqual(set(apt_packages(self.stages["gateway"][1])), {"nftables", "iproute2"})
        entry = json.loads(self.instructions("gateway", "ENTRYPOINT")[0])
        self.assertEqual(entry[0], "/usr/local/bin/tokgate-gateway-entrypoint")
        self.assertEqual(entry[1:], ["--config", "/etc/tokgate/tokgate.toml"])

    def test_copied_files_exist_and_are_in_the_build_context(self):
        for dockerfile in (DOCKER / "Dockerfile", LAB / "Dockerfile"):
            ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
            patterns = dockerignore_patterns(ignore)
            for _, _, instructions in dockerfile_stages(dockerfile):
                for kind, text in instructions:
                    if kind != "COPY" or "--from=" in text:
                        continue
                    sources = [w for w in text.split() if not w.startswith("--")][:-1]
                    for source in sources:
                        with self.subTest(dockerfile=dockerfile.name, source=source):
                            self.assertTrue((REPO / source).exists(), source)
                            self.assertTrue(dockerignore_allows(patterns, source.rstrip("/")),
                                            "%s is excluded by %s" % (source, ignore.name))
        patterns = dockerignore_patterns(DOCKER / "Dockerfile.dockerignore")
        self.assertFalse(dockerignore_allows(patterns, "build/tokgate"))
        self.assertFalse(dockerignore_allows(patterns, ".git/config"))

    def test_build_context_is_enough_to_configure_the_build(self):
        """What Dockerfile.dockerignore lets through configures, and every input of the tokgate
        target is there (ninja -n)."""
        cmake, ninja = shutil.which("cmake"), shutil.which("ninja")
        if not (cmake and ninja):
            self.skipTest("cmake or ninja missing")
        patterns = dockerignore_patterns(DOCKER / "Dockerfile.dockerignore")
        scratch = make_tempdir("tokgate-ctx-")
        self.addCleanup(remove_tree, scratch)
        for source in ("CMakeLists.txt", "cmake", "certs", "policy", "proxy", "web-ui", "bench"):
            self.assertTrue(dockerignore_allows(patterns, source), source)
            target = scratch / source
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target)
            else:
                shutil.copy2(REPO / source, target)
        result = run([cmake, "-S", scratch, "-B", scratch / "build", "-G", "Ninja",
                      "-DCMAKE_BUILD_TYPE=Release", "-DTOKGATE_TESTS=OFF"], timeout=120)
        self.assertEqual(result.returncode, 0, text_of(result)[-3000:])
        result = run([ninja, "-C", scratch / "build", "-n", "tokgate"], timeout=60)
        self.assertEqual(result.returncode, 0, text_of(result)[-3000:])


class ScriptsTest(unittest.TestCase):
    def test_shell_scripts_parse(self):
        scripts = sorted(DOCKER.rglob("*.sh"))
        self.assertGreaterEqual(len(scripts), 4)
        for script in scripts:
            with self.subTest(script=script.name):
                result = run(["bash", "-n", script])
                self.assertEqual(result.returncode, 0, text_of(result))
                self.assertTrue(os.access(script, os.X_OK), "%s is not executable" % script)

    def test_shellcheck(self):
        shellcheck = shutil.which("shellcheck")
        if not shellcheck:
            self.skipTest("shellcheck not installed (Debian package shellcheck)")
        result = run([shellcheck, "-S", "warning", *sorted(DOCKER.rglob("*.sh"))])
        self.assertEqual(result.returncode, 0, text_of(result))

    def test_node_scripts_parse(self):
        node = shutil.which("node")
        if not node:
            self.skipTest("node not installed (Debian package nodejs)")
        for script in sorted(DOCKER.rglob("*.mjs")):
            with self.subTest(script=script.name):
                result = run([node, "--check", script])
                self.assertEqual(result.returncode, 0, text_of(result))


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        status = self.server.status
        if status is None:
            time.sleep(10)  # a server that accepts and never answers
            return
        self.send_response(status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class HealthcheckScriptTest(unittest.TestCase):
    """docker/healthcheck.sh: the image's HEALTHCHECK (bash /dev/tcp, no curl)."""

    def serve(self, status):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.status = status
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return "127.0.0.1:%d" % server.server_address[1]

    def check(self, address, timeout="3"):
        started = time.monotonic()
        result = run([DOCKER / "healthcheck.sh", address], timeout=30,
                     env=clean_env(HEALTHCHECK_TIMEOUT=timeout))
        return result.returncode, time.monotonic() - started

    def test_healthy(self):
        self.assertEqual(self.check(self.serve(200))[0], 0)

    def test_unhealthy_status(self):
        self.assertEqual(self.check(self.serve(503))[0], 1)

    def test_closed_port(self):
        sock, port = harness.closed_port()
        self.addCleanup(sock.close)
        self.assertEqual(self.check("127.0.0.1:%d" % port)[0], 1)

    def test_silent_server_times_out(self):
        code, elapsed = self.check(self.serve(None), timeout="1")
        self.assertEqual(code, 1)
        self.assertLess(elapsed, 5)


# --- the lab PKI and origin ---------------------------------------------------------------------

def make_lab_pki(directory, **env):
    return run([LAB / "make-lab-pki.sh", directory], timeout=60, env=clean_env(**env))


def fingerprint(path):
    return text_of(run(["openssl", "x509", "-in", path, "-noout", "-fingerprint", "-sha256"],
                       check=True))


class LabPkiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = make_tempdir("tokgate-labpki-")
        cls.addClassCleanup(remove_tree, cls.tmp)
        cls.pki = cls.tmp / "pki"
        result = make_lab_pki(cls.pki)
        assert result.returncode == 0, text_of(result)

    def openssl(self, *args):
        return run(["openssl", *args], check=True)

    def test_files_and_modes(self):
        for name, mode in (("lab-ca.crt", 0o644), ("origin.crt", 0o644),
                           ("lab-ca.key", 0o600), ("origin.key", 0o600)):
            with self.subTest(file=name):
                self.assertEqual((self.pki / name).stat().st_mode & 0o777, mode)

    def test_leaf_verifies_for_every_lab_name(self):
        for name in lab_names():
            with self.subTest(name=name):
                result = run(["openssl", "verify", "-purpose", "sslserver", "-verify_hostname",
                              name, "-CAfile", self.pki / "lab-ca.crt", self.pki / "origin.crt"])
                self.assertEqual(result.returncode, 0, text_of(result))
        result = run(["openssl", "verify", "-verify_hostname", "not-a-lab-name.example",
                      "-CAfile", self.pki / "lab-ca.crt", self.pki / "origin.crt"])
        self.assertNotEqual(result.returncode, 0)
        result = run(["openssl", "verify", "-verify_ip", "127.0.0.1",
                      "-CAfile", self.pki / "lab-ca.crt", self.pki / "origin.crt"])
        self.assertEqual(result.returncode, 0, text_of(result))

    def test_ca_is_a_ca_and_not_named_like_tokgate(self):
        text = text_of(self.openssl("x509", "-in", self.pki / "lab-ca.crt", "-noout", "-text"))
        self.assertIn("CA:TRUE", text)
        self.assertIn("Certificate Sign", text)
        subject = text_of(self.openssl("x509", "-in", self.pki / "lab-ca.crt", "-noout",
                                       "-subject"))
        # client.sh tells the two CAs apart by CN; tokgate's is "tokgate CA XXXXXXXX".
        self.assertNotIn("tokgate CA", subject)
        leaf = text_of(self.openssl("x509", "-in", self.pki / "origin.crt", "-noout", "-text"))
        self.assertIn("TLS Web Server Authentication", leaf)
        self.assertIn("CA:FALSE", leaf)
        # The key matches the certificate.
        cert_key = text_of(self.openssl("x509", "-in", self.pki / "origin.crt", "-noout",
                                        "-pubkey"))
        key_pub = text_of(self.openssl("pkey", "-in", self.pki / "origin.key", "-pubout"))
        self.assertEqual(cert_key, key_pub)

    def test_second_run_keeps_a_valid_pki_and_force_remakes_it(self):
        before = fingerprint(self.pki / "lab-ca.crt")
        result = make_lab_pki(self.pki)
        self.assertEqual(result.returncode, 0, text_of(result))
        self.assertIn("keeping", text_of(result))
        self.assertEqual(fingerprint(self.pki / "lab-ca.crt"), before)
        other = self.tmp / "forced"
        shutil.copytree(self.pki, other)
        result = make_lab_pki(other, FORCE="1")
        self.assertEqual(result.returncode, 0, text_of(result))
        self.assertNotEqual(fingerprint(other / "lab-ca.crt"), before)

    def test_a_broken_pki_is_remade(self):
        broken = self.tmp / "broken"
        shutil.copytree(self.pki, broken)
        (broken / "origin.crt").write_text("not a certificate\n")
        result = make_lab_pki(broken)
        self.assertEqual(result.returncode, 0, text_of(result))
        self.assertIn("made a new", text_of(result))
        run(["openssl", "verify", "-CAfile", broken / "lab-ca.crt", broken / "origin.crt"],
            check=True)


class LabOrigin:
    """docker/lab/origin.mjs on loopback with ephemeral ports."""

    def __init__(self, pki):
        self.process = subprocess.Popen(
            ["node", str(LAB / "origin.mjs"), "--cert", str(pki / "origin.crt"),
             "--key", str(pki / "origin.key"), "--host", "127.0.0.1",
             "--https-port", "0", "--http-port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=clean_env())
        try:
            self.events = harness.LineCollector(self.process.stdout, "lab-origin")
            ready = json.loads(self.events.wait_for(lambda l: '"ready"' in l, 20,
                                                    "lab origin ready"))
        except BaseException:
            self.stop()
            raise
        self.https_port = ready["https_port"]
        self.http_port = ready["http_port"]

    def stop(self):
        harness._stop_process(self.process, timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


def lab_fixture(test_class):
    """setUpClass helper: a temp dir, the lab PKI and the lab origin."""
    if not shutil.which("node"):
        raise unittest.SkipTest("node not installed (Debian package nodejs)")
    test_class.tmp = make_tempdir("tokgate-lab-")
    test_class.addClassCleanup(remove_tree, test_class.tmp)
    test_class.pki = test_class.tmp / "pki"
    result = make_lab_pki(test_class.pki)
    assert result.returncode == 0, text_of(result)
    test_class.origin = LabOrigin(test_class.pki)
    test_class.addClassCleanup(test_class.origin.stop)


class LabOriginTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        lab_fixture(cls)

    def test_answers_every_lab_name_over_https(self):
        port = self.origin.https_port
        for name in lab_names():
            for version in ("--http2", "--http1.1"):
                with self.subTest(name=name, version=version):
                    result = harness.curl("https://%s:%d/aweme/v1/feed/" % (name, port),
                                          cacert=self.pki / "lab-ca.crt",
                                          args=[version, "--resolve",
                                                "%s:%d:127.0.0.1" % (name, port)])
                    self.assertEqual(result.returncode, 0, result.describe())
                    self.assertEqual(result.status, 200)
                    self.assertEqual(result.header("x-lab-host"), name)
                    self.assertEqual(result.json()["lab"]["host"], name)

    def test_plain_http_and_content_types(self):
        port = self.origin.http_port
        for path, content_type in (("/", "text/html"), ("/i18n/pixel/events.js",
                                                         "application/javascript"),
                                   ("/video/x.mp4", "video/mp4"),
                                   ("/api/v1/x", "application/json")):
            with self.subTest(path=path):
                result = harness.curl("http://www.tiktok.com:%d%s" % (port, path),
                                      args=["--resolve", "www.tiktok.com:%d:127.0.0.1" % port])
                self.assertEqual(result.status, 200, result.describe())
                self.assertTrue(result.header("content-type").startswith(content_type))


# --- the lab on loopback: tokgate with the lab's config, the origin, client.sh ----------------

def adapted_config(name, workdir, pki):
    """A lab config with its container paths pointed at temp files, and the listeners that
    the command line cannot override (transparent, PROXY protocol) moved to loopback."""
    text = (LAB_CONFIG / name).read_text()
    replacements = {
        '"/lab-pki/lab-ca.crt"': json.dumps(str(pki / "lab-ca.crt")),
        '"/var/lib/tokgate/ca"': json.dumps(str(workdir / "ca")),
        '"/var/log/tokgate/flows.jsonl"': json.dumps(str(workdir / "flows.jsonl")),
    }
    for old, new in replacements.items():
        text = text.replace(old, new)
    text = re.sub(r'(?m)^(transparent|listen_proxy_protocol) = \[.*\]$',
                  r'\1 = ["127.0.0.1:0"]', text)
    for line in text.splitlines():
        if line.startswith(("transparent", "listen_proxy_protocol")):
            assert "0.0.0.0" not in line, line
    shutil.copy2(LAB_CONFIG / "policy.toml", workdir / "policy.toml")
    return text


def start_lab_tokgate(test, name, extra_args=()):
    """tokgate with docker/lab/config/NAME; skips when the binary lacks a key it uses."""
    tokgate_binary_or_skip(test)
    workdir = test.tmp / ("tokgate-" + name.replace(".toml", "") + "-" + test.id().rsplit(".")[-1])
    workdir.mkdir(parents=True)
    config = adapted_config(name, workdir, test.pki)
    # The flow log goes to a file whatever the config says (the replicas' stdout included).
    args = ["--resolve", "*:*:127.0.0.1", "--connect-ports", "1-65535",
            "--flow-log", str(workdir / "flows.jsonl"), *extra_args]
    proxy = harness.Tokgate(workdir, args, config_text=config, wait=False)
    test.addCleanup(proxy.stop, signal.SIGKILL)
    try:
        proxy.wait_listening()
    except AssertionError:
        log = proxy.log_tail()
        unknown = re.search(r"unknown key '(transparent|listen_proxy_protocol)'", log)
        if proxy.process.poll() is not None and unknown:
            test.skipTest("this tokgate does not know [proxy] %s yet" % unknown.group(1))
        raise AssertionError("tokgate did not start with %s%s" % (name, proxy.context()))
    # Every listener is logged before the admin one: wait for that one.
    harness.admin_address(proxy)
    proxy.flow_log = workdir / "flows.jsonl"
    return proxy


def listeners(proxy):
    """{mode: "ADDR:PORT"} from the `event=listening role=proxy` lines."""
    found = {}
    for line in proxy.log.snapshot():
        record = harness.parse_log_line(line)
        if record and record.get("event") == "listening" and record.get("role") == "proxy":
            found[record["mode"]] = record["address"]
    return found


def flow_records(path):
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def run_client(test, proxy_url, env=None):
    result = run([LAB / "client.sh"], timeout=120, env=clean_env(
        TOKGATE_PROXY=proxy_url, LAB_CA=str(test.pki / "lab-ca.crt"),
        LAB_HTTPS_PORT=str(test.origin.https_port), LAB_HTTP_PORT=str(test.origin.http_port),
        LAB_WAIT="20", **(env or {})))
    return result.returncode, text_of(result)


SUMMARY_LINE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(ok|UNEXPECTED|-)\s", re.M)
# What docker/lab/config/policy.toml does to each of client.sh's requests.
EXPECTED_OUTCOMES = {
    "app-api": "refused", "app-telemetry": "refused", "website": "blocked",
    "video-cdn": "refused", "pixel": "refused", "in-app-browser": "blocked",
    "normal-site": "decrypted", "exempt-site": "spliced", "plain-http": "blocked",
}


class LabOnLoopbackTest(unittest.TestCase):
    """The lab's services as processes on loopback, with the lab's own files."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        lab_fixture(cls)

    def assert_client_ok(self, code, output):
        outcomes = {m.group(1): m.group(2) for m in SUMMARY_LINE.finditer(output)
                    if m.group(1) != "id"}
        self.assertEqual(outcomes, EXPECTED_OUTCOMES, output[-4000:])
        self.assertEqual(code, 0, output[-4000:])
        self.assertIn("9 requests, 9 as expected, 0 unexpected", output)

    def test_explicit_lab(self):
        proxy = start_lab_tokgate(self, "tokgate.toml")
        code, output = run_client(self, proxy.url)
        self.assert_client_ok(code, output + proxy.context())
        self.assertIn("[tokgate CA]", output)
        self.assertIn("[lab CA (not tokgate)]", output)
        self.assertRegex(output, r"(?i)tokgate:\s+x-tokgate-category: in-app-browser")
        # The flow log holds what docker/README.md says it holds.
        records = wait_until(lambda: len(flow_records(proxy.flow_log)) >= 9 and
                             flow_records(proxy.flow_log), 10, "flow log records")
        by_host = {}
        for record in records:
            by_host.setdefault(record["host"], []).append(record)
        app = by_host["api16-normal-c-useast1a.tiktokv.com"][0]
        self.assertEqual((app["type"], app["action"], app["category"]),
                         ("connection", "refuse", "app-api"))
        webview = [r for r in by_host["news.example.org"] if r.get("status") == 451][0]
        self.assertEqual((webview["category"], webview["ua_class"], webview["rule"]),
                         ("in-app-browser", "tiktok-webview", "block-tiktok-pages"))
        bank = by_host["bank.example.org"][0]
        self.assertEqual((bank["verdict"], bank["bumped"]), ("splice", False))

    def test_admin_token_for_prometheus_and_open_healthz(self):
        proxy = start_lab_tokgate(self, "tokgate.toml")
        host, port = harness.admin_address(proxy)
        token = (DOCKER / "prometheus" / "admin-token").read_text().strip()

        def get(path, headers=None):
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()

        self.assertEqual(get("/metrics")[0], 401)
        status, body = get("/metrics", {"Authorization": "Bearer " + token})
        self.assertEqual(status, 200)
        self.assertIn(b"# TYPE tokgate_requests_total counter", body)
        self.assertEqual(get("/healthz")[0], 200)
        result = run([DOCKER / "healthcheck.sh", "%s:%d" % (host, port)], timeout=30)
        self.assertEqual(result.returncode, 0, text_of(result))

    def test_transparent_config(self):
        proxy = start_lab_tokgate(self, "gateway.toml")
        found = listeners(proxy)
        self.assertIn("transparent", found, proxy.context())
        self.assertIn("explicit", found)
        # The explicit port hands out the CA, as the transparent client expects.
        code, output = run_client(self, proxy.url)
        self.assert_client_ok(code, output + proxy.context())

    def test_replica_behind_haproxy_with_proxy_protocol(self):
        proxy = start_lab_tokgate(self, "replica.toml")
        found = listeners(proxy)
        self.assertIn("explicit+proxy-protocol", found, proxy.context())
        haproxy = shutil.which("haproxy")
        if not haproxy:
            self.skipTest("haproxy not installed (Debian package haproxy): the replica starts, "
                          "HAProxy in front of it is not tried")
        _, pp_port = harness.split_host_port(found["explicit+proxy-protocol"])
        _, admin_port = harness.admin_address(proxy)
        front = free_port()
        cfg = loopback_haproxy_cfg(front, pp_port, admin_port)
        cfg_path = self.tmp / ("haproxy-%d.cfg" % front)
        cfg_path.write_text(cfg)
        process = subprocess.Popen([haproxy, "-db", "-f", str(cfg_path)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=clean_env())
        self.addCleanup(harness._stop_process, process, signal.SIGTERM, 5)
        url = "http://127.0.0.1:%d" % front

        def through_haproxy():
            result = harness.curl("http://tokgate/ca.pem", proxy=url, timeout=5)
            return result.status == 200
        wait_until(through_haproxy, 20, "tokgate answering through HAProxy", interval=0.2)
        code, output = run_client(self, url)
        self.assert_client_ok(code, output + proxy.context())
        # The PROXY header carried the real client: one from 127.0.0.2 shows as 127.0.0.2.
        mark = len(flow_records(proxy.flow_log))
        result = harness.curl("http://www.tiktok.com:%d/via-haproxy" % self.origin.http_port,
                              proxy=url, interface="127.0.0.2")
        if result.returncode == 45:  # cannot bind 127.0.0.2 here
            return
        self.assertEqual(result.status, 451, result.describe())
        record = wait_until(lambda: [r for r in flow_records(proxy.flow_log)[mark:]
                                     if r.get("path") == "/via-haproxy"], 10, "the flow")[0]
        self.assertEqual(record["client_ip"], "127.0.0.2")


# --- the transparent profile in network namespaces ---------------------------------------------

NS_CLIENT4, NS_GW_LAN4 = "10.78.1.2", "10.78.1.1"
NS_GW_WAN4, NS_ORIGIN4 = "10.78.2.1", "10.78.2.2"
NS_CLIENT6, NS_GW_LAN6 = "fd78:1::2", "fd78:1::1"
NS_GW_WAN6, NS_ORIGIN6 = "fd78:2::1", "fd78:2::2"
NS_LAN = "10.78.1.0/24"


def ip_cmd(*args, check=True):
    return run(["ip", *args], timeout=30, check=check)


def in_ns(ns, *cmd, check=True, env=None, timeout=60, input=None):  # noqa: A002
    full = ["ip", "netns", "exec", ns, *[str(c) for c in cmd]]
    result = subprocess.run(full, capture_output=True, timeout=timeout, env=env or clean_env(),
                            input=input)
    if check and result.returncode != 0:
        raise AssertionError("failed in %s (%d): %s\n%s" % (ns, result.returncode,
                                                          " ".join(full), text_of(result)))
    return result


class LabTransparentGatewayTest(unittest.TestCase):
    """The lab's transparent profile without Docker: three network namespaces made here
    (client | gateway | origin, joined by veth pairs), and in the gateway namespace
    docker/gateway-entrypoint.sh itself: it finds the LAN interface from LAN_CIDR, loads
    docker/nftables/tokgate-gateway.nft and block-quic.nft as shipped, drops to an unprivileged
    user and runs tokgate with docker/lab/config/gateway.toml. The client runs
    docker/lab/client.sh with no proxy, its default route via the gateway."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        for tool in ("ip", "nft", "setpriv", "node"):
            if not shutil.which(tool):
                raise unittest.SkipTest("%s is not installed" % tool)
        if os.geteuid() != 0:
            raise unittest.SkipTest("network namespaces need root")
        binary = Path(os.environ.get("TOKGATE_BIN") or REPO / "build" / "tokgate")
        if not binary.is_file():
            raise unittest.SkipTest("no tokgate binary (set TOKGATE_BIN)")
        help_text = text_of(run([binary, "run", "--help"]))
        if "--transparent" not in help_text:
            raise unittest.SkipTest("this tokgate has no transparent listener yet")
        cls.tmp = make_tempdir("tokgate-labgw-")
        cls.addClassCleanup(remove_tree, cls.tmp)
        # tokgate runs as nobody: everything it reads must be world-readable, its own files
        # nobody's. A copy of the binary, as the build tree may be unreadable to others.
        cls.tmp.chmod(0o755)
        cls.pki = cls.tmp / "pki"
        result = make_lab_pki(cls.pki)
        assert result.returncode == 0, text_of(result)
        cls.work = cls.tmp / "gw"
        cls.work.mkdir()
        cls.binary = cls.work / "tokgate"
        shutil.copy2(binary, cls.binary)
        config = adapted_config("gateway.toml", cls.work, cls.pki)
        (cls.work / "tokgate.toml").write_text(config)
        import pwd
        nobody = pwd.getpwnam("nobody")
        for path in [cls.work, *cls.work.iterdir()]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        cls.flow_log = cls.work / "flows.jsonl"
        suffix = os.urandom(3).hex()
        cls.c, cls.g, cls.o = ("tl%s-%s" % (role, suffix) for role in ("c", "g", "o"))
        for ns in (cls.c, cls.g, cls.o):
            result = ip_cmd("netns", "add", ns, check=False)
            if result.returncode != 0:
                raise unittest.SkipTest("cannot create network namespaces here: %s"
                                        % text_of(result)[:200])
            cls.addClassCleanup(ip_cmd, "netns", "del", ns, check=False)
        cls.build_network()
        cls.start_origin()
        cls.start_gateway()

    @classmethod
    def build_network(cls):
        c, g, o = cls.c, cls.g, cls.o
        ip_cmd("-n", g, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
               "netns", c)
        ip_cmd("-n", g, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0",
               "netns", o)
        for ns, dev, addresses in ((c, "eth0", [NS_CLIENT4 + "/24", NS_CLIENT6 + "/64"]),
                                   (g, "lan0", [NS_GW_LAN4 + "/24", NS_GW_LAN6 + "/64"]),
                                   (g, "wan0", [NS_GW_WAN4 + "/24", NS_GW_WAN6 + "/64"]),
                                   (o, "eth0", [NS_ORIGIN4 + "/24", NS_ORIGIN6 + "/64"])):
            for address in addresses:
                extra = ["nodad"] if ":" in address else []
                ip_cmd("-n", ns, "addr", "add", address, "dev", dev, *extra)
            ip_cmd("-n", ns, "link", "set", dev, "up")
        for ns in (c, g, o):
            ip_cmd("-n", ns, "link", "set", "lo", "up")
        ip_cmd("-n", c, "route", "add", "default", "via", NS_GW_LAN4)
        ip_cmd("-n", c, "-6", "route", "add", "default", "via", NS_GW_LAN6)
        ip_cmd("-n", o, "route", "add", "default", "via", NS_GW_WAN4)
        ip_cmd("-n", o, "-6", "route", "add", "default", "via", NS_GW_WAN6)
        in_ns(g, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        in_ns(g, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    @classmethod
    def start_origin(cls):
        cmd = ["ip", "netns", "exec", cls.o, "node", str(LAB / "origin.mjs"),
               "--cert", str(cls.pki / "origin.crt"), "--key", str(cls.pki / "origin.key"),
               "--host", "::", "--https-port", "443", "--http-port", "80"]
        cls.origin = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=clean_env())
        cls.addClassCleanup(cls.stop, cls.origin)
        cls.origin_log = harness.LineCollector(cls.origin.stdout, "ns-origin")
        cls.origin_log.wait_for(lambda l: '"ready"' in l, 20, "lab origin ready")

    @classmethod
    def start_gateway(cls):
        env = clean_env(LAN_CIDR=NS_LAN, TRANSPARENT_PORT="8443", TOKGATE_NFT_DIR=str(NFT_DIR),
                        TOKGATE_USER="nobody", TOKGATE_BIN=str(cls.binary))
        cmd = ["ip", "netns", "exec", cls.g, str(DOCKER / "gateway-entrypoint.sh"),
               "--config", str(cls.work / "tokgate.toml"),
               "--allow-client", NS_LAN, "--allow-client", "fd78:1::/64",
               "--transparent", "0.0.0.0:8443", "--transparent", "[::]:8443",
               "--flow-log", str(cls.flow_log)]
        cls.gateway = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, env=env, cwd=str(cls.work))
        cls.addClassCleanup(cls.stop, cls.gateway)
        cls.gateway_log = harness.LineCollector(cls.gateway.stdout, "ns-gateway")

        def admin_listening(line):
            record = harness.parse_log_line(line)
            return record and record.get("event") == "listening" and record.get("role") == "admin"
        try:
            cls.gateway_log.wait_for(admin_listening, 20, "tokgate listening in the gateway")
        except AssertionError:
            raise AssertionError("the gateway did not start:\n%s"
                                 % "\n".join(cls.gateway_log.snapshot()[-40:]))

    @staticmethod
    def stop(process):
        harness._stop_process(process, timeout=10)
        if process.stdout:
            process.stdout.close()

    def gateway_context(self):
        return "\n--- gateway log:\n" + "\n".join(self.gateway_log.snapshot()[-40:])

    def test_entrypoint_loaded_the_rules_and_dropped_privileges(self):
        log = "\n".join(self.gateway_log.snapshot())
        self.assertIn("TCP 80/443 arriving on lan0 -> tokgate's transparent port 8443", log)
        self.assertIn("forwarded UDP/443 (QUIC) rejected", log)
        ruleset = text_of(in_ns(self.g, "nft", "list", "ruleset"))
        self.assertIn('iifname != "lan0" return', ruleset)
        self.assertIn('meta skuid "nobody" return', ruleset.replace("65534", '"nobody"'))
        status = Path("/proc/%d/status" % self.gateway.pid).read_text()
        uids = re.search(r"(?m)^Uid:\s+(.*)$", status).group(1).split()
        self.assertEqual(set(uids), {"65534"}, status)
        for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            self.assertEqual(int(re.search(r"(?m)^%s:\s+(\S+)$" % field, status).group(1), 16),
                             0, field)
        self.assertRegex(status, r"(?m)^NoNewPrivs:\s+1$")

    def test_client_through_the_gateway(self):
        result = in_ns(self.c, LAB / "client.sh", check=False, timeout=120, env=clean_env(
            TOKGATE_PROXY="", CA_PROXY="http://%s:8080" % NS_GW_LAN4,
            LAB_CA=str(self.pki / "lab-ca.crt"), LAB_RESOLVE_TO=NS_ORIGIN4, LAB_WAIT="20"))
        output = text_of(result)
        outcomes = {m.group(1): m.group(2) for m in SUMMARY_LINE.finditer(output)
                    if m.group(1) != "id"}
        self.assertEqual(outcomes, EXPECTED_OUTCOMES, output[-4000:] + self.gateway_context())
        self.assertEqual(result.returncode, 0, output[-4000:])
        self.assertIn("client: summary (transparent)", output)
        self.assertIn("cut during the TLS handshake", output)
        records = wait_until(lambda: [r for r in flow_records(self.flow_log)
                                      if r.get("mode") == "transparent"], 10, "flow records")
        self.assertTrue(all(r.get("client_ip") == NS_CLIENT4 for r in records), records)
        hosts = {r.get("host") for r in records}
        self.assertTrue({"www.tiktok.com", "news.example.org", "bank.example.org",
                         "api16-normal-c-useast1a.tiktokv.com"} <= hosts, hosts)
        counter = text_of(in_ns(self.g, "nft", "list", "chain", "inet", "tokgate_gateway",
                                "prerouting"))
        self.assertRegex(counter, r"counter packets [1-9]")

    def test_ipv6_is_redirected_too(self):
        result = in_ns(self.c, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                       "--max-time", "15", "-k", "--resolve", "www.tiktok.com:443:[%s]"
                       % NS_ORIGIN6, "https://www.tiktok.com/@v6", check=False)
        self.assertEqual(result.stdout.decode(), "451", text_of(result) + self.gateway_context())

    def test_quic_is_rejected_at_the_gateway(self):
        before = text_of(in_ns(self.g, "nft", "list", "table", "inet", "tokgate_block_quic"))
        probe = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                 "s.settimeout(5); s.connect(('%s', 443)); s.send(b'quic?')\n"
                 "try:\n    s.recv(10); print('answered')\n"
                 "except ConnectionRefusedError:\n    print('refused')\n"
                 "except socket.timeout:\n    print('timeout')" % NS_ORIGIN4)
        result = in_ns(self.c, sys.executable, "-c", probe, check=False)
        self.assertEqual(result.stdout.decode().strip(), "refused", text_of(result))
        after = text_of(in_ns(self.g, "nft", "list", "table", "inet", "tokgate_block_quic"))
        count = lambda text: int(re.search(r"counter packets (\d+)", text).group(1))  # noqa: E731
        self.assertGreater(count(after), count(before), after)


def loopback_haproxy_cfg(front_port, proxy_protocol_port, admin_port):
    """docker/haproxy/haproxy.cfg with its Docker names and ports moved to loopback; every
    other line (send-proxy-v2, the /readyz check, timeouts) as shipped."""
    cfg = (DOCKER / "haproxy" / "haproxy.cfg").read_text()
    out = []
    section = None
    for line in cfg.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace():
            section = stripped
        if section and section.startswith(("resolvers", "frontend stats")):
            continue
        if stripped.startswith("bind :8080"):
            line = "    bind 127.0.0.1:%d" % front_port
        elif stripped.startswith("server "):
            name = stripped.split()[1]
            line = "    server %s 127.0.0.1:%d" % (name, proxy_protocol_port)
        elif stripped.startswith("default-server"):
            line = re.sub(r"check port \d+", "check port %d" % admin_port, line)
        out.append(line)
    text = "\n".join(out) + "\n"
    assert "send-proxy-v2" in text and "127.0.0.1:%d" % proxy_protocol_port in text
    return text


# --- HAProxy, nftables, systemd ------------------------------------------------------------------

class HaproxyConfigTest(unittest.TestCase):
    def test_haproxy_accepts_the_config(self):
        haproxy = shutil.which("haproxy")
        if not haproxy:
            self.skipTest("haproxy not installed (Debian package haproxy)")
        # As shipped, but with init-addr none: no DNS lookup of the Docker names here.
        cfg = (DOCKER / "haproxy" / "haproxy.cfg").read_text()
        self.assertIn("init-addr last,libc,none", cfg)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "haproxy.cfg"
            path.write_text(cfg.replace("init-addr last,libc,none", "init-addr none"))
            result = run([haproxy, "-c", "-f", path], timeout=30)
        self.assertEqual(result.returncode, 0, text_of(result))
        self.assertNotIn("[ALERT]", text_of(result))


NFT_FILES = {"tokgate-gateway.nft": NFT_DIR, "tokgate-gateway-tproxy.nft": NFT_DIR,
             "block-quic.nft": NFT_DIR, "lab-internet.nft": LAB}


def nft_text(name):
    """The file as shipped; TOKGATE_USER falls back to root where no user tokgate exists (nft
    resolves the name when it loads the file)."""
    text = (NFT_FILES[name] / name).read_text()
    try:
        import pwd
        pwd.getpwnam("tokgate")
    except KeyError:
        text = text.replace('define TOKGATE_USER = "tokgate"', 'define TOKGATE_USER = "root"')
    return text


class NftablesTest(unittest.TestCase):
    def test_files_cover_both_families_and_the_loop_guard(self):
        gateway = (NFT_DIR / "tokgate-gateway.nft").read_text()
        self.assertRegex(gateway, r"(?m)^table inet tokgate_gateway \{")
        self.assertRegex(gateway, r"(?m)^\s*iifname != \$LAN_IF return$")
        self.assertRegex(gateway, r"tcp dport \{ 80, 443 \} .*redirect to :\$TRANSPARENT_PORT")
        self.assertRegex(gateway, r"meta skuid \$TOKGATE_USER return")
        tproxy = (NFT_DIR / "tokgate-gateway-tproxy.nft").read_text()
        self.assertRegex(tproxy, r"tproxy to :\$TRANSPARENT_PORT")
        self.assertIn("ip -6 rule  add fwmark", tproxy)
        quic = (NFT_DIR / "block-quic.nft").read_text()
        self.assertRegex(quic, r"udp dport @quic_ports .*reject")
        self.assertIn("HTTP/3", quic)
        # The lab's transparent port is the files' default.
        port = port_of(load_toml("gateway.toml")["proxy"]["transparent"][0])
        for text in (gateway, tproxy):
            self.assertIn("define TRANSPARENT_PORT = %d" % port, text)

    def test_gateway_entrypoint_substitutions_match_the_file(self):
        entry = (DOCKER / "gateway-entrypoint.sh").read_text()
        gateway = (NFT_DIR / "tokgate-gateway.nft").read_text()
        for define in ("LAN_IF", "TRANSPARENT_PORT", "TOKGATE_USER"):
            self.assertIn("s|^define %s = .*|" % define, entry)
            self.assertRegex(gateway, r"(?m)^define %s = " % define)
        for name in ("tokgate-gateway.nft", "block-quic.nft"):
            self.assertIn("$nft_dir/%s" % name, entry)

    def nft_or_skip(self):
        nft = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft")
                                           if os.access(p, os.X_OK)), None)
        if not nft:
            self.skipTest("nft not installed (Debian package nftables)")
        probe = run([nft, "list", "tables"], timeout=10)
        if probe.returncode != 0:
            self.skipTest("nft cannot run here (needs root / CAP_NET_ADMIN): %s"
                          % text_of(probe)[:200])
        return nft

    def test_nft_check(self):
        nft = self.nft_or_skip()
        for name in NFT_FILES:
            with self.subTest(file=name):
                result = subprocess.run([nft, "-c", "-f", "/dev/stdin"],
                                        input=nft_text(name).encode(), capture_output=True,
                                        timeout=30, env=clean_env())
                self.assertEqual(result.returncode, 0, text_of(result))

    def test_load_twice_in_a_throwaway_network_namespace(self):
        """A real load (not only a check), twice: the files replace their own table."""
        nft = self.nft_or_skip()
        unshare = shutil.which("unshare")
        if not unshare or run([unshare, "-n", "true"], timeout=10).returncode != 0:
            self.skipTest("cannot create a network namespace here")
        scratch = make_tempdir("tokgate-nft-")
        self.addCleanup(remove_tree, scratch)
        script = ["set -e"]
        for name in NFT_FILES:
            (scratch / name).write_text(nft_text(name))
            script += ["%s -f %s" % (nft, scratch / name)] * 2
        script.append("%s list ruleset" % nft)
        result = run([unshare, "-n", "sh", "-c", "\n".join(script)], timeout=30)
        self.assertEqual(result.returncode, 0, text_of(result))
        ruleset = text_of(result)
        for table in ("inet tokgate_gateway", "inet tokgate_tproxy", "inet tokgate_block_quic",
                      "ip tokgate_lab_internet"):
            self.assertEqual(ruleset.count("table %s {" % table), 1, ruleset)


class SystemdUnitTest(unittest.TestCase):
    UNIT = DOCKER / "systemd" / "tokgate.service"

    def test_keys(self):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read(self.UNIT)
        service = parser["Service"]
        self.assertEqual(service["User"], "tokgate")
        self.assertNotIn("DynamicUser", service)
        self.assertTrue(service["ExecStart"].endswith(
            "tokgate run --config /etc/tokgate/tokgate.toml"))
        self.assertIn("-HUP", service["ExecReload"])
        self.assertEqual(service["CapabilityBoundingSet"], "")
        self.assertEqual(service["AmbientCapabilities"], "")
        self.assertEqual(service["NoNewPrivileges"], "yes")
        self.assertEqual(service["ProtectSystem"], "strict")
        self.assertEqual(service["StateDirectory"], "tokgate")
        self.assertGreater(int(service["TimeoutStopSec"].rstrip("s")), 30)
        self.assertIn("CAP_NET_ADMIN", self.UNIT.read_text(), "the TPROXY variant is explained")
        self.assertEqual(parser["Install"]["WantedBy"], "multi-user.target")

    def test_systemd_analyze_verify(self):
        analyze = shutil.which("systemd-analyze")
        if not analyze:
            self.skipTest("systemd-analyze not installed (Debian package systemd)")
        scratch = make_tempdir("tokgate-unit-")
        self.addCleanup(remove_tree, scratch)
        # verify wants the binary to exist: point it at one that does.
        unit = scratch / "tokgate.service"
        unit.write_text(self.UNIT.read_text().replace("/usr/local/bin/tokgate", "/bin/true"))
        result = run([analyze, "verify", unit], timeout=60)
        if result.returncode != 0 and "Failed to" in text_of(result) and "tokgate.service" \
                not in text_of(result):
            self.skipTest("systemd-analyze cannot run here: %s" % text_of(result)[:300])
        self.assertEqual(result.returncode, 0, text_of(result))
        security = run([analyze, "security", "--offline=true", unit], timeout=60)
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", text_of(security))
        if match:
            self.assertLess(float(match.group(1)), 3.0, text_of(security)[-2000:])


class DocsLinksTest(unittest.TestCase):
    DOCS = (DOCKER / "README.md", REPO / "docs" / "deploy-gateway.md")

    def test_relative_links_point_at_files(self):
        for doc in self.DOCS:
            self.assertTrue(doc.is_file(), doc)
            text = doc.read_text()
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
                if re.match(r"^[a-z]+:", target):
                    continue
                with self.subTest(doc=doc.name, link=target):
                    self.assertTrue((doc.parent / target).exists(), target)

    def test_files_named_in_code_spans_exist(self):
        for doc in self.DOCS:
            text = doc.read_text()
            for path in set(re.findall(r"`((?:docker|docs|scripts|tests)/[^`\s]+)`", text)):
                with self.subTest(doc=doc.name, path=path):
                    self.assertTrue((REPO / path).exists(), path)


if __name__ == "__main__":
    unittest.main()
