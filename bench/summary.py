"""summarize(results): the raw runs of bench/run.py as rows of figures and ratios.

What it returns goes into the results JSON next to the raw data, and bench/render.py
reads only that (plus a few raw fields) to write docs/BENCHMARKS.md:

- "summary": per measure, one figure per column (py-py, go-go, py→go, go→py), its
  [min, max] over runs where there are several, and its ratio to go-go;
- "implementations": handshake and memory figures, pyralog-wg against wireguard-go;
- "core_summary": the sans-IO core alone, against what go-go moves through the stack.

Every ratio is pyralog-wg's figure ÷ wireguard-go's, whichever way is better ("better"
says which). A measure that was skipped or failed leaves ``None`` values, never zeros.
"""

from __future__ import annotations

from memory import MEMORY_PEERS
from pairs import UDP_SIZES
from stats import percentile, present, ratio, spread

COLUMNS = ("py-py", "go-go", "py→go", "go→py")
REFERENCE = "go-go"


def summarize(results: dict) -> dict:
    """The "summary", "implementations" and "core_summary" entries for ``results``."""
    rows = _pair_rows(results)
    return {
        "summary": {"columns": list(COLUMNS), "reference": REFERENCE, "rows": rows},
        "implementations": {"rows": _implementation_rows(results)},
        "core_summary": _core_rows(results, rows),
    }


# -- per pair -----------------------------------------------------------------------------


def _column(name: str, pair: dict, side: str) -> str:
    """The column of traffic sent from ``side`` of pair ``name`` in the results: a pair of
    one implementation pools both directions under its name."""
    other = "b" if side == "a" else "a"
    this = "py" if pair[side] == "pyralog-wg" else "go"
    that = "py" if pair[other] == "pyralog-wg" else "go"
    return name if this == that else f"{this}→{that}"


def _column_runs(results: dict, kind: str, column: str, size: str | None = None) -> list[dict]:
    """Every run of ``kind`` ("tcp"/"udp") that belongs in ``column``."""
    out: list[dict] = []
    for name, p in results.get("pairs", {}).items():
        for side in ("a", "b"):
            if _column(name, p, side) != column:
                continue
            out.extend(p[kind][side] if size is None else p[kind][size][side])
    return out


def _column_pings(results: dict, kind: str, column: str) -> list[dict]:
    """Every ping sample of ``kind`` ("ping_idle"/"ping_load") that belongs in ``column``."""
    out = []
    for name, p in results.get("pairs", {}).items():
        for side, sample in p.get(kind, {}).items():
            if _column(name, p, side) == column:
                out.append(sample)
    return out


def ping_summary(samples: list[dict]) -> dict:
    """Round trips of all ``samples`` pooled: p50, p99, and the share of pings lost."""
    rtts = [r for s in samples for r in s["rtt_ms"]]
    sent = sum(s["sent"] for s in samples)
    got = sum(s["received"] for s in samples)
    return {
        "p50_ms": percentile(rtts, 50),
        "p99_ms": percentile(rtts, 99),
        "sent": sent,
        "received": got,
        "loss_percent": 100.0 * (sent - got) / sent if sent else None,
    }


def _pair_rows(results: dict) -> list[dict]:
    rows: list[dict] = []

    def add(key, label, unit, better, values: dict, spreads: dict | None = None, note=""):
        ref = values.get(REFERENCE)
        rows.append(
            {
                "key": key,
                "label": label,
                "unit": unit,
                "better": better,
                "note": note,
                "values": values,
                "spread": spreads or {},
                "ratios": {c: ratio(v, ref) for c, v in values.items()},
            }
        )

    tcp = {c: _column_runs(results, "tcp", c) for c in COLUMNS}
    sp = {c: spread(present(r, "bits_per_second")) for c, r in tcp.items()}
    add(
        "tcp_mbps",
        "TCP throughput",
        "Mbit/s",
        "higher",
        {c: _scale(sp[c]["median"], 1e-6) for c in COLUMNS},
        {c: [_scale(sp[c]["min"], 1e-6), _scale(sp[c]["max"], 1e-6)] for c in COLUMNS},
    )
    rtx = {c: spread(present(r, "retransmits")) for c, r in tcp.items()}
    add(
        "tcp_retransmits",
        f"TCP retransmits per {results['settings']['tcp_seconds']} s run",
        "segments",
        "lower",
        {c: rtx[c]["median"] for c in COLUMNS},
        {c: [rtx[c]["min"], rtx[c]["max"]] for c in COLUMNS},
    )
    cpu = {c: spread(present(r, "cpu_seconds_per_gb")) for c, r in tcp.items()}
    add(
        "cpu_s_per_gb",
        "CPU per GB moved (both daemons, TCP)",
        "CPU s/GB",
        "lower",
        {c: cpu[c]["median"] for c in COLUMNS},
        {c: [cpu[c]["min"], cpu[c]["max"]] for c in COLUMNS},
    )
    for size in UDP_SIZES:
        udp = {c: _column_runs(results, "udp", c, str(size)) for c in COLUMNS}
        pps = {c: spread(present(r, "received_pps")) for c, r in udp.items()}
        add(
            f"udp{size}_pps",
            f"UDP {size}-byte payload, received",
            "pkt/s",
            "higher",
            {c: pps[c]["median"] for c in COLUMNS},
            {c: [pps[c]["min"], pps[c]["max"]] for c in COLUMNS},
        )
        loss = {c: spread(present(r, "loss_percent")) for c, r in udp.items()}
        add(
            f"udp{size}_loss",
            f"UDP {size}-byte payload, lost",
            "%",
            "lower",
            {c: loss[c]["median"] for c in COLUMNS},
        )
    for kind, label in (("ping_idle", "idle"), ("ping_load", "under TCP load")):
        summ = {c: ping_summary(_column_pings(results, kind, c)) for c in COLUMNS}
        for q in ("p50", "p99"):
            add(
                f"{kind}_{q}",
                f"Ping {q}, {label}",
                "ms",
                "lower",
                {c: summ[c][f"{q}_ms"] for c in COLUMNS},
            )
    return rows


# -- per implementation -------------------------------------------------------------------


def _implementation_rows(results: dict) -> list[dict]:
    impl_rows: list[dict] = []

    def add_impl(key, label, unit, better, py, go):
        impl_rows.append(
            {
                "key": key,
                "label": label,
                "unit": unit,
                "better": better,
                "py": py,
                "go": go,
                "ratio": ratio(py, go),
            }
        )

    hs = results.get("handshake", {})
    for key, label, unit, better in (
        ("handshakes_per_second", "Handshakes completed by a responder", "per s", "higher"),
        ("responder_cpu_us_per_handshake", "Responder CPU per handshake", "µs", "lower"),
        ("latency_p50_ms", "Handshake latency under flood, p50", "ms", "lower"),
    ):
        add_impl(
            f"hs_{key}", label, unit, better, hs.get("py", {}).get(key), hs.get("go", {}).get(key)
        )
    mem = results.get("memory", {})
    for count in ("0", *map(str, MEMORY_PEERS)):
        add_impl(
            f"rss_{count}",
            f"RSS with {int(count):,} peers",
            "MiB",
            "lower",
            _scale(mem.get("py", {}).get("rss_bytes", {}).get(count), 2**-20),
            _scale(mem.get("go", {}).get("rss_bytes", {}).get(count), 2**-20),
        )
    add_impl(
        "bytes_per_peer",
        "Memory per peer (RSS_10000 - RSS_1) / 9999",
        "bytes",
        "lower",
        mem.get("py", {}).get("bytes_per_peer"),
        mem.get("go", {}).get("bytes_per_peer"),
    )
    last = str(MEMORY_PEERS[-1])
    add_impl(
        "apply_10000",
        f"Time to add {MEMORY_PEERS[-1] - MEMORY_PEERS[-2]:,} peers (one wg addconf)",
        "s",
        "lower",
        mem.get("py", {}).get("apply_seconds", {}).get(last),
        mem.get("go", {}).get("apply_seconds", {}).get(last),
    )
    add_impl(
        "show_10000",
        f"Time to read {MEMORY_PEERS[-1]:,} peers back (wg show IF peers)",
        "s",
        "lower",
        mem.get("py", {}).get("show_seconds"),
        mem.get("go", {}).get("show_seconds"),
    )
    # A daemon that did not answer `wg show` in time gets a text instead of a figure.
    for impl in ("py", "go"):
        m = mem.get(impl)
        if m and m.get("show_seconds") is None:
            impl_rows[-1].setdefault("text", {})[impl] = (
                f"> {m['show_timeout_seconds']} (no answer)"
            )
    return impl_rows


# -- the core alone ------------------------------------------------------------------------


def _core_rows(results: dict, rows: list[dict]) -> list[dict]:
    """Core packets/s against go-go: TCP Mbit/s for full-size packets, UDP 64 B pkt/s else."""
    c = results.get("core") or {}
    go_tcp = next((r["values"].get(REFERENCE) for r in rows if r["key"] == "tcp_mbps"), None)
    go_udp64 = next((r["values"].get(REFERENCE) for r in rows if r["key"] == "udp64_pps"), None)
    core_rows = []
    for size, r in (c.get("sizes") or {}).items():
        for path in ("encrypt", "decrypt"):
            pps = r[f"{path}_pps"]
            mbps = pps * int(size) * 8 / 1e6
            if int(size) >= 1000:
                ref, ref_label = go_tcp, "go-go TCP Mbit/s"
                value_for_ratio = mbps
            else:
                ref, ref_label = go_udp64, "go-go UDP 64 B pkt/s received"
                value_for_ratio = pps
            core_rows.append(
                {
                    "size": int(size),
                    "path": path,
                    "pps": pps,
                    "mbit_s": mbps,
                    "reference": ref_label,
                    "ratio": ratio(value_for_ratio, ref),
                }
            )
    return core_rows


def _scale(v: float | None, k: float) -> float | None:
    return None if v is None else v * k
