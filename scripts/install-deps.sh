#!/usr/bin/env bash
# Installs the Debian 12 packages tokgate needs to build, run and test, skipping those present.
# Needs root (or sudo) and a reachable Debian archive.
set -euo pipefail

packages=(
  # build
  g++ cmake ninja-build ccache pkg-config
  libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev
  libssl-dev libnghttp2-dev libtomlplusplus-dev libmaxminddb-dev libgtest-dev
  zlib1g-dev libbrotli-dev libzstd-dev
  # run and test: real clients and tools on loopback
  ca-certificates openssl curl nghttp2-client python3
  # HTTP/2 and WebSocket tests: the test origin and h2 client (stdlib only, no npm)
  nodejs
  # flow evidence tests: .mmdb files built at test time, a key log checked with tshark
  libmaxmind-db-writer-perl tshark
  # web UI end-to-end tests: Debian's Chromium, driven by playwright-core from npm
  chromium
  # transparent gateway in network namespaces, HAProxy with the PROXY protocol, the lab files
  iproute2 nftables haproxy python3-yaml
  # the docker lab, validated without a Docker engine
  docker-compose shellcheck
  # the benchmark's origin (bench/compare.py; mitmproxy and squid-openssl for the full comparison)
  nginx-light
  # hardening: a TLS scanner against the intercepting side, slowloris / slow-read attacks
  testssl.sh slowhttptest
  # libFuzzer targets (tests/fuzz): clang with its fuzzer runtime
  clang-16 libclang-rt-16-dev
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
# npm comes with Node.js from some sources (NodeSource); Debian ships it apart.
command -v npm >/dev/null 2>&1 || missing+=(npm)

install_ui_test_packages() {
  # playwright-core, pinned by tests/ui/package-lock.json (no browser download: Debian's
  # Chromium is used).
  local ui
  ui="$(dirname "$0")/../tests/ui"
  if [[ -f $ui/package-lock.json && ! -d $ui/node_modules/playwright-core ]]; then
    echo "tokgate: installing the web UI test packages (npm ci)" >&2
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$ui" --no-audit --no-fund --loglevel=error
  fi
}

if ((${#missing[@]} == 0)); then
  install_ui_test_packages
  exit 0
fi
echo "tokgate: installing ${missing[*]}" >&2
sudo=()
if [[ $(id -u) != 0 ]]; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}"
install_ui_test_packages
