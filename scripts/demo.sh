#!/usr/bin/env bash
# The main job, end to end on a fresh Debian machine: set up (scripts/bootstrap.sh; as
# root it installs the Debian packages, as any other user it only builds .venv once
# they are there), then `pyralog demo`: a 3-node Pyralog cluster over WireGuard
# (`pyralog up`, embedded mode: no root, no TUN), a stock Kafka client through
# `pyralog connect` producing with acks=all while the partition leader is killed with
# kill -9 and restarted, everything consumed back and checked. Exits non-zero if
# anything acknowledged was lost. Arguments go to `pyralog demo` (--records N, --dir D).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/pyralog demo "$@"
