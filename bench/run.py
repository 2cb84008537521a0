"""Data-plane benchmark: pyralog-wg against wireguard-go, in one command.

    .venv/bin/python bench/run.py [--quick] [--out docs/benchmarks.json]

Builds pairs of network namespaces joined by a veth link, one WireGuard implementation in
each (py = pyralog-wg, go = wireguard-go), and measures for the pairs py-py, go-go and
py-go (both directions):

- TCP throughput (iperf3), several runs per direction, interleaved across pairs, and the
  daemons' CPU seconds (utime + stime) per GB moved during those runs;
- UDP packet rate at a small and a full-MTU payload (iperf3 -u -b 0), received packets/s
  and loss;
- ping round trip p50/p99, idle and while an iperf3 TCP stream runs the same way;

then embedded mode (bench/embedded.py): TCP throughput through ``pyralog forward``
(WireGuard and a userspace TCP/IP stack in one process) against kernel TCP over
wireguard-go on the same path, both directions, and the forwarder's CPU seconds per GB;

then, per implementation:

- handshakes per second a responder completes (bench/hsload.py: many initiator
  identities, one source address each, cookie replies handled);
- resident memory (VmRSS) with 1, 100 and 10,000 configured peers, idle;

and the sans-IO core alone (bench/core.py). Every figure is also given as a ratio to
wireguard-go (go-go) measured in the same run. Results go to JSON; bench/render.py turns
them into docs/BENCHMARKS.md and docs/benchmarks.png.

Needs root, iperf3, ping, ip, wg and wireguard-go. Uses only namespaces, interfaces and
addresses of its own (``bn`` prefix, 172.29.0.0/16, 10.29.0.0/16) and removes them all
when it ends, also on failure or Ctrl-C.

This file is the command line: it picks the settings, checks what is needed, runs the
measures (pairs.py, embedded.py, handshakes.py, memory.py, core.py; lab.py builds their
namespaces, harness.py holds what they share), adds summary.py's rows and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# The bench modules import one another by name, as they do when run as scripts from here.
sys.path.insert(0, str(BENCH))

import core  # noqa: E402
import embedded  # noqa: E402
import handshakes  # noqa: E402
import memory  # noqa: E402
import pairs  # noqa: E402
from harness import Settings, attempt, log, unwind_on_signals  # noqa: E402
from lab import note_daemon_knobs, reap_stale  # noqa: E402
from machine import machine_info, other_namespaces  # noqa: E402
from stats import fmt  # noqa: E402
from summary import summarize  # noqa: E402


def measure_core(s: Settings, results: dict, errors: list[str]) -> None:
    """The sans-IO core in this process (no namespaces): results["core"]."""
    log("sans-IO core micro-benchmark")
    res = attempt(errors, "core micro-benchmark", core.run, s.quick)
    if res is not None:
        for size, r in res["sizes"].items():
            log(f"  {size} B: encrypt {r['encrypt_pps']:,.0f}/s, decrypt {r['decrypt_pps']:,.0f}/s")
    results["core"] = res


def check_requirements() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, TUN devices)")
    for tool in ("ip", "wg", "wireguard-go", "iperf3", "ping"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed (scripts/bench.sh installs it)")
    if not Path(sys.executable).with_name("pyralog-wg").exists():
        problems.append("pyralog-wg is not installed next to this Python (use .venv/bin/python)")
    if not Path("/dev/net/tun").exists():
        problems.append("/dev/net/tun is missing")
    return problems


MEASURES = ("core", "pairs", "embedded", "handshake", "memory")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Benchmark pyralog-wg against wireguard-go (needs root).",
    )
    p.add_argument("--quick", action="store_true", help="one short run of everything (~2 min)")
    p.add_argument(
        "--out", default=str(BENCH.parent / "docs" / "benchmarks.json"), help="JSON output"
    )
    p.add_argument(
        "--only",
        default=",".join(MEASURES),
        help=f"comma-separated subset of {','.join(MEASURES)} (default: all)",
    )
    args = p.parse_args(argv)
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(only) - set(MEASURES)
    if unknown:
        p.error(f"unknown measure(s): {', '.join(sorted(unknown))}")
    problems = check_requirements()
    if problems:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
        return 2

    unwind_on_signals()

    stale = reap_stale()
    if stale:
        log(f"removed leftovers of an earlier run: {', '.join(stale)}")
    s = Settings.make(args.quick)
    knobs = note_daemon_knobs()
    started = time.monotonic()
    errors: list[str] = []
    results: dict = {
        "schema": 1,
        "machine": machine_info(),
        "settings": {
            **s.__dict__,
            "udp_payload_bytes": list(pairs.UDP_SIZES),
            "memory_peers": list(memory.MEMORY_PEERS),
            "pairs": [p[0] for p in pairs.PAIRS],
            "measures": only,
            **({"daemon_knobs": knobs} if knobs else {}),
        },
        "errors": errors,
    }
    try:
        if "core" in only:
            measure_core(s, results, errors)
        if "pairs" in only:
            pairs.measure(s, results, errors)
        if "embedded" in only:
            embedded.measure(s, results, errors)
        if "handshake" in only:
            handshakes.measure(s, results, errors)
        if "memory" in only:
            memory.measure(s, results, errors)
    except KeyboardInterrupt:
        log("interrupted: cleaned up; no results written")
        return 130
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["machine"]["other_netns_at_end"] = other_namespaces()
    results["elapsed_seconds"] = time.monotonic() - started
    results.update(summarize(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    log(f"done in {results['elapsed_seconds']:.0f} s; results in {out}")
    print_summary(results)
    if errors:
        log(f"{len(errors)} measure(s) failed:")
        for e in errors:
            log(f"  {e}")
    return 0


def print_summary(results: dict) -> None:
    cols = results["summary"]["columns"]
    print(f"{'measure':44} " + " ".join(f"{c:>18}" for c in cols))
    for row in results["summary"]["rows"]:
        cells = []
        for c in cols:
            v, r = row["values"].get(c), row["ratios"].get(c)
            cells.append(f"{fmt(v)} ({fmt(r)}x)" if r is not None else fmt(v))
        print(
            f"{row['label'] + ' [' + row['unit'] + ']':44} " + " ".join(f"{x:>18}" for x in cells)
        )
    print(f"\n{'per implementation':52} {'pyralog-wg':>12} {'wireguard-go':>12} {'ratio':>8}")
    for row in results["implementations"]["rows"]:
        text = row.get("text", {})
        py, go = text.get("py", fmt(row["py"])), text.get("go", fmt(row["go"]))
        print(
            f"{row['label'] + ' [' + row['unit'] + ']':52} {py:>12} {go:>12} {fmt(row['ratio']):>8}"
        )
    emb = results.get("embedded")
    if emb and emb.get("rows"):
        print(f"\n{'embedded mode':68} {'embedded':>10} {'kernel':>10} {'ratio':>8}")
        for row in emb["rows"]:
            print(
                f"{row['label'] + ' [' + row['unit'] + ']':68} {fmt(row['embedded']):>10} "
                f"{fmt(row['kernel']):>10} {fmt(row['ratio']):>8}"
            )
    if results.get("core_summary"):
        print(f"\n{'core (sans-IO)':20} {'pkt/s':>12} {'Mbit/s':>10} {'ratio':>8}  reference")
        for r in results["core_summary"]:
            print(
                f"{str(r['size']) + ' B ' + r['path']:20} {fmt(r['pps']):>12} "
                f"{fmt(r['mbit_s']):>10} {fmt(r['ratio']):>8}  {r['reference']}"
            )


if __name__ == "__main__":
    sys.exit(main())
