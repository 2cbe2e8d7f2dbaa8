#!/bin/bash
# tokgate-gateway-entrypoint [tokgate run arguments...]
#
# The entrypoint of the image's `gateway` target: a container that is the default gateway of a
# LAN (the lab's transparent profile). As root, with CAP_NET_ADMIN, it loads the nftables rules
# of docker/nftables/ for the LAN interface, then drops every privilege and runs
# `tokgate run ARGS...` as the user tokgate. REDIRECT needs no capability in tokgate itself.
#
# Environment:
#   LAN_IF            the LAN interface; or
#   LAN_CIDR          the LAN's subnet (e.g. 172.29.81.0/24): the interface holding an address in
#                     it is the LAN interface (container interface names depend on start order)
#   TRANSPARENT_PORT  tokgate's transparent listener port (default 8443)
#   BLOCK_QUIC        1 (default): also load block-quic.nft; 0: do not
#   TOKGATE_NFT_DIR   where the .nft files are (default /etc/tokgate-nftables)
#   EXTRA_NFT         more .nft files to load afterwards, space-separated (the lab's
#                     lab-internet.nft)
#   TOKGATE_USER      the user tokgate runs as (default tokgate), also the one the nftables
#                     loop guard lets through (define TOKGATE_USER)
#   TOKGATE_BIN       the binary (default /usr/local/bin/tokgate)
set -euo pipefail

nft_dir=${TOKGATE_NFT_DIR:-/etc/tokgate-nftables}
lan_if=${LAN_IF:-}
lan_cidr=${LAN_CIDR:-}
transparent_port=${TRANSPARENT_PORT:-8443}
block_quic=${BLOCK_QUIC:-1}
extra_nft=${EXTRA_NFT:-}
tokgate_user=${TOKGATE_USER:-tokgate}
tokgate_bin=${TOKGATE_BIN:-/usr/local/bin/tokgate}

die() {
  echo "tokgate-gateway: $*" >&2
  exit 1
}

[[ $(id -u) == 0 ]] || die "must start as root to load the nftables rules (then runs tokgate as $tokgate_user)"
if [[ -z $lan_if ]]; then
  [[ -n $lan_cidr ]] || die "set LAN_IF or LAN_CIDR"
  lan_if=$(ip -o addr show to "$lan_cidr" | awk '{ print $2; exit }')
  [[ -n $lan_if ]] || die "no interface has an address in LAN_CIDR=$lan_cidr"
fi
[[ $lan_if =~ ^[A-Za-z0-9_.@-]+$ ]] || die "unexpected interface name '$lan_if'"
lan_if=${lan_if%%@*} # "eth1@if23" -> "eth1"
[[ $transparent_port =~ ^[0-9]+$ ]] || die "TRANSPARENT_PORT must be a number"
[[ $tokgate_user =~ ^[a-z_][a-z0-9_-]*$ ]] || die "unexpected user name '$tokgate_user'"
id -u "$tokgate_user" >/dev/null 2>&1 || die "no user $tokgate_user"

# The files keep their defaults for a hand-run `nft -f`; the container's values are set here.
sed -e "s|^define LAN_IF = .*|define LAN_IF = \"$lan_if\"|" \
  -e "s|^define TRANSPARENT_PORT = .*|define TRANSPARENT_PORT = $transparent_port|" \
  -e "s|^define TOKGATE_USER = .*|define TOKGATE_USER = \"$tokgate_user\"|" \
  "$nft_dir/tokgate-gateway.nft" | nft -f /dev/stdin ||
  die "cannot load $nft_dir/tokgate-gateway.nft (does the container have CAP_NET_ADMIN?)"
echo "tokgate-gateway: TCP 80/443 arriving on $lan_if -> tokgate's transparent port $transparent_port"
if [[ $block_quic == 1 ]]; then
  nft -f "$nft_dir/block-quic.nft" || die "cannot load $nft_dir/block-quic.nft"
  echo "tokgate-gateway: forwarded UDP/443 (QUIC) rejected"
fi
for file in $extra_nft; do
  nft -f "$file" || die "cannot load $file"
  echo "tokgate-gateway: loaded $file"
done

exec setpriv --reuid="$tokgate_user" --regid="$(id -g "$tokgate_user")" --init-groups \
  --no-new-privs --bounding-set=-all --inh-caps=-all \
  "$tokgate_bin" run "$@"
