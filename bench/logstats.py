"""bench/log.py's pure parts: the checks that no record was lost, the figures of one run,
the summary (medians, ratios to NATS, tunnel over loopback) and its tables.

No I/O here (tests/bench/test_log_bench.py). Statistics come from stats.py, so a median
or a percentile means what it means in every other bench module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from stats import fmt, median, percentile, ratio, spread

RECORD_BYTES = 1024  # logload.RECORD_BYTES (not imported: logload is a client script)
WARMUP = 50  # logload.WARMUP
SYSTEMS = ("pyralog", "nats")
TRANSPORTS = ("loopback", "tunnel")
# Pyralog's configurations: (flush policy of the topic, producer acks).
PYRALOG_CONFIGS = (("interval", "1"), ("interval", "all"), ("always", "1"), ("always", "all"))
NATS_CONFIG = "js-file-r1"


class LostRecords(RuntimeError):
    """A run that did not read back exactly what was acknowledged: the benchmark stops."""


def config_name(flush: str, acks: str) -> str:
    return f"flush={flush} acks={acks}"


# -- checks ------------------------------------------------------------------------------------


def check_produced(res: dict[str, Any], count: int, system: str, what: str) -> None:
    """Every record acknowledged, no error, offsets 0..count-1 (Kafka) or stream sequences
    1..count (JetStream) on a fresh topic/stream; raise LostRecords otherwise."""
    problems = []
    if res.get("error_count"):
        problems.append(f"{res['error_count']} errors, e.g. {res.get('errors')}")
    if res.get("acked") != count:
        problems.append(f"{res.get('acked')} of {count} acknowledged")
    first, last = (0, count - 1) if system == "pyralog" else (1, count)
    if (res.get("first_offset"), res.get("last_offset")) != (first, last):
        problems.append(
            f"acknowledged offsets {res.get('first_offset')}..{res.get('last_offset')}, "
            f"expected {first}..{last}"
        )
    if res.get("unflushed"):
        problems.append(f"{res['unflushed']} records still queued after flush()")
    if "stream_messages" in res and res["stream_messages"] != count:
        problems.append(f"the stream holds {res['stream_messages']} messages, not {count}")
    if problems:
        raise LostRecords(f"{what}: " + "; ".join(problems))


def check_consumed(res: dict[str, Any], count: int, what: str) -> None:
    """Exactly ``count`` records read back, each carrying its own index, and nothing more
    in the log (its end offset, or the stream's count and the consumer's pending)."""
    problems = []
    if res.get("error_count"):
        problems.append(f"{res['error_count']} errors, e.g. {res.get('errors')}")
    if res.get("consumed") != count:
        problems.append(f"{res.get('consumed')} of {count} records read back")
    if res.get("bad"):
        problems.append(f"wrong records: {res['bad']}")
    if "log_end" in res and (res.get("log_start"), res["log_end"]) != (0, count):
        problems.append(f"the log holds offsets {res.get('log_start')}..{res['log_end']}")
    if "stream_messages" in res and res["stream_messages"] != count:
        problems.append(f"the stream holds {res['stream_messages']} messages, not {count}")
    if res.get("pending"):
        problems.append(f"{res['pending']} messages still pending for the consumer")
    if problems:
        raise LostRecords(f"{what}: " + "; ".join(problems))


def check_latency(res: dict[str, Any], samples: int, system: str, what: str) -> None:
    check_produced(res, samples + WARMUP, system, what)
    if len(res.get("samples_us", [])) != samples:
        raise LostRecords(f"{what}: {len(res.get('samples_us', []))} of {samples} samples")


# -- one run's figures ------------------------------------------------------------------------


def rate_figures(res: dict[str, Any], count: int) -> dict[str, Any]:
    """records/s, MB/s (10^6 bytes of record values) and the client's share of a core."""
    seconds = res["seconds"]
    return {
        "records": count,
        "seconds": seconds,
        "records_per_s": count / seconds if seconds > 0 else None,
        "mb_per_s": count * RECORD_BYTES / seconds / 1e6 if seconds > 0 else None,
        "client_cpu_s": res.get("cpu_s"),
        "client_busy": ratio(res.get("cpu_s"), seconds),
        "client_process_cpu_s": res.get("process_cpu_s"),
        "server_cpu_s": res.get("server_cpu_s"),
        "server_busy": ratio(res.get("server_cpu_s"), seconds),
        "wg_cpu_s": res.get("wg_cpu_s"),
        # CPU seconds per 100,000 records: the systems' runs move different counts.
        "client_cpu_per_100k": per_100k(res.get("cpu_s"), count),
        "server_cpu_per_100k": per_100k(res.get("server_cpu_s"), count),
        "wg_cpu_per_100k": per_100k(res.get("wg_cpu_s"), count),
        "net": res.get("net"),
        "machine": res.get("machine"),
        "other_cpu_s": (res.get("machine") or {}).get("other_s"),
        "steal_s": (res.get("machine") or {}).get("steal_s"),
        "longest_waits": res.get("longest_waits"),  # readers only
    }


def per_100k(value: float | None, count: int) -> float | None:
    return None if value is None or count <= 0 else value * 100_000 / count


def latency_figures(res: dict[str, Any]) -> dict[str, Any]:
    samples = res.get("samples_us") or []
    return {
        "samples": len(samples),
        "p50_us": percentile(samples, 50),
        "p99_us": percentile(samples, 99),
        "max_us": max(samples) if samples else None,
        "mean_us": sum(samples) / len(samples) if samples else None,
        "seconds": res.get("seconds"),
        "client_cpu_s": res.get("cpu_s"),
        "client_process_cpu_s": res.get("process_cpu_s"),
        "server_cpu_s": res.get("server_cpu_s"),
        "wg_cpu_s": res.get("wg_cpu_s"),
        "net": res.get("net"),
        "machine": res.get("machine"),
        "other_cpu_s": (res.get("machine") or {}).get("other_s"),
        "steal_s": (res.get("machine") or {}).get("steal_s"),
    }


def cpu_totals(proc_stat: str, clk_tck: int) -> dict[str, float]:
    """From /proc/stat's first line: seconds of CPU busy (user, nice, system, irq,
    softirq) and stolen by the hypervisor, summed over every CPU."""
    fields = [int(x) for x in proc_stat.splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"busy_s": (user + nice + system + irq + softirq) / clk_tck, "steal_s": steal / clk_tck}


def other_load(before: dict[str, float], after: dict[str, float], res: dict[str, Any]) -> dict:
    """The machine's CPU over one client run, and how much of it was not ours (other jobs
    on a shared machine): busy CPU seconds minus the client's, the server's and the
    WireGuard daemons'; steal is time the hypervisor gave to other guests."""
    busy = after["busy_s"] - before["busy_s"]
    ours = sum(res.get(k) or 0.0 for k in ("process_cpu_s", "server_cpu_s", "wg_cpu_s"))
    return {
        "busy_s": busy,
        "steal_s": after["steal_s"] - before["steal_s"],
        "other_s": max(0.0, busy - ours),
    }


def net_counters(snmp: str, link_json: str) -> dict[str, int]:
    """From a namespace's /proc/net/snmp and ``ip -s -j link show DEV``: TCP segments
    retransmitted, UDP datagrams dropped for a full receive buffer, and packets dropped
    at the interface's transmit queue (for a TUN device: waiting for its daemon)."""
    tables: dict[str, dict[str, int]] = {}
    lines = snmp.splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        name, _, keys = head.partition(":")
        tables[name] = dict(
            zip(keys.split(), map(int, values.split(":", 1)[1].split()), strict=False)
        )
    link = json.loads(link_json)[0]
    return {
        "tcp_retrans_segs": tables.get("Tcp", {}).get("RetransSegs", 0),
        "udp_rcvbuf_errors": tables.get("Udp", {}).get("RcvbufErrors", 0),
        "tun_tx_dropped": link.get("stats64", {}).get("tx", {}).get("dropped", 0),
    }


def counter_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        side: {k: v - before.get(side, {}).get(k, 0) for k, v in counters.items()}
        for side, counters in after.items()
    }


# -- summary ----------------------------------------------------------------------------------

PHASES = {
    "produce": (
        "records_per_s",
        "mb_per_s",
        "client_cpu_per_100k",
        "server_cpu_per_100k",
        "wg_cpu_per_100k",
    ),
    "consume": (
        "records_per_s",
        "mb_per_s",
        "client_cpu_per_100k",
        "server_cpu_per_100k",
        "wg_cpu_per_100k",
    ),
    "latency": ("p50_us", "p99_us", "client_cpu_s", "server_cpu_s", "wg_cpu_s"),
}
BUSY = ("client_busy", "server_busy")
EXTRA = ("other_cpu_s", "steal_s")


def select(
    runs: Iterable[dict[str, Any]], transport: str, system: str, config: str | None = None
) -> list[dict[str, Any]]:
    return [
        r
        for r in runs
        if r["transport"] == transport
        and r["system"] == system
        and (config is None or r["config"] == config)
    ]


def medians(runs: Sequence[dict[str, Any]], phase: str) -> dict[str, Any]:
    """Median, min, max and n of each figure of ``phase`` over ``runs``."""
    keys = PHASES[phase] + EXTRA + (BUSY if phase != "latency" else ())
    return {k: spread(r[phase].get(k) for r in runs if phase in r) for k in keys}


def paired_ratios(runs: Sequence[dict[str, Any]], phase: str, key: str) -> list[float]:
    """Pyralog over NATS, run by run: each Pyralog run against the NATS run of its slot
    (same round, transport and position in the interleaving)."""
    nats = {r["slot"]: r for r in runs if r["system"] == "nats"}
    out = []
    for r in runs:
        other = nats.get(r["slot"]) if r["system"] == "pyralog" else None
        if other is not None and phase in r and phase in other:
            x = ratio(r[phase].get(key), other[phase].get(key))
            if x is not None:
                out.append(x)
    return out


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per transport and phase, one row per Pyralog configuration: its medians, those of
    every NATS run over the same transport, and Pyralog / NATS (ratio of medians, and the
    median of the run-by-run ratios); then tunnel / loopback for each system."""
    out: dict[str, Any] = {"rows": [], "tunnel_over_loopback": []}
    configs = [config_name(f, a) for f, a in PYRALOG_CONFIGS]
    for transport in TRANSPORTS:
        nats_runs = select(runs, transport, "nats")
        for phase, keys in PHASES.items():
            n_med = medians(nats_runs, phase)
            for config in configs:
                p_runs = select(runs, transport, "pyralog", config)
                if not p_runs:
                    continue
                p_med = medians(p_runs, phase)
                mine = [r for r in runs if r["transport"] == transport]
                slots = {r["slot"] for r in p_runs}
                paired = [r for r in mine if r["slot"] in slots]
                out["rows"].append(
                    {
                        "transport": transport,
                        "phase": phase,
                        "config": config,
                        "pyralog": {k: v["median"] for k, v in p_med.items()},
                        "nats": {k: v["median"] for k, v in n_med.items()},
                        "pyralog_spread": p_med,
                        "nats_spread": n_med,
                        "ratio": {
                            k: ratio(p_med[k]["median"], n_med[k]["median"]) for k in keys[:2]
                        },
                        "paired_ratio": {
                            k: median(paired_ratios(paired, phase, k)) for k in keys[:2]
                        },
                    }
                )
    out["tunnel_losses"] = tunnel_losses(runs, configs)
    for system, config in [("pyralog", c) for c in configs] + [("nats", NATS_CONFIG)]:
        for phase, keys in PHASES.items():
            loop = medians(select(runs, "loopback", system, config), phase)
            tun = medians(select(runs, "tunnel", system, config), phase)
            if not loop[keys[0]]["n"] or not tun[keys[0]]["n"]:
                continue
            out["tunnel_over_loopback"].append(
                {
                    "system": system,
                    "config": config,
                    "phase": phase,
                    **{k: ratio(tun[k]["median"], loop[k]["median"]) for k in keys[:2]},
                }
            )
    return out


NET_COUNTERS = ("tcp_retrans_segs", "tun_tx_dropped", "udp_rcvbuf_errors")


def tunnel_losses(runs: Sequence[dict[str, Any]], configs: Sequence[str]) -> list[dict[str, Any]]:
    """Per system/configuration and throughput phase over the tunnel: the median per run
    of each loss counter, on the server's side (a) and the client's (b)."""
    out = []
    for system, config in [("pyralog", c) for c in configs] + [("nats", NATS_CONFIG)]:
        mine = select(runs, "tunnel", system, config)
        for phase in ("produce", "consume"):
            nets = [r[phase]["net"] for r in mine if r.get(phase, {}).get("net")]
            if not nets:
                continue
            row: dict[str, Any] = {"system": system, "config": config, "phase": phase}
            for side in ("a", "b"):
                row[side] = {k: median(n[side][k] for n in nets) for k in NET_COUNTERS}
            row["records"] = median(r[phase]["records"] for r in mine)
            out.append(row)
    return out


# -- tables -------------------------------------------------------------------------------------


def fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| :--- | " + " | ".join("---:" for _ in header[1:]) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


PHASE_TITLES = {
    "produce": "Produce throughput (records/s; MB/s)",
    "consume": "Consume throughput from offset 0 (records/s; MB/s)",
    "latency": "Sequential produce-ack latency (µs; p50 / p99)",
}


def tables(summary: dict[str, Any]) -> str:
    """The results as Markdown: one table per phase and transport, then tunnel/loopback."""
    parts = []
    for transport in TRANSPORTS:
        for phase in PHASES:
            rows = [
                r for r in summary["rows"] if r["transport"] == transport and r["phase"] == phase
            ]
            if not rows:
                continue
            parts.append(f"**{PHASE_TITLES[phase]}, {transport}**\n")
            a, b, cc, sc, wc = PHASES[phase]
            lat = phase == "latency"
            per = "" if lat else " /100k"
            header = [
                "Pyralog config",
                "Pyralog p50 / p99" if lat else "Pyralog records/s (MB/s)",
                "NATS p50 / p99" if lat else "NATS records/s (MB/s)",
                "ratio p50 / p99" if lat else "ratio",
                "paired" if lat else "paired ratio",
                f"client CPU s{per} P / N",
                f"server CPU s{per} P / N",
            ]
            if transport == "tunnel":
                header.append(f"WG CPU s{per} P / N")
            header.append("steal s P / N")
            body = []
            for r in rows:
                p, n = r["pyralog"], r["nats"]
                if lat:
                    value = [f"{fmt(p[a])} / {fmt(p[b])}", f"{fmt(n[a])} / {fmt(n[b])}"]
                    ratios = f"{fmt_x(r['ratio'][a])} / {fmt_x(r['ratio'][b])}"
                    paired = f"{fmt_x(r['paired_ratio'][a])} / {fmt_x(r['paired_ratio'][b])}"
                else:
                    value = [f"{fmt(p[a])} ({fmt(p[b])})", f"{fmt(n[a])} ({fmt(n[b])})"]
                    ratios, paired = fmt_x(r["ratio"][a]), fmt_x(r["paired_ratio"][a])
                cells = [
                    r["config"],
                    *value,
                    ratios,
                    paired,
                    f"{fmt(p[cc])} / {fmt(n[cc])}",
                    f"{fmt(p[sc])} / {fmt(n[sc])}",
                ]
                if transport == "tunnel":
                    cells.append(f"{fmt(p[wc])} / {fmt(n[wc])}")
                cells.append(f"{fmt(p['steal_s'])} / {fmt(n['steal_s'])}")
                body.append(cells)
            parts.append(markdown(header, body) + "\n")
    rows = summary["tunnel_over_loopback"]
    if rows:
        parts.append("**Tunnel / loopback (ratio of medians)**\n")
        body = []
        for r in rows:
            a, b = PHASES[r["phase"]][:2]
            figure = f"{fmt_x(r[a])} / {fmt_x(r[b])}" if r["phase"] == "latency" else fmt_x(r[a])
            name = "NATS" if r["system"] == "nats" else f"Pyralog {r['config']}"
            body.append([name, r["phase"], figure])
        header = ["system", "phase", "throughput, or latency p50 / p99"]
        parts.append(markdown(header, body) + "\n")
    rows = summary.get("tunnel_losses") or []
    if rows:
        parts.append(
            "**Tunnel losses per throughput run (median): server side (A) / client side (B)**\n"
        )
        body = []
        for r in rows:
            name = "NATS" if r["system"] == "nats" else f"Pyralog {r['config']}"
            cells = [name, r["phase"], fmt(r["records"])]
            cells += [f"{fmt(r['a'][k])} / {fmt(r['b'][k])}" for k in NET_COUNTERS]
            body.append(cells)
        header = [
            "system",
            "phase",
            "records",
            "TCP retransmits",
            "TUN tx drops",
            "UDP rcvbuf drops",
        ]
        parts.append(markdown(header, body) + "\n")
    return "\n".join(parts)
