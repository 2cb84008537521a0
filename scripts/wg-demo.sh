#!/usr/bin/env bash
# The WireGuard layer on its own (as root): set up, generate keys with
# `pyralog`, then bring up two WireGuard hosts in network namespaces joined by a veth pair,
# one running pyralog-wg and one running Debian's wireguard-go, configure both with `wg`,
# ping through the tunnel both ways and show `wg show`. Everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [[ $(id -u) -ne 0 ]]; then
    echo "demo: needs root (network namespaces and TUN interfaces)" >&2
    exit 1
fi
export PATH="$PWD/.venv/bin:$PATH"

tag=$$
ns_py="pyralog-demo-py-$tag"
ns_go="pyralog-demo-go-$tag"
if_py="pyd$((tag % 100000))"
if_go="god$((tag % 100000))"
work=$(mktemp -d)
cleanup() {
    set +e
    [[ -n "${py_pid:-}" ]] && kill "$py_pid" 2>/dev/null
    [[ -n "${go_pid:-}" ]] && kill "$go_pid" 2>/dev/null
    wait 2>/dev/null
    ip netns del "$ns_py" 2>/dev/null
    ip netns del "$ns_go" 2>/dev/null
    rm -f "/var/run/wireguard/$if_py.sock" "/var/run/wireguard/$if_go.sock"
    rm -rf "$work"
}
trap cleanup EXIT

echo "== keys"
umask 077
pyralog genkey > "$work/py.key"
pyralog genkey > "$work/go.key"
pyralog genpsk > "$work/psk"
py_pub=$(pyralog pubkey < "$work/py.key")
go_pub=$(pyralog pubkey < "$work/go.key")
[[ "$(wg pubkey < "$work/py.key")" == "$py_pub" ]] || { echo "wg disagrees on a key" >&2; exit 1; }
echo "pyralog-wg host: $py_pub"
echo "wireguard-go host: $go_pub"

echo "== two hosts: $ns_py (pyralog-wg) and $ns_go (wireguard-go), joined by veth"
ip netns add "$ns_py"
ip netns add "$ns_go"
ip link add "vd$tag" netns "$ns_py" type veth peer name "vd$tag" netns "$ns_go"
ip -n "$ns_py" addr add 172.30.99.1/24 dev "vd$tag"
ip -n "$ns_go" addr add 172.30.99.2/24 dev "vd$tag"
for ns in "$ns_py" "$ns_go"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "vd$tag" up
done

echo "== interfaces"
ip netns exec "$ns_py" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error pyralog-wg "$if_py" &
py_pid=$!
ip netns exec "$ns_go" env WG_PROCESS_FOREGROUND=1 wireguard-go "$if_go" 2>/dev/null &
go_pid=$!
for _ in $(seq 100); do
    [[ -S /var/run/wireguard/$if_py.sock && -S /var/run/wireguard/$if_go.sock ]] && break
    sleep 0.1
done
ip netns exec "$ns_py" wg set "$if_py" private-key "$work/py.key" listen-port 51820 \
    peer "$go_pub" preshared-key "$work/psk" allowed-ips 10.99.0.2/32 endpoint 172.30.99.2:51820
ip netns exec "$ns_go" wg set "$if_go" private-key "$work/go.key" listen-port 51820 \
    peer "$py_pub" preshared-key "$work/psk" allowed-ips 10.99.0.1/32 endpoint 172.30.99.1:51820
ip -n "$ns_py" addr add 10.99.0.1/24 dev "$if_py"
ip -n "$ns_go" addr add 10.99.0.2/24 dev "$if_go"
ip -n "$ns_py" link set "$if_py" up
ip -n "$ns_go" link set "$if_go" up

echo "== ping through the tunnel, both ways"
ip netns exec "$ns_py" ping -c 3 -i 0.2 -W 2 10.99.0.2
ip netns exec "$ns_go" ping -c 3 -i 0.2 -W 2 10.99.0.1

echo "== wg show (pyralog-wg side)"
ip netns exec "$ns_py" wg show "$if_py"
echo
echo "demo: pyralog-wg and wireguard-go exchanged traffic over WireGuard."
