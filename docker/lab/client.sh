#!/usr/bin/env bash
# client.sh: the lab's client. Scripted curl requests through tokgate, as the TikTok app, as
# TikTok's in-app browser and as an ordinary browser, printing for each what happened: the HTTP
# status, who issued the certificate the client saw (the tokgate CA = tokgate decrypted the
# connection; the lab CA = tokgate spliced it, byte for byte), and tokgate's X-Tokgate-* headers.
#
# Environment (the defaults suit the compose lab's `client` service):
#   TOKGATE_PROXY   explicit proxy URL (default http://tokgate:8080); empty = transparent: no
#                   proxy is configured, the network's gateway intercepts (profile transparent)
#   CA_PROXY        proxy through which to fetch the tokgate CA from tokgate's reserved name
#                   http://tokgate/ca.pem, as a phone would (default: TOKGATE_PROXY)
#   LAB_CA          the lab origin's CA (default /lab-pki/lab-ca.crt), trusted for spliced sites
#   LAB_GATEWAY     if set, route everything via this address first (needs CAP_NET_ADMIN)
#   LAB_HTTPS_PORT, LAB_HTTP_PORT   the origin's ports (443 and 80; the loopback test changes them)
#   LAB_RESOLVE_TO  if set, every lab name resolves to this address (curl --resolve) instead of
#                   through DNS or /etc/hosts (transparent mode only: an explicit proxy resolves)
#   LAB_EXPECT      "lab" (default): compare each outcome with what docker/lab/config/policy.toml
#                   should give and exit 1 on any difference; "none": only print
#   LAB_WAIT        seconds to wait for tokgate to hand out its CA (default 60)
#   LAB_REPEAT      run the requests this many times (default 1), LAB_PAUSE seconds apart
#                   (default 5): keeps a scrape target busy in the scale profile
set -uo pipefail

TOKGATE_PROXY=${TOKGATE_PROXY-http://tokgate:8080}
CA_PROXY=${CA_PROXY:-$TOKGATE_PROXY}
LAB_CA=${LAB_CA:-/lab-pki/lab-ca.crt}
LAB_GATEWAY=${LAB_GATEWAY:-}
LAB_HTTPS_PORT=${LAB_HTTPS_PORT:-443}
LAB_HTTP_PORT=${LAB_HTTP_PORT:-80}
LAB_RESOLVE_TO=${LAB_RESOLVE_TO:-}
LAB_EXPECT=${LAB_EXPECT:-lab}
LAB_WAIT=${LAB_WAIT:-60}
LAB_REPEAT=${LAB_REPEAT:-1}
LAB_PAUSE=${LAB_PAUSE:-5}

APP_UA='com.zhiliaoapp.musically/2023501030 (Linux; U; Android 13; en_US; Pixel 7; Build/TQ3A.230805.001; Cronet/TTNetVersion:5f9540f0 2023-06-06 QuicVersion:8d7d2ad6 2023-05-04)'
WEBVIEW_UA='Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36 trill_2023501030 JsSdk/1.0 NetType/WIFI Channel/googleplay AppName/trill app_version/30.5.1 ByteLocale/en ByteFullLocale/en Region/US BytedanceWebview/d8a21c6'
BROWSER_UA='Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
HTML='text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8'
JSON='application/json'

# id | what | method | URL | User-Agent | Accept | expected outcome under the lab policy
SCENARIOS=(
  "app-api|app API call (TikTok app)|GET|https://api16-normal-c-useast1a.tiktokv.com/aweme/v1/feed/?count=6&aid=1233|APP|JSON|refused"
  "app-telemetry|app telemetry upload (TikTok app)|POST|https://mon.byteoversea.com/monitor_browser/collect/batch/|APP|JSON|refused"
  "website|TikTok website (ordinary browser)|GET|https://www.tiktok.com/@scout2015|BROWSER|HTML|blocked"
  "video-cdn|TikTok video CDN (ordinary browser)|GET|https://v16-webapp.tiktok.com/video/tos/useast2a/lab.mp4|BROWSER|HTML|refused"
  "pixel|TikTok Pixel on a third-party page|GET|https://analytics.tiktok.com/i18n/pixel/events.js|BROWSER|HTML|refused"
  "in-app-browser|third-party page in TikTok's in-app browser|GET|https://news.example.org/2026/12/story.html|WEBVIEW|HTML|blocked"
  "normal-site|the same page in an ordinary browser|GET|https://news.example.org/2026/12/story.html|BROWSER|HTML|decrypted"
  "exempt-site|an exempt site (policy: never decrypt)|GET|https://bank.example.org/login|BROWSER|HTML|spliced"
  "plain-http|TikTok website over plain HTTP|GET|http://www.tiktok.com/|BROWSER|HTML|blocked"
)

say() { printf '%s\n' "$*"; }
die() {
  say "client: $*" >&2
  exit 2
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -n $LAB_GATEWAY ]]; then
  ip route replace default via "$LAB_GATEWAY" || die "cannot route via $LAB_GATEWAY (CAP_NET_ADMIN?)"
  say "client: default route via the gateway $LAB_GATEWAY (transparent: no proxy configured)"
fi
[[ -r $LAB_CA ]] || die "cannot read the lab CA $LAB_CA"

# 1. The tokgate CA, from the reserved name http://tokgate/ca.pem served through the proxy.
[[ -n $CA_PROXY ]] || die "set CA_PROXY (or TOKGATE_PROXY) to fetch the tokgate CA"
deadline=$((SECONDS + LAB_WAIT))
until curl -fsS --max-time 5 --proxy "$CA_PROXY" -o "$work/tokgate-ca.pem" http://tokgate/ca.pem 2>/dev/null; do
  ((SECONDS < deadline)) || die "no CA from $CA_PROXY (http://tokgate/ca.pem) after ${LAB_WAIT}s"
  sleep 1
done
cn_of() { sed -n 's/.*CN *= *\([^,;/]*\).*/\1/p' <<<"$1" | head -n1; }
tokgate_cn=$(cn_of "$(openssl x509 -in "$work/tokgate-ca.pem" -noout -subject)")
lab_cn=$(cn_of "$(openssl x509 -in "$LAB_CA" -noout -subject)")
say "client: tokgate CA \"$tokgate_cn\" $(openssl x509 -in "$work/tokgate-ca.pem" -noout -fingerprint -sha256 | cut -d= -f2)"
say "client: lab origin CA \"$lab_cn\" (the lab's stand-in for a public CA)"
# The client trusts both, as a managed device would: the tokgate CA (installed by the
# organisation) and the public CAs (here the lab CA).
cat "$work/tokgate-ca.pem" "$LAB_CA" >"$work/trust.pem"

with_port() { # URL -> URL with the lab's port when it is not the default one
  local url=$1 scheme rest host path
  scheme=${url%%://*}
  rest=${url#*://}
  host=${rest%%/*}
  path=/${rest#*/}
  [[ $rest == */* ]] || path=/
  if [[ $scheme == https && $LAB_HTTPS_PORT != 443 ]]; then host+=":$LAB_HTTPS_PORT"; fi
  if [[ $scheme == http && $LAB_HTTP_PORT != 80 ]]; then host+=":$LAB_HTTP_PORT"; fi
  printf '%s://%s%s' "$scheme" "$host" "$path"
}

results=()
unexpected=0
footnote=0
run_scenario() {
  local id what method url ua_name accept_name expected ua accept
  IFS='|' read -r id what method url ua_name accept_name expected <<<"$1"
  case $ua_name in APP) ua=$APP_UA ;; WEBVIEW) ua=$WEBVIEW_UA ;; *) ua=$BROWSER_UA ;; esac
  case $accept_name in JSON) accept=$JSON ;; *) accept=$HTML ;; esac
  url=$(with_port "$url")

  local args=(-sS -v --max-time 20 --cacert "$work/trust.pem" -A "$ua" -H "Accept: $accept"
    -X "$method" -D "$work/headers" -o "$work/body"
    -w '%{http_code} %{http_connect} %{http_version}')
  [[ -n $TOKGATE_PROXY ]] && args+=(--proxy "$TOKGATE_PROXY")
  if [[ -n $LAB_RESOLVE_TO ]]; then
    local authority=${url#*://}
    authority=${authority%%/*}
    local port=$LAB_HTTPS_PORT
    [[ $url == http://* ]] && port=$LAB_HTTP_PORT
    args+=(--resolve "${authority%%:*}:$port:$LAB_RESOLVE_TO")
  fi
  [[ $method == POST ]] && args+=(-H 'Content-Type: application/json' --data '{"lab":"telemetry"}')
  : >"$work/headers"
  : >"$work/body"
  local out rc code connect version
  out=$(curl "${args[@]}" "$url" 2>"$work/verbose")
  rc=$?
  read -r code connect version <<<"$out"
  code=${code:-000}
  connect=${connect:-000}

  local issuer="" issuer_cn=""
  issuer=$(sed -n 's/^\*  issuer: //p' "$work/verbose" | tail -n1)
  [[ -n $issuer ]] && issuer_cn=$(cn_of "$issuer")

  local outcome detail
  if [[ $connect == 403 ]]; then
    outcome=refused
    detail="tokgate answered CONNECT with 403: no TLS, nothing reached the origin"
  elif [[ $code == 000 ]]; then
    if grep -qiE 'SSL|TLS|reset|closed|EOF' "$work/verbose" && ((rc == 35 || rc == 56 || rc == 52)); then
      outcome=refused
      detail="the connection was cut during the TLS handshake (curl exit $rc): refused by name"
    else
      outcome=error
      detail="no answer (curl exit $rc: $(grep -m1 '^curl:' "$work/verbose" || tail -n1 "$work/verbose"))"
    fi
  elif [[ $code == 451 ]]; then
    outcome=blocked
    detail="HTTP $code: tokgate's block page"
  elif [[ $code == 2* || $code == 3* ]]; then
    if [[ $url == http://* ]]; then
      outcome=allowed
      detail="HTTP $code from the origin (plain HTTP, no certificate)"
    elif [[ -n $issuer_cn && $issuer_cn == "$tokgate_cn" ]]; then
      outcome=decrypted
      detail="HTTP $code from the origin, relayed by tokgate after decrypting"
    elif [[ -n $issuer_cn && $issuer_cn == "$lab_cn" ]]; then
      outcome=spliced
      detail="HTTP $code straight from the origin: tokgate relayed the bytes without decrypting"
    else
      outcome=unknown-issuer
      detail="HTTP $code, certificate issued by '$issuer'"
    fi
  else
    outcome=error
    detail="HTTP $code"
  fi

  local seen="-"
  if [[ -n $issuer_cn ]]; then
    if [[ $issuer_cn == "$tokgate_cn" ]]; then
      seen="tokgate CA"
    elif [[ $issuer_cn == "$lab_cn" ]]; then
      seen="lab CA (not tokgate)"
    else
      seen="other: $issuer_cn"
    fi
  fi
  local status=$code
  if [[ $code == 000 && $connect != 000 && $connect != 200 ]]; then
    status="$connect*"
    footnote=1
  elif [[ $code == 000 ]]; then
    status="-"
  fi

  say ""
  say "== $id: $what"
  say "   $method $url"
  say "   User-Agent: ${ua:0:100}$([[ ${#ua} -gt 100 ]] && printf '...')"
  say "   outcome:    $outcome - $detail"
  [[ $url == https://* ]] && say "   issuer:     ${issuer:-(no certificate seen)}  [$seen]"
  [[ -n ${version:-} && $code != 000 ]] && say "   protocol:   HTTP/$version"
  local header
  while IFS= read -r header; do
    say "   tokgate:    ${header%$'\r'}"
  done < <(grep -i '^x-tokgate-' "$work/headers")
  if [[ $outcome == blocked && -s $work/body ]]; then
    say "   body:       $(head -c 160 "$work/body" | tr -s '\r\n\t ' ' ')..."
  fi
  if [[ $outcome == decrypted || $outcome == spliced || $outcome == allowed ]]; then
    say "   origin:     $(grep -i '^x-lab-host:' "$work/headers" | tr -d '\r' || true)"
  fi
  local verdict="-"
  if [[ $LAB_EXPECT == lab ]]; then
    if [[ $outcome == "$expected" ]]; then
      verdict=ok
    else
      verdict=UNEXPECTED
      unexpected=$((unexpected + 1))
      say "   expected:   $expected (docker/lab/config/policy.toml) - UNEXPECTED"
    fi
  fi
  results+=("$(printf '%-15s %-15s %-10s %-7s %-6s %s' "$id" "$outcome" "$expected" "$status" "$verdict" "$seen")")
}

for ((round = 1; round <= LAB_REPEAT; round++)); do
  results=()
  unexpected=0
  ((LAB_REPEAT > 1)) && say "" && say "client: round $round of $LAB_REPEAT"
  for scenario in "${SCENARIOS[@]}"; do
    run_scenario "$scenario"
  done
  say ""
  say "client: summary ($([[ -n $TOKGATE_PROXY ]] && printf 'explicit proxy %s' "$TOKGATE_PROXY" || printf 'transparent'))"
  say "$(printf '%-15s %-15s %-10s %-7s %-6s %s' id outcome expected status check certificate)"
  for line in "${results[@]}"; do say "$line"; done
  ((footnote)) && say "(* the status of tokgate's answer to CONNECT; the request itself was never sent)"
  say "client: ${#results[@]} requests, $((${#results[@]} - unexpected)) as expected, $unexpected unexpected"
  ((round < LAB_REPEAT)) && sleep "$LAB_PAUSE"
done
say "client: the flow log has one record per request above (docker/README.md, 'Reading the flow log')"
((unexpected == 0)) || exit 1
exit 0
