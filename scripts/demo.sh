#!/usr/bin/env bash
# The main job, end to end on a fresh Debian machine (as root): set up, then generate a
# key pair and a preshared key the way `wg` does and check them against `wg` itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/pyralog genkey > "$work/private.key"
.venv/bin/pyralog pubkey < "$work/private.key" > "$work/public.key"
.venv/bin/pyralog genpsk > "$work/preshared.key"
echo "public key:    $(cat "$work/public.key")"
if command -v wg >/dev/null; then
    if [[ "$(wg pubkey < "$work/private.key")" == "$(cat "$work/public.key")" ]]; then
        echo "wg pubkey agrees."
    else
        echo "wg pubkey DISAGREES" >&2
        exit 1
    fi
fi
