#!/usr/bin/env bash
# Installs what is missing, builds tokgate, and runs it on its embedded default config:
# explicit proxy on 127.0.0.1:8080, admin on 127.0.0.1:8081, a CA created on first run.
# Extra arguments go to `tokgate run` (see `build/tokgate run --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target tokgate
exec build/tokgate run "$@"
