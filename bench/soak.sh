#!/usr/bin/env bash
# The long soak, outside CI: tests/integration/test_soak.py for SECONDS seconds (default 600)
# against one tokgate binary. Steady mixed load (HTTP/1.1 keep-alive and new connections,
# HTTP/2, plain HTTP), connections abandoned at every stage, a policy reload every 3 s (one of
# them invalid). Prints requests done, errors by kind, reloads, and tokgate's RSS and open
# descriptors sampled every second; fails on any error, on RSS growth after the warm-up, or on
# descriptors or connections not coming back.
#
# Usage:
#   bench/soak.sh [SECONDS]                          # build/tokgate of this tree
#   TOKGATE_BIN=/path/to/tokgate bench/soak.sh 3600  # another binary, one hour
#
# Needs what the integration tests need (python3, curl, node, openssl: scripts/install-deps.sh).
# A binary built with -DTOKGATE_SANITIZE=ON: set TOKGATE_SANITIZED=1 (the RSS bound is then not
# checked: ASan's quarantine keeps freed memory on purpose).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-600}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 [SECONDS]   (a whole number of seconds, got '$seconds')" >&2; exit 2 ;;
esac
bin="${TOKGATE_BIN:-$root/build/tokgate}"
if [[ ! -x "$bin" ]]; then
  echo "$0: no tokgate binary at $bin (build it, or set TOKGATE_BIN)" >&2
  exit 2
fi
cd "$root/tests/integration"
echo "soak: $seconds s against $bin" >&2
TOKGATE_BIN="$bin" TOKGATE_SOAK_SECONDS="$seconds" PYTHONDONTWRITEBYTECODE=1 \
  exec python3 -m unittest -v test_soak
