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
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "tokgate: installing ${missing[*]}" >&2
sudo=()
if [[ $(id -u) != 0 ]]; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}"
