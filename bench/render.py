"""Render benchmark results (JSON from bench/run.py) as docs/BENCHMARKS.md and a chart.

    .venv/bin/python bench/render.py [docs/benchmarks.json] [--md docs/BENCHMARKS.md]
                                     [--png docs/benchmarks.png]

The chart needs matplotlib (drawn with the Agg backend, no display needed); without it the
Markdown is still written, without the picture.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

COLUMN_TITLES = {
    "py-py": "py-py",
    "go-go": "go-go (reference)",
    "py→go": "py→go",
    "go→py": "go→py",
}


def fmt(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if unit == "%":
        return f"{v:.1f}"
    if unit == "segments":
        return f"{v:,.0f}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def data_plane_table(res: dict) -> str:
    summary = res["summary"]
    cols = summary["columns"]
    header = ["Measure", *[COLUMN_TITLES.get(c, c) for c in cols]]
    rows = []
    for row in summary["rows"]:
        better = "↑" if row["better"] == "higher" else "↓"
        cells = [f"{row['label']} ({row['unit']}, {better})"]
        for c in cols:
            v = row["values"].get(c)
            text = fmt(v, row["unit"])
            lo_hi = row.get("spread", {}).get(c)
            if lo_hi and None not in lo_hi and lo_hi[0] != lo_hi[1]:
                text += f" [{fmt(lo_hi[0], row['unit'])}-{fmt(lo_hi[1], row['unit'])}]"
            if c != summary["reference"] and v is not None:
                text += f" **{fmt_ratio(row['ratios'].get(c))}**"
            cells.append(text)
        rows.append(cells)
    return _md_table(header, rows)


def implementation_table(res: dict) -> str:
    header = ["Measure", "pyralog-wg", "wireguard-go", "pyralog-wg ÷ wireguard-go"]
    rows = []
    for row in res["implementations"]["rows"]:
        text = row.get("text", {})
        better = "↑" if row["better"] == "higher" else "↓"
        rows.append(
            [
                f"{row['label']} ({row['unit']}, {better})",
                text.get("py", fmt(row["py"], row["unit"])),
                text.get("go", fmt(row["go"], row["unit"])),
                fmt_ratio(row["ratio"]),
            ]
        )
    return _md_table(header, rows)


def core_table(res: dict) -> str:
    header = ["Packet", "Path", "Packets/s", "Mbit/s", "Ratio", "Ratio is to"]
    rows = [
        [
            f"{r['size']} B",
            r["path"],
            fmt(r["pps"]),
            fmt(r["mbit_s"]),
            fmt_ratio(r["ratio"]),
            r["reference"],
        ]
        for r in res.get("core_summary", [])
    ]
    return _md_table(header, rows, ["l", "l", "r", "r", "r", "l"])


def embedded_table(res: dict) -> str | None:
    """Embedded mode against kernel TCP over wireguard-go; None if the run has no such data."""
    rows_in = (res.get("embedded") or {}).get("rows") or []
    if not rows_in:
        return None
    header = [
        "Measure",
        "pyralog forward (embedded)",
        "kernel TCP over wireguard-go",
        "embedded ÷ kernel",
    ]
    rows = []
    for row in rows_in:
        better = "↑" if row["better"] == "higher" else "↓"
        cells = [f"{row['label']} ({row['unit']}, {better})"]
        for path in ("embedded", "kernel"):
            text = fmt(row.get(path), row["unit"])
            lo_hi = (row.get("spread") or {}).get(path)
            if lo_hi and None not in lo_hi and lo_hi[0] != lo_hi[1]:
                text += f" [{fmt(lo_hi[0], row['unit'])}-{fmt(lo_hi[1], row['unit'])}]"
            cells.append(text)
        cells.append(f"**{fmt_ratio(row.get('ratio'))}**")
        rows.append(cells)
    return _md_table(header, rows)


def machine_table(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]

    def gib(n):
        return f"{n / 2**30:.1f} GiB" if n else "n/a"

    def load(v):
        return ", ".join(f"{x:.2f}" for x in v) if v else "n/a"

    items = [
        ("Date (UTC)", m.get("date")),
        ("CPU", f"{m.get('cpu_model')} x {m.get('cpus')} (memory {gib(m.get('memory_bytes'))})"),
        ("OS / kernel", f"{m.get('os')} / {m.get('kernel')}"),
        ("Python / cryptography / PyNaCl", f"{m.get('python')} / {m.get('cryptography')} / "
                                           f"{m.get('pynacl')}"),
        ("pyralog", m.get("pyralog")),
        ("wireguard-go / wg / iperf3", f"{m.get('wireguard_go')} / {m.get('wg')} / "
                                       f"{m.get('iperf3')}"),
        ("Load average at start / end (1, 5, 15 min)",
         f"{load(m.get('loadavg_start'))} / {load(m.get('loadavg_end'))}"),
        ("Other network namespaces at start", str(m.get("other_netns_at_start"))),
        ("Mode", "quick" if s.get("quick") else "full"),
        ("Total time", f"{res.get('elapsed_seconds', 0):.0f} s"),
    ]  # fmt: skip
    return _md_table(["", ""], [[k, str(v)] for k, v in items], ["l", "l"])


def _row(res: dict, key: str) -> dict | None:
    for r in res["summary"]["rows"]:
        if r["key"] == key:
            return r
    return None


def _impl(res: dict, key: str) -> dict | None:
    for r in res["implementations"]["rows"]:
        if r["key"] == key:
            return r
    return None


def headline(res: dict) -> str:
    """One paragraph: where pyralog-wg stands against wireguard-go in this run."""
    parts = []
    tcp = _row(res, "tcp_mbps")
    if tcp and tcp["ratios"].get("py-py") is not None:
        parts.append(
            f"TCP throughput py-py is **{fmt_ratio(tcp['ratios']['py-py'])}** go-go's "
            f"({fmt(tcp['values']['py-py'])} vs {fmt(tcp['values']['go-go'])} Mbit/s)"
        )
    for key, label in (
        ("cpu_s_per_gb", "CPU per GB ↓"),
        ("udp64_pps", "64-byte UDP packet rate ↑"),
        ("ping_idle_p50", "idle ping p50 ↓"),
        ("ping_load_p50", "ping p50 under load ↓"),
    ):
        r = _row(res, key)
        if r and r["ratios"].get("py-py") is not None:
            parts.append(f"{label} {fmt_ratio(r['ratios']['py-py'])}")
    for key, label in (
        ("hs_handshakes_per_second", "handshakes/s ↑"),
        ("hs_responder_cpu_us_per_handshake", "CPU per handshake ↓"),
        ("bytes_per_peer", "memory per peer ↓"),
    ):
        r = _impl(res, key)
        if r and r["ratio"] is not None:
            parts.append(f"{label} {fmt_ratio(r['ratio'])}")
    emb = (res.get("embedded") or {}).get("throughput_ratio") or {}
    emb_text = ""
    if any(v is not None for v in emb.values()):
        emb_text = (
            "Embedded mode (`pyralog forward`, WireGuard and TCP/IP in one process) moves "
            f"TCP at **{fmt_ratio(emb.get('forward'))}** (E→K) and "
            f"**{fmt_ratio(emb.get('reverse'))}** (K→E) of the kernel's TCP over "
            "wireguard-go on the same path."
        )
    if not parts:
        return emb_text or "No comparable figures in this run (see the errors below)."
    text = (
        "In this run, pyralog-wg against wireguard-go (ratio = pyralog-wg ÷ wireguard-go, "
        "same run; ↑ higher is better, ↓ lower is better): " + "; ".join(parts) + "."
    )
    return f"{text} {emb_text}" if emb_text else text


def run_time_note(res: dict) -> str:
    text = f"this one: {res.get('elapsed_seconds', 0):.0f} s"
    apply = (res.get("memory", {}).get("py", {}).get("apply_seconds") or {}).get("10000")
    if apply and apply > 10:
        text += f", of which {apply:.0f} s for pyralog-wg to take 9,900 peers in one `wg addconf`"
    return text


def auto_notes(res: dict) -> list[str]:
    """Notes that follow from the data of this run."""
    notes = []
    m = res["machine"]
    load0 = (m.get("loadavg_start") or [0])[0]
    load1 = (m.get("loadavg_end") or [0])[0]
    others = max(m.get("other_netns_at_start") or 0, m.get("other_netns_at_end") or 0)
    if load0 > 0.3 or others:
        notes.append(
            f"**The machine was not quiet.** The 1-minute load average was {load0:.2f} "
            f"before the run (end: {load1:.2f}, partly our own load)"
            + (f" and {others} network namespace(s) of other test runs existed" if others else "")
            + f". With {m.get('cpus')} cores, every figure here shares the CPU with other "
            "work, so absolute numbers are lower and the spread (min-max) wider than on a "
            "quiet machine. Ratios from the same run (pairs measured interleaved, run by "
            "run) are the more trustworthy figures; rerun on a quiet machine for absolutes."
        )
    if res["settings"].get("quick"):
        notes.append("This is a `--quick` run: one short run per figure; treat it as a smoke test.")
    for err in res.get("errors", []):
        notes.append(f"A measure failed: `{err}`.")
    for name, p in res.get("pairs", {}).items():
        for failure in p.get("failures", []):
            notes.append(f"In pair {name}: {failure}.")
    load = _row(res, "ping_load_p50")
    idle = _row(res, "ping_idle_p50")
    if load and (load["ratios"].get("py-py") or 0) > 2:
        notes.append(
            "Under a TCP stream, ping through pyralog-wg waits much longer than through "
            f"wireguard-go (p50 {fmt(load['values'].get('py-py'))} ms py-py against "
            f"{fmt(load['values'].get('go-go'))} ms go-go; idle: "
            f"{fmt(idle['values'].get('py-py')) if idle else 'n/a'} against "
            f"{fmt(idle['values'].get('go-go')) if idle else 'n/a'} ms). A likely cause, not "
            "yet verified: one thread drains up to 64 TUN packets or datagrams per wake-up "
            "and the UDP sockets have 4 MiB buffers, so a small packet queues behind a bulk "
            "backlog (bufferbloat inside the daemon)."
        )
    cold = (res.get("core") or {}).get("cold")
    if idle and cold and (idle["ratios"].get("py-py") or 0) > 1:
        notes.append(
            f"Idle ping is slower through pyralog-wg (p50 {fmt(idle['values'].get('py-py'))} ms "
            f"py-py against {fmt(idle['values'].get('go-go'))} ms go-go). What limits it: "
            "between pings the daemon sleeps and its code and data go cold. The core "
            "micro-benchmark times one ping-sized packet through encrypt and decrypt at "
            f"{fmt(cold['round_trip_warm_us'])} µs back to back but "
            f"{fmt(cold['round_trip_cold_us'])} µs after {fmt(cold['idle_gap_ms'])} ms asleep "
            "(even an empty timing goes from "
            f"{fmt(cold['empty_warm_us'])} to {fmt(cold['empty_cold_us'])} µs), and a ping "
            "crosses the core four times. Python touches far more memory per packet than Go "
            "(interpreter, objects, and OpenSSL's EVP layer behind `cryptography`, which "
            "alone costs about 45 µs cold here), so every idle packet pays more to refill "
            "caches. Tried: reading one packet per idle wake-up instead of draining to "
            "EAGAIN (kept: 0.06 ms less per round trip in an A/B run), a seeded PRNG "
            "instead of getrandom() for timer jitter (kept), and busy-polling after each "
            "packet (rejected: on 2 cores the spinning daemons starve each other, p50 "
            "rose to 1.8 ms)."
        )
    rtx = _row(res, "tcp_retransmits")
    if rtx and (rtx["values"].get("go-go") or 0) > 10 * max(rtx["values"].get("py-py") or 0, 100):
        notes.append(
            f"TCP retransmits: go-go runs retransmitted {fmt(rtx['values']['go-go'], 'segments')} "
            f"segments per run (median), py-py {fmt(rtx['values'].get('py-py'), 'segments')}: "
            "packets are dropped on the go-go path under a bulk stream (probably in the "
            "daemon's queues; not investigated), far fewer through pyralog-wg."
        )
    p99 = _row(res, "ping_idle_p99")
    if p99 and any((v or 0) > 10 for v in p99["values"].values()):
        worst = max((v or 0, c) for c, v in p99["values"].items())
        notes.append(
            f"Idle ping p99 is dominated by scheduling noise on this machine (up to "
            f"{fmt(worst[0])} ms, in {worst[1]}): the p99 rows say little here."
        )
    hs_all = res.get("handshake", {})
    shares = {
        i: hs_all[i]["responder_cpu_seconds"]
        / (hs_all[i].get("warmup_seconds", 0) + hs_all[i].get("window_seconds", 1))
        for i in ("py", "go")
        if hs_all.get(i, {}).get("responder_cpu_seconds") is not None
    }
    if shares:
        notes.append(
            "A responder's handshake rate is bounded by the CPU it gets: here pyralog-wg "
            f"used {shares.get('py', 0):.2f} and wireguard-go {shares.get('go', 0):.2f} cores "
            f"on average (of {m.get('cpus')}, shared with the generator and everything else; "
            "pyralog-wg is single-threaded, so 1.0 is its ceiling). On a busy machine *CPU per "
            "handshake* is the fairer comparison."
        )
        if hs_all.get("go", {}).get("timeouts") or hs_all.get("py", {}).get("timeouts"):
            notes.append(
                "Initiations left unanswered for 1 s during the flood (counted, then the "
                f"identity moved on): pyralog-wg {hs_all.get('py', {}).get('timeouts', 0)}, "
                f"wireguard-go {hs_all.get('go', {}).get('timeouts', 0)}."
            )
    mem = res.get("memory", {})
    py = mem.get("py", {})
    go = mem.get("go", {})
    if py.get("show_seconds") is None and py:
        notes.append(
            f"pyralog-wg did not answer `wg show IF peers` with {mem['peer_counts'][-1]:,} "
            f"peers within {py.get('show_timeout_seconds')} s (wireguard-go: "
            f"{fmt(go.get('show_seconds'))} s). While it builds that answer its single thread "
            "forwards no packets. The UAPI get lists each peer's allowed IPs with "
            "`AllowedIPs.entries(peer)`, which walks the whole trie per peer: quadratic in "
            "the number of peers."
        )
    ap_py = (py.get("apply_seconds") or {}).get(str(mem.get("peer_counts", [0])[-1]))
    ap_go = (go.get("apply_seconds") or {}).get(str(mem.get("peer_counts", [0])[-1]))
    if ap_py and ap_go and ap_py > 5 * ap_go:
        notes.append(
            f"Adding 9,900 peers with one `wg addconf` took pyralog-wg {ap_py:.1f} s against "
            f"{ap_go:.1f} s for wireguard-go. `wg addconf` sends `replace_allowed_ips=true` "
            "for every peer, and `AllowedIPs.remove_value` walks the whole trie each time: "
            "quadratic again."
        )
    base = (py.get("rss_bytes") or {}).get("0")
    if base:
        notes.append(
            f"pyralog-wg starts at {base / 2**20:.0f} MiB RSS with no peers (the interpreter "
            "and the imported libraries); that constant dominates the 1- and 100-peer figures."
        )
    hs = res.get("handshake", {})
    if hs.get("go") and hs.get("py"):
        gen = [hs[i].get("generator_cpu_seconds") for i in ("py", "go")]
        notes.append(
            "Handshakes: the load generator (Python, Pyralog's own handshake code) runs on "
            f"the same {m.get('cpus')} cores as the responder; its initiations are computed "
            f"before the clock starts ({hs.get('initiations_prepared'):,} in "
            f"{hs.get('prepare_seconds', 0):.1f} s), so while measuring it only adds macs, "
            f"sends and receives (it used {fmt(gen[0])} and {fmt(gen[1])} CPU s during the "
            "py and go runs). The offered ceiling is "
            f"{fmt(hs['py'].get('offered_ceiling_per_second'))}/s ({hs.get('identities')} "
            "identities x one initiation per 52 ms, under the 20/s per-source limit)."
        )
    return notes


STATIC_NOTES = [
    "The reference is the wireguard-go installed here (see the table above). Releases from "
    "2023 on batch UDP and TUN I/O (GSO/GRO) and are much faster than older ones; "
    "pyralog-wg already uses UDP GSO/GRO. Compare against the same wireguard-go you deploy.",
    "UDP packet rates are with `iperf3 -u -b 0`: the sender offers as much as it can, so "
    "the loss column is mostly the excess over what the tunnel forwards, not a fault. The "
    "large payload is 1392 bytes, the most that fits the 1420-byte tunnel MTU: 1400 bytes "
    "would make 1428-byte packets that the sender's IP layer fragments.",
    "CPU per GB counts both daemons (sender and receiver side) from /proc/PID/stat during "
    "the TCP runs; iperf3 and the kernel's own work are not in it.",
    "Pair measurements are interleaved (run 1 of every pair and direction, then run 2, …), "
    "so slow drifts in the machine's load spread over all pairs alike.",
    "Ratios are pyralog-wg's figure divided by wireguard-go's (go-go) from the same run. "
    "Arrows say which way is better: ↑ higher, ↓ lower.",
]

MEANINGS = """\
- **Pairs.** Two network namespaces joined by a veth link, one WireGuard interface in each.
  *py-py*: pyralog-wg on both sides; *go-go*: wireguard-go on both sides (the reference);
  *py→go* / *go→py*: pyralog-wg on one side and wireguard-go on the other, traffic sent
  from the first to the second. For py-py and go-go both directions are pooled.
- **TCP throughput**: `iperf3 -J` for {tcp_seconds} s, {tcp_runs} run(s) per direction;
  the median, with [min-max] over the runs.
- **CPU per GB moved**: both daemons' utime + stime (from `/proc/PID/stat`) during a TCP
  run, divided by the gigabytes received.
- **UDP payload, received**: `iperf3 -u -b 0 -l N` for {udp_seconds} s, {udp_runs}
  run(s) per direction; packets the receiver got per second, and the share lost.
- **Ping**: {pings} echo requests at {ping_interval} s intervals through the tunnel; p50
  and p99 round trip. *Under TCP load*: the same while an iperf3 TCP stream runs from the
  pinging side.
- **Handshakes completed by a responder**: {hs_identities} initiator identities, each a
  peer of the responder and each with its own source address, send initiations
  closed-loop (`bench/hsload.py`, built from Pyralog's sans-IO handshake code); cookie
  replies are answered with mac2 as a real initiator would. Count of valid responses
  (mac1 checked) per second over {hs_seconds} s after a {hs_warmup} s warm-up. *CPU per
  handshake* is the responder's CPU time divided by the responses it sent.
- **RSS with N peers**: VmRSS of the idle daemon after `wg setconf`/`wg addconf` to 1,
  100 and 10,000 peers (random public keys, one /32 allowed IP each). *Memory per peer*
  = (RSS at 10,000 - RSS at 1) / 9,999.
- **Core micro-benchmark** (`bench/core.py`): the sans-IO `Device` alone, in one process,
  no I/O: `send_packet` of an IP packet on an established session (encrypt) and
  `receive_datagram` of the result (decrypt), best of several repetitions. Its ratio
  compares what the core alone can do on one core with what wireguard-go moves through
  the whole stack (go-go TCP throughput for 1420-byte packets; go-go UDP 64-byte received
  packets/s for 64-byte packets): below 1x, the core alone could not keep up.
"""

EMBEDDED_MEANING = """\
- **Embedded mode (`pyralog forward`) vs kernel TCP over wireguard-go**: namespace K runs
  wireguard-go and an iperf3 server on its tunnel address; in namespace E, iperf3 runs
  {tcp_runs} run(s) of {tcp_seconds} s per direction (E→K: the client sends; K→E:
  `iperf3 -R`) either to K's tunnel address through a second wireguard-go interface
  (the kernel does TCP: the reference), or to `127.0.0.1`, where
  `pyralog forward {forward_spec}` takes the connections (iperf3's control and data
  connections) and carries them across the tunnel with its own userspace TCP/IP stack;
  K's wireguard-go serves both. Median [min-max]; the ratio is
  embedded ÷ kernel. *CPU per GB, E side* is the forwarder's utime + stime (WireGuard,
  TCP/IP and the local sockets) against E's wireguard-go's (WireGuard only: the kernel's
  TCP work is not counted), per GB received.
"""


def render_markdown(res: dict, png_name: str | None) -> str:
    s = res["settings"]
    out = [
        "# Benchmarks: pyralog-wg against wireguard-go",
        "",
        "_Generated by `bench/render.py` from `docs/benchmarks.json`; do not edit by "
        "hand — rerun the benchmark instead._",
        "",
        headline(res),
        "",
        "## How to run",
        "",
        "As root on Debian (namespaces and TUN devices need it):",
        "",
        "```sh",
        "scripts/bench.sh            # installs what is missing, runs everything, renders",
        "scripts/bench.sh --quick    # a ~2-minute smoke run",
        "# or step by step:",
        ".venv/bin/python bench/run.py [--quick] \\",
        "    [--only core,pairs,embedded,handshake,memory] \\",
        "    [--out docs/benchmarks.json]",
        ".venv/bin/python bench/render.py docs/benchmarks.json",
        ".venv/bin/python bench/core.py     # the core micro-benchmark alone, no root",
        "```",
        "",
        f"The full run takes 8 to 10 minutes on 2 cores ({run_time_note(res)}). "
        "It uses only network namespaces, "
        "interfaces and addresses of its own (`bn` prefix, 172.29.0.0/16, 10.29.0.0/16), "
        "sends traffic only between them, and removes them all when it ends, also on "
        "failure or Ctrl-C; leftovers of a run that was killed outright are removed by the "
        "next one.",
        "",
        "## Machine",
        "",
        machine_table(res),
        "",
        "## Results",
        "",
        "### Data plane, per pair",
        "",
        "Each cell: median [min-max over runs] **ratio to go-go**.",
        "",
        data_plane_table(res),
        "",
    ]
    if png_name:
        out += [f"![TCP throughput, UDP packet rate and ping per pair]({png_name})", ""]
    out += [
        "### Per implementation",
        "",
        implementation_table(res),
        "",
        "### The sans-IO core alone",
        "",
        core_table(res),
        "",
    ]
    cold = (res.get("core") or {}).get("cold")
    if cold:
        out += [
            f"One 84-byte packet through encrypt and decrypt: {fmt(cold['round_trip_warm_us'])}"
            f" µs back to back, {fmt(cold['round_trip_cold_us'])} µs after"
            f" {fmt(cold['idle_gap_ms'])} ms asleep (median of {cold['samples']}).",
            "",
        ]
    emb_table = embedded_table(res)
    if emb_table:
        out += [
            "### Embedded mode (pyralog forward) vs kernel TCP over wireguard-go",
            "",
            "Each cell: median [min-max over runs]; the last column is embedded ÷ kernel.",
            "",
            emb_table,
            "",
        ]
    meanings = MEANINGS.format(**s)
    if emb_table:  # one more item of the same list
        spec = res["embedded"].get("forward_spec", "127.0.0.1:PORT:K_TUNNEL_IP:5201")
        meanings += EMBEDDED_MEANING.format(forward_spec=spec, **s)
    out += [
        "## What each measure means",
        "",
        meanings,
        "## Notes",
        "",
    ]
    out += [f"- {n}" for n in auto_notes(res) + STATIC_NOTES]
    out.append("")
    return "\n".join(out)


def render_png(res: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("render: matplotlib is not installed; no chart", file=sys.stderr)
        return False
    cols = res["summary"]["columns"]
    colors = {"py-py": "#d9822b", "go-go": "#4a7ab5", "py→go": "#e8b36a", "go→py": "#8fb0d9"}
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=80)

    def bars(ax, key):
        row = _row(res, key) or {"values": {}, "spread": {}}
        vals = [row["values"].get(c) or 0 for c in cols]
        lo, hi = [], []
        for v, c in zip(vals, cols, strict=True):
            low, high = row["spread"].get(c) or (None, None)
            lo.append(v - low if low is not None else 0)
            hi.append(high - v if high is not None else 0)
        ax.bar(
            range(len(cols)),
            vals,
            color=[colors.get(c, "grey") for c in cols],
            yerr=[lo, hi],
            capsize=3,
        )
        ax.set_xticks(range(len(cols)), cols, fontsize=8)

    bars(axes[0], "tcp_mbps")
    axes[0].set_title("TCP throughput (Mbit/s)", fontsize=9)

    width = 0.38
    for k, (key, label, hatch) in enumerate(
        (("udp64_pps", "64 B", ""), ("udp1392_pps", "1392 B", "//"))
    ):
        row = _row(res, key)
        vals = [(row["values"].get(c) or 0) / 1000 for c in cols] if row else [0] * len(cols)
        xs = [i + (k - 0.5) * width for i in range(len(cols))]
        axes[1].bar(
            xs,
            vals,
            width,
            color=[colors.get(c, "grey") for c in cols],
            hatch=hatch,
            edgecolor="white",
            label=label,
        )
    axes[1].set_xticks(range(len(cols)), cols, fontsize=8)
    axes[1].set_title("UDP received (kpkt/s): 64 B | 1392 B", fontsize=9)

    for k, (key, hatch) in enumerate((("ping_idle_p50", ""), ("ping_load_p50", "//"))):
        row = _row(res, key)
        vals = [(row["values"].get(c) or 0) for c in cols] if row else [0] * len(cols)
        xs = [i + (k - 0.5) * width for i in range(len(cols))]
        axes[2].bar(
            xs,
            vals,
            width,
            color=[colors.get(c, "grey") for c in cols],
            hatch=hatch,
            edgecolor="white",
        )
    axes[2].set_xticks(range(len(cols)), cols, fontsize=8)
    axes[2].set_yscale("log")
    axes[2].set_title("Ping p50 (ms, log): idle | under TCP load", fontsize=9)
    for ax in axes:
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    date = res["machine"].get("date", "")[:10]
    fig.suptitle(
        f"pyralog-wg (py) vs wireguard-go (go) {res['machine'].get('wireguard_go', '')}, {date}"
        f"{' (quick run)' if res['settings'].get('quick') else ''}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, pil_kwargs={"optimize": True})
    plt.close(fig)
    return True


KEEP_MARKER = "<!-- kept by bench/render.py: the sections below come from other benchmarks -->"


def main(argv: list[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(description="Render benchmark JSON as Markdown and a chart.")
    p.add_argument("results", nargs="?", default=str(BENCH / "results" / "latest.json"))
    p.add_argument("--md", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--png", default=str(ROOT / "docs" / "benchmarks.png"))
    args = p.parse_args(argv)
    res = json.loads(Path(args.results).read_text())
    md_path, png_path = Path(args.md), Path(args.png)
    drew = render_png(res, png_path)
    png_ref = None
    if drew:
        try:
            png_ref = str(png_path.resolve().relative_to(md_path.resolve().parent))
        except ValueError:
            png_ref = str(png_path.resolve())
    md_path.parent.mkdir(parents=True, exist_ok=True)
    # Sections written from other benchmarks (bench/transport.py's) follow the marker:
    # kept as they are.
    old = md_path.read_text() if md_path.exists() else ""
    kept = old[old.index(KEEP_MARKER) :] if KEEP_MARKER in old else ""
    md_path.write_text(render_markdown(res, png_ref) + ("\n" + kept if kept else ""))
    print(f"wrote {md_path}" + (f" and {png_path}" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
