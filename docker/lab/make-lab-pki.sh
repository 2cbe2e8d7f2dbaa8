#!/usr/bin/env bash
# make-lab-pki.sh DIR: the lab's "real world" PKI, made with the openssl CLI.
#
# The lab's origin plays TikTok's servers (and two ordinary sites). Real servers have
# certificates from a public CA; the lab's have one from this lab CA instead ("Lab World Root
# CA", playing the public CA's part). tokgate is told to trust it for upstream connections
# ([upstream] extra_ca) and the client trusts it for the connections tokgate splices (relays
# without decrypting). It is NOT the tokgate CA: tokgate makes that one itself on first start.
# Which of the two issued the certificate a client gets shows whether tokgate decrypted it.
#
# Writes into DIR:
#   lab-ca.crt     the lab root CA (public; what upstream verification trusts)
#   lab-ca.key     its key (mode 0600; used only here)
#   origin.crt     the origin's leaf, one certificate for every lab name (SAN list below),
#                  followed by nothing else: the lab CA is a root, there is no intermediate
#   origin.key     its key (mode 0600; chown'ed to $LAB_PKI_KEY_OWNER if set, e.g. "1000:1000"
#                  so the origin can run as an unprivileged user)
#
# Idempotent: files that exist, verify, and stay valid for 30 more days are kept, so running it
# on every `docker compose up` costs nothing; anything else is made anew. FORCE=1 remakes all.
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1

# Every name the lab origin answers for. compose.yaml gives the origin these names as network
# aliases; tests/integration/test_lab_files.py checks that both lists agree.
LAB_NAMES=(
  api16-normal-c-useast1a.tiktokv.com  # the app's API (category app-api)
  www.tiktok.com                       # the website (web)
  v16-webapp.tiktok.com                # the web player's video CDN (media-cdn)
  analytics.tiktok.com                 # the TikTok Pixel (analytics-sdk)
  mon.byteoversea.com                  # the app's telemetry (app-api)
  news.example.org                     # an ordinary site (in-app-browser with TikTok's WebView UA)
  bank.example.org                     # an ordinary site the lab policy exempts (always spliced)
  origin                               # the service name, for debugging from other containers
  localhost
)

mkdir -p "$dir"
umask 077
cd "$dir"

valid() {
  [[ -s lab-ca.crt && -s lab-ca.key && -s origin.crt && -s origin.key ]] || return 1
  openssl verify -CAfile lab-ca.crt origin.crt >/dev/null 2>&1 || return 1
  openssl x509 -in origin.crt -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || return 1
  openssl x509 -in lab-ca.crt -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || return 1
  # The name list may have grown since the files were made.
  local sans name
  sans=$(openssl x509 -in origin.crt -noout -ext subjectAltName 2>/dev/null) || return 1
  for name in "${LAB_NAMES[@]}"; do
    [[ $sans == *"DNS:$name,"* || $sans == *"DNS:$name" ]] || return 1
  done
}

if [[ ${FORCE:-0} != 1 ]] && valid; then
  echo "make-lab-pki: keeping the lab PKI in $dir (valid)"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  sans=""
  for name in "${LAB_NAMES[@]}"; do sans+="DNS:$name,"; done
  sans+="IP:127.0.0.1,IP:::1"
  cat >"$work/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder

[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $sans
EOF
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc)
  openssl req -config "$work/openssl.cnf" -x509 -new "${ec[@]}" -sha256 -days 3650 \
    -subj "/O=Lab World/CN=Lab World Root CA" -extensions v3_ca \
    -keyout "$work/lab-ca.key" -out "$work/lab-ca.crt" 2>/dev/null
  openssl req -config "$work/openssl.cnf" -new "${ec[@]}" -subj "/O=Lab World/CN=www.tiktok.com" \
    -keyout "$work/origin.key" -out "$work/origin.csr" 2>/dev/null
  # 397 days: the longest validity browsers accept for a server certificate.
  openssl x509 -req -in "$work/origin.csr" -CA "$work/lab-ca.crt" -CAkey "$work/lab-ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 397 -sha256 \
    -extfile "$work/openssl.cnf" -extensions leaf -out "$work/origin.crt" 2>/dev/null
  openssl verify -CAfile "$work/lab-ca.crt" "$work/origin.crt" >/dev/null
  chmod 0644 "$work/lab-ca.crt" "$work/origin.crt"
  chmod 0600 "$work/lab-ca.key" "$work/origin.key"
  # Move into place, the certificates last, so a reader never pairs a new key with an old cert.
  for file in lab-ca.key origin.key lab-ca.crt origin.crt; do
    mv -f "$work/$file" "$file"
  done
  echo "make-lab-pki: made a new lab PKI in $dir"
fi

if [[ -n ${LAB_PKI_KEY_OWNER:-} ]]; then
  chown "$LAB_PKI_KEY_OWNER" origin.key
fi
chmod 0755 .
openssl x509 -in lab-ca.crt -noout -subject -fingerprint -sha256 | sed 's/^/make-lab-pki: lab CA /'
