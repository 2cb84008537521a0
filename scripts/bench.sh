#!/usr/bin/env bash
# Benchmarks pyralog-wg against wireguard-go and renders docs/BENCHMARKS.md and
# docs/benchmarks.png (run as root on Debian). Installs what is missing first: the
# system tools (via scripts/bootstrap.sh, plus iperf3), the .venv with Pyralog, and
# matplotlib for the chart. Arguments go to bench/run.py, e.g.
#   scripts/bench.sh --quick
#   scripts/bench.sh --out /tmp/results.json     (rendered from there, docs/ still updated)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "bench: run as root (network namespaces and TUN devices need it)" >&2
    exit 2
fi

scripts/bootstrap.sh
if ! command -v iperf3 >/dev/null; then
    echo "bench: installing iperf3" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends iperf3 >/dev/null
fi
if ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
    echo "bench: installing matplotlib into .venv" >&2
    .venv/bin/python -m pip install -q -e '.[bench]'
fi

out=docs/benchmarks.json
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --out) out=${args[i + 1]:-$out} ;;
        --out=*) out=${args[i]#--out=} ;;
    esac
done

.venv/bin/python bench/run.py "$@"
.venv/bin/python bench/render.py "$out"
