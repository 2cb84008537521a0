"""The figures of bench/transport.py from its units: medians and ranges per transport,
ratios to plain TCP and WireGuard against TLS, and the Markdown table. Pure (no I/O), so
tests/bench/test_transport_bench.py checks it and ``--summarize`` can redo it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from logstats import fmt_x, markdown
from stats import fmt, median, ratio, spread

PATHS = ("wg", "embedded", "tls", "plain")
LABELS = {
    "wg": "WireGuard (pyralog-wg)",
    "embedded": "WireGuard (embedded)",
    "tls": "TLS 1.3 (mutual)",
    "plain": "plain TCP",
}
# (key, title, lower is better)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("acks1_p50_us", "client→node: produce acks=1, p50 (µs)", True),
    ("acks1_p99_us", "client→node: produce acks=1, p99 (µs)", True),
    ("acksall_p50_us", "+ node→node: produce acks=all, p50 (µs)", True),
    ("acksall_p99_us", "+ node→node: produce acks=all, p99 (µs)", True),
    ("records_per_s", "throughput, acks=all (records/s)", False),
    ("mb_per_s", "throughput, acks=all (MB/s)", False),
    ("cpu_s_per_gb", "CPU per GB produced, all processes (CPU s/GB)", True),
    ("server_cpu_s_per_gb", "  of which brokers (nodes: + their WireGuard)", True),
    ("wg_cpu_s_per_gb", "  of which pyralog-wg daemons (4)", True),
    ("client_cpu_s_per_gb", "  of which the client (embedded: + its tunnel)", True),
    ("connect_us", "new connection → first response, warm (µs)", True),
    ("connect_cold_us", "new connection → first response, cold WireGuard (µs)", True),
)


def order(r: int) -> tuple[str, ...]:
    """Round r's transports in the order they run: reversed every other round."""
    return PATHS if r % 2 == 0 else PATHS[::-1]


def unit_figures(path: str, prod: dict[str, Any], cpu: dict[str, float], lat: dict[str, Any],
                 warm: dict[str, Any], cold: list[float] | None) -> dict[str, Any]:  # fmt: skip
    """One unit's figures from its load-generator results and the CPU seconds of the
    produce window (``server``, ``wg``; the client's own is in ``prod``)."""
    gb = prod["records"] * 1024 / 1e9
    client = prod["client_cpu_s"]
    total = cpu["server"] + cpu["wg"] + client
    return {
        "path": path,
        "acks1_p50_us": lat["acks1"]["p50_us"],
        "acks1_p99_us": lat["acks1"]["p99_us"],
        "acksall_p50_us": lat["acksall"]["p50_us"],
        "acksall_p99_us": lat["acksall"]["p99_us"],
        "records_per_s": prod["records_per_s"],
        "mb_per_s": prod["mb_per_s"],
        "cpu_s_per_gb": total / gb,
        "server_cpu_s_per_gb": cpu["server"] / gb,
        "wg_cpu_s_per_gb": cpu["wg"] / gb if path == "wg" else None,
        "client_cpu_s_per_gb": client / gb,
        "connect_us": warm["p50_us"],
        "connect_cold_us": median(cold) if cold else None,
        "connect_cold_samples_us": cold,
    }


def summarize(units: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per transport and metric: spread (median, min, max, n) over its units; ratios of
    medians to plain TCP, and WireGuard (both kinds) to TLS; paired ratios (median over
    rounds of a unit divided by the same round's plain/TLS unit)."""
    by = {p: [u for u in units if u["path"] == p] for p in PATHS}
    out: dict[str, Any] = {"paths": {}, "ratios": {}}
    for p in PATHS:
        out["paths"][p] = {k: spread(u.get(k) for u in by[p]) for k, _, _ in METRICS}
    for p in PATHS:
        for ref in ("plain", "tls"):
            if p == ref or (ref == "tls" and p not in ("wg", "embedded")):
                continue
            out["ratios"][f"{p}/{ref}"] = {
                k: {
                    "ratio": ratio(out["paths"][p][k]["median"], out["paths"][ref][k]["median"]),
                    "paired": median(_paired(units, p, ref, k)),
                }
                for k, _, _ in METRICS
            }
    # A TLS connection always pays its handshake: set WireGuard's cold connection (a
    # handshake too) beside it, and its warm one (no handshake: the session exists).
    tls_connect = out["paths"]["tls"]["connect_us"]["median"]
    out["connect_vs_tls"] = {
        p: {
            "warm": ratio(out["paths"][p]["connect_us"]["median"], tls_connect),
            "cold": ratio(out["paths"][p]["connect_cold_us"]["median"], tls_connect),
        }
        for p in ("wg", "embedded")
    }
    return out


def _paired(units: Sequence[dict[str, Any]], path: str, ref: str, key: str) -> list[float]:
    rounds = {u["round"] for u in units}
    out = []
    for r in sorted(rounds):
        a = [u.get(key) for u in units if u["round"] == r and u["path"] == path]
        b = [u.get(key) for u in units if u["round"] == r and u["path"] == ref]
        if a and b and (x := ratio(a[0], b[0])) is not None:
            out.append(x)
    return out


def _cell(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return "-"
    if s["n"] == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} [{fmt(s['min'])}, {fmt(s['max'])}]"


def tables(summary: dict[str, Any]) -> str:
    """Two Markdown tables: the figures per transport, then the ratios."""
    paths = summary["paths"]
    header = ["median [min, max]", *(LABELS[p] for p in PATHS)]
    rows = [[title, *(_cell(paths[p][k]) for p in PATHS)] for k, title, _ in METRICS]
    first = markdown(header, rows)
    pairs = list(summary["ratios"])
    header2 = ["ratio of medians (paired)", *pairs]
    rows2 = []
    for k, title, _ in METRICS:
        cells = []
        for pair in pairs:
            r = summary["ratios"][pair][k]
            cells.append(
                "-" if r["ratio"] is None else f"{fmt_x(r['ratio'])} ({fmt_x(r['paired'])})"
            )
        rows2.append([title.strip(), *cells])
    vs = summary.get("connect_vs_tls", {})
    lines = [
        f"- {LABELS[p]}: a new connection's first answer takes {fmt_x(v['warm'])} of TLS's "
        f"with a session, {fmt_x(v['cold'])} with a fresh handshake"
        for p, v in vs.items()
    ]
    return first + "\n\n" + markdown(header2, rows2) + "\n\n" + "\n".join(lines)
