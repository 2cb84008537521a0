"""bench/replication.py's pure parts: the failover measure (kill to first acknowledged
write), the read-back check of a failover run, the summary (medians, spreads, Pyralog /
NATS ratios) and its tables.

No I/O here (tests/bench/test_replication_bench.py). Statistics come from stats.py and
the produce/consume/latency checks and figures from logstats.py, so a figure means what
it means in bench/log.py's results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from logstats import LostRecords, markdown
from stats import fmt, median, ratio, spread

SYSTEMS = ("pyralog", "nats")
NAMES = {"pyralog": "Pyralog RF=3", "nats": "NATS JetStream R3"}
# A pause in acknowledgements that begins this long before the kill still counts as the
# outage (the producer's last ack before the kill may be a few ms before it).
BEFORE_KILL = 1.0


# -- the failover measure ------------------------------------------------------------------


def failover_figures(
    ack_times: Iterable[float], kill: float, until: float | None = None
) -> dict[str, Any]:
    """From the acknowledgement times of a continuous producer and the moment a leader
    was killed: the outage is the longest pause between two consecutive acks that ends
    after the kill (and by ``until``, the killed server's restart) and begins at most
    ``BEFORE_KILL`` s before it; ``failover_s`` is from the kill to the ack that ends
    it (the first one from the new leader).

    An ack that the dead leader had sent just before the kill may still arrive a moment
    after it; such acks fall before the pause and are counted (``acks_in_flight``), not
    taken for the new leader's. ``None`` figures if no ack came after the kill."""
    times = sorted(ack_times)
    before = [t for t in times if t <= kill]
    after = [t for t in times if t > kill and (until is None or t <= until)]
    out: dict[str, Any] = {
        "kill_at": kill,
        "last_ack_before_s": (before[-1] - kill) if before else None,
        "failover_s": None,
        "outage_s": None,
        "acks_in_flight": 0,
        "acks_after": len(after),
    }
    if not after:
        return out
    # Candidate pauses: (start, end) of consecutive acks with end > kill. The first
    # begins at the last ack before the kill, or at the kill itself if that ack is
    # older than BEFORE_KILL (or there is none).
    prev = before[-1] if before and before[-1] >= kill - BEFORE_KILL else kill
    best: tuple[float, float, float] | None = None  # (gap, start, end)
    for t in after:
        gap = t - prev
        if best is None or gap > best[0]:
            best = (gap, prev, t)
        prev = t
    assert best is not None
    gap, begin, end = best
    out["failover_s"] = end - kill
    out["outage_s"] = gap
    out["acks_in_flight"] = sum(1 for t in after if t <= begin)
    return out


def check_failover_readback(
    acked: Sequence[int], read: Sequence[int], what: str, *, ordered: bool
) -> dict[str, Any]:
    """Compare what a failover producer had acknowledged with what was read back.

    Raises LostRecords if an acknowledged record is missing. Otherwise returns counts:
    ``duplicates`` (records read more than once), ``unacked_present`` (written, but the
    producer never saw the ack: allowed), ``reordered`` (positions whose index is lower
    than one read before it; only a problem where the producer keeps order: ``ordered``,
    an idempotent Kafka producer), and ``problems`` (what the caller should report)."""
    counts = Counter(read)
    acked_set = set(acked)
    missing = sorted(acked_set - counts.keys())
    if missing:
        raise LostRecords(
            f"{what}: {len(missing)} of {len(acked_set)} acknowledged records not read back "
            f"(e.g. indices {missing[:10]})"
        )
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    reordered = 0
    high = -1
    for i in read:
        if i < high:
            reordered += 1
        high = max(high, i)
    problems = []
    if duplicates:
        problems.append(f"{duplicates} records read back more than once")
    if ordered and reordered:
        problems.append(f"{reordered} records out of order")
    if -1 in counts:
        problems.append(f"{counts[-1]} records too short to carry an index")
    return {
        "acked": len(acked_set),
        "read": len(read),
        "duplicates": duplicates,
        "unacked_present": len(counts.keys() - acked_set),
        "reordered": reordered,
        "problems": problems,
    }


# -- other load on the machine ---------------------------------------------------------------


def foreign_delta(
    before: dict[int, tuple[float, bool]], after: dict[int, tuple[float, bool]]
) -> dict[str, float]:
    """CPU that processes outside our namespaces used between two ``replab.foreign_cpu``
    snapshots: ordinary processes and kernel threads (ksoftirqd and kworkers among them,
    which also carry our own packets). A process that exited in between is missed, one
    that started is counted whole: a lower bound for short-lived work."""
    out = {"processes_s": 0.0, "kernel_threads_s": 0.0}
    for pid, (seconds, kernel) in after.items():
        delta = seconds - before.get(pid, (0.0, kernel))[0]
        if delta > 0:
            out["kernel_threads_s" if kernel else "processes_s"] += delta
    return out


def irq_seconds(proc_stat: str, clk_tck: int) -> float:
    """From /proc/stat's first line: irq + softirq seconds over every CPU (packet
    processing the kernel does outside any process's own time)."""
    fields = [int(x) for x in proc_stat.splitlines()[0].split()[1:]]
    return sum((fields + [0] * 7)[5:7]) / clk_tck


# -- summary ---------------------------------------------------------------------------------

FIGURES = {
    # name: (phase, key): higher is better for throughput, lower for the others
    "produce_records_per_s": ("produce", "records_per_s"),
    "produce_mb_per_s": ("produce", "mb_per_s"),
    "consume_records_per_s": ("consume", "records_per_s"),
    "latency_p50_us": ("latency", "p50_us"),
    "latency_p99_us": ("latency", "p99_us"),
}
CPU = {
    "produce_server_cpu_per_100k": ("produce", "server_cpu_per_100k"),
    "produce_store_cpu_per_100k": ("produce", "store_cpu_per_100k"),
    "produce_wg_cpu_per_100k": ("produce", "wg_cpu_per_100k"),
    "produce_client_cpu_per_100k": ("produce", "client_cpu_per_100k"),
    "produce_steal_s": ("produce", "steal_s"),
    "produce_other_cpu_s": ("produce", "other_cpu_s"),
    "produce_foreign_processes_s": ("produce", "foreign_processes_s"),
    "produce_irq_s": ("produce", "irq_s"),
    "latency_server_cpu_s": ("latency", "server_cpu_s"),
    "latency_wg_cpu_s": ("latency", "wg_cpu_s"),
    "latency_steal_s": ("latency", "steal_s"),
}
NET = ("tcp_retrans_segs", "tun_tx_dropped", "udp_rcvbuf_errors")


def net_per_100k(unit: dict[str, Any], phase: str, key: str) -> float | None:
    """A loss counter of one phase, summed over the four tunnel namespaces, per
    100,000 records (the systems' runs move different counts)."""
    figures = unit.get(phase) or {}
    net, records = figures.get("net"), figures.get("records")
    if not net or not records:
        return None
    return sum(c.get(key, 0) for c in net.values()) * 100_000 / records


def unit_value(unit: dict[str, Any], phase: str, key: str) -> float | None:
    return (unit.get(phase) or {}).get(key)


def unit_failover_median(unit: dict[str, Any], key: str = "failover_s") -> float | None:
    return median(k.get(key) for k in (unit.get("failover") or {}).get("kills", []))


def kills(units: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [k for u in units for k in (u.get("failover") or {}).get("kills", [])]


def paired(units: Sequence[dict[str, Any]], value: Any) -> list[float]:
    """Pyralog over NATS, round by round: each Pyralog unit against the NATS unit of
    its slot (the same round, run next to it)."""
    nats = {u["slot"]: u for u in units if u["system"] == "nats"}
    out = []
    for u in units:
        other = nats.get(u["slot"]) if u["system"] == "pyralog" else None
        if other is not None:
            x = ratio(value(u), value(other))
            if x is not None:
                out.append(x)
    return out


def summarize(units: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per system, the spread (median, min, max, n) of every figure over its units (and,
    for failover, over every kill); per figure, Pyralog / NATS as the ratio of medians
    and the median of the round-by-round ratios."""
    by = {s: [u for u in units if u["system"] == s] for s in SYSTEMS}
    out: dict[str, Any] = {"systems": {}, "ratios": {}}
    for system, mine in by.items():
        figs = {
            name: spread(unit_value(u, phase, key) for u in mine)
            for name, (phase, key) in {**FIGURES, **CPU}.items()
        }
        ks = kills(mine)
        figs["failover_s"] = spread(k.get("failover_s") for k in ks)
        figs["outage_s"] = spread(k.get("outage_s") for k in ks)
        figs["rejoin_s"] = spread(k.get("rejoin_s") for k in ks)
        leading = [(k.get("server_events_s") or {}).get("leading") for k in ks]
        figs["leader_in_place_s"] = spread(leading)
        figs["client_after_leader_s"] = spread(
            k["failover_s"] - t for k, t in zip(ks, leading, strict=True)
            if t is not None and k.get("failover_s") is not None
        )  # fmt: skip
        for phase in ("produce", "consume"):
            for key in NET:
                figs[f"{phase}_{key}"] = spread(net_per_100k(u, phase, key) for u in mine)
        figs["failover_readback_problems"] = [
            p for u in mine for p in ((u.get("failover") or {}).get("readback") or {}).get(
                "problems", []
            )
        ]  # fmt: skip
        out["systems"][system] = figs
    for name, (phase, key) in FIGURES.items():
        p, n = out["systems"]["pyralog"][name], out["systems"]["nats"][name]
        out["ratios"][name] = {
            "ratio": ratio(p["median"], n["median"]),
            "paired": median(paired(units, lambda u, ph=phase, k=key: unit_value(u, ph, k))),
        }
    p, n = out["systems"]["pyralog"]["failover_s"], out["systems"]["nats"]["failover_s"]
    out["ratios"]["failover_s"] = {
        "ratio": ratio(p["median"], n["median"]),
        "paired": median(paired(units, unit_failover_median)),
    }
    return out


# -- tables ----------------------------------------------------------------------------------


def fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def fmt_spread(s: dict[str, Any], digits: int | None = None) -> str:
    """``median [min, max]``, or the median alone when there is one value."""
    if not s or s.get("median") is None:
        return "-"

    def f(v: float) -> str:
        return f"{v:.{digits}f}" if digits is not None else fmt(v)

    if s["n"] <= 1 or s["min"] == s["max"]:
        return f(s["median"])
    return f"{f(s['median'])} [{f(s['min'])}, {f(s['max'])}]"


ROWS = (
    ("Produce, acks=all (records/s)", "produce_records_per_s", None),
    ("Produce (MB/s)", "produce_mb_per_s", None),
    ("Read back from offset 0 (records/s)", "consume_records_per_s", None),
    ("Produce-ack latency p50 (µs)", "latency_p50_us", None),
    ("Produce-ack latency p99 (µs)", "latency_p99_us", None),
    ("Failover: kill -9 → first ack (s)", "failover_s", 2),
)


def rows(summary: dict[str, Any]) -> list[list[str]]:
    """The headline rows: figure, Pyralog, NATS, ratio of medians, paired ratio."""
    out = []
    for title, name, digits in ROWS:
        p = summary["systems"]["pyralog"][name]
        n = summary["systems"]["nats"][name]
        r = summary["ratios"].get(name, {})
        out.append(
            [
                title,
                fmt_spread(p, digits),
                fmt_spread(n, digits),
                fmt_x(r.get("ratio")),
                fmt_x(r.get("paired")),
            ]
        )
    return out


HEADER = ("figure: median [min, max]", "Pyralog RF=3", "NATS R3", "ratio", "paired ratio")


def tables(summary: dict[str, Any]) -> str:
    """The results as Markdown: the headline table, then CPU and failover details."""
    parts = [markdown(HEADER, rows(summary)) + "\n"]
    cpu = []
    for title, name in (
        ("servers (3), produce, CPU s /100k records", "produce_server_cpu_per_100k"),
        ("etcd, produce, CPU s /100k records", "produce_store_cpu_per_100k"),
        ("WireGuard daemons (4), produce, CPU s /100k", "produce_wg_cpu_per_100k"),
        ("client, produce, CPU s /100k records", "produce_client_cpu_per_100k"),
        ("other processes during produce (CPU s)", "produce_foreign_processes_s"),
        ("irq + softirq during produce (s)", "produce_irq_s"),
        ("steal during produce (s)", "produce_steal_s"),
        ("servers (3), latency run, CPU s", "latency_server_cpu_s"),
        ("WireGuard daemons (4), latency run, CPU s", "latency_wg_cpu_s"),
        ("TCP retransmits /100k records produced (4 namespaces)", "produce_tcp_retrans_segs"),
        ("TUN queue drops /100k records produced (4 namespaces)", "produce_tun_tx_dropped"),
        ("TCP retransmits /100k records read back", "consume_tcp_retrans_segs"),
    ):
        p = summary["systems"]["pyralog"][name]
        n = summary["systems"]["nats"][name]
        nats = "-" if name == "produce_store_cpu_per_100k" else fmt_spread(n)
        cpu.append([title, fmt_spread(p), nats])
    header = ("CPU and losses: median [min, max]", "Pyralog RF=3", "NATS R3")
    parts.append(markdown(header, cpu) + "\n")
    fo = []
    for title, name in (
        ("kill -9 → new leader in place (its log) (s)", "leader_in_place_s"),
        ("kill -9 → first ack from the new leader (s)", "failover_s"),
        ("new leader in place → first ack (the client's part) (s)", "client_after_leader_s"),
        ("longest pause in acks (s)", "outage_s"),
        ("restart → back in sync (s)", "rejoin_s"),
    ):
        p = summary["systems"]["pyralog"][name]
        n = summary["systems"]["nats"][name]
        fo.append([title, fmt_spread(p, 2), fmt_spread(n, 2), str(p["n"]), str(n["n"])])
    header = ("failover: median [min, max]", "Pyralog RF=3", "NATS R3", "kills P", "kills N")
    parts.append(markdown(header, fo) + "\n")
    return "\n".join(parts)
