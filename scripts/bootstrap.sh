#!/usr/bin/env bash
# Installs everything Pyralog needs on a fresh Debian machine (run as root):
# the system tools the tests and demos drive, then a virtualenv in .venv with
# Pyralog and its test dependencies. Safe to run again; it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# kmod: modprobe, so tc can load sch_netem for the lossy-link test where the kernel has it.
# etcd-server: /usr/bin/etcd, for the etcd store's tests (they run members of their own).
apt_packages=(wireguard-tools wireguard-go iproute2 iputils-ping tcpdump kmod python3-venv etcd-server kcat nats-server nftables)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    else
        echo "bootstrap: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        # etcd-server's postinst starts a system etcd on port 2379, and fails the install
        # where that cannot start (no systemd, no init). Nothing here wants that service:
        # forbid service starts during the install, as Docker images do, unless the
        # machine has a policy of its own.
        policy=/usr/sbin/policy-rc.d
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            trap 'rm -f "$policy"' EXIT
        fi
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

# Debian's own Python by default: a python3 earlier on PATH may live where other users
# cannot reach it (pyenv under a 0700 /root), and the tests run the nodes as user nobody.
python=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q -e '.[test]'
