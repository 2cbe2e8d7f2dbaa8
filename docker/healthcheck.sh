#!/bin/bash
# healthcheck.sh [HOST:PORT]: exit 0 if tokgate's admin listener answers GET /healthz with 200.
#
# The image's HEALTHCHECK. The slim runtime image has no curl or wget, and installing curl for
# one GET would add a dozen libraries to every container; bash's /dev/tcp is already there.
# /healthz needs no credentials even when the admin listener has a token or a password.
# Default address: 127.0.0.1:8081 (the admin port, also reachable on 127.0.0.1 when it listens
# on 0.0.0.0). HEALTHCHECK_TIMEOUT (seconds, default 3) bounds the whole exchange.
set -u
address=${1:-127.0.0.1:8081}
host=${address%:*}
port=${address##*:}
host=${host#[}
host=${host%]}
timeout=${HEALTHCHECK_TIMEOUT:-3}

check() {
  exec 3<>"/dev/tcp/$host/$port" || exit 1
  printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$address" >&3
  local status_line
  IFS= read -r -t "$timeout" status_line <&3 || exit 1
  exec 3<&-
  [[ $status_line =~ ^HTTP/1\.[01]\ 200[\ $'\r'] ]] || {
    echo "unhealthy: ${status_line%$'\r'}" >&2
    exit 1
  }
}

# The connect itself is not covered by read -t: run the check in the background and give up
# after the timeout, so a black-holed port cannot hang the health check.
check &
pid=$!
for ((i = 0; i < timeout * 10; i++)); do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"
    exit $?
  fi
  sleep 0.1
done
kill "$pid" 2>/dev/null
echo "unhealthy: no answer from $address within ${timeout}s" >&2
exit 1
